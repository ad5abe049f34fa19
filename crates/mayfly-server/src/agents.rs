//! The agent side of the control plane: agents dial in and hold one `Session` stream each
//! (gRPC). The hub knows who is connected, what they can run, and sends them commands; their VM
//! events go to the scheduler, which applies each once and acknowledges it. A reconnecting agent
//! replaces its previous session; a session silent for longer than the lease is dropped.
//! Within a session event numbers must rise: a repeated or reordered number ends the session
//! (refused and audited by the scheduler), and the agent resends in order on its next one.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mayfly_core::HostSlots;
use mayfly_proto::v1::agent_service_server::AgentService;
use mayfly_proto::v1::{AgentMessage, Pong, ServerMessage, VmEvent, VmState, Welcome};
use mayfly_proto::{AgentBody, ServerBody, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// An event from an agent, with the agent's id and its journal's epoch.
#[derive(Debug)]
pub enum HubEvent {
    Vm {
        agent: String,
        epoch: String,
        event: VmEvent,
    },
    /// An agent (re)connected and reported the VMs it still has.
    Connected {
        agent: String,
        epoch: String,
        vms: Vec<VmState>,
    },
    /// An agent's heartbeat: its lease is renewed.
    Heard { agent: String, epoch: String },
    /// An agent broke the protocol; its session was ended. For the audit log.
    Refused { agent: String, why: String },
}

#[derive(Debug)]
struct Conn {
    session: u64,
    tx: mpsc::Sender<Result<ServerMessage, Status>>,
    slots: u32,
    images: Vec<String>,
    /// When the agent last sent anything on this session.
    heard: Instant,
}

/// Why a command could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("agent {0} is not connected")]
    NotConnected(String),
}

/// Connected agents.
#[derive(Debug)]
pub struct AgentHub {
    conns: Mutex<HashMap<String, Conn>>,
    events: mpsc::UnboundedSender<HubEvent>,
    next_session: AtomicU64,
    /// An agent silent for this long is dropped (and lost); agents are told to heartbeat at a
    /// quarter of it.
    pub lease: Duration,
}

impl AgentHub {
    pub fn new(events: mpsc::UnboundedSender<HubEvent>, lease: Duration) -> Self {
        Self {
            conns: Mutex::new(HashMap::new()),
            events,
            next_session: AtomicU64::new(1),
            lease,
        }
    }

    /// Connected agents with their slot count (free slots are the scheduler's business).
    pub fn hosts(&self) -> Vec<HostSlots> {
        let Ok(conns) = self.conns.lock() else {
            return Vec::new();
        };
        let mut hosts: Vec<HostSlots> = conns
            .iter()
            .map(|(id, c)| HostSlots {
                host: id.clone(),
                free_slots: c.slots,
                images: c.images.clone(),
            })
            .collect();
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        hosts
    }

    /// Sends a command to an agent.
    pub async fn send(&self, agent: &str, body: ServerBody) -> Result<(), HubError> {
        let tx = {
            let conns = self
                .conns
                .lock()
                .map_err(|_| HubError::NotConnected(agent.to_owned()))?;
            conns.get(agent).map(|c| c.tx.clone())
        };
        let tx = tx.ok_or_else(|| HubError::NotConnected(agent.to_owned()))?;
        tx.send(Ok(ServerMessage { body: Some(body) }))
            .await
            .map_err(|_| HubError::NotConnected(agent.to_owned()))
    }

    fn register(&self, agent: &str, conn: Conn) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(agent.to_owned(), conn);
        }
    }

    /// Whether `session` is still `agent`'s live session.
    fn is_session(&self, agent: &str, session: u64) -> bool {
        self.conns
            .lock()
            .is_ok_and(|conns| conns.get(agent).is_some_and(|c| c.session == session))
    }

    fn unregister(&self, agent: &str, session: u64) {
        if let Ok(mut conns) = self.conns.lock() {
            if conns.get(agent).is_some_and(|c| c.session == session) {
                conns.remove(agent);
            }
        }
    }

    /// Notes that `agent`'s `session` sent something now; the sender to answer it on.
    fn heard(
        &self,
        agent: &str,
        session: u64,
    ) -> Option<mpsc::Sender<Result<ServerMessage, Status>>> {
        let mut conns = self.conns.lock().ok()?;
        let conn = conns.get_mut(agent).filter(|c| c.session == session)?;
        conn.heard = Instant::now();
        Some(conn.tx.clone())
    }

    /// Drops the sessions that sent nothing for `lease` (a link cut without a reset leaves the
    /// stream open): their agents are no longer offered work from here. Returns their names.
    pub fn expire_silent(&self, lease: Duration) -> Vec<String> {
        let Ok(mut conns) = self.conns.lock() else {
            return Vec::new();
        };
        let silent: Vec<String> = conns
            .iter()
            .filter(|(_, c)| c.heard.elapsed() > lease)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &silent {
            if let Some(conn) = conns.remove(name) {
                let _ = conn.tx.try_send(Err(Status::unavailable(
                    "the agent was silent for longer than its lease",
                )));
            }
        }
        silent
    }
}

