"""The synchronous client, :class:`GatewayClient`."""

from __future__ import annotations

import dataclasses
import time
from typing import Generator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc

from . import _convert
from ._channel import DEFAULT_TIMEOUT, TLS, CallContext, ChannelConfig
from ._pb import gateway_pb2 as pb
from ._pb import gateway_pb2_grpc as pb_grpc
from .errors import GatewayError
from .types import (
    CacheMode,
    Delta,
    Phase,
    ReportUsage,
    Result,
    RouteDecision,
    SectionType,
    StreamEvent,
)

__all__ = ["GatewayClient"]


class GatewayClient:
    """One gRPC channel to the gateway, with blocking calls.

    Thread-safe: one client can serve many threads (the :class:`~vra_gateway.ReportCompiler`
    shares one across its workers). Use it as a context manager, or call :meth:`close`.

    Args:
        target: ``host:port`` of the gateway; default ``$VRA_GATEWAY_TARGET``, else
            ``127.0.0.1:50051``.
        token: bearer token sent as ``authorization: Bearer …``; default ``$VRA_TOKEN``.
        timeout: default deadline of each call in seconds (120); ``None`` for no deadline.
        tls: TLS settings (:class:`~vra_gateway.TLS`); ``None`` means a plaintext channel.
        options: extra grpcio channel options, e.g. ``[("grpc.max_receive_message_length", n)]``.

    Every failed call raises a :class:`~vra_gateway.GatewayError` subclass (see
    :mod:`vra_gateway.errors`); an unreachable gateway raises :class:`~vra_gateway.Unavailable`.

    Example::

        with GatewayClient("127.0.0.1:50051") as client:
            r = client.generate("q3-report", "2.1", Phase.DRAFT, "Draft the analysis.",
                                section_type=SectionType.ANALYSIS)
            print(r.route.tier, r.route.rule, r.budget.cloud_calls_used, r.text)
    """

    def __init__(
        self,
        target: Optional[str] = None,
        *,
        token: Optional[str] = None,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        tls: Optional[TLS] = None,
        options: Sequence[Tuple[str, Union[str, int]]] = (),
    ) -> None:
        self._config = ChannelConfig.resolve(target, token, timeout, tls, options)
        if self._config.tls is not None:
            self._channel = grpc.secure_channel(
                self._config.target, self._config.tls.credentials(), options=self._config.options
            )
        else:
            self._channel = grpc.insecure_channel(self._config.target, options=self._config.options)
        self._stub = pb_grpc.GatewayServiceStub(self._channel)  # type: ignore[no-untyped-call]

    @property
    def target(self) -> str:
        """The ``host:port`` this client calls."""
        return self._config.target

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GatewayClient(target={self._config.target!r}, tls={self._config.tls is not None})"

    def generate(
        self,
        report_id: str,
        section_id: str,
        phase: Union[Phase, str],
        prompt: str = "",
        *,
        section_type: Union[SectionType, str, None] = None,
        system_prompt: Optional[str] = None,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        stop: Optional[Sequence[str]] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        messages: Optional[Sequence[Mapping[str, str]]] = None,
        cache: Union[CacheMode, str, None] = None,
        max_age_secs: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> Result:
        """Generates one piece of text for a report section and phase.

        Args:
            report_id: the report; its cloud budget is counted per id.
            section_id: the section, e.g. ``"2.1"`` (may be empty).
            phase: the compilation phase (a :class:`Phase` or its name in any case).
            prompt: the prompt; must not be empty unless ``messages`` is given.
            section_type: the kind of section; DRAFT routing depends on it.
            system_prompt: optional system prompt.
            max_tokens, temperature, stop, top_p, seed: sampling options passed to the provider.
            messages: a whole conversation instead of ``prompt`` and ``system_prompt``:
                ``[{"role": "system" | "user" | "assistant", "content": "..."}, ...]``.
            cache: how the call uses the gateway's response cache (a :class:`CacheMode` or its
                name): ``NO_CACHE``, ``NO_STORE``, ``ONLY_IF_CACHED`` (a miss raises
                :class:`~vra_gateway.NotCached`); default: look up, and store the answer.
            max_age_secs: accept a cached answer only if it is at most this old (0: never).
            timeout: this call's deadline in seconds (default: the client's).

        Returns:
            the :class:`Result`: text, route, usage, budget, attempts, finish reason.

        Raises:
            GatewayError: a subclass chosen from the status code (see :mod:`vra_gateway.errors`).
        """
        request = _convert.generate_request(
            pb.GenerateRequest,
            report_id=report_id,
            section_id=section_id,
            phase=phase,
            prompt=prompt,
            section_type=section_type,
            system_prompt=system_prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            top_p=top_p,
            seed=seed,
            messages=messages,
            cache=cache,
            max_age_secs=max_age_secs,
        )
        call = self._config.call(timeout)
        try:
            response = self._stub.Generate(request, timeout=call.timeout, metadata=call.metadata)
        except grpc.RpcError as e:
            raise call.error(e) from None
        return _convert.result(response)

    def generate_stream(
        self,
        report_id: str,
        section_id: str,
        phase: Union[Phase, str],
        prompt: str = "",
        *,
        section_type: Union[SectionType, str, None] = None,
        system_prompt: Optional[str] = None,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        stop: Optional[Sequence[str]] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        messages: Optional[Sequence[Mapping[str, str]]] = None,
        cache: Union[CacheMode, str, None] = None,
        max_age_secs: Optional[int] = None,
        timeout: Optional[float] = None,
    ) -> Generator[StreamEvent, None, None]:
        """Like :meth:`generate`, but yields the text as it is produced.

        Yields :class:`~vra_gateway.Delta` events (non-empty text pieces), then exactly one
        :class:`~vra_gateway.Result` whose ``text`` is every delta concatenated::

            for event in client.generate_stream("q3", "2.1", Phase.EXPAND, "Expand it."):
                if isinstance(event, Delta):
                    print(event.text, end="", flush=True)
                else:
                    print(f"\\n[{event.route.provider}/{event.route.model}]")

        The call starts when iteration starts. Stopping early (``break``, closing the
        generator) cancels the call. An error — also one after some deltas, e.g. an upstream
        that broke mid-stream (``UNAVAILABLE``) — is raised from the iteration as a
        :class:`~vra_gateway.GatewayError`; a stream that ends without its final message raises
        one with code ``"DATA_LOSS"``.
        """
        request = _convert.generate_request(
            pb.GenerateStreamRequest,
            report_id=report_id,
            section_id=section_id,
            phase=phase,
            prompt=prompt,
            section_type=section_type,
            system_prompt=system_prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            stop=stop,
            top_p=top_p,
            seed=seed,
            messages=messages,
            cache=cache,
            max_age_secs=max_age_secs,
        )
        call = self._config.call(timeout)  # checks the timeout now; the clock starts below
        return self._stream(request, call)

    def _stream(
        self, request: pb.GenerateStreamRequest, call: CallContext
    ) -> Generator[StreamEvent, None, None]:
        call = dataclasses.replace(call, started=time.monotonic())
        rpc = self._stub.GenerateStream(request, timeout=call.timeout, metadata=call.metadata)
        pieces: List[str] = []
        try:
            for message in rpc:
                if message.HasField("done"):
                    yield _convert.result(message.done, text="".join(pieces))
                    return
                if message.delta:
                    pieces.append(message.delta)
                    yield Delta(message.delta)
        except grpc.RpcError as e:
            raise call.error(e) from None
        finally:
            rpc.cancel()  # no-op once the call has finished; stops it when the caller broke off
        raise GatewayError("DATA_LOSS", "the stream ended without its final message")

    def resolve_route(
        self,
        report_id: str,
        phase: Union[Phase, str],
        section_type: Union[SectionType, str, None] = None,
        *,
        timeout: Optional[float] = None,
    ) -> RouteDecision:
        """Dry run: the route :meth:`generate` would take now (no upstream call, no budget spent)."""
        request = pb.ResolveRouteRequest(
            report_id=report_id,
            phase=_convert.phase_to_pb(phase),
            section_type=_convert.section_type_to_pb(section_type),
        )
        call = self._config.call(timeout)
        try:
            response = self._stub.ResolveRoute(request, timeout=call.timeout, metadata=call.metadata)
        except grpc.RpcError as e:
            raise call.error(e) from None
        return _convert.route_decision(response)

    def report_usage(self, report_id: str, *, timeout: Optional[float] = None) -> ReportUsage:
        """Budget and call counters of one of the caller's reports (zeros for an unknown report)."""
        request = pb.GetReportUsageRequest(report_id=report_id)
        call = self._config.call(timeout)
        try:
            response = self._stub.GetReportUsage(request, timeout=call.timeout, metadata=call.metadata)
        except grpc.RpcError as e:
            raise call.error(e) from None
        return _convert.report_usage(response)
