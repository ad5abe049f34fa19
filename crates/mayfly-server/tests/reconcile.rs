//! GitHub does not redeliver a failed webhook: a job whose `queued` delivery was lost is
//! recovered from the REST API by the reconciler and gets its job row all the same.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::time::Duration;

use mayfly_core::{JobId, JobStatus};
use mayfly_sim::{AccountType, DeliveryOutcome, NewInstallation, NewJob, NewRepo};
use mayfly_store::Store;

const SECRET: &[u8] = b"reconcile-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_webhook_was_lost_is_recovered_from_the_rest_api() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (sim, github) = support::sim_with_client(SECRET).await;
        let t = support::start(false, SECRET, Some(github), |c| {
            c.reconcile_interval_secs = 1
        })
        .await;
        let (server, store) = (t.server, t.store.clone());
        let url: url::Url = format!("{}webhooks/github", server.base_url())
            .parse()
            .unwrap();
        sim.set_webhook_url(Some(url));

        let inst = sim
            .create_installation(NewInstallation {
                account: "org-r".into(),
                account_type: AccountType::Organization,
                sender: None,
            })
            .unwrap();
        sim.create_repo(NewRepo {
            installation_id: inst.id,
            name: "app".into(),
            private: true,
        })
        .unwrap();
        // The installation reaches the server; the job's queued webhook is lost.
        sim.wait_for_deliveries(Duration::from_secs(10), |log| {
            log.iter()
                .filter(|d| matches!(d.outcome, DeliveryOutcome::Delivered { .. }))
                .count()
                >= 2
        })
        .await
        .unwrap();
        sim.drop_next_webhooks(1);
        let job = sim
            .create_job(NewJob {
                repository: "org-r/app".into(),
                labels: vec!["self-hosted".into(), "mayfly-linux-2cpu".into()],
                ..NewJob::default()
            })
            .unwrap();
        assert!(sim
            .deliveries()
            .iter()
            .any(|d| d.outcome == DeliveryOutcome::Dropped));

        let row = loop {
            if let Some(row) = store.job(JobId(job.id as i64)).await.unwrap() {
                break row;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(row.status, JobStatus::Queued);
        assert_eq!(row.repo.to_string(), "org-r/app");
        assert_eq!(row.labels, ["self-hosted", "mayfly-linux-2cpu"]);
        assert_eq!(row.installation_id.map(|i| i.0), Some(inst.id as i64));
        server.shutdown().await;
        sim.shutdown().await;
        store.close().await;
    })
    .await
    .expect("the lost job was not recovered in time");
}
