//! github.com's side of "Sign in with GitHub" (CONTRACTS.md §8.1–8.4): the authorize page, the
//! sign-in form it posts to `/session`, and the token endpoint. The simulator skips GitHub's
//! "Authorize App" consent page (every user has already authorized the App). Invariants: a code is
//! only ever sent to one of the App's registered callback URLs, is single-use and lives 10 min;
//! codes, tokens and the client secret are never logged; all page text is HTML-escaped.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use url::Url;

use crate::server::{lock, Shared};
use crate::state::{digest, CodeGrant, IssuedTokens, ACCESS_TTL_S, CODE_TTL, REFRESH_TTL_S};

/// The password every simulated user signs in with.
pub const SIM_USER_PASSWORD: &str = "mayfly-sim";

const AUTH_ERRORS_DOCS: &str =
    "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-authorization-request-errors";
const TOKEN_ERRORS_DOCS: &str = "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/login/oauth/authorize", get(authorize))
        .route("/session", post(session))
        .route("/login/oauth/access_token", post(access_token))
        .with_state(shared)
}

type St = State<Arc<Shared>>;

/// The parameters of step 1, as the authorize URL (or the sign-in form echoing it) carries them.
#[derive(Debug)]
struct Authorization {
    client_id: String,
    redirect_uri: Url,
    state: Option<String>,
    login: Option<String>,
    code_challenge: Option<String>,
}

/// Why step 1 is refused: a page on GitHub, or (once the App is known) the App's first callback
/// URL with `error=…` ([D5]).
enum Refusal {
    Page(StatusCode, &'static str),
    Redirect(Url),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Page(status, message) => (status, page(message, None, "")).into_response(),
            Self::Redirect(to) => found(&to),
        }
    }
}

fn found(to: &Url) -> Response {
    match HeaderValue::from_str(to.as_str()) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

fn params(raw: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw).into_owned().collect()
}

fn non_empty(params: &HashMap<String, String>, key: &str) -> Option<String> {
    params.get(key).filter(|v| !v.is_empty()).cloned()
}

/// Checks step 1's parameters against the App's registration.
fn check(shared: &Shared, params: &HashMap<String, String>) -> Result<Authorization, Refusal> {
    let client_id = non_empty(params, "client_id").unwrap_or_default();
    if client_id != shared.app().client_id {
        return Err(Refusal::Page(StatusCode::NOT_FOUND, "Not Found"));
    }
    let callbacks = lock(&shared.oauth.callback_urls).clone();
    let Some(first) = callbacks.first() else {
        return Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "The redirect_uri is not associated with this application: it has no callback URL.",
        ));
    };
    let state = non_empty(params, "state");
    let redirect_uri = match non_empty(params, "redirect_uri") {
        None => first.clone(),
        Some(given) => match Url::parse(&given) {
            Ok(url) if callbacks.contains(&url) => url,
            _ => {
                let mut to = first.clone();
                to.query_pairs_mut()
                    .append_pair("error", "redirect_uri_mismatch")
                    .append_pair(
                        "error_description",
                        "The redirect_uri MUST match the registered callback URL for this application.",
                    )
                    .append_pair("error_uri", &format!("{AUTH_ERRORS_DOCS}#redirect-uri-mismatch"));
                if let Some(state) = &state {
                    to.query_pairs_mut().append_pair("state", state);
                }
                return Err(Refusal::Redirect(to));
            }
        },
    };
    let code_challenge = non_empty(params, "code_challenge");
    if code_challenge.is_some()
        && non_empty(params, "code_challenge_method").as_deref() != Some("S256")
    {
        return Err(Refusal::Page(
            StatusCode::BAD_REQUEST,
            "code_challenge_method must be S256.",
        ));
    }
    Ok(Authorization {
        client_id,
        redirect_uri,
        state,
        login: non_empty(params, "login"),
        code_challenge,
    })
}

