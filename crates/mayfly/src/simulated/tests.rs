//! The simulated driver and agents against the real thing, all in this process: the GitHub
//! simulator, `mayfly server` over TLS with its agent listener (mTLS), and simulated agents
//! enrolled as a bench enrols them. What a bench relies on: every job completes at GitHub, each
//! through one VM whose whole life (started, booted, runner started, exited, destroyed) the
//! server recorded; and what keeps the driver honest: it refuses any image but its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::Arc;
use std::time::Duration;

use mayfly_sim::{JobStatus, NewJob};
use mayfly_store::{DbKey, SqliteStore, Store};
use mayfly_vm::{VmDriver, VmSpec};
use tokio_util::sync::CancellationToken;

use super::*;

const SECRET: &[u8] = b"simulated-agents-secret";

fn fast() -> SimulatedTimings {
    SimulatedTimings {
        create: Duration::from_millis(5),
        boot: Duration::from_millis(50),
        runner_start: Duration::from_millis(20),
        job: Duration::from_millis(300),
        destroy: Duration::from_millis(5),
        poll: Duration::from_millis(50),
        acquire_for: Duration::from_secs(30),
        renew: Duration::from_millis(100),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_simulated_agents_run_every_job_through_a_whole_vm_life() {
    // Each test runs in a process of its own (nextest), so this subscriber sees only this one.
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,mayfly=debug,mayfly_agent=debug,mayfly_sim=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init();
    tokio::time::timeout(Duration::from_secs(60), whole_loop())
        .await
        .expect("the loop did not finish in time");
    let logged = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(logged.contains("runner exited"), "{logged}");
    // JIT configs (base64 of a JSON object) and JWTs both start `eyJ`: none is logged.
    assert!(
        !logged.contains("eyJ"),
        "a secret reached the log: {logged}"
    );
}

/// Keeps what is logged, and echoes it to the test's captured output (shown on failure).
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        print!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn whole_loop() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("mayfly.db"), &DbKey::random())
            .await
            .unwrap(),
    );
    let stack = SimulatedStack::start(
        store.clone(),
        dir.path(),
        SECRET,
        mayfly_core::Profile {
            max_runtime_secs: 60,
            boot_timeout_secs: 30,
            idle_timeout_secs: 60,
            ..simulated_profile()
        },
        None,
    )
    .await
    .unwrap();
    let SimulatedStack {
        sim,
        server,
        cert_pem,
        repo,
    } = &stack;

    // Enrolled as a bench would: two agents, two slots each.
    let names = vec!["sim-a".to_owned(), "sim-b".to_owned()];
    let agents = enrol_simulated_agents(
        store.as_ref(),
        &server.base_url(),
        cert_pem,
        &names,
        &dir.path().join("credentials"),
    )
    .await
    .unwrap();
    assert_eq!(
        agents.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["sim-a", "sim-b"]
    );
    let journal_dir = dir.path().join("journals");
    std::fs::create_dir_all(&journal_dir).unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(run_simulated_agents(
        SimulatedAgentsConfig {
            server_url: stack.agent_url().unwrap(),
            agents,
            slots: 2,
            timings: fast(),
            journal_dir,
            sim_ca_pem: None,
            lease: Duration::from_secs(60),
        },
        shutdown.clone(),
    ));

    let control = sim.control();
    let jobs: Vec<u64> = (0..6)
        .map(|_| {
            control
                .create_job(NewJob {
                    repository: repo.clone(),
                    labels: vec!["self-hosted".into(), "simulated".into()],
                    ..NewJob::default()
                })
                .unwrap()
                .id
        })
        .collect();

    // Every job completes at GitHub, by the simulated runner, and every VM is destroyed.
    loop {
        let done = jobs
            .iter()
            .all(|id| control.job(*id).unwrap().status == JobStatus::Completed);
        let vms = store.vms(false).await.unwrap();
        if done && vms.len() >= jobs.len() && vms.iter().all(|v| v.destroyed_at.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &jobs {
        let job = control.job(*id).unwrap();
        assert_eq!(job.conclusion, Some(mayfly_sim::Conclusion::Success));
        assert_eq!(job.output.as_deref(), Some(JOB_OUTPUT));
    }
    let vms = store.vms(false).await.unwrap();
    let ran: Vec<_> = vms.iter().filter(|v| v.ran_job_id.is_some()).collect();
    assert_eq!(ran.len(), jobs.len(), "one VM ran each job: {vms:#?}");
    for vm in ran {
        assert!(["sim-a", "sim-b"].contains(&vm.host.as_str()), "{vm:?}");
        for (phase, at) in [
            ("started", vm.started_at),
            ("booted", vm.booted_at),
            ("runner started", vm.runner_started_at),
            ("exited", vm.exited_at),
            ("destroyed", vm.destroyed_at),
        ] {
            assert!(at.is_some(), "{phase} missing: {vm:?}");
        }
    }

    shutdown.cancel();
    running.await.unwrap().unwrap();
    stack.server.shutdown().await;
    stack.sim.shutdown().await;
    store.close().await;
}

#[tokio::test]
async fn the_driver_refuses_any_image_but_its_own_and_says_it_runs_no_vm() {
    let driver = SimulatedDriver::new(fast(), None);
    assert_eq!(driver.simulated(), Some(DRIVER_LABEL));
    let spec = |image: &str| VmSpec {
        image: image.into(),
        vcpus: 1,
        memory_mib: 512,
        disk_gib: 1,
    };
    let digest = "9f2c".repeat(16);
    let err = driver.create(&spec(&digest)).await.unwrap_err().to_string();
    assert!(err.contains("runs no VM") && err.contains(&digest), "{err}");

    // A boot slower than the timeout is a boot timeout, as with QEMU; destroy leaves nothing.
    let slow = SimulatedDriver::new(
        SimulatedTimings {
            boot: Duration::from_secs(3600),
            ..fast()
        },
        None,
    );
    let vm = slow.create(&spec(SIMULATED_IMAGE)).await.unwrap();
    slow.start(&vm).await.unwrap();
    let err = slow
        .wait_ready(&vm, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        matches!(err, mayfly_vm::VmError::BootTimeout { .. }),
        "{err}"
    );
    let record = slow.destroy(&vm, "boot timeout").await;
    assert!(record.complete());
    assert!(slow.list().await.is_empty());
}
