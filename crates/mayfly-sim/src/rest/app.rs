//! App-level endpoints: `GET /app`, installations, installation access tokens (App JWT), and
//! `GET /installation/repositories` (installation token).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::TimeDelta;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::{paged, parse_id, require_app, require_token, AppState, Paging, RestError};
use crate::payloads::{self, ts};
use crate::state::{AccountType, Level, TokenGrant};

pub(super) fn routes() -> Router<std::sync::Arc<crate::server::Shared>> {
    Router::new()
        .route("/app", get(get_app))
        .route("/app/installations", get(list_installations))
        .route(
            "/app/installations/{installation_id}",
            get(get_installation),
        )
        .route(
            "/app/installations/{installation_id}/access_tokens",
            post(create_token),
        )
        .route("/repos/{owner}/{repo}/installation", get(repo_installation))
        .route("/orgs/{org}/installation", get(org_installation))
        .route("/installation/repositories", get(installation_repositories))
}

async fn get_app(State(shared): AppState, headers: HeaderMap) -> Result<Response, RestError> {
    require_app(&shared, &headers)?;
    let count = shared.world().installations.len();
    Ok(Json(payloads::integration(&shared.links, &shared.app(), count)).into_response())
}

async fn list_installations(
    State(shared): AppState,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    require_app(&shared, &headers)?;
    let items: Vec<Value> = shared
        .world()
        .installations
        .values()
        .map(|i| {
            let mut item = payloads::installation(&shared.links, &shared.app(), i, false);
            // The spec types this list's `account` as allOf[<simple-user>, <enterprise>] (not
            // anyOf as on the single-installation endpoints), so the account also carries the
            // enterprise keys to satisfy both.
            let created = payloads::ts(i.created_at);
            item["account"]["name"] = json!(i.account.login);
            item["account"]["slug"] = json!(i.account.login.to_ascii_lowercase());
            item["account"]["created_at"] = json!(created);
            item["account"]["updated_at"] = json!(created);
            item
        })
        .collect();
    let (page, link) =
        Paging::from_query(&query).apply(items, &shared.links, "app/installations", &query);
    Ok(paged(Value::Array(page), link))
}

async fn get_installation(
    State(shared): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, RestError> {
    require_app(&shared, &headers)?;
    let id = parse_id(&id)?;
    let world = shared.world();
    let inst = world.installations.get(&id).ok_or(RestError::NotFound)?;
    Ok(Json(payloads::installation(
        &shared.links,
        &shared.app(),
        inst,
        true,
    ))
    .into_response())
}

async fn repo_installation(
    State(shared): AppState,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
) -> Result<Response, RestError> {
    require_app(&shared, &headers)?;
    let world = shared.world();
    let repo = world.find_repo(&owner, &repo).ok_or(RestError::NotFound)?;
    let inst = world
        .installations
        .get(&repo.installation_id)
        .ok_or(RestError::NotFound)?;
    Ok(Json(payloads::installation(
        &shared.links,
        &shared.app(),
        inst,
        true,
    ))
    .into_response())
}

async fn org_installation(
    State(shared): AppState,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Result<Response, RestError> {
    require_app(&shared, &headers)?;
    let world = shared.world();
    let inst = world
        .installation_of_account(&org)
        .filter(|i| i.account.kind == AccountType::Organization)
        .ok_or(RestError::NotFound)?;
    Ok(Json(payloads::installation(
        &shared.links,
        &shared.app(),
        inst,
        true,
    ))
    .into_response())
}

const NOT_ACCESSIBLE: &str = "There is at least one repository that does not exist or is not accessible to the parent installation.";

const NOT_GRANTED: &str = "The permissions requested are not granted to this installation.";

/// The optional body of POST …/access_tokens: `repositories` (names) and/or `repository_ids`
/// the token is restricted to, and the `permissions` it is restricted to.
#[derive(Debug, Default)]
struct TokenRequest {
    names: Option<Vec<String>>,
    ids: Option<Vec<u64>>,
    permissions: Option<BTreeMap<String, Level>>,
}

fn parse_token_request(body: &Bytes) -> Result<TokenRequest, RestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(TokenRequest::default());
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| RestError::BadJson)?;
    let Value::Object(map) = value else {
        return Err(RestError::Unprocessable(
            "Invalid request: the body must be a JSON object.".into(),
        ));
    };
    let names = match map.get("repositories") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    RestError::Unprocessable("repositories must be an array of strings".into())
                })?,
        ),
        Some(_) => {
            return Err(RestError::Unprocessable(
                "repositories must be an array of strings".into(),
            ))
        }
    };
    let ids = match map.get("repository_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(Value::as_u64)
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    RestError::Unprocessable("repository_ids must be an array of integers".into())
                })?,
        ),
        Some(_) => {
            return Err(RestError::Unprocessable(
                "repository_ids must be an array of integers".into(),
            ))
        }
    };
    let permissions = match map.get("permissions") {
        None | Some(Value::Null) => None,
        Some(Value::Object(asked)) => Some(
            asked
                .iter()
                .map(|(name, level)| {
                    let level = level.as_str().and_then(Level::parse).ok_or_else(|| {
                        RestError::Unprocessable(format!(
                            "Invalid request.\n\nFor 'properties/{name}', {} is not one of [\"read\", \"write\"].",
                            serde_json::to_string(level).unwrap_or_default()
                        ))
                    })?;
                    Ok((name.clone(), level))
                })
                .collect::<Result<BTreeMap<_, _>, RestError>>()?,
        ),
        Some(_) => {
            return Err(RestError::Unprocessable(
                "permissions must be an object".into(),
            ))
        }
    };
    Ok(TokenRequest {
        names,
        ids,
        permissions,
    })
}

