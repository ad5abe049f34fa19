//! Faults between the server and its agents, with the real scheduler and store, the simulator
//! as GitHub and stand-in agents speaking the real protocol: an event resent after a broken
//! session is applied once; an agent silent for longer than its lease is lost, its idle runner
//! deleted at GitHub and its job placed on another agent; a lost VM the agent still has when it
//! comes back is destroyed; an agent breaking the protocol is refused and audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::{InstallationId, JobId, RepoFullName};
use mayfly_github::GitHubClient;
use mayfly_proto::v1::VmState;
use mayfly_proto::{EventKind, ServerBody};
use mayfly_sim::{AccountType, NewInstallation, NewJob, NewRepo, SimHandle};
use mayfly_store::{CommonStore, SqliteStore, Store};
use support::agent::FakeAgent;

const SECRET: &[u8] = b"agent-faults-secret";

struct World {
    sim: SimHandle,
    github: Arc<GitHubClient>,
    server: mayfly_server::ServerHandle,
    store: Arc<SqliteStore>,
    _dir: tempfile::TempDir,
}

async fn world(lease_secs: u64) -> World {
    let (sim, github) = support::sim_with_client(SECRET).await;
    let t = support::start(false, SECRET, Some(github.clone()), |config| {
        config.profiles = vec![support::profile(600)];
        config.agent_lease_secs = lease_secs;
    })
    .await;
    sim.set_webhook_url(Some(
        format!("{}webhooks/github", t.server.base_url())
            .parse()
            .unwrap(),
    ));
    World {
        sim,
        github,
        server: t.server,
        store: t.store,
        _dir: t.dir,
    }
}

impl World {
    async fn stop(self) {
        self.server.shutdown().await;
        self.sim.shutdown().await;
        self.store.close().await;
    }

    /// A repository with one queued job for the test profile; the job's id.
    fn queue_job(&self, org: &str) -> (String, i64) {
        let inst = self
            .sim
            .create_installation(NewInstallation {
                account: org.into(),
                account_type: AccountType::Organization,
                sender: None,
            })
            .unwrap();
        let repo = self
            .sim
            .create_repo(NewRepo {
                installation_id: inst.id,
                name: "app".into(),
                private: true,
            })
            .unwrap()
            .full_name;
        let job = self.queue_another(&repo);
        (repo, job)
    }

    /// Another queued job for the test profile in `repo`; its id.
    fn queue_another(&self, repo: &str) -> i64 {
        self.sim
            .create_job(NewJob {
                repository: repo.to_owned(),
                labels: vec!["self-hosted".into(), "mayfly-linux-2cpu".into()],
                ..NewJob::default()
            })
            .unwrap()
            .id as i64
    }
}

