//! TLS of the gRPC listener (and mTLS client identities) and of upstream HTTPS.
//!
//! (Skeleton: implemented by the TLS work of issue 10.)

/// The client id proven by a verified client certificate of this connection (mTLS): the
/// certificate's first DNS SAN, else its CN. `None` without a verified certificate.
pub fn peer_client_id(_extensions: &http::Extensions) -> Option<String> {
    None
}
