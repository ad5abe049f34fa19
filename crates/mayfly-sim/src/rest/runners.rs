//! Self-hosted runners for a repository or an organisation: generate-jitconfig (strict body
//! validation, 409 on a duplicate name, a fresh RSA key per runner of which only the public half
//! is kept), list/get/delete, and the org's runner groups (one "Default" group, id 1).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rsa::RsaPublicKey;
use serde_json::{json, Value};

use super::{
    paged, parse_id, require_permission, require_token, visible_org, visible_repo, AppState,
    Paging, RestError,
};
use crate::jitconfig::JitConfig;
use crate::payloads;
use crate::server::Shared;
use crate::state::{Level, RunnerScope, DEFAULT_GROUP_ID, DEFAULT_GROUP_NAME};

type Shared_ = std::sync::Arc<Shared>;

pub(super) fn routes() -> Router<Shared_> {
    Router::new()
        .route(
            "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
            post(repo_jitconfig),
        )
        .route(
            "/orgs/{org}/actions/runners/generate-jitconfig",
            post(org_jitconfig),
        )
        .route("/repos/{owner}/{repo}/actions/runners", get(repo_list))
        .route("/orgs/{org}/actions/runners", get(org_list))
        .route(
            "/repos/{owner}/{repo}/actions/runners/{runner_id}",
            get(repo_get).delete(repo_delete),
        )
        .route(
            "/orgs/{org}/actions/runners/{runner_id}",
            get(org_get).delete(org_delete),
        )
        .route("/orgs/{org}/actions/runner-groups", get(runner_groups))
}

/// The scope a request names and the web path of that scope, after the token check.
struct Scope {
    scope: RunnerScope,
    web_path: String,
}

fn repo_scope(
    shared: &Shared,
    headers: &HeaderMap,
    owner: &str,
    repo: &str,
    level: Level,
) -> Result<Scope, RestError> {
    let world = shared.world();
    let grant = require_token(shared, &world, headers)?;
    let repo = visible_repo(&world, &grant, owner, repo)?;
    require_permission(&grant, "administration", level)?;
    Ok(Scope {
        scope: RunnerScope::Repo(repo.id),
        web_path: repo.full_name(),
    })
}

fn org_scope(
    shared: &Shared,
    headers: &HeaderMap,
    org: &str,
    level: Level,
) -> Result<Scope, RestError> {
    let world = shared.world();
    let grant = require_token(shared, &world, headers)?;
    let inst = visible_org(&world, &grant, org)?;
    require_permission(&grant, "organization_self_hosted_runners", level)?;
    Ok(Scope {
        scope: RunnerScope::Org(inst.id),
        web_path: inst.account.login,
    })
}

#[derive(Debug)]
struct JitRequest {
    name: String,
    runner_group_id: u64,
    labels: Vec<String>,
    work_folder: String,
}

fn describe(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Validates the generate-jitconfig body the way GitHub's schema validator does, collecting
/// every problem. Unknown fields are ignored.
fn parse_jit_request(body: &Bytes) -> Result<JitRequest, RestError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| RestError::BadJson)?;
    let Value::Object(map) = value else {
        return Err(RestError::InvalidRequest(vec![format!(
            "For 'links/0/schema', {} is not an object.",
            describe(&value)
        )]));
    };
    let mut errors = Vec::new();
    let name = match map.get("name") {
        None => {
            errors.push("\"name\" wasn't supplied.".to_string());
            None
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            errors
                .push("For 'properties/name', \"\" is too short (minimum is 1 character).".into());
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(format!(
                "For 'properties/name', {} is not a string.",
                describe(other)
            ));
            None
        }
    };
    let runner_group_id = match map.get("runner_group_id") {
        None => {
            errors.push("\"runner_group_id\" wasn't supplied.".to_string());
            None
        }
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(other) => {
            errors.push(format!(
                "For 'properties/runner_group_id', {} is not an integer.",
                describe(other)
            ));
            None
        }
    };
    let labels = match map.get("labels") {
        None => {
            errors.push("\"labels\" wasn't supplied.".to_string());
            None
        }
        Some(Value::Array(items)) => {
            if items.is_empty() {
                errors.push(
                    "For 'properties/labels', [] has fewer items than the minimum of 1.".into(),
                );
            } else if items.len() > 100 {
                errors.push(format!(
                    "For 'properties/labels', an array of {} items has more items than the maximum of 100.",
                    items.len()
                ));
            }
            let mut labels = Vec::new();
            for item in items {
                match item {
                    Value::String(s) if !s.trim().is_empty() => labels.push(s.clone()),
                    Value::String(_) => errors
                        .push("For 'items', \"\" is too short (minimum is 1 character).".into()),
                    other => {
                        errors.push(format!("For 'items', {} is not a string.", describe(other)))
                    }
                }
            }
            Some(labels)
        }
        Some(other) => {
            errors.push(format!(
                "For 'properties/labels', {} is not an array.",
                describe(other)
            ));
            None
        }
    };
    let work_folder = match map.get("work_folder") {
        None => Some("_work".to_string()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            errors.push(format!(
                "For 'properties/work_folder', {} is not a string.",
                describe(other)
            ));
            None
        }
    };
    if let Some(id) = runner_group_id.filter(|id| *id != DEFAULT_GROUP_ID) {
        errors.push(format!(
            "Runner group with id {id} does not exist or is not accessible."
        ));
    }
    match (name, runner_group_id, labels, work_folder) {
        (Some(name), Some(runner_group_id), Some(labels), Some(work_folder))
            if errors.is_empty() =>
        {
            Ok(JitRequest {
                name,
                runner_group_id,
                labels,
                work_folder,
            })
        }
        _ => Err(RestError::InvalidRequest(errors)),
    }
}

