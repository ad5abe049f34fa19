//! The reconciler: GitHub does not redeliver a failed webhook by itself, so at start-up and
//! then periodically mayfly asks the REST API for queued jobs in every installed repository and
//! records the ones it never heard of, as if their `queued` webhook had arrived; and it asks
//! for every job mayfly still thinks open: one GitHub says completed (its `completed` webhook
//! was lost, e.g. a cancellation) is recorded as completed, one GitHub no longer has (its
//! repository deleted or taken from the installation) as cancelled — so the scheduler destroys
//! their VMs. The intake path (dedup, forward-only states) does the rest.

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::RepoFullName;
use mayfly_core::{
    Clock, DeliveryId, InstallationId, IntakeEvent, JobEvent, JobId, JobStatus, RunId,
};
use mayfly_github::rest::Job;
use mayfly_github::GitHubClient;
use mayfly_store::{NewDelivery, Recorded, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The periodic reconciler.
#[derive(Debug)]
pub struct Reconciler {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub github: Arc<GitHubClient>,
    pub interval: Duration,
    /// Woken when a missed job was recorded, so the processor applies it at once.
    pub intake: Arc<Notify>,
    /// With several servers on one database, only the holder of the `reconciler` lease runs.
    pub server_id: String,
}

impl Reconciler {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let lease = crate::hold_lease(
                self.store.as_ref(),
                self.clock.as_ref(),
                "reconciler",
                &self.server_id,
                self.interval * 3,
            )
            .await;
            let result = if lease {
                match self.pass().await {
                    Ok(recovered) => self.close_finished().await.map(|closed| recovered + closed),
                    Err(e) => Err(e),
                }
            } else {
                Ok(0)
            };
            match result {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(
                        recovered = n,
                        "recovered job states whose webhook never arrived"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "reconciling with GitHub failed; will retry"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One pass; returns how many jobs were recovered.
    pub async fn pass(&self) -> Result<usize, String> {
        let mut installations: Vec<InstallationId> = self
            .store
            .installations()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|i| i.state == "active")
            .map(|i| i.installation_id)
            .collect();
        let open = self
            .store
            .open_jobs(self.clock.now(), true)
            .await
            .map_err(|e| e.to_string())?;
        for job in open {
            installations.extend(job.installation_id);
        }
        // An installation whose `installation` webhook was lost is known to GitHub all the same.
        let app = self
            .github
            .list_installations()
            .await
            .map_err(|e| e.to_string())?;
        installations.extend(
            app.into_iter()
                .filter(|i| i.suspended_at.is_none())
                .map(|i| InstallationId(i.id)),
        );
        installations.sort();
        installations.dedup();
        let mut recovered = 0;
        for installation in installations {
            let queued = self
                .github
                .queued_jobs(installation)
                .await
                .map_err(|e| e.to_string())?;
            for q in queued {
                if self
                    .store
                    .job(JobId(q.job.id))
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    continue;
                }
                let event = rest_event(installation, &q.repo, &q.job);
                let recorded = self
                    .record(&format!("reconciled-{}", q.job.id), "queued", event)
                    .await?;
                if recorded == Recorded::New {
                    tracing::info!(job = q.job.id, repo = %q.repo, "recorded a queued job whose webhook never arrived");
                    recovered += 1;
                }
            }
        }
        if recovered > 0 {
            self.intake.notify_one();
        }
        Ok(recovered)
    }

    /// Asks GitHub about every job mayfly thinks open; records those GitHub completed (or no
    /// longer has) as completed. Returns how many.
    pub async fn close_finished(&self) -> Result<usize, String> {
        let open: Vec<_> = self
            .store
            .open_jobs(self.clock.now(), true)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|j| j.status != JobStatus::Completed)
            .collect();
        let mut closed = 0;
        for job in open {
            let Some(installation) = job.installation_id else {
                continue;
            };
            let (event, why) = match self
                .github
                .get_job(installation, &job.repo, job.job_id)
                .await
            {
                Ok(Some(rest)) if rest.status == "completed" => {
                    let mut event = job_event_of(&job, installation);
                    event.status = JobStatus::Completed;
                    event.conclusion = rest.conclusion;
                    event.runner_id = rest.runner_id.or(event.runner_id);
                    event.runner_name = rest.runner_name.or(event.runner_name);
                    event.started_at = rest.started_at.or(event.started_at);
                    event.completed_at = rest.completed_at.or(Some(self.clock.now()));
                    (event, "completed")
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let mut event = job_event_of(&job, installation);
                    event.status = JobStatus::Completed;
                    event.conclusion = Some("cancelled".into());
                    event.completed_at = Some(self.clock.now());
                    (event, "gone")
                }
                Err(e) => return Err(e.to_string()),
            };
            let id = format!("reconciled-{}-{why}", job.job_id.0);
            if self.record(&id, "completed", event).await? == Recorded::New {
                tracing::warn!(
                    job = %job.job_id, repo = %job.repo,
                    "{}",
                    if why == "gone" {
                        "GitHub no longer has this job: recorded as cancelled, its VM goes"
                    } else {
                        "GitHub says this job completed but its webhook never arrived: recorded"
                    }
                );
                closed += 1;
            }
        }
        if closed > 0 {
            self.intake.notify_one();
        }
        Ok(closed)
    }

    async fn record(&self, id: &str, action: &str, event: JobEvent) -> Result<Recorded, String> {
        let delivery_id = DeliveryId::parse(id).map_err(|e| e.to_string())?;
        self.store
            .record_delivery(&NewDelivery {
                delivery_id,
                event: "workflow_job".to_owned(),
                action: Some(action.to_owned()),
                received_at: self.clock.now(),
                intake: IntakeEvent::Job(event),
            })
            .await
            .map_err(|e| e.to_string())
    }
}

/// A job event from GitHub's REST view of a job (which does not say who started it; the webhook
/// would have).
fn rest_event(installation: InstallationId, repo: &RepoFullName, job: &Job) -> JobEvent {
    JobEvent {
        job_id: JobId(job.id),
        run_id: RunId(job.run_id),
        installation_id: Some(installation),
        org: None,
        repo_id: 0,
        sender: "(recovered by the reconciler)".to_owned(),
        status: JobStatus::parse(&job.status).unwrap_or(JobStatus::Queued),
        conclusion: job.conclusion.clone(),
        labels: job.labels.clone(),
        job_name: job.name.clone(),
        workflow_name: job.workflow_name.clone(),
        runner_id: job.runner_id,
        runner_name: job.runner_name.clone(),
        created_at: job.created_at,
        started_at: job.started_at,
        completed_at: job.completed_at,
        repo: repo.clone(),
    }
}

/// The event that would have brought a stored job to where it is.
fn job_event_of(job: &mayfly_store::JobRecord, installation: InstallationId) -> JobEvent {
    JobEvent {
        job_id: job.job_id,
        run_id: job.run_id,
        installation_id: Some(installation),
        org: job.org.clone(),
        repo_id: job.repo_id,
        sender: job.sender.clone(),
        status: job.status,
        conclusion: job.conclusion.clone(),
        labels: job.labels.clone(),
        job_name: job.job_name.clone(),
        workflow_name: job.workflow_name.clone(),
        runner_id: job.runner_id,
        runner_name: job.runner_name.clone(),
        created_at: job.created_at,
        started_at: job.started_at,
        completed_at: job.completed_at,
        repo: job.repo.clone(),
    }
}
