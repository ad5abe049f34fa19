//! The agent's journal: the VMs this agent started, with the server's start id and the phase
//! each has reached, so that a restarted agent knows what the previous one left; the VM events
//! the server has not acknowledged yet, each with its sequence number, so none is lost in a
//! broken session or a crash; and the start ids seen lately, so a resent `StartVm` starts
//! nothing twice. A small JSON file, rewritten whole and atomically (temp file, fsync, rename,
//! fsync of the directory) on every change. It holds ids, phases and event metadata only: never
//! a JIT config or job output.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mayfly_core::VmId;
use mayfly_proto::v1::VmEvent;
use mayfly_proto::VmPhase;
use serde::{Deserialize, Serialize};

/// The `format` field of every journal this code writes.
const FORMAT: &str = "mayfly-agent-journal/2";
/// The format before events were journaled; read, and upgraded on the next write.
const FORMAT_V1: &str = "mayfly-agent-journal/1";
/// How many start ids are remembered for idempotence (far more than a host runs in the time a
/// command can be resent).
const STARTS_KEPT: usize = 4096;

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
    #[error(
        "another mayfly agent is using the journal {path} (its lock {lock} is held): run one \
         agent per journal, or wait for the previous one to exit"
    )]
    InUse { path: PathBuf, lock: PathBuf },
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
    /// Absent in format 1.
    #[serde(default)]
    epoch: String,
    #[serde(default)]
    next_seq: u64,
    vms: Vec<OnDiskVm>,
    #[serde(default)]
    events: Vec<OnDiskEvent>,
    #[serde(default)]
    starts: Vec<String>,
}

/// A `VmEvent` as the journal keeps it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDiskEvent {
    seq: u64,
    vm_id: String,
    start_id: String,
    kind: i32,
    at_unix_ms: i64,
    exit_code: i32,
    detail: String,
    destruction_record_json: String,
    // Journals written before these fields have none.
    #[serde(default)]
    start_steps_json: String,
    #[serde(default)]
    config_received_unix_ms: i64,
}

impl From<&VmEvent> for OnDiskEvent {
    fn from(e: &VmEvent) -> Self {
        Self {
            seq: e.seq,
            vm_id: e.vm_id.clone(),
            start_id: e.start_id.clone(),
            kind: e.kind,
            at_unix_ms: e.at_unix_ms,
            exit_code: e.exit_code,
            detail: e.detail.clone(),
            destruction_record_json: e.destruction_record_json.clone(),
            start_steps_json: e.start_steps_json.clone(),
            config_received_unix_ms: e.config_received_unix_ms,
        }
    }
}

impl From<OnDiskEvent> for VmEvent {
    fn from(e: OnDiskEvent) -> Self {
        Self {
            seq: e.seq,
            vm_id: e.vm_id,
            start_id: e.start_id,
            kind: e.kind,
            at_unix_ms: e.at_unix_ms,
            exit_code: e.exit_code,
            detail: e.detail,
            destruction_record_json: e.destruction_record_json,
            start_steps_json: e.start_steps_json,
            config_received_unix_ms: e.config_received_unix_ms,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDiskVm {
    vm_id: VmId,
    start_id: String,
    phase: String,
}

/// The journal, in memory and at `path`. Holds an exclusive lock on `<path>.lock` while it
/// lives, so two agents never write one journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    /// `None` for a journal read with [`Journal::inspect`], which cannot be written.
    lock: Option<std::fs::File>,
    /// Names this journal: the server counts sequence numbers per epoch.
    epoch: String,
    /// The number the next event gets.
    next_seq: u64,
    vms: BTreeMap<VmId, JournalEntry>,
    /// Events not acknowledged yet, in sequence order.
    events: VecDeque<VmEvent>,
    /// Start ids seen lately, oldest first.
    starts: VecDeque<String>,
}

/// Takes the exclusive lock beside the journal, trying for up to five seconds.
fn lock(path: &Path) -> Result<std::fs::File, JournalError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| JournalError::Write {
            path: lock_path.clone(),
            source,
        })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::InUse {
                    path: path.to_owned(),
                    lock: lock_path,
                })
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(JournalError::Write {
                    path: lock_path,
                    source,
                })
            }
        }
    }
}

