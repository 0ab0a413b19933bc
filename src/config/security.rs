//! Who may call, and how the listener is secured; and the two rules that make the gateway safe
//! by default: a listener reachable from the network needs credentials (or the explicit
//! opt-out), and a cloud API key never travels over plain HTTP to another host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use super::parse::{parse_bool, parse_millis};
use super::providers::base_url_var;
use super::settings::*;
use super::sources::Sources;
use crate::providers::Endpoint;

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
    /// `VRA_TLS_RELOAD_CHECK_MS`: how often the TLS files are checked for a change (`None`:
    /// on SIGHUP only).
    pub tls_reload_check: Option<Duration>,
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

/// The security settings, and the two rules that make the gateway safe by default: a
/// non-loopback listener needs authentication (or the explicit opt-out), and a cloud API key
/// never travels over plain HTTP to another host (unless explicitly allowed).
pub(super) fn from_sources(
    s: &Sources,
    listen_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
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
        tls_reload_check: Some(parse_millis(TLS_RELOAD_CHECK_MS, s, 0)?).filter(|d| !d.is_zero()),
    };
    // Every listener: the gRPC one and, when on, the HTTP door.
    for (setting, addr) in [(GATEWAY_ADDR, Some(listen_addr)), (HTTP_ADDR, http_addr)] {
        let Some(addr) = addr else { continue };
        if !addr.ip().is_loopback() && !security.authenticates() && !security.allow_unauthenticated
        {
            return Err(ConfigError::new(
                setting.var,
                format!(
                    "{addr} is reachable from the network but no caller would need credentials: set {} (bearer tokens) or {} (client certificates), or {}=true if something in front authenticates",
                    CLIENTS_FILE.var, TLS_CLIENT_CA_FILE.var, ALLOW_UNAUTHENTICATED.var
                ),
            ));
        }
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
