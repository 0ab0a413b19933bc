"""Constants and helpers the tests share (imported by conftest and the test modules)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Tuple

REPO_ROOT = Path(__file__).resolve().parents[3]
OUTLINE = REPO_ROOT / "examples" / "outline.yaml"


def expected_route(section_type: str, phase: str) -> Tuple[str, str]:
    """The routing matrix with hybrid mode on (README, "Routing"): the (tier, rule) of a call."""
    if phase == "ABSTRACT":
        return ("PRIMARY", "abstract-always-primary")
    if phase == "REFINE":
        return ("PRIMARY", "refine-primary")
    if phase == "EXPAND":
        return ("SECONDARY", "expand-secondary")
    if section_type in ("INTRODUCTION", "CONCLUSION", "ANALYSIS"):
        return ("PRIMARY", "draft-reasoning-primary")
    if section_type in ("METHODOLOGY", "IMPLEMENTATION"):
        return ("SECONDARY", "draft-template-secondary")
    return ("PRIMARY", "draft-default-primary")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
