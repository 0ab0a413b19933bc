"""Connection settings shared by the sync and the async client: target, token, TLS, deadline."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import grpc

from .errors import GatewayError, from_rpc_error

__all__ = ["TLS", "ChannelConfig", "CallContext", "DEFAULT_TARGET", "DEFAULT_TIMEOUT"]

#: Used when neither ``target`` nor ``VRA_GATEWAY_TARGET`` is given.
DEFAULT_TARGET = "127.0.0.1:50051"
#: The default deadline of each call, in seconds.
DEFAULT_TIMEOUT = 120.0

PemSource = Union[bytes, str, "os.PathLike[str]"]


def _read_pem(source: Optional[PemSource], what: str) -> Optional[bytes]:
    """PEM bytes from bytes, a PEM string, or a file path."""
    if source is None:
        return None
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode("ascii")
    try:
        return Path(source).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the TLS {what} file {os.fspath(source)!r}: {e.strerror}") from e


@dataclass(frozen=True)
class TLS:
    """TLS settings of the channel.

    Each of ``ca``, ``cert`` and ``key`` is PEM: bytes, a PEM string, or the path of a PEM file.

    Attributes:
        ca: root CA(s) that signed the gateway's certificate; ``None`` uses the system roots.
        cert: client certificate chain, for mTLS (needs ``key``).
        key: the client certificate's private key, for mTLS (needs ``cert``).
        server_name: the name to verify the gateway's certificate against, when it differs from
            the target's host (e.g. connecting to an IP with a certificate for a DNS name).
    """

    ca: Optional[PemSource] = None
    cert: Optional[PemSource] = None
    key: Optional[PemSource] = None
    server_name: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: cert and key go together (both for mTLS, or neither)")

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpcio channel credentials; reads the files now."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(self.ca, "CA"),
            private_key=_read_pem(self.key, "key"),
            certificate_chain=_read_pem(self.cert, "certificate"),
        )


@dataclass(frozen=True)
class ChannelConfig:
    """Resolved client options (explicit arguments first, then the environment, then defaults)."""

    target: str
    token: Optional[str]
    timeout: Optional[float]
    tls: Optional[TLS]
    options: Tuple[Tuple[str, Union[str, int]], ...] = ()

    @classmethod
    def resolve(
        cls,
        target: Optional[str],
        token: Optional[str],
        timeout: Optional[float],
        tls: Optional[TLS],
        options: Sequence[Tuple[str, Union[str, int]]] = (),
    ) -> "ChannelConfig":
        target = target or os.environ.get("VRA_GATEWAY_TARGET") or DEFAULT_TARGET
        token = token if token is not None else os.environ.get("VRA_TOKEN")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        opts: List[Tuple[str, Union[str, int]]] = list(options)
        if tls is not None and tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
        return cls(target=target, token=token or None, timeout=timeout, tls=tls, options=tuple(opts))

    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        """Per-call metadata: the bearer token, if any.

        The token is sent as metadata rather than as call credentials so that it also works on a
        plaintext loopback channel (grpcio refuses call credentials without TLS).
        """
        if not self.token:
            return ()
        return (("authorization", f"Bearer {self.token}"),)

    def call(self, timeout: Optional[float]) -> "CallContext":
        """The settings of one call that starts now: its own ``timeout`` if given, else the
        client's default deadline; the metadata."""
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive (seconds)")
        return CallContext(timeout=self.timeout if timeout is None else timeout, metadata=self.metadata())


@dataclass(frozen=True)
class CallContext:
    """One call: its deadline (seconds from ``started``), its metadata, and its error mapping."""

    timeout: Optional[float]
    metadata: Tuple[Tuple[str, str], ...]
    started: float = field(default_factory=time.monotonic)

    def error(self, error: grpc.RpcError) -> GatewayError:
        """The typed error of this call (see :func:`vra_gateway.errors.from_rpc_error`)."""
        passed = self.timeout is not None and time.monotonic() - self.started >= self.timeout
        return from_rpc_error(error, deadline_passed=passed)
