//! Checks the deployment files under `deploy/` against the gateway they deploy.
//!
//! The Dockerfile, the Compose file and the Kubernetes manifests are written by hand, away
//! from the code, so they drift silently: a variable renamed in `config.rs` but not in a
//! ConfigMap is simply ignored at runtime, a probe on the wrong port restarts pods forever.
//! This test parses every YAML document under `deploy/`, checks the essentials of each file
//! (ports, probes, grace period, non-root user, the secret reference), and checks that every
//! environment variable the manifests set is one the gateway reads. The allowed names come
//! from `vra_gateway::config::SETTINGS` and `OTEL_SETTINGS`, never from a list kept here, and
//! the values the manifests set must pass the gateway's own configuration validation.
//!
//! Files only: no network, no Docker, no cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;
use vra_gateway::config::{Config, OTEL_SETTINGS, SETTINGS, Sources};

const GRPC_PORT: u64 = 50051;
const METRICS_PORT: u64 = 9464;
const NAMESPACE: &str = "vra";
/// Images (and so containers) that run the gateway start with this.
const GATEWAY_IMAGE: &str = "vra-gateway";
/// The gateway drains for up to 30 s on SIGTERM; the platform must wait a bit longer.
const MIN_GRACE_SECS: u64 = 35;
const COMPOSE_GATEWAYS: [&str; 2] = ["gateway-1", "gateway-2"];
const COMPOSE_SERVICES: [&str; 5] = ["gateway-1", "gateway-2", "redis", "jaeger", "ollama"];
/// Settings every deployment must set explicitly rather than inherit a default.
const ESSENTIAL_VARS: [&str; 3] = ["VRA_HYBRID_MODE", "MAX_CLOUD_CALLS", "VRA_LEDGER_URL"];
/// Settings that name another service of the Compose stack.
const COMPOSE_URL_VARS: [&str; 3] = [
    "OLLAMA_HOST",
    "VRA_LEDGER_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// One YAML document and the file it came from.
struct Doc {
    path: PathBuf,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// `deploy/kubernetes/x.yaml (Deployment vra-gateway)`, for failure messages.
    fn at(&self) -> String {
        if self.kind().is_empty() {
            rel(&self.path)
        } else {
            format!("{} ({} {})", rel(&self.path), self.kind(), self.name())
        }
    }
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn kubernetes_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

/// A path relative to the repository root.
fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: cannot read: {e}", rel(path)))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: cannot list: {e}", rel(dir)));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: cannot list: {e}", rel(dir)))
            .path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Every non-empty YAML document under `deploy/`; panics on the first one that does not parse.
fn load_all() -> Vec<Doc> {
    let files: Vec<PathBuf> = files_under(&deploy_dir())
        .into_iter()
        .filter(|p| is_yaml(p))
        .collect();
    assert!(
        !files.is_empty(),
        "{}: no YAML files found",
        rel(&deploy_dir())
    );
    let mut docs = Vec::new();
    for path in files {
        let text = read(&path);
        for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: document {}: {e}", rel(&path), i + 1));
            if !value.is_null() {
                docs.push(Doc {
                    path: path.clone(),
                    value,
                });
            }
        }
    }
    docs
}

fn compose(docs: &[Doc]) -> &Doc {
    let found: Vec<&Doc> = docs
        .iter()
        .filter(|d| {
            d.path
                .file_name()
                .is_some_and(|n| n == "docker-compose.yml")
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one document in deploy/docker-compose.yml"
    );
    found[0]
}

/// Kubernetes objects: documents under `deploy/kubernetes/`, kustomization excluded.
fn kube(docs: &[Doc]) -> Vec<&Doc> {
    let dir = kubernetes_dir();
    docs.iter()
        .filter(|d| d.path.starts_with(&dir) && d.kind() != "Kustomization")
        .collect()
}

fn find<'a>(docs: &[&'a Doc], kind: &str, name: &str) -> &'a Doc {
    docs.iter()
        .copied()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("{}: no {kind} named `{name}`", rel(&kubernetes_dir())))
}

