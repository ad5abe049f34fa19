//! Abuse limits as an attacker and a good client meet them: a flood of refused requests from one
//! address is answered 429 after a burst and grows the audit log by a bounded number of rows
//! (one summary for everything past the burst), while good tokens and other addresses go on as
//! before; an oversized webhook gets 413 over HTTP/1.1 and HTTP/2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use mayfly_github::webhook::{signature_header, WebhookSecret};
use mayfly_server::tokens::{self, Scope};
use mayfly_store::{AuditRow, Store};
use reqwest::StatusCode;

const SECRET: &[u8] = b"abuse-test-secret";
const FLOOD: usize = 2_000;

fn client_from(local: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(local))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn audit_rows(store: &dyn Store) -> Vec<AuditRow> {
    store.audit_log(0, 1_000_000).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_requests_adds_a_bounded_number_of_audit_rows() {
    tokio::time::timeout(Duration::from_secs(120), flood())
        .await
        .unwrap();
}

async fn flood() {
    let t = support::start(false, SECRET, None, |_| {}).await;
    let base = t.server.base_url();
    let good = tokens::create(t.store.as_ref(), "cli:test", "ops", Scope::Admin)
        .await
        .unwrap();
    let attacker = client_from([127, 0, 0, 1]);

    // Good traffic from the same address is never limited, and each call is audited.
    let before_good = audit_rows(t.store.as_ref()).await.len();
    for _ in 0..40 {
        let r = attacker
            .get(format!("{base}api/v1/whoami"))
            .bearer_auth(good.expose())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let before = audit_rows(t.store.as_ref()).await.len();
    assert_eq!(before - before_good, 40, "every good call is audited");

    // The flood: no token, unknown tokens, /metrics without a token, forged webhooks.
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut limited = None;
    for i in 0..FLOOD {
        let request = match i % 4 {
            0 => attacker.get(format!("{base}api/v1/jobs")),
            1 => attacker
                .get(format!("{base}api/v1/whoami"))
                .bearer_auth("mfy_not-a-token"),
            2 => attacker.get(format!("{base}metrics")),
            _ => attacker
                .post(format!("{base}webhooks/github"))
                .header("x-github-event", "ping")
                .header("x-github-delivery", format!("flood-{i}"))
                .header(
                    "x-hub-signature-256",
                    signature_header(&WebhookSecret::new(b"other".to_vec()), b"{}"),
                )
                .body("{}"),
        };
        let response = request.send().await.unwrap();
        *statuses.entry(response.status().as_u16()).or_default() += 1;
        if response.status() == StatusCode::TOO_MANY_REQUESTS && limited.is_none() {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let body: serde_json::Value = response.json().await.unwrap();
            limited = Some((retry, body));
        }
    }
    // Sequential requests: exactly the burst is refused in full, the rest turned away.
    assert_eq!(statuses.get(&401), Some(&20), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&(FLOOD - 20)), "{statuses:?}");
    let (retry, body) = limited.unwrap();
    assert!((1..=60).contains(&retry), "Retry-After: {retry}");
    assert_eq!(body["code"], "rate_limited", "{body}");

    let flooded = audit_rows(t.store.as_ref()).await;
    let added = flooded.len() - before;
    // 20 refusals, of which the webhooks (every fourth) are not audited at all.
    assert_eq!(added, 15, "the flood added {added} audit rows");

    // The limited address itself still gets through with good credentials: a good token, and
    // a delivery signed with the webhook secret (GitHub sends every App's from one pool of
    // addresses, so a stranger's badly signed deliveries must not block ours).
    let r = attacker
        .get(format!("{base}api/v1/whoami"))
        .bearer_auth(good.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ping = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/github/fixtures/ping.json"
    ))
    .unwrap();
    let r = attacker
        .post(format!("{base}webhooks/github"))
        .header("x-github-event", "ping")
        .header("x-github-delivery", "good-after-flood")
        .header(
            "x-hub-signature-256",
            signature_header(&WebhookSecret::new(SECRET.to_vec()), &ping),
        )
        .body(ping)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let during = audit_rows(t.store.as_ref()).await;

    // Another address is not limited, and neither is a good token from it.
    let neighbour = client_from([127, 0, 0, 2]);
    let r = neighbour
        .get(format!("{base}api/v1/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = neighbour
        .get(format!("{base}api/v1/whoami"))
        .bearer_auth(good.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // The API's document says so.
    let doc: serde_json::Value = neighbour
        .get(format!("{base}api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let limited = &doc["paths"]["/api/v1/jobs"]["get"]["responses"]["429"];
    assert!(limited["headers"]["Retry-After"].is_object(), "{limited}");

    // At shutdown the open window is summarised in one row.
    t.server.shutdown().await;
    let after = audit_rows(t.store.as_ref()).await;
    assert_eq!(
        after.len() - during.len(),
        2 + 1,
        "two neighbour calls and one summary"
    );
    let summary = after
        .iter()
        .find(|row| row.action == "refusals summarised")
        .expect("a summary row");
    assert_eq!(summary.source.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        summary.target.as_deref(),
        Some("webhook 495, api 990, metrics 495")
    );
    assert!(
        summary
            .outcome
            .starts_with(&format!("{} further refused requests", FLOOD - 20)),
        "{}",
        summary.outcome
    );
    t.store.close().await;
}

#[tokio::test]
async fn an_oversized_webhook_gets_413_over_http1_and_http2() {
    tokio::time::timeout(Duration::from_secs(60), oversized())
        .await
        .unwrap();
}

async fn oversized() {
    // The default: a body past it is larger than HTTP/2's flow-control windows, so the client
    // is still sending when the answer comes.
    const LIMIT: usize = 1024 * 1024;
    let t = support::start(true, SECRET, None, |c| {
        c.webhook.max_body_bytes = LIMIT;
        // Every refusal here is a 413 from one address: not what this test is about.
        c.refusals.burst = 1_000;
    })
    .await;
    let url = format!("{}webhooks/github", t.server.base_url());
    let ca = reqwest::Certificate::from_pem(t.cert_pem.as_ref().unwrap().as_bytes()).unwrap();
    let builder = || {
        reqwest::Client::builder()
            .add_root_certificate(ca.clone())
            .timeout(Duration::from_secs(10))
    };
    let clients = [
        (
            reqwest::Version::HTTP_11,
            builder().http1_only().build().unwrap(),
        ),
        (
            reqwest::Version::HTTP_2,
            builder().http2_prior_knowledge().build().unwrap(),
        ),
    ];
    // Signed as GitHub would sign it: only the size is wrong.
    let body = vec![b' '; 4 * LIMIT];
    let signature = signature_header(&WebhookSecret::new(SECRET.to_vec()), &body);
    for (version, client) in &clients {
        for attempt in 0..5 {
            let declared = client
                .post(&url)
                .header("x-github-event", "workflow_job")
                .header("x-github-delivery", format!("big-{attempt}"))
                .header("x-hub-signature-256", &signature)
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("{version:?} with a length: {e:?}"));
            assert_eq!(declared.version(), *version);
            assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let answer: serde_json::Value = declared.json().await.unwrap();
            assert_eq!(answer["code"], "payload_too_large");

            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                (0..16).map(|_| Ok(vec![b' '; LIMIT / 4])).collect();
            let streamed = client
                .post(&url)
                .header("x-github-event", "workflow_job")
                .header("x-github-delivery", format!("big-streamed-{attempt}"))
                .header("x-hub-signature-256", &signature)
                .body(reqwest::Body::wrap_stream(tokio_stream::iter(chunks)))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{version:?} streamed: {e:?}"));
            assert_eq!(streamed.version(), *version);
            assert_eq!(streamed.status(), StatusCode::PAYLOAD_TOO_LARGE);
        }
    }
    // curl, as a new user would try it: it reports a stream reset mid-upload as a failure
    // ("Stream error in the HTTP/2 framing layer") even after a complete answer.
    let dir = t.dir.path();
    std::fs::write(dir.join("ca.pem"), t.cert_pem.as_ref().unwrap()).unwrap();
    std::fs::write(dir.join("body"), &body).unwrap();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", flag, "--cacert"])
            .arg(dir.join("ca.pem"))
            .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
            .args(["-H", "x-github-event: workflow_job"])
            .args(["-H", "x-github-delivery: big-curl"])
            .arg("-H")
            .arg(format!("x-hub-signature-256: {signature}"))
            .arg("--data-binary")
            .arg(format!("@{}", dir.join("body").display()))
            .arg(&url)
            .output()
            .await
            .expect("curl is installed (scripts/setup)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl {flag}: {stderr}");
        assert_eq!(stdout, format!("{version} 413"), "curl {flag}: {stderr}");
    }
    t.server.shutdown().await;
    t.store.close().await;
}
