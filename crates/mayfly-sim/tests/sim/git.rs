//! Each simulated repository is served over git's dumb HTTP protocol at
//! `<base>/OWNER/REPO.git`, as GitHub serves it: `git clone` of what a job's env names
//! (`$GITHUB_SERVER_URL/$GITHUB_REPOSITORY.git`) checks out the marker file; nothing outside the
//! repository's directory is served; without `git` the simulator still creates repositories.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use mayfly_sim::runner_client::RunnerClient;
use mayfly_sim::{NewJob, CHECKOUT_MARKER, CHECKOUT_MARKER_CONTENT};

use super::support::{bounded, TestSim};

/// `git clone URL DEST` with no user or system configuration; returns whether it succeeded
/// and what it printed.
async fn git_clone(url: String, dest: &Path) -> (bool, String) {
    let dest = dest.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("git")
            .args(["clone", "--quiet", &url])
            .arg(&dest)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .expect("git runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Sends `GET <target>` as written (no URL normalisation) and returns the status code.
async fn raw_get_status(addr: std::net::SocketAddr, target: &str) -> u16 {
    let target = target.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {answer:?}"))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_job_clones_its_repository_from_the_server_url_in_its_env() {
    bounded(async {
        let t = TestSim::start().await;
        let (_, repo, token) = t.org_with_repo().await;
        let created = t
            .sim
            .create_job(NewJob {
                repository: repo.clone(),
                labels: vec!["self-hosted".into()],
                ..NewJob::default()
            })
            .unwrap();
        let (_, encoded) = t.jit(&token, &repo, "vm-1", &["self-hosted"]).await;
        let mut runner = RunnerClient::from_encoded_jit_config(&encoded, None).unwrap();
        let job = runner.acquire().await.unwrap().expect("a job");
        assert_eq!(job.job_id, created.id);
        let server_url = job.env.get("GITHUB_SERVER_URL").expect("GITHUB_SERVER_URL");
        assert_eq!(
            format!("{server_url}/"),
            t.sim.base_url().as_str(),
            "GITHUB_SERVER_URL is the simulator's base URL, without a trailing slash as GitHub's"
        );

        let dir = tempfile::tempdir().unwrap();
        let checkout = dir.path().join("repo");
        let (ok, stderr) =
            git_clone(format!("{server_url}/{}.git", job.repository), &checkout).await;
        assert!(ok, "git clone failed: {stderr}");
        assert_eq!(
            std::fs::read_to_string(checkout.join(CHECKOUT_MARKER)).unwrap(),
            CHECKOUT_MARKER_CONTENT
        );
        assert_eq!(
            std::fs::read_to_string(checkout.join("README.md")).unwrap(),
            "# acme/api\n"
        );
        let branch = Command::new("git")
            .args(["-C"])
            .arg(&checkout)
            .args(["rev-parse", "--abbrev-ref", "HEAD"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&branch.stdout).trim(), "main");
    })
    .await;
}

#[tokio::test]
async fn the_same_repository_has_the_same_commit_in_every_simulator() {
    bounded(async {
        let mut heads = Vec::new();
        for _ in 0..2 {
            let t = TestSim::start().await;
            t.org_with_repo().await;
            let head = t
                .http
                .get(t.url("/acme/api.git/refs/heads/main"))
                .send()
                .await
                .unwrap();
            assert_eq!(head.status(), 200);
            heads.push(head.text().await.unwrap());
        }
        assert_eq!(heads[0].trim().len(), 40, "{heads:?}");
        assert_eq!(heads[0], heads[1]);
    })
    .await;
}

#[tokio::test]
async fn only_files_inside_a_known_repository_are_served() {
    bounded(async {
        let t = TestSim::start().await;
        t.org_with_repo().await;
        let addr = t.sim.local_addr();
        assert_eq!(raw_get_status(addr, "/acme/api.git/HEAD").await, 200);
        assert_eq!(raw_get_status(addr, "/ACME/api.git/info/refs").await, 200);
        for target in [
            "/acme/api.git/../../../../../../etc/passwd",
            "/acme/api.git/objects/../../../../../../etc/passwd",
            "/acme/api.git/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
            "/acme/api.git/..%2f..%2f..%2fetc%2fpasswd",
            "/acme/api.git//etc/passwd",
            "/acme/api.git/./HEAD",
            "/acme/..%2f..%2fetc.git/passwd",
            "/../acme/api.git/HEAD",
            "/acme/api.git/objects",
            "/acme/api.git/",
            "/acme/api.git/no-such-file",
            "/acme/other.git/HEAD",
            "/nobody/api.git/HEAD",
        ] {
            assert_eq!(raw_get_status(addr, target).await, 404, "{target}");
        }
        // GitHub's REST 404s are untouched.
        let (status, _, body) = t.get("/repos/acme/api.git/nothing", "x").await;
        assert_eq!(status, 404);
        assert!(body["message"].is_string(), "{body}");
    })
    .await;
}

#[tokio::test]
async fn without_git_repositories_are_still_created_and_their_git_urls_answer_404() {
    bounded(async {
        let t = TestSim::start_with(|c| c.git = "/nonexistent/git".into()).await;
        let (_, repo, _) = t.org_with_repo().await;
        assert_eq!(repo, "acme/api");
        let status = t
            .http
            .get(t.url("/acme/api.git/HEAD"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404);
    })
    .await;
}
