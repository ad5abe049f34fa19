//! The agent against a fake server (a real tonic `AgentService` on loopback) and a fake VM
//! driver: what the server sees for each thing the agent does. The same agent against real VMs
//! is tested in `crates/mayfly/tests/agent.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[path = "support/fake_driver.rs"]
mod fake_driver;
#[path = "support/fake_server.rs"]
mod fake_server;
#[path = "support/journal.rs"]
mod journal;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fake_driver::FakeDriver;
use fake_server::{FakeServer, UNTIL_RUNNER_STARTED};
use mayfly_agent::{AgentConfig, AgentError, Journal};
use mayfly_core::VmId;
use mayfly_proto::v1::{DestroyVm, StartVm, VmEvent};
use mayfly_proto::{AgentBody, EventKind, ServerBody, VmPhase, PROTOCOL_VERSION};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const JIT: &str = "eyJqaXQiOiJ0b3Atc2VjcmV0LXJ1bm5lci1jcmVkZW50aWFsIn0=";

struct Agent {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

impl Agent {
    fn start(config: AgentConfig) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(mayfly_agent::run(config, shutdown.clone()));
        Self { shutdown, task }
    }

    async fn stop(self) -> Result<(), AgentError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the agent did not stop")
            .unwrap()
    }
}

fn config(server: &FakeServer, driver: Arc<FakeDriver>, journal: &Path) -> AgentConfig {
    let mut config = AgentConfig::new("host-a", server.url(), driver, journal.to_owned());
    config.slots = 2;
    config.images = vec!["img-digest".into()];
    config.reconnect_initial = Duration::from_millis(50);
    config.reconnect_max = Duration::from_millis(400);
    config
}

fn start_vm(start_id: &str) -> ServerBody {
    ServerBody::StartVm(StartVm {
        start_id: start_id.into(),
        image: "img-digest".into(),
        vcpus: 1,
        memory_mib: 256,
        jitconfig: JIT.into(),
        run: "/home/runner/actions-runner/run.sh".into(),
        boot_timeout_secs: 30,
        max_runtime_secs: 60,
        disk_gib: 0,
        warm: false,
    })
}

fn kind(event: &VmEvent) -> EventKind {
    event.event_kind()
}

async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_vm_reports_started_booted_runner_exited_and_destroyed_in_order() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal.json");
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver.clone(), &journal));

        let hello = server.hello().await;
        assert_eq!(hello.agent_id, "host-a");
        assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
        let capacity = hello.capacity.unwrap();
        assert_eq!(capacity.slots, 2);
        assert_eq!(capacity.images, vec!["img-digest".to_owned()]);
        assert!(hello.vms.is_empty());

        server.send(start_vm("start-1")).await;
        let started = server.event().await;
        assert_eq!(kind(&started), EventKind::Started);
        assert_eq!(started.start_id, "start-1");
        let vm = VmId::parse(&started.vm_id).unwrap();
        let booted = server.event().await;
        assert_eq!(kind(&booted), EventKind::Booted);
        assert_eq!(booted.detail, "6.1.0-fake");
        let runner = server.event().await;
        assert_eq!(kind(&runner), EventKind::RunnerStarted);
        assert_eq!(runner.vm_id, vm.as_str());
        assert!(booted.at_unix_ms <= runner.at_unix_ms);
        // The runner's start carries the steps of the VM's start, timed, in order, and when
        // the config came.
        let steps: Vec<mayfly_core::StartStep> =
            serde_json::from_str(&runner.start_steps_json).unwrap();
        let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
        assert_eq!(
            names,
            [
                "vm created",
                "vm process started",
                "guest ready",
                "config handed over",
                "runner started"
            ]
        );
        assert!(steps.iter().all(|s| s.millis >= 0.0 && s.millis < 60_000.0));
        assert!(runner.config_received_unix_ms > 0);
        assert!(runner.config_received_unix_ms <= started.at_unix_ms);
        // While it runs, the journal knows the VM, and holds nothing secret.
        let on_disk = std::fs::read_to_string(&journal).unwrap();
        assert!(
            on_disk.contains(vm.as_str()) && on_disk.contains("start-1"),
            "{on_disk}"
        );
        assert!(!on_disk.contains(JIT), "the JIT config is in the journal");
        assert_eq!(
            Journal::inspect(&journal).unwrap().vms()[&vm].phase,
            VmPhase::Booted
        );

        driver.finish(&vm, 0);
        let rest = server
            .expect(&[EventKind::RunnerExited, EventKind::Destroyed])
            .await;
        assert_eq!(rest[0].exit_code, 0);
        let record = rest[1].destruction_record().unwrap().unwrap();
        assert_eq!(record.vm, vm);
        assert_eq!(record.reason, "job finished");
        assert!(record.complete());
        for event in [&started, &booted, &rest[0], &rest[1]] {
            assert_eq!(event.vm_id, vm.as_str());
            assert_eq!(event.start_id, "start-1");
            assert!(event.at_unix_ms > 0);
        }
        assert!(started.at_unix_ms <= rest[1].at_unix_ms);

        assert_eq!(driver.handed_over(), vec![(vm.clone(), JIT.to_owned())]);
        assert_eq!(
            driver.destroyed(),
            vec![(vm.clone(), "job finished".to_owned())]
        );
        journal::wait_until_empty(&journal).await;
        agent.stop().await.unwrap();
    })
    .await;
}

