//! The GitHub REST surface: routes (axum `{param}` templates equal the OpenAPI paths), and the
//! edge every REST answer passes through: injected faults, per-credential rate limits with the
//! five `x-ratelimit-*` headers, `application/json; charset=utf-8`, and exchange recording.
//! Unknown paths and methods answer 404 `<basic-error>`, as GitHub does.

mod actions;
mod app;
pub(crate) mod error;
mod manifest;
mod runners;
mod user;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};

use crate::auth::{self, AuthError};
use crate::faults::{RateLimitKind, RestFaultKind};
use crate::payloads::Links;
use crate::server::{lock, Exchange, Shared};
use crate::state::{Installation, Repo, TokenGrant, World};
pub(crate) use error::RestError;

pub(crate) type AppState = State<Arc<Shared>>;

const RATE_DOCS: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
const JSON_UTF8: &str = "application/json; charset=utf-8";
const CORE: &str = "core";
const REGISTRATION: &str = "actions_runner_registration";
const MANIFEST: &str = "integration_manifest";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(app::routes())
        .merge(runners::routes())
        .merge(actions::routes())
        .merge(user::routes())
        .merge(manifest::routes())
        .route("/rate_limit", get(rate_limit))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), edge))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), record))
        .with_state(shared)
}

async fn not_found() -> RestError {
    RestError::NotFound
}

impl From<AuthError> for RestError {
    fn from(err: AuthError) -> Self {
        Self::Unauthorized(err.to_string())
    }
}

// ---- authentication and scope helpers shared by the handlers ----

pub(crate) fn require_app(
    shared: &Shared,
    headers: &axum::http::HeaderMap,
) -> Result<(), RestError> {
    let registration = shared.registration();
    auth::verify_app_jwt(
        headers,
        &registration.key.0,
        registration.app.id,
        &registration.app.client_id,
        shared.clock.now(),
    )
    .map_err(RestError::from)
}

pub(crate) fn require_token(
    shared: &Shared,
    world: &World,
    headers: &axum::http::HeaderMap,
) -> Result<TokenGrant, RestError> {
    auth::installation_token(headers, world, shared.clock.now()).map_err(RestError::from)
}

/// GitHub's 403 message for a call the token's permissions do not cover.
pub(crate) const NOT_ACCESSIBLE_BY_INTEGRATION: &str = "Resource not accessible by integration";

/// A 403 unless the token holds `permission` at `level` (or above).
pub(crate) fn require_permission(
    grant: &TokenGrant,
    permission: &str,
    level: crate::state::Level,
) -> Result<(), RestError> {
    if grant.allows(permission, level) {
        Ok(())
    } else {
        Err(RestError::Forbidden(NOT_ACCESSIBLE_BY_INTEGRATION))
    }
}

/// The repository, if the token may see it; anything else is a plain 404.
pub(crate) fn visible_repo(
    world: &World,
    grant: &TokenGrant,
    owner: &str,
    name: &str,
) -> Result<Repo, RestError> {
    world
        .find_repo(owner, name)
        .filter(|r| r.installation_id == grant.installation_id)
        .filter(|r| {
            grant
                .repo_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&r.id))
        })
        .cloned()
        .ok_or(RestError::NotFound)
}

/// The organisation installation the token belongs to, if `org` names it.
pub(crate) fn visible_org(
    world: &World,
    grant: &TokenGrant,
    org: &str,
) -> Result<Installation, RestError> {
    world
        .installations
        .get(&grant.installation_id)
        .filter(|i| i.account.login.eq_ignore_ascii_case(org))
        .filter(|i| i.account.kind == crate::state::AccountType::Organization)
        .cloned()
        .ok_or(RestError::NotFound)
}

pub(crate) fn parse_id(raw: &str) -> Result<u64, RestError> {
    raw.parse().map_err(|_| RestError::NotFound)
}

// ---- pagination ----

/// `per_page` (default 30, max 100) and `page` (default 1), with GitHub's `Link` header.
pub(crate) struct Paging {
    page: usize,
    per_page: usize,
}

