//! `mayfly server`, the control plane. Today: verified, durable webhook intake and health
//! endpoints over TLS; the scheduler, reconciler and API build on the same state.
#![forbid(unsafe_code)]

pub mod agent_pki;
mod agents;
pub mod api;
pub mod config;
mod dashboard;
mod error;
pub mod github_app;
mod group_commit;
mod intake;
mod log_limit;
pub mod metrics;
mod pool;
mod processor;
mod reconciler;
mod refusals;
mod scheduler;
mod tls;
pub mod tokens;
mod undecided;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use mayfly_core::Clock;
use mayfly_github::webhook::{WebhookSecret, WebhookVerifier};
use mayfly_store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::{
    read_secret_file, ConfigError, DashboardConfig, DatabaseConfig, GitHubConfig, RefusalConfig,
    RetentionConfig, ServerConfig, TlsFiles, WebhookConfig,
};
pub use error::ApiError;
pub use processor::Processor;
pub use tls::TlsError;

/// What request handlers share.
#[derive(Debug)]
pub struct AppState {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    verifier: WebhookVerifier,
    max_body_bytes: usize,
    /// Records deliveries durably, many requests to a commit.
    deliveries: group_commit::DeliveryWriter,
    log_limiter: log_limit::LogLimiter,
    /// Per-source limits on refused requests, and their audit summaries.
    refusals: refusals::Refusals,
    security_txt: Option<config::SecurityTxtConfig>,
    /// The agent CA and the server CA agents pin (with TLS and a GitHub App).
    pki: Option<Arc<agent_pki::AgentPki>>,
    /// The agent listener's port, told to enrolling agents.
    agent_port: Option<u16>,
    /// What usage reports need from the configuration.
    reports: usage::Settings,
    /// The usage dashboard, when `[dashboard]` is configured.
    dashboard: Option<Arc<dashboard::Dashboard>>,
    metrics: Arc<metrics::Metrics>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("could not listen for agents on {addr}")]
    AgentBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write the audit log, so the server does not start")]
    Audit(#[source] mayfly_store::StoreError),
    #[error("the agent listener's TLS could not be set up: {0}")]
    AgentTls(String),
    #[error("the agent CA could not be loaded or made")]
    Pki(#[source] agent_pki::PkiError),
    #[error("could not read the master key file for sealed values")]
    MasterKey(#[source] mayfly_store::SealError),
    #[error("could not read the server CA certificate {0}: set [tls] ca_file to the CA that issued cert_file")]
    ServerCa(std::path::PathBuf),
    #[error(transparent)]
    Dashboard(#[from] dashboard::DashboardError),
    #[error("could not listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    agent_addr: Option<SocketAddr>,
    tls: bool,
    shutdown: CancellationToken,
    http: axum_server::Handle<SocketAddr>,
    tasks: tokio::task::JoinSet<()>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where agents dial (`None` when no GitHub App is configured, so nothing is scheduled).
    pub fn agent_addr(&self) -> Option<SocketAddr> {
        self.agent_addr
    }

    /// `https://addr/` (or `http://` for an insecure development server).
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/", self.local_addr)
    }

    /// Stops accepting, lets requests in flight finish (up to 10 s), stops the processor.
    /// Agent sessions are long-lived streams: whatever has not stopped after the grace period
    /// is aborted.
    pub async fn shutdown(mut self) {
        self.http.graceful_shutdown(Some(Duration::from_secs(10)));
        self.shutdown.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }

    /// Waits until the server stops (on its own, or after a shutdown signal elsewhere).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Everything `start` needs besides the configuration.
#[derive(Debug)]
pub struct Dependencies {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub webhook_secrets: Vec<WebhookSecret>,
    /// The GitHub client; `None` runs intake only (no scheduling).
    pub github: Option<Arc<mayfly_github::GitHubClient>>,
}

/// The HTTP routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/webhooks/github", post(intake::receive))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/.well-known/security.txt", get(security_txt))
        .merge(api::routes(state.clone()))
        .merge(dashboard::routes())
        .merge(metrics::routes())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every answer carries: HTTPS only from now on (HSTS), no MIME sniffing, no framing,
/// no caching of API data, no referrer leaks.
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    let headers = response.headers_mut();
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The dashboard's pages set their own (its stylesheet and forms); the rest get none at all.
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'none'; frame-ancestors 'none'",
        ));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, &'static str) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: the store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
    }
}