fn warm_vm(start_id: &str) -> ServerBody {
    let ServerBody::StartVm(start) = start_vm(start_id) else {
        unreachable!()
    };
    ServerBody::StartVm(StartVm {
        jitconfig: String::new(),
        run: String::new(),
        warm: true,
        ..start
    })
}

fn assign_vm(vm: &VmId, start_id: &str, jitconfig: &str) -> ServerBody {
    ServerBody::AssignVm(mayfly_proto::v1::AssignVm {
        vm_id: vm.to_string(),
        start_id: start_id.into(),
        jitconfig: jitconfig.into(),
        run: String::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_vm_holds_nothing_until_its_one_assignment_and_is_destroyed_after_its_job() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal.json");
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver.clone(), &journal));
        server.hello().await;

        server.send(warm_vm("pool-1")).await;
        let started = server.event().await;
        assert_eq!(kind(&started), EventKind::Started);
        let vm = VmId::parse(&started.vm_id).unwrap();
        let warm = server.event().await;
        assert_eq!(kind(&warm), EventKind::Warm);
        assert_eq!(warm.detail, "6.1.0-fake");
        // Booted and waiting: nothing handed to the guest.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            driver.handed_over().is_empty(),
            "a warm VM was given a config"
        );
        assert!(
            server.events_so_far().is_empty(),
            "a warm VM went on without a job"
        );

        server.send(assign_vm(&vm, "pool-1", JIT)).await;
        let after = server
            .expect(&[EventKind::Booted, EventKind::RunnerStarted])
            .await;
        // Its config came with the assignment, after the VM was warm.
        assert!(after[1].config_received_unix_ms >= warm.at_unix_ms);
        assert_eq!(driver.handed_over(), vec![(vm.clone(), JIT.to_owned())]);
        assert!(!std::fs::read_to_string(&journal).unwrap().contains(JIT));

        // A second assignment is refused: no VM gets two jobs.
        server
            .send(assign_vm(&vm, "pool-1", "c2Vjb25kIGpvYg=="))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(driver.handed_over().len(), 1);

        driver.finish(&vm, 0);
        let rest = server
            .expect(&[EventKind::RunnerExited, EventKind::Destroyed])
            .await;
        assert_eq!(
            rest[1].destruction_record().unwrap().unwrap().reason,
            "job finished"
        );
        agent.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_vm_that_dies_while_waiting_is_reported_failed_and_destroyed() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver.clone(), &dir.path().join("j.json")));
        server.hello().await;

        server.send(warm_vm("pool-1")).await;
        let events = server.expect(&[EventKind::Started, EventKind::Warm]).await;
        let vm = VmId::parse(&events[0].vm_id).unwrap();
        driver.kill(&vm);
        let ended = server
            .expect(&[EventKind::Failed, EventKind::Destroyed])
            .await;
        assert_eq!(
            ended[0].detail,
            "the warm VM stopped while it waited for a job"
        );
        assert!(driver.handed_over().is_empty());

        // An assignment that comes too late gives the gone VM nothing.
        server.send(assign_vm(&vm, "pool-1", JIT)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(driver.handed_over().is_empty());
        agent.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_beyond_the_free_slots_is_refused_and_heartbeats_count_free_slots() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        let mut config = config(&server, driver.clone(), &dir.path().join("journal.json"));
        config.slots = 1;
        config.heartbeat = Duration::from_millis(100);
        let agent = Agent::start(config);
        server.hello().await;

        server.send(start_vm("first")).await;
        let first = server.expect(&UNTIL_RUNNER_STARTED).await;
        server.send(start_vm("second")).await;
        let refused = server.event().await;
        assert_eq!(kind(&refused), EventKind::Failed);
        assert_eq!(refused.start_id, "second");
        assert_eq!(refused.detail, "no free slot");
        assert!(refused.vm_id.is_empty());
        assert_eq!(driver.live().len(), 1, "no second VM was made");
        // A heartbeat while the slot is taken says so.
        loop {
            if let Some(AgentBody::Heartbeat(beat)) = server.message().await.body {
                assert_eq!(beat.free_slots, 0);
                break;
            }
        }
        driver.finish(&VmId::parse(&first[0].vm_id).unwrap(), 0);
        server
            .expect(&[EventKind::RunnerExited, EventKind::Destroyed])
            .await;
        loop {
            if let Some(AgentBody::Heartbeat(beat)) = server.message().await.body {
                if beat.free_slots == 1 {
                    break;
                }
            }
        }
        agent.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_vm_mid_run_destroys_it_at_once_and_reports_destroyed_exactly_once() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver.clone(), &dir.path().join("j.json")));
        server.hello().await;
        server.send(start_vm("s-1")).await;
        let events = server.expect(&UNTIL_RUNNER_STARTED).await;
        let vm = events[0].vm_id.clone();

        server
            .send(ServerBody::DestroyVm(DestroyVm {
                vm_id: vm.clone(),
                start_id: "s-1".into(),
                reason: "job cancelled".into(),
            }))
            .await;
        let destroyed = server.event().await;
        assert_eq!(kind(&destroyed), EventKind::Destroyed);
        assert_eq!(destroyed.vm_id, vm);
        assert_eq!(
            destroyed.destruction_record().unwrap().unwrap().reason,
            "job cancelled"
        );
        assert!(driver.live().is_empty());
        // A second DestroyVm for the same VM changes nothing.
        server
            .send(ServerBody::DestroyVm(DestroyVm {
                vm_id: vm.clone(),
                start_id: "s-1".into(),
                reason: "again".into(),
            }))
            .await;
        // Stopping flushes everything the agent has to say: nothing more about this VM.
        agent.stop().await.unwrap();
        let later: Vec<_> = server
            .events_so_far()
            .into_iter()
            .filter(|e| e.vm_id == vm)
            .collect();
        assert!(later.is_empty(), "{later:?}");
        assert_eq!(driver.destroyed().len(), 1, "{:?}", driver.destroyed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_past_its_max_runtime_fails_and_is_destroyed_for_max_runtime() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver.clone(), &dir.path().join("j.json")));
        server.hello().await;
        let ServerBody::StartVm(mut start) = start_vm("slow") else {
            unreachable!()
        };
        start.max_runtime_secs = 1;
        server.send(ServerBody::StartVm(start)).await;
        let events = server
            .expect(&[
                EventKind::Started,
                EventKind::Booted,
                EventKind::RunnerStarted,
                EventKind::Failed,
                EventKind::Destroyed,
            ])
            .await;
        assert!(
            events[3].detail.contains("max runtime"),
            "{}",
            events[3].detail
        );
        assert!(!events[3].detail.contains(JIT));
        assert_eq!(
            events[4].destruction_record().unwrap().unwrap().reason,
            "max runtime"
        );
        agent.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_cannot_be_created_is_reported_failed_and_frees_its_slot() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::failing_create());
        let mut config = config(&server, driver.clone(), &dir.path().join("j.json"));
        config.slots = 1;
        let agent = Agent::start(config);
        server.hello().await;
        for start_id in ["a", "b"] {
            server.send(start_vm(start_id)).await;
            let failed = server.event().await;
            assert_eq!(kind(&failed), EventKind::Failed);
            assert_eq!(failed.start_id, start_id);
            assert!(
                failed.detail.contains("could not create the VM"),
                "{}",
                failed.detail
            );
        }
        agent.stop().await.unwrap();
        assert!(
            server.events_so_far().is_empty(),
            "no DESTROYED without a VM"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_while_the_server_was_away_arrive_in_order_after_reconnecting() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver.clone(), &dir.path().join("j.json")));
        server.hello().await;
        server.send(start_vm("s-1")).await;
        let events = server.expect(&UNTIL_RUNNER_STARTED).await;
        let vm = VmId::parse(&events[0].vm_id).unwrap();

        server.go_away();
        // The VM keeps running without the server; its job ends meanwhile.
        driver.finish(&vm, 3);
        tokio::time::timeout(Duration::from_secs(10), async {
            while driver.destroyed().is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the VM was not destroyed while the server was away");
        server.come_back().await;

        let hello = server.hello().await;
        assert!(hello.vms.is_empty(), "the VM is gone: {:?}", hello.vms);
        let queued = server
            .expect(&[EventKind::RunnerExited, EventKind::Destroyed])
            .await;
        assert_eq!(queued[0].exit_code, 3);
        assert_eq!(queued[1].vm_id, vm.as_str());
        agent.stop().await.unwrap();
        let again = server.events_so_far();
        assert!(again.is_empty(), "no event was sent twice: {again:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_events_go_again_with_their_numbers_and_a_resent_start_vm_starts_nothing() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start().await;
        server.acknowledge_events(false);
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver.clone(), &dir.path().join("j.json")));
        let hello = server.hello().await;
        assert!(!hello.journal_epoch.is_empty());
        server.send(start_vm("s-1")).await;
        let first = server.expect(&UNTIL_RUNNER_STARTED).await;
        assert_eq!(
            first.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );

        // The session breaks before the server acknowledged any of them: the next session
        // sends them again, the same events with the same numbers, and no others.
        server.go_away();
        server.acknowledge_events(true);
        server.come_back().await;
        let again_hello = server.hello().await;
        assert_eq!(again_hello.journal_epoch, hello.journal_epoch);
        let again = server.expect(&UNTIL_RUNNER_STARTED).await;
        assert_eq!(again, first);

        // The server sends its StartVm again (it cannot know the first arrived): nothing starts,
        // nothing is refused.
        server.send(start_vm("s-1")).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            driver.live().len(),
            1,
            "a resent StartVm started a second VM"
        );
        let extra = server.events_so_far();
        assert!(extra.is_empty(), "{extra:?}");
        agent.stop().await.unwrap();
        let last = server.expect(&[EventKind::Destroyed]).await;
        assert_eq!(last[0].seq, 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_server_for_longer_than_the_lease_idle_vms_go_and_running_ones_stay() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        driver.hold_runner_of("slow-image");
        let mut config = config(&server, driver.clone(), &dir.path().join("j.json"));
        config.lease = Duration::from_millis(800);
        config.heartbeat = Duration::from_millis(100);
        let agent = Agent::start(config);
        server.hello().await;
        server.send(start_vm("running")).await;
        let running = server.expect(&UNTIL_RUNNER_STARTED).await;
        let ServerBody::StartVm(mut idle) = start_vm("idle") else {
            unreachable!()
        };
        idle.image = "slow-image".into();
        server.send(ServerBody::StartVm(idle)).await;
        let idle = server
            .expect(&[EventKind::Started, EventKind::Booted])
            .await;

        // The server goes silent: the lease runs from the last thing it sent (an ack).
        server.go_away();
        let idle_vm = VmId::parse(&idle[0].vm_id).unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while driver.live().contains(&idle_vm) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the idle VM outlived the lease");
        let running_vm = VmId::parse(&running[0].vm_id).unwrap();
        assert_eq!(
            driver.live(),
            vec![running_vm.clone()],
            "the running VM stays"
        );
        let (_, reason) = driver
            .destroyed()
            .into_iter()
            .find(|(vm, _)| vm == &idle_vm)
            .unwrap();
        assert!(reason.contains("unreachable"), "{reason}");

        // Back: the server hears what happened while it was away.
        server.come_back().await;
        server.hello().await;
        let told = server.expect(&[EventKind::Destroyed]).await;
        assert_eq!(told[0].start_id, "idle");
        agent.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_agent_names_its_running_vms_in_hello() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver.clone(), &dir.path().join("j.json")));
        server.hello().await;
        server.send(start_vm("s-1")).await;
        let events = server.expect(&UNTIL_RUNNER_STARTED).await;
        server.go_away();
        server.come_back().await;
        let hello = server.hello().await;
        assert_eq!(hello.vms.len(), 1, "{:?}", hello.vms);
        assert_eq!(hello.vms[0].vm_id, events[0].vm_id);
        assert_eq!(hello.vms[0].start_id, "s-1");
        assert_eq!(hello.vms[0].phase, "booted");
        assert_eq!(
            driver.live().len(),
            1,
            "the VM survived the lost connection"
        );
        agent.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_agent_destroys_every_vm_and_reports_each() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("j.json");
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver.clone(), &journal));
        server.hello().await;
        server.send(start_vm("a")).await;
        server.send(start_vm("b")).await;
        let mut booted = 0;
        while booted < 2 {
            if kind(&server.event().await) == EventKind::RunnerStarted {
                booted += 1;
            }
        }
        agent.stop().await.unwrap();
        let destroyed: Vec<_> = server
            .events_so_far()
            .into_iter()
            .filter(|e| kind(e) == EventKind::Destroyed)
            .collect();
        let mut starts: Vec<_> = destroyed.iter().map(|e| e.start_id.as_str()).collect();
        starts.sort_unstable();
        assert_eq!(starts, vec!["a", "b"]);
        for event in &destroyed {
            let record = event.destruction_record().unwrap().unwrap();
            assert_eq!(record.reason, "agent shutting down");
        }
        assert!(driver.live().is_empty());
        journal::wait_until_empty(&journal).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_destroys_and_reports_what_the_previous_one_left() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("j.json");
        let mut server = FakeServer::start().await;
        let first_driver = Arc::new(FakeDriver::default());
        let first = Agent::start(config(&server, first_driver.clone(), &journal));
        server.hello().await;
        server.send(start_vm("left-running")).await;
        server.send(start_vm("left-crashed")).await;
        let mut vms = std::collections::BTreeMap::new();
        let mut last_seq = 0;
        while vms.len() < 2 {
            let event = server.event().await;
            last_seq = event.seq;
            if kind(&event) == EventKind::RunnerStarted {
                vms.insert(event.start_id.clone(), VmId::parse(&event.vm_id).unwrap());
            }
        }
        // The agent dies without cleaning up (its future is dropped, as in a crash).
        first.task.abort();
        let _ = first.task.await;
        assert_eq!(Journal::inspect(&journal).unwrap().vms().len(), 2);

        // The next agent's driver finds one VM to reap (its owner is gone) and does not know
        // the other.
        let second_driver = Arc::new(FakeDriver::default());
        second_driver.leave_orphan(vms["left-crashed"].clone());
        let second = Agent::start(config(&server, second_driver.clone(), &journal));
        let hello = server.hello().await;
        assert!(hello.vms.is_empty(), "{:?}", hello.vms);
        let mut reported = std::collections::BTreeMap::new();
        while reported.len() < 2 {
            let event = server.event().await;
            if event.seq <= last_seq {
                // Sent before the crash, its acknowledgement not yet taken: sent again.
                assert_ne!(kind(&event), EventKind::Destroyed);
                continue;
            }
            assert_eq!(kind(&event), EventKind::Destroyed);
            let record = event.destruction_record().unwrap().unwrap();
            reported.insert(event.start_id.clone(), (event.vm_id.clone(), record.reason));
        }
        assert_eq!(reported["left-crashed"].0, vms["left-crashed"].as_str());
        assert!(reported["left-crashed"].1.starts_with("reaped"));
        assert_eq!(reported["left-running"].0, vms["left-running"].as_str());
        assert!(reported["left-running"].1.contains("agent restarted"));
        assert_eq!(
            second_driver.destroyed(),
            vec![(
                vms["left-running"].clone(),
                reported["left-running"].1.clone()
            )],
            "the reaped VM is not destroyed twice"
        );
        journal::wait_until_empty(&journal).await;
        second.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_another_protocol_version_stops_the_agent_with_a_clear_error() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let mut server = FakeServer::start_with_version(PROTOCOL_VERSION + 1).await;
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver, &dir.path().join("j.json")));
        server.hello().await;
        let err = tokio::time::timeout(Duration::from_secs(30), agent.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, AgentError::ProtocolMismatch { .. }), "{err}");
        assert!(err.to_string().contains("same mayfly version"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_are_refused_before_anything_starts() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let driver = Arc::new(FakeDriver::default());
        let bad_url = AgentConfig::new("h", "not a url", driver.clone(), dir.path().join("j"));
        let err = mayfly_agent::run(bad_url, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a url"), "{err}");
        let mut no_slots = AgentConfig::new(
            "h",
            "http://127.0.0.1:1",
            driver.clone(),
            dir.path().join("j"),
        );
        no_slots.slots = 0;
        let err = mayfly_agent::run(no_slots, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::NoSlots), "{err}");
        std::fs::write(dir.path().join("garbled"), "{").unwrap();
        let garbled = AgentConfig::new(
            "h",
            "http://127.0.0.1:1",
            driver,
            dir.path().join("garbled"),
        );
        let err = mayfly_agent::run(garbled, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("move the file aside"), "{err}");
    })
    .await;
}

