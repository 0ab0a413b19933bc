//! Checks the deployment files under `deploy/` against the gateway they deploy.
//!
//! The Dockerfile, the Compose file and the Kubernetes manifests are written by hand, away
//! from the code, so they drift silently: a variable renamed in `config/settings.rs` but not in a
//! ConfigMap is simply ignored at runtime, a probe on the wrong port restarts pods forever.
//! This test parses every YAML document under `deploy/`, checks the essentials of each file
//! (ports, probes, grace period, non-root user, the secret reference), and checks that every
//! environment variable the manifests set is one the gateway reads. The allowed names come
//! from `vra_gateway::config::SETTINGS` and `OTEL_SETTINGS`, never from a list kept here, and
//! the values the manifests set must pass the gateway's own configuration validation.
//!
//! The front door too: Compose publishes on 127.0.0.1 only, every gateway reads a mounted
//! clients file (and the example one is valid), both Redis require a password and every
//! ledger URL carries it, and the Kubernetes ledger is a Redis Cluster with the replicas its
//! `VRA_LEDGER_MIN_REPLICAS` waits for (tests/redis_cluster.rs runs its nodes' settings).
//!
//! Values the operator supplies are taken from what `deploy/README.md` tells them to run:
//! a Compose `${NAME}` is set when the README `export`s `NAME`, and a Kubernetes
//! `secretKeyRef` holds what the README's `kubectl create secret generic` puts there. A shell
//! variable `$NAME` in either stands for `stand-in-for-NAME`, so two values built from the
//! same variable are equal and values built from different ones are not.
//!
//! Files only: no network, no Docker, no cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;
use sha2::{Digest as _, Sha256};
use vra_gateway::config::{Config, OTEL_SETTINGS, SETTINGS, Sources};
use vra_gateway::domain::Client;

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
const ESSENTIAL_VARS: [&str; 4] = [
    "VRA_HYBRID_MODE",
    "MAX_CLOUD_CALLS",
    "VRA_LEDGER_URL",
    "VRA_CLIENTS_FILE",
];
const CLIENTS_FILE_VAR: &str = "VRA_CLIENTS_FILE";
const LEDGER_URL_VAR: &str = "VRA_LEDGER_URL";
/// The Redis of both stacks: the Compose service and the Kubernetes Deployment.
const REDIS: &str = "redis";
/// The only address Compose may publish ports on.
const LOOPBACK: &str = "127.0.0.1";
/// The example clients file, and the line of its comment that gives its example token.
const EXAMPLE_CLIENTS: &str = "clients.example.toml";
const EXAMPLE_TOKEN_LABEL: &str = "example token:";
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

fn readme_path() -> PathBuf {
    deploy_dir().join("README.md")
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

/// The password of `scheme://[user][:password]@host...`, when there is a non-empty one.
fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next().unwrap_or_default();
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// The host IP a Compose `ports` entry binds (`"127.0.0.1:50051:50051"`, `"[::1]:80:80"`,
/// long form `host_ip`); `None` when it binds every interface, as Docker does by default.
fn compose_host_ip(entry: &Value) -> Option<String> {
    match entry {
        Value::String(s) => {
            if let Some(rest) = s.strip_prefix('[') {
                return rest.split_once(']').map(|(ip, _)| ip.to_string());
            }
            let parts: Vec<&str> = s.split(':').collect();
            (parts.len() == 3 && !parts[0].is_empty()).then(|| parts[0].to_string())
        }
        Value::Mapping(_) => entry["host_ip"].as_str().map(String::from),
        _ => None,
    }
}

/// A Compose `command` or healthcheck `test`: a list as is, a string split on whitespace.
fn compose_words(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => words(s),
        _ => seq(value).iter().filter_map(scalar).collect(),
    }
}

/// One entry of a Compose service's `volumes`.
struct ComposeVolume {
    source: String,
    target: String,
    read_only: bool,
}

/// A Compose `volumes` entry: `SOURCE:TARGET[:MODE]`, or the long form.
fn compose_volume(entry: &Value) -> Option<ComposeVolume> {
    match entry {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, mode) = match parts.as_slice() {
                [source, target] => (*source, *target, ""),
                [source, target, mode] => (*source, *target, *mode),
                _ => return None,
            };
            Some(ComposeVolume {
                source: source.to_string(),
                target: target.to_string(),
                read_only: mode.split(',').any(|m| m == "ro"),
            })
        }
        Value::Mapping(_) => Some(ComposeVolume {
            source: scalar(&entry["source"]).unwrap_or_default(),
            target: scalar(&entry["target"])?,
            read_only: entry["read_only"].as_bool() == Some(true),
        }),
        _ => None,
    }
}

