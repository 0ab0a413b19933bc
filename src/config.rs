//! One typed [`Config`], loaded from layered sources and validated before anything starts.
//!
//! Precedence, highest first: process environment > `.env` in the working directory > TOML
//! file (`--config PATH` or `VRA_GATEWAY_CONFIG`) > defaults. Every setting is known by its
//! environment-variable name; the TOML file uses the same names (any case) as top-level keys,
//! plus `[providers.NAME]` tables for extra providers. All values, whatever their source, go
//! through one parser per setting, so an error always names the variable and what it accepts.
//!
//! Loading is a pure function of a [`Sources`] value, which keeps it testable without touching
//! the process environment.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cost::{Price, PriceSource, Pricing};
use crate::domain::Nanos;

/// A configuration error: which setting, and what was wrong. Startup exits with code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    /// The variable (or file) at fault.
    pub var: String,
    pub message: String,
}

impl ConfigError {
    fn new(var: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            var: var.into(),
            message: message.into(),
        }
    }
}

/// A setting the gateway reads: its variable name, default and meaning. The list
/// [`SETTINGS`] drives `--help`, `--print-config` and the deploy-manifest check, so the
/// documentation cannot drift from what the loader reads.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub var: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub secret: bool,
}

macro_rules! settings {
    ($($ident:ident = $var:literal, $default:literal, $help:literal $(, secret = $secret:literal)?;)*) => {
        $(pub const $ident: Setting = Setting {
            var: $var, default: $default, help: $help, secret: settings!(@secret $($secret)?),
        };)*
        /// Every setting the gateway reads, in documentation order.
        pub const SETTINGS: &[Setting] = &[$($ident),*];
    };
    (@secret) => { false };
    (@secret $s:literal) => { $s };
}

settings! {
    HYBRID_MODE = "VRA_HYBRID_MODE", "false", "Hybrid routing on/off (true/false/1/0/yes/no/on/off, any case).";
    PRIMARY_PROVIDER = "PRIMARY_PROVIDER", "openai", "Provider name of the primary tier (when unset: REPORT_PROVIDER, else openai).";
    REPORT_PROVIDER = "REPORT_PROVIDER", "", "Legacy name for PRIMARY_PROVIDER (used when that is unset).";
    PRIMARY_MODEL = "PRIMARY_MODEL", "gpt-4o", "Model sent to the primary.";
    SECONDARY_PROVIDER = "SECONDARY_PROVIDER", "local", "Provider name of the secondary tier.";
    SECONDARY_MODEL = "SECONDARY_MODEL", "llama3:8b", "Model sent to the secondary.";
    MAX_CLOUD_CALLS = "MAX_CLOUD_CALLS", "15", "Cloud requests per report (retries count); 0 = never call a cloud provider.";
    MAX_CLOUD_COST_USD = "MAX_CLOUD_COST_USD", "", "Cloud cost cap per report in USD (e.g. 0.50): each cloud attempt first holds its worst case; empty = no dollar cap. Prices: [pricing.\"MODEL\"] in the TOML file.";
    MAX_OUTPUT_TOKENS = "VRA_MAX_OUTPUT_TOKENS", "4096", "With MAX_CLOUD_COST_USD: max_tokens sent to a cloud provider when the caller sets none (bounds the worst case).";
    OPENAI_API_KEY = "OPENAI_API_KEY", "", "API key of the `openai` provider.", secret = true;
    OPENAI_BASE_URL = "OPENAI_BASE_URL", "https://api.openai.com/v1", "Base URL of the `openai` provider; a comma-separated list for several endpoints.";
    OLLAMA_HOST = "OLLAMA_HOST", "http://localhost:11434", "Base URL of the `local` / `ollama` provider; a comma-separated list for several endpoints.";
    GATEWAY_ADDR = "VRA_GATEWAY_ADDR", "127.0.0.1:50051", "gRPC listen address.";
    GATEWAY_CONFIG = "VRA_GATEWAY_CONFIG", "", "Path of an optional TOML config file (same as --config).";
    RETRY_MAX_ATTEMPTS = "VRA_RETRY_MAX_ATTEMPTS", "3", "HTTP attempts per provider per call, first try included (>= 1).";
    RETRY_BASE_MS = "VRA_RETRY_BASE_MS", "250", "Backoff base in milliseconds.";
    RETRY_MAX_BACKOFF_MS = "VRA_RETRY_MAX_BACKOFF_MS", "4000", "Backoff cap in milliseconds (also caps Retry-After).";
    UPSTREAM_TIMEOUT_MS = "VRA_UPSTREAM_TIMEOUT_MS", "120000", "Timeout of one upstream HTTP attempt, in milliseconds.";
    CONNECT_TIMEOUT_MS = "VRA_CONNECT_TIMEOUT_MS", "2000", "Longest upstream connection set-up (DNS, TCP connect, TLS handshake), in milliseconds.";
    STREAM_IDLE_TIMEOUT_MS = "VRA_STREAM_IDLE_TIMEOUT_MS", "30000", "A streaming upstream silent this long is cut, in milliseconds.";
    REPORT_TTL_SECS = "VRA_REPORT_TTL_SECS", "86400", "A report's ledger entry is forgotten this long after its last use.";
    MAX_PROMPT_BYTES = "VRA_MAX_PROMPT_BYTES", "1048576", "Larger prompts (and system prompts) are rejected.";
    LOG_FORMAT = "VRA_LOG_FORMAT", "text", "Log format: text or json (level via RUST_LOG).";
    CIRCUIT_FAILURES = "VRA_CIRCUIT_FAILURES", "5", "Consecutive failed calls that open a provider's circuit breaker; 0 disables it.";
    CIRCUIT_OPEN_MS = "VRA_CIRCUIT_OPEN_MS", "30000", "How long an open circuit skips its provider before one probe call.";
    METRICS_ADDR = "VRA_METRICS_ADDR", "127.0.0.1:9464", "Prometheus /metrics listen address; empty disables.";
    TRACE_CONTENT = "VRA_TRACE_CONTENT", "false", "Put (truncated) prompts and completions in spans.";
    LEDGER_URL = "VRA_LEDGER_URL", "", "redis://host:port/db (or rediss://) selects the Redis ledger; empty = in-memory.", secret = true;
    LEDGER_PREFIX = "VRA_LEDGER_PREFIX", "vra:", "Key prefix of the Redis ledger.";
    LEDGER_TIMEOUT_MS = "VRA_LEDGER_TIMEOUT_MS", "200", "Redis ledger operation timeout; past it, calls fail safe to the secondary.";
    LEDGER_MAX_REPORTS = "VRA_LEDGER_MAX_REPORTS", "250000", "Reports the in-memory ledger tracks at most; past it a new report's cloud calls fail safe (LEDGER_UNAVAILABLE).";
    MAX_RESPONSE_BYTES = "VRA_MAX_RESPONSE_BYTES", "8388608", "Largest upstream response body (unary answers and error bodies) read, in bytes.";
    MAX_STREAM_LINE_BYTES = "VRA_MAX_STREAM_LINE_BYTES", "1048576", "Longest SSE / NDJSON line of an upstream stream, in bytes.";
    CLIENTS_FILE = "VRA_CLIENTS_FILE", "", "TOML file of [[client]] entries (id, token_sha256, limits): bearer tokens required, budgets per client. Re-read on SIGHUP.";
    ALLOW_UNAUTHENTICATED = "VRA_ALLOW_UNAUTHENTICATED", "false", "Serve a non-loopback address without VRA_CLIENTS_FILE or VRA_TLS_CLIENT_CA_FILE (a mesh authenticates in front).";
    TLS_CERT_FILE = "VRA_TLS_CERT_FILE", "", "PEM certificate chain: serve gRPC over TLS (with VRA_TLS_KEY_FILE). Re-read on SIGHUP.";
    TLS_KEY_FILE = "VRA_TLS_KEY_FILE", "", "PEM private key of VRA_TLS_CERT_FILE.";
    TLS_CLIENT_CA_FILE = "VRA_TLS_CLIENT_CA_FILE", "", "PEM CA bundle: require and verify client certificates (mTLS); the client id is the first DNS SAN, else the CN.";
    UPSTREAM_CA_FILE = "VRA_UPSTREAM_CA_FILE", "", "PEM certificates added to the system roots for upstream HTTPS (corporate proxy, self-signed local server).";
    MAX_IN_FLIGHT = "VRA_MAX_IN_FLIGHT", "4096", "Generate/GenerateStream calls in flight at most; past it a call is rejected at once with RESOURCE_EXHAUSTED (gateway overloaded).";
    MAX_CONCURRENT_STREAMS = "VRA_MAX_CONCURRENT_STREAMS", "256", "HTTP/2 streams (calls) one client connection may have open at once.";
    H2_KEEPALIVE_MS = "VRA_H2_KEEPALIVE_MS", "30000", "HTTP/2 keepalive ping interval to clients; a client silent for 20 s more is disconnected and its calls reclaimed; 0 disables.";
    WORKER_THREADS = "VRA_WORKER_THREADS", "", "Runtime worker threads; empty = one per CPU the process may use. On a machine it shares with its callers, 1 costs less CPU per call (bench/findings.md).";
    STREAM_MAX_MS = "VRA_STREAM_MAX_MS", "600000", "Longest total duration of one GenerateStream call; past it the stream ends with DEADLINE_EXCEEDED.";
    HTTPS_PROXY = "HTTPS_PROXY", "", "http://[user:pass@]host:port of a forward proxy for https:// upstreams (an HTTP CONNECT tunnel); `https_proxy` is read too.", secret = true;
    HTTP_PROXY = "HTTP_PROXY", "", "The same for http:// upstreams (also tunnelled with CONNECT); `http_proxy` is read too.", secret = true;
    ALL_PROXY = "ALL_PROXY", "", "The proxy for both, where HTTPS_PROXY / HTTP_PROXY is unset; `all_proxy` is read too.", secret = true;
    NO_PROXY = "NO_PROXY", "", "Upstream hosts reached directly: comma-separated domains (and their subdomains), IPs, CIDRs, or `*`; `no_proxy` is read too.";
    ALLOW_PLAINTEXT_CLOUD = "VRA_ALLOW_PLAINTEXT_CLOUD", "false", "Allow a cloud-tier provider on http:// to a non-loopback host (its API key would travel in clear).";
}

