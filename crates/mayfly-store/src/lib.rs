//! mayfly's persistent state behind one [`Store`] trait. SQLite is the embedded store, PostgreSQL
//! the one for several servers; every implementation passes the same contract tests. Only
//! metadata is stored.
#![forbid(unsafe_code)]

mod codec;
mod error;
mod key;
mod model;
mod postgres;
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
pub use model::{
    DeliveryRecord, InstallationRecord, JobDispatch, JobRecord, NewDelivery, PendingDelivery,
    Recorded, VmRow,
};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mayfly_core::{DeliveryId, InstallationChange, JobEvent, JobId, Transition};

/// Everything the control plane keeps.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records a verified delivery durably. A delivery id seen before is not recorded again.
    async fn record_delivery(&self, delivery: &NewDelivery) -> Result<Recorded, StoreError>;

    /// Deliveries recorded but not yet processed, oldest first.
    async fn pending_deliveries(&self, limit: u32) -> Result<Vec<PendingDelivery>, StoreError>;

    /// Applies a job event and marks its delivery processed, atomically.
    async fn apply_job_event(
        &self,
        delivery: &DeliveryId,
        event: &JobEvent,
        now: DateTime<Utc>,
    ) -> Result<Transition, StoreError>;

    /// Applies an installation change and marks its delivery processed, atomically.
    async fn apply_installation_change(
        &self,
        delivery: &DeliveryId,
        change: &InstallationChange,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Marks a delivery processed without other effect (pings, events with nothing to do).
    async fn finish_delivery(
        &self,
        delivery: &DeliveryId,
        outcome: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    async fn delivery(&self, delivery: &DeliveryId) -> Result<Option<DeliveryRecord>, StoreError>;
    async fn job(&self, job: JobId) -> Result<Option<JobRecord>, StoreError>;
    async fn jobs(&self) -> Result<Vec<JobRecord>, StoreError>;
    async fn installations(&self) -> Result<Vec<InstallationRecord>, StoreError>;

    /// Records the scheduler's decision about a job.
    async fn set_job_dispatch(&self, job: JobId, dispatch: &JobDispatch) -> Result<(), StoreError>;

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

    /// Whether the store answers (for readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}
