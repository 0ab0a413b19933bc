"""The gateway's response cache through the SDK: a rebuilt report costs nothing for the sections
that did not change; the per-call cache modes; a streamed hit."""

from __future__ import annotations

import os

import pytest
from _support import OUTLINE

from vra_gateway import (
    CacheMode,
    CacheStatus,
    Delta,
    GatewayClient,
    NotCached,
    Phase,
    ReportCompiler,
    Result,
    SectionType,
)


@pytest.fixture
def cached_gateway(start_gateway):
    """A dedicated `demo --serve` with the in-memory response cache."""
    return start_gateway(VRA_CACHE="memory")


def test_a_rebuilt_report_is_answered_from_the_cache_and_spends_nothing(cached_gateway) -> None:
    first_id, second_id = (f"rebuild-{os.urandom(4).hex()}" for _ in range(2))
    with GatewayClient(cached_gateway.address, timeout=10) as client:
        first = ReportCompiler(client, OUTLINE, report_id=first_id).compile()
        second = ReportCompiler(client, OUTLINE, report_id=second_id).compile()

    assert first.ok and second.ok
    assert len(first.records) == len(second.records) == 16
    assert not any(r.cached for r in first.records), "a first build has nothing to reuse"
    assert all(r.cached and r.attempts == 0 for r in second.records), "nothing sent upstream"
    assert second.markdown.replace(second_id, first_id) == first.markdown
    # The same tiers' answers, with their original token counts.
    assert [(r.tier, r.input_tokens, r.output_tokens) for r in second.records] == [
        (r.tier, r.input_tokens, r.output_tokens) for r in first.records
    ]

    paid, rebuilt = first.usage, second.usage
    assert paid is not None and rebuilt is not None
    assert rebuilt.cached_calls == 16
    assert (rebuilt.primary_calls, rebuilt.secondary_calls) == (0, 0)
    assert rebuilt.budget.cloud_calls_used == 0 and rebuilt.budget.cloud_cost_used_usd == 0.0
    assert (rebuilt.cloud_usage.input_tokens, rebuilt.local_usage.output_tokens) == (0, 0)
    assert paid.cost.total_usd > 0
    assert rebuilt.cache_saved_usd == pytest.approx(paid.cost.total_usd, abs=1e-9)
    assert sum(p.cached_calls for p in rebuilt.phases) == 16
    assert {p.phase for p in rebuilt.phases} == set(Phase)


def test_the_cache_modes_steer_each_call(cached_gateway) -> None:
    report = f"modes-{os.urandom(4).hex()}"
    args = dict(section_type=SectionType.ANALYSIS, system_prompt="Be brief.")
    with GatewayClient(cached_gateway.address, timeout=10) as client:
        with pytest.raises(NotCached) as missing:
            client.generate(report, "1", Phase.REFINE, "Never asked.", cache=CacheMode.ONLY_IF_CACHED, **args)
        assert missing.value.code == "NOT_FOUND"

        first = client.generate(report, "1", Phase.REFINE, "Asked once.", **args)
        assert first.cache_status is CacheStatus.MISS and not first.usage.cached
        hit = client.generate(report, "1", Phase.REFINE, "Asked once.", cache="only_if_cached", **args)
        assert hit.cache_status is CacheStatus.HIT and hit.usage.cached
        assert (hit.text, hit.cost_usd) == (first.text, 0.0)

        fresh = client.generate(report, "1", Phase.REFINE, "Asked once.", cache="NO_CACHE", **args)
        assert fresh.cache_status is CacheStatus.BYPASS
        zero = client.generate(report, "1", Phase.REFINE, "Asked once.", max_age_secs=0, **args)
        assert zero.cache_status is CacheStatus.BYPASS

        client.generate(report, "1", Phase.REFINE, "Not kept.", cache=CacheMode.NO_STORE, **args)
        with pytest.raises(NotCached):
            client.generate(report, "1", Phase.REFINE, "Not kept.", cache="ONLY_IF_CACHED", **args)

        events = list(client.generate_stream(report, "1", Phase.REFINE, "Asked once.", **args))
        done = events[-1]
        assert isinstance(done, Result) and done.cache_status is CacheStatus.HIT
        assert "".join(e.text for e in events if isinstance(e, Delta)) == first.text
        assert done.text == first.text


def test_without_a_cache_the_status_is_off(gateway, report_id: str) -> None:
    with GatewayClient(gateway.address, timeout=10) as client:
        result = client.generate(report_id, "1", Phase.EXPAND, "Expand it.")
        assert result.cache_status is CacheStatus.OFF
        with pytest.raises(ValueError):
            client.generate(report_id, "1", Phase.EXPAND, "Expand it.", cache="SOMETIMES")