/// Compose's interpolation of `value` with the host environment `host`: `$$`, `$NAME`,
/// `${NAME}`, `${NAME:-default}`, `${NAME-default}`, `${NAME:?error}`, `${NAME?error}`,
/// `${NAME:+alt}`, `${NAME+alt}`. A required variable that is missing is an error, as it is
/// for `docker compose`.
fn compose_interpolate(value: &str, host: &HashMap<String, String>) -> Result<String, String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in `{value}`"))?;
            let inner = &after[..end];
            rest = &after[end + 1..];
            let (name, op) = inner.split_at(inner.find(|c| !is_name(c)).unwrap_or(inner.len()));
            let set = host.get(name).map(String::as_str);
            let non_empty = set.filter(|v| !v.is_empty());
            let missing = |message: &str| format!("`{name}` is required ({message})");
            let expanded = if op.is_empty() {
                set.unwrap_or_default()
            } else if let Some(default) = op.strip_prefix(":-") {
                non_empty.unwrap_or(default)
            } else if let Some(default) = op.strip_prefix('-') {
                set.unwrap_or(default)
            } else if let Some(message) = op.strip_prefix(":?") {
                non_empty.ok_or_else(|| missing(message))?
            } else if let Some(message) = op.strip_prefix('?') {
                set.ok_or_else(|| missing(message))?
            } else if let Some(alt) = op.strip_prefix(":+") {
                non_empty.map_or("", |_| alt)
            } else if let Some(alt) = op.strip_prefix('+') {
                set.map_or("", |_| alt)
            } else {
                return Err(format!("unsupported interpolation `${{{inner}}}`"));
            };
            out.push_str(expanded);
        } else {
            let len = rest.find(|c| !is_name(c)).unwrap_or(rest.len());
            if len == 0 {
                out.push('$');
            }
            out.push_str(host.get(&rest[..len]).map_or("", String::as_str));
            rest = &rest[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `value` is exactly one `${NAME:?...}` / `${NAME?...}`: supplied by the operator,
/// with no default to fall back on.
fn is_required_interpolation(value: &str) -> bool {
    value
        .strip_prefix("${")
        .and_then(|inner| inner.strip_suffix('}'))
        .is_some_and(|inner| !inner.contains(['$', '}']) && inner.contains('?'))
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
// deploy/README.md: what the operator is told to run
// ---------------------------------------------------------------------------------------

/// What the shell variable `$name` of a README command stands for here.
fn stand_in(name: &str) -> String {
    format!("stand-in-for-{name}")
}

/// `text` with every `$NAME` and `${NAME}` replaced by its stand-in.
fn with_stand_ins(text: &str) -> String {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        let braced = rest.starts_with('{');
        let name_at = usize::from(braced);
        let len = rest[name_at..]
            .find(|c| !is_name(c))
            .unwrap_or(rest.len() - name_at);
        let closed = !braced || rest[name_at + len..].starts_with('}');
        if len == 0 || !closed {
            out.push('$');
            continue;
        }
        out.push_str(&stand_in(&rest[name_at..name_at + len]));
        rest = &rest[name_at + len + usize::from(braced)..];
    }
    out.push_str(rest);
    out
}

/// The commands of the README's ```` ```sh ```` blocks, continuation lines joined, each as
/// words (double quotes grouping) up to a `#` comment.
fn readme_commands() -> Vec<Vec<String>> {
    let text = read(&readme_path());
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = trimmed == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let command: Vec<String> = words(&std::mem::take(&mut current))
                    .into_iter()
                    .take_while(|w| !w.starts_with('#'))
                    .collect();
                if !command.is_empty() {
                    commands.push(command);
                }
            }
        }
    }
    commands
}

/// The host environment Compose interpolates with: every variable the README `export`s,
/// set to its stand-in.
fn compose_host_env() -> HashMap<String, String> {
    readme_commands()
        .iter()
        .filter(|c| c[0] == "export")
        .filter_map(|c| c.get(1)?.split_once('=').map(|(name, _)| name.to_string()))
        .map(|name| {
            let value = stand_in(&name);
            (name, value)
        })
        .collect()
}

/// The Secrets the README creates with `kubectl create secret generic`: name -> key ->
/// value (a `--from-literal` value with stand-ins, the path of a `--from-file`). Panics on
/// one created outside the namespace of the manifests.
fn documented_secrets() -> BTreeMap<String, BTreeMap<String, String>> {
    let readme = rel(&readme_path());
    let mut secrets: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for command in readme_commands() {
        let Some(at) = command
            .windows(3)
            .position(|w| w[0] == "create" && w[1] == "secret" && w[2] == "generic")
        else {
            continue;
        };
        let name = command.get(at + 3).cloned().unwrap_or_default();
        let namespace = command
            .iter()
            .position(|w| w == "-n" || w == "--namespace")
            .and_then(|i| command.get(i + 1).map(String::as_str))
            .or_else(|| command.iter().find_map(|w| w.strip_prefix("--namespace=")));
        assert_eq!(
            namespace,
            Some(NAMESPACE),
            "{readme}: `kubectl create secret generic {name}` must name the namespace `{NAMESPACE}`"
        );
        let keys = secrets.entry(name).or_default();
        for word in &command {
            if let Some(literal) = word.strip_prefix("--from-literal=") {
                let (key, value) = literal.split_once('=').unwrap_or((literal, ""));
                keys.insert(key.to_string(), with_stand_ins(value));
            } else if let Some(file) = word.strip_prefix("--from-file=") {
                let (key, path) = file.split_once('=').unwrap_or_else(|| {
                    let base = file.rsplit('/').next().unwrap_or(file);
                    (base, file)
                });
                keys.insert(key.to_string(), path.to_string());
            }
        }
    }
    secrets
}

// ---------------------------------------------------------------------------------------
// Clients files
// ---------------------------------------------------------------------------------------

