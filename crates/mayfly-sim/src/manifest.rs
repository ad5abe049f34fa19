//! github.com's side of registering a GitHub App from a manifest (CONTRACTS.md §9): the App
//! creation pages a form posts the manifest to (`/settings/apps/new` for a personal account,
//! `/organizations/{org}/settings/apps/new` for an organisation), and the conversion that
//! `POST /app-manifests/{code}/conversions` (in `rest::manifest`) performs.
//!
//! The simulator skips the page's "Create GitHub App" click: a valid manifest is answered at
//! once with the redirect to its `redirect_url`, carrying a one-time code (40 hex digits, as in
//! GitHub's example) and the form's `state`. A code lives one hour and converts once. The App
//! made by a conversion takes the place of the simulator's App: its id, key, OAuth client and
//! webhook (URL and secret) are the new ones from then on, as if the operator had installed the
//! new App instead. Codes are kept as digests; nothing here is logged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use url::Url;

use crate::oauth::escape;
use crate::server::{lock, Shared};
use crate::state::{digest, Account, AccountType, Digest32, Level};

/// How long a manifest code can be converted ([D6]: the whole flow within one hour).
pub(crate) const CODE_TTL: TimeDelta = TimeDelta::hours(1);
/// At most this many OAuth callback URLs ([D6]).
const MAX_CALLBACK_URLS: usize = 10;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/settings/apps/new", post(personal))
        .route("/organizations/{org}/settings/apps/new", post(organization))
        .with_state(shared)
}

/// Manifests posted and not yet converted, by the digest of their code.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    codes: HashMap<Digest32, PendingApp>,
}

/// A posted manifest waiting for its conversion.
#[derive(Debug, Clone)]
pub(crate) struct PendingApp {
    pub manifest: Manifest,
    pub owner: Account,
    pub expires_at: DateTime<Utc>,
}

impl Pending {
    /// Takes the manifest of `code` out (a code converts once); `None` if unknown or expired.
    pub(crate) fn take(&mut self, code: &str, now: DateTime<Utc>) -> Option<PendingApp> {
        self.codes.retain(|_, p| p.expires_at > now);
        self.codes.remove(&digest(code))
    }
}

/// The manifest keys the simulator uses (CONTRACTS.md §9.1); others are accepted and ignored.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    pub name: Option<String>,
    pub url: String,
    pub description: Option<String>,
    /// The webhook receiver, if the hook is active.
    pub hook_url: Option<Url>,
    pub redirect_url: Url,
    pub callback_urls: Vec<Url>,
    pub permissions: BTreeMap<String, Level>,
    pub events: Vec<String>,
}

/// Reads a manifest (the form field's JSON string), or says what is wrong with it.
pub(crate) fn parse_manifest(text: &str) -> Result<Manifest, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|_| "The manifest is not valid JSON.".to_owned())?;
    let Value::Object(map) = value else {
        return Err("The manifest must be a JSON object.".into());
    };
    let string = |key: &str| -> Result<Option<String>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("The manifest's `{key}` must be a string.")),
        }
    };
    let url_of = |key: &str, text: &str| -> Result<Url, String> {
        Url::parse(text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| format!("The manifest's `{key}` is not an http(s) URL."))
    };
    let url = string("url")?.ok_or("The manifest needs a `url` (the App's homepage).")?;
    url_of("url", &url)?;
    let redirect_url = string("redirect_url")?
        .ok_or("The manifest needs a `redirect_url` to send the code to.")?;
    let redirect_url = url_of("redirect_url", &redirect_url)?;
    let hook_url = match map.get("hook_attributes") {
        None | Some(Value::Null) => None,
        Some(Value::Object(hook)) => {
            let active = hook.get("active").and_then(Value::as_bool).unwrap_or(true);
            let hook_url = hook
                .get("url")
                .and_then(Value::as_str)
                .ok_or("The manifest's `hook_attributes` needs a `url`.")?;
            let hook_url = url_of("hook_attributes.url", hook_url)?;
            active.then_some(hook_url)
        }
        Some(_) => return Err("The manifest's `hook_attributes` must be an object.".into()),
    };
    let callback_urls = match map.get("callback_urls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_CALLBACK_URLS => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| "The manifest's `callback_urls` must be strings.".to_owned())
                    .and_then(|u| url_of("callback_urls", u))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(format!(
            "The manifest's `callback_urls` must be an array of at most {MAX_CALLBACK_URLS} URLs."
        ))
        }
    };
    let permissions = match map.get("default_permissions") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(asked)) => asked
            .iter()
            .map(|(name, level)| {
                level
                    .as_str()
                    .and_then(Level::parse)
                    .map(|level| (name.clone(), level))
                    .ok_or_else(|| {
                        format!("The manifest's permission `{name}` must be `read` or `write`.")
                    })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("The manifest's `default_permissions` must be an object.".into()),
    };
    let events = match map.get("default_events") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| "The manifest's `default_events` must be strings.".to_owned())
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("The manifest's `default_events` must be an array.".into()),
    };
    // Who may install the App is GitHub's business; the simulator only checks the type.
    if map
        .get("public")
        .is_some_and(|v| !v.is_boolean() && !v.is_null())
    {
        return Err("The manifest's `public` must be true or false.".into());
    }
    Ok(Manifest {
        name: string("name")?,
        url,
        description: string("description")?,
        hook_url,
        redirect_url,
        callback_urls,
        permissions,
        events,
    })
}

