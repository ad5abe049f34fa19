//! A tonic `AgentService` that plays the server in agent tests: it welcomes the agent, records
//! every `Hello` and every later message, acknowledges each event as it arrives (unless told to
//! hold acknowledgements back), and lets the test send `StartVm`/`DestroyVm`, break the stream,
//! or go away and come back on the same port. Shared with `crates/mayfly/tests/agent.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use mayfly_proto::v1::{Ack, AgentMessage, Hello, ServerMessage, VmEvent, Welcome};
use mayfly_proto::{AgentBody, EventKind, ServerBody, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// What an agent reports of a VM up to its runner's start.
pub const UNTIL_RUNNER_STARTED: [EventKind; 3] = [
    EventKind::Started,
    EventKind::Booted,
    EventKind::RunnerStarted,
];

type Outbound = mpsc::Sender<Result<ServerMessage, Status>>;

struct Shared {
    welcome_version: u32,
    hellos: mpsc::UnboundedSender<Hello>,
    received: mpsc::UnboundedSender<AgentMessage>,
    current: Mutex<Option<Outbound>>,
    /// Acknowledge events as they arrive.
    acks: AtomicBool,
}

#[derive(Clone)]
struct Service(Arc<Shared>);

#[tonic::async_trait]
impl AgentService for Service {
    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let shared = self.0.clone();
        tokio::spawn(async move {
            match inbound.message().await {
                Ok(Some(AgentMessage {
                    body: Some(AgentBody::Hello(hello)),
                })) => {
                    let _ = shared.hellos.send(hello);
                    let welcome = ServerMessage {
                        body: Some(ServerBody::Welcome(Welcome {
                            protocol_version: shared.welcome_version,
                            heartbeat_ms: 0,
                        })),
                    };
                    let _ = tx.send(Ok(welcome)).await;
                    *shared.current.lock().unwrap() = Some(tx.clone());
                }
                _ => {
                    let _ = tx.send(Err(Status::invalid_argument("Hello first"))).await;
                    return;
                }
            }
            while let Ok(Some(message)) = inbound.message().await {
                let current = shared
                    .current
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_some_and(|c| c.same_channel(&tx));
                if !current {
                    // This session was broken off (`go_away`): what still trickles in on its
                    // connection is not received.
                    break;
                }
                if let Some(AgentBody::VmEvent(event)) = &message.body {
                    if shared.acks.load(Ordering::SeqCst) {
                        let ack = ServerBody::Ack(Ack { seq: event.seq });
                        let _ = tx.send(Ok(ServerMessage { body: Some(ack) })).await;
                    }
                }
                let _ = shared.received.send(message);
            }
            // The agent ended its side: end ours (every sender of this stream goes).
            let mut current = shared.current.lock().unwrap();
            if current.as_ref().is_some_and(|c| c.same_channel(&tx)) {
                *current = None;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The fake server and what it saw.
pub struct FakeServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    hellos: mpsc::UnboundedReceiver<Hello>,
    received: mpsc::UnboundedReceiver<AgentMessage>,
    server: Option<tokio::task::JoinHandle<()>>,
}

const WAIT: Duration = Duration::from_secs(60);

impl FakeServer {
    pub async fn start() -> Self {
        Self::start_with_version(PROTOCOL_VERSION).await
    }

    pub async fn start_with_version(welcome_version: u32) -> Self {
        let (hellos_tx, hellos) = mpsc::unbounded_channel();
        let (received_tx, received) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            welcome_version,
            hellos: hellos_tx,
            received: received_tx,
            current: Mutex::new(None),
            acks: AtomicBool::new(true),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Self {
            addr,
            shared,
            hellos,
            received,
            server: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let service = AgentServiceServer::new(Service(self.shared.clone()));
        self.server = Some(tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(
                    service,
                    TcpListenerStream::new(listener),
                    std::future::pending::<()>(),
                )
                .await;
        }));
    }

    /// Whether events are acknowledged as they arrive (they are by default).
    pub fn acknowledge_events(&self, on: bool) {
        self.shared.acks.store(on, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Breaks the current session and stops listening: the agent sees the server gone.
    pub fn go_away(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some(current) = self.shared.current.lock().unwrap().take() {
            let _ = current.try_send(Err(Status::unavailable("server going away")));
        }
    }

    /// Listens again on the same address.
    pub async fn come_back(&mut self) {
        let listener = tokio::time::timeout(WAIT, async {
            loop {
                match tokio::net::TcpListener::bind(self.addr).await {
                    Ok(listener) => return listener,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await
        .expect("could not listen on the same address again");
        self.serve(listener);
    }

    /// The next session's `Hello`.
    pub async fn hello(&mut self) -> Hello {
        tokio::time::timeout(WAIT, self.hellos.recv())
            .await
            .expect("no Hello arrived")
            .expect("server gone")
    }

    /// The next message after a `Hello` (events and heartbeats).
    pub async fn message(&mut self) -> AgentMessage {
        tokio::time::timeout(WAIT, self.received.recv())
            .await
            .expect("no message arrived")
            .expect("server gone")
    }

    /// The next VM event, skipping heartbeats.
    pub async fn event(&mut self) -> VmEvent {
        loop {
            if let Some(AgentBody::VmEvent(event)) = self.message().await.body {
                return event;
            }
        }
    }

    /// The next VM events, which must be of `kinds` in that order.
    pub async fn expect(&mut self, kinds: &[EventKind]) -> Vec<VmEvent> {
        let mut events = Vec::new();
        for want in kinds {
            let event = self.event().await;
            assert_eq!(
                event.event_kind(),
                *want,
                "events so far: {events:?}, then {event:?}"
            );
            events.push(event);
        }
        events
    }

    /// The VM events already received, skipping heartbeats (does not wait).
    pub fn events_so_far(&mut self) -> Vec<VmEvent> {
        let mut events = Vec::new();
        while let Ok(message) = self.received.try_recv() {
            if let Some(AgentBody::VmEvent(event)) = message.body {
                events.push(event);
            }
        }
        events
    }

    /// Sends a message to the agent on the current session (waiting for one).
    pub async fn send(&self, body: ServerBody) {
        let current = tokio::time::timeout(WAIT, async {
            loop {
                if let Some(current) = self.shared.current.lock().unwrap().clone() {
                    return current;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("no agent session to send to");
        current
            .send(Ok(ServerMessage { body: Some(body) }))
            .await
            .unwrap();
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.go_away();
    }
}
