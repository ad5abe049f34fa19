//! A `VmDriver` without VMs, for testing the agent's protocol and bookkeeping fast: guests
//! "boot" at once, runners exit when the test says so, and every call
//! that matters is recorded (what was handed over, what was destroyed and why).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mayfly_core::{DestroyStep, DestructionRecord, VmId};
use mayfly_vm::{GuestConfig, GuestExit, VmDriver, VmError, VmInfo, VmSpec};
use secrecy::ExposeSecret;

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Live VMs and the exit code their runner will report, once set.
    vms: HashMap<VmId, Option<i32>>,
    handed_over: Vec<(VmId, String)>,
    destroyed: Vec<(VmId, String)>,
    orphans: Vec<VmId>,
    /// VMs made from this image never start their runner.
    hold_image: Option<String>,
    held: std::collections::HashSet<VmId>,
    /// VMs whose QEMU process died (`list` says so).
    dead: std::collections::HashSet<VmId>,
}

/// The fake driver.
#[derive(Debug, Default)]
pub struct FakeDriver {
    inner: Mutex<Inner>,
    fail_create: bool,
    /// What `VmDriver::simulated` says.
    simulated: Option<&'static str>,
}

impl FakeDriver {
    /// A driver whose every `create` fails.
    pub fn failing_create() -> Self {
        Self {
            fail_create: true,
            ..Self::default()
        }
    }

    /// A driver that calls itself a load driver running no VM, as `what`.
    pub fn simulated(what: &'static str) -> Self {
        Self {
            simulated: Some(what),
            ..Self::default()
        }
    }

    /// The runner of `vm` exits with `code`.
    pub fn finish(&self, vm: &VmId, code: i32) {
        if let Some(exit) = self.inner.lock().unwrap().vms.get_mut(vm) {
            *exit = Some(code);
        }
    }

    /// VMs made from `image` boot but never start their runner.
    pub fn hold_runner_of(&self, image: &str) {
        self.inner.lock().unwrap().hold_image = Some(image.to_owned());
    }

    /// VMs `reap` will report as left by a crashed owner.
    pub fn leave_orphan(&self, vm: VmId) {
        self.inner.lock().unwrap().orphans.push(vm);
    }

    /// The QEMU process of `vm` dies.
    pub fn kill(&self, vm: &VmId) {
        self.inner.lock().unwrap().dead.insert(vm.clone());
    }

    pub fn live(&self) -> Vec<VmId> {
        self.inner.lock().unwrap().vms.keys().cloned().collect()
    }

    pub fn handed_over(&self) -> Vec<(VmId, String)> {
        self.inner.lock().unwrap().handed_over.clone()
    }

    pub fn destroyed(&self) -> Vec<(VmId, String)> {
        self.inner.lock().unwrap().destroyed.clone()
    }

    fn record(vm: &VmId, reason: &str, existed: bool) -> DestructionRecord {
        let now = Utc::now();
        DestructionRecord {
            vm: vm.clone(),
            reason: reason.to_owned(),
            started_at: now,
            finished_at: now,
            steps: vec![DestroyStep {
                what: "fake VM removed".into(),
                at: now,
                error: (!existed).then(|| "no such VM".to_owned()),
            }],
        }
    }
}

#[async_trait]
impl VmDriver for FakeDriver {
    async fn create(&self, spec: &VmSpec) -> Result<VmId, VmError> {
        let mut inner = self.inner.lock().unwrap();
        inner.next += 1;
        let vm = VmId::from_random(0xfa4e_0000_0000 + inner.next);
        if self.fail_create {
            return Err(VmError::Failed {
                vm,
                what: "the fake driver refuses to create VMs".into(),
            });
        }
        inner.vms.insert(vm.clone(), None);
        if inner.hold_image.as_deref() == Some(spec.image.as_str()) {
            inner.held.insert(vm.clone());
        }
        Ok(vm)
    }

    async fn start(&self, vm: &VmId) -> Result<(), VmError> {
        if self.inner.lock().unwrap().vms.contains_key(vm) {
            Ok(())
        } else {
            Err(VmError::Unknown(vm.clone()))
        }
    }

    async fn wait_ready(&self, _vm: &VmId, _timeout: Duration) -> Result<String, VmError> {
        Ok("6.1.0-fake".into())
    }

    async fn hand_over(&self, vm: &VmId, config: GuestConfig) -> Result<(), VmError> {
        self.inner
            .lock()
            .unwrap()
            .handed_over
            .push((vm.clone(), config.jitconfig.expose_secret().to_owned()));
        Ok(())
    }

    async fn wait_runner_started(&self, vm: &VmId, _timeout: Duration) -> Result<bool, VmError> {
        // The fake's runner starts as soon as it has its config, unless it is held.
        if self.inner.lock().unwrap().held.contains(vm) {
            std::future::pending::<()>().await;
        }
        Ok(self.inner.lock().unwrap().vms.contains_key(vm))
    }

    async fn wait_exit(&self, vm: &VmId, timeout: Duration) -> Result<GuestExit, VmError> {
        let wait = async {
            loop {
                let state = self.inner.lock().unwrap().vms.get(vm).cloned();
                match state {
                    None => return GuestExit::Vanished,
                    Some(Some(code)) => return GuestExit::Exited { code },
                    Some(None) => {}
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| VmError::RunTimeout {
                vm: vm.clone(),
                timeout,
            })
    }

    async fn destroy(&self, vm: &VmId, reason: &str) -> DestructionRecord {
        let mut inner = self.inner.lock().unwrap();
        let existed = inner.vms.remove(vm).is_some();
        inner.destroyed.push((vm.clone(), reason.to_owned()));
        Self::record(vm, reason, existed)
    }

    async fn list(&self) -> Vec<VmInfo> {
        let inner = self.inner.lock().unwrap();
        inner
            .vms
            .keys()
            .map(|id| VmInfo {
                id: id.clone(),
                image: "fake".into(),
                running: !inner.dead.contains(id),
            })
            .collect()
    }

    async fn reap(&self) -> Vec<DestructionRecord> {
        let orphans = std::mem::take(&mut self.inner.lock().unwrap().orphans);
        orphans
            .iter()
            .map(|vm| Self::record(vm, "reaped: its owner process is gone", true))
            .collect()
    }

    fn simulated(&self) -> Option<&'static str> {
        self.simulated
    }
}
