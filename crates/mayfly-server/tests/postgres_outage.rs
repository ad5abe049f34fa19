//! PostgreSQL goes away under a running server: readiness turns false and webhooks get 503
//! (GitHub redelivers those), and when PostgreSQL is back the server recovers by itself:
//! ready again, new and redelivered webhooks accepted and applied. The outage is a TCP proxy in
//! front of the real PostgreSQL server that the test cuts and restores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_github::webhook::{signature_header, WebhookSecret};
use mayfly_store::{PgStore, Store};
use reqwest::StatusCode;
use sqlx::Connection;
use tokio::task::JoinSet;

const SECRET: &[u8] = b"outage-secret";

/// A TCP proxy to PostgreSQL that can be cut (listener closed, every connection dropped) and
/// restored on the same port.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Option<JoinSet<()>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut proxy = Self {
            addr,
            upstream,
            tasks: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Closes the port and every connection through it.
    async fn cut(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }

    async fn restore(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("MAYFLY_GITHUB_CONTRACT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/github"));
    std::fs::read(dir.join("fixtures").join(name)).unwrap()
}

/// Delivers as GitHub does, which gives up on a delivery after 10 s.
async fn deliver(http: &reqwest::Client, base: &str, id: &str) -> StatusCode {
    let body = fixture("workflow_job.queued.json");
    let signature = signature_header(&WebhookSecret::new(SECRET.to_vec()), &body);
    http.post(format!("{base}webhooks/github"))
        .header("content-type", "application/json")
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", id)
        .header("x-hub-signature-256", signature)
        .body(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("no answer within GitHub's 10 s delivery timeout")
        .status()
}

async fn ready(http: &reqwest::Client, base: &str) -> StatusCode {
    http.get(format!("{base}readyz"))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_means_not_ready_and_503_then_recovery() {
    let admin = std::env::var("MAYFLY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {admin} ({e})"));
    let name = format!("mayfly_outage_{:08x}", rand::random::<u32>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let upstream_url = url::Url::parse(&admin).unwrap();
    let upstream: SocketAddr = format!(
        "{}:{}",
        upstream_url.host_str().unwrap(),
        upstream_url.port().unwrap_or(5432)
    )
    .parse()
    .unwrap();
    let mut proxy = Proxy::start(upstream).await;
    let user = upstream_url.username();
    let url = format!("postgres://{user}@{}/{name}", proxy.addr);
    let store = Arc::new(PgStore::connect(&url).await.unwrap());

    let dir = tempfile::tempdir().unwrap();
    let (server, _) = support::start_on(&dir, store.clone(), false, SECRET, None, |_| {}).await;
    let base = server.base_url();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(ready(&http, &base).await, StatusCode::OK);
    assert_eq!(
        deliver(&http, &base, "before-outage").await,
        StatusCode::ACCEPTED
    );

    proxy.cut().await;
    assert_eq!(ready(&http, &base).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        deliver(&http, &base, "during-outage").await,
        StatusCode::SERVICE_UNAVAILABLE
    );

    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready(&http, &base).await != StatusCode::OK {
        assert!(Instant::now() < deadline, "the server did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // GitHub redelivers the refused one; a new one arrives too.
    assert_eq!(
        deliver(&http, &base, "during-outage").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        deliver(&http, &base, "after-outage").await,
        StatusCode::ACCEPTED
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in ["before-outage", "during-outage", "after-outage"] {
        let id = mayfly_core::DeliveryId::parse(id).unwrap();
        loop {
            let record = store.delivery(&id).await.unwrap();
            if record.is_some_and(|r| r.processed_at.is_some()) {
                break;
            }
            assert!(Instant::now() < deadline, "{id} was not applied");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    server.shutdown().await;
    store.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}
