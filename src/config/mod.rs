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
//!
//! # Layout
//!
//! - [`settings`]: the table of every setting (variable, default, help, secret or not);
//! - [`sources`]: where values come from, and their precedence;
//! - `parse`: one parser per kind of value, whose errors name the setting and what it accepts;
//! - `providers`: the provider table (built-in providers, `[providers.NAME]`, proxies);
//! - [`security`]: who may call and how the listener is secured, and the safe-by-default rules.
//!
//! Each subsystem owns the type of its own settings
//! ([`ProviderConfig`](crate::providers::ProviderConfig) and
//! [`PoolConfig`](crate::providers::pool::PoolConfig) in `providers`, [`RetryConfig`] and [`CircuitConfig`] in `resilience`, [`LedgerConfig`] in
//! `budget`, [`TelemetryConfig`] in `telemetry`, [`ServerLimits`] in `edge`); this module reads
//! the sources and assembles them into one [`Config`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use crate::budget::LedgerConfig;
use crate::cache::{Backend as CacheBackend, CacheConfig};
use crate::cost::{PriceSource, Pricing};
use crate::domain::{Nanos, Secret};
use crate::edge::ServerLimits;
use crate::providers::Endpoint;
use crate::resilience::{CircuitConfig, RetryConfig};
use crate::telemetry::{LogFormat, TelemetryConfig};

mod parse;
mod providers;
pub mod security;
pub mod settings;
pub mod sources;

pub use parse::parse_bool;
pub use security::{SecurityConfig, TlsFiles};
pub use settings::*;
pub use sources::{FileProvider, Origin, Sources};

use parse::{parse_addr, parse_millis, parse_uint, parse_usd, parse_worker_threads};

/// A configuration error: which setting, and what was wrong. Startup exits with code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    /// The variable (or file) at fault.
    pub var: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(var: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            var: var.into(),
            message: message.into(),
        }
    }
}

/// The validated runtime configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub hybrid_mode: bool,
    pub primary: Endpoint,
    pub secondary: Endpoint,
    pub max_cloud_calls: u32,
    pub listen_addr: SocketAddr,
    /// `VRA_HTTP_ADDR`: the OpenAI-compatible HTTP door (`None`: off).
    pub http_addr: Option<SocketAddr>,
    pub retry: RetryConfig,
    pub stream_idle_timeout: Duration,
    pub max_prompt_bytes: usize,
    pub circuit: CircuitConfig,
    pub metrics_addr: Option<SocketAddr>,
    pub telemetry: TelemetryConfig,
    pub ledger: LedgerConfig,
    pub cache: CacheConfig,
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

impl Config {
    /// Loads and validates the configuration from the process's sources.
    pub fn load(config_path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_sources(&Sources::from_process(config_path)?)
    }

