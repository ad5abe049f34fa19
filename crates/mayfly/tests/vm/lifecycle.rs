//! One job, one VM: boot → config over the channel → the runner claims and runs the job (writes
//! a marker, reports `uname -r`) → poweroff → destroy → nothing left. And a guest that never
//! reports ready is destroyed at the boot timeout; a job that fills its scratch disk fails, the
//! host's file stays at the disk's size.

use std::time::Duration;

use mayfly_vm::{GuestConfig, GuestExit, NetworkMode, VmDriver, VmError, VmSpec};

use super::support::{
    driver, files_containing, netns_exists, processes_mentioning, state_root, test_image,
    SimProcess,
};

const LABELS: [&str; 2] = ["self-hosted", "mayfly-linux-2cpu"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_in_its_own_vm_and_nothing_is_left() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let sim = SimProcess::start().await;
        let (installation, repo) = sim.tenant("org-lifecycle").await;
        let marker = format!("mayfly-marker-{}", std::process::id());
        let script = format!(
            "echo {marker} > $HOME/marker && cat $HOME/marker && echo kernel=$(uname -r) && echo uid=$(sudo id -u)
if getent hosts deb.debian.org > /tmp/dns 2>&1; then echo dns-ok; else echo dns-failed; cat /tmp/dns /etc/resolv.conf; fi"
        );
        let job = sim.job(&repo, &LABELS, &script).await;

        let root = state_root();
        let driver = driver(root.path(), NetworkMode::Isolated);
        let (_, image) = test_image();
        let vm = driver.create(&VmSpec { image, vcpus: 1, memory_mib: 512, disk_gib: 4 }).await.unwrap();
        let vm_dir = root.path().join("vms").join(vm.as_str());
        assert!(vm_dir.join("scratch.raw").exists());
        driver.start(&vm).await.unwrap();
        let kernel = driver.wait_ready(&vm, Duration::from_secs(120)).await.unwrap();
        assert!(kernel.starts_with("6.1."), "{kernel}");

        let jit = sim.jit(installation, &repo, "mayfly-lifecycle", &LABELS).await;
        driver.hand_over(&vm, GuestConfig { jitconfig: jit, run: "/home/runner/actions-runner/run.sh".into() }).await.unwrap();
        let exit = driver.wait_exit(&vm, Duration::from_secs(180)).await.unwrap();
        assert_eq!(exit, GuestExit::Exited { code: 0 });

        let record = driver.destroy(&vm, "job finished").await;
        assert!(record.complete(), "{record:#?}");
        assert!(record.steps.iter().any(|s| s.what.contains("scratch disk removed")), "{record:#?}");

        let done = sim.job_state(job.id).await;
        assert_eq!(done.conclusion, Some(mayfly_sim::Conclusion::Success), "{done:?}");
        let output = done.output.unwrap_or_default();
        assert!(output.contains(&marker), "{output}");
        assert!(output.contains(&format!("kernel={kernel}")), "{output}");
        assert!(output.contains("uid=0"), "sudo gives root: {output}");
        // Names resolve in the guest (through the host's resolver, port 53 only) whenever
        // they resolve on the host.
        use std::net::ToSocketAddrs;
        if ("deb.debian.org", 443).to_socket_addrs().is_ok() {
            assert!(output.contains("dns-ok"), "the guest cannot resolve names: {output}");
        }
        assert_eq!(done.runner_name.as_deref(), Some("mayfly-lifecycle"));

        assert!(processes_mentioning(vm.as_str()).is_empty(), "a QEMU process survived");
        assert!(!vm_dir.exists(), "the VM's state directory survived");
        let hits = files_containing(root.path(), marker.as_bytes());
        assert!(hits.is_empty(), "the marker is on the host: {hits:?}");
        let leftover_netns = record.steps.iter().any(|s| s.what.contains("network") && s.error.is_some());
        assert!(!leftover_netns, "{record:#?}");
        sim.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fills_its_scratch_disk_fails_and_the_host_keeps_its_space() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let sim = SimProcess::start().await;
        let (installation, repo) = sim.tenant("org-full-disk").await;
        // 1.5 GiB into a 1 GiB scratch disk: the write fails with "No space left on device".
        let script =
            "dd if=/dev/zero of=$HOME/fill bs=1M count=1536 status=none; echo dd-exit=$?; exit 1";
        let job = sim.job(&repo, &LABELS, script).await;

        let root = state_root();
        let driver = driver(root.path(), NetworkMode::Isolated);
        let (_, image) = test_image();
        let vm = driver
            .create(&VmSpec {
                image,
                vcpus: 1,
                memory_mib: 512,
                disk_gib: 1,
            })
            .await
            .unwrap();
        let scratch = root
            .path()
            .join("vms")
            .join(vm.as_str())
            .join("scratch.raw");
        driver.start(&vm).await.unwrap();
        driver
            .wait_ready(&vm, Duration::from_secs(120))
            .await
            .unwrap();
        let jit = sim
            .jit(installation, &repo, "mayfly-full-disk", &LABELS)
            .await;
        driver
            .hand_over(
                &vm,
                GuestConfig {
                    jitconfig: jit,
                    run: "/home/runner/actions-runner/run.sh".into(),
                },
            )
            .await
            .unwrap();
        // While the runner works, the host's file never grows past the disk's size.
        let mut largest = 0;
        let wait = driver.wait_exit(&vm, Duration::from_secs(240));
        tokio::pin!(wait);
        let exit = loop {
            tokio::select! {
                exit = &mut wait => break exit.unwrap(),
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if let Ok(meta) = std::fs::metadata(&scratch) {
                        use std::os::unix::fs::MetadataExt;
                        largest = largest.max(meta.blocks() * 512);
                    }
                }
            }
        };
        assert_eq!(
            exit,
            GuestExit::Exited { code: 0 },
            "the runner itself carries on"
        );
        assert!(
            largest <= 1 << 30,
            "the scratch file took {largest} bytes on the host"
        );
        let record = driver.destroy(&vm, "job finished").await;
        assert!(record.complete(), "{record:#?}");

        let done = sim.job_state(job.id).await;
        assert_eq!(
            done.conclusion,
            Some(mayfly_sim::Conclusion::Failure),
            "{done:?}"
        );
        let output = done.output.unwrap_or_default();
        assert!(output.contains("No space left on device"), "{output}");
        assert!(!output.contains("dd-exit=0"), "{output}");
        sim.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_reports_ready_is_destroyed_at_the_boot_timeout() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let root = state_root();
        let driver = driver(root.path(), NetworkMode::Disabled);
        let (_, image) = test_image();
        let vm = driver
            .create(&VmSpec {
                image,
                vcpus: 1,
                memory_mib: 256,
                disk_gib: 4,
            })
            .await
            .unwrap();
        driver.start(&vm).await.unwrap();
        // No guest boots in half a second under emulation: from the host's side it never
        // reports ready.
        let err = driver
            .wait_ready(&vm, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(matches!(err, VmError::BootTimeout { .. }), "{err}");
        assert!(
            processes_mentioning(vm.as_str()).is_empty(),
            "QEMU survived the boot timeout"
        );
        assert!(!root.path().join("vms").join(vm.as_str()).exists());
        assert!(driver.list().await.is_empty());
        // Destroying again returns the record of the destruction at the boot timeout.
        let record = driver.destroy(&vm, "again").await;
        assert_eq!(record.reason, "boot timeout");
        assert!(record.complete(), "{record:#?}");
        let _ = netns_exists;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_qemu_is_a_clear_error_and_nothing_leaks() {
    let (store, _) = test_image();
    for (qemu, qemu_img) in [
        ("/nonexistent/qemu-system-x86_64", "qemu-img"),
        ("qemu-system-x86_64", "/nonexistent/qemu-img"),
        ("no-such-qemu-on-path", "qemu-img"),
    ] {
        let root = state_root();
        let mut config = mayfly_vm::QemuConfig::new(
            root.path().to_owned(),
            mayfly_vm::image::ImageStore::new(store.clone()),
            super::support::accel(),
        );
        config.qemu = qemu.into();
        config.qemu_img = qemu_img.into();
        let err = mayfly_vm::QemuDriver::new(config).unwrap_err();
        assert!(
            err.to_string()
                .contains("apt-get install qemu-system-x86 qemu-utils"),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_halfway_leaks_nothing() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (store, image) = test_image();
        let root = state_root();
        // A "QEMU" that exits at once: start fails fast with what it said, and destroy
        // removes the scratch disk, the network and the directories create made.
        let fake = root.path().join("fake-qemu");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'qemu: cannot start: simulated failure' >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut config = mayfly_vm::QemuConfig::new(
            root.path().to_owned(),
            mayfly_vm::image::ImageStore::new(store),
            super::support::accel(),
        );
        config.qemu = fake;
        let driver = mayfly_vm::QemuDriver::new(config).unwrap();
        let vm = driver
            .create(&VmSpec {
                image,
                vcpus: 1,
                memory_mib: 256,
                disk_gib: 4,
            })
            .await
            .unwrap();
        assert!(
            driver.guest_addr(&vm).await.is_some(),
            "the network was made"
        );
        let err = driver.start(&vm).await.unwrap_err();
        assert!(err.to_string().contains("simulated failure"), "{err}");
        let record = driver.destroy(&vm, "start failed").await;
        assert!(record.complete(), "{record:#?}");
        assert!(!root.path().join("vms").join(vm.as_str()).exists());
        assert!(!root.path().join("net").join(vm.as_str()).exists());
        assert!(processes_mentioning(vm.as_str()).is_empty());
    })
    .await
    .expect("test timed out");
}
