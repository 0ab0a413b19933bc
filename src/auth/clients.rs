//! The clients of `VRA_CLIENTS_FILE`: their entries, the file's parser (errors name a file, a
//! line and a field, never a value), minted tokens and their digests, and the set that a reload
//! swaps atomically.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use toml::Spanned;

use crate::domain::{Client, Untrusted};

/// What every token minted by `vra-gateway clients new-token` starts with, so a leaked one
/// is recognisable (by people and by secret scanners).
pub const TOKEN_PREFIX: &str = "vra_";
/// Random bytes in a minted token (hex-encoded after the prefix).
pub const TOKEN_BYTES: usize = 32;
/// A SHA-256 digest of a bearer token.
pub type TokenDigest = [u8; 32];

/// The SHA-256 digest of a token.
pub fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Decodes exactly 64 hex digits (either case) into a digest.
fn digest_from_hex(text: &str) -> Option<TokenDigest> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// A fresh token: the prefix and [`TOKEN_BYTES`] bytes of the thread's CSPRNG (seeded from
/// the OS), hex-encoded.
pub fn new_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", to_hex(&bytes))
}

/// The `[[client]]` block for `id` and its token, ready to paste into the clients file.
pub fn client_block(id: &str, token: &str) -> String {
    format!(
        "[[client]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n",
        to_hex(&digest(token.as_bytes()))
    )
}

/// Why the clients file was rejected: `FILE:LINE: what` (or `FILE: what` when there is no
/// line, e.g. the file cannot be read). Never carries a value from the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ClientsError {
    pub path: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ClientsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The file as written; values are checked after parsing, with their spans for line numbers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    client: Vec<Spanned<ClientEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    id: Spanned<String>,
    token_sha256: Option<Spanned<String>>,
    cloud_calls_per_day: Option<u32>,
    max_cloud_calls: Option<u32>,
    /// At least 1 (0 would refuse every call; leave it out for no limit).
    max_in_flight: Option<std::num::NonZeroU32>,
    /// May call the admin RPCs.
    #[serde(default)]
    admin: bool,
}

/// One parsed clients file: every client by id, and those with a token by its digest.
#[derive(Debug, Default)]
pub struct ClientSet {
    by_digest: HashMap<TokenDigest, Arc<Client>>,
    by_id: HashMap<String, Arc<Client>>,
}

