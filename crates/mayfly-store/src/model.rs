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

/// What [`crate::CommonStore::record_and_apply`] did with a batch of deliveries.
#[derive(Debug)]
pub struct Intake {
    /// For each delivery, in order: recorded, or a delivery id seen before.
    pub recorded: Vec<Recorded>,
    /// For each delivery, in order: the transition of a job event applied in the same commit;
    /// `None` for the rest (duplicates, other events, or all when applying failed), which the
    /// processor applies later.
    pub applied: Vec<Option<mayfly_core::Transition>>,
    /// Why the job events could not be applied with the batch (it was recorded all the same).
    pub apply_error: Option<crate::StoreError>,
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
    /// What the scheduler decided.
    pub dispatch: JobDispatch,
}

/// The scheduler's decision about a job.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct JobDispatch {
    pub profile: Option<String>,
    /// `new`, `ignored`, `placed` or `failed`.
    pub disposition: String,
    pub failure: Option<String>,
    pub attempts: u32,
    /// The VM whose runner actually ran the job.
    pub vm_start_id: Option<String>,
}

/// One VM mayfly asked an agent for, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct VmRow {
    /// The server's id for the placement (sent in `StartVm`).
    pub start_id: String,
    /// The agent's VM id, once it exists.
    pub vm_id: Option<String>,
    pub host: String,
    pub profile: String,
    pub installation_id: i64,
    pub repo: String,
    pub runner_name: String,
    pub runner_id: Option<i64>,
    /// The job it was started for; when another VM's runner took that job first, the job this
    /// VM's runner now waits for (runners swap jobs: a JIT runner takes any queued job it matches).
    pub for_job_id: i64,
    /// The job its runner actually ran (GitHub may hand it another queued job with the same
    /// labels).
    pub ran_job_id: Option<i64>,
    /// `requested`, `started`, `warm` (a pool VM waiting for its job), `booted`, `exited`,
    /// `destroyed`, `failed` or `lost`.
    pub state: String,
    pub requested_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    /// Guest ready and the runner's config handed over.
    pub booted_at: Option<DateTime<Utc>>,
    /// The guest started the runner process.
    pub runner_started_at: Option<DateTime<Utc>>,
    pub exited_at: Option<DateTime<Utc>>,
    pub destroyed_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub destroy_requested: bool,
    pub runner_deleted: bool,
    /// The destruction record (JSON of `mayfly_core::DestructionRecord`).
    pub destruction: Option<String>,
    /// How long each step of its start took (JSON of a list of `mayfly_core::StartStep`).
    pub start_steps: Option<String>,
    pub failure: Option<String>,
    /// Started for the warm pool, ahead of any job: until `assigned_at` it holds nothing and
    /// its `installation_id`, `repo`, `runner_id` and `for_job_id` are 0 or empty.
    pub pool: bool,
    /// The image it was started from.
    pub image: Option<String>,
    /// A pool VM's guest was ready, waiting for a job.
    pub warm_at: Option<DateTime<Utc>>,
    /// A pool VM was given its one job (the runner config sent).
    pub assigned_at: Option<DateTime<Utc>>,
}

/// Where the scheduler placed a VM: what a new [`VmRow`] starts from.
#[derive(Debug, Clone)]
pub struct Placement {
    pub start_id: String,
    pub host: String,
    pub profile: String,
    pub installation_id: i64,
    pub repo: String,
    pub runner_name: String,
    pub runner_id: Option<i64>,
    pub for_job_id: i64,
}

impl VmRow {
    /// A VM just asked for: state `requested`, no moment after `requested_at`, nothing done yet.
    pub fn requested(placement: Placement, requested_at: DateTime<Utc>) -> Self {
        let Placement {
            start_id,
            host,
            profile,
            installation_id,
            repo,
            runner_name,
            runner_id,
            for_job_id,
        } = placement;
        Self {
            start_id,
            vm_id: None,
            host,
            profile,
            installation_id,
            repo,
            runner_name,
            runner_id,
            for_job_id,
            ran_job_id: None,
            state: "requested".into(),
            requested_at,
            started_at: None,
            booted_at: None,
            runner_started_at: None,
            exited_at: None,
            destroyed_at: None,
            exit_code: None,
            destroy_requested: false,
            runner_deleted: false,
            destruction: None,
            start_steps: None,
            failure: None,
            pool: false,
            image: None,
            warm_at: None,
            assigned_at: None,
        }
    }

