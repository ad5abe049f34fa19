//! GitHub does not redeliver a failed webhook: a job whose `queued` delivery was lost is
//! recovered from the REST API by the reconciler and gets its job row all the same; a job
//! cancelled while its webhook was lost, or gone from GitHub, has its VM destroyed.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_of_jobs_cancelled_with_a_lost_webhook_or_gone_from_github_are_destroyed() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let (sim, github) = support::sim_with_client(SECRET).await;
        let t = support::start(false, SECRET, Some(github), |c| {
            c.reconcile_interval_secs = 1;
            c.profiles = vec![support::profile(600)];
        })
        .await;
        let (server, store) = (t.server, t.store.clone());
        sim.set_webhook_url(Some(
            format!("{}webhooks/github", server.base_url())
                .parse()
                .unwrap(),
        ));
        let inst = sim
            .create_installation(NewInstallation {
                account: "org-g".into(),
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
        let mut agent = support::agent::FakeAgent::connect(server.agent_addr().unwrap()).await;
        agent.keep_alive(Duration::from_millis(500));
        let mut vms = std::collections::BTreeMap::new();
        let mut jobs = Vec::new();
        for n in 0..2u64 {
            let job = sim
                .create_job(NewJob {
                    repository: "org-g/app".into(),
                    labels: vec!["self-hosted".into(), "mayfly-linux-2cpu".into()],
                    ..NewJob::default()
                })
                .unwrap();
            let mayfly_proto::ServerBody::StartVm(start) = agent.next().await else {
                panic!("expected StartVm")
            };
            let vm = format!("vm-00000000000000c{n}");
            agent.boot(&start, &vm).await;
            vms.insert(start.start_id.clone(), (job.id, vm));
            jobs.push(job.id);
        }

        // One is cancelled and its webhook lost; the other vanishes from GitHub.
        sim.drop_next_webhooks(1);
        sim.cancel_job(jobs[0]).unwrap();
        sim.delete_job(jobs[1]).unwrap();

        let mut destroyed = std::collections::BTreeMap::new();
        while destroyed.len() < 2 {
            match agent.next().await {
                mayfly_proto::ServerBody::DestroyVm(d) => {
                    let (job, vm) = vms[&d.start_id].clone();
                    assert_eq!(d.vm_id, vm);
                    agent.destroyed(&d.start_id, &vm).await;
                    destroyed.insert(job, d.reason);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        for job in &jobs {
            assert!(destroyed[job].contains("cancelled"), "{destroyed:?}");
            let row = store.job(JobId(*job as i64)).await.unwrap().unwrap();
            assert_eq!(row.status, JobStatus::Completed);
            assert_eq!(row.conclusion.as_deref(), Some("cancelled"));
        }
        server.shutdown().await;
        sim.shutdown().await;
        store.close().await;
    })
    .await
    .expect("the VMs were not destroyed in time");
}
