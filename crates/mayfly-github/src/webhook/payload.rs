//! Typed webhook payloads for the events mayfly acts on. Parsing is lenient exactly where real
//! deliveries deviate from GitHub's schema (CONTRACTS.md §3.5): timestamps as epoch integers or
//! strings, fields missing from older payloads, `queued` deliveries whose job says `waiting`.
//! Everything else about an event is ignored; unknown events are reported, not refused.

use chrono::{DateTime, TimeZone, Utc};
use mayfly_core::JobStatus;
use serde::{Deserialize, Deserializer};

/// A delivery's payload, chosen by the `X-GitHub-Event` header.
#[derive(Debug, Clone)]
pub enum WebhookEvent {
    WorkflowJob(Box<WorkflowJobEvent>),
    Ping(PingEvent),
    Installation(Box<InstallationEvent>),
    InstallationRepositories(Box<InstallationRepositoriesEvent>),
    /// An event mayfly does not handle; only its name is kept.
    Unhandled(String),
}

/// Why a payload could not be read. The message names the JSON position, never the content.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("the {event} payload is not valid: {source}")]
    Invalid {
        event: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl WebhookEvent {
    /// Parses `body` as the payload of `event`. Call only after the signature has been verified.
    pub fn parse(event: &str, body: &[u8]) -> Result<Self, PayloadError> {
        fn typed<T: serde::de::DeserializeOwned>(
            event: &'static str,
            body: &[u8],
        ) -> Result<Box<T>, PayloadError> {
            serde_json::from_slice(body)
                .map(Box::new)
                .map_err(|source| PayloadError::Invalid { event, source })
        }
        Ok(match event {
            "workflow_job" => Self::WorkflowJob(typed("workflow_job", body)?),
            "ping" => Self::Ping(*typed("ping", body)?),
            "installation" => Self::Installation(typed("installation", body)?),
            "installation_repositories" => {
                Self::InstallationRepositories(typed("installation_repositories", body)?)
            }
            other => {
                // Still has to be JSON: a valid signature over garbage is a 400, not a 202.
                serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|source| {
                    PayloadError::Invalid {
                        event: "unhandled",
                        source,
                    }
                })?;
                Self::Unhandled(other.to_owned())
            }
        })
    }
}

/// `workflow_job.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowJobAction {
    Queued,
    Waiting,
    InProgress,
    Completed,
}

/// A `workflow_job` delivery.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowJobEvent {
    pub action: WorkflowJobAction,
    pub workflow_job: WorkflowJob,
    pub repository: Repository,
    pub sender: Account,
    /// Present on GitHub App deliveries; absent on repository/organisation hooks.
    #[serde(default)]
    pub installation: Option<InstallationRef>,
    #[serde(default)]
    pub organization: Option<Account>,
}

impl WorkflowJobEvent {
    /// The job's state as this delivery reports it. The action decides, except that a `queued`
    /// delivery for a job that says `waiting` (an approval gate) is waiting.
    pub fn status(&self) -> JobStatus {
        match self.action {
            WorkflowJobAction::Queued if self.workflow_job.status == "waiting" => {
                JobStatus::Waiting
            }
            WorkflowJobAction::Queued => JobStatus::Queued,
            WorkflowJobAction::Waiting => JobStatus::Waiting,
            WorkflowJobAction::InProgress => JobStatus::InProgress,
            WorkflowJobAction::Completed => JobStatus::Completed,
        }
    }
}

/// The `workflow_job` object of a delivery.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowJob {
    pub id: i64,
    #[serde(deserialize_with = "integral")]
    pub run_id: i64,
    #[serde(default)]
    pub run_attempt: Option<i64>,
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub conclusion: Option<String>,
    /// The job's `runs-on` labels.
    pub labels: Vec<String>,
    #[serde(default, deserialize_with = "opt_integral")]
    pub runner_id: Option<i64>,
    #[serde(default)]
    pub runner_name: Option<String>,
    #[serde(default, deserialize_with = "opt_integral")]
    pub runner_group_id: Option<i64>,
    #[serde(default)]
    pub runner_group_name: Option<String>,
    #[serde(default, deserialize_with = "opt_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "opt_timestamp")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "opt_timestamp")]
    pub completed_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub workflow_name: Option<String>,
    #[serde(default)]
    pub head_branch: Option<String>,
}

/// The parts of a repository object mayfly uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Repository {
    pub id: i64,
    pub name: String,
    pub full_name: String,
    #[serde(default)]
    pub private: bool,
    pub owner: Account,
}

/// A user or organisation (`simple-user`, `organization-simple-webhooks`).
#[derive(Debug, Clone, Deserialize)]
pub struct Account {
    pub login: String,
    pub id: i64,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// `installation` as it appears in non-installation events: just the id.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct InstallationRef {
    pub id: i64,
}

/// A `ping` delivery, sent when a hook or App is set up.
#[derive(Debug, Clone, Deserialize)]
pub struct PingEvent {
    #[serde(default)]
    pub zen: Option<String>,
    #[serde(default)]
    pub hook_id: Option<i64>,
    #[serde(default)]
    pub hook: Option<Hook>,
}

