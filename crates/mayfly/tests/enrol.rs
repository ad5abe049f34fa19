//! Agent enrolment and mTLS as an operator and an intruder meet them: `mayfly agent enrol` with
//! a one-time token gets a client certificate and pins the server CA; the token does not work
//! twice or after it expires; a token pinning another CA is refused by the agent; the agent
//! listener refuses connections without a certificate, with a certificate of another CA, from
//! an agent claiming another name, and from a revoked agent; an agent refuses a server whose
//! certificate does not chain to its pinned CA. Enrolling into a directory that holds
//! credentials is refused without `--force` (the token stays unused) and replaces them with it;
//! a replacement left half done is refused when the agent starts. All of it is in the audit log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use mayfly_core::SystemClock;
use mayfly_github::webhook::WebhookSecret;
use mayfly_proto::v1::agent_service_client::AgentServiceClient;
use mayfly_proto::v1::{AgentMessage, Capacity, Hello};
use mayfly_proto::{AgentBody, ServerBody, PROTOCOL_VERSION};
use mayfly_server::{Dependencies, ServerConfig, TlsFiles, WebhookConfig};
use mayfly_store::{CommonStore, SqliteStore};
use secrecy::ExposeSecret;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn enrol_cli(server: &str, token: &str, dir: &Path) -> Output {
    enrol_cli_with(server, token, dir, &[])
}

fn enrol_cli_with(server: &str, token: &str, dir: &Path, extra: &[&str]) -> Output {
    let token_file = dir.with_extension("token");
    std::fs::write(&token_file, token).unwrap();
    Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["agent", "enrol", "--server", server, "--token-file"])
        .arg(&token_file)
        .arg("--credentials")
        .arg(dir)
        .args(extra)
        .env_remove("MAYFLY_AGENT_TOKEN")
        .output()
        .unwrap()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Opens a session as `name` with `tls`; `Ok` once the server says Welcome.
async fn session(port: u16, name: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    open_session(port, name, tls).await.map(|_| ())
}

/// Like `session`, keeping the session open: the server's stream and the agent's sender.
async fn open_session(
    port: u16,
    name: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<
    (
        tonic::Streaming<mayfly_proto::v1::ServerMessage>,
        (
            tokio::sync::mpsc::Sender<AgentMessage>,
            AgentServiceClient<tonic::transport::Channel>,
        ),
    ),
    String,
> {
    let mut endpoint = Endpoint::from_shared(format!("https://localhost:{port}")).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentMessage {
        body: Some(AgentBody::Hello(Hello {
            agent_id: name.into(),
            protocol_version: PROTOCOL_VERSION,
            capacity: Some(Capacity {
                slots: 1,
                vcpus: 1,
                memory_mib: 1024,
                images: vec![],
            }),
            vms: vec![],
            journal_epoch: "enrol-test".into(),
        })),
    })
    .await
    .unwrap();
    let mut incoming = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("session: {e:?}"))?
        .into_inner();
    match incoming.next().await {
        Some(Ok(m)) if matches!(m.body, Some(ServerBody::Welcome(_))) => {
            Ok((incoming, (tx, client)))
        }
        other => Err(format!("no welcome: {other:?}")),
    }
}

