//! Applies recorded deliveries to the store, oldest first, off the request path. It wakes when
//! intake records a delivery, and polls now and then so deliveries recorded before a crash or by
//! another process are not forgotten.

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::{Clock, IntakeEvent};
use mayfly_store::{PendingDelivery, Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const BATCH: u32 = 64;
const POLL: Duration = Duration::from_secs(5);
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// The delivery processor.
#[derive(Debug)]
pub struct Processor {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub wakeup: Arc<Notify>,
    /// Woken after deliveries are applied, so the scheduler sees new jobs at once.
    pub scheduler: Arc<Notify>,
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
            let batch = self.store.pending_deliveries(BATCH).await?;
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
                let transition = self.store.apply_job_event(&d.delivery_id, job, now).await?;
                tracing::info!(delivery = %d.delivery_id, job = %job.job_id, repo = %job.repo,
                    status = job.status.as_str(), ?transition, "job event applied");
            }
            IntakeEvent::Installation(change) => {
                self.store
                    .apply_installation_change(&d.delivery_id, change, now)
                    .await?;
                tracing::info!(delivery = %d.delivery_id, installation = %change.installation_id,
                    kind = ?change.kind, "installation change applied");
            }
            IntakeEvent::Ping => {
                self.store
                    .finish_delivery(&d.delivery_id, "ping", now)
                    .await?;
                tracing::info!(delivery = %d.delivery_id, "ping received");
            }
        }
        Ok(())
    }
}
