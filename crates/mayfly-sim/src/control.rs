//! The control API that tests and quickstart drive the simulated GitHub with: installations,
//! repositories, users and the App's OAuth callback URLs, jobs (queued/waiting/approve/cancel),
//! deliveries (list, redeliver), webhook URL, faults and the clock. Available as JSON under `/_sim/…` (unauthenticated: a local test tool)
//! and as methods on `SimHandle`; both go through the same functions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::Url;

use crate::events;
use crate::faults::{FaultsError, RestFault};
use crate::server::{lock, Shared};
use crate::state::{
    AccountType, Conclusion, Job, JobStatus, JobStep, NewJobSpec, StateError, World,
};
use crate::webhooks::{Delivery, DeliveryOutcome, WebhooksError};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Fault(#[from] FaultsError),
    #[error(transparent)]
    Webhooks(#[from] WebhooksError),
    #[error("timed out waiting for deliveries")]
    Timeout,
}

impl From<StateError> for ControlError {
    fn from(err: StateError) -> Self {
        match err {
            StateError::NotFound => Self::NotFound,
            StateError::Conflict(m) => Self::Conflict(m),
            StateError::Invalid(m) => Self::Invalid(m),
        }
    }
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NotFound | Self::Webhooks(WebhooksError::UnknownDelivery(_)) => {
                StatusCode::NOT_FOUND
            }
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        (status, Json(json!({ "message": self.to_string() }))).into_response()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewInstallation {
    /// The account's login (organisation or user).
    pub account: String,
    pub account_type: AccountType,
    /// Who installed the App (`sender`); defaults to the account itself for users, `octocat` for
    /// organisations.
    #[serde(default)]
    pub sender: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimInstallation {
    pub id: u64,
    pub account: String,
    pub account_type: AccountType,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewRepo {
    pub installation_id: u64,
    pub name: String,
    #[serde(default)]
    pub private: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimRepo {
    pub id: u64,
    pub installation_id: u64,
    pub full_name: String,
}

/// A GitHub user who can sign in (password [`crate::SIM_USER_PASSWORD`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub login: String,
    /// Logins of the organisations the user is a member of; the user sees the App's
    /// installations on these (and on their own account).
    #[serde(default)]
    pub orgs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimUser {
    pub id: u64,
    pub login: String,
    pub orgs: Vec<String>,
}

/// The App's OAuth registration as the control API shows it (without the client secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimOAuthApp {
    /// `Iv23li…`, the `client_id` of the web flow.
    pub client_id: String,
    pub callback_urls: Vec<String>,
}

/// GitHub allows at most ten callback URLs per App.
const MAX_CALLBACK_URLS: usize = 10;

fn sim_user(user: &crate::state::User) -> SimUser {
    SimUser {
        id: user.account.id,
        login: user.account.login.clone(),
        orgs: user.orgs.iter().cloned().collect(),
    }
}

/// The name of the one step that `NewJob::script` stands for.
pub const SCRIPT_STEP_NAME: &str = "Run script";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// `owner/name` of an existing repository.
    pub repository: String,
    /// The job's `runs-on` labels.
    pub labels: Vec<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub workflow_name: Option<String>,
    /// The job's `run:` steps, in order; the runner stops at the first that fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<JobStep>,
    /// Shorthand for one step named "Run script"; not together with `steps`. With neither, the
    /// job has one step that echoes a greeting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Login of the user who triggered the run.
    #[serde(default)]
    pub sender: Option<String>,
    /// Behind an approval gate: `waiting` until approved.
    #[serde(default)]
    pub waiting: bool,
}

/// A job as the control API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimJob {
    pub id: u64,
    pub run_id: u64,
    pub repository: String,
    pub name: String,
    pub labels: Vec<String>,
    pub status: JobStatus,
    pub conclusion: Option<Conclusion>,
    pub runner_id: Option<u64>,
    pub runner_name: Option<String>,
    pub output: Option<String>,
}

fn sim_job(world: &World, job: &Job) -> SimJob {
    SimJob {
        id: job.id,
        run_id: job.run_id,
        repository: world
            .repos
            .get(&job.repo_id)
            .map(|r| r.full_name())
            .unwrap_or_default(),
        name: job.name.clone(),
        labels: job.labels.clone(),
        status: job.status,
        conclusion: job.conclusion,
        runner_id: job.runner.as_ref().map(|r| r.id),
        runner_name: job.runner.as_ref().map(|r| r.name.clone()),
        output: job.output.clone(),
    }
}

/// The control operations; `SimHandle` derefs to this, and it is cheap to clone into tasks.
#[derive(Debug, Clone)]
pub struct SimControl {
    pub(crate) shared: Arc<Shared>,
}

impl SimControl {
    /// Installs the App on an account; sends `installation.created`.
    pub fn create_installation(
        &self,
        new: NewInstallation,
    ) -> Result<SimInstallation, ControlError> {
        let shared = &self.shared;
        let mut world = shared.world();
        let inst = world.create_installation(&new.account, new.account_type, shared.clock.now())?;
        let sender = match (&new.sender, new.account_type) {
            (Some(login), _) => world.account(login, AccountType::User),
            (None, AccountType::User) => inst.account.clone(),
            (None, AccountType::Organization) => world.account("octocat", AccountType::User),
        };
        events::installation_created(shared, &inst, &[], &sender);
        Ok(SimInstallation {
            id: inst.id,
            account: inst.account.login,
            account_type: new.account_type,
        })
    }

    /// Creates a repository in the installation's account; sends `installation_repositories.added`;
    /// makes its git repository (served at `/OWNER/REPO.git`; if `git` fails, a warning is
    /// logged and the repository exists without git contents).
    pub fn create_repo(&self, new: NewRepo) -> Result<SimRepo, ControlError> {
        let shared = &self.shared;
        let mut world = shared.world();
        let repo = world.create_repo(
            new.installation_id,
            &new.name,
            new.private,
            shared.clock.now(),
        )?;
        let inst = world
            .installations
            .get(&new.installation_id)
            .cloned()
            .ok_or(ControlError::NotFound)?;
        let sender = match inst.account.kind {
            AccountType::User => inst.account.clone(),
            AccountType::Organization => world.account("octocat", AccountType::User),
        };
        events::repositories_added(shared, &inst, std::slice::from_ref(&repo), &sender);
        drop(world);
        // Outside the world's lock: it runs a few `git` processes.
        if let Err(err) = shared.git.create(repo.id, &repo.full_name()) {
            tracing::warn!(
                repository = %repo.full_name(),
                error = %err,
                "the repository has no git contents: its git URL answers 404"
            );
        }
        Ok(SimRepo {
            id: repo.id,
            installation_id: repo.installation_id,
            full_name: repo.full_name(),
        })
    }

    /// Creates a run with one job of `steps` (or `script`); sends `workflow_job.queued` (or `.waiting`).
    pub fn create_job(&self, new: NewJob) -> Result<SimJob, ControlError> {
        let shared = &self.shared;
        let mut world = shared.world();
        let (owner, name) = new
            .repository
            .split_once('/')
            .ok_or_else(|| ControlError::Invalid("repository must be owner/name".into()))?;
        let repo = world
            .find_repo(owner, name)
            .cloned()
            .ok_or(ControlError::NotFound)?;
        let sender = match &new.sender {
            Some(login) => world.account(login, AccountType::User),
            None if repo.owner.kind == AccountType::User => repo.owner.clone(),
            None => world.account("octocat", AccountType::User),
        };
        let steps = match (new.script, new.steps) {
            (Some(_), steps) if !steps.is_empty() => {
                return Err(ControlError::Invalid(
                    "give either script or steps, not both".into(),
                ))
            }
            (Some(run), _) => vec![JobStep {
                name: SCRIPT_STEP_NAME.into(),
                run,
            }],
            (None, steps) if steps.is_empty() => vec![JobStep {
                name: SCRIPT_STEP_NAME.into(),
                run: "echo hello from mayfly-sim".into(),
            }],
            (None, steps) => steps,
        };
        let spec = NewJobSpec {
            repo_id: repo.id,
            name: new.name.unwrap_or_else(|| "build".into()),
            workflow_name: new.workflow_name.unwrap_or_else(|| "CI".into()),
            labels: new.labels,
            steps,
            env: new.env,
            sender,
            waiting: new.waiting,
        };
        let job = world.create_job(spec, shared.clock.now())?;
        events::workflow_job(shared, &world, &job);
        Ok(sim_job(&world, &job))
    }

    /// Approves a waiting job; sends `workflow_job.queued`.
    pub fn approve_job(&self, job_id: u64) -> Result<SimJob, ControlError> {
        let shared = &self.shared;
        let mut world = shared.world();
        let job = world.approve_job(job_id, shared.clock.now())?;
        events::workflow_job(shared, &world, &job);
        Ok(sim_job(&world, &job))
    }

    /// Cancels a job that has not completed; sends `workflow_job.completed` (cancelled).
    pub fn cancel_job(&self, job_id: u64) -> Result<SimJob, ControlError> {
        let shared = &self.shared;
        let mut world = shared.world();
        let job = world.cancel_job(job_id, shared.clock.now())?;
        events::workflow_job(shared, &world, &job);
        Ok(sim_job(&world, &job))
    }

    /// How long a runner running a job may stay silent before its job fails.
    pub fn set_runner_timeout(&self, timeout: Duration) {
        *crate::server::lock(&self.shared.runner_timeout) = timeout;
    }

    /// Makes a job vanish from the API, as when its repository is deleted or removed from the
    /// installation: GitHub sends no `workflow_job` for it and answers 404 from then on.
    pub fn delete_job(&self, job_id: u64) -> Result<(), ControlError> {
        let mut world = self.shared.world();
        world
            .jobs
            .remove(&job_id)
            .map(|_| ())
            .ok_or(ControlError::NotFound)
    }

    pub fn jobs(&self) -> Vec<SimJob> {
        let world = self.shared.world();
        world.jobs.values().map(|j| sim_job(&world, j)).collect()
    }

    pub fn job(&self, job_id: u64) -> Option<SimJob> {
        let world = self.shared.world();
        world.jobs.get(&job_id).map(|j| sim_job(&world, j))
    }

    /// Every delivery so far, in the order they were queued.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.webhooks.deliveries()
    }

    /// Waits (bounded by `timeout`) until `done` holds for the delivery log; returns the log.
    pub async fn wait_for_deliveries(
        &self,
        timeout: Duration,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Result<Vec<Delivery>, ControlError> {
        let webhooks = &self.shared.webhooks;
        tokio::time::timeout(timeout, async {
            loop {
                let changed = webhooks.changed();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let log = webhooks.deliveries();
                if done(&log) {
                    return log;
                }
                changed.await;
            }
        })
        .await
        .map_err(|_| ControlError::Timeout)
    }

    /// Sends a logged delivery again with the same GUID; returns the new log entry's id.
    pub fn redeliver(&self, delivery_id: u64) -> Result<u64, ControlError> {
        Ok(self
            .shared
            .webhooks
            .redeliver(delivery_id, self.shared.clock.now())?)
    }

    pub fn set_webhook_url(&self, url: Option<Url>) {
        self.shared.webhooks.set_url(url);
    }

    /// Adds a user who can sign in with GitHub, a member of `orgs`.
    pub fn create_user(&self, new: NewUser) -> Result<SimUser, ControlError> {
        let user = self.shared.world().create_user(&new.login, &new.orgs)?;
        Ok(sim_user(&user))
    }

    pub fn users(&self) -> Vec<SimUser> {
        self.shared.world().users().map(sim_user).collect()
    }

    /// Replaces the App's callback URLs (GitHub's App settings); the first is the default
    /// `redirect_uri`. Absolute `http(s)` URLs without fragment, at most ten.
    pub fn set_oauth_callback_urls(&self, urls: Vec<Url>) -> Result<(), ControlError> {
        if urls.len() > MAX_CALLBACK_URLS {
            return Err(ControlError::Invalid(
                "an App has at most 10 callback URLs".into(),
            ));
        }
        if let Some(bad) = urls.iter().find(|u| {
            !matches!(u.scheme(), "http" | "https") || u.fragment().is_some() || !u.has_host()
        }) {
            return Err(ControlError::Invalid(format!(
                "{bad} is not an http(s) callback URL without fragment"
            )));
        }
        *lock(&self.shared.oauth.callback_urls) = urls;
        Ok(())
    }

    /// The App's client id and callback URLs.
    pub fn oauth_app(&self) -> SimOAuthApp {
        SimOAuthApp {
            client_id: self.shared.app().client_id,
            callback_urls: lock(&self.shared.oauth.callback_urls)
                .iter()
                .map(Url::to_string)
                .collect(),
        }
    }

    /// The App's client secret (in-process only: the control API over HTTP never shows it).
    pub fn oauth_client_secret(&self) -> mayfly_github::OAuthClientSecret {
        self.shared.registration().client_secret
    }

    /// Moves the simulator's clock forward (token and JWT expiry without sleeping).
    pub fn advance_clock(&self, by: Duration) {
        self.shared.clock.advance(by);
    }

    /// Every recorded REST exchange so far (empty unless `record_exchanges`).
    pub fn exchanges(&self) -> Vec<crate::server::Exchange> {
        self.shared
            .exchanges
            .as_ref()
            .map(|e| lock(e).clone())
            .unwrap_or_default()
    }

    /// Injects a REST fault (applies to GitHub routes only, never `/_sim`).
    pub fn add_rest_fault(&self, fault: RestFault) -> Result<(), ControlError> {
        fault.validate()?;
        lock(&self.shared.faults).add(fault);
        Ok(())
    }

    pub fn clear_rest_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// The next `n` deliveries are logged as dropped and never sent.
    pub fn drop_next_webhooks(&self, n: u32) {
        self.shared.webhooks.drop_next(n);
    }

    /// Every delivery waits this long before it is sent (zero to stop).
    pub fn delay_webhooks(&self, delay: Duration) {
        self.shared.webhooks.delay(delay);
    }
}

// ---- the same operations over HTTP ----

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_sim/installations", post(http_create_installation))
        .route("/_sim/repos", post(http_create_repo))
        .route("/_sim/jobs", post(http_create_job).get(http_jobs))
        .route("/_sim/jobs/{job_id}", get(http_job))
        .route("/_sim/jobs/{job_id}/approve", post(http_approve))
        .route("/_sim/jobs/{job_id}/cancel", post(http_cancel))
        .route("/_sim/deliveries", get(http_deliveries))
        .route(
            "/_sim/deliveries/{delivery_id}/redeliver",
            post(http_redeliver),
        )
        .route("/_sim/webhook-url", put(http_webhook_url))
        .route(
            "/_sim/faults/rest",
            post(http_add_fault).delete(http_clear_faults),
        )
        .route("/_sim/faults/webhooks", put(http_webhook_faults))
        .route("/_sim/clock/advance", post(http_advance_clock))
        .route("/_sim/users", post(http_create_user).get(http_users))
        .route("/_sim/oauth/app", get(http_oauth_app))
        .route("/_sim/oauth/callback-urls", put(http_callback_urls))
        .with_state(shared)
}

type St = State<Arc<Shared>>;

fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(value)).into_response()
}

