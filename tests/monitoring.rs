//! The monitoring that ships in `deploy/`: the alert and recording rules and the Grafana
//! dashboard name only metrics the gateway exports; `promtool` accepts the rules, passes their
//! unit tests (each alert fires on its scenario and stays silent on a healthy gateway,
//! `rules.test.yml`) and parses every query of the dashboard.
//!
//! A libtest-mimic target (`harness = false`): without `promtool` on PATH (Debian's
//! `prometheus` package) the promtool trials are reported as *ignored*, unless
//! `VRA_REQUIRE_PROMETHEUS=1` (set by `.ci/run`) makes them fail.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::clients::{TestClient, write_clients_file};
use common::process::{Running, gateway_env, metrics_on};
use common::redis_server::on_path;
use common::trials::{Gate, Runtime, async_trial, sync_trial};
use common::{collect_stream, connect, request};
use libtest_mimic::Arguments;
use serde_yaml_ng::Value;
use vra_gateway::demo::sim::{Sim, Step};
use vra_gateway::metrics::Metrics;
use vra_gateway::pb::{self, CompilationPhase as P, SectionType as S};

fn main() {
    let args = Arguments::from_args();
    let promtool = gate("promtool");
    let prometheus = gate("prometheus");
    let trials = vec![
        sync_trial(
            &args,
            "the_rules_name_only_metrics_the_gateway_exports",
            &Gate::Open,
            the_rules_name_only_metrics_the_gateway_exports,
        ),
        sync_trial(
            &args,
            "every_alert_has_a_severity_and_a_runbook_section",
            &Gate::Open,
            every_alert_has_a_severity_and_a_runbook_section,
        ),
        sync_trial(
            &args,
            "the_prometheus_rule_of_the_manifests_is_the_rules_file",
            &Gate::Open,
            the_prometheus_rule_of_the_manifests_is_the_rules_file,
        ),
        sync_trial(
            &args,
            "the_dashboard_reads_only_exported_metrics_through_its_variables",
            &Gate::Open,
            the_dashboard_reads_only_exported_metrics_through_its_variables,
        ),
        sync_trial(
            &args,
            "promtool_parses_every_dashboard_query",
            &promtool,
            promtool_parses_every_dashboard_query,
        ),
        async_trial(
            &args,
            "a_real_prometheus_scraping_a_real_gateway_answers_every_query_and_alert",
            &prometheus,
            Runtime::MultiThread(2),
            a_real_prometheus_scraping_a_real_gateway_answers_every_query_and_alert,
        ),
        sync_trial(
            &args,
            "promtool_checks_the_rules",
            &promtool,
            promtool_checks_the_rules,
        ),
        sync_trial(
            &args,
            "promtool_unit_tests_make_every_alert_fire_and_stay_silent",
            &promtool,
            promtool_unit_tests_make_every_alert_fire_and_stay_silent,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}

/// Open when `tool` (of Debian's prometheus package) is on PATH, or when
/// `VRA_REQUIRE_PROMETHEUS=1` makes a missing one fail.
fn gate(tool: &str) -> Gate {
    let required = std::env::var("VRA_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1");
    if on_path(tool).is_none() && !required {
        Gate::Closed(format!(
            "{tool} not found on PATH (Debian's prometheus package); .ci/run installs it"
        ))
    } else {
        Gate::Open
    }
}

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

fn rules() -> Value {
    let path = prometheus_dir().join("rules.yml");
    let text = std::fs::read_to_string(&path).expect("read rules.yml");
    serde_yaml_ng::from_str(&text).expect("rules.yml is YAML")
}

/// Every rule of every group.
fn each_rule(rules: &Value) -> Vec<&Value> {
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .collect()
}

/// The metric names an expression reads (`vra_gateway_…`, `process_…`), recorded series (with a
/// `:`) left out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let starts = rest.starts_with("vra_gateway_") || rest.starts_with("process_");
        let boundary = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':');
        if starts && boundary {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            if !name.contains(':') {
                names.insert(name.to_string());
            }
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

/// The metric families the gateway exports, with or without a series yet.
fn exported() -> BTreeSet<String> {
    Metrics::new().family_names().iter().cloned().collect()
}

/// Whether `name` is a series of an exported family (`_total` of a counter, `_bucket`,
/// `_count`, `_sum` of a histogram).
fn is_exported(name: &str, families: &BTreeSet<String>) -> bool {
    families.contains(name)
        || ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|f| families.contains(f))
            })
}

