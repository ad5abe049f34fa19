//! The agent with real VMs (QEMU under TCG, isolated network) against a fake server (a tonic
//! `AgentService` on loopback that plays mayfly's server) and the GitHub simulator in the
//! internet stand-in: a job runs in a VM the agent made and every step reaches the server; a
//! `DestroyVm` mid-job leaves nothing; a restarted agent cleans up what a crashed one left.
//! Needs root and the test image (`scripts/build-guest-image`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[path = "../../mayfly-agent/tests/support/fake_server.rs"]
mod fake_server;
#[allow(dead_code)] // shared with the VM tests, which use more of it
#[path = "vm/support.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fake_server::FakeServer;
use mayfly_agent::{AgentConfig, AgentError, Journal};
use mayfly_core::VmId;
use mayfly_proto::v1::{DestroyVm, StartVm, VmEvent};
use mayfly_proto::{EventKind, ServerBody};
use mayfly_vm::{NetworkMode, QemuDriver};
use secrecy::{ExposeSecret, SecretString};
use support::{driver, processes_mentioning, state_root, test_image, SimProcess};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const LABELS: [&str; 2] = ["self-hosted", "mayfly-linux-2cpu"];

struct Agent {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

fn start_agent(server: &FakeServer, driver: Arc<QemuDriver>, journal: &Path) -> Agent {
    let mut config = AgentConfig::new("vm-host", server.url(), driver, journal.to_owned());
    config.slots = 2;
    config.images = vec![test_image().1];
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(mayfly_agent::run(config, shutdown.clone()));
    Agent { shutdown, task }
}

impl Agent {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the agent did not stop")
            .unwrap()
            .unwrap();
    }
}

fn start_vm(start_id: &str, jit: &SecretString) -> ServerBody {
    ServerBody::StartVm(StartVm {
        start_id: start_id.into(),
        image: test_image().1,
        vcpus: 1,
        memory_mib: 512,
        jitconfig: jit.expose_secret().to_owned(),
        run: "/opt/runner/run.sh".into(),
        boot_timeout_secs: 120,
        max_runtime_secs: 240,
    })
}

async fn expect(server: &mut FakeServer, kinds: &[EventKind]) -> Vec<VmEvent> {
    let mut events = Vec::new();
    for want in kinds {
        let event = server.event().await;
        assert_eq!(event.event_kind(), *want, "after {events:?}: {event:?}");
        events.push(event);
    }
    events
}