async fn http_create_installation(
    State(s): St,
    Json(new): Json<NewInstallation>,
) -> Result<Response, ControlError> {
    Ok(created(SimControl { shared: s }.create_installation(new)?))
}

async fn http_create_repo(
    State(s): St,
    Json(new): Json<NewRepo>,
) -> Result<Response, ControlError> {
    Ok(created(SimControl { shared: s }.create_repo(new)?))
}

async fn http_create_job(State(s): St, Json(new): Json<NewJob>) -> Result<Response, ControlError> {
    Ok(created(SimControl { shared: s }.create_job(new)?))
}

async fn http_jobs(State(s): St) -> Json<Vec<SimJob>> {
    Json(SimControl { shared: s }.jobs())
}

async fn http_job(State(s): St, Path(id): Path<u64>) -> Result<Json<SimJob>, ControlError> {
    SimControl { shared: s }
        .job(id)
        .map(Json)
        .ok_or(ControlError::NotFound)
}

async fn http_approve(State(s): St, Path(id): Path<u64>) -> Result<Json<SimJob>, ControlError> {
    Ok(Json(SimControl { shared: s }.approve_job(id)?))
}

async fn http_cancel(State(s): St, Path(id): Path<u64>) -> Result<Json<SimJob>, ControlError> {
    Ok(Json(SimControl { shared: s }.cancel_job(id)?))
}