/// The clients file format (`VRA_CLIENTS_FILE`), as strict as the gateway's parser.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    client: Vec<ClientEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    id: String,
    /// Optional for the gateway (a client known by its certificate only), required here:
    /// the deployments authenticate with tokens.
    token_sha256: String,
    cloud_calls_per_day: Option<u32>,
    max_cloud_calls: Option<u32>,
}

/// Parses and checks a clients file with the gateway's parser, then: at least one client, ids valid and unique, digests
/// 64 hex digits and unique, limits positive. Returns `(id, digest)` of each client.
fn check_clients_file(path: &Path) -> Vec<(String, String)> {
    let at = rel(path);
    // The gateway's own parser must accept it; the checks below add what a deployment needs.
    vra_gateway::auth::ClientSet::read(path)
        .unwrap_or_else(|e| panic!("{at}: the gateway rejects this clients file: {e}"));
    let file: ClientsFile = toml::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{at}: not a clients file: {}", e.message()));
    assert!(!file.client.is_empty(), "{at}: no [[client]]");
    let mut ids = BTreeSet::new();
    let mut digests = BTreeSet::new();
    let mut clients = Vec::new();
    for entry in file.client {
        let id = entry.id;
        assert!(
            Client::valid_id(&id),
            "{at}: client id `{id}`: use 1 to 64 of A-Z a-z 0-9 . _ -"
        );
        assert!(ids.insert(id.clone()), "{at}: duplicate client id `{id}`");
        let digest = entry.token_sha256;
        assert!(
            digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
            "{at}: client `{id}`: token_sha256 must be 64 hex digits (the SHA-256 of the token)"
        );
        assert!(
            digests.insert(digest.to_ascii_lowercase()),
            "{at}: client `{id}`: two clients share a token_sha256"
        );
        for (field, limit) in [
            ("cloud_calls_per_day", entry.cloud_calls_per_day),
            ("max_cloud_calls", entry.max_cloud_calls),
        ] {
            assert_ne!(
                limit,
                Some(0),
                "{at}: client `{id}`: {field} = 0 forbids every cloud call; leave it out or raise it"
            );
        }
        clients.push((id, digest));
    }
    clients
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Environment variables set by the manifests
// ---------------------------------------------------------------------------------------

/// One variable set by a manifest: where, its name, and its value. A Compose value is
/// interpolated with [`compose_host_env`]; a Kubernetes `secretKeyRef` takes the value the
/// README puts in that Secret key (`None` for an optional key the README does not create).
struct EnvVar {
    at: String,
    name: String,
    value: Option<String>,
    /// Set when the value comes from a Kubernetes Secret.
    secret: Option<SecretRef>,
}

/// A Kubernetes `secretKeyRef`.
#[derive(Clone)]
struct SecretRef {
    name: String,
    key: String,
    optional: bool,
}

impl SecretRef {
    fn same_key(&self, other: &SecretRef) -> bool {
        self.name == other.name && self.key == other.key
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the Secret `{}` key `{}`", self.name, self.key)
    }
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

/// The `environment` of the Compose service `name`, interpolated with [`compose_host_env`].
fn compose_service_env(compose: &Doc, name: &str, service: &Value) -> Vec<EnvVar> {
    let host = compose_host_env();
    let at = format!("{}: services.{name}.environment", compose.at());
    compose_env(service)
        .into_iter()
        .map(|(var, value)| EnvVar {
            value: value.map(|v| {
                compose_interpolate(&v, &host).unwrap_or_else(|e| {
                    panic!(
                        "{at}: {var}: {e}; deploy/README.md must `export` it before `docker compose`"
                    )
                })
            }),
            at: at.clone(),
            name: var,
            secret: None,
        })
        .collect()
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
            let vars = compose_service_env(compose, &name, service);
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

/// Variables of one container: its ConfigMaps (`envFrom`) then its `env`. A `secretKeyRef`
/// must be to a Secret key the README creates, unless it is optional.
fn container_env(kube: &[&Doc], doc: &Doc, container: &Value) -> Vec<EnvVar> {
    let secrets = documented_secrets();
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
                secret: None,
            });
        }
    }
    for entry in seq(&container["env"]) {
        let name = entry["name"].as_str().unwrap_or_default().to_string();
        let value = &entry["value"];
        assert!(
            value.is_null() || value.is_string(),
            "{}: env {name}: value must be a quoted string",
            doc.at()
        );
        let key_ref = &entry["valueFrom"]["secretKeyRef"];
        let (value, secret) = if key_ref.is_mapping() {
            let secret = SecretRef {
                name: key_ref["name"].as_str().unwrap_or_default().to_string(),
                key: key_ref["key"].as_str().unwrap_or_default().to_string(),
                optional: key_ref["optional"].as_bool() == Some(true),
            };
            let documented = secrets
                .get(&secret.name)
                .and_then(|keys| keys.get(&secret.key))
                .cloned();
            assert!(
                documented.is_some() || secret.optional,
                "{}: env {name}: {secret} is required, but no `kubectl create secret generic {}` in {} creates it",
                doc.at(),
                secret.name,
                rel(&readme_path())
            );
            (documented, Some(secret))
        } else {
            (scalar(value), None)
        };
        vars.push(EnvVar {
            at: format!("{}: env", doc.at()),
            name,
            value,
            secret,
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
                secret: None,
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

/// `vars` layered over the Dockerfile's `ENV`, as the gateway's configuration sources.
fn container_sources(vars: &[EnvVar]) -> Sources {
    let mut env: HashMap<String, String> = dockerfile_final_env().into_iter().collect();
    for var in vars {
        if let Some(value) = &var.value {
            env.insert(var.name.clone(), value.clone());
        }
    }
    Sources {
        env,
        ..Default::default()
    }
}

/// Validates `vars` (layered over the Dockerfile's `ENV`) with the gateway's own loader.
fn load_config(at: &str, vars: &[EnvVar]) -> Config {
    Config::from_sources(&container_sources(vars))
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

/// The variable `name` of `vars` (the last one: later entries win), or a panic naming `at`.
fn var<'a>(vars: &'a [EnvVar], name: &str, at: &str) -> &'a EnvVar {
    vars.iter()
        .rev()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{at}: {name} is not set"))
}

/// The pod spec of a workload.
fn pod_spec(doc: &Doc) -> &Value {
    &doc.value["spec"]["template"]["spec"]
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
    // The root kustomization and each optional one in a subdirectory (monitoring/: objects of
    // the Prometheus Operator, which not every cluster has) list exactly the YAML beside them.
    let docs = load_all();
    let kustomizations: Vec<PathBuf> = files_under(&kubernetes_dir())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .collect();
    assert!(
        kustomizations.contains(&kubernetes_dir().join("kustomization.yaml")),
        "{}: no kustomization.yaml",
        rel(&kubernetes_dir())
    );
    let dirs: Vec<PathBuf> = kustomizations
        .iter()
        .map(|k| k.parent().unwrap().to_path_buf())
        .collect();
    for path in &kustomizations {
        let dir = path.parent().unwrap();
        let kustomization = docs
            .iter()
            .find(|d| d.path == *path && d.kind() == "Kustomization")
            .unwrap_or_else(|| panic!("{}: no Kustomization", rel(path)));
        let listed: BTreeSet<String> = seq(&kustomization.value["resources"])
            .iter()
            .filter_map(scalar)
            .collect();
        // A file belongs to the nearest kustomization above it.
        let on_disk: BTreeSet<String> = files_under(dir)
            .iter()
            .filter(|p| is_yaml(p) && *p != path)
            .filter(|p| {
                dirs.iter()
                    .filter(|d| p.starts_with(d))
                    .max_by_key(|d| d.components().count())
                    .is_some_and(|d| d == dir)
            })
            .filter_map(|p| p.strip_prefix(dir).ok())
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            listed,
            on_disk,
            "{}: `resources` must list exactly the manifests in {}",
            rel(path),
            rel(dir)
        );
    }
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

/// The hosts of `scheme://[userinfo@]host:port[,host:port...][/path]`.
fn url_hosts(url: &str) -> Vec<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let seeds = authority.rsplit('@').next().unwrap_or_default();
    seeds
        .split(',')
        .map(|seed| seed.split(':').next().unwrap_or_default())
        .collect()
}

/// The gateway's ledger URL, as the README's Secret gives it to the manifests' containers.
fn kubernetes_ledger_urls(kube: &[&Doc]) -> Vec<(String, String)> {
    let containers = gateway_containers(kube);
    assert!(
        !containers.is_empty(),
        "{}: no gateway container",
        rel(&kubernetes_dir())
    );
    containers
        .into_iter()
        .map(|(doc, container)| {
            let vars = container_env(kube, doc, container);
            let ledger = var(&vars, LEDGER_URL_VAR, &doc.at());
            (ledger.at.clone(), ledger.value.clone().unwrap_or_default())
        })
        .collect()
}

/// Every seed of the ledger URL is a Redis of the manifests: a Service
/// (`service.namespace.svc`), or a pod of the StatefulSet behind a headless Service
/// (`name-N.service.namespace.svc`, N below its replicas).
#[test]
fn kubernetes_ledger_url_names_a_service_of_the_manifests() {
    let docs = load_all();
    let kube = kube(&docs);
    for (at, url) in kubernetes_ledger_urls(&kube) {
        for host in url_hosts(&url) {
            let labels: Vec<&str> = host.split('.').collect();
            let pod_of = |set: &&Doc| {
                let replicas = set.value["spec"]["replicas"].as_u64().unwrap_or(1);
                set.value["spec"]["serviceName"].as_str() == labels.get(1).copied()
                    && labels[0]
                        .strip_prefix(&format!("{}-", set.name()))
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n < replicas)
            };
            let (service, namespace) =
                match kube.iter().find(|d| d.kind() == "StatefulSet" && pod_of(d)) {
                    Some(_) => (labels[1], labels.get(2)),
                    None => (labels[0], labels.get(1)),
                };
            assert_eq!(
                namespace.copied().unwrap_or(NAMESPACE),
                NAMESPACE,
                "{at}: {LEDGER_URL_VAR}={url}: {host}: namespace"
            );
            let service = find(&kube, "Service", service);
            if service.name() != labels[0] {
                assert!(
                    service.value["spec"]["clusterIP"].as_str() == Some("None"),
                    "{}: pods get DNS names only from a headless Service (clusterIP: None)",
                    service.at()
                );
            }
        }
    }
}

