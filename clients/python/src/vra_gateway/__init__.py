"""Python client SDK of vra-gateway, the gRPC gateway that routes report-generation LLM calls.

- :class:`GatewayClient` (blocking) and :class:`AsyncGatewayClient` (asyncio): ``generate``,
  ``generate_stream``, ``resolve_route``, ``report_usage``.
- Plain values: :class:`Phase`, :class:`SectionType`, :class:`Tier`, :class:`FallbackReason` and the
  dataclasses :class:`Result`, :class:`Delta`, :class:`RouteDecision`, :class:`ReportUsage`...
- Typed errors: :class:`GatewayError` and its subclasses (see :mod:`vra_gateway.errors`).
- :class:`ReportCompiler`: compiles a report outline DRAFT → EXPAND → REFINE per section, then the
  ABSTRACT; also ``python -m vra_gateway compile outline.yaml --out report.md``.
"""

from ._channel import TLS
from .aio import AsyncGatewayClient
from .client import GatewayClient
from .compiler import ReportCompiler
from .errors import (
    BudgetExhausted,
    DeadlineExceeded,
    GatewayError,
    InvalidArgument,
    NotCached,
    Overloaded,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .outline import Outline, OutlineError, Section
from .report import CallRecord, Failure, Report
from .types import (
    Budget,
    CacheMode,
    CacheStatus,
    ClientQuota,
    Delta,
    FallbackReason,
    Phase,
    PhaseUsage,
    ReportCost,
    ReportUsage,
    Result,
    Route,
    RouteDecision,
    SectionType,
    StreamEvent,
    Tier,
    Usage,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncGatewayClient",
    "Budget",
    "BudgetExhausted",
    "CacheMode",
    "CacheStatus",
    "CallRecord",
    "ClientQuota",
    "DeadlineExceeded",
    "Delta",
    "Failure",
    "FallbackReason",
    "GatewayClient",
    "GatewayError",
    "InvalidArgument",
    "NotCached",
    "Outline",
    "OutlineError",
    "Overloaded",
    "Phase",
    "PhaseUsage",
    "Report",
    "ReportCompiler",
    "ReportCost",
    "ReportUsage",
    "ResourceExhausted",
    "Result",
    "Route",
    "RouteDecision",
    "Section",
    "SectionType",
    "StreamEvent",
    "TLS",
    "Tier",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "__version__",
]