fn delivery_json(d: &Delivery) -> Value {
    let outcome = match &d.outcome {
        DeliveryOutcome::Pending => json!({ "state": "pending" }),
        DeliveryOutcome::Delivered { status } => json!({ "state": "delivered", "status": status }),
        DeliveryOutcome::Failed { status, error } => {
            json!({ "state": "failed", "status": status, "error": error })
        }
        DeliveryOutcome::Dropped => json!({ "state": "dropped" }),
    };
    json!({
        "id": d.id,
        "guid": d.guid,
        "event": d.event,
        "action": d.action,
        "redelivery": d.redelivery,
        "created_at": crate::payloads::ts(d.created_at),
        "headers": d.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
        "body": d.json().unwrap_or(Value::Null),
        "outcome": outcome,
    })
}

async fn http_deliveries(State(s): St) -> Json<Vec<Value>> {
    Json(s.webhooks.deliveries().iter().map(delivery_json).collect())
}

async fn http_redeliver(State(s): St, Path(id): Path<u64>) -> Result<Response, ControlError> {
    let new_id = SimControl { shared: s }.redeliver(id)?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": new_id }))).into_response())
}

#[derive(Debug, Deserialize)]
struct WebhookUrlBody {
    url: Option<String>,
}

async fn http_webhook_url(
    State(s): St,
    Json(body): Json<WebhookUrlBody>,
) -> Result<StatusCode, ControlError> {
    let url = body
        .url
        .map(|u| Url::parse(&u))
        .transpose()
        .map_err(|_| ControlError::Invalid("url is not an absolute URL".into()))?;
    s.webhooks.set_url(url);
    Ok(StatusCode::NO_CONTENT)
}

