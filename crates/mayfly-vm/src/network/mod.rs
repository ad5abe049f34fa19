//! Per-VM network isolation: each VM gets a network namespace `mayfly-vm-<index>` joined to the
//! host by a veth `mfv<index>`, with passt (`--no-map-gw`, as `nobody`) inside it for QEMU to
//! connect to. Host nftables (table `inet mayfly`) let a VM out to the internet and nowhere
//! else: no host address, no other VM, no private range, no metadata service, no IPv6.
//! A guest is assumed to have root. See DESIGN.md §5 for what was tried and what held.
//! Each namespace's creator is recorded ([`owner`]), so the reaper ([`reap_orphans`]) can tell
//! a live owner's network from an orphan, whatever state root either lives under.

mod addressing;
mod exec;
mod host_rules;
mod orphans;
pub mod owner;
mod passt;
mod standin;
mod vm;

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use addressing::{MAX_INDEX, MIN_INDEX, NETNS_PREFIX, VETH_PREFIX, VM_SUPERNET};
pub use host_rules::{remove_host_rules, HOST_TABLE, NETNS_TABLE};
pub use orphans::{reap_orphans, ReapedNetwork};
pub use standin::{InternetStandIn, STANDIN_HOST_VETH, STANDIN_NETNS};
pub use vm::{NetworkRecord, VmNetwork};

/// What the caller chooses about a VM's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// `MIN_INDEX..=MAX_INDEX`, unique among live VMs on this host; names and addresses follow.
    pub index: u32,
    /// A per-VM directory; passt's socket and pidfile go in `<runtime_dir>/passt`. The caller
    /// removes it after `destroy`. It must be reachable (searchable) by user `nobody`.
    pub runtime_dir: PathBuf,
}

/// One step of a teardown: what was done, whether it worked, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeardownStep {
    pub what: String,
    pub ok: bool,
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

impl TeardownStep {
    pub(crate) fn from_result(what: &str, result: Result<(), String>) -> Self {
        let (ok, error) = match result {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e)),
        };
        Self {
            what: what.to_owned(),
            ok,
            error,
            at: Utc::now(),
        }
    }
}

/// Why a VM network (or the stand-in) could not be made or inspected.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network index {index} is out of range: use {MIN_INDEX}..={MAX_INDEX}")]
    InvalidIndex { index: u32 },
    #[error("VM networks need root (CAP_NET_ADMIN and CAP_SYS_ADMIN): run the agent as root")]
    NotRoot,
    #[error("network index {index} is in use: {what} already exists (pick a free index, or run the reaper to remove leftovers)")]
    InUse { index: u32, what: String },
    #[error("could not run `{program}`: install it (apt-get install iproute2 nftables passt)")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}: {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("`{command}` did not finish within {after:?}")]
    Timeout {
        command: String,
        after: std::time::Duration,
    },
    #[error("could not {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not parse the output of {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("passt: {detail}")]
    Passt { detail: String },
}