/// GET /login/oauth/authorize: the sign-in page.
async fn authorize(State(shared): St, RawQuery(query): RawQuery) -> Response {
    let params = params(query.unwrap_or_default().as_bytes());
    match check(&shared, &params) {
        Ok(auth) => page("Sign in to GitHub", Some(&auth), "").into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// POST /session: the sign-in form. A known login with the password sends the browser to the
/// callback URL with a fresh code.
async fn session(State(shared): St, body: Bytes) -> Response {
    let form = params(&body);
    let auth = match check(&shared, &form) {
        Ok(auth) => auth,
        Err(refusal) => return refusal.into_response(),
    };
    let login = form.get("login").map(String::as_str).unwrap_or_default();
    let password = form.get("password").map(String::as_str).unwrap_or_default();
    let now = shared.clock.now();
    let mut world = shared.world();
    let user = world.user_by_login(login).map(|u| u.account.clone());
    let Some(user) = user.filter(|_| password == SIM_USER_PASSWORD) else {
        drop(world);
        return page(
            "Sign in to GitHub",
            Some(&auth),
            "Incorrect username or password.",
        )
        .into_response();
    };
    let code = world.issue_code(CodeGrant {
        user_id: user.id,
        redirect_uri: auth.redirect_uri.to_string(),
        code_challenge: auth.code_challenge.clone(),
        expires_at: now + CODE_TTL,
    });
    drop(world);
    tracing::info!(user = %user.login, "simulated user signed in");
    let mut to = auth.redirect_uri.clone();
    to.query_pairs_mut()
        .append_pair("code", code.expose_secret());
    if let Some(state) = &auth.state {
        to.query_pairs_mut().append_pair("state", state);
    }
    found(&to)
}

/// HTML-escapes `text` for page text and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// GitHub's sign-in page, reduced to its form (`login_field`, `password`, `commit`), which
/// carries step 1's parameters on to `/session`.
fn page(title: &str, auth: Option<&Authorization>, flash: &str) -> Html<String> {
    let mut body = format!("<h1>{}</h1>\n", escape(title));
    if !flash.is_empty() {
        body.push_str(&format!(
            "<div class=\"flash-error\">{}</div>\n",
            escape(flash)
        ));
    }
    if let Some(auth) = auth {
        let hidden = |name: &str, value: Option<&str>| match value {
            Some(v) => format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">\n",
                escape(v)
            ),
            None => String::new(),
        };
        body.push_str("<form action=\"/session\" method=\"post\">\n");
        body.push_str(&hidden("client_id", Some(&auth.client_id)));
        body.push_str(&hidden("redirect_uri", Some(auth.redirect_uri.as_str())));
        body.push_str(&hidden("state", auth.state.as_deref()));
        body.push_str(&hidden("code_challenge", auth.code_challenge.as_deref()));
        if auth.code_challenge.is_some() {
            body.push_str(&hidden("code_challenge_method", Some("S256")));
        }
        body.push_str(&format!(
            "<label for=\"login_field\">Username or email address</label>\n\
             <input type=\"text\" name=\"login\" id=\"login_field\" value=\"{}\" autofocus>\n\
             <label for=\"password\">Password</label>\n\
             <input type=\"password\" name=\"password\" id=\"password\">\n\
             <input type=\"submit\" name=\"commit\" value=\"Sign in\">\n</form>\n",
            escape(auth.login.as_deref().unwrap_or_default())
        ));
    }
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>\n{body}</body></html>\n",
        escape(title)
    ))
}

// ---- step 3: POST /login/oauth/access_token ----

/// The documented refusals of the token endpoint ([D4], [D2]); GitHub answers them with 200.
#[derive(Debug, Clone, Copy)]
enum TokenError {
    IncorrectClientCredentials,
    RedirectUriMismatch,
    BadVerificationCode,
    BadRefreshToken,
    UnsupportedGrantType,
}

impl TokenError {
    fn fields(self) -> [(&'static str, String); 3] {
        let (code, description, anchor) = match self {
            Self::IncorrectClientCredentials => (
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
                "incorrect-client-credentials",
            ),
            Self::RedirectUriMismatch => (
                "redirect_uri_mismatch",
                "The redirect_uri MUST match the registered callback URL for this application.",
                "redirect-uri-mismatch2",
            ),
            Self::BadVerificationCode => (
                "bad_verification_code",
                "The code passed is incorrect or expired.",
                "bad-verification-code",
            ),
            Self::BadRefreshToken => (
                "bad_refresh_token",
                "The refresh token passed is incorrect or expired.",
                "bad-refresh-token",
            ),
            Self::UnsupportedGrantType => (
                "unsupported_grant_type",
                "The grant type is not supported.",
                "unsupported-grant-type",
            ),
        };
        [
            ("error", code.to_owned()),
            ("error_description", description.to_owned()),
            ("error_uri", format!("{TOKEN_ERRORS_DOCS}#{anchor}")),
        ]
    }
}

/// Parameters from the query string and the body (form or JSON object); the body wins.
fn token_params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> HashMap<String, String> {
    let mut all = params(query.unwrap_or_default().as_bytes());
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
            for (key, value) in map {
                let value = match value {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    _ => continue,
                };
                all.insert(key, value);
            }
        }
    } else {
        all.extend(params(body));
    }
    all
}

