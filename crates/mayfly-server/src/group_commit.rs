//! Group commit for webhook intake. A delivery is durable before its 2xx, but a commit (and
//! its fsync) per request caps intake at the disk's sync rate. Requests hand their delivery to
//! one writer task and wait; the writer records everything that arrived while the previous
//! commit was syncing in one transaction, then answers each request with its own outcome.
//! Nothing is acknowledged before the commit that holds it returned.

use std::sync::Arc;

use mayfly_store::{NewDelivery, Recorded, Store};
use tokio::sync::{mpsc, oneshot};

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

impl DeliveryWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(store: Arc<dyn Store>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let (queue, requests) = mpsc::channel(QUEUE);
        tokio::spawn(write(store, metrics, requests));
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
    store: Arc<dyn Store>,
    metrics: Arc<crate::metrics::Metrics>,
    mut requests: mpsc::Receiver<(NewDelivery, oneshot::Sender<Outcome>)>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while requests.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (deliveries, waiting): (Vec<NewDelivery>, Vec<oneshot::Sender<Outcome>>) =
            batch.drain(..).unzip();
        metrics.intake_batch(deliveries.len());
        match store.record_deliveries(&deliveries).await {
            Ok(outcomes) if outcomes.len() == waiting.len() => {
                for (done, outcome) in waiting.into_iter().zip(outcomes) {
                    // A request that gave up (its client went away) is not waiting any more.
                    let _ = done.send(Ok(outcome));
                }
            }
            result => {
                match result {
                    Err(e) => tracing::error!(error = %crate::error::chain(&e),
                        deliveries = waiting.len(), "could not record deliveries; answering 503"),
                    Ok(outcomes) => tracing::error!(
                        asked = waiting.len(),
                        told = outcomes.len(),
                        "the store's outcomes do not match the deliveries; answering 503"
                    ),
                }
                for done in waiting {
                    let _ = done.send(Err(NotRecorded));
                }
            }
        }
    }
}
