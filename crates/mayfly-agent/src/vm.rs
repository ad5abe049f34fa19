//! One VM's life on the agent, as a task: create → start (STARTED) → wait for the guest →
//! [a warm pool VM: WARM, then wait for its one `AssignVm`] → hand the runner its config
//! (BOOTED) → wait for the runner to exit (RUNNER_EXITED) → destroy (DESTROYED). Any failure reports FAILED with the reason, then destroys. A `DestroyVm`, the
//! agent's shutdown or the max runtime stops the waiting at once; the task itself then destroys
//! the VM, so every VM is destroyed, and reported DESTROYED, exactly once.
//!
//! The JIT config is a `SecretString` from the moment it leaves the protocol message; it goes to
//! the driver once and is never logged or journaled.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mayfly_core::{StartStep, VmId};
use mayfly_proto::{EventKind, VmPhase};
use mayfly_vm::{GuestConfig, GuestExit, VmDriver, VmError, VmSpec};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::journal::Journal;
use crate::outbox::{self, Outbox};

/// What the VM task needs to start a VM (decoded from `StartVm`).
#[derive(Debug)]
pub struct StartRequest {
    pub start_id: String,
    pub spec: VmSpec,
    /// The job's config now, or `None` for a warm pool VM (it comes with `AssignVm`).
    pub assignment: Option<Assignment>,
    pub boot_timeout: Duration,
    /// Counted from the hand-over.
    pub max_runtime: Duration,
}

/// A job's runner config for a VM.
#[derive(Debug)]
pub struct Assignment {
    pub jitconfig: SecretString,
    pub run: String,
    /// When the message that carried it arrived.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// How often a warm VM waiting for its job checks that its QEMU process is alive.
const WARM_CHECK: Duration = Duration::from_secs(1);

/// A running VM task, as the rest of the agent sees it.
#[derive(Debug, Default)]
pub struct VmHandle {
    vm: Mutex<Option<VmId>>,
    stop: CancellationToken,
    stop_reason: Mutex<Option<String>>,
    /// The guest said the runner started (it may have a job from then on).
    runner_started: std::sync::atomic::AtomicBool,
    /// A warm VM's way to its one assignment: taken by the first `assign`.
    assign: Mutex<Option<tokio::sync::oneshot::Sender<Assignment>>>,
}

impl VmHandle {
    pub fn vm(&self) -> Option<VmId> {
        self.vm.lock().ok().and_then(|v| v.clone())
    }

    /// Asks the task to destroy its VM now, for `reason`; the first reason given wins.
    pub fn stop(&self, reason: &str) {
        if let Ok(mut slot) = self.stop_reason.lock() {
            slot.get_or_insert_with(|| reason.to_owned());
        }
        self.stop.cancel();
    }

    /// Gives a warm VM waiting for its job that job's config. Refused (the config dropped) for
    /// a VM that is not warm or was assigned before: no VM gets a second job.
    pub fn assign(&self, assignment: Assignment) -> Result<(), &'static str> {
        let sender = self
            .assign
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .ok_or("the VM is not a warm VM waiting for its job")?;
        sender
            .send(assignment)
            .map_err(|_| "the VM stopped waiting for its job")
    }

    fn stop_reason(&self) -> String {
        self.stop_reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| String::from("stopped by the agent"))
    }
}

/// The agent's VM tasks by start id, and the slots they fill.
#[derive(Debug)]
pub struct VmTable {
    slots: u32,
    handles: Mutex<HashMap<String, Arc<VmHandle>>>,
}

impl VmTable {
    pub fn new(slots: u32) -> Self {
        Self {
            slots,
            handles: Mutex::new(HashMap::new()),
        }
    }

    pub fn free_slots(&self) -> u32 {
        let used = self.handles.lock().map(|h| h.len()).unwrap_or(0);
        self.slots
            .saturating_sub(u32::try_from(used).unwrap_or(u32::MAX))
    }

    /// Takes a slot for `start_id`; `None` when every slot is taken or the id is already used.
    pub fn claim(&self, start_id: &str) -> Option<Arc<VmHandle>> {
        let mut handles = self.handles.lock().ok()?;
        if handles.contains_key(start_id) || handles.len() >= self.slots as usize {
            return None;
        }
        let handle = Arc::new(VmHandle::default());
        handles.insert(start_id.to_owned(), handle.clone());
        Some(handle)
    }

