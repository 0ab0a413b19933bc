//! Upstreams behind a forward proxy: `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` send upstream
//! connections through an HTTP `CONNECT` tunnel (with the proxy's credentials), and `NO_PROXY`
//! hosts are reached directly. (TLS through the tunnel: tests/tls.rs.)

mod common;

use common::connect_proxy::ConnectProxy;
use common::process::{Running, gateway_env};
use common::{Harness, request, tier};
use vra_gateway::demo::sim::Sim;
use vra_gateway::pb::{CompilationPhase as P, ProviderTier as T, SectionType as S};

/// `host:port` of a simulated upstream's base URL.
fn authority(base: &str) -> String {
    base.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn both_tiers_tunnel_through_the_proxy_with_its_credentials() {
    let proxy = ConnectProxy::start().await;
    // `p%40ss` is `p@ss`: the userinfo is percent-decoded before it is sent.
    let url = proxy.url(Some("gw:p%40ss"));
    let mut h = Harness::start(&[("HTTP_PROXY", url.as_str())]).await;
    let primary = h
        .client
        .generate(request("proxied", P::Refine, S::Analysis))
        .await
        .expect("the primary answers through the proxy")
        .into_inner();
    assert_eq!(tier(&primary), T::Primary);
    let secondary = h
        .client
        .generate(request("proxied", P::Expand, S::Analysis))
        .await
        .expect("the secondary answers through the proxy")
        .into_inner();
    assert_eq!(tier(&secondary), T::Secondary);

    let heads = proxy.heads();
    for sim in [h.cloud.openai_base(), h.local.ollama_base()] {
        let target = authority(&sim);
        let head = heads
            .iter()
            .find(|head| head.starts_with(&format!("CONNECT {target} HTTP/1.1\r\n")))
            .unwrap_or_else(|| panic!("no CONNECT to {target}: {heads:?}"));
        let auth = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("proxy-authorization")
                    .then(|| value.trim())
            })
            .unwrap_or_else(|| panic!("no credentials: {head}"));
        assert_eq!(auth, "Basic Z3c6cEBzcw==", "base64(\"gw:p@ss\")");
    }
    assert_eq!(h.cloud.requests(), 1);
    assert_eq!(h.local.requests(), 1);
    h.shutdown().await;
}

#[tokio::test]
async fn no_proxy_hosts_are_reached_directly() {
    let proxy = ConnectProxy::start().await;
    let url = proxy.url(None);
    let mut h = Harness::start(&[
        ("ALL_PROXY", url.as_str()),
        ("NO_PROXY", "example.com, 127.0.0.0/8"),
    ])
    .await;
    let resp = h
        .client
        .generate(request("direct", P::Refine, S::Analysis))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(tier(&resp), T::Primary);
    assert_eq!(proxy.heads(), Vec::<String>::new());
    h.shutdown().await;
}

/// The binary reads the lower-case spelling too, says which endpoint goes through which proxy
/// (host and port: never the credentials), and refuses a proxy it cannot use, naming it.
#[tokio::test]
async fn the_binary_logs_the_proxy_without_credentials_and_refuses_socks() {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let proxy = ConnectProxy::start().await;
    let url = proxy.url(Some("gw:hunter2"));
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[("https_proxy", ""), ("http_proxy", &url)],
    );
    let mut gw = Running::start(&env).await;
    let line = gw.wait_for("through the proxy").await;
    assert!(line.contains(&proxy.addr.to_string()), "{line}");
    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0);
    let all = lines.join("\n");
    assert!(!all.contains("hunter2"), "{all}");

    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[("HTTPS_PROXY", "socks5://gw:hunter2@127.0.0.1:1080")],
    );
    let (code, _, stderr) =
        common::process::run_to_end(&common::process::temp_dir(), &["serve"], &env).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("HTTPS_PROXY") && stderr.contains("socks5"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
