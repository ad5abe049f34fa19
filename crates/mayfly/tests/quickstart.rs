//! `mayfly quickstart` as a user runs it (as root, with the test image): exit 0, one row per job
//! from two organisations, three distinct VMs, all destroyed; and no secret it handled (the
//! webhook secret, the App private key, any JIT config) in its debug output or the database.
//! Run again in the same directory, after a run that finished and after one that was killed
//! part-way, it works each time, with only that run's jobs in its database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn images() -> PathBuf {
    std::env::var_os("MAYFLY_TEST_IMAGE_STORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/mayfly-images")
        })
}

fn quickstart(data: &Path, jobs: u32) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mayfly"));
    command
        .args([
            "quickstart",
            "--jobs",
            &jobs.to_string(),
            "--timeout-secs",
            "400",
        ])
        .arg("--data-dir")
        .arg(data)
        .arg("--images")
        .arg(images())
        .env("MAYFLY_LOG", "debug");
    command
}

#[test]
fn quickstart_runs_three_jobs_in_three_vms_and_leaks_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("qs");
    let out = quickstart(&data, 3).output().expect("mayfly runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status.code()
    );

    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("success"))
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(
        rows.iter().any(|r| r.starts_with("acme-robotics/app")),
        "{stdout}"
    );
    assert!(
        rows.iter().any(|r| r.starts_with("globex-labs/app")),
        "{stdout}"
    );
    let vms: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.split_whitespace().find(|w| w.starts_with("vm-")))
        .collect();
    assert_eq!(vms.len(), 3, "three distinct VMs: {stdout}");
    // Each row's moments (→VM start, →ready, →runner, →job run, →job done, →VM gone) are all
    // there and in order.
    for row in &rows {
        let words: Vec<&str> = row.split_whitespace().collect();
        let moments: Vec<f64> = words
            .windows(2)
            .filter(|w| w[1] == "s")
            .map(|w| w[0].parse().unwrap())
            .collect();
        assert_eq!(moments.len(), 6, "{row}");
        assert!(
            moments.windows(2).all(|w| w[0] <= w[1]),
            "out of order: {row}"
        );
    }
    assert!(
        stdout.contains("every job's VM destroyed: true"),
        "{stdout}"
    );

    let secret = std::fs::read_to_string(data.join("sim/webhook-secret")).unwrap();
    let key = std::fs::read_to_string(data.join("sim/app-private-key.pem")).unwrap();
    let key_line = key.lines().nth(1).expect("a PEM body line");
    let database = std::fs::read(data.join("server/mayfly.db")).unwrap();
    assert_ne!(
        &database[..16],
        b"SQLite format 3\0",
        "the quickstart's store is not encrypted"
    );
    let key =
        mayfly_store::DbKey::from_hex(&std::fs::read(data.join("server/db.key")).unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The database decrypted, every value of every table.
    let dump = rt.block_on(async {
        let store = mayfly_store::SqliteStore::open(&data.join("server/mayfly.db"), &key)
            .await
            .unwrap();
        let dump = store.plaintext_dump().await.unwrap();
        store.close().await;
        dump
    });
    assert!(
        dump.contains("acme-robotics/app"),
        "the dump holds the metadata: {dump}"
    );
    // An encoded JIT config is base64 of a JSON object whose keys start with `".`: `eyIu`;
    // installation tokens start `ghs_`; the job's script writes `quickstart-marker`.
    for (what, needle) in [
        ("webhook secret", secret.trim()),
        ("App private key", key_line),
        ("JIT config", "eyIu"),
        ("installation token", "ghs_"),
        ("job output", "quickstart-marker"),
        ("a private key", "PRIVATE KEY"),
    ] {
        assert!(
            !stdout.contains(needle) && !stderr.contains(needle),
            "the {what} was printed"
        );
        assert!(!dump.contains(needle), "the {what} is in the database");
    }
    // Each job row holds its metadata, and the VM that ran it was registered for that job's own
    // repository (a repository-level JIT config of its own installation).
    rt.block_on(async {
        use mayfly_store::{CommonStore, Store};
        let store = mayfly_store::SqliteStore::open(&data.join("server/mayfly.db"), &key)
            .await
            .unwrap();
        let jobs = store.jobs().await.unwrap();
        let vms = store.vms(false).await.unwrap();
        assert_eq!(jobs.len(), 3);
        // The local agent enrolled with a one-time token and connected over mTLS.
        let audit = store.audit_log(0, 1000).await.unwrap();
        assert_eq!(mayfly_store::verify_chain(&audit), Ok(audit.len()));
        assert!(audit
            .iter()
            .any(|r| r.action == "agent enrol" && r.outcome == "ok: agent quickstart-host"));
        assert!(audit.iter().any(|r| r.action == "agent connect"
            && r.actor == "agent:quickstart-host"
            && r.outcome == "ok"));
        for job in &jobs {
            let vm = vms
                .iter()
                .find(|v| Some(&v.start_id) == job.dispatch.vm_start_id.as_ref())
                .unwrap_or_else(|| panic!("job {} has no VM: {job:?}", job.job_id));
            assert_eq!(
                vm.repo,
                job.repo.to_string(),
                "a runner of another repository ran it"
            );
            assert_eq!(Some(vm.installation_id), job.installation_id.map(|i| i.0));
            assert_eq!(vm.ran_job_id, Some(job.job_id.0));
            assert!(
                ["alice", "bob"].contains(&job.sender.as_str()),
                "initiator: {}",
                job.sender
            );
            assert!(job.org.is_some());
            assert_eq!(job.dispatch.profile.as_deref(), Some("mayfly-linux-2cpu"));
            assert_eq!(job.conclusion.as_deref(), Some("success"));
            assert_eq!(vm.host, "quickstart-host");
            for (phase, at) in [
                ("VM started", vm.started_at),
                ("guest ready", vm.booted_at),
                ("runner started", vm.runner_started_at),
                ("job started", job.started_at),
                ("job finished", job.completed_at),
                ("VM destroyed", vm.destroyed_at),
            ] {
                assert!(at.is_some(), "{phase} missing for job {}", job.job_id);
            }
            // The agent's own moments are in order as recorded (one clock, milliseconds).
            assert!(vm.started_at <= vm.booted_at, "{vm:?}");
            assert!(vm.booted_at <= vm.runner_started_at, "{vm:?}");
            assert!(vm.runner_started_at <= vm.destroyed_at, "{vm:?}");
            let record: mayfly_core::DestructionRecord =
                serde_json::from_str(vm.destruction.as_deref().unwrap()).unwrap();
            assert!(record.complete(), "{record:#?}");
        }
        store.close().await;
    });

    // Nothing of the VMs is left on the host.
    let vm_dirs: Vec<_> = std::fs::read_dir(data.join("state/vms")).unwrap().collect();
    assert!(vm_dirs.is_empty(), "VM state left behind: {vm_dirs:?}");
}