    fn release(&self, start_id: &str) {
        if let Ok(mut handles) = self.handles.lock() {
            handles.remove(start_id);
        }
    }

    /// The task that runs `vm`, or the one for `start_id` (a VM not yet created has no id).
    pub fn find(&self, vm: &str, start_id: &str) -> Option<Arc<VmHandle>> {
        let handles = self.handles.lock().ok()?;
        handles
            .values()
            .find(|h| !vm.is_empty() && h.vm().is_some_and(|v| v.as_str() == vm))
            .or_else(|| handles.get(start_id).filter(|_| !start_id.is_empty()))
            .cloned()
    }

    /// Stops the tasks whose runner has not started (it cannot have a job); how many.
    pub fn stop_idle(&self, reason: &str) -> usize {
        let Ok(handles) = self.handles.lock() else {
            return 0;
        };
        let idle: Vec<_> = handles
            .values()
            .filter(|h| !h.runner_started.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        for handle in &idle {
            handle.stop(reason);
        }
        idle.len()
    }

    /// Stops every task (shutdown).
    pub fn stop_all(&self, reason: &str) {
        if let Ok(handles) = self.handles.lock() {
            for handle in handles.values() {
                handle.stop(reason);
            }
        }
    }
}

/// What the VM tasks share with the agent.
#[derive(Debug)]
pub struct VmContext {
    pub driver: Arc<dyn VmDriver>,
    pub journal: Arc<Mutex<Journal>>,
    pub outbox: Arc<Outbox>,
    pub table: Arc<VmTable>,
}

impl VmContext {
    fn journal_set(&self, vm: &VmId, start_id: &str, phase: VmPhase) {
        let result = match self.journal.lock() {
            Ok(mut journal) => journal.set(vm, start_id, phase),
            Err(_) => return,
        };
        if let Err(e) = result {
            tracing::error!(vm = %vm, start_id, error = %e, "could not record the VM's phase in the journal");
        }
    }

    fn journal_remove(&self, vm: &VmId) {
        let result = match self.journal.lock() {
            Ok(mut journal) => journal.remove(vm),
            Err(_) => return,
        };
        if let Err(e) = result {
            tracing::error!(vm = %vm, error = %e, "could not remove the destroyed VM from the journal");
        }
    }
}

/// How a VM's life ended, before its destruction.
enum Ending {
    /// Destroy for this reason; nothing more to report.
    Destroy(String),
    /// Report FAILED with this detail, then destroy for the reason.
    Failed { detail: String, reason: String },
}

/// Runs `future` unless the handle is stopped first (`None` then). Dropping the driver's future
/// releases the VM so that `destroy` can proceed.
async fn unless_stopped<F: Future>(handle: &VmHandle, future: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = handle.stop.cancelled() => None,
        out = future => Some(out),
    }
}

/// The whole life of one VM. Returns when it is destroyed and reported.
pub async fn run_vm(ctx: Arc<VmContext>, handle: Arc<VmHandle>, request: StartRequest) {
    let start_id = request.start_id.clone();
    // Creation is never cut short: a half-made VM is the driver's to clean up, and it does so
    // only when `create` runs to its end. A stop that came meanwhile is honoured right after.
    let creating = Instant::now();
    let vm = match ctx.driver.create(&request.spec).await {
        Err(e) => {
            tracing::warn!(start_id, error = %e, "could not create the VM");
            ctx.outbox.push(outbox::failed(
                None,
                &start_id,
                &format!("could not create the VM: {e}"),
            ));
            ctx.table.release(&start_id);
            return;
        }
        Ok(vm) => vm,
    };
    if let Ok(mut slot) = handle.vm.lock() {
        *slot = Some(vm.clone());
    }
    ctx.journal_set(&vm, &start_id, VmPhase::Created);
    tracing::info!(vm = %vm, start_id, phase = "created", "VM created");

    let mut steps = Steps::default();
    steps.push("vm created", creating);
    steps.add_drivers_parts(&ctx, &vm, "vm created").await;
    let ending = live(&ctx, &handle, &vm, request, steps).await;
    if let Ok(mut assign) = handle.assign.lock() {
        assign.take();
    }
    let reason = match ending {
        Ending::Destroy(reason) => reason,
        Ending::Failed { detail, reason } => {
            tracing::warn!(vm = %vm, start_id, detail, "VM failed");
            ctx.outbox
                .push(outbox::failed(Some(&vm), &start_id, &detail));
            reason
        }
    };
    let record = ctx.driver.destroy(&vm, &reason).await;
    tracing::info!(
        vm = %vm, start_id, phase = "destroyed", reason, complete = record.complete(),
        "VM destroyed"
    );
    ctx.outbox.push(outbox::destroyed(&start_id, &record));
    ctx.journal_remove(&vm);
    ctx.table.release(&start_id);
}

