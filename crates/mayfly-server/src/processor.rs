//! Applies recorded deliveries to the store, oldest first, off the request path. It wakes when
//! intake records a delivery, and polls now and then so deliveries recorded before a crash or by
//! another process are not forgotten. Several servers on one database each claim their own
//! batch (`FOR UPDATE SKIP LOCKED`); a claim older than [`STALE_CLAIM`] (its server died) is
//! taken over, and applying a delivery someone else already applied changes nothing. For the
//! same reasons one server may run several workers ([`Store::apply_parallelism`]): a worker
//! that claims a full batch wakes the next, so a backlog is applied by all of them at once.
//!
//! Job events usually never get here: intake applies them in the commit that records them
//! ([`crate::group_commit`]). The processor applies the rest (installation changes, pings) and
//! any job events intake could not apply.

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::{Clock, DeliveryId, IntakeEvent, JobEvent, JobStatus, Transition};
use mayfly_store::{PendingDelivery, Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BATCH: u32 = 256;
const POLL: Duration = Duration::from_secs(5);
const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// How often what was applied is summed up in the log.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// A claimed delivery still unprocessed after this long is taken over by another server.
pub const STALE_CLAIM: chrono::Duration = chrono::Duration::seconds(60);

/// The delivery processor.
#[derive(Debug)]
pub struct Processor {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// This server's name in claims (each worker claims as `<server_id>/<worker>`).
    pub server_id: String,
    pub wakeup: Arc<Notify>,
    /// Woken after deliveries are applied, so the scheduler sees new jobs at once.
    pub scheduler: Arc<Notify>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Shared with intake, which applies most job events.
    pub summary: Arc<Summary>,
}

impl Processor {
    /// Runs the store's number of workers until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        let workers = self.store.apply_parallelism().max(1);
        let this = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..workers {
            tasks.spawn(this.clone().work(worker, shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One worker; worker 0 also logs the summary.
    async fn work(self: Arc<Self>, worker: usize, shutdown: CancellationToken) {
        let owner = format!("{}/{worker}", self.server_id);
        let mut last_summary = tokio::time::Instant::now();
        loop {
            if worker == 0 && last_summary.elapsed() >= SUMMARY_EVERY {
                self.summary.log();
                last_summary = tokio::time::Instant::now();
            }
            let pause = match self.drain(&owner).await {
                Ok(()) => POLL,
                Err(e) => {
                    tracing::error!(error = %crate::error::chain(&e), "processing deliveries failed; will retry");
                    ERROR_BACKOFF
                }
            };
            tokio::select! {
                () = self.wakeup.notified() => {}
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Processes every pending delivery, a claimed batch at a time: its job events in one
    /// transaction, the rest one by one.
    pub async fn drain(&self, owner: &str) -> Result<(), StoreError> {
        loop {
            let now = self.clock.now();
            let batch = self
                .store
                .claim_deliveries(owner, BATCH, now, now - STALE_CLAIM)
                .await?;
            if batch.is_empty() {
                return Ok(());
            }
            if batch.len() == BATCH as usize {
                // More is likely waiting: another worker (if any is idle) claims the next batch.
                self.wakeup.notify_one();
            }
            let jobs: Vec<(DeliveryId, JobEvent)> = batch
                .iter()
                .filter_map(|d| match &d.intake {
                    IntakeEvent::Job(job) => Some((d.delivery_id.clone(), job.clone())),
                    _ => None,
                })
                .collect();
            self.apply_jobs(&jobs).await?;
            for delivery in &batch {
                self.apply_other(delivery).await?;
            }
            self.scheduler.notify_one();
        }
    }

    async fn apply_jobs(&self, batch: &[(DeliveryId, JobEvent)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let transitions = self.store.apply_job_events(batch, self.clock.now()).await?;
        for ((delivery, _), transition) in batch.iter().zip(&transitions) {
            if transition.is_none() {
                already_processed(delivery);
            }
        }
        let applied = batch
            .iter()
            .zip(transitions)
            .filter_map(|((d, job), t)| Some((d, job, t?)));
        let completed = self.summary.applied(applied);
        measure_completed(self.store.as_ref(), &self.metrics, &completed).await
    }

    /// Applies a delivery that is not a job event (those go in batches).
    async fn apply_other(&self, d: &PendingDelivery) -> Result<(), StoreError> {
        let now = self.clock.now();
        match &d.intake {
            IntakeEvent::Job(_) => {}
            IntakeEvent::Installation(change) => {
                if self
                    .store
                    .apply_installation_change(&d.delivery_id, change, now)
                    .await?
                {
                    tracing::info!(delivery = %d.delivery_id, installation = %change.installation_id,
                        kind = ?change.kind, "installation change applied");
                } else {
                    already_processed(&d.delivery_id);
                }
            }
            IntakeEvent::Ping => {
                if self
                    .store
                    .finish_delivery(&d.delivery_id, "ping", now)
                    .await?
                {
                    tracing::info!(delivery = %d.delivery_id, "ping received");
                } else {
                    already_processed(&d.delivery_id);
                }
            }
        }
        Ok(())
    }
}

/// Reads the jobs whose completion was just applied and counts them in the metrics, in one
/// read. Only the server that applied a completion gets here, so it is counted once.
pub(crate) async fn measure_completed(
    store: &dyn Store,
    metrics: &crate::metrics::Metrics,
    completed: &[i64],
) -> Result<(), StoreError> {
    if !completed.is_empty() {
        for row in store.jobs_by_id(completed).await? {
            metrics.job_completed(&row);
        }
    }
    Ok(())
}

/// What was applied since the last summary (logged at info once a minute when anything was).
#[derive(Debug, Default)]
pub struct Summary {
    /// Advanced, unchanged, stale; and new jobs no profile serves, decided at intake.
    counts: std::sync::Mutex<(u64, u64, u64, u64)>,
}

impl Summary {
    fn count(&self, transition: Transition) {
        if let Ok(mut c) = self.counts.lock() {
            match transition {
                Transition::Advance(_) => c.0 += 1,
                Transition::Unchanged => c.1 += 1,
                Transition::Stale => c.2 += 1,
            }
        }
    }

    /// Counts job events just applied (by the processor, or by intake in the commit that
    /// recorded them) and logs each at debug; returns the ids of the jobs they completed.
    pub(crate) fn applied<'a>(
        &self,
        applied: impl IntoIterator<Item = (&'a DeliveryId, &'a JobEvent, Transition)>,
    ) -> Vec<i64> {
        let mut completed = Vec::new();
        for (delivery, job, transition) in applied {
            self.count(transition);
            tracing::debug!(%delivery, job = %job.job_id, repo = %job.repo,
                status = job.status.as_str(), ?transition, "job event applied");
            if transition == Transition::Advance(JobStatus::Completed) {
                completed.push(job.job_id.0);
            }
        }
        completed
    }

    pub(crate) fn ignored(&self, jobs: usize) {
        if let Ok(mut c) = self.counts.lock() {
            c.3 += jobs as u64;
        }
    }

    fn log(&self) {
        let Ok(mut c) = self.counts.lock() else {
            return;
        };
        let (advanced, unchanged, stale, ignored) = std::mem::take(&mut *c);
        if advanced + unchanged + stale > 0 {
            tracing::info!(advanced, unchanged, stale, ignored, every = ?SUMMARY_EVERY,
                "job events applied (each one is logged at debug; ignored: new jobs no profile serves)");
        }
    }
}

fn already_processed(delivery: &DeliveryId) {
    tracing::debug!(%delivery, "already processed by another server");
}
