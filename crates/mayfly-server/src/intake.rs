//! `POST /webhooks/github`. Order matters: size cap (nothing read past it) → signature over the
//! raw bytes → headers → parse → durable record (deduplicated by `X-GitHub-Delivery`) → 202.
//! Processing happens later, off the request path, so GitHub's 10 s timeout is never at risk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, BodyDataStream};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{Bytes, BytesMut};
use mayfly_core::{
    DeliveryId, InstallationChange, InstallationChangeKind, InstallationId, IntakeEvent, JobEvent,
    JobId, RepoFullName, RunId,
};
use mayfly_github::webhook::{
    InstallationAction, InstallationRepositoriesAction, RepositoryRef, WebhookEvent,
    WorkflowJobEvent, SIGNATURE_HEADER,
};
use mayfly_store::{NewDelivery, Recorded};
use serde_json::json;
use tokio_stream::StreamExt;

use crate::error::ApiError;
use crate::refusals::Route;
use crate::AppState;

/// Handles one delivery and counts its result. A source refused too often gets 429 at once for
/// an unsigned delivery, and for a signed one whose signature is wrong; a good signature is
/// accepted from any source (GitHub delivers every App's webhooks from the same addresses).
pub async fn receive(
    State(state): State<Arc<AppState>>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let peer = connect.map(|axum::Extension(ConnectInfo(a))| a.to_string());
    if !headers.contains_key(SIGNATURE_HEADER) {
        if let Err(limited) = state.turn_away(peer.as_deref(), Route::Webhook) {
            state.metrics.delivery("rate_limited");
            return Err(limited);
        }
    }
    let result = handle(&state, headers, body).await;
    let refusal = match &result {
        Ok(_) => None,
        Err(ApiError::Unauthorized) => Some("rejected_signature"),
        Err(ApiError::TooLarge { .. }) => Some("too_large"),
        Err(ApiError::BadPayload(_)) => Some("bad_payload"),
        Err(ApiError::Unavailable) => Some("unavailable"),
        Err(_) => Some("bad_request"),
    };
    if let Some(refusal) = refusal {
        state.metrics.delivery(refusal);
        // The sender's fault, not ours: counted against its source.
        if refusal != "unavailable" {
            state.count_refusal(peer.as_deref(), Route::Webhook)?;
        }
    }
    result
}

async fn handle(state: &AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let limit = state.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|n| *n > limit as u64) {
        state.warn(
            "oversized",
            "webhook refused: declared body exceeds the limit",
        );
        if declared <= DRAIN_MAX {
            drain(body.into_data_stream(), 0).await;
        }
        return Err(ApiError::TooLarge { limit });
    }
    let body = read_capped(body, limit).await.ok_or_else(|| {
        state.warn(
            "oversized",
            "webhook refused: body exceeds the limit or was cut off",
        );
        ApiError::TooLarge { limit }
    })?;

    let signature = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
    if let Err(e) = state.verifier.verify(signature, &body) {
        state.warn("signature", &format!("webhook refused: {e}"));
        return Err(ApiError::Unauthorized);
    }

    let event = header_str(&headers, "x-github-event").ok_or_else(|| {
        state.warn("headers", "webhook refused: no X-GitHub-Event header");
        ApiError::BadRequest("the X-GitHub-Event header is missing")
    })?;
    let delivery_id = header_str(&headers, "x-github-delivery")
        .and_then(|raw| DeliveryId::parse(raw).ok())
        .ok_or_else(|| {
            state.warn(
                "headers",
                "webhook refused: missing or malformed X-GitHub-Delivery",
            );
            ApiError::BadRequest("the X-GitHub-Delivery header is missing or malformed")
        })?;

    let parsed = WebhookEvent::parse(event, &body).map_err(|e| {
        state.warn("payload", &format!("webhook {delivery_id} refused: {e}"));
        ApiError::BadPayload(parsed_kind(event).unwrap_or("JSON"))
    })?;
    let Some((action, intake)) = normalise(&parsed).map_err(|e| {
        state.warn("payload", &format!("webhook {delivery_id} refused: {e}"));
        ApiError::BadPayload("workflow_job")
    })?
    else {
        state.metrics.delivery("ignored");
        return Ok(answer(StatusCode::ACCEPTED, "ignored", &delivery_id));
    };
    let received_at = state.clock.now();
    let payload_moment = match &intake {
        IntakeEvent::Job(job) => match job.status {
            mayfly_core::JobStatus::Queued | mayfly_core::JobStatus::Waiting => job.created_at,
            mayfly_core::JobStatus::InProgress => job.started_at,
            mayfly_core::JobStatus::Completed => job.completed_at,
        },
        _ => None,
    };

    let recorded = state
        .deliveries
        .record(NewDelivery {
            delivery_id: delivery_id.clone(),
            event: event.to_owned(),
            action,
            received_at,
            intake,
        })
        .await
        .map_err(|_| ApiError::Unavailable)?;
    Ok(match recorded {
        Recorded::New => {
            state.metrics.delivery("accepted");
            if let Some(at) = payload_moment {
                state.metrics.webhook_lag(received_at - at);
            }
            answer(StatusCode::ACCEPTED, "accepted", &delivery_id)
        }
        Recorded::Duplicate => {
            state.metrics.delivery("duplicate");
            answer(StatusCode::OK, "duplicate", &delivery_id)
        }
    })
}