/// From a created VM to the moment it must be destroyed.
async fn live(
    ctx: &VmContext,
    handle: &VmHandle,
    vm: &VmId,
    request: StartRequest,
    mut steps: Steps,
) -> Ending {
    let start_id = request.start_id.as_str();
    let stopped = || Ending::Destroy(handle.stop_reason());
    if handle.stop.is_cancelled() {
        return stopped();
    }
    let starting = Instant::now();
    match unless_stopped(handle, ctx.driver.start(vm)).await {
        None => return stopped(),
        Some(Err(e)) => return failed(format!("QEMU did not start: {e}"), "start failed"),
        Some(Ok(())) => {}
    }
    steps.push("vm process started", starting);
    steps.add_drivers_parts(ctx, vm, "vm process started").await;
    ctx.outbox
        .push(outbox::event(Some(vm), start_id, EventKind::Started));
    tracing::info!(vm = %vm, start_id, phase = "started", "VM started");

    let booting = Instant::now();
    let kernel = match unless_stopped(handle, ctx.driver.wait_ready(vm, request.boot_timeout)).await
    {
        None => return stopped(),
        Some(Err(e @ VmError::BootTimeout { .. })) => return failed(e.to_string(), "boot timeout"),
        Some(Err(e)) => return failed(format!("the guest did not boot: {e}"), "boot failed"),
        Some(Ok(kernel)) => kernel,
    };
    steps.push("guest ready", booting);
    let assignment = match request.assignment {
        Some(assignment) => assignment,
        None => match wait_for_job(ctx, handle, vm, start_id, &kernel).await {
            Ok(assignment) => assignment,
            Err(ending) => return ending,
        },
    };
    let config_received = assignment.received_at;
    let config = GuestConfig {
        jitconfig: assignment.jitconfig,
        run: assignment.run,
    };
    let handing = Instant::now();
    match unless_stopped(handle, ctx.driver.hand_over(vm, config)).await {
        None => return stopped(),
        Some(Err(e)) => {
            return failed(
                format!("could not hand the runner config to the guest: {e}"),
                "hand-over failed",
            )
        }
        Some(Ok(())) => {}
    }
    steps.push("config handed over", handing);
    ctx.journal_set(vm, start_id, VmPhase::Booted);
    ctx.outbox.push(mayfly_proto::v1::VmEvent {
        detail: kernel.clone(),
        ..outbox::event(Some(vm), start_id, EventKind::Booted)
    });
    tracing::info!(vm = %vm, start_id, phase = "booted", kernel, "guest booted; runner config handed over");

    // The guest says when the runner process started; a guest that ends first goes straight to
    // the exit below (the driver keeps how it ended).
    let runner = Instant::now();
    match unless_stopped(
        handle,
        ctx.driver.wait_runner_started(vm, request.boot_timeout),
    )
    .await
    {
        None => return stopped(),
        Some(Ok(true)) => {
            handle
                .runner_started
                .store(true, std::sync::atomic::Ordering::SeqCst);
            steps.push("runner started", runner);
            ctx.outbox.push(mayfly_proto::v1::VmEvent {
                start_steps_json: steps.to_json(),
                config_received_unix_ms: config_received.timestamp_millis(),
                ..outbox::event(Some(vm), start_id, EventKind::RunnerStarted)
            });
            tracing::info!(vm = %vm, start_id, phase = "runner started", "runner started");
        }
        Some(Ok(false)) => {}
        Some(Err(e)) => {
            return failed(
                format!("the runner did not start: {e}"),
                "runner start timeout",
            )
        }
    }
    let exit = match unless_stopped(handle, ctx.driver.wait_exit(vm, request.max_runtime)).await {
        None => return stopped(),
        Some(exit) => exit,
    };
    ctx.journal_set(vm, start_id, VmPhase::Exited);
    match exit {
        Ok(GuestExit::Exited { code }) => {
            ctx.outbox.push(mayfly_proto::v1::VmEvent {
                exit_code: code,
                ..outbox::event(Some(vm), start_id, EventKind::RunnerExited)
            });
            tracing::info!(vm = %vm, start_id, phase = "exited", code, "runner exited");
            Ending::Destroy(String::from("job finished"))
        }
        Ok(GuestExit::GuestError(message)) => {
            failed(format!("the guest reported: {message}"), "guest error")
        }
        Ok(GuestExit::Vanished) => failed(
            String::from("the VM stopped without saying how the runner ended"),
            "VM vanished",
        ),
        Err(VmError::RunTimeout { timeout, .. }) => failed(
            format!(
                "the runner had not exited after the max runtime of {}s",
                timeout.as_secs()
            ),
            "max runtime",
        ),
        Err(e) => failed(format!("waiting for the runner failed: {e}"), "run failed"),
    }
}

