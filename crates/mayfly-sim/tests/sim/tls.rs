//! HTTPS: the simulator serves TLS from PEM files; a client that trusts only that certificate
//! gets through, one that does not is refused.

use std::time::Duration;

use mayfly_sim::runner_client::RunnerClient;
use mayfly_sim::{AccountType, NewJob, TlsFiles};
use reqwest::Certificate;

use super::support::{bounded, TestSim};

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    bounded(async {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_pem = cert.cert.pem();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, &cert_pem).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        let files = TlsFiles { cert_pem: cert_path, key_pem: key_path };
        let t = TestSim::start_with(move |c| c.tls = Some(files)).await;
        assert_eq!(t.sim.base_url().scheme(), "https");

        let trusting = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(Certificate::from_pem(cert_pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let response = trusting.get(t.url("/rate_limit")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let app = trusting.get(t.url("/app")).bearer_auth(t.jwt()).send().await.unwrap();
        assert_eq!(app.status().as_u16(), 200);

        let untrusting = reqwest::Client::builder().use_rustls_tls().build().unwrap();
        assert!(untrusting.get(t.url("/rate_limit")).send().await.is_err());
        let plain = format!("http://{}/rate_limit", t.sim.local_addr());
        // Plain HTTP to the TLS port is not served.
        let plaintext = reqwest::get(plain).await;
        assert!(!plaintext.is_ok_and(|r| r.status().is_success()));

        // The runner client works over HTTPS with the CA it is given.
        let inst = t.install("acme", AccountType::Organization);
        let repo = t.repo(inst.id, "api");
        let token = {
            let r = trusting
                .post(t.url(&format!("/app/installations/{}/access_tokens", inst.id)))
                .bearer_auth(t.jwt())
                .send()
                .await
                .unwrap();
            let body: serde_json::Value = r.json().await.unwrap();
            body["token"].as_str().unwrap().to_string()
        };
        let jit: serde_json::Value = trusting
            .post(t.url(&format!("/repos/{repo}/actions/runners/generate-jitconfig")))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "name": "vm", "runner_group_id": 1, "labels": ["self-hosted"] }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        t.sim
            .create_job(NewJob { repository: repo, labels: vec!["self-hosted".into()], ..NewJob::default() })
            .unwrap();
        let mut runner =
            RunnerClient::from_encoded_jit_config(jit["encoded_jit_config"].as_str().unwrap(), Some(&cert_pem)).unwrap();
        assert!(runner.acquire().await.unwrap().is_some());
        t.check_contract();
    })
    .await;
}
