//! Workflow runs and their jobs: creation, the approval gate, a runner acquiring and completing
//! its one job, cancellation. Jobs only move forward; waiting → queued is the one loop back.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rand::Rng;

use super::{bump, Account, RunnerScope, StateError, World, DEFAULT_GROUP_ID};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Waiting,
    Queued,
    InProgress,
    Completed,
}

impl JobStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    Success,
    Failure,
    Cancelled,
}

impl Conclusion {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One `run:` step of a job, as a workflow declares it: the runner runs them in order with bash
/// and stops at the first that fails.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobStep {
    pub name: String,
    pub run: String,
}

#[derive(Debug, Clone)]
pub(crate) struct AssignedRunner {
    pub id: u64,
    pub name: String,
    pub group_id: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub id: u64,
    pub run_id: u64,
    pub repo_id: u64,
    pub name: String,
    pub labels: Vec<String>,
    pub status: JobStatus,
    pub conclusion: Option<Conclusion>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub runner: Option<AssignedRunner>,
    pub steps: Vec<JobStep>,
    pub env: BTreeMap<String, String>,
    pub output: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub id: u64,
    pub repo_id: u64,
    pub run_number: u64,
    pub workflow_id: u64,
    pub workflow_name: String,
    pub head_sha: String,
    pub head_branch: String,
    pub actor: Account,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub run_started_at: DateTime<Utc>,
}

/// What `World::acquire`, `World::jobs_of_run` and run numbering would otherwise find by walking
/// every job and run ever created.
#[derive(Debug, Default)]
pub(crate) struct JobIndex {
    /// Queued jobs, oldest (lowest id) first.
    queued: BTreeSet<u64>,
    /// The jobs of each run.
    of_run: BTreeMap<u64, Vec<u64>>,
    /// How many runs each repository has had.
    runs_of_repo: BTreeMap<u64, u64>,
}

impl World {
    pub(crate) fn create_job(
        &mut self,
        new: NewJobSpec,
        now: DateTime<Utc>,
    ) -> Result<Job, StateError> {
        let repo = self
            .repos
            .get(&new.repo_id)
            .ok_or(StateError::NotFound)?
            .clone();
        if new.labels.is_empty() {
            return Err(StateError::Invalid("a job needs at least one label".into()));
        }
        if new.steps.is_empty() {
            return Err(StateError::Invalid("a job needs at least one step".into()));
        }
        if let Some(i) = new
            .steps
            .iter()
            .position(|s| s.name.trim().is_empty() || s.run.trim().is_empty())
        {
            return Err(StateError::Invalid(format!(
                "step {} needs a name and a non-empty run",
                i + 1
            )));
        }
        let run_number = {
            let runs = self.job_index.runs_of_repo.entry(repo.id).or_default();
            *runs += 1;
            *runs
        };
        let run = Run {
            id: bump(&mut self.next_run),
            repo_id: repo.id,
            run_number,
            workflow_id: 160_000_000 + repo.id % 1_000_000,
            workflow_name: new.workflow_name,
            head_sha: hex::encode(rand::thread_rng().gen::<[u8; 20]>()),
            head_branch: "main".into(),
            actor: new.sender,
            created_at: now,
            updated_at: now,
            run_started_at: now,
        };
        let job = Job {
            id: bump(&mut self.next_job),
            run_id: run.id,
            repo_id: repo.id,
            name: new.name,
            labels: new.labels,
            status: if new.waiting {
                JobStatus::Waiting
            } else {
                JobStatus::Queued
            },
            conclusion: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            runner: None,
            steps: new.steps,
            env: new.env,
            output: None,
        };
        if job.status == JobStatus::Queued {
            self.job_index.queued.insert(job.id);
        }
        self.job_index
            .of_run
            .entry(run.id)
            .or_default()
            .push(job.id);
        self.runs.insert(run.id, run);
        self.jobs.insert(job.id, job.clone());
        Ok(job)
    }

    /// waiting → queued (an approval was given).
    pub(crate) fn approve_job(
        &mut self,
        job_id: u64,
        now: DateTime<Utc>,
    ) -> Result<Job, StateError> {
        let job = self.jobs.get_mut(&job_id).ok_or(StateError::NotFound)?;
        if job.status != JobStatus::Waiting {
            return Err(StateError::Conflict(format!(
                "job {job_id} is {}",
                job.status.as_str()
            )));
        }
        job.status = JobStatus::Queued;
        self.job_index.queued.insert(job_id);
        let job = job.clone();
        self.touch_run(job.run_id, now);
        Ok(job)
    }

    /// Cancels a job that has not completed; a runner running it is freed and removed.
    pub(crate) fn cancel_job(
        &mut self,
        job_id: u64,
        now: DateTime<Utc>,
    ) -> Result<Job, StateError> {
        let job = self.jobs.get(&job_id).ok_or(StateError::NotFound)?;
        if job.status == JobStatus::Completed {
            return Err(StateError::Conflict(format!(
                "job {job_id} has already completed"
            )));
        }
        let runner = job.runner.as_ref().map(|r| r.id);
        self.finish_job(job_id, Conclusion::Cancelled, None, now, runner)
    }

    /// The runner renews its job (it is alive and working on it).
    pub(crate) fn renew(
        &mut self,
        runner_id: u64,
        job_id: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let runner = self
            .runners
            .get_mut(&runner_id)
            .filter(|r| r.job_id == Some(job_id))
            .ok_or(StateError::NotFound)?;
        runner.last_contact = Some(now);
        Ok(())
    }

