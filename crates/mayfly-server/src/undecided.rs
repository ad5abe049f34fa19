//! The jobs a scheduling pass has not decided yet (`new`, `placing`: queued and waiting for a
//! slot, or being placed), kept in memory so that a backlog of thousands of queued jobs costs a
//! pass only the rows that changed since the last one. Applying a job event stamps its
//! `updated_at`; each pass reads the rows stamped since the newest it saw (less
//! [`OVERLAP`], for transactions that committed late or servers whose clocks run behind) and
//! merges them. The scheduler's own decisions are merged as it makes them. Every [`RESYNC`] the
//! ids and stamps of all undecided jobs are read: a job not among them was decided elsewhere
//! (another server placed it; its decision does not stamp `updated_at`) and leaves, and only
//! the rows not held as they are (new to the set, or stamped since) are read. Another server's
//! claim changes no stamp either; claiming in the store settles such a race.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mayfly_store::JobRecord;

/// How far before the newest stamp seen each refresh reads again.
pub const OVERLAP: chrono::Duration = chrono::Duration::seconds(5);
/// How often the ids and stamps of all undecided jobs are read (see the module).
pub const RESYNC: Duration = Duration::from_secs(30);

/// The undecided jobs by id, and how far the changes have been read. Jobs are shared with the
/// passes that use them (`Arc`), not copied into each: with 10,000 jobs queued a copy is 7 MiB.
#[derive(Debug, Default)]
pub struct Undecided {
    jobs: HashMap<i64, Arc<JobRecord>>,
    /// The newest `updated_at` among the rows read.
    seen: Option<DateTime<Utc>>,
    /// When the set was last resynced.
    resynced: Option<Instant>,
}

fn undecided(job: &JobRecord) -> bool {
    matches!(job.dispatch.disposition.as_str(), "new" | "placing")
}

impl Undecided {
    /// Where the next read of changed rows starts; `None`: resync the set.
    pub fn read_from(&self) -> Option<DateTime<Utc>> {
        let fresh = self.resynced.is_some_and(|at| at.elapsed() < RESYNC);
        fresh
            .then(|| self.seen.map(|seen| seen - OVERLAP))
            .flatten()
    }

    /// Brings the set in line with `stamps` (the id and `updated_at` of every undecided job, read
    /// whole every [`RESYNC`]): a job not among them leaves, and the ids returned are those whose
    /// rows must be read and merged (new to the set, or stamped since it was read). Reading the
    /// stamps instead of the rows keeps a backlog from being held twice at each resync.
    pub fn resync(&mut self, stamps: &[(i64, DateTime<Utc>)]) -> Vec<i64> {
        let live: HashMap<i64, DateTime<Utc>> = stamps.iter().copied().collect();
        self.jobs.retain(|id, _| live.contains_key(id));
        self.resynced = Some(Instant::now());
        // With nothing newer merged, the next refresh starts from now (less the overlap).
        self.seen = Some(Utc::now());
        stamps
            .iter()
            .filter(|(id, at)| self.jobs.get(id).is_none_or(|j| j.updated_at != *at))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Takes in rows that changed: an undecided one is (re)placed, a decided one leaves.
    pub fn merge(&mut self, rows: Vec<Arc<JobRecord>>) {
        for job in rows {
            if self.seen.is_none_or(|seen| job.updated_at > seen) {
                self.seen = Some(job.updated_at);
            }
            if undecided(&job) {
                self.jobs.insert(job.job_id.0, job);
            } else {
                self.jobs.remove(&job.job_id.0);
            }
        }
    }

    /// `decided` with the undecided jobs that are not among them, oldest first.
    pub fn with(&self, mut decided: Vec<Arc<JobRecord>>) -> Vec<Arc<JobRecord>> {
        let known: std::collections::HashSet<i64> = decided.iter().map(|j| j.job_id.0).collect();
        decided.extend(
            self.jobs
                .values()
                .filter(|j| !known.contains(&j.job_id.0))
                .cloned(),
        );
        decided.sort_unstable_by_key(|j| (j.first_seen_at, j.job_id.0));
        decided
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.jobs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_core::{JobId, JobStatus, RepoFullName};
    use mayfly_store::JobDispatch;

    /// The set as a resync that read `rows` whole leaves it.
    fn read_whole(u: &mut Undecided, rows: Vec<Arc<JobRecord>>) {
        let stamps: Vec<(i64, DateTime<Utc>)> =
            rows.iter().map(|j| (j.job_id.0, j.updated_at)).collect();
        u.resync(&stamps);
        u.merge(rows);
    }

    fn job(id: i64, disposition: &str, updated: DateTime<Utc>) -> Arc<JobRecord> {
        Arc::new(JobRecord {
            job_id: JobId(id),
            run_id: mayfly_core::RunId(1),
            installation_id: None,
            repo: "o/r".parse::<RepoFullName>().unwrap(),
            repo_id: 1,
            org: None,
            sender: "octocat".into(),
            status: JobStatus::Queued,
            conclusion: None,
            labels: vec![],
            job_name: "build".into(),
            workflow_name: None,
            runner_id: None,
            runner_name: None,
            created_at: None,
            started_at: None,
            completed_at: None,
            first_seen_at: updated,
            updated_at: updated,
            dispatch: JobDispatch {
                disposition: disposition.into(),
                ..JobDispatch::default()
            },
        })
    }

    #[test]
    fn a_resync_reads_only_rows_it_does_not_hold_as_they_are() {
        let t = Utc::now();
        let later = t + chrono::Duration::seconds(10);
        let mut u = Undecided::default();
        read_whole(
            &mut u,
            vec![job(1, "new", t), job(2, "new", t), job(3, "new", t)],
        );
        // 1 as held, 2 stamped since, 3 decided by another server (gone), 4 new to the set.
        let stale = u.resync(&[(1, t), (2, later), (4, later)]);
        assert_eq!(stale, [2, 4]);
        let ids = |u: &Undecided| {
            let mut ids: Vec<i64> = u.with(vec![]).iter().map(|j| j.job_id.0).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(ids(&u), [1, 2]);
        u.merge(vec![job(2, "new", later), job(4, "new", later)]);
        assert_eq!(ids(&u), [1, 2, 4]);
        assert!(u.resync(&[(1, t), (2, later), (4, later)]).is_empty());
    }

    #[test]
    fn changes_replace_jobs_and_decided_ones_leave() {
        let t = Utc::now();
        let mut u = Undecided::default();
        assert_eq!(u.read_from(), None, "read whole at first");
        read_whole(&mut u, vec![job(1, "new", t), job(2, "placed", t)]);
        assert_eq!(u.len(), 1);
        assert!(u.read_from().is_some());

        let later = t + chrono::Duration::seconds(10);
        u.merge(vec![job(1, "placed", later), job(3, "new", later)]);
        let ids: Vec<i64> = u.with(vec![]).iter().map(|j| j.job_id.0).collect();
        assert_eq!(ids, [3]);
        assert_eq!(u.read_from(), Some(later - OVERLAP));

        // A job both decided-open and undecided (a row read twice) is listed once, oldest first.
        let listed = u.with(vec![job(3, "new", later), job(0, "placed", t)]);
        let ids: Vec<i64> = listed.iter().map(|j| j.job_id.0).collect();
        assert_eq!(ids, [0, 3]);
    }
}