/// Collects everything logged, at every level.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread, so that the agent's tasks log into this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn the_jit_config_never_reaches_a_log_line_or_the_journal() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("j.json");
        let mut server = FakeServer::start().await;
        let driver = Arc::new(FakeDriver::default());
        let agent = Agent::start(config(&server, driver.clone(), &journal));
        server.hello().await;
        server.send(start_vm("s-1")).await;
        let events = server.expect(&UNTIL_RUNNER_STARTED).await;
        let journal_bytes = std::fs::read(&journal).unwrap();
        driver.finish(&VmId::parse(&events[0].vm_id).unwrap(), 0);
        server
            .expect(&[EventKind::RunnerExited, EventKind::Destroyed])
            .await;
        agent.stop().await.unwrap();
        assert_eq!(
            driver.handed_over().len(),
            1,
            "the config did reach the guest"
        );
        assert!(!String::from_utf8_lossy(&journal_bytes).contains(JIT));
    })
    .await;
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        logged.contains("s-1"),
        "the agent logged its work: {logged}"
    );
    assert!(!logged.contains(JIT), "the JIT config was logged");
}

/// An agent whose driver runs no VM says so, and names itself, on every line it logs, from
/// connecting through a job's whole VM life to stopping; an agent of real VMs adds nothing.
#[tokio::test(flavor = "current_thread")]
async fn an_agent_whose_driver_runs_no_vms_says_so_on_every_line() {
    for simulated in [true, false] {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        within(60, async {
            let dir = tempfile::tempdir().unwrap();
            let mut server = FakeServer::start().await;
            let driver = Arc::new(if simulated {
                FakeDriver::simulated("simulated (no VMs)")
            } else {
                FakeDriver::default()
            });
            let agent = Agent::start(config(&server, driver.clone(), &dir.path().join("j")));
            server.hello().await;
            server.send(start_vm("s-1")).await;
            let events = server.expect(&UNTIL_RUNNER_STARTED).await;
            driver.finish(&VmId::parse(&events[0].vm_id).unwrap(), 0);
            server
                .expect(&[EventKind::RunnerExited, EventKind::Destroyed])
                .await;
            agent.stop().await.unwrap();
        })
        .await;
        let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
        let lines: Vec<&str> = logged.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("s-1") && l.contains("runner exited")),
            "the agent logged the VM's life: {logged}"
        );
        for line in &lines {
            assert_eq!(
                line.contains("simulated (no VMs)") && line.contains("host-a"),
                simulated,
                "{line}"
            );
        }
    }
}
