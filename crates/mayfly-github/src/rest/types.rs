//! REST request and response bodies, typed to the parts mayfly reads. Unknown fields are
//! ignored; optional fields are `Option` where GitHub's examples omit them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Body of `POST …/actions/runners/generate-jitconfig`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JitConfigRequest {
    pub name: String,
    pub runner_group_id: i64,
    /// 1 to 100 labels.
    pub labels: Vec<String>,
    pub work_folder: String,
}

impl JitConfigRequest {
    /// A request for a runner in the default runner group (id 1) with the `_work` folder.
    pub fn new(name: impl Into<String>, labels: Vec<String>) -> Self {
        Self {
            name: name.into(),
            runner_group_id: 1,
            labels,
            work_folder: "_work".to_owned(),
        }
    }
}

/// `<runner>`: a self-hosted runner registration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Runner {
    pub id: i64,
    pub name: String,
    pub os: String,
    pub status: String,
    pub busy: bool,
    pub labels: Vec<RunnerLabel>,
    #[serde(default)]
    pub ephemeral: Option<bool>,
    #[serde(default)]
    pub runner_group_id: Option<i64>,
}

/// `<runner-label>`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RunnerLabel {
    #[serde(default)]
    pub id: Option<i64>,
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct JitConfigResponse {
    pub runner: Runner,
    pub encoded_jit_config: String,
}

#[derive(Deserialize)]
pub(crate) struct InstallationTokenResponse {
    pub token: String,
    pub expires_at: String,
}

/// `<job>`: a workflow job as the REST API reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub id: i64,
    pub run_id: i64,
    #[serde(default)]
    pub run_attempt: Option<i64>,
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub conclusion: Option<String>,
    pub labels: Vec<String>,
    #[serde(default)]
    pub runner_id: Option<i64>,
    #[serde(default)]
    pub runner_name: Option<String>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub workflow_name: Option<String>,
    #[serde(default)]
    pub head_branch: Option<String>,
}

/// `<workflow-run>`, the fields reconciliation needs.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowRun {
    pub id: i64,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// A repository an installation can access.
#[derive(Debug, Clone, Deserialize)]
pub struct InstallationRepository {
    pub id: i64,
    pub name: String,
    pub full_name: String,
    #[serde(default)]
    pub private: bool,
}

/// An installation as `GET /app/installations` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct AppInstallation {
    pub id: i64,
    #[serde(default)]
    pub account: Option<InstallationAccount>,
    #[serde(default)]
    pub suspended_at: Option<String>,
}

/// The account an installation belongs to.
#[derive(Debug, Clone, Deserialize)]
pub struct InstallationAccount {
    pub login: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct RunnerList {
    pub runners: Vec<Runner>,
}

#[derive(Deserialize)]
pub(crate) struct RepositoryList {
    pub repositories: Vec<InstallationRepository>,
}

#[derive(Deserialize)]
pub(crate) struct RunList {
    pub workflow_runs: Vec<WorkflowRun>,
}

#[derive(Deserialize)]
pub(crate) struct JobList {
    pub jobs: Vec<Job>,
}

/// GitHub's error body (`<basic-error>` / `<validation-error-simple>`), for messages.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub errors: Option<serde_json::Value>,
}