fn the_deployment<'a>(docs: &[&'a Doc]) -> &'a Doc {
    find(docs, "Deployment", GATEWAY_IMAGE)
}

// ---------------------------------------------------------------------------------------
// Value helpers
// ---------------------------------------------------------------------------------------

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// A scalar as text (YAML `15`, `true` and `"15"` all give `15`/`true`).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether every label of a non-empty `selector` is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(selector) = selector.as_mapping() else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
}

/// The host of `scheme://[user@]host[:port][/path]`.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    host_port.split(':').next().unwrap_or_default()
}

/// Whether a command line runs `vra-gateway health`.
fn runs_health_check(command: &[String]) -> bool {
    command
        .windows(2)
        .any(|w| w[0] == GATEWAY_IMAGE && w[1] == "health")
}

/// Compose durations such as `40s`, `1m30s`, `500ms`, in whole seconds.
fn compose_duration_secs(text: &str) -> Option<u64> {
    let mut total_ms = 0u64;
    let mut number = String::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit_ms = match c {
            'h' => 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            'm' => 60_000,
            's' => 1_000,
            _ => return None,
        };
        total_ms += number.parse::<u64>().ok()? * unit_ms;
        number.clear();
    }
    number.is_empty().then_some(total_ms / 1_000)
}

/// The container port of a Compose `ports` entry (`"50052:50051"`, `"50051/tcp"`, a number,
/// or the long form with `target`).
fn compose_container_port(entry: &Value) -> Option<u64> {
    match entry {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let last = s.rsplit(':').next()?;
            last.split('/').next()?.parse().ok()
        }
        Value::Mapping(_) => entry["target"].as_u64(),
        _ => None,
    }
}

/// The host port of a Compose `ports` entry, when it publishes one.
fn compose_published_port(entry: &Value) -> Option<String> {
    match entry {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            (parts.len() >= 2).then(|| parts[parts.len() - 2].to_string())
        }
        Value::Mapping(_) => scalar(&entry["published"]),
        _ => None,
    }
}