#[test]
fn quickstart_runs_again_in_the_same_directory_after_a_kill_and_after_a_finished_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("qs");
    // A run killed (SIGKILL: no clean-up at all) once its agent has enrolled and a VM exists.
    let mut killed = quickstart(&data, 2)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let vm_started = || {
        std::fs::read_dir(data.join("state/vms"))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    };
    while !(data.join("agent-credentials/agent.json").exists() && vm_started()) {
        assert!(Instant::now() < deadline, "the first run started no VM");
        assert!(
            killed.try_wait().unwrap().is_none(),
            "the first run ended by itself"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    let ca = std::fs::read(data.join("ca/ca.pem")).unwrap();

    // Then two full runs: each succeeds with its own job, and neither stumbles over the
    // earlier runs' credentials, installations or VMs.
    for run in 1..=2 {
        let out = quickstart(&data, 1).output().expect("mayfly runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "run {run}: exit {:?}\n{stdout}\n{stderr}",
            out.status.code()
        );
        assert!(
            stdout.contains("1 job(s), 1 distinct VM(s), every job's VM destroyed: true"),
            "run {run}: {stdout}"
        );
        for trouble in [
            "File exists",
            "reconciling with GitHub failed",
            "could not enrol",
        ] {
            assert!(!stderr.contains(trouble), "run {run}: {trouble}\n{stderr}");
        }
        assert!(
            stderr.contains("database and enrolment new for this run"),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read(data.join("ca/ca.pem")).unwrap(),
            ca,
            "the local CA changed"
        );
        let vm_dirs: Vec<_> = std::fs::read_dir(data.join("state/vms")).unwrap().collect();
        assert!(
            vm_dirs.is_empty(),
            "run {run}: VM state left behind: {vm_dirs:?}"
        );
        let key =
            mayfly_store::DbKey::from_hex(&std::fs::read(data.join("server/db.key")).unwrap())
                .unwrap();
        let jobs = tokio::runtime::Runtime::new().unwrap().block_on(async {
            use mayfly_store::Store;
            let store = mayfly_store::SqliteStore::open(&data.join("server/mayfly.db"), &key)
                .await
                .unwrap();
            let jobs = store.jobs().await.unwrap();
            store.close().await;
            jobs
        });
        assert_eq!(
            jobs.len(),
            1,
            "run {run}: the database holds other runs' jobs"
        );
    }
}

#[test]
fn quickstart_with_a_warm_pool_gives_a_job_a_vm_booted_before_it_came() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("qs");
    let out = quickstart(&data, 1)
        .args(["--warm", "1"])
        .env("MAYFLY_LOG", "info")
        .output()
        .expect("mayfly runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status.code()
    );
    assert!(
        stdout.contains("1 job(s), 1 distinct VM(s), every job's VM destroyed: true"),
        "{stdout}"
    );
    let key =
        mayfly_store::DbKey::from_hex(&std::fs::read(data.join("server/db.key")).unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use mayfly_store::Store;
        let store = mayfly_store::SqliteStore::open(&data.join("server/mayfly.db"), &key)
            .await
            .unwrap();
        let vms = store.vms(false).await.unwrap();
        let ran: Vec<_> = vms.iter().filter(|v| v.ran_job_id.is_some()).collect();
        assert_eq!(ran.len(), 1, "{vms:#?}");
        let vm = ran[0];
        assert!(vm.pool, "the job did not take the pool VM: {vm:#?}");
        let (warm, assigned) = (vm.warm_at.unwrap(), vm.assigned_at.unwrap());
        assert!(warm < assigned, "booted after its job came: {vm:#?}");
        assert_eq!(vm.state, "destroyed");
        // The pool refilled after the job took its VM; the quickstart's end destroyed it.
        assert!(
            vms.iter().filter(|v| v.pool).count() >= 2,
            "the pool did not refill: {vms:#?}"
        );
        store.close().await;
    });
}
