//! The usage dashboard at `/dashboard`: server-rendered pages (maud) with SVG charts, no script.
//!
//! Sign-in: a customer signs in with GitHub through the App's OAuth web flow
//! (`/login/oauth/authorize` → `/dashboard/callback` → `/login/oauth/access_token`), and
//! `GET /user/installations` decides which installations (tenants) the session may see; the
//! token is used once and dropped. An operator signs in by pasting an admin token and sees every
//! tenant. The session is a signed cookie (`__Host-mayfly_session`: `Secure`, `HttpOnly`,
//! `SameSite=Lax`, HMAC-SHA256 under a key sealed in the store, so several servers share it)
//! carrying who signed in, what they may see and when it expires; the OAuth `state` is a random
//! value held in a second signed cookie for ten minutes and checked once. Sign-ins, sign-outs
//! and every page or export served are in the audit log.

mod charts;
mod page;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use cookie::{Cookie, CookieJar, Key, SameSite};
use mayfly_github::{OAuthApp, OAuthError};
use serde::{Deserialize, Serialize};

use crate::refusals::Route;
use crate::usage::{self, ReportParams, Visible};
use crate::AppState;

const SESSION: &str = "__Host-mayfly_session";
const STATE: &str = "__Host-mayfly_oauth";
const STATE_TTL_SECS: i64 = 600;
/// Where the sealed session key lives.
const SEALED_KIND: &str = "dashboard";

/// The dashboard's part of the server state.
#[derive(Debug)]
pub struct Dashboard {
    oauth: OAuthApp,
    callback: url::Url,
    key: Key,
    session_ttl: chrono::Duration,
}

/// Why the dashboard could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("[dashboard] client_secret_file: {0}")]
    Secret(#[source] crate::ConfigError),
    #[error("[dashboard] {0}")]
    Config(String),
    #[error("the dashboard's session key could not be read or made")]
    Key(#[source] mayfly_store::SealError),
}

impl Dashboard {
    /// Reads the client secret, builds the OAuth client and loads (or makes) the session key.
    pub(crate) async fn load(
        config: &crate::config::DashboardConfig,
        github: &crate::GitHubConfig,
        store: &dyn mayfly_store::Store,
        sealer: &mayfly_store::Sealer,
    ) -> Result<Self, DashboardError> {
        let (client_id, client_secret) = match (&config.client_id, &config.client_secret_file) {
            (Some(id), Some(file)) => {
                let secret = zeroize::Zeroizing::new(
                    crate::read_secret_file(file).map_err(DashboardError::Secret)?,
                );
                (
                    id.clone(),
                    mayfly_github::OAuthClientSecret::new(
                        String::from_utf8_lossy(&secret).trim().to_owned(),
                    ),
                )
            }
            _ => {
                let app = crate::github_app::StoredApp::load(sealer, store)
                    .await
                    .map_err(|e| DashboardError::Config(e.to_string()))?
                    .ok_or_else(|| {
                        DashboardError::Config(
                            "no client_id and client_secret_file, and no App stored by `mayfly github app create`".into(),
                        )
                    })?;
                (app.client_id.clone(), app.client_secret())
            }
        };
        let parse = |what: &str, u: &str| {
            url::Url::parse(u).map_err(|e| DashboardError::Config(format!("{what}: {e}")))
        };
        let public = parse("public_url", &config.public_url)?;
        let callback = public
            .join("/dashboard/callback")
            .map_err(|e| DashboardError::Config(format!("public_url: {e}")))?;
        let mut oauth = mayfly_github::OAuthAppConfig::new(
            client_id,
            client_secret,
            parse("github_url", &config.github_url)?,
            parse("[github] api_url", &github.api_url)?,
        );
        if let Some(ca) = &github.ca_file {
            oauth.extra_root_pem = Some(std::fs::read(ca).map_err(|e| {
                DashboardError::Config(format!("[github] ca_file {}: {e}", ca.display()))
            })?);
        }
        let oauth =
            OAuthApp::new(oauth).map_err(|e| DashboardError::Config(format!("GitHub: {e}")))?;
        let key = match sealer
            .open(store, SEALED_KIND, "session-key")
            .await
            .map_err(DashboardError::Key)?
        {
            Some(bytes) if bytes.len() == 64 => Key::from(&bytes),
            _ => {
                let mut bytes = zeroize::Zeroizing::new([0_u8; 64]);
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut());
                sealer
                    .seal(store, SEALED_KIND, "session-key", bytes.as_ref())
                    .await
                    .map_err(DashboardError::Key)?;
                // Of two servers starting at once, the later write wins; read back what won.
                match sealer
                    .open(store, SEALED_KIND, "session-key")
                    .await
                    .map_err(DashboardError::Key)?
                {
                    Some(stored) if stored.len() == 64 => Key::from(&stored),
                    _ => Key::from(bytes.as_ref()),
                }
            }
        };
        Ok(Self {
            oauth,
            callback,
            key,
            session_ttl: chrono::Duration::hours(i64::from(config.session_hours)),
        })
    }
}

