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
    // What testssl.sh and browsers look for.
    let headers = ready.headers();
    assert!(headers["strict-transport-security"]
        .to_str()
        .unwrap()
        .starts_with("max-age=31536000"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");

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
    t.store.close().await;
}

/// A TLS 1.1 ClientHello offering TLS_RSA_WITH_AES_128_CBC_SHA, no extensions.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // one cipher suite
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, 0x00, u8::try_from(body.len()).unwrap()];
    handshake.extend_from_slice(&body);
    let mut record = vec![
        0x16,
        0x03,
        0x02,
        0x00,
        u8::try_from(handshake.len()).unwrap(),
    ];
    record.extend_from_slice(&handshake);
    record
}

/// Sends `bytes` on a fresh connection; returns what came back before the server closed it.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server neither answered nor closed the connection");
    answer
}

async fn still_serves(base: &str, cert_pem: &str) {
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let ready = client.get(format!("{base}readyz")).send().await.unwrap();
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
}

#[tokio::test]
async fn tls_1_1_and_garbage_are_refused_and_the_server_carries_on() {
    let t = support::start(true, b"s", None, |_| {}).await;
    let addr = t.server.local_addr();
    let cert_pem = t.cert_pem.clone().unwrap();

    // TLS 1.1: a fatal alert, never a ServerHello.
    let answer = exchange(addr, &tls11_client_hello()).await;
    assert!(
        answer.first() != Some(&0x16),
        "the server answered a TLS 1.1 hello with a handshake: {answer:02x?}"
    );
    if let Some(&content_type) = answer.first() {
        assert_eq!(content_type, 0x15, "expected an alert: {answer:02x?}");
        assert_eq!(
            answer.get(5),
            Some(&2),
            "expected a fatal alert: {answer:02x?}"
        );
        // protocol_version or handshake_failure: either way, no TLS 1.1 session.
        assert!(
            matches!(answer.get(6), Some(0x46 | 0x28)),
            "unexpected alert: {answer:02x?}"
        );
    }
    // Garbage where a ClientHello should be: dropped.
    let garbage: Vec<u8> = (0..512).map(|i| u8::try_from(i % 251).unwrap()).collect();
    let answer = exchange(addr, &garbage).await;
    assert!(answer.first() != Some(&0x16), "{answer:02x?}");
    let mut truncated = tls11_client_hello();
    truncated[2] = 0x03; // claims TLS 1.2 in the record …
    truncated.truncate(20); // … and stops half-way
    let _ = exchange_with_close(addr, &truncated).await;

    still_serves(
        &t.server.base_url().replace("127.0.0.1", "localhost"),
        &cert_pem,
    )
    .await;
    t.server.shutdown().await;
    t.store.close().await;
}

/// Sends `bytes`, then closes the write side (a client that gives up mid-handshake).
async fn exchange_with_close(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    answer
}

/// A renewed certificate is picked up on SIGHUP, without a restart, and the reload is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let t = support::start(true, b"s", None, |_| {}).await;
    let base = t.server.base_url().replace("127.0.0.1", "localhost");
    let old_pem = t.cert_pem.clone().unwrap();
    still_serves(&base, &old_pem).await;

    let renewed =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(t.dir.path().join("server.crt"), renewed.cert.pem()).unwrap();
    std::fs::write(
        t.dir.path().join("server.key"),
        renewed.key_pair.serialize_pem(),
    )
    .unwrap();
    nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGHUP).unwrap();

    let new_pem = renewed.cert.pem();
    let new_client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(new_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        if new_client.get(format!("{base}readyz")).send().await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reloaded,
        "the renewed certificate was not served after SIGHUP"
    );
    use mayfly_store::CommonStore;
    let audit = t.store.audit_log(0, 100).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|r| r.action == "tls reload" && r.outcome == "ok"),
        "{audit:?}"
    );
    t.server.shutdown().await;
    t.store.close().await;
}
