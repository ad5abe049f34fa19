//! The lifecycle of a GitHub workflow job as mayfly sees it through webhooks and the REST API.
//! States only move forward (queued/waiting → in_progress → completed); `waiting ⇄ queued` is the
//! one loop (environment approval gates). Deliveries arrive out of order, so a late event that
//! would move a job backwards is ignored rather than applied.

use serde::{Deserialize, Serialize};

/// GitHub's `workflow_job.status`, as far as it matters to mayfly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Waiting,
    InProgress,
    Completed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Waiting => "waiting",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "queued" => Self::Queued,
            "waiting" => Self::Waiting,
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            _ => return None,
        })
    }

    fn rank(self) -> u8 {
        match self {
            Self::Queued | Self::Waiting => 0,
            Self::InProgress => 1,
            Self::Completed => 2,
        }
    }

    /// What applying an event that reports `next` does to a job currently in `self`.
    pub fn transition(self, next: Self) -> Transition {
        if next == self {
            Transition::Unchanged
        } else if next.rank() >= self.rank() {
            Transition::Advance(next)
        } else {
            Transition::Stale
        }
    }
}

/// The outcome of [`JobStatus::transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Move to this state.
    Advance(JobStatus),
    /// The event repeats the current state (a redelivery, or facts added to the same state).
    Unchanged,
    /// The event is older than what is known; keep the current state.
    Stale,
}

#[cfg(test)]
mod tests {
    use super::JobStatus::{Completed, InProgress, Queued, Waiting};
    use super::*;

    #[test]
    fn states_only_move_forward() {
        assert_eq!(
            Queued.transition(InProgress),
            Transition::Advance(InProgress)
        );
        assert_eq!(Queued.transition(Completed), Transition::Advance(Completed));
        assert_eq!(
            InProgress.transition(Completed),
            Transition::Advance(Completed)
        );
        assert_eq!(Completed.transition(InProgress), Transition::Stale);
        assert_eq!(Completed.transition(Queued), Transition::Stale);
        assert_eq!(InProgress.transition(Queued), Transition::Stale);
        assert_eq!(InProgress.transition(Waiting), Transition::Stale);
    }

    #[test]
    fn waiting_and_queued_loop() {
        assert_eq!(Queued.transition(Waiting), Transition::Advance(Waiting));
        assert_eq!(Waiting.transition(Queued), Transition::Advance(Queued));
        assert_eq!(Queued.transition(Queued), Transition::Unchanged);
    }

    #[test]
    fn out_of_order_delivery_ends_completed() {
        // Reported in the wild: queued, completed, in_progress.
        let mut state = Queued;
        for next in [Completed, InProgress] {
            if let Transition::Advance(s) = state.transition(next) {
                state = s;
            }
        }
        assert_eq!(state, Completed);
    }

    #[test]
    fn names_round_trip() {
        for s in [Queued, Waiting, InProgress, Completed] {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("requested"), None);
    }
}