impl ClientSet {
    /// Parses and validates a clients file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ClientSet, ClientsError> {
        let error = |offset: Option<usize>, message: String| ClientsError {
            path: path.to_path_buf(),
            line: offset.map(|o| line_of(text, o)),
            message,
        };
        let file: ClientsFile = toml::from_str(text).map_err(|e| {
            // The message only, not the error's Display: that quotes the offending line,
            // which could hold a token pasted by mistake.
            error(e.span().map(|s| s.start), redact(e.message()))
        })?;
        let mut set = ClientSet::default();
        for entry in file.client {
            let at = entry.span().start;
            let entry = entry.into_inner();
            let id_at = Some(entry.id.span().start);
            let id = entry.id.into_inner();
            if !Client::valid_id(&id) {
                return Err(error(
                    id_at,
                    "invalid client id: use 1 to 64 of A-Z a-z 0-9 . _ -".into(),
                ));
            }
            let digest = match entry.token_sha256 {
                Some(hex) => Some(digest_from_hex(hex.get_ref()).ok_or_else(|| {
                    error(
                        Some(hex.span().start),
                        "token_sha256 must be 64 hex digits (the SHA-256 of the token)".into(),
                    )
                })?),
                None => None,
            };
            let client = Arc::new(Client {
                id: id.clone(),
                cloud_calls_per_day: entry.cloud_calls_per_day,
                max_cloud_calls: entry.max_cloud_calls,
                max_in_flight: entry.max_in_flight.map(std::num::NonZeroU32::get),
                admin: entry.admin,
            });
            match set.by_id.entry(id) {
                Entry::Occupied(e) => {
                    return Err(error(id_at, format!("duplicate client id `{}`", e.key())));
                }
                Entry::Vacant(e) => {
                    e.insert(client.clone());
                }
            }
            if let Some(digest) = digest
                && set.by_digest.insert(digest, client).is_some()
            {
                return Err(error(
                    Some(at),
                    "duplicate token_sha256: two clients share a token".into(),
                ));
            }
        }
        Ok(set)
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<ClientSet, ClientsError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClientsError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        ClientSet::parse(&text, path)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A parser message with any token-looking word cut to its prefix (serde quotes values in
/// "invalid type" messages), then escaped as outside text.
fn redact(message: &str) -> String {
    let cut: Vec<String> = message
        .split(' ')
        .map(|word| match word.find(TOKEN_PREFIX) {
            Some(i) => format!("{}{TOKEN_PREFIX}…", &word[..i]),
            None => word.to_string(),
        })
        .collect();
    Untrusted(&cut.join(" ")).to_string()
}

/// The registered clients, swapped whole on reload.
#[derive(Debug)]
pub struct Clients {
    /// The file re-read on reload (`None`: nothing to re-read).
    path: Option<PathBuf>,
    set: ArcSwap<ClientSet>,
    /// Whether a certificate needs an entry to identify a client (there is a clients file).
    /// Without one (mTLS only) the CA alone vouches for its certificates.
    entries_required: bool,
}

impl Clients {
    /// Loads the clients file (startup: an error here stops the gateway).
    pub fn load(path: &Path) -> Result<Clients, ClientsError> {
        let set = ClientSet::read(path)?;
        tracing::info!("loaded {} clients from {}", set.len(), path.display());
        Ok(Clients {
            path: Some(path.to_path_buf()),
            set: ArcSwap::from_pointee(set),
            entries_required: true,
        })
    }

    /// No clients file: no token is accepted; certificates are, without per-client limits.
    pub fn none() -> Clients {
        Clients {
            path: None,
            set: ArcSwap::from_pointee(ClientSet::default()),
            entries_required: false,
        }
    }

    /// A fixed set (tests, embedding).
    pub fn from_set(set: ClientSet) -> Clients {
        Clients {
            path: None,
            set: ArcSwap::from_pointee(set),
            entries_required: true,
        }
    }

    /// Re-reads the clients file (SIGHUP). On success the new set replaces the old one at once
    /// (calls already admitted keep their `Arc<Client>`); on failure the old set stays and the
    /// error (file and line, never a value) is logged and returned. Without a file, a no-op.
    pub fn reload(&self) -> Result<usize, ClientsError> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        match ClientSet::read(path) {
            Ok(set) => {
                let n = set.len();
                self.set.store(Arc::new(set));
                tracing::info!("clients reloaded from {}: {n} clients", path.display());
                Ok(n)
            }
            Err(e) => {
                tracing::error!(
                    "clients not reloaded: {e}; keeping the {} clients loaded before",
                    self.set.load().len()
                );
                Err(e)
            }
        }
    }

    /// The client whose token has this SHA-256 digest.
    pub fn by_digest(&self, digest: &TokenDigest) -> Option<Arc<Client>> {
        self.set.load().by_digest.get(digest).cloned()
    }

    /// The client registered under `id` (a certificate's identity).
    pub fn by_id(&self, id: &str) -> Option<Arc<Client>> {
        self.set.load().by_id.get(id).cloned()
    }

    /// Whether a certificate needs an entry of its id to identify a client.
    pub fn entries_required(&self) -> bool {
        self.entries_required
    }

    pub fn len(&self) -> usize {
        self.set.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.load().is_empty()
    }
}

/// Why a call was turned away: the `reason` label of `vra_gateway_requests_rejected_total`
/// (never shown to the caller, who gets [`REJECTED_MESSAGE`] whatever the reason).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::parse_bearer;

    const PATH: &str = "clients.toml";

    fn parse(text: &str) -> Result<ClientSet, ClientsError> {
        ClientSet::parse(text, Path::new(PATH))
    }

    fn hex_of(token: &str) -> String {
        to_hex(&digest(token.as_bytes()))
    }