/// Settings that belong to the OpenTelemetry SDK rather than to the gateway; they are read by
/// the SDK itself and listed here so deployments and docs can name them.
pub const OTEL_SETTINGS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
    "RUST_LOG",
];

/// A secret value (API key, URL with a password). Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself — call only where it is sent to the service it belongs to.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible Chat Completions (`POST {base}/chat/completions`).
    Openai,
    /// Ollama (`POST {host}/api/chat`).
    Ollama,
}

/// Whether a provider's requests cost cloud money (and so count toward the budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CostTier {
    Cloud,
    Local,
}

/// One named upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// Lower-case name, e.g. `openai`, `local`.
    pub name: String,
    pub kind: ProviderKind,
    /// The first of `base_urls` (the one URL of a single-endpoint provider).
    pub base_url: String,
    /// Every endpoint of the provider, distinct, at least one (`base_urls`, or a
    /// comma-separated `OPENAI_BASE_URL` / `OLLAMA_HOST`).
    pub base_urls: Vec<String>,
    pub api_key: Option<Secret>,
    pub tier: CostTier,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub limits: BodyLimits,
    /// How requests are spread over `base_urls` (see [`crate::providers::pool`]).
    pub pool: PoolConfig,
    /// The forward proxies of upstream connections (the same for every provider).
    pub proxy: ProxyConfig,
}

/// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (each also read in lower case, as
/// curl does): the forward proxy an upstream connection goes through, as an HTTP `CONNECT`
/// tunnel. Proxy URLs are normalised to `http://host:port` (with `user:pass@` when given) and
/// may carry credentials, hence secrets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyConfig {
    pub https: Option<Secret>,
    pub http: Option<Secret>,
    pub all: Option<Secret>,
    /// The `NO_PROXY` list, as given.
    pub no: String,
}

impl ProxyConfig {
    fn from_sources(s: &Sources) -> Result<ProxyConfig, ConfigError> {
        let value = |setting: Setting| {
            s.lookup(setting.var)
                .or_else(|| s.lookup(&setting.var.to_ascii_lowercase()))
                .map(|(v, _)| v)
                .filter(|v| !v.trim().is_empty())
        };
        let proxy = |setting: Setting| value(setting).map(|v| parse_proxy(setting, &v)).transpose();
        Ok(ProxyConfig {
            https: proxy(HTTPS_PROXY)?,
            http: proxy(HTTP_PROXY)?,
            all: proxy(ALL_PROXY)?,
            no: value(NO_PROXY).unwrap_or_default(),
        })
    }
}

/// A forward proxy's URL: `http://` (or no scheme, as curl takes it), a host, an optional port
/// (default 80), no path. Errors never echo the value: it may hold a password.
fn parse_proxy(setting: Setting, raw: &str) -> Result<Secret, ConfigError> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let invalid = |why: &str| ConfigError::new(setting.var, why.to_string());
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| {
        invalid(&format!(
            "not a proxy URL ({e}); accepted: http://[user:pass@]host:port"
        ))
    })?;
    if url.scheme() != "http" {
        return Err(invalid(&format!(
            "`{}://` proxies are not supported; accepted: an http:// proxy that tunnels with CONNECT",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the proxy URL has no host"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "a proxy URL is http://[user:pass@]host:port, without a path",
        ));
    }
    Ok(Secret::new(url.as_str().trim_end_matches('/')))
}

/// A provider's endpoint pool: concurrency cap, queue and outlier ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Requests in flight per endpoint at most (`None`: unlimited).
    pub max_in_flight: Option<usize>,
    /// Calls waiting for a free endpoint at most; one more is turned away.
    pub max_queue: usize,
    /// Consecutive failures (connect errors, timeouts, 408, 429, 5xx) that eject an endpoint.
    pub eject_after_failures: u32,
    /// How long a first ejection lasts; it doubles with each failed probe, up to
    /// [`PoolConfig::MAX_EJECTION`].
    pub eject: Duration,
}

impl PoolConfig {
    /// The longest an endpoint stays ejected.
    pub const MAX_EJECTION: Duration = Duration::from_secs(300);
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_in_flight: None,
            max_queue: 256,
            eject_after_failures: 3,
            eject: Duration::from_millis(10_000),
        }
    }
}

/// How much of an upstream's answer is read at most: past a limit the request fails with
/// [`crate::domain::ProviderError::TooLarge`] instead of growing memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// A unary response body or an error body (`VRA_MAX_RESPONSE_BYTES`).
    pub response_bytes: usize,
    /// One SSE / NDJSON line of a stream (`VRA_MAX_STREAM_LINE_BYTES`).
    pub line_bytes: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            response_bytes: 8 << 20,
            line_bytes: 1 << 20,
        }
    }
}

impl ProviderConfig {
    pub fn is_cloud(&self) -> bool {
        self.tier == CostTier::Cloud
    }
}

/// A tier's provider and the model sent to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub provider: ProviderConfig,
    pub model: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitConfig {
    /// 0 disables the breaker.
    pub failure_threshold: u32,
    pub open_for: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LedgerConfig {
    pub url: Option<Secret>,
    pub prefix: String,
    pub timeout: Duration,
    /// Reports the in-memory ledger tracks at most.
    pub max_reports: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What one process accepts from its clients at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// `VRA_MAX_IN_FLIGHT`: generation calls in flight; more are shed.
    pub max_in_flight: usize,
    /// `VRA_MAX_CONCURRENT_STREAMS`: HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// `VRA_H2_KEEPALIVE_MS` (`None`: off).
    pub h2_keepalive: Option<Duration>,
    /// `VRA_STREAM_MAX_MS`: longest total duration of one stream.
    pub stream_max: Duration,
}

/// Who may call, and how the gRPC listener is secured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecurityConfig {
    /// `VRA_CLIENTS_FILE`: bearer-token clients and their limits.
    pub clients_file: Option<PathBuf>,
    /// `VRA_TLS_CERT_FILE` + `VRA_TLS_KEY_FILE` (+ `VRA_TLS_CLIENT_CA_FILE` for mTLS).
    pub tls: Option<TlsFiles>,
    /// `VRA_ALLOW_UNAUTHENTICATED`: the explicit opt-out of secure-by-default.
    pub allow_unauthenticated: bool,
    /// `VRA_UPSTREAM_CA_FILE`: extra roots for upstream HTTPS.
    pub upstream_ca_file: Option<PathBuf>,
    /// `VRA_ALLOW_PLAINTEXT_CLOUD`.
    pub allow_plaintext_cloud: bool,
}

impl SecurityConfig {
    /// Whether callers must authenticate (a token, or a client certificate).
    pub fn authenticates(&self) -> bool {
        self.clients_file.is_some() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some())
    }
}