/// A warm VM, its guest ready: says WARM and waits for its one assignment, destroyed instead
/// when stopped (max age, image replaced, shutdown) or when its QEMU process dies meanwhile.
async fn wait_for_job(
    ctx: &VmContext,
    handle: &VmHandle,
    vm: &VmId,
    start_id: &str,
    kernel: &str,
) -> Result<Assignment, Ending> {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    if let Ok(mut assign) = handle.assign.lock() {
        *assign = Some(tx);
    }
    ctx.outbox.push(mayfly_proto::v1::VmEvent {
        detail: kernel.to_owned(),
        ..outbox::event(Some(vm), start_id, EventKind::Warm)
    });
    tracing::info!(vm = %vm, start_id, phase = "warm", kernel, "guest ready; waiting, holding nothing, for a job");
    let mut check = tokio::time::interval(WARM_CHECK);
    loop {
        tokio::select! {
            biased;
            () = handle.stop.cancelled() => return Err(Ending::Destroy(handle.stop_reason())),
            assignment = &mut rx => {
                return assignment.map_err(|_| Ending::Destroy(handle.stop_reason()));
            }
            _ = check.tick() => {
                let alive = ctx.driver.list().await.iter().any(|v| &v.id == vm && v.running);
                if !alive {
                    return Err(failed(
                        String::from("the warm VM stopped while it waited for a job"),
                        "VM vanished",
                    ));
                }
            }
        }
    }
}

/// The steps of starting one VM, timed as they happen; the driver's own breakdown of a step
/// follows it, named `<step>: <part>`.
#[derive(Debug, Default)]
struct Steps {
    list: Vec<StartStep>,
    /// How many of the driver's steps are already in `list`.
    from_driver: usize,
}

impl Steps {
    fn push(&mut self, step: &str, since: Instant) {
        self.list.push(StartStep {
            step: step.to_owned(),
            millis: since.elapsed().as_secs_f64() * 1000.0,
        });
    }

    /// Adds the driver's steps not yet added, as parts of `within`.
    async fn add_drivers_parts(&mut self, ctx: &VmContext, vm: &VmId, within: &str) {
        let all = ctx.driver.start_steps(vm).await;
        for part in all.iter().skip(self.from_driver) {
            self.list.push(StartStep {
                step: format!("{within}: {}", part.step),
                millis: part.millis,
            });
        }
        self.from_driver = self.from_driver.max(all.len());
    }

    fn to_json(&self) -> String {
        serde_json::to_string(&self.list).unwrap_or_default()
    }
}

fn failed(detail: String, reason: &str) -> Ending {
    Ending::Failed {
        detail,
        reason: reason.to_owned(),
    }
}
