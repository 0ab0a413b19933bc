"""The one error mapping (vra_gateway.errors.from_rpc_error), on fabricated gRPC errors.

End-to-end errors from a real gateway are in test_client.py; these cover the rows the sandbox
cannot produce (a cloud-tier secondary with its budget spent, load shedding).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import grpc
import pytest

from vra_gateway import (
    BudgetExhausted,
    DeadlineExceeded,
    GatewayError,
    InvalidArgument,
    Overloaded,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from vra_gateway.errors import from_rpc_error


class FakeRpcError(grpc.RpcError):
    """What grpcio raises: an RpcError with code(), details() and trailing_metadata()."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Sequence[Tuple[str, str]] = ()) -> None:
        self._code, self._details, self._trailers = code, details, tuple(trailers)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> Optional[str]:
        return self._details

    def trailing_metadata(self) -> Tuple[Tuple[str, str], ...]:
        return self._trailers


def test_budget_exhausted_from_the_report_budget_trailer() -> None:
    err = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "cloud budget of report r1 is spent",
            [("vra-error", "resource_exhausted")],
        )
    )
    assert type(err) is BudgetExhausted and isinstance(err, ResourceExhausted)
    assert (err.code, err.message, err.kind) == (
        "RESOURCE_EXHAUSTED",
        "cloud budget of report r1 is spent",
        "resource_exhausted",
    )


def test_budget_exhausted_from_the_client_day_quota_trailer() -> None:
    err = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "day quota spent", [("vra-error", "client_quota_exhausted")]
        )
    )
    assert type(err) is BudgetExhausted


@pytest.mark.parametrize("trailers", [[("vra-error", "overloaded")], [("vra-error", "queue_full")], []])
def test_other_resource_exhausted_is_overloaded(trailers: Sequence[Tuple[str, str]]) -> None:
    err = from_rpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "load shed", trailers))
    assert type(err) is Overloaded and isinstance(err, ResourceExhausted)
    assert err.message == "load shed"


def test_invalid_argument_field_from_the_trailer_wins() -> None:
    err = from_rpc_error(
        FakeRpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "report_id: must not be empty",
            [("vra-error", "invalid_argument"), ("vra-error-field", "options.max_tokens")],
        )
    )
    assert isinstance(err, InvalidArgument) and type(err) is InvalidArgument
    assert err.field == "options.max_tokens"


def test_invalid_argument_field_falls_back_to_the_message_prefix() -> None:
    err = from_rpc_error(
        FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "options.temperature: must be between 0 and 2")
    )
    assert isinstance(err, InvalidArgument) and err.field == "options.temperature"
    other = from_rpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "something odd"))
    assert isinstance(other, InvalidArgument) and other.field is None


@pytest.mark.parametrize(
    "code, cls",
    [
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, GatewayError),
        (grpc.StatusCode.PERMISSION_DENIED, GatewayError),
    ],
)
def test_codes_map_to_their_class(code: grpc.StatusCode, cls: type) -> None:
    err = from_rpc_error(FakeRpcError(code, "the gateway's words", [("vra-error", "x")]))
    assert type(err) is cls
    assert err.code == code.name and err.message == "the gateway's words" and err.kind == "x"
    assert str(err) == f"{code.name}: the gateway's words"


def test_cancelled_after_the_deadline_is_deadline_exceeded() -> None:
    # tonic's transport answers an expired grpc-timeout with CANCELLED "Timeout expired".
    cancelled = FakeRpcError(grpc.StatusCode.CANCELLED, "Timeout%20expired")
    err = from_rpc_error(cancelled, deadline_passed=True)
    assert type(err) is DeadlineExceeded
    assert (err.code, err.message) == ("DEADLINE_EXCEEDED", "Timeout expired")
    other = from_rpc_error(cancelled)  # the deadline had not passed: a real cancellation
    assert type(other) is GatewayError and other.code == "CANCELLED"
