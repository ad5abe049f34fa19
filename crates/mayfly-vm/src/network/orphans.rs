//! Finding and removing VM networks that nobody owns: namespaces `mayfly-vm-*`, veths `mfv*`
//! and passt processes whose VM state is gone (an agent crashed between making the network and
//! recording it, or the state directory was deleted). Never another live owner's: the decision
//! is made holding the host lock (creators claim an index and write their owner marker under
//! it), a namespace whose marker names a live process is kept, and a namespace without a marker
//! (made by an older mayfly) is kept while it is younger than the grace period or holds any
//! process that is not shown to belong to a dead owner. The host's nftables table matches VM
//! links by name prefix, so there is nothing per VM to remove there; a namespace's own table
//! goes with the namespace.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::host_rules::HostLock;
use super::vm::{teardown_locked, NETNS_DIR};
use super::{exec, owner, NetworkRecord, TeardownStep, VmNetwork};
use crate::qemu::VmRecord;

/// A VM network the reaper removed, and why it was an orphan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReapedNetwork {
    /// The namespace (`mayfly-vm-<n>`), or `passt <pid>` for a passt left in a deleted one.
    pub netns: String,
    pub why: String,
    pub steps: Vec<TeardownStep>,
}

/// Whose a process inside a VM namespace is, judged by the state paths on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Alive,
    Gone(String),
    Unknown,
}

/// Removes every VM network on this host that is not named in `keep` (namespaces referenced by
/// the caller's own live VMs) and has no live owner. Idempotent.
pub async fn reap_orphans(keep: &HashSet<String>, grace: Duration) -> Vec<ReapedNetwork> {
    let lock = match HostLock::acquire().await {
        Ok(lock) => lock,
        Err(e) => {
            tracing::warn!(error = %e, "cannot take the host network lock; orphaned networks are left for the next reap");
            return Vec::new();
        }
    };
    let mut reaped = Vec::new();
    let candidates = VmNetwork::leftovers().await.unwrap_or_default();
    for mut record in candidates {
        if keep.contains(&record.netns) {
            continue;
        }
        let Some(why) = orphaned(&record, grace).await else {
            continue;
        };
        tracing::warn!(netns = %record.netns, why, "reaping an orphaned VM network");
        if let Some(marker) = owner::read(&record.netns) {
            record.passt_dir = Some(marker.runtime_dir.join(super::passt::DIR_NAME));
        }
        let steps = teardown_locked(&record).await;
        reaped.push(ReapedNetwork {
            netns: record.netns.clone(),
            why,
            steps,
        });
    }
    reaped.extend(reap_stray_passts().await);
    // Markers whose namespace is gone and whose creator died with it.
    for netns in owner::marked() {
        let gone = !Path::new(NETNS_DIR).join(&netns).exists();
        if gone && owner::read(&netns).is_none_or(|m| !m.owner.alive()) {
            let _ = owner::remove(&netns);
        }
    }
    drop(lock);
    reaped
}

/// Why `record`'s network is an orphan, or `None` when it is (or may be) someone's.
async fn orphaned(record: &NetworkRecord, grace: Duration) -> Option<String> {
    let netns_path = Path::new(NETNS_DIR).join(&record.netns);
    if let Some(marker) = owner::read(&record.netns) {
        return (!marker.owner.alive()).then(|| {
            format!(
                "its creator (pid {}) is gone and no VM state names it",
                marker.owner.pid
            )
        });
    }
    let Ok(meta) = std::fs::metadata(&netns_path) else {
        // A veth whose namespace was deleted: under the host lock no creator is half-way
        // (creators make the namespace first), so it is what a failed teardown left.
        return Some(format!("link {} outlived its namespace", record.host_veth));
    };
    let age = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or_default();
    if age < grace {
        return None;
    }
    let pids = exec::run("ip", &["netns", "pids", &record.netns])
        .await
        .ok()?;
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        match process_owner(pid) {
            Owner::Gone(_) => {}
            Owner::Alive | Owner::Unknown => return None,
        }
    }
    Some(format!(
        "no owner marker, older than {} s, and no process of a live owner in it",
        grace.as_secs()
    ))
}

/// passt processes of mayfly's shape (`--socket …/passt/passt.sock`) in a namespace that no
/// longer has a name (deleted while passt lived) and whose owner is gone.
async fn reap_stray_passts() -> Vec<ReapedNetwork> {
    let named: HashSet<u64> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok().map(|m| m.ino()))
        .collect();
    let host = netns_inode(1);
    let mut reaped = Vec::new();
    for pid in all_pids() {
        let Some(socket) = passt_socket(pid) else {
            continue;
        };
        let Some(ns) = netns_inode(pid) else {
            continue;
        };
        if Some(ns) == host || named.contains(&ns) {
            continue;
        }
        let Owner::Gone(why) = socket_owner(&socket) else {
            continue;
        };
        let result = exec::terminate(pid, Duration::from_secs(2)).await;
        reaped.push(ReapedNetwork {
            netns: format!("passt {pid}"),
            why: format!("a passt left in a deleted namespace; {why}"),
            steps: vec![TeardownStep::from_result(
                &format!("stop passt (pid {pid})"),
                result,
            )],
        });
    }
    reaped
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect()
}

