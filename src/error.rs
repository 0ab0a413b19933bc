//! The gateway's error type and its single mapping to `tonic::Status`.
//!
//! Everything a call can fail with is a [`GatewayError`]; [`GatewayError::into_status`] is the
//! only place that decides gRPC codes. Messages name the field or the upstream failure, never
//! an API key or prompt text.
//!
//! Besides the code and the message, every status carries machine-readable trailers for
//! clients (the SDKs in `clients/` choose their exception class from them):
//! `vra-error` is the error's kind ([`GatewayError::outcome`], e.g. `resource_exhausted` for a
//! spent report budget, `overloaded` for shed load) and, for INVALID_ARGUMENT,
//! `vra-error-field` names the field.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::budget::LedgerError;
use crate::domain::{ProviderFailure, Shed, Untrusted};

/// Why a gateway call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The request is invalid; `field` names the offending field.
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// The cloud budget is spent and the provider that would serve the call is cloud tier.
    #[error(
        "cloud budget of report exhausted ({used}/{limit} cloud calls) and the secondary provider `{provider}` is cloud tier"
    )]
    BudgetExhausted {
        used: u32,
        limit: u32,
        provider: String,
    },

    /// The client's cloud quota for the day is spent and the provider that would serve the
    /// call is cloud tier.
    #[error(
        "cloud quota of client exhausted for today ({used}/{limit} cloud calls, UTC day) and the secondary provider `{provider}` is cloud tier"
    )]
    ClientQuotaExhausted {
        used: u32,
        limit: u32,
        provider: String,
    },

    /// Shed before any work: too many calls in flight, in all or for this client.
    #[error("{}", match .0 {
        Shed::Gateway => "gateway overloaded: too many calls in flight (VRA_MAX_IN_FLIGHT); retry later",
        Shed::Client => "too many calls in flight for this client (its max_in_flight); retry later",
    })]
    Overloaded(Shed),

    /// Every endpoint of the secondary was at its `max_in_flight` and its queue was full.
    #[error(
        "secondary provider `{provider}` is saturated: every endpoint is at its max_in_flight and {max_queue} calls are already queued; retry later"
    )]
    QueueFull { provider: String, max_queue: usize },

    /// Every provider that was tried failed; all of their errors, in order.
    #[error("all providers failed: {}", join(.0))]
    AllProvidersFailed(Vec<ProviderFailure>),

    /// The upstream broke after the first delta was sent; the stream cannot be resumed.
    #[error("stream aborted after partial output: {}", Untrusted(.0))]
    StreamAborted(String),

    /// The ledger is needed (to budget a cloud call, or to answer a query) but unreachable.
    #[error("{}", Untrusted(&.0.to_string()))]
    Ledger(#[from] LedgerError),

    /// `ONLY_IF_CACHED`, and the response cache holds no answer to the request (or the gateway
    /// runs without a cache). Nothing was sent upstream.
    #[error(
        "no cached answer to this request (cache mode ONLY_IF_CACHED); nothing was sent upstream"
    )]
    NotCached,

    /// An admin RPC called by a client without `admin = true`.
    #[error("{what} needs an admin client (admin = true in the clients file)")]
    PermissionDenied { what: &'static str },

    /// A cache operation on a gateway that runs without a cache.
    #[error("the gateway runs without a response cache (VRA_CACHE=off)")]
    NoCache,

    /// The cache store could not do an admin operation (a purge).
    #[error("{}", Untrusted(.0))]
    CacheStore(String),

    /// The caller's deadline passed; the upstream request (if any) was dropped.
    #[error("deadline exceeded; the upstream request was dropped")]
    DeadlineExceeded,

    /// A bug: the request's task panicked. Logged and counted where it is caught; the caller
    /// only learns that it happened.
    #[error("internal error")]
    Internal,
}