    /// A pool VM not given a job (yet): it holds nothing and belongs to no tenant.
    pub fn in_pool(&self) -> bool {
        self.pool && self.assigned_at.is_none()
    }

    /// A pool VM waiting for its job: warm, never assigned, not on its way out.
    pub fn waits_for_job(&self) -> bool {
        self.in_pool() && self.state == "warm" && !self.destroy_requested
    }
}

impl JobRecord {
    /// The job's moments, from this row and the row of the VM that ran it (see
    /// [`mayfly_core::PhaseTimes::ordered`] for them in order).
    pub fn phase_times(&self, vm: Option<&VmRow>) -> mayfly_core::PhaseTimes {
        // A pool VM was asked for and started before the job came: for the job, both happened
        // when it was given the job.
        let (vm_requested, vm_started) = match vm {
            Some(v) if v.pool => (v.assigned_at, v.assigned_at),
            Some(v) => (Some(v.requested_at), v.started_at),
            None => (None, None),
        };
        mayfly_core::PhaseTimes {
            queued_at_github: self.created_at,
            webhook_received: Some(self.first_seen_at),
            vm_requested,
            vm_started,
            guest_ready: vm.and_then(|v| v.booted_at),
            runner_started: vm.and_then(|v| v.runner_started_at),
            job_started: self.started_at,
            job_completed: self.completed_at,
            runner_exited: vm.and_then(|v| v.exited_at),
            vm_destroyed: vm.and_then(|v| v.destroyed_at),
        }
    }
}

/// An installation (tenant) and the repositories it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallationRecord {
    pub installation_id: InstallationId,
    pub account: Option<String>,
    pub state: String,
    pub repos: Vec<RepoFullName>,
}

/// Usage of one tenant on one day (UTC) on one hardware profile: finished jobs and the seconds
/// they ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub installation_id: i64,
    /// `YYYY-MM-DD`
    pub day: String,
    pub profile: String,
    pub jobs: i64,
    pub run_seconds: i64,
}

/// A data key wrapped (AEAD) by the master key `master_key_id`.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub id: String,
    pub master_key_id: String,
    pub wrapped: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedKey")
            .field("id", &self.id)
            .field("master_key_id", &self.master_key_id)
            .finish_non_exhaustive()
    }
}

/// A sealed value: AEAD ciphertext under data key `data_key_id`, bound to (`kind`, `name`).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedRow {
    pub kind: String,
    pub name: String,
    pub data_key_id: String,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SealedRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRow")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("data_key_id", &self.data_key_id)
            .finish_non_exhaustive()
    }
}

/// An API token as stored: only a hash of the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    /// `admin`, `read` or `tenant`.
    pub scope: String,
    /// The installation a `tenant` token may see.
    pub installation_id: Option<i64>,
    #[serde(skip)]
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// An audit event about to be appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    pub at: DateTime<Utc>,
    /// `token:<id>`, `agent:<id>`, `cli:<user>`, `anonymous`.
    pub actor: String,
    /// The peer address, when there is one.
    pub source: Option<String>,
    pub action: String,
    pub target: Option<String>,
    /// `ok`, `denied`, `refused`, `failed`, or an HTTP status.
    pub outcome: String,
}

/// An audit row: the event, its place in the chain, the hash of the row before it and its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditRow {
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

/// A one-time agent bootstrap token as stored (a hash of its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapRow {
    pub id: String,
    /// The name the agent will have.
    pub agent_name: String,
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What presenting a bootstrap token came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapUse {
    /// Accepted (and now used up): enrol the agent of this name.
    Accepted {
        agent_name: String,
    },
    Unknown,
    AlreadyUsed,
    Expired,
}

/// Where an agent's journal stands, and when a server last heard from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentJournal {
    pub agent: String,
    pub epoch: String,
    /// Every event of `epoch` up to this number was applied.
    pub applied_seq: i64,
    pub seen_at: DateTime<Utc>,
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRow {
    pub name: String,
    /// SHA-256 (hex) of its client certificate (DER).
    pub cert_sha256: String,
    pub enrolled_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}
