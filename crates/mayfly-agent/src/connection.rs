//! The agent's side of the `Session` stream: dial the server, say `Hello` (identity, protocol
//! version, capacity, the VMs in the journal, the journal's epoch), wait for `Welcome`, then send
//! every unacknowledged VM event in order and a heartbeat with the free slots, while taking the
//! server's `Ack`s and forwarding its `StartVm` and `DestroyVm` to the agent. A broken stream is
//! dialled again after a bounded exponential backoff; VMs keep running meanwhile and their events
//! wait in the outbox (and are resent from the oldest unacknowledged one in the next session).
//!
//! The JIT config leaves the `StartVm` message for a `SecretString` as soon as it arrives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_proto::v1::agent_service_client::AgentServiceClient;
use mayfly_proto::v1::{
    AgentMessage, AssignVm, Capacity, DestroyVm, Heartbeat, Hello, StartVm, VmState,
};
use mayfly_proto::{AgentBody, ServerBody, PROTOCOL_VERSION};
use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::backoff::Backoff;
use crate::journal::Journal;
use crate::outbox::Outbox;
use crate::vm::VmTable;
use crate::AgentError;

/// What the server asked for.
#[derive(Debug)]
pub enum ServerCommand {
    /// Start a VM. `start.jitconfig` is empty: the secret is in `jitconfig`.
    Start {
        start: StartVm,
        jitconfig: SecretString,
    },
    Destroy(DestroyVm),
    /// Give a warm VM its job. `assign.jitconfig` is empty: the secret is in `jitconfig`.
    Assign {
        assign: AssignVm,
        jitconfig: SecretString,
    },
}

/// How the connection behaves.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub agent_id: String,
    pub endpoint: Endpoint,
    pub capacity: Capacity,
    pub heartbeat: Duration,
    pub backoff: Backoff,
    /// How long the server has to answer `Hello` with `Welcome`.
    pub welcome_timeout: Duration,
}

/// What the connection shares with the agent.
#[derive(Debug, Clone)]
pub struct ConnectionShared {
    pub journal: Arc<Mutex<Journal>>,
    pub outbox: Arc<Outbox>,
    pub table: Arc<VmTable>,
    /// When the server was last heard from (a welcome, an ack, a pong, a command).
    pub heard: Arc<Mutex<tokio::time::Instant>>,
}

impl ConnectionShared {
    fn heard_now(&self) {
        if let Ok(mut heard) = self.heard.lock() {
            *heard = tokio::time::Instant::now();
        }
    }
}

/// Why one session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("could not connect to the server")]
    Connect(#[source] tonic::transport::Error),
    #[error("the server refused the session: {0}")]
    Refused(tonic::Status),
    #[error("the server did not answer Hello with Welcome within {0:?}")]
    NoWelcome(Duration),
    #[error("the server answered Hello with something other than Welcome")]
    NotWelcome,
    #[error("the stream broke: {0}")]
    Broken(tonic::Status),
    #[error("the server closed the stream")]
    Closed,
    #[error("the server speaks protocol version {theirs}, this agent {ours}")]
    Version { ours: u32, theirs: u32 },
}

/// Keeps a session with the server until `stop` is cancelled and every queued event has gone
/// out (the caller bounds how long that may take). Returns an error only for what reconnecting
/// cannot fix (a protocol version mismatch).
pub async fn maintain(
    mut config: ConnectionConfig,
    shared: ConnectionShared,
    commands: mpsc::Sender<ServerCommand>,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    loop {
        if stop.is_cancelled() && shared.outbox.is_empty() {
            return Ok(());
        }
        let result = session(&mut config, &shared, &commands, &stop).await;
        match result {
            Ok(()) => return Ok(()),
            Err(SessionError::Version { ours, theirs }) => {
                return Err(AgentError::ProtocolMismatch { ours, theirs })
            }
            Err(e) => {
                let wait = config.backoff.next_wait();
                tracing::warn!(
                    server = %config.endpoint.uri(), error = %e, retry_in = ?wait,
                    "no session with the server; VMs keep running and their events are queued"
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled(), if shared.outbox.is_empty() => return Ok(()),
                }
            }
        }
    }
}

/// One session: returns `Ok` when it ended because the agent stops.
async fn session(
    config: &mut ConnectionConfig,
    shared: &ConnectionShared,
    commands: &mpsc::Sender<ServerCommand>,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let channel = config
        .endpoint
        .connect()
        .await
        .map_err(SessionError::Connect)?;
    let mut client = AgentServiceClient::new(channel);
    let (welcomed, welcome) = oneshot::channel();
    // The request stream may outlive this function inside the transport: it must stop sending
    // when the session is over, or a dead session would keep taking events.
    let over = CancellationToken::new();
    let _over = over.clone().drop_guard();
    let requests = request_stream(
        hello(config, shared),
        welcome,
        shared.clone(),
        stop.clone(),
        over,
    );
    let mut inbound = client
        .session(requests)
        .await
        .map_err(SessionError::Refused)?
        .into_inner();
    let first = tokio::time::timeout(config.welcome_timeout, inbound.message())
        .await
        .map_err(|_| SessionError::NoWelcome(config.welcome_timeout))?;
    let heartbeat = match first {
        Ok(Some(message)) => match message.body {
            Some(ServerBody::Welcome(welcome)) if welcome.protocol_version == PROTOCOL_VERSION => {
                // The server's lease is a few of its heartbeat intervals: never beat slower.
                match welcome.heartbeat_ms {
                    0 => config.heartbeat,
                    ms => config
                        .heartbeat
                        .min(Duration::from_millis(u64::from(ms)))
                        .max(Duration::from_millis(50)),
                }
            }
            Some(ServerBody::Welcome(welcome)) => {
                return Err(SessionError::Version {
                    ours: PROTOCOL_VERSION,
                    theirs: welcome.protocol_version,
                })
            }
            _ => return Err(SessionError::NotWelcome),
        },
        Ok(None) => return Err(SessionError::Closed),
        Err(status) => return Err(SessionError::Broken(status)),
    };
    let _ = welcomed.send(heartbeat);
    shared.heard_now();
    config.backoff.reset();
    tracing::info!(server = %config.endpoint.uri(), agent = config.agent_id, "session with the server open");
    loop {
        match inbound.message().await {
            Ok(Some(message)) => {
                shared.heard_now();
                forward(message.body, shared, commands).await;
            }
            // Our request stream ends only when the agent stops; the server then closes too.
            Ok(None) if stop.is_cancelled() && shared.outbox.is_empty() => return Ok(()),
            Ok(None) => return Err(SessionError::Closed),
            Err(status) => return Err(SessionError::Broken(status)),
        }
    }
}

