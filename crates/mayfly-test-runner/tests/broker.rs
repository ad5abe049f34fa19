//! The stand-in runner as the image installs it, against the real simulator: a temporary runner
//! root holds `layout/` and the binary as `bin/Runner.Listener`, and `run.sh` is started with the
//! JIT config in `ACTIONS_RUNNER_INPUT_JITCONFIG`. It writes the config's files into the root,
//! runs the job's steps until one fails, reports the conclusion and output, and never lets the
//! config reach a step, its output or the console; a read-only root is refused by path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mayfly_core::{InstallationId, RepoFullName};
use mayfly_github::webhook::WebhookSecret;
use mayfly_github::{
    AppCredentials, AppPrivateKeyPem, GitHubClient, GitHubClientConfig, JitConfigRequest,
};
use mayfly_sim::{
    AccountType, AppKeyPair, Conclusion, JobStatus, JobStep, NewInstallation, NewJob, NewRepo, Sim,
    SimHandle, SimJob,
};
use secrecy::ExposeSecret;

const LABELS: [&str; 2] = ["self-hosted", "mayfly-test"];
const JIT_FILES: [&str; 3] = [".runner", ".credentials", ".credentials_rsaparams"];

/// A runner root laid out as the image lays it out.
fn runner_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let layout = Path::new(env!("CARGO_MANIFEST_DIR")).join("layout");
    for entry in std::fs::read_dir(layout).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), root.path().join(entry.file_name())).unwrap();
    }
    std::fs::create_dir(root.path().join("bin")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_mayfly-test-runner"),
        root.path().join("bin/Runner.Listener"),
    )
    .unwrap();
    root
}

/// A simulator with one repository, `acme/api`, and a fresh JIT config for it.
struct Setup {
    sim: SimHandle,
    repo: String,
    jitconfig: String,
}

impl Setup {
    async fn start() -> Self {
        let keys = AppKeyPair::generate().unwrap();
        let config = mayfly_sim::SimConfig::new(
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
        let credentials = AppCredentials::new(
            1,
            AppPrivateKeyPem::new(keys.private_pem.expose_secret().to_string()),
        )
        .unwrap();
        let github =
            GitHubClient::new(GitHubClientConfig::new(sim.base_url(), credentials)).unwrap();
        let jit = github
            .generate_repo_jitconfig(
                InstallationId(i64::try_from(installation.id).unwrap()),
                &repo.parse::<RepoFullName>().unwrap(),
                &JitConfigRequest::new("vm-1", LABELS.iter().map(|l| l.to_string()).collect()),
            )
            .await
            .unwrap();
        Self {
            sim,
            repo,
            jitconfig: jit.config.expose().to_owned(),
        }
    }

    fn job(&self, new: NewJob) -> SimJob {
        self.sim
            .create_job(NewJob {
                repository: self.repo.clone(),
                labels: LABELS.iter().map(|l| l.to_string()).collect(),
                ..new
            })
            .unwrap()
    }

    /// Stdout and stderr of a runner process, checked never to hold the config.
    fn console(&self, output: &Output) -> String {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !text.contains(&self.jitconfig),
            "the runner printed its JIT config"
        );
        text
    }
}

fn step(name: &str, run: &str) -> JobStep {
    JobStep {
        name: name.into(),
        run: run.into(),
    }
}

/// `<root>/run.sh` with the config in the environment, as the guest starts it.
fn run_sh(root: &Path, jitconfig: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(root.join("run.sh"));
    command
        .env("ACTIONS_RUNNER_INPUT_JITCONFIG", jitconfig)
        // Tests run as root; the image runs run.sh as its runner user.
        .env("RUNNER_ALLOW_RUNASROOT", "1")
        .env_remove("RUNNER_TOOL_CACHE")
        .current_dir(root);
    command
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

async fn bounded<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(90), body)
        .await
        .expect("test timed out");
}

