//! GitHub does not redeliver a failed webhook: a job whose `queued` delivery was lost is
//! recovered from the REST API by the reconciler and gets its job row all the same.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::{JobId, JobStatus, SystemClock};
use mayfly_github::webhook::WebhookSecret;
use mayfly_github::{AppCredentials, AppPrivateKeyPem, GitHubClient, GitHubClientConfig};
use mayfly_server::{Dependencies, ServerConfig, WebhookConfig};
use mayfly_sim::{
    AccountType, AppKeyPair, DeliveryOutcome, NewInstallation, NewJob, NewRepo, Sim, SimConfig,
};
use mayfly_store::{SqliteStore, Store};
use secrecy::ExposeSecret;

const SECRET: &[u8] = b"reconcile-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_webhook_was_lost_is_recovered_from_the_rest_api() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let app = AppKeyPair::generate().unwrap();
        let sim_config = SimConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            app.public_pem.clone(),
            WebhookSecret::new(SECRET.to_vec()),
        );
        let sim = Sim::start(sim_config).await.unwrap();

        let store = Arc::new(
            SqliteStore::open(
                &dir.path().join("mayfly.db"),
                &mayfly_store::DbKey::random(),
            )
            .await
            .unwrap(),
        );
        let credentials = AppCredentials::new(
            1,
            AppPrivateKeyPem::new(app.private_pem.expose_secret().to_owned()),
        )
        .unwrap();
        let github =
            GitHubClient::new(GitHubClientConfig::new(sim.base_url(), credentials)).unwrap();
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_owned(),
            insecure_dev: true,
            webhook: WebhookConfig {
                secret_files: vec!["unused".into()],
                ..WebhookConfig::default()
            },
            agent_listen: "127.0.0.1:0".parse().unwrap(),
            reconcile_interval_secs: 1,
            ..ServerConfig::default()
        };
        let server = mayfly_server::start(
            &config,
            Dependencies {
                store: store.clone(),
                clock: Arc::new(SystemClock),
                webhook_secrets: vec![WebhookSecret::new(SECRET.to_vec())],
                github: Some(Arc::new(github)),
            },
        )
        .await
        .unwrap();
        let url: url::Url = format!("{}webhooks/github", server.base_url())
            .parse()
            .unwrap();
        sim.set_webhook_url(Some(url));

        let inst = sim
            .create_installation(NewInstallation {
                account: "org-r".into(),
                account_type: AccountType::Organization,
                sender: None,
            })
            .unwrap();
        sim.create_repo(NewRepo {
            installation_id: inst.id,
            name: "app".into(),
            private: true,
        })
        .unwrap();
        // The installation reaches the server; the job's queued webhook is lost.
        sim.wait_for_deliveries(Duration::from_secs(10), |log| {
            log.iter()
                .filter(|d| matches!(d.outcome, DeliveryOutcome::Delivered { .. }))
                .count()
                >= 2
        })
        .await
        .unwrap();
        sim.drop_next_webhooks(1);
        let job = sim
            .create_job(NewJob {
                repository: "org-r/app".into(),
                labels: vec!["self-hosted".into(), "mayfly-linux-2cpu".into()],
                ..NewJob::default()
            })
            .unwrap();
        assert!(sim
            .deliveries()
            .iter()
            .any(|d| d.outcome == DeliveryOutcome::Dropped));

        let row = loop {
            if let Some(row) = store.job(JobId(job.id as i64)).await.unwrap() {
                break row;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(row.status, JobStatus::Queued);
        assert_eq!(row.repo.to_string(), "org-r/app");
        assert_eq!(row.labels, ["self-hosted", "mayfly-linux-2cpu"]);
        assert_eq!(row.installation_id.map(|i| i.0), Some(inst.id as i64));
        server.shutdown().await;
        sim.shutdown().await;
    })
    .await
    .expect("the lost job was not recovered in time");
}
