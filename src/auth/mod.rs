//! Client identity: who is calling, proven by a bearer token or a client certificate.
//!
//! - [`Clients`]: the entries of `VRA_CLIENTS_FILE`, looked up by the SHA-256 digest of a
//!   bearer token (the file stores digests only, and a digest lookup compares nothing that
//!   depends on the secret itself) or by id (a verified client certificate). The set is
//!   swapped atomically by [`Clients::reload`] on SIGHUP: a call holds the `Arc<Client>` it
//!   was admitted with, so a reload never disturbs a call in flight, and a file that does not
//!   parse keeps the clients already loaded.
//! - [`AuthLayer`]: the edge layer that admits a call (inserting its `Arc<Client>` into the
//!   request's extensions) or answers `UNAUTHENTICATED` itself, with one fixed message that
//!   never says which part was wrong. The health service needs no credentials.
//! - [`parse_bearer`]: the `authorization` header parser, strict and bounded.
//!
//! Nothing secret leaves this module: a token is hashed and dropped, never logged, never in
//! a status, never in an error (file errors name a file, a line and a field, not a value).
//!
//! `clients` holds the identities and their file; `layer` the edge layer and the header parser.

mod clients;
mod layer;

pub use clients::*;
pub use layer::*;
