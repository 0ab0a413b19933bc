"""Plain values of the gateway's contract: enums and immutable dataclasses.

Nothing in here is a protobuf message; :mod:`vra_gateway._convert` translates between these
values and the generated stubs, so callers never need ``gateway_pb2``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional, Type, TypeVar, Union

__all__ = [
    "CacheMode",
    "CacheStatus",
    "Phase",
    "SectionType",
    "Tier",
    "FallbackReason",
    "Route",
    "Usage",
    "Budget",
    "ClientQuota",
    "Result",
    "ReportCost",
    "PhaseUsage",
    "Delta",
    "StreamEvent",
    "RouteDecision",
    "ReportUsage",
]

_E = TypeVar("_E", bound="_NamedEnum")


class _NamedEnum(enum.Enum):
    """An enum whose value is its name; ``str()`` gives the name, ``parse`` takes any case."""

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls: Type[_E], value: Union[_E, str]) -> _E:
        """Returns the member for ``value``: a member, or its name in any case (``"draft"``).

        Raises:
            ValueError: ``value`` names no member.
        """
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        names = ", ".join(m.name for m in cls)
        raise ValueError(f"unknown {cls.__name__} {value!r} (expected one of {names})")


class Phase(_NamedEnum):
    """The compilation phase a call belongs to (``CompilationPhase`` in the proto)."""

    DRAFT = "DRAFT"
    EXPAND = "EXPAND"
    REFINE = "REFINE"
    ABSTRACT = "ABSTRACT"


class SectionType(_NamedEnum):
    """The kind of section being written; DRAFT routing depends on it."""

    INTRODUCTION = "INTRODUCTION"
    CONCLUSION = "CONCLUSION"
    ANALYSIS = "ANALYSIS"
    METHODOLOGY = "METHODOLOGY"
    IMPLEMENTATION = "IMPLEMENTATION"
    OTHER = "OTHER"


class Tier(_NamedEnum):
    """Which configured provider served (or would serve) a call.

    ``UNSPECIFIED`` only appears if a gateway sends a tier this SDK does not know.
    """

    PRIMARY = "PRIMARY"
    SECONDARY = "SECONDARY"
    UNSPECIFIED = "UNSPECIFIED"


class CacheMode(_NamedEnum):
    """How a call uses the gateway's response cache (``VRA_CACHE``).

    ``DEFAULT``: answer from the cache when it holds the request, else call upstream and store.
    ``NO_CACHE``: always call upstream, still store. ``NO_STORE``: neither. ``ONLY_IF_CACHED``:
    a cached answer or :class:`~vra_gateway.NotCached`; nothing is sent upstream.
    """

    DEFAULT = "DEFAULT"
    NO_CACHE = "NO_CACHE"
    NO_STORE = "NO_STORE"
    ONLY_IF_CACHED = "ONLY_IF_CACHED"


class CacheStatus(_NamedEnum):
    """Whether a call's answer came from the response cache.

    ``OFF``: the gateway runs without a cache. ``HIT``: answered from the cache (nothing sent
    upstream, no budget spent). ``MISS``: answered upstream. ``BYPASS``: not looked up (the
    call's cache mode, or the cache store unreachable). ``UNKNOWN`` only appears if a gateway
    sends a status this SDK does not know.
    """

    OFF = "OFF"
    MISS = "MISS"
    HIT = "HIT"
    BYPASS = "BYPASS"
    UNKNOWN = "UNKNOWN"


class FallbackReason(_NamedEnum):
    """Why a call that the matrix sent to the primary was served by the secondary.

    ``NONE``: no fallback. ``UNKNOWN`` only appears if a gateway sends a reason this SDK does
    not know.
    """

    NONE = "NONE"
    COST_LIMIT = "COST_LIMIT"
    PRIMARY_ERROR = "PRIMARY_ERROR"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    LEDGER_UNAVAILABLE = "LEDGER_UNAVAILABLE"
    CLIENT_QUOTA = "CLIENT_QUOTA"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Route:
    """Where a call went and why.

    Attributes:
        tier: the tier that served (or would serve) the call.
        provider: configured provider name, e.g. ``"openai"``, ``"local"``.
        model: the model, e.g. ``"gpt-4o"``.
        cloud: true when the provider is cloud tier (its requests count toward the budget).
        rule: the routing-matrix row that decided, e.g. ``"refine-primary"``.
        fallback_reason: why the secondary served a call the matrix sent to the primary.
    """

    tier: Tier
    provider: str
    model: str
    cloud: bool
    rule: str
    fallback_reason: FallbackReason = FallbackReason.NONE


@dataclass(frozen=True)
class Usage:
    """Token counts of a call (or a sum of calls).

    Attributes:
        input_tokens, output_tokens: the counts.
        estimated: at least one count is an estimate (the upstream did not report usage, e.g. a
            stream without usage); in a :class:`ReportUsage`: some of the calls counted were
            estimated.
        cached: the answer came from the response cache: the counts are those of the call that
            produced it, not tokens processed now.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    cached: bool = False


@dataclass(frozen=True)
class Budget:
    """A report's cloud budget: every HTTP request to a cloud provider counts, retries included.

    Attributes:
        cloud_calls_used, cloud_calls_limit: cloud requests made and allowed (``MAX_CLOUD_CALLS``).
        exhausted: no cloud call is left: the call budget is spent, or the cost cap has no room.
        cloud_cost_used_usd: the report's settled cloud cost in USD (calls whose model has a price).
        cloud_cost_reserved_usd: worst-case cost held by cloud calls in flight (only with a cap).
        cloud_cost_limit_usd: the dollar cap (``MAX_CLOUD_COST_USD``), ``None`` when there is none.
            The settled cost never exceeds it.
    """

    cloud_calls_used: int = 0
    cloud_calls_limit: int = 0
    exhausted: bool = False
    cloud_cost_used_usd: float = 0.0
    cloud_cost_reserved_usd: float = 0.0
    cloud_cost_limit_usd: Optional[float] = None


@dataclass(frozen=True)
class ClientQuota:
    """The calling client's cloud requests in the current UTC day, all its reports together."""

    used: int = 0
    limit: int = 0


@dataclass(frozen=True)
class Result:
    """The outcome of one ``generate`` (or a finished ``generate_stream``).

    Attributes:
        text: the generated text (for a stream: every delta concatenated).
        route: where the call went and why.
        usage: input and output tokens.
        budget: the report's budget after the call.
        attempts: every upstream HTTP request the call made, all providers together.
        finish_reason: the provider's finish reason, e.g. ``"stop"``.
        cost_usd: the call's cost in USD (its tokens times its model's price); ``None`` when the
            model has no price (unknown, not free); ``0.0`` for a local model without a price,
            and for a cache hit.
        cache_status: whether the answer came from the response cache (``HIT``: nothing was sent
            upstream; ``route`` names the tier and model whose answer it is).
    """

    text: str
    route: Route
    usage: Usage
    budget: Budget
    attempts: int
    finish_reason: str
    cost_usd: Optional[float] = None
    cache_status: CacheStatus = CacheStatus.OFF


@dataclass(frozen=True)
class Delta:
    """A piece of streamed text. ``generate_stream`` yields these, then one :class:`Result`."""

    text: str


StreamEvent = Union[Delta, Result]
"""What ``generate_stream`` yields: :class:`Delta` events, then exactly one :class:`Result`."""


@dataclass(frozen=True)
class RouteDecision:
    """What ``generate`` would do now (``resolve_route``); no upstream call, no budget spent.

    ``client_quota`` is ``None`` unless the caller's client has a day quota.
    """

    route: Route
    budget: Budget
    client_quota: Optional[ClientQuota] = None


@dataclass(frozen=True)
class ReportCost:
    """What a report cost, and what hybrid routing saved (USD).

    Attributes:
        cloud_usd: cost of the calls answered by cloud-tier providers.
        local_usd: cost of the calls answered by local-tier providers.
        total_usd: ``cloud_usd + local_usd``.
        all_cloud_usd: the same calls' tokens priced at the primary model; ``None`` when the
            primary model has no price.
        savings_usd: ``all_cloud_usd - total_usd``; ``None`` when ``all_cloud_usd`` is.
        unpriced_calls: answered calls whose model has no price: their cost is unknown and not
            in the sums above, which are then lower bounds.
        abandoned_usd: charged (under a cost cap) for cloud attempts without an answer that may
            have been billed — a timeout, a broken or dropped call — at their worst case; part of
            ``cloud_usd``.
    """

    cloud_usd: float = 0.0
    local_usd: float = 0.0
    total_usd: float = 0.0
    all_cloud_usd: Optional[float] = None
    savings_usd: Optional[float] = None
    unpriced_calls: int = 0
    abandoned_usd: float = 0.0


@dataclass(frozen=True)
class PhaseUsage:
    """Calls, tokens and cost of one phase answered by one tier (a cell of ``ReportUsage.phases``).

    Attributes:
        phase: the phase; ``None`` only if a gateway sends a phase this SDK does not know.
        tier: the tier that answered.
        calls: answered calls.
        usage: their tokens.
        cost_usd: their cost in USD (priced calls only).
        cached_calls: calls of this phase answered from the cache with this tier's answer (not in
            ``calls`` or ``usage``).
        cache_saved_usd: what those would have cost upstream.
    """

    phase: Optional[Phase]
    tier: Tier
    calls: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    cached_calls: int = 0
    cache_saved_usd: float = 0.0


@dataclass(frozen=True)
class ReportUsage:
    """Budget and counters of one of the caller's reports (zeros for an unknown report).

    Attributes:
        report_id: the report.
        budget: its cloud budget.
        primary_calls: calls answered by the primary.
        secondary_calls: calls answered by the secondary.
        fallbacks: calls the matrix sent to the primary that the secondary served.
        cloud_usage: tokens spent on cloud-tier providers.
        local_usage: tokens spent on local-tier providers.
        client_quota: the client's day quota, ``None`` unless it has one.
        cost: what the report cost and what hybrid routing saved.
        phases: calls, tokens and cost per phase and answering tier (only cells with calls).
        cached_calls: calls answered from the response cache — in none of the counts above (no
            upstream call, no budget unit, no dollar).
        cache_saved_usd: what those calls would have cost upstream, at their models' prices.
    """

    report_id: str
    budget: Budget
    primary_calls: int = 0
    secondary_calls: int = 0
    fallbacks: int = 0
    cloud_usage: Usage = field(default_factory=Usage)
    local_usage: Usage = field(default_factory=Usage)
    client_quota: Optional[ClientQuota] = None
    cost: ReportCost = field(default_factory=ReportCost)
    phases: List[PhaseUsage] = field(default_factory=list)
    cached_calls: int = 0
    cache_saved_usd: float = 0.0
