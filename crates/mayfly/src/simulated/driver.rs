//! `SimulatedDriver`: a `VmDriver` that runs **no VM**. It follows the driver's protocol with
//! configured delays so that an agent reports `STARTED`, `BOOTED`, `RUNNER_STARTED`,
//! `RUNNER_EXITED` and `DESTROYED` as it would for a real VM, and on hand-over plays the guest
//! and its runner against the GitHub simulator ([`super::runner`]), so jobs really complete.
//! For load on the control plane only: it serves the image [`SIMULATED_IMAGE`] alone (a real
//! profile's image digest never matches it), and it says what it is through
//! [`VmDriver::simulated`], so its agent says so on every line it logs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mayfly_core::{DestroyStep, DestructionRecord, VmId};
use mayfly_vm::{GuestConfig, GuestEvent, GuestExit, VmDriver, VmError, VmInfo, VmSpec};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{SimulatedTimings, DRIVER_LABEL, SIMULATED_IMAGE};

/// What a simulated guest reports as its kernel (the `BOOTED` event's detail).
const SIMULATED_KERNEL: &str = "none: simulated driver, no VM ran";

/// The simulated guest's task; it ends with its VM (dropping it aborts the task).
#[derive(Debug)]
struct GuestTask(tokio::task::JoinHandle<()>);

impl Drop for GuestTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One simulated VM: nothing but this record exists of it.
#[derive(Debug, Default)]
struct SimulatedVm {
    started: bool,
    /// The simulated guest's reports, from the hand-over on.
    events: Option<mpsc::Receiver<GuestEvent>>,
    guest: Option<GuestTask>,
    /// How the guest ended, when it ended while waiting for the runner to start.
    ended: Option<GuestExit>,
}

/// The load driver. Each VM is a map entry and, after the hand-over, one task.
#[derive(Debug)]
pub struct SimulatedDriver {
    timings: SimulatedTimings,
    /// The root to trust when the simulator serves HTTPS with a private CA.
    sim_ca_pem: Option<String>,
    vms: Mutex<HashMap<VmId, Arc<tokio::sync::Mutex<SimulatedVm>>>>,
}

impl SimulatedDriver {
    pub fn new(timings: SimulatedTimings, sim_ca_pem: Option<String>) -> Self {
        Self {
            timings,
            sim_ca_pem,
            vms: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, vm: &VmId) -> Result<Arc<tokio::sync::Mutex<SimulatedVm>>, VmError> {
        self.vms
            .lock()
            .ok()
            .and_then(|vms| vms.get(vm).cloned())
            .ok_or_else(|| VmError::Unknown(vm.clone()))
    }
}

/// The next report of the guest that `wanted` accepts (others are skipped, as the QEMU driver
/// skips them); `Vanished` when the guest task is gone without a word.
async fn next_report(
    events: &mut mpsc::Receiver<GuestEvent>,
    wanted: impl Fn(&GuestEvent) -> bool,
) -> Option<GuestEvent> {
    loop {
        let event = events.recv().await?;
        if wanted(&event) {
            return Some(event);
        }
    }
}

#[async_trait]
impl VmDriver for SimulatedDriver {
    async fn create(&self, spec: &VmSpec) -> Result<VmId, VmError> {
        let vm = VmId::from_random(rand::random());
        if spec.image != SIMULATED_IMAGE {
            return Err(VmError::Failed {
                vm,
                what: format!(
                    "the simulated driver runs no VM: it serves only the image \
                     `{SIMULATED_IMAGE}`, not `{}`",
                    spec.image
                ),
            });
        }
        tokio::time::sleep(self.timings.create).await;
        if let Ok(mut vms) = self.vms.lock() {
            vms.insert(vm.clone(), Arc::default());
        }
        Ok(vm)
    }

    async fn start(&self, vm: &VmId) -> Result<(), VmError> {
        self.entry(vm)?.lock().await.started = true;
        Ok(())
    }

    async fn wait_ready(&self, vm: &VmId, timeout: Duration) -> Result<String, VmError> {
        let entry = self.entry(vm)?;
        if !entry.lock().await.started {
            return Err(VmError::WrongState(vm.clone()));
        }
        if self.timings.boot > timeout {
            tokio::time::sleep(timeout).await;
            return Err(VmError::BootTimeout {
                vm: vm.clone(),
                timeout,
                tail: String::new(),
            });
        }
        tokio::time::sleep(self.timings.boot).await;
        Ok(SIMULATED_KERNEL.to_owned())
    }

