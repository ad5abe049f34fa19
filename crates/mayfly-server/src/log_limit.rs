//! Rate limiting for log lines that outsiders can trigger (bad webhooks): at most `burst` lines
//! per window for each kind; the next line after a quiet spell reports how many were dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Decides whether a log line of some kind may be written now.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    state: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed_before)` when a line of `kind` may be written at `now`.
    pub fn admit(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let Ok(mut state) = self.state.lock() else {
            return None;
        };
        let w = state.entry(kind).or_insert(Window {
            started: now,
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= self.window {
            w.started = now;
            w.written = 0;
        }
        if w.written < self.burst {
            w.written += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_then_counts_what_it_drops() {
        let limiter = LogLimiter::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limiter.admit("forged", t0), Some(0));
        assert_eq!(limiter.admit("forged", t0), Some(0));
        assert_eq!(limiter.admit("forged", t0), None);
        assert_eq!(limiter.admit("forged", t0), None);
        assert_eq!(limiter.admit("other", t0), Some(0));
        assert_eq!(
            limiter.admit("forged", t0 + Duration::from_secs(11)),
            Some(2)
        );
    }
}