/// The hook a `ping` describes.
#[derive(Debug, Clone, Deserialize)]
pub struct Hook {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub app_id: Option<i64>,
    #[serde(default)]
    pub events: Vec<String>,
}

/// `installation.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallationAction {
    Created,
    Deleted,
    Suspend,
    Unsuspend,
    NewPermissionsAccepted,
}

/// An `installation` delivery.
#[derive(Debug, Clone, Deserialize)]
pub struct InstallationEvent {
    pub action: InstallationAction,
    pub installation: Installation,
    /// Repositories the installation covers (on `created`/`deleted`).
    #[serde(default)]
    pub repositories: Option<Vec<RepositoryRef>>,
    pub sender: Account,
}

/// The full installation object of installation events.
#[derive(Debug, Clone, Deserialize)]
pub struct Installation {
    pub id: i64,
    #[serde(default)]
    pub account: Option<Account>,
    #[serde(default)]
    pub app_id: Option<i64>,
    #[serde(default)]
    pub repository_selection: Option<String>,
    #[serde(default, deserialize_with = "opt_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "opt_timestamp")]
    pub suspended_at: Option<DateTime<Utc>>,
}

/// `installation_repositories.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallationRepositoriesAction {
    Added,
    Removed,
}

/// An `installation_repositories` delivery.
#[derive(Debug, Clone, Deserialize)]
pub struct InstallationRepositoriesEvent {
    pub action: InstallationRepositoriesAction,
    pub installation: Installation,
    #[serde(default)]
    pub repository_selection: Option<String>,
    pub repositories_added: Vec<RepositoryRef>,
    pub repositories_removed: Vec<RepositoryRef>,
    /// Required by the schema, missing from older payloads.
    #[serde(default)]
    pub requester: Option<Account>,
    pub sender: Account,
}

/// The short repository form in installation events.
#[derive(Debug, Clone, Deserialize)]
pub struct RepositoryRef {
    pub id: i64,
    pub name: String,
    pub full_name: String,
    #[serde(default)]
    pub private: bool,
}

/// A number the schema types as `number` that is an integer in practice (`run_id`).
fn integral<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    opt_integral(d)?.ok_or_else(|| serde::de::Error::custom("expected an integer, found null"))
}

fn opt_integral<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    let Some(n) = n else { return Ok(None) };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 =>
        {
            #[allow(clippy::cast_possible_truncation)]
            Ok(Some(f as i64))
        }
        _ => Err(serde::de::Error::custom("expected an integer")),
    }
}

/// A timestamp given as RFC 3339 text or as integer epoch seconds (older installation payloads).
fn opt_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(i64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Seconds(s)) => Utc
            .timestamp_opt(s, 0)
            .single()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("epoch seconds out of range")),
        Some(Raw::Text(t)) => DateTime::parse_from_rfc3339(&t)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| serde::de::Error::custom("expected an RFC 3339 timestamp")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_payload(action: &str, status: &str) -> String {
        format!(
            r#"{{"action":"{action}","workflow_job":{{"id":7,"run_id":8.0,"name":"build",
            "status":"{status}","labels":["mayfly-linux-2cpu"],"created_at":"2024-01-01T00:00:00Z"}},
            "repository":{{"id":1,"name":"r","full_name":"o/r","owner":{{"login":"o","id":2}}}},
            "sender":{{"login":"alice","id":3}},"installation":{{"id":9,"node_id":"x"}}}}"#
        )
    }

    #[test]
    fn queued_with_waiting_status_is_waiting() {
        let WebhookEvent::WorkflowJob(ev) =
            WebhookEvent::parse("workflow_job", job_payload("queued", "waiting").as_bytes())
                .unwrap()
        else {
            panic!("not a workflow_job")
        };
        assert_eq!(ev.status(), JobStatus::Waiting);
        assert_eq!(ev.workflow_job.run_id, 8);
        assert_eq!(ev.installation.map(|i| i.id), Some(9));
    }

    #[test]
    fn timestamps_accept_epoch_seconds_and_text() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "opt_timestamp")]
            at: Option<DateTime<Utc>>,
        }
        let a: T = serde_json::from_str(r#"{"at":1557933591}"#).unwrap();
        let b: T = serde_json::from_str(r#"{"at":"2019-05-15T15:19:51Z"}"#).unwrap();
        assert_eq!(a.at, b.at);
        assert!(serde_json::from_str::<T>(r#"{"at":"yesterday"}"#).is_err());
    }

    #[test]
    fn unhandled_events_must_still_be_json() {
        assert!(matches!(
            WebhookEvent::parse("push", b"{}"),
            Ok(WebhookEvent::Unhandled(name)) if name == "push"
        ));
        assert!(WebhookEvent::parse("push", b"{not json").is_err());
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"null",
            b"[]",
            b"{\"action\":\"queued\"}",
            b"\xff\xfe",
            b"{",
        ] {
            assert!(WebhookEvent::parse("workflow_job", body).is_err());
            assert!(WebhookEvent::parse("installation", body).is_err());
        }
        let unknown_action = job_payload("exploded", "queued");
        assert!(WebhookEvent::parse("workflow_job", unknown_action.as_bytes()).is_err());
    }
}