/// RFC 9116: how to report a vulnerability. `Expires` moves with the calendar (the start of the
/// current UTC day plus `expires_days`), so a long-running server never serves an expired file.
async fn security_txt(State(state): State<Arc<AppState>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(sec) = &state.security_txt else {
        return (StatusCode::NOT_FOUND, "no security.txt is configured\n").into_response();
    };
    let today = state.clock.now().date_naive();
    let expires = today.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
        + chrono::Duration::days(i64::from(sec.expires_days));
    let mut text = String::new();
    for contact in &sec.contact {
        text.push_str(&format!("Contact: {contact}\n"));
    }
    text.push_str(&format!(
        "Expires: {}\n",
        expires.format("%Y-%m-%dT%H:%M:%S.000Z")
    ));
    if let Some(encryption) = &sec.encryption {
        text.push_str(&format!("Encryption: {encryption}\n"));
    }
    if let Some(policy) = &sec.policy {
        text.push_str(&format!("Policy: {policy}\n"));
    }
    text.push_str(&format!(
        "Preferred-Languages: {}\n",
        sec.preferred_languages
    ));
    for canonical in &sec.canonical {
        text.push_str(&format!("Canonical: {canonical}\n"));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Validates the configuration, binds the listener and starts serving and processing.
pub async fn start(config: &ServerConfig, deps: Dependencies) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    // `validate` guarantees TLS files unless --insecure-dev was given.
    let tls = match &config.tls {
        Some(files) => Some(tls::server_config(files).await?),
        None => None,
    };
    if tls.is_none() {
        tracing::warn!(listen = %config.listen,
            "--insecure-dev: serving plain HTTP on loopback; never expose this server");
    }
    let server_id = config.server_id.clone().unwrap_or_else(default_server_id);
    tracing::info!(%server_id, "server identity for claims and leases");
    // Each start is audited with a digest of the configuration (paths and settings; secrets
    // are never in it), so a changed configuration shows in the audit log.
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            serde_json::to_vec(config).unwrap_or_default(),
        ))
    };
    deps.store
        .append_audit(&mayfly_store::NewAudit {
            at: deps.clock.now(),
            actor: format!("server:{server_id}"),
            source: None,
            action: "server start".into(),
            target: Some(format!("configuration sha256:{digest}")),
            outcome: "ok".into(),
        })
        .await
        .map_err(ServerError::Audit)?;
    // Agents: a listener (bound now, so enrolment can name its port) and, with TLS, the agent
    // PKI that makes it mTLS.
    let agent_listener = match deps.github {
        Some(_) => {
            let listener = tokio::net::TcpListener::bind(config.agent_listen)
                .await
                .map_err(|source| ServerError::AgentBind {
                    addr: config.agent_listen,
                    source,
                })?;
            Some(listener)
        }
        None => None,
    };
    let agent_port = agent_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let pki = match (&config.tls, &agent_listener) {
        (Some(files), Some(_)) => Some(Arc::new(
            load_agent_pki(
                config,
                files,
                deps.store.as_ref(),
                deps.clock.as_ref(),
                &server_id,
            )
            .await?,
        )),
        _ => None,
    };
    let dashboard = match (&config.dashboard, &config.github) {
        (Some(d), Some(github)) => Some(Arc::new(
            dashboard::Dashboard::load(d, github, deps.store.as_ref(), &sealer(config)?).await?,
        )),
        _ => None,
    };
    let wakeup = Arc::new(Notify::new());
    let schedule = Arc::new(Notify::new());
    let summary = Arc::new(processor::Summary::default());
    let metrics = Arc::new(metrics::Metrics::new());
    let state = Arc::new(AppState {
        store: deps.store.clone(),
        clock: deps.clock.clone(),
        verifier: WebhookVerifier::new(deps.webhook_secrets),
        max_body_bytes: config.webhook.max_body_bytes,
        deliveries: group_commit::DeliveryWriter::spawn(group_commit::Writer {
            store: deps.store.clone(),
            clock: deps.clock.clone(),
            metrics: metrics.clone(),
            summary: summary.clone(),
            processor: wakeup.clone(),
            scheduler: schedule.clone(),
            profiles: config.profiles.clone(),
        }),
        log_limiter: log_limit::LogLimiter::new(10, Duration::from_secs(60)),
        refusals: refusals::Refusals::new(&config.refusals),
        security_txt: config.security_txt.clone(),
        pki: pki.clone(),
        agent_port,
        reports: usage::Settings {
            retention_days: config.retention.job_days,
            machine_types: config.profiles.iter().map(|p| p.name.clone()).collect(),
        },
        dashboard,
        metrics: metrics.clone(),
    });
    let listener = std::net::TcpListener::bind(config.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;

    let shutdown = CancellationToken::new();
    let http = axum_server::Handle::new();
    let mut tasks = tokio::task::JoinSet::new();
    let has_tls = tls.is_some();
    // Bumped after each successful certificate reload, so the agent listener re-reads too.
    let (reloaded_tx, reloaded_rx) = tokio::sync::watch::channel(0_u64);
    if let (Some(live), Some(files)) = (&tls, &config.tls) {
        // Registered before `start` returns, so a SIGHUP from then on never kills the process.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        tasks.spawn(reload_on_sighup(
            hangups,
            live.clone(),
            files.clone(),
            deps.store.clone(),
            deps.clock.clone(),
            reloaded_tx,
            shutdown.clone(),
        ));
    }
    tasks.spawn(summarise_refusals(state.clone(), shutdown.clone()));
    tasks.spawn(serve(listener, tls, router(state), http.clone()));
    let processor = Processor {
        store: deps.store.clone(),
        clock: deps.clock.clone(),
        server_id: server_id.clone(),
        wakeup: wakeup.clone(),
        scheduler: schedule.clone(),
        metrics: metrics.clone(),
        summary,
    };
    tasks.spawn(processor.run(shutdown.clone()));
    tasks.spawn(purge_loop(
        deps.store.clone(),
        deps.clock.clone(),
        server_id.clone(),
        config.retention.clone(),
        shutdown.clone(),
    ));
    let agent_addr = match (deps.github, agent_listener) {
        (Some(github), Some(listener)) => {
            let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
            let lease = Duration::from_secs(config.agent_lease_secs.max(1));
            let hub = Arc::new(agents::AgentHub::new(events_tx, lease));
            metrics.watch_agents(hub.clone());
            github.set_observer(metrics.clone());
            let addr = listener
                .local_addr()
                .map_err(|source| ServerError::AgentBind {
                    addr: config.agent_listen,
                    source,
                })?;
            let auth = pki.as_ref().map(|_| agents::AgentAuth {
                store: deps.store.clone(),
                clock: deps.clock.clone(),
            });
            let service = mayfly_proto::v1::agent_service_server::AgentServiceServer::new(
                agents::AgentServiceImpl {
                    hub: hub.clone(),
                    auth,
                },
            );
            let tls_source = match (&config.tls, &pki) {
                (Some(files), Some(pki)) => Some((files.clone(), pki.clone())),
                _ => None,
            };
            // Built here so a certificate that does not load fails the start.
            let first = agent_server(tls_source.as_ref()).await?;
            let listener = listener
                .into_std()
                .map_err(|source| ServerError::AgentBind {
                    addr: config.agent_listen,
                    source,
                })?;
            tasks.spawn(serve_agents(
                listener,
                service,
                first,
                tls_source,
                reloaded_rx,
                shutdown.clone(),
            ));
            let reconciler = reconciler::Reconciler {
                store: deps.store.clone(),
                clock: deps.clock.clone(),
                github: github.clone(),
                interval: Duration::from_secs(config.reconcile_interval_secs.max(1)),
                intake: wakeup,
                server_id: server_id.clone(),
            };
            tasks.spawn(reconciler.run(shutdown.clone()));
            let scheduler = scheduler::Scheduler {
                store: deps.store,
                clock: deps.clock,
                github,
                hub,
                profiles: config.profiles.clone(),
                run: config.runner_entry.clone(),
                wake: schedule,
                server_id,
                metrics,
                phases_pending: Default::default(),
                lease,
                backoff: Default::default(),
                undecided: Default::default(),
            };
            tasks.spawn(scheduler.run(events_rx, shutdown.clone()));
            tracing::info!(%addr, mtls = pki.is_some(), "listening for agents");
            Some(addr)
        }
        _ => None,
    };
    tracing::info!(addr = %local_addr, tls = has_tls, "mayfly server listening");
    Ok(ServerHandle {
        local_addr,
        agent_addr,
        tls: has_tls,
        shutdown,
        http,
        tasks,
    })
}

