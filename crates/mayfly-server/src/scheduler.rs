//! The scheduler: turns queued jobs into VMs and VMs back into nothing. One pass at a time
//! (woken by new deliveries and agent events, and every second): match → place → provision a
//! repository-scoped JIT config → `StartVm`; bind each VM to the job its runner actually ran;
//! destroy VMs whose job completed, was cancelled before pickup, or that sat idle; delete
//! runners that never took a job. The JIT config is in memory only: GitHub → here → agent.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mayfly_core::{
    match_profile, place, Clock, InstallationId, JobId, JobStatus, Profile, RepoFullName,
};
use mayfly_github::{GitHubClient, JitConfigRequest};
use mayfly_proto::v1::{Ack, DestroyVm, StartVm, VmEvent};
use mayfly_proto::{EventKind, ServerBody};
use mayfly_store::{JobDispatch, JobRecord, Placement, Store, StoreError, VmKey, VmRow};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::agents::{AgentHub, HubEvent};

/// Attempts to provision a job before it is failed with a reason.
const MAX_ATTEMPTS: u32 = 3;

/// The scheduler's fixed inputs.
#[derive(Debug)]
pub struct Scheduler {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub github: Arc<GitHubClient>,
    pub hub: Arc<AgentHub>,
    pub profiles: Vec<Profile>,
    /// The runner's entry point in the guest.
    pub run: String,
    pub wake: Arc<Notify>,
    /// This server's name in job claims.
    pub server_id: String,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// VMs gone whose job's phases are not observed yet (its completion may still be coming).
    pub phases_pending: std::sync::Mutex<Vec<String>>,
    /// An agent not heard from for this long is lost: its VMs are marked lost, their idle
    /// runners deleted and their jobs placed elsewhere.
    pub lease: Duration,
    /// Jobs whose JIT config GitHub could not give for a transient reason (5xx, 429, no
    /// connection): when to try again, and how many times it was tried.
    pub backoff: std::sync::Mutex<std::collections::HashMap<i64, (DateTime<Utc>, u32)>>,
    /// Jobs not yet decided, in memory: a pass reads only the job rows changed since the last.
    pub undecided: std::sync::Mutex<crate::undecided::Undecided>,
}

/// JIT configs asked of GitHub at once (each registers a runner; GitHub makes its key).
const JIT_CONCURRENCY: usize = 16;

/// What `claim` made of a job.
enum Claim {
    Claimed(Box<Claimed>),
    /// Not to be started now (settled, backing off, another server's claim).
    NotNow,
    /// No waiting pool VM and no free slot for this profile.
    NoSlot(Profile),
    /// No profile serves it: recorded with the pass's others in one commit (a flood of jobs
    /// mayfly does not serve must not hold up the ones it does).
    Ignored(JobDispatch),
}

/// A queued job claimed by this server, with a slot taken for it, waiting for its JIT config.
struct Claimed {
    job: JobRecord,
    dispatch: JobDispatch,
    profile: Profile,
    installation: InstallationId,
    host: String,
    start_id: String,
    runner_name: String,
    /// The waiting pool VM the job takes (its start id, runner name and host are the above),
    /// or `None`: a VM is started for it.
    warm: Option<VmRow>,
}

/// The longest wait between tries of a job GitHub keeps failing transiently.
const BACKOFF_MAX_SECS: i64 = 60;

/// How long a destroyed VM waits for its job's completion before its phases are given up on.
const PHASES_WAIT: chrono::Duration = chrono::Duration::hours(1);
/// A job that names a runner but is bound to no VM is looked at for this long after its last
/// update (a job run by a runner that is not mayfly's never binds).
const UNBOUND_WINDOW: chrono::Duration = chrono::Duration::hours(1);
/// At most this many VMs wait for that (beyond it, phases go unobserved rather than memory).
const PHASES_PENDING_MAX: usize = 10_000;

/// A job claimed for placement but still not placed after this long (its server died) may be
/// claimed by another server.
const STALE_PLACING: chrono::Duration = chrono::Duration::seconds(120);