fn netns_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The arguments of a process (NUL-separated in `/proc/<pid>/cmdline`).
fn argv(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn value_after(argv: &[String], flag: &str) -> Option<PathBuf> {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1))
        .map(PathBuf::from)
}

/// The socket of a passt started the way mayfly starts it.
fn passt_socket(pid: u32) -> Option<PathBuf> {
    let argv = argv(pid);
    let program = Path::new(argv.first()?).file_name()?.to_str()?;
    if program != "passt" || !argv.iter().any(|a| a == "--no-map-gw") {
        return None;
    }
    value_after(&argv, "--socket").filter(|s| s.ends_with("passt/passt.sock"))
}

/// Whose a process in a VM namespace is: passt by its socket, QEMU by its pidfile
/// (`<state_root>/vms/<vm>/qemu.pid`); anything else is unknown.
fn process_owner(pid: u32) -> Owner {
    if let Some(socket) = passt_socket(pid) {
        return socket_owner(&socket);
    }
    let argv = argv(pid);
    match value_after(&argv, "-pidfile") {
        Some(pidfile) if pidfile.ends_with("qemu.pid") => match pidfile.parent() {
            Some(vm_dir) => vm_dir_owner(vm_dir),
            None => Owner::Unknown,
        },
        _ => Owner::Unknown,
    }
}

/// A passt's owner: the marker that gave it this runtime dir, or the VM state directory of a
/// `QemuDriver` layout (`<state_root>/net/<vm>/passt/passt.sock` → `<state_root>/vms/<vm>`).
fn socket_owner(socket: &Path) -> Owner {
    let Some(runtime_dir) = socket.parent().and_then(Path::parent) else {
        return Owner::Unknown;
    };
    for netns in owner::marked() {
        if let Some(marker) = owner::read(&netns) {
            if marker.runtime_dir == runtime_dir {
                return if marker.owner.alive() {
                    Owner::Alive
                } else {
                    Owner::Gone(format!("its creator (pid {}) is gone", marker.owner.pid))
                };
            }
        }
    }
    let (Some(vm), Some(net)) = (runtime_dir.file_name(), runtime_dir.parent()) else {
        return Owner::Unknown;
    };
    match net.parent() {
        Some(root) if net.file_name().is_some_and(|n| n == "net") => {
            vm_dir_owner(&root.join("vms").join(vm))
        }
        _ => Owner::Unknown,
    }
}

/// The owner of a VM state directory: its record's owner; a state root whose `vms` exists but
/// has no record for this VM means its state is gone (the record is written before any network).
fn vm_dir_owner(vm_dir: &Path) -> Owner {
    match VmRecord::load(vm_dir) {
        Ok(record) if record.owner.alive() => Owner::Alive,
        Ok(record) => Owner::Gone(format!("its owner (pid {}) is gone", record.owner.pid)),
        Err(_) if vm_dir.parent().is_some_and(Path::is_dir) => {
            Owner::Gone(format!("no VM state at {}", vm_dir.display()))
        }
        Err(_) => Owner::Unknown,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::process::ProcessId;

    fn record(owner: ProcessId) -> VmRecord {
        VmRecord {
            id: mayfly_core::VmId::from_random(7),
            image: "x".into(),
            owner,
            qemu: None,
            network: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_passt_is_judged_by_the_vm_state_its_socket_path_names() {
        let root = tempfile::tempdir().unwrap();
        let vm = "vm-0000000000000007";
        let socket = root.path().join("net").join(vm).join("passt/passt.sock");
        // A state root without this VM's state: its state is gone.
        std::fs::create_dir_all(root.path().join("vms")).unwrap();
        assert!(matches!(socket_owner(&socket), Owner::Gone(_)));
        // Its record names a live owner, then a dead one.
        let vm_dir = root.path().join("vms").join(vm);
        std::fs::create_dir_all(&vm_dir).unwrap();
        record(ProcessId::current().unwrap()).save(&vm_dir).unwrap();
        assert_eq!(socket_owner(&socket), Owner::Alive);
        let dead = ProcessId {
            pid: u32::MAX - 1,
            start: 0,
        };
        record(dead).save(&vm_dir).unwrap();
        assert!(matches!(socket_owner(&socket), Owner::Gone(_)));
        // Not a state root's layout: nobody can tell, so it is kept.
        let elsewhere = root.path().join("somewhere/passt/passt.sock");
        assert_eq!(socket_owner(&elsewhere), Owner::Unknown);
        let no_vms = tempfile::tempdir().unwrap();
        let loose = no_vms.path().join("net").join(vm).join("passt/passt.sock");
        assert_eq!(socket_owner(&loose), Owner::Unknown);
    }

    #[test]
    fn only_mayfly_shaped_passts_and_qemus_have_an_owner() {
        let argv: Vec<String> = ["qemu", "-pidfile", "/x/vms/vm-1/qemu.pid"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            value_after(&argv, "-pidfile"),
            Some(PathBuf::from("/x/vms/vm-1/qemu.pid"))
        );
        assert_eq!(value_after(&argv, "--socket"), None);
        // This test process is neither.
        assert_eq!(process_owner(std::process::id()), Owner::Unknown);
        assert_eq!(passt_socket(std::process::id()), None);
    }
}