/// The permissions a token gets: those asked for, each of which the installation must hold
/// at that level (GitHub answers 422 otherwise), or all the installation's.
fn granted_permissions(
    installation: BTreeMap<String, Level>,
    asked: Option<BTreeMap<String, Level>>,
) -> Result<BTreeMap<String, Level>, RestError> {
    let Some(asked) = asked else {
        return Ok(installation);
    };
    for (name, level) in &asked {
        if installation.get(name).is_none_or(|held| held < level) {
            return Err(RestError::Unprocessable(NOT_GRANTED.into()));
        }
    }
    Ok(asked)
}

async fn create_token(
    State(shared): AppState,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, RestError> {
    require_app(&shared, &headers)?;
    let id = parse_id(&id)?;
    let TokenRequest {
        names,
        ids,
        permissions,
    } = parse_token_request(&body)?;
    let permissions = granted_permissions(shared.app().permissions, permissions)?;
    let now = shared.clock.now();
    let mut world = shared.world();
    if !world.installations.contains_key(&id) {
        return Err(RestError::NotFound);
    }
    let repos: Vec<_> = world
        .repos_of_installation(id)
        .into_iter()
        .cloned()
        .collect();
    let restricted = names.is_some() || ids.is_some();
    let mut selected = BTreeSet::new();
    for name in names.iter().flatten() {
        let repo = repos
            .iter()
            .find(|r| r.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| RestError::Unprocessable(NOT_ACCESSIBLE.into()))?;
        selected.insert(repo.id);
    }
    for wanted in ids.iter().flatten() {
        if !repos.iter().any(|r| r.id == *wanted) {
            return Err(RestError::Unprocessable(NOT_ACCESSIBLE.into()));
        }
        selected.insert(*wanted);
    }
    let ttl = TimeDelta::from_std(shared.token_ttl).unwrap_or(TimeDelta::hours(1));
    let expires_at = now + ttl;
    let token = world.issue_token(TokenGrant {
        installation_id: id,
        repo_ids: restricted.then(|| selected.clone()),
        permissions: permissions.clone(),
        expires_at,
    });
    let mut body = json!({
        "token": token.expose_secret(),
        "expires_at": ts(expires_at),
        "permissions": payloads::permissions(&permissions),
        "repository_selection": if restricted { "selected" } else { "all" },
    });
    if restricted {
        let listed: Vec<Value> = repos
            .iter()
            .filter(|r| selected.contains(&r.id))
            .map(|r| payloads::repository(&shared.links, r))
            .collect();
        body["repositories"] = Value::Array(listed);
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn installation_repositories(
    State(shared): AppState,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    let world = shared.world();
    let grant = require_token(&shared, &world, &headers)?;
    let items: Vec<Value> = world
        .repos_of_installation(grant.installation_id)
        .into_iter()
        .filter(|r| {
            grant
                .repo_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&r.id))
        })
        .map(|r| payloads::repository(&shared.links, r))
        .collect();
    drop(world);
    let total = items.len();
    let (page, link) =
        Paging::from_query(&query).apply(items, &shared.links, "installation/repositories", &query);
    let selection = if grant.repo_ids.is_some() {
        "selected"
    } else {
        "all"
    };
    Ok(paged(
        json!({ "total_count": total, "repositories": page, "repository_selection": selection }),
        link,
    ))
}
