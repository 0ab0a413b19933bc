"""Fixtures: real `vra-gateway demo --serve` processes, test PKI, and a clean client environment.

The gateway binary is `$VRA_GATEWAY_BIN`, else `<repo>/target/debug/vra-gateway` (built by
`cargo test` in CI). Without it the gateway tests are skipped, or fail when `VRA_REQUIRE_SDK=1`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import pytest
from _support import REPO_ROOT

LISTENING = re.compile(r"listening on (\S+)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def gateway_binary() -> Path:
    return Path(os.environ.get("VRA_GATEWAY_BIN") or REPO_ROOT / "target" / "debug" / "vra-gateway")


def _require_sdk() -> bool:
    return os.environ.get("VRA_REQUIRE_SDK", "") not in ("", "0", "false")


def pytest_report_header(config: pytest.Config) -> str:
    binary = gateway_binary()
    state = (
        "found" if binary.is_file() else "MISSING: gateway tests " + ("fail" if _require_sdk() else "skip")
    )
    return f"vra-gateway binary: {binary} ({state}); VRA_REQUIRE_SDK={os.environ.get('VRA_REQUIRE_SDK', '')}"


class Gateway:
    """One `vra-gateway demo --serve` process on a free loopback port."""

    def __init__(self, binary: Path, args: Sequence[str], env: Dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        base = {k: v for k, v in os.environ.items() if not k.startswith("VRA_") and k != "MAX_CLOUD_CALLS"}
        base.update({"VRA_GATEWAY_ADDR": "127.0.0.1:0", "NO_COLOR": "1"})
        base.update(env)
        self.proc = subprocess.Popen(
            [str(binary), "demo", "--serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=base,
            text=True,
        )
        self.stdout: List[str] = []
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def pump() -> None:  # keeps draining stdout so the gateway never blocks on a full pipe
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.stdout.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="gateway-stdout", daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise RuntimeError(
                    f"gateway printed no 'listening on' line in {START_TIMEOUT_S}s{self._tail()}"
                ) from None
            if line is None:
                self.proc.wait()
                raise RuntimeError(
                    f"gateway exited with {self.proc.returncode} before listening{self._tail()}"
                )
            match = LISTENING.search(line)
            if match:
                self.address = match.group(1)
                self.port = int(self.address.rsplit(":", 1)[1])
                return

    def _tail(self) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")[-3000:]
        return f"\nstdout:\n{''.join(self.stdout)}\nstderr (tail):\n{text}"

    def stop(self) -> int:
        """SIGTERM, then the exit code (the gateway must exit 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def gateway_bin() -> Path:
    binary = gateway_binary()
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    reason = f"vra-gateway binary not found at {binary} (build it with `cargo build`, or set VRA_GATEWAY_BIN)"
    if _require_sdk():
        pytest.fail(f"VRA_REQUIRE_SDK=1: {reason}", pytrace=False)
    pytest.skip(reason)


StartGateway = Callable[..., Gateway]


@pytest.fixture(scope="session")
def _gateways(gateway_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[List[Gateway]]:
    started: List[Gateway] = []
    yield started
    codes = {g.address: g.stop() for g in started}
    bad = {addr: code for addr, code in codes.items() if code != 0}
    assert not bad, f"gateways did not exit 0 on SIGTERM: {bad}"


def _starter(
    gateway_bin: Path, tmp_path_factory: pytest.TempPathFactory, registry: List[Gateway]
) -> StartGateway:
    def start(*args: str, **env: str) -> Gateway:
        log = tmp_path_factory.mktemp("gateway") / "stderr.log"
        gw = Gateway(gateway_bin, args, env, log)
        registry.append(gw)
        return gw

    return start


@pytest.fixture(scope="session")
def gateway(gateway_bin: Path, tmp_path_factory: pytest.TempPathFactory, _gateways: List[Gateway]) -> Gateway:
    """The shared sandbox: hybrid on, MAX_CLOUD_CALLS=15, plaintext, no credentials.

    Tests use their own report ids, so they never share a budget.
    """
    return _starter(gateway_bin, tmp_path_factory, _gateways)()


@pytest.fixture
def start_gateway(gateway_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartGateway]:
    """Starts dedicated gateways (`start_gateway(*cli_args, ENV=value)`); stops them after the test
    and asserts each exited 0 on SIGTERM."""
    started: List[Gateway] = []
    yield _starter(gateway_bin, tmp_path_factory, started)
    codes = [(g.address, g.stop()) for g in started]
    assert all(code == 0 for _, code in codes), f"gateway exit codes on SIGTERM: {codes}"


@pytest.fixture(autouse=True)
def _clean_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client must not pick up a developer's VRA_TOKEN / VRA_GATEWAY_TARGET."""
    monkeypatch.delenv("VRA_TOKEN", raising=False)
    monkeypatch.delenv("VRA_GATEWAY_TARGET", raising=False)


@pytest.fixture
def report_id(request: pytest.FixtureRequest) -> str:
    """A report id of its own for each test (budgets are per report)."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]
    return f"{name}-{os.urandom(4).hex()}"


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing of the above
    client_id: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed; TLS tests need it to make certificates")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            *ec,
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-days",
            "2",
            "-subj",
            f"/CN=vra-sdk-tests {ca}",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d,
        )
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    (d / "client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth\nsubjectAltName=DNS:sdk-tests-mtls\n"
    )
    for name, subj in (("server", "/CN=localhost"), ("client", "/CN=sdk-tests-mtls")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subj, cwd=d)
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.crt",
            cwd=d,
        )
    return Pki(
        ca=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
        other_ca=d / "other-ca.crt",
        client_id="sdk-tests-mtls",
    )


@dataclass(frozen=True)
class Token:
    value: str
    clients_file: Path


@pytest.fixture(scope="session")
def token(tmp_path_factory: pytest.TempPathFactory) -> Token:
    """A bearer token and a VRA_CLIENTS_FILE that accepts it (only its SHA-256 is stored)."""
    value = "vra_" + os.urandom(32).hex()
    path = tmp_path_factory.mktemp("auth") / "clients.toml"
    digest = hashlib.sha256(value.encode()).hexdigest()
    path.write_text(f'[[client]]\nid = "sdk-tests"\ntoken_sha256 = "{digest}"\n')
    return Token(value=value, clients_file=path)
