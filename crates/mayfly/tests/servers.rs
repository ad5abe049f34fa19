//! Two `mayfly server` processes on one PostgreSQL database, as a provider runs them behind a
//! load balancer. Every webhook reaches *both* servers at once (the worst a balancer plus
//! GitHub's redeliveries can do); each delivery is still applied exactly once, each job gets
//! exactly one VM, and afterwards no table holds a JIT config, an installation token, the
//! webhook secret or the App key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

#[path = "../../mayfly-server/tests/support/agent.rs"]
mod fake_agent;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use mayfly_github::webhook::WebhookSecret;
use mayfly_proto::ServerBody;
use mayfly_sim::{AccountType, NewInstallation, NewJob, NewRepo};
use mayfly_store::{PgStore, Store};
use secrecy::ExposeSecret;
use sqlx::Connection;

const SECRET: &str = "two-servers-webhook-secret";
const JOBS: usize = 8;

fn write_private(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn admin_url() -> String {
    std::env::var("MAYFLY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh database on the test server; returns its URL.
async fn fresh_database(name: &str) -> String {
    let admin = admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {admin} ({e}); scripts/setup starts it")
        });
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

async fn drop_database(name: &str) {
    let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
}

struct ServerProcess {
    child: Child,
    port: u16,
    agent_port: u16,
    log: std::path::PathBuf,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &Path, id: &str, db_url: &str, sim_url: &str) -> ServerProcess {
    let (port, agent_port) = (free_port(), free_port());
    let data = dir.join(id);
    std::fs::create_dir_all(&data).unwrap();
    let config = format!(
        r#"
listen = "127.0.0.1:{port}"
data_dir = "{data}"
insecure_dev = true
agent_listen = "127.0.0.1:{agent_port}"
server_id = "{id}"
reconcile_interval_secs = 2

[webhook]
secret_files = ["{dir}/secret"]

[database]
postgres_url = "{db_url}"

[github]
api_url = "{sim_url}"
app_id = 1
private_key_file = "{dir}/app.pem"

[[profiles]]
name = "mayfly-linux-2cpu"
labels = ["self-hosted", "linux"]
vcpus = 2
memory_mib = 2048
image = "test-image"
"#,
        data = data.display(),
        dir = dir.display(),
    );
    let config_file = data.join("mayfly.toml");
    std::fs::write(&config_file, config).unwrap();
    let log = data.join("server.log");
    let child = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .arg("server")
        .arg("--config")
        .arg(&config_file)
        // Each applied job event is logged at debug (info has a per-minute summary).
        .env("MAYFLY_LOG", "info,mayfly_server::processor=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    ServerProcess {
        child,
        port,
        agent_port,
        log,
    }
}

async fn wait_ready(http: &reqwest::Client, server: &mut ServerProcess) {
    let url = format!("http://127.0.0.1:{}/readyz", server.port);
    for _ in 0..300 {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "the server exited ({status}): {}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
        }
        if let Ok(r) = http.get(&url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not become ready");
}

/// Stand-in agent: says Hello with 4 slots, and records every `StartVm` it is sent.
async fn agent(
    port: u16,
    name: &str,
    starts: Arc<Mutex<Vec<(String, mayfly_proto::v1::StartVm)>>>,
) {
    let mut agent = fake_agent::FakeAgent::connect_as(([127, 0, 0, 1], port).into(), name).await;
    let name = name.to_owned();
    tokio::spawn(async move {
        while let Some(command) = agent.recv().await {
            if let ServerBody::StartVm(start) = command {
                starts.lock().unwrap().push((name.clone(), start));
            }
        }
    });
}

/// The load balancer from hell: every webhook goes to both servers at once.
async fn duplicating_balancer(targets: Vec<u16>) -> u16 {
    let http = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (http, targets) = (http.clone(), targets.clone());
            async move {
                let sends = targets.iter().map(|port| {
                    let mut request = http
                        .post(format!("http://127.0.0.1:{port}/webhooks/github"))
                        .body(body.clone());
                    for name in [
                        "x-github-event",
                        "x-github-delivery",
                        "x-hub-signature-256",
                        "content-type",
                    ] {
                        if let Some(value) = headers.get(name) {
                            request = request.header(name, value.as_bytes());
                        }
                    }
                    request.send()
                });
                let answers = futures::future::join_all(sends).await;
                if answers
                    .iter()
                    .any(|a| a.as_ref().is_ok_and(|r| r.status().is_success()))
                {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::BAD_GATEWAY
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// `delivery=<id>` of every "job event applied" line in a server's log.
fn applied_deliveries(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("job event applied"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("delivery="))
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_apply_each_delivery_once_and_give_each_job_one_vm() {
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("secret"), SECRET);
    let app = mayfly_sim::AppKeyPair::generate().unwrap();
    write_private(&dir.path().join("app.pem"), app.private_pem.expose_secret());
    let db_name = format!("mayfly_servers_{:08x}", rand::random::<u32>());
    let db_url = fresh_database(&db_name).await;

    let mut sim_config = mayfly_sim::SimConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        app.public_pem.clone(),
        WebhookSecret::new(SECRET.as_bytes().to_vec()),
    );
    sim_config.record_exchanges = true;
    let sim = mayfly_sim::Sim::start(sim_config).await.unwrap();
    let sim_url = sim.base_url().to_string();
    // Both start (and migrate) at once.
    let mut a = start_server(dir.path(), "server-a", &db_url, &sim_url);
    let mut b = start_server(dir.path(), "server-b", &db_url, &sim_url);
    let http = reqwest::Client::new();
    wait_ready(&http, &mut a).await;
    wait_ready(&http, &mut b).await;
    let balancer = duplicating_balancer(vec![a.port, b.port]).await;
    sim.control().set_webhook_url(Some(
        format!("http://127.0.0.1:{balancer}/hook").parse().unwrap(),
    ));
    let starts = Arc::new(Mutex::new(Vec::new()));
    agent(a.agent_port, "host-a", starts.clone()).await;
    agent(b.agent_port, "host-b", starts.clone()).await;

    let control = sim.control();
    let mut job_ids = BTreeSet::new();
    for org in ["org-one", "org-two"] {
        let inst = control
            .create_installation(NewInstallation {
                account: org.into(),
                account_type: AccountType::Organization,
                sender: None,
            })
            .unwrap();
        let repo = control
            .create_repo(NewRepo {
                installation_id: inst.id,
                name: "app".into(),
                private: true,
            })
            .unwrap();
        for _ in 0..JOBS / 2 {
            let job = control
                .create_job(NewJob {
                    repository: repo.full_name.clone(),
                    labels: vec!["self-hosted".into(), "mayfly-linux-2cpu".into()],
                    ..NewJob::default()
                })
                .unwrap();
            job_ids.insert(i64::try_from(job.id).unwrap());
        }
    }

    let store = PgStore::connect(&db_url).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let placed = store
                .jobs()
                .await
                .unwrap()
                .iter()
                .filter(|j| j.dispatch.disposition == "placed")
                .count();
            if placed == JOBS {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every job placed");
    // Give a second server time to (wrongly) place a job again.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let vms = store.vms(false).await.unwrap();
    let mut per_job: BTreeMap<i64, usize> = BTreeMap::new();
    for vm in &vms {
        *per_job.entry(vm.for_job_id).or_default() += 1;
    }
    assert_eq!(per_job.keys().copied().collect::<BTreeSet<_>>(), job_ids);
    assert!(
        per_job.values().all(|n| *n == 1),
        "a job got several VMs: {per_job:?}"
    );
    let starts = starts.lock().unwrap().clone();
    assert_eq!(
        starts.len(),
        JOBS,
        "StartVm sent {} times for {JOBS} jobs",
        starts.len()
    );
    let hosts: BTreeSet<&str> = starts.iter().map(|(h, _)| h.as_str()).collect();
    eprintln!("VMs placed on {hosts:?}");

    // Every delivery applied once, by one of the two servers.
    let (from_a, from_b) = (applied_deliveries(&a.log), applied_deliveries(&b.log));
    let mut all = from_a.clone();
    all.extend(from_b.iter().cloned());
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "applied twice: a={from_a:?} b={from_b:?}"
    );
    let sent: BTreeSet<String> = control
        .deliveries()
        .into_iter()
        .filter(|d| d.event == "workflow_job")
        .map(|d| d.guid)
        .collect();
    for guid in &sent {
        assert!(unique.contains(guid), "delivery {guid} was never applied");
    }
    eprintln!(
        "applied: {} by server-a, {} by server-b",
        from_a.len(),
        from_b.len()
    );

    // Nothing secret in any table.
    let dump = store.plaintext_dump().await.unwrap();
    assert!(
        dump.contains("org-one/app"),
        "the dump should hold the metadata"
    );
    let mut secrets: Vec<(String, String)> = starts
        .iter()
        .map(|(_, s)| ("a JIT config".to_owned(), s.jitconfig.clone()))
        .collect();
    for exchange in control.exchanges() {
        if exchange.path.ends_with("/access_tokens") && exchange.status == 201 {
            let body: serde_json::Value = serde_json::from_slice(&exchange.body).unwrap();
            secrets.push((
                "an installation token".into(),
                body["token"].as_str().unwrap().into(),
            ));
        }
    }
    assert!(secrets
        .iter()
        .any(|(what, _)| what == "an installation token"));
    secrets.push(("the webhook secret".into(), SECRET.into()));
    let key_body: String = app
        .private_pem
        .expose_secret()
        .lines()
        .nth(1)
        .unwrap()
        .to_owned();
    secrets.push(("the App key".into(), key_body));
    for (what, value) in &secrets {
        assert!(
            !dump.contains(value.as_str()),
            "{what} is stored in PostgreSQL"
        );
    }

    store.close().await;
    drop(a);
    drop(b);
    sim.shutdown().await;
    drop_database(&db_name).await;
}
