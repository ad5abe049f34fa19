//! The mayfly agent: one per host. It dials the server, reports its capacity, makes one VM per
//! `StartVm` and destroys it when the job ends, when the server says so, at the max runtime or
//! when the agent stops, and reports every step as a `VmEvent`. The server decides; the agent
//! executes. A small journal lets a restarted agent find what the previous one left.
//!
//! Invariants: every VM this agent creates is destroyed, and reported `DESTROYED`, exactly once;
//! the JIT config is in memory only (never logged, never in the journal). An agent whose driver
//! runs no VM ([`VmDriver::simulated`]) logs every line inside a span that says so; its tasks
//! carry that span.
#![forbid(unsafe_code)]

pub mod backoff;
mod connection;
pub mod journal;
mod outbox;
mod vm;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_core::VmId;
use mayfly_proto::v1::{AssignVm, Capacity, DestroyVm, StartVm};
use mayfly_vm::{VmDriver, VmSpec};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::Instrument;

pub use backoff::Backoff;
pub use journal::{Journal, JournalError};

use connection::{ConnectionConfig, ConnectionShared, ServerCommand};
use outbox::Outbox;
use vm::{Assignment, StartRequest, VmContext, VmTable};

/// The scratch disk of a VM whose StartVm names no size (GitHub promises 14 GB free).
pub const DEFAULT_DISK_GIB: u32 = 20;
/// How the agent runs. [`AgentConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This host's stable id.
    pub agent_id: String,
    /// The server's gRPC address: `https://host:8444` with `tls`, or `http://127.0.0.1:…` for a
    /// loopback development server.
    pub server_url: String,
    /// mTLS: the agent's certificate and key (from `mayfly agent enrol`) and the server CA it
    /// pinned. The agent then trusts that CA only.
    pub tls: Option<AgentTls>,
    /// How many VMs may run at once.
    pub slots: u32,
    /// What the host offers (reported in `Hello`).
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Digests of the images this host has.
    pub images: Vec<String>,
    pub driver: Arc<dyn VmDriver>,
    /// The journal file (its directory must exist).
    pub journal_path: PathBuf,
    /// The runner's entry point in the guest when `StartVm.run` is empty.
    pub run: String,
    /// Used when `StartVm.boot_timeout_secs` is 0.
    pub default_boot_timeout: Duration,
    /// Used when `StartVm.max_runtime_secs` is 0.
    pub default_max_runtime: Duration,
    pub heartbeat: Duration,
    /// First and longest wait between attempts to reach the server.
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// How long stopping may take to deliver the last events to the server.
    pub shutdown_flush: Duration,
    /// Without a word from the server for this long, VMs whose runner has not started are
    /// destroyed (the server places their jobs elsewhere after its own lease).
    pub lease: Duration,
}

impl AgentConfig {
    pub fn new(
        agent_id: impl Into<String>,
        server_url: impl Into<String>,
        driver: Arc<dyn VmDriver>,
        journal_path: PathBuf,
    ) -> Self {
        Self {
            agent_id: agent_id.into(),
            server_url: server_url.into(),
            tls: None,
            slots: 1,
            vcpus: 1,
            memory_mib: 1024,
            images: Vec::new(),
            driver,
            journal_path,
            run: String::from("/home/runner/actions-runner/run.sh"),
            default_boot_timeout: Duration::from_secs(120),
            default_max_runtime: Duration::from_secs(6 * 3600),
            heartbeat: Duration::from_secs(10),
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            shutdown_flush: Duration::from_secs(10),
            lease: Duration::from_secs(60),
        }
    }
}

/// The agent's mTLS material (PEM). Debug shows none of it.
#[derive(Clone)]
pub struct AgentTls {
    pub server_ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentTls([redacted])")
    }
}

