"""GatewayClient against a real `vra-gateway demo --serve`: every RPC, streaming, typed errors."""

from __future__ import annotations

import pytest
from _support import closed_port

from vra_gateway import (
    DeadlineExceeded,
    Delta,
    FallbackReason,
    GatewayClient,
    InvalidArgument,
    Phase,
    Result,
    SectionType,
    Tier,
    Unavailable,
)


@pytest.fixture
def client(gateway):
    with GatewayClient(gateway.address, timeout=10) as c:
        yield c


def test_generate_returns_a_typed_result(client: GatewayClient, report_id: str) -> None:
    r = client.generate(
        report_id,
        "1",
        Phase.DRAFT,
        "Draft the introduction.",
        section_type=SectionType.INTRODUCTION,
        system_prompt="Be brief.",
        max_tokens=200,
        temperature=0.2,
        stop=["END"],
    )
    assert isinstance(r, Result) and r.text.strip()
    assert (r.route.tier, r.route.provider, r.route.model, r.route.cloud) == (
        Tier.PRIMARY,
        "openai",
        "gpt-4o",
        True,
    )
    assert (r.route.rule, r.route.fallback_reason) == ("draft-reasoning-primary", FallbackReason.NONE)
    assert r.usage.output_tokens > 0 and r.attempts == 1 and r.finish_reason
    assert (r.budget.cloud_calls_used, r.budget.cloud_calls_limit, r.budget.exhausted) == (1, 15, False)


def test_phase_and_section_type_accept_names_in_any_case(client: GatewayClient, report_id: str) -> None:
    r = client.generate(report_id, "2", "draft", "Draft the methodology.", section_type="methodology")
    assert (r.route.tier, r.route.rule, r.route.cloud) == (Tier.SECONDARY, "draft-template-secondary", False)
    with pytest.raises(ValueError, match="unknown Phase"):
        client.generate(report_id, "2", "drafting", "x")


def test_a_conversation_instead_of_a_prompt(client: GatewayClient, report_id: str) -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Draft the analysis."},
        {"role": "assistant", "content": "1. Data 2. Findings"},
        {"role": "user", "content": "Refine it."},
    ]
    r = client.generate(report_id, "3", Phase.REFINE, messages=conversation, top_p=0.9, seed=7)
    assert r.text.strip() and r.route.tier == Tier.PRIMARY
    events = list(client.generate_stream(report_id, "3", Phase.EXPAND, messages=conversation))
    assert isinstance(events[-1], Result) and events[-1].text
    with pytest.raises(InvalidArgument) as info:
        client.generate(report_id, "3", Phase.REFINE, messages=[{"role": "system", "content": "x"}])
    assert info.value.field == "messages"
    with pytest.raises(ValueError, match=r"messages\[0\]\.role"):
        client.generate(report_id, "3", Phase.REFINE, messages=[{"role": "tool", "content": "x"}])


def test_generate_stream_yields_deltas_then_one_result(client: GatewayClient, report_id: str) -> None:
    events = list(
        client.generate_stream(
            report_id, "3", Phase.EXPAND, "Expand the analysis.", section_type=SectionType.ANALYSIS
        )
    )
    deltas, final = events[:-1], events[-1]
    assert len(deltas) > 1 and all(isinstance(e, Delta) and e.text for e in deltas)
    assert isinstance(final, Result)
    assert final.text == "".join(d.text for d in deltas) and final.text.strip()
    assert (final.route.tier, final.route.rule) == (Tier.SECONDARY, "expand-secondary")
    assert final.usage.output_tokens > 0 and final.attempts == 1


def test_breaking_off_a_stream_is_clean(client: GatewayClient, report_id: str) -> None:
    stream = client.generate_stream(report_id, "3", Phase.EXPAND, "Expand.")
    first = next(iter(stream))
    assert isinstance(first, Delta)
    stream.close()  # cancels the call; the channel stays usable
    assert client.generate(report_id, "3", Phase.EXPAND, "Again.").text


def test_resolve_route_is_a_dry_run(client: GatewayClient, report_id: str) -> None:
    d = client.resolve_route(report_id, Phase.ABSTRACT, SectionType.OTHER)
    assert (d.route.tier, d.route.rule, d.route.provider) == (
        Tier.PRIMARY,
        "abstract-always-primary",
        "openai",
    )
    assert d.budget.cloud_calls_used == 0 and d.client_quota is None
    d = client.resolve_route(report_id, Phase.DRAFT, SectionType.IMPLEMENTATION)
    assert (d.route.tier, d.route.rule) == (Tier.SECONDARY, "draft-template-secondary")
    assert client.report_usage(report_id).budget.cloud_calls_used == 0  # nothing was spent


