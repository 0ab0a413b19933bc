//! Where settings come from, highest precedence first: the process environment, `.env` in the
//! working directory, the TOML file (`--config PATH` or `VRA_GATEWAY_CONFIG`). Every layer
//! speaks the same variable names; the file adds `[providers.NAME]` and `[pricing."MODEL"]`
//! tables.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use super::settings::{GATEWAY_CONFIG, SETTINGS, Setting};
use crate::cost::Price;
use crate::providers::{CostTier, ProviderKind};

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
    /// The model asked for when this provider serves a tier whose `PRIMARY_MODEL` /
    /// `SECONDARY_MODEL` is not set.
    pub model: Option<String>,
    /// Secret headers sent with every request: header name → the *name* of the variable
    /// holding its value (e.g. Azure OpenAI's `api-key`).
    pub headers_env: Option<BTreeMap<String, String>>,
    /// Query parameters added to every request's URL (e.g. Azure OpenAI's `api-version`).
    pub query: Option<BTreeMap<String, String>>,
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

    pub(super) fn get(&self, setting: Setting) -> Option<String> {
        self.lookup(setting.var).map(|(v, _)| v)
    }

    /// A setting's value, or its default; an empty value counts as unset.
    pub(super) fn get_or_default(&self, setting: Setting) -> String {
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