/// Why the agent stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the server URL `{url}` cannot be used: give one like http://127.0.0.1:7443")]
    ServerUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("`slots` is 0: an agent needs at least one slot to run VMs")]
    NoSlots,
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "the server speaks protocol version {theirs} and this agent {ours}: run the same mayfly \
         version on the server and its agents"
    )]
    ProtocolMismatch { ours: u32, theirs: u32 },
}

/// Runs the agent until `shutdown` is cancelled: then every VM is destroyed and reported, and
/// `run` returns. Dropping the future aborts every VM task (their VMs are then the next agent's
/// to clean up from the journal, as after a crash).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let span = match config.driver.simulated() {
        // At error level, so that no log filter can show the agent's lines without it.
        Some(driver) => tracing::error_span!("agent", id = %config.agent_id, driver),
        None => tracing::Span::none(),
    };
    run_agent(config, shutdown).instrument(span).await
}

async fn run_agent(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    if config.slots == 0 {
        return Err(AgentError::NoSlots);
    }
    let mut endpoint = Endpoint::from_shared(config.server_url.clone()).map_err(|source| {
        AgentError::ServerUrl {
            url: config.server_url.clone(),
            source,
        }
    })?;
    if let Some(tls) = &config.tls {
        let host = endpoint.uri().host().unwrap_or("localhost").to_owned();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.server_ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &tls.cert_pem,
                tls.key_pem.as_slice(),
            ))
            .domain_name(host.trim_start_matches('[').trim_end_matches(']'));
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|source| AgentError::ServerUrl {
                url: config.server_url.clone(),
                source,
            })?;
    }
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let journal = Arc::new(Mutex::new(Journal::load(&config.journal_path)?));
    let outbox = Arc::new(Outbox::new(journal.clone()));
    recover(&config, &journal, &outbox).await?;

    let table = Arc::new(VmTable::new(config.slots));
    let ctx = Arc::new(VmContext {
        driver: config.driver.clone(),
        journal: journal.clone(),
        outbox: outbox.clone(),
        table: table.clone(),
    });
    let (commands_tx, mut commands) = mpsc::channel(64);
    let heard = Arc::new(Mutex::new(tokio::time::Instant::now()));
    let connection_stop = CancellationToken::new();
    // JoinSets abort their tasks when dropped: dropping `run` leaves nothing running.
    let mut connection = JoinSet::new();
    connection.spawn(
        connection::maintain(
            ConnectionConfig {
                agent_id: config.agent_id.clone(),
                endpoint,
                capacity: Capacity {
                    slots: config.slots,
                    vcpus: config.vcpus,
                    memory_mib: config.memory_mib,
                    images: config.images.clone(),
                },
                heartbeat: config.heartbeat,
                backoff: Backoff::new(config.reconnect_initial, config.reconnect_max),
                welcome_timeout: Duration::from_secs(30),
            },
            ConnectionShared {
                journal: journal.clone(),
                outbox: outbox.clone(),
                table: table.clone(),
                heard: heard.clone(),
            },
            commands_tx,
            connection_stop.clone(),
        )
        .in_current_span(),
    );
    let mut vms = JoinSet::new();
    let mut lease = Lease::new(config.lease, heard);

    let mut outcome = Ok(());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = lease.tick() => lease.check(&table),
            command = commands.recv() => match command {
                Some(ServerCommand::Start { start, jitconfig }) => {
                    start_vm(&config, &ctx, &mut vms, start, jitconfig);
                }
                Some(ServerCommand::Destroy(destroy)) => destroy_vm(&table, &destroy),
                Some(ServerCommand::Assign { assign, jitconfig }) => {
                    assign_vm(&config, &ctx, &assign, jitconfig);
                }
                None => break,
            },
            Some(ended) = connection.join_next() => {
                outcome = ended.unwrap_or(Ok(()));
                break;
            }
            Some(ended) = vms.join_next() => {
                if let Err(e) = ended {
                    tracing::error!(error = %e, "a VM task ended abnormally");
                }
            }
        }
    }

    tracing::info!(
        vms = vms.len(),
        "agent stopping: destroying every VM and reporting it"
    );
    table.stop_all("agent shutting down");
    while let Some(ended) = vms.join_next().await {
        if let Err(e) = ended {
            tracing::error!(error = %e, "a VM task ended abnormally");
        }
    }
    connection_stop.cancel();
    if !connection.is_empty() {
        match tokio::time::timeout(config.shutdown_flush, connection.join_next()).await {
            Ok(Some(Ok(Err(e)))) if outcome.is_ok() => outcome = Err(e),
            Ok(_) => {}
            Err(_) => tracing::warn!(
                "the server could not be told about every destroyed VM before stopping"
            ),
        }
    }
    outcome
}