/// The PEM files of the gRPC listener's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are required and verified against this CA bundle (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// The validated runtime configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub hybrid_mode: bool,
    pub primary: Endpoint,
    pub secondary: Endpoint,
    pub max_cloud_calls: u32,
    pub listen_addr: SocketAddr,
    pub retry: RetryConfig,
    pub stream_idle_timeout: Duration,
    pub report_ttl: Duration,
    pub max_prompt_bytes: usize,
    pub log_format: LogFormat,
    pub circuit: CircuitConfig,
    pub metrics_addr: Option<SocketAddr>,
    pub trace_content: bool,
    pub ledger: LedgerConfig,
    /// How long graceful shutdown waits for in-flight calls.
    pub shutdown_grace: Duration,
    pub security: SecurityConfig,
    pub limits: ServerLimits,
    /// Model prices: `[pricing."MODEL"]` over the built-in list prices.
    pub pricing: Pricing,
    /// `MAX_CLOUD_COST_USD`.
    pub max_cloud_cost: Option<Nanos>,
    /// `VRA_MAX_OUTPUT_TOKENS`.
    pub max_output_tokens: u32,
    /// `VRA_WORKER_THREADS` (`None`: one per CPU the process may use, tokio's default).
    pub worker_threads: Option<NonZeroUsize>,
}

/// Where a value came from, for `--print-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Env,
    DotEnv,
    File,
    Default,
}

/// The raw, layered inputs of configuration loading.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub env: HashMap<String, String>,
    pub dotenv: HashMap<String, String>,
    /// Top-level scalar keys of the TOML file, upper-cased.
    pub file: HashMap<String, String>,
    pub file_providers: BTreeMap<String, FileProvider>,
    /// `[pricing."MODEL"]` tables of the TOML file.
    pub file_pricing: BTreeMap<String, Price>,
    pub file_path: Option<PathBuf>,
}

/// A `[providers.NAME]` table of the TOML file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileProvider {
    pub kind: ProviderKind,
    /// One endpoint; or `base_urls` for several (exactly one of the two).
    pub base_url: Option<String>,
    pub base_urls: Option<Vec<String>>,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: Option<String>,
    pub tier: CostTier,
    pub timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    /// Per endpoint (default: unlimited).
    pub max_in_flight: Option<usize>,
    /// Default 256.
    pub max_queue: Option<usize>,
    /// Default 3.
    pub eject_after_failures: Option<u32>,
    /// Default 10000.
    pub eject_ms: Option<u64>,
}

impl Sources {
    /// Reads the process environment, `.env` in the working directory and the TOML file named
    /// by `config_path`, `VRA_GATEWAY_CONFIG` (env or `.env`), in that order of preference.
    pub fn from_process(config_path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let dotenv = read_dotenv(Path::new(".env"))?;
        let mut sources = Sources {
            env,
            dotenv,
            ..Default::default()
        };
        let path = config_path
            .map(Path::to_path_buf)
            .or_else(|| {
                sources
                    .lookup(GATEWAY_CONFIG.var)
                    .map(|(v, _)| PathBuf::from(v))
            })
            .filter(|p| !p.as_os_str().is_empty());
        if let Some(path) = path {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::new(
                    GATEWAY_CONFIG.var,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            sources.load_toml(&text, &path)?;
        }
        Ok(sources)
    }

    /// Parses a TOML config file into the file layer.
    pub fn load_toml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let file_err = |msg: String| ConfigError::new(path.display().to_string(), msg);
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| file_err(e.to_string()))?;
        for (key, value) in table {
            if key == "providers" {
                let providers: BTreeMap<String, FileProvider> = value
                    .try_into()
                    .map_err(|e: toml::de::Error| file_err(format!("[providers]: {e}")))?;
                for (name, p) in providers {
                    self.file_providers.insert(name.to_ascii_lowercase(), p);
                }
                continue;
            }
            if key == "pricing" {
                let prices: BTreeMap<String, Price> = value
                    .try_into()
                    .map_err(|e: toml::de::Error| file_err(format!("[pricing]: {e}")))?;
                for (model, price) in prices {
                    price
                        .validate()
                        .map_err(|e| file_err(format!("[pricing.\"{model}\"]: {e}")))?;
                    self.file_pricing.insert(model, price);
                }
                continue;
            }
            let var = key.to_ascii_uppercase();
            if !SETTINGS.iter().any(|s| s.var == var) || var == GATEWAY_CONFIG.var {
                return Err(file_err(format!("unknown setting `{key}`")));
            }
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(file_err(format!(
                        "`{key}` must be a scalar, got {}",
                        other.type_str()
                    )));
                }
            };
            self.file.insert(var, value);
        }
        self.file_path = Some(path.to_path_buf());
        Ok(())
    }

    /// The value of `var` from the highest-precedence source that has it.
    pub fn lookup(&self, var: &str) -> Option<(String, Origin)> {
        if let Some(v) = self.env.get(var) {
            return Some((v.clone(), Origin::Env));
        }
        if let Some(v) = self.dotenv.get(var) {
            return Some((v.clone(), Origin::DotEnv));
        }
        self.file.get(var).map(|v| (v.clone(), Origin::File))
    }

    fn get(&self, setting: Setting) -> Option<String> {
        self.lookup(setting.var).map(|(v, _)| v)
    }

    /// A setting's value, or its default; an empty value counts as unset.
    fn get_or_default(&self, setting: Setting) -> String {
        self.get(setting)
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| setting.default.to_string())
    }
}

fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    match dotenvy::from_path_iter(path) {
        Ok(iter) => iter
            .map(|item| item.map_err(|e| ConfigError::new(".env", e.to_string())))
            .collect(),
        Err(e) if e.not_found() => Ok(HashMap::new()),
        Err(e) => Err(ConfigError::new(".env", e.to_string())),
    }
}

/// Parses a boolean the way operators write them.
pub fn parse_bool(var: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            var,
            format!(
                "`{value}` is not a boolean; accepted: true/false/1/0/yes/no/on/off (any case)"
            ),
        )),
    }
}

fn parse_uint<T: std::str::FromStr>(
    setting: Setting,
    sources: &Sources,
    min: u64,
) -> Result<T, ConfigError> {
    let raw = sources.get_or_default(setting);
    let err = || {
        ConfigError::new(
            setting.var,
            format!("`{raw}` is not an integer >= {min}; accepted: a whole number >= {min}"),
        )
    };
    let n: u64 = raw.trim().parse().map_err(|_| err())?;
    if n < min {
        return Err(err());
    }
    raw.trim().parse::<T>().map_err(|_| err())
}

/// The most worker threads `VRA_WORKER_THREADS` accepts: far above any useful count, low
/// enough that a typo cannot make the process start thousands of threads.
const MAX_WORKER_THREADS: usize = 1024;

/// `VRA_WORKER_THREADS`: empty = tokio's default, else 1 ..= [`MAX_WORKER_THREADS`].
fn parse_worker_threads(sources: &Sources) -> Result<Option<NonZeroUsize>, ConfigError> {
    if sources.get_or_default(WORKER_THREADS).trim().is_empty() {
        return Ok(None);
    }
    let n: usize = parse_uint(WORKER_THREADS, sources, 1)?;
    if n > MAX_WORKER_THREADS {
        return Err(ConfigError::new(
            WORKER_THREADS.var,
            format!(
                "`{n}` is more than {MAX_WORKER_THREADS} threads; accepted: 1 to {MAX_WORKER_THREADS}, or empty for one per CPU"
            ),
        ));
    }
    Ok(NonZeroUsize::new(n))
}

/// The largest dollar amount a setting takes: its nano-dollars stay below 2^53, where the Redis
/// ledger's Lua arithmetic is exact.
const MAX_USD: f64 = 1_000_000.0;

/// An optional amount of US dollars: empty = none; else a finite, non-negative decimal.
fn parse_usd(setting: Setting, sources: &Sources) -> Result<Option<Nanos>, ConfigError> {
    let raw = sources.get_or_default(setting);
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    match raw.parse::<f64>() {
        Ok(usd) if usd.is_finite() && (0.0..=MAX_USD).contains(&usd) => {
            Ok(Some(Nanos::from_usd(usd)))
        }
        _ => Err(ConfigError::new(
            setting.var,
            format!(
                "`{raw}` is not an amount of USD; accepted: a decimal from 0 to {MAX_USD}, e.g. 0.50, or empty for no cap"
            ),
        )),
    }
}

fn parse_millis(setting: Setting, sources: &Sources, min: u64) -> Result<Duration, ConfigError> {
    parse_uint::<u64>(setting, sources, min).map(Duration::from_millis)
}

fn parse_addr(setting: Setting, value: &str) -> Result<SocketAddr, ConfigError> {
    let value = value.trim();
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    // `localhost:50051` and other host names resolve once, at startup.
    use std::net::ToSocketAddrs;
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            ConfigError::new(
                setting.var,
                format!(
                    "`{value}` is not a socket address; accepted: HOST:PORT, e.g. 127.0.0.1:50051, [::]:50051 or localhost:50051"
                ),
            )
        })
}

