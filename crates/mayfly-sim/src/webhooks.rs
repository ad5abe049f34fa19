//! Signed webhook delivery, as GitHub's Hookshot does it: one background worker POSTs deliveries
//! in the order they were enqueued, with a 10 s timeout, and never retries by itself. Every
//! delivery is logged (headers, exact body bytes, outcome); a logged delivery can be redelivered
//! with the same `X-GitHub-Delivery` GUID. Faults drop (log, don't send) or delay deliveries.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use mayfly_github::webhook::{signature_header, WebhookSecret};
use serde_json::Value;
use tokio::sync::{mpsc, Notify};
use url::Url;

/// GitHub gives up on a delivery after ten seconds.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WebhooksError {
    #[error("no delivery with id {0}")]
    UnknownDelivery(u64),
    #[error("building the webhook HTTP client failed")]
    Client(#[source] reqwest::Error),
    #[error("webhook_ca_pem is not a PEM certificate")]
    CaPem(#[source] reqwest::Error),
    #[error("the delivery body is not JSON")]
    Body(#[source] serde_json::Error),
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Queued, not attempted yet.
    Pending,
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// The receiver answered otherwise, or the request failed (timeout, refused, TLS…).
    Failed { status: Option<u16>, error: String },
    /// A fault dropped it: logged, never sent.
    Dropped,
}

/// One logged delivery (redeliveries are logged as new entries with the same GUID).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The log's own numeric id (GitHub's delivery id).
    pub id: u64,
    /// `X-GitHub-Delivery`.
    pub guid: String,
    pub event: String,
    pub action: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The exact bytes sent (and signed).
    pub body: Vec<u8>,
    pub redelivery: bool,
    pub created_at: DateTime<Utc>,
    pub outcome: DeliveryOutcome,
}

impl Delivery {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, WebhooksError> {
        serde_json::from_slice(&self.body).map_err(WebhooksError::Body)
    }
}

#[derive(Debug, Default)]
struct Faults {
    drop_next: u32,
    delay: Duration,
}

#[derive(Debug)]
pub(crate) struct Webhooks {
    log: Mutex<Vec<Delivery>>,
    queue: mpsc::UnboundedSender<usize>,
    url: Mutex<Option<Url>>,
    faults: Mutex<Faults>,
    /// The App's webhook secret and id (replaced when an App is created from a manifest).
    app: Mutex<(WebhookSecret, u64)>,
    hook_id: u64,
    user_agent: String,
    changed: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

pub(crate) fn client(ca_pem: Option<&str>) -> Result<reqwest::Client, WebhooksError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(DELIVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca_pem {
        let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(WebhooksError::CaPem)?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(WebhooksError::Client)
}

impl Webhooks {
    /// Creates the log and starts the delivery worker.
    pub(crate) fn start(
        url: Option<Url>,
        secret: WebhookSecret,
        app_id: u64,
        http: reqwest::Client,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::unbounded_channel();
        let hook_id = rand::random::<u32>() as u64 + 100_000_000;
        let webhooks = Arc::new(Self {
            log: Mutex::new(Vec::new()),
            queue,
            url: Mutex::new(url),
            faults: Mutex::new(Faults::default()),
            app: Mutex::new((secret, app_id)),
            hook_id,
            user_agent: format!("GitHub-Hookshot/{}", hex::encode(rand::random::<[u8; 4]>())),
            changed: Notify::new(),
        });
        let worker = tokio::spawn(Arc::clone(&webhooks).work(rx, http));
        (webhooks, worker)
    }

    pub(crate) fn set_url(&self, url: Option<Url>) {
        *lock(&self.url) = url;
    }

    /// Sends later events for another App: to its URL, signed with its secret.
    pub(crate) fn set_app(&self, url: Option<Url>, secret: WebhookSecret, app_id: u64) {
        *lock(&self.url) = url;
        *lock(&self.app) = (secret, app_id);
    }

    pub(crate) fn drop_next(&self, n: u32) {
        lock(&self.faults).drop_next = n;
    }

    pub(crate) fn delay(&self, delay: Duration) {
        lock(&self.faults).delay = delay;
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.log).clone()
    }

    /// Resolves when the log changes next (a delivery is added or finishes).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Signs, logs and queues one event. Callers enqueue while holding the world lock, so the
    /// log order is the order in which state changed.
    pub(crate) fn enqueue(
        &self,
        event: &str,
        action: Option<&str>,
        body: &Value,
        now: DateTime<Utc>,
    ) {
        let body = serde_json::to_vec(body).unwrap_or_default();
        let guid = uuid::Uuid::new_v4().to_string();
        let (signature, app_id) = {
            let app = lock(&self.app);
            (signature_header(&app.0, &body), app.1)
        };
        let headers = vec![
            ("User-Agent".to_string(), self.user_agent.clone()),
            ("X-GitHub-Event".to_string(), event.to_string()),
            ("X-GitHub-Delivery".to_string(), guid.clone()),
            ("X-GitHub-Hook-ID".to_string(), self.hook_id.to_string()),
            (
                "X-GitHub-Hook-Installation-Target-Type".to_string(),
                "integration".to_string(),
            ),
            (
                "X-GitHub-Hook-Installation-Target-ID".to_string(),
                app_id.to_string(),
            ),
            ("X-Hub-Signature-256".to_string(), signature),
            ("Content-Type".to_string(), "application/json".to_string()),
        ];
        let dropped = {
            let mut faults = lock(&self.faults);
            let dropped = faults.drop_next > 0;
            faults.drop_next = faults.drop_next.saturating_sub(1);
            dropped
        };
        let delivery = Delivery {
            id: 0,
            guid,
            event: event.to_string(),
            action: action.map(str::to_string),
            headers,
            body,
            redelivery: false,
            created_at: now,
            outcome: if dropped {
                DeliveryOutcome::Dropped
            } else {
                DeliveryOutcome::Pending
            },
        };
        if dropped {
            tracing::info!(
                event,
                action,
                "webhook delivery dropped by an injected fault"
            );
        }
        self.push(delivery, !dropped);
    }

    /// Sends a logged delivery again, with the same GUID, as a new log entry.
    pub(crate) fn redeliver(&self, id: u64, now: DateTime<Utc>) -> Result<u64, WebhooksError> {
        let original = lock(&self.log)
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .ok_or(WebhooksError::UnknownDelivery(id))?;
        let delivery = Delivery {
            redelivery: true,
            created_at: now,
            outcome: DeliveryOutcome::Pending,
            ..original
        };
        Ok(self.push(delivery, true))
    }

    fn push(&self, mut delivery: Delivery, send: bool) -> u64 {
        let id = {
            let mut log = lock(&self.log);
            let id = 90_000_000_001 + log.len() as u64;
            delivery.id = id;
            log.push(delivery);
            if send {
                // The worker lives as long as the sender; a closed queue means shutdown.
                let _ = self.queue.send(log.len() - 1);
            }
            id
        };
        self.changed.notify_waiters();
        id
    }

    async fn work(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<usize>, http: reqwest::Client) {
        while let Some(index) = rx.recv().await {
            let delay = lock(&self.faults).delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let Some(delivery) = lock(&self.log).get(index).cloned() else {
                continue;
            };
            let url = lock(&self.url).clone();
            let outcome = match url {
                None => DeliveryOutcome::Failed {
                    status: None,
                    error: "no webhook URL is configured".into(),
                },
                Some(url) => send(&http, url, &delivery).await,
            };
            if let Some(entry) = lock(&self.log).get_mut(index) {
                tracing::debug!(
                    event = %entry.event,
                    delivery = %entry.guid,
                    outcome = ?outcome,
                    "webhook delivery attempted"
                );
                entry.outcome = outcome;
            }
            self.changed.notify_waiters();
        }
    }
}

async fn send(http: &reqwest::Client, url: Url, delivery: &Delivery) -> DeliveryOutcome {
    let mut request = http.post(url).body(delivery.body.clone());
    for (name, value) in &delivery.headers {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) if response.status().is_success() => DeliveryOutcome::Delivered {
            status: response.status().as_u16(),
        },
        Ok(response) => DeliveryOutcome::Failed {
            status: Some(response.status().as_u16()),
            error: format!("the receiver answered {}", response.status()),
        },
        Err(err) => DeliveryOutcome::Failed {
            status: None,
            error: if err.is_timeout() {
                "timed out after 10 s".into()
            } else {
                // No URL in the message: it may carry credentials.
                err.without_url().to_string()
            },
        },
    }
}
