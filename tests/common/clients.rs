//! Authenticated test clients: a clients file (`VRA_CLIENTS_FILE`) written at run time and
//! requests that carry a bearer token.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// One `[[client]]` entry and the bearer token that matches it.
#[derive(Debug, Clone, Copy)]
pub struct TestClient {
    pub id: &'static str,
    pub token: &'static str,
    pub cloud_calls_per_day: Option<u32>,
    pub max_cloud_calls: Option<u32>,
    pub max_in_flight: Option<u32>,
    pub admin: bool,
}

impl TestClient {
    pub const fn new(id: &'static str, token: &'static str) -> Self {
        Self {
            id,
            token,
            cloud_calls_per_day: None,
            max_cloud_calls: None,
            max_in_flight: None,
            admin: false,
        }
    }

    /// An admin client (`admin = true`: may call PurgeCache).
    pub const fn admin(self) -> Self {
        Self {
            admin: true,
            ..self
        }
    }

    pub const fn per_day(self, n: u32) -> Self {
        Self {
            cloud_calls_per_day: Some(n),
            ..self
        }
    }

    pub const fn max_cloud_calls(self, n: u32) -> Self {
        Self {
            max_cloud_calls: Some(n),
            ..self
        }
    }

    pub const fn max_in_flight(self, n: u32) -> Self {
        Self {
            max_in_flight: Some(n),
            ..self
        }
    }

    /// `request` with this client's `authorization: Bearer` metadata.
    pub fn call<T>(&self, request: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(request);
        let value = format!("Bearer {}", self.token)
            .parse()
            .expect("ascii token");
        request.metadata_mut().insert("authorization", value);
        request
    }
}

/// Hex SHA-256, as `token_sha256` holds it.
pub fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The TOML text of a clients file.
pub fn clients_toml(clients: &[TestClient]) -> String {
    let mut out = String::new();
    for c in clients {
        out.push_str(&format!(
            "[[client]]\nid = \"{}\"\ntoken_sha256 = \"{}\"\n",
            c.id,
            sha256_hex(c.token)
        ));
        if let Some(n) = c.cloud_calls_per_day {
            out.push_str(&format!("cloud_calls_per_day = {n}\n"));
        }
        if let Some(n) = c.max_cloud_calls {
            out.push_str(&format!("max_cloud_calls = {n}\n"));
        }
        if let Some(n) = c.max_in_flight {
            out.push_str(&format!("max_in_flight = {n}\n"));
        }
        if c.admin {
            out.push_str("admin = true\n");
        }
        out.push('\n');
    }
    out
}

/// Writes a clients file into a fresh temporary directory and returns its path.
pub fn write_clients_file(clients: &[TestClient]) -> PathBuf {
    let path = super::process::temp_dir().join("clients.toml");
    std::fs::write(&path, clients_toml(clients)).expect("write the clients file");
    path
}
