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

use common::redis_server::on_path;
use common::trials::{Gate, sync_trial};
use libtest_mimic::Arguments;
use serde_yaml_ng::Value;
use vra_gateway::metrics::Metrics;

fn main() {
    let args = Arguments::from_args();
    let promtool = promtool_gate();
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

fn promtool_gate() -> Gate {
    let required = std::env::var("VRA_REQUIRE_PROMETHEUS").is_ok_and(|v| v == "1");
    if on_path("promtool").is_none() && !required {
        Gate::Closed(
            "promtool not found on PATH (Debian's prometheus package); .ci/run installs it".into(),
        )
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
