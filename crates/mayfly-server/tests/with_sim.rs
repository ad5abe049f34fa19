//! The end-to-end check: the simulator creates a job → it delivers a signed webhook over
//! TLS → intake verifies and records it → a job row. The same delivery sent again changes
//! nothing; a forged or tampered one is refused and changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::time::Duration;

use mayfly_core::{DeliveryId, JobId, JobStatus};
use mayfly_github::webhook::{signature_header, WebhookSecret};
use mayfly_sim::{
    AccountType, AppKeyPair, Delivery, DeliveryOutcome, NewInstallation, NewJob, NewRepo, Sim,
    SimConfig,
};
use mayfly_store::Store;

const SECRET: &[u8] = b"sim-to-server-secret";

fn delivered(log: &[Delivery], guid: &str, times: usize) -> bool {
    log.iter()
        .filter(|d| d.guid == guid && matches!(d.outcome, DeliveryOutcome::Delivered { .. }))
        .count()
        >= times
}

#[tokio::test]
async fn simulated_job_becomes_a_job_row_redelivery_is_a_no_op_forgery_is_refused() {
    let t = support::start(true, SECRET, None, |_| {}).await;
    let (server, store) = (t.server, t.store.clone());
    let cert_pem = t.cert_pem.clone().unwrap();
    let webhook_url: url::Url = format!("{}webhooks/github", server.base_url())
        .parse()
        .unwrap();

    let app = AppKeyPair::generate().unwrap();
    let mut sim_config = SimConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        app.public_pem.clone(),
        WebhookSecret::new(SECRET.to_vec()),
    );
    sim_config.webhook_url = Some(webhook_url.clone());
    sim_config.webhook_ca_pem = Some(cert_pem.clone());
    let sim = Sim::start(sim_config).await.unwrap();
    let control = sim.control();

    let inst = control
        .create_installation(NewInstallation {
            account: "org-a".into(),
            account_type: AccountType::Organization,
            sender: None,
        })
        .unwrap();
    control
        .create_repo(NewRepo {
            installation_id: inst.id,
            name: "app".into(),
            private: true,
        })
        .unwrap();
    let job = control
        .create_job(NewJob {
            repository: "org-a/app".into(),
            labels: vec!["self-hosted".into(), "mayfly-linux-2cpu".into()],
            sender: Some("alice".into()),
            ..NewJob::default()
        })
        .unwrap();

    let log = control
        .wait_for_deliveries(Duration::from_secs(20), |log| {
            log.iter().any(|d| {
                d.event == "workflow_job" && matches!(d.outcome, DeliveryOutcome::Delivered { .. })
            })
        })
        .await
        .unwrap();
    let queued = log
        .iter()
        .find(|d| d.event == "workflow_job")
        .unwrap()
        .clone();
    assert_eq!(queued.outcome, DeliveryOutcome::Delivered { status: 202 });

    let job_id = JobId(i64::try_from(job.id).unwrap());
    let row = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(row) = store.job(job_id).await.unwrap() {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no job row");
    assert_eq!(row.status, JobStatus::Queued);
    assert_eq!(row.repo.to_string(), "org-a/app");
    assert_eq!(row.org.as_deref(), Some("org-a"));
    assert_eq!(row.sender, "alice");
    assert_eq!(
        row.installation_id.map(|i| i.0),
        Some(i64::try_from(inst.id).unwrap())
    );
    assert_eq!(row.labels, ["self-hosted", "mayfly-linux-2cpu"]);
    let recorded = store
        .delivery(&DeliveryId::parse(&queued.guid).unwrap())
        .await
        .unwrap()
        .unwrap();

    // GitHub's redelivery keeps the GUID: a no-op.
    control.redeliver(queued.id).unwrap();
    let log = control
        .wait_for_deliveries(Duration::from_secs(20), |log| {
            delivered(log, &queued.guid, 2)
        })
        .await
        .unwrap();
    let again = log.iter().rfind(|d| d.guid == queued.guid).unwrap();
    assert!(again.redelivery);
    assert_eq!(again.outcome, DeliveryOutcome::Delivered { status: 200 });
    assert_eq!(store.job(job_id).await.unwrap().unwrap(), row);
    let recorded_again = store
        .delivery(&DeliveryId::parse(&queued.guid).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded_again.received_at, recorded.received_at);

    // Forged: the same delivery signed with another secret, and a tampered body under the
    // original signature. Both refused, nothing changes.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    let original_signature = queued
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-hub-signature-256"))
        .map(|(_, v)| v.clone())
        .unwrap();
    let tampered = String::from_utf8(queued.body.clone())
        .unwrap()
        .replace("mayfly-linux-2cpu", "mayfly-linux-64cpu");
    for (guid, body, signature) in [
        (
            "forged-1",
            queued.body.clone(),
            signature_header(&WebhookSecret::new(b"guessed".to_vec()), &queued.body),
        ),
        ("forged-2", tampered.into_bytes(), original_signature),
    ] {
        let response = http
            .post(webhook_url.clone())
            .header("x-github-event", "workflow_job")
            .header("x-github-delivery", guid)
            .header("x-hub-signature-256", signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            reqwest::StatusCode::UNAUTHORIZED,
            "{guid}"
        );
        assert!(store
            .delivery(&DeliveryId::parse(guid).unwrap())
            .await
            .unwrap()
            .is_none());
    }
    assert_eq!(store.job(job_id).await.unwrap().unwrap(), row);
    assert_eq!(store.jobs().await.unwrap().len(), 1);

    sim.shutdown().await;
    server.shutdown().await;
    store.close().await;
}
