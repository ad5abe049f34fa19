//! The reaper after real crashes, as root. A helper process (this test binary run again, see
//! [`owner_process`]) makes a VM network or boots a whole VM and dies without cleaning up;
//! then `QemuDriver::reap_report` on a fresh driver must remove what it left — a network whose
//! VM state directory is gone included (namespace, veth, passt, owner marker, runtime dir) — and
//! leave alone a live owner's network under another state root and a network it cannot prove
//! is orphaned. The VM case also shows the guest-side watchdog: with its agent SIGKILLed, the
//! guest powers off by itself and QEMU exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod image_support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mayfly_core::VmId;
use mayfly_vm::image::ImageStore;
use mayfly_vm::network::{owner, NetworkSpec, VmNetwork};
use mayfly_vm::process::ProcessId;
use mayfly_vm::{Accel, GuestConfig, NetworkMode, QemuConfig, QemuDriver, VmDriver, VmSpec};
use secrecy::SecretString;

/// What the helper process does, from `MAYFLY_TEST_OWNER`: `network <index> <runtime_dir>` or
/// `vm <state_root> <image store> <digest>`.
const OWNER_ENV: &str = "MAYFLY_TEST_OWNER";

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the reaper tests make namespaces and nftables rules: run them as root"
    );
}

/// A state root that `nobody` (passt) can traverse.
fn state_root() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("mayfly-reap-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

fn driver(root: &Path, store: &Path, orphan_grace: Duration) -> QemuDriver {
    let mut config = QemuConfig::new(root.to_owned(), ImageStore::new(store), Accel::Tcg);
    config.network = NetworkMode::Isolated;
    config.orphan_grace = orphan_grace;
    QemuDriver::new(config).unwrap()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Starts this test binary again as the owner helper; returns it with the lines it printed
/// that start with `OWNER ` (read until `OWNER done`).
fn spawn_owner(what: &str) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["owner_process", "--exact", "--ignored", "--nocapture"])
        .env(OWNER_ENV, what)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("the owner helper ended early; it said {lines:?}");
        }
        if let Some(rest) = line.trim_end().strip_prefix("OWNER ") {
            if rest == "done" {
                break;
            }
            lines.push(rest.to_owned());
        }
    }
    // Keep reading (and dropping) whatever else it prints, so it never blocks on the pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, lines)
}

/// The helper process: makes what `MAYFLY_TEST_OWNER` says, prints it, and then either exits
/// without cleaning up (a network) or waits to be killed (a VM). Run by the tests below only.
#[test]
#[ignore = "the owner process of the other tests here; they start it themselves"]
fn owner_process() {
    let what = std::env::var(OWNER_ENV).expect("run by the reaper tests only");
    let args: Vec<&str> = what.split(' ').collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    match args.as_slice() {
        ["network", index, runtime_dir] => rt.block_on(async {
            let net = VmNetwork::create(&NetworkSpec {
                index: index.parse().unwrap(),
                runtime_dir: PathBuf::from(runtime_dir),
            })
            .await
            .unwrap();
            println!("OWNER {} {}", net.netns(), net.passt_pid());
            println!("OWNER done");
            // Exits with the network in place: a crash before any state named it.
        }),
        ["vm", root, store, digest] => rt.block_on(async {
            let driver = driver(Path::new(root), Path::new(store), Duration::from_secs(60));
            let spec = VmSpec {
                image: (*digest).to_owned(),
                vcpus: 1,
                memory_mib: 1024,
                disk_gib: 4,
            };
            let vm = driver.create(&spec).await.unwrap();
            driver.start(&vm).await.unwrap();
            driver
                .wait_ready(&vm, Duration::from_secs(120))
                .await
                .unwrap();
            driver
                .hand_over(
                    &vm,
                    GuestConfig {
                        jitconfig: SecretString::from("selftest-hold".to_owned()),
                        run: "/home/runner/actions-runner/selftest.sh".to_owned(),
                    },
                )
                .await
                .unwrap();
            assert!(driver
                .wait_runner_started(&vm, Duration::from_secs(60))
                .await
                .unwrap());
            println!("OWNER {vm}");
            println!("OWNER done");
            // An agent with a running job: it holds the channel until it is killed.
            std::future::pending::<()>().await;
        }),
        other => panic!("unknown owner task {other:?}"),
    }
}

/// Destroys the networks with these indexes whatever happened (a failing test leaves none).
fn cleanup(indexes: &[u32]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for record in VmNetwork::leftovers().await.unwrap_or_default() {
            if indexes.contains(&record.index) {
                VmNetwork::destroy(&record).await;
            }
        }
    });
}

