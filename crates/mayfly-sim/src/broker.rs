//! The stand-in for GitHub's Actions service that JIT runners talk to. A runner proves itself with
//! a JWT client assertion signed by the key from its JIT config (OAuth client credentials), gets
//! an access token, acquires at most ONE queued job whose labels it covers, and completes it;
//! then the runner is removed and its credential is spent (every later call is 401).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use chrono::TimeDelta;
use jsonwebtoken::{Algorithm, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::events;
use crate::server::Shared;
use crate::state::{Conclusion, JobStep, StateError};

/// Access tokens for the broker live an hour.
const ACCESS_TOKEN_TTL_S: i64 = 3600;
/// Longest client assertion accepted (`exp - now`), plus clock skew.
const MAX_ASSERTION_S: i64 = 300 + 60;
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    #[error("unsupported_grant_type")]
    GrantType,
    #[error("invalid_client")]
    InvalidClient,
    #[error("the runner credential is not valid")]
    Unauthorized,
    #[error("this runner has already taken its one job")]
    AlreadyAssigned,
    #[error("no such job for this runner")]
    UnknownJob,
    #[error("the request body is not valid")]
    BadRequest,
}

impl IntoResponse for BrokerError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Self::GrantType => (
                StatusCode::BAD_REQUEST,
                json!({ "error": self.to_string() }),
            ),
            Self::InvalidClient => (
                StatusCode::UNAUTHORIZED,
                json!({ "error": self.to_string() }),
            ),
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                json!({ "message": self.to_string() }),
            ),
            Self::AlreadyAssigned => (StatusCode::CONFLICT, json!({ "message": self.to_string() })),
            Self::UnknownJob => (
                StatusCode::NOT_FOUND,
                json!({ "message": self.to_string() }),
            ),
            Self::BadRequest => (
                StatusCode::BAD_REQUEST,
                json!({ "message": self.to_string() }),
            ),
        };
        (status, Json(body)).into_response()
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_sim/runner/token", post(token))
        .route("/_sim/broker/acquire", post(acquire))
        .route("/_sim/broker/jobs/{job_id}/complete", post(complete))
        .route("/_sim/broker/jobs/{job_id}/renew", post(renew))
        .with_state(shared)
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    grant_type: String,
    client_assertion_type: String,
    client_assertion: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: i64,
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Form(form): Form<TokenForm>,
) -> Result<Response, BrokerError> {
    if form.grant_type != "client_credentials" || form.client_assertion_type != ASSERTION_TYPE {
        return Err(BrokerError::GrantType);
    }
    // Read the claimed client id first (unverified), then verify with that runner's key.
    let mut peek = Validation::new(Algorithm::RS256);
    peek.insecure_disable_signature_validation();
    peek.validate_exp = false;
    peek.validate_aud = false;
    peek.required_spec_claims = HashSet::new();
    let claimed = jsonwebtoken::decode::<AssertionClaims>(
        &form.client_assertion,
        &jsonwebtoken::DecodingKey::from_secret(&[]),
        &peek,
    )
    .map_err(|_| BrokerError::InvalidClient)?
    .claims;
    let now = shared.clock.now();
    let mut world = shared.world();
    let runner = world
        .runner_by_client_id(&claimed.iss)
        .ok_or(BrokerError::InvalidClient)?;
    let key =
        crate::keys::decoding_key(&runner.public_key).map_err(|_| BrokerError::InvalidClient)?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[shared.links.at("_sim/runner/token")]);
    validation.set_issuer(&[runner.client_id.as_str()]);
    validation.sub = Some(runner.client_id.clone());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<AssertionClaims>(&form.client_assertion, &key, &validation)
        .map_err(|_| BrokerError::InvalidClient)?
        .claims;
    let now_s = now.timestamp();
    if claims.exp <= now_s || claims.exp > now_s + MAX_ASSERTION_S || claims.sub != claims.iss {
        return Err(BrokerError::InvalidClient);
    }
    let runner_id = runner.id;
    let access = world.issue_runner_token(runner_id, now + TimeDelta::seconds(ACCESS_TOKEN_TTL_S));
    let body = TokenResponse {
        access_token: access.expose_secret().to_string(),
        token_type: "bearer".into(),
        expires_in: ACCESS_TOKEN_TTL_S as u64,
    };
    Ok(Json(body).into_response())
}

