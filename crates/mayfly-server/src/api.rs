//! `/api/v1`: read access to jobs, VMs, usage, installations and the audit log, with bearer
//! tokens. `admin` sees everything, `read` everything but the audit log, a `tenant` token only
//! its own installation's rows. Every call is audited before its answer leaves; when the audit
//! row cannot be written the call fails (503). Malformed, unknown and revoked tokens get 401 with
//! no detail; a wrong scope gets 403 and no data. The OpenAPI document is generated from this
//! file (utoipa) and served at `/api/v1/openapi.json`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use mayfly_store::{JobRecord, NewAudit, TokenRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::error::ApiError;
use crate::refusals::Route;
use crate::tokens::{self, Scope};
use crate::usage;
use crate::AppState;

const BAD_QUERY: &str = "the query parameters are not valid (installation is a 64-bit integer)";

/// Who is calling, once their token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub scope: Scope,
}

impl Caller {
    fn from_row(row: &TokenRow) -> Option<Self> {
        Some(Self {
            token_id: row.id.clone(),
            scope: Scope::from_row(row)?,
        })
    }

    /// Whether rows of `installation` (`None`: rows of no installation) may be shown.
    fn may_see(&self, installation: Option<i64>) -> bool {
        match self.scope {
            Scope::Admin | Scope::Read => true,
            Scope::Tenant(own) => installation == Some(own),
        }
    }

    /// The installation a listing is limited to: the one asked for (if allowed), or a tenant's
    /// own.
    fn listing(&self, asked: Option<i64>) -> Result<Option<i64>, ApiError> {
        match (self.scope, asked) {
            (Scope::Tenant(own), Some(asked)) if asked != own => Err(ApiError::Forbidden),
            (Scope::Tenant(own), _) => Ok(Some(own)),
            (_, asked) => Ok(asked),
        }
    }
}

/// The routes under `/api/v1`, behind the token check and the audit.
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let protected = Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/jobs/{job_id}", get(get_job))
        .route("/api/v1/vms", get(list_vms))
        .route("/api/v1/usage", get(usage))
        .route("/api/v1/usage/report", get(usage_report))
        .route("/api/v1/usage/summary", get(usage_summary))
        .route("/api/v1/usage/top", get(usage_top))
        .route("/api/v1/usage/jobs", get(usage_jobs))
        .route("/api/v1/installations", get(installations))
        .route("/api/v1/audit", get(audit_log))
        .route_layer(axum::middleware::from_fn_with_state(state, authenticate));
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/agents/server-ca", get(server_ca))
        .route("/api/v1/agents/enrol", axum::routing::post(enrol))
        .merge(protected)
}

/// Checks the bearer token, runs the call, and audits it (who, what, from where, outcome)
/// before the answer leaves.
async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let source = peer(request.extensions());
    // Without a token there is nothing to check; a token is looked up even from a limited
    // source, so a good one always gets through.
    if bearer(request.headers()).is_none() {
        if let Err(limited) = state.turn_away(source.as_deref(), Route::Api) {
            return limited.into_response();
        }
    }
    let action = format!("api {} {}", request.method(), request.uri().path());
    let target = request.uri().query().map(str::to_owned);
    let caller = match bearer_caller(&state, request.headers()).await {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let Some(caller) = caller else {
        let response = ApiError::Unauthorized.into_response();
        let outcome = response.status().as_u16().to_string();
        let audited = state
            .audit_refusal(Route::Api, "anonymous", source, action, target, outcome)
            .await;
        return audited.map_or_else(IntoResponse::into_response, |()| response);
    };
    let actor = format!("token:{}", caller.token_id);
    request.extensions_mut().insert(caller);
    let response = next.run(request).await;
    let outcome = response.status().as_u16().to_string();
    if let Err(e) = state.audit(&actor, source, action, target, outcome).await {
        return e.into_response();
    }
    response
}

/// The caller's address, for the audit log (absent when the router runs without one).
pub(crate) fn peer(extensions: &axum::http::Extensions) -> Option<String> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.to_string())
}

