//! The one place where errors become HTTP answers. Each answer carries a stable `code` and a
//! safe message; 401 says nothing more. Details go to the (rate-limited) log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Everything a handler can refuse a request with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unauthorized")]
    Unauthorized,
    #[error("the request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    BadRequest(&'static str),
    /// A refusal whose message names the caller's own input (never another tenant's data).
    #[error("{0}")]
    Invalid(String),
    #[error("the payload is not a valid {0} event")]
    BadPayload(&'static str),
    #[error("the store is unavailable; retry later")]
    Unavailable,
    #[error("this token may not see that")]
    Forbidden,
    #[error("no such resource")]
    NotFound,
    #[error("too many refused requests from this address; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::BadRequest(_) | Self::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::BadPayload(_) => (StatusCode::BAD_REQUEST, "bad_payload"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = if status == StatusCode::UNAUTHORIZED {
            json!({ "code": code })
        } else {
            json!({ "code": code, "message": self.to_string() })
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

/// An error with its chain of causes, for log lines (`a: b: c`).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
