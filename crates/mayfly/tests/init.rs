//! The README's "Install on a server" path: `mayfly init server` then `mayfly server` with no
//! other step (no App yet: it says so); `init` again refuses to touch the keys; `mayfly github
//! app create` (against the simulator); the server restarted uses that App; `mayfly init agent`
//! enrols with it and writes an agent configuration that `mayfly agent --config` reads (and one
//! with an unknown key is refused). The first server runs with `MAYFLY_LOG_FORMAT=json`: every
//! line it logs is one JSON object.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

#[path = "support/manifest.rs"]
mod manifest;
#[path = "support/process.rs"]
mod process;

use process::{free_port, Server};

fn mayfly(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(args)
        .env_remove("MAYFLY_CONFIG")
        .env_remove("MAYFLY_AGENT_CONFIG")
        .output()
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_server_then_the_server_starts_and_an_agent_host_enrols() {
    let dir = tempfile::tempdir().unwrap();
    let app_key = mayfly_sim::AppKeyPair::generate().unwrap();
    let mut sim_config = mayfly_sim::SimConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        app_key.public_pem.clone(),
        mayfly_github::webhook::WebhookSecret::new(b"unused".to_vec()),
    );
    sim_config.record_exchanges = true;
    let sim = mayfly_sim::Sim::start(sim_config).await.unwrap();
    let sim_url = sim.base_url().to_string();
    let etc = dir.path().join("etc");
    let data = dir.path().join("data");
    let (port, agent_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let agent_listen = format!("127.0.0.1:{agent_port}");
    let init = |extra: &[&str]| {
        let mut args = vec![
            "init",
            "server",
            "--config-dir",
            etc.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &listen,
            "--agent-listen",
            &agent_listen,
            "--name",
            "127.0.0.1",
            "--github-api-url",
            &sim_url,
        ];
        args.extend_from_slice(extra);
        mayfly(&args)
    };
    let user = me();
    let out = init(&["--user", &user]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("mayfly github app create"), "{stdout}");
    for key in ["db.key", "master.key", "tls/server.key"] {
        assert_eq!(mode(&etc.join(key)), 0o600, "{key}");
    }
    assert_eq!(mode(&etc.join("mayfly.toml")), 0o640);
    let db_key = std::fs::read(etc.join("db.key")).unwrap();

    // Again: refused, nothing replaced.
    let again = init(&[]);
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already set up") && stderr.contains("db.key"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(etc.join("db.key")).unwrap(), db_key);

    // The server starts from that configuration alone, logging JSON.
    let config = etc.join("mayfly.toml");
    let ca = std::fs::read(etc.join("tls/ca.pem")).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let mut server = Server::start(
        &config,
        &dir.path().join("server-json.log"),
        &[("MAYFLY_LOG_FORMAT", "json")],
    );
    server.wait_ready(&https, &base).await;
    let log = server.stop();
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(value.get(key).is_some(), "{key} missing: {line}");
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("no GitHub App yet")),
        "{lines:#?}"
    );

    // The App, made through the manifest flow; the server started again uses it.
    let created = manifest::create_app(&config, &sim_url, &base).await;
    assert!(created.contains("/installations/new"), "{created}");
    let mut server = Server::start(&config, &dir.path().join("server.log"), &[]);
    server.wait_ready(&https, &base).await;
    assert!(server.log().contains("using the GitHub App stored"));

    // An agent host: a bootstrap token on the server, `init agent` on the host.
    let out = mayfly(&[
        "agents",
        "bootstrap",
        "--config",
        config.to_str().unwrap(),
        "--name",
        "host-1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &out.stdout).unwrap();
    let agent_etc = dir.path().join("agent-etc");
    let credentials = dir.path().join("agent-credentials");
    let init_agent = || {
        mayfly(&[
            "init",
            "agent",
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--token-file",
            token_file.to_str().unwrap(),
            "--config-dir",
            agent_etc.to_str().unwrap(),
            "--credentials",
            credentials.to_str().unwrap(),
            "--slots",
            "3",
        ])
    };
    let out = init_agent();
    assert!(out.status.success(), "{out:?}");
    let agent_toml = agent_etc.join("agent.toml");
    let written: toml::Value =
        toml::from_str(&std::fs::read_to_string(&agent_toml).unwrap()).unwrap();
    assert_eq!(written["slots"].as_integer(), Some(3));
    assert_eq!(
        written["credentials"].as_str(),
        Some(credentials.to_str().unwrap())
    );
    assert_eq!(mode(&credentials.join("agent.key")), 0o600);
    // Twice: refused before the (spent) token is read again.
    let again = init_agent();
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already set up"));

    drop(server);

    // The agent reads its file; one with a key it does not know is refused, by name.
    let bad = dir.path().join("bad-agent.toml");
    std::fs::write(&bad, "slots = 2\nslot = 3\n").unwrap();
    let out = mayfly(&["agent", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown field") && stderr.contains("slot"),
        "{stderr}"
    );

    // A wrong log format is a configuration error, not silently text.
    let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["doctor"])
        .env("MAYFLY_LOG_FORMAT", "yaml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}
