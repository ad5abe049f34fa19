//! The moments of one job, in the order they happen: what the quickstart's table (and a
//! dashboard's waterfall) shows. The raw moments come from different clocks — GitHub's webhooks
//! carry whole seconds, the agent's events milliseconds of the host, the server its own — so a
//! later phase can carry an earlier raw time (GitHub's truncated `completed_at` "before" the
//! runner started). [`PhaseTimes::ordered`] makes them monotonic: each known moment is at least
//! every earlier known one. The rows keep the raw values.

use chrono::{DateTime, Utc};

/// A phase of a job's life, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// GitHub queued the job (`created_at` of the webhook's job).
    QueuedAtGithub,
    /// mayfly recorded its first webhook.
    WebhookReceived,
    /// The scheduler placed it and asked an agent for a VM.
    VmRequested,
    /// The VM's process started.
    VmStarted,
    /// The guest was ready and took the runner's config.
    GuestReady,
    /// The guest started the runner process.
    RunnerStarted,
    /// GitHub says the job started (`in_progress`).
    JobStarted,
    /// GitHub says the job completed.
    JobCompleted,
    /// The runner process exited.
    RunnerExited,
    /// Nothing of the VM is left.
    VmDestroyed,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Phase::QueuedAtGithub,
        Phase::WebhookReceived,
        Phase::VmRequested,
        Phase::VmStarted,
        Phase::GuestReady,
        Phase::RunnerStarted,
        Phase::JobStarted,
        Phase::JobCompleted,
        Phase::RunnerExited,
        Phase::VmDestroyed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Phase::QueuedAtGithub => "queued at GitHub",
            Phase::WebhookReceived => "webhook received",
            Phase::VmRequested => "VM requested",
            Phase::VmStarted => "VM started",
            Phase::GuestReady => "guest ready",
            Phase::RunnerStarted => "runner started",
            Phase::JobStarted => "job started",
            Phase::JobCompleted => "job completed",
            Phase::RunnerExited => "runner exited",
            Phase::VmDestroyed => "VM destroyed",
        }
    }
}

/// The raw moments of one job (from its job row and the row of the VM that ran it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    pub queued_at_github: Option<DateTime<Utc>>,
    pub webhook_received: Option<DateTime<Utc>>,
    pub vm_requested: Option<DateTime<Utc>>,
    pub vm_started: Option<DateTime<Utc>>,
    pub guest_ready: Option<DateTime<Utc>>,
    pub runner_started: Option<DateTime<Utc>>,
    pub job_started: Option<DateTime<Utc>>,
    pub job_completed: Option<DateTime<Utc>>,
    pub runner_exited: Option<DateTime<Utc>>,
    pub vm_destroyed: Option<DateTime<Utc>>,
}

impl PhaseTimes {
    /// The raw moment of `phase`.
    pub fn get(&self, phase: Phase) -> Option<DateTime<Utc>> {
        match phase {
            Phase::QueuedAtGithub => self.queued_at_github,
            Phase::WebhookReceived => self.webhook_received,
            Phase::VmRequested => self.vm_requested,
            Phase::VmStarted => self.vm_started,
            Phase::GuestReady => self.guest_ready,
            Phase::RunnerStarted => self.runner_started,
            Phase::JobStarted => self.job_started,
            Phase::JobCompleted => self.job_completed,
            Phase::RunnerExited => self.runner_exited,
            Phase::VmDestroyed => self.vm_destroyed,
        }
    }

    /// Every phase in order with its moment, made monotonic: a moment earlier than a known
    /// earlier phase's is shown at that phase's moment. Unknown phases stay unknown.
    pub fn ordered(&self) -> Vec<(Phase, Option<DateTime<Utc>>)> {
        let mut floor: Option<DateTime<Utc>> = None;
        Phase::ALL
            .iter()
            .map(|&phase| {
                let at = self.get(phase).map(|t| floor.map_or(t, |f| t.max(f)));
                if at.is_some() {
                    floor = at;
                }
                (phase, at)
            })
            .collect()
    }
}

/// A stretch of a job's life between two of its moments: the bars of the dashboard's
/// waterfall and the phases of the metrics' histogram, one list for both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stretch {
    /// The metric label, e.g. `webhook_lag`.
    pub name: &'static str,
    /// For people, e.g. `webhook lag`.
    pub label: &'static str,
    pub from: Phase,
    pub to: Phase,
}

