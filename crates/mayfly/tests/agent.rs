//! The agent with real VMs (QEMU under TCG, isolated network) against a fake server (a tonic
//! `AgentService` on loopback that plays mayfly's server) and the GitHub simulator in the
//! internet stand-in: a job runs in a VM the agent made and every step reaches the server; a
//! warm pool VM boots holding nothing and runs the job assigned to it later; a
//! `DestroyVm` mid-job leaves nothing; a restarted agent cleans up what a crashed one left.
//! Needs root and the test image (`scripts/build-guest-image`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[allow(dead_code)] // the agent crate's tests use all of it
#[path = "../../mayfly-agent/tests/support/fake_server.rs"]
mod fake_server;
#[path = "../../mayfly-agent/tests/support/journal.rs"]
mod journal;
#[allow(dead_code)] // shared with the VM tests, which use more of it
#[path = "vm/support.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fake_server::{FakeServer, UNTIL_RUNNER_STARTED};
use mayfly_agent::{AgentConfig, AgentError, Journal};
use mayfly_core::VmId;
use mayfly_proto::v1::{DestroyVm, StartVm};
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
        run: "/home/runner/actions-runner/run.sh".into(),
        boot_timeout_secs: 120,
        max_runtime_secs: 240,
        disk_gib: 2,
        warm: false,
    })
}

