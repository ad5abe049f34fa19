//! The warm pool (issue 14), with the real scheduler and store, the simulator as GitHub and a
//! stand-in agent speaking the real protocol: pool VMs boot holding nothing, a job takes one
//! once and it is destroyed after, the pool refills, old and dead pool VMs are replaced and never
//! given a job, and a burst larger than the pool takes the cold path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::time::Duration;

use mayfly_proto::{EventKind, ServerBody};
use mayfly_sim::{AccountType, Conclusion, JobStatus, NewInstallation, NewJob, NewRepo, SimHandle};
use mayfly_store::{CommonStore, SqliteStore};
use support::agent::FakeAgent;

const SECRET: &[u8] = b"warm-pool-secret";

struct World {
    sim: SimHandle,
    server: mayfly_server::ServerHandle,
    store: std::sync::Arc<SqliteStore>,
    agent: FakeAgent,
    repo: String,
    _dir: tempfile::TempDir,
}

/// The server with the test profile keeping `warm` VMs per host (each waiting up to
/// `max_age_secs`), a connected stand-in agent (four slots) and a repository to queue jobs in.
async fn world(warm: u32, max_age_secs: u32) -> World {
    let (sim, github) = support::sim_with_client_recording(SECRET, true).await;
    let t = support::start(false, SECRET, Some(github), |config| {
        config.profiles = vec![mayfly_core::Profile {
            warm,
            warm_max_age_secs: max_age_secs,
            ..support::profile(600)
        }];
    })
    .await;
    sim.set_webhook_url(Some(
        format!("{}webhooks/github", t.server.base_url())
            .parse()
            .unwrap(),
    ));
    let inst = sim
        .create_installation(NewInstallation {
            account: "org-w".into(),
            account_type: AccountType::Organization,
            sender: None,
        })
        .unwrap();
    let repo = sim
        .create_repo(NewRepo {
            installation_id: inst.id,
            name: "app".into(),
            private: true,
        })
        .unwrap()
        .full_name;
    let agent = FakeAgent::connect(t.server.agent_addr().unwrap()).await;
    World {
        sim,
        server: t.server,
        store: t.store,
        agent,
        repo,
        _dir: t.dir,
    }
}

impl World {
    fn queue(&self) -> u64 {
        self.sim
            .create_job(NewJob {
                repository: self.repo.clone(),
                labels: vec!["self-hosted".into(), "mayfly-linux-2cpu".into()],
                ..NewJob::default()
            })
            .unwrap()
            .id
    }

    /// Plays the pool's VMs booting until `n` wait for a job; returns their start ids.
    async fn pool_of(&mut self, n: usize) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(30), async {
            while self.agent.waiting.len() < n {
                match self.agent.next().await {
                    ServerBody::StartVm(start) if start.warm => self.agent.warm(&start).await,
                    other => panic!("expected a warm StartVm, got {other:?}"),
                }
            }
        })
        .await
        .expect("the pool did not fill");
        self.agent.all_acknowledged().await;
        let mut ids: Vec<String> = self.agent.waiting.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Requests to GitHub's JIT-config route so far (each registers a runner).
    fn jit_requests(&self) -> usize {
        let exchanges = self.sim.exchanges();
        assert!(!exchanges.is_empty(), "the simulator records no exchanges");
        exchanges
            .iter()
            .filter(|e| e.path.ends_with("/actions/runners/generate-jitconfig"))
            .count()
    }

    async fn stop(self) {
        self.server.shutdown().await;
        self.sim.shutdown().await;
        self.store.close().await;
    }
}