/// The value following `flag` in a command line.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|w| w == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// `VRA_LEDGER_MIN_REPLICAS` in the manifests waits for replicas the manifests' Redis has: a
/// Redis Cluster (`redis+cluster://`) formed with at least that many replicas per master, that
/// keeps its data across a restart (a master back empty before its failover would empty its
/// replica too) and never evicts a ledger key; its nodes announce names, not pod IPs.
#[test]
fn kubernetes_ledger_has_the_replicas_its_reservations_wait_for() {
    let docs = load_all();
    let kube = kube(&docs);
    let configmap = find(&kube, "ConfigMap", "vra-gateway");
    let wanted: u64 = scalar(&configmap.value["data"]["VRA_LEDGER_MIN_REPLICAS"])
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}: VRA_LEDGER_MIN_REPLICAS is not set", configmap.at()));
    assert!(
        wanted >= 1,
        "{}: VRA_LEDGER_MIN_REPLICAS: a master's death must lose no unit",
        configmap.at()
    );
    for (at, url) in kubernetes_ledger_urls(&kube) {
        assert!(
            url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://"),
            "{at}: {LEDGER_URL_VAR}={url}: the manifests' ledger is a Redis Cluster"
        );
    }

    let set = find(&kube, "StatefulSet", REDIS);
    let at = set.at();
    let container = &seq(&pod_spec(set)["containers"])[0];
    let args: Vec<String> = seq(&container["args"]).iter().filter_map(scalar).collect();
    for (flag, value) in [
        ("--cluster-enabled", "yes"),
        ("--appendonly", "yes"),
        ("--maxmemory-policy", "noeviction"),
        ("--cluster-preferred-endpoint-type", "hostname"),
    ] {
        assert_eq!(flag_value(&args, flag), Some(value), "{at}: args: {flag}");
    }
    assert!(
        flag_value(&args, "--cluster-config-file").is_some_and(|f| f.starts_with("/data/")),
        "{at}: nodes.conf must be on the persistent volume"
    );
    assert_eq!(
        flag_value(&args, "--masterauth"),
        flag_value(&args, "--requirepass"),
        "{at}: replicas authenticate to their master with the password it requires"
    );
    let claims = seq(&set.value["spec"]["volumeClaimTemplates"]);
    assert!(
        claims.iter().any(|c| c["metadata"]["name"] == "data"),
        "{at}: /data must be a PersistentVolume (volumeClaimTemplates), not an emptyDir"
    );

    let job = find(&kube, "Job", "redis-cluster-create");
    let script = seq(&pod_spec(job)["containers"][0]["command"])
        .iter()
        .filter_map(scalar)
        .collect::<Vec<_>>()
        .join(" ");
    let words = words(&script);
    let per_master: u64 = flag_value(&words, "--cluster-replicas")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{}: no `redis-cli --cluster create ... --cluster-replicas N`",
                job.at()
            )
        });
    let nodes = set.value["spec"]["replicas"].as_u64().unwrap_or(1);
    assert!(
        per_master >= wanted,
        "{}: --cluster-replicas {per_master}: the ConfigMap waits for {wanted} per master",
        job.at()
    );
    assert!(
        nodes.is_multiple_of(1 + per_master) && nodes / (1 + per_master) >= 3,
        "{at}: {nodes} pods do not make at least 3 masters with {per_master} replica(s) each"
    );
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

