//! The listener speaks TLS 1.2/1.3 only: a client that trusts the certificate gets through,
//! plaintext HTTP to the TLS port gets nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::SystemClock;
use mayfly_github::webhook::WebhookSecret;
use mayfly_server::{Dependencies, ServerConfig, TlsFiles, WebhookConfig};
use mayfly_store::SqliteStore;

#[tokio::test]
async fn serves_tls_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_file = dir.path().join("server.crt");
    let key_file = dir.path().join("server.key");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();

    let store = Arc::new(
        SqliteStore::open(
            &dir.path().join("mayfly.db"),
            &mayfly_store::DbKey::random(),
        )
        .await
        .unwrap(),
    );
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        tls: Some(TlsFiles {
            cert_file,
            key_file,
        }),
        webhook: WebhookConfig {
            secret_files: vec!["unused".into()],
            ..WebhookConfig::default()
        },
        ..ServerConfig::default()
    };
    let deps = Dependencies {
        store,
        clock: Arc::new(SystemClock),
        webhook_secrets: vec![WebhookSecret::new(b"s".to_vec())],
        github: None,
    };
    let server = mayfly_server::start(&config, deps).await.unwrap();
    assert!(server.base_url().starts_with("https://"));

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let ready = trusting
        .get(format!("{}readyz", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);

    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("{}healthz", server.base_url()))
        .send()
        .await
        .is_err());

    let plain = format!("http://{}/healthz", server.local_addr());
    let result = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(plain)
        .send()
        .await;
    match result {
        Err(_) => {}
        Ok(response) => panic!("plaintext got an HTTP answer: {}", response.status()),
    }
    server.shutdown().await;
}