struct Cleanup(Vec<u32>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        cleanup(&self.0);
    }
}

/// A network whose VM state is gone (its creator died before any state named it, or the state
/// directory was deleted) is reaped whole; a live owner's network under another state root, and
/// a marker-less network holding a process nobody can vouch for, are not; reaping again finds
/// nothing more of them.
#[test]
fn networks_without_vm_state_are_reaped_and_live_owners_networks_are_not() {
    require_root();
    const ORPHAN: u32 = 16320;
    const LIVE: u32 = 16321;
    const LEGACY: u32 = 16322;
    const UNKNOWN: u32 = 16323;
    let _cleanup = Cleanup(vec![ORPHAN, LIVE, LEGACY, UNKNOWN]);
    image_support::bounded(Duration::from_secs(120), move || {
        let ours = state_root();
        let other = state_root();
        // Only the driver's directories matter here; the image store is never read.
        let reaper = driver(ours.path(), ours.path(), Duration::from_secs(5));
        let _other_driver = driver(other.path(), other.path(), Duration::from_secs(5));
        let vm_dir = |root: &Path, tag: u8| {
            root.join("net")
                .join(VmId::from_random(0x5eed_0000 + u64::from(tag)).as_str())
        };
        let rt = tokio::runtime::Runtime::new().unwrap();

        // Made by a process that is gone; no VM state names it (as if vms/<id> was deleted).
        let orphan_dir = vm_dir(ours.path(), 1);
        let (mut helper, said) = spawn_owner(&format!("network {ORPHAN} {}", orphan_dir.display()));
        assert!(helper.wait().unwrap().success());
        let orphan_passt: u32 = said[0].split(' ').nth(1).unwrap().parse().unwrap();
        let marker = owner::read("mayfly-vm-16320").expect("the creator left its marker");
        assert!(!marker.owner.alive());
        assert!(process_alive(orphan_passt));

        // Made by an older mayfly (no marker), its creator gone, its state never written.
        let legacy_dir = vm_dir(ours.path(), 2);
        let (mut helper, said) = spawn_owner(&format!("network {LEGACY} {}", legacy_dir.display()));
        assert!(helper.wait().unwrap().success());
        let legacy_passt: u32 = said[0].split(' ').nth(1).unwrap().parse().unwrap();
        let legacy_made = Instant::now();
        std::fs::remove_file(Path::new(owner::OWNER_DIR).join("mayfly-vm-16322.json")).unwrap();

        // A live owner (this process) under another state root, with no VM state either.
        let live_dir = vm_dir(other.path(), 3);
        let live = rt
            .block_on(VmNetwork::create(&NetworkSpec {
                index: LIVE,
                runtime_dir: live_dir.clone(),
            }))
            .unwrap();
        assert_eq!(
            owner::read("mayfly-vm-16321").unwrap().owner,
            ProcessId::current().unwrap()
        );

        // No marker, and a process in it that is not mayfly's: not provably an orphan.
        let unknown_dir = vm_dir(other.path(), 4);
        let unknown = rt
            .block_on(VmNetwork::create(&NetworkSpec {
                index: UNKNOWN,
                runtime_dir: unknown_dir,
            }))
            .unwrap();
        std::fs::remove_file(Path::new(owner::OWNER_DIR).join("mayfly-vm-16323.json")).unwrap();
        let mut stranger = Command::new("ip")
            .args(["netns", "exec", "mayfly-vm-16323", "sleep", "600"])
            .spawn()
            .unwrap();

        // Marker-less namespaces are judged only once older than the grace period (5 s here).
        let mut reported = Vec::new();
        loop {
            let young = legacy_made.elapsed() < Duration::from_secs(4);
            let report = rt.block_on(reaper.reap_report());
            let legacy_reaped = report.networks.iter().any(|n| n.netns == "mayfly-vm-16322");
            assert!(
                !(young && legacy_reaped),
                "a young marker-less namespace was reaped: {report:#?}"
            );
            reported.extend(report.networks);
            if legacy_reaped {
                break;
            }
            assert!(
                legacy_made.elapsed() < Duration::from_secs(30),
                "the marker-less orphan was never reaped: {reported:#?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        for netns in ["mayfly-vm-16320", "mayfly-vm-16322"] {
            let reaped: Vec<_> = reported.iter().filter(|n| n.netns == netns).collect();
            assert_eq!(reaped.len(), 1, "{reported:#?}");
            assert!(reaped[0].steps.iter().all(|s| s.ok), "{reaped:#?}");
        }
        let orphan = reported
            .iter()
            .find(|n| n.netns == "mayfly-vm-16320")
            .unwrap();
        assert!(orphan.why.contains("is gone"), "{orphan:#?}");
        for (netns, veth, passt) in [
            ("mayfly-vm-16320", "mfv16320", orphan_passt),
            ("mayfly-vm-16322", "mfv16322", legacy_passt),
        ] {
            assert!(!netns_exists(netns), "{netns} survived the reaper");
            assert!(!link_exists(veth), "{veth} survived the reaper");
            assert!(!process_alive(passt), "passt {passt} of {netns} survived");
            assert!(owner::read(netns).is_none(), "{netns}'s marker survived");
        }
        assert!(
            !orphan_dir.exists() && !legacy_dir.exists(),
            "runtime dirs left"
        );
        let host_rules = Command::new("nft")
            .args(["list", "table", "inet", "mayfly"])
            .output()
            .unwrap();
        let host_rules = String::from_utf8_lossy(&host_rules.stdout);
        assert!(
            !host_rules.contains("mfv16320") && !host_rules.contains("10.201.254.128"),
            "the host table names a reaped VM:\n{host_rules}"
        );

        // The live owner's network and the unprovable one are untouched.
        for (netns, veth, passt) in [
            ("mayfly-vm-16321", "mfv16321", live.passt_pid()),
            ("mayfly-vm-16323", "mfv16323", unknown.passt_pid()),
        ] {
            assert!(
                netns_exists(netns) && link_exists(veth),
                "{netns} was reaped"
            );
            assert!(process_alive(passt), "passt of {netns} was killed");
        }
        assert!(live_dir.join("passt/passt.sock").exists());
        assert!(process_alive(stranger.id()));

        // Idempotent: nothing of these is reaped twice.
        let again = rt.block_on(reaper.reap_report());
        assert!(
            !again.networks.iter().any(|n| [
                "mayfly-vm-16320",
                "mayfly-vm-16321",
                "mayfly-vm-16322",
                "mayfly-vm-16323"
            ]
            .contains(&n.netns.as_str())),
            "{again:#?}"
        );
        let _ = stranger.kill();
        let _ = stranger.wait();
        rt.block_on(VmNetwork::destroy(&live.record()));
        rt.block_on(VmNetwork::destroy(&unknown.record()));
    });
}

/// An agent SIGKILLed while its VM runs a job: the guest notices its host end closed and powers
/// off, so QEMU exits by itself within the bound; what is left (the network with its passt, the
/// state directory and scratch disk) is removed by the next reap.
#[test]
fn a_vm_does_not_outlive_its_killed_owner_and_the_reaper_cleans_up() {
    require_root();
    let image = image_support::TestImage::find();
    image_support::bounded(Duration::from_secs(300), move || {
        let root = state_root();
        let store = image.image.dir.parent().unwrap().to_owned();
        let (mut helper, said) = spawn_owner(&format!(
            "vm {} {} {}",
            root.path().display(),
            store.display(),
            image.digest
        ));
        let vm = said[0].clone();
        let vm_dir = root.path().join("vms").join(&vm);
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(vm_dir.join("vm.json")).unwrap()).unwrap();
        let qemu: ProcessId = serde_json::from_value(record["qemu"].clone()).unwrap();
        let netns = record["network"]["netns"].as_str().unwrap().to_owned();
        let passt = record["network"]["passt_pid"].as_u64().unwrap() as u32;
        assert!(qemu.alive());

        // The agent dies without any chance to clean up.
        helper.kill().unwrap();
        helper.wait().unwrap();
        let killed = Instant::now();
        while qemu.alive() {
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "QEMU still runs {:?} after its owner was killed",
                killed.elapsed()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "QEMU exited {:?} after its owner was killed; left: netns {} ({}), passt {} ({}), state dir ({})",
            killed.elapsed(),
            netns,
            netns_exists(&netns),
            passt,
            process_alive(passt),
            vm_dir.exists()
        );

        let rt = tokio::runtime::Runtime::new().unwrap();
        let reaper = driver(root.path(), &store, Duration::from_secs(60));
        let report = rt.block_on(reaper.reap_report());
        let record = report
            .vms
            .iter()
            .find(|r| r.vm.as_str() == vm)
            .unwrap_or_else(|| panic!("the VM was not reaped: {report:#?}"));
        assert!(record.complete(), "{record:#?}");
        assert!(!netns_exists(&netns), "{netns} survived the reaper");
        assert!(!process_alive(passt), "passt survived the reaper");
        assert!(!vm_dir.exists() && !root.path().join("net").join(&vm).exists());
        assert!(owner::read(&netns).is_none());
    });
}
