//! The `VmDriver` trait: how the agent makes, runs and destroys one VM per job. QEMU implements
//! it today ([`crate::qemu::QemuDriver`]); Virtualization.framework and Firecracker are further
//! drivers; the `mayfly` binary adds a load driver that runs no VM at all (`simulated`, see
//! [`VmDriver::simulated`]). Lifecycle: `create` → `start` → `wait_ready` → `hand_over` →
//! `wait_exit` → `destroy`. `destroy` is always allowed and always leaves nothing, whatever
//! state the VM is in.

use std::time::Duration;

use async_trait::async_trait;
use mayfly_core::{DestructionRecord, VmId};

use crate::channel::GuestConfig;

/// What a VM is made from.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The image's digest in the driver's image store.
    pub image: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Size of the VM's scratch disk (sparse; the guest encrypts it): the job's writable space.
    pub disk_gib: u32,
}

/// A VM the driver knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub id: VmId,
    pub image: String,
    /// Whether its QEMU process is alive.
    pub running: bool,
}

/// How the guest's runner ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The runner exited with this code (-1: killed by a signal) and the guest powered off.
    Exited { code: i32 },
    /// The guest reported an error.
    GuestError(String),
    /// The VM stopped without saying how the runner ended.
    Vanished,
}

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no VM {0} is known to this driver")]
    Unknown(VmId),
    #[error("VM {vm}: {what}")]
    Failed { vm: VmId, what: String },
    #[error("VM {vm} did not report ready within {timeout:?}{tail}")]
    BootTimeout {
        vm: VmId,
        timeout: Duration,
        tail: String,
    },
    #[error("VM {vm} did not finish within {timeout:?}")]
    RunTimeout { vm: VmId, timeout: Duration },
    #[error("VM {0} is not in a state that allows this")]
    WrongState(VmId),
    #[error(transparent)]
    Setup(#[from] crate::qemu::SetupError),
}

/// Makes, runs and destroys VMs.
#[async_trait]
pub trait VmDriver: Send + Sync + std::fmt::Debug {
    /// Prepares a VM (scratch disk, network, state directory) without starting it.
    async fn create(&self, spec: &VmSpec) -> Result<VmId, VmError>;
    /// Starts the VM's process.
    async fn start(&self, vm: &VmId) -> Result<(), VmError>;
    /// Waits until the guest reports ready; returns its kernel version.
    async fn wait_ready(&self, vm: &VmId, timeout: Duration) -> Result<String, VmError>;
    /// Hands the runner config to the guest, once.
    async fn hand_over(&self, vm: &VmId, config: GuestConfig) -> Result<(), VmError>;
    /// Waits until the guest says the runner process started. `Ok(false)` when the guest
    /// ended first (the ending is kept for `wait_exit`).
    async fn wait_runner_started(&self, vm: &VmId, timeout: Duration) -> Result<bool, VmError>;
    /// Waits until the runner ends and the guest powers off.
    async fn wait_exit(&self, vm: &VmId, timeout: Duration) -> Result<GuestExit, VmError>;
    /// Stops the VM (gracefully, then by force) and removes everything it had.
    async fn destroy(&self, vm: &VmId, reason: &str) -> DestructionRecord;
    /// The steps of making and starting `vm` so far, each timed (for QEMU: state directory,
    /// scratch disk, network namespace, passt, qemu spawned, config channel open). Empty for a
    /// driver that does not break its work down.
    async fn start_steps(&self, vm: &VmId) -> Vec<mayfly_core::StartStep> {
        let _ = vm;
        Vec::new()
    }
    /// The VMs this driver owns.
    async fn list(&self) -> Vec<VmInfo>;
    /// Destroys VMs left behind by a crashed owner.
    async fn reap(&self) -> Vec<DestructionRecord>;
    /// `Some(what it is)` for a driver that runs no VM at all (a load driver for the control
    /// plane, e.g. `simulated (no VMs)`); an agent with such a driver says so in every line it
    /// logs. Drivers of real VMs keep the default, `None`.
    fn simulated(&self) -> Option<&'static str> {
        None
    }
}