/// Writes the audit summaries of refused requests as their windows end, and of every open
/// window at shutdown.
async fn summarise_refusals(state: Arc<AppState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(state.refusals.window());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        for summary in state
            .refusals
            .take_summaries(std::time::Instant::now(), last)
        {
            let row = summary.audit_row(state.clock.now());
            if let Err(e) = state.store.append_audit(&row).await {
                tracing::error!(error = %error::chain(&e), source = ?row.source,
                    "could not write the audit summary of refused requests");
            }
        }
        if last {
            return;
        }
    }
}

/// Serves `app` on `listener` until the handle shuts it down; logs why if it stops otherwise.
async fn serve(
    listener: std::net::TcpListener,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    app: Router,
    handle: axum_server::Handle<SocketAddr>,
) {
    // The peer address is kept for the audit log.
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let result = match tls {
        Some(tls) => match axum_server::from_tcp_rustls(listener, tls) {
            Ok(server) => server.handle(handle).serve(app).await,
            Err(e) => Err(e),
        },
        None => match axum_server::from_tcp(listener) {
            Ok(server) => server.handle(handle).serve(app).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "the HTTP listener stopped");
    }
}

/// A gRPC server for agents: mTLS with the certificate files and the agent CA, or plain for a
/// loopback development server.
async fn agent_server(
    tls: Option<&(TlsFiles, Arc<agent_pki::AgentPki>)>,
) -> Result<tonic::transport::Server, ServerError> {
    let builder = tonic::transport::Server::builder();
    match tls {
        Some((files, pki)) => builder
            .tls_config(agent_tls(files, pki).await?)
            .map_err(|e| ServerError::AgentTls(e.to_string())),
        None => Ok(builder),
    }
}

