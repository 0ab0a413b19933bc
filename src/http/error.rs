//! The HTTP door's error type and its single mapping to an answer: a status and OpenAI's error
//! body `{"error": {"message", "type", "param", "code"}}`, so that every OpenAI client raises
//! the exception it would raise against OpenAI (`BadRequestError`, `RateLimitError`, …).
//!
//! A pipeline error ([`GatewayError`]) keeps its message, as over gRPC; an invalid field is
//! named by what the caller set over HTTP (the header, `metadata` key or body field, see
//! [`Sources::param`]).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::Serialize;

use super::request::{Refused, Sources};

use crate::error::GatewayError;

/// Why a request to the HTTP door failed.
#[derive(Debug)]
pub enum ApiError {
    /// The pipeline (or its admission) refused or failed the call.
    Gateway(GatewayError, Sources),
    /// The request asks for something the door refuses before the pipeline sees it.
    Refused(Refused),
    /// The body is not a chat completion request (not JSON, a field of the wrong type).
    Body(String),
    /// The body is larger than the door reads.
    TooLarge(usize),
    /// A model that no configured tier sends.
    ModelNotFound(String),
    /// No credentials, or credentials no client has.
    Unauthorized,
    /// No such route.
    NotFound(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

/// The parts of an error answer.
struct Parts {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    param: Option<String>,
    message: String,
    retry_after: Option<u32>,
}

impl ApiError {
    fn parts(&self) -> Parts {
        let simple = |status, kind, code: Option<&'static str>, message: String| Parts {
            status,
            kind,
            code,
            param: None,
            message,
            retry_after: None,
        };
        match self {
            ApiError::Refused(r) => Parts {
                param: Some(r.param.clone()),
                ..simple(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("unsupported_parameter"),
                    format!("{}: {}", r.param, r.message),
                )
            },
            ApiError::Body(message) => simple(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                format!("the body is not a chat completion request: {message}"),
            ),
            ApiError::TooLarge(limit) => simple(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
                format!(
                    "the body is larger than {limit} bytes (4 x VRA_MAX_PROMPT_BYTES + 1 MiB, at least 16 MiB)"
                ),
            ),
            ApiError::ModelNotFound(model) => Parts {
                param: Some("model".into()),
                ..simple(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("model_not_found"),
                    format!(
                        "the model `{}` is not served here; use vra-auto or a model of GET /v1/models",
                        crate::domain::Untrusted(model)
                    ),
                )
            },
            ApiError::Unauthorized => simple(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                crate::auth::REJECTED_MESSAGE.to_string(),
            ),
            ApiError::NotFound(route) => simple(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("unknown_url"),
                format!("no such route: {}", crate::domain::Untrusted(route)),
            ),
            ApiError::Gateway(e, sources) => gateway(e, sources),
        }
    }

    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.parts().status
    }

    /// OpenAI's error body of this error: for an SSE `error` event after a stream began.
    pub fn body(&self) -> Vec<u8> {
        let p = self.parts();
        body(&p)
    }
}

fn body(p: &Parts) -> Vec<u8> {
    serde_json::to_vec(&Body {
        error: Detail {
            message: &p.message,
            kind: p.kind,
            param: p.param.as_deref(),
            code: p.code,
        },
    })
    .unwrap_or_default()
}

