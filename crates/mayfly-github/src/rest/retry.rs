//! When to try a GitHub request again. Rate limits (403/429 with `retry-after`, or with
//! `x-ratelimit-remaining: 0` and `x-ratelimit-reset`) and 5xx answers are retried a bounded
//! number of times, never waiting longer than the policy allows; a longer wait is an error the
//! caller sees, not a stalled task.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// Bounds on retrying.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// The longest single wait the client accepts; a rate limit that needs more is returned.
    pub max_wait: Duration,
    /// First backoff for 5xx answers and rate limits without a hint; doubles each time.
    pub base_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            max_wait: Duration::from_secs(60),
            base_backoff: Duration::from_millis(500),
        }
    }
}

/// What to do with an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Use it (success or a final error).
    Done,
    /// Rate limited: wait this long, then retry; `None` when the policy's wait is exceeded.
    RateLimited(Option<Duration>),
    /// A server error worth retrying after this backoff.
    ServerError(Duration),
}

impl RetryPolicy {
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        self.base_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
    }

    /// Classifies an answer to attempt number `attempt` (1-based), read at `now`.
    pub(crate) fn verdict(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        attempt: u32,
        now: DateTime<Utc>,
        idempotent: bool,
    ) -> Verdict {
        let last = attempt >= self.max_attempts;
        if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
            let Some(wait) = rate_limit_wait(status, headers, now, self.backoff(attempt)) else {
                // A 403 without rate-limit signs is a permission problem.
                return Verdict::Done;
            };
            if last || wait > self.max_wait {
                return Verdict::RateLimited(None);
            }
            return Verdict::RateLimited(Some(wait));
        }
        if status.is_server_error() && idempotent && !last {
            return Verdict::ServerError(self.backoff(attempt));
        }
        Verdict::Done
    }
}

fn header_i64(headers: &HeaderMap, name: &str) -> Option<i64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// How long GitHub asks us to wait, or `None` if this 403/429 is not a rate limit.
fn rate_limit_wait(
    status: StatusCode,
    headers: &HeaderMap,
    now: DateTime<Utc>,
    fallback: Duration,
) -> Option<Duration> {
    if let Some(secs) = header_i64(headers, "retry-after") {
        return Some(Duration::from_secs(secs.max(0).unsigned_abs()));
    }
    if header_i64(headers, "x-ratelimit-remaining") == Some(0) {
        let reset = header_i64(headers, "x-ratelimit-reset")?;
        let secs = (reset - now.timestamp()).max(0);
        // One more second: the reset is in whole seconds.
        return Some(Duration::from_secs(secs.unsigned_abs() + 1));
    }
    // A 429 is a rate limit even without hints (secondary limits); back off.
    (status == StatusCode::TOO_MANY_REQUESTS).then_some(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn honours_retry_after() {
        let policy = RetryPolicy::default();
        let v = policy.verdict(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "3")]),
            1,
            Utc::now(),
            true,
        );
        assert_eq!(v, Verdict::RateLimited(Some(Duration::from_secs(3))));
    }

    #[test]
    fn honours_reset_when_remaining_is_zero() {
        let policy = RetryPolicy::default();
        let now = Utc::now();
        let reset = (now.timestamp() + 10).to_string();
        let v = policy.verdict(
            StatusCode::FORBIDDEN,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ]),
            1,
            now,
            true,
        );
        assert_eq!(v, Verdict::RateLimited(Some(Duration::from_secs(11))));
    }

    #[test]
    fn a_plain_403_is_final() {
        let policy = RetryPolicy::default();
        let v = policy.verdict(
            StatusCode::FORBIDDEN,
            &HeaderMap::new(),
            1,
            Utc::now(),
            true,
        );
        assert_eq!(v, Verdict::Done);
    }

    #[test]
    fn waits_beyond_the_bound_are_refused() {
        let policy = RetryPolicy {
            max_wait: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let v = policy.verdict(
            StatusCode::FORBIDDEN,
            &headers(&[("retry-after", "3600")]),
            1,
            Utc::now(),
            true,
        );
        assert_eq!(v, Verdict::RateLimited(None));
    }

    #[test]
    fn server_errors_retry_with_growing_backoff_then_stop() {
        let policy = RetryPolicy::default();
        let now = Utc::now();
        let status = StatusCode::BAD_GATEWAY;
        assert_eq!(
            policy.verdict(status, &HeaderMap::new(), 1, now, true),
            Verdict::ServerError(Duration::from_millis(500))
        );
        assert_eq!(
            policy.verdict(status, &HeaderMap::new(), 3, now, true),
            Verdict::ServerError(Duration::from_millis(2000))
        );
        assert_eq!(
            policy.verdict(status, &HeaderMap::new(), 4, now, true),
            Verdict::Done
        );
        assert_eq!(
            policy.verdict(status, &HeaderMap::new(), 1, now, false),
            Verdict::Done
        );
    }
}
