"""Cost accounting: per-call cost, the report's cost and savings, phases, the dollar cap.

The sandbox's simulated upstreams report usage; gpt-4o costs $2.50 / $10.00 per million input /
output tokens, the local model is free. The gateway prices in exact nano-dollars (rounded up),
and these prices give whole nano-dollars per token, so the cost is exact up to float rounding.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, Tuple

import pytest
from _support import OUTLINE, expected_route

from vra_gateway import (
    Budget,
    FallbackReason,
    GatewayClient,
    Outline,
    Phase,
    PhaseUsage,
    Report,
    ReportCompiler,
    ReportCost,
    ReportUsage,
    Tier,
    Usage,
)
from vra_gateway import _convert
from vra_gateway._pb import gateway_pb2 as pb

INPUT_USD = 2.5e-6  # gpt-4o, per input token
OUTPUT_USD = 1e-5  # gpt-4o, per output token
TOL = 1e-12
SECTION_TYPES = {s.id: s.type.name for s in Outline.load(OUTLINE).sections}


def gpt4o(input_tokens: int, output_tokens: int) -> float:
    return input_tokens * INPUT_USD + output_tokens * OUTPUT_USD


@pytest.fixture
def client(gateway):
    with GatewayClient(gateway.address, timeout=10) as c:
        yield c


def test_a_cloud_call_costs_its_tokens_at_the_model_price(client: GatewayClient, report_id: str) -> None:
    r = client.generate(report_id, "1", Phase.REFINE, "Refine this paragraph, please. " * 4)
    assert r.route.cloud and r.route.model == "gpt-4o"
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0 and r.usage.estimated is False
    assert r.cost_usd is not None
    assert r.cost_usd == pytest.approx(gpt4o(r.usage.input_tokens, r.usage.output_tokens), abs=TOL)
    b = r.budget
    assert b.cloud_cost_used_usd == pytest.approx(r.cost_usd, abs=TOL)
    assert b.cloud_cost_reserved_usd == 0.0 and b.cloud_cost_limit_usd is None  # no dollar cap

    # A stream's final result is priced the same way.
    final = list(client.generate_stream(report_id, "1", Phase.REFINE, "Refine again."))[-1]
    assert final.cost_usd == pytest.approx(gpt4o(final.usage.input_tokens, final.usage.output_tokens), abs=TOL)
    assert final.budget.cloud_cost_used_usd == pytest.approx(r.cost_usd + final.cost_usd, abs=TOL)


def test_a_local_call_costs_zero_not_unknown(client: GatewayClient, report_id: str) -> None:
    r = client.generate(report_id, "1", Phase.EXPAND, "Expand.")
    assert (r.route.cloud, r.route.model) == (False, "llama3:8b")
    assert r.usage.output_tokens > 0
    assert r.cost_usd == 0.0 and r.cost_usd is not None
    assert r.budget.cloud_cost_used_usd == 0.0


def test_report_usage_cost_savings_and_phases(gateway, report_id: str) -> None:
    with GatewayClient(gateway.address, timeout=10) as client:
        report = ReportCompiler(client, OUTLINE, report_id=report_id).compile()
    assert report.ok and len(report.records) == 16

    # Every record carries its call's cost.
    for rec in report.records:
        assert rec.estimated is False
        if rec.cloud:
            assert rec.cost_usd == pytest.approx(gpt4o(rec.input_tokens, rec.output_tokens), abs=TOL)
        else:
            assert rec.cost_usd == 0.0

    u = report.usage
    assert u is not None
    c = u.cost
    cloud = sum(r.cost_usd or 0.0 for r in report.records if r.cloud)
    all_cloud = sum(gpt4o(r.input_tokens, r.output_tokens) for r in report.records)
    assert c.cloud_usd == pytest.approx(cloud, abs=TOL) and c.cloud_usd > 0
    assert c.local_usd == 0.0
    assert c.total_usd == pytest.approx(c.cloud_usd + c.local_usd, abs=TOL)
    assert c.all_cloud_usd is not None and c.all_cloud_usd == pytest.approx(all_cloud, abs=TOL)
    assert c.all_cloud_usd > c.total_usd
    assert c.savings_usd is not None and c.savings_usd > 0
    assert c.savings_usd == pytest.approx(c.all_cloud_usd - c.total_usd, abs=TOL)
    assert c.unpriced_calls == 0
    assert u.budget.cloud_cost_used_usd == pytest.approx(c.cloud_usd, abs=TOL)
    assert u.cloud_usage.estimated is False and u.local_usage.estimated is False

    # Phases: one cell per (phase, answering tier), calls and tokens summing to the records'.
    expected: Dict[Tuple[Phase, Tier], list] = defaultdict(lambda: [0, 0, 0, 0.0])
    for sid, stype in SECTION_TYPES.items():
        for phase in ("DRAFT", "EXPAND", "REFINE"):
            tier, _ = expected_route(stype, phase)
            expected[(Phase[phase], Tier[tier])][0] += 1
    expected[(Phase.ABSTRACT, Tier.PRIMARY)][0] += 1
    for rec in report.records:
        cell = expected[(rec.phase, rec.tier)]
        cell[1] += rec.input_tokens
        cell[2] += rec.output_tokens
        cell[3] += rec.cost_usd or 0.0
    assert all(isinstance(p, PhaseUsage) for p in u.phases)
    got = {(p.phase, p.tier): p for p in u.phases}
    assert set(got) == set(expected) == {
        (Phase.DRAFT, Tier.PRIMARY),
        (Phase.DRAFT, Tier.SECONDARY),
        (Phase.EXPAND, Tier.SECONDARY),
        (Phase.REFINE, Tier.PRIMARY),
        (Phase.ABSTRACT, Tier.PRIMARY),
    }
    for key, (calls, tin, tout, cost) in expected.items():
        p = got[key]
        assert (p.calls, p.usage.input_tokens, p.usage.output_tokens) == (calls, tin, tout), key
        assert p.cost_usd == pytest.approx(cost, abs=TOL), key
        assert (p.cost_usd > 0) == (key[1] is Tier.PRIMARY)
    assert sum(p.calls for p in u.phases) == 16

    line = report.cost_line()
    assert line.startswith(f"report {report_id}: cost ${c.total_usd:.6f} (cloud ${c.cloud_usd:.6f}, local $0.000000)")
    assert f"all on the primary model ${c.all_cloud_usd:.6f}" in line
    assert f"saved ${c.savings_usd:.6f} (" in line


def test_an_unknown_report_costs_nothing(client: GatewayClient, report_id: str) -> None:
    u = client.report_usage(report_id)
    assert (u.cost.cloud_usd, u.cost.local_usd, u.cost.total_usd, u.cost.unpriced_calls) == (0.0, 0.0, 0.0, 0)
    assert u.phases == []


def test_the_dollar_cap(start_gateway, report_id: str) -> None:
    gw = start_gateway(MAX_CLOUD_COST_USD="0.005")
    with GatewayClient(gw.address, timeout=10) as client:
        d = client.resolve_route(report_id, Phase.REFINE)
        assert d.budget.cloud_cost_limit_usd == 0.005 and d.budget.cloud_cost_used_usd == 0.0

        # A small worst case (input bound + 200 output tokens at $10/M) fits under the cap.
        spent = 0.0
        for _ in range(2):
            r = client.generate(report_id, "1", Phase.REFINE, "Refine.", max_tokens=200)
            assert (r.route.tier, r.route.fallback_reason) == (Tier.PRIMARY, FallbackReason.NONE)
            assert r.cost_usd == pytest.approx(gpt4o(r.usage.input_tokens, r.usage.output_tokens), abs=TOL)
            spent += r.cost_usd or 0.0
            assert r.budget.cloud_cost_limit_usd == 0.005
            assert r.budget.cloud_cost_used_usd == pytest.approx(spent, abs=TOL)
            assert r.budget.cloud_cost_reserved_usd == 0.0 and not r.budget.exhausted

        # 1000 output tokens may cost $0.01: that worst case cannot fit, so the call goes local.
        r = client.generate(report_id, "1", Phase.REFINE, "Refine.", max_tokens=1000)
        assert (r.route.tier, r.route.fallback_reason) == (Tier.SECONDARY, FallbackReason.COST_LIMIT)
        assert r.cost_usd == 0.0 and not r.budget.exhausted

        # That refusal was for this call only: a small worst case still fits afterwards.
        r = client.generate(report_id, "1", Phase.REFINE, "Refine.", max_tokens=200)
        assert (r.route.tier, r.route.fallback_reason) == (Tier.PRIMARY, FallbackReason.NONE)
        spent += r.cost_usd or 0.0

        u = client.report_usage(report_id)
        b = u.budget
        assert b.cloud_cost_limit_usd == 0.005 and not b.exhausted
        assert b.cloud_cost_used_usd == pytest.approx(spent, abs=TOL) and b.cloud_cost_used_usd <= 0.005
        assert b.cloud_cost_reserved_usd == 0.0
        assert u.cost.cloud_usd == pytest.approx(spent, abs=TOL)


def test_a_compiled_report_stays_under_the_dollar_cap(start_gateway, report_id: str) -> None:
    gw = start_gateway(MAX_CLOUD_COST_USD="0.005")
    with GatewayClient(gw.address, timeout=10) as client:
        report = ReportCompiler(client, OUTLINE, report_id=report_id, max_tokens=100).compile()
    assert report.ok and report.usage is not None
    b = report.usage.budget
    assert b.cloud_cost_limit_usd == 0.005
    settled = sum(r.cost_usd or 0.0 for r in report.records if r.cloud)
    assert b.cloud_cost_used_usd == pytest.approx(settled, abs=TOL)
    assert 0 < b.cloud_cost_used_usd <= 0.005 and b.cloud_cost_reserved_usd == 0.0
    # Whatever the cap refused went local with COST_LIMIT, at no cost.
    for r in report.records:
        if r.fallback_reason is FallbackReason.COST_LIMIT:
            assert (r.tier, r.cloud, r.cost_usd) == (Tier.SECONDARY, False, 0.0)


# ---- the converter, on fabricated messages ------------------------------------------------


def test_an_unpriced_response_has_unknown_cost() -> None:
    msg = pb.GenerateResponse(
        text="t",
        route=pb.Route(tier=pb.PROVIDER_TIER_PRIMARY, provider="p", model="no-price", cloud=True),
        usage=pb.Usage(input_tokens=3, output_tokens=4, estimated=True),
        attempts=1,
    )
    assert not msg.HasField("cost_usd")
    r = _convert.result(msg)
    assert r.cost_usd is None and r.usage == Usage(3, 4, estimated=True)
    assert r.budget.cloud_cost_limit_usd is None  # unset: no dollar cap, not a cap of 0

    msg.cost_usd = 0.0  # set to 0 is free, not unknown
    assert _convert.result(msg).cost_usd == 0.0
    msg.budget.cloud_cost_limit_usd = 0.0
    assert _convert.result(msg).budget.cloud_cost_limit_usd == 0.0


def test_an_unpriced_primary_leaves_all_cloud_and_savings_unknown() -> None:
    msg = pb.GetReportUsageResponse(
        report_id="r",
        cost=pb.ReportCost(cloud_usd=0.5, local_usd=0.25, total_usd=0.75, unpriced_calls=2, abandoned_usd=0.125),
        phases=[
            pb.PhaseUsage(
                phase=pb.COMPILATION_PHASE_DRAFT,
                tier=pb.PROVIDER_TIER_SECONDARY,
                calls=3,
                usage=pb.Usage(input_tokens=7, output_tokens=8),
                cost_usd=0.25,
            )
        ],
    )
    u = _convert.report_usage(msg)
    assert u.cost == ReportCost(0.5, 0.25, 0.75, None, None, 2, 0.125)
    assert u.phases == [PhaseUsage(Phase.DRAFT, Tier.SECONDARY, 3, Usage(7, 8), 0.25)]
    line = Report("r", "t", "", usage=u).cost_line()
    assert line == (
        "report r: cost $0.750000 (cloud $0.500000, local $0.250000); "
        "all on the primary model unknown (it has no price); saved unknown"
        " — 2 call(s) of unpriced models not counted (sums are lower bounds)"
    )

    msg.cost.all_cloud_usd = 1.0
    msg.cost.savings_usd = 0.25
    c = _convert.report_usage(msg).cost
    assert (c.all_cloud_usd, c.savings_usd) == (1.0, 0.25)


def test_cost_line_without_usage() -> None:
    r = Report("r", "t", "", usage=None)
    assert r.cost_line() == "report r: cost unknown (usage unavailable)"
    r = Report("r", "t", "", usage=ReportUsage("r", Budget()))
    assert r.cost_line() == (
        "report r: cost $0.000000 (cloud $0.000000, local $0.000000); "
        "all on the primary model unknown (it has no price); saved unknown"
    )
