//! The agent's journal: the VMs this agent started, with the server's start id and the phase
//! each has reached, so that a restarted agent knows what the previous one left. A small JSON
//! file, rewritten whole and atomically (temp file, fsync, rename, fsync of the directory) on
//! every phase change. It holds ids and phases only: never a JIT config or job output.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mayfly_core::VmId;
use mayfly_proto::VmPhase;
use serde::{Deserialize, Serialize};

/// The `format` field of every journal this code writes.
const FORMAT: &str = "mayfly-agent-journal/1";

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("could not read the agent journal {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the agent journal {path} is not readable as a mayfly agent journal ({why}); if no VM of \
         this agent is running, move the file aside and start again (`mayfly vm reap` destroys \
         VMs whose owner is gone)"
    )]
    Garbled { path: PathBuf, why: String },
    #[error("could not write the agent journal {path}; check the directory exists and is writable by the agent")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the journal knows of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    pub start_id: String,
    pub phase: VmPhase,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: String,
    vms: Vec<OnDiskVm>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDiskVm {
    vm_id: VmId,
    start_id: String,
    phase: String,
}

/// The journal, in memory and at `path`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    vms: BTreeMap<VmId, JournalEntry>,
}

impl Journal {
    /// Reads the journal at `path`; a missing file is an empty journal.
    pub fn load(path: &Path) -> Result<Self, JournalError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    path: path.to_owned(),
                    vms: BTreeMap::new(),
                })
            }
            Err(source) => {
                return Err(JournalError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let garbled = |why: String| JournalError::Garbled {
            path: path.to_owned(),
            why,
        };
        let on_disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| garbled(e.to_string()))?;
        if on_disk.format != FORMAT {
            return Err(garbled(format!(
                "format `{}`, this agent reads `{FORMAT}`",
                on_disk.format
            )));
        }
        let mut vms = BTreeMap::new();
        for vm in on_disk.vms {
            let phase = vm
                .phase
                .parse::<VmPhase>()
                .map_err(|e| garbled(e.to_string()))?;
            vms.insert(
                vm.vm_id,
                JournalEntry {
                    start_id: vm.start_id,
                    phase,
                },
            );
        }
        Ok(Self {
            path: path.to_owned(),
            vms,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The VMs in the journal, by id.
    pub fn vms(&self) -> &BTreeMap<VmId, JournalEntry> {
        &self.vms
    }

    /// Records a VM's phase (adding the VM when new) and writes the journal.
    pub fn set(&mut self, vm: &VmId, start_id: &str, phase: VmPhase) -> Result<(), JournalError> {
        self.vms.insert(
            vm.clone(),
            JournalEntry {
                start_id: start_id.to_owned(),
                phase,
            },
        );
        self.save()
    }

    /// Forgets a VM (it was destroyed) and writes the journal.
    pub fn remove(&mut self, vm: &VmId) -> Result<(), JournalError> {
        if self.vms.remove(vm).is_some() {
            self.save()
        } else {
            Ok(())
        }
    }

    /// Writes the whole journal atomically: a reader (or a crash) sees the old file or the new
    /// one, never a torn mix.
    pub fn save(&self) -> Result<(), JournalError> {
        let on_disk = OnDisk {
            format: FORMAT.to_owned(),
            vms: self
                .vms
                .iter()
                .map(|(vm, entry)| OnDiskVm {
                    vm_id: vm.clone(),
                    start_id: entry.start_id.clone(),
                    phase: entry.phase.as_str().to_owned(),
                })
                .collect(),
        };
        let write_err = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let bytes =
            serde_json::to_vec_pretty(&on_disk).map_err(|e| write_err(std::io::Error::other(e)))?;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| String::from("journal"));
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err)?;
        file.write_all(&bytes).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(write_err)?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn vm(n: u64) -> VmId {
        VmId::from_random(n)
    }

    #[test]
    fn a_missing_journal_is_empty_and_phases_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        let mut journal = Journal::load(&path).unwrap();
        assert!(journal.vms().is_empty());
        journal.set(&vm(1), "start-1", VmPhase::Created).unwrap();
        journal.set(&vm(2), "start-2", VmPhase::Created).unwrap();
        journal.set(&vm(1), "start-1", VmPhase::Booted).unwrap();
        journal.remove(&vm(2)).unwrap();

        let reloaded = Journal::load(&path).unwrap();
        assert_eq!(reloaded.vms().len(), 1);
        assert_eq!(
            reloaded.vms().get(&vm(1)),
            Some(&JournalEntry {
                start_id: "start-1".into(),
                phase: VmPhase::Booted
            })
        );
        // Only the journal itself is left: the temp file was renamed over it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("journal.json")]);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077,
            0,
            "the journal is the agent's alone"
        );
    }

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_temp_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        let mut journal = Journal::load(&path).unwrap();
        for n in 0..50 {
            journal
                .set(&vm(n), &format!("s{n}"), VmPhase::Running)
                .unwrap();
            // Every state written is a whole, readable journal.
            assert_eq!(Journal::load(&path).unwrap().vms().len() as u64, n + 1);
        }
        assert!(!dir.path().join(".journal.json.tmp").exists());
    }

    #[test]
    fn a_garbled_or_foreign_journal_is_refused_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        for content in [
            "{ half a journal",
            r#"{"format":"someone-elses/9","vms":[]}"#,
            r#"{"format":"mayfly-agent-journal/1","vms":[{"vm_id":"vm-x","start_id":"s","phase":"created"}]}"#,
            r#"{"format":"mayfly-agent-journal/1","vms":[{"vm_id":"vm-0000000000000001","start_id":"s","phase":"dancing"}]}"#,
        ] {
            std::fs::write(&path, content).unwrap();
            let err = Journal::load(&path).unwrap_err();
            let message = err.to_string();
            assert!(message.contains("journal.json"), "{message}");
            assert!(message.contains("move the file aside"), "{message}");
        }
    }

    #[test]
    fn an_unwritable_journal_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("journal.json");
        let mut journal = Journal::load(&path).unwrap();
        let err = journal.set(&vm(1), "s", VmPhase::Created).unwrap_err();
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }
}