fn the_rules_name_only_metrics_the_gateway_exports() {
    let families = exported();
    assert!(
        families.contains("vra_gateway_requests")
            && families.contains("process_resident_memory_bytes"),
        "every family is listed: {families:?}"
    );
    // The list is the exposition's: every family with a series appears in a scrape by that name.
    let metrics = Metrics::new();
    metrics.report_hit_cost_limit();
    let scrape = metrics.render();
    for line in scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = line.split_whitespace().next().unwrap();
        assert!(families.contains(name), "{name} is exported but not listed");
    }
    let rules = rules();
    let mut read = BTreeSet::new();
    for rule in each_rule(&rules) {
        let expr = rule["expr"].as_str().expect("every rule has an expr");
        read.extend(metric_names(expr));
    }
    assert!(
        read.len() > 10,
        "the rules read the gateway's metrics: {read:?}"
    );
    let unknown: Vec<&String> = read.iter().filter(|n| !is_exported(n, &families)).collect();
    assert!(
        unknown.is_empty(),
        "metrics the gateway does not export: {unknown:?}"
    );
    // Conventions: counters end in _total, durations in _seconds, sizes in _bytes; no report id.
    for name in &read {
        assert!(
            !name.contains("report"),
            "{name}: report ids are never labels or names"
        );
    }
    assert_eq!(
        metric_names("rate(vra_gateway_requests_total[5m]) / vra_gateway:x:rate5m"),
        BTreeSet::from(["vra_gateway_requests_total".to_string()])
    );
}

fn every_alert_has_a_severity_and_a_runbook_section() {
    let runbooks =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks.md"))
            .expect("docs/runbooks.md");
    let rules = rules();
    let alerts: Vec<&Value> = each_rule(&rules)
        .into_iter()
        .filter(|r| r["alert"].is_string())
        .collect();
    assert!(alerts.len() >= 10, "the alerts the issue lists");
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        let severity = alert["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("page" | "ticket")),
            "{name}: severity page or ticket, got {severity:?}"
        );
        let url = alert["annotations"]["runbook_url"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no runbook_url"));
        let anchor = name.to_ascii_lowercase();
        assert_eq!(url, format!("docs/runbooks.md#{anchor}"), "{name}");
        assert!(
            runbooks.contains(&format!("\n## {name}\n")),
            "{name}: no section in docs/runbooks.md"
        );
        for part in ["summary", "description"] {
            assert!(alert["annotations"][part].is_string(), "{name}: no {part}");
        }
    }
}

fn promtool(args: &[&str]) {
    let binary = on_path("promtool").expect("promtool on PATH (VRA_REQUIRE_PROMETHEUS=1)");
    let output = std::process::Command::new(binary)
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn promtool_checks_the_rules() {
    promtool(&["check", "rules", "rules.yml"]);
}

fn promtool_unit_tests_make_every_alert_fire_and_stay_silent() {
    let tests = std::fs::read_to_string(prometheus_dir().join("rules.test.yml")).expect("tests");
    let rules = rules();
    for alert in each_rule(&rules).iter().filter_map(|r| r["alert"].as_str()) {
        assert!(
            tests.matches(&format!("alertname: {alert}")).count() >= 2,
            "{alert}: rules.test.yml must make it fire and stay silent"
        );
    }
    promtool(&["test", "rules", "rules.test.yml"]);
}

fn dashboard() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/vra-gateway.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard")).expect("JSON")
}

/// Every query of the dashboard's panels (rows hold none).
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().expect("expr").to_string()))
        })
        .collect()
}

/// A query with Grafana's variables as promtool can parse it.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("${datasource}", "")
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$provider", ".*")
        .replace("$client", ".*")
}

