//! mayfly's persistent state behind one [`Store`] trait. SQLite is the embedded store, PostgreSQL
//! the one for several servers; every implementation passes the same contract tests. Only
//! metadata is stored.
#![forbid(unsafe_code)]

mod audit;
mod codec;
mod error;
mod key;
mod model;
mod postgres;
mod seal;
mod shared;
mod sqlite;

pub use error::StoreError;
pub use key::{DbKey, KeyError};

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub jobs: u64,
    pub vms: u64,
    pub deliveries: u64,
}
pub use audit::{row_hash, verify_chain, ChainBreak, GENESIS};
pub use model::{
    AgentJournal, AgentRow, AuditRow, BootstrapRow, BootstrapUse, DeliveryRecord,
    InstallationRecord, Intake, JobDispatch, JobRecord, NewAudit, NewDelivery, PendingDelivery,
    Placement, Recorded, SealedRow, TokenRow, UsageRow, VmRow, WrappedKey,
};
pub use postgres::PgStore;
pub use seal::{MasterKey, SealError, Sealer};
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mayfly_core::{DeliveryId, InstallationChange, JobEvent, JobId, Transition};

/// A unique key of a VM row, for [`CommonStore::vms_by_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmKey {
    StartId,
    RunnerName,
}

/// Store operations whose SQL is the same on every backend (written once in `shared.rs`).
/// Every [`Store`] is one; bring this trait into scope to call them.
#[async_trait]
pub trait CommonStore: Send + Sync {
    /// Records the scheduler's decisions about jobs, in one commit.
    async fn set_job_dispatches(&self, rows: &[(JobId, JobDispatch)]) -> Result<(), StoreError>;