impl Paging {
    pub(crate) fn from_query(query: &HashMap<String, String>) -> Self {
        let per_page = query
            .get("per_page")
            .and_then(|v| v.parse::<usize>().ok())
            .map(|n| n.clamp(1, 100))
            .unwrap_or(30);
        let page = query
            .get("page")
            .and_then(|v| v.parse::<usize>().ok())
            .map(|n| n.max(1))
            .unwrap_or(1);
        Self { page, per_page }
    }

    /// The requested page of `items` and the `Link` header for the request at `path`.
    pub(crate) fn apply<T>(
        &self,
        items: Vec<T>,
        links: &Links,
        path: &str,
        query: &HashMap<String, String>,
    ) -> (Vec<T>, Option<String>) {
        let total = items.len();
        let last = total.div_ceil(self.per_page).max(1);
        let page: Vec<T> = items
            .into_iter()
            .skip((self.page - 1).saturating_mul(self.per_page))
            .take(self.per_page)
            .collect();
        let url = |n: usize| {
            let mut params: BTreeMap<&str, String> =
                query.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            params.insert("page", n.to_string());
            params.insert("per_page", self.per_page.to_string());
            let qs: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("<{}?{}>", links.at(path), qs.join("&"))
        };
        let mut rels = Vec::new();
        if self.page > 1 {
            rels.push(format!("{}; rel=\"prev\"", url(self.page - 1)));
        }
        if self.page < last {
            rels.push(format!("{}; rel=\"next\"", url(self.page + 1)));
            rels.push(format!("{}; rel=\"last\"", url(last)));
        }
        if self.page > 1 {
            rels.push(format!("{}; rel=\"first\"", url(1)));
        }
        (page, (!rels.is_empty()).then(|| rels.join(", ")))
    }
}

/// A 200 JSON answer with an optional `Link` header.
pub(crate) fn paged(body: Value, link: Option<String>) -> Response {
    let mut response = Json(body).into_response();
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    response
}

// ---- rate limits ----

#[derive(Debug, Clone, Copy)]
struct Window {
    used: u64,
    reset: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct RateState {
    limit: u64,
    used: u64,
    reset: i64,
    resource: &'static str,
}

impl RateState {
    fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

/// Request counts per credential and resource, in hourly windows.
#[derive(Debug, Default)]
pub(crate) struct RateBook {
    windows: HashMap<(String, &'static str), Window>,
}

impl RateBook {
    fn limit(key: &str, resource: &str) -> u64 {
        match (key, resource) {
            ("anonymous", _) => 60,
            (_, REGISTRATION) => 10_000,
            _ => 5_000,
        }
    }

    fn window(&mut self, key: &str, resource: &'static str, now: DateTime<Utc>) -> &mut Window {
        let window = self
            .windows
            .entry((key.to_string(), resource))
            .or_insert(Window {
                used: 0,
                reset: now + TimeDelta::hours(1),
            });
        if window.reset <= now {
            *window = Window {
                used: 0,
                reset: now + TimeDelta::hours(1),
            };
        }
        window
    }

    fn state(&mut self, key: &str, resource: &'static str, now: DateTime<Utc>) -> RateState {
        let limit = Self::limit(key, resource);
        let window = self.window(key, resource, now);
        RateState {
            limit,
            used: window.used,
            reset: window.reset.timestamp(),
            resource,
        }
    }