/// Nothing of `vm` is left on the host.
fn assert_gone(root: &Path, vm: &VmId) {
    assert!(
        processes_mentioning(vm.as_str()).is_empty(),
        "a QEMU process of {vm} survived"
    );
    assert!(
        !root.join("vms").join(vm.as_str()).exists(),
        "{vm}'s state directory survived"
    );
    assert!(
        !root.join("net").join(vm.as_str()).exists(),
        "{vm}'s network directory survived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_a_vm_the_agent_made_and_the_server_sees_every_step() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let sim = SimProcess::start().await;
        let (installation, repo) = sim.tenant("org-agent").await;
        let marker = format!("agent-marker-{}", std::process::id());
        let job = sim.job(&repo, &LABELS, &format!("echo {marker}")).await;
        let jit = sim
            .jit(installation, &repo, "mayfly-agent-job", &LABELS)
            .await;

        let root = state_root();
        let journal = root.path().join("agent-journal.json");
        let mut server = FakeServer::start().await;
        let agent = start_agent(
            &server,
            driver(root.path(), NetworkMode::Isolated),
            &journal,
        );
        server.hello().await;
        server.send(start_vm("start-job", &jit)).await;

        let events = expect(
            &mut server,
            &[
                EventKind::Started,
                EventKind::Booted,
                EventKind::RunnerExited,
                EventKind::Destroyed,
            ],
        )
        .await;
        let vm = VmId::parse(&events[0].vm_id).unwrap();
        assert!(
            events[1].detail.starts_with("6.1."),
            "guest kernel: {}",
            events[1].detail
        );
        assert_eq!(events[2].exit_code, 0);
        let record = events[3].destruction_record().unwrap().unwrap();
        assert_eq!(record.vm, vm);
        assert_eq!(record.reason, "job finished");
        assert!(record.complete(), "{record:#?}");
        assert!(
            record
                .steps
                .iter()
                .any(|s| s.what.contains("overlay removed")),
            "{record:#?}"
        );
        for event in &events {
            assert_eq!(event.start_id, "start-job");
            assert_eq!(event.vm_id, vm.as_str());
        }

        let done = sim.job_state(job.id).await;
        assert_eq!(
            done.conclusion,
            Some(mayfly_sim::Conclusion::Success),
            "{done:?}"
        );
        assert!(done.output.unwrap_or_default().contains(&marker));
        assert_gone(root.path(), &vm);
        assert!(Journal::load(&journal).unwrap().vms().is_empty());
        let on_disk = support::files_containing(root.path(), jit.expose_secret().as_bytes());
        assert!(on_disk.is_empty(), "the JIT config is on disk: {on_disk:?}");
        agent.stop().await;
        sim.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_vm_during_a_job_stops_the_vm_at_once_and_leaves_nothing() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let sim = SimProcess::start().await;
        let (installation, repo) = sim.tenant("org-agent-cancel").await;
        sim.job(&repo, &LABELS, "sleep 300").await;
        let jit = sim
            .jit(installation, &repo, "mayfly-agent-cancel", &LABELS)
            .await;

        let root = state_root();
        let journal = root.path().join("agent-journal.json");
        let mut server = FakeServer::start().await;
        let agent = start_agent(
            &server,
            driver(root.path(), NetworkMode::Isolated),
            &journal,
        );
        server.hello().await;
        server.send(start_vm("start-cancel", &jit)).await;
        let events = expect(&mut server, &[EventKind::Started, EventKind::Booted]).await;
        let vm = VmId::parse(&events[0].vm_id).unwrap();
        assert!(root.path().join("vms").join(vm.as_str()).exists());

        server
            .send(ServerBody::DestroyVm(DestroyVm {
                vm_id: vm.to_string(),
                start_id: "start-cancel".into(),
                reason: "job cancelled".into(),
            }))
            .await;
        let destroyed = tokio::time::timeout(Duration::from_secs(30), server.event())
            .await
            .expect("DESTROYED did not follow DestroyVm promptly");
        assert_eq!(
            destroyed.event_kind(),
            EventKind::Destroyed,
            "{destroyed:?}"
        );
        let record = destroyed.destruction_record().unwrap().unwrap();
        assert_eq!(record.reason, "job cancelled");
        assert!(record.complete(), "{record:#?}");
        assert!(
            record
                .steps
                .iter()
                .any(|s| s.what.starts_with("qemu stopped")),
            "QEMU was running and was stopped: {record:#?}"
        );
        assert_gone(root.path(), &vm);

        agent.stop().await;
        let more: Vec<_> = server
            .events_so_far()
            .into_iter()
            .filter(|e| e.vm_id == vm.as_str())
            .collect();
        assert!(
            more.is_empty(),
            "exactly one DESTROYED and nothing after: {more:?}"
        );
        sim.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_destroys_the_vm_its_crashed_predecessor_left_running() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let sim = SimProcess::start().await;
        let (installation, repo) = sim.tenant("org-agent-restart").await;
        sim.job(&repo, &LABELS, "sleep 300").await;
        let jit = sim
            .jit(installation, &repo, "mayfly-agent-restart", &LABELS)
            .await;

        let root = state_root();
        let journal = root.path().join("agent-journal.json");
        let mut server = FakeServer::start().await;
        // The first agent's driver outlives its agent, so the VM's QEMU keeps running, as when
        // an agent process crashes and its VMs do not.
        let first_driver = driver(root.path(), NetworkMode::Isolated);
        let first = start_agent(&server, first_driver.clone(), &journal);
        server.hello().await;
        server.send(start_vm("start-orphan", &jit)).await;
        let events = expect(&mut server, &[EventKind::Started, EventKind::Booted]).await;
        let vm = VmId::parse(&events[0].vm_id).unwrap();
        first.task.abort();
        let _ = first.task.await;
        assert!(
            !processes_mentioning(vm.as_str()).is_empty(),
            "the orphan's QEMU runs on"
        );
        assert_eq!(Journal::load(&journal).unwrap().vms().len(), 1);

        let second = start_agent(
            &server,
            driver(root.path(), NetworkMode::Isolated),
            &journal,
        );
        let hello = server.hello().await;
        assert!(
            hello.vms.is_empty(),
            "the orphan is gone before Hello: {:?}",
            hello.vms
        );
        let destroyed = server.event().await;
        assert_eq!(
            destroyed.event_kind(),
            EventKind::Destroyed,
            "{destroyed:?}"
        );
        assert_eq!(destroyed.vm_id, vm.as_str());
        assert_eq!(destroyed.start_id, "start-orphan");
        let record = destroyed.destruction_record().unwrap().unwrap();
        assert!(record.reason.contains("agent restarted"), "{record:#?}");
        assert!(record.complete(), "{record:#?}");
        assert_gone(root.path(), &vm);
        assert!(Journal::load(&journal).unwrap().vms().is_empty());
        second.stop().await;
        drop(first_driver);
        sim.stop().await;
    })
    .await
    .expect("test timed out");
}