fn new_epoch() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Journal {
    /// Reads the journal at `path` (a missing file is an empty journal) and locks it, waiting
    /// a few seconds for a previous agent that is still exiting.
    pub fn load(path: &Path) -> Result<Self, JournalError> {
        Self::read(path, Some(lock(path)?))
    }

    /// Reads the journal at `path` without locking it, to look at (an agent may be using it):
    /// writing this copy fails.
    pub fn inspect(path: &Path) -> Result<Self, JournalError> {
        Self::read(path, None)
    }

    fn read(path: &Path, lock: Option<std::fs::File>) -> Result<Self, JournalError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self {
                    path: path.to_owned(),
                    lock,
                    epoch: new_epoch(),
                    next_seq: 1,
                    vms: BTreeMap::new(),
                    events: VecDeque::new(),
                    starts: VecDeque::new(),
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
        if on_disk.format == FORMAT_V1 {
            if !on_disk.events.is_empty() || !on_disk.starts.is_empty() {
                return Err(garbled(format!("events in a `{FORMAT_V1}` journal")));
            }
        } else if on_disk.format != FORMAT {
            return Err(garbled(format!(
                "format `{}`, this agent reads `{FORMAT}` (and `{FORMAT_V1}`)",
                on_disk.format
            )));
        } else if on_disk.epoch.is_empty() || on_disk.next_seq == 0 {
            return Err(garbled(String::from("no epoch or sequence number")));
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
        let mut events: VecDeque<VmEvent> = on_disk.events.into_iter().map(Into::into).collect();
        events.make_contiguous().sort_by_key(|e| e.seq);
        let last = events.back().map_or(0, |e| e.seq);
        if on_disk.format == FORMAT && last >= on_disk.next_seq {
            return Err(garbled(format!(
                "event {last} is not below next_seq {}",
                on_disk.next_seq
            )));
        }
        Ok(Self {
            path: path.to_owned(),
            lock,
            epoch: if on_disk.epoch.is_empty() {
                new_epoch()
            } else {
                on_disk.epoch
            },
            next_seq: on_disk.next_seq.max(1),
            vms,
            events,
            starts: on_disk.starts.into(),
        })
    }

    /// This journal's epoch (`Hello.journal_epoch`).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Gives `event` the next sequence number and keeps it until it is acknowledged; written
    /// before this returns.
    pub fn push_event(&mut self, mut event: VmEvent) -> Result<u64, JournalError> {
        event.seq = self.next_seq;
        self.next_seq += 1;
        let seq = event.seq;
        self.events.push_back(event);
        self.save()?;
        Ok(seq)
    }

    /// The first unacknowledged event numbered above `after`.
    pub fn event_after(&self, after: u64) -> Option<VmEvent> {
        self.events.iter().find(|e| e.seq > after).cloned()
    }

    /// Events not acknowledged yet.
    pub fn unacknowledged(&self) -> usize {
        self.events.len()
    }

    /// The server stored every event up to `seq`: forget them. Returns how many were dropped.
    pub fn acknowledge(&mut self, seq: u64) -> Result<usize, JournalError> {
        let before = self.events.len();
        self.events.retain(|e| e.seq > seq);
        let dropped = before - self.events.len();
        if dropped > 0 {
            self.save()?;
        }
        Ok(dropped)
    }

    /// Records `start_id` as seen; `false` when it was seen before (a resent `StartVm`).
    pub fn first_start(&mut self, start_id: &str) -> Result<bool, JournalError> {
        if self.starts.iter().any(|s| s == start_id) {
            return Ok(false);
        }
        self.starts.push_back(start_id.to_owned());
        while self.starts.len() > STARTS_KEPT {
            self.starts.pop_front();
        }
        self.save()?;
        Ok(true)
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
        if self.lock.is_none() {
            return Err(JournalError::Write {
                path: self.path.clone(),
                source: std::io::Error::other("this copy was read to look at, not to write"),
            });
        }
        let on_disk = OnDisk {
            format: FORMAT.to_owned(),
            epoch: self.epoch.clone(),
            next_seq: self.next_seq,
            events: self.events.iter().map(OnDiskEvent::from).collect(),
            starts: self.starts.iter().cloned().collect(),
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

        let reloaded = Journal::inspect(&path).unwrap();
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
        let mut names = names;
        names.sort();
        assert_eq!(
            names,
            vec![
                std::ffi::OsString::from("journal.json"),
                std::ffi::OsString::from("journal.json.lock")
            ]
        );
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
            assert_eq!(Journal::inspect(&path).unwrap().vms().len() as u64, n + 1);
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
    fn a_journal_in_use_by_another_agent_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        let first = Journal::load(&path).unwrap();
        let err = Journal::load(&path).unwrap_err();
        assert!(matches!(err, JournalError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("journal.json"), "{err}");
        let mut look = Journal::inspect(&path).unwrap();
        assert!(
            look.set(&vm(1), "s", VmPhase::Created).is_err(),
            "an inspected copy wrote"
        );
        drop(first);
        Journal::load(&path).unwrap();
    }

    #[test]
    fn an_unwritable_journal_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("journal.json");
        let err = Journal::load(&path).unwrap_err();
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }
}