/// At start: VMs a crashed agent left are reaped by the driver; VMs the journal names but no
/// driver runs any more are destroyed (whatever is left of them) and reported `DESTROYED` once
/// the server welcomes us.
async fn recover(
    config: &AgentConfig,
    journal: &Arc<Mutex<journal::Journal>>,
    outbox: &Outbox,
) -> Result<(), AgentError> {
    let reaped = config.driver.reap().await;
    let live: HashSet<VmId> = config
        .driver
        .list()
        .await
        .into_iter()
        .map(|info| info.id)
        .collect();
    let entries: Vec<_> = journal
        .lock()
        .map(|j| {
            j.vms()
                .iter()
                .map(|(vm, e)| (vm.clone(), e.clone()))
                .collect()
        })
        .unwrap_or_default();
    for record in &reaped {
        let start_id = entries
            .iter()
            .find(|(vm, _)| vm == &record.vm)
            .map(|(_, e)| e.start_id.clone())
            .unwrap_or_default();
        tracing::warn!(vm = %record.vm, start_id, "reaped a VM left by a crashed agent");
        outbox.push(outbox::destroyed(&start_id, record));
    }
    for (vm, entry) in entries {
        if !reaped.iter().any(|r| r.vm == vm) && !live.contains(&vm) {
            // This agent cannot take over a VM it did not start: its guest channel is gone.
            let record = config
                .driver
                .destroy(
                    &vm,
                    "agent restarted: the previous agent's VM cannot be resumed",
                )
                .await;
            tracing::warn!(
                vm = %vm, start_id = entry.start_id, phase = %entry.phase,
                "destroyed a VM the previous agent left running"
            );
            outbox.push(outbox::destroyed(&entry.start_id, &record));
        }
        if !live.contains(&vm) {
            let mut journal = journal.lock().map_err(|_| {
                AgentError::Journal(JournalError::Garbled {
                    path: config.journal_path.clone(),
                    why: String::from("the journal lock was poisoned"),
                })
            })?;
            journal.remove(&vm)?;
        }
    }
    Ok(())
}

fn start_vm(
    config: &AgentConfig,
    ctx: &Arc<VmContext>,
    vms: &mut JoinSet<()>,
    start: StartVm,
    jitconfig: SecretString,
) {
    let first = match ctx.journal.lock() {
        Ok(mut journal) => journal.first_start(&start.start_id),
        Err(_) => Ok(true),
    };
    match first {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(
                start_id = start.start_id,
                "ignored a StartVm already seen (commands are idempotent by start id)"
            );
            return;
        }
        Err(e) => {
            // Starting is still right: this StartVm is new. Only a resend after a crash could
            // now start a second VM, and the server then destroys the one it does not know.
            tracing::error!(start_id = start.start_id, error = %e, "could not record the start id in the journal");
        }
    }
    let Some(handle) = ctx.table.claim(&start.start_id) else {
        tracing::warn!(start_id = start.start_id, "refused StartVm: no free slot");
        ctx.outbox
            .push(outbox::failed(None, &start.start_id, "no free slot"));
        return;
    };
    let secs = |s: u32, default: Duration| {
        if s == 0 {
            default
        } else {
            Duration::from_secs(u64::from(s))
        }
    };
    let request = StartRequest {
        start_id: start.start_id,
        spec: VmSpec {
            image: start.image,
            vcpus: start.vcpus.max(1),
            memory_mib: if start.memory_mib == 0 {
                512
            } else {
                start.memory_mib
            },
            disk_gib: if start.disk_gib == 0 {
                DEFAULT_DISK_GIB
            } else {
                start.disk_gib
            },
        },
        // A warm VM holds nothing until its AssignVm.
        assignment: (!start.warm).then(|| Assignment {
            jitconfig,
            run: entry_point(config, start.run),
            received_at: chrono::Utc::now(),
        }),
        boot_timeout: secs(start.boot_timeout_secs, config.default_boot_timeout),
        max_runtime: secs(start.max_runtime_secs, config.default_max_runtime),
    };
    vms.spawn(vm::run_vm(ctx.clone(), handle, request).in_current_span());
}