#[tokio::test]
async fn a_job_stops_at_its_first_failing_step_and_no_step_sees_the_config() {
    bounded(async {
        let setup = Setup::start().await;
        let root = runner_root();
        let root_path = root.path().canonicalize().unwrap();
        let job = setup.job(NewJob {
            steps: vec![
                step(
                    "Show the environment",
                    "env | sort\necho \"pwd=$(pwd)\"\necho to-stderr >&2",
                ),
                step(
                    "Fail",
                    "echo before-failure\nfalse\necho after-failure-not-reached",
                ),
                step(
                    "Never",
                    "touch \"$GITHUB_WORKSPACE/step-3-ran\"\necho step-3-ran",
                ),
            ],
            env: BTreeMap::from([("GREETING".into(), "from the job".into())]),
            ..NewJob::default()
        });

        let output = run_sh(&root_path, &setup.jitconfig).output().await.unwrap();
        let console = setup.console(&output);
        // The job ran, so the runner exits 0 whatever the job's conclusion, as GitHub's does.
        assert_eq!(output.status.code(), Some(0), "{console}");
        assert!(
            console.contains("Job build completed with result: Failed"),
            "{console}"
        );

        let job = setup.sim.job(job.id).unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.conclusion, Some(Conclusion::Failure));
        assert_eq!(job.runner_name.as_deref(), Some("vm-1"));
        let out = job.output.unwrap();
        let workspace = root_path.join("_work/api/api");
        for expected in [
            "##[group]Run Show the environment".to_owned(),
            "GREETING=from the job".to_owned(),
            "CI=true".to_owned(),
            "GITHUB_ACTIONS=true".to_owned(),
            "RUNNER_OS=Linux".to_owned(),
            "GITHUB_REPOSITORY=acme/api".to_owned(),
            "RUNNER_TOOL_CACHE=/opt/hostedtoolcache".to_owned(),
            format!("GITHUB_WORKSPACE={}", workspace.display()),
            format!("RUNNER_TEMP={}", root_path.join("_work/_temp").display()),
            format!("pwd={}", workspace.display()),
            "to-stderr".to_owned(),
            "##[group]Run Fail".to_owned(),
            "before-failure".to_owned(),
            "##[error]Process completed with exit code 1.".to_owned(),
            "Step 3 (Never) did not run: step 2 failed.".to_owned(),
        ] {
            assert!(out.contains(&expected), "{expected:?} missing from:\n{out}");
        }
        // Output on the lines after the `echo` lines of the headers: only what ran.
        assert!(!out.contains("\nafter-failure-not-reached\n"), "{out}");
        assert!(!out.contains("\nstep-3-ran\n"), "{out}");
        assert!(!out.contains("##[group]Run Never"), "{out}");
        assert!(!workspace.join("step-3-ran").exists());
        // The config reached no step: neither its value nor the variable.
        assert!(!out.contains(&setup.jitconfig), "a step saw the JIT config");
        assert!(!out.contains("ACTIONS_RUNNER_INPUT"), "{out}");

        // The config's files are in the root, owner-only, as the config holds them.
        let files: BTreeMap<String, String> =
            serde_json::from_slice(&STANDARD.decode(&setup.jitconfig).unwrap()).unwrap();
        assert_eq!(files.len(), JIT_FILES.len());
        for name in JIT_FILES {
            let path = root_path.join(name);
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                STANDARD.decode(&files[name]).unwrap(),
                "{name}"
            );
        }
        let runner: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root_path.join(".runner")).unwrap()).unwrap();
        assert_eq!(runner["AgentName"], "vm-1");
        // The layout's pieces: run-helper.sh copied from its template, a log in _diag/.
        assert!(root_path.join("run-helper.sh").is_file());
        let logs: Vec<PathBuf> = std::fs::read_dir(root_path.join("_diag"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(logs.len(), 1, "{logs:?}");
        let log = std::fs::read_to_string(&logs[0]).unwrap();
        assert!(log.contains("Running job: build"), "{log}");
        assert!(!log.contains(&setup.jitconfig));
        setup.sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_older_bare_flag_runs_a_script_job_to_success() {
    bounded(async {
        let setup = Setup::start().await;
        let root = runner_root();
        let job = setup.job(NewJob {
            script: Some("echo fine".into()),
            ..NewJob::default()
        });
        let output = tokio::process::Command::new(root.path().join("bin/Runner.Listener"))
            .args(["--jitconfig", &setup.jitconfig])
            .output()
            .await
            .unwrap();
        let console = setup.console(&output);
        assert_eq!(output.status.code(), Some(0), "{console}");
        let job = setup.sim.job(job.id).unwrap();
        assert_eq!(job.conclusion, Some(Conclusion::Success));
        let out = job.output.unwrap();
        assert!(out.starts_with("##[group]Run Run script\n"), "{out}");
        assert!(out.ends_with("##[endgroup]\nfine\n"), "{out}");
        setup.sim.shutdown().await;
    })
    .await;
}

/// Runs `command` with `root` read-only: a read-only bind mount in a private mount namespace
/// when running as root (which file modes do not stop), mode 0555 otherwise.
fn read_only(root: &Path, command: &[&str]) -> tokio::process::Command {
    if running_as_root() {
        let mut wrapped = tokio::process::Command::new("unshare");
        wrapped
            .args(["-m", "--", "bash", "-c"])
            .arg(r#"mount --bind -o ro "$0" "$0" && exec "$@""#)
            .arg(root)
            .args(command);
        wrapped
    } else {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o555)).unwrap();
        let mut direct = tokio::process::Command::new(command[0]);
        direct.args(&command[1..]);
        direct
    }
}

#[tokio::test]
async fn a_read_only_root_is_refused_by_path_and_takes_no_job() {
    bounded(async {
        let setup = Setup::start().await;
        let root = runner_root();
        let root_path = root.path().canonicalize().unwrap();
        let job = setup.job(NewJob::default());
        let run_sh = root_path.join("run.sh");
        let listener = root_path.join("bin/Runner.Listener");
        for command in [
            vec![run_sh.to_str().unwrap()],
            vec![listener.to_str().unwrap(), "run"],
        ] {
            let output = read_only(&root_path, &command)
                .env("ACTIONS_RUNNER_INPUT_JITCONFIG", &setup.jitconfig)
                .env("RUNNER_ALLOW_RUNASROOT", "1")
                .output()
                .await
                .unwrap();
            let console = setup.console(&output);
            assert_eq!(output.status.code(), Some(1), "{command:?}: {console}");
            let expected = format!("The runner root {} must be writable", root_path.display());
            assert!(
                console.to_lowercase().contains(&expected.to_lowercase()),
                "{command:?}: {console}"
            );
        }
        std::fs::set_permissions(&root_path, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in JIT_FILES {
            assert!(!root_path.join(name).exists(), "{name}");
        }
        assert_eq!(setup.sim.job(job.id).unwrap().status, JobStatus::Queued);
        setup.sim.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn bad_command_lines_configs_and_root_are_terminated_errors() {
    bounded(async {
        let root = runner_root();
        let listener = root.path().join("bin/Runner.Listener");
        let run = |args: &[&str], config: Option<&str>| {
            let mut command = tokio::process::Command::new(&listener);
            command
                .args(args)
                .env_remove("ACTIONS_RUNNER_INPUT_JITCONFIG");
            if let Some(config) = config {
                command.env("ACTIONS_RUNNER_INPUT_JITCONFIG", config);
            }
            async move { command.output().await }
        };
        let none = run(&["run"], None).await.unwrap();
        assert_eq!(none.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&none.stderr).contains("ACTIONS_RUNNER_INPUT_JITCONFIG"));
        let flag = run(&["run", "--token=s3cret"], None).await.unwrap();
        assert_eq!(flag.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&flag.stderr);
        assert!(stderr.contains("unknown flag --token"), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
        let garbage = run(&["run"], Some("not-base64!")).await.unwrap();
        assert_eq!(garbage.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&garbage.stderr);
        assert!(stderr.contains("JIT config"), "{stderr}");
        assert!(!stderr.contains("not-base64!"), "{stderr}");
        // A config that fails to decode leaves the root untouched.
        assert!(!root.path().join("_diag").exists());

        // As in actions/runner, run.sh and config.sh refuse root unless it is allowed.
        if running_as_root() {
            let refused = tokio::process::Command::new(root.path().join("run.sh"))
                .env_remove("RUNNER_ALLOW_RUNASROOT")
                .output()
                .await
                .unwrap();
            assert_eq!(refused.status.code(), Some(1));
            assert!(String::from_utf8_lossy(&refused.stdout).contains("Must not run"));
            assert!(!root.path().join("run-helper.sh").exists());
        }
        let config = tokio::process::Command::new(root.path().join("config.sh"))
            .env("RUNNER_ALLOW_RUNASROOT", "1")
            .output()
            .await
            .unwrap();
        assert_eq!(config.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&config.stderr).contains("JIT configuration is the only"));
    })
    .await;
}
