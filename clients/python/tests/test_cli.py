"""`python -m vra_gateway compile` and examples/python/compile_report.py, as subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

from _support import OUTLINE, REPO_ROOT, closed_port

HEADER = ["section", "phase", "tier", "provider", "model", "rule", "fallback", "attempts"]


def cli(*args: str, env_extra: dict = {}) -> subprocess.CompletedProcess:  # noqa: B006 - read only
    env = {k: v for k, v in os.environ.items() if k not in ("VRA_TOKEN", "VRA_GATEWAY_TARGET")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "vra_gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def rows(stdout: str) -> List[List[str]]:
    return [line.split() for line in stdout.splitlines()]


def test_compile_writes_the_report_and_prints_the_table(gateway, tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    p = cli(
        "compile", str(OUTLINE), "--out", str(out), "--target", gateway.address, "--report-id", "cli-report-1"
    )
    assert p.returncode == 0, p.stderr
    md = out.read_text()
    assert md.startswith("# Hybrid LLM Routing for Long Technical Reports\n\n## Abstract\n\n")
    for title in ("Introduction", "Methodology", "Analysis", "Implementation", "Conclusion"):
        assert f"\n## {title}\n\n" in md
    assert "Not compiled" not in md

    table = rows(p.stdout)
    assert table[0] == HEADER
    assert [
        "2",
        "Methodology",
        "DRAFT",
        "SECONDARY",
        "local",
        "llama3:8b",
        "draft-template-secondary",
        "-",
        "1",
    ] in table
    assert [
        "Abstract",
        "ABSTRACT",
        "PRIMARY",
        "openai",
        "gpt-4o",
        "abstract-always-primary",
        "-",
        "1",
    ] in table
    assert sum(1 for r in table if r[-1:] == ["1"]) == 16
    out_lines = p.stdout.splitlines()
    assert "report cli-report-1: cloud calls used 9/15" in out_lines
    # The cost line follows the budget line: the report's total, the all-cloud price, the savings.
    cost = out_lines[out_lines.index("report cli-report-1: cloud calls used 9/15") + 1]
    assert re.fullmatch(
        r"report cli-report-1: cost \$0\.\d{6} \(cloud \$0\.\d{6}, local \$0\.000000\); "
        r"all on the primary model \$0\.\d{6}; saved \$0\.\d{6} \(\d+%\)",
        cost,
    ), cost
    # Not a terminal: one plain progress line per call on stderr.
    progress = [line for line in p.stderr.splitlines() if line.startswith("[")]
    assert len(progress) == 16 and progress[-1].startswith("[16/16] Abstract ABSTRACT: PRIMARY openai/gpt-4o")


def test_compile_streams_with_token_over_tls(start_gateway, pki, token, tmp_path: Path) -> None:
    gw = start_gateway(
        VRA_CLIENTS_FILE=str(token.clients_file),
        VRA_TLS_CERT_FILE=str(pki.server_cert),
        VRA_TLS_KEY_FILE=str(pki.server_key),
        VRA_TLS_CLIENT_CA_FILE=str(pki.ca),
    )
    out = tmp_path / "report.md"
    p = cli(
        "compile",
        str(OUTLINE),
        "--out",
        str(out),
        "--target",
        f"localhost:{gw.port}",
        "--stream",
        "--tls-ca",
        str(pki.ca),
        "--tls-cert",
        str(pki.client_cert),
        "--tls-key",
        str(pki.client_key),
        "--concurrency",
        "3",
        env_extra={"VRA_TOKEN": token.value},
    )
    assert p.returncode == 0, p.stderr
    assert "ABSTRACT*" in p.stdout and "cloud calls used 9/15" in p.stdout
    assert out.read_text().count("\n## ") == 6


def test_a_failed_call_exits_1_and_still_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    p = cli(
        "compile", str(OUTLINE), "--out", str(out), "--target", f"127.0.0.1:{closed_port()}", "--timeout", "5"
    )
    assert p.returncode == 1
    assert out.read_text().count("> **[Not compiled]**") == 6
    assert "FAILED" in p.stdout and "failed: 1 Introduction DRAFT: UNAVAILABLE" in p.stdout
    assert "could not reach the gateway" in p.stderr


def test_bad_arguments_and_outlines_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: T\nsections:\n  - {id: 1, title: A, type: CHAPTER}\n")
    out = tmp_path / "r.md"
    p = cli("compile", str(bad), "--out", str(out))
    assert p.returncode == 2 and "sections[0].type" in p.stderr and not out.exists()
    assert cli("compile", str(tmp_path / "missing.yaml"), "--out", str(out)).returncode == 2
    assert cli("compile", str(OUTLINE)).returncode == 2  # --out is required
    assert cli("compile", str(OUTLINE), "--out", str(out), "--tls-cert", "c.pem").returncode == 2
    assert cli("compile", str(OUTLINE), "--out", str(tmp_path / "no" / "dir.md")).returncode == 2
    assert cli("compile", str(OUTLINE), "--out", str(out), "--concurrency", "0").returncode == 2


def test_the_example_script(gateway, tmp_path: Path) -> None:
    out = tmp_path / "example.md"
    p = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "examples" / "python" / "compile_report.py"),
            gateway.address,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert rows(p.stdout)[0] == HEADER and "cloud calls used 9/15" in p.stdout
    assert re.search(r": cost \$0\.\d{6} .*; saved \$0\.\d{6}", p.stdout)
    assert out.read_text().startswith("# Hybrid LLM Routing for Long Technical Reports")


def test_progress_is_a_bar_on_a_terminal() -> None:
    import io

    from vra_gateway import CallRecord, Failure, FallbackReason, Phase, Tier, Unavailable
    from vra_gateway.cli import Progress

    record = CallRecord(
        section_id="1",
        section_title="Intro",
        phase=Phase.DRAFT,
        tier=Tier.PRIMARY,
        provider="openai",
        model="gpt-4o",
        rule="draft-reasoning-primary",
        fallback_reason=FallbackReason.NONE,
        attempts=1,
        input_tokens=1,
        output_tokens=2,
        latency_ms=3.0,
        streamed=False,
    )
    failure = Failure(
        section_id="2",
        section_title="Method",
        phase=Phase.EXPAND,
        error=Unavailable("UNAVAILABLE", "down"),
        tries=2,
    )
    tty = io.StringIO()
    bar = Progress(total=4, stream=tty, tty=True)
    bar(record)
    bar(failure)
    bar.close()
    text = tty.getvalue()
    assert text.startswith("\r\x1b[2K[#######---------------------] 1/4 1 Intro DRAFT")
    assert "[##############--------------] 2/4 2 Method EXPAND" in text
    assert "2 Method EXPAND: FAILED after 2 tries: UNAVAILABLE: down\n" in text

    plain = io.StringIO()
    lines = Progress(total=4, stream=plain, tty=False)
    lines(record)
    assert plain.getvalue() == "[1/4] 1 Intro DRAFT: PRIMARY openai/gpt-4o draft-reasoning-primary 3 ms\n"