/// `cargo build` in the image resolves the whole workspace: every member's manifest must be in
/// the build context the Dockerfile copies (a missing one fails the image build, which no test
/// here can run).
#[test]
fn dockerfile_copies_every_workspace_members_manifest() {
    let root = deploy_dir().parent().unwrap().to_path_buf();
    let manifest: toml::Table = read(&root.join("Cargo.toml")).parse().expect("Cargo.toml");
    let members: Vec<String> = manifest["workspace"]["members"]
        .as_array()
        .expect("[workspace] members")
        .iter()
        .map(|m| m.as_str().unwrap().trim_end_matches('/').to_string())
        .filter(|m| m != ".")
        .collect();
    assert!(!members.is_empty(), "the load generator is a member");
    let path = dockerfile_path();
    let copied: Vec<String> = dockerfile_instructions(&read(&path))
        .iter()
        .filter(|(k, _)| k == "COPY")
        .flat_map(|(_, args)| words(args))
        .collect();
    for member in members {
        let wanted = format!("{member}/Cargo.toml");
        assert!(
            copied.contains(&wanted),
            "{}: the workspace member `{member}` needs `COPY {wanted}`",
            rel(&path)
        );
        assert!(root.join(&wanted).is_file(), "{wanted}");
    }
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
    let containers = gateway_containers(&kube);
    assert!(
        !containers.is_empty(),
        "{}: no gateway container",
        rel(&kubernetes_dir())
    );
    for (doc, container) in containers {
        let vars = container_env(&kube, doc, container);
        let set = names(&vars);
        for var in ESSENTIAL_VARS {
            assert!(
                set.contains(var),
                "{}: {var} is set neither in env nor in a ConfigMap of envFrom",
                doc.at()
            );
        }
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

    // The image on its own (`docker run`) listens on all interfaces, so it refuses to start
    // until callers must authenticate...
    let dockerfile = rel(&dockerfile_path());
    let Err(refused) = Config::from_sources(&container_sources(&[])) else {
        panic!("{dockerfile}: the image alone serves 0.0.0.0 without authentication");
    };
    assert_eq!(
        refused.var, "VRA_GATEWAY_ADDR",
        "{dockerfile}: the image alone is refused for another reason: {refused}"
    );
    // ...and with a clients file, listens where it says it does.
    let with_clients = [EnvVar {
        at: dockerfile.clone(),
        name: CLIENTS_FILE_VAR.into(),
        value: Some("/etc/vra/clients.toml".into()),
        secret: None,
    }];
    assert_container_addresses(&dockerfile, &load_config(&dockerfile, &with_clients));

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
        assert!(
            config.security.authenticates(),
            "{at}: callers must authenticate (VRA_CLIENTS_FILE)"
        );
        assert!(
            !config.security.allow_unauthenticated,
            "{at}: VRA_ALLOW_UNAUTHENTICATED must stay off in the shipped manifests"
        );
    }
}

