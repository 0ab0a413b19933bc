//! Upstreams behind a forward proxy: `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` send upstream
//! connections through an HTTP `CONNECT` tunnel (with the proxy's credentials); `NO_PROXY`
//! hosts and loopback upstreams are reached directly. (TLS through the tunnel: tests/tls.rs.)
//! Proxied upstreams are named `*.test`, which only the test proxy can reach.

mod common;

use common::connect_proxy::{ConnectProxy, via_test_host};
use common::process::{Running, gateway_env, run_to_end, temp_dir};
use common::{Harness, reason, request, tier};
use vra_gateway::demo::sim::Sim;
use vra_gateway::pb::{
    CompilationPhase as P, FallbackReason as F, ProviderTier as T, SectionType as S,
};

/// `host:port` of a base URL.
fn authority(base: &str) -> String {
    base.split("://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// The `CONNECT` targets the proxy was asked for, in order.
fn targets(proxy: &ConnectProxy) -> Vec<String> {
    proxy
        .heads()
        .iter()
        .filter_map(|head| head.strip_prefix("CONNECT "))
        .map(|rest| rest.split(' ').next().unwrap().to_string())
        .collect()
}

/// A gateway whose cloud upstream is `cloud_host:PORT` and local one `local_host:PORT`, with
/// `extra` settings.
async fn harness(cloud_host: &str, local_host: &str, extra: &[(&str, &str)]) -> Harness {
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    let cloud_url = cloud.openai_base().replacen("127.0.0.1", cloud_host, 1);
    let local_url = local.ollama_base().replacen("127.0.0.1", local_host, 1);
    let mut settings = vec![
        ("OPENAI_BASE_URL", cloud_url.as_str()),
        ("OLLAMA_HOST", local_url.as_str()),
        // The sims speak plain HTTP; a cloud upstream off loopback needs the opt-in.
        ("VRA_ALLOW_PLAINTEXT_CLOUD", "true"),
    ];
    settings.extend_from_slice(extra);
    let config = common::config(&cloud, &local, &settings);
    Harness::start_with(cloud, local, config).await
}

#[tokio::test]
async fn both_tiers_tunnel_through_the_proxy_with_its_credentials() {
    let proxy = ConnectProxy::start().await;
    // `p%40ss` is `p@ss`: the userinfo is percent-decoded before it is sent.
    let url = proxy.url(Some("gw:p%40ss"));
    let mut h = harness("cloud.test", "local.test", &[("HTTP_PROXY", url.as_str())]).await;
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

    let cloud = via_test_host(&h.cloud.openai_base(), "cloud");
    let local = via_test_host(&h.local.ollama_base(), "local");
    assert_eq!(targets(&proxy), vec![authority(&cloud), authority(&local)]);
    for head in proxy.heads() {
        let auth = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("proxy-authorization")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no credentials: {head}"));
        assert_eq!(auth, "Basic Z3c6cEBzcw==", "base64(\"gw:p@ss\")");
    }
    assert_eq!(h.cloud.requests(), 1);
    assert_eq!(h.local.requests(), 1);
    h.shutdown().await;
}

/// `NO_PROXY` hosts go direct: `cloud.invalid` (matched by the `invalid` domain entry) is then
/// looked up by the gateway itself and does not exist, so the primary fails and the call falls
/// back, while `local.test` still goes through the proxy. With `NO_PROXY` ignored, the proxy
/// would see both.
#[tokio::test]
async fn no_proxy_hosts_are_reached_directly() {
    let proxy = ConnectProxy::start().await;
    let url = proxy.url(None);
    let mut h = harness(
        "cloud.invalid",
        "local.test",
        &[
            ("ALL_PROXY", url.as_str()),
            ("NO_PROXY", "example.com, invalid, 10.0.0.0/8"),
            ("VRA_CONNECT_TIMEOUT_MS", "1000"),
        ],
    )
    .await;
    let resp = h
        .client
        .generate(request("direct", P::Refine, S::Analysis))
        .await
        .expect("answered by the secondary")
        .into_inner();
    assert_eq!(tier(&resp), T::Secondary);
    assert_eq!(reason(&resp), F::PrimaryError);
    assert_eq!(h.cloud.requests(), 0);
    let local = via_test_host(&h.local.ollama_base(), "local");
    assert_eq!(targets(&proxy), vec![authority(&local)]);
    h.shutdown().await;
}

/// A loopback upstream is reached directly whatever the proxy settings: the proxy's own
/// loopback is another machine's.
#[tokio::test]
async fn loopback_upstreams_never_go_through_the_proxy() {
    let proxy = ConnectProxy::start().await;
    let url = proxy.url(None);
    let mut h = harness("127.0.0.1", "localhost", &[("ALL_PROXY", url.as_str())]).await;
    for phase in [P::Refine, P::Expand] {
        h.client
            .generate(request("loopback", phase, S::Analysis))
            .await
            .expect("answered directly");
    }
    assert_eq!((h.cloud.requests(), h.local.requests()), (1, 1));
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
    let cloud_url = via_test_host(&cloud.openai_base(), "cloud");
    let local_url = local.ollama_base();
    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[("http_proxy", &url), ("VRA_ALLOW_PLAINTEXT_CLOUD", "true")],
    );
    let mut gw = Running::start(&env).await;
    let line = gw.wait_for("through the proxy").await;
    assert!(
        line.contains(&format!(
            "{} through the proxy {}",
            authority(&cloud_url),
            proxy.addr
        )),
        "{line}"
    );
    gw.sigterm();
    let (code, lines) = gw.finish().await;
    assert_eq!(code, 0);
    let all = lines.join("\n");
    assert!(!all.contains("hunter2"), "{all}");
    assert_eq!(
        all.matches("through the proxy").count(),
        1,
        "the loopback secondary is direct: {all}"
    );

    let env = gateway_env(
        &cloud_url,
        &local_url,
        &[("HTTPS_PROXY", "socks5://gw:hunter2@127.0.0.1:1080")],
    );
    let (code, _, stderr) = run_to_end(&temp_dir(), &["serve"], &env).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("HTTPS_PROXY") && stderr.contains("socks5"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