/// The caller a request's bearer token names: `None` without one, or for a malformed,
/// unknown or revoked token; `Unavailable` when the store cannot say.
pub(crate) async fn bearer_caller(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<Option<Caller>, ApiError> {
    let Some(presented) = bearer(headers) else {
        return Ok(None);
    };
    match tokens::lookup(state.store.as_ref(), presented).await {
        Ok(found) => Ok(found.as_ref().and_then(Caller::from_row)),
        Err(e) => {
            tracing::error!(error = %crate::error::chain(&e), "token lookup failed");
            Err(ApiError::Unavailable)
        }
    }
}

impl AppState {
    /// Appends an access to the audit log. When it cannot be written the log says why and the
    /// answer is `Unavailable`: an access that is not on record must not happen.
    pub(crate) async fn audit(
        &self,
        actor: &str,
        source: Option<String>,
        action: String,
        target: Option<String>,
        outcome: String,
    ) -> Result<(), ApiError> {
        let event = NewAudit {
            at: self.clock.now(),
            actor: actor.to_owned(),
            source,
            action,
            target,
            outcome,
        };
        self.store
            .append_audit(&event)
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::error!(error = %crate::error::chain(&e), action = %event.action,
                "could not write the audit row; refusing the access");
                ApiError::Unavailable
            })
    }
}

/// The token of `Authorization: Bearer <token>`, if the header is well-formed.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn caller(request_caller: Option<axum::Extension<Caller>>) -> Result<Caller, ApiError> {
    request_caller
        .map(|axum::Extension(c)| c)
        .ok_or(ApiError::Unauthorized)
}

fn store_error(e: mayfly_store::StoreError) -> ApiError {
    tracing::error!(error = %crate::error::chain(&e), "API store read failed");
    ApiError::Unavailable
}

/// The caller's own token.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub token_id: String,
    /// `admin`, `read` or `tenant`
    pub scope: String,
    pub installation_id: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "tokens",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
async fn whoami(c: Option<axum::Extension<Caller>>) -> Result<Json<WhoAmI>, ApiError> {
    let c = caller(c)?;
    Ok(Json(WhoAmI {
        token_id: c.token_id,
        scope: c.scope.name().to_owned(),
        installation_id: c.scope.installation(),
    }))
}

/// Restricts a listing to one installation.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstallationFilter {
    /// Only rows of this installation. A tenant token may name only its own.
    pub installation: Option<i64>,
}

/// A page of a listing. Pages follow each other through the `Link` header's `rel="next"` URL
/// (absent on the last page): rows are in a fixed order and a cursor names the last row of a
/// page, so paging through while rows are added returns each row at most once, and every row
/// that was there when the paging began exactly once.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListPage {
    /// Only rows of this installation. A tenant token may name only its own.
    pub installation: Option<i64>,
    /// The cursor from the previous page's `Link` header (opaque).
    pub after: Option<String>,
    /// At most this many rows (1 to 1000; default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

impl ListPage {
    fn limit(&self) -> Result<u32, ApiError> {
        match self.limit.unwrap_or(MAX_PAGE) {
            n @ 1..=MAX_PAGE => Ok(n),
            _ => Err(ApiError::BadRequest("limit is 1 to 1000")),
        }
    }

    /// The `after` cursor, read by `parse`.
    fn after<T>(&self, parse: impl FnOnce(&str) -> Option<T>) -> Result<Option<T>, ApiError> {
        self.after
            .as_deref()
            .map(|raw| {
                parse(raw).ok_or(ApiError::BadRequest("after is a cursor from a Link header"))
            })
            .transpose()
    }

    /// `rows`, read with one more than `limit`, cut to the page; with the `Link` header for
    /// the next page (after the last row's `cursor`) when that extra row came.
    fn cut<T>(
        &self,
        path: &str,
        mut rows: Vec<T>,
        limit: u32,
        cursor: impl FnOnce(&T) -> String,
    ) -> (Vec<T>, Option<String>) {
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next = rows.last().filter(|_| more).map(|last| {
            let mut url = format!("{path}?after={}&limit={limit}", cursor(last));
            if let Some(i) = self.installation {
                url.push_str(&format!("&installation={i}"));
            }
            format!("<{url}>; rel=\"next\"")
        });
        (rows, next)
    }
}

/// The most rows one page holds.
const MAX_PAGE: u32 = 1000;

