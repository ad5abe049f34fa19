//! `mayfly quickstart` as a user runs it: exit 0, a table row per job, every job succeeded, and
//! no secret it handled (the webhook secret, the App private key) in its output at debug level
//! or in the database file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;

#[test]
fn quickstart_runs_the_loop_and_leaks_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("qs");
    let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args([
            "quickstart",
            "--jobs",
            "3",
            "--timeout-secs",
            "120",
            "--data-dir",
        ])
        .arg(&data)
        .env("MAYFLY_LOG", "debug")
        .output()
        .expect("mayfly runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status.code()
    );

    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("success"))
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(
        rows.iter().any(|r| r.starts_with("acme-robotics/app")),
        "{stdout}"
    );
    assert!(
        rows.iter().any(|r| r.starts_with("globex-labs/app")),
        "{stdout}"
    );

    let secret = std::fs::read_to_string(data.join("sim/webhook-secret")).unwrap();
    let key = std::fs::read_to_string(data.join("sim/app-private-key.pem")).unwrap();
    let key_line = key.lines().nth(1).expect("a PEM body line");
    let database = std::fs::read(data.join("server/mayfly.db")).unwrap();
    for (what, needle) in [
        ("webhook secret", secret.trim()),
        ("App private key", key_line),
    ] {
        assert!(
            !stdout.contains(needle) && !stderr.contains(needle),
            "the {what} was printed"
        );
        assert!(
            !database
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            "the {what} is in the database"
        );
    }
}
