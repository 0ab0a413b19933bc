"""Typed errors, and the one place where a gRPC failure becomes one of them.

Every failed call raises a :class:`GatewayError` subclass chosen by :func:`from_rpc_error` from
the gRPC status code and the gateway's ``vra-error`` trailer (the machine-readable kind of the
error; ``vra-error-field`` names the invalid field of an ``INVALID_ARGUMENT``):

==========================  ===============================================================
class                       when
==========================  ===============================================================
:class:`InvalidArgument`    ``INVALID_ARGUMENT`` (``.field`` names the bad field)
:class:`Unauthenticated`    ``UNAUTHENTICATED``
:class:`BudgetExhausted`    ``RESOURCE_EXHAUSTED`` with kind ``resource_exhausted`` (the
                            report's cloud budget) or ``client_quota_exhausted`` (the
                            client's day quota) and a cloud-tier secondary
:class:`Overloaded`         any other ``RESOURCE_EXHAUSTED``: load was shed, retry later
:class:`Unavailable`        ``UNAVAILABLE``: every provider failed, or the gateway is
                            unreachable (connection refused, TLS handshake failed)
:class:`DeadlineExceeded`   ``DEADLINE_EXCEEDED`` (also ``CANCELLED`` once the call's
                            deadline has passed: the server transport's way to say it)
:class:`NotCached`          ``NOT_FOUND`` with kind ``not_cached``: ``cache="ONLY_IF_CACHED"``
                            and the response cache holds no answer (nothing was sent upstream)
:class:`GatewayError`       anything else
==========================  ===============================================================

The messages are the gateway's (or gRPC's) own; the SDK never adds prompts, tokens or other
request content to them.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Optional, Type
from urllib.parse import unquote

import grpc

__all__ = [
    "GatewayError",
    "InvalidArgument",
    "Unauthenticated",
    "ResourceExhausted",
    "BudgetExhausted",
    "Overloaded",
    "Unavailable",
    "DeadlineExceeded",
    "NotCached",
    "from_rpc_error",
    "ERROR_KIND_TRAILER",
    "ERROR_FIELD_TRAILER",
]

#: Trailer with the machine-readable kind of the error, e.g. ``"invalid_argument"``.
ERROR_KIND_TRAILER = "vra-error"
#: Trailer naming the invalid field of an ``INVALID_ARGUMENT``, e.g. ``"report_id"``.
ERROR_FIELD_TRAILER = "vra-error-field"

# `report_id: must not be empty`, `options.max_tokens: must be greater than 0 when set`.
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*): ")

# `vra-error` kinds that mean "the budget is spent" rather than "load was shed".
_BUDGET_KINDS = frozenset({"resource_exhausted", "client_quota_exhausted"})


class GatewayError(Exception):
    """A failed gateway call.

    Attributes:
        code: the gRPC status code name, e.g. ``"INVALID_ARGUMENT"``.
        message: the gateway's message (gRPC's own for transport failures).
        kind: the gateway's ``vra-error`` trailer, e.g. ``"overloaded"``; ``None`` when absent.
    """

    def __init__(self, code: str, message: str, kind: Optional[str] = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.kind = kind

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, kind={self.kind!r})"


class InvalidArgument(GatewayError):
    """``INVALID_ARGUMENT``: the request was rejected; ``field`` names the bad field if known."""

    def __init__(
        self, code: str, message: str, kind: Optional[str] = None, field: Optional[str] = None
    ) -> None:
        super().__init__(code, message, kind)
        self.field = field


class Unauthenticated(GatewayError):
    """``UNAUTHENTICATED``: missing or invalid credentials (a bearer token or client certificate)."""


class ResourceExhausted(GatewayError):
    """``RESOURCE_EXHAUSTED``; see :class:`BudgetExhausted` and :class:`Overloaded`."""


class BudgetExhausted(ResourceExhausted):
    """The report's cloud budget or the client's day quota is spent and the secondary is cloud tier."""


class Overloaded(ResourceExhausted):
    """The gateway shed load (too many calls in flight, or a full queue); retry later."""


class Unavailable(GatewayError):
    """``UNAVAILABLE``: every provider failed, a stream broke, or the gateway is unreachable."""


class DeadlineExceeded(GatewayError):
    """``DEADLINE_EXCEEDED``: the call's deadline passed."""



class NotCached(GatewayError):
    """``cache="ONLY_IF_CACHED"`` and the response cache holds no answer to the request (or the
    gateway runs without a cache). Nothing was sent upstream; retrying the same call is useless."""

def _metadata_value(metadata: Optional[Iterable[Any]], key: str) -> Optional[str]:
    for item in metadata or ():
        k, v = item[0], item[1]
        if k.lower() == key:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


def from_rpc_error(error: grpc.RpcError, *, deadline_passed: bool = False) -> GatewayError:
    """Returns the typed error for a failed call of the sync or the async gRPC API.

    ``error`` is what grpcio raised: a ``grpc.RpcError`` that is also a ``grpc.Call`` (sync) or a
    ``grpc.aio.AioRpcError``; both have ``code()``, ``details()`` and ``trailing_metadata()``.

    ``deadline_passed``: the call's deadline had passed when it failed. A ``CANCELLED`` status
    is then reported as :class:`DeadlineExceeded` (with code ``"DEADLINE_EXCEEDED"``): when a
    deadline expires before the gateway's handler runs, the server's gRPC transport (tonic)
    answers ``CANCELLED "Timeout expired"`` instead, racing the client's own timer.
    """
    code_obj = _call(error, "code")
    code = code_obj.name if isinstance(code_obj, grpc.StatusCode) else "UNKNOWN"
    message = _call(error, "details") or ""
    trailers = _call(error, "trailing_metadata")
    kind = _metadata_value(trailers, ERROR_KIND_TRAILER)

    if code == "INVALID_ARGUMENT":
        field = _metadata_value(trailers, ERROR_FIELD_TRAILER)
        if not field:
            match = _FIELD_PREFIX.match(message)
            field = match.group(1) if match else None
        return InvalidArgument(code, message, kind, field=field)
    if code == "CANCELLED" and deadline_passed:
        return DeadlineExceeded("DEADLINE_EXCEEDED", unquote(message), kind)
    if code == "NOT_FOUND" and kind == "not_cached":
        return NotCached(code, message, kind)
    if code == "RESOURCE_EXHAUSTED":
        cls: Type[GatewayError] = BudgetExhausted if kind in _BUDGET_KINDS else Overloaded
        return cls(code, message, kind)
    return _BY_CODE.get(code, GatewayError)(code, message, kind)


_BY_CODE: Dict[str, Type[GatewayError]] = {
    "UNAUTHENTICATED": Unauthenticated,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
}


def _call(error: Any, method: str) -> Any:
    fn = getattr(error, method, None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:  # a half-initialised error object must not hide the original failure
        return None
