"""Report outlines: a title, an optional report id and typed sections (YAML or a mapping)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple, Union

import yaml

from .types import SectionType

__all__ = ["Outline", "OutlineError", "Section", "ABSTRACT_SECTION_ID"]

#: The section id the ABSTRACT call carries (so no outline section may use it).
ABSTRACT_SECTION_ID = "abstract"


class OutlineError(ValueError):
    """The outline is malformed (the message says where)."""


@dataclass(frozen=True)
class Section:
    """One section of an outline.

    Attributes:
        id: the section id sent with every call, e.g. ``"2"`` or ``"2.1"``.
        title: its heading in the report.
        type: its :class:`~vra_gateway.SectionType` (DRAFT routing depends on it).
        brief: what the section should say (optional).
    """

    id: str
    title: str
    type: SectionType
    brief: str = ""


@dataclass(frozen=True)
class Outline:
    """A report outline: a title, an optional report id and the sections in order.

    Build one with :meth:`load` (a YAML file like ``examples/outline.yaml``), :meth:`from_yaml`
    or :meth:`from_dict`.
    """

    title: str
    sections: Tuple[Section, ...]
    report_id: Optional[str] = None

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "Outline":
        """Reads a YAML outline file.

        Raises:
            OutlineError: the file cannot be read, is not YAML, or is not a valid outline.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise OutlineError(f"{os.fspath(path)}: {e.strerror}") from e
        except UnicodeDecodeError as e:
            raise OutlineError(f"{os.fspath(path)}: not UTF-8 text") from e
        return cls.from_yaml(text, source=os.fspath(path))

    @classmethod
    def from_yaml(cls, text: str, source: str = "outline") -> "Outline":
        """Parses a YAML outline. Raises :class:`OutlineError`."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise OutlineError(f"{source}: not valid YAML: {e}") from e
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "outline") -> "Outline":
        """Validates a mapping with ``title``, optional ``report_id`` and ``sections`` (each with
        ``id``, ``title``, ``type`` — a section type name in any case — and optional ``brief``).

        Raises:
            OutlineError: naming the source and the bad key.
        """
        if not isinstance(data, Mapping):
            raise OutlineError(f"{source}: expected a mapping with title and sections")
        title = data.get("title")
        if not isinstance(title, str) or not title.strip():
            raise OutlineError(f"{source}: title: must be a non-empty string")
        report_id = data.get("report_id")
        if report_id is not None and (not isinstance(report_id, str) or not report_id.strip()):
            raise OutlineError(f"{source}: report_id: must be a non-empty string when set")
        raw_sections = data.get("sections")
        if not isinstance(raw_sections, list) or not raw_sections:
            raise OutlineError(f"{source}: sections: must be a non-empty list")
        sections: List[Section] = []
        seen = set()
        for i, raw in enumerate(raw_sections):
            where = f"{source}: sections[{i}]"
            if not isinstance(raw, Mapping):
                raise OutlineError(f"{where}: expected a mapping with id, title and type")
            sid = raw.get("id")
            if isinstance(sid, (int, float)) and not isinstance(sid, bool):
                sid = str(sid)
            if not isinstance(sid, str) or not sid.strip():
                raise OutlineError(f"{where}.id: must be a non-empty string")
            if sid == ABSTRACT_SECTION_ID or sid in seen:
                raise OutlineError(f"{where}.id: {sid!r} is used twice or reserved")
            seen.add(sid)
            stitle = raw.get("title")
            if not isinstance(stitle, str) or not stitle.strip():
                raise OutlineError(f"{where}.title: must be a non-empty string")
            raw_type = raw.get("type")
            if not isinstance(raw_type, str):
                raise OutlineError(f"{where}.type: must be a section type name, e.g. INTRODUCTION")
            try:
                stype = SectionType.parse(raw_type)
            except ValueError as e:
                raise OutlineError(f"{where}.type: {e}") from None
            brief = raw.get("brief", "") or ""
            if not isinstance(brief, str):
                raise OutlineError(f"{where}.brief: must be a string")
            sections.append(Section(id=sid, title=stitle.strip(), type=stype, brief=brief.strip()))
        return cls(title=title.strip(), sections=tuple(sections), report_id=report_id)
