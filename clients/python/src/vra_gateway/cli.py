"""``python -m vra_gateway compile outline.yaml --out report.md``: compile a report from the shell.

Progress goes to stderr (a bar on a terminal, one plain line per call otherwise); the routing
table, the budget line and the cost line go to stdout. Exit codes: 0 the report was written;
1 a call failed for good (the report is still written, with placeholders) or the gateway could
not be reached; 2 bad arguments or a bad outline.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, TextIO

from ._channel import DEFAULT_TIMEOUT, TLS
from .client import GatewayClient
from .compiler import ReportCompiler
from .errors import Unavailable
from .outline import Outline, OutlineError
from .report import CallRecord, ProgressEvent, one_line, section_label

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class Progress:
    """Reports each finished call: a redrawn bar on a terminal, plain lines otherwise."""

    WIDTH = 28

    def __init__(self, total: int, stream: TextIO, tty: Optional[bool] = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty

    def __call__(self, event: ProgressEvent) -> None:
        self.done += 1
        label = f"{section_label(event.section_id, event.section_title)} {event.phase.name}"
        if isinstance(event, CallRecord):
            fallback = (
                "" if event.fallback_reason.name == "NONE" else f" fallback={event.fallback_reason.name}"
            )
            served = f"{event.tier.name} {event.provider}/{event.model}"
            detail = f"{served} {event.rule}{fallback} {event.latency_ms:.0f} ms"
        else:
            detail = f"FAILED after {event.tries} tries: {one_line(str(event.error))}"
        if self.tty:
            filled = self.WIDTH * min(self.done, self.total) // max(self.total, 1)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            line = f"[{bar}] {self.done}/{self.total} {label}"
            self.stream.write("\r\x1b[2K" + line[:120])
            if isinstance(event, CallRecord):
                self.stream.flush()
            else:
                self.stream.write(f"\n  {label}: {detail}\n")
        else:
            self.stream.write(f"[{self.done}/{self.total}] {label}: {detail}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vra_gateway",
        description="Client tools of vra-gateway.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    c = sub.add_parser(
        "compile",
        help="compile a report outline through the gateway into Markdown",
        description=(
            "Compile OUTLINE (YAML: title, optional report_id, sections with id, title, type, brief) "
            "section by section (DRAFT, EXPAND, REFINE), then the abstract, and write the Markdown."
        ),
        epilog="exit codes: 0 written; 1 a call failed (the file is still written) or the gateway "
        "could not be reached; 2 bad arguments or outline",
    )
    c.add_argument("outline", help="the outline YAML file, e.g. examples/outline.yaml")
    c.add_argument("--out", required=True, metavar="FILE", help="where to write the Markdown report")
    c.add_argument(
        "--target",
        metavar="ADDR",
        help="gateway host:port (default $VRA_GATEWAY_TARGET, else 127.0.0.1:50051)",
    )
    c.add_argument("--token", metavar="T", help="bearer token (default $VRA_TOKEN)")
    c.add_argument("--tls-ca", metavar="FILE", help="PEM root CA of the gateway's certificate; enables TLS")
    c.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM) for mTLS; needs --tls-key")
    c.add_argument("--tls-key", metavar="FILE", help="client private key (PEM) for mTLS; needs --tls-cert")
    c.add_argument(
        "--tls-server-name", metavar="NAME", help="name to verify the gateway's certificate against"
    )
    c.add_argument(
        "--report-id", metavar="ID", help="report id (default: the outline's, else a slug of the title)"
    )
    c.add_argument(
        "--concurrency", type=int, default=2, metavar="N", help="sections compiled in parallel (default 2)"
    )
    c.add_argument("--stream", action="store_true", help="use streaming calls")
    c.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="deadline of each call (default 120)",
    )
    return parser


def _tls(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Optional[TLS]:
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_cert and not args.tls_ca:
        parser.error("--tls-cert/--tls-key need --tls-ca")
    if not args.tls_ca:
        if args.tls_server_name:
            parser.error("--tls-server-name needs --tls-ca")
        return None
    for path in (args.tls_ca, args.tls_cert, args.tls_key):
        if path and not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    return TLS(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        parser.error(f"--out: {out} is a directory or its directory does not exist")
    tls = _tls(args, parser)
    try:
        outline = Outline.load(args.outline)
    except OutlineError as e:
        print(f"error: bad outline: {e}", file=sys.stderr)
        return EXIT_USAGE

    progress = Progress(total=3 * len(outline.sections) + 1, stream=sys.stderr)
    try:
        with GatewayClient(args.target, token=args.token, timeout=args.timeout, tls=tls) as client:
            compiler = ReportCompiler(
                client,
                outline,
                report_id=args.report_id,
                concurrency=args.concurrency,
                stream=args.stream,
                on_progress=progress,
            )
            print(f"compiling report {compiler.report_id} via {client.target}", file=sys.stderr)
            report = compiler.compile()
    except KeyboardInterrupt:
        progress.close()
        print("interrupted", file=sys.stderr)
        return 130
    progress.close()

    try:
        out.write_text(report.markdown, encoding="utf-8")
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror}", file=sys.stderr)
        return EXIT_FAILED

    lines: List[str] = [report.routing_table(), ""]
    lines += [
        f"failed: {section_label(f.section_id, f.section_title)} {f.phase.name}: {one_line(str(f.error))}"
        for f in report.failures
    ]
    lines.append(report.budget_line())
    lines.append(report.cost_line())
    print("\n".join(lines))
    if (
        not report.records
        and report.failures
        and all(isinstance(f.error, Unavailable) for f in report.failures)
    ):
        print(f"error: could not reach the gateway at {client.target}", file=sys.stderr)
    print(f"wrote {out} ({len(report.markdown.encode('utf-8'))} bytes)", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
