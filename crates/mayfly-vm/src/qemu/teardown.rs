//! Destroying a VM, step by step, with a record of each step: QEMU stopped (SIGTERM, then
//! SIGKILL after the grace period), the channel closed, the network torn down, the scratch disk and
//! every other per-VM file removed. The same steps run from the on-disk record when the owner
//! is gone (the reaper), which also removes VM networks and files that no VM state names.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use mayfly_core::{DestroyStep, DestructionRecord, VmId};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use serde::Serialize;

use super::record::{ProcessId, VmRecord};
use super::Entry;
use crate::network::{reap_orphans, ReapedNetwork, VmNetwork};

fn step(what: impl Into<String>, result: Result<(), String>) -> DestroyStep {
    DestroyStep {
        what: what.into(),
        at: Utc::now(),
        error: result.err(),
    }
}

/// Tears down a VM this process owns.
pub(super) async fn entry(
    entry: &mut Entry,
    net_dir: &Path,
    reason: &str,
    grace: Duration,
) -> DestructionRecord {
    let started_at = Utc::now();
    let mut steps = Vec::new();
    if let Some(mut child) = entry.child.take() {
        steps.push(stop_child(&mut child, grace).await);
    }
    if entry.channel.take().is_some() {
        steps.push(step("config channel closed", Ok(())));
    }
    entry.network = None;
    steps.extend(remove_files(&entry.dir, net_dir, entry.record.network.as_ref()).await);
    steps.push(step("console buffer dropped from memory", Ok(())));
    DestructionRecord {
        vm: entry.record.id.clone(),
        reason: reason.to_owned(),
        started_at,
        finished_at: Utc::now(),
        steps,
    }
}

/// Tears down a VM from what its state directory says (its owner may be gone).
pub(super) async fn from_disk(
    dir: &Path,
    net_dir: &Path,
    id: &VmId,
    reason: &str,
    grace: Duration,
) -> DestructionRecord {
    let started_at = Utc::now();
    let mut steps = Vec::new();
    let record = VmRecord::load(dir).ok();
    if let Some(qemu) = record.as_ref().and_then(|r| r.qemu) {
        steps.push(stop_pid(qemu, grace).await);
    }
    if dir.exists() || record.is_some() {
        steps.extend(
            remove_files(
                dir,
                net_dir,
                record.as_ref().and_then(|r| r.network.as_ref()),
            )
            .await,
        );
    } else {
        steps.push(step(
            "state directory",
            Err(format!("{} does not exist", dir.display())),
        ));
    }
    DestructionRecord {
        vm: id.clone(),
        reason: reason.to_owned(),
        started_at,
        finished_at: Utc::now(),
        steps,
    }
}

/// What one reap removed: VMs from their records, networks no VM state names, files left in
/// `<state_root>/net` by VMs whose state directory is gone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReapReport {
    pub vms: Vec<DestructionRecord>,
    pub networks: Vec<ReapedNetwork>,
    pub files: Vec<DestroyStep>,
}

/// Everything a reap does: the VMs of dead owners under this state root, then every orphaned
/// VM network on the host (see [`reap_orphans`]: never one that a VM state directory here
/// names, nor one whose creator lives), then runtime dirs of VMs without state.
pub(super) async fn reap_all(
    state_root: &Path,
    ours: &HashSet<VmId>,
    grace: Duration,
    orphan_grace: Duration,
) -> ReapReport {
    let vms = reap(state_root, ours, grace).await;
    let mut keep = HashSet::new();
    for dir in std::fs::read_dir(state_root.join("vms"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(network) = VmRecord::load(&dir.path()).ok().and_then(|r| r.network) {
            keep.insert(network.netns);
        }
    }
    let networks = reap_orphans(&keep, orphan_grace).await;
    let mut files = Vec::new();
    for dir in std::fs::read_dir(state_root.join("net"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = dir.file_name();
        let Some(id) = name.to_str().and_then(|n| VmId::parse(n).ok()) else {
            continue;
        };
        // The state directory is made before the runtime dir and removed after it.
        if ours.contains(&id) || state_root.join("vms").join(id.as_str()).exists() {
            continue;
        }
        files.push(step(
            format!(
                "runtime directory {} of a VM without state removed",
                dir.path().display()
            ),
            std::fs::remove_dir_all(dir.path()).map_err(|e| e.to_string()),
        ));
    }
    ReapReport {
        vms,
        networks,
        files,
    }
}

/// Destroys every VM under `<state_root>/vms` whose owner process is gone (and that is not
/// `ours`).
async fn reap(state_root: &Path, ours: &HashSet<VmId>, grace: Duration) -> Vec<DestructionRecord> {
    let Ok(dirs) = std::fs::read_dir(state_root.join("vms")) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for dir in dirs.flatten() {
        let path = dir.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| VmId::parse(n).ok())
        else {
            continue;
        };
        if ours.contains(&id) {
            continue;
        }
        let owner_alive = VmRecord::load(&path)
            .map(|r| r.owner.alive())
            .unwrap_or(false);
        if owner_alive {
            continue;
        }
        tracing::warn!(vm = %id, "reaping a VM whose owner is gone");
        let net = super::net_dir(state_root, &id);
        records.push(from_disk(&path, &net, &id, "reaped: its owner process is gone", grace).await);
    }
    records
}

async fn stop_child(child: &mut tokio::process::Child, grace: Duration) -> DestroyStep {
    if let Ok(Some(_)) = child.try_wait() {
        return step("qemu had already exited", Ok(()));
    }
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return step("qemu stopped (SIGTERM)", Ok(()));
        }
    }
    let killed = child.kill().await.map_err(|e| e.to_string());
    step("qemu stopped (SIGKILL after the grace period)", killed)
}

async fn stop_pid(process: ProcessId, grace: Duration) -> DestroyStep {
    if !process.alive() {
        return step("qemu had already exited", Ok(()));
    }
    let pid = Pid::from_raw(process.pid as i32);
    let _ = kill(pid, Signal::SIGTERM);
    if wait_gone(process, grace).await {
        return step("qemu stopped (SIGTERM)", Ok(()));
    }
    let _ = kill(pid, Signal::SIGKILL);
    if wait_gone(process, Duration::from_secs(5)).await {
        step("qemu stopped (SIGKILL after the grace period)", Ok(()))
    } else {
        step(
            "qemu stopped",
            Err(format!("pid {} survived SIGKILL", process.pid)),
        )
    }
}

async fn wait_gone(process: ProcessId, within: Duration) -> bool {
    crate::process::poll_until(within, || !process.alive()).await
}

async fn remove_files(
    dir: &Path,
    net_dir: &Path,
    network: Option<&crate::network::NetworkRecord>,
) -> Vec<DestroyStep> {
    let mut steps = Vec::new();
    if let Some(network) = network {
        for t in VmNetwork::destroy(network).await {
            steps.push(DestroyStep {
                what: format!("network: {}", t.what),
                at: t.at,
                error: t.error,
            });
        }
    }
    if net_dir.exists() {
        steps.push(step(
            "network runtime directory removed",
            std::fs::remove_dir_all(net_dir).map_err(|e| e.to_string()),
        ));
    }
    let scratch = dir.join(super::SCRATCH_FILE);
    if scratch.exists() {
        steps.push(step(
            "scratch disk removed",
            std::fs::remove_file(&scratch).map_err(|e| e.to_string()),
        ));
    }
    if dir.exists() {
        steps.push(step(
            "state directory removed (sockets, pidfile, record)",
            std::fs::remove_dir_all(dir).map_err(|e| e.to_string()),
        ));
    }
    steps
}