    /// Builds and validates a configuration from explicit sources.
    pub fn from_sources(s: &Sources) -> Result<Config, ConfigError> {
        let timeout = parse_millis(UPSTREAM_TIMEOUT_MS, s, 1)?;
        let connect_timeout = parse_millis(CONNECT_TIMEOUT_MS, s, 1)?;
        let limits = crate::providers::BodyLimits {
            response_bytes: parse_uint(MAX_RESPONSE_BYTES, s, 1024)?,
            line_bytes: parse_uint(MAX_STREAM_LINE_BYTES, s, 1024)?,
        };
        let proxy = providers::proxies(s)?;
        let providers = providers::table(
            s,
            timeout,
            connect_timeout,
            limits,
            &proxy,
            parse_uint(MAX_OUTPUT_TOKENS, s, 1)?,
        )?;

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
        let primary = providers::endpoint(
            &providers,
            primary_name.1,
            &primary_name.0,
            s.get(PRIMARY_MODEL),
            PRIMARY_MODEL.default,
        )?;
        let secondary_name = s.get_or_default(SECONDARY_PROVIDER);
        let secondary = providers::endpoint(
            &providers,
            SECONDARY_PROVIDER.var,
            &secondary_name,
            s.get(SECONDARY_MODEL),
            SECONDARY_MODEL.default,
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
        let ledger_prefix = s.get_or_default(LEDGER_PREFIX);
        if let Some(url) = &ledger_url {
            // Never echo the URL: it may carry a password.
            let target = crate::budget::redis::connection::Target::parse(url)
                .map_err(|why| ConfigError::new(LEDGER_URL.var, why))?;
            if target.is_cluster() && ledger_prefix.contains(['{', '}']) {
                return Err(ConfigError::new(
                    LEDGER_PREFIX.var,
                    "must not hold `{` or `}` with a cluster: the keys' hash tags follow the prefix",
                ));
            }
        }
        let min_replicas: u32 = parse_uint(LEDGER_MIN_REPLICAS, s, 0)?;
        if min_replicas > 0 && ledger_url.is_none() {
            return Err(ConfigError::new(
                LEDGER_MIN_REPLICAS.var,
                "needs the Redis ledger (VRA_LEDGER_URL): the in-memory ledger has no replicas",
            ));
        }

        let cache = parse_cache(s, ledger_url.is_some())?;

        let listen_addr = parse_addr(GATEWAY_ADDR, &s.get_or_default(GATEWAY_ADDR))?;
        let http_addr = match s.get_or_default(HTTP_ADDR) {
            v if v.trim().is_empty() => None,
            v => Some(parse_addr(HTTP_ADDR, &v)?),
        };
        let security = security::from_sources(s, listen_addr, http_addr, [&primary, &secondary])?;
        let pricing = Pricing {
            configured: s.file_pricing.clone(),
        };
        let max_cloud_cost = parse_usd(MAX_CLOUD_COST_USD, s)?;
        let hold_grace = parse_millis(HOLD_GRACE_MS, s, 0)?;
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
            .unwrap_or_default()
            .saturating_add(hold_grace);
            if ttl <= longest {
                return Err(ConfigError::new(
                    REPORT_TTL_SECS.var,
                    format!(
                        "with {} it must outlast any one upstream attempt and its hold's grace: more than {} s (VRA_STREAM_MAX_MS, the providers' timeouts, VRA_HOLD_GRACE_MS)",
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
            http_addr,
            retry,
            stream_idle_timeout: parse_millis(STREAM_IDLE_TIMEOUT_MS, s, 1)?,
            max_prompt_bytes: parse_uint(MAX_PROMPT_BYTES, s, 1)?,
            telemetry: TelemetryConfig {
                log_format,
                trace_content: parse_bool(TRACE_CONTENT.var, &s.get_or_default(TRACE_CONTENT))?,
            },
            circuit: CircuitConfig {
                failure_threshold: parse_uint(CIRCUIT_FAILURES, s, 0)?,
                open_for: parse_millis(CIRCUIT_OPEN_MS, s, 1)?,
            },
            metrics_addr,
            ledger: LedgerConfig {
                url: ledger_url.map(Secret::new),
                prefix: ledger_prefix,
                timeout: parse_millis(LEDGER_TIMEOUT_MS, s, 1)?,
                max_reports: parse_uint(LEDGER_MAX_REPORTS, s, 1)?,
                report_ttl: Duration::from_secs(parse_uint(REPORT_TTL_SECS, s, 1)?),
                hold_grace,
                min_replicas,
            },
            cache,
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
}

/// `VRA_CACHE` and its settings; `redis` needs the ledger's Redis.
fn parse_cache(s: &Sources, has_redis: bool) -> Result<CacheConfig, ConfigError> {
    let backend = match s.get_or_default(CACHE).trim().to_ascii_lowercase().as_str() {
        "off" | "" => CacheBackend::Off,
        "memory" => CacheBackend::Memory,
        "redis" if has_redis => CacheBackend::Redis,
        "redis" => {
            return Err(ConfigError::new(
                CACHE.var,
                "`redis` keeps answers in the ledger's Redis: set VRA_LEDGER_URL too",
            ));
        }
        other => {
            return Err(ConfigError::new(
                CACHE.var,
                format!("`{other}` is not a cache; accepted: off, memory, redis"),
            ));
        }
    };
    let prefix = s.get_or_default(CACHE_PREFIX);
    if backend == CacheBackend::Redis && prefix.trim().is_empty() {
        return Err(ConfigError::new(
            CACHE_PREFIX.var,
            "must not be empty: the cached answers need a prefix of their own beside the ledger's keys",
        ));
    }
    Ok(CacheConfig {
        backend,
        ttl: Duration::from_secs(parse_uint(CACHE_TTL_SECS, s, 1)?),
        max_bytes: parse_uint(CACHE_MAX_BYTES, s, 1)?,
        max_entry_bytes: parse_uint(CACHE_MAX_ENTRY_BYTES, s, 1)?,
        prefix,
    })
}

impl Config {
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
                "# {tier}: provider={} kind={:?} tier={:?} base_urls={} model={} api_key={}{}{}\n",
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
                ep.provider
                    .headers
                    .iter()
                    .map(|(name, _)| format!(" header:{name}=<redacted>"))
                    .collect::<String>(),
                ep.provider
                    .query
                    .iter()
                    .map(|(k, v)| format!(" query:{k}={v}"))
                    .collect::<String>(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::Price;
    use crate::providers::ProviderKind;
    use crate::providers::http::ProxyConfig;
    use crate::providers::pool::PoolConfig;

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
        assert_eq!(c.ledger.report_ttl, Duration::from_secs(86_400));
        assert_eq!(c.max_prompt_bytes, 1_048_576);
        assert_eq!(c.telemetry.log_format, LogFormat::Text);
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
    fn a_claude_primary_needs_only_its_kind_tier_and_model() {
        let mut s = sources(&[
            ("ANTHROPIC_API_KEY", "sk-ant-test"),
            ("PRIMARY_PROVIDER", "claude"),
            ("VRA_MAX_OUTPUT_TOKENS", "2048"),
        ]);
        s.load_toml(
            "[providers.claude]\nkind = \"anthropic\"\ntier = \"cloud\"\nmodel = \"claude-sonnet-4-6\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let c = Config::from_sources(&s).unwrap();
        let p = &c.primary.provider;
        assert_eq!(p.kind, ProviderKind::Anthropic);
        assert_eq!(p.base_url, "https://api.anthropic.com");
        assert_eq!(p.api_key.as_ref().map(Secret::expose), Some("sk-ant-test"));
        assert_eq!(p.max_output_tokens, 2048);
        assert_eq!(c.primary.model, "claude-sonnet-4-6", "the provider's model");
        // PRIMARY_MODEL, when set, wins over the provider's model.
        s.env
            .insert("PRIMARY_MODEL".into(), "claude-haiku-4-5".into());
        assert_eq!(
            Config::from_sources(&s).unwrap().primary.model,
            "claude-haiku-4-5"
        );
        // Without either, the tier's default (gpt-4o) would mean nothing to Claude.
        let mut s = sources(&[("PRIMARY_PROVIDER", "claude")]);
        s.load_toml(
            "[providers.claude]\nkind = \"anthropic\"\ntier = \"cloud\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let err = Config::from_sources(&s).unwrap_err();
        assert_eq!(err.var, "PRIMARY_PROVIDER");
        assert!(err.message.contains("needs a model"), "{err}");
    }

    #[test]
    fn azure_openai_takes_a_secret_header_and_a_query() {
        let table = "[providers.azure]\nkind = \"openai\"\nbase_url = \"https://acme.openai.azure.com/openai/deployments/gpt-4o\"\ntier = \"cloud\"\nheaders_env = { \"api-key\" = \"AZURE_OPENAI_KEY\" }\nquery = { \"api-version\" = \"2024-10-21\" }\n";
        let load = |env: &[(&str, &str)], toml: &str| {
            let mut s = sources(env);
            s.load_toml(toml, Path::new("azure.toml")).unwrap();
            Config::from_sources(&s)
        };
        let c = load(
            &[
                ("AZURE_OPENAI_KEY", "az-secret-1"),
                ("PRIMARY_PROVIDER", "azure"),
            ],
            table,
        )
        .unwrap();
        let p = &c.primary.provider;
        assert_eq!(
            p.api_key, None,
            "no Authorization header: the key is `api-key`"
        );
        assert_eq!(p.headers.len(), 1);
        assert_eq!(
            (p.headers[0].0.as_str(), p.headers[0].1.expose()),
            ("api-key", "az-secret-1")
        );
        assert_eq!(
            p.query,
            [("api-version".to_string(), "2024-10-21".to_string())]
        );
        assert!(
            !format!("{p:?}").contains("az-secret-1"),
            "redacted in Debug"
        );
        let mut s = sources(&[
            ("AZURE_OPENAI_KEY", "az-secret-1"),
            ("PRIMARY_PROVIDER", "azure"),
        ]);
        s.load_toml(table, Path::new("azure.toml")).unwrap();
        let shown = Config::from_sources(&s).unwrap().render(&s);
        assert!(
            shown.contains("header:api-key=<redacted> query:api-version=2024-10-21")
                && !shown.contains("az-secret-1"),
            "{shown}"
        );

        let err = load(&[("PRIMARY_PROVIDER", "azure")], table).unwrap_err();
        assert_eq!(err.var, "providers.azure.headers_env.api-key");
        assert!(err.message.contains("AZURE_OPENAI_KEY"), "{err}");
        for (header, says) in [("bad header", "valid"), ("Content-Type", "itself")] {
            let toml = table.replace("\"api-key\"", &format!("\"{header}\""));
            let err = load(&[("AZURE_OPENAI_KEY", "k")], &toml).unwrap_err();
            assert!(err.message.contains(says), "{header}: {err}");
        }
        let err = load(&[("AZURE_OPENAI_KEY", "bad\nvalue")], table).unwrap_err();
        assert!(
            err.message.contains("not a valid header value") && !err.message.contains("bad"),
            "{err}"
        );
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
    fn a_cluster_url_lists_its_seeds_and_keeps_braces_out_of_the_prefix() {
        let url = "rediss+cluster://:hunter2@a:7000,b:7001";
        let c = Config::from_sources(&sources(&[("VRA_LEDGER_URL", url)])).unwrap();
        assert_eq!(c.ledger.url.as_ref().map(|u| u.expose()), Some(url));
        let err = Config::from_sources(&sources(&[
            ("VRA_LEDGER_URL", url),
            ("VRA_LEDGER_PREFIX", "vra{x}:"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "VRA_LEDGER_PREFIX");
        // One node does not hash keys: any prefix will do.
        let c = Config::from_sources(&sources(&[
            ("VRA_LEDGER_URL", "redis://h:6379"),
            ("VRA_LEDGER_PREFIX", "vra{x}:"),
        ]));
        assert!(c.is_ok());
        let err = Config::from_sources(&sources(&[(
            "VRA_LEDGER_URL",
            "redis+cluster://:hunter2@a:7000/0",
        )]))
        .unwrap_err();
        assert_eq!(err.var, "VRA_LEDGER_URL");
        assert!(!err.message.contains("hunter2"), "{err}");
    }

    #[test]
    fn replicas_confirm_reservations_only_on_redis() {
        let c = Config::from_sources(&sources(&[])).unwrap();
        assert_eq!(c.ledger.min_replicas, 0);
        let c = Config::from_sources(&sources(&[
            ("VRA_LEDGER_URL", "redis+cluster://a:7000"),
            ("VRA_LEDGER_MIN_REPLICAS", "1"),
        ]))
        .unwrap();
        assert_eq!(c.ledger.min_replicas, 1);
        let err = Config::from_sources(&sources(&[("VRA_LEDGER_MIN_REPLICAS", "1")])).unwrap_err();
        assert_eq!(err.var, "VRA_LEDGER_MIN_REPLICAS");
        assert!(err.message.contains("VRA_LEDGER_URL"), "{err}");
        let err = Config::from_sources(&sources(&[
            ("VRA_LEDGER_URL", "redis://h:6379"),
            ("VRA_LEDGER_MIN_REPLICAS", "-1"),
        ]))
        .unwrap_err();
        assert_eq!(err.var, "VRA_LEDGER_MIN_REPLICAS");
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
        // The HTTP door is held to the same rule, named by its own setting.
        let door = [("VRA_HTTP_ADDR", "0.0.0.0:8080")];
        let err = Config::from_sources(&sources(&door)).unwrap_err();
        assert_eq!(err.var, "VRA_HTTP_ADDR");
        assert!(err.message.contains("VRA_CLIENTS_FILE"), "{err}");
        let local = Config::from_sources(&sources(&[("VRA_HTTP_ADDR", "127.0.0.1:8080")]));
        assert_eq!(
            local.unwrap().http_addr,
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(Config::from_sources(&sources(&[])).unwrap().http_addr, None);
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