fn bearer(headers: &HeaderMap) -> Result<&str, BrokerError> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or(BrokerError::Unauthorized)
}

/// The job a runner acquired, as the broker hands it out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AcquiredJob {
    pub job_id: u64,
    pub run_id: u64,
    /// `owner/name`.
    pub repository: String,
    /// The job's name (`build`).
    pub name: String,
    pub labels: Vec<String>,
    /// The `run:` steps, in order.
    pub steps: Vec<JobStep>,
    /// The job's env, with `GITHUB_SERVER_URL`: the simulator's base URL as the runner reached
    /// it (that of its JIT config), without a trailing slash.
    pub env: BTreeMap<String, String>,
}

async fn acquire(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, BrokerError> {
    let token = bearer(&headers)?;
    let now = shared.clock.now();
    let mut world = shared.world();
    let runner_id = world
        .runner_for_token(token, now)
        .ok_or(BrokerError::Unauthorized)?
        .id;
    let job = match world.acquire(runner_id, now) {
        Ok(Some(job)) => job,
        Ok(None) => return Ok(StatusCode::NO_CONTENT.into_response()),
        Err(StateError::Conflict(_)) => return Err(BrokerError::AlreadyAssigned),
        Err(_) => return Err(BrokerError::Unauthorized),
    };
    events::workflow_job(&shared, &world, &job);
    let repository = world
        .repos
        .get(&job.repo_id)
        .map(|r| r.full_name())
        .unwrap_or_default();
    // As GitHub's default variables, it wins over the job's own env; without the trailing slash,
    // as GitHub's `https://github.com`, so `$GITHUB_SERVER_URL/$GITHUB_REPOSITORY.git` clones.
    let mut env = job.env;
    env.insert(
        "GITHUB_SERVER_URL".into(),
        shared.base_url.as_str().trim_end_matches('/').to_owned(),
    );
    let body = AcquiredJob {
        job_id: job.id,
        run_id: job.run_id,
        repository,
        name: job.name,
        labels: job.labels,
        steps: job.steps,
        env,
    };
    Ok(Json(body).into_response())
}

/// The runner renews its job's lock (actions/runner does every minute); a runner that stops
/// renewing loses its job after the simulator's `runner_timeout`.
async fn renew(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
) -> Result<Response, BrokerError> {
    let token = bearer(&headers)?;
    let job_id: u64 = job_id.parse().map_err(|_| BrokerError::UnknownJob)?;
    let now = shared.clock.now();
    let mut world = shared.world();
    let runner_id = world
        .runner_for_token(token, now)
        .ok_or(BrokerError::Unauthorized)?
        .id;
    world
        .renew(runner_id, job_id, now)
        .map_err(|_| BrokerError::UnknownJob)?;
    Ok(
        Json(json!({ "job_id": job_id, "locked_until": now + chrono::Duration::minutes(10) }))
            .into_response(),
    )
}

/// Every second: jobs whose runner went silent for longer than `runner_timeout` fail.
pub(crate) async fn fail_lost_runners(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let timeout = chrono::Duration::from_std(*crate::server::lock(&shared.runner_timeout))
            .unwrap_or(chrono::Duration::MAX);
        let now = shared.clock.now();
        let world = &mut shared.world();
        for job in world.fail_lost_runners(now, timeout) {
            tracing::warn!(job = job.id, "a runner lost communication: its job failed");
            events::workflow_job(&shared, world, &job);
        }
    }
}

#[derive(Debug, Deserialize)]
struct CompleteBody {
    conclusion: Conclusion,
    #[serde(default)]
    output: Option<String>,
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(job_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, BrokerError> {
    let token = bearer(&headers)?;
    let job_id: u64 = job_id.parse().map_err(|_| BrokerError::UnknownJob)?;
    let body: CompleteBody = serde_json::from_slice(&body).map_err(|_| BrokerError::BadRequest)?;
    let now = shared.clock.now();
    let mut world = shared.world();
    let runner_id = world
        .runner_for_token(token, now)
        .ok_or(BrokerError::Unauthorized)?
        .id;
    let job = world
        .complete(runner_id, job_id, body.conclusion, body.output, now)
        .map_err(|_| BrokerError::UnknownJob)?;
    events::workflow_job(&shared, &world, &job);
    let status: Value =
        json!({ "job_id": job.id, "status": job.status, "conclusion": job.conclusion });
    Ok(Json(status).into_response())
}