    /// Fails the jobs of runners that have not been heard from for `timeout` (their machine is
    /// gone): the job completes as failed and the runner is removed, as GitHub does.
    pub(crate) fn fail_lost_runners(
        &mut self,
        now: DateTime<Utc>,
        timeout: chrono::Duration,
    ) -> Vec<Job> {
        let lost: Vec<(u64, u64)> = self
            .runners
            .values()
            .filter(|r| r.busy && r.last_contact.is_some_and(|at| now - at > timeout))
            .filter_map(|r| r.job_id.map(|job| (r.id, job)))
            .collect();
        lost.into_iter()
            .filter_map(|(runner, job)| {
                let output = String::from(
                    "The self-hosted runner lost communication with the server. Verify the \
                     machine is running and has a healthy network connection.",
                );
                self.finish_job(job, Conclusion::Failure, Some(output), now, Some(runner))
                    .ok()
            })
            .collect()
    }

    /// The oldest queued job this runner may take: same repository (or any repository of the
    /// organisation for an org runner) and every job label among the runner's labels.
    pub(crate) fn acquire(
        &mut self,
        runner_id: u64,
        now: DateTime<Utc>,
    ) -> Result<Option<Job>, StateError> {
        let runner = self.runners.get(&runner_id).ok_or(StateError::NotFound)?;
        if runner.job_id.is_some() {
            return Err(StateError::Conflict(
                "this runner has already taken its one job".into(),
            ));
        }
        let runner_labels: BTreeSet<String> = runner
            .labels
            .iter()
            .map(|l| l.name.to_ascii_lowercase())
            .collect();
        let scope = runner.scope;
        let candidate = self.job_index.queued.iter().find_map(|id| {
            let job = self.jobs.get(id)?;
            let fits = match scope {
                RunnerScope::Repo(repo_id) => job.repo_id == repo_id,
                RunnerScope::Org(inst) => self
                    .repos
                    .get(&job.repo_id)
                    .is_some_and(|r| r.installation_id == inst),
            } && job
                .labels
                .iter()
                .all(|l| runner_labels.contains(&l.to_ascii_lowercase()));
            fits.then_some(job.id)
        });
        let Some(job_id) = candidate else {
            return Ok(None);
        };
        let Some(runner) = self.runners.get_mut(&runner_id) else {
            return Err(StateError::NotFound);
        };
        runner.job_id = Some(job_id);
        runner.online = true;
        runner.busy = true;
        runner.last_contact = Some(now);
        let assigned = AssignedRunner {
            id: runner.id,
            name: runner.name.clone(),
            group_id: DEFAULT_GROUP_ID,
        };
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return Err(StateError::NotFound);
        };
        job.status = JobStatus::InProgress;
        self.job_index.queued.remove(&job_id);
        job.started_at = Some(now);
        job.runner = Some(assigned);
        let job = job.clone();
        self.touch_run(job.run_id, now);
        Ok(Some(job))
    }

    /// The runner reports its job done; GitHub then removes the JIT runner.
    pub(crate) fn complete(
        &mut self,
        runner_id: u64,
        job_id: u64,
        conclusion: Conclusion,
        output: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Job, StateError> {
        let runner = self.runners.get(&runner_id).ok_or(StateError::NotFound)?;
        if runner.job_id != Some(job_id) {
            return Err(StateError::NotFound);
        }
        self.finish_job(job_id, conclusion, output, now, Some(runner_id))
    }

    fn finish_job(
        &mut self,
        job_id: u64,
        conclusion: Conclusion,
        output: Option<String>,
        now: DateTime<Utc>,
        runner: Option<u64>,
    ) -> Result<Job, StateError> {
        let job = self.jobs.get_mut(&job_id).ok_or(StateError::NotFound)?;
        job.status = JobStatus::Completed;
        self.job_index.queued.remove(&job_id);
        job.conclusion = Some(conclusion);
        job.completed_at = Some(now);
        if job.started_at.is_none() {
            job.started_at = Some(now);
        }
        job.output = output;
        let job = job.clone();
        if let Some(runner) = runner {
            self.forget_runner(runner);
        }
        self.touch_run(job.run_id, now);
        Ok(job)
    }

    fn touch_run(&mut self, run_id: u64, now: DateTime<Utc>) {
        if let Some(run) = self.runs.get_mut(&run_id) {
            run.updated_at = now;
        }
    }

    pub(crate) fn jobs_of_run(&self, run_id: u64) -> Vec<&Job> {
        self.job_index
            .of_run
            .get(&run_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.jobs.get(id))
            .collect()
    }

    /// A run's status and conclusion, derived from its jobs as GitHub reports them.
    pub(crate) fn run_status(&self, run_id: u64) -> (&'static str, Option<&'static str>) {
        let jobs = self.jobs_of_run(run_id);
        if jobs.iter().any(|j| j.status == JobStatus::InProgress) {
            return ("in_progress", None);
        }
        if jobs.iter().any(|j| j.status == JobStatus::Waiting) {
            return ("waiting", None);
        }
        if jobs.iter().any(|j| j.status == JobStatus::Queued) {
            return ("queued", None);
        }
        let conclusion = if jobs
            .iter()
            .any(|j| j.conclusion == Some(Conclusion::Failure))
        {
            Conclusion::Failure
        } else if jobs
            .iter()
            .any(|j| j.conclusion == Some(Conclusion::Cancelled))
        {
            Conclusion::Cancelled
        } else {
            Conclusion::Success
        };
        ("completed", Some(conclusion.as_str()))
    }
}

/// Input of `World::create_job`, resolved to ids by the caller.
#[derive(Debug, Clone)]
pub(crate) struct NewJobSpec {
    pub repo_id: u64,
    pub name: String,
    pub workflow_name: String,
    pub labels: Vec<String>,
    pub steps: Vec<JobStep>,
    pub env: BTreeMap<String, String>,
    pub sender: Account,
    pub waiting: bool,
}
