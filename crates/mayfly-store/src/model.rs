//! Rows as the rest of mayfly sees them.

use chrono::{DateTime, Utc};
use mayfly_core::{DeliveryId, InstallationId, IntakeEvent, JobId, JobStatus, RepoFullName, RunId};
use serde::Serialize;

/// A verified delivery about to be recorded.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub delivery_id: DeliveryId,
    pub event: String,
    pub action: Option<String>,
    pub received_at: DateTime<Utc>,
    pub intake: IntakeEvent,
}

/// Whether [`crate::Store::record_delivery`] stored a new delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// The delivery id was already recorded: a redelivery, a no-op.
    Duplicate,
}

/// A recorded delivery awaiting processing.
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    pub delivery_id: DeliveryId,
    pub event: String,
    pub intake: IntakeEvent,
}

/// A delivery as stored.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    pub delivery_id: DeliveryId,
    pub event: String,
    pub action: Option<String>,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
}

/// A job's metadata row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    pub job_id: JobId,
    pub run_id: RunId,
    pub installation_id: Option<InstallationId>,
    pub repo: RepoFullName,
    pub repo_id: i64,
    pub org: Option<String>,
    pub sender: String,
    pub status: JobStatus,
    pub conclusion: Option<String>,
    pub labels: Vec<String>,
    pub job_name: String,
    pub workflow_name: Option<String>,
    pub runner_id: Option<i64>,
    pub runner_name: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When mayfly first heard of the job (the first delivery that reached it).
    pub first_seen_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An installation (tenant) and the repositories it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallationRecord {
    pub installation_id: InstallationId,
    pub account: Option<String>,
    pub state: String,
    pub repos: Vec<RepoFullName>,
}