async fn http_add_fault(
    State(s): St,
    Json(fault): Json<RestFault>,
) -> Result<StatusCode, ControlError> {
    SimControl { shared: s }.add_rest_fault(fault)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn http_clear_faults(State(s): St) -> StatusCode {
    lock(&s.faults).clear();
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct WebhookFaultsBody {
    #[serde(default)]
    drop_next: u32,
    #[serde(default)]
    delay_ms: u64,
}

async fn http_webhook_faults(State(s): St, Json(body): Json<WebhookFaultsBody>) -> StatusCode {
    s.webhooks.drop_next(body.drop_next);
    s.webhooks.delay(Duration::from_millis(body.delay_ms));
    StatusCode::NO_CONTENT
}

#[derive(Debug, Deserialize)]
struct AdvanceBody {
    seconds: u64,
}

async fn http_advance_clock(State(s): St, Json(body): Json<AdvanceBody>) -> StatusCode {
    s.clock.advance(Duration::from_secs(body.seconds));
    StatusCode::NO_CONTENT
}

async fn http_create_user(
    State(s): St,
    Json(new): Json<NewUser>,
) -> Result<Response, ControlError> {
    Ok(created(SimControl { shared: s }.create_user(new)?))
}

async fn http_users(State(s): St) -> Json<Vec<SimUser>> {
    Json(SimControl { shared: s }.users())
}

async fn http_oauth_app(State(s): St) -> Json<SimOAuthApp> {
    Json(SimControl { shared: s }.oauth_app())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallbackUrlsBody {
    urls: Vec<String>,
}

async fn http_callback_urls(
    State(s): St,
    Json(body): Json<CallbackUrlsBody>,
) -> Result<StatusCode, ControlError> {
    let urls = body
        .urls
        .iter()
        .map(|u| Url::parse(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ControlError::Invalid("urls must be absolute URLs".into()))?;
    SimControl { shared: s }.set_oauth_callback_urls(urls)?;
    Ok(StatusCode::NO_CONTENT)
}
