//! The server ⇄ agent protocol (`proto/agent.proto`, package `mayfly.agent.v1`): the agent
//! dials the server and keeps one `Session` stream open; the server decides, the agent executes
//! and reports. The generated types live in [`v1`]; this module adds the version constant, the
//! VM phases the protocol names, the destruction record's JSON field, and a Debug for `StartVm`
//! and `AssignVm`
//! that never print the JIT config.
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use mayfly_core::DestructionRecord;

/// The generated protocol types, client (`agent_service_client`) and server
/// (`agent_service_server`).
#[allow(
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod v1 {
    tonic::include_proto!("mayfly.agent.v1");
}

pub use v1::agent_message::Body as AgentBody;
pub use v1::server_message::Body as ServerBody;
pub use v1::vm_event::Kind as EventKind;

/// The protocol version this build speaks (`Hello.protocol_version`, `Welcome.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 2;

/// Why a protocol value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("`{0}` is not a VM phase; expected created, booted, running or exited")]
    UnknownPhase(String),
    #[error("the destruction record is not valid JSON of a DestructionRecord")]
    BadRecord(#[source] serde_json::Error),
}

impl fmt::Debug for v1::StartVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartVm")
            .field("start_id", &self.start_id)
            .field("image", &self.image)
            .field("vcpus", &self.vcpus)
            .field("memory_mib", &self.memory_mib)
            .field("jitconfig", &"[redacted]")
            .field("run", &self.run)
            .field("boot_timeout_secs", &self.boot_timeout_secs)
            .field("max_runtime_secs", &self.max_runtime_secs)
            .field("disk_gib", &self.disk_gib)
            .field("warm", &self.warm)
            .finish()
    }
}

impl fmt::Debug for v1::AssignVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssignVm")
            .field("vm_id", &self.vm_id)
            .field("start_id", &self.start_id)
            .field("jitconfig", &"[redacted]")
            .field("run", &self.run)
            .finish()
    }
}

/// Where a VM is in its life, as `VmState.phase` names it. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VmPhase {
    /// Overlay, network and state directory made (QEMU may be starting).
    Created,
    /// The guest reported ready and has its config.
    Booted,
    /// The runner is running.
    Running,
    /// The runner exited; the VM is being destroyed.
    Exited,
}

impl VmPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Booted => "booted",
            Self::Running => "running",
            Self::Exited => "exited",
        }
    }
}

impl fmt::Display for VmPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmPhase {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "created" => Ok(Self::Created),
            "booted" => Ok(Self::Booted),
            "running" => Ok(Self::Running),
            "exited" => Ok(Self::Exited),
            other => Err(ProtoError::UnknownPhase(other.to_owned())),
        }
    }
}

/// A destruction record as `VmEvent.destruction_record_json` carries it.
pub fn record_to_json(record: &DestructionRecord) -> String {
    // A DestructionRecord is plain strings and timestamps: serialising it cannot fail, but a
    // protocol field is no place to panic, so a failure becomes an empty object.
    serde_json::to_string(record).unwrap_or_else(|_| String::from("{}"))
}

/// The destruction record of a `DESTROYED` event.
pub fn record_from_json(json: &str) -> Result<DestructionRecord, ProtoError> {
    serde_json::from_str(json).map_err(ProtoError::BadRecord)
}

impl v1::VmEvent {
    /// The destruction record this event carries, if any.
    pub fn destruction_record(&self) -> Result<Option<DestructionRecord>, ProtoError> {
        if self.destruction_record_json.is_empty() {
            return Ok(None);
        }
        record_from_json(&self.destruction_record_json).map(Some)
    }

    /// The event's kind; unknown numbers (a newer peer) read as `KIND_UNSPECIFIED`.
    pub fn event_kind(&self) -> EventKind {
        EventKind::try_from(self.kind).unwrap_or(EventKind::Unspecified)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use chrono::Utc;
    use mayfly_core::{DestroyStep, VmId};
    use prost::Message;

    #[test]
    fn start_vm_debug_never_shows_the_jit_config() {
        let start = v1::StartVm {
            start_id: "start-1".into(),
            image: "abc".into(),
            jitconfig: "eyJzZWNyZXQiOiJ0b3Agc2VjcmV0In0=".into(),
            run: "/home/runner/actions-runner/run.sh".into(),
            ..Default::default()
        };
        let message = v1::ServerMessage {
            body: Some(ServerBody::StartVm(start.clone())),
        };
        for printed in [
            format!("{start:?}"),
            format!("{start:#?}"),
            format!("{message:?}"),
        ] {
            assert!(!printed.contains("eyJzZWNyZXQi"), "{printed}");
            assert!(printed.contains("[redacted]"), "{printed}");
            assert!(printed.contains("start-1"), "{printed}");
        }
        // The wire still carries it: redaction is for logs only.
        let decoded = v1::StartVm::decode(start.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.jitconfig, start.jitconfig);

        let assign = v1::AssignVm {
            start_id: "start-2".into(),
            jitconfig: "eyJzZWNyZXQiOiJ0b3Agc2VjcmV0In0=".into(),
            ..Default::default()
        };
        let message = v1::ServerMessage {
            body: Some(ServerBody::AssignVm(assign.clone())),
        };
        for printed in [format!("{assign:?}"), format!("{message:#?}")] {
            assert!(!printed.contains("eyJzZWNyZXQi"), "{printed}");
            assert!(printed.contains("[redacted]"), "{printed}");
            assert!(printed.contains("start-2"), "{printed}");
        }
    }

    #[test]
    fn destruction_records_round_trip_through_the_event() {
        let now = Utc::now();
        let record = DestructionRecord {
            vm: VmId::from_random(7),
            reason: "job finished".into(),
            started_at: now,
            finished_at: now,
            steps: vec![DestroyStep {
                what: "overlay removed".into(),
                at: now,
                error: None,
            }],
        };
        let event = v1::VmEvent {
            kind: EventKind::Destroyed as i32,
            destruction_record_json: record_to_json(&record),
            ..Default::default()
        };
        assert_eq!(event.event_kind(), EventKind::Destroyed);
        assert_eq!(event.destruction_record().unwrap(), Some(record));
        let empty = v1::VmEvent::default();
        assert_eq!(empty.destruction_record().unwrap(), None);
        let garbled = v1::VmEvent {
            destruction_record_json: "{not json".into(),
            ..Default::default()
        };
        assert!(garbled.destruction_record().is_err());
    }

    #[test]
    fn phases_read_back_as_written_and_junk_is_named() {
        for phase in [
            VmPhase::Created,
            VmPhase::Booted,
            VmPhase::Running,
            VmPhase::Exited,
        ] {
            assert_eq!(phase.as_str().parse::<VmPhase>().unwrap(), phase);
        }
        assert!(VmPhase::Created < VmPhase::Exited);
        let err = "sleeping".parse::<VmPhase>().unwrap_err();
        assert!(err.to_string().contains("sleeping"), "{err}");
    }
}
