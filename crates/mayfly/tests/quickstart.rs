//! `mayfly quickstart` as a user runs it (as root, with the test image): exit 0, one row per job
//! from two organisations, three distinct VMs, all destroyed; and no secret it handled (the
//! webhook secret, the App private key, any JIT config) in its debug output or the database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;

#[test]
fn quickstart_runs_three_jobs_in_three_vms_and_leaks_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("qs");
    let images = std::env::var_os("MAYFLY_TEST_IMAGE_STORE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/mayfly-images")
        });
    let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args([
            "quickstart",
            "--jobs",
            "3",
            "--timeout-secs",
            "400",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--images")
        .arg(&images)
        .env("MAYFLY_LOG", "debug")
        .output()
        .expect("mayfly runs");
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
    assert!(stdout.contains("every VM destroyed: true"), "{stdout}");

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
                ("runner started", vm.booted_at),
                ("job started", job.started_at),
                ("job finished", job.completed_at),
                ("VM destroyed", vm.destroyed_at),
            ] {
                assert!(at.is_some(), "{phase} missing for job {}", job.job_id);
            }
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
