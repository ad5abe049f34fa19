//! What a user sees of the command line: help that explains every flag, the example
//! configuration that the server actually accepts, clear errors for bad configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;

use figment::providers::Format;

fn mayfly(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(args)
        .env_remove("MAYFLY_CONFIG")
        .output()
        .expect("mayfly runs")
}

/// Every `--flag` line of a help text is followed by an explanation.
fn assert_every_flag_explained(help: &str, flags: &[&str]) {
    for flag in flags {
        let line_index = help
            .lines()
            .position(|l| l.trim_start().starts_with(flag) || l.contains(&format!(", {flag}")))
            .unwrap_or_else(|| panic!("{flag} is missing from the help:\n{help}"));
        let explained = help.lines().skip(line_index).take(3).any(|l| {
            let text = l.trim();
            text.len() > flag.len() + 12 && !text.starts_with("--")
                || text
                    .split_once("  ")
                    .is_some_and(|(_, rest)| rest.trim().len() > 10)
        });
        assert!(explained, "{flag} has no explanation:\n{help}");
    }
}

#[test]
fn server_help_explains_every_flag() {
    let out = mayfly(&["server", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert_every_flag_explained(
        &help,
        &[
            "--config",
            "--listen",
            "--data-dir",
            "--tls-cert",
            "--tls-key",
            "--webhook-secret-file",
            "--insecure-dev",
        ],
    );
}

#[test]
fn sim_help_explains_every_flag() {
    let out = mayfly(&["sim", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert_every_flag_explained(
        &help,
        &[
            "--listen",
            "--data-dir",
            "--webhook-url",
            "--webhook-ca-file",
            "--tls-cert",
            "--tls-key",
            "--app-id",
            "--token-ttl-secs",
            "--oauth-callback-url",
        ],
    );
}

#[test]
fn the_example_configuration_is_accepted() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../mayfly.example.toml");
    let config: mayfly_server::ServerConfig = figment::Figment::new()
        .merge(figment::providers::Toml::file(example))
        .extract()
        .unwrap();
    assert_eq!(config.listen, mayfly_server::ServerConfig::default().listen);
    assert_eq!(config.webhook.max_body_bytes, 1024 * 1024);
    assert_eq!(config.refusals.burst, 20);
    assert_eq!(config.refusals.window_secs, 60);
}

#[test]
fn bad_configuration_exits_3_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mayfly.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlisen = 1\n").unwrap();
    let out = mayfly(&["server", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lisen"), "{stderr}");

    let out = mayfly(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TLS") && stderr.contains("--insecure-dev"),
        "{stderr}"
    );

    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = mayfly(&[
        "server",
        "--insecure-dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--webhook-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "the secret leaked: {stderr}");

    // A usable secret but no database key: the store is encrypted, so the server says how to
    // make a key.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = mayfly(&[
        "server",
        "--insecure-dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--webhook-secret-file",
        secret.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("openssl rand -hex 32"), "{stderr}");

    let out = mayfly(&["server", "--config", "/nonexistent/mayfly.toml"]);
    assert_eq!(out.status.code(), Some(3));
}

/// A server data directory under `dir`, and a database key in a file beside it (mode 600):
/// (data dir, key, key file).
fn server_data_dir(
    dir: &std::path::Path,
) -> (std::path::PathBuf, mayfly_store::DbKey, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    let db_key = mayfly_store::DbKey::random();
    let db_key_file = dir.join("db.key");
    std::fs::write(&db_key_file, db_key.to_hex().as_str()).unwrap();
    std::fs::set_permissions(&db_key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    (data, db_key, db_key_file)
}

/// `mayfly keys init` makes a private master key; `mayfly keys rotate` gives the store a new
/// one and sealed values still open with the key file as it is afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_init_and_rotate_keep_sealed_values_readable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (data, db_key, db_key_file) = server_data_dir(dir.path());
    let keys = |verb: &str| {
        Command::new(env!("CARGO_BIN_EXE_mayfly"))
            .args(["keys", verb, "--data-dir"])
            .arg(&data)
            .env_remove("MAYFLY_CONFIG")
            .env("MAYFLY_DB_KEY_FILE", &db_key_file)
            .output()
            .unwrap()
    };
    let out = keys("init");
    assert!(out.status.success(), "{out:?}");
    let key_file = data.join("master.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first_id = mayfly_store::MasterKey::read(&key_file).unwrap().id();
    let again = keys("init");
    assert!(String::from_utf8_lossy(&again.stdout).contains("already holds"));
    assert_eq!(
        mayfly_store::MasterKey::read(&key_file).unwrap().id(),
        first_id
    );

    let store = mayfly_store::SqliteStore::open(&data.join("mayfly.db"), &db_key)
        .await
        .unwrap();
    let sealer = mayfly_store::Sealer::new(key_file.clone());
    sealer
        .seal(&store, "test", "value", b"keep-me-sealed")
        .await
        .unwrap();

    let out = keys("rotate");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let new_id = mayfly_store::MasterKey::read(&key_file).unwrap().id();
    assert_ne!(new_id, first_id);
    assert!(
        stdout.contains(&first_id) && stdout.contains(&new_id),
        "{stdout}"
    );
    let opened = sealer.open(&store, "test", "value").await.unwrap().unwrap();
    assert_eq!(opened.as_slice(), b"keep-me-sealed");
    assert!(store
        .plaintext_dump()
        .await
        .unwrap()
        .find("keep-me-sealed")
        .is_none());
    store.close().await;

    // A master key file others can read is refused, with the fix.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = keys("rotate");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}

#[test]
fn security_commands_explain_every_flag() {
    for (args, flags) in [
        (
            &["agent", "enrol", "--help"][..],
            &["--server", "--token", "--token-file", "--credentials"][..],
        ),
        (
            &["agents", "bootstrap", "--help"][..],
            &["--name", "--ttl-minutes", "--config", "--data-dir"][..],
        ),
        (
            &["token", "create", "--help"][..],
            &["--name", "--scope", "--installation", "--config"][..],
        ),
        (
            &["audit", "export", "--help"][..],
            &["--output", "--config", "--data-dir"][..],
        ),
    ] {
        let out = mayfly(args);
        assert!(out.status.success(), "{args:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        assert_every_flag_explained(&help, flags);
    }
}

/// `mayfly agent` without credentials refuses a server that is not on loopback, and says how
/// to enrol.
#[test]
fn an_agent_without_credentials_stays_on_loopback() {
    let out = mayfly(&["agent", "--server-url", "http://10.0.0.5:8444"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mayfly agent enrol"), "{stderr}");
}

/// A bad `--workflow` file is a configuration error (exit 3) that names the file and what is
/// wrong, before anything starts; `--workflow` and `--jobs` do not go together.
#[test]
fn a_bad_quickstart_workflow_exits_3_naming_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let workflow = dir.path().join("wf.json");
    std::fs::write(&workflow, r#"{"jobs":[{"name":"lint","steps":[]}]}"#).unwrap();
    let data = dir.path().join("qs");
    let out = mayfly(&[
        "quickstart",
        "--workflow",
        workflow.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(workflow.to_str().unwrap()) && stderr.contains("\"lint\") has no steps"),
        "{stderr}"
    );
    assert!(!data.exists(), "the quickstart started anyway");

    let out = mayfly(&[
        "quickstart",
        "--workflow",
        workflow.to_str().unwrap(),
        "--jobs",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let help = String::from_utf8_lossy(&mayfly(&["quickstart", "--help"]).stdout).into_owned();
    assert_every_flag_explained(&help, &["--workflow", "--jobs"]);
    assert!(help.contains("exits 1"), "{help}");
}

#[test]
fn usage_help_explains_every_flag_with_examples() {
    for command in ["summary", "jobs", "top"] {
        let out = mayfly(&["usage", command, "--help"]);
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        let mut flags = vec![
            "--server",
            "--token-file",
            "--ca-file",
            "--since",
            "--from",
            "--to",
            "--repo",
            "--workflow",
            "--label",
            "--machine-type",
            "--conclusion",
            "--installation",
            "--format",
        ];
        if command != "jobs" {
            flags.push("--by");
        }
        assert_every_flag_explained(&help, &flags);
        assert!(help.contains("mayfly usage summary --since 30d"), "{help}");
        assert!(help.contains("UTC"), "{help}");
    }
    // The token is read from a file only.
    let out = mayfly(&["usage", "jobs", "--token", "mfy_x"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The simulated driver runs no VM: `mayfly agent` refuses it without `--allow-simulated-vms`
/// (exit 3, saying why), refuses that flag and the `--simulated-*` flags without it, wants N
/// enrolments for N agents with `--credentials`, and no environment variable selects it.
#[test]
fn the_simulated_driver_is_refused_without_its_flag() {
    let loopback = ["--server-url", "http://127.0.0.1:1"];
    for (args, says) in [
        (
            &["agent", "--vm-driver", "simulated"][..],
            &["--allow-simulated-vms", "runs NO VM"][..],
        ),
        (
            &[
                "agent",
                "--vm-driver",
                "simulated",
                "--simulated-agents",
                "5",
            ][..],
            &["--allow-simulated-vms", "runs NO VM"][..],
        ),
        (
            &["agent", "--allow-simulated-vms"][..],
            &["only for --vm-driver simulated"][..],
        ),
        (
            &["agent", "--simulated-job-ms", "10"][..],
            &["only for --vm-driver simulated"][..],
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
            .args(args)
            .args(loopback)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for text in says {
            assert!(stderr.contains(text), "{args:?}: {stderr}");
        }
    }
    // N agents from --credentials need N enrolments in its subdirectories.
    let credentials = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["agent", "--vm-driver", "simulated", "--allow-simulated-vms"])
        .args(["--simulated-agents", "3", "--credentials"])
        .arg(credentials.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds 0 enrolments") && stderr.contains("mayfly agent enrol"),
        "{stderr}"
    );
    // An environment variable picks nothing: this is the QEMU agent's refusal of a server off
    // loopback, not the simulated one.
    let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["agent", "--server-url", "http://10.0.0.5:8444"])
        .env("MAYFLY_AGENT_VM_DRIVER", "simulated")
        .env("MAYFLY_AGENT_ALLOW_SIMULATED_VMS", "true")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mayfly agent enrol"), "{stderr}");
    assert!(!stderr.contains("SIMULATED"), "{stderr}");
}

/// With its flag, a process of simulated agents says so on every line it logs, each agent's
/// lines naming it (here they retry a server that is not there).
#[test]
fn simulated_agents_say_so_on_every_log_line() {
    use std::io::BufRead;

    let state = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["agent", "--vm-driver", "simulated", "--allow-simulated-vms"])
        .args(["--simulated-agents", "2", "--server-url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--state-root")
        .arg(state.path())
        .env("MAYFLY_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut lines = Vec::new();
    let retried = |lines: &[String], agent: &str| {
        lines
            .iter()
            .any(|l| l.contains(agent) && l.contains("no session with the server"))
    };
    while !(retried(&lines, "simulated-1") && retried(&lines, "simulated-2")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        retried(&lines, "simulated-1") && retried(&lines, "simulated-2"),
        "both agents tried the server: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("NO VM runs here")),
        "{lines:#?}"
    );
    for line in &lines {
        assert!(
            line.starts_with("[SIMULATED AGENT: no VMs] "),
            "a line without the announcement: {line}"
        );
    }
    // Each agent's own lines also name it and its driver.
    assert!(lines
        .iter()
        .filter(|l| l.contains("no session with the server"))
        .all(|l| l.contains("driver=\"simulated (no VMs)\"")));
}

/// `mayfly vm list` shows the VMs the server holds, a warm pool VM (no tenant yet) told apart
/// from one started for its job; destroyed VMs are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_list_shows_live_vms_and_marks_the_warm_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (data, db_key, db_key_file) = server_data_dir(dir.path());
    let store = mayfly_store::SqliteStore::open(&data.join("mayfly.db"), &db_key)
        .await
        .unwrap();
    let vm = |start_id: &str, repo: &str, state: &str, pool: bool| {
        let mut vm = mayfly_store::VmRow::requested(
            mayfly_store::Placement {
                start_id: start_id.into(),
                host: "host-a".into(),
                profile: "linux-2cpu".into(),
                installation_id: i64::from(!repo.is_empty()),
                repo: repo.into(),
                runner_name: format!("mayfly-{start_id}"),
                runner_id: None,
                for_job_id: 0,
            },
            chrono::Utc::now(),
        );
        vm.state = state.into();
        vm.pool = pool;
        vm
    };
    use mayfly_store::Store as _;
    for row in [
        vm("cold-1", "org-a/app", "booted", false),
        vm("pool-1", "", "warm", true),
        vm("gone-1", "org-a/app", "destroyed", false),
    ] {
        store.insert_vm(&row).await.unwrap();
    }
    store.close().await;

    let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["vm", "list", "--data-dir"])
        .arg(&data)
        .env_remove("MAYFLY_CONFIG")
        .env("MAYFLY_DB_KEY_FILE", &db_key_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(
        lines[0],
        [
            "START_ID",
            "HOST",
            "PROFILE",
            "STATE",
            "POOL",
            "REPOSITORY",
            "AGE"
        ]
    );
    let row = |id: &str| lines.iter().find(|l| l[0] == id).cloned();
    assert_eq!(row("cold-1").unwrap()[3..6], ["booted", "-", "org-a/app"]);
    assert_eq!(row("pool-1").unwrap()[3..6], ["warm", "waiting", ""]);
    assert!(row("gone-1").is_none(), "{stdout}");
    assert_eq!(lines.len(), 3, "{stdout}");
}