/// Serves agents on `listener`. After a certificate reload a new server takes over accepting
/// with the new certificate; the previous one stops accepting and keeps its open sessions
/// until they end (agents then reconnect to the new one). A reloaded certificate that does not
/// load leaves the previous server accepting.
async fn serve_agents(
    listener: std::net::TcpListener,
    service: mayfly_proto::v1::agent_service_server::AgentServiceServer<agents::AgentServiceImpl>,
    first: tonic::transport::Server,
    tls: Option<(TlsFiles, Arc<agent_pki::AgentPki>)>,
    mut reloaded: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let mut generations = tokio::task::JoinSet::new();
    let mut next = Some(first);
    let mut stop_previous: Option<CancellationToken> = None;
    loop {
        if let Some(mut builder) = next.take() {
            let accepting = match listener
                .try_clone()
                .and_then(tokio::net::TcpListener::from_std)
            {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "the agent listener stopped");
                    break;
                }
            };
            let stop_accepting = CancellationToken::new();
            let served = builder
                .add_service(service.clone())
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(accepting),
                    stop_accepting.clone().cancelled_owned(),
                );
            generations.spawn(async move {
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "the agent listener stopped");
                }
            });
            if let Some(previous) = stop_previous.replace(stop_accepting) {
                previous.cancel();
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = reloaded.changed() => {
                if changed.is_err() {
                    // No reloads can come (no TLS): serve until shutdown.
                    shutdown.cancelled().await;
                    break;
                }
                match agent_server(tls.as_ref()).await {
                    Ok(builder) => {
                        next = Some(builder);
                        tracing::info!("the agent listener now serves the reloaded certificate");
                    }
                    Err(e) => tracing::error!(error = %error::chain(&e),
                        "the agent listener keeps its previous certificate"),
                }
            }
        }
    }
    if let Some(current) = stop_previous {
        current.cancel();
    }
    // Open sessions get a moment to end by themselves, then are cut.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while generations.join_next().await.is_some() {}
    })
    .await;
    generations.abort_all();
}

