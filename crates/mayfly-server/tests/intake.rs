//! Webhook intake against a real server on 127.0.0.1:0 with a real SQLite file: what GitHub (or
//! an attacker) sending deliveries would see.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::{JobId, JobStatus, SystemClock};
use mayfly_github::webhook::{signature_header, WebhookSecret};
use mayfly_server::{Dependencies, ServerConfig, ServerHandle, WebhookConfig};
use mayfly_store::{SqliteStore, Store};
use reqwest::StatusCode;

const SECRET: &[u8] = b"intake-test-secret";

struct Harness {
    server: Option<ServerHandle>,
    store: Arc<SqliteStore>,
    http: reqwest::Client,
    url: String,
    _dir: tempfile::TempDir,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
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
        insecure_dev: true,
        webhook: WebhookConfig {
            secret_files: vec![PathBuf::from("unused-in-tests")],
            max_body_bytes: 64 * 1024,
        },
        ..ServerConfig::default()
    };
    let deps = Dependencies {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        webhook_secrets: vec![
            WebhookSecret::new(b"an-old-secret".to_vec()),
            WebhookSecret::new(SECRET.to_vec()),
        ],
        github: None,
    };
    let server = mayfly_server::start(&config, deps).await.unwrap();
    let url = format!("{}webhooks/github", server.base_url());
    Harness {
        server: Some(server),
        store,
        http: reqwest::Client::new(),
        url,
        _dir: dir,
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("MAYFLY_GITHUB_CONTRACT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/github"));
    std::fs::read(dir.join("fixtures").join(name)).unwrap()
}

impl Harness {
    async fn deliver(
        &self,
        event: &str,
        id: &str,
        body: &[u8],
        secret: &[u8],
    ) -> (StatusCode, serde_json::Value) {
        let signature = signature_header(&WebhookSecret::new(secret.to_vec()), body);
        self.send(event, Some(id), Some(&signature), body.to_vec())
            .await
    }

    async fn send(
        &self,
        event: &str,
        id: Option<&str>,
        signature: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/test")
            .header("x-github-event", event)
            .body(body);
        if let Some(id) = id {
            request = request.header("x-github-delivery", id);
        }
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    async fn wait_for_job(&self, id: i64, status: JobStatus) -> mayfly_store::JobRecord {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(job) = self.store.job(JobId(id)).await.unwrap() {
                    if job.status == status {
                        return job;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the job row did not appear")
    }

    async fn nothing_stored(&self) {
        assert!(
            self.store.jobs().await.unwrap().is_empty(),
            "a job row was stored"
        );
        assert!(
            self.store.pending_deliveries(10).await.unwrap().is_empty(),
            "a delivery was stored"
        );
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        self.store.close().await;
    }
}

#[tokio::test]
async fn a_signed_delivery_becomes_a_job_row_and_a_redelivery_changes_nothing() {
    let h = harness().await;
    let body = fixture("workflow_job.queued.json");
    let (status, answer) = h.deliver("workflow_job", "delivery-1", &body, SECRET).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["status"], "accepted");
    let job = h.wait_for_job(289782451, JobStatus::Queued).await;
    assert_eq!(job.repo.to_string(), "Codertocat/Hello-World");
    assert_eq!(job.labels, ["ubuntu-latest"]);
    assert_eq!(job.runner_name, None, "a queued job has no runner yet");

    let (status, answer) = h.deliver("workflow_job", "delivery-1", &body, SECRET).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["status"], "duplicate");
    let again = h.store.job(JobId(289782451)).await.unwrap().unwrap();
    assert_eq!(again, job, "a redelivery must not touch the job row");
    h.stop().await;
}

#[tokio::test]
async fn forged_missing_and_truncated_signatures_are_refused_and_nothing_is_stored() {
    let h = harness().await;
    let body = fixture("workflow_job.queued.json");
    let (status, answer) = h
        .deliver("workflow_job", "forged-1", &body, b"not-the-secret")
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer,
        serde_json::json!({ "code": "unauthorized" }),
        "401 says nothing more"
    );