#[test]
fn compose_publishes_ports_on_loopback_only() {
    let docs = load_all();
    let compose = compose(&docs);
    let mut checked = 0;
    for (name, service) in compose.value["services"].as_mapping().into_iter().flatten() {
        let name = scalar(name).unwrap_or_default();
        let at = format!("{}: services.{name}", compose.at());
        assert_ne!(
            service["network_mode"].as_str(),
            Some("host"),
            "{at}: network_mode host exposes every port on every interface"
        );
        for entry in seq(&service["ports"]) {
            assert_eq!(
                compose_host_ip(entry).as_deref(),
                Some(LOOPBACK),
                "{at}: ports entry {entry:?} must bind {LOOPBACK} (\"{LOOPBACK}:HOST:CONTAINER\"); Docker publishes on every interface otherwise"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2 * COMPOSE_GATEWAYS.len(),
        "{}: expected the gateways' ports at least",
        compose.at()
    );
    assert!(
        seq(&compose.value["services"][REDIS]["ports"]).is_empty(),
        "{}: services.{REDIS}: only the gateways need Redis; do not publish it",
        compose.at()
    );
}

#[test]
fn compose_gateways_read_a_mounted_clients_file() {
    let docs = load_all();
    let compose = compose(&docs);
    let services = &compose.value["services"];
    let host = compose_host_env();
    let gateways = compose_gateway_env(compose);
    assert!(!gateways.is_empty(), "{}: no gateway", compose.at());
    for (service, vars) in gateways {
        let at = format!("{}: services.{service}", compose.at());
        let path = var(&vars, CLIENTS_FILE_VAR, &at)
            .value
            .clone()
            .unwrap_or_default();
        let volume = seq(&services[service.as_str()]["volumes"])
            .iter()
            .filter_map(compose_volume)
            .find(|v| v.target == path)
            .unwrap_or_else(|| {
                panic!("{at}: {CLIENTS_FILE_VAR}={path} is not the target of any of its volumes")
            });
        assert!(
            volume.read_only,
            "{at}: mount the clients file read-only (`:ro`)"
        );
        let source = compose_interpolate(&volume.source, &host)
            .unwrap_or_else(|e| panic!("{at}: volume source: {e}"));
        assert!(
            source.starts_with("./") || source.starts_with("../"),
            "{at}: the clients file `{source}` must be a bind mount of a file next to the Compose file"
        );
        let file = deploy_dir().join(&source);
        assert!(
            file.is_file(),
            "{at}: the clients file `{source}` does not exist ({})",
            rel(&file)
        );
        check_clients_file(&file);
    }
}

#[test]
fn kubernetes_gateways_read_the_clients_file_from_a_secret() {
    let docs = load_all();
    let kube = kube(&docs);
    let secrets = documented_secrets();
    let containers = gateway_containers(&kube);
    assert!(
        !containers.is_empty(),
        "{}: no gateway container",
        rel(&kubernetes_dir())
    );
    for (doc, container) in containers {
        let at = doc.at();
        let vars = container_env(&kube, doc, container);
        let clients = var(&vars, CLIENTS_FILE_VAR, &at);
        assert!(
            clients.secret.is_none(),
            "{}: {CLIENTS_FILE_VAR} is a path, not a secret",
            clients.at
        );
        let path = clients.value.clone().unwrap_or_default();
        let (mount, file_name) = seq(&container["volumeMounts"])
            .iter()
            .find_map(|m| {
                let dir = m["mountPath"].as_str()?.trim_end_matches('/');
                let file = path.strip_prefix(dir)?.strip_prefix('/')?;
                Some((m, file.to_string()))
            })
            .unwrap_or_else(|| panic!("{at}: {CLIENTS_FILE_VAR}={path} is under no volumeMount"));
        assert!(
            mount["subPath"].is_null() && mount["subPathExpr"].is_null(),
            "{at}: mount the clients Secret as a directory: with subPath, Secret updates never reach the file and SIGHUP re-reads the old clients"
        );
        assert_eq!(
            mount["readOnly"].as_bool(),
            Some(true),
            "{at}: the clients volumeMount must be readOnly"
        );
        let volume_name = mount["name"].as_str().unwrap_or_default();
        let volume = seq(&pod_spec(doc)["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some(volume_name))
            .unwrap_or_else(|| panic!("{at}: no volume `{volume_name}`"));
        let secret = &volume["secret"];
        let secret_name = secret["secretName"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: volume `{volume_name}` is not a Secret"));
        assert_ne!(
            secret["optional"].as_bool(),
            Some(true),
            "{at}: volume `{volume_name}`: the clients Secret must not be optional"
        );
        let items = seq(&secret["items"]);
        let key = if items.is_empty() {
            file_name.clone()
        } else {
            items
                .iter()
                .find(|i| i["path"].as_str() == Some(file_name.as_str()))
                .and_then(|i| i["key"].as_str())
                .unwrap_or_else(|| {
                    panic!("{at}: volume `{volume_name}` has no item with path `{file_name}`")
                })
                .to_string()
        };
        assert!(
            secrets
                .get(secret_name)
                .is_some_and(|keys| keys.contains_key(&key)),
            "{at}: the clients file is key `{key}` of the Secret `{secret_name}`, which no `kubectl create secret generic {secret_name}` in {} creates",
            rel(&readme_path())
        );
    }
}

#[test]
fn compose_redis_requires_the_password_every_ledger_url_carries() {
    let docs = load_all();
    let compose = compose(&docs);
    let at = format!("{}: services.{REDIS}", compose.at());
    let redis = &compose.value["services"][REDIS];
    assert!(redis.is_mapping(), "{at}: missing");

    let command = compose_words(&redis["command"]);
    let raw = command
        .iter()
        .position(|w| w == "--requirepass")
        .and_then(|i| command.get(i + 1))
        .unwrap_or_else(|| panic!("{at}: command has no `--requirepass PASSWORD`"));
    assert!(
        is_required_interpolation(raw),
        "{at}: --requirepass `{raw}`: take it from the operator as `${{NAME:?message}}`, neither committed nor defaulted"
    );
    let password = compose_interpolate(raw, &compose_host_env())
        .unwrap_or_else(|e| panic!("{at}: --requirepass: {e}; deploy/README.md must export it"));

    // redis-cli exits 0 on a NOAUTH error: the healthcheck must authenticate and want PONG.
    let test = compose_words(&redis["healthcheck"]["test"]).join(" ");
    let env = compose_service_env(compose, REDIS, redis);
    let cli_auth = env
        .iter()
        .any(|v| v.name == "REDISCLI_AUTH" && v.value.as_deref() == Some(password.as_str()));
    assert!(
        test.contains("redis-cli") && (cli_auth || test.contains(" -a ")) && test.contains("PONG"),
        "{at}: the healthcheck must authenticate (REDISCLI_AUTH set to the password, or -a) and check for PONG, got `{test}`"
    );

    let gateways = compose_gateway_env(compose);
    assert!(!gateways.is_empty(), "{}: no gateway", compose.at());
    for (service, vars) in gateways {
        let ledger = var(
            &vars,
            LEDGER_URL_VAR,
            &format!("{}: services.{service}", compose.at()),
        );
        let url = ledger.value.as_deref().unwrap_or_default();
        assert_eq!(
            url_password(url),
            Some(password.as_str()),
            "{}: {LEDGER_URL_VAR} must carry the password Redis requires (redis://:${{...}}@{REDIS}:6379/0)",
            ledger.at
        );
    }
}

#[test]
fn kubernetes_redis_requires_the_password_every_ledger_url_carries() {
    let docs = load_all();
    let kube = kube(&docs);
    let deployment = find(&kube, "StatefulSet", REDIS);
    let at = deployment.at();
    let container = seq(&pod_spec(deployment)["containers"])
        .iter()
        .find(|c| c["image"].as_str().is_some_and(|i| i.starts_with(REDIS)))
        .unwrap_or_else(|| panic!("{at}: no container with a `{REDIS}` image"));
    let env = container_env(&kube, deployment, container);

    let args: Vec<String> = seq(&container["command"])
        .iter()
        .chain(seq(&container["args"]))
        .filter_map(scalar)
        .collect();
    let raw = args
        .iter()
        .position(|w| w == "--requirepass")
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("{at}: args have no `--requirepass $(VAR)`"));
    let source = raw
        .strip_prefix("$(")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| {
            panic!("{at}: --requirepass `{raw}`: use `$(VAR)` with VAR from a secretKeyRef, never a literal")
        });
    let password_var = var(&env, source, &at);
    let secret = password_var.secret.clone().unwrap_or_else(|| {
        panic!(
            "{}: {source}: the password must come from a secretKeyRef",
            password_var.at
        )
    });
    assert!(
        !secret.optional,
        "{}: {source}: {secret} must not be optional: without it Redis would start with an empty password",
        password_var.at
    );
    let password = password_var
        .value
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{}: {source}: {secret} is empty as {} creates it",
                password_var.at,
                rel(&readme_path())
            )
        });

    // redis-cli exits 0 on a NOAUTH error: the probe must authenticate and want PONG.
    let probe = seq(&container["readinessProbe"]["exec"]["command"])
        .iter()
        .filter_map(scalar)
        .collect::<Vec<_>>()
        .join(" ");
    let cli_auth = env.iter().any(|v| {
        v.name == "REDISCLI_AUTH"
            && (v.value.as_deref() == Some(raw.as_str())
                || v.secret.as_ref().is_some_and(|s| s.same_key(&secret)))
    });
    assert!(
        probe.contains("redis-cli")
            && (cli_auth || probe.contains(" -a "))
            && probe.contains("PONG"),
        "{at}: the readiness probe must authenticate (REDISCLI_AUTH = the password, or -a) and check for PONG, got `{probe}`"
    );

    let containers = gateway_containers(&kube);
    assert!(
        !containers.is_empty(),
        "{}: no gateway container",
        rel(&kubernetes_dir())
    );
    for (doc, container) in containers {
        let vars = container_env(&kube, doc, container);
        let ledger = var(&vars, LEDGER_URL_VAR, &doc.at());
        let ledger_secret = ledger.secret.as_ref().unwrap_or_else(|| {
            panic!(
                "{}: {LEDGER_URL_VAR} carries the Redis password: take it from a secretKeyRef",
                ledger.at
            )
        });
        assert!(
            !ledger_secret.optional,
            "{}: {LEDGER_URL_VAR}: {ledger_secret} must not be optional: without it each replica would keep its own in-memory budgets",
            ledger.at
        );
        let url = ledger.value.as_deref().unwrap_or_default();
        assert_eq!(
            url_password(url),
            Some(password.as_str()),
            "{}: {LEDGER_URL_VAR}: {ledger_secret} as {} creates it must carry the password Redis requires ({secret})",
            ledger.at,
            rel(&readme_path()),
        );
    }
}

