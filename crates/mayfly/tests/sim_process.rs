//! `mayfly sim` as its own process: the App's OAuth client secret is kept in its directory
//! (mode 600) so a `mayfly server` started beside it can read it, survives a restart unchanged,
//! and never appears in what the simulator prints.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the simulator, waits until it has printed its facts, stops it with SIGTERM and
/// returns everything it printed.
fn run_sim_once(dir: &Path) -> String {
    let mut child: Child = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["sim", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args([
            "--oauth-callback-url",
            "https://127.0.0.1:8443/auth/callback",
        ])
        .env("MAYFLY_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = String::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "the simulator did not start: {printed}"
        );
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("the simulator exited: {printed}");
        }
        printed.push_str(&line);
        if line.contains("control API") {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    stderr.read_to_string(&mut printed).unwrap();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    let status = child.wait().unwrap();
    // SIGTERM may come before the simulator listens for it; either way it stops.
    assert!(
        status.success() || status.signal() == Some(15),
        "{status:?}: {printed}"
    );
    printed
}

#[test]
fn the_oauth_client_secret_is_kept_private_across_restarts_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let sim_dir = dir.path().join("sim");
    let first = run_sim_once(&sim_dir);
    let path = sim_dir.join("oauth-client-secret");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", path.display());
    let secret = std::fs::read_to_string(&path).unwrap();
    assert_eq!(secret.len(), 40, "GitHub's shape: 40 hex characters");
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(first.contains("OAuth client id:  Iv23li"), "{first}");
    assert!(first.contains(path.to_str().unwrap()), "{first}");
    assert!(
        first.contains("https://127.0.0.1:8443/auth/callback"),
        "{first}"
    );

    let second = run_sim_once(&sim_dir);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret);
    for printed in [&first, &second] {
        assert!(
            !printed.contains(&secret),
            "the secret was printed: {printed}"
        );
    }
    // No temporary file of an atomic write is left behind.
    let names: Vec<String> = std::fs::read_dir(&sim_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
}