/// The agent's side of the lease: when the server has not been heard from for `lease`, VMs
/// whose runner has not started are destroyed (once per outage); the rest keep running up to
/// their max runtime.
struct Lease {
    lease: Duration,
    heard: Arc<Mutex<tokio::time::Instant>>,
    ticker: tokio::time::Interval,
    expired: bool,
}

impl Lease {
    fn new(lease: Duration, heard: Arc<Mutex<tokio::time::Instant>>) -> Self {
        let every = (lease / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self {
            lease,
            heard,
            ticker,
            expired: false,
        }
    }

    async fn tick(&mut self) {
        self.ticker.tick().await;
    }

    fn check(&mut self, table: &VmTable) {
        let silent = self
            .heard
            .lock()
            .map(|heard| heard.elapsed())
            .unwrap_or_default();
        if silent <= self.lease {
            self.expired = false;
            return;
        }
        if !self.expired {
            self.expired = true;
            let stopped = table.stop_idle(&format!(
                "the server was unreachable for longer than the lease ({}s)",
                self.lease.as_secs()
            ));
            tracing::warn!(
                lease = ?self.lease, destroyed = stopped,
                "no word from the server for longer than the lease: VMs whose runner had not \
                 started are destroyed; the others run on up to their max runtime"
            );
        }
    }
}

/// The runner's entry point a command names, or the agent's default when it names none.
fn entry_point(config: &AgentConfig, run: String) -> String {
    if run.is_empty() {
        config.run.clone()
    } else {
        run
    }
}

/// Hands a warm VM its job; one that is not waiting (gone, or assigned before) is not given it,
/// and the server learns of the VM's end from its events.
fn assign_vm(config: &AgentConfig, ctx: &VmContext, assign: &AssignVm, jitconfig: SecretString) {
    let Some(handle) = ctx.table.find(&assign.vm_id, &assign.start_id) else {
        tracing::warn!(
            vm = assign.vm_id,
            start_id = assign.start_id,
            "AssignVm for a VM this agent does not run; not given"
        );
        return;
    };
    let assignment = Assignment {
        jitconfig,
        run: entry_point(config, assign.run.clone()),
        received_at: chrono::Utc::now(),
    };
    if let Err(why) = handle.assign(assignment) {
        tracing::warn!(
            vm = assign.vm_id,
            start_id = assign.start_id,
            why,
            "AssignVm refused"
        );
    }
}

fn destroy_vm(table: &VmTable, destroy: &DestroyVm) {
    let reason = if destroy.reason.is_empty() {
        "the server asked"
    } else {
        destroy.reason.as_str()
    };
    match table.find(&destroy.vm_id, &destroy.start_id) {
        Some(handle) => handle.stop(reason),
        // The usual race: the runner exited and the VM went while the server, told the job
        // completed, asked for the same.
        None => tracing::debug!(
            vm = destroy.vm_id,
            start_id = destroy.start_id,
            reason,
            "DestroyVm for a VM this agent does not run (already destroyed and reported)"
        ),
    }
}
