//! The scheduler against the simulator and a stand-in agent speaking the real protocol (no VMs:
//! the agent side is tested with real VMs elsewhere). What a provider would notice: a job gets
//! exactly one VM with a JIT config of its own repository; a job cancelled before any runner
//! took it has its VM destroyed and its runner deleted; a VM whose runner sits idle is destroyed
//! at the profile's idle timeout; a job for no profile is ignored, not an error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::JobId;
use mayfly_github::GitHubClient;
use mayfly_proto::ServerBody;
use mayfly_sim::{AccountType, JitConfig, NewInstallation, NewJob, NewRepo, SimHandle};
use mayfly_store::{SqliteStore, Store};
use support::agent::FakeAgent;

const SECRET: &[u8] = b"scheduling-secret";

struct World {
    sim: SimHandle,
    github: Arc<GitHubClient>,
    server: mayfly_server::ServerHandle,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

async fn world(idle_timeout_secs: u32) -> World {
    let (sim, github) = support::sim_with_client(SECRET).await;
    let t = support::start(false, SECRET, Some(github.clone()), |config| {
        config.profiles = vec![support::profile(idle_timeout_secs)];
    })
    .await;
    let (server, store, dir) = (t.server, t.store, t.dir);
    sim.set_webhook_url(Some(
        format!("{}webhooks/github", server.base_url())
            .parse()
            .unwrap(),
    ));
    World {
        sim,
        github,
        server,
        store,
        _dir: dir,
    }
}

async fn until<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

fn tenant(sim: &SimHandle, org: &str) -> String {
    let inst = sim
        .create_installation(NewInstallation {
            account: org.into(),
            account_type: AccountType::Organization,
            sender: None,
        })
        .unwrap();
    sim.create_repo(NewRepo {
        installation_id: inst.id,
        name: "app".into(),
        private: true,
    })
    .unwrap()
    .full_name
}

fn job(sim: &SimHandle, repo: &str, labels: &[&str]) -> u64 {
    sim.create_job(NewJob {
        repository: repo.into(),
        labels: labels.iter().map(|l| (*l).to_owned()).collect(),
        ..NewJob::default()
    })
    .unwrap()
    .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_loses_its_vm_and_runner_and_other_labels_are_ignored() {
    let w = world(600).await;
    let mut agent = FakeAgent::connect(w.server.agent_addr().unwrap()).await;
    let repo = tenant(&w.sim, "org-s");
    let other = job(&w.sim, &repo, &["ubuntu-latest"]);
    let id = job(&w.sim, &repo, &["self-hosted", "mayfly-linux-2cpu"]);

    let ServerBody::StartVm(start) = agent.next().await else {
        panic!("expected StartVm")
    };
    let config = JitConfig::decode(&start.jitconfig).unwrap();
    assert!(config.agent_name.starts_with("mayfly-"));
    assert_eq!(start.image, "test-image");
    assert_eq!(start.vcpus, 2);
    assert!(
        !format!("{start:?}").contains(&start.jitconfig),
        "StartVm's Debug shows the JIT config"
    );
    // The runner is registered at repository level, for this job's repository.
    let vms = w.store.vms(false).await.unwrap();
    assert_eq!(vms.len(), 1, "one job, one VM");
    assert_eq!(vms[0].repo, repo);
    let runner_id = vms[0].runner_id.unwrap();
    let installation = mayfly_core::InstallationId(vms[0].installation_id);
    let repo_name: mayfly_core::RepoFullName = repo.parse().unwrap();
    assert!(w
        .github
        .get_repo_runner(installation, &repo_name, runner_id)
        .await
        .unwrap()
        .is_some());
    agent.boot(&start, "vm-00000000000000aa").await;

    w.sim.cancel_job(id).unwrap();
    let ServerBody::DestroyVm(destroy) = agent.next().await else {
        panic!("expected DestroyVm")
    };
    assert_eq!(destroy.start_id, start.start_id);
    assert!(destroy.reason.contains("cancelled"), "{}", destroy.reason);
    agent
        .destroyed(&start.start_id, "vm-00000000000000aa")
        .await;

    // The runner never took a job: it is deleted at GitHub.
    let store = w.store.clone();
    until(|| {
        let store = store.clone();
        async move {
            store
                .vms(false)
                .await
                .unwrap()
                .iter()
                .all(|v| v.runner_deleted)
        }
    })
    .await;
    let gone = w
        .github
        .get_repo_runner(installation, &repo_name, runner_id)
        .await
        .unwrap();
    assert!(gone.is_none(), "runner {runner_id} is still registered");

    let ignored = w.store.job(JobId(other as i64)).await.unwrap().unwrap();
    assert_eq!(ignored.dispatch.disposition, "ignored");
    assert_eq!(
        w.store.vms(false).await.unwrap().len(),
        1,
        "no VM for the ignored job"
    );
    w.server.shutdown().await;
    w.sim.shutdown().await;
    w.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_takes_no_job_is_destroyed_at_the_idle_timeout() {
    let w = world(1).await;
    let mut agent = FakeAgent::connect(w.server.agent_addr().unwrap()).await;
    let repo = tenant(&w.sim, "org-i");
    job(&w.sim, &repo, &["self-hosted", "mayfly-linux-2cpu"]);
    let ServerBody::StartVm(start) = agent.next().await else {
        panic!("expected StartVm")
    };
    agent.boot(&start, "vm-00000000000000bb").await;
    // Nobody runs the job: after the 1 s idle timeout the VM goes.
    let ServerBody::DestroyVm(destroy) = agent.next().await else {
        panic!("expected DestroyVm")
    };
    assert!(destroy.reason.contains("idle"), "{}", destroy.reason);
    agent
        .destroyed(&start.start_id, "vm-00000000000000bb")
        .await;
    w.server.shutdown().await;
    w.sim.shutdown().await;
    w.store.close().await;
}