/// How much of an oversized body is read (and dropped) before the 413, and for how long: GitHub's
/// own cap (25 MB) and its timeout (10 s).
const DRAIN_MAX: u64 = 25 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The body, if it is at most `limit` bytes. Past the limit nothing more is kept, but the rest
/// is read and dropped (up to `DRAIN_MAX`): over HTTP/2 the client is still sending when the
/// 413 is ready, and answering then resets its stream, which clients such as curl report as a
/// failure instead of the 413.
async fn read_capped(body: Body, limit: usize) -> Option<Bytes> {
    let mut stream = body.into_data_stream();
    let mut kept = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.ok()?;
        if kept.len() + chunk.len() > limit {
            drain(stream, (kept.len() + chunk.len()) as u64).await;
            return None;
        }
        kept.extend_from_slice(&chunk);
    }
    Some(kept.freeze())
}

/// Reads and drops what is left of a refused body, `seen` bytes in, until it ends or passes
/// `DRAIN_MAX` or `DRAIN_TIME`.
async fn drain(mut stream: BodyDataStream, mut seen: u64) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while seen <= DRAIN_MAX {
            match stream.next().await {
                Some(Ok(chunk)) => seen += chunk.len() as u64,
                _ => return,
            }
        }
    })
    .await;
}

fn answer(status: StatusCode, outcome: &str, delivery: &DeliveryId) -> Response {
    (
        status,
        Json(json!({ "status": outcome, "delivery": delivery.as_str() })),
    )
        .into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

fn parsed_kind(event: &str) -> Option<&'static str> {
    Some(match event {
        "workflow_job" => "workflow_job",
        "ping" => "ping",
        "installation" => "installation",
        "installation_repositories" => "installation_repositories",
        _ => return None,
    })
}

/// Why a parsed payload still cannot be used.
#[derive(Debug, thiserror::Error)]
enum NormaliseError {
    #[error("repository full_name `{0}` is not owner/name")]
    RepoName(String),
}

