//! A stand-in agent speaking the real protocol (no VMs): says Hello with four slots of
//! `test-image`, hands every command to the test (acknowledgements and pongs aside), and
//! reports the VM events the test plays, numbered as a real agent's journal numbers them.
//! The server's tests and the binary's multi-server test (`crates/mayfly/tests/servers.rs`,
//! through `#[path]`) share it.
#![allow(dead_code)] // each test binary uses part of it

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mayfly_proto::v1::agent_service_client::AgentServiceClient;
use mayfly_proto::v1::{AgentMessage, Capacity, Hello, StartVm, VmEvent, VmState};
use mayfly_proto::{AgentBody, EventKind, ServerBody, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// A stand-in agent: says Hello, then hands every command to the test.
pub struct FakeAgent {
    tx: mpsc::Sender<AgentMessage>,
    commands: mpsc::UnboundedReceiver<ServerBody>,
    /// The last event number sent.
    seq: AtomicU64,
    /// The highest event number the server acknowledged.
    pub acked: std::sync::Arc<AtomicU64>,
    /// Set when the server's side of the session ended.
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// `run_jobs`' warm pool VMs waiting for a job: start id → VM id.
    pub waiting: std::collections::HashMap<String, String>,
    /// `run_jobs`' warm pool VMs started, and those given a job (start ids, in order).
    pub warm_started: Vec<String>,
    pub assigned: Vec<String>,
    /// VMs `run_jobs` started so far (for their ids).
    vms_started: usize,
}

impl FakeAgent {
    pub async fn connect(addr: std::net::SocketAddr) -> Self {
        Self::connect_as(addr, "host-a").await
    }

    /// An agent named `name` (its host), over plain gRPC.
    pub async fn connect_as(addr: std::net::SocketAddr, name: &str) -> Self {
        Self::resume(addr, name, "epoch-1", 0, vec![]).await
    }

    /// An agent named `name` whose journal `epoch` already numbered `seq` events and that
    /// still runs `vms`.
    pub async fn resume(
        addr: std::net::SocketAddr,
        name: &str,
        epoch: &str,
        seq: u64,
        vms: Vec<VmState>,
    ) -> Self {
        let mut client = AgentServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        tx.send(AgentMessage {
            body: Some(AgentBody::Hello(Hello {
                agent_id: name.into(),
                protocol_version: PROTOCOL_VERSION,
                capacity: Some(Capacity {
                    slots: 4,
                    vcpus: 8,
                    memory_mib: 16384,
                    images: vec!["test-image".into()],
                }),
                vms,
                journal_epoch: epoch.into(),
            })),
        })
        .await
        .unwrap();
        let mut incoming = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let acked = std::sync::Arc::new(AtomicU64::new(0));
        let acks = acked.clone();
        let closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            while let Some(Ok(message)) = incoming.next().await {
                match message.body {
                    Some(ServerBody::Ack(ack)) => {
                        acks.fetch_max(ack.seq, Ordering::SeqCst);
                    }
                    Some(ServerBody::Pong(_)) | None => {}
                    Some(body) => {
                        let _ = commands_tx.send(body);
                    }
                }
            }
            ended.store(true, Ordering::SeqCst);
        });
        Self {
            tx,
            commands,
            seq: AtomicU64::new(seq),
            acked,
            closed,
            waiting: std::collections::HashMap::new(),
            warm_started: Vec::new(),
            assigned: Vec::new(),
            vms_started: 0,
        }
    }

    /// Waits until the server acknowledged every event sent so far.
    pub async fn all_acknowledged(&self) {
        let last = self.seq.load(Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(20), async {
            while self.acked.load(Ordering::SeqCst) < last {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the server did not acknowledge every event");
    }

    /// Sends a heartbeat every `every` while the session lasts, as a live agent does.
    pub fn keep_alive(&self, every: Duration) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let beat = AgentMessage {
                    body: Some(AgentBody::Heartbeat(mayfly_proto::v1::Heartbeat {
                        free_slots: 4,
                    })),
                };
                if tx.send(beat).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Whether the server ended the session.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The next command, however long it takes; `None` when the session ended.
    pub async fn recv(&mut self) -> Option<ServerBody> {
        self.commands.recv().await
    }

    pub async fn next(&mut self) -> ServerBody {
        loop {
            let body = tokio::time::timeout(Duration::from_secs(20), self.commands.recv())
                .await
                .unwrap()
                .unwrap();
            if !matches!(body, ServerBody::Welcome(_)) {
                return body;
            }
        }
    }

    pub async fn event(&self, start: &str, vm: &str, kind: EventKind, record: &str) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.send_event(seq, start, vm, kind, record).await;
    }

    /// Sends an event numbered `seq`, whatever was sent before (to play a resend or a bad
    /// agent).
    pub async fn send_event(&self, seq: u64, start: &str, vm: &str, kind: EventKind, record: &str) {
        let event = VmEvent {
            vm_id: vm.into(),
            start_id: start.into(),
            kind: kind as i32,
            at_unix_ms: chrono::Utc::now().timestamp_millis(),
            exit_code: 0,
            detail: String::new(),
            destruction_record_json: record.into(),
            seq,
            ..VmEvent::default()
        };
        self.tx
            .send(AgentMessage {
                body: Some(AgentBody::VmEvent(event)),
            })
            .await
            .unwrap();
    }

    /// Plays a VM through boot, as an agent would report it.
    pub async fn boot(&self, start: &StartVm, vm: &str) {
        self.event(&start.start_id, vm, EventKind::Started, "")
            .await;
        self.event(&start.start_id, vm, EventKind::Booted, "").await;
    }

    pub async fn destroyed(&self, start: &str, vm: &str) {
        let record = mayfly_core::DestructionRecord {
            vm: mayfly_core::VmId::parse(vm).unwrap(),
            reason: "test".into(),
            started_at: chrono::Utc::now(),
            finished_at: chrono::Utc::now(),
            steps: vec![],
        };
        self.event(
            start,
            vm,
            EventKind::Destroyed,
            &serde_json::to_string(&record).unwrap(),
        )
        .await;
    }
}

impl FakeAgent {
    /// Plays VMs until `jobs` jobs were run and every VM given a job was destroyed: each boots,
    /// its runner takes a job at the simulator (any queued job its labels match, as GitHub
    /// hands them) and ends it with what `conclude` says for that job, the runner exits, and
    /// the destroy the server then asks for is reported done. A runner deleted before it took
    /// a job (spare: another runner took the job it was started for) exits, as the real one
    /// does; a VM destroyed while its runner waits stops it. A warm pool VM (`StartVm.warm`)
    /// says WARM and waits in `waiting` (across calls) for its one `AssignVm`; one assigned
    /// twice, or while not waiting, fails the test. Returns how many VMs were started for jobs.
    pub async fn run_jobs(
        &mut self,
        jobs: usize,
        conclude: impl Fn(u64) -> mayfly_sim::Conclusion + Send + Sync + 'static,
    ) -> usize {
        let conclude = std::sync::Arc::new(conclude);
        // (start id, VM id, whether its runner ran a job) as each runner ends.
        let (ended_tx, mut ended) = mpsc::unbounded_channel::<(String, String, bool)>();
        let mut runners = std::collections::HashMap::new();
        let (mut ran, mut started, mut live) = (0, 0, 0);
        while ran < jobs || live > 0 {
            let command = tokio::select! {
                command = self.commands.recv() => command.expect("the server ended the session"),
                Some((start_id, vm, took)) = ended.recv() => {
                    ran += usize::from(took);
                    // Unless its VM was destroyed meanwhile.
                    if runners.remove(&start_id).is_some() {
                        self.event(&start_id, &vm, EventKind::RunnerExited, "").await;
                    }
                    continue;
                }
            };
            match command {
                ServerBody::StartVm(start) if start.warm => self.warm(&start).await,
                ServerBody::AssignVm(assign) => {
                    let vm = self.waiting.remove(&assign.start_id).unwrap_or_else(|| {
                        panic!(
                            "AssignVm for {} which is not a warm VM waiting for a job",
                            assign.start_id
                        )
                    });
                    assert_eq!(assign.vm_id, vm);
                    self.assigned.push(assign.start_id.clone());
                    live += 1;
                    let runner = self
                        .play(
                            &assign.start_id,
                            &vm,
                            assign.jitconfig,
                            &ended_tx,
                            &conclude,
                        )
                        .await;
                    runners.insert(assign.start_id, runner);
                }
                ServerBody::StartVm(start) => {
                    started += 1;
                    live += 1;
                    self.vms_started += 1;
                    let vm = format!("vm-{:016x}", self.vms_started);
                    self.event(&start.start_id, &vm, EventKind::Started, "")
                        .await;
                    let runner = self
                        .play(&start.start_id, &vm, start.jitconfig, &ended_tx, &conclude)
                        .await;
                    runners.insert(start.start_id, runner);
                }
                ServerBody::DestroyVm(destroy) => {
                    if let Some(runner) = runners.remove(&destroy.start_id) {
                        runner.abort();
                    }
                    self.destroyed(&destroy.start_id, &destroy.vm_id).await;
                    if self.waiting.remove(&destroy.start_id).is_none() {
                        live -= 1;
                    }
                }
                ServerBody::Welcome(_) => {}
                other => panic!("unexpected command {other:?}"),
            }
        }
        started
    }

    /// Plays a warm pool VM's boot (STARTED, WARM) holding nothing; it waits in `waiting`.
    pub async fn warm(&mut self, start: &StartVm) {
        assert!(
            start.warm && start.jitconfig.is_empty() && start.run.is_empty(),
            "a pool VM's StartVm carried a config: {start:?}"
        );
        self.vms_started += 1;
        let vm = format!("vm-{:016x}", self.vms_started);
        for kind in [EventKind::Started, EventKind::Warm] {
            self.event(&start.start_id, &vm, kind, "").await;
        }
        self.warm_started.push(start.start_id.clone());
        self.waiting.insert(start.start_id.clone(), vm);
    }

    /// A VM with its runner config: BOOTED, RUNNER_STARTED, and its runner spawned (it tells
    /// `ended` when it ends).
    async fn play<C>(
        &self,
        start_id: &str,
        vm: &str,
        jitconfig: String,
        ended: &mpsc::UnboundedSender<(String, String, bool)>,
        conclude: &std::sync::Arc<C>,
    ) -> tokio::task::JoinHandle<()>
    where
        C: Fn(u64) -> mayfly_sim::Conclusion + Send + Sync + 'static,
    {
        use mayfly_sim::runner_client::{RunnerClient, RunnerClientError};
        for kind in [EventKind::Booted, EventKind::RunnerStarted] {
            self.event(start_id, vm, kind, "").await;
        }
        let (ended, conclude) = (ended.clone(), conclude.clone());
        let (start_id, vm) = (start_id.to_owned(), vm.to_owned());
        tokio::spawn(async move {
            let mut runner = RunnerClient::from_encoded_jit_config(&jitconfig, None).unwrap();
            let took = async {
                runner.authenticate().await?;
                let job = loop {
                    if let Some(job) = runner.acquire().await? {
                        break job;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                runner
                    .complete(job.job_id, conclude(job.job_id), "done")
                    .await
            };
            let took = match took.await {
                Ok(()) => true,
                Err(RunnerClientError::Unauthorized) => false,
                Err(e) => panic!("the runner failed: {e}"),
            };
            let _ = ended.send((start_id, vm, took));
        })
    }
}
