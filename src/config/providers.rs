//! The provider table: the built-in `openai` and `local` (`ollama`) providers from their
//! settings, the TOML file's `[providers.NAME]` tables, and the forward proxies every upstream
//! connection shares.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ConfigError;
use super::parse::parse_urls;
use super::settings::*;
use super::sources::Sources;
use crate::domain::Secret;
use crate::providers::http::ProxyConfig;
use crate::providers::pool::PoolConfig;
use crate::providers::{BodyLimits, CostTier, Endpoint, ProviderConfig, ProviderKind};

/// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, each also read in lower case.
pub(super) fn proxies(s: &Sources) -> Result<ProxyConfig, ConfigError> {
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

/// Where a `kind = "anthropic"` provider without `base_url` sends its requests.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// The variable a `kind = "anthropic"` provider without `api_key_env` reads its key from.
pub const ANTHROPIC_API_KEY_ENV: &str = "ANTHROPIC_API_KEY";

/// The setting that holds a provider's base URL.
pub(super) fn base_url_var(provider: &str) -> String {
    match provider {
        "openai" => OPENAI_BASE_URL.var.to_string(),
        "local" | "ollama" => OLLAMA_HOST.var.to_string(),
        other => format!("providers.{other}.base_urls"),
    }
}

/// Built-in providers plus the TOML file's `[providers.NAME]` tables.
pub(super) fn table(
    s: &Sources,
    timeout: Duration,
    connect_timeout: Duration,
    limits: BodyLimits,
    proxy: &ProxyConfig,
    max_output_tokens: u32,
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
        default_model: None,
        max_output_tokens,
        headers: Vec::new(),
        query: Vec::new(),
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
                default_model: None,
                max_output_tokens,
                headers: Vec::new(),
                query: Vec::new(),
            },
        );
    }
    table.insert("openai".into(), openai);
    for (name, p) in &s.file_providers {
        let var = format!("providers.{name}");
        let api_key_env = p.api_key_env.as_deref().or(match p.kind {
            ProviderKind::Anthropic => Some(ANTHROPIC_API_KEY_ENV),
            ProviderKind::Openai | ProviderKind::Ollama => None,
        });
        let api_key = api_key_env
            .and_then(|env| s.lookup(env))
            .map(|(k, _)| k)
            .filter(|k| !k.trim().is_empty())
            .map(|k| Secret::new(k.trim()));
        let base_urls = match (&p.base_url, &p.base_urls) {
            (None, None) if p.kind == ProviderKind::Anthropic => vec![ANTHROPIC_BASE_URL.into()],
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
        let headers = secret_headers(s, &var, p.headers_env.as_ref())?;
        if let Some(query) = &p.query
            && query.keys().any(|k| k.trim().is_empty())
        {
            return Err(ConfigError::new(
                format!("{var}.query"),
                "a query parameter needs a name",
            ));
        }
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
                default_model: p.model.clone().filter(|m| !m.trim().is_empty()),
                max_output_tokens,
                headers,
                query: p
                    .query
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
        );
    }
    Ok(table)
}

/// Headers the gateway sets itself (or the HTTP layer owns): a provider may not replace them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "accept",
    "traceparent",
    "tracestate",
    "baggage",
];

/// A `[providers.NAME]` table's `headers_env`: each header's value read from the variable it
/// names, as a secret. A header that is not a valid name, one the gateway sets itself, a
/// variable that is not set, or a value that is not a valid header value is an error naming
/// the header and the variable — never the value.
fn secret_headers(
    s: &Sources,
    var: &str,
    headers_env: Option<&BTreeMap<String, String>>,
) -> Result<Vec<(String, Secret)>, ConfigError> {
    let mut headers = Vec::new();
    for (name, env) in headers_env.into_iter().flatten() {
        let at = format!("{var}.headers_env.{name}");
        let header = http::HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ConfigError::new(&at, "not a valid HTTP header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(ConfigError::new(
                &at,
                "the gateway sets this header itself; name another",
            ));
        }
        let value = s
            .lookup(env)
            .map(|(v, _)| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ConfigError::new(&at, format!("the variable `{env}` is not set")))?;
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(ConfigError::new(
                &at,
                format!("the value of `{env}` is not a valid header value"),
            ));
        }
        headers.push((header.as_str().to_string(), Secret::new(value)));
    }
    Ok(headers)
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

/// The tier's endpoint: provider `name`, asked for `model` when set, else for the provider's
/// own `model`, else for `default`.
pub(super) fn endpoint(
    providers: &BTreeMap<String, ProviderConfig>,
    var: &str,
    name: &str,
    model: Option<String>,
    default: &str,
) -> Result<Endpoint, ConfigError> {
    let key = name.trim().to_ascii_lowercase();
    let provider = providers.get(&key).cloned().ok_or_else(|| {
        let known: Vec<&str> = providers.keys().map(String::as_str).collect();
        ConfigError::new(
            var,
            format!("unknown provider `{name}`; accepted: {}", known.join(", ")),
        )
    })?;
    let model = match model.or_else(|| provider.default_model.clone()) {
        Some(model) => model,
        // The tier's default (gpt-4o, llama3:8b) means nothing to Claude.
        None if provider.kind == ProviderKind::Anthropic => {
            return Err(ConfigError::new(
                var,
                format!(
                    "provider `{}` (kind = \"anthropic\") needs a model: set `model` in [providers.{}] or the tier's model setting",
                    provider.name, provider.name
                ),
            ));
        }
        None => default.to_string(),
    };
    if model.trim().is_empty() {
        return Err(ConfigError::new(var, "model must not be empty"));
    }
    Ok(Endpoint {
        provider,
        model: model.trim().to_string(),
    })
}