def test_report_usage_counts_calls(client: GatewayClient, report_id: str) -> None:
    empty = client.report_usage(report_id)
    assert (empty.report_id, empty.primary_calls, empty.secondary_calls, empty.budget.cloud_calls_used) == (
        report_id,
        0,
        0,
        0,
    )
    client.generate(report_id, "1", Phase.REFINE, "Refine.")
    client.generate(report_id, "1", Phase.EXPAND, "Expand.")
    u = client.report_usage(report_id)
    assert (u.primary_calls, u.secondary_calls, u.fallbacks) == (1, 1, 0)
    assert u.budget.cloud_calls_used == 1 and u.budget.cloud_calls_limit == 15
    assert u.cloud_usage.output_tokens > 0 and u.local_usage.output_tokens > 0
    assert u.client_quota is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"report_id": ""}, "report_id"),
        ({"report_id": "bad|id"}, "report_id"),
        ({"prompt": "   "}, "prompt"),
        ({"max_tokens": 0}, "options.max_tokens"),
        ({"temperature": 5.0}, "options.temperature"),
        ({"top_p": 0.0}, "options.top_p"),
        ({"prompt": "p", "messages": [{"role": "user", "content": "q"}]}, "prompt"),
    ],
)
def test_invalid_argument_names_the_field(
    client: GatewayClient, report_id: str, kwargs: dict, field: str
) -> None:
    call = {"report_id": report_id, "section_id": "1", "phase": Phase.DRAFT, "prompt": "p", **kwargs}
    with pytest.raises(InvalidArgument) as info:
        client.generate(**call)
    err = info.value
    assert err.code == "INVALID_ARGUMENT" and err.field == field
    assert err.message.startswith(f"{field}: ")


def test_invalid_argument_on_a_stream_and_on_usage(client: GatewayClient) -> None:
    with pytest.raises(InvalidArgument) as info:
        list(client.generate_stream("", "1", Phase.DRAFT, "p"))
    assert info.value.field == "report_id"
    with pytest.raises(InvalidArgument) as info:
        client.report_usage("")
    assert info.value.field == "report_id"


def test_unreachable_gateway_is_unavailable() -> None:
    with GatewayClient(f"127.0.0.1:{closed_port()}", timeout=5) as c:
        with pytest.raises(Unavailable) as info:
            c.generate("r", "1", Phase.DRAFT, "p")
        assert info.value.code == "UNAVAILABLE"
        with pytest.raises(Unavailable):
            list(c.generate_stream("r", "1", Phase.DRAFT, "p"))
        with pytest.raises(Unavailable):
            c.report_usage("r")


def test_a_tiny_deadline_is_deadline_exceeded(gateway, report_id: str) -> None:
    # A ~1 MB prompt takes the sandbox tens of milliseconds (upload, parse, upstream round trip),
    # so a 1 ms deadline always passes first; a short prompt could be answered within 1 ms.
    big = "x" * 1_000_000
    with GatewayClient(gateway.address, timeout=0.001) as c:  # the client's default deadline
        with pytest.raises(DeadlineExceeded) as info:
            c.generate(report_id, "1", Phase.EXPAND, big)
        assert info.value.code == "DEADLINE_EXCEEDED"
    with GatewayClient(gateway.address, timeout=10) as c:  # a per-call timeout overrides it
        with pytest.raises(DeadlineExceeded):
            list(c.generate_stream(report_id, "1", Phase.EXPAND, big, timeout=0.001))
        assert c.generate(report_id, "1", Phase.EXPAND, big).text  # the same call with time to spare


def test_target_comes_from_the_environment(gateway, monkeypatch: pytest.MonkeyPatch, report_id: str) -> None:
    monkeypatch.setenv("VRA_GATEWAY_TARGET", gateway.address)
    with GatewayClient(timeout=10) as c:
        assert c.target == gateway.address
        assert c.resolve_route(report_id, Phase.REFINE).route.rule == "refine-primary"
    monkeypatch.delenv("VRA_GATEWAY_TARGET")
    with GatewayClient() as c:
        assert c.target == "127.0.0.1:50051"