/// The one mapping of a pipeline error to an HTTP answer.
fn gateway(e: &GatewayError, sources: &Sources) -> Parts {
    let (status, kind, code, retry_after) = match e {
        GatewayError::InvalidArgument { .. } => {
            (StatusCode::BAD_REQUEST, "invalid_request_error", None, None)
        }
        GatewayError::Overloaded(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            Some("rate_limit_exceeded"),
            Some(1),
        ),
        GatewayError::BudgetExhausted { .. } | GatewayError::ClientQuotaExhausted { .. } => (
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            Some("insufficient_quota"),
            None,
        ),
        GatewayError::QueueFull { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("overloaded"),
            Some(1),
        ),
        GatewayError::AllProvidersFailed(_) => (
            StatusCode::BAD_GATEWAY,
            "server_error",
            Some("upstream_error"),
            None,
        ),
        GatewayError::StreamAborted(_) => (
            StatusCode::BAD_GATEWAY,
            "server_error",
            Some("stream_aborted"),
            None,
        ),
        GatewayError::Ledger(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("ledger_unavailable"),
            None,
        ),
        // 404 as on gRPC (NOT_FOUND), not RFC 9111's 504: the OpenAI client libraries retry
        // every 5xx, and a miss asked again is a miss again.
        GatewayError::NotCached => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("not_cached"),
            None,
        ),
        GatewayError::PermissionDenied { .. } => (
            StatusCode::FORBIDDEN,
            "permission_error",
            Some("permission_denied"),
            None,
        ),
        GatewayError::NoCache => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("no_cache"),
            None,
        ),
        GatewayError::CacheStore(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("cache_unavailable"),
            None,
        ),
        GatewayError::DeadlineExceeded => (
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            Some("timeout"),
            None,
        ),
        GatewayError::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            None,
        ),
    };
    let (param, message) = match e {
        GatewayError::InvalidArgument { field, reason } => {
            let param = sources.param(field);
            let message = format!("{param}: {reason}");
            (Some(param), message)
        }
        other => (None, other.to_string()),
    };
    Parts {
        status,
        kind,
        code,
        param,
        message,
        retry_after,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let p = self.parts();
        let mut response = (
            p.status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body(&p),
        )
            .into_response();
        if let Some(secs) = p.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Shed;
    use crate::http::request::Source;

    fn answer(e: ApiError) -> (StatusCode, serde_json::Value, Option<String>) {
        let response = e.into_response();
        let retry = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let status = response.status();
        let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            response.into_body(),
            1 << 20,
        ))
        .unwrap()
        .unwrap();
        (status, serde_json::from_slice(&body).unwrap(), retry)
    }

    #[test]
    fn an_invalid_field_is_named_as_the_caller_set_it() {
        let sources = Sources {
            phase: Source::Metadata,
            ..Sources::default()
        };
        let (status, v, _) = answer(ApiError::Gateway(
            GatewayError::invalid("phase", "must be set"),
            sources,
        ));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "metadata.vra_phase");
        assert_eq!(v["error"]["message"], "metadata.vra_phase: must be set");
        let (_, v, _) = answer(ApiError::Gateway(
            GatewayError::invalid("report_id", "must not be empty"),
            Sources::default(),
        ));
        assert_eq!(v["error"]["param"], "x-vra-report-id");
    }

    #[test]
    fn statuses_follow_openais_conventions() {
        let cases = [
            (ApiError::Unauthorized, 401, "invalid_api_key", None),
            (
                ApiError::Gateway(GatewayError::Overloaded(Shed::Gateway), Sources::default()),
                429,
                "rate_limit_exceeded",
                Some("1"),
            ),
            (
                ApiError::Gateway(
                    GatewayError::ClientQuotaExhausted {
                        used: 2,
                        limit: 2,
                        provider: "x".into(),
                    },
                    Sources::default(),
                ),
                429,
                "insufficient_quota",
                None,
            ),
            (
                ApiError::Gateway(GatewayError::DeadlineExceeded, Sources::default()),
                504,
                "timeout",
                None,
            ),
            (
                ApiError::Gateway(
                    GatewayError::AllProvidersFailed(Vec::new()),
                    Sources::default(),
                ),
                502,
                "upstream_error",
                None,
            ),
            (
                ApiError::ModelNotFound("gpt-9".into()),
                400,
                "model_not_found",
                None,
            ),
            (ApiError::TooLarge(10), 413, "request_too_large", None),
        ];
        for (error, status, code, retry) in cases {
            let (s, v, r) = answer(error);
            assert_eq!(s.as_u16(), status, "{v}");
            assert_eq!(v["error"]["code"], code, "{v}");
            assert_eq!(r.as_deref(), retry, "{v}");
        }
    }
}