fn parse_url(var: &str, value: &str) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(value.trim()).map_err(|e| {
        ConfigError::new(
            var,
            format!("`{value}` is not a URL ({e}); accepted: http(s)://host[:port][/path]"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(
            var,
            format!(
                "scheme `{}` not supported; accepted: http, https",
                url.scheme()
            ),
        ));
    }
    Ok(value.trim().trim_end_matches('/').to_string())
}

/// A list of distinct endpoint URLs (`var` names the setting in errors); `scheme` is applied
/// to each item first (`OLLAMA_HOST` accepts `host:port`).
fn parse_urls<'a>(
    var: &str,
    items: impl IntoIterator<Item = &'a str>,
    scheme: fn(&str) -> String,
) -> Result<Vec<String>, ConfigError> {
    let mut urls: Vec<String> = Vec::new();
    for item in items {
        if item.trim().is_empty() {
            return Err(ConfigError::new(var, "empty URL in the list"));
        }
        let url = parse_url(var, &scheme(item))?;
        if urls.contains(&url) {
            return Err(ConfigError::new(var, format!("duplicate URL `{url}`")));
        }
        urls.push(url);
    }
    if urls.is_empty() {
        return Err(ConfigError::new(var, "at least one URL is needed"));
    }
    Ok(urls)
}

impl Config {
    /// Loads and validates the configuration from the process's sources.
    pub fn load(config_path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_sources(&Sources::from_process(config_path)?)
    }

    /// Builds and validates a configuration from explicit sources.
    pub fn from_sources(s: &Sources) -> Result<Config, ConfigError> {
        let timeout = parse_millis(UPSTREAM_TIMEOUT_MS, s, 1)?;
        let connect_timeout = parse_millis(CONNECT_TIMEOUT_MS, s, 1)?;
        let limits = BodyLimits {
            response_bytes: parse_uint(MAX_RESPONSE_BYTES, s, 1024)?,
            line_bytes: parse_uint(MAX_STREAM_LINE_BYTES, s, 1024)?,
        };
        let proxy = ProxyConfig::from_sources(s)?;
        let providers = provider_table(s, timeout, connect_timeout, limits, &proxy)?;

        let primary_name = s
            .get(PRIMARY_PROVIDER)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (v, PRIMARY_PROVIDER.var))
            .or_else(|| {
                s.get(REPORT_PROVIDER)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (v, REPORT_PROVIDER.var))
            })
            .unwrap_or_else(|| ("openai".to_string(), PRIMARY_PROVIDER.var));
        let primary = endpoint(
            &providers,
            primary_name.1,
            &primary_name.0,
            s.get_or_default(PRIMARY_MODEL),
        )?;
        let secondary_name = s.get_or_default(SECONDARY_PROVIDER);
        let secondary = endpoint(
            &providers,
            SECONDARY_PROVIDER.var,
            &secondary_name,
            s.get_or_default(SECONDARY_MODEL),
        )?;

        let retry = RetryConfig {
            max_attempts: parse_uint(RETRY_MAX_ATTEMPTS, s, 1)?,
            base: parse_millis(RETRY_BASE_MS, s, 0)?,
            max_backoff: parse_millis(RETRY_MAX_BACKOFF_MS, s, 0)?,
        };
        if retry.max_backoff < retry.base {
            return Err(ConfigError::new(
                RETRY_MAX_BACKOFF_MS.var,
                format!(
                    "must be >= {} ({}ms)",
                    RETRY_BASE_MS.var,
                    retry.base.as_millis()
                ),
            ));
        }

        let log_format = match s
            .get_or_default(LOG_FORMAT)
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new(
                    LOG_FORMAT.var,
                    format!("`{other}` is not a log format; accepted: text, json"),
                ));
            }
        };

        let metrics_addr = match s.get(METRICS_ADDR) {
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(parse_addr(METRICS_ADDR, &v)?),
            None => Some(parse_addr(METRICS_ADDR, METRICS_ADDR.default)?),
        };

        let ledger_url = s.get(LEDGER_URL).filter(|v| !v.trim().is_empty());
        if let Some(url) = &ledger_url {
            let scheme = url.split("://").next().unwrap_or_default();
            if !matches!(scheme, "redis" | "rediss") || !url.contains("://") {
                // Never echo the URL: it may carry a password.
                return Err(ConfigError::new(
                    LEDGER_URL.var,
                    "not a Redis URL; accepted: redis://[:password@]host:port[/db] or rediss://...",
                ));
            }
        }

        let listen_addr = parse_addr(GATEWAY_ADDR, &s.get_or_default(GATEWAY_ADDR))?;
        let security = security(s, listen_addr, [&primary, &secondary])?;
        let pricing = Pricing {
            configured: s.file_pricing.clone(),
        };
        let max_cloud_cost = parse_usd(MAX_CLOUD_COST_USD, s)?;
        if max_cloud_cost.is_some() {
            // A hold must outlive its attempt in the ledger: a report entry that expired under
            // a hold in flight would forget it (the memory ledger keeps such entries anyway).
            let ttl = Duration::from_secs(parse_uint(REPORT_TTL_SECS, s, 1)?);
            let longest = [
                parse_millis(STREAM_MAX_MS, s, 1)?,
                primary.provider.timeout,
                secondary.provider.timeout,
            ]
            .into_iter()
            .max()
            .unwrap_or_default();
            if ttl <= longest {
                return Err(ConfigError::new(
                    REPORT_TTL_SECS.var,
                    format!(
                        "with {} it must outlast any one upstream attempt: more than {} s (VRA_STREAM_MAX_MS and the providers' timeouts)",
                        MAX_CLOUD_COST_USD.var,
                        longest.as_secs()
                    ),
                ));
            }
            // A cap needs a worst case for every cloud call: every cloud model needs a price.
            for endpoint in [&primary, &secondary] {
                let cloud = endpoint.provider.is_cloud();
                if cloud && pricing.lookup(&endpoint.model, cloud) == PriceSource::Unpriced {
                    return Err(ConfigError::new(
                        MAX_CLOUD_COST_USD.var,
                        format!(
                            "needs a price for the cloud model `{}`: add [pricing.\"{}\"] input_per_mtok / output_per_mtok to the TOML file",
                            endpoint.model, endpoint.model
                        ),
                    ));
                }
            }
        }

        Ok(Config {
            hybrid_mode: parse_bool(HYBRID_MODE.var, &s.get_or_default(HYBRID_MODE))?,
            primary,
            secondary,
            max_cloud_calls: parse_uint(MAX_CLOUD_CALLS, s, 0)?,
            listen_addr,
            retry,
            stream_idle_timeout: parse_millis(STREAM_IDLE_TIMEOUT_MS, s, 1)?,
            report_ttl: Duration::from_secs(parse_uint(REPORT_TTL_SECS, s, 1)?),
            max_prompt_bytes: parse_uint(MAX_PROMPT_BYTES, s, 1)?,
            log_format,
            circuit: CircuitConfig {
                failure_threshold: parse_uint(CIRCUIT_FAILURES, s, 0)?,
                open_for: parse_millis(CIRCUIT_OPEN_MS, s, 1)?,
            },
            metrics_addr,
            trace_content: parse_bool(TRACE_CONTENT.var, &s.get_or_default(TRACE_CONTENT))?,
            ledger: LedgerConfig {
                url: ledger_url.map(Secret::new),
                prefix: s.get_or_default(LEDGER_PREFIX),
                timeout: parse_millis(LEDGER_TIMEOUT_MS, s, 1)?,
                max_reports: parse_uint(LEDGER_MAX_REPORTS, s, 1)?,
            },
            shutdown_grace: Duration::from_secs(30),
            security,
            limits: ServerLimits {
                max_in_flight: parse_uint(MAX_IN_FLIGHT, s, 1)?,
                max_concurrent_streams: parse_uint(MAX_CONCURRENT_STREAMS, s, 1)?,
                h2_keepalive: Some(parse_millis(H2_KEEPALIVE_MS, s, 0)?).filter(|d| !d.is_zero()),
                stream_max: parse_millis(STREAM_MAX_MS, s, 1)?,
            },
            pricing,
            max_cloud_cost,
            max_output_tokens: parse_uint(MAX_OUTPUT_TOKENS, s, 1)?,
            worker_threads: parse_worker_threads(s)?,
        })
    }

    /// What an operator should hear at startup about an otherwise valid configuration: a
    /// cloud model without a price (its calls' cost will be reported as unknown).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (tier, endpoint) in [("primary", &self.primary), ("secondary", &self.secondary)] {
            let cloud = endpoint.provider.is_cloud();
            if cloud && self.pricing.lookup(&endpoint.model, cloud) == PriceSource::Unpriced {
                warnings.push(format!(
                    "the {tier} model `{}` (cloud tier) has no price: its calls' cost is reported as unknown; add [pricing.\"{}\"] input_per_mtok / output_per_mtok to the TOML file",
                    endpoint.model, endpoint.model
                ));
            }
        }
        warnings
    }

    /// The effective configuration as `VAR=value` lines, secrets redacted, with each value's
    /// origin — what `serve --print-config` prints.
    pub fn render(&self, sources: &Sources) -> String {
        let mut out = String::new();
        for setting in SETTINGS {
            let (value, origin) = match sources.lookup(setting.var) {
                Some((v, o)) => (v, o),
                // The one setting whose default is another setting's value: print what it
                // resolved to.
                None if setting.var == PRIMARY_PROVIDER.var => (
                    self.primary.provider.name.clone(),
                    sources
                        .lookup(REPORT_PROVIDER.var)
                        .map_or(Origin::Default, |(_, o)| o),
                ),
                None => (setting.default.to_string(), Origin::Default),
            };
            let shown = if setting.secret && !value.is_empty() && origin != Origin::Default {
                "<redacted>".to_string()
            } else {
                value
            };
            let origin = match origin {
                Origin::Env => "env",
                Origin::DotEnv => ".env",
                Origin::File => "file",
                Origin::Default => "default",
            };
            out.push_str(&format!("{}={shown}    # {origin}\n", setting.var));
        }
        out.push_str("# effective providers\n");
        for (tier, ep) in [("primary", &self.primary), ("secondary", &self.secondary)] {
            out.push_str(&format!(
                "# {tier}: provider={} kind={:?} tier={:?} base_urls={} model={} api_key={}\n",
                ep.provider.name,
                ep.provider.kind,
                ep.provider.tier,
                ep.provider.base_urls.join(","),
                ep.model,
                if ep.provider.api_key.is_some() {
                    "<redacted>"
                } else {
                    "<none>"
                },
            ));
        }
        out
    }
}