/// Reloads the listener's certificate and key from their files on SIGHUP (a renewed
/// certificate, without a restart), and audits it. A pair that does not load keeps the old one.
async fn reload_on_sighup(
    hangups: std::io::Result<tokio::signal::unix::Signal>,
    live: axum_server::tls_rustls::RustlsConfig,
    files: TlsFiles,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    reloaded: tokio::sync::watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut hangups = match hangups {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: certificates reload only on restart");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        // Audited before it happens: a reload that cannot be recorded does not happen.
        let request = mayfly_store::NewAudit {
            at: clock.now(),
            actor: "signal:SIGHUP".into(),
            source: None,
            action: "tls reload".into(),
            target: Some(files.cert_file.display().to_string()),
            outcome: "requested".into(),
        };
        if let Err(e) = store.append_audit(&request).await {
            tracing::error!(error = %error::chain(&e),
                "could not audit the TLS reload; still serving the previous certificate");
            continue;
        }
        let outcome = match tls::reload(&live, &files) {
            Ok(()) => {
                tracing::info!(cert = %files.cert_file.display(), "reloaded the TLS certificate");
                reloaded.send_modify(|generation| *generation += 1);
                "ok".to_owned()
            }
            Err(e) => {
                tracing::error!(error = %error::chain(&e), "TLS reload failed; still serving the previous certificate");
                format!("failed: {e}")
            }
        };
        let event = mayfly_store::NewAudit {
            at: clock.now(),
            actor: "signal:SIGHUP".into(),
            source: None,
            action: "tls reload".into(),
            target: Some(files.cert_file.display().to_string()),
            outcome,
        };
        if let Err(e) = store.append_audit(&event).await {
            tracing::error!(error = %error::chain(&e), "could not audit the TLS reload");
        }
    }
}

