//! mayfly's domain: identifiers, the job lifecycle and label matching. Pure: no I/O, no async,
//! time and randomness come in as parameters.
#![forbid(unsafe_code)]

pub mod ids;
pub mod job;

pub use ids::{DeliveryId, InstallationId, JobId, RepoFullName, RepoId, RunId};
pub use job::{JobStatus, Transition};
pub mod clock;

pub use clock::{Clock, SystemClock};
pub mod event;

pub use event::{InstallationChange, InstallationChangeKind, IntakeEvent, JobEvent};
pub mod vm;

pub use vm::{DestroyStep, DestructionRecord, StartStep, VmId};
pub mod phases;
pub use phases::{Ordered, Phase, PhaseTimes, Stretch, STRETCHES};
pub mod profile;

pub use profile::{match_profile, place, HostSlots, Profile, WARM_MAX_AGE_LIMIT_SECS};