/// A listing's rows with, when more may follow, the `Link` to the next page.
fn paged<T: Serialize>(rows: Vec<T>, next: Option<String>) -> Response {
    let mut response = Json(rows).into_response();
    if let Some(link) = next.and_then(|l| axum::http::HeaderValue::from_str(&l).ok()) {
        response
            .headers_mut()
            .insert(axum::http::header::LINK, link);
    }
    response
}

/// A job's metadata: who started it, where, when, on what hardware, how it ended.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub job_id: i64,
    pub run_id: i64,
    pub installation_id: Option<i64>,
    pub repository: String,
    pub org: Option<String>,
    /// Login of the user who triggered the run.
    pub sender: String,
    /// `queued`, `waiting`, `in_progress` or `completed`
    pub status: String,
    pub conclusion: Option<String>,
    pub labels: Vec<String>,
    pub job_name: String,
    pub workflow_name: Option<String>,
    /// The hardware profile it ran on.
    pub profile: Option<String>,
    /// What mayfly did: `new`, `placing`, `placed`, `ignored`, `failed` or `skipped`.
    pub disposition: String,
    pub failure: Option<String>,
    pub runner_name: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub first_seen_at: DateTime<Utc>,
}

impl From<&JobRecord> for JobView {
    fn from(j: &JobRecord) -> Self {
        Self {
            job_id: j.job_id.0,
            run_id: j.run_id.0,
            installation_id: j.installation_id.map(|i| i.0),
            repository: j.repo.to_string(),
            org: j.org.clone(),
            sender: j.sender.clone(),
            status: j.status.as_str().to_owned(),
            conclusion: j.conclusion.clone(),
            labels: j.labels.clone(),
            job_name: j.job_name.clone(),
            workflow_name: j.workflow_name.clone(),
            profile: j.dispatch.profile.clone(),
            disposition: j.dispatch.disposition.clone(),
            failure: j.dispatch.failure.clone(),
            runner_name: j.runner_name.clone(),
            created_at: j.created_at,
            started_at: j.started_at,
            completed_at: j.completed_at,
            first_seen_at: j.first_seen_at,
        }
    }
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListPage),
    responses((status = 200, body = [JobView], description = "Jobs in job id order, a page at a time",
            headers(("link" = String, description = "`<URL>; rel=\"next\"`: the next page, when there may be one"))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_jobs(
    State(state): State<Arc<AppState>>,
    c: Option<axum::Extension<Caller>>,
    page: Result<Query<ListPage>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(|_| ApiError::BadRequest(BAD_QUERY))?;
    let only = caller(c)?.listing(page.installation)?;
    let limit = page.limit()?;
    let after = page.after(|raw| raw.parse::<i64>().ok())?;
    let jobs = state
        .store
        .jobs_page(only, after, limit + 1)
        .await
        .map_err(store_error)?;
    let (jobs, next) = page.cut("/api/v1/jobs", jobs, limit, |j| j.job_id.0.to_string());
    Ok(paged(jobs.iter().map(JobView::from).collect(), next))
}

#[utoipa::path(get, path = "/api/v1/jobs/{job_id}", tag = "jobs",
    params(("job_id" = i64, Path, description = "GitHub's job id")),
    responses((status = 200, body = JobView), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_job(
    State(state): State<Arc<AppState>>,
    c: Option<axum::Extension<Caller>>,
    job_id: Result<Path<i64>, PathRejection>,
) -> Result<Json<JobView>, ApiError> {
    let c = caller(c)?;
    let Path(job_id) =
        job_id.map_err(|_| ApiError::BadRequest("job_id must be a 64-bit integer"))?;
    let job = state
        .store
        .job(mayfly_core::JobId(job_id))
        .await
        .map_err(store_error)?;
    match job {
        Some(job) if c.may_see(job.installation_id.map(|i| i.0)) => Ok(Json(JobView::from(&job))),
        Some(_) => Err(ApiError::Forbidden),
        None => Err(ApiError::NotFound),
    }
}

/// One VM mayfly asked an agent for, and what became of it.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmView {
    pub start_id: String,
    pub vm_id: Option<String>,
    pub host: String,
    pub profile: String,
    /// 0 for a warm pool VM not given a job yet (it belongs to no tenant).
    pub installation_id: i64,
    /// Empty for a warm pool VM not given a job yet.
    pub repository: String,
    /// The job it was started for; when another VM's runner took that job first, the job it
    /// now waits for. 0 for a warm pool VM not given a job yet.
    pub for_job_id: i64,
    /// The job its runner ran.
    pub ran_job_id: Option<i64>,
    /// `requested`, `started`, `warm` (a pool VM waiting for its job), `booted`, `exited`,
    /// `destroyed`, `failed` or `lost`
    pub state: String,
    /// Started for the warm pool, before any job.
    pub pool: bool,
    /// The image it was started from.
    pub image: Option<String>,
    /// A pool VM's guest was ready, waiting for a job.
    pub warm_at: Option<DateTime<Utc>>,
    /// A pool VM was given its one job.
    pub assigned_at: Option<DateTime<Utc>>,
    pub requested_at: DateTime<Utc>,
    /// The VM process started.
    pub started_at: Option<DateTime<Utc>>,
    /// The guest was ready and took the runner's config.
    pub booted_at: Option<DateTime<Utc>>,
    /// The guest started the runner process.
    pub runner_started_at: Option<DateTime<Utc>>,
    /// The runner exited.
    pub exited_at: Option<DateTime<Utc>>,
    pub destroyed_at: Option<DateTime<Utc>>,
    pub failure: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/vms", tag = "vms", params(ListPage),
    responses((status = 200, body = [VmView], description = "VMs in the order they were requested, a page at a time",
            headers(("link" = String, description = "`<URL>; rel=\"next\"`: the next page, when there may be one"))),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_vms(
    State(state): State<Arc<AppState>>,
    c: Option<axum::Extension<Caller>>,
    page: Result<Query<ListPage>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(|_| ApiError::BadRequest(BAD_QUERY))?;
    let only = caller(c)?.listing(page.installation)?;
    let limit = page.limit()?;
    let after = page.after(vm_cursor)?;
    let vms = state
        .store
        .vms_page(only, after, limit + 1)
        .await
        .map_err(store_error)?;
    let (vms, next) = page.cut("/api/v1/vms", vms, limit, |v| {
        let nanos = v.requested_at.timestamp_nanos_opt().unwrap_or(i64::MAX);
        format!("{nanos}.{}", v.start_id)
    });
    let views = vms
        .into_iter()
        .map(|v| VmView {
            start_id: v.start_id,
            vm_id: v.vm_id,
            host: v.host,
            profile: v.profile,
            installation_id: v.installation_id,
            repository: v.repo,
            for_job_id: v.for_job_id,
            ran_job_id: v.ran_job_id,
            state: v.state,
            pool: v.pool,
            image: v.image,
            warm_at: v.warm_at,
            assigned_at: v.assigned_at,
            requested_at: v.requested_at,
            started_at: v.started_at,
            booted_at: v.booted_at,
            runner_started_at: v.runner_started_at,
            exited_at: v.exited_at,
            destroyed_at: v.destroyed_at,
            failure: v.failure,
        })
        .collect();
    Ok(paged(views, next))
}

/// A VM page cursor: `<requested_at in ns since the epoch>.<start id>`.
fn vm_cursor(raw: &str) -> Option<(DateTime<Utc>, String)> {
    let (nanos, start_id) = raw.split_once('.')?;
    let at = DateTime::<Utc>::from_timestamp_nanos(nanos.parse().ok()?);
    (!start_id.is_empty()
        && start_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-'))
    .then(|| (at, start_id.to_owned()))
}

/// Usage of one installation on one day (UTC) on one hardware profile.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub installation_id: i64,
    /// `YYYY-MM-DD`
    pub day: String,
    pub profile: String,
    pub jobs: i64,
    pub run_seconds: i64,
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "usage", params(InstallationFilter),
    responses((status = 200, body = [UsageView]), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn usage(
    State(state): State<Arc<AppState>>,
    c: Option<axum::Extension<Caller>>,
    filter: Result<Query<InstallationFilter>, QueryRejection>,
) -> Result<Json<Vec<UsageView>>, ApiError> {
    let Query(filter) = filter.map_err(|_| ApiError::BadRequest(BAD_QUERY))?;
    let only = caller(c)?.listing(filter.installation)?;
    let rows = state.store.usage(only).await.map_err(store_error)?;
    Ok(Json(
        rows.into_iter()
            .map(|u| UsageView {
                installation_id: u.installation_id,
                day: u.day,
                profile: u.profile,
                jobs: u.jobs,
                run_seconds: u.run_seconds,
            })
            .collect(),
    ))
}

/// Whose usage a caller may see: a tenant token its installation, others everything.
fn visible(c: &Caller) -> usage::Visible {
    match c.scope {
        Scope::Tenant(own) => usage::Visible::Only([own].into()),
        Scope::Admin | Scope::Read => usage::Visible::All,
    }
}

async fn report_for(
    state: &AppState,
    c: Option<axum::Extension<Caller>>,
    params: Result<Query<usage::ReportParams>, QueryRejection>,
) -> Result<(usage::Report, usage::ReportParams), ApiError> {
    let c = caller(c)?;
    let Query(params) = params.map_err(|e| ApiError::Invalid(e.body_text()))?;
    c.listing(params.installation)?;
    Ok(usage::load(state, &visible(&c), params).await?)
}

#[utoipa::path(get, path = "/api/v1/usage/report", tag = "usage", params(usage::ReportParams),
    description = "Everything the usage dashboard shows for a range of UTC days: per-day numbers, top repositories and workflows, webhook delivery health and the per-job log with each job's phase waterfall.",
    responses((status = 200, body = usage::Report), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn usage_report(
    State(state): State<Arc<AppState>>,
    c: Option<axum::Extension<Caller>>,
    params: Result<Query<usage::ReportParams>, QueryRejection>,
) -> Result<Json<usage::Report>, ApiError> {
    Ok(Json(report_for(&state, c, params).await?.0))
}

#[utoipa::path(get, path = "/api/v1/usage/summary", tag = "usage", params(usage::ReportParams),
    description = "Jobs, executed/billed/VM seconds, failure rate and queue percentiles, grouped by `by` (default `day`).",
    responses((status = 200, body = [usage::GroupRow]), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn usage_summary(
    State(state): State<Arc<AppState>>,
    c: Option<axum::Extension<Caller>>,
    params: Result<Query<usage::ReportParams>, QueryRejection>,
) -> Result<Json<Vec<usage::GroupRow>>, ApiError> {
    let (report, params) = report_for(&state, c, params).await?;
    let keys = usage::GroupKey::parse_list(params.by.as_deref().unwrap_or("day"))
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    Ok(Json(usage::group(&report.jobs, &keys)))
}

#[utoipa::path(get, path = "/api/v1/usage/top", tag = "usage", params(usage::ReportParams),
    description = "The repositories (or workflows, machine types: `by`) with the most billed minutes, at most 20.",
    responses((status = 200, body = [usage::GroupRow]), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn usage_top(
    State(state): State<Arc<AppState>>,
    c: Option<axum::Extension<Caller>>,
    params: Result<Query<usage::ReportParams>, QueryRejection>,
) -> Result<Json<Vec<usage::GroupRow>>, ApiError> {
    let (report, params) = report_for(&state, c, params).await?;
    let keys = usage::GroupKey::parse_list(params.by.as_deref().unwrap_or("repo"))
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    let [key] = keys[..] else {
        return Err(ApiError::BadRequest(
            "top groups by one of repo, workflow, machine-type or day",
        ));
    };
    Ok(Json(usage::top(&report.jobs, key, 20)))
}

#[utoipa::path(get, path = "/api/v1/usage/jobs", tag = "usage", params(usage::ReportParams),
    description = "The per-job log, newest first: executed and billed seconds and the phase waterfall of each job.",
    responses((status = 200, body = [usage::JobLine]), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn usage_jobs(
    State(state): State<Arc<AppState>>,
    c: Option<axum::Extension<Caller>>,
    params: Result<Query<usage::ReportParams>, QueryRejection>,
) -> Result<Json<Vec<usage::JobLine>>, ApiError> {
    Ok(Json(report_for(&state, c, params).await?.0.jobs))
}

/// An installation of the GitHub App (a tenant).
#[derive(Debug, Serialize, ToSchema)]
pub struct InstallationView {
    pub installation_id: i64,
    pub account: Option<String>,
    /// `active`, `suspended` or `deleted`
    pub state: String,
    pub repositories: Vec<String>,
}

#[utoipa::path(get, path = "/api/v1/installations", tag = "installations",
    params(InstallationFilter),
    responses((status = 200, body = [InstallationView]), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn installations(
    State(state): State<Arc<AppState>>,
    c: Option<axum::Extension<Caller>>,
    filter: Result<Query<InstallationFilter>, QueryRejection>,
) -> Result<Json<Vec<InstallationView>>, ApiError> {
    let Query(filter) = filter.map_err(|_| ApiError::BadRequest(BAD_QUERY))?;
    let only = caller(c)?.listing(filter.installation)?;
    let rows = state.store.installations().await.map_err(store_error)?;
    Ok(Json(
        rows.into_iter()
            .filter(|i| only.is_none_or(|o| i.installation_id.0 == o))
            .map(|i| InstallationView {
                installation_id: i.installation_id.0,
                account: i.account,
                state: i.state,
                repositories: i.repos.iter().map(ToString::to_string).collect(),
            })
            .collect(),
    ))
}

/// A page of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditPage {
    /// Rows after this sequence number (default 0: from the start).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// At most this many rows (default and maximum 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Not allowed here: the audit log is the operator's (admin tokens only).
    pub installation: Option<i64>,
}

/// One audit row with its place in the hash chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub source: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditPage),
    responses((status = 200, body = [AuditView]), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn audit_log(
    State(state): State<Arc<AppState>>,
    c: Option<axum::Extension<Caller>>,
    page: Result<Query<AuditPage>, QueryRejection>,
) -> Result<Json<Vec<AuditView>>, ApiError> {
    if !matches!(caller(c)?.scope, Scope::Admin) {
        return Err(ApiError::Forbidden);
    }
    let Query(page) = page.map_err(|_| ApiError::BadRequest(BAD_QUERY))?;
    let limit = page.limit.unwrap_or(1000);
    if !(1..=1000).contains(&limit) || page.after.is_some_and(|a| a < 0) {
        return Err(ApiError::BadRequest(
            "limit is 1 to 1000, after is 0 or more",
        ));
    }
    let rows = state
        .store
        .audit_log(page.after.unwrap_or(0), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(
        rows.into_iter()
            .map(|r| AuditView {
                seq: r.seq,
                at: r.at,
                actor: r.actor,
                source: r.source,
                action: r.action,
                target: r.target,
                outcome: r.outcome,
                prev_hash: r.prev_hash,
                hash: r.hash,
            })
            .collect(),
    ))
}

/// The CA certificate that issued this server's TLS certificate (PEM). Agents fetch it before
/// they enrol and accept it only if its SHA-256 is the one their bootstrap token carries.
#[utoipa::path(get, path = "/api/v1/agents/server-ca", tag = "agents",
    responses((status = 200, description = "PEM certificate", content_type = "application/x-pem-file"),
        (status = 404, body = ErrorBody)))]
async fn server_ca(State(state): State<Arc<AppState>>) -> Response {
    match &state.pki {
        Some(pki) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pki.server_ca_pem.clone(),
        )
            .into_response(),
        None => ApiError::NotFound.into_response(),
    }
}

/// Trades a one-time bootstrap token and a CSR for the agent's client certificate. A token
/// that is malformed, unknown, used or expired gets 401; every attempt is audited before it is
/// looked at, and its outcome after.
#[utoipa::path(post, path = "/api/v1/agents/enrol", tag = "agents",
    request_body = crate::agent_pki::EnrolRequest,
    responses((status = 200, body = crate::agent_pki::EnrolResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn enrol(
    State(state): State<Arc<AppState>>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    body: axum::body::Bytes,
) -> Response {
    let (Some(pki), Some(agent_port)) = (&state.pki, state.agent_port) else {
        return ApiError::NotFound.into_response();
    };
    let source = connect.map(|axum::Extension(ConnectInfo(a))| a.to_string());
    if let Err(limited) = state.turn_away(source.as_deref(), Route::Enrol) {
        return limited.into_response();
    }
    let request: Option<crate::agent_pki::EnrolRequest> = serde_json::from_slice(&body).ok();
    let token_id = request
        .as_ref()
        .and_then(|r| crate::agent_pki::BootstrapClaims::decode(&r.token))
        .map(|c| c.id);
    let actor = token_id
        .as_ref()
        .map_or_else(|| "anonymous".to_owned(), |id| format!("bootstrap:{id}"));
    // Audited before anything happens: an enrolment that cannot be recorded does not happen.
    let attempt = state
        .audit(
            &actor,
            source.clone(),
            "agent enrol".into(),
            None,
            "attempt".into(),
        )
        .await;
    if let Err(e) = attempt {
        return e.into_response();
    }
    let (outcome, response) = match &request {
        None => (
            "refused: not an enrolment request".to_owned(),
            ApiError::BadRequest("expected JSON with token and csr_pem").into_response(),
        ),
        Some(request) => match crate::agent_pki::enrol(state.store.as_ref(), pki, request).await {
            Ok((agent, cert_pem)) => (
                format!("ok: agent {agent}"),
                Json(crate::agent_pki::EnrolResponse {
                    agent,
                    cert_pem,
                    agent_port,
                })
                .into_response(),
            ),
            Err(crate::agent_pki::EnrolRefusal::Token(why)) => (
                format!("refused: token {why}"),
                ApiError::Unauthorized.into_response(),
            ),
            Err(crate::agent_pki::EnrolRefusal::Csr(why)) => (
                format!("refused: {why}"),
                ApiError::BadRequest("csr_pem is not a valid certificate signing request")
                    .into_response(),
            ),
            Err(crate::agent_pki::EnrolRefusal::Store(e)) => {
                tracing::error!(error = %crate::error::chain(&e), "enrolment failed");
                (
                    "failed: store".to_owned(),
                    ApiError::Unavailable.into_response(),
                )
            }
        },
    };
    let action = "agent enrol".to_owned();
    let audited = if response.status().is_client_error() {
        state
            .audit_refusal(Route::Enrol, &actor, source, action, None, outcome)
            .await
    } else {
        state.audit(&actor, source, action, None, outcome).await
    };
    if let Err(e) = audited {
        return e.into_response();
    }
    response
}

/// Every refusal: a stable code, and a message except on 401.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub code: String,
    pub message: Option<String>,
}

#[derive(Debug)]
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `mayfly token create`: admin, read, or tenant (one installation).",
                    ))
                    .build(),
            ),
        );
        // Every operation behind the refusal limits (refusals.rs) may answer 429.
        let limited = rate_limited_response();
        for (path, item) in &mut openapi.paths.paths {
            if path == "/api/v1/agents/server-ca" {
                continue;
            }
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                operation
                    .responses
                    .responses
                    .insert("429".to_owned(), limited.clone().into());
            }
        }
    }
}

/// 429: the caller's address was refused too often; `Retry-After` says when to try again.
fn rate_limited_response() -> utoipa::openapi::Response {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder};
    let seconds = HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::Integer))
        .description(Some("Seconds until this address may try again"))
        .build();
    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    ResponseBuilder::new()
        .description("Too many refused requests from this address")
        .header("Retry-After", seconds)
        .content("application/json", body)
        .build()
}

/// The API's OpenAPI description, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(title = "mayfly API", version = "1",
        description = "Read access to jobs, VMs, usage and installations (per tenant), and the audit log (admin)."),
    paths(whoami, list_jobs, get_job, list_vms, usage, usage_report, usage_summary, usage_top,
        usage_jobs, installations, audit_log, server_ca, enrol),
    components(schemas(WhoAmI, JobView, VmView, UsageView, usage::Report, usage::GroupRow,
        usage::JobLine, usage::PhaseSpan, usage::DayRow, usage::DeliveryHealth, usage::Filters,
        usage::Choices, usage::DayRange, InstallationView, AuditView, ErrorBody,
        crate::agent_pki::EnrolRequest, crate::agent_pki::EnrolResponse)),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

async fn openapi_json() -> impl IntoResponse {
    (StatusCode::OK, Json(ApiDoc::openapi()))
}