/// Who is signed in, as carried in the session cookie.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    /// `github:<login>` or `operator:<token id>`.
    who: String,
    /// The installations a GitHub user may see (ignored for an operator).
    installations: Vec<(i64, String)>,
    operator: bool,
    expires: DateTime<Utc>,
}

impl Session {
    fn visible(&self) -> Visible {
        if self.operator {
            Visible::All
        } else {
            Visible::Only(self.installations.iter().map(|(i, _)| *i).collect())
        }
    }
}

/// The dashboard's routes (all under `/dashboard`).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/dashboard", get(show))
        .route("/dashboard/export.csv", get(export_csv))
        .route("/dashboard/export.json", get(export_json))
        .route("/dashboard/login", get(login))
        .route("/dashboard/login/operator", post(login_operator))
        .route("/dashboard/callback", get(callback))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/assets/dashboard.css", get(stylesheet))
}

fn jar(headers: &HeaderMap) -> CookieJar {
    let mut jar = CookieJar::new();
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for c in Cookie::split_parse_encoded(text.to_owned()).flatten() {
            jar.add_original(c.into_owned());
        }
    }
    jar
}

fn cookie(name: &'static str, value: String, max_age_secs: i64) -> Cookie<'static> {
    Cookie::build((name, value))
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build()
}

/// The `Set-Cookie` values of what changed in `jar`.
fn set_cookies(jar: &CookieJar, response: &mut Response) {
    for c in jar.delta() {
        if let Ok(v) = HeaderValue::from_str(&c.encoded().to_string()) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
}

/// What removes a cookie: a `__Host-` cookie is only replaced by one with the same
/// attributes (`Secure`, `Path=/`).
fn removal(name: &'static str) -> Cookie<'static> {
    cookie(name, String::new(), 0)
}

/// The signed-in session, if the cookie is there, verifies and has not expired.
fn session(state: &AppState, dash: &Dashboard, headers: &HeaderMap) -> Option<Session> {
    let jar = jar(headers);
    let value = jar.signed(&dash.key).get(SESSION)?;
    let session: Session = serde_json::from_str(value.value()).ok()?;
    (session.expires > state.clock.now()).then_some(session)
}

fn not_configured() -> Response {
    (
        StatusCode::NOT_FOUND,
        page::message(
            "Dashboard not configured",
            "This server has no [dashboard] section: see the README's \"Dashboard\" section.",
        ),
    )
        .into_response()
}

/// Audits a dashboard access (see [`AppState::audit`]); `false`: refuse it.
async fn audit(state: &AppState, actor: &str, peer: &Peer, action: &str, outcome: &str) -> bool {
    state
        .audit(
            actor,
            peer.0.clone(),
            action.to_owned(),
            None,
            outcome.to_owned(),
        )
        .await
        .is_ok()
}

/// Audits a refused sign-in as a refusal from its source ([`AppState::audit_refusal`]).
async fn refused(state: &AppState, peer: &Peer, action: &str, outcome: &str) -> bool {
    state
        .audit_refusal(
            Route::Dashboard,
            "anonymous",
            peer.0.clone(),
            action.to_owned(),
            None,
            outcome.to_owned(),
        )
        .await
        .is_ok()
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        page::message("Try again later", "The store is unavailable."),
    )
        .into_response()
}

/// The caller's address, for the audit log (absent when the router runs without one).
#[derive(Debug)]
struct Peer(Option<String>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(crate::api::peer(&parts.extensions)))
    }
}

/// What a signed-in page asks for: the report, or why not (its status and reason).
type Outcome = Result<(usage::Report, ReportParams), (StatusCode, String)>;

