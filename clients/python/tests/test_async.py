"""AsyncGatewayClient (grpc.aio) and ReportCompiler.compile_async against a real gateway."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Tuple

import pytest
from _support import OUTLINE, closed_port, expected_route

from vra_gateway import (
    AsyncGatewayClient,
    DeadlineExceeded,
    Delta,
    FallbackReason,
    GatewayClient,
    InvalidArgument,
    Outline,
    Phase,
    ReportCompiler,
    Result,
    SectionType,
    Tier,
    Unavailable,
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_async_rpcs(gateway, report_id: str) -> None:
    async def main() -> None:
        async with AsyncGatewayClient(gateway.address, timeout=10) as c:
            r = await c.generate(report_id, "1", Phase.DRAFT, "Draft.", section_type=SectionType.CONCLUSION)
            assert isinstance(r, Result) and r.text
            assert (r.route.tier, r.route.rule, r.route.fallback_reason) == (
                Tier.PRIMARY,
                "draft-reasoning-primary",
                FallbackReason.NONE,
            )

            events = [e async for e in c.generate_stream(report_id, "1", Phase.EXPAND, "Expand.")]
            assert len(events) > 2 and all(isinstance(e, Delta) for e in events[:-1])
            final = events[-1]
            assert isinstance(final, Result) and final.text == "".join(e.text for e in events[:-1])
            assert final.route.rule == "expand-secondary"

            d = await c.resolve_route(report_id, Phase.REFINE, SectionType.METHODOLOGY)
            assert (d.route.tier, d.route.rule) == (Tier.PRIMARY, "refine-primary")

            u = await c.report_usage(report_id)
            assert (u.primary_calls, u.secondary_calls, u.budget.cloud_calls_used) == (1, 1, 1)

    run(main())


def test_async_errors(gateway, report_id: str) -> None:
    async def main() -> None:
        async with AsyncGatewayClient(gateway.address, timeout=10) as c:
            with pytest.raises(InvalidArgument) as info:
                await c.generate("", "1", Phase.DRAFT, "p")
            assert info.value.field == "report_id"
            with pytest.raises(InvalidArgument) as info:
                [e async for e in c.generate_stream(report_id, "1", Phase.DRAFT, " ")]
            assert info.value.field == "prompt"
            with pytest.raises(DeadlineExceeded):
                await c.generate(report_id, "1", Phase.EXPAND, "x" * 1_000_000, timeout=0.001)
        async with AsyncGatewayClient(f"127.0.0.1:{closed_port()}", timeout=5) as c:
            with pytest.raises(Unavailable):
                await c.report_usage(report_id)

    run(main())


def test_compile_async_matches_the_matrix(gateway, report_id: str) -> None:
    deltas: Dict[Tuple[str, Phase], List[str]] = {}

    def on_delta(sid: str, phase: Phase, text: str) -> None:
        deltas.setdefault((sid, phase), []).append(text)

    async def main() -> Any:
        async with AsyncGatewayClient(gateway.address, timeout=10) as c:
            return await ReportCompiler(
                c, OUTLINE, report_id=report_id, concurrency=3, stream=True, on_delta=on_delta
            ).compile_async()

    report = run(main())
    assert report.ok and len(report.records) == 16 and len(deltas) == 16
    types = {s.id: s.type.name for s in Outline.load(OUTLINE).sections}
    for r in report.records:
        stype = types.get(r.section_id, "OTHER")
        assert (r.tier.name, r.rule) == expected_route(stype, r.phase.name), r
    assert report.usage is not None and report.usage.budget.cloud_calls_used == 9
    assert "## Abstract" in report.markdown and "Not compiled" not in report.markdown


def test_compile_async_needs_an_async_client(gateway) -> None:
    with GatewayClient(gateway.address) as c:
        with pytest.raises(TypeError, match="AsyncGatewayClient"):
            run(ReportCompiler(c, OUTLINE).compile_async())
