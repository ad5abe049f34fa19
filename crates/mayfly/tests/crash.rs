//! `kill -9` of the server in the middle of a burst of concurrent webhooks (32 senders, so
//! deliveries share group commits): the encrypted database is not
//! corrupted, and every delivery that was answered 2xx is in it (GitHub will not send it again).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_github::webhook::{signature_header, WebhookSecret};

fn write_private(path: &std::path::Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(dir: &std::path::Path, port: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args([
            "server",
            "--insecure-dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .arg("--webhook-secret-file")
        .arg(dir.join("secret"))
        .env("MAYFLY_DB_KEY_FILE", dir.join("db.key"))
        .env("MAYFLY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(http: &reqwest::Client, port: u16) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(r) = http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the server did not become ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_a_burst_loses_no_acknowledged_delivery() {
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("secret"), "crash-secret\n");
    let key = mayfly_store::DbKey::random();
    write_private(&dir.path().join("db.key"), key.to_hex().as_str());
    let port = free_port();
    let mut server = start_server(dir.path(), port);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_ready(&http, port).await;

    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/github/fixtures/workflow_job.queued.json"
    ))
    .unwrap();
    let signature = signature_header(&WebhookSecret::new(b"crash-secret".to_vec()), &body);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for worker in 0..32 {
        let (http, body, signature, acked) =
            (http.clone(), body.clone(), signature.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("burst-{worker}-{i}");
                let sent = http
                    .post(format!("http://127.0.0.1:{port}/webhooks/github"))
                    .header("x-github-event", "workflow_job")
                    .header("x-github-delivery", &id)
                    .header("x-hub-signature-256", &signature)
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => acked.lock().unwrap().push(id),
                    _ => return,
                }
            }
        }));
    }
    // Let the burst run, then kill the server without warning.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "the burst was too small to mean anything: {}",
        acked.len()
    );

    let store = mayfly_store::SqliteStore::open(&dir.path().join("data/mayfly.db"), &key)
        .await
        .unwrap();
    use mayfly_store::Store;
    let mut missing = Vec::new();
    for id in &acked {
        let id = mayfly_core::DeliveryId::parse(id).unwrap();
        if store.delivery(&id).await.unwrap().is_none() {
            missing.push(id);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged deliveries lost: {missing:?}",
        missing.len(),
        acked.len()
    );
    store.close().await;

    // The server starts again on the same file and finishes what was pending.
    let mut server = start_server(dir.path(), port);
    wait_ready(&http, port).await;
    server.kill().unwrap();
    server.wait().unwrap();
    let store = mayfly_store::SqliteStore::open(&dir.path().join("data/mayfly.db"), &key)
        .await
        .unwrap();
    assert!(
        store.jobs().await.unwrap().len() == 1,
        "the one job of the burst is recorded"
    );
    store.close().await;
}