async fn personal(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let owner = Account {
        id: 9_000_000,
        login: "mayfly-app-owner".into(),
        kind: AccountType::User,
    };
    create(&shared, owner, query, &body)
}

async fn organization(
    State(shared): State<Arc<Shared>>,
    Path(org): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let valid = !org.is_empty()
        && org.len() <= 39
        && org.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid {
        return page(StatusCode::NOT_FOUND, "Not Found", "No such organization.");
    }
    // A stable id per organisation name, away from the world's account ids.
    let d = digest(&org.to_ascii_lowercase());
    let id = 8_000_000 + u64::from(u16::from_be_bytes([d[0], d[1]]));
    let owner = Account {
        id,
        login: org,
        kind: AccountType::Organization,
    };
    create(&shared, owner, query, &body)
}

/// The App creation page, answered as if "Create GitHub App" had been clicked.
fn create(shared: &Shared, owner: Account, query: Option<String>, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let Some(text) = form.get("manifest").filter(|m| !m.is_empty()) else {
        return page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid GitHub App manifest",
            "The form has no `manifest` field.",
        );
    };
    let manifest = match parse_manifest(text) {
        Ok(manifest) => manifest,
        Err(problem) => {
            return page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid GitHub App manifest",
                &problem,
            )
        }
    };
    let state = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
    });
    let code = hex::encode(rand::random::<[u8; 20]>());
    let mut to = manifest.redirect_url.clone();
    {
        let mut pairs = to.query_pairs_mut();
        pairs.append_pair("code", &code);
        if let Some(state) = &state {
            pairs.append_pair("state", state);
        }
    }
    lock(&shared.manifests).codes.insert(
        digest(&code),
        PendingApp {
            manifest,
            owner,
            expires_at: shared.clock.now() + CODE_TTL,
        },
    );
    match HeaderValue::from_str(to.as_str()) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => page(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid GitHub App manifest",
            "The redirect URL cannot be used.",
        ),
    }
}

fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n<p>{message}</p>\n</body></html>\n",
        title = escape(title),
        message = escape(message)
    );
    (status, Html(html)).into_response()
}

/// An App slug from its name, as GitHub makes one: lower case, runs of other characters as `-`.
pub(crate) fn slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-').to_owned();
    if slug.is_empty() {
        "app".into()
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"{"name":"mayfly","url":"https://ci.example.com","hook_attributes":{"url":"https://ci.example.com/webhooks/github"},"redirect_url":"http://127.0.0.1:9/done","callback_urls":["https://ci.example.com/dashboard/callback"],"default_permissions":{"administration":"write","actions":"read"},"default_events":["workflow_job"]}"#;

    #[test]
    fn a_manifest_is_read_or_refused_with_its_problem() {
        let m = parse_manifest(GOOD).unwrap();
        assert_eq!(m.name.as_deref(), Some("mayfly"));
        assert_eq!(
            m.hook_url.unwrap().as_str(),
            "https://ci.example.com/webhooks/github"
        );
        assert_eq!(m.permissions["administration"], Level::Write);
        assert_eq!(m.events, ["workflow_job"]);

        for (bad, says) in [
            ("[]", "JSON object"),
            ("{", "not valid JSON"),
            (r#"{"redirect_url":"http://x/"}"#, "needs a `url`"),
            (r#"{"url":"https://x/"}"#, "redirect_url"),
            (
                r#"{"url":"https://x/","redirect_url":"http://x/","default_permissions":{"actions":"admin"}}"#,
                "`read` or `write`",
            ),
            (
                r#"{"url":"ftp://x/","redirect_url":"http://x/"}"#,
                "not an http(s) URL",
            ),
        ] {
            let problem = parse_manifest(bad).unwrap_err();
            assert!(problem.contains(says), "{bad}: {problem}");
        }
    }

    #[test]
    fn slugs_are_lower_case_with_dashes() {
        assert_eq!(slug("mayfly CI (eu-1)"), "mayfly-ci-eu-1");
        assert_eq!(slug("!!!"), "app");
    }

    #[test]
    fn a_code_converts_once_and_not_after_an_hour() {
        let now = Utc::now();
        let mut pending = Pending::default();
        let app = PendingApp {
            manifest: parse_manifest(GOOD).unwrap(),
            owner: Account {
                id: 1,
                login: "acme".into(),
                kind: AccountType::Organization,
            },
            expires_at: now + CODE_TTL,
        };
        pending.codes.insert(digest("a"), app.clone());
        pending.codes.insert(digest("b"), app);
        assert!(pending.take("a", now).is_some());
        assert!(pending.take("a", now).is_none(), "used");
        assert!(
            pending.take("b", now + CODE_TTL).is_none(),
            "expired after an hour"
        );
    }
}
