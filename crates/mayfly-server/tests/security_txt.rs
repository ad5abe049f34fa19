//! `/.well-known/security.txt` over TLS, checked the way a researcher's tooling checks it: the
//! `sectxt` validator (PyPI; scripts/setup installs it into target/pytools) finds no error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::path::PathBuf;
use std::process::Command;

use mayfly_server::config::SecurityTxtConfig;

fn pytools() -> PathBuf {
    std::env::var_os("MAYFLY_PYTOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
            target.join("pytools")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_txt_passes_the_sectxt_validator() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let origin = format!("https://localhost:{port}");
    let t = support::start(true, b"sectxt", None, |config| {
        config.listen = format!("127.0.0.1:{port}").parse().unwrap();
        config.security_txt = Some(SecurityTxtConfig {
            contact: vec!["mailto:security@example.com".into()],
            policy: Some("https://example.com/security-policy".into()),
            encryption: Some("https://example.com/pgp-key.txt".into()),
            preferred_languages: "en".into(),
            canonical: vec![format!("{origin}/.well-known/security.txt")],
            expires_days: 180,
        });
    })
    .await;
    let ca = t.dir.path().join("server.crt");

    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(t.cert_pem.as_ref().unwrap().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let response = http
        .get(format!("{origin}/.well-known/security.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    for field in [
        "Contact: mailto:security@example.com",
        "Expires: ",
        "Policy: ",
        "Preferred-Languages: en",
        "Canonical: ",
    ] {
        assert!(body.contains(field), "{field} missing:\n{body}");
    }

    let script = format!(
        "import json, sectxt\n\
         s = sectxt.SecurityTXT('https://localhost:{port}')\n\
         print(json.dumps({{'valid': s.is_valid(), 'errors': s.errors, 'recommendations': s.recommendations}}))"
    );
    let tools = pytools();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-c", &script])
            .env("PYTHONPATH", &tools)
            .env("REQUESTS_CA_BUNDLE", &ca)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the sectxt validator did not run (scripts/setup installs it into {}): {stderr}",
        pytools().display()
    );
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["errors"], serde_json::json!([]), "{verdict}");
    assert_eq!(verdict["valid"], true, "{verdict}");
    eprintln!("sectxt recommendations: {}", verdict["recommendations"]);
    t.server.shutdown().await;
    t.store.close().await;
}