/// The security settings, and the two rules that make the gateway safe by default: a
/// non-loopback listener needs authentication (or the explicit opt-out), and a cloud API key
/// never travels over plain HTTP to another host (unless explicitly allowed).
fn security(
    s: &Sources,
    listen_addr: SocketAddr,
    tiers: [&Endpoint; 2],
) -> Result<SecurityConfig, ConfigError> {
    let path = |setting: Setting| {
        s.get(setting)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let tls = match (path(TLS_CERT_FILE), path(TLS_KEY_FILE)) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca: path(TLS_CLIENT_CA_FILE),
        }),
        (None, None) => {
            if path(TLS_CLIENT_CA_FILE).is_some() {
                return Err(ConfigError::new(
                    TLS_CLIENT_CA_FILE.var,
                    format!(
                        "client certificates need TLS: set {} and {} too",
                        TLS_CERT_FILE.var, TLS_KEY_FILE.var
                    ),
                ));
            }
            None
        }
        (cert, _) => {
            let (set, missing) = if cert.is_some() {
                (TLS_CERT_FILE, TLS_KEY_FILE)
            } else {
                (TLS_KEY_FILE, TLS_CERT_FILE)
            };
            return Err(ConfigError::new(
                set.var,
                format!(
                    "needs {} too: set both (PEM certificate chain and its private key) or neither",
                    missing.var
                ),
            ));
        }
    };
    let security = SecurityConfig {
        clients_file: path(CLIENTS_FILE),
        tls,
        allow_unauthenticated: parse_bool(
            ALLOW_UNAUTHENTICATED.var,
            &s.get_or_default(ALLOW_UNAUTHENTICATED),
        )?,
        upstream_ca_file: path(UPSTREAM_CA_FILE),
        allow_plaintext_cloud: parse_bool(
            ALLOW_PLAINTEXT_CLOUD.var,
            &s.get_or_default(ALLOW_PLAINTEXT_CLOUD),
        )?,
    };
    if !listen_addr.ip().is_loopback()
        && !security.authenticates()
        && !security.allow_unauthenticated
    {
        return Err(ConfigError::new(
            GATEWAY_ADDR.var,
            format!(
                "{listen_addr} is reachable from the network but no caller would need credentials: set {} (bearer tokens) or {} (client certificates), or {}=true if something in front authenticates",
                CLIENTS_FILE.var, TLS_CLIENT_CA_FILE.var, ALLOW_UNAUTHENTICATED.var
            ),
        ));
    }
    if !security.allow_plaintext_cloud {
        for ep in tiers {
            let p = &ep.provider;
            if p.is_cloud() && p.base_urls.iter().any(|u| plaintext_to_another_host(u)) {
                return Err(ConfigError::new(
                    base_url_var(&p.name),
                    format!(
                        "cloud-tier provider `{}` would send its API key in clear over http:// to a non-loopback host; use https:// or set {}=true",
                        p.name, ALLOW_PLAINTEXT_CLOUD.var
                    ),
                ));
            }
        }
    }
    Ok(security)
}

/// Whether `url` is `http://` to a host other than this machine.
fn plaintext_to_another_host(url: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    if url.scheme() != "http" {
        return false;
    }
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => !host.eq_ignore_ascii_case("localhost"),
    }
}

/// The setting that holds a provider's base URL.
fn base_url_var(provider: &str) -> String {
    match provider {
        "openai" => OPENAI_BASE_URL.var.to_string(),
        "local" | "ollama" => OLLAMA_HOST.var.to_string(),
        other => format!("providers.{other}.base_urls"),
    }
}

/// Built-in providers plus the TOML file's `[providers.NAME]` tables.
fn provider_table(
    s: &Sources,
    timeout: Duration,
    connect_timeout: Duration,
    limits: BodyLimits,
    proxy: &ProxyConfig,
) -> Result<BTreeMap<String, ProviderConfig>, ConfigError> {
    let mut table = BTreeMap::new();
    let openai_urls = parse_urls(
        OPENAI_BASE_URL.var,
        s.get_or_default(OPENAI_BASE_URL).split(','),
        str::to_string,
    )?;
    let openai = ProviderConfig {
        name: "openai".into(),
        kind: ProviderKind::Openai,
        base_url: openai_urls[0].clone(),
        base_urls: openai_urls,
        api_key: s
            .get(OPENAI_API_KEY)
            .filter(|k| !k.trim().is_empty())
            .map(|k| Secret::new(k.trim())),
        tier: CostTier::Cloud,
        timeout,
        connect_timeout,
        limits,
        pool: PoolConfig::default(),
        proxy: proxy.clone(),
    };
    let ollama_urls = parse_urls(
        OLLAMA_HOST.var,
        s.get_or_default(OLLAMA_HOST).split(','),
        with_scheme,
    )?;
    for name in ["local", "ollama"] {
        table.insert(
            name.to_string(),
            ProviderConfig {
                name: name.into(),
                kind: ProviderKind::Ollama,
                base_url: ollama_urls[0].clone(),
                base_urls: ollama_urls.clone(),
                api_key: None,
                tier: CostTier::Local,
                timeout,
                connect_timeout,
                limits,
                pool: PoolConfig::default(),
                proxy: proxy.clone(),
            },
        );
    }
    table.insert("openai".into(), openai);
    for (name, p) in &s.file_providers {
        let var = format!("providers.{name}");
        let api_key = match &p.api_key_env {
            Some(env) => s
                .lookup(env)
                .map(|(k, _)| k)
                .filter(|k| !k.trim().is_empty())
                .map(Secret::new),
            None => None,
        };
        let base_urls = match (&p.base_url, &p.base_urls) {
            (Some(url), None) => {
                parse_urls(&format!("{var}.base_url"), [url.as_str()], str::to_string)?
            }
            (None, Some(urls)) => parse_urls(
                &format!("{var}.base_urls"),
                urls.iter().map(String::as_str),
                str::to_string,
            )?,
            _ => {
                return Err(ConfigError::new(
                    format!("{var}.base_urls"),
                    "set exactly one of `base_url` and `base_urls`",
                ));
            }
        };
        let defaults = PoolConfig::default();
        // A zero would make every attempt time out, or an endpoint unusable: refused, like
        // the environment's settings.
        for (key, zero, hint) in [
            (
                "max_in_flight",
                p.max_in_flight == Some(0),
                " (leave it out for unlimited)",
            ),
            (
                "eject_after_failures",
                p.eject_after_failures == Some(0),
                "",
            ),
            ("eject_ms", p.eject_ms == Some(0), ""),
            (
                "timeout_ms",
                p.timeout_ms == Some(0),
                " (leave it out for VRA_UPSTREAM_TIMEOUT_MS)",
            ),
            (
                "connect_timeout_ms",
                p.connect_timeout_ms == Some(0),
                " (leave it out for VRA_CONNECT_TIMEOUT_MS)",
            ),
        ] {
            if zero {
                return Err(ConfigError::new(
                    format!("{var}.{key}"),
                    format!("must be at least 1{hint}"),
                ));
            }
        }
        let pool = PoolConfig {
            max_in_flight: p.max_in_flight,
            max_queue: p.max_queue.unwrap_or(defaults.max_queue),
            eject_after_failures: p
                .eject_after_failures
                .unwrap_or(defaults.eject_after_failures),
            eject: p
                .eject_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.eject)
                .min(PoolConfig::MAX_EJECTION),
        };
        table.insert(
            name.clone(),
            ProviderConfig {
                name: name.clone(),
                kind: p.kind,
                base_url: base_urls[0].clone(),
                base_urls,
                api_key,
                tier: p.tier,
                timeout: p.timeout_ms.map(Duration::from_millis).unwrap_or(timeout),
                connect_timeout: p
                    .connect_timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(connect_timeout),
                limits,
                pool,
                proxy: proxy.clone(),
            },
        );
    }
    Ok(table)
}

