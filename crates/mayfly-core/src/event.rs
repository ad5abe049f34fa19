//! What mayfly keeps from a webhook delivery: metadata only (who, which repository, which job,
//! which state, when). Never code, logs, secrets or the raw payload.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{InstallationId, JobId, JobStatus, RepoFullName, RunId};

/// A normalised `workflow_job` delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: JobId,
    pub run_id: RunId,
    /// Absent on deliveries from a repository or organisation hook rather than the App.
    pub installation_id: Option<InstallationId>,
    pub repo: RepoFullName,
    pub repo_id: i64,
    /// Set when the repository belongs to an organisation.
    pub org: Option<String>,
    /// `sender.login`: who triggered the job.
    pub sender: String,
    pub status: JobStatus,
    pub conclusion: Option<String>,
    /// The job's `runs-on` labels.
    pub labels: Vec<String>,
    pub job_name: String,
    pub workflow_name: Option<String>,
    pub runner_id: Option<i64>,
    pub runner_name: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// A change to the set of installations (tenants) or their repositories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallationChange {
    pub installation_id: InstallationId,
    /// The account (organisation or user) that installed the App.
    pub account: Option<String>,
    pub kind: InstallationChangeKind,
    pub repos_added: Vec<RepoFullName>,
    pub repos_removed: Vec<RepoFullName>,
}

/// What happened to an installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallationChangeKind {
    Created,
    Deleted,
    Suspended,
    Unsuspended,
    PermissionsChanged,
    RepositoriesChanged,
}

/// A verified, parsed delivery as it is queued for processing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // almost every delivery is a job event
pub enum IntakeEvent {
    Job(JobEvent),
    Installation(InstallationChange),
    Ping,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intake_events_round_trip_through_json() {
        let change = IntakeEvent::Installation(InstallationChange {
            installation_id: InstallationId(1),
            account: Some("org".into()),
            kind: InstallationChangeKind::Created,
            repos_added: vec!["org/a".parse().unwrap()],
            repos_removed: vec![],
        });
        for event in [change, IntakeEvent::Ping] {
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(
                serde_json::from_str::<IntakeEvent>(&json).unwrap(),
                event,
                "{json}"
            );
        }
    }
}
