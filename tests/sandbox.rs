//! `vra-gateway demo --serve`: the keyless sandbox the SDKs' suites and examples run against.
//! The real binary, driven over real gRPC: it announces its address on stdout, routes by the
//! matrix, shows PRIMARY_ERROR fallbacks with `--fail-primary-every`, sends the machine-readable
//! error trailers, takes its settings from the environment, and stops cleanly on SIGTERM.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::process::{command, temp_dir};
use common::{reason, request, rule, tier};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tonic::Code;
use vra_gateway::pb::{
    CompilationPhase as P, FallbackReason as R, GetReportUsageRequest, ProviderTier as T,
    SectionType as S,
};

/// A running sandbox and its stdout, read up to the address line.
struct Sandbox {
    child: Child,
    addr: std::net::SocketAddr,
    banner: Vec<String>,
    stdout: BufReader<ChildStdout>,
}

impl Sandbox {
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Sandbox {
        let mut env = env.to_vec();
        env.push(("VRA_GATEWAY_ADDR", "127.0.0.1:0"));
        let mut child = command(&temp_dir(), &env)
            .args(["demo", "--serve"])
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = Vec::new();
        let addr = loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line))
                .await
                .expect("the sandbox printed its address in time")
                .unwrap();
            assert!(n > 0, "stdout ended before the address: {banner:?}");
            banner.push(line.trim_end().to_string());
            if let Some(addr) = line.trim().strip_prefix("gateway listening on ") {
                break addr.parse().unwrap();
            }
        };
        Sandbox {
            child,
            addr,
            banner,
            stdout,
        }
    }

    /// SIGTERM, then the exit code and the rest of stdout.
    async fn stop(mut self) -> (i32, String) {
        common::process::signal(&self.child, "-TERM");
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("the sandbox exited in time")
            .unwrap();
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).await.unwrap();
        (status.code().expect("exited, not killed by a signal"), rest)
    }
}

#[tokio::test]
async fn serves_the_matrix_with_simulated_upstreams_until_sigterm() {
    let sandbox = Sandbox::start(&[], &[]).await;
    let banner = sandbox.banner.join("\n");
    assert!(banner.contains("SIMULATED"), "{banner}");
    assert!(banner.contains("MAX_CLOUD_CALLS=15"), "{banner}");

    let mut client = common::connect(sandbox.addr).await;
    for (phase, section, want_tier, want_rule) in [
        (
            P::Draft,
            S::Introduction,
            T::Primary,
            "draft-reasoning-primary",
        ),
        (
            P::Draft,
            S::Methodology,
            T::Secondary,
            "draft-template-secondary",
        ),
        (P::Expand, S::Analysis, T::Secondary, "expand-secondary"),
        (P::Refine, S::Conclusion, T::Primary, "refine-primary"),
        (P::Abstract, S::Other, T::Primary, "abstract-always-primary"),
    ] {
        let resp = client
            .generate(request("sandbox", phase, section))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(tier(&resp), want_tier, "{phase:?} {section:?}");
        assert_eq!(rule(&resp), want_rule);
        assert_eq!(reason(&resp), R::Unspecified);
        assert!(resp.text.starts_with("Simulated text"), "{}", resp.text);
    }
    let usage = client
        .get_report_usage(GetReportUsageRequest {
            report_id: "sandbox".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.budget.unwrap().cloud_calls_used, 3);
    assert_eq!((usage.primary_calls, usage.secondary_calls), (3, 2));

    let (code, rest) = sandbox.stop().await;
    assert_eq!(code, 0);
    assert!(rest.contains("stop: Ctrl-C or SIGTERM"), "{rest}");
    assert!(rest.contains("sandbox stopped"), "{rest}");
}

/// `--fail-primary-every 2`: of sequential primary calls, every second one fails all three
/// attempts and falls back with PRIMARY_ERROR; the others are answered by the primary.
#[tokio::test]
async fn fail_primary_every_shows_primary_error_fallbacks() {
    let sandbox = Sandbox::start(&["--fail-primary-every", "2"], &[]).await;
    assert!(
        sandbox.banner.iter().any(|l| l.contains("in every 2")),
        "{:?}",
        sandbox.banner
    );
    let mut client = common::connect(sandbox.addr).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        let resp = client
            .generate(request("flaky", P::Refine, S::Analysis))
            .await
            .unwrap()
            .into_inner();
        seen.push((tier(&resp), reason(&resp), resp.attempts));
    }
    let answered = (T::Primary, R::Unspecified, 1);
    let fell_back = (T::Secondary, R::PrimaryError, 4);
    assert_eq!(seen, [answered, fell_back, answered, fell_back]);
    assert_eq!(sandbox.stop().await.0, 0);
}

/// Settings come from the environment as for `serve`: here the budget, so the third cloud
/// call falls back with COST_LIMIT. Errors carry the machine-readable trailers the SDKs map
/// to exception classes.
#[tokio::test]
async fn takes_settings_from_the_environment_and_sends_error_trailers() {
    let sandbox = Sandbox::start(&[], &[("MAX_CLOUD_CALLS", "2")]).await;
    let mut client = common::connect(sandbox.addr).await;
    let mut reasons = Vec::new();
    for _ in 0..3 {
        let resp = client
            .generate(request("small-budget", P::Refine, S::Analysis))
            .await
            .unwrap()
            .into_inner();
        reasons.push(reason(&resp));
    }
    assert_eq!(reasons, [R::Unspecified, R::Unspecified, R::CostLimit]);

    let err = client
        .generate(request("", P::Refine, S::Analysis))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.metadata().get("vra-error").unwrap(), "invalid_argument");
    assert_eq!(err.metadata().get("vra-error-field").unwrap(), "report_id");
    assert_eq!(sandbox.stop().await.0, 0);
}
