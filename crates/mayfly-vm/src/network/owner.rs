//! Who made a VM network: a marker `/run/mayfly/netns/<netns>.json` naming the creating process
//! (pid and start time), its runtime dir and when. It is written while the creator holds the
//! host lock, right after `ip netns add` claimed the index, and removed when the namespace is
//! deleted, so a reaper holding the same lock sees every namespace with its marker or none at
//! all. A namespace whose marker names a live process belongs to someone (any agent, under any
//! state root); one whose creator is gone, or (for namespaces made before markers existed) one
//! without a marker that is old and holds no live owner's process, is an orphan.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::NetworkError;
use crate::process::ProcessId;

/// Where the markers live (tmpfs: like the namespaces themselves, they do not survive a reboot).
pub const OWNER_DIR: &str = "/run/mayfly/netns";

/// The marker of one VM network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOwner {
    /// The process that created the network (an agent, `mayfly vm boot`, a test).
    pub owner: ProcessId,
    /// The runtime dir it gave (passt's directory is `<runtime_dir>/passt`).
    pub runtime_dir: PathBuf,
    pub created_at: DateTime<Utc>,
}

fn path(netns: &str) -> PathBuf {
    Path::new(OWNER_DIR).join(format!("{netns}.json"))
}

/// Writes the marker atomically (temp file + rename), replacing a stale one.
pub(crate) fn write(netns: &str, owner: &NetworkOwner) -> Result<(), NetworkError> {
    let io = |what: String| move |source| NetworkError::Io { what, source };
    std::fs::create_dir_all(OWNER_DIR).map_err(io(format!("create {OWNER_DIR}")))?;
    let bytes = serde_json::to_vec(owner).map_err(|e| NetworkError::Io {
        what: "encode the network's owner".to_owned(),
        source: std::io::Error::other(e),
    })?;
    let target = path(netns);
    let tmp = Path::new(OWNER_DIR).join(format!(".{netns}.json.tmp"));
    std::fs::write(&tmp, bytes).map_err(io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &target).map_err(io(format!("rename to {}", target.display())))
}

/// The marker of `netns`, if there is a readable one.
pub fn read(netns: &str) -> Option<NetworkOwner> {
    serde_json::from_slice(&std::fs::read(path(netns)).ok()?).ok()
}

/// Removes the marker of `netns`; an absent one counts as removed.
pub(crate) fn remove(netns: &str) -> Result<(), String> {
    match std::fs::remove_file(path(netns)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("remove {}: {e}", path(netns).display()))
        }
        _ => Ok(()),
    }
}

/// The namespace names that have a marker.
pub(crate) fn marked() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(OWNER_DIR) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.'))
                .map(str::to_owned)
        })
        .collect()
}
