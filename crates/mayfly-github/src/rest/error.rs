//! Errors of the REST client. Messages name the endpoint and what to do; they never carry a
//! token, a JIT config or a response body beyond GitHub's own `message`.

use reqwest::StatusCode;

use crate::app::AppAuthError;

/// A failed call to GitHub.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("could not reach GitHub at {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GitHub rate-limited {path} for longer than the client waits; try again later")]
    RateLimited { path: String },
    #[error("GitHub refused the credentials for {path} (401): check the App id and private key")]
    Unauthorized { path: String },
    #[error("GitHub forbade {path} (403): {message}")]
    Forbidden { path: String, message: String },
    #[error("{path} was not found (404), or the installation cannot see it")]
    NotFound { path: String },
    #[error("GitHub reported a conflict on {path} (409): {message}")]
    Conflict { path: String, message: String },
    #[error("GitHub refused the request to {path} (422): {message}")]
    Validation { path: String, message: String },
    #[error("GitHub failed on {path} ({status}) after retrying")]
    Server { path: String, status: StatusCode },
    #[error("GitHub answered {path} with unexpected status {status}")]
    Unexpected { path: String, status: StatusCode },
    #[error("GitHub's answer to {path} could not be read")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("a pagination link pointed away from the configured API URL; refusing to follow it")]
    ForeignLink,
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    #[error("the client could not be configured: {0}")]
    Config(String),
    #[error(transparent)]
    AppAuth(#[from] AppAuthError),
}

impl GitHubError {
    /// Whether trying again later could succeed (used by callers that queue retries).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Transport { .. } | Self::RateLimited { .. } | Self::Server { .. }
        )
    }
}
