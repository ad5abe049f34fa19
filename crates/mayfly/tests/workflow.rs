//! `mayfly quickstart --workflow` as a user runs it (as root, with the test image): a job whose
//! steps do what CI jobs do — clone the repository from the simulated GitHub, install a tool
//! with sudo, write more than the VM's memory to the workspace, build and run a Docker container
//! with and without network — succeeds; a job with a failing step fails; the quickstart exits 1
//! because one job failed, and every VM is destroyed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;

fn images() -> PathBuf {
    std::env::var_os("MAYFLY_TEST_IMAGE_STORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/mayfly-images")
        })
}

fn step(name: &str, run: &str) -> serde_json::Value {
    json!({ "name": name, "run": run })
}

/// The workflow: "works" (four steps a real CI job takes for granted) and "fails".
fn workflow() -> serde_json::Value {
    json!({ "jobs": [
        { "name": "works", "steps": [
            step(
                "Check out",
                r#"git clone "$GITHUB_SERVER_URL/$GITHUB_REPOSITORY.git" repo && test -f repo/mayfly-checkout-marker"#,
            ),
            step(
                "Install with sudo",
                r#"printf '#!/bin/sh\necho installed-by-sudo\n' | sudo tee /usr/local/bin/mayfly-hello >/dev/null && sudo chmod 755 /usr/local/bin/mayfly-hello && test "$(mayfly-hello)" = installed-by-sudo"#,
            ),
            step(
                "Write 2 GiB more than the memory",
                r#"mem=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo); dd if=/dev/zero of=big bs=1M count=$((mem + 2048)) status=none && test $(stat -c %s big) -ge $(( (mem + 2048) * 1048576 )) && rm big"#,
            ),
            step(
                "Docker without network",
                "mkdir -p img && cp /run/mayfly/busybox img/busybox && tar -C img -c . | docker import - mayfly/busybox:test && docker run --rm --network none mayfly/busybox:test /busybox echo container-ran | grep -q container-ran",
            ),
            step(
                "Docker on the bridge reaches the simulator",
                r#"docker run --rm mayfly/busybox:test /busybox wget -q -O /dev/null "$GITHUB_SERVER_URL/$GITHUB_REPOSITORY.git/HEAD""#,
            ),
        ]},
        { "name": "fails", "steps": [
            step("Succeed", "true"),
            step("Fail", "exit 3"),
            step("Never run", "echo must-not-run"),
        ]},
    ]})
}

/// The table row of the job called `name` (the second column).
fn row<'a>(stdout: &'a str, name: &str) -> &'a str {
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(name))
        .collect();
    assert_eq!(rows.len(), 1, "one row for {name}:\n{stdout}");
    rows[0]
}

#[test]
fn a_workflow_job_clones_uses_sudo_fills_the_disk_and_runs_docker_and_a_failing_job_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("workflow.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&workflow()).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(["quickstart", "--timeout-secs", "900", "--workflow"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("qs"))
        .arg("--images")
        .arg(images())
        .env("MAYFLY_LOG", "debug")
        .output()
        .expect("mayfly runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("exit {:?}\n{stdout}\n{stderr}", out.status.code());

    assert_eq!(out.status.code(), Some(1), "one job failed: {context}");
    assert!(
        stderr.contains("1 job(s) did not succeed"),
        "only the failing job is counted: {context}"
    );
    assert!(
        row(&stdout, "works").trim_end().ends_with("success"),
        "{context}"
    );
    assert!(
        row(&stdout, "fails").trim_end().ends_with("failure"),
        "{context}"
    );
    for name in ["works", "fails"] {
        assert!(
            row(&stdout, name)
                .split_whitespace()
                .any(|w| w.starts_with("vm-")),
            "{name} ran in a VM: {context}"
        );
    }
    assert!(
        stdout.contains("2 job(s), 2 distinct VM(s), every job's VM destroyed: true"),
        "{context}"
    );
}
