//! The stand-in runner against the real simulator: with a repo-scoped JIT config it takes its
//! job from the broker, runs the script with the job's env, reports the combined output and the
//! conclusion, and exits with the script's code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use mayfly_core::{InstallationId, RepoFullName};
use mayfly_github::webhook::WebhookSecret;
use mayfly_github::{
    AppCredentials, AppPrivateKeyPem, GitHubClient, GitHubClientConfig, JitConfigRequest,
};
use mayfly_sim::{
    AccountType, AppKeyPair, Conclusion, JobStatus, NewInstallation, NewJob, NewRepo, Sim,
    SimConfig,
};
use secrecy::ExposeSecret;

const LABELS: [&str; 2] = ["self-hosted", "mayfly-test"];

/// Starts a simulator with one repo and a queued job running `script`; runs the stand-in runner
/// with a fresh JIT config; returns its exit code and the job as the simulator saw it.
async fn run_job(script: &str, env: BTreeMap<String, String>) -> (i32, mayfly_sim::SimJob) {
    let keys = AppKeyPair::generate().unwrap();
    let config = SimConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        keys.public_pem.clone(),
        WebhookSecret::new(b"unused".to_vec()),
    );
    let sim = Sim::start(config).await.unwrap();
    let installation = sim
        .create_installation(NewInstallation {
            account: "acme".into(),
            account_type: AccountType::Organization,
            sender: None,
        })
        .unwrap();
    let repo = sim
        .create_repo(NewRepo {
            installation_id: installation.id,
            name: "api".into(),
            private: true,
        })
        .unwrap()
        .full_name;
    let job = sim
        .create_job(NewJob {
            repository: repo.clone(),
            labels: LABELS.iter().map(|l| l.to_string()).collect(),
            script: Some(script.into()),
            env,
            ..NewJob::default()
        })
        .unwrap();

    let credentials = AppCredentials::new(
        1,
        AppPrivateKeyPem::new(keys.private_pem.expose_secret().to_string()),
    )
    .unwrap();
    let github = GitHubClient::new(GitHubClientConfig::new(sim.base_url(), credentials)).unwrap();
    let jit = github
        .generate_repo_jitconfig(
            InstallationId(i64::try_from(installation.id).unwrap()),
            &repo.parse::<RepoFullName>().unwrap(),
            &JitConfigRequest::new("vm-1", LABELS.iter().map(|l| l.to_string()).collect()),
        )
        .await
        .unwrap();

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mayfly-test-runner"))
        .arg("--jitconfig")
        .arg(jit.config.expose())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains(jit.config.expose()),
        "the runner printed its JIT config"
    );
    let code = output.status.code().unwrap_or(-1);
    let job = sim.job(job.id).unwrap();
    sim.shutdown().await;
    (code, job)
}

async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(90), body)
        .await
        .expect("test timed out");
}

#[tokio::test]
async fn a_failing_script_fails_the_job_with_its_output_and_exit_code() {
    bounded(async {
        let env = BTreeMap::from([("GREETING".to_string(), "from the job".to_string())]);
        let (code, job) = run_job("echo \"hello $GREETING\"; echo oops >&2; exit 3", env).await;
        assert_eq!(code, 3);
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.conclusion, Some(Conclusion::Failure));
        let output = job.output.unwrap();
        assert!(output.contains("hello from the job"), "{output}");
        assert!(output.contains("oops"), "{output}");
        assert_eq!(job.runner_name.as_deref(), Some("vm-1"));
    })
    .await;
}

#[tokio::test]
async fn a_passing_script_succeeds() {
    bounded(async {
        let (code, job) = run_job("echo fine", BTreeMap::new()).await;
        assert_eq!(code, 0);
        assert_eq!(job.conclusion, Some(Conclusion::Success));
        assert_eq!(job.output.as_deref(), Some("fine\n"));
    })
    .await;
}

#[tokio::test]
async fn a_bad_command_line_or_config_exits_with_a_documented_code() {
    bounded(async {
        let runner = env!("CARGO_BIN_EXE_mayfly-test-runner");
        let usage = tokio::process::Command::new(runner).output().await.unwrap();
        assert_eq!(usage.status.code(), Some(64));
        let garbage = tokio::process::Command::new(runner)
            .args(["--jitconfig", "not-base64!"])
            .output()
            .await
            .unwrap();
        assert_eq!(garbage.status.code(), Some(70));
        assert!(String::from_utf8_lossy(&garbage.stderr).contains("JIT config"));
    })
    .await;
}
