//! The listener speaks TLS 1.2/1.3 only: a client that trusts the certificate gets through,
//! plaintext HTTP to the TLS port gets nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::time::Duration;

#[tokio::test]
async fn serves_tls_and_refuses_plaintext() {
    let t = support::start(true, b"s", None, |_| {}).await;
    let server = t.server;
    let cert_pem = t.cert_pem.unwrap();
    assert!(server.base_url().starts_with("https://"));

    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
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