async fn forward(
    body: Option<ServerBody>,
    shared: &ConnectionShared,
    commands: &mpsc::Sender<ServerCommand>,
) {
    let command = match body {
        Some(ServerBody::Ack(ack)) => {
            shared.outbox.acknowledge(ack.seq);
            return;
        }
        Some(ServerBody::StartVm(mut start)) => {
            let jitconfig = SecretString::from(std::mem::take(&mut start.jitconfig));
            tracing::info!(
                start_id = start.start_id,
                image = start.image,
                "server: start a VM"
            );
            ServerCommand::Start { start, jitconfig }
        }
        Some(ServerBody::DestroyVm(destroy)) => {
            tracing::info!(
                vm = destroy.vm_id,
                start_id = destroy.start_id,
                reason = destroy.reason,
                "server: destroy a VM"
            );
            ServerCommand::Destroy(destroy)
        }
        Some(ServerBody::AssignVm(mut assign)) => {
            let jitconfig = SecretString::from(std::mem::take(&mut assign.jitconfig));
            tracing::info!(
                vm = assign.vm_id,
                start_id = assign.start_id,
                "server: give a warm VM its job"
            );
            ServerCommand::Assign { assign, jitconfig }
        }
        Some(ServerBody::Welcome(_) | ServerBody::Pong(_)) | None => return,
    };
    // The agent's loop ends only at shutdown; a command that arrives then is moot.
    let _ = commands.send(command).await;
}

fn hello(config: &ConnectionConfig, shared: &ConnectionShared) -> AgentMessage {
    let (vms, journal_epoch) = shared
        .journal
        .lock()
        .map(|journal| {
            let vms = journal
                .vms()
                .iter()
                .map(|(vm, entry)| VmState {
                    vm_id: vm.to_string(),
                    start_id: entry.start_id.clone(),
                    phase: entry.phase.as_str().to_owned(),
                })
                .collect();
            (vms, journal.epoch().to_owned())
        })
        .unwrap_or_default();
    AgentMessage {
        body: Some(AgentBody::Hello(Hello {
            agent_id: config.agent_id.clone(),
            protocol_version: PROTOCOL_VERSION,
            capacity: Some(config.capacity.clone()),
            vms,
            journal_epoch,
        })),
    }
}

/// What the agent sends in one session: `Hello`, then (once welcomed) every unacknowledged event
/// in order, from the oldest, and heartbeats, until the agent stops and the server acknowledged
/// everything.
fn request_stream(
    hello: AgentMessage,
    welcome: oneshot::Receiver<Duration>,
    shared: ConnectionShared,
    stop: CancellationToken,
    over: CancellationToken,
) -> impl futures::Stream<Item = AgentMessage> + Send + 'static {
    struct Pump {
        hello: Option<AgentMessage>,
        welcome: Option<oneshot::Receiver<Duration>>,
        shared: ConnectionShared,
        /// Made once welcomed, at the interval the server asked for.
        ticker: Option<tokio::time::Interval>,
        stop: CancellationToken,
        over: CancellationToken,
        /// The last event sent in this session.
        sent: u64,
    }
    let pump = Pump {
        hello: Some(hello),
        welcome: Some(welcome),
        shared,
        ticker: None,
        stop,
        over,
        sent: 0,
    };
    futures::stream::unfold(pump, |mut pump| async move {
        if let Some(hello) = pump.hello.take() {
            return Some((hello, pump));
        }
        if let Some(welcome) = pump.welcome.take() {
            // Events go out only to a server that welcomed us; dropped means the session ended.
            let every = welcome.await.ok()?;
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            pump.ticker = Some(ticker);
        }
        if pump.over.is_cancelled() {
            return None;
        }
        let outbox = pump.shared.outbox.clone();
        let message = tokio::select! {
            biased;
            () = pump.over.cancelled() => return None,
            event = outbox.next_after(pump.sent) => {
                pump.sent = event.seq;
                AgentBody::VmEvent(event)
            }
            _ = async { match pump.ticker.as_mut() { Some(t) => t.tick().await, None => std::future::pending().await } } => AgentBody::Heartbeat(Heartbeat {
                free_slots: pump.shared.table.free_slots(),
            }),
            () = async { pump.stop.cancelled().await; outbox.drained().await } => return None,
        };
        Some((
            AgentMessage {
                body: Some(message),
            },
            pump,
        ))
    })
}