/// The agent CA (sealed in the store, made on first start) and the server CA agents pin. The
/// master key file is made on first start when it is the default one.
async fn load_agent_pki(
    config: &ServerConfig,
    files: &TlsFiles,
    store: &dyn Store,
    clock: &dyn Clock,
    server_id: &str,
) -> Result<agent_pki::AgentPki, ServerError> {
    let sealer = sealer(config)?;
    let server_ca_pem = server_ca_pem(files)?;
    // Of servers starting together on a fresh database, one makes the CA; the others wait.
    for _ in 0..30 {
        if hold_lease(store, clock, "agent-ca", server_id, Duration::from_secs(30)).await {
            return agent_pki::AgentPki::load_or_create(store, &sealer, server_ca_pem)
                .await
                .map_err(ServerError::Pki);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    agent_pki::AgentPki::load_or_create(store, &sealer, server_ca_pem)
        .await
        .map_err(ServerError::Pki)
}

/// The sealer of secrets in the store; the master key file is made on first start when it is
/// the default one.
pub fn sealer(config: &ServerConfig) -> Result<mayfly_store::Sealer, ServerError> {
    let master = config.master_key_path();
    if !master.exists() && config.database.master_key_file.is_none() {
        mayfly_store::MasterKey::random()
            .write(&master)
            .map_err(ServerError::MasterKey)?;
        tracing::info!(file = %master.display(),
            "made a master key for sealed values; servers sharing this database need a copy");
    }
    Ok(mayfly_store::Sealer::new(master))
}

/// `[tls] ca_file`, or the last certificate of `cert_file`.
pub fn server_ca_pem(files: &TlsFiles) -> Result<String, ServerError> {
    let path = files.ca_file.as_ref().unwrap_or(&files.cert_file);
    let text = std::fs::read_to_string(path).map_err(|_| ServerError::ServerCa(path.clone()))?;
    if files.ca_file.is_some() {
        return Ok(text);
    }
    // The chain's last PEM block, as written.
    text.rfind("-----BEGIN CERTIFICATE-----")
        .map(|start| text[start..].to_owned())
        .filter(|pem| agent_pki::pem_sha256(pem).is_some())
        .ok_or_else(|| ServerError::ServerCa(path.clone()))
}

/// mTLS for the agent listener: the server's own certificate, client certificates from the
/// agent CA only.
async fn agent_tls(
    files: &TlsFiles,
    pki: &agent_pki::AgentPki,
) -> Result<tonic::transport::ServerTlsConfig, ServerError> {
    let cert = tokio::fs::read(&files.cert_file)
        .await
        .map_err(|e| ServerError::AgentTls(format!("{}: {e}", files.cert_file.display())))?;
    let key = zeroize::Zeroizing::new(
        tokio::fs::read(&files.key_file)
            .await
            .map_err(|e| ServerError::AgentTls(format!("{}: {e}", files.key_file.display())))?,
    );
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key.as_slice()))
        .client_ca_root(tonic::transport::Certificate::from_pem(pki.ca_cert_pem())))
}

/// `host-pid-random`: unique among servers sharing a database.
fn default_server_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "mayfly".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Whether this server holds (or now takes) the lease on a singleton loop for `ttl`. A store
/// error counts as not holding it.
pub(crate) async fn hold_lease(
    store: &dyn Store,
    clock: &dyn Clock,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> bool {
    let now = clock.now();
    let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(1));
    match store.try_lease(name, holder, now, until).await {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(error = %error::chain(&e), lease = name, "could not take a lease");
            false
        }
    }
}

/// Deletes metadata past its retention, at start and every hour; with several servers, only the
/// one holding the `purge` lease.
async fn purge_loop(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    server_id: String,
    retention: RetentionConfig,
    shutdown: CancellationToken,
) {
    let period = Duration::from_secs(3600);
    let mut first = true;
    loop {
        if !hold_lease(
            store.as_ref(),
            clock.as_ref(),
            "purge",
            &server_id,
            period * 2,
        )
        .await
        {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => continue,
            }
        }
        let now = clock.now();
        let jobs_before = now - chrono::Duration::days(i64::from(retention.job_days));
        let deliveries_before = now - chrono::Duration::days(i64::from(retention.delivery_days));
        match store.purge(jobs_before, deliveries_before).await {
            Ok(purged) if purged != mayfly_store::Purged::default() => {
                tracing::info!(
                    jobs = purged.jobs,
                    vms = purged.vms,
                    deliveries = purged.deliveries,
                    "purged expired metadata"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %error::chain(&e), "purging expired metadata failed"),
        }
        // After an hour of use (not at start, when the tables may be empty): the planner's
        // statistics, which SQLite never gathers on its own.
        if !std::mem::take(&mut first) {
            if let Err(e) = store.refresh_statistics().await {
                tracing::warn!(error = %error::chain(&e), "refreshing the query planner's statistics failed");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}