/// Consecutive stretches from GitHub queueing the job to its VM being gone: webhook lag,
/// waiting for capacity, VM boot (process start and guest), runner start (until it took the
/// job), the job, destroy (runner exit and teardown).
pub const STRETCHES: [Stretch; 6] = [
    Stretch {
        name: "webhook_lag",
        label: "webhook lag",
        from: Phase::QueuedAtGithub,
        to: Phase::WebhookReceived,
    },
    Stretch {
        name: "waiting_for_capacity",
        label: "waiting for capacity",
        from: Phase::WebhookReceived,
        to: Phase::VmRequested,
    },
    Stretch {
        name: "vm_boot",
        label: "VM boot",
        from: Phase::VmRequested,
        to: Phase::GuestReady,
    },
    Stretch {
        name: "runner_start",
        label: "runner start",
        from: Phase::GuestReady,
        to: Phase::JobStarted,
    },
    Stretch {
        name: "job_run",
        label: "job",
        from: Phase::JobStarted,
        to: Phase::JobCompleted,
    },
    Stretch {
        name: "destroy",
        label: "destroy",
        from: Phase::JobCompleted,
        to: Phase::VmDestroyed,
    },
];

/// A job's moments made monotonic (see [`PhaseTimes::ordered`]), to look up by phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ordered(Vec<(Phase, Option<DateTime<Utc>>)>);

impl Ordered {
    /// The ordered moment of `phase`.
    pub fn at(&self, phase: Phase) -> Option<DateTime<Utc>> {
        self.0
            .iter()
            .find(|(p, _)| *p == phase)
            .and_then(|(_, t)| *t)
    }

    /// The earliest known moment.
    pub fn first(&self) -> Option<DateTime<Utc>> {
        self.0.iter().find_map(|(_, t)| *t)
    }

    /// The stretches whose both ends are known, with their start and end.
    pub fn stretches(&self) -> Vec<(Stretch, DateTime<Utc>, DateTime<Utc>)> {
        STRETCHES
            .iter()
            .filter_map(|s| Some((*s, self.at(s.from)?, self.at(s.to)?)))
            .collect()
    }

    pub fn as_slice(&self) -> &[(Phase, Option<DateTime<Utc>>)] {
        &self.0
    }
}

impl PhaseTimes {
    /// [`PhaseTimes::ordered`], to look moments and stretches up.
    pub fn monotonic(&self) -> Ordered {
        Ordered(self.ordered())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn times(raw: &[Option<i64>]) -> PhaseTimes {
        let t = |i: usize| raw[i].map(|ms| DateTime::from_timestamp_millis(ms).unwrap());
        PhaseTimes {
            queued_at_github: t(0),
            webhook_received: t(1),
            vm_requested: t(2),
            vm_started: t(3),
            guest_ready: t(4),
            runner_started: t(5),
            job_started: t(6),
            job_completed: t(7),
            runner_exited: t(8),
            vm_destroyed: t(9),
        }
    }

    #[test]
    fn a_truncated_github_second_does_not_put_the_job_before_its_runner() {
        // Runner started at 9.3 s; GitHub's completed_at, in whole seconds, says 9 s.
        let raw = times(&[
            Some(0),
            Some(400),
            Some(500),
            Some(900),
            Some(8_000),
            Some(9_300),
            Some(9_000),
            Some(9_000),
            None,
            Some(9_800),
        ]);
        let ordered = raw.monotonic();
        let at = |p: Phase| ordered.at(p).unwrap();
        assert_eq!(at(Phase::JobStarted), at(Phase::RunnerStarted));
        assert_eq!(at(Phase::JobCompleted), at(Phase::RunnerStarted));
        assert_eq!(ordered.as_slice()[8], (Phase::RunnerExited, None));
        assert_eq!(at(Phase::VmDestroyed).timestamp_millis(), 9_800);
        // Every stretch has both ends here; they follow one another.
        let stretches = ordered.stretches();
        assert_eq!(stretches.len(), STRETCHES.len());
        for pair in stretches.windows(2) {
            assert_eq!(pair[0].2, pair[1].1);
        }
    }

    proptest! {
        /// Whatever the clocks said, the ordered moments never go backwards, unknown ones
        /// stay unknown, and none is shown earlier than it really was.
        #[test]
        fn ordered_moments_are_monotonic(raw in proptest::collection::vec(
            proptest::option::of(0i64..10_000_000), 10)) {
            let times = times(&raw);
            let ordered = times.ordered();
            prop_assert_eq!(ordered.len(), Phase::ALL.len());
            let mut last = None;
            for (phase, at) in &ordered {
                prop_assert_eq!(at.is_some(), times.get(*phase).is_some());
                if let (Some(at), Some(raw)) = (at, times.get(*phase)) {
                    prop_assert!(*at >= raw);
                    if let Some(last) = last {
                        prop_assert!(*at >= last);
                    }
                    last = Some(*at);
                }
            }
        }

        /// Moments that were already in order are shown as they are.
        #[test]
        fn ordered_input_is_unchanged(mut raw in proptest::collection::vec(0i64..10_000_000, 10)) {
            raw.sort_unstable();
            let times = times(&raw.iter().copied().map(Some).collect::<Vec<_>>());
            for (phase, at) in times.ordered() {
                prop_assert_eq!(at, times.get(phase));
            }
        }
    }
}
