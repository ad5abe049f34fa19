//! What a VM leaves on disk while it lives, so that a reaper can find and destroy it after its
//! owner crashed: `vm.json` in the VM's state directory names the owner process (pid and start
//! time, so a reused pid is not mistaken for the owner), the QEMU pid and the network.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use mayfly_core::VmId;
use serde::{Deserialize, Serialize};

use crate::network::NetworkRecord;
pub use crate::process::ProcessId;

/// File name of the record inside a VM's state directory.
pub const RECORD_FILE: &str = "vm.json";

/// The persisted record of one VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: VmId,
    pub image: String,
    pub owner: ProcessId,
    pub qemu: Option<ProcessId>,
    pub network: Option<NetworkRecord>,
    pub created_at: DateTime<Utc>,
}

impl VmRecord {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(RECORD_FILE)
    }

    /// Writes the record atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(".vm.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, Self::path(dir))
    }

    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(Self::path(dir))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}