/// A signed-in view at `path`: the session, the report it asked for, and the access audited.
/// `Err`: the answer instead (no dashboard, no session — `signed_out` —, no audit).
async fn view(
    state: &AppState,
    peer: &Peer,
    headers: &HeaderMap,
    params: Result<Query<ReportParams>, QueryRejection>,
    path: &str,
    signed_out: fn() -> Response,
) -> Result<(Session, Outcome), Response> {
    let Some(dash) = state.dashboard.as_deref() else {
        return Err(not_configured());
    };
    let Some(session) = session(state, dash, headers) else {
        return Err(signed_out());
    };
    let outcome = match params {
        Err(e) => Err((StatusCode::BAD_REQUEST, e.body_text())),
        Ok(Query(params)) => usage::load(state, &session.visible(), params)
            .await
            .map_err(|e| match e {
                usage::ReportError::Unavailable => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The store is unavailable; try again later.".to_owned(),
                ),
                refused => (StatusCode::BAD_REQUEST, refused.to_string()),
            }),
    };
    let status = match &outcome {
        Ok(_) => StatusCode::OK,
        Err((s, _)) => *s,
    };
    let action = format!("dashboard GET {path}");
    if !audit(state, &session.who, peer, &action, status.as_str()).await {
        return Err(unavailable());
    }
    Ok((session, outcome))
}

async fn show(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    headers: HeaderMap,
    params: Result<Query<ReportParams>, QueryRejection>,
) -> Response {
    let signed_out = || page::sign_in().into_response();
    match view(&state, &peer, &headers, params, "/dashboard", signed_out).await {
        Ok((session, Ok((report, params)))) => {
            page::dashboard(&session, &report, &params).into_response()
        }
        Ok((session, Err((status, why)))) => {
            (status, page::refused(&session, &why)).into_response()
        }
        Err(answer) => answer,
    }
}

/// An export: the same report as the page, or the page's refusal.
async fn export(
    state: &AppState,
    peer: Peer,
    headers: &HeaderMap,
    params: Result<Query<ReportParams>, QueryRejection>,
    path: &str,
) -> Result<usage::Report, Response> {
    let signed_out = || Redirect::to("/dashboard").into_response();
    match view(state, &peer, headers, params, path, signed_out).await? {
        (_, Ok((report, _))) => Ok(report),
        (session, Err((status, why))) => {
            Err((status, page::refused(&session, &why)).into_response())
        }
    }
}

async fn export_csv(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    headers: HeaderMap,
    params: Result<Query<ReportParams>, QueryRejection>,
) -> Response {
    match export(&state, peer, &headers, params, "/dashboard/export.csv").await {
        Ok(report) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"mayfly-jobs.csv\"",
                ),
            ],
            usage::jobs_csv(&report.jobs),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn export_json(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    headers: HeaderMap,
    params: Result<Query<ReportParams>, QueryRejection>,
) -> Response {
    match export(&state, peer, &headers, params, "/dashboard/export.json").await {
        Ok(report) => (
            [(
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"mayfly-usage.json\"",
            )],
            axum::Json(report),
        )
            .into_response(),
        Err(r) => r,
    }
}

/// Starts the OAuth web flow: a fresh `state` in a signed cookie, then GitHub's sign-in.
async fn login(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(dash) = state.dashboard.as_deref() else {
        return not_configured();
    };
    let mut raw = [0_u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    let nonce = hex::encode(raw);
    let expires = state.clock.now() + chrono::Duration::seconds(STATE_TTL_SECS);
    let mut jar = jar(&headers);
    jar.signed_mut(&dash.key).add(cookie(
        STATE,
        format!("{nonce}.{}", expires.timestamp()),
        STATE_TTL_SECS,
    ));
    let mut response =
        Redirect::to(dash.oauth.authorize_url(&dash.callback, &nonce).as_str()).into_response();
    set_cookies(&jar, &mut response);
    response
}

#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// GitHub sent the user back: check `state`, exchange the code, ask GitHub what the user may see.
async fn callback(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, QueryRejection>,
) -> Response {
    let Some(dash) = state.dashboard.as_deref() else {
        return not_configured();
    };
    if let Err(limited) = state.turn_away(peer.0.as_deref(), Route::Dashboard) {
        return limited.into_response();
    }
    let mut jar = jar(&headers);
    let expected = jar.signed(&dash.key).get(STATE);
    // The state cookie is single-use: whatever happens next, it is gone.
    jar.remove(removal(STATE));
    let refuse = |why: &str| {
        let mut response = (
            StatusCode::BAD_REQUEST,
            page::message("Sign-in failed", why),
        )
            .into_response();
        set_cookies(&jar, &mut response);
        response
    };
    let Ok(Query(q)) = query else {
        let _ = state.count_refusal(peer.0.as_deref(), Route::Dashboard);
        return refuse("GitHub's answer was malformed. Sign in again.");
    };
    if let Some(error) = q.error {
        refused(
            &state,
            &peer,
            "dashboard login",
            &format!("refused: GitHub said {error}"),
        )
        .await;
        return refuse("GitHub did not authorise the sign-in. Sign in again.");
    }
    let now = state.clock.now();
    let state_ok = match (&expected, &q.state) {
        (Some(cookie), Some(given)) => {
            cookie.value().split_once('.').is_some_and(|(nonce, exp)| {
                let fresh = exp.parse::<i64>().is_ok_and(|e| e > now.timestamp());
                fresh && constant_time_eq(nonce.as_bytes(), given.as_bytes())
            })
        }
        _ => false,
    };
    if !state_ok {
        refused(&state, &peer, "dashboard login", "refused: state").await;
        return refuse(
            "This sign-in link is not the one this browser started, or it expired. Sign in again.",
        );
    }
    let Some(code) = q.code else {
        let _ = state.count_refusal(peer.0.as_deref(), Route::Dashboard);
        return refuse("GitHub sent no code. Sign in again.");
    };
    let signed_in = async {
        let token = dash.oauth.exchange_code(&code, &dash.callback).await?;
        let user = dash.oauth.user(&token).await?;
        let installations = dash.oauth.user_installations(&token).await?;
        Ok::<_, OAuthError>((user, installations))
    }
    .await;
    let (user, installations) = match signed_in {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %crate::error::chain(&e), "a dashboard sign-in failed at GitHub");
            refused(&state, &peer, "dashboard login", "refused: GitHub").await;
            return refuse("GitHub refused the sign-in. Sign in again.");
        }
    };
    let who = format!("github:{}", user.login);
    let seen: BTreeSet<i64> = installations.iter().map(|i| i.id.0).collect();
    let outcome = format!(
        "ok: installations {}",
        seen.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    if !audit(&state, &who, &peer, "dashboard login", &outcome).await {
        return unavailable();
    }
    let session = Session {
        who,
        installations: installations
            .into_iter()
            .map(|i| (i.id.0, i.account_login))
            .collect(),
        operator: false,
        expires: now + dash.session_ttl,
    };
    start_session(dash, jar, &session)
}

