"""Translation between the plain values of :mod:`vra_gateway.types` and the generated stubs.

Shared by the sync and the async client so both build identical requests.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, TypeVar, Union, cast

from ._pb import gateway_pb2 as pb
from .types import (
    Budget,
    CacheMode,
    CacheStatus,
    ClientQuota,
    FallbackReason,
    Phase,
    PhaseUsage,
    ReportCost,
    ReportUsage,
    Result,
    Route,
    RouteDecision,
    SectionType,
    Tier,
    Usage,
)

_Req = TypeVar("_Req", pb.GenerateRequest, pb.GenerateStreamRequest)


def phase_to_pb(phase: Union[Phase, str]) -> "pb.CompilationPhase":
    """``Phase.DRAFT`` (or ``"draft"``) → ``COMPILATION_PHASE_DRAFT``."""
    return cast(
        "pb.CompilationPhase", pb.CompilationPhase.Value("COMPILATION_PHASE_" + Phase.parse(phase).name)
    )


def section_type_to_pb(section_type: Union[SectionType, str, None]) -> "pb.SectionType":
    """``SectionType.METHODOLOGY`` (or ``"methodology"``) → ``SECTION_TYPE_METHODOLOGY``; ``None`` → unset."""
    if section_type is None:
        return pb.SECTION_TYPE_UNSPECIFIED
    return cast(
        "pb.SectionType", pb.SectionType.Value("SECTION_TYPE_" + SectionType.parse(section_type).name)
    )


def generate_request(
    cls: "type[_Req]",
    *,
    report_id: str,
    section_id: str,
    phase: Union[Phase, str],
    prompt: str,
    section_type: Union[SectionType, str, None],
    system_prompt: Optional[str],
    max_tokens: Optional[int],
    temperature: Optional[float],
    stop: Optional[Sequence[str]],
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    messages: Optional[Sequence[Mapping[str, str]]] = None,
    cache: Union[CacheMode, str, None] = None,
    max_age_secs: Optional[int] = None,
) -> _Req:
    """Builds a ``GenerateRequest`` or ``GenerateStreamRequest`` (they have the same fields)."""
    options = pb.GenerationOptions()
    if max_tokens is not None:
        options.max_tokens = int(max_tokens)
    if temperature is not None:
        options.temperature = float(temperature)
    if stop:
        options.stop.extend(stop)
    if top_p is not None:
        options.top_p = float(top_p)
    if seed is not None:
        options.seed = int(seed)
    if cache is not None:
        mode = CacheMode.parse(cache)
        if mode is not CacheMode.DEFAULT:
            options.cache = pb.CacheMode.Value("CACHE_MODE_" + mode.name)
    if max_age_secs is not None:
        options.max_age_secs = int(max_age_secs)
    return cls(
        report_id=report_id,
        section_id=section_id,
        section_type=section_type_to_pb(section_type),
        phase=phase_to_pb(phase),
        prompt=prompt,
        system_prompt=system_prompt or "",
        options=options,
        messages=[chat_message(i, m) for i, m in enumerate(messages or ())],
    )


_ROLES = {
    "system": pb.CHAT_ROLE_SYSTEM,
    "user": pb.CHAT_ROLE_USER,
    "assistant": pb.CHAT_ROLE_ASSISTANT,
}


def chat_message(index: int, message: Mapping[str, str]) -> pb.ChatMessage:
    """``{"role": "user", "content": "..."}`` → ``ChatMessage``; a ValueError names a bad turn."""
    role = str(message.get("role", "")).lower()
    if role not in _ROLES:
        raise ValueError(f"messages[{index}].role must be system, user or assistant, not {role!r}")
    content = message.get("content", "")
    if not isinstance(content, str):
        raise ValueError(f"messages[{index}].content must be a string")
    return pb.ChatMessage(role=_ROLES[role], content=content)


def _tier(value: int) -> Tier:
    try:
        return Tier[pb.ProviderTier.Name(value)[len("PROVIDER_TIER_") :]]
    except (ValueError, KeyError):
        return Tier.UNSPECIFIED


def _phase(value: int) -> Optional[Phase]:
    try:
        return Phase[pb.CompilationPhase.Name(value)[len("COMPILATION_PHASE_") :]]
    except (ValueError, KeyError):
        return None


def _optional(msg: Any, name: str) -> Optional[float]:
    """A proto3 ``optional`` double: ``None`` when unset (unknown), never a default 0."""
    return float(getattr(msg, name)) if msg.HasField(name) else None


def _fallback(value: int) -> FallbackReason:
    if value == pb.FALLBACK_REASON_UNSPECIFIED:
        return FallbackReason.NONE
    try:
        return FallbackReason[pb.FallbackReason.Name(value)[len("FALLBACK_REASON_") :]]
    except (ValueError, KeyError):
        return FallbackReason.UNKNOWN


def route(msg: pb.Route) -> Route:
    return Route(
        tier=_tier(msg.tier),
        provider=msg.provider,
        model=msg.model,
        cloud=msg.cloud,
        rule=msg.rule,
        fallback_reason=_fallback(msg.fallback_reason),
    )


def usage(msg: pb.Usage) -> Usage:
    return Usage(
        input_tokens=msg.input_tokens,
        output_tokens=msg.output_tokens,
        estimated=msg.estimated,
        cached=msg.cached,
    )


def _cache_status(value: int) -> CacheStatus:
    if value == pb.CACHE_STATUS_UNSPECIFIED:
        return CacheStatus.OFF
    try:
        return CacheStatus[pb.CacheStatus.Name(value)[len("CACHE_STATUS_") :]]
    except (ValueError, KeyError):
        return CacheStatus.UNKNOWN


def budget(msg: pb.Budget) -> Budget:
    return Budget(
        cloud_calls_used=msg.cloud_calls_used,
        cloud_calls_limit=msg.cloud_calls_limit,
        exhausted=msg.exhausted,
        cloud_cost_used_usd=msg.cloud_cost_used_usd,
        cloud_cost_reserved_usd=msg.cloud_cost_reserved_usd,
        cloud_cost_limit_usd=_optional(msg, "cloud_cost_limit_usd"),
    )


def report_cost(msg: pb.ReportCost) -> ReportCost:
    return ReportCost(
        cloud_usd=msg.cloud_usd,
        local_usd=msg.local_usd,
        total_usd=msg.total_usd,
        all_cloud_usd=_optional(msg, "all_cloud_usd"),
        savings_usd=_optional(msg, "savings_usd"),
        unpriced_calls=msg.unpriced_calls,
        abandoned_usd=msg.abandoned_usd,
    )


def phase_usage(msg: pb.PhaseUsage) -> PhaseUsage:
    return PhaseUsage(
        phase=_phase(msg.phase),
        tier=_tier(msg.tier),
        calls=msg.calls,
        usage=usage(msg.usage),
        cost_usd=msg.cost_usd,
        cached_calls=msg.cached_calls,
        cache_saved_usd=msg.cache_saved_usd,
    )


def _client_quota(parent: Union[pb.ResolveRouteResponse, pb.GetReportUsageResponse]) -> Optional[ClientQuota]:
    if not parent.HasField("client_quota"):
        return None
    return ClientQuota(used=parent.client_quota.used, limit=parent.client_quota.limit)


def result(msg: pb.GenerateResponse, text: Optional[str] = None) -> Result:
    """A ``Result``; ``text`` replaces ``msg.text`` (a stream's ``done`` carries no text)."""
    return Result(
        text=msg.text if text is None else text,
        route=route(msg.route),
        usage=usage(msg.usage),
        budget=budget(msg.budget),
        attempts=msg.attempts,
        finish_reason=msg.finish_reason,
        cost_usd=_optional(msg, "cost_usd"),
        cache_status=_cache_status(msg.cache_status),
    )


def route_decision(msg: pb.ResolveRouteResponse) -> RouteDecision:
    return RouteDecision(route=route(msg.route), budget=budget(msg.budget), client_quota=_client_quota(msg))


def report_usage(msg: pb.GetReportUsageResponse) -> ReportUsage:
    return ReportUsage(
        report_id=msg.report_id,
        budget=budget(msg.budget),
        primary_calls=msg.primary_calls,
        secondary_calls=msg.secondary_calls,
        fallbacks=msg.fallbacks,
        cloud_usage=usage(msg.cloud_usage),
        local_usage=usage(msg.local_usage),
        client_quota=_client_quota(msg),
        cost=report_cost(msg.cost),
        phases=[phase_usage(p) for p in msg.phases],
        cached_calls=msg.cached_calls,
        cache_saved_usd=msg.cache_saved_usd,
    )