impl Scheduler {
    /// Runs until cancelled.
    pub async fn run(
        self,
        mut events: mpsc::UnboundedReceiver<HubEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let started = std::time::Instant::now();
            if let Err(e) = self.pass().await {
                tracing::error!(error = %crate::error::chain(&e), "scheduling pass failed; will retry");
            }
            self.metrics.pass(started.elapsed());
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                event = events.recv() => match event {
                    Some(event) => {
                        self.on_event_logged(event).await;
                        // Everything that arrived meanwhile, before the next pass.
                        while let Ok(event) = events.try_recv() {
                            self.on_event_logged(event).await;
                        }
                    }
                    None => return,
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn on_event_logged(&self, event: HubEvent) {
        if let Err(e) = self.on_event(event).await {
            tracing::error!(error = %crate::error::chain(&e), "applying an agent event failed");
        }
    }

    /// One scheduling pass over the store.
    pub async fn pass(&self) -> Result<(), StoreError> {
        for agent in self.hub.expire_silent(self.lease) {
            tracing::warn!(%agent, lease = ?self.lease, "agent silent for longer than its lease; its session is dropped");
        }
        self.mark_lost().await?;
        // Only what can change a decision, through indexed queries: history costs nothing, and
        // jobs waiting for a slot cost only what changed since the last pass.
        let decided = self
            .store
            .open_jobs(self.clock.now() - UNBOUND_WINDOW, false)
            .await?;
        let jobs = self
            .with_undecided(decided.into_iter().map(Arc::new).collect())
            .await?;
        let mut vms = self.store.open_vms().await?;
        self.add_runner_vms(&jobs, &mut vms).await?;
        for job in &jobs {
            self.bind(job, &jobs, &mut vms).await?;
        }
        self.observe_phases().await?;
        let jobs = self.replace_stranded(jobs, &vms).await?;
        // `placing` jobs are another server's, unless its claim went stale (`claim_job` decides).
        let mut hosts = self.free_hosts(&vms);
        let mut waiting: Vec<VmRow> = vms.iter().filter(|v| v.waits_for_job()).cloned().collect();
        let mut claimed = Vec::new();
        let mut unplaced = Vec::new();
        let mut ignored = Vec::new();
        for job in jobs
            .iter()
            .filter(|j| matches!(j.dispatch.disposition.as_str(), "new" | "placing"))
        {
            match self.claim(job, &mut hosts, &mut waiting).await? {
                Claim::Claimed(c) => claimed.push(*c),
                Claim::NoSlot(profile) => unplaced.push(profile),
                Claim::Ignored(dispatch) => ignored.push(Arc::new(JobRecord {
                    dispatch,
                    ..JobRecord::clone(job)
                })),
                Claim::NotNow => {}
            }
        }
        self.set_dispatches(ignored).await?;
        self.provision(claimed, &mut vms).await?;
        self.tend_pool(&unplaced, &mut vms).await?;
        self.cleanup(&jobs, &mut vms).await
    }

    /// `decided` (the open jobs already placed, or tied to a VM) with the jobs not yet decided,
    /// oldest first, each once. Those come from memory, brought up to date with the rows changed
    /// since the last pass, and resynced every [`crate::undecided::RESYNC`] (ids and stamps of
    /// all, rows only of those not held as they are).
    async fn with_undecided(
        &self,
        decided: Vec<Arc<JobRecord>>,
    ) -> Result<Vec<Arc<JobRecord>>, StoreError> {
        let since = self.undecided.lock().ok().and_then(|u| u.read_from());
        let rows = match since {
            Some(since) => self.store.undecided_changed_since(since).await?,
            None => {
                // Whole: the stamps, and only the rows not held as they are.
                let stamps = self.store.undecided_stamps().await?;
                let stale = match self.undecided.lock() {
                    Ok(mut undecided) => undecided.resync(&stamps),
                    Err(_) => return Ok(decided),
                };
                self.store.jobs_by_id(&stale).await?
            }
        };
        let rows = rows.into_iter().map(Arc::new).collect();
        let Ok(mut undecided) = self.undecided.lock() else {
            return Ok(decided);
        };
        undecided.merge(rows);
        Ok(undecided.with(decided))
    }

    /// Records the scheduler's decisions (each job with its new `dispatch`) in one commit, and
    /// in memory.
    async fn set_dispatches(&self, jobs: Vec<Arc<JobRecord>>) -> Result<(), StoreError> {
        let rows: Vec<(JobId, JobDispatch)> = jobs
            .iter()
            .map(|j| (j.job_id, j.dispatch.clone()))
            .collect();
        self.store.set_job_dispatches(&rows).await?;
        if let Ok(mut undecided) = self.undecided.lock() {
            undecided.merge(jobs);
        }
        Ok(())
    }

    /// Records the scheduler's decision about `job` in the store and in memory.
    async fn set_dispatch(
        &self,
        job: &JobRecord,
        dispatch: &JobDispatch,
    ) -> Result<(), StoreError> {
        self.store.set_job_dispatch(job.job_id, dispatch).await?;
        if let Ok(mut undecided) = self.undecided.lock() {
            undecided.merge(vec![Arc::new(JobRecord {
                dispatch: dispatch.clone(),
                ..job.clone()
            })]);
        }
        Ok(())
    }

    /// Adds the VMs named by jobs' runners that are not open any more (gone, their runner
    /// deleted), so a job whose runner's VM went before its webhook came is still bound.
    async fn add_runner_vms(
        &self,
        jobs: &[Arc<JobRecord>],
        vms: &mut Vec<VmRow>,
    ) -> Result<(), StoreError> {
        let missing: Vec<String> = jobs
            .iter()
            .filter(|j| j.dispatch.vm_start_id.is_none())
            .filter_map(|j| j.runner_name.clone())
            .filter(|name| !vms.iter().any(|v| &v.runner_name == name))
            .collect();
        if !missing.is_empty() {
            vms.extend(self.store.vms_by_key(VmKey::RunnerName, &missing).await?);
        }
        Ok(())
    }

    /// Observes the phases of each job whose VM is gone, once GitHub says the job completed.
    async fn observe_phases(&self) -> Result<(), StoreError> {
        let looked_up: Vec<String> = match self.phases_pending.lock() {
            Ok(pending) if !pending.is_empty() => pending.clone(),
            _ => return Ok(()),
        };
        let vms = self.store.vms_by_key(VmKey::StartId, &looked_up).await?;
        let ran: Vec<i64> = vms.iter().filter_map(|v| v.ran_job_id).collect();
        let jobs = self.store.jobs_by_id(&ran).await?;
        let Ok(mut pending) = self.phases_pending.lock() else {
            return Ok(());
        };
        let now = self.clock.now();
        pending.retain(|start_id| {
            let Some(vm) = vms.iter().find(|v| &v.start_id == start_id) else {
                // Added since the lookup (next pass), or its row is gone.
                return !looked_up.contains(start_id);
            };
            let job = vm
                .ran_job_id
                .and_then(|id| jobs.iter().find(|j| j.job_id.0 == id));
            match job {
                Some(job) if job.status == JobStatus::Completed => {
                    self.metrics
                        .job_phases(&vm.profile, &job.phase_times(Some(vm)));
                    false
                }
                _ => vm.destroyed_at.is_some_and(|at| now - at < PHASES_WAIT),
            }
        });
        Ok(())
    }

    /// Records which VM's runner ran `job` (GitHub does not bind a job to the runner it was
    /// started for). When that VM was started for another job still waiting, the VM started for
    /// `job`, if its runner took nothing yet, is that job's now: runners swapped jobs, and
    /// nothing is started again.
    async fn bind(
        &self,
        job: &JobRecord,
        jobs: &[Arc<JobRecord>],
        vms: &mut [VmRow],
    ) -> Result<(), StoreError> {
        let Some(runner) = job.runner_name.as_deref() else {
            return Ok(());
        };
        if job.dispatch.vm_start_id.is_some() {
            return Ok(());
        }
        let Some(vm) = vms.iter_mut().find(|v| v.runner_name == runner) else {
            return Ok(());
        };
        vm.ran_job_id = Some(job.job_id.0);
        self.store.update_vm(vm).await?;
        let (ran_on, intended) = (vm.start_id.clone(), vm.for_job_id);
        let dispatch = JobDispatch {
            vm_start_id: Some(ran_on.clone()),
            ..job.dispatch.clone()
        };
        self.set_dispatch(job, &dispatch).await?;
        tracing::info!(job = %job.job_id, vm = %ran_on, "job runs on VM");
        let waiting = jobs.iter().any(|j| {
            j.job_id.0 == intended && j.status == JobStatus::Queued && j.runner_name.is_none()
        });
        if intended == job.job_id.0 || !waiting {
            return Ok(());
        }
        if let Some(spare) = vms.iter_mut().find(|v| {
            v.for_job_id == job.job_id.0
                && v.start_id != ran_on
                && v.ran_job_id.is_none()
                && !matches!(v.state.as_str(), "destroyed" | "failed" | "lost")
        }) {
            tracing::info!(vm = %spare.start_id, from = %job.job_id, to = intended, "runners swapped jobs: the VM started for this job now waits for the other");
            spare.for_job_id = intended;
            self.store.update_vm(spare).await?;
        }
        Ok(())
    }

    /// Free VM slots on each connected host, less the VMs already on it.
    fn free_hosts(&self, vms: &[VmRow]) -> Vec<mayfly_core::HostSlots> {
        let mut hosts = self.hub.hosts();
        for host in &mut hosts {
            let busy = vms
                .iter()
                .filter(|v| {
                    v.host == host.host
                        && !matches!(v.state.as_str(), "destroyed" | "failed" | "lost")
                })
                .count();
            host.free_slots = host
                .free_slots
                .saturating_sub(u32::try_from(busy).unwrap_or(u32::MAX));
        }
        hosts
    }

    /// Decides where a queued job goes and claims it: a waiting pool VM of its profile is
    /// taken from `waiting`, or else a slot on `hosts`. `NotNow` when the job is not to be
    /// started now (settled here, waiting, another server's claim), `NoSlot` when it found no
    /// room.
    async fn claim(
        &self,
        job: &JobRecord,
        hosts: &mut [mayfly_core::HostSlots],
        pool: &mut Vec<VmRow>,
    ) -> Result<Claim, StoreError> {
        let mut dispatch = job.dispatch.clone();
        if job.status != JobStatus::Queued {
            if job.status == JobStatus::Completed {
                dispatch.disposition = "skipped".into();
                self.set_dispatch(job, &dispatch).await?;
            }
            return Ok(Claim::NotNow);
        }
        let Some(profile) = match_profile(&self.profiles, &job.labels) else {
            dispatch.disposition = "ignored".into();
            tracing::info!(job = %job.job_id, labels = ?job.labels, "no profile matches; ignored");
            return Ok(Claim::Ignored(dispatch));
        };
        dispatch.profile = Some(profile.name.clone());
        let Some(installation) = job.installation_id else {
            self.fail(job, dispatch, "the delivery carried no App installation")
                .await?;
            return Ok(Claim::NotNow);
        };
        let now = self.clock.now();
        let waiting = self
            .backoff
            .lock()
            .ok()
            .and_then(|b| b.get(&job.job_id.0).map(|(at, _)| *at > now))
            .unwrap_or(false);
        if waiting {
            return Ok(Claim::NotNow);
        }
        let warm = crate::pool::take(pool, profile, hosts);
        let host = match (&warm, place(profile, hosts)) {
            (Some(vm), _) => vm.host.clone(),
            (None, Some(h)) => h.host.clone(),
            (None, None) => {
                // No capacity here now: stays `new`, placed when a slot frees up (here or on
                // another server's agents).
                return Ok(Claim::NoSlot(profile.clone()));
            }
        };
        if !self
            .store
            .claim_job(
                job.job_id,
                &self.server_id,
                &profile.name,
                now,
                now - STALE_PLACING,
            )
            .await?
        {
            if let Some(vm) = warm {
                pool.push(vm);
            }
            return Ok(Claim::NotNow);
        }
        let (start_id, runner_name) = match &warm {
            Some(vm) => (vm.start_id.clone(), vm.runner_name.clone()),
            None => {
                if let Some(slots) = hosts.iter_mut().find(|h| h.host == host) {
                    slots.free_slots = slots.free_slots.saturating_sub(1);
                }
                let start_id = uuid_like();
                let runner_name = format!("mayfly-{}", &start_id[..12]);
                (start_id, runner_name)
            }
        };
        Ok(Claim::Claimed(Box::new(Claimed {
            job: job.clone(),
            dispatch,
            profile: profile.clone(),
            installation,
            host,
            start_id,
            runner_name,
            warm,
        })))
    }

    /// Asks GitHub for the claimed jobs' JIT configs, [`JIT_CONCURRENCY`] at a time, and starts
    /// each job's VM as its config arrives. Every claim is seen through; the first store error
    /// is returned at the end.
    async fn provision(
        &self,
        claimed: Vec<Claimed>,
        vms: &mut Vec<VmRow>,
    ) -> Result<(), StoreError> {
        use futures::StreamExt as _;
        let mut answers = futures::stream::iter(claimed)
            .map(|c| self.ask_jit_config(c))
            .buffer_unordered(JIT_CONCURRENCY);
        let mut first_error = None;
        while let Some((claimed, jit, took)) = answers.next().await {
            if let Err(e) = self.start(claimed, jit, took, vms).await {
                tracing::error!(error = %crate::error::chain(&e), "could not record a VM start");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Registers the claimed job's runner at GitHub, for its repository only.
    async fn ask_jit_config(
        &self,
        claimed: Claimed,
    ) -> (
        Claimed,
        Result<mayfly_github::rest::JitRunner, mayfly_github::GitHubError>,
        Duration,
    ) {
        let request =
            JitConfigRequest::new(claimed.runner_name.clone(), claimed.profile.runner_labels());
        let asked = std::time::Instant::now();
        let jit = self
            .github
            .generate_repo_jitconfig(claimed.installation, &claimed.job.repo, &request)
            .await;
        let took = asked.elapsed();
        self.metrics.jit_config(took);
        (claimed, jit, took)
    }

    /// Starts the VM of a claimed job with GitHub's answer for its JIT config.
    async fn start(
        &self,
        claimed: Claimed,
        jit: Result<mayfly_github::rest::JitRunner, mayfly_github::GitHubError>,
        jit_took: Duration,
        vms: &mut Vec<VmRow>,
    ) -> Result<(), StoreError> {
        let Claimed {
            job,
            mut dispatch,
            profile,
            installation,
            host,
            start_id,
            runner_name,
            warm,
        } = claimed;
        let jit = match jit {
            Ok(jit) => {
                if let Ok(mut backoff) = self.backoff.lock() {
                    backoff.remove(&job.job_id.0);
                }
                jit
            }
            Err(e) if transient(&e) => {
                // GitHub is having a bad moment: the job waits (not counted as an attempt),
                // longer each time, and is tried again however long the outage lasts.
                let now = self.clock.now();
                let tries = self
                    .backoff
                    .lock()
                    .map(|mut backoff| {
                        let entry = backoff.entry(job.job_id.0).or_insert((now, 0));
                        entry.1 += 1;
                        let wait = (1i64 << entry.1.min(6)).min(BACKOFF_MAX_SECS);
                        entry.0 = now + chrono::Duration::seconds(wait);
                        entry.1
                    })
                    .unwrap_or(1);
                tracing::warn!(job = %job.job_id, tries, error = %e, "GitHub could not give a JIT config now; will try again");
                dispatch.disposition = "new".into();
                dispatch.failure = Some(format!("could not get a JIT config: {e}"));
                return self.set_dispatch(&job, &dispatch).await;
            }
            Err(e) => {
                dispatch.attempts += 1;
                return self
                    .retry(&job, dispatch, &format!("could not get a JIT config: {e}"))
                    .await;
            }
        };
        let step = mayfly_core::StartStep {
            step: "jit_config".into(),
            millis: jit_took.as_secs_f64() * 1000.0,
        };
        if let Some(vm) = warm {
            return self
                .assign(&job, dispatch, &profile, vm, &jit, step, vms)
                .await;
        }
        let mut vm = VmRow::requested(
            Placement {
                start_id: start_id.clone(),
                host: host.clone(),
                profile: profile.name.clone(),
                installation_id: installation.0,
                repo: job.repo.to_string(),
                runner_name,
                runner_id: Some(jit.runner.id),
                for_job_id: job.job_id.0,
            },
            self.clock.now(),
        );
        vm.image = Some(profile.image.clone());
        vm.start_steps = serde_json::to_string(&[step]).ok();
        self.store.insert_vm(&vm).await?;
        dispatch.disposition = "placed".into();
        dispatch.attempts += 1;
        self.set_dispatch(&job, &dispatch).await?;
        let start = StartVm {
            start_id: start_id.clone(),
            image: profile.image.clone(),
            vcpus: profile.vcpus,
            memory_mib: profile.memory_mib,
            disk_gib: profile.disk_gib,
            jitconfig: jit.config.expose().to_owned(),
            run: profile
                .runner_entry
                .clone()
                .unwrap_or_else(|| self.run.clone()),
            boot_timeout_secs: profile.boot_timeout_secs,
            max_runtime_secs: profile.max_runtime_secs,
            warm: false,
        };
        tracing::info!(job = %job.job_id, vm = %start_id, %host, profile = %profile.name, "starting a VM");
        if let Err(e) = self.hub.send(&host, ServerBody::StartVm(start)).await {
            let mut failed = vm.clone();
            failed.state = "failed".into();
            failed.failure = Some(e.to_string());
            self.store.update_vm(&failed).await?;
            vms.push(failed);
            return self.retry(&job, dispatch, &e.to_string()).await;
        }
        vms.push(vm);
        Ok(())
    }

    /// Gives a waiting pool VM `job`: its row becomes the job's (repository, runner, job), and
    /// the runner's JIT config goes to the VM with `AssignVm`, the one time it gets one.
    #[allow(clippy::too_many_arguments)]
    async fn assign(
        &self,
        job: &JobRecord,
        mut dispatch: JobDispatch,
        profile: &Profile,
        mut vm: VmRow,
        jit: &mayfly_github::rest::JitRunner,
        step: mayfly_core::StartStep,
        vms: &mut [VmRow],
    ) -> Result<(), StoreError> {
        vm.installation_id = job.installation_id.map_or(0, |i| i.0);
        vm.repo = job.repo.to_string();
        vm.runner_id = Some(jit.runner.id);
        vm.for_job_id = job.job_id.0;
        vm.assigned_at = Some(self.clock.now());
        vm.start_steps = serde_json::to_string(&[step]).ok();
        self.store.update_vm(&vm).await?;
        dispatch.disposition = "placed".into();
        dispatch.attempts += 1;
        self.set_dispatch(job, &dispatch).await?;
        let assign = mayfly_proto::v1::AssignVm {
            vm_id: vm.vm_id.clone().unwrap_or_default(),
            start_id: vm.start_id.clone(),
            jitconfig: jit.config.expose().to_owned(),
            run: profile
                .runner_entry
                .clone()
                .unwrap_or_else(|| self.run.clone()),
        };
        tracing::info!(job = %job.job_id, vm = %vm.start_id, host = %vm.host, profile = %profile.name, "giving a warm VM its job");
        let sent = self.hub.send(&vm.host, ServerBody::AssignVm(assign)).await;
        if let Err(e) = &sent {
            // The agent went: the VM is gone with it or destroyed when it comes back.
            vm.state = "failed".into();
            vm.failure = Some(e.to_string());
            self.store.update_vm(&vm).await?;
        }
        if let Some(row) = vms.iter_mut().find(|v| v.start_id == vm.start_id) {
            *row = vm;
        }
        match sent {
            Ok(()) => Ok(()),
            Err(e) => self.retry(job, dispatch, &e.to_string()).await,
        }
    }

    /// The warm pool after this pass's jobs: waiting pool VMs of another profile make room for
    /// jobs of `unplaced` profiles that found no slot; then each host's pools are topped up
    /// within the slots left.
    async fn tend_pool(
        &self,
        unplaced: &[Profile],
        vms: &mut Vec<VmRow>,
    ) -> Result<(), StoreError> {
        if !self.profiles.iter().any(|p| p.warm > 0) {
            return Ok(());
        }
        let mut hosts = self.free_hosts(vms);
        for profile in unplaced {
            let Some(start_id) =
                crate::pool::to_evict(vms, profile, &hosts).map(|v| v.start_id.clone())
            else {
                continue;
            };
            if let Some(vm) = vms.iter_mut().find(|v| v.start_id == start_id) {
                self.destroy(vm, "its slot is needed by a queued job of another profile")
                    .await?;
            }
        }
        if !unplaced.is_empty() {
            // Queued jobs are waiting for slots: none goes to the pool.
            return Ok(());
        }
        for (host, profile) in crate::pool::refill(&self.profiles, &mut hosts, vms) {
            let start_id = uuid_like();
            let mut vm = VmRow::requested(
                Placement {
                    start_id: start_id.clone(),
                    host: host.clone(),
                    profile: profile.name.clone(),
                    installation_id: 0,
                    repo: String::new(),
                    runner_name: format!("mayfly-{}", &start_id[..12]),
                    runner_id: None,
                    for_job_id: 0,
                },
                self.clock.now(),
            );
            vm.pool = true;
            vm.image = Some(profile.image.clone());
            self.store.insert_vm(&vm).await?;
            let start = StartVm {
                start_id: start_id.clone(),
                image: profile.image.clone(),
                vcpus: profile.vcpus,
                memory_mib: profile.memory_mib,
                disk_gib: profile.disk_gib,
                boot_timeout_secs: profile.boot_timeout_secs,
                max_runtime_secs: profile.max_runtime_secs,
                warm: true,
                ..StartVm::default()
            };
            tracing::info!(vm = %start_id, %host, profile = %profile.name, "starting a warm pool VM");
            if let Err(e) = self.hub.send(&host, ServerBody::StartVm(start)).await {
                vm.state = "failed".into();
                vm.failure = Some(e.to_string());
                self.store.update_vm(&vm).await?;
            }
            vms.push(vm);
        }
        Ok(())
    }

    /// A transient failure: try again on a later pass, until the attempts run out.
    async fn retry(
        &self,
        job: &JobRecord,
        mut dispatch: JobDispatch,
        why: &str,
    ) -> Result<(), StoreError> {
        if dispatch.attempts >= MAX_ATTEMPTS {
            return self.fail(job, dispatch, why).await;
        }
        tracing::warn!(job = %job.job_id, attempts = dispatch.attempts, "{why}; will retry");
        dispatch.disposition = "new".into();
        dispatch.failure = Some(why.to_owned());
        self.set_dispatch(job, &dispatch).await
    }

    async fn fail(
        &self,
        job: &JobRecord,
        mut dispatch: JobDispatch,
        why: &str,
    ) -> Result<(), StoreError> {
        tracing::error!(job = %job.job_id, "job failed: {why}");
        self.metrics
            .dispatch_failed(job, dispatch.profile.as_deref());
        dispatch.disposition = "failed".into();
        dispatch.failure = Some(why.to_owned());
        self.set_dispatch(job, &dispatch).await
    }

    /// Destroys what should go and deletes runners that never took a job, for VMs on agents
    /// connected to this server (another server's agents are that server's to clean up).
    async fn cleanup(&self, jobs: &[Arc<JobRecord>], vms: &mut [VmRow]) -> Result<(), StoreError> {
        let now = self.clock.now();
        let local: Vec<String> = self.hub.hosts().into_iter().map(|h| h.host).collect();
        // A lost VM's agent is connected nowhere: whichever server passes deletes its runner.
        for vm in vms
            .iter_mut()
            .filter(|vm| local.contains(&vm.host) || vm.state == "lost")
        {
            if matches!(vm.state.as_str(), "destroyed" | "failed" | "lost") {
                if vm.ran_job_id.is_none() && !vm.runner_deleted {
                    self.delete_runner(vm).await?;
                }
                continue;
            }
            let reason = destroy_reason(vm, jobs, &self.profiles, now);
            if let (Some(reason), false) = (reason, vm.destroy_requested) {
                if vm.ran_job_id.is_none() && self.runner_busy(vm).await {
                    // Its runner took a job GitHub has not told us about yet: not idle.
                    continue;
                }
                self.destroy(vm, reason).await?;
            }
        }
        Ok(())
    }

    async fn destroy(&self, vm: &mut VmRow, reason: &str) -> Result<(), StoreError> {
        let Some(vm_id) = vm.vm_id.clone() else {
            return Ok(());
        };
        tracing::info!(vm = %vm.start_id, reason, "destroying a VM");
        let message = DestroyVm {
            vm_id,
            start_id: vm.start_id.clone(),
            reason: reason.to_owned(),
        };
        match self
            .hub
            .send(&vm.host, ServerBody::DestroyVm(message))
            .await
        {
            Ok(()) => {
                vm.destroy_requested = true;
                self.store.update_vm(vm).await
            }
            Err(e) => {
                tracing::warn!(vm = %vm.start_id, error = %e, "could not ask for a destroy; will retry");
                Ok(())
            }
        }
    }

    /// Whether GitHub says the VM's runner is running a job (an unknown answer counts as no).
    async fn runner_busy(&self, vm: &VmRow) -> bool {
        let (Some(runner_id), Ok(repo)) = (vm.runner_id, vm.repo.parse::<RepoFullName>()) else {
            return false;
        };
        self.github
            .get_repo_runner(InstallationId(vm.installation_id), &repo, runner_id)
            .await
            .ok()
            .flatten()
            .is_some_and(|r| r.busy)
    }

    /// A runner that never took a job would linger at GitHub: remove it.
    async fn delete_runner(&self, vm: &mut VmRow) -> Result<(), StoreError> {
        let (Some(runner_id), Ok(repo)) = (vm.runner_id, vm.repo.parse::<RepoFullName>()) else {
            vm.runner_deleted = true;
            return self.store.update_vm(vm).await;
        };
        match self
            .github
            .delete_repo_runner(InstallationId(vm.installation_id), &repo, runner_id)
            .await
        {
            Ok(_) => {
                tracing::info!(vm = %vm.start_id, runner_id, "deleted a runner that never took a job");
                vm.runner_deleted = true;
                self.store.update_vm(vm).await
            }
            Err(e) => {
                tracing::warn!(vm = %vm.start_id, error = %e, "could not delete a runner; will retry");
                Ok(())
            }
        }
    }

    /// Applies what an agent said.
    async fn on_event(&self, event: HubEvent) -> Result<(), StoreError> {
        match event {
            HubEvent::Vm {
                agent,
                epoch,
                event,
            } => self.on_vm_event(&agent, &epoch, &event).await,
            HubEvent::Connected { agent, epoch, vms } => {
                self.store
                    .agent_heard(&agent, &epoch, self.clock.now())
                    .await?;
                self.on_connected(&agent, &vms).await
            }
            HubEvent::Heard { agent, epoch } => {
                self.store
                    .agent_heard(&agent, &epoch, self.clock.now())
                    .await
            }
            HubEvent::Refused { agent, why } => self.refuse(&agent, None, &why).await,
        }
    }

    /// Applies one VM event exactly once (the store keeps where the agent's journal stands),
    /// then acknowledges it so the agent forgets it. An event that cannot be applied (an unknown
    /// VM, another agent's VM) is refused, audited, and acknowledged too: resending it cannot
    /// make it right.
    async fn on_vm_event(
        &self,
        agent: &str,
        epoch: &str,
        event: &VmEvent,
    ) -> Result<(), StoreError> {
        let seq = i64::try_from(event.seq).unwrap_or(i64::MAX);
        let found = self.store.vm(&event.start_id).await?;
        let (applied, vm) = match found {
            Some(vm) if vm.host == agent => {
                let mut after = vm.clone();
                apply_event(&mut after, event);
                let applied = self
                    .store
                    .apply_agent_event(agent, epoch, seq, Some(&after))
                    .await?;
                (applied, Some((vm, after)))
            }
            found => {
                let applied = self
                    .store
                    .apply_agent_event(agent, epoch, seq, None)
                    .await?;
                if applied {
                    let why = match found {
                        Some(_) => "an event for another agent's VM",
                        None => "an event for a VM the server never started",
                    };
                    self.refuse(agent, Some(&event.start_id), why).await?;
                }
                (false, None)
            }
        };
        self.acknowledge(agent, event.seq).await;
        let Some((before, vm)) = vm else {
            return Ok(());
        };
        if !applied {
            tracing::debug!(
                agent,
                seq = event.seq,
                "event applied before; acknowledged again"
            );
            return Ok(());
        }
        self.observe_vm(&before, &vm);
        let newly_failed = before.state != "failed" && vm.state == "failed";
        if newly_failed && vm.ran_job_id.is_none() {
            self.replace_placement(&vm, &format!("the VM failed: {}", event.detail))
                .await?;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Queued jobs whose placement no longer stands — every VM started for them is gone (lost,
    /// failed, destroyed) or its runner took another job (a JIT runner takes any queued job of
    /// its repository and labels) — are placed again. Returns the jobs as they now are.
    async fn replace_stranded(
        &self,
        mut jobs: Vec<Arc<JobRecord>>,
        vms: &[VmRow],
    ) -> Result<Vec<Arc<JobRecord>>, StoreError> {
        for shared in jobs
            .iter_mut()
            .filter(|j| j.status == JobStatus::Queued && j.dispatch.disposition == "placed")
        {
            let id = shared.job_id.0;
            let stands = vms.iter().any(|v| {
                v.for_job_id == id
                    && !matches!(v.state.as_str(), "destroyed" | "failed" | "lost")
                    && v.ran_job_id.is_none_or(|ran| ran == id)
            });
            if stands {
                continue;
            }
            // Copied only here, where it changes: the pass's other jobs stay shared.
            let job = Arc::make_mut(shared);
            tracing::warn!(job = %job.job_id, "the job's VM is gone or ran another job; placing the job again");
            job.dispatch.disposition = "new".into();
            job.dispatch.failure = Some("its VM is gone or ran another job".into());
            self.set_dispatch(job, &job.dispatch).await?;
        }
        Ok(jobs)
    }

    /// Tells `agent` its events up to `seq` are stored (it may be gone: it resends then).
    async fn acknowledge(&self, agent: &str, seq: u64) {
        if let Err(e) = self.hub.send(agent, ServerBody::Ack(Ack { seq })).await {
            tracing::debug!(agent, seq, error = %e, "could not acknowledge; the agent resends");
        }
    }

    /// Audits an agent's message that was refused.
    async fn refuse(
        &self,
        agent: &str,
        start_id: Option<&str>,
        why: &str,
    ) -> Result<(), StoreError> {
        tracing::warn!(agent, start_id, why, "refused an agent's message");
        self.store
            .append_audit(&mayfly_store::NewAudit {
                at: self.clock.now(),
                actor: format!("agent:{agent}"),
                source: None,
                action: "agent message".into(),
                target: start_id.map(str::to_owned),
                outcome: format!("refused: {why}"),
            })
            .await
            .map(|_| ())
    }

    /// The job `vm` was placed for is placed again (a later pass), if the VM was its current
    /// placement and no runner took it.
    async fn replace_placement(&self, vm: &VmRow, why: &str) -> Result<(), StoreError> {
        let Some(job) = self.store.job(JobId(vm.for_job_id)).await? else {
            return Ok(());
        };
        if job.status != JobStatus::Queued || job.dispatch.disposition != "placed" {
            return Ok(());
        }
        let other_live = self.store.vms_for_job(job.job_id).await?.iter().any(|v| {
            v.for_job_id == vm.for_job_id
                && v.start_id != vm.start_id
                && !matches!(v.state.as_str(), "destroyed" | "failed" | "lost")
        });
        if other_live {
            return Ok(());
        }
        self.retry(&job, job.dispatch.clone(), why).await
    }

    /// VMs whose agent no server heard from for the lease are lost: the agent destroys its idle
    /// VMs itself when it cannot reach a server (and its VMs die with it), so their jobs are
    /// placed elsewhere and their idle runners deleted (by `cleanup`).
    async fn mark_lost(&self) -> Result<(), StoreError> {
        let lease = chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
        let local: Vec<String> = self.hub.hosts().into_iter().map(|h| h.host).collect();
        let silent = self
            .store
            .vms_of_silent_agents(self.clock.now() - lease)
            .await?;
        for mut vm in silent.into_iter().filter(|v| !local.contains(&v.host)) {
            tracing::warn!(vm = %vm.start_id, agent = %vm.host, "VM lost: its agent was not heard from for its lease");
            vm.state = "lost".into();
            vm.failure = Some(format!(
                "lost: its agent {} was not heard from for {}s",
                vm.host,
                self.lease.as_secs()
            ));
            self.store.update_vm(&vm).await?;
            if vm.ran_job_id.is_none() {
                self.replace_placement(&vm, "its VM was lost with its agent")
                    .await?;
            }
        }
        Ok(())
    }
}

impl Scheduler {
    /// Metrics of a VM's moments as they first become known: its boot when the runner starts;
    /// when it is gone, its job's phases (on a later pass, once the job completed).
    fn observe_vm(&self, before: &VmRow, after: &VmRow) {
        let knew = before.started_at.is_some() && before.runner_started_at.is_some();
        // A pool VM's boot happened before its job; its wait in the pool is no boot time.
        if let (false, false, Some(started), Some(runner)) =
            (knew, after.pool, after.started_at, after.runner_started_at)
        {
            self.metrics.vm_booted(&after.profile, runner - started);
        }
        if before.state != "destroyed" && after.state == "destroyed" {
            if let Ok(mut pending) = self.phases_pending.lock() {
                if pending.len() < PHASES_PENDING_MAX {
                    pending.push(after.start_id.clone());
                }
            }
        }
    }

    /// An agent (re)connected: VMs it started that it no longer has were lost with it (its
    /// reaper destroyed them); record that so their jobs can be retried.
    async fn on_connected(
        &self,
        agent: &str,
        reported: &[mayfly_proto::v1::VmState],
    ) -> Result<(), StoreError> {
        for mut vm in self.store.vms_on_host(agent).await? {
            let started = vm.state != "requested";
            let still_there = reported.iter().any(|r| r.start_id == vm.start_id);
            if vm.host == agent && vm.state == "lost" && still_there {
                // Its job went elsewhere while the agent was away: this VM must go.
                vm.destroy_requested = false;
                if vm.vm_id.is_none() {
                    vm.vm_id = reported
                        .iter()
                        .find(|r| r.start_id == vm.start_id)
                        .map(|r| r.vm_id.clone());
                }
                self.destroy(&mut vm, "lost while its agent was away")
                    .await?;
                continue;
            }
            if vm.host == agent && started && !still_there {
                tracing::warn!(vm = %vm.start_id, %agent, "the agent no longer has this VM");
                vm.state = "destroyed".into();
                vm.failure = Some("lost when its agent restarted".into());
                vm.destroyed_at.get_or_insert(self.clock.now());
                self.store.update_vm(&vm).await?;
            }
        }
        self.wake.notify_one();
        Ok(())
    }
}

/// Folds one agent event into a VM row. States only move forward.
pub fn apply_event(vm: &mut VmRow, event: &VmEvent) {
    let at = DateTime::<Utc>::from_timestamp_millis(event.at_unix_ms).unwrap_or_else(Utc::now);
    let rank = |s: &str| match s {
        "requested" => 0,
        "started" => 1,
        "warm" => 2,
        "booted" => 3,
        "exited" => 4,
        "failed" => 5,
        "lost" => 6,
        _ => 7,
    };
    let mut advance = |state: &str| {
        if rank(state) > rank(&vm.state) {
            vm.state = state.to_owned();
        }
    };
    match EventKind::try_from(event.kind) {
        Ok(EventKind::Started) => {
            advance("started");
            vm.vm_id = Some(event.vm_id.clone());
            vm.started_at.get_or_insert(at);
        }
        Ok(EventKind::Warm) => {
            advance("warm");
            vm.warm_at.get_or_insert(at);
        }
        Ok(EventKind::Booted) => {
            advance("booted");
            vm.booted_at.get_or_insert(at);
        }
        Ok(EventKind::RunnerStarted) => {
            advance("booted");
            vm.runner_started_at.get_or_insert(at);
            add_agent_steps(vm, event);
        }
        Ok(EventKind::RunnerExited) => {
            advance("exited");
            vm.exited_at.get_or_insert(at);
            vm.exit_code = Some(event.exit_code);
        }
        Ok(EventKind::Failed) => {
            advance("failed");
            vm.failure = Some(event.detail.clone());
        }
        Ok(EventKind::Destroyed) => {
            vm.state = "destroyed".into();
            if !event.vm_id.is_empty() {
                vm.vm_id = Some(event.vm_id.clone());
            }
            vm.destroyed_at.get_or_insert(at);
            vm.destruction = Some(event.destruction_record_json.clone());
        }
        Ok(EventKind::Unspecified) | Err(_) => {}
    }
}

/// At most this many steps of a VM's start are kept, each name at most this long.
const MAX_START_STEPS: usize = 32;
const MAX_STEP_NAME: usize = 80;

/// Adds the agent's timed steps (from a RUNNER_STARTED event) to the VM's start steps, after
/// the server's own, with how long the config took to reach the agent (`StartVm delivered`, or
/// `AssignVm delivered` for a pool VM) first. A resent event adds nothing; steps that are not
/// well formed (the agent is trusted, its numbers are still checked) are left out.
fn add_agent_steps(vm: &mut VmRow, event: &VmEvent) {
    use mayfly_core::StartStep;
    let mut steps: Vec<StartStep> = vm
        .start_steps
        .as_deref()
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    let delivered = if vm.pool {
        "AssignVm delivered"
    } else {
        "StartVm delivered"
    };
    if steps.iter().any(|s| s.step == delivered) {
        return;
    }
    let sent = vm.assigned_at.unwrap_or(vm.requested_at);
    if let Some(received) = DateTime::<Utc>::from_timestamp_millis(event.config_received_unix_ms)
        .filter(|_| event.config_received_unix_ms > 0)
    {
        steps.push(StartStep {
            step: delivered.to_owned(),
            millis: ((received - sent).num_microseconds().unwrap_or(0) as f64 / 1000.0).max(0.0),
        });
    }
    let agent: Vec<StartStep> = serde_json::from_str(&event.start_steps_json).unwrap_or_default();
    steps.extend(agent.into_iter().filter(|s| {
        s.step.len() <= MAX_STEP_NAME && s.millis.is_finite() && (0.0..8.64e7).contains(&s.millis)
    }));
    steps.truncate(MAX_START_STEPS);
    vm.start_steps = serde_json::to_string(&steps).ok();
}

/// Why a live VM should go now, if it should.
fn destroy_reason(
    vm: &VmRow,
    jobs: &[Arc<JobRecord>],
    profiles: &[Profile],
    now: DateTime<Utc>,
) -> Option<&'static str> {
    if let Some(reason) = crate::pool::destroy_reason(vm, profiles, now) {
        return Some(reason);
    }
    if let Some(ran) = vm.ran_job_id {
        let done = jobs
            .iter()
            .any(|j| j.job_id.0 == ran && j.status == JobStatus::Completed);
        return done.then_some("job completed");
    }
    let intended = jobs.iter().find(|j| j.job_id.0 == vm.for_job_id);
    match intended {
        Some(j) if j.status == JobStatus::Completed && j.runner_name.is_none() => {
            return Some("job cancelled before a runner took it")
        }
        // Another VM's runner ran it (a JIT runner takes any queued job it matches); every
        // job still queued has a VM of its own, so this one is spare.
        Some(j) if j.status == JobStatus::Completed => {
            return Some("its job ran on another VM; no job is left for it")
        }
        _ => {}
    }
    let idle = profiles
        .iter()
        .find(|p| p.name == vm.profile)
        .map(|p| i64::from(p.idle_timeout_secs));
    match (vm.booted_at, idle) {
        (Some(booted), Some(idle)) if (now - booted).num_seconds() > idle => {
            Some("idle timeout: the runner took no job")
        }
        _ => None,
    }
}

/// Whether GitHub may well answer the same request next time (an outage, a rate limit, a
/// broken connection), as opposed to a refusal that repeating will not change.
fn transient(e: &mayfly_github::GitHubError) -> bool {
    use mayfly_github::GitHubError as E;
    matches!(
        e,
        E::Transport { .. } | E::RateLimited { .. } | E::Server { .. } | E::Decode { .. }
    )
}

fn uuid_like() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn vm_row() -> VmRow {
        let mut vm = VmRow::requested(
            Placement {
                start_id: "s".into(),
                host: "h".into(),
                profile: "p".into(),
                installation_id: 1,
                repo: "o/r".into(),
                runner_name: "mayfly-s".into(),
                runner_id: None,
                for_job_id: 1,
            },
            DateTime::from_timestamp_millis(1_000).unwrap(),
        );
        vm.ran_job_id = Some(1);
        vm
    }

    /// The agent's steps follow the server's, after how long the StartVm took to arrive; a
    /// resent RUNNER_STARTED adds nothing, and malformed steps are left out.
    #[test]
    fn the_agents_start_steps_follow_the_servers_once() {
        use mayfly_core::StartStep;
        let mut vm = vm_row();
        vm.start_steps = serde_json::to_string(&[StartStep {
            step: "jit_config".into(),
            millis: 12.0,
        }])
        .ok();
        let agent = serde_json::json!([
            {"step": "vm created", "millis": 40.5},
            {"step": "guest ready", "millis": 4000.0},
            {"step": "x".repeat(200), "millis": 1.0},
            {"step": "negative", "millis": -1.0},
        ]);
        let event = VmEvent {
            kind: EventKind::RunnerStarted as i32,
            at_unix_ms: 9_000,
            // requested at 1,000 ms: the StartVm took 25 ms to arrive.
            config_received_unix_ms: 1_025,
            start_steps_json: agent.to_string(),
            ..VmEvent::default()
        };
        apply_event(&mut vm, &event);
        apply_event(&mut vm, &event);
        let steps: Vec<StartStep> =
            serde_json::from_str(vm.start_steps.as_deref().unwrap()).unwrap();
        let named: Vec<(&str, f64)> = steps.iter().map(|s| (s.step.as_str(), s.millis)).collect();
        assert_eq!(
            named,
            [
                ("jit_config", 12.0),
                ("StartVm delivered", 25.0),
                ("vm created", 40.5),
                ("guest ready", 4000.0)
            ]
        );
        // A pool VM's config came with its AssignVm.
        let mut pool = vm_row();
        pool.pool = true;
        pool.assigned_at = DateTime::from_timestamp_millis(1_020);
        apply_event(&mut pool, &event);
        assert!(pool
            .start_steps
            .unwrap()
            .contains(r#""step":"AssignVm delivered","millis":5.0"#));
    }

    const LIFE: [EventKind; 5] = [
        EventKind::Started,
        EventKind::Booted,
        EventKind::RunnerStarted,
        EventKind::RunnerExited,
        EventKind::Destroyed,
    ];

    proptest! {
        /// However the agent's events arrive — reordered, or resent after a reconnect (the
        /// outbox resends an event with its original time) — each moment is the one its event
        /// carried, the state ends where the furthest event put it, and the job's moments are
        /// in order.
        #[test]
        fn vm_moments_hold_under_any_order_and_repeats(
            gaps in proptest::collection::vec(1i64..5_000, 5),
            order in Just((0..5usize).collect::<Vec<_>>()).prop_shuffle(),
            repeats in proptest::collection::vec(0..5usize, 0..6),
        ) {
            let mut at = 2_000i64;
            let times: Vec<i64> = gaps.iter().map(|g| { at += g; at }).collect();
            let event = |i: usize| VmEvent {
                vm_id: "vm-0000000000000001".into(),
                start_id: "s".into(),
                kind: LIFE[i] as i32,
                at_unix_ms: times[i],
                ..VmEvent::default()
            };
            let mut vm = vm_row();
            for i in order.iter().chain(repeats.iter()) {
                apply_event(&mut vm, &event(*i));
            }
            let ms = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_millis());
            prop_assert_eq!(ms(vm.started_at), Some(times[0]));
            prop_assert_eq!(ms(vm.booted_at), Some(times[1]));
            prop_assert_eq!(ms(vm.runner_started_at), Some(times[2]));
            prop_assert_eq!(ms(vm.exited_at), Some(times[3]));
            prop_assert_eq!(ms(vm.destroyed_at), Some(times[4]));
            prop_assert_eq!(vm.state.as_str(), "destroyed");

            // With GitHub's whole-second moments beside them, the job's phases stay in order.
            let job_started = DateTime::from_timestamp(times[2] / 1000, 0);
            let times = mayfly_core::PhaseTimes {
                webhook_received: Some(vm.requested_at),
                vm_requested: Some(vm.requested_at),
                vm_started: vm.started_at,
                guest_ready: vm.booted_at,
                runner_started: vm.runner_started_at,
                job_started,
                job_completed: DateTime::from_timestamp(times[3] / 1000, 0),
                runner_exited: vm.exited_at,
                vm_destroyed: vm.destroyed_at,
                ..Default::default()
            };
            let ordered: Vec<_> = times.ordered().into_iter().filter_map(|(_, at)| at).collect();
            prop_assert!(ordered.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}