/// The gRPC service agents talk to.
#[derive(Debug, Clone)]
pub struct AgentServiceImpl {
    pub hub: Arc<AgentHub>,
    /// With mTLS: who may connect. `None` only for a loopback `--insecure-dev` listener.
    pub auth: Option<AgentAuth>,
}

/// Checks a connecting agent's client certificate against the enrolled agents, and audits.
#[derive(Debug, Clone)]
pub struct AgentAuth {
    pub store: Arc<dyn mayfly_store::Store>,
    pub clock: Arc<dyn mayfly_core::Clock>,
}

impl AgentAuth {
    /// The enrolled, unrevoked agent holding this certificate, as `Ok(name)`; or why not.
    async fn identify(
        &self,
        certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Result<(String, String), &'static str> {
        let Some(leaf) = certs.and_then(<[_]>::first) else {
            return Err("no client certificate");
        };
        let sha = crate::agent_pki::sha256_hex(leaf);
        match self.store.agent_by_cert(&sha).await {
            Ok(Some(agent)) if agent.revoked_at.is_none() => Ok((agent.name, sha)),
            Ok(Some(_)) => Err("revoked agent"),
            Ok(None) => Err("unknown certificate"),
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "agent lookup failed");
                Err("store unavailable")
            }
        }
    }

    async fn audit(
        &self,
        actor: &str,
        source: Option<String>,
        outcome: &str,
    ) -> Result<(), Status> {
        self.audit_action("agent connect", actor, source, outcome)
            .await
    }

    async fn audit_action(
        &self,
        action: &str,
        actor: &str,
        source: Option<String>,
        outcome: &str,
    ) -> Result<(), Status> {
        let event = mayfly_store::NewAudit {
            at: self.clock.now(),
            actor: actor.to_owned(),
            source,
            action: action.into(),
            target: None,
            outcome: outcome.to_owned(),
        };
        self.store.append_audit(&event).await.map_err(|e| {
            tracing::error!(error = %crate::error::chain(&e), "could not audit an agent connection; refusing it");
            Status::unavailable("the server cannot record this connection; retry later")
        })?;
        Ok(())
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentServiceImpl {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let source = request.remote_addr().map(|a| a.to_string());
        let certified = match &self.auth {
            Some(auth) => {
                let certs = request.peer_certs();
                match auth.identify(certs.as_deref().map(Vec::as_slice)).await {
                    Ok(identity) => Some(identity),
                    Err(why) => {
                        tracing::warn!(?source, why, "agent refused");
                        auth.audit("anonymous", source, &format!("refused: {why}"))
                            .await?;
                        return Err(Status::permission_denied(
                            "this agent is not enrolled (or was revoked): run `mayfly agent enrol`",
                        ));
                    }
                }
            }
            None => None,
        };
        let mut incoming = request.into_inner();
        let first = incoming
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("the session ended before Hello"))??;
        let Some(AgentBody::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument("the first message must be Hello"));
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            )));
        }
        if hello.agent_id.is_empty() || hello.agent_id.len() > 100 {
            return Err(Status::invalid_argument(
                "agent_id must be 1 to 100 characters",
            ));
        }
        if hello.journal_epoch.is_empty() || hello.journal_epoch.len() > 100 {
            return Err(Status::invalid_argument(
                "journal_epoch must be 1 to 100 characters",
            ));
        }
        let agent = hello.agent_id.clone();
        let epoch = hello.journal_epoch.clone();
        if let (Some(auth), Some((name, _))) = (&self.auth, &certified) {
            let actor = format!("agent:{name}");
            if *name != agent {
                auth.audit(&actor, source, &format!("refused: claimed to be {agent}"))
                    .await?;
                return Err(Status::permission_denied(
                    "agent_id does not match the agent's certificate",
                ));
            }
            auth.audit(&actor, source, "ok").await?;
        }
        let capacity = hello.capacity.unwrap_or_default();
        let (tx, rx) = mpsc::channel(64);
        let session = self.hub.next_session.fetch_add(1, Ordering::Relaxed);
        tx.send(Ok(ServerMessage {
            body: Some(ServerBody::Welcome(Welcome {
                protocol_version: PROTOCOL_VERSION,
                heartbeat_ms: u32::try_from(self.hub.lease.as_millis() / 4).unwrap_or(u32::MAX),
            })),
        }))
        .await
        .map_err(|_| Status::unavailable("session closed"))?;
        self.hub.register(
            &agent,
            Conn {
                session,
                tx,
                slots: capacity.slots,
                images: capacity.images,
                heard: Instant::now(),
            },
        );
        tracing::info!(%agent, slots = capacity.slots, vms = hello.vms.len(), "agent connected");
        if let (Some(auth), Some((_, sha))) = (self.auth.clone(), certified) {
            tokio::spawn(end_when_revoked(
                auth,
                self.hub.clone(),
                agent.clone(),
                session,
                sha,
            ));
        }
        let _ = self.hub.events.send(HubEvent::Connected {
            agent: agent.clone(),
            epoch: epoch.clone(),
            vms: hello.vms,
        });
        tokio::spawn(receive(self.hub.clone(), agent, epoch, session, incoming));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One session's messages from the agent, until it ends or is replaced.
