"""The asyncio client, :class:`AsyncGatewayClient` (on ``grpc.aio``)."""

from __future__ import annotations

from typing import AsyncGenerator, List, Mapping, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from . import _convert
from ._channel import DEFAULT_TIMEOUT, TLS, ChannelConfig
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

__all__ = ["AsyncGatewayClient"]


class AsyncGatewayClient:
    """One ``grpc.aio`` channel to the gateway; the methods of
    :class:`~vra_gateway.GatewayClient` as coroutines.

    Create it inside the event loop that uses it, and close it with ``await client.close()`` or
    ``async with``. Options and errors are those of :class:`~vra_gateway.GatewayClient`.

    Example::

        async with AsyncGatewayClient("127.0.0.1:50051") as client:
            r = await client.generate("q3", "1", Phase.DRAFT, "Draft the introduction.",
                                      section_type=SectionType.INTRODUCTION)
            async for event in client.generate_stream("q3", "1", Phase.EXPAND, r.text):
                ...
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
            self._channel = grpc.aio.secure_channel(
                self._config.target, self._config.tls.credentials(), options=self._config.options
            )
        else:
            self._channel = grpc.aio.insecure_channel(self._config.target, options=self._config.options)
        self._stub = pb_grpc.GatewayServiceStub(self._channel)  # type: ignore[no-untyped-call]

    @property
    def target(self) -> str:
        """The ``host:port`` this client calls."""
        return self._config.target

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> "AsyncGatewayClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncGatewayClient(target={self._config.target!r}, tls={self._config.tls is not None})"

    async def generate(
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
        """See :meth:`vra_gateway.GatewayClient.generate`."""
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
            response = await self._stub.Generate(request, timeout=call.timeout, metadata=call.metadata)
        except grpc.RpcError as e:
            raise call.error(e) from None
        return _convert.result(response)

    async def generate_stream(
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
    ) -> AsyncGenerator[StreamEvent, None]:
        """An async iterator of :class:`~vra_gateway.Delta` events, then one
        :class:`~vra_gateway.Result` (its ``text`` is every delta concatenated)::

            async for event in client.generate_stream("q3", "2.1", Phase.EXPAND, "Expand it."):
                if isinstance(event, Delta):
                    print(event.text, end="")

        See :meth:`vra_gateway.GatewayClient.generate_stream` for errors and cancellation.
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
        call = self._config.call(timeout)
        rpc = self._stub.GenerateStream(request, timeout=call.timeout, metadata=call.metadata)
        pieces: List[str] = []
        try:
            async for message in rpc:
                if message.HasField("done"):
                    yield _convert.result(message.done, text="".join(pieces))
                    return
                if message.delta:
                    pieces.append(message.delta)
                    yield Delta(message.delta)
        except grpc.RpcError as e:
            raise call.error(e) from None
        finally:
            rpc.cancel()
        raise GatewayError("DATA_LOSS", "the stream ended without its final message")

    async def resolve_route(
        self,
        report_id: str,
        phase: Union[Phase, str],
        section_type: Union[SectionType, str, None] = None,
        *,
        timeout: Optional[float] = None,
    ) -> RouteDecision:
        """See :meth:`vra_gateway.GatewayClient.resolve_route`."""
        request = pb.ResolveRouteRequest(
            report_id=report_id,
            phase=_convert.phase_to_pb(phase),
            section_type=_convert.section_type_to_pb(section_type),
        )
        call = self._config.call(timeout)
        try:
            response = await self._stub.ResolveRoute(request, timeout=call.timeout, metadata=call.metadata)
        except grpc.RpcError as e:
            raise call.error(e) from None
        return _convert.route_decision(response)

    async def report_usage(self, report_id: str, *, timeout: Optional[float] = None) -> ReportUsage:
        """See :meth:`vra_gateway.GatewayClient.report_usage`."""
        request = pb.GetReportUsageRequest(report_id=report_id)
        call = self._config.call(timeout)
        try:
            response = await self._stub.GetReportUsage(request, timeout=call.timeout, metadata=call.metadata)
        except grpc.RpcError as e:
            raise call.error(e) from None
        return _convert.report_usage(response)
