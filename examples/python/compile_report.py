#!/usr/bin/env python3
"""Compile examples/outline.yaml through vra-gateway and print how each call was routed.

    pip install ./clients/python
    vra-gateway demo --serve                      # or any gateway; prints "gateway listening on ADDR"
    python examples/python/compile_report.py [ADDR] [--out report.md]

The target is ADDR, else $VRA_GATEWAY_TARGET, else 127.0.0.1:50051; a token comes from $VRA_TOKEN.
Exits 1 if a call failed (the report then has visible placeholders).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTLINE = HERE.parent / "outline.yaml"

try:
    import vra_gateway
except ImportError:  # running from a checkout without `pip install ./clients/python`
    sys.path.insert(0, str(HERE.parents[1] / "clients" / "python" / "src"))
    import vra_gateway


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", nargs="?", help="gateway host:port")
    parser.add_argument(
        "--outline", default=str(OUTLINE), help="outline YAML (default examples/outline.yaml)"
    )
    parser.add_argument("--out", help="also write the Markdown report here")
    args = parser.parse_args()

    with vra_gateway.GatewayClient(args.target) as client:
        compiler = vra_gateway.ReportCompiler(
            client,
            args.outline,
            on_progress=lambda e: print(
                f"  {e.section_id:>8} {e.phase.name:<8} "
                f"{'ok' if isinstance(e, vra_gateway.CallRecord) else 'FAILED: ' + str(e.error)}",
                file=sys.stderr,
            ),
        )
        report = compiler.compile()

    print(report.routing_table())
    print()
    for failure in report.failures:
        print(f"failed: {failure.section_id} {failure.phase.name}: {failure.error}")
    print(report.budget_line())
    print(report.cost_line())
    if args.out:
        Path(args.out).write_text(report.markdown, encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
