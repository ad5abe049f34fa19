//! The reconciler: GitHub does not redeliver a failed webhook by itself, so at start-up and
//! then periodically mayfly asks the REST API for queued jobs in every installed repository and
//! records the ones it never heard of, as if their `queued` webhook had arrived. The intake path
//! (dedup, forward-only states) does the rest.

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::{
    Clock, DeliveryId, InstallationId, IntakeEvent, JobEvent, JobId, JobStatus, RunId,
};
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
            let result = if lease { self.pass().await } else { Ok(0) };
            match result {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(recovered = n, "recovered jobs whose webhook never arrived")
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
        for job in self.store.jobs().await.map_err(|e| e.to_string())? {
            installations.extend(job.installation_id);
        }
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
                let Ok(delivery_id) = DeliveryId::parse(&format!("reconciled-{}", q.job.id)) else {
                    continue;
                };
                let event = JobEvent {
                    job_id: JobId(q.job.id),
                    run_id: RunId(q.job.run_id),
                    installation_id: Some(installation),
                    org: None,
                    repo_id: 0,
                    // The REST job does not say who started it; the webhook would have.
                    sender: "(recovered by the reconciler)".to_owned(),
                    status: JobStatus::parse(&q.job.status).unwrap_or(JobStatus::Queued),
                    conclusion: q.job.conclusion.clone(),
                    labels: q.job.labels.clone(),
                    job_name: q.job.name.clone(),
                    workflow_name: q.job.workflow_name.clone(),
                    runner_id: None,
                    runner_name: None,
                    created_at: q.job.created_at,
                    started_at: None,
                    completed_at: None,
                    repo: q.repo.clone(),
                };
                let recorded = self
                    .store
                    .record_delivery(&NewDelivery {
                        delivery_id,
                        event: "workflow_job".to_owned(),
                        action: Some("queued".to_owned()),
                        received_at: self.clock.now(),
                        intake: IntakeEvent::Job(event),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
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
}
