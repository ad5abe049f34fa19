//! `mayfly github app create` against the simulator, driven as a browser would: the one-time
//! page's form goes to the simulator's App creation page, which sends the browser back with a
//! code; the command converts it and seals the App into the store. A server started afterwards
//! with a `[github]` section that names no App uses the stored one: it accepts webhooks signed
//! with the new secret and authenticates to GitHub with the new key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[path = "support/manifest.rs"]
mod manifest;
#[path = "support/process.rs"]
mod process;

use manifest::{attribute, start_create, wait_exit};
use mayfly_github::webhook::WebhookSecret;
use mayfly_sim::{AccountType, DeliveryOutcome, NewInstallation};
use process::{free_port, Server};
use serde_json::{json, Value};

/// A server configuration that names no App: `[github]` with the API only, no webhook secret.
fn write_config(dir: &Path, port: u16, sim_url: &str) -> std::path::PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let key = dir.join("db.key");
    std::fs::write(&key, mayfly_store::DbKey::random().to_hex().as_str()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("mayfly.toml");
    std::fs::write(
        &config,
        format!(
            r#"
listen = "127.0.0.1:{port}"
data_dir = "{data}"
insecure_dev = true

[database]
key_file = "{key}"

[github]
api_url = "{sim_url}"
"#,
            data = data.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_made_from_the_manifest_is_sealed_and_used_by_the_next_server() {
    let dir = tempfile::tempdir().unwrap();
    let configured = mayfly_sim::AppKeyPair::generate().unwrap();
    let mut sim_config = mayfly_sim::SimConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        configured.public_pem.clone(),
        WebhookSecret::new(b"the-configured-apps-secret".to_vec()),
    );
    sim_config.record_exchanges = true;
    let sim = mayfly_sim::Sim::start(sim_config).await.unwrap();
    let sim_url = sim.base_url().to_string();
    let port = free_port();
    let server_url = format!("http://127.0.0.1:{port}");
    let config = write_config(dir.path(), port, &sim_url);

    let (mut create, page_url) = start_create(&config, &sim_url, &server_url);
    let browser = reqwest::Client::new();
    let page = browser
        .get(&page_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let action = attribute(&page, "<form", "action");
    let manifest: Value =
        serde_json::from_str(&attribute(&page, "name=\"manifest\"", "value")).unwrap();
    assert!(
        action.starts_with(&format!(
            "{sim_url}organizations/acme/settings/apps/new?state="
        )),
        "{action}"
    );
    // Exactly the permissions and events mayfly needs, and its own addresses.
    assert_eq!(
        manifest["default_permissions"],
        json!({
            "actions": "read",
            "administration": "write",
            "metadata": "read",
            "organization_self_hosted_runners": "write",
        })
    );
    assert_eq!(manifest["default_events"], json!(["workflow_job"]));
    assert_eq!(
        manifest["hook_attributes"]["url"],
        format!("{server_url}/webhooks/github")
    );
    assert_eq!(
        manifest["callback_urls"],
        json!([format!("{server_url}/dashboard/callback")])
    );

    // A forged answer (wrong state) is refused and changes nothing.
    let forged = browser
        .get(format!("{page_url}callback?code=0123&state=forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);

    // The browser posts the form; the simulator redirects it back to the command.
    let done = browser
        .post(&action)
        .form(&[("manifest", manifest.to_string())])
        .send()
        .await
        .unwrap();
    let status = done.status();
    let text = done.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("Created"), "{text}");
    let exit = wait_exit(&mut create).await;
    let mut stdout = String::new();
    std::io::Read::read_to_string(create.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(exit.success(), "{exit:?} {stdout}");
    assert!(stdout.contains("/installations/new"), "{stdout}");

    // GitHub's answer, as the simulator recorded it.
    let conversion = sim
        .control()
        .exchanges()
        .into_iter()
        .find(|e| e.path.starts_with("/app-manifests/") && e.status == 201)
        .expect("a conversion");
    let created: Value = serde_json::from_slice(&conversion.body).unwrap();
    let webhook_secret = created["webhook_secret"].as_str().unwrap().to_owned();
    let pem = created["pem"].as_str().unwrap().to_owned();
    let app_id = created["id"].as_u64().unwrap();

    // The code converts once.
    let again = browser
        .post(format!(
            "{sim_url}{}",
            conversion.path.trim_start_matches('/')
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);

    // Sealed in the store: it opens, and the database holds none of it in clear.
    {
        let key_hex = std::fs::read_to_string(dir.path().join("db.key")).unwrap();
        let key = mayfly_store::DbKey::from_hex(key_hex.as_bytes()).unwrap();
        let store = mayfly_store::SqliteStore::open(&dir.path().join("data/mayfly.db"), &key)
            .await
            .unwrap();
        let sealer = mayfly_store::Sealer::new(dir.path().join("data/master.key"));
        let stored = mayfly_server::github_app::StoredApp::load(&sealer, &store)
            .await
            .unwrap()
            .expect("the App is stored");
        assert_eq!(stored.app_id, app_id);
        let dump = store.plaintext_dump().await.unwrap();
        let pem_body = pem.lines().nth(1).unwrap();
        assert!(!dump.contains(&webhook_secret), "webhook secret in clear");
        assert!(!dump.contains(pem_body), "private key in clear");
        store.close().await;
    }
    // …and not in any file of the data directory.
    for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(&webhook_secret) && !text.contains(pem.lines().nth(1).unwrap()));
    }

    // Running it again does not overwrite the stored App.
    let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["github", "app", "create", "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(&config)
        .args(["--url", &server_url, "--github-url", &sim_url])
        .env_remove("MAYFLY_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds GitHub App"));

    // A server with no App of its own uses the stored one.
    let mut server = Server::start(&config, &dir.path().join("server.log"), &[]);
    server.wait_ready(&browser, &server_url).await;
    // The simulator now sends the new App's events, to the manifest's URL, signed with the new
    // secret; the server accepts them.
    sim.control()
        .create_installation(NewInstallation {
            account: "acme".into(),
            account_type: AccountType::Organization,
            sender: None,
        })
        .unwrap();
    let mut delivered = None;
    for _ in 0..200 {
        let deliveries = sim.control().deliveries();
        if let Some(d) = deliveries.iter().find(|d| d.event == "installation") {
            if !matches!(d.outcome, DeliveryOutcome::Pending) {
                delivered = Some(d.clone());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = delivered.expect("the installation event was sent");
    assert!(
        matches!(delivered.outcome, DeliveryOutcome::Delivered { .. }),
        "{:?}\n{}",
        delivered.outcome,
        server.log()
    );
    let target = delivered
        .headers
        .iter()
        .find(|(k, _)| k == "X-GitHub-Hook-Installation-Target-ID")
        .map(|(_, v)| v.clone());
    assert_eq!(target, Some(app_id.to_string()));
    // It authenticates as the new App: its JWTs verify with the new key.
    let mut app_calls = 0;
    for _ in 0..100 {
        app_calls = sim
            .control()
            .exchanges()
            .iter()
            .filter(|e| e.path == "/app/installations" && e.status == 200)
            .count();
        if app_calls > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(app_calls > 0, "{}", server.stop());
}
