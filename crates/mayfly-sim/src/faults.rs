//! Injected failures of the GitHub REST surface (never of `/_sim`): server errors, primary and
//! secondary rate limits, slow answers. Each fault applies to the next `count` matching requests
//! (or until cleared), optionally only under a path prefix, in the order they were added.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum FaultsError {
    #[error("a server-error fault needs a 5xx status, got {0}")]
    NotServerError(u16),
    #[error("a rate-limit fault answers 403 or 429, got {0}")]
    NotRateLimitStatus(u16),
    #[error("a refusal fault answers 403, 404 or 422, got {0}")]
    NotRefusalStatus(u16),
}

/// How a rate-limited answer tells the client when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RateLimitKind {
    /// Primary limit: `x-ratelimit-remaining: 0` and `x-ratelimit-reset` `reset_in_s` ahead.
    Primary { reset_in_s: u64 },
    /// Secondary limit: a `retry-after` header.
    Secondary { retry_after_s: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RestFaultKind {
    /// Answer with this 5xx status and GitHub's error body.
    ServerError { status: u16 },
    /// Refuse with 403, 404 or 422 and GitHub's error body: a refusal that repeating does not
    /// change (e.g. the App lost a permission).
    Refusal { status: u16 },
    /// Answer 403 or 429 as GitHub's rate limiter does.
    RateLimit { status: u16, limit: RateLimitKind },
    /// Wait this long before answering normally.
    Slow { delay_ms: u64 },
}

/// One injected REST fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestFault {
    #[serde(flatten)]
    pub kind: RestFaultKind,
    /// How many requests it affects; `None` = until cleared.
    #[serde(default)]
    pub count: Option<u32>,
    /// Only requests whose path starts with this (e.g. `/repos/o/r/actions`).
    #[serde(default)]
    pub path_prefix: Option<String>,
}

impl RestFault {
    pub(crate) fn validate(&self) -> Result<(), FaultsError> {
        match self.kind {
            RestFaultKind::ServerError { status } if !(500..=599).contains(&status) => {
                Err(FaultsError::NotServerError(status))
            }
            RestFaultKind::RateLimit { status, .. } if status != 403 && status != 429 => {
                Err(FaultsError::NotRateLimitStatus(status))
            }
            RestFaultKind::Refusal { status } if ![403, 404, 422].contains(&status) => {
                Err(FaultsError::NotRefusalStatus(status))
            }
            _ => Ok(()),
        }
    }
}

/// What the REST edge must do for one request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct FaultPlan {
    pub delay: Duration,
    /// A fault that replaces the answer.
    pub answer: Option<RestFaultKind>,
}

#[derive(Debug, Default)]
pub(crate) struct RestFaults {
    faults: Vec<RestFault>,
}

impl RestFaults {
    pub(crate) fn add(&mut self, fault: RestFault) {
        self.faults.push(fault);
    }

    pub(crate) fn clear(&mut self) {
        self.faults.clear();
    }

    /// Consumes the faults that apply to a request for `path`.
    pub(crate) fn plan(&mut self, path: &str) -> FaultPlan {
        let mut plan = FaultPlan::default();
        for fault in &mut self.faults {
            if fault.count == Some(0)
                || !fault
                    .path_prefix
                    .as_deref()
                    .is_none_or(|p| path.starts_with(p))
            {
                continue;
            }
            match &fault.kind {
                RestFaultKind::Slow { delay_ms } => {
                    plan.delay += Duration::from_millis(*delay_ms);
                }
                kind if plan.answer.is_none() => plan.answer = Some(kind.clone()),
                _ => continue,
            }
            if let Some(count) = fault.count.as_mut() {
                *count -= 1;
            }
        }
        self.faults.retain(|f| f.count != Some(0));
        plan
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn counted_fault_applies_to_matching_paths_then_expires() {
        let mut faults = RestFaults::default();
        faults.add(RestFault {
            kind: RestFaultKind::ServerError { status: 502 },
            count: Some(2),
            path_prefix: Some("/repos".into()),
        });
        faults.add(RestFault {
            kind: RestFaultKind::Slow { delay_ms: 5 },
            count: None,
            path_prefix: None,
        });
        assert_eq!(faults.plan("/app").answer, None);
        let plan = faults.plan("/repos/o/r");
        assert_eq!(
            plan.answer,
            Some(RestFaultKind::ServerError { status: 502 })
        );
        assert_eq!(plan.delay, Duration::from_millis(5));
        assert!(faults.plan("/repos/o/r").answer.is_some());
        assert_eq!(faults.plan("/repos/o/r").answer, None);
        let bad = RestFault {
            kind: RestFaultKind::ServerError { status: 404 },
            count: None,
            path_prefix: None,
        };
        assert!(bad.validate().is_err());
    }
}