/// Nothing of `vm` is left on the host.
/// The next event that is not one of `seen` sent again (a restarted agent resends what the
/// server had not acknowledged when its predecessor died).
async fn after(
    server: &mut FakeServer,
    seen: &[mayfly_proto::v1::VmEvent],
) -> mayfly_proto::v1::VmEvent {
    let last = seen.iter().map(|e| e.seq).max().unwrap_or(0);
    loop {
        let event = server.event().await;
        if event.seq > last {
            return event;
        }
    }
}

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

        let events = server
            .expect(&[
                EventKind::Started,
                EventKind::Booted,
                EventKind::RunnerStarted,
                EventKind::RunnerExited,
                EventKind::Destroyed,
            ])
            .await;
        let vm = VmId::parse(&events[0].vm_id).unwrap();
        assert!(
            events[1].detail.starts_with("6.1."),
            "guest kernel: {}",
            events[1].detail
        );
        // The moments only move forward: started, booted, runner started, exited, destroyed.
        assert!(
            events
                .windows(2)
                .all(|w| w[0].at_unix_ms <= w[1].at_unix_ms),
            "{events:?}"
        );
        // The runner's start carries each step of the VM's start, the driver's parts after
        // the step they belong to, every one timed.
        let steps: Vec<mayfly_core::StartStep> =
            serde_json::from_str(&events[2].start_steps_json).unwrap();
        let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(
            names,
            [
                "vm created",
                "vm created: state directory",
                "vm created: scratch disk",
                "vm created: network namespace",
                "vm created: passt",
                "vm process started",
                "vm process started: qemu spawned",
                "vm process started: config channel open",
                "guest ready",
                "config handed over",
                "runner started"
            ]
        );
        let took = |name: &str| steps.iter().find(|s| s.step == name).unwrap().millis;
        assert!(took("guest ready") > 100.0, "{steps:?}");
        assert!(took("vm created") >= took("vm created: passt"), "{steps:?}");
        assert_eq!(events[3].exit_code, 0);
        let record = events[4].destruction_record().unwrap().unwrap();
        assert_eq!(record.vm, vm);
        assert_eq!(record.reason, "job finished");
        assert!(record.complete(), "{record:#?}");
        assert!(
            record
                .steps
                .iter()
                .any(|s| s.what.contains("scratch disk removed")),
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
        journal::wait_until_empty(&journal).await;
        let on_disk = support::files_containing(root.path(), jit.expose_secret().as_bytes());
        assert!(on_disk.is_empty(), "the JIT config is on disk: {on_disk:?}");
        agent.stop().await;
        sim.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_vm_boots_holding_nothing_then_runs_the_job_it_is_assigned_and_leaves_nothing() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let sim = SimProcess::start().await;
        let (installation, repo) = sim.tenant("org-warm").await;
        let root = state_root();
        let journal = root.path().join("agent-journal.json");
        let mut server = FakeServer::start().await;
        let agent = start_agent(
            &server,
            driver(root.path(), NetworkMode::Isolated),
            &journal,
        );
        server.hello().await;
        let ServerBody::StartVm(start) = start_vm("start-warm", &SecretString::from(String::new()))
        else {
            unreachable!()
        };
        server
            .send(ServerBody::StartVm(StartVm {
                warm: true,
                run: String::new(),
                ..start
            }))
            .await;
        let booted = server.expect(&[EventKind::Started, EventKind::Warm]).await;
        let vm = VmId::parse(&booted[0].vm_id).unwrap();
        assert!(booted[1].detail.starts_with("6.1."), "{:?}", booted[1]);

        // The job comes only now: its runner is registered and its config made after the VM
        // booted, and handed to the waiting guest.
        let marker = format!("warm-marker-{}", std::process::id());
        let job = sim.job(&repo, &LABELS, &format!("echo {marker}")).await;
        let jit = sim
            .jit(installation, &repo, "mayfly-warm-job", &LABELS)
            .await;
        server
            .send(ServerBody::AssignVm(mayfly_proto::v1::AssignVm {
                vm_id: vm.to_string(),
                start_id: "start-warm".into(),
                jitconfig: jit.expose_secret().to_owned(),
                run: "/home/runner/actions-runner/run.sh".into(),
            }))
            .await;
        let events = server
            .expect(&[
                EventKind::Booted,
                EventKind::RunnerStarted,
                EventKind::RunnerExited,
                EventKind::Destroyed,
            ])
            .await;
        assert_eq!(events[2].exit_code, 0);
        let record = events[3].destruction_record().unwrap().unwrap();
        assert_eq!(record.reason, "job finished");
        assert!(record.complete(), "{record:#?}");
        let done = sim.job_state(job.id).await;
        assert_eq!(
            done.conclusion,
            Some(mayfly_sim::Conclusion::Success),
            "{done:?}"
        );
        assert!(done.output.unwrap_or_default().contains(&marker));
        assert_gone(root.path(), &vm);
        journal::wait_until_empty(&journal).await;
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
        let events = server.expect(&UNTIL_RUNNER_STARTED).await;
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
async fn an_agent_restarted_after_its_run_was_dropped_leaves_nothing_of_the_old_vm() {
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
        let first = start_agent(
            &server,
            driver(root.path(), NetworkMode::Isolated),
            &journal,
        );
        server.hello().await;
        server.send(start_vm("start-dropped", &jit)).await;
        let events = server.expect(&UNTIL_RUNNER_STARTED).await;
        let vm = VmId::parse(&events[0].vm_id).unwrap();
        // The agent's future (and with it its driver) is dropped mid-job: QEMU dies with the
        // driver, but the VM's network and files are left, and the journal names the VM.
        first.task.abort();
        let _ = first.task.await;
        assert!(root.path().join("vms").join(vm.as_str()).exists());
        assert_eq!(Journal::inspect(&journal).unwrap().vms().len(), 1);

        let second = start_agent(
            &server,
            driver(root.path(), NetworkMode::Isolated),
            &journal,
        );
        let hello = server.hello().await;
        assert!(
            hello.vms.is_empty(),
            "cleaned up before Hello: {:?}",
            hello.vms
        );
        let destroyed = after(&mut server, &events).await;
        assert_eq!(
            destroyed.event_kind(),
            EventKind::Destroyed,
            "{destroyed:?}"
        );
        assert_eq!(destroyed.vm_id, vm.as_str());
        assert_eq!(destroyed.start_id, "start-dropped");
        let record = destroyed.destruction_record().unwrap().unwrap();
        assert!(record.reason.contains("agent restarted"), "{record:#?}");
        assert!(record.complete(), "{record:#?}");
        assert_gone(root.path(), &vm);
        journal::wait_until_empty(&journal).await;
        second.stop().await;
        sim.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_process_leaves_a_vm_the_next_agent_reaps_and_reports() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let sim = SimProcess::start().await;
        let (installation, repo) = sim.tenant("org-agent-killed").await;
        sim.job(&repo, &LABELS, "sleep 300").await;
        let jit = sim
            .jit(installation, &repo, "mayfly-agent-killed", &LABELS)
            .await;

        let root = state_root();
        let journal = root.path().join("agent-journal.json");
        let mut server = FakeServer::start().await;
        let (store, _) = test_image();
        // `mayfly agent` as its own process, as in production.
        let mut first = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
            .args([
                "agent",
                "--server-url",
                &server.url(),
                "--id",
                "killed-host",
            ])
            .args(["--accel", "tcg", "--images"])
            .arg(&store)
            .arg("--state-root")
            .arg(root.path())
            .arg("--journal")
            .arg(&journal)
            .env("MAYFLY_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let hello = server.hello().await;
        assert_eq!(hello.agent_id, "killed-host");
        server.send(start_vm("start-killed", &jit)).await;
        let events = server.expect(&UNTIL_RUNNER_STARTED).await;
        let vm = VmId::parse(&events[0].vm_id).unwrap();
        first.start_kill().unwrap();
        first.wait().await.unwrap();
        // The guest sees the host end of its channel close and powers off: QEMU does not
        // outlive its agent (what is left — network, files — is the next agent's to reap).
        tokio::time::timeout(Duration::from_secs(60), async {
            while processes_mentioning(vm.as_str()).iter().any(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(11).any(|w| w == b"qemu-system"))
            }) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("QEMU outlived its killed agent");

        let second = start_agent(
            &server,
            driver(root.path(), NetworkMode::Isolated),
            &journal,
        );
        let hello = server.hello().await;
        assert!(hello.vms.is_empty(), "{:?}", hello.vms);
        let destroyed = after(&mut server, &events).await;
        assert_eq!(
            destroyed.event_kind(),
            EventKind::Destroyed,
            "{destroyed:?}"
        );
        assert_eq!(destroyed.vm_id, vm.as_str());
        assert_eq!(destroyed.start_id, "start-killed");
        let record = destroyed.destruction_record().unwrap().unwrap();
        assert!(record.reason.starts_with("reaped"), "{record:#?}");
        assert!(record.complete(), "{record:#?}");
        assert_gone(root.path(), &vm);
        journal::wait_until_empty(&journal).await;
        second.stop().await;
        sim.stop().await;
    })
    .await
    .expect("test timed out");
}