fn client_tls(ca_pem: &[u8], cert: &[u8], key: &[u8]) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_is_one_time_and_only_enrolled_agents_get_in() {
    let dir = tempfile::tempdir().unwrap();
    // The server's certificate comes from a CA of its own (as in production).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let files = TlsFiles {
        cert_file: dir.path().join("server.crt"),
        key_file: dir.path().join("server.key"),
        ca_file: Some(dir.path().join("ca.pem")),
    };
    std::fs::write(&files.cert_file, server_cert.pem()).unwrap();
    std::fs::write(&files.key_file, server_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();

    let app = mayfly_sim::AppKeyPair::generate().unwrap();
    let sim = mayfly_sim::Sim::start(mayfly_sim::SimConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        app.public_pem.clone(),
        WebhookSecret::new(b"enrol".to_vec()),
    ))
    .await
    .unwrap();
    let github = mayfly_github::GitHubClient::new(mayfly_github::GitHubClientConfig::new(
        sim.base_url(),
        mayfly_github::AppCredentials::new(
            1,
            mayfly_github::AppPrivateKeyPem::new(app.private_pem.expose_secret().to_owned()),
        )
        .unwrap(),
    ))
    .unwrap();
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
        tls: Some(files.clone()),
        webhook: WebhookConfig {
            secret_files: vec!["unused".into()],
            ..WebhookConfig::default()
        },
        agent_listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = mayfly_server::start(
        &config,
        Dependencies {
            store: store.clone(),
            clock: Arc::new(SystemClock),
            webhook_secrets: vec![WebhookSecret::new(b"enrol".to_vec())],
            github: Some(Arc::new(github)),
        },
    )
    .await
    .unwrap();
    let base = server.base_url().replace("127.0.0.1", "localhost");
    let agent_port = server.agent_addr().unwrap().port();
    let ca_sha = mayfly_server::agent_pki::pem_sha256(&ca.pem()).unwrap();
    // The agent CA's key is sealed: not in the database in the clear.
    assert!(dir.path().join("master.key").exists());

    let (token, _) = mayfly_server::agent_pki::create_bootstrap(
        store.as_ref(),
        "cli:test",
        "host-1",
        &ca_sha,
        chrono::Duration::minutes(10),
    )
    .await
    .unwrap();
    let creds = dir.path().join("host-1");
    let out = enrol_cli(&base, &token, &creds);
    assert!(out.status.success(), "{}", text(&out));
    let mode = std::fs::metadata(creds.join("agent.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read(creds.join("agent.key")).unwrap();
    let cert = std::fs::read(creds.join("agent.crt")).unwrap();
    let pinned = std::fs::read(creds.join("server-ca.pem")).unwrap();
    assert_eq!(pinned, ca.pem().as_bytes());

    // The same token again: refused.
    let out = enrol_cli(&base, &token, &dir.path().join("again"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("refused the token"), "{}", text(&out));
    // An expired token: the server refuses it too (the CLI would not even send it).
    let (expired, _) = mayfly_server::agent_pki::create_bootstrap(
        store.as_ref(),
        "cli:test",
        "host-2",
        &ca_sha,
        chrono::Duration::seconds(-1),
    )
    .await
    .unwrap();
    let out = enrol_cli(&base, &expired, &dir.path().join("expired"));
    assert!(text(&out).contains("expired"), "{}", text(&out));
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let refused = http
        .post(format!("{base}api/v1/agents/enrol"))
        .json(&serde_json::json!({"token": expired.as_str(), "csr_pem": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A token pinning some other CA: the agent refuses this server.
    let (wrong_pin, _) = mayfly_server::agent_pki::create_bootstrap(
        store.as_ref(),
        "cli:test",
        "host-3",
        &"0".repeat(64),
        chrono::Duration::minutes(10),
    )
    .await
    .unwrap();
    let out = enrol_cli(&base, &wrong_pin, &dir.path().join("wrong-pin"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("not the one the token pins"),
        "{}",
        text(&out)
    );

    // Enrolling into a directory that already holds credentials: refused without --force,
    // before the token is spent; with --force the same token replaces them.
    let bootstrap = |agent: &'static str| {
        let store = store.clone();
        let ca_sha = ca_sha.clone();
        async move {
            mayfly_server::agent_pki::create_bootstrap(
                store.as_ref(),
                "cli:test",
                agent,
                &ca_sha,
                chrono::Duration::minutes(10),
            )
            .await
            .unwrap()
            .0
        }
    };
    let reused = dir.path().join("reused");
    let out = enrol_cli(&base, &bootstrap("host-4").await, &reused);
    assert!(out.status.success(), "{}", text(&out));
    let mode = std::fs::metadata(&reused).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o700,
        "the credentials directory is open to others"
    );
    let old_key = std::fs::read(reused.join("agent.key")).unwrap();
    let old_cert = std::fs::read(reused.join("agent.crt")).unwrap();
    let token_5 = bootstrap("host-5").await;
    let out = enrol_cli(&base, &token_5, &reused);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("already holds the credentials of agent host-4")
            && text(&out).contains("--force")
            && text(&out).contains("the token was not used"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(reused.join("agent.key")).unwrap(), old_key);
    let out = enrol_cli_with(&base, &token_5, &reused, &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("replaced the credentials of host-4")
            && text(&out).contains("mayfly agents revoke host-4"),
        "{}",
        text(&out)
    );
    let new_key = std::fs::read(reused.join("agent.key")).unwrap();
    let new_cert = std::fs::read(reused.join("agent.crt")).unwrap();
    assert_ne!(new_key, old_key);
    let mode = std::fs::metadata(reused.join("agent.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        file_names(&reused),
        ["agent.crt", "agent.json", "agent.key", "server-ca.pem"],
        "temporary files were left"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reused.join("agent.json")).unwrap()).unwrap();
    assert_eq!(json["agent"], "host-5");
    session(
        agent_port,
        "host-5",
        Some(client_tls(&pinned, &new_cert, &new_key)),
    )
    .await
    .unwrap();
    // As --help says: the replaced agent's certificate is still good until it is revoked.
    session(
        agent_port,
        "host-4",
        Some(client_tls(&pinned, &old_cert, &old_key)),
    )
    .await
    .unwrap();
    // A replacement cut off halfway (a certificate of one enrolment, agent.json of another):
    // the agent says so instead of presenting a key that does not match its certificate.
    std::fs::write(reused.join("agent.crt"), &old_cert).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["agent", "--credentials"])
        .arg(&reused)
        .args(["--accel", "tcg", "--state-root"])
        .arg(dir.path().join("unused-state"))
        .arg("--images")
        .arg(dir.path().join("no-images"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("do not belong together") && text(&out).contains("--force"),
        "{}",
        text(&out)
    );

    // mTLS: the enrolled agent gets in under its own name only.
    session(agent_port, "host-1", Some(client_tls(&pinned, &cert, &key)))
        .await
        .unwrap();
    let impostor = session(agent_port, "host-9", Some(client_tls(&pinned, &cert, &key))).await;
    assert!(impostor.unwrap_err().contains("PermissionDenied"));
    // No client certificate.
    let bare = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pinned))
        .domain_name("localhost");
    assert!(session(agent_port, "host-1", Some(bare)).await.is_err());
    // A certificate from another CA.
    let rogue_key = rcgen::KeyPair::generate().unwrap();
    let rogue = rcgen::CertificateParams::new(vec![])
        .unwrap()
        .self_signed(&rogue_key)
        .unwrap();
    let forged = client_tls(
        &pinned,
        rogue.pem().as_bytes(),
        rogue_key.serialize_pem().as_bytes(),
    );
    assert!(session(agent_port, "host-1", Some(forged)).await.is_err());
    // The agent pins its CA: a server certificate from elsewhere is not accepted.
    let other_ca = rcgen::CertificateParams::new(vec![])
        .unwrap()
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let wrong_server = client_tls(other_ca.pem().as_bytes(), &cert, &key);
    let err = session(agent_port, "host-1", Some(wrong_server))
        .await
        .unwrap_err();
    assert!(err.starts_with("connect"), "{err}");
    // The real agent with those credentials connects (mTLS, its enrolled name).
    let state = dir.path().join("agent-state");
    std::fs::create_dir_all(&state).unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["agent", "--credentials"])
        .arg(&creds)
        .args(["--accel", "tcg", "--state-root"])
        .arg(&state)
        .arg("--images")
        .arg(dir.path().join("no-images"))
        .env("MAYFLY_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut connected = false;
    for _ in 0..100 {
        let audit = store.audit_log(0, 1000).await.unwrap();
        let n = audit
            .iter()
            .filter(|r| {
                r.action == "agent connect" && r.actor == "agent:host-1" && r.outcome == "ok"
            })
            .count();
        if n >= 2 {
            connected = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(connected, "`mayfly agent --credentials` did not connect");

    // Revoked: an open session is ended, and the next connection refused.
    let (mut open, _keep) =
        open_session(agent_port, "host-1", Some(client_tls(&pinned, &cert, &key)))
            .await
            .unwrap();
    assert!(store
        .revoke_agent("host-1", chrono::Utc::now())
        .await
        .unwrap());
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match open.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    })
    .await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the server did not end the revoked agent's open session: {ended:?}"
    );
    let revoked = session(agent_port, "host-1", Some(client_tls(&pinned, &cert, &key))).await;
    assert!(revoked.unwrap_err().contains("PermissionDenied"));

    // A renewed server certificate (here from another CA, to tell them apart) reaches the agent
    // listener on SIGHUP, without a restart.
    let ca_b_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_b_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca_b_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_b = ca_b_params.self_signed(&ca_b_key).unwrap();
    let renewed_key = rcgen::KeyPair::generate().unwrap();
    let renewed = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&renewed_key, &ca_b, &ca_b_key)
        .unwrap();
    let trusting_b = || client_tls(ca_b.pem().as_bytes(), &cert, &key);
    let before = session(agent_port, "host-1", Some(trusting_b()))
        .await
        .unwrap_err();
    assert!(before.starts_with("connect"), "{before}");
    std::fs::write(&files.cert_file, renewed.pem()).unwrap();
    std::fs::write(&files.key_file, renewed_key.serialize_pem()).unwrap();
    nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGHUP).unwrap();
    let mut after = String::new();
    for _ in 0..100 {
        after = session(agent_port, "host-1", Some(trusting_b()))
            .await
            .unwrap_err();
        // The handshake now succeeds; the revoked agent is refused after it.
        if after.contains("PermissionDenied") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(after.contains("PermissionDenied"), "not reloaded: {after}");

    let audit = store.audit_log(0, 1000).await.unwrap();
    assert_eq!(mayfly_store::verify_chain(&audit), Ok(audit.len()));
    let has = |action: &str, outcome: &str| {
        audit
            .iter()
            .any(|r| r.action == action && r.outcome.starts_with(outcome))
    };
    assert!(
        has("agent enrol", "attempt"),
        "enrolments are audited before they happen"
    );
    assert!(has("agent enrol", "ok: agent host-1"));
    assert!(has("agent enrol", "refused: token already used"));
    assert!(has("agent enrol", "refused: token expired"));
    assert!(has("agent connect", "ok"));
    assert!(has("agent connect", "refused: claimed to be host-9"));
    assert!(has("agent connect", "refused: revoked agent"));
    assert!(has("agent disconnect", "revoked"));
    let dump = store.plaintext_dump().await.unwrap();
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a private key is stored in the clear"
    );

    server.shutdown().await;
    sim.shutdown().await;
    store.close().await;
}
