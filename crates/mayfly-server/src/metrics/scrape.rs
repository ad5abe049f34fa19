//! The HTTP side of `/metrics`: who may read it, what is audited, and the two text formats
//! (OpenMetrics, and the classic 0.0.4 for clients that ask only for `text/plain`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::refusals::Route;
use crate::tokens::Scope;
use crate::AppState;

/// What `/metrics` answers with (the OpenMetrics 1.0 text format).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, for clients that ask for `text/plain` only.
pub const CLASSIC_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/metrics", get(scrape))
}

/// Admin tokens only: no token 401, any other token 403. Refusals are audited like API calls;
/// successful scrapes are not (a scraper every 15 s would bury the audit log in identical rows),
/// except the first of each token after the server starts, so every reader is on record.
async fn scrape(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let source = crate::api::peer(request.extensions());
    if !request.headers().contains_key(header::AUTHORIZATION) {
        if let Err(limited) = state.turn_away(source.as_deref(), Route::Metrics) {
            return limited.into_response();
        }
    }
    let caller = match crate::api::bearer_caller(&state, request.headers()).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let (actor, refusal) = match &caller {
        None => ("anonymous".to_owned(), Some(ApiError::Unauthorized)),
        Some(c) if c.scope == Scope::Admin => (format!("token:{}", c.token_id), None),
        Some(c) => (format!("token:{}", c.token_id), Some(ApiError::Forbidden)),
    };
    let first_read = refusal.is_none() && state.metrics.readers.first(&actor);
    let response = match refusal {
        Some(refusal) => refusal.into_response(),
        None => match state.metrics.render(state.store.as_ref()).await {
            Ok(body) => {
                let openmetrics = wants_openmetrics(&request);
                let (content_type, body) = if openmetrics {
                    (OPENMETRICS, body)
                } else {
                    (CLASSIC_TEXT, classic_text(&body))
                };
                ([(header::CONTENT_TYPE, content_type)], body).into_response()
            }
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "metrics: store read failed");
                ApiError::Unavailable.into_response()
            }
        },
    };
    if first_read || !response.status().is_success() {
        let outcome = response.status().as_u16().to_string();
        let action = "api GET /metrics".to_owned();
        let audited = if caller.is_none() {
            state
                .audit_refusal(Route::Metrics, &actor, source, action, None, outcome)
                .await
        } else {
            state.audit(&actor, source, action, None, outcome).await
        };
        if let Err(e) = audited {
            state.metrics.readers.forget(&actor);
            return e.into_response();
        }
    }
    response
}

/// Tokens that have read `/metrics` since the server started (their first read is audited).
#[derive(Debug, Default)]
pub struct Readers(std::sync::Mutex<std::collections::HashSet<String>>);

impl Readers {
    /// Whether this is `actor`'s first read (and remembers it).
    fn first(&self, actor: &str) -> bool {
        self.0
            .lock()
            .map(|mut seen| seen.insert(actor.to_owned()))
            .unwrap_or(true)
    }

    fn forget(&self, actor: &str) {
        if let Ok(mut seen) = self.0.lock() {
            seen.remove(actor);
        }
    }
}

/// OpenMetrics unless the client asks for `text/plain` and not for OpenMetrics (Prometheus
/// asks for OpenMetrics; `curl` asks for nothing and gets it too).
fn wants_openmetrics(request: &Request) -> bool {
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("application/openmetrics-text") || !accept.contains("text/plain")
}

/// The same encoding in the classic text format 0.0.4 (what `promtool check metrics` lints):
/// counter families are named with their `_total`, and the OpenMetrics-only `# UNIT` and
/// `# EOF` lines go. Samples are the same in both formats.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}
