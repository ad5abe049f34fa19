//! Workflow runs and jobs of a repository, what a client reconciles missed webhooks with:
//! `GET …/actions/jobs/{job_id}`, `…/actions/runs` (with `status` filter), `…/runs/{run_id}`
//! and `…/runs/{run_id}/jobs`. A run's status is derived from its jobs.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{
    paged, parse_id, require_permission, require_token, visible_repo, AppState, Paging, RestError,
};
use crate::payloads;
use crate::server::Shared;
use crate::state::Level;
use crate::state::{Repo, World};

pub(super) fn routes() -> Router<std::sync::Arc<Shared>> {
    Router::new()
        .route("/repos/{owner}/{repo}/actions/jobs/{job_id}", get(get_job))
        .route("/repos/{owner}/{repo}/actions/runs", get(list_runs))
        .route("/repos/{owner}/{repo}/actions/runs/{run_id}", get(get_run))
        .route(
            "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
            get(run_jobs),
        )
}

fn run_json(shared: &Shared, world: &World, run_id: u64, repo: &Repo) -> Option<Value> {
    let run = world.runs.get(&run_id).filter(|r| r.repo_id == repo.id)?;
    let (status, conclusion) = world.run_status(run_id);
    Some(payloads::workflow_run(
        &shared.links,
        run,
        repo,
        status,
        conclusion,
    ))
}

async fn get_job(
    State(shared): AppState,
    headers: HeaderMap,
    Path((owner, repo, job_id)): Path<(String, String, String)>,
) -> Result<Response, RestError> {
    let job_id = parse_id(&job_id)?;
    let world = shared.world();
    let grant = require_token(&shared, &world, &headers)?;
    let repo = visible_repo(&world, &grant, &owner, &repo)?;
    require_permission(&grant, "actions", Level::Read)?;
    let job = world
        .jobs
        .get(&job_id)
        .filter(|j| j.repo_id == repo.id)
        .ok_or(RestError::NotFound)?;
    let run = world.runs.get(&job.run_id).ok_or(RestError::NotFound)?;
    Ok(Json(payloads::job(&shared.links, job, run, &repo)).into_response())
}

async fn list_runs(
    State(shared): AppState,
    headers: HeaderMap,
    Path((owner, repo)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    let world = shared.world();
    let grant = require_token(&shared, &world, &headers)?;
    let repo = visible_repo(&world, &grant, &owner, &repo)?;
    require_permission(&grant, "actions", Level::Read)?;
    let wanted = query.get("status").map(String::as_str);
    // Newest first, as GitHub lists runs.
    let items: Vec<Value> = world
        .runs
        .values()
        .rev()
        .filter(|run| run.repo_id == repo.id)
        .filter(|run| {
            let (status, conclusion) = world.run_status(run.id);
            wanted.is_none_or(|w| w == status || Some(w) == conclusion)
        })
        .filter_map(|run| run_json(&shared, &world, run.id, &repo))
        .collect();
    drop(world);
    let total = items.len();
    let path = format!("repos/{}/actions/runs", repo.full_name());
    let (page, link) = Paging::from_query(&query).apply(items, &shared.links, &path, &query);
    Ok(paged(
        json!({ "total_count": total, "workflow_runs": page }),
        link,
    ))
}

async fn get_run(
    State(shared): AppState,
    headers: HeaderMap,
    Path((owner, repo, run_id)): Path<(String, String, String)>,
) -> Result<Response, RestError> {
    let run_id = parse_id(&run_id)?;
    let world = shared.world();
    let grant = require_token(&shared, &world, &headers)?;
    let repo = visible_repo(&world, &grant, &owner, &repo)?;
    require_permission(&grant, "actions", Level::Read)?;
    let run = run_json(&shared, &world, run_id, &repo).ok_or(RestError::NotFound)?;
    Ok(Json(run).into_response())
}

async fn run_jobs(
    State(shared): AppState,
    headers: HeaderMap,
    Path((owner, repo, run_id)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, RestError> {
    let run_id = parse_id(&run_id)?;
    let world = shared.world();
    let grant = require_token(&shared, &world, &headers)?;
    let repo = visible_repo(&world, &grant, &owner, &repo)?;
    require_permission(&grant, "actions", Level::Read)?;
    let run = world
        .runs
        .get(&run_id)
        .filter(|r| r.repo_id == repo.id)
        .ok_or(RestError::NotFound)?;
    let items: Vec<Value> = world
        .jobs_of_run(run_id)
        .into_iter()
        .map(|job| payloads::job(&shared.links, job, run, &repo))
        .collect();
    drop(world);
    let total = items.len();
    let path = format!("repos/{}/actions/runs/{run_id}/jobs", repo.full_name());
    let (page, link) = Paging::from_query(&query).apply(items, &shared.links, &path, &query);
    Ok(paged(json!({ "total_count": total, "jobs": page }), link))
}
