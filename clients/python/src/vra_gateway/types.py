"""Plain values of the gateway's contract: enums and immutable dataclasses.

Nothing in here is a protobuf message; :mod:`vra_gateway._convert` translates between these
values and the generated stubs, so callers never need ``gateway_pb2``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Type, TypeVar, Union

__all__ = [
    "Phase",
    "SectionType",
    "Tier",
    "FallbackReason",
    "Route",
    "Usage",
    "Budget",
    "ClientQuota",
    "Result",
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
    """Token counts of a call (or a sum of calls)."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Budget:
    """A report's cloud budget: every HTTP request to a cloud provider counts, retries included."""

    cloud_calls_used: int = 0
    cloud_calls_limit: int = 0
    exhausted: bool = False


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
    """

    text: str
    route: Route
    usage: Usage
    budget: Budget
    attempts: int
    finish_reason: str


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
    """

    report_id: str
    budget: Budget
    primary_calls: int = 0
    secondary_calls: int = 0
    fallbacks: int = 0
    cloud_usage: Usage = field(default_factory=Usage)
    local_usage: Usage = field(default_factory=Usage)
    client_quota: Optional[ClientQuota] = None