fn the_dashboard_reads_only_exported_metrics_through_its_variables() {
    let dashboard = dashboard();
    let families = exported();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(
        variables,
        ["datasource", "job", "instance", "provider", "client"]
    );
    let rows: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for row in [
        "Traffic and errors",
        "Latency",
        "Routing",
        "Budget and money",
        "Providers and endpoints",
        "Ledger",
        "The gateway",
    ] {
        assert!(rows.contains(&row), "no row {row}: {rows:?}");
    }
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 30, "{} queries", queries.len());
    let mut read = BTreeSet::new();
    for (title, expr) in &queries {
        assert!(
            expr.contains("job=~\"$job\"") && expr.contains("instance=~\"$instance\""),
            "{title}: every query follows the job and instance variables: {expr}"
        );
        read.extend(metric_names(expr));
    }
    let unknown: Vec<&String> = read.iter().filter(|n| !is_exported(n, &families)).collect();
    assert!(
        unknown.is_empty(),
        "metrics the gateway does not export: {unknown:?}"
    );
    for panel in dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
    {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}: the data source is the variable",
            panel["title"]
        );
    }
    // Every family a platform team needs is on it (the cache, the ledger, the process...).
    for needed in [
        "vra_gateway_requests_total",
        "vra_gateway_fallbacks_total",
        "vra_gateway_routes_total",
        "vra_gateway_cost_usd_total",
        "vra_gateway_savings_usd_total",
        "vra_gateway_client_cost_usd_total",
        "vra_gateway_circuit_open",
        "vra_gateway_endpoints",
        "vra_gateway_ledger_errors_total",
        "vra_gateway_ledger_duration_seconds_bucket",
        "vra_gateway_cache_requests_total",
        "vra_gateway_time_to_first_token_seconds_bucket",
        "process_resident_memory_bytes",
    ] {
        assert!(
            read.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
}

/// Each query as a recording rule of a scratch rules file, which `promtool check rules`
/// parses (`promtool` has no command for a bare expression).
fn promtool_parses_every_dashboard_query() {
    let queries = dashboard_queries(&dashboard());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let expr = serde_json::to_string(&concrete(expr)).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {expr}\n"
        ));
    }
    let dir = common::process::temp_dir();
    let path = dir.join("dashboard-queries.yml");
    std::fs::write(&path, rules).expect("write the scratch rules");
    promtool(&["check", "rules", path.to_str().unwrap()]);
}

