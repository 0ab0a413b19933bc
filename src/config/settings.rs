//! The table of every setting the gateway reads, by its environment-variable name: default,
//! help, and whether it is a secret. It drives `--help`, `--print-config`, the deploy-manifest
//! check and `docs/configuration.md` (generated; `tests/docs.rs` keeps them equal).

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
    HTTP_ADDR = "VRA_HTTP_ADDR", "", "Listen address of the OpenAI-compatible HTTP door (POST /v1/chat/completions, GET /v1/models, GET /healthz), e.g. 127.0.0.1:8080; empty = off. Same TLS, credentials and limits as gRPC.";
    GATEWAY_CONFIG = "VRA_GATEWAY_CONFIG", "", "Path of an optional TOML config file (same as --config).";
    RETRY_MAX_ATTEMPTS = "VRA_RETRY_MAX_ATTEMPTS", "3", "HTTP attempts per provider per call, first try included (>= 1).";
    RETRY_BASE_MS = "VRA_RETRY_BASE_MS", "250", "Backoff base in milliseconds.";
    RETRY_MAX_BACKOFF_MS = "VRA_RETRY_MAX_BACKOFF_MS", "4000", "Backoff cap in milliseconds (also caps Retry-After).";
    UPSTREAM_TIMEOUT_MS = "VRA_UPSTREAM_TIMEOUT_MS", "120000", "Timeout of one upstream HTTP attempt, in milliseconds.";
    CONNECT_TIMEOUT_MS = "VRA_CONNECT_TIMEOUT_MS", "2000", "Longest upstream connection set-up (DNS, TCP connect, TLS handshake), in milliseconds.";
    STREAM_IDLE_TIMEOUT_MS = "VRA_STREAM_IDLE_TIMEOUT_MS", "30000", "A streaming upstream silent this long is cut, in milliseconds.";
    REPORT_TTL_SECS = "VRA_REPORT_TTL_SECS", "86400", "A report's ledger entry is forgotten this long after its last use.";
    HOLD_GRACE_MS = "VRA_HOLD_GRACE_MS", "30000", "A cost hold its call never settles (a replica killed mid-call) is charged as abandoned this long after its attempt's deadline.";
    MAX_PROMPT_BYTES = "VRA_MAX_PROMPT_BYTES", "1048576", "Larger prompts (and system prompts) are rejected.";
    LOG_FORMAT = "VRA_LOG_FORMAT", "text", "Log format: text or json (level via RUST_LOG).";
    CIRCUIT_FAILURES = "VRA_CIRCUIT_FAILURES", "5", "Consecutive failed calls that open a provider's circuit breaker; 0 disables it.";
    CIRCUIT_OPEN_MS = "VRA_CIRCUIT_OPEN_MS", "30000", "How long an open circuit skips its provider before one probe call.";
    METRICS_ADDR = "VRA_METRICS_ADDR", "127.0.0.1:9464", "Prometheus /metrics listen address; empty disables.";
    TRACE_CONTENT = "VRA_TRACE_CONTENT", "false", "Put (truncated) prompts and completions in spans.";
    LEDGER_URL = "VRA_LEDGER_URL", "", "redis://host:port/db (or rediss://) selects the Redis ledger on one node; redis+cluster://host:port[,host:port...] (or rediss+cluster://) on a Redis Cluster; empty = in-memory.", secret = true;
    LEDGER_PREFIX = "VRA_LEDGER_PREFIX", "vra:", "Key prefix of the Redis ledger.";
    LEDGER_TIMEOUT_MS = "VRA_LEDGER_TIMEOUT_MS", "200", "Redis ledger operation timeout; past it, calls fail safe to the secondary.";
    LEDGER_MIN_REPLICAS = "VRA_LEDGER_MIN_REPLICAS", "0", "Redis ledger: a cloud call's reservation counts only once this many replicas of its master confirm holding it (WAIT), so promoting such a replica loses no unit; not confirmed within a third of VRA_LEDGER_TIMEOUT_MS = fail safe to the secondary (the unit stays taken). 0 = no wait.";
    LEDGER_MAX_REPORTS = "VRA_LEDGER_MAX_REPORTS", "250000", "Reports the in-memory ledger tracks at most; past it a new report's cloud calls fail safe (LEDGER_UNAVAILABLE).";
    CACHE = "VRA_CACHE", "off", "Response cache: off, memory (this process: LRU under VRA_CACHE_MAX_BYTES) or redis (the ledger's Redis or cluster, VRA_LEDGER_URL, shared by replicas). A hit answers at once and spends no budget unit and no dollar; keyed by client and the request as the answering model receives it.";
    CACHE_TTL_SECS = "VRA_CACHE_TTL_SECS", "86400", "How long a cached answer is kept, in seconds.";
    CACHE_MAX_BYTES = "VRA_CACHE_MAX_BYTES", "268435456", "VRA_CACHE=memory: the most bytes the cache holds; past it the least recently used answers are evicted.";
    CACHE_MAX_ENTRY_BYTES = "VRA_CACHE_MAX_ENTRY_BYTES", "1048576", "Answers larger than this many bytes are not cached.";
    CACHE_PREFIX = "VRA_CACHE_PREFIX", "vra:cache:", "VRA_CACHE=redis: key prefix of the cached answers.";
    MAX_RESPONSE_BYTES = "VRA_MAX_RESPONSE_BYTES", "8388608", "Largest upstream response body (unary answers and error bodies) read, in bytes.";
    MAX_STREAM_LINE_BYTES = "VRA_MAX_STREAM_LINE_BYTES", "1048576", "Longest SSE / NDJSON line of an upstream stream, in bytes.";
    CLIENTS_FILE = "VRA_CLIENTS_FILE", "", "TOML file of [[client]] entries (id, token_sha256, limits): bearer tokens required, budgets per client. Re-read on SIGHUP.";
    ALLOW_UNAUTHENTICATED = "VRA_ALLOW_UNAUTHENTICATED", "false", "Serve a non-loopback address without VRA_CLIENTS_FILE or VRA_TLS_CLIENT_CA_FILE (a mesh authenticates in front).";
    TLS_CERT_FILE = "VRA_TLS_CERT_FILE", "", "PEM certificate chain: serve gRPC over TLS (with VRA_TLS_KEY_FILE). Re-read on SIGHUP and when the files change.";
    TLS_KEY_FILE = "VRA_TLS_KEY_FILE", "", "PEM private key of VRA_TLS_CERT_FILE.";
    TLS_CLIENT_CA_FILE = "VRA_TLS_CLIENT_CA_FILE", "", "PEM CA bundle: require and verify client certificates (mTLS); the client id is the first DNS SAN, else the CN.";
    TLS_RELOAD_CHECK_MS = "VRA_TLS_RELOAD_CHECK_MS", "10000", "How often the TLS files are checked for a change (modification time, size); a change reloads them as SIGHUP does, so certificates rotated by cert-manager and the like are picked up. A file that does not parse keeps the previous certificate. 0 = on SIGHUP only.";
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