fn start_session(dash: &Dashboard, mut jar: CookieJar, session: &Session) -> Response {
    let Ok(value) = serde_json::to_string(session) else {
        return unavailable();
    };
    jar.signed_mut(&dash.key)
        .add(cookie(SESSION, value, dash.session_ttl.num_seconds()));
    let mut response = Redirect::to("/dashboard").into_response();
    set_cookies(&jar, &mut response);
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
struct OperatorForm {
    token: String,
}

impl std::fmt::Debug for OperatorForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorForm { token: [redacted] }")
    }
}

/// An operator signs in with an admin token (pasted into the form; never in a URL).
async fn login_operator(
    State(state): State<Arc<AppState>>,
    peer: Peer,
    headers: HeaderMap,
    form: Result<Form<OperatorForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some(dash) = state.dashboard.as_deref() else {
        return not_configured();
    };
    if let Err(limited) = state.turn_away(peer.0.as_deref(), Route::Dashboard) {
        return limited.into_response();
    }
    let token = form.ok().map(|Form(f)| f.token);
    let row = match token.as_deref().map(str::trim) {
        Some(t) => crate::tokens::lookup(state.store.as_ref(), t).await,
        None => Ok(None),
    };
    let row = match row {
        Ok(row) => row,
        Err(_) => return unavailable(),
    };
    let admin = row
        .as_ref()
        .filter(|r| crate::tokens::Scope::from_row(r) == Some(crate::tokens::Scope::Admin));
    let Some(admin) = admin else {
        refused(&state, &peer, "dashboard login operator", "refused").await;
        return (
            StatusCode::UNAUTHORIZED,
            page::message(
                "Sign-in failed",
                "That is not an admin token. Make one with `mayfly token create --scope admin`.",
            ),
        )
            .into_response();
    };
    let who = format!("operator:{}", admin.id);
    if !audit(&state, &who, &peer, "dashboard login operator", "ok").await {
        return unavailable();
    }
    let session = Session {
        who,
        installations: Vec::new(),
        operator: true,
        expires: state.clock.now() + dash.session_ttl,
    };
    start_session(dash, jar(&headers), &session)
}

async fn logout(State(state): State<Arc<AppState>>, peer: Peer, headers: HeaderMap) -> Response {
    let Some(dash) = state.dashboard.as_deref() else {
        return not_configured();
    };
    if let Some(session) = session(&state, dash, &headers) {
        audit(&state, &session.who, &peer, "dashboard logout", "ok").await;
    }
    let mut jar = jar(&headers);
    jar.remove(removal(SESSION));
    let mut response = Redirect::to("/dashboard").into_response();
    set_cookies(&jar, &mut response);
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        page::CSS,
    )
        .into_response()
}