/// A `prometheus` process on loopback: a temporary data directory, one scrape job of the
/// gateway's `/metrics` every second, the shipped rules evaluated every second.
struct Prometheus {
    /// Killed when dropped.
    _child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        vra_gateway::install_crypto_provider();
        let dir = common::process::temp_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rules = prometheus_dir().join("rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: vra-gateway\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let binary = on_path("prometheus").expect("prometheus on PATH (VRA_REQUIRE_PROMETHEUS=1)");
        let child = tokio::process::Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus {
            _child: child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        prometheus
            .until("ready", || async {
                let ready = prometheus
                    .http
                    .get(format!("{}/-/ready", prometheus.base))
                    .send()
                    .await;
                ready.is_ok_and(|r| r.status().is_success()).then_some(())
            })
            .await;
        prometheus
    }

    /// Polls `check` (the scrape and the rules run every second; no event to wait for).
    async fn until<T, F, Fut>(&self, what: &str, check: F) -> T
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within 60 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// An instant query's result vector.
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let response: serde_json::Value = self
            .http
            .get(format!(
                "{}/api/v1/query?query={}",
                self.base,
                percent_encoded(expr)
            ))
            .send()
            .await
            .expect("query prometheus")
            .json()
            .await
            .expect("a JSON answer");
        assert_eq!(response["status"], "success", "{expr}: {response}");
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The alerts by name, with their state (`pending`, `firing`).
    async fn alerts(&self) -> Vec<(String, String)> {
        let response: serde_json::Value = self
            .http
            .get(format!("{}/api/v1/alerts", self.base))
            .send()
            .await
            .expect("ask prometheus")
            .json()
            .await
            .expect("a JSON answer");
        response["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    a["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

/// A real gateway under a scripted workload — an endpoint ejected, a COST_LIMIT fallback, a
/// retry, two primary failures that open its circuit, a client at its day quota, a shed call, a call both tiers
/// fail, a stream, a cache hit, a call without credentials — scraped by a real Prometheus: every
/// dashboard query and every recording rule returns data, and the alerts this workload should
/// raise are pending or firing.
async fn a_real_prometheus_scraping_a_real_gateway_answers_every_query_and_alert() {
    let acme = TestClient::new("acme", "vra_acme_token_for_the_prometheus_test_0");
    let globex = TestClient::new("globex", "vra_globex_token_for_the_prometheus_test").per_day(1);
    let file = write_clients_file(&[acme, globex]);
    let file = file.to_str().unwrap().to_string();
    let cloud = Sim::start().await.unwrap();
    let local = Sim::start().await.unwrap();
    // The local provider's second endpoint fails every request: it is ejected.
    let broken = Sim::start().await.unwrap();
    broken.set_default(Step::fail(500));
    let (cloud_url, local_url) = (cloud.openai_base(), local.ollama_base());
    let endpoints = format!("{local_url},{}", broken.ollama_base());
    let mut env = gateway_env(
        &cloud_url,
        &local_url,
        &[
            ("OLLAMA_HOST", endpoints.as_str()),
            ("MAX_CLOUD_CALLS", "2"),
            ("VRA_RETRY_MAX_ATTEMPTS", "2"),
            ("VRA_CIRCUIT_FAILURES", "2"),
            ("VRA_CIRCUIT_OPEN_MS", "600000"),
            ("VRA_MAX_IN_FLIGHT", "2"),
            ("VRA_CACHE", "memory"),
            ("VRA_CLIENTS_FILE", file.as_str()),
        ],
    );
    metrics_on(&mut env);
    let mut gw = Running::start(&env).await;
    let url = gw.metrics_url().await;
    // host:port of http://host:port/metrics
    let target = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let prometheus = Prometheus::start(&target).await;
    // The counters' zeros scraped first: a rate needs the value from before the workload.
    prometheus
        .until("the first scrape", || async {
            let up = prometheus.query("up{job=\"vra-gateway\"} == 1").await;
            (!up.is_empty()).then_some(())
        })
        .await;
    let mut c = connect(gw.addr.parse().unwrap()).await;
    let call = |report: &str, phase: P, prompt: &str| {
        let mut r = request(report, phase, S::Analysis);
        r.prompt = prompt.into();
        r
    };

    // Local calls spread over the local provider's two endpoints: the broken one fails (the
    // call is retried on the other) until, three failures in a row, it is ejected. Thirty
    // calls make fewer than three first attempts on it a one-in-a-million chance.
    for i in 0..30 {
        c.generate(acme.call(call("prom-l", P::Expand, &format!("l{i}"))))
            .await
            .unwrap();
    }
    assert!(broken.requests() >= 3, "the broken endpoint was tried");
    // A report's budget of 2, then COST_LIMIT.
    for i in 0..3 {
        c.generate(acme.call(call("prom-a", P::Refine, &format!("a{i}"))))
            .await
            .unwrap();
    }
    // A client at its day quota (1 of 1).
    c.generate(globex.call(call("prom-g", P::Refine, "g")))
        .await
        .unwrap();
    // A retry: the first attempt fails, the second answers.
    cloud.push(Step::fail(500));
    c.generate(acme.call(call("prom-b", P::Refine, "b")))
        .await
        .unwrap();
    // Two calls whose primary fails twice each: PRIMARY_ERROR, and the circuit opens.
    cloud.push_n(4, Step::fail(500));
    for report in ["prom-c", "prom-d"] {
        c.generate(acme.call(call(report, P::Refine, report)))
            .await
            .unwrap();
    }
    // Both tiers fail: UNAVAILABLE.
    local.push_n(2, Step::fail(500));
    let failed = c
        .generate(acme.call(call("prom-e", P::Expand, "e")))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable);
    // A stream, then the same request again from the cache.
    let stream = c
        .generate_stream(acme.call(pb::GenerateStreamRequest {
            report_id: "prom-f".into(),
            phase: P::Expand as i32,
            section_type: S::Analysis as i32,
            prompt: "f".into(),
            system_prompt: "You are terse.".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(collect_stream(stream).await.1.is_some());
    let hit = c
        .generate(acme.call(call("prom-f2", P::Expand, "f")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.cache_status, pb::CacheStatus::Hit as i32);
    // Shed: three slow calls at once on a gateway that takes two.
    local.set_default(Step::Reply {
        text: "slow".into(),
        delay: std::time::Duration::from_millis(500),
        chunk_delay: std::time::Duration::ZERO,
    });
    let mut calls = Vec::new();
    for i in 0..3 {
        let mut c = c.clone();
        calls.push(tokio::spawn(async move {
            c.generate(acme.call(call(&format!("prom-s{i}"), P::Expand, &format!("s{i}"))))
                .await
        }));
    }
    let mut shed = 0;
    for task in calls {
        if task
            .await
            .unwrap()
            .is_err_and(|e| e.code() == tonic::Code::ResourceExhausted)
        {
            shed += 1;
        }
    }
    assert_eq!(shed, 1, "one call over VRA_MAX_IN_FLIGHT");
    // No credentials.
    let refused = c
        .generate(call("prom-h", P::Expand, "h"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Prometheus has it all after its next scrapes: every dashboard query and recording rule
    // answers with data.
    prometheus
        .until("the workload scraped", || async {
            let shed = prometheus
                .query("vra_gateway_requests_rejected_total{reason=\"overloaded\"} > 0")
                .await;
            (!shed.is_empty()).then_some(())
        })
        .await;
    let mut queries: Vec<(String, String)> = dashboard_queries(&dashboard())
        .into_iter()
        .map(|(title, expr)| (title, concrete(&expr).replace("[5m]", "[1m]")))
        .collect();
    let rules = rules();
    for rule in each_rule(&rules) {
        if let Some(name) = rule["record"].as_str() {
            queries.push((name.to_string(), name.to_string()));
        }
    }
    for (what, expr) in &queries {
        prometheus
            .until(&format!("{what}: {expr}"), || async {
                (!prometheus.query(expr).await.is_empty()).then_some(())
            })
            .await;
    }
    let ejected = prometheus
        .query("sum(vra_gateway_endpoint_ejections_total{provider=\"local\"}) > 0")
        .await;
    assert!(!ejected.is_empty(), "the ejection is counted");
    // The alerts this workload raises.
    let alerts = prometheus
        .until("the alerts", || async {
            let alerts = prometheus.alerts().await;
            let has = |name: &str, states: &[&str]| {
                alerts
                    .iter()
                    .any(|(n, s)| n == name && states.contains(&s.as_str()))
            };
            (has("VraPrimaryCircuitOpen", &["pending", "firing"])
                && has("VraCallsShed", &["pending", "firing"])
                && has("VraClientDayQuotaNearlySpent", &["firing"]))
            .then_some(alerts)
        })
        .await;
    assert!(
        !alerts.iter().any(|(n, _)| n == "VraPanics"),
        "no panic, no panic alert: {alerts:?}"
    );
    drop(prometheus);
    gw.sigterm();
    assert_eq!(gw.finish().await.0, 0);
}

/// `text` as a URL query value: every byte but the unreserved ones percent-encoded.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `deploy/kubernetes/monitoring/prometheusrule.yaml` carries `rules.yml`'s groups unchanged
/// (`VRA_UPDATE_MONITORING=1` writes it from `rules.yml`), and the ServiceMonitor scrapes the
/// Service's `metrics` port.
fn the_prometheus_rule_of_the_manifests_is_the_rules_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/monitoring");
    let path = dir.join("prometheusrule.yaml");
    let groups = rules()["groups"].clone();
    if std::env::var("VRA_UPDATE_MONITORING").is_ok_and(|v| v == "1") {
        let mut object = serde_yaml_ng::Mapping::new();
        let mut metadata = serde_yaml_ng::Mapping::new();
        metadata.insert("name".into(), "vra-gateway".into());
        metadata.insert("namespace".into(), "vra".into());
        let mut labels = serde_yaml_ng::Mapping::new();
        labels.insert("app.kubernetes.io/name".into(), "vra-gateway".into());
        labels.insert("app.kubernetes.io/part-of".into(), "vra".into());
        metadata.insert("labels".into(), labels.into());
        object.insert("apiVersion".into(), "monitoring.coreos.com/v1".into());
        object.insert("kind".into(), "PrometheusRule".into());
        object.insert("metadata".into(), metadata.into());
        let mut spec = serde_yaml_ng::Mapping::new();
        spec.insert("groups".into(), groups.clone());
        object.insert("spec".into(), spec.into());
        let text = format!(
            "# Generated from deploy/prometheus/rules.yml (VRA_UPDATE_MONITORING=1 cargo test --test monitoring):\n# edit that file, not this one.\n{}",
            serde_yaml_ng::to_string(&Value::Mapping(object)).unwrap()
        );
        std::fs::write(&path, text).expect("write the PrometheusRule");
    }
    let text = std::fs::read_to_string(&path).expect("prometheusrule.yaml");
    let rule: Value = serde_yaml_ng::from_str(&text).expect("YAML");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"],
        groups,
        "{}: differs from deploy/prometheus/rules.yml; run VRA_UPDATE_MONITORING=1 cargo test --test monitoring",
        path.display()
    );
    let monitor: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("servicemonitor.yaml")).expect("servicemonitor.yaml"),
    )
    .expect("YAML");
    let service: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("../service.yaml")).expect("service.yaml"),
    )
    .expect("YAML");
    let port = monitor["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert!(
        service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port && p["port"] == 9464),
        "the ServiceMonitor scrapes the Service's metrics port"
    );
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "the ServiceMonitor selects the Service"
        );
    }
}