    /// Counts one request; `Err` when the window is exhausted.
    fn consume(
        &mut self,
        key: &str,
        resource: &'static str,
        now: DateTime<Utc>,
    ) -> Result<RateState, RateState> {
        let state = self.state(key, resource, now);
        if state.remaining() == 0 {
            return Err(state);
        }
        let window = self.window(key, resource, now);
        window.used += 1;
        Ok(RateState {
            used: window.used,
            ..state
        })
    }
}

fn set_rate_headers(response: &mut Response, state: RateState) {
    let headers = response.headers_mut();
    let pairs = [
        ("x-ratelimit-limit", state.limit.to_string()),
        ("x-ratelimit-remaining", state.remaining().to_string()),
        ("x-ratelimit-used", state.used.to_string()),
        ("x-ratelimit-reset", state.reset.to_string()),
        ("x-ratelimit-resource", state.resource.to_string()),
    ];
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

fn rate_limited(status: StatusCode, message: &str, docs: &str) -> Response {
    let body = json!({ "message": message, "documentation_url": docs, "status": status.as_u16().to_string() });
    (status, Json(body)).into_response()
}

/// GET /rate_limit — free, and reports the caller's own buckets.
async fn rate_limit(State(shared): AppState, headers: axum::http::HeaderMap) -> Response {
    let key = auth::rate_key(&headers);
    let now = shared.clock.now();
    let mut book = lock(&shared.rate);
    let mut view = |resource: &'static str| {
        let s = book.state(&key, resource, now);
        json!({ "limit": s.limit, "remaining": s.remaining(), "reset": s.reset, "used": s.used })
    };
    let core = view(CORE);
    let mut resources = serde_json::Map::new();
    for resource in ["search", "graphql", "code_search"] {
        resources.insert(resource.into(), view(CORE).clone());
    }
    resources.insert(CORE.into(), core.clone());
    resources.insert(MANIFEST.into(), view(MANIFEST));
    resources.insert(REGISTRATION.into(), view(REGISTRATION));
    Json(json!({ "resources": resources, "rate": core })).into_response()
}

// ---- the edge: faults, rate limits, headers ----

async fn edge(State(shared): AppState, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let plan = lock(&shared.faults).plan(&path);
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    let now = shared.clock.now();
    let key = auth::rate_key(request.headers());
    let resource = if path.ends_with("/generate-jitconfig") {
        REGISTRATION
    } else if path.starts_with("/app-manifests/") {
        MANIFEST
    } else {
        CORE
    };
    let mut response = match plan.answer {
        Some(RestFaultKind::ServerError { status } | RestFaultKind::Refusal { status }) => {
            let state = lock(&shared.rate).state(&key, resource, now);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = status.canonical_reason().unwrap_or("Server Error");
            let mut response = (status, Json(error::basic_error(status, message))).into_response();
            set_rate_headers(&mut response, state);
            response
        }
        Some(RestFaultKind::RateLimit { status, limit }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            let mut state = lock(&shared.rate).state(&key, resource, now);
            match limit {
                RateLimitKind::Primary { reset_in_s } => {
                    state.used = state.limit;
                    state.reset =
                        now.timestamp() + i64::try_from(reset_in_s).unwrap_or(i64::MAX / 2);
                    let mut response = rate_limited(
                        status,
                        "API rate limit exceeded for installation.",
                        RATE_DOCS,
                    );
                    set_rate_headers(&mut response, state);
                    response
                }
                RateLimitKind::Secondary { retry_after_s } => {
                    let mut response = rate_limited(
                        status,
                        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                        "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
                    );
                    set_rate_headers(&mut response, state);
                    if let Ok(value) = HeaderValue::from_str(&retry_after_s.to_string()) {
                        response.headers_mut().insert(header::RETRY_AFTER, value);
                    }
                    response
                }
            }
        }
        Some(RestFaultKind::Slow { .. }) | None => {
            let counted = if path == "/rate_limit" {
                Ok(lock(&shared.rate).state(&key, resource, now))
            } else {
                lock(&shared.rate).consume(&key, resource, now)
            };
            match counted {
                Ok(state) => {
                    let mut response = next.run(request).await;
                    set_rate_headers(&mut response, state);
                    response
                }
                Err(state) => {
                    let mut response = rate_limited(
                        StatusCode::FORBIDDEN,
                        "API rate limit exceeded for installation.",
                        RATE_DOCS,
                    );
                    set_rate_headers(&mut response, state);
                    response
                }
            }
        }
    };
    let status = response.status();
    if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    }
    response
}

/// Request bodies beyond this are not recorded (the REST API's are small JSON objects).
const MAX_RECORDED_REQUEST: usize = 1 << 20;

async fn record(State(shared): AppState, request: Request, next: Next) -> Response {
    let Some(exchanges) = shared.exchanges.as_ref() else {
        return next.run(request).await;
    };
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let (request_parts, request_body) = request.into_parts();
    let request_body = axum::body::to_bytes(request_body, MAX_RECORDED_REQUEST)
        .await
        .unwrap_or_default();
    let request = Request::from_parts(request_parts, Body::from(request_body.clone()));
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    lock(exchanges).push(Exchange {
        method,
        path,
        query,
        route,
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: bytes.to_vec(),
        request_body: request_body.to_vec(),
    });
    Response::from_parts(parts, Body::from(bytes))
}