/// Compose `${NAME:-default}` / `${NAME-default}` / `${NAME}` as the host environment would
/// leave it with `NAME` unset; other values verbatim.
fn compose_unset_interpolation(value: &str) -> String {
    match value
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
    {
        Some(inner) => inner
            .split_once(":-")
            .or_else(|| inner.split_once('-'))
            .map(|(_, default)| default.to_string())
            .unwrap_or_default(),
        None => value.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------

fn dockerfile_path() -> PathBuf {
    deploy_dir().join("Dockerfile")
}

/// `(KEYWORD, arguments)` of every instruction, continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                instructions.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    instructions
}

/// The instructions of the last stage: what the running image is made of.
fn final_stage(instructions: &[(String, String)]) -> &[(String, String)] {
    let start = instructions
        .iter()
        .rposition(|(k, _)| k == "FROM")
        .unwrap_or_else(|| panic!("{}: no FROM", rel(&dockerfile_path())));
    &instructions[start..]
}

/// Whitespace-separated words, double quotes grouping.
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// The `(name, value)` pairs of one `ENV` instruction, in either syntax.
fn dockerfile_env(args: &str) -> Vec<(String, String)> {
    let words = words(args);
    match words.first() {
        Some(first) if first.contains('=') => words
            .iter()
            .map(|w| {
                let (k, v) = w.split_once('=').unwrap_or((w, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Some(first) => vec![(first.clone(), words[1..].join(" "))],
        None => Vec::new(),
    }
}

fn dockerfile_final_env() -> Vec<(String, String)> {
    let instructions = dockerfile_instructions(&read(&dockerfile_path()));
    final_stage(&instructions)
        .iter()
        .filter(|(k, _)| k == "ENV")
        .flat_map(|(_, args)| dockerfile_env(args))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Environment variables set by the manifests
// ---------------------------------------------------------------------------------------

/// One variable set by a manifest: where, its name, and its literal value (`None` when it
/// comes from a secret).
struct EnvVar {
    at: String,
    name: String,
    value: Option<String>,
}

fn is_compose_gateway(service: &Value) -> bool {
    service["image"]
        .as_str()
        .is_some_and(|i| i.starts_with(GATEWAY_IMAGE))
        || !service["build"].is_null()
}

/// The `environment` of a Compose service, map or list form.
fn compose_env(service: &Value) -> Vec<(String, Option<String>)> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| (scalar(k).unwrap_or_default(), scalar(v)))
            .collect(),
        Value::Sequence(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (item.to_string(), None),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Variables of each gateway service of the Compose file, by service name.
fn compose_gateway_env(compose: &Doc) -> BTreeMap<String, Vec<EnvVar>> {
    let services = compose.value["services"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{}: no `services`", compose.at()));
    services
        .iter()
        .filter(|(_, service)| is_compose_gateway(service))
        .map(|(name, service)| {
            let name = scalar(name).unwrap_or_default();
            let vars = compose_env(service)
                .into_iter()
                .map(|(var, value)| EnvVar {
                    at: format!("{}: services.{name}.environment", compose.at()),
                    name: var,
                    value: value.map(|v| compose_unset_interpolation(&v)),
                })
                .collect();
            (name, vars)
        })
        .collect()
}

/// Gateway containers of every workload under `deploy/kubernetes/`, with their documents.
fn gateway_containers<'a>(kube: &[&'a Doc]) -> Vec<(&'a Doc, &'a Value)> {
    kube.iter()
        .flat_map(|doc| {
            seq(&doc.value["spec"]["template"]["spec"]["containers"])
                .iter()
                .filter(|c| {
                    c["image"]
                        .as_str()
                        .is_some_and(|i| i.starts_with(GATEWAY_IMAGE))
                })
                .map(move |c| (*doc, c))
        })
        .collect()
}

/// Variables of one gateway container: its ConfigMaps (`envFrom`) then its `env`.
fn container_env(kube: &[&Doc], doc: &Doc, container: &Value) -> Vec<EnvVar> {
    let mut vars = Vec::new();
    for source in seq(&container["envFrom"]) {
        assert!(
            source["secretRef"].is_null(),
            "{}: envFrom secretRef hides which variables are set; use env[].valueFrom.secretKeyRef",
            doc.at()
        );
        let name = source["configMapRef"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: envFrom without configMapRef.name", doc.at()));
        let config_map = find(kube, "ConfigMap", name);
        let data = config_map.value["data"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{}: no `data`", config_map.at()));
        for (key, value) in data {
            assert!(
                value.is_string(),
                "{}: data.{}: must be a quoted string (kubectl rejects other types)",
                config_map.at(),
                scalar(key).unwrap_or_default()
            );
            vars.push(EnvVar {
                at: format!("{}: data", config_map.at()),
                name: scalar(key).unwrap_or_default(),
                value: scalar(value),
            });
        }
    }
    for entry in seq(&container["env"]) {
        let value = &entry["value"];
        assert!(
            value.is_null() || value.is_string(),
            "{}: env {}: value must be a quoted string",
            doc.at(),
            entry["name"].as_str().unwrap_or_default()
        );
        vars.push(EnvVar {
            at: format!("{}: env", doc.at()),
            name: entry["name"].as_str().unwrap_or_default().to_string(),
            value: scalar(value),
        });
    }
    vars
}

/// Every variable any manifest sets for the gateway, grouped by source.
fn all_gateway_env(docs: &[Doc]) -> BTreeMap<&'static str, Vec<EnvVar>> {
    let kube = kube(docs);
    let dockerfile = rel(&dockerfile_path());
    let mut sources = BTreeMap::new();
    sources.insert(
        "Dockerfile ENV",
        dockerfile_final_env()
            .into_iter()
            .map(|(name, value)| EnvVar {
                at: format!("{dockerfile}: ENV"),
                name,
                value: Some(value),
            })
            .collect(),
    );
    sources.insert(
        "Compose environment",
        compose_gateway_env(compose(docs))
            .into_values()
            .flatten()
            .collect(),
    );
    sources.insert(
        "Kubernetes env and ConfigMaps",
        gateway_containers(&kube)
            .into_iter()
            .flat_map(|(doc, c)| container_env(&kube, doc, c))
            .collect(),
    );
    sources
}

/// The names the gateway reads, from the code.
fn allowed_vars() -> BTreeSet<&'static str> {
    SETTINGS
        .iter()
        .map(|s| s.var)
        .chain(OTEL_SETTINGS.iter().copied())
        .collect()
}

/// Validates `vars` (layered over the Dockerfile's `ENV`) with the gateway's own loader.
fn load_config(at: &str, vars: &[EnvVar]) -> Config {
    let mut env: HashMap<String, String> = dockerfile_final_env().into_iter().collect();
    for var in vars {
        if let Some(value) = &var.value {
            env.insert(var.name.clone(), value.clone());
        }
    }
    let sources = Sources {
        env,
        ..Default::default()
    };
    Config::from_sources(&sources)
        .unwrap_or_else(|e| panic!("{at}: the gateway rejects this configuration: {e}"))
}

/// In a container the gateway listens on all interfaces, on the ports the manifests publish.
fn assert_container_addresses(at: &str, config: &Config) {
    assert_eq!(
        u64::from(config.listen_addr.port()),
        GRPC_PORT,
        "{at}: VRA_GATEWAY_ADDR port differs from the published gRPC port"
    );
    assert!(
        config.listen_addr.ip().is_unspecified(),
        "{at}: VRA_GATEWAY_ADDR must listen on all interfaces in a container"
    );
    let metrics = config
        .metrics_addr
        .unwrap_or_else(|| panic!("{at}: VRA_METRICS_ADDR disables /metrics"));
    assert_eq!(
        u64::from(metrics.port()),
        METRICS_PORT,
        "{at}: VRA_METRICS_ADDR port differs from the published metrics port"
    );
    assert!(
        metrics.ip().is_unspecified(),
        "{at}: VRA_METRICS_ADDR must listen on all interfaces in a container"
    );
}

fn names(vars: &[EnvVar]) -> BTreeSet<&str> {
    vars.iter().map(|v| v.name.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn every_yaml_document_under_deploy_parses() {
    let docs = load_all();
    let expected = [
        "docker-compose.yml",
        "kubernetes/namespace.yaml",
        "kubernetes/configmap.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/service.yaml",
        "kubernetes/pdb.yaml",
        "kubernetes/redis.yaml",
        "kubernetes/kustomization.yaml",
    ];
    for file in expected {
        let path = deploy_dir().join(file);
        assert!(
            docs.iter().any(|d| d.path == path),
            "{}: missing or empty",
            rel(&path)
        );
    }
    for doc in kube(&docs) {
        assert!(
            doc.value["apiVersion"].is_string() && !doc.kind().is_empty() && !doc.name().is_empty(),
            "{}: every Kubernetes object needs apiVersion, kind and metadata.name",
            doc.at()
        );
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let docs = load_all();
    let path = kubernetes_dir().join("kustomization.yaml");
    let kustomization = docs
        .iter()
        .find(|d| d.path == path && d.kind() == "Kustomization")
        .unwrap_or_else(|| panic!("{}: no Kustomization", rel(&path)));
    let listed: BTreeSet<String> = seq(&kustomization.value["resources"])
        .iter()
        .filter_map(scalar)
        .collect();
    let on_disk: BTreeSet<String> = files_under(&kubernetes_dir())
        .iter()
        .filter(|p| is_yaml(p) && **p != path)
        .filter_map(|p| p.strip_prefix(kubernetes_dir()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        listed,
        on_disk,
        "{}: `resources` must list exactly the manifests in {}",
        rel(&path),
        rel(&kubernetes_dir())
    );
}

#[test]
fn compose_runs_two_gateways_and_their_dependencies() {
    let docs = load_all();
    let compose = compose(&docs);
    let services = &compose.value["services"];
    for name in COMPOSE_SERVICES {
        let service = &services[name];
        assert!(
            service.is_mapping(),
            "{}: no service `{name}`",
            compose.at()
        );
        assert!(
            service["image"].is_string() || !service["build"].is_null(),
            "{}: service `{name}` has neither image nor build",
            compose.at()
        );
    }

    for name in COMPOSE_GATEWAYS {
        let service = &services[name];
        let at = format!("{}: services.{name}", compose.at());
        assert!(
            is_compose_gateway(service),
            "{at}: does not run the gateway image"
        );
        let ports: BTreeSet<u64> = seq(&service["ports"])
            .iter()
            .filter_map(compose_container_port)
            .collect();
        for port in [GRPC_PORT, METRICS_PORT] {
            assert!(ports.contains(&port), "{at}: ports do not publish {port}");
        }
        let healthcheck: Vec<String> = seq(&service["healthcheck"]["test"])
            .iter()
            .filter_map(scalar)
            .collect();
        assert!(
            runs_health_check(&healthcheck),
            "{at}: healthcheck must run `vra-gateway health`, got {healthcheck:?}"
        );
        let depends_on = &service["depends_on"];
        assert!(
            !depends_on["redis"].is_null() || seq(depends_on).iter().any(|d| d == "redis"),
            "{at}: must depend on redis"
        );
        let grace = service["stop_grace_period"]
            .as_str()
            .and_then(compose_duration_secs);
        assert!(
            grace.is_some_and(|s| s >= MIN_GRACE_SECS),
            "{at}: stop_grace_period must be >= {MIN_GRACE_SECS}s (the gateway drains for 30 s), got {:?}",
            service["stop_grace_period"]
        );
    }

    let mut published = BTreeMap::new();
    for (name, service) in services.as_mapping().into_iter().flatten() {
        let name = scalar(name).unwrap_or_default();
        for port in seq(&service["ports"])
            .iter()
            .filter_map(compose_published_port)
        {
            if let Some(other) = published.insert(port.clone(), name.clone()) {
                panic!(
                    "{}: host port {port} published by both `{other}` and `{name}`",
                    compose.at()
                );
            }
        }
    }
}

#[test]
fn compose_gateways_point_at_compose_services() {
    let docs = load_all();
    let compose = compose(&docs);
    let services = &compose.value["services"];
    for (service, vars) in compose_gateway_env(compose) {
        for var in vars
            .iter()
            .filter(|v| COMPOSE_URL_VARS.contains(&v.name.as_str()))
        {
            let url = var.value.as_deref().unwrap_or_default();
            let host = url_host(url);
            assert!(
                services[host].is_mapping(),
                "{}: {}={url}: `{host}` is not a service of the stack ({service})",
                var.at,
                var.name
            );
        }
    }
}

#[test]
fn kubernetes_deployment_is_production_ready() {
    let docs = load_all();
    let kube = kube(&docs);
    let deployment = the_deployment(&kube);
    let at = deployment.at();
    let spec = &deployment.value["spec"];
    let pod = &spec["template"]["spec"];

    assert_eq!(spec["replicas"].as_u64(), Some(3), "{at}: replicas");
    assert!(
        selects(
            &spec["selector"]["matchLabels"],
            &spec["template"]["metadata"]["labels"]
        ),
        "{at}: selector.matchLabels must match the pod template's labels"
    );
    let grace = pod["terminationGracePeriodSeconds"].as_u64();
    assert!(
        grace.is_some_and(|g| g >= MIN_GRACE_SECS),
        "{at}: terminationGracePeriodSeconds must be >= {MIN_GRACE_SECS} (the gateway drains for 30 s), got {grace:?}"
    );

    let containers = gateway_containers(&kube);
    let container = containers
        .iter()
        .find(|(doc, _)| doc.path == deployment.path && doc.name() == deployment.name())
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("{at}: no container with a `{GATEWAY_IMAGE}` image"));
    let image = container["image"].as_str().unwrap_or_default();
    assert!(
        image.contains(':') && !image.ends_with(":latest"),
        "{at}: image `{image}` must carry a version tag"
    );

    let ports: BTreeSet<u64> = seq(&container["ports"])
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    for port in [GRPC_PORT, METRICS_PORT] {
        assert!(ports.contains(&port), "{at}: no containerPort {port}");
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container[probe]["grpc"]["port"].as_u64(),
            Some(GRPC_PORT),
            "{at}: {probe} must be a native gRPC probe on {GRPC_PORT}"
        );
    }

    let resources = &container["resources"];
    for key in ["cpu", "memory"] {
        assert!(
            !resources["requests"][key].is_null(),
            "{at}: resources.requests.{key} missing"
        );
    }
    assert!(
        !resources["limits"]["memory"].is_null(),
        "{at}: resources.limits.memory missing"
    );

    let run_as_non_root = container["securityContext"]["runAsNonRoot"]
        .as_bool()
        .or_else(|| pod["securityContext"]["runAsNonRoot"].as_bool());
    assert_eq!(run_as_non_root, Some(true), "{at}: runAsNonRoot");
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{at}: readOnlyRootFilesystem"
    );

    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/scrape"].as_str(),
        Some("true"),
        "{at}: prometheus.io/scrape annotation"
    );
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(METRICS_PORT.to_string().as_str()),
        "{at}: prometheus.io/port annotation"
    );

    let key_ref = seq(&container["env"])
        .iter()
        .find(|e| e["name"] == "OPENAI_API_KEY")
        .map(|e| &e["valueFrom"]["secretKeyRef"])
        .unwrap_or_else(|| panic!("{at}: OPENAI_API_KEY is not set"));
    assert_eq!(
        key_ref["name"].as_str(),
        Some("vra-gateway-openai"),
        "{at}: OPENAI_API_KEY secret name"
    );
    assert_eq!(
        key_ref["key"].as_str(),
        Some("api-key"),
        "{at}: OPENAI_API_KEY secret key"
    );
    assert_eq!(
        key_ref["optional"].as_bool(),
        Some(true),
        "{at}: the OpenAI secret must be optional so pods start without it"
    );
}

#[test]
fn kubernetes_service_pdb_and_namespace_match_the_deployment() {
    let docs = load_all();
    let kube = kube(&docs);
    let deployment = the_deployment(&kube);
    let pod_labels = &deployment.value["spec"]["template"]["metadata"]["labels"];

    let grpc_port = kube
        .iter()
        .filter(|d| d.kind() == "Service" && selects(&d.value["spec"]["selector"], pod_labels))
        .flat_map(|d| seq(&d.value["spec"]["ports"]).iter().map(move |p| (*d, p)))
        .find(|(_, p)| p["port"].as_u64() == Some(GRPC_PORT));
    let (service, port) = grpc_port.unwrap_or_else(|| {
        panic!(
            "{}: no Service selecting the gateway pods exposes {GRPC_PORT}",
            rel(&kubernetes_dir())
        )
    });
    assert_eq!(
        port["appProtocol"].as_str(),
        Some("grpc"),
        "{}: port {GRPC_PORT} needs appProtocol grpc",
        service.at()
    );
    let container_ports = seq(&deployment.value["spec"]["template"]["spec"]["containers"])
        .iter()
        .flat_map(|c| seq(&c["ports"]))
        .collect::<Vec<_>>();
    let target = &port["targetPort"];
    let target_port = match target {
        Value::String(name) => container_ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64()),
        Value::Null => port["port"].as_u64(),
        other => other.as_u64(),
    };
    assert_eq!(
        target_port,
        Some(GRPC_PORT),
        "{}: targetPort {target:?} does not reach container port {GRPC_PORT}",
        service.at()
    );

    let pdb = kube
        .iter()
        .find(|d| d.kind() == "PodDisruptionBudget")
        .unwrap_or_else(|| panic!("{}: no PodDisruptionBudget", rel(&kubernetes_dir())));
    assert!(
        selects(&pdb.value["spec"]["selector"]["matchLabels"], pod_labels),
        "{}: selector does not match the gateway pods",
        pdb.at()
    );
    let min_available = pdb.value["spec"]["minAvailable"].as_u64();
    let replicas = deployment.value["spec"]["replicas"].as_u64().unwrap_or(0);
    assert!(
        min_available.is_some_and(|m| m >= 2 && m < replicas),
        "{}: minAvailable {min_available:?} must be >= 2 and below the {replicas} replicas (or drains block)",
        pdb.at()
    );

    find(&kube, "Namespace", NAMESPACE);
    for doc in &kube {
        if doc.kind() != "Namespace" {
            assert_eq!(
                doc.value["metadata"]["namespace"].as_str(),
                Some(NAMESPACE),
                "{}: metadata.namespace",
                doc.at()
            );
        }
        assert_ne!(
            doc.kind(),
            "Secret",
            "{}: secrets are created out of band (see deploy/README.md), never committed",
            doc.at()
        );
    }
}

#[test]
fn kubernetes_ledger_url_names_a_service_of_the_manifests() {
    let docs = load_all();
    let kube = kube(&docs);
    let containers = gateway_containers(&kube);
    assert!(
        !containers.is_empty(),
        "{}: no gateway container",
        rel(&kubernetes_dir())
    );
    for (doc, container) in containers {
        let vars = container_env(&kube, doc, container);
        let ledger = vars
            .iter()
            .find(|v| v.name == "VRA_LEDGER_URL")
            .unwrap_or_else(|| panic!("{}: VRA_LEDGER_URL is not set", doc.at()));
        let url = ledger.value.as_deref().unwrap_or_default();
        // service.namespace.svc[.cluster.local]
        let mut labels = url_host(url).split('.');
        let service = labels.next().unwrap_or_default();
        let namespace = labels.next().unwrap_or(NAMESPACE);
        assert_eq!(
            namespace, NAMESPACE,
            "{}: VRA_LEDGER_URL={url}: namespace",
            ledger.at
        );
        find(&kube, "Service", service);
    }
}

#[test]
fn dockerfile_builds_a_non_root_image_with_a_health_check() {
    let path = dockerfile_path();
    let at = rel(&path);
    let instructions = dockerfile_instructions(&read(&path));
    assert!(
        instructions.iter().any(|(k, args)| k == "RUN"
            && args.contains("cargo build --release --locked --bin vra-gateway")),
        "{at}: no `cargo build --release --locked --bin vra-gateway`"
    );
    let runtime = final_stage(&instructions);
    let last = |keyword: &str| {
        runtime
            .iter()
            .rev()
            .find(|(k, _)| k == keyword)
            .map(|(_, args)| args.as_str())
    };

    let exposed: BTreeSet<String> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, args)| words(args))
        .map(|p| p.trim_end_matches("/tcp").to_string())
        .collect();
    for port in [GRPC_PORT, METRICS_PORT] {
        assert!(
            exposed.contains(&port.to_string()),
            "{at}: no EXPOSE {port}"
        );
    }

    let user = last("USER").unwrap_or_else(|| panic!("{at}: the runtime stage has no USER"));
    let account = user.split(':').next().unwrap_or_default();
    assert!(
        !matches!(account, "" | "root" | "0"),
        "{at}: USER {user} runs as root"
    );

    let healthcheck = last("HEALTHCHECK").unwrap_or_else(|| panic!("{at}: no HEALTHCHECK"));
    assert!(
        runs_health_check(&words(&healthcheck.replace(['[', ']', ',', '"'], " "))),
        "{at}: HEALTHCHECK must run `vra-gateway health`, got `{healthcheck}`"
    );
    let entrypoint = last("ENTRYPOINT").unwrap_or_else(|| panic!("{at}: no ENTRYPOINT"));
    assert!(
        entrypoint.contains("vra-gateway"),
        "{at}: ENTRYPOINT `{entrypoint}`"
    );
}

#[test]
fn manifests_set_only_variables_the_gateway_reads() {
    let docs = load_all();
    let allowed = allowed_vars();
    let mut unknown = Vec::new();
    for (source, vars) in all_gateway_env(&docs) {
        assert!(
            !vars.is_empty(),
            "{source}: no variables found; is the parser still right?"
        );
        for var in vars {
            if !allowed.contains(var.name.as_str()) {
                unknown.push(format!("{}: {}", var.at, var.name));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "variables the gateway does not read (config::SETTINGS / OTEL_SETTINGS):\n  {}\nknown: {}",
        unknown.join("\n  "),
        allowed.into_iter().collect::<Vec<_>>().join(", ")
    );
}

#[test]
fn manifests_set_the_essential_variables() {
    let docs = load_all();
    let kube = kube(&docs);
    let config_map = find(&kube, "ConfigMap", GATEWAY_IMAGE);
    let keys: BTreeSet<String> = config_map.value["data"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| scalar(k))
        .collect();
    for var in ESSENTIAL_VARS {
        assert!(
            keys.contains(var),
            "{}: data.{var} missing",
            config_map.at()
        );
    }

    let compose_env = compose_gateway_env(compose(&docs));
    for service in COMPOSE_GATEWAYS {
        let vars = compose_env
            .get(service)
            .unwrap_or_else(|| panic!("{}: `{service}` is not a gateway", compose(&docs).at()));
        let set = names(vars);
        for var in ESSENTIAL_VARS.iter().chain(&COMPOSE_URL_VARS) {
            assert!(
                set.contains(var),
                "{}: services.{service} does not set {var}",
                compose(&docs).at()
            );
        }
    }
}

#[test]
fn manifest_values_are_accepted_by_the_gateway() {
    let docs = load_all();
    let kube = kube(&docs);

    // The image on its own (`docker run`): listens where it says it does.
    let dockerfile = rel(&dockerfile_path());
    assert_container_addresses(&dockerfile, &load_config(&dockerfile, &[]));

    let mut deployments = Vec::new();
    for (service, vars) in compose_gateway_env(compose(&docs)) {
        let at = format!("{}: services.{service}", compose(&docs).at());
        deployments.push((load_config(&at, &vars), at));
    }
    for (doc, container) in gateway_containers(&kube) {
        let vars = container_env(&kube, doc, container);
        deployments.push((load_config(&doc.at(), &vars), doc.at()));
    }
    assert!(
        deployments.len() >= 3,
        "expected the Compose gateways and the Deployment"
    );
    for (config, at) in deployments {
        assert_container_addresses(&at, &config);
        assert!(config.hybrid_mode, "{at}: VRA_HYBRID_MODE should be on");
        assert!(config.ledger.url.is_some(), "{at}: no shared Redis ledger");
    }
}

#[test]
fn helpers_parse_what_the_manifests_use() {
    assert_eq!(compose_duration_secs("40s"), Some(40));
    assert_eq!(compose_duration_secs("1m30s"), Some(90));
    assert_eq!(compose_duration_secs("500ms"), Some(0));
    assert_eq!(compose_duration_secs("forty"), None);
    assert_eq!(
        compose_container_port(&Value::from("50052:50051")),
        Some(50051)
    );
    assert_eq!(
        compose_container_port(&Value::from("127.0.0.1:9465:9464/tcp")),
        Some(9464)
    );
    assert_eq!(
        compose_published_port(&Value::from("50052:50051")).as_deref(),
        Some("50052")
    );
    assert_eq!(compose_published_port(&Value::from("50051")), None);
    assert_eq!(compose_unset_interpolation("${OPENAI_API_KEY:-}"), "");
    assert_eq!(compose_unset_interpolation("${X:-dflt}"), "dflt");
    assert_eq!(compose_unset_interpolation("plain"), "plain");
    assert_eq!(
        url_host("redis://:pw@redis.vra.svc:6379/0"),
        "redis.vra.svc"
    );
    assert_eq!(url_host("http://jaeger:4317"), "jaeger");
    let cmd = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    assert!(runs_health_check(&cmd("CMD vra-gateway health")));
    assert!(!runs_health_check(&cmd("CMD vra-gateway serve --health")));
    assert_eq!(
        dockerfile_env("A=1 B=\"two words\""),
        vec![("A".into(), "1".into()), ("B".into(), "two words".into())]
    );
    assert_eq!(dockerfile_env("A 1 2"), vec![("A".into(), "1 2".into())]);
    let instructions =
        dockerfile_instructions("FROM a\n# c\nENV A=1 \\\n    B=2\nFROM b\nUSER 1\n");
    assert_eq!(final_stage(&instructions).len(), 2);
    assert_eq!(instructions[1].0, "ENV");
    assert_eq!(dockerfile_env(&instructions[1].1).len(), 2);
}
