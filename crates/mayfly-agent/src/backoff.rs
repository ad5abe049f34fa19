//! Bounded exponential backoff between attempts to reach the server: the first wait is short,
//! each failure doubles it up to a ceiling, a successful session starts over. No randomness: a
//! single agent per host has no thundering herd of its own to spread.

use std::time::Duration;

/// The waits between reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial` and never waits longer than `max` (at least `initial`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before the next attempt; each call doubles the one after, up to the ceiling.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn waits_double_up_to_the_ceiling_and_start_over_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<_> = (0..7).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), Duration::from_millis(100));
    }

    #[test]
    fn a_ceiling_below_the_first_wait_and_huge_waits_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(backoff.next_wait(), Duration::from_secs(2));
        assert_eq!(backoff.next_wait(), Duration::from_secs(2));
        let mut huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        for _ in 0..4 {
            assert!(huge.next_wait() <= Duration::MAX);
        }
    }
}