    async fn hand_over(&self, vm: &VmId, config: GuestConfig) -> Result<(), VmError> {
        let entry = self.entry(vm)?;
        let mut entry = entry.lock().await;
        if !entry.started || entry.events.is_some() {
            return Err(VmError::WrongState(vm.clone()));
        }
        let (tx, rx) = mpsc::channel(4);
        let guest = super::runner::simulated_guest(
            config.jitconfig,
            self.sim_ca_pem.clone(),
            self.timings.clone(),
            tx,
        );
        entry.events = Some(rx);
        entry.guest = Some(GuestTask(tokio::spawn(guest.in_current_span())));
        Ok(())
    }

    async fn wait_runner_started(&self, vm: &VmId, timeout: Duration) -> Result<bool, VmError> {
        let entry = self.entry(vm)?;
        let mut entry = entry.lock().await;
        let entry = &mut *entry;
        let Some(events) = entry.events.as_mut() else {
            return Err(VmError::WrongState(vm.clone()));
        };
        let report = tokio::time::timeout(
            timeout,
            next_report(events, |e| !matches!(e, GuestEvent::Ready { .. })),
        )
        .await
        .map_err(|_| VmError::RunTimeout {
            vm: vm.clone(),
            timeout,
        })?;
        match report {
            Some(GuestEvent::Started) => Ok(true),
            Some(GuestEvent::Exited { code }) => {
                entry.ended = Some(GuestExit::Exited { code });
                Ok(false)
            }
            Some(GuestEvent::Error { message }) => {
                entry.ended = Some(GuestExit::GuestError(message));
                Ok(false)
            }
            Some(GuestEvent::Ready { .. }) | None => {
                entry.ended = Some(GuestExit::Vanished);
                Ok(false)
            }
        }
    }

    async fn wait_exit(&self, vm: &VmId, timeout: Duration) -> Result<GuestExit, VmError> {
        let entry = self.entry(vm)?;
        let mut entry = entry.lock().await;
        if let Some(ended) = entry.ended.take() {
            return Ok(ended);
        }
        let Some(events) = entry.events.as_mut() else {
            return Ok(GuestExit::Vanished);
        };
        let report = tokio::time::timeout(
            timeout,
            next_report(events, |e| {
                matches!(e, GuestEvent::Exited { .. } | GuestEvent::Error { .. })
            }),
        )
        .await
        .map_err(|_| VmError::RunTimeout {
            vm: vm.clone(),
            timeout,
        })?;
        Ok(match report {
            Some(GuestEvent::Exited { code }) => GuestExit::Exited { code },
            Some(GuestEvent::Error { message }) => GuestExit::GuestError(message),
            _ => GuestExit::Vanished,
        })
    }

    async fn destroy(&self, vm: &VmId, reason: &str) -> DestructionRecord {
        let started_at = Utc::now();
        let entry = self.vms.lock().ok().and_then(|mut vms| vms.remove(vm));
        let what = match entry {
            Some(entry) => {
                // The guest task (if any) is aborted here: the "VM" is off.
                drop(entry.lock().await.guest.take());
                tokio::time::sleep(self.timings.destroy).await;
                "simulated VM removed (no process, disk or network existed)"
            }
            None => "nothing to remove: a simulated VM ends with its driver",
        };
        let finished_at = Utc::now();
        DestructionRecord {
            vm: vm.clone(),
            reason: reason.to_owned(),
            started_at,
            finished_at,
            steps: vec![DestroyStep {
                what: what.to_owned(),
                at: finished_at,
                error: None,
            }],
        }
    }

    async fn list(&self) -> Vec<VmInfo> {
        let vms: Vec<_> = self
            .vms
            .lock()
            .map(|vms| vms.iter().map(|(id, e)| (id.clone(), e.clone())).collect())
            .unwrap_or_default();
        let mut infos = Vec::with_capacity(vms.len());
        for (id, entry) in vms {
            // A VM someone is waiting on is running.
            let running = entry
                .try_lock()
                .map_or(true, |e| e.started && e.ended.is_none());
            infos.push(VmInfo {
                id,
                image: SIMULATED_IMAGE.to_owned(),
                running,
            });
        }
        infos
    }

    async fn reap(&self) -> Vec<DestructionRecord> {
        // A simulated VM is a map entry and a task: nothing outlives the driver's process.
        Vec::new()
    }

    fn simulated(&self) -> Option<&'static str> {
        Some(DRIVER_LABEL)
    }
}
