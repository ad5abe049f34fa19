//! Applies recorded deliveries to the store, oldest first, off the request path. It wakes when
//! intake records a delivery, and polls now and then so deliveries recorded before a crash or by
//! another process are not forgotten. Several servers on one database each claim their own
//! batch (`FOR UPDATE SKIP LOCKED`); a claim older than [`STALE_CLAIM`] (its server died) is
//! taken over, and applying a delivery someone else already applied changes nothing.

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::{Clock, IntakeEvent, JobStatus, Transition};
use mayfly_store::{PendingDelivery, Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BATCH: u32 = 64;
const POLL: Duration = Duration::from_secs(5);
const ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// A claimed delivery still unprocessed after this long is taken over by another server.
pub const STALE_CLAIM: chrono::Duration = chrono::Duration::seconds(60);

/// The delivery processor.
#[derive(Debug)]
pub struct Processor {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// This server's name in claims.
    pub server_id: String,
    pub wakeup: Arc<Notify>,
    /// Woken after deliveries are applied, so the scheduler sees new jobs at once.
    pub scheduler: Arc<Notify>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Processor {
    /// Runs until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let pause = match self.drain().await {
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

    /// Processes every pending delivery.
    pub async fn drain(&self) -> Result<(), StoreError> {
        loop {
            let now = self.clock.now();
            let batch = self
                .store
                .claim_deliveries(&self.server_id, BATCH, now, now - STALE_CLAIM)
                .await?;
            if batch.is_empty() {
                return Ok(());
            }
            for delivery in batch {
                self.apply(&delivery).await?;
            }
            self.scheduler.notify_one();
        }
    }

    async fn apply(&self, d: &PendingDelivery) -> Result<(), StoreError> {
        let now = self.clock.now();
        match &d.intake {
            IntakeEvent::Job(job) => {
                match self.store.apply_job_event(&d.delivery_id, job, now).await? {
                    Some(transition) => {
                        tracing::info!(delivery = %d.delivery_id, job = %job.job_id, repo = %job.repo,
                            status = job.status.as_str(), ?transition, "job event applied");
                        // Counted once: only the server that applied the completion gets here.
                        if transition == Transition::Advance(JobStatus::Completed) {
                            if let Some(row) = self.store.job(job.job_id).await? {
                                self.metrics.job_completed(&row);
                            }
                        }
                    }
                    None => already_processed(d),
                }
            }
            IntakeEvent::Installation(change) => {
                if self
                    .store
                    .apply_installation_change(&d.delivery_id, change, now)
                    .await?
                {
                    tracing::info!(delivery = %d.delivery_id, installation = %change.installation_id,
                        kind = ?change.kind, "installation change applied");
                } else {
                    already_processed(d);
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
                    already_processed(d);
                }
            }
        }
        Ok(())
    }
}

fn already_processed(d: &PendingDelivery) {
    tracing::debug!(delivery = %d.delivery_id, "already processed by another server");
}
