//! Simulated VMs, for load on the control plane: real VMs cost seconds each, so a bench of
//! hundreds of jobs runs agents whose driver runs **no VM** ([`SimulatedDriver`]) and only
//! follows the protocol with configured delays, its "guest" acting as the runner against the
//! GitHub simulator. Many such agents run in one process ([`run_simulated_agents`]), each with
//! its own id, journal, slots and (with mTLS) enrolment ([`enrol_simulated_agents`]).
//!
//! Honesty is the invariant: `mayfly agent` refuses this driver without
//! `--allow-simulated-vms`, nothing selects it by default, every line such an agent logs says
//! `simulated (no VMs)`, and it offers the server the image [`SIMULATED_IMAGE`] only, which no
//! real profile names.

mod agents;
mod driver;
mod runner;
mod stack;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use agents::{
    enrol_simulated_agents, run_simulated_agents, SimulatedAgent, SimulatedAgentsConfig,
};
pub use driver::SimulatedDriver;
#[cfg(test)]
use runner::JOB_OUTPUT;
pub use stack::{peak_rss_mib, simulated_profile, SimulatedStack};

/// What the simulated driver calls itself ([`mayfly_vm::VmDriver::simulated`]): in every log line
/// of its agent.
pub const DRIVER_LABEL: &str = "simulated (no VMs)";
/// The one image a simulated agent offers (in `Hello`) and its driver accepts: not a digest, so
/// no profile of real VMs is ever placed on it. A bench's profile names this image.
pub const SIMULATED_IMAGE: &str = "simulated-no-vm";

/// How long each step of a simulated VM's life takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedTimings {
    /// `create` (a real driver makes the state directory, scratch disk and network here).
    pub create: Duration,
    /// `start` → the guest says ready (`BOOTED` follows the hand-over).
    pub boot: Duration,
    /// Hand-over → the runner process started (`RUNNER_STARTED`).
    pub runner_start: Duration,
    /// The job taken → the job completed at the simulator (then `RUNNER_EXITED`).
    pub job: Duration,
    /// `destroy`.
    pub destroy: Duration,
    /// Between the runner's polls for its job, and how long it polls before giving up.
    pub poll: Duration,
    pub acquire_for: Duration,
    /// Between renewals of the job's lock while it runs.
    pub renew: Duration,
}

impl Default for SimulatedTimings {
    fn default() -> Self {
        Self {
            create: Duration::from_millis(20),
            boot: Duration::from_millis(1000),
            runner_start: Duration::from_millis(200),
            job: Duration::from_millis(2000),
            destroy: Duration::from_millis(20),
            poll: Duration::from_millis(500),
            acquire_for: Duration::from_secs(120),
            renew: Duration::from_secs(5),
        }
    }
}