    let (status, _) = h
        .send("workflow_job", Some("forged-2"), None, body.clone())
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let signature = signature_header(&WebhookSecret::new(SECRET.to_vec()), &body);
    let truncated = body[..body.len() / 2].to_vec();
    let (status, _) = h
        .send(
            "workflow_job",
            Some("forged-3"),
            Some(&signature),
            truncated,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = h
        .send(
            "workflow_job",
            Some("forged-4"),
            Some("sha256=zz"),
            body.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    h.nothing_stored().await;
    h.stop().await;
}

#[tokio::test]
async fn oversized_deliveries_get_413() {
    let h = harness().await;
    let body = vec![b' '; 64 * 1024 + 1];
    let (status, _) = h.deliver("workflow_job", "big-1", &body, SECRET).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Without a Content-Length (chunked), the cap still holds.
    let stream = futures_stream(vec![vec![b' '; 40 * 1024], vec![b' '; 40 * 1024]]);
    let response = h
        .http
        .post(&h.url)
        .header("x-github-event", "workflow_job")
        .header("x-github-delivery", "big-2")
        .header("x-hub-signature-256", "sha256=00")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    h.nothing_stored().await;
    h.stop().await;
}

fn futures_stream(
    chunks: Vec<Vec<u8>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    tokio_stream::iter(chunks.into_iter().map(Ok))
}

#[tokio::test]
async fn a_valid_signature_over_garbage_is_400_and_unhandled_events_are_ignored() {
    let h = harness().await;
    let (status, answer) = h
        .deliver("workflow_job", "junk-1", b"{not json", SECRET)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, _) = h
        .deliver("workflow_job", "junk-2", b"{\"action\":\"queued\"}", SECRET)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.deliver("push", "junk-3", b"\xff\xfe", SECRET).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, answer) = h
        .deliver("push", "push-1", b"{\"ref\":\"refs/heads/main\"}", SECRET)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(answer["status"], "ignored");

    let body = fixture("workflow_job.queued.json");
    let signature = signature_header(&WebhookSecret::new(SECRET.to_vec()), &body);
    let (status, _) = h
        .send("workflow_job", None, Some(&signature), body.clone())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no X-GitHub-Delivery");
    let (status, _) = h
        .send(
            "workflow_job",
            Some("bad id with spaces"),
            Some(&signature),
            body,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    h.nothing_stored().await;
    h.stop().await;
}

#[tokio::test]
async fn every_fixture_is_accepted_and_processed() {
    let h = harness().await;
    let dir = std::env::var_os("MAYFLY_GITHUB_CONTRACT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/github"));
    for (count, entry) in std::fs::read_dir(dir.join("fixtures")).unwrap().enumerate() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let event = name.split('.').next().unwrap();
        let body = std::fs::read(&path).unwrap();
        let (status, answer) = h
            .deliver(event, &format!("fixture-{count}"), &body, SECRET)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{name}: {answer}");
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while !h.store.pending_deliveries(100).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("deliveries were not processed");
    // The workflow_job fixtures describe two jobs; the completed ones end completed.
    let job = h.store.job(JobId(289782451)).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert!(!h.store.installations().await.unwrap().is_empty());
    h.stop().await;
}

/// Group commit: concurrent deliveries are answered each with its own outcome (a copy sent at
/// the same moment is a duplicate, once), every one answered 2xx is stored, and they shared
/// commits (the server's histogram of deliveries per commit holds fewer commits than deliveries).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_share_commits_and_each_gets_its_own_answer() {
    let h = harness().await;
    let body = fixture("workflow_job.queued.json");
    let ids: Vec<String> = (0..96).map(|i| format!("group-{i}")).collect();
    // Every fourth delivery is sent twice at once.
    let sends = ids
        .iter()
        .chain(ids.iter().step_by(4))
        .map(|id| h.deliver("workflow_job", id, &body, SECRET));
    let answers = futures::future::join_all(sends).await;
    let mut outcomes = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (status, answer) in &answers {
        assert!(status.is_success(), "{status} {answer}");
        outcomes
            .entry(answer["delivery"].as_str().unwrap().to_owned())
            .or_default()
            .push(answer["status"].as_str().unwrap().to_owned());
    }
    for (i, id) in ids.iter().enumerate() {
        let mut got = outcomes[id].clone();
        got.sort();
        let want: &[&str] = if i % 4 == 0 {
            &["accepted", "duplicate"]
        } else {
            &["accepted"]
        };
        assert_eq!(got, want, "{id}");
        let stored = h
            .store
            .delivery(&mayfly_core::DeliveryId::parse(id).unwrap())
            .await
            .unwrap();
        assert!(stored.is_some(), "{id} answered 2xx but not stored");
    }

    let admin = mayfly_server::tokens::create(
        h.store.as_ref(),
        "cli:test",
        "prometheus",
        mayfly_server::tokens::Scope::Admin,
    )
    .await
    .unwrap();
    let metrics = h
        .http
        .get(h.url.replace("webhooks/github", "metrics"))
        .bearer_auth(admin.expose())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{metrics}"))
    };
    let commits = value("mayfly_intake_commit_deliveries_count");
    let recorded = value("mayfly_intake_commit_deliveries_sum");
    assert_eq!(recorded, answers.len() as f64);
    assert!(
        commits < recorded,
        "{commits} commits for {recorded} concurrent deliveries: none shared a commit"
    );
}
