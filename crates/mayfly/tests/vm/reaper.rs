//! SIGKILL the process that owns a running VM, run the reaper: QEMU, the scratch disk, the network
//! namespace and every per-VM file are gone.

use std::time::Duration;

use mayfly_vm::{NetworkMode, VmDriver};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::support::{driver, netns_exists, processes_mentioning, state_root, test_image};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_destroys_what_a_killed_owner_left() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let root = state_root();
        let (store, image) = test_image();
        let mut owner = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly"))
            .args([
                "vm", "boot", "--accel", "tcg", "--image", &image, "--images",
            ])
            .arg(&store)
            .arg("--state-root")
            .arg(root.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(owner.stdout.take().unwrap()).lines();
        let vm = stdout.next_line().await.unwrap().expect("the VM id");
        let mut stderr = BufReader::new(owner.stderr.take().unwrap()).lines();
        loop {
            let line = stderr
                .next_line()
                .await
                .unwrap()
                .expect("the owner reports ready");
            if line.contains("ready") {
                break;
            }
        }
        let vm_dir = root.path().join("vms").join(&vm);
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(vm_dir.join("vm.json")).unwrap()).unwrap();
        let netns = record["network"]["netns"].as_str().map(str::to_owned);
        assert!(!processes_mentioning(&vm).is_empty(), "QEMU runs");

        // The owner dies without any chance to clean up.
        owner.start_kill().unwrap();
        owner.wait().await.unwrap();
        assert!(
            !processes_mentioning(&vm).is_empty(),
            "QEMU outlives its owner until reaped"
        );

        let reaper = driver(root.path(), NetworkMode::Isolated);
        let records = reaper.reap().await;
        assert_eq!(records.len(), 1, "{records:#?}");
        assert!(records[0].complete(), "{records:#?}");
        assert_eq!(records[0].vm.as_str(), vm);
        assert!(
            processes_mentioning(&vm).is_empty(),
            "QEMU survived the reaper"
        );
        assert!(!vm_dir.exists());
        assert!(!root.path().join("net").join(&vm).exists());
        if let Some(netns) = netns {
            assert!(!netns_exists(&netns), "{netns} survived the reaper");
        }
        assert!(
            reaper.reap().await.is_empty(),
            "reaping again finds nothing"
        );
    })
    .await
    .expect("test timed out");
}
