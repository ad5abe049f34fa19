//! Group commit for webhook intake. A delivery is durable before its 2xx, but a commit (and
//! its fsync) per request caps intake at the disk's sync rate. Requests hand their delivery to
//! one writer task and wait; the writer records everything that arrived while the previous
//! commit was syncing in one transaction, then answers each request with its own outcome.
//! Nothing is acknowledged before the commit that holds it returned.
//!
//! The same commit applies the batch's new job events ([`Store::record_and_apply`]): each
//! delivery is written once, not recorded here and written again by the processor. What is
//! left (other events, or job events whose applying failed) is the processor's.

use std::sync::Arc;

use mayfly_core::{Clock, IntakeEvent, Transition};
use mayfly_store::{NewDelivery, Recorded, Store};
use tokio::sync::{mpsc, oneshot, Notify};

/// At most this many deliveries share one commit.
const MAX_BATCH: usize = 1024;
/// Requests waiting for the writer beyond this wait to hand over (backpressure).
const QUEUE: usize = 8192;

/// The delivery could not be recorded (the writer logged why once for its whole batch).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the delivery could not be recorded")]
pub struct NotRecorded;

type Outcome = Result<Recorded, NotRecorded>;

/// Hands deliveries to the writer task. Cloning shares the writer; it ends when every handle
/// is dropped, after answering what it was given.
#[derive(Debug, Clone)]
pub struct DeliveryWriter {
    queue: mpsc::Sender<(NewDelivery, oneshot::Sender<Outcome>)>,
}

/// What the writer needs besides its queue.
#[derive(Debug)]
pub struct Writer {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub summary: Arc<crate::processor::Summary>,
    /// Woken when a batch left deliveries unapplied.
    pub processor: Arc<Notify>,
    /// Woken when a batch applied job events.
    pub scheduler: Arc<Notify>,
    /// A new queued job that none of these serves is decided at intake: ignored.
    pub profiles: Vec<mayfly_core::Profile>,
}

impl DeliveryWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(writer: Writer) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(write(writer, requests));
        Self { queue }
    }

    /// Records `delivery` durably (with whatever else is waiting) and returns its outcome.
    pub async fn record(&self, delivery: NewDelivery) -> Outcome {
        let (done, outcome) = oneshot::channel();
        self.queue
            .send((delivery, done))
            .await
            .map_err(|_| NotRecorded)?;
        outcome.await.map_err(|_| NotRecorded)?
    }
}

async fn write(
    writer: Writer,
    mut requests: mpsc::Receiver<(NewDelivery, oneshot::Sender<Outcome>)>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (deliveries, waiting): (Vec<NewDelivery>, Vec<oneshot::Sender<Outcome>>) =
            batch.drain(..).unzip();
        writer.metrics.intake_batch(deliveries.len());
        let ignored: std::collections::HashSet<i64> = deliveries
            .iter()
            .filter_map(|d| match &d.intake {
                IntakeEvent::Job(job)
                    if job.status == mayfly_core::JobStatus::Queued
                        && mayfly_core::match_profile(&writer.profiles, &job.labels).is_none() =>
                {
                    Some(job.job_id.0)
                }
                _ => None,
            })
            .collect();
        let intake = match writer
            .store
            .record_and_apply(&deliveries, writer.clock.now(), &ignored)
            .await
        {
            Ok(intake)
                if intake.recorded.len() == waiting.len()
                    && intake.applied.len() == waiting.len() =>
            {
                intake
            }
            result => {
                match result {
                    Err(e) => tracing::error!(error = %crate::error::chain(&e),
                        deliveries = waiting.len(), "could not record deliveries; answering 503"),
                    Ok(intake) => tracing::error!(
                        asked = waiting.len(),
                        told = intake.recorded.len(),
                        "the store's outcomes do not match the deliveries; answering 503"
                    ),
                }
                for done in waiting {
                    let _ = done.send(Err(NotRecorded));
                }
                continue;
            }
        };
        for (done, outcome) in waiting.into_iter().zip(&intake.recorded) {
            // A request that gave up (its client went away) is not waiting any more.
            let _ = done.send(Ok(*outcome));
        }
        if let Some(e) = &intake.apply_error {
            tracing::warn!(error = %crate::error::chain(e), deliveries = deliveries.len(),
                "could not apply recorded deliveries with their commit; the processor will");
        }
        let left = deliveries
            .iter()
            .zip(&intake.recorded)
            .zip(&intake.applied)
            .any(|((_, r), a)| *r == Recorded::New && a.is_none());
        if left {
            writer.processor.notify_one();
        }
        let applied: Vec<_> = deliveries
            .iter()
            .zip(intake.applied)
            .filter_map(|(d, t)| match (&d.intake, t) {
                (IntakeEvent::Job(job), Some(t)) => Some((&d.delivery_id, job, t)),
                _ => None,
            })
            .collect();
        // Jobs decided at intake (ignored) give a scheduling pass nothing to do.
        let (decided, undecided): (Vec<_>, Vec<_>) = applied.iter().partition(|(_, job, t)| {
            *t == Transition::Advance(mayfly_core::JobStatus::Queued)
                && ignored.contains(&job.job_id.0)
        });
        if !undecided.is_empty() {
            writer.scheduler.notify_one();
        }
        for (_, job, _) in &decided {
            tracing::debug!(job = %job.job_id, labels = ?job.labels, "no profile matches; ignored");
        }
        writer.summary.ignored(decided.len());
        let completed = writer.summary.applied(applied);
        if !completed.is_empty() {
            // Off the writer's path: the next batch does not wait for this read.
            let (store, metrics) = (writer.store.clone(), writer.metrics.clone());
            tokio::spawn(async move {
                if let Err(e) =
                    crate::processor::measure_completed(store.as_ref(), &metrics, &completed).await
                {
                    tracing::warn!(error = %crate::error::chain(&e),
                        "could not read the jobs just completed for their metrics");
                }
            });
        }
    }
}
