//! The one place where REST failures become GitHub's status codes and error bodies
//! (`<basic-error>`, `<validation-error-simple>`, `<validation-error>`). 401s say nothing beyond
//! GitHub's own fixed messages.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::state::StateError;

pub(crate) const DOCS: &str = "https://docs.github.com/rest";

#[derive(Debug, thiserror::Error)]
pub(crate) enum RestError {
    #[error("{0}")]
    Unauthorized(String),
    /// 403 with GitHub's fixed message (e.g. "Resource not accessible by integration").
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("Not Found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// 422 `validation_failed_simple`.
    #[error("Invalid request")]
    InvalidRequest(Vec<String>),
    /// 422 with a plain message (shape of `<validation-error>` and `<basic-error>` alike).
    #[error("{0}")]
    Unprocessable(String),
    #[error("Problems parsing JSON")]
    BadJson,
    #[error("Server Error")]
    Internal,
}

pub(crate) fn basic_error(status: StatusCode, message: &str) -> Value {
    json!({
        "message": message,
        "documentation_url": DOCS,
        "status": status.as_u16().to_string(),
    })
}

impl RestError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::InvalidRequest(_) | Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadJson => StatusCode::BAD_REQUEST,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            Self::InvalidRequest(errors) => json!({
                "message": format!("Invalid request.\n\n{}", errors.join("\n")),
                "documentation_url": DOCS,
                "errors": errors,
                "status": "422",
            }),
            other => basic_error(status, &other.to_string()),
        };
        (status, axum::Json(body)).into_response()
    }
}

impl From<StateError> for RestError {
    fn from(err: StateError) -> Self {
        match err {
            StateError::NotFound => Self::NotFound,
            StateError::Conflict(msg) => Self::Conflict(msg),
            StateError::Invalid(msg) => Self::InvalidRequest(vec![msg]),
        }
    }
}
