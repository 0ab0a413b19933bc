//! One parser per kind of value. Every value, whatever its source, goes through one of these,
//! so an error always names the setting and what it accepts.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use super::ConfigError;
use super::settings::{Setting, WORKER_THREADS};
use super::sources::Sources;
use crate::domain::Nanos;

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

pub(super) fn parse_uint<T: std::str::FromStr>(
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
pub(super) fn parse_worker_threads(sources: &Sources) -> Result<Option<NonZeroUsize>, ConfigError> {
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
pub(super) fn parse_usd(setting: Setting, sources: &Sources) -> Result<Option<Nanos>, ConfigError> {
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

pub(super) fn parse_millis(
    setting: Setting,
    sources: &Sources,
    min: u64,
) -> Result<Duration, ConfigError> {
    parse_uint::<u64>(setting, sources, min).map(Duration::from_millis)
}

pub(super) fn parse_addr(setting: Setting, value: &str) -> Result<SocketAddr, ConfigError> {
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

pub(super) fn parse_url(var: &str, value: &str) -> Result<String, ConfigError> {
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
pub(super) fn parse_urls<'a>(
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