/// JSON with `Accept: application/json`, else form-encoded ([D3]); always 200, never cached.
fn token_answer(json: bool, fields: &[(&str, Value)]) -> Response {
    let (content_type, body) = if json {
        let map: Map<String, Value> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        (
            "application/json; charset=utf-8",
            Value::Object(map).to_string(),
        )
    } else {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in fields {
            match value {
                Value::String(s) => form.append_pair(key, s),
                other => form.append_pair(key, &other.to_string()),
            };
        }
        (
            "application/x-www-form-urlencoded; charset=utf-8",
            form.finish(),
        )
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn tokens_fields(tokens: &IssuedTokens) -> Vec<(&'static str, Value)> {
    vec![
        ("access_token", json!(tokens.access.expose_secret())),
        ("expires_in", json!(ACCESS_TTL_S)),
        ("refresh_token", json!(tokens.refresh.expose_secret())),
        ("refresh_token_expires_in", json!(REFRESH_TTL_S)),
        ("scope", json!("")),
        ("token_type", json!("bearer")),
    ]
}

/// The S256 PKCE check: BASE64URL(SHA-256(verifier)) equals the challenge.
fn pkce_holds(challenge: &str, verifier: Option<&str>) -> bool {
    verifier.is_some_and(|v| URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())) == challenge)
}

fn exchange(shared: &Shared, params: &HashMap<String, String>) -> Result<IssuedTokens, TokenError> {
    let get = |key: &str| {
        params
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let registration = shared.registration();
    let secret_matches = get("client_secret")
        .is_some_and(|given| digest(given) == digest(registration.client_secret.expose()));
    if get("client_id") != Some(registration.app.client_id.as_str()) || !secret_matches {
        return Err(TokenError::IncorrectClientCredentials);
    }
    let now = shared.clock.now();
    let mut world = shared.world();
    match get("grant_type") {
        Some("refresh_token") => {
            let refresh = get("refresh_token").ok_or(TokenError::BadRefreshToken)?;
            world
                .refresh_user_tokens(refresh, now)
                .ok_or(TokenError::BadRefreshToken)
        }
        None | Some("authorization_code") => {
            let code = get("code").ok_or(TokenError::BadVerificationCode)?;
            let grant = world
                .take_code(code, now)
                .ok_or(TokenError::BadVerificationCode)?;
            if let Some(given) = get("redirect_uri") {
                if Url::parse(given).map(String::from).ok().as_deref()
                    != Some(grant.redirect_uri.as_str())
                {
                    return Err(TokenError::RedirectUriMismatch);
                }
            }
            if let Some(challenge) = &grant.code_challenge {
                if !pkce_holds(challenge, get("code_verifier")) {
                    return Err(TokenError::BadVerificationCode);
                }
            }
            Ok(world.issue_user_tokens(grant.user_id, now))
        }
        Some(_) => Err(TokenError::UnsupportedGrantType),
    }
}

async fn access_token(
    State(shared): St,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let params = token_params(query.as_deref(), &headers, &body);
    match exchange(&shared, &params) {
        Ok(tokens) => token_answer(json, &tokens_fields(&tokens)),
        Err(err) => {
            let fields = err.fields();
            tracing::info!(error = %fields[0].1, "user token request refused");
            let fields: Vec<(&str, Value)> = fields.iter().map(|(k, v)| (*k, json!(v))).collect();
            token_answer(json, &fields)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn page_text_is_escaped() {
        let auth = Authorization {
            client_id: "Iv23li".into(),
            redirect_uri: Url::parse("http://127.0.0.1/cb").unwrap(),
            state: Some("\"><script>alert(1)</script>".into()),
            login: Some("<b>".into()),
            code_challenge: None,
        };
        let Html(html) = page("Sign in", Some(&auth), "");
        assert!(
            !html.contains("<script>") && !html.contains("<b>"),
            "{html}"
        );
        assert!(html.contains("&quot;&gt;&lt;script&gt;"));
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_holds(challenge, Some(verifier)));
        assert!(!pkce_holds(challenge, Some("other")));
        assert!(!pkce_holds(challenge, None));
    }
}