/// `OLLAMA_HOST` is often given as `host:port` (the Ollama CLI accepts that); add `http://`.
fn with_scheme(host: &str) -> String {
    let host = host.trim();
    if host.contains("://") {
        host.to_string()
    } else {
        format!("http://{host}")
    }
}

fn endpoint(
    providers: &BTreeMap<String, ProviderConfig>,
    var: &str,
    name: &str,
    model: String,
) -> Result<Endpoint, ConfigError> {
    let key = name.trim().to_ascii_lowercase();
    let provider = providers.get(&key).cloned().ok_or_else(|| {
        let known: Vec<&str> = providers.keys().map(String::as_str).collect();
        ConfigError::new(
            var,
            format!("unknown provider `{name}`; accepted: {}", known.join(", ")),
        )
    })?;
    if model.trim().is_empty() {
        return Err(ConfigError::new(var, "model must not be empty"));
    }
    Ok(Endpoint {
        provider,
        model: model.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            env: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let c = Config::from_sources(&Sources::default()).expect("defaults are valid");
        assert!(!c.hybrid_mode);
        assert_eq!(c.primary.provider.name, "openai");
        assert_eq!(c.primary.model, "gpt-4o");
        assert!(c.primary.provider.is_cloud());
        assert_eq!(c.primary.provider.base_url, "https://api.openai.com/v1");
        assert_eq!(c.secondary.provider.name, "local");
        assert_eq!(c.secondary.model, "llama3:8b");
        assert!(!c.secondary.provider.is_cloud());
        assert_eq!(c.secondary.provider.base_url, "http://localhost:11434");
        assert_eq!(c.max_cloud_calls, 15);
        assert_eq!(c.listen_addr, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(c.retry.base, Duration::from_millis(250));
        assert_eq!(c.retry.max_backoff, Duration::from_millis(4000));
        assert_eq!(c.primary.provider.timeout, Duration::from_millis(120_000));
        assert_eq!(
            c.primary.provider.connect_timeout,
            Duration::from_millis(2000)
        );
        assert_eq!(c.report_ttl, Duration::from_secs(86_400));
        assert_eq!(c.max_prompt_bytes, 1_048_576);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.stream_idle_timeout, Duration::from_millis(30_000));
        assert!(c.ledger.url.is_none());
        assert_eq!(c.ledger.prefix, "vra:");
        assert_eq!(
            c.limits,
            ServerLimits {
                max_in_flight: 4096,
                max_concurrent_streams: 256,
                h2_keepalive: Some(Duration::from_secs(30)),
                stream_max: Duration::from_secs(600),
            }
        );
    }

    #[test]
    fn the_ledger_cap_default_is_the_memory_ledgers() {
        assert_eq!(
            LEDGER_MAX_REPORTS.default,
            crate::budget::memory::DEFAULT_MAX_REPORTS.to_string()
        );
    }

    #[test]
    fn booleans_accept_every_documented_spelling() {
        for v in ["true", "TRUE", "1", "yes", "On"] {
            assert!(parse_bool("X", v).unwrap(), "{v}");
        }
        for v in ["false", "0", "NO", "off"] {
            assert!(!parse_bool("X", v).unwrap(), "{v}");
        }
        let err = parse_bool("VRA_HYBRID_MODE", "maybe").unwrap_err();
        assert_eq!(err.var, "VRA_HYBRID_MODE");
        assert!(err.message.contains("true/false"));
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let cases = [
            ("VRA_HYBRID_MODE", "sometimes"),
            ("MAX_CLOUD_CALLS", "-1"),
            ("MAX_CLOUD_CALLS", "many"),
            ("VRA_RETRY_MAX_ATTEMPTS", "0"),
            ("VRA_GATEWAY_ADDR", "localhost"),
            ("VRA_LOG_FORMAT", "xml"),
            ("PRIMARY_PROVIDER", "bard"),
            ("SECONDARY_PROVIDER", "nope"),
            ("OPENAI_BASE_URL", "ftp://x"),
            ("VRA_UPSTREAM_TIMEOUT_MS", "soon"),
            ("VRA_METRICS_ADDR", "nowhere"),
            ("VRA_LEDGER_URL", "http://user:hunter2@redis"),
        ];
        for (var, value) in cases {
            let err = Config::from_sources(&sources(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{var}={value}: {err}");
            assert!(!err.to_string().contains("hunter2"), "secret leaked: {err}");
        }
    }

    /// Which variable an error about `var`'s value may name: its own, or the one whose rule
    /// it broke (a model belongs to its provider setting, a backoff base above the cap is
    /// reported on the cap).
    fn may_blame(var: &str, blamed: &str) -> bool {
        blamed == var
            || matches!(
                (var, blamed),
                ("PRIMARY_MODEL", "PRIMARY_PROVIDER")
                    | ("SECONDARY_MODEL", "SECONDARY_PROVIDER")
                    | ("VRA_RETRY_BASE_MS", "VRA_RETRY_MAX_BACKOFF_MS")
            )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Any string in any setting: a valid configuration or an error naming that setting —
        /// never a panic. (The two listen addresses are left out: they accept host names, and
        /// resolving random ones would make the test depend on DNS; they have example tests.)
        #[test]
        fn any_value_of_any_setting_is_accepted_or_named(
            index in 0..SETTINGS.len(),
            value in "(?s).{0,24}",
        ) {
            let setting = SETTINGS[index];
            proptest::prop_assume!(!matches!(setting.var, "VRA_GATEWAY_ADDR" | "VRA_METRICS_ADDR"));
            if let Err(err) = Config::from_sources(&sources(&[(setting.var, value.as_str())])) {
                proptest::prop_assert!(may_blame(setting.var, &err.var), "{}", err);
            }
        }
    }

    #[test]
    fn precedence_is_env_then_dotenv_then_file() {
        let mut s = Sources::default();
        s.load_toml(
            "max_cloud_calls = 3\nvra_hybrid_mode = true\nPRIMARY_MODEL = \"from-file\"",
            Path::new("x.toml"),
        )
        .unwrap();
        s.dotenv.insert("MAX_CLOUD_CALLS".into(), "4".into());
        s.dotenv
            .insert("PRIMARY_MODEL".into(), "from-dotenv".into());
        s.env.insert("MAX_CLOUD_CALLS".into(), "5".into());
        let c = Config::from_sources(&s).unwrap();
        assert_eq!(c.max_cloud_calls, 5);
        assert_eq!(c.primary.model, "from-dotenv");
        assert!(c.hybrid_mode);
    }

    #[test]
    fn report_provider_is_the_fallback_for_primary_provider() {
        let c = Config::from_sources(&sources(&[("REPORT_PROVIDER", "LOCAL")])).unwrap();
        assert_eq!(c.primary.provider.name, "local");
        let c = Config::from_sources(&sources(&[
            ("REPORT_PROVIDER", "local"),
            ("PRIMARY_PROVIDER", "OpenAI"),
        ]))
        .unwrap();
        assert_eq!(c.primary.provider.name, "openai");
    }

    #[test]
    fn toml_defines_extra_providers() {
        let mut s = sources(&[("VLLM_KEY", "sk-vllm"), ("SECONDARY_PROVIDER", "vllm")]);
        s.load_toml(
            "[providers.vLLM]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1/\"\napi_key_env = \"VLLM_KEY\"\ntier = \"local\"\ntimeout_ms = 5000\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let c = Config::from_sources(&s).unwrap();
        assert_eq!(c.secondary.provider.kind, ProviderKind::Openai);
        assert_eq!(c.secondary.provider.base_url, "http://127.0.0.1:8000/v1");
        assert_eq!(
            c.secondary.provider.api_key.as_ref().map(Secret::expose),
            Some("sk-vllm")
        );
        assert!(!c.secondary.provider.is_cloud());
        assert_eq!(c.secondary.provider.timeout, Duration::from_millis(5000));
    }

    #[test]
    fn env_urls_take_comma_separated_lists() {
        let c = Config::from_sources(&sources(&[
            ("OLLAMA_HOST", "gpu-a:11434, http://gpu-b:11434/"),
            (
                "OPENAI_BASE_URL",
                "https://a.example/v1,https://b.example/v1",
            ),
        ]))
        .unwrap();
        assert_eq!(
            c.secondary.provider.base_urls,
            ["http://gpu-a:11434", "http://gpu-b:11434"]
        );
        assert_eq!(c.secondary.provider.base_url, "http://gpu-a:11434");
        assert_eq!(
            c.primary.provider.base_urls,
            ["https://a.example/v1", "https://b.example/v1"]
        );
        assert_eq!(c.primary.provider.pool, PoolConfig::default());
        for (var, value, says) in [
            ("OLLAMA_HOST", "gpu-a:11434,http://gpu-a:11434", "duplicate"),
            (
                "OPENAI_BASE_URL",
                "https://a.example/v1,https://a.example/v1/",
                "duplicate",
            ),
            ("OPENAI_BASE_URL", "https://a.example/v1,ftp://b", "scheme"),
            (
                "OPENAI_BASE_URL",
                "https://a.example/v1,,https://b.example",
                "empty",
            ),
            ("OLLAMA_HOST", "gpu-a:11434,http://[::1", "not a URL"),
        ] {
            let err = Config::from_sources(&sources(&[(var, value)])).unwrap_err();
            assert_eq!(err.var, var, "{value}");
            assert!(err.message.contains(says), "{value}: {err}");
        }
    }

    #[test]
    fn toml_providers_take_base_urls_and_pool_settings() {
        let mut s = sources(&[("SECONDARY_PROVIDER", "local")]);
        s.load_toml(
            "[providers.local]\nkind = \"ollama\"\nbase_urls = [\"http://gpu-a:11434\", \"http://gpu-b:11434\"]\ntier = \"local\"\nmax_in_flight = 4\nmax_queue = 16\neject_after_failures = 5\neject_ms = 2000\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let c = Config::from_sources(&s).unwrap();
        let p = &c.secondary.provider;
        assert_eq!(p.base_urls, ["http://gpu-a:11434", "http://gpu-b:11434"]);
        assert_eq!(
            p.pool,
            PoolConfig {
                max_in_flight: Some(4),
                max_queue: 16,
                eject_after_failures: 5,
                eject: Duration::from_millis(2000),
            }
        );
        let c = {
            let mut s = sources(&[("SECONDARY_PROVIDER", "x")]);
            s.load_toml(
                "[providers.x]\nkind = \"ollama\"\nbase_url = \"http://gpu:1\"\ntier = \"local\"\n",
                Path::new("x.toml"),
            )
            .unwrap();
            Config::from_sources(&s).unwrap()
        };
        assert_eq!(c.secondary.provider.base_urls, ["http://gpu:1"]);
        assert_eq!(c.secondary.provider.pool, PoolConfig::default());

        for (table, var, says) in [
            (
                "base_urls = [\"http://a:1\", \"http://a:1/\"]",
                "providers.x.base_urls",
                "duplicate",
            ),
            (
                "base_urls = [\"http://a:1\", \"gopher://b\"]",
                "providers.x.base_urls",
                "scheme",
            ),
            (
                "base_urls = [\"a b\"]",
                "providers.x.base_urls",
                "not a URL",
            ),
            ("base_urls = []", "providers.x.base_urls", "at least one"),
            ("base_url = \"nope\"", "providers.x.base_url", "not a URL"),
            (
                "base_url = \"http://a:1\"\nbase_urls = [\"http://b:1\"]",
                "providers.x.base_urls",
                "exactly one",
            ),
            ("", "providers.x.base_urls", "exactly one"),
            (
                "base_url = \"http://a:1\"\nmax_in_flight = 0",
                "providers.x.max_in_flight",
                "at least 1",
            ),
            (
                "base_url = \"http://a:1\"\neject_after_failures = 0",
                "providers.x.eject_after_failures",
                "at least 1",
            ),
            (
                "base_url = \"http://a:1\"\neject_ms = 0",
                "providers.x.eject_ms",
                "at least 1",
            ),
            (
                "base_url = \"http://a:1\"\ntimeout_ms = 0",
                "providers.x.timeout_ms",
                "at least 1",
            ),
            (
                "base_url = \"http://a:1\"\nconnect_timeout_ms = 0",
                "providers.x.connect_timeout_ms",
                "at least 1",
            ),
        ] {
            let mut s = sources(&[]);
            s.load_toml(
                &format!("[providers.x]\nkind = \"ollama\"\ntier = \"local\"\n{table}\n"),
                Path::new("x.toml"),
            )
            .unwrap();
            let err = Config::from_sources(&s).unwrap_err();
            assert_eq!(err.var, var, "{table}");
            assert!(err.message.contains(says), "{table}: {err}");
        }
    }

    #[test]
    fn pricing_tables_and_the_dollar_cap() {
        let mut s = Sources::default();
        s.load_toml(
            "[pricing.\"gpt-4o\"]\ninput_per_mtok = 2.0\noutput_per_mtok = 8.0\n[pricing.\"llama3:8b\"]\ninput_per_mtok = 0.01\noutput_per_mtok = 0.02\n",
            Path::new("gw.toml"),
        )
        .unwrap();
        s.env.insert("MAX_CLOUD_COST_USD".into(), " 0.25 ".into());
        let c = Config::from_sources(&s).unwrap();
        assert_eq!(c.max_cloud_cost, Some(Nanos(250_000_000)));
        assert_eq!(c.max_output_tokens, 4096);
        assert_eq!(
            c.pricing.lookup("gpt-4o", true),
            PriceSource::Configured(Price {
                input_per_mtok: 2.0,
                output_per_mtok: 8.0
            })
        );
        assert!(c.warnings().is_empty());
        // No cap by default; a cap of 0 means no cloud spend at all.
        assert_eq!(
            Config::from_sources(&sources(&[])).unwrap().max_cloud_cost,
            None
        );
        let zero = Config::from_sources(&sources(&[("MAX_CLOUD_COST_USD", "0")])).unwrap();
        assert_eq!(zero.max_cloud_cost, Some(Nanos::ZERO));
        for bad in ["-1", "NaN", "inf", "1e10", "1000001", "$5", "five"] {
            let err = Config::from_sources(&sources(&[("MAX_CLOUD_COST_USD", bad)])).unwrap_err();
            assert_eq!(err.var, "MAX_CLOUD_COST_USD", "{bad}: {err}");
        }
        // A cap needs a price for every cloud model; without a cap, a warning.
        let unpriced = [("PRIMARY_MODEL", "frontier-x"), ("MAX_CLOUD_COST_USD", "1")];
        let err = Config::from_sources(&sources(&unpriced)).unwrap_err();
        assert_eq!(err.var, "MAX_CLOUD_COST_USD");
        assert!(err.to_string().contains("frontier-x"), "{err}");
        let short_ttl = [("MAX_CLOUD_COST_USD", "1"), ("VRA_REPORT_TTL_SECS", "600")];
        let err = Config::from_sources(&sources(&short_ttl)).unwrap_err();
        assert_eq!(err.var, "VRA_REPORT_TTL_SECS", "{err}");
        assert!(
            Config::from_sources(&sources(&short_ttl[1..])).is_ok(),
            "no cap, no constraint"
        );
        let warned = Config::from_sources(&sources(&unpriced[..1])).unwrap();
        assert_eq!(warned.warnings().len(), 1);
        assert!(warned.warnings()[0].contains("frontier-x"));
        // Bad tables name the file and the model.
        for (text, needle) in [
            (
                "[pricing.\"m\"]\ninput_per_mtok = -1.0\noutput_per_mtok = 1.0",
                "per million tokens",
            ),
            ("[pricing.\"m\"]\ninput_per_mtok = 1.0", "output_per_mtok"),
            (
                "[pricing.\"m\"]\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\ncached = 1.0",
                "cached",
            ),
        ] {
            let err = Sources::default()
                .load_toml(text, Path::new("gw.toml"))
                .unwrap_err();
            assert_eq!(err.var, "gw.toml");
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn toml_rejects_unknown_keys() {
        let mut s = Sources::default();
        let err = s
            .load_toml("max_clod_calls = 3", Path::new("gw.toml"))
            .unwrap_err();
        assert_eq!(err.var, "gw.toml");
        assert!(err.message.contains("max_clod_calls"));
        let err = s
            .load_toml("[providers.x]\nkind = \"openai\"\nbase_url = \"http://x\"\ntier = \"cloud\"\nkey = 1", Path::new("gw.toml"))
            .unwrap_err();
        assert!(err.message.contains("key"), "{err}");
    }

    #[test]
    fn render_redacts_secrets() {
        let s = sources(&[
            ("OPENAI_API_KEY", "sk-very-secret"),
            ("VRA_LEDGER_URL", "redis://:pw@h:6379/0"),
        ]);
        let c = Config::from_sources(&s).unwrap();
        let text = c.render(&s);
        assert!(!text.contains("sk-very-secret"));
        assert!(!text.contains("pw@"));
        assert!(text.contains("OPENAI_API_KEY=<redacted>"));
        assert!(text.contains("MAX_CLOUD_CALLS=15    # default"));
        assert!(!format!("{c:?}").contains("sk-very-secret"));
    }

    /// The `VAR=value` lines of `render`, as environment sources.
    fn rendered_as_env(text: &str) -> Sources {
        let pairs: Vec<(&str, &str)> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (var, rest) = l.split_once('=').expect("VAR=value");
                (var, rest.split("    #").next().unwrap())
            })
            .collect();
        sources(&pairs)
    }

    #[test]
    fn print_config_prints_values_that_load_back_to_the_same_configuration() {
        for given in [
            vec![],
            vec![("REPORT_PROVIDER", "local")],
            vec![("PRIMARY_PROVIDER", "local"), ("MAX_CLOUD_CALLS", "4")],
        ] {
            let s = sources(&given);
            let c = Config::from_sources(&s).unwrap();
            let text = c.render(&s);
            let again = Config::from_sources(&rendered_as_env(&text))
                .unwrap_or_else(|e| panic!("{given:?}: {e}\n{text}"));
            assert_eq!(again, c, "{given:?}:\n{text}");
        }
        let s = sources(&[("REPORT_PROVIDER", "local")]);
        let text = Config::from_sources(&s).unwrap().render(&s);
        assert!(text.contains("PRIMARY_PROVIDER=local    # env"), "{text}");
    }

    #[test]
    fn ollama_host_without_scheme() {
        let c = Config::from_sources(&sources(&[("VRA_GATEWAY_ADDR", "localhost:7000")])).unwrap();
        assert!(c.listen_addr.ip().is_loopback() && c.listen_addr.port() == 7000);
        let c = Config::from_sources(&sources(&[("OLLAMA_HOST", "gpu-box:11434")])).unwrap();
        assert_eq!(c.secondary.provider.base_url, "http://gpu-box:11434");
    }

    #[test]
    fn a_network_listener_needs_credentials_or_the_explicit_opt_out() {
        let open = [("VRA_GATEWAY_ADDR", "0.0.0.0:50051")];
        let err = Config::from_sources(&sources(&open)).unwrap_err();
        assert_eq!(err.var, "VRA_GATEWAY_ADDR");
        for named in [
            "VRA_CLIENTS_FILE",
            "VRA_TLS_CLIENT_CA_FILE",
            "VRA_ALLOW_UNAUTHENTICATED=true",
        ] {
            assert!(err.message.contains(named), "{err}");
        }
        for extra in [
            ("VRA_CLIENTS_FILE", "/etc/vra/clients.toml"),
            ("VRA_ALLOW_UNAUTHENTICATED", "true"),
        ] {
            let c = Config::from_sources(&sources(&[open[0], extra])).unwrap();
            assert!(c.security.authenticates() || c.security.allow_unauthenticated);
        }
        let mtls = [
            open[0],
            ("VRA_TLS_CERT_FILE", "c.pem"),
            ("VRA_TLS_KEY_FILE", "k.pem"),
            ("VRA_TLS_CLIENT_CA_FILE", "ca.pem"),
        ];
        assert!(
            Config::from_sources(&sources(&mtls))
                .unwrap()
                .security
                .authenticates()
        );
        // TLS alone proves nothing about the caller.
        let err = Config::from_sources(&sources(&mtls[..3])).unwrap_err();
        assert_eq!(err.var, "VRA_GATEWAY_ADDR");
        // Loopback without authentication keeps working, as the README's commands need.
        let c = Config::from_sources(&sources(&[])).unwrap();
        assert!(!c.security.authenticates());
    }

    #[test]
    fn worker_threads_default_to_the_runtime_and_are_bounded() {
        let c = Config::from_sources(&sources(&[])).unwrap();
        assert_eq!(c.worker_threads, None);
        let c = Config::from_sources(&sources(&[("VRA_WORKER_THREADS", " 1 ")])).unwrap();
        assert_eq!(c.worker_threads, NonZeroUsize::new(1));
        for bad in ["0", "-1", "two", "1.5", "1025", "99999999999999999999999"] {
            let err = Config::from_sources(&sources(&[("VRA_WORKER_THREADS", bad)])).unwrap_err();
            assert_eq!(err.var, "VRA_WORKER_THREADS", "{bad}");
        }
    }

    #[test]
    fn proxies_are_normalised_read_in_either_case_and_never_echoed() {
        let c = Config::from_sources(&sources(&[])).unwrap();
        assert_eq!(c.primary.provider.proxy, ProxyConfig::default());
        let c = Config::from_sources(&sources(&[
            ("https_proxy", "user:pw@proxy.corp:3128"),
            ("HTTP_PROXY", "http://proxy.corp:8080/"),
            ("no_proxy", "localhost,10.0.0.0/8"),
        ]))
        .unwrap();
        let proxy = &c.secondary.provider.proxy;
        assert_eq!(
            proxy.https.as_ref().map(Secret::expose),
            Some("http://user:pw@proxy.corp:3128")
        );
        assert_eq!(
            proxy.http.as_ref().map(Secret::expose),
            Some("http://proxy.corp:8080")
        );
        assert_eq!(proxy.all, None);
        assert_eq!(proxy.no, "localhost,10.0.0.0/8");
        assert_eq!(
            &c.primary.provider.proxy, proxy,
            "one proxy setting for every provider"
        );
        assert!(!format!("{c:?}").contains("pw@"));
        for (var, bad, why) in [
            ("HTTPS_PROXY", "socks5://user:pw@proxy:1080", "socks5"),
            ("ALL_PROXY", "https://user:pw@proxy:443", "https"),
            (
                "HTTP_PROXY",
                "http://user:pw@proxy:3128/path",
                "without a path",
            ),
            ("HTTP_PROXY", "http://user:pw@:3128", "URL"),
            ("HTTPS_PROXY", "http://user:pw@proxy:99999", "URL"),
        ] {
            let err = Config::from_sources(&sources(&[(var, bad)])).unwrap_err();
            assert_eq!(err.var, var, "{bad}");
            assert!(err.message.contains(why), "{bad}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let err = Config::from_sources(&sources(&[("VRA_TLS_CERT_FILE", "c.pem")])).unwrap_err();
        assert_eq!(err.var, "VRA_TLS_CERT_FILE");
        assert!(err.message.contains("VRA_TLS_KEY_FILE"));
        let err = Config::from_sources(&sources(&[("VRA_TLS_KEY_FILE", "k.pem")])).unwrap_err();
        assert_eq!(err.var, "VRA_TLS_KEY_FILE");
        let err =
            Config::from_sources(&sources(&[("VRA_TLS_CLIENT_CA_FILE", "ca.pem")])).unwrap_err();
        assert_eq!(err.var, "VRA_TLS_CLIENT_CA_FILE");
    }

    #[test]
    fn a_cloud_key_never_travels_in_clear_to_another_host() {
        for (url, refused) in [
            ("http://10.1.2.3/v1", true),
            ("http://api.example.com/v1", true),
            ("http://127.0.0.1:8080/v1", false),
            ("http://localhost:8080/v1", false),
            ("http://[::1]:8080/v1", false),
            ("https://api.example.com/v1", false),
        ] {
            let result = Config::from_sources(&sources(&[("OPENAI_BASE_URL", url)]));
            match result {
                Err(e) if refused => {
                    assert_eq!(e.var, "OPENAI_BASE_URL");
                    assert!(e.message.contains("VRA_ALLOW_PLAINTEXT_CLOUD"), "{e}");
                }
                Ok(_) if !refused => {}
                other => panic!("{url}: {other:?}"),
            }
        }
        let allowed = [
            ("OPENAI_BASE_URL", "http://10.1.2.3/v1"),
            ("VRA_ALLOW_PLAINTEXT_CLOUD", "true"),
        ];
        assert!(Config::from_sources(&sources(&allowed)).is_ok());
        // A local-tier provider on plain HTTP is the normal case (Ollama on a GPU box).
        assert!(
            Config::from_sources(&sources(&[("OLLAMA_HOST", "http://10.1.2.3:11434")])).is_ok()
        );
    }
}