async fn jitconfig(shared: Shared_, scope: Scope, body: Bytes) -> Result<Response, RestError> {
    let request = parse_jit_request(&body)?;
    let private_key = match shared.runner_keys.as_ref().and_then(|pool| pool.next()) {
        Some(key) => key,
        None => tokio::task::spawn_blocking(crate::keys::generate_rsa_2048)
            .await
            .map_err(|_| RestError::Internal)?
            .map_err(|_| RestError::Internal)?,
    };
    let client_id = uuid::Uuid::new_v4().to_string();
    let runner = shared.world().register_runner(
        scope.scope,
        &request.name,
        &request.labels,
        client_id.clone(),
        RsaPublicKey::from(&private_key),
    )?;
    let config = JitConfig {
        agent_id: runner.id,
        agent_name: runner.name.clone(),
        pool_id: request.runner_group_id,
        pool_name: DEFAULT_GROUP_NAME.into(),
        server_url: shared.base_url.to_string(),
        github_url: shared.links.at(&scope.web_path),
        work_folder: request.work_folder,
        client_id,
        authorization_url: shared.links.at("_sim/runner/token"),
        private_key,
    };
    let encoded = config.encode().map_err(|_| RestError::Internal)?;
    let body = json!({ "runner": payloads::runner(&runner), "encoded_jit_config": encoded });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn repo_jitconfig(
    State(shared): AppState,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, RestError> {
    let scope = repo_scope(&shared, &headers, &owner, &repo, Level::Write)?;
    jitconfig(shared, scope, body).await
}

async fn org_jitconfig(
    State(shared): AppState,
    headers: HeaderMap,
    Path(org): Path<String>,
    body: Bytes,
) -> Result<Response, RestError> {
    let scope = org_scope(&shared, &headers, &org, Level::Write)?;
    jitconfig(shared, scope, body).await
}

fn list(shared: &Shared, scope: &Scope, query: &HashMap<String, String>, path: &str) -> Response {
    let items: Vec<Value> = shared
        .world()
        .runners_in(scope.scope)
        .into_iter()
        .filter(|r| query.get("name").is_none_or(|n| r.name == *n))
        .map(payloads::runner)
        .collect();
    let total = items.len();
    let (page, link) = Paging::from_query(query).apply(items, &shared.links, path, query);
    paged(json!({ "total_count": total, "runners": page }), link)
}

async fn repo_list(
    State(shared): AppState,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    let scope = repo_scope(&shared, &headers, &owner, &repo, Level::Read)?;
    let path = format!("repos/{}/actions/runners", scope.web_path);
    Ok(list(&shared, &scope, &query, &path))
}

async fn org_list(
    State(shared): AppState,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    let scope = org_scope(&shared, &headers, &org, Level::Read)?;
    let path = format!("orgs/{}/actions/runners", scope.web_path);
    Ok(list(&shared, &scope, &query, &path))
}

fn get_one(shared: &Shared, scope: &Scope, runner_id: &str) -> Result<Response, RestError> {
    let id = parse_id(runner_id)?;
    let world = shared.world();
    let runner = world
        .runners
        .get(&id)
        .filter(|r| r.scope == scope.scope)
        .ok_or(RestError::NotFound)?;
    Ok(Json(payloads::runner(runner)).into_response())
}

fn delete_one(shared: &Shared, scope: &Scope, runner_id: &str) -> Result<Response, RestError> {
    let id = parse_id(runner_id)?;
    shared.world().delete_runner(scope.scope, id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn repo_get(
    State(shared): AppState,
    headers: HeaderMap,
    Path((owner, repo, runner_id)): Path<(String, String, String)>,
) -> Result<Response, RestError> {
    let scope = repo_scope(&shared, &headers, &owner, &repo, Level::Read)?;
    get_one(&shared, &scope, &runner_id)
}

async fn org_get(
    State(shared): AppState,
    headers: HeaderMap,
    Path((org, runner_id)): Path<(String, String)>,
) -> Result<Response, RestError> {
    let scope = org_scope(&shared, &headers, &org, Level::Read)?;
    get_one(&shared, &scope, &runner_id)
}

async fn repo_delete(
    State(shared): AppState,
    headers: HeaderMap,
    Path((owner, repo, runner_id)): Path<(String, String, String)>,
) -> Result<Response, RestError> {
    let scope = repo_scope(&shared, &headers, &owner, &repo, Level::Write)?;
    delete_one(&shared, &scope, &runner_id)
}

async fn org_delete(
    State(shared): AppState,
    headers: HeaderMap,
    Path((org, runner_id)): Path<(String, String)>,
) -> Result<Response, RestError> {
    let scope = org_scope(&shared, &headers, &org, Level::Write)?;
    delete_one(&shared, &scope, &runner_id)
}

async fn runner_groups(
    State(shared): AppState,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Result<Response, RestError> {
    let scope = org_scope(&shared, &headers, &org, Level::Read)?;
    let group = payloads::runner_group(&shared.links, &scope.web_path);
    Ok(Json(json!({ "total_count": 1, "runner_groups": [group] })).into_response())
}