async fn receive(
    hub: Arc<AgentHub>,
    agent: String,
    epoch: String,
    session: u64,
    mut incoming: Streaming<AgentMessage>,
) {
    let mut last_seq = 0u64;
    while let Some(message) = incoming.next().await {
        let Some(reply) = hub.heard(&agent, session) else {
            break;
        };
        match message.map(|m| m.body) {
            Ok(Some(AgentBody::VmEvent(event))) => {
                if event.seq <= last_seq {
                    let why = format!(
                        "event number {} after {last_seq} in one session (numbers must rise)",
                        event.seq
                    );
                    tracing::warn!(%agent, why, "agent broke the protocol; ending its session");
                    let _ = reply.try_send(Err(Status::invalid_argument(why.clone())));
                    let _ = hub.events.send(HubEvent::Refused {
                        agent: agent.clone(),
                        why,
                    });
                    break;
                }
                last_seq = event.seq;
                let _ = hub.events.send(HubEvent::Vm {
                    agent: agent.clone(),
                    epoch: epoch.clone(),
                    event,
                });
            }
            Ok(Some(AgentBody::Heartbeat(_))) => {
                let _ = reply.try_send(Ok(ServerMessage {
                    body: Some(ServerBody::Pong(Pong {})),
                }));
                let _ = hub.events.send(HubEvent::Heard {
                    agent: agent.clone(),
                    epoch: epoch.clone(),
                });
            }
            Ok(Some(AgentBody::Hello(_))) | Ok(None) => {}
            Err(e) => {
                tracing::warn!(%agent, error = %e, "agent session broke");
                break;
            }
        }
    }
    hub.unregister(&agent, session);
    tracing::info!(%agent, "agent disconnected");
}

/// How often an open mTLS session's agent is checked against revocation.
const REVOCATION_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Ends `agent`'s session once its certificate is revoked (or re-enrolled away): the server
/// stops sending, drops it from the hub, and audits it.
async fn end_when_revoked(
    auth: AgentAuth,
    hub: Arc<AgentHub>,
    agent: String,
    session: u64,
    cert_sha256: String,
) {
    loop {
        tokio::time::sleep(REVOCATION_CHECK).await;
        if !hub.is_session(&agent, session) {
            return;
        }
        match auth.store.agent_by_cert(&cert_sha256).await {
            Ok(Some(row)) if row.revoked_at.is_none() => {}
            Ok(_) => {
                tracing::warn!(%agent, "agent revoked: ending its session");
                hub.unregister(&agent, session);
                let _ = auth
                    .audit_action(
                        "agent disconnect",
                        &format!("agent:{agent}"),
                        None,
                        "revoked",
                    )
                    .await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "could not check an agent's revocation");
            }
        }
    }
}