/// The action and metadata kept from a handled event; `None` for events mayfly ignores.
fn normalise(
    event: &WebhookEvent,
) -> Result<Option<(Option<String>, IntakeEvent)>, NormaliseError> {
    Ok(Some(match event {
        WebhookEvent::WorkflowJob(ev) => {
            let job = job_event(ev)?;
            (Some(job.status.as_str().to_owned()), IntakeEvent::Job(job))
        }
        WebhookEvent::Ping(_) => (None, IntakeEvent::Ping),
        WebhookEvent::Installation(ev) => {
            let (kind, action) = match ev.action {
                InstallationAction::Created => (InstallationChangeKind::Created, "created"),
                InstallationAction::Deleted => (InstallationChangeKind::Deleted, "deleted"),
                InstallationAction::Suspend => (InstallationChangeKind::Suspended, "suspend"),
                InstallationAction::Unsuspend => (InstallationChangeKind::Unsuspended, "unsuspend"),
                InstallationAction::NewPermissionsAccepted => (
                    InstallationChangeKind::PermissionsChanged,
                    "new_permissions_accepted",
                ),
            };
            let repos = repo_names(ev.repositories.as_deref().unwrap_or_default())?;
            let change = InstallationChange {
                installation_id: InstallationId(ev.installation.id),
                account: ev.installation.account.as_ref().map(|a| a.login.clone()),
                kind,
                repos_added: if kind == InstallationChangeKind::Created {
                    repos
                } else {
                    vec![]
                },
                repos_removed: vec![],
            };
            (Some(action.to_owned()), IntakeEvent::Installation(change))
        }
        WebhookEvent::InstallationRepositories(ev) => {
            let action = match ev.action {
                InstallationRepositoriesAction::Added => "added",
                InstallationRepositoriesAction::Removed => "removed",
            };
            let change = InstallationChange {
                installation_id: InstallationId(ev.installation.id),
                account: ev.installation.account.as_ref().map(|a| a.login.clone()),
                kind: InstallationChangeKind::RepositoriesChanged,
                repos_added: repo_names(&ev.repositories_added)?,
                repos_removed: repo_names(&ev.repositories_removed)?,
            };
            (Some(action.to_owned()), IntakeEvent::Installation(change))
        }
        WebhookEvent::Unhandled(_) => return Ok(None),
    }))
}

fn repo_names(repos: &[RepositoryRef]) -> Result<Vec<RepoFullName>, NormaliseError> {
    repos
        .iter()
        .map(|r| {
            r.full_name
                .parse()
                .map_err(|_| NormaliseError::RepoName(r.full_name.clone()))
        })
        .collect()
}

fn job_event(ev: &WorkflowJobEvent) -> Result<JobEvent, NormaliseError> {
    let job = &ev.workflow_job;
    let repo: RepoFullName = ev
        .repository
        .full_name
        .parse()
        .map_err(|_| NormaliseError::RepoName(ev.repository.full_name.clone()))?;
    Ok(JobEvent {
        job_id: JobId(job.id),
        run_id: RunId(job.run_id),
        installation_id: ev.installation.map(|i| InstallationId(i.id)),
        repo,
        repo_id: ev.repository.id,
        org: ev.organization.as_ref().map(|o| o.login.clone()),
        sender: ev.sender.login.clone(),
        status: ev.status(),
        conclusion: job.conclusion.clone(),
        labels: job.labels.clone(),
        job_name: job.name.clone(),
        workflow_name: job.workflow_name.clone(),
        // A queued job has no runner yet, whatever the payload says (CONTRACTS.md §3.5).
        runner_id: job
            .runner_id
            .filter(|_| ev.status() != mayfly_core::JobStatus::Queued),
        runner_name: job
            .runner_name
            .clone()
            .filter(|_| ev.status() != mayfly_core::JobStatus::Queued),
        created_at: job.created_at,
        started_at: job
            .started_at
            .filter(|_| ev.status() != mayfly_core::JobStatus::Queued),
        completed_at: job.completed_at,
    })
}

impl AppState {
    /// A warning an outsider can trigger: rate-limited per kind.
    pub(crate) fn warn(&self, kind: &'static str, message: &str) {
        if let Some(suppressed) = self.log_limiter.admit(kind, Instant::now()) {
            tracing::warn!(kind, suppressed, "{message}");
        }
    }
}