fn join(failures: &[ProviderFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Trailer naming the error's kind ([`GatewayError::outcome`]).
pub const ERROR_KIND: &str = "vra-error";
/// Trailer naming the invalid field of an INVALID_ARGUMENT.
pub const ERROR_FIELD: &str = "vra-error-field";

impl GatewayError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        GatewayError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            GatewayError::InvalidArgument { .. } => Code::InvalidArgument,
            GatewayError::BudgetExhausted { .. } => Code::ResourceExhausted,
            GatewayError::ClientQuotaExhausted { .. } => Code::ResourceExhausted,
            GatewayError::Overloaded(_) => Code::ResourceExhausted,
            GatewayError::QueueFull { .. } => Code::ResourceExhausted,
            GatewayError::AllProvidersFailed(_) => Code::Unavailable,
            GatewayError::StreamAborted(_) => Code::Unavailable,
            GatewayError::Ledger(_) => Code::Unavailable,
            GatewayError::NotCached => Code::NotFound,
            GatewayError::PermissionDenied { .. } => Code::PermissionDenied,
            GatewayError::NoCache => Code::FailedPrecondition,
            GatewayError::CacheStore(_) => Code::Unavailable,
            GatewayError::DeadlineExceeded => Code::DeadlineExceeded,
            GatewayError::Internal => Code::Internal,
        }
    }

    /// The one mapping to the wire: code, message and the `vra-error` trailers.
    pub fn into_status(self) -> Status {
        let mut trailers = MetadataMap::new();
        trailers.insert(ERROR_KIND, MetadataValue::from_static(self.outcome()));
        if let GatewayError::InvalidArgument { field, .. } = &self {
            trailers.insert(ERROR_FIELD, MetadataValue::from_static(field));
        }
        Status::with_metadata(self.code(), self.to_string(), trailers)
    }

    /// Short outcome label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            GatewayError::InvalidArgument { .. } => "invalid_argument",
            GatewayError::BudgetExhausted { .. } => "resource_exhausted",
            GatewayError::ClientQuotaExhausted { .. } => "client_quota_exhausted",
            GatewayError::Overloaded(_) => "overloaded",
            GatewayError::QueueFull { .. } => "queue_full",
            GatewayError::AllProvidersFailed(_) => "unavailable",
            GatewayError::StreamAborted(_) => "stream_aborted",
            GatewayError::Ledger(_) => "ledger_unavailable",
            GatewayError::NotCached => "not_cached",
            GatewayError::PermissionDenied { .. } => "permission_denied",
            GatewayError::NoCache => "no_cache",
            GatewayError::CacheStore(_) => "cache_unavailable",
            GatewayError::DeadlineExceeded => "deadline_exceeded",
            GatewayError::Internal => "internal",
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Self {
        e.into_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_contract() {
        assert_eq!(
            GatewayError::invalid("prompt", "must not be empty")
                .into_status()
                .code(),
            Code::InvalidArgument
        );
        let s = GatewayError::invalid("report_id", "must not be empty").into_status();
        assert!(s.message().starts_with("report_id"));
        assert_eq!(s.metadata().get(ERROR_KIND).unwrap(), "invalid_argument");
        assert_eq!(s.metadata().get(ERROR_FIELD).unwrap(), "report_id");
        let e = GatewayError::BudgetExhausted {
            used: 15,
            limit: 15,
            provider: "openai".into(),
        };
        let s = e.into_status();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get(ERROR_KIND).unwrap(), "resource_exhausted");
        assert!(s.metadata().get(ERROR_FIELD).is_none());
        let shed = GatewayError::Overloaded(Shed::Gateway).into_status();
        assert_eq!(shed.metadata().get(ERROR_KIND).unwrap(), "overloaded");
        let both = GatewayError::AllProvidersFailed(vec![
            ProviderFailure {
                tier: "PRIMARY",
                provider: "openai".into(),
                error: "HTTP 500".into(),
            },
            ProviderFailure {
                tier: "SECONDARY",
                provider: "local".into(),
                error: "connect error: refused".into(),
            },
        ]);
        let s = both.into_status();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(
            s.message().contains("PRIMARY openai: HTTP 500")
                && s.message().contains("SECONDARY local: connect error")
        );
        assert_eq!(
            GatewayError::DeadlineExceeded.into_status().code(),
            Code::DeadlineExceeded
        );
    }
}