    /// Jobs mayfly first heard of in `[from, to)`, oldest first, with the VMs started for them
    /// (for usage reports; indexed, so retained history outside the range costs nothing).
    async fn jobs_seen_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(Vec<JobRecord>, Vec<VmRow>), StoreError>;
    /// Claims a job for placement by `owner` if it is still `new` (or its claim is older than
    /// `stale_before`): its disposition becomes `placing` and its profile `profile` (known from
    /// here on, even if the job completes before it is placed). `false` when another server has
    /// it.
    async fn claim_job(
        &self,
        job: JobId,
        owner: &str,
        profile: &str,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Takes or renews the lease `name` for `holder` until `until`, if it is free, expired or
    /// already `holder`'s. For loops only one server may run at a time.
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// One VM row, by its start id.
    async fn vm(&self, start_id: &str) -> Result<Option<VmRow>, StoreError>;

    /// Records verified deliveries durably, all in one transaction (one commit, one fsync: group
    /// commit), and says for each whether it is new or a delivery id seen before (also earlier
    /// in the same batch). On error nothing is recorded.
    async fn record_deliveries(&self, batch: &[NewDelivery]) -> Result<Vec<Recorded>, StoreError>;

    /// Records deliveries as [`CommonStore::record_deliveries`] does and, in the same commit,
    /// applies the job events among the new ones as [`CommonStore::apply_job_events`] does: one
    /// write of each delivery instead of two. If applying fails, the batch is recorded again
    /// unapplied (the processor applies it later) and the error is returned in
    /// [`Intake::apply_error`]; on any other error nothing is recorded. A job of `ignored` (by id) that comes new and
    /// queued is inserted already decided, `ignored` (intake knows no profile serves it: most of
    /// an organisation's jobs are for other runners), so no scheduling pass writes it again.
    async fn record_and_apply(
        &self,
        batch: &[NewDelivery],
        now: DateTime<Utc>,
        ignored: &std::collections::HashSet<i64>,
    ) -> Result<Intake, StoreError>;

    /// Applies job events and marks their deliveries processed, all in one transaction: for
    /// each, its transition, or `None` when its delivery was already processed (by another
    /// server). On error nothing is applied.
    async fn apply_job_events(
        &self,
        batch: &[(DeliveryId, JobEvent)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Option<Transition>>, StoreError>;

    /// The jobs that can still change a scheduling decision, oldest first: not yet decided
    /// (`new`, `placing`; only with `undecided`), or placed and not completed, or wanted by an
    /// open VM ([`CommonStore::open_vms`]), or naming a runner but bound to no VM and updated
    /// since `unbound_since`. Read through partial indexes: retained history costs nothing.
    async fn open_jobs(
        &self,
        unbound_since: DateTime<Utc>,
        undecided: bool,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// The id and `updated_at` of every job not yet decided (`new`, `placing`): with the rows
    /// changed since, what keeps a scheduler's set of them true without reading them whole.
    async fn undecided_stamps(&self) -> Result<Vec<(i64, DateTime<Utc>)>, StoreError>;

    /// Jobs not yet decided (`new`, `placing`) whose row changed (`updated_at`) at or after
    /// `since`, in no order: what a pass that keeps the undecided jobs in memory reads. (A job
    /// leaves that set only by a scheduler's decision, which that scheduler knows.)
    async fn undecided_changed_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// Jobs queued at GitHub (whatever mayfly decided for them), oldest first; indexed by
    /// status, for the waiting-jobs metrics.
    async fn queued_jobs(&self) -> Result<Vec<JobRecord>, StoreError>;

    /// The VMs that can still change a scheduling decision, oldest first: not destroyed, failed
    /// or lost, or gone with a runner that took no job and is not deleted yet.
    async fn open_vms(&self) -> Result<Vec<VmRow>, StoreError>;

    /// A page of jobs in job id order: those after `after` (a job id), at most `limit`, of one
    /// installation or all. Rows added while a client pages through appear at most once.
    async fn jobs_page(
        &self,
        installation: Option<i64>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError>;

    /// A page of VMs in the order they were requested: those after `after` (a row's
    /// `requested_at` and `start_id`), at most `limit`, of one installation or all.
    async fn vms_page(
        &self,
        installation: Option<i64>,
        after: Option<(DateTime<Utc>, String)>,
        limit: u32,
    ) -> Result<Vec<VmRow>, StoreError>;

    /// VM rows whose `key` is one of `values` (indexed lookups, in chunks).
    async fn vms_by_key(&self, key: VmKey, values: &[String]) -> Result<Vec<VmRow>, StoreError>;

    /// Job rows by id (indexed lookups, in chunks); ids with no row are left out.
    async fn jobs_by_id(&self, ids: &[i64]) -> Result<Vec<JobRecord>, StoreError>;

    /// Every VM started for `job`.
    async fn vms_for_job(&self, job: JobId) -> Result<Vec<VmRow>, StoreError>;

    /// The VMs on `host` not destroyed.
    async fn vms_on_host(&self, host: &str) -> Result<Vec<VmRow>, StoreError>;

    /// Adds `jobs` finished jobs (ids from `first_id`, completed at `at`, each run by its own
    /// destroyed VM) in one transaction: history for benchmarks and tests of what history costs.
    async fn seed_history(
        &self,
        jobs: u32,
        first_id: i64,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// A server heard from `agent` (its `Hello` or a heartbeat) at `at`, with journal `epoch`:
    /// its lease runs from then. A new epoch (a new journal) starts counting events from 0.
    async fn agent_heard(
        &self,
        agent: &str,
        epoch: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Applies one agent event exactly once: in one transaction, moves `agent`'s journal
    /// position to `seq` if that is above where it stands in `epoch`, and only then writes
    /// `vm` (when given). `false` when the event was applied before, or its epoch is not the
    /// agent's current one: nothing changed.
    async fn apply_agent_event(
        &self,
        agent: &str,
        epoch: &str,
        seq: i64,
        vm: Option<&VmRow>,
    ) -> Result<bool, StoreError>;

    /// Where `agent`'s journal stands.
    async fn agent_journal(&self, agent: &str) -> Result<Option<AgentJournal>, StoreError>;

    /// VMs neither destroyed nor lost, requested before `before`, whose agent no server has
    /// heard from since `before` (their agent's lease ran out).
    async fn vms_of_silent_agents(&self, before: DateTime<Utc>) -> Result<Vec<VmRow>, StoreError>;

    /// Usage rollups (kept when job rows expire), for one installation or all.
    async fn usage(&self, installation: Option<i64>) -> Result<Vec<UsageRow>, StoreError>;

    /// Data keys, as wrapped by a master key.
    async fn data_keys(&self) -> Result<Vec<WrappedKey>, StoreError>;

    /// Adds a data key.
    async fn insert_data_key(&self, key: &WrappedKey) -> Result<(), StoreError>;

    /// Replaces the wrapping of every given data key (by id), atomically: all or none.
    async fn rewrap_data_keys(&self, keys: &[WrappedKey]) -> Result<(), StoreError>;

    /// Stores (or replaces) a sealed value.
    async fn put_secret(&self, row: &SealedRow, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// A sealed value by its identity.
    async fn secret(&self, kind: &str, name: &str) -> Result<Option<SealedRow>, StoreError>;

    /// Adds an API token (its hash).
    async fn insert_token(&self, token: &TokenRow) -> Result<(), StoreError>;

    /// The token with this hash, revoked or not.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>, StoreError>;

    /// Every token, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;

    /// Revokes a token; `false` when there is no such token or it was already revoked.
    async fn revoke_token(&self, id: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Audit rows with `seq > after`, in order, at most `limit`.
    async fn audit_log(&self, after: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError>;

    /// Adds an agent bootstrap token (a hash of its secret).
    async fn insert_bootstrap(&self, row: &BootstrapRow) -> Result<(), StoreError>;

    /// Uses up the bootstrap token `id` if `secret_hash` matches, it is unused and unexpired.
    async fn consume_bootstrap(
        &self,
        id: &str,
        secret_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<BootstrapUse, StoreError>;

    /// Records an agent's (new) client certificate; re-enrolling un-revokes it.
    async fn enrol_agent(
        &self,
        name: &str,
        cert_sha256: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The agent whose client certificate has this SHA-256.
    async fn agent_by_cert(&self, cert_sha256: &str) -> Result<Option<AgentRow>, StoreError>;

    /// Every enrolled agent.
    async fn agents(&self) -> Result<Vec<AgentRow>, StoreError>;

    /// Revokes an agent; `false` when there is no such live agent.
    async fn revoke_agent(&self, name: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
}

/// Everything the control plane keeps.
#[async_trait]
pub trait Store: CommonStore + Send + Sync + std::fmt::Debug {
    /// Records a verified delivery durably. A delivery id seen before is not recorded again.
    async fn record_delivery(&self, delivery: &NewDelivery) -> Result<Recorded, StoreError> {
        self.record_deliveries(std::slice::from_ref(delivery))
            .await?
            .pop()
            .ok_or(StoreError::Corrupt {
                what: "a recorded delivery's outcome",
            })
    }

    /// Deliveries recorded but not yet processed, oldest first.
    async fn pending_deliveries(&self, limit: u32) -> Result<Vec<PendingDelivery>, StoreError>;

    /// Claims up to `limit` unprocessed deliveries for `owner`, oldest first: those nobody
    /// claimed, and those whose claim is older than `stale_before` (a server that died). Rows
    /// another server is claiming at this moment are skipped, not waited for.
    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: u32,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<Vec<PendingDelivery>, StoreError>;

    /// Applies a job event and marks its delivery processed, atomically. `None` when the
    /// delivery was already processed (by another server): nothing changed.
    async fn apply_job_event(
        &self,
        delivery: &DeliveryId,
        event: &JobEvent,
        now: DateTime<Utc>,
    ) -> Result<Option<Transition>, StoreError> {
        let batch = [(delivery.clone(), event.clone())];
        Ok(self.apply_job_events(&batch, now).await?.pop().flatten())
    }

    /// Applies an installation change and marks its delivery processed, atomically. `false`
    /// when the delivery was already processed: nothing changed.
    async fn apply_installation_change(
        &self,
        delivery: &DeliveryId,
        change: &InstallationChange,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Marks a delivery processed without other effect (pings, events with nothing to do).
    /// `false` when it already was.
    async fn finish_delivery(
        &self,
        delivery: &DeliveryId,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    async fn delivery(&self, delivery: &DeliveryId) -> Result<Option<DeliveryRecord>, StoreError>;
    async fn job(&self, job: JobId) -> Result<Option<JobRecord>, StoreError>;
    async fn jobs(&self) -> Result<Vec<JobRecord>, StoreError>;
    async fn installations(&self) -> Result<Vec<InstallationRecord>, StoreError>;

    /// Records the scheduler's decision about a job.
    async fn set_job_dispatch(&self, job: JobId, dispatch: &JobDispatch) -> Result<(), StoreError> {
        self.set_job_dispatches(&[(job, dispatch.clone())]).await
    }

    /// Adds a VM row (a placement).
    async fn insert_vm(&self, vm: &VmRow) -> Result<(), StoreError>;

    /// Replaces a VM row (by `start_id`).
    async fn update_vm(&self, vm: &VmRow) -> Result<(), StoreError>;

    /// VM rows, oldest first; only those not destroyed when `live_only`.
    async fn vms(&self, live_only: bool) -> Result<Vec<VmRow>, StoreError>;

    /// Deletes what has outlived its retention: finished jobs (and their VM rows) last updated
    /// before `jobs_before`, processed deliveries received before `deliveries_before`.
    async fn purge(
        &self,
        jobs_before: DateTime<Utc>,
        deliveries_before: DateTime<Utc>,
    ) -> Result<Purged, StoreError>;

    /// Appends an event to the audit log, chained to the last row. Writers are serialised.
    async fn append_audit(&self, event: &NewAudit) -> Result<AuditRow, StoreError>;

    /// How the database plans the queries every scheduling pass makes, one line per step
    /// (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on PostgreSQL): a full scan of `jobs` or `vms`
    /// there would make a pass cost the whole retained history.
    async fn pass_query_plans(&self) -> Result<Vec<String>, StoreError>;

    /// How many transactions applying deliveries can usefully run at once: 1 where writers take
    /// turns on one connection (SQLite), more where the database runs them side by side.
    fn apply_parallelism(&self) -> usize {
        1
    }

    /// Brings the query planner's statistics up to date (`ANALYZE`; on SQLite a sampled one):
    /// without them SQLite may walk a large index where a small partial one serves a pass.
    async fn refresh_statistics(&self) -> Result<(), StoreError>;

    /// Whether the store answers (for readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes every connection, waiting for them: call it before the process exits (the
    /// embedded store's worker threads should be done before SQLCipher's crypto library is
    /// torn down at exit).
    async fn close(&self);
}
