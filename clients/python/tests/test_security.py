"""Bearer tokens, TLS and mTLS against gateways started with VRA_CLIENTS_FILE / VRA_TLS_*."""

from __future__ import annotations

import pytest
from _support import OUTLINE

from vra_gateway import TLS, GatewayClient, Phase, ReportCompiler, Tier, Unauthenticated, Unavailable


@pytest.fixture
def auth_gateway(start_gateway, token):
    return start_gateway(VRA_CLIENTS_FILE=str(token.clients_file))


def test_a_good_token_works(auth_gateway, token, report_id: str) -> None:
    with GatewayClient(auth_gateway.address, token=token.value, timeout=10) as c:
        r = c.generate(report_id, "1", Phase.REFINE, "Refine.")
        assert (r.route.tier, r.route.rule) == (Tier.PRIMARY, "refine-primary")
        assert c.report_usage(report_id).primary_calls == 1


def test_the_token_defaults_to_vra_token(
    auth_gateway, token, report_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VRA_TOKEN", token.value)
    with GatewayClient(auth_gateway.address, timeout=10) as c:
        assert c.resolve_route(report_id, Phase.EXPAND).route.rule == "expand-secondary"


@pytest.mark.parametrize("bad", [None, "vra_not-the-token"])
def test_a_missing_or_wrong_token_is_unauthenticated(auth_gateway, report_id: str, bad) -> None:
    with GatewayClient(auth_gateway.address, token=bad, timeout=10) as c:
        with pytest.raises(Unauthenticated) as info:
            c.generate(report_id, "1", Phase.DRAFT, "p")
        assert info.value.code == "UNAUTHENTICATED" and info.value.message
        assert "vra_not-the-token" not in str(info.value)  # never echoed
        with pytest.raises(Unauthenticated):
            list(c.generate_stream(report_id, "1", Phase.DRAFT, "p"))
        with pytest.raises(Unauthenticated):
            c.report_usage(report_id)


def test_the_compiler_does_not_retry_unauthenticated(auth_gateway) -> None:
    with GatewayClient(auth_gateway.address, timeout=10) as c:
        report = ReportCompiler(c, OUTLINE, retry_delay=0).compile()
    assert report.records == [] and len(report.failures) == 6
    assert all(isinstance(f.error, Unauthenticated) and f.tries == 1 for f in report.failures)


@pytest.fixture
def tls_gateway(start_gateway, pki):
    return start_gateway(VRA_TLS_CERT_FILE=str(pki.server_cert), VRA_TLS_KEY_FILE=str(pki.server_key))


def test_tls_with_the_right_ca(tls_gateway, pki, report_id: str) -> None:
    for host in ("localhost", "127.0.0.1"):  # the certificate has both as SANs
        with GatewayClient(f"{host}:{tls_gateway.port}", tls=TLS(ca=pki.ca), timeout=10) as c:
            r = c.generate(report_id, "1", Phase.DRAFT, "Draft.", section_type="analysis")
            assert r.route.rule == "draft-reasoning-primary"
            events = list(c.generate_stream(report_id, "1", Phase.EXPAND, "Expand."))
            assert events[-1].text == "".join(e.text for e in events[:-1])


def test_tls_accepts_pem_bytes_and_a_server_name_override(tls_gateway, pki, report_id: str) -> None:
    tls = TLS(ca=pki.ca.read_bytes(), server_name="localhost")
    with GatewayClient(f"127.0.0.1:{tls_gateway.port}", tls=tls, timeout=10) as c:
        assert c.report_usage(report_id).report_id == report_id


def test_tls_with_an_unknown_ca_or_plaintext_fails(tls_gateway, pki, report_id: str) -> None:
    with GatewayClient(f"localhost:{tls_gateway.port}", tls=TLS(ca=pki.other_ca), timeout=10) as c:
        with pytest.raises(Unavailable):
            c.report_usage(report_id)
    with GatewayClient(tls_gateway.address, timeout=10) as c:  # plaintext to a TLS port
        with pytest.raises(Unavailable):
            c.report_usage(report_id)


@pytest.fixture
def mtls_gateway(start_gateway, pki):
    return start_gateway(
        VRA_TLS_CERT_FILE=str(pki.server_cert),
        VRA_TLS_KEY_FILE=str(pki.server_key),
        VRA_TLS_CLIENT_CA_FILE=str(pki.ca),
    )


def test_mtls_with_a_client_certificate(mtls_gateway, pki, report_id: str) -> None:
    tls = TLS(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
    with GatewayClient(f"localhost:{mtls_gateway.port}", tls=tls, timeout=10) as c:
        r = c.generate(report_id, "1", Phase.REFINE, "Refine.")
        assert (r.route.tier, r.budget.cloud_calls_used) == (Tier.PRIMARY, 1)
        assert c.report_usage(report_id).primary_calls == 1


def test_mtls_without_a_client_certificate_fails(mtls_gateway, pki, report_id: str) -> None:
    with GatewayClient(f"localhost:{mtls_gateway.port}", tls=TLS(ca=pki.ca), timeout=10) as c:
        with pytest.raises(Unavailable):  # the TLS handshake is refused
            c.report_usage(report_id)


def test_tls_options_are_checked() -> None:
    with pytest.raises(ValueError, match="cert and key go together"):
        TLS(ca=b"x", cert=b"y")
    with pytest.raises(ValueError, match="cannot read the TLS CA file"):
        GatewayClient("localhost:1", tls=TLS(ca="/nonexistent/ca.pem"))
