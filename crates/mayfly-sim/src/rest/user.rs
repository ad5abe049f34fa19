//! The signed-in user's endpoints (CONTRACTS.md §8.5–8.8): `GET /user`, `GET /user/installations`
//! and `GET /user/installations/{installation_id}/repositories`. Only a user access token
//! (`ghu_…`) reaches them; an installation token or App JWT gets 403 "Resource not accessible by
//! integration", anything else 401.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{paged, parse_id, require_app, AppState, Paging, RestError};
use crate::auth::{self, AuthError};
use crate::payloads;
use crate::server::Shared;
use crate::state::{AccountType, User, World};

pub(super) fn routes() -> Router<std::sync::Arc<Shared>> {
    use axum::routing::get;
    Router::new()
        .route("/user", get(get_user))
        .route("/user/installations", get(list_installations))
        .route(
            "/user/installations/{installation_id}/repositories",
            get(list_repositories),
        )
}

/// The user a request's user access token acts for.
fn require_user(shared: &Shared, world: &World, headers: &HeaderMap) -> Result<User, RestError> {
    let credential = auth::credential(headers).ok_or(AuthError::Missing)?;
    let now = shared.clock.now();
    if let Some(user) = world.user_for_token(credential, now) {
        return Ok(user.clone());
    }
    let integration = world
        .token_grant(credential)
        .is_some_and(|g| g.expires_at > now)
        || require_app(shared, headers).is_ok();
    if integration {
        return Err(RestError::Forbidden(super::NOT_ACCESSIBLE_BY_INTEGRATION));
    }
    Err(AuthError::BadCredentials.into())
}

/// `<private-user>`: what the user sees of themselves.
fn private_user(shared: &Shared, user: &User) -> Value {
    let mut body = payloads::simple_user(&shared.links, &user.account);
    let extra = json!({
        "user_view_type": "private",
        "name": user.account.login,
        "company": null,
        "blog": "",
        "location": null,
        "email": null,
        "hireable": null,
        "bio": null,
        "twitter_username": null,
        "notification_email": null,
        "public_repos": 0,
        "public_gists": 0,
        "followers": 0,
        "following": 0,
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:00Z",
        "private_gists": 0,
        "total_private_repos": 0,
        "owned_private_repos": 0,
        "disk_usage": 0,
        "collaborators": 0,
        "two_factor_authentication": true,
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

async fn get_user(State(shared): AppState, headers: HeaderMap) -> Result<Response, RestError> {
    let world = shared.world();
    let user = require_user(&shared, &world, &headers)?;
    drop(world);
    Ok(Json(private_user(&shared, &user)).into_response())
}

async fn list_installations(
    State(shared): AppState,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    let world = shared.world();
    let user = require_user(&shared, &world, &headers)?;
    let items: Vec<Value> = world
        .installations_of_user(&user)
        .into_iter()
        .map(|i| payloads::installation(&shared.links, &shared.app(), i, true))
        .collect();
    drop(world);
    let total = items.len();
    let (page, link) =
        Paging::from_query(&query).apply(items, &shared.links, "user/installations", &query);
    Ok(paged(
        json!({ "total_count": total, "installations": page }),
        link,
    ))
}

async fn list_repositories(
    State(shared): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    let world = shared.world();
    let user = require_user(&shared, &world, &headers)?;
    let id = parse_id(&id)?;
    let installation = world
        .installations_of_user(&user)
        .into_iter()
        .find(|i| i.id == id)
        .cloned()
        .ok_or(RestError::NotFound)?;
    // The user's own access: owner of a personal account, member (write) of an organisation.
    let owner = installation.account.kind == AccountType::User;
    let permissions = json!({
        "admin": owner, "maintain": owner, "push": true, "triage": true, "pull": true,
    });
    let items: Vec<Value> = world
        .repos_of_installation(id)
        .into_iter()
        .map(|r| {
            let mut repo = payloads::repository(&shared.links, r);
            repo["permissions"] = permissions.clone();
            repo
        })
        .collect();
    drop(world);
    let total = items.len();
    let path = format!("user/installations/{id}/repositories");
    let (page, link) = Paging::from_query(&query).apply(items, &shared.links, &path, &query);
    Ok(paged(
        json!({ "total_count": total, "repository_selection": "all", "repositories": page }),
        link,
    ))
}