#[test]
fn example_clients_file_is_valid_and_clearly_an_example() {
    let path = deploy_dir().join(EXAMPLE_CLIENTS);
    let at = rel(&path);
    let clients = check_clients_file(&path);
    let token = read(&path)
        .lines()
        .find_map(|line| line.split_once(EXAMPLE_TOKEN_LABEL))
        .map(|(_, token)| token.trim().to_string())
        .unwrap_or_else(|| {
            panic!("{at}: no `{EXAMPLE_TOKEN_LABEL} ...` comment line giving the example token")
        });
    assert!(
        token.starts_with("vra_") && token.contains("example"),
        "{at}: the example token `{token}` must say it is one"
    );
    let digest = sha256_hex(token.as_bytes());
    assert!(
        clients.iter().any(|(_, d)| d.eq_ignore_ascii_case(&digest)),
        "{at}: no client accepts the example token (its SHA-256 is {digest})"
    );
    for (id, _) in &clients {
        assert!(
            id.contains("example"),
            "{at}: client `{id}`: the example file's clients must say they are examples"
        );
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
    let host: HashMap<String, String> = [("P".to_string(), "pw".to_string())].into();
    let interpolate = |s: &str| compose_interpolate(s, &host);
    assert_eq!(interpolate("${OPENAI_API_KEY:-}").as_deref(), Ok(""));
    assert_eq!(interpolate("${X:-dflt}").as_deref(), Ok("dflt"));
    assert_eq!(interpolate("plain").as_deref(), Ok("plain"));
    assert_eq!(
        interpolate("redis://:${P:?set P}@redis:6379/0").as_deref(),
        Ok("redis://:pw@redis:6379/0")
    );
    assert_eq!(interpolate("$P $$P ${P:+on}").as_deref(), Ok("pw $P on"));
    assert!(interpolate("${X:?set X}").is_err());
    assert!(is_required_interpolation("${P:?set P}"));
    assert!(!is_required_interpolation("${P:-secret}"));
    assert!(!is_required_interpolation("hunter2"));
    assert_eq!(
        with_stand_ins("redis://:$PW@h:1/0 ${PW} $ $("),
        "redis://:stand-in-for-PW@h:1/0 stand-in-for-PW $ $("
    );
    assert_eq!(url_password("redis://:pw@redis:6379/0"), Some("pw"));
    assert_eq!(url_password("rediss://user:pw@h:6380"), Some("pw"));
    assert_eq!(url_password("redis://redis:6379/0"), None);
    assert_eq!(url_password("redis://:@redis:6379/0"), None);
    assert_eq!(
        compose_host_ip(&Value::from("127.0.0.1:50051:50051")).as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(compose_host_ip(&Value::from("50051:50051")), None);
    assert_eq!(compose_host_ip(&Value::from("50051")), None);
    assert_eq!(
        compose_host_ip(&Value::from("[::1]:80:80")).as_deref(),
        Some("::1")
    );
    let volume = compose_volume(&Value::from("./c.toml:/etc/vra/clients.toml:ro")).unwrap();
    assert_eq!(
        (
            volume.source.as_str(),
            volume.target.as_str(),
            volume.read_only
        ),
        ("./c.toml", "/etc/vra/clients.toml", true)
    );
    assert!(
        !compose_volume(&Value::from("models:/root/.ollama"))
            .unwrap()
            .read_only
    );
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        url_host("redis://:pw@redis.vra.svc:6379/0"),
        "redis.vra.svc"
    );
    assert_eq!(url_host("http://jaeger:4317"), "jaeger");
    assert_eq!(
        url_hosts("redis+cluster://:pw@redis-0.redis.vra.svc:6379,redis-1.redis.vra.svc:6379"),
        ["redis-0.redis.vra.svc", "redis-1.redis.vra.svc"]
    );
    assert_eq!(url_hosts("redis://redis:6379/0"), ["redis"]);
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
