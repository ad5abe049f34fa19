//! A real server for integration tests: a temporary directory, an encrypted SQLite store with a
//! random key, the server on 127.0.0.1:0 — over TLS with a fresh self-signed certificate, or
//! plain HTTP with `insecure_dev` — and whatever the test adjusts in the configuration.
#![allow(dead_code)] // each test binary uses part of it

pub mod agent;

use std::sync::Arc;

use mayfly_core::SystemClock;
use mayfly_github::webhook::WebhookSecret;
use mayfly_github::GitHubClient;
use mayfly_server::{Dependencies, ServerConfig, ServerHandle, TlsFiles, WebhookConfig};
use mayfly_store::{DbKey, SqliteStore};

pub struct TestServer {
    pub server: ServerHandle,
    pub store: Arc<SqliteStore>,
    /// The certificate (PEM) a client must trust, when serving TLS.
    pub cert_pem: Option<String>,
    pub dir: tempfile::TempDir,
    /// The server's clock: the system's, moved on by what the test adds.
    pub clock: Arc<LaterClock>,
}

/// The system clock plus an offset a test can add to (to expire sessions, leases, …).
#[derive(Debug, Default)]
pub struct LaterClock(std::sync::atomic::AtomicI64);

impl LaterClock {
    pub fn advance(&self, by: chrono::Duration) {
        self.0
            .fetch_add(by.num_milliseconds(), std::sync::atomic::Ordering::SeqCst);
    }
}

impl mayfly_core::Clock for LaterClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let offset = self.0.load(std::sync::atomic::Ordering::SeqCst);
        chrono::Utc::now() + chrono::Duration::milliseconds(offset)
    }
}

/// Starts a server. `tls`: serve TLS with a self-signed certificate for localhost/127.0.0.1.
pub async fn start(
    tls: bool,
    secret: &[u8],
    github: Option<Arc<GitHubClient>>,
    adjust: impl FnOnce(&mut ServerConfig),
) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("mayfly.db"), &DbKey::random())
            .await
            .unwrap(),
    );
    let clock = Arc::new(LaterClock::default());
    let (server, cert_pem) = launch(
        &dir,
        store.clone(),
        clock.clone(),
        tls,
        secret,
        github,
        adjust,
    )
    .await;
    TestServer {
        server,
        store,
        cert_pem,
        dir,
        clock,
    }
}

/// Starts a server on a store of the test's choosing, its files in `dir`. Returns the server
/// and, with `tls`, the certificate a client must trust.
pub async fn start_on(
    dir: &tempfile::TempDir,
    store: Arc<dyn mayfly_store::Store>,
    tls: bool,
    secret: &[u8],
    github: Option<Arc<GitHubClient>>,
    adjust: impl FnOnce(&mut ServerConfig),
) -> (ServerHandle, Option<String>) {
    let clock = Arc::new(SystemClock);
    launch(dir, store, clock, tls, secret, github, adjust).await
}

async fn launch(
    dir: &tempfile::TempDir,
    store: Arc<dyn mayfly_store::Store>,
    clock: Arc<dyn mayfly_core::Clock>,
    tls: bool,
    secret: &[u8],
    github: Option<Arc<GitHubClient>>,
    adjust: impl FnOnce(&mut ServerConfig),
) -> (ServerHandle, Option<String>) {
    let (tls_files, cert_pem) = if tls {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let files = TlsFiles {
            cert_file: dir.path().join("server.crt"),
            key_file: dir.path().join("server.key"),
            ca_file: None,
        };
        std::fs::write(&files.cert_file, cert.cert.pem()).unwrap();
        std::fs::write(&files.key_file, cert.key_pair.serialize_pem()).unwrap();
        (Some(files), Some(cert.cert.pem()))
    } else {
        (None, None)
    };
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        insecure_dev: !tls,
        tls: tls_files,
        webhook: WebhookConfig {
            secret_files: vec!["unused".into()],
            ..WebhookConfig::default()
        },
        agent_listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    adjust(&mut config);
    let deps = Dependencies {
        store,
        clock,
        webhook_secrets: vec![WebhookSecret::new(secret.to_vec())],
        github,
    };
    let server = mayfly_server::start(&config, deps).await.unwrap();
    (server, cert_pem)
}

/// The profile the stand-in agent's `test-image` serves: `mayfly-linux-2cpu`, 2 vCPUs, jobs
/// labelled `self-hosted` + `linux` + its name.
pub fn profile(idle_timeout_secs: u32) -> mayfly_core::Profile {
    mayfly_core::Profile {
        name: "mayfly-linux-2cpu".into(),
        labels: vec!["self-hosted".into(), "linux".into()],
        vcpus: 2,
        memory_mib: 2048,
        image: "test-image".into(),
        max_runtime_secs: 600,
        disk_gib: 20,
        runner_entry: None,
        boot_timeout_secs: 60,
        idle_timeout_secs,
        warm: 0,
        warm_max_age_secs: 3600,
    }
}

/// The GitHub simulator on 127.0.0.1:0 with a fresh App, and mayfly's client for that App.
pub async fn sim_with_client(secret: &[u8]) -> (mayfly_sim::SimHandle, Arc<GitHubClient>) {
    sim_with_client_recording(secret, false).await
}

/// As [`sim_with_client`]; the simulator keeps every REST exchange when `record`.
pub async fn sim_with_client_recording(
    secret: &[u8],
    record: bool,
) -> (mayfly_sim::SimHandle, Arc<GitHubClient>) {
    use secrecy::ExposeSecret;
    let app = mayfly_sim::AppKeyPair::generate().unwrap();
    let mut config = mayfly_sim::SimConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        app.public_pem.clone(),
        WebhookSecret::new(secret.to_vec()),
    );
    config.record_exchanges = record;
    let sim = mayfly_sim::Sim::start(config).await.unwrap();
    let credentials = mayfly_github::AppCredentials::new(
        1,
        mayfly_github::AppPrivateKeyPem::new(app.private_pem.expose_secret().to_owned()),
    )
    .unwrap();
    let client = GitHubClient::new(mayfly_github::GitHubClientConfig::new(
        sim.base_url(),
        credentials,
    ))
    .unwrap();
    (sim, Arc::new(client))
}
