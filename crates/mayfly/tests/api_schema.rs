//! The API against its own OpenAPI document, the way an outside client would hold it to it:
//! schemathesis (PyPI; scripts/setup installs it into target/pytools) generates requests for
//! every operation — valid, invalid and hostile — and checks every answer's status, headers
//! and body against the document.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use mayfly_github::webhook::{signature_header, WebhookSecret};

fn pytools() -> PathBuf {
    std::env::var_os("MAYFLY_PYTOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target"))
                })
                .join("pytools")
        })
}

fn write_private(path: &std::path::Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_to_its_openapi_document_under_schemathesis() {
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("secret"), "schema-secret");
    write_private(
        &dir.path().join("db.key"),
        mayfly_store::DbKey::random().to_hex().as_str(),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mayfly = env!("CARGO_BIN_EXE_mayfly");
    let mut server = Command::new(mayfly)
        .args([
            "server",
            "--insecure-dev",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--webhook-secret-file")
        .arg(dir.path().join("secret"))
        .env("MAYFLY_DB_KEY_FILE", dir.path().join("db.key"))
        // schemathesis sends hundreds of hostile requests from one address; the 429s the
        // refusal limits would give after 20 of them are documented, but would leave the rest
        // of the API untested.
        .env("MAYFLY_REFUSALS__BURST", "1000000")
        .env("MAYFLY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the server did not start");
    // Some data to read: a job and an installation, through the webhook like GitHub's.
    for (n, (event, fixture)) in [
        ("installation", "installation.created.json"),
        ("workflow_job", "workflow_job.queued.json"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = std::fs::read(format!(
            "{}/../../testdata/github/fixtures/{fixture}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let signature = signature_header(&WebhookSecret::new(b"schema-secret".to_vec()), &body);
        let answer = http
            .post(format!("{base}/webhooks/github"))
            .header("x-github-event", event)
            .header("x-github-delivery", format!("schema-{n}"))
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{event}: {}", answer.status());
    }
    let token = Command::new(mayfly)
        .args([
            "token",
            "create",
            "--name",
            "schemathesis",
            "--scope",
            "admin",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("MAYFLY_DB_KEY_FILE", dir.path().join("db.key"))
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();

    let tools = pytools();
    let work = dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args(["-m", "schemathesis.cli", "run"])
            .arg(format!("{base}/api/v1/openapi.json"))
            .args([
                "--checks",
                "all",
                // A usage query that fits the document may still name what the caller does not
                // have (a repository or workflow of theirs, a range within retention, from ≤
                // to): those are 400 with a reason, which no OpenAPI schema can express. Every
                // other check runs, invalid data must still be refused.
                "--exclude-checks",
                "positive_data_acceptance",
                "--max-examples",
                "30",
                "--seed",
                "1",
                "--no-color",
            ])
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .env("PYTHONPATH", &tools)
            // schemathesis keeps a cache in its working directory: not in the source tree.
            .current_dir(&work)
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "schemathesis is not installed in {} (scripts/setup installs it): {stderr}",
        pytools().display()
    );
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed"), "{stdout}");
}