#[tokio::test]
async fn a_job_takes_a_warm_vm_once_the_pool_refills_and_the_next_job_gets_another() {
    let mut w = world(1, 3600).await;
    let pool = w.pool_of(1).await;

    // Before any job: the pool VM holds nothing and no runner was registered for it.
    assert_eq!(w.jit_requests(), 0, "a runner was registered for a pool VM");
    let row = w.store.vm(&pool[0]).await.unwrap().unwrap();
    assert!(row.pool && row.state == "warm", "{row:?}");
    assert_eq!(
        (
            row.installation_id,
            row.repo.as_str(),
            row.runner_id,
            row.for_job_id
        ),
        (0, "", None, 0),
        "a pool VM belongs to no tenant"
    );

    let first = w.queue();
    let cold = w.agent.run_jobs(1, |_| Conclusion::Success).await;
    assert_eq!(cold, 0, "the job took the cold path with a warm VM waiting");
    w.agent.all_acknowledged().await;
    assert_eq!(w.agent.assigned, pool, "the job went to the pool VM");
    assert_eq!(w.jit_requests(), 1);
    let row = w.store.vm(&pool[0]).await.unwrap().unwrap();
    assert_eq!(row.ran_job_id, Some(first as i64));
    assert_eq!(row.state, "destroyed", "{row:?}");
    assert!(row.assigned_at.is_some());

    // The pool refilled with another VM, and the next job goes to that one.
    let refilled = w.pool_of(1).await;
    assert_ne!(refilled, pool, "a VM was put back in the pool");
    let second = w.queue();
    assert_eq!(w.agent.run_jobs(1, |_| Conclusion::Success).await, 0);
    assert_eq!(w.agent.assigned, [pool[0].clone(), refilled[0].clone()]);
    for job in [first, second] {
        assert_eq!(
            w.sim.job(job).unwrap().conclusion,
            Some(Conclusion::Success)
        );
    }
    w.stop().await;
}

#[tokio::test]
async fn a_pool_vm_past_its_maximum_age_is_destroyed_and_replaced() {
    let mut w = world(1, 1).await;
    let pool = w.pool_of(1).await;
    let destroy = tokio::time::timeout(Duration::from_secs(30), w.agent.next())
        .await
        .expect("the old pool VM was not destroyed");
    let ServerBody::DestroyVm(destroy) = destroy else {
        panic!("expected DestroyVm, got {destroy:?}");
    };
    assert_eq!(destroy.start_id, pool[0]);
    assert_eq!(destroy.reason, "pool VM past its maximum age");
    let vm = w.agent.waiting.remove(&destroy.start_id).unwrap();
    w.agent.destroyed(&destroy.start_id, &vm).await;
    let replacement = w.pool_of(1).await;
    assert_ne!(replacement, pool);
    assert_eq!(w.jit_requests(), 0);
    w.stop().await;
}

#[tokio::test]
async fn a_pool_vm_that_dies_while_waiting_is_replaced_and_never_given_a_job() {
    let mut w = world(1, 3600).await;
    let pool = w.pool_of(1).await;
    let vm = w.agent.waiting.remove(&pool[0]).unwrap();
    w.agent
        .event(&pool[0], &vm, EventKind::Failed, "QEMU died")
        .await;
    w.agent.destroyed(&pool[0], &vm).await;
    let replacement = w.pool_of(1).await;
    assert_ne!(replacement, pool);

    // `run_jobs` fails the test if the dead VM is assigned: it is no longer waiting.
    let job = w.queue();
    assert_eq!(w.agent.run_jobs(1, |_| Conclusion::Success).await, 0);
    assert_eq!(w.agent.assigned, replacement);
    assert_eq!(w.sim.job(job).unwrap().status, JobStatus::Completed);
    w.agent.all_acknowledged().await;
    let dead = w.store.vm(&pool[0]).await.unwrap().unwrap();
    assert_eq!((dead.assigned_at, dead.ran_job_id), (None, None));
    w.stop().await;
}

#[tokio::test]
async fn a_burst_larger_than_the_pool_takes_the_cold_path_and_every_job_runs() {
    let mut w = world(1, 3600).await;
    let pool = w.pool_of(1).await;
    let jobs: Vec<u64> = (0..3).map(|_| w.queue()).collect();
    let cold = w.agent.run_jobs(3, |_| Conclusion::Success).await;
    assert_eq!(
        w.agent.assigned[0], pool[0],
        "the first job took the pool VM"
    );
    // The pool refills as soon as its VM is taken: a later job of the burst may take that one.
    assert!(
        cold >= 1 && cold + w.agent.assigned.len() >= 3,
        "the burst took the cold path: {cold} VMs booted for jobs, {} pool VMs assigned",
        w.agent.assigned.len()
    );
    for job in jobs {
        assert_eq!(
            w.sim.job(job).unwrap().conclusion,
            Some(Conclusion::Success),
            "job {job}"
        );
    }
    w.stop().await;
}