async fn until<F: std::future::Future<Output = bool>>(secs: u64, mut check: impl FnMut() -> F) {
    tokio::time::timeout(Duration::from_secs(secs), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

async fn start_vm(agent: &mut FakeAgent) -> mayfly_proto::v1::StartVm {
    match agent.next().await {
        ServerBody::StartVm(start) => start,
        other => panic!("expected StartVm, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sent_while_the_session_breaks_is_applied_exactly_once_after_reconnecting() {
    let w = world(60).await;
    let addr = w.server.agent_addr().unwrap();
    let mut agent = FakeAgent::connect_as(addr, "host-a").await;
    let (_, job) = w.queue_job("org-e");
    let start = start_vm(&mut agent).await;
    let vm = "vm-00000000000000e1";
    agent.boot(&start, vm).await; // events 1 and 2
    agent.all_acknowledged().await;

    // FAILED (event 3) goes out and the session breaks at once: acknowledged or not, the
    // agent cannot know, so its next session sends it again with the same number.
    agent
        .send_event(3, &start.start_id, vm, EventKind::Failed, "")
        .await;
    drop(agent);
    let mut agent = FakeAgent::resume(addr, "host-a", "epoch-1", 2, vec![]).await;
    agent
        .send_event(3, &start.start_id, vm, EventKind::Failed, "")
        .await;
    until(20, || {
        let acked = agent.acked.clone();
        async move { acked.load(std::sync::atomic::Ordering::SeqCst) >= 3 }
    })
    .await;

    // Applied once: the job was placed again once (one retry, one new VM), not twice.
    let retry = start_vm(&mut agent).await;
    assert_ne!(retry.start_id, start.start_id);
    let record = w.store.job(JobId(job)).await.unwrap().unwrap();
    assert_eq!(record.dispatch.attempts, 2, "{:?}", record.dispatch);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let vms = w.store.vms(false).await.unwrap();
    assert_eq!(
        vms.len(),
        2,
        "one retry, not one per copy of the event: {vms:?}"
    );
    let position = w.store.agent_journal("host-a").await.unwrap().unwrap();
    assert_eq!(
        (position.epoch.as_str(), position.applied_seq),
        ("epoch-1", 3)
    );

    // A new journal (a reinstalled agent) counts from 1 again, and is applied.
    let agent = FakeAgent::resume(addr, "host-a", "epoch-2", 0, vec![]).await;
    agent.boot(&retry, "vm-00000000000000e2").await;
    agent.all_acknowledged().await;
    let booted = w.store.vm(&retry.start_id).await.unwrap().unwrap();
    assert_eq!(booted.state, "booted");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_lost_after_its_lease_its_runner_deleted_and_its_job_placed_elsewhere() {
    let w = world(2).await;
    let addr = w.server.agent_addr().unwrap();
    // host-a takes the job, boots, and then says nothing more (its link is cut: the stream
    // stays open, no heartbeat comes).
    let mut silent = FakeAgent::connect_as(addr, "host-a").await;
    let (repo, job) = w.queue_job("org-l");
    let start = start_vm(&mut silent).await;
    let vm = "vm-00000000000000f1";
    silent.boot(&start, vm).await;
    silent.all_acknowledged().await;
    let row = w.store.vm(&start.start_id).await.unwrap().unwrap();
    let runner_id = row.runner_id.unwrap();

    let mut other = FakeAgent::connect_as(addr, "host-b").await;
    other.keep_alive(Duration::from_millis(300));
    let moved = start_vm(&mut other).await;
    assert_ne!(moved.start_id, start.start_id);
    let lost = w.store.vm(&start.start_id).await.unwrap().unwrap();
    assert_eq!(lost.state, "lost", "{lost:?}");
    assert!(silent.is_closed(), "the silent agent's session was dropped");
    let placed = w.store.vm(&moved.start_id).await.unwrap().unwrap();
    assert_eq!(placed.host, "host-b");
    assert_eq!(placed.for_job_id, job);

    // The lost VM's runner never took a job: it is deleted at GitHub.
    let store = w.store.clone();
    let id = start.start_id.clone();
    until(20, || {
        let (store, id) = (store.clone(), id.clone());
        async move { store.vm(&id).await.unwrap().unwrap().runner_deleted }
    })
    .await;
    let repo: RepoFullName = repo.parse().unwrap();
    let gone = w
        .github
        .get_repo_runner(InstallationId(row.installation_id), &repo, runner_id)
        .await
        .unwrap();
    assert!(
        gone.is_none(),
        "runner {runner_id} of the lost VM is still registered"
    );

    // host-a comes back still holding the VM: it is told to destroy it.
    let mut back = FakeAgent::resume(
        addr,
        "host-a",
        "epoch-1",
        2,
        vec![VmState {
            vm_id: vm.into(),
            start_id: start.start_id.clone(),
            phase: "booted".into(),
        }],
    )
    .await;
    back.keep_alive(Duration::from_millis(300));
    match back.next().await {
        ServerBody::DestroyVm(destroy) => {
            assert_eq!(destroy.start_id, start.start_id);
            assert_eq!(destroy.vm_id, vm);
        }
        other => panic!("expected DestroyVm, got {other:?}"),
    }
    back.destroyed(&start.start_id, vm).await;
    back.all_acknowledged().await;
    let destroyed = w.store.vm(&start.start_id).await.unwrap().unwrap();
    assert_eq!(destroyed.state, "destroyed");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_breaking_the_protocol_is_refused_audited_and_nothing_is_applied() {
    let w = world(60).await;
    let addr = w.server.agent_addr().unwrap();
    let mut a = FakeAgent::connect_as(addr, "host-a").await;
    let (_, _) = w.queue_job("org-b");
    let start = start_vm(&mut a).await;
    a.boot(&start, "vm-00000000000000b1").await;
    a.all_acknowledged().await;
    let audit_before = w.store.audit_log(0, 10_000).await.unwrap().len();

    // Another agent reports on host-a's VM, and on a VM nobody started.
    let b = FakeAgent::connect_as(addr, "host-b").await;
    b.event(
        &start.start_id,
        "vm-00000000000000b1",
        EventKind::Failed,
        "",
    )
    .await;
    b.event(
        "no-such-start",
        "vm-00000000000000b2",
        EventKind::Started,
        "",
    )
    .await;
    b.all_acknowledged().await;
    let row = w.store.vm(&start.start_id).await.unwrap().unwrap();
    assert_eq!(
        row.state, "booted",
        "another agent's event changed the VM: {row:?}"
    );
    assert!(w.store.vm("no-such-start").await.unwrap().is_none());

    // host-a numbers an event below one it already sent in this session: the session ends.
    a.send_event(
        1,
        &start.start_id,
        "vm-00000000000000b1",
        EventKind::Failed,
        "",
    )
    .await;
    until(20, || {
        let closed = a.is_closed();
        async move { closed }
    })
    .await;
    let row = w.store.vm(&start.start_id).await.unwrap().unwrap();
    assert_eq!(
        row.state, "booted",
        "a reordered event was applied: {row:?}"
    );

    // The refusal is audited by the scheduler, which may come to it after the session ended.
    let store = w.store.clone();
    until(20, || {
        let store = store.clone();
        async move {
            let audit = store.audit_log(0, 10_000).await.unwrap();
            audit[audit_before..]
                .iter()
                .filter(|r| r.action == "agent message" && r.outcome.starts_with("refused"))
                .count()
                >= 3
        }
    })
    .await;
    let audit = w.store.audit_log(0, 10_000).await.unwrap();
    let refusals: Vec<_> = audit[audit_before..]
        .iter()
        .filter(|r| r.action == "agent message" && r.outcome.starts_with("refused"))
        .collect();
    assert_eq!(refusals.len(), 3, "{refusals:#?}");
    assert!(refusals
        .iter()
        .any(|r| r.actor == "agent:host-b" && r.outcome.contains("another agent's VM")));
    assert!(refusals.iter().any(|r| r.outcome.contains("never started")));
    assert!(refusals
        .iter()
        .any(|r| r.actor == "agent:host-a" && r.outcome.contains("numbers must rise")));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_that_swap_jobs_keep_their_vms_and_a_job_whose_vm_vanished_is_placed_again() {
    use mayfly_sim::runner_client::RunnerClient;
    let w = world(60).await;
    let addr = w.server.agent_addr().unwrap();
    let mut agent = FakeAgent::connect_as(addr, "host-a").await;
    agent.keep_alive(Duration::from_millis(500));
    let (repo, first) = w.queue_job("org-s");
    let start_first = start_vm(&mut agent).await;
    let second = w.queue_another(&repo);
    let start_second = start_vm(&mut agent).await;

    // The second job's VM boots first, and its runner takes the oldest queued job: the first.
    let vm = "vm-00000000000000d2";
    agent.boot(&start_second, vm).await;
    let mut runner = RunnerClient::from_encoded_jit_config(&start_second.jitconfig, None).unwrap();
    runner.authenticate().await.unwrap();
    let taken = runner.acquire().await.unwrap().unwrap();
    assert_eq!(taken.job_id as i64, first);
    runner
        .complete(taken.job_id, mayfly_sim::Conclusion::Success, "ok")
        .await
        .unwrap();

    // The first job's VM, whose runner took nothing yet, now waits for the second job: the
    // runners swapped jobs, and no VM is started again.
    let store = w.store.clone();
    let first_vm = start_first.start_id.clone();
    until(20, || {
        let (store, first_vm) = (store.clone(), first_vm.clone());
        async move {
            store
                .vm(&first_vm)
                .await
                .unwrap()
                .is_some_and(|v| v.for_job_id == second)
        }
    })
    .await;
    let job = w.store.job(JobId(second)).await.unwrap().unwrap();
    assert_eq!(job.dispatch.disposition, "placed", "{job:?}");
    // The VM that ran the first job is destroyed; nothing is started.
    let quiet = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(command) = agent.recv().await {
            match command {
                mayfly_proto::ServerBody::DestroyVm(d) => assert_eq!(d.vm_id, vm),
                other => panic!("the second job has its VM; got {other:?}"),
            }
        }
    });
    let _ = quiet.await;

    // The agent restarts without the VMs it had started (they died with it): the job still
    // waiting is placed again.
    agent.boot(&start_first, "vm-00000000000000d1").await;
    agent.all_acknowledged().await;
    drop(agent);
    let mut restarted = FakeAgent::resume(addr, "host-a", "epoch-2", 0, vec![]).await;
    restarted.keep_alive(Duration::from_millis(500));
    let replaced = start_vm(&mut restarted).await;
    let row = w.store.vm(&replaced.start_id).await.unwrap().unwrap();
    assert_eq!(row.for_job_id, second, "{row:?}");
    let job = w.store.job(JobId(second)).await.unwrap().unwrap();
    assert_eq!(job.dispatch.disposition, "placed");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_outage_while_placing_delays_the_job_and_does_not_fail_it() {
    let w = world(60).await;
    let addr = w.server.agent_addr().unwrap();
    let mut agent = FakeAgent::connect_as(addr, "host-a").await;
    agent.keep_alive(Duration::from_millis(500));
    // Every JIT config request fails with 503 until cleared: far more than the client's own
    // retries.
    w.sim
        .add_rest_fault(mayfly_sim::RestFault {
            kind: mayfly_sim::RestFaultKind::ServerError { status: 503 },
            count: None,
            path_prefix: Some("/repos/org-o/app/actions/runners/generate-jitconfig".into()),
        })
        .unwrap();
    let (_, job) = w.queue_job("org-o");
    let store = w.store.clone();
    until(20, || {
        let store = store.clone();
        async move {
            store
                .job(JobId(job))
                .await
                .unwrap()
                .is_some_and(|j| j.dispatch.failure.is_some())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let waiting = w.store.job(JobId(job)).await.unwrap().unwrap();
    assert_eq!(
        waiting.dispatch.disposition, "new",
        "{:?}",
        waiting.dispatch
    );
    assert_eq!(waiting.dispatch.attempts, 0, "an outage is not an attempt");

    w.sim.clear_rest_faults();
    let start = start_vm(&mut agent).await;
    let row = w.store.vm(&start.start_id).await.unwrap().unwrap();
    assert_eq!(row.for_job_id, job);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jit_configs_for_waiting_jobs_are_asked_for_at_once_and_their_time_is_recorded() {
    let w = world(60).await;
    // GitHub takes a while with each JIT config.
    const DELAY_MS: u64 = 1500;
    w.sim
        .add_rest_fault(mayfly_sim::RestFault {
            kind: mayfly_sim::RestFaultKind::Slow { delay_ms: DELAY_MS },
            count: None,
            path_prefix: Some("/repos/org-j/app/actions/runners/generate-jitconfig".into()),
        })
        .unwrap();
    let (repo, first) = w.queue_job("org-j");
    let mut jobs = vec![first];
    for _ in 0..3 {
        jobs.push(w.queue_another(&repo));
    }
    let store = w.store.clone();
    until(20, || {
        let store = store.clone();
        async move { store.jobs().await.unwrap().len() == 4 }
    })
    .await;
    // The four wait for a host; one with four slots comes.
    let mut agent = FakeAgent::connect_as(w.server.agent_addr().unwrap(), "host-a").await;
    agent.keep_alive(Duration::from_millis(500));
    let mut spans = Vec::new();
    for _ in 0..4 {
        let start = start_vm(&mut agent).await;
        let row = w.store.vm(&start.start_id).await.unwrap().unwrap();
        assert!(jobs.contains(&row.for_job_id));
        let steps: Vec<mayfly_core::StartStep> =
            serde_json::from_str(row.start_steps.as_deref().expect("start steps recorded"))
                .unwrap();
        let jit = steps
            .iter()
            .find(|s| s.step == "jit_config")
            .expect("the JIT config step");
        assert!(jit.millis >= DELAY_MS as f64, "{jit:?}");
        // When the request went out and when its answer was in.
        let answered = row.requested_at;
        let asked = answered - chrono::Duration::microseconds((jit.millis * 1000.0) as i64);
        spans.push((asked, answered));
    }
    // One request at a time would make the four spans disjoint: they all overlap.
    let last_asked = spans.iter().map(|s| s.0).max().unwrap();
    let first_answered = spans.iter().map(|s| s.1).min().unwrap();
    assert!(
        last_asked < first_answered,
        "JIT configs were asked for one after another: {spans:?}"
    );
    w.stop().await;
}