    #[test]
    fn parses_clients_with_and_without_tokens() {
        let text = format!(
            "[[client]]\nid = \"reports-python\"\ntoken_sha256 = \"{}\"\ncloud_calls_per_day = 2000\nmax_cloud_calls = 10\nmax_in_flight = 8\nadmin = true\n\n[[client]]\nid = \"cert.only\"\n",
            hex_of("vra_a").to_uppercase()
        );
        let set = parse(&text).unwrap();
        assert_eq!(set.len(), 2);
        let clients = Clients::from_set(set);
        let a = clients.by_digest(&digest(b"vra_a")).unwrap();
        assert_eq!(
            *a,
            Client {
                id: "reports-python".into(),
                cloud_calls_per_day: Some(2000),
                max_cloud_calls: Some(10),
                max_in_flight: Some(8),
                admin: true,
            }
        );
        assert!(clients.by_digest(&digest(b"vra_b")).is_none());
        assert_eq!(clients.by_id("cert.only").unwrap().max_cloud_calls, None);
        assert!(
            !clients.by_id("cert.only").unwrap().admin,
            "admin only when said"
        );
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_file_and_line_and_never_a_value() {
        let good = hex_of("t1");
        let cases = [
            (
                "[[client]]\nid = \"ok\"\n\n[[client]]\nid = \"bad id\"\n",
                5,
                "invalid client id",
            ),
            (
                "[[client]]\nid = \"a\"\ntoken_sha256 = \"abc\"\n",
                3,
                "64 hex",
            ),
            (
                "[[client]]\nid = \"a\"\ntoken_sha256 = \"zz\"\ntoken = \"vra_secretvalue\"\n",
                4,
                "unknown field",
            ),
            (
                "[[client]]\nid = \"a\"\n[[client]]\nid = \"a\"\n",
                4,
                "duplicate client id",
            ),
            (
                "[[client]]\nid = \"a\"\nmax_cloud_calls = \"vra_secretvalue\"\n",
                3,
                "invalid type",
            ),
            ("[[client]]\nid = \"a\"\nid = \"b\"\n", 3, ""),
            ("[[client]\n", 1, ""),
            (
                "[[client]]\ncloud_calls_per_day = 5\n",
                1,
                "missing field `id`",
            ),
            ("[[client]]\nid = \"a\"\nmax_cloud_calls = -1\n", 3, ""),
            ("[[client]]\nid = \"a\"\nmax_in_flight = 0\n", 3, ""),
        ];
        for (text, line, what) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, Some(line), "{text}: {e}");
            assert!(
                e.to_string().starts_with(&format!("{PATH}:{line}: ")),
                "{e}"
            );
            assert!(e.message.contains(what), "{text}: {e}");
            assert!(!e.to_string().contains("secretvalue"), "{e}");
        }
        let dup = format!(
            "[[client]]\nid = \"a\"\ntoken_sha256 = \"{good}\"\n[[client]]\nid = \"b\"\ntoken_sha256 = \"{good}\"\n"
        );
        let e = parse(&dup).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("duplicate token_sha256"), "{e}");
        assert!(!e.to_string().contains(&good), "{e}");
    }

    #[test]
    fn reload_swaps_a_good_file_and_keeps_the_old_set_on_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("vra-auth-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("clients.toml");
        let entry = |id: &str, token: &str| {
            format!(
                "[[client]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n",
                hex_of(token)
            )
        };
        std::fs::write(&path, entry("a", "ta") + &entry("b", "tb")).unwrap();
        let clients = Clients::load(&path).unwrap();
        assert_eq!(clients.len(), 2);
        std::fs::write(&path, entry("b", "tb")).unwrap();
        assert_eq!(clients.reload(), Ok(1));
        assert!(clients.by_digest(&digest(b"ta")).is_none());
        std::fs::write(&path, "[[client]]\nid = \n").unwrap();
        let e = clients.reload().unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(clients.by_digest(&digest(b"tb")).is_some());
        std::fs::remove_file(&path).unwrap();
        assert!(clients.reload().unwrap_err().line.is_none());
        assert_eq!(clients.len(), 1);
        assert_eq!(Clients::none().reload(), Ok(0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn minted_tokens_are_prefixed_random_and_match_their_block() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
        assert!(parse_bearer(format!("Bearer {a}").as_bytes()).is_some());
        let set = parse(&client_block("x", &a)).unwrap();
        let clients = Clients::from_set(set);
        assert_eq!(clients.by_digest(&digest(a.as_bytes())).unwrap().id, "x");
    }
}
