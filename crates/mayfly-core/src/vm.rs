//! What the control plane knows about a VM: its id and, once it is gone, the record of its
//! destruction (every step, when, and whether it worked). The record is job metadata.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A VM's id: `vm-` and 16 lowercase hex digits, made from randomness the caller supplies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmId(String);

/// Why a VM id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a VM id is `vm-` followed by 16 lowercase hex digits")]
pub struct BadVmId;

impl VmId {
    pub fn from_random(bits: u64) -> Self {
        Self(format!("vm-{bits:016x}"))
    }

    pub fn parse(raw: &str) -> Result<Self, BadVmId> {
        let ok = raw.strip_prefix("vm-").is_some_and(|hex| {
            hex.len() == 16
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(BadVmId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VmId {
    type Error = BadVmId;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<VmId> for String {
    fn from(value: VmId) -> Self {
        value.0
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One step of starting a VM, as the server and its agent measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartStep {
    /// What was done, e.g. `jit_config` (GitHub registered the runner and gave its config).
    pub step: String,
    /// How long it took, in milliseconds.
    pub millis: f64,
}

/// One step of tearing a VM down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestroyStep {
    /// What was removed or stopped, e.g. `qemu stopped (SIGTERM)`, `overlay removed`.
    pub what: String,
    pub at: DateTime<Utc>,
    /// `None` when the step worked; the reason otherwise.
    pub error: Option<String>,
}

/// How a VM was destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestructionRecord {
    pub vm: VmId,
    /// Why it was destroyed: `job finished`, `boot timeout`, `reaped: owner gone`, …
    pub reason: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub steps: Vec<DestroyStep>,
}

impl DestructionRecord {
    /// Whether every step worked.
    pub fn complete(&self) -> bool {
        self.steps.iter().all(|s| s.error.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_ids_round_trip_and_refuse_junk() {
        let id = VmId::from_random(0xdead_beef);
        assert_eq!(id.as_str(), "vm-00000000deadbeef");
        assert_eq!(VmId::parse(id.as_str()), Ok(id));
        for bad in [
            "vm-",
            "vm-XYZ",
            "../vm-00000000deadbeef",
            "vm-00000000deadbeef0",
            "vm-00000000DEADBEEF",
        ] {
            assert_eq!(VmId::parse(bad), Err(BadVmId), "{bad}");
        }
    }
}
