"""ReportCompiler end to end: the routing matrix, the budget, fallbacks, retries and failures."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Tuple

import pytest
from _support import OUTLINE, closed_port, expected_route

from vra_gateway import (
    CallRecord,
    Failure,
    FallbackReason,
    GatewayClient,
    InvalidArgument,
    Outline,
    OutlineError,
    Phase,
    ReportCompiler,
    Result,
    Tier,
    Unavailable,
)

SECTION_TYPES = {s.id: s.type.name for s in Outline.load(OUTLINE).sections}


def _routes(records: List[CallRecord]) -> Dict[Tuple[str, str], Tuple[str, str]]:
    return {(r.section_id, r.phase.name): (r.tier.name, r.rule) for r in records}


def test_outline_compiles_by_the_hybrid_matrix(gateway, report_id: str) -> None:
    progress: List[Any] = []
    with GatewayClient(gateway.address, timeout=10) as client:
        report = ReportCompiler(client, OUTLINE, report_id=report_id, on_progress=progress.append).compile()

    assert report.failures == [] and report.ok
    assert len(report.records) == 16 and len(progress) == 16
    expected = {
        (sid, phase): expected_route(stype, phase)
        for sid, stype in SECTION_TYPES.items()
        for phase in ("DRAFT", "EXPAND", "REFINE")
    }
    expected[("abstract", "ABSTRACT")] = ("PRIMARY", "abstract-always-primary")
    assert _routes(report.records) == expected
    # Records come back in outline and phase order, the abstract last.
    assert [(r.section_id, r.phase.name) for r in report.records][:4] == [
        ("1", "DRAFT"),
        ("1", "EXPAND"),
        ("1", "REFINE"),
        ("2", "DRAFT"),
    ]
    assert report.records[-1].phase is Phase.ABSTRACT
    assert all(
        r.fallback_reason is FallbackReason.NONE and r.attempts == 1 and not r.streamed
        for r in report.records
    )
    assert all(r.output_tokens > 0 and r.latency_ms >= 0 for r in report.records)

    assert report.usage is not None and report.usage.report_id == report_id
    b = report.usage.budget
    assert (b.cloud_calls_used, b.cloud_calls_limit, b.exhausted) == (9, 15, False)
    assert (report.usage.primary_calls, report.usage.secondary_calls, report.usage.fallbacks) == (9, 7, 0)
    assert report.budget_line() == f"report {report_id}: cloud calls used 9/15"

    md = report.markdown
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert headings == [
        "# Hybrid LLM Routing for Long Technical Reports",
        "## Abstract",
        "## Introduction",
        "## Methodology",
        "## Analysis",
        "## Implementation",
        "## Conclusion",
    ]
    assert "Not compiled" not in md

    table = report.routing_table().splitlines()
    assert table[0].split() == [
        "section",
        "phase",
        "tier",
        "provider",
        "model",
        "rule",
        "fallback",
        "attempts",
    ]
    assert table[2].split() == [
        "1",
        "Introduction",
        "DRAFT",
        "PRIMARY",
        "openai",
        "gpt-4o",
        "draft-reasoning-primary",
        "-",
        "1",
    ]
    assert table[-1].split() == [
        "Abstract",
        "ABSTRACT",
        "PRIMARY",
        "openai",
        "gpt-4o",
        "abstract-always-primary",
        "-",
        "1",
    ]


def test_each_phase_is_fed_the_previous_phase_and_the_abstract_every_section(gateway, report_id: str) -> None:
    prompts: Dict[Tuple[str, str], str] = {}
    texts: Dict[Tuple[str, str], str] = {}

    class Recording(GatewayClient):
        def generate(self, report_id: str, section_id: str, phase: Any, prompt: str, **kw: Any) -> Result:
            result = super().generate(report_id, section_id, phase, prompt, **kw)
            prompts[(section_id, phase.name)] = prompt
            texts[(section_id, phase.name)] = result.text
            return result

    templates = {
        "draft": "D[{section_id}|{section_title}|{section_type}|{brief}]",
        "expand": "E[{previous}]",
        "refine": "R[{previous}]",
        "abstract": "A[{report_title}]{sections}",
    }
    with Recording(gateway.address, timeout=10) as client:
        report = ReportCompiler(
            client, OUTLINE, report_id=report_id, templates=templates, concurrency=3
        ).compile()
    assert report.ok
    outline = Outline.load(OUTLINE)
    for s in outline.sections:
        assert prompts[(s.id, "DRAFT")] == f"D[{s.id}|{s.title}|{s.type.name}|{s.brief}]"
        assert prompts[(s.id, "EXPAND")] == f"E[{texts[(s.id, 'DRAFT')]}]"
        assert prompts[(s.id, "REFINE")] == f"R[{texts[(s.id, 'EXPAND')]}]"
    expected_sections = "\n\n".join(f"## {s.title}\n\n{texts[(s.id, 'REFINE')]}" for s in outline.sections)
    assert prompts[("abstract", "ABSTRACT")] == f"A[{outline.title}]{expected_sections}"


def test_cost_limit_once_the_budget_is_spent(start_gateway, report_id: str) -> None:
    gw = start_gateway(MAX_CLOUD_CALLS="2")
    with GatewayClient(gw.address, timeout=10) as client:
        report = ReportCompiler(client, OUTLINE, report_id=report_id, concurrency=1).compile()
        assert report.ok and len(report.records) == 16
        served_by_primary = [(r.section_id, r.phase.name) for r in report.records if r.tier is Tier.PRIMARY]
        assert served_by_primary == [("1", "DRAFT"), ("1", "REFINE")]  # the first two cloud calls
        cost_limited = [r for r in report.records if r.fallback_reason is FallbackReason.COST_LIMIT]
        assert len(cost_limited) == 7  # every later primary-routed call, the abstract too
        assert all(r.tier is Tier.SECONDARY and r.provider == "local" and not r.cloud for r in cost_limited)
        assert {r.rule for r in cost_limited} == {
            "draft-reasoning-primary",
            "refine-primary",
            "abstract-always-primary",
        }
        assert report.usage is not None
        b = report.usage.budget
        assert (b.cloud_calls_used, b.cloud_calls_limit, b.exhausted) == (2, 2, True)
        assert report.usage.fallbacks == 7
        assert report.budget_line().endswith("cloud calls used 2/2 — exhausted")
        # The dry run agrees: the report stays pinned to the secondary.
        d = client.resolve_route(report_id, Phase.ABSTRACT)
        assert (d.route.tier, d.route.fallback_reason) == (Tier.SECONDARY, FallbackReason.COST_LIMIT)


def test_primary_error_falls_back_and_is_recorded(start_gateway, report_id: str) -> None:
    gw = start_gateway("--fail-primary-every", "5")
    with GatewayClient(gw.address, timeout=10) as client:
        report = ReportCompiler(client, OUTLINE, report_id=report_id, concurrency=1).compile()
    assert report.ok and len(report.records) == 16
    fell_back = [r for r in report.records if r.fallback_reason is not FallbackReason.NONE]
    # Sequentially the primary serves 1 DRAFT, 1 REFINE, 2 REFINE, 3 DRAFT, then 3 REFINE fails.
    assert [(r.section_id, r.phase.name) for r in fell_back] == [("3", "REFINE")]
    r = fell_back[0]
    assert (r.tier, r.fallback_reason, r.rule, r.provider) == (
        Tier.SECONDARY,
        FallbackReason.PRIMARY_ERROR,
        "refine-primary",
        "local",
    )
    assert r.attempts > 1  # the failed primary requests count too
    assert "PRIMARY_ERROR" in report.routing_table()
    assert report.usage is not None and report.usage.fallbacks == 1


def test_stream_passes_every_delta_to_on_delta(gateway, report_id: str) -> None:
    deltas: Dict[Tuple[str, Phase], List[str]] = defaultdict(list)
    with GatewayClient(gateway.address, timeout=10) as client:
        report = ReportCompiler(
            client,
            OUTLINE,
            report_id=report_id,
            stream=True,
            on_delta=lambda sid, phase, text: deltas[(sid, phase)].append(text),
        ).compile()
    assert report.ok and len(report.records) == 16 and all(r.streamed for r in report.records)
    assert len(deltas) == 16 and all(len(pieces) > 1 for pieces in deltas.values())
    refined = "".join(deltas[("1", Phase.REFINE)]).strip()
    assert f"## Introduction\n\n{refined}\n\n## Methodology" in report.markdown
    assert "".join(deltas[("abstract", Phase.ABSTRACT)]).strip() in report.markdown
    assert "ABSTRACT*" in report.routing_table()  # streamed calls are marked


class Flaky:
    """A GatewayClient stand-in that fails chosen calls a given number of times."""

    def __init__(self, client: GatewayClient, fail: Dict[Tuple[str, Phase], int], error: Exception) -> None:
        self.client, self.fail, self.error = client, dict(fail), error
        self.calls: List[Tuple[str, Phase]] = []

    def generate(self, report_id: str, section_id: str, phase: Phase, prompt: str, **kw: Any) -> Result:
        self.calls.append((section_id, phase))
        if self.fail.get((section_id, phase), 0) > 0:
            self.fail[(section_id, phase)] -= 1
            raise self.error
        return self.client.generate(report_id, section_id, phase, prompt, **kw)

    def report_usage(self, report_id: str) -> Any:
        return self.client.report_usage(report_id)


def test_a_failing_call_is_retried_once(gateway, report_id: str) -> None:
    with GatewayClient(gateway.address, timeout=10) as client:
        flaky = Flaky(client, {("2", Phase.EXPAND): 1}, Unavailable("UNAVAILABLE", "transient"))
        report = ReportCompiler(flaky, OUTLINE, report_id=report_id, retry_delay=0).compile()
    assert report.ok and len(report.records) == 16
    assert flaky.calls.count(("2", Phase.EXPAND)) == 2
    retried = [r for r in report.records if r.retries]
    assert [(r.section_id, r.phase) for r in retried] == [("2", Phase.EXPAND)]


def test_a_call_failing_twice_is_reported_with_a_placeholder(gateway, report_id: str) -> None:
    with GatewayClient(gateway.address, timeout=10) as client:
        flaky = Flaky(client, {("3", Phase.REFINE): 2}, Unavailable("UNAVAILABLE", "every provider failed"))
        report = ReportCompiler(flaky, OUTLINE, report_id=report_id, retry_delay=0).compile()
    assert not report.ok and flaky.calls.count(("3", Phase.REFINE)) == 2
    assert len(report.failures) == 1
    f = report.failures[0]
    assert (f.section_id, f.section_title, f.phase, f.tries) == ("3", "Analysis", Phase.REFINE, 2)
    assert isinstance(f.error, Unavailable) and f.error.message == "every provider failed"
    assert len(report.records) == 15  # every other call, the abstract too
    section = report.markdown.split("## Analysis\n\n", 1)[1].split("\n\n## ", 1)[0]
    assert section.startswith(
        "> **[Not compiled]** the REFINE call failed (2 times): UNAVAILABLE: every provider failed"
    )
    assert "FAILED" in report.routing_table()


def test_invalid_argument_is_not_retried(gateway) -> None:
    with GatewayClient(gateway.address, timeout=10) as client:
        report = ReportCompiler(client, OUTLINE, report_id="bad|report").compile()
    assert report.records == [] and len(report.failures) == 6  # each section's DRAFT, and the abstract
    assert all(
        isinstance(f.error, InvalidArgument) and f.error.field == "report_id" and f.tries == 1
        for f in report.failures
    )
    assert (
        report.markdown.count(
            "> **[Not compiled]** the DRAFT call failed (once): INVALID_ARGUMENT: report_id"
        )
        == 5
    )


def test_an_unreachable_gateway_fails_every_section_visibly() -> None:
    events: List[Any] = []
    with GatewayClient(f"127.0.0.1:{closed_port()}", timeout=5) as client:
        report = ReportCompiler(client, OUTLINE, on_progress=events.append, retry_delay=0).compile()
    assert report.records == [] and not report.ok
    assert [(f.section_id, f.phase.name, f.tries) for f in report.failures] == [
        ("1", "DRAFT", 2),
        ("2", "DRAFT", 2),
        ("3", "DRAFT", 2),
        ("4", "DRAFT", 2),
        ("5", "DRAFT", 2),
        ("abstract", "ABSTRACT", 2),
    ]
    assert all(isinstance(e, Failure) for e in events) and len(events) == 6
    assert report.usage is None and isinstance(report.usage_error, Unavailable)
    assert report.markdown.count("> **[Not compiled]**") == 6
    assert report.markdown.startswith(
        "# Hybrid LLM Routing for Long Technical Reports\n\n## Abstract\n\n> **[Not compiled]**"
    )


def test_a_gateway_that_dies_mid_report(start_gateway, report_id: str) -> None:
    gw = start_gateway()
    stopped: List[int] = []

    def on_progress(event: Any) -> None:
        if isinstance(event, CallRecord) and event.section_id == "1" and event.phase is Phase.REFINE:
            stopped.append(gw.stop())  # SIGTERM after section 1; the gateway drains and exits

    with GatewayClient(gw.address, timeout=10) as client:
        report = ReportCompiler(
            client, OUTLINE, report_id=report_id, concurrency=1, on_progress=on_progress, retry_delay=0
        ).compile()
    assert stopped == [0]
    assert [(r.section_id, r.phase.name) for r in report.records] == [
        ("1", "DRAFT"),
        ("1", "EXPAND"),
        ("1", "REFINE"),
    ]
    assert [(f.section_id, f.phase.name, f.tries) for f in report.failures] == [
        ("2", "DRAFT", 2),
        ("3", "DRAFT", 2),
        ("4", "DRAFT", 2),
        ("5", "DRAFT", 2),
        ("abstract", "ABSTRACT", 2),
    ]
    assert all(isinstance(f.error, Unavailable) for f in report.failures)
    assert report.markdown.count("> **[Not compiled]**") == 5
    assert "## Introduction\n\n> **[Not compiled]**" not in report.markdown  # section 1 made it


def test_report_id_defaults_to_a_slug_of_the_title() -> None:
    compiler = ReportCompiler(object(), OUTLINE)
    prefix, _, suffix = compiler.report_id.rpartition("-")
    assert prefix == "hybrid-llm-routing-for-long-technical-reports" and len(suffix) == 8
    int(suffix, 16)
    assert (
        ReportCompiler(
            object(),
            {"title": "T", "report_id": "fixed", "sections": [{"id": 1, "title": "A", "type": "other"}]},
        ).report_id
        == "fixed"
    )
    assert ReportCompiler(object(), OUTLINE, report_id="mine").report_id == "mine"


@pytest.mark.parametrize(
    "outline, message",
    [
        ({"sections": [{"id": "1", "title": "A", "type": "OTHER"}]}, "title"),
        ({"title": "T", "sections": []}, "sections"),
        ({"title": "T", "sections": [{"id": "1", "title": "A", "type": "CHAPTER"}]}, "sections[0].type"),
        (
            {
                "title": "T",
                "sections": [
                    {"id": "1", "title": "A", "type": "OTHER"},
                    {"id": "1", "title": "B", "type": "OTHER"},
                ],
            },
            "sections[1].id",
        ),
        ({"title": "T", "sections": [{"title": "A", "type": "OTHER"}]}, "sections[0].id"),
    ],
)
def test_bad_outlines_are_rejected(outline: Dict[str, Any], message: str) -> None:
    with pytest.raises(OutlineError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ReportCompiler(object(), outline)


def test_section_types_are_parsed_in_any_case() -> None:
    outline = Outline.from_yaml("title: T\nsections:\n  - {id: a, title: A, type: methodology}\n")
    assert outline.sections[0].type.name == "METHODOLOGY"


def test_unknown_template_placeholders_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        ReportCompiler(object(), OUTLINE, templates={"refine": "{previous} {nonsense}"})


def test_compile_needs_the_matching_client_kind() -> None:
    class AsyncLike:
        async def generate(self, *a: Any, **k: Any) -> None: ...

    with pytest.raises(TypeError, match="compile_async"):
        ReportCompiler(AsyncLike(), OUTLINE).compile()
