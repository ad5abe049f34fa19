//! Runs a job's `run:` steps as actions/runner runs them with the bash shell: each script is
//! written to `<work>/_temp/<uuid>.sh` and run as `bash --noprofile --norc -eo pipefail <file>`
//! in the workspace `<work>/<repo>/<repo>`, with the job's env under the default `GITHUB_*` and
//! `RUNNER_*` variables. A step's stdout and stderr share one pipe, so its output keeps its order;
//! it is collected under a `##[group]Run <name>` header. The first failing step fails the job and
//! the steps after it do not run. Runner inputs (`ACTIONS_RUNNER_INPUT_*`) never reach a step.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use mayfly_sim::runner_client::AcquiredJob;
use mayfly_sim::{Conclusion, JobStep};
use tokio::io::AsyncReadExt as _;
use tokio::time::Instant;

use crate::cli;

/// The shell of a `run:` step with `shell: bash`, as actions/runner starts it.
pub const SHELL: &str = "bash";
pub const SHELL_ARGS: [&str; 4] = ["--noprofile", "--norc", "-eo", "pipefail"];
/// Tool cache when the runner's environment names none, as on GitHub's hosted images.
pub const DEFAULT_TOOL_CACHE: &str = "/opt/hostedtoolcache";
/// How long output is still read after a step's shell exited (a background process may hold the
/// pipe open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("the repository {0:?} is not owner/name")]
    Repository(String),
    #[error("creating {} failed", .0.display())]
    Dir(PathBuf, #[source] io::Error),
    #[error("writing the step's script to {} failed", .0.display())]
    Script(PathBuf, #[source] io::Error),
    #[error("starting {SHELL} failed")]
    Spawn(#[source] io::Error),
    #[error("reading the step's output failed")]
    Output(#[source] io::Error),
}

/// What the runner knows about itself that steps are told.
#[derive(Debug, Clone)]
pub struct RunnerInfo {
    pub name: String,
    /// The work folder (`<root>/_work`).
    pub work: PathBuf,
    pub tool_cache: OsString,
}

/// The job's conclusion and its whole output, as reported to the broker.
#[derive(Debug)]
pub struct JobResult {
    pub conclusion: Conclusion,
    pub output: String,
}

/// Where a job's steps run, and their environment.
#[derive(Debug)]
struct JobDirs {
    temp: PathBuf,
    workspace: PathBuf,
    env: BTreeMap<String, OsString>,
}

/// The repository's directory name: `name` of `owner/name`, when it is a plain name.
fn repo_dir_name(repository: &str) -> Option<&str> {
    let (owner, name) = repository.split_once('/')?;
    let plain = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']);
    (plain(owner) && plain(name)).then_some(name)
}

impl JobDirs {
    fn prepare(job: &AcquiredJob, runner: &RunnerInfo) -> Result<Self, StepError> {
        let name = repo_dir_name(&job.repository)
            .ok_or_else(|| StepError::Repository(job.repository.clone()))?;
        let temp = runner.work.join("_temp");
        let runner_workspace = runner.work.join(name);
        let workspace = runner_workspace.join(name);
        for dir in [&temp, &workspace] {
            std::fs::create_dir_all(dir).map_err(|e| StepError::Dir(dir.clone(), e))?;
        }
        let mut env: BTreeMap<String, OsString> = job
            .env
            .iter()
            .map(|(k, v)| (k.clone(), OsString::from(v)))
            .collect();
        // The defaults win over the job's env, as GitHub's GITHUB_* and RUNNER_* do.
        let path = |p: &Path| p.as_os_str().to_owned();
        env.extend([
            ("CI".to_owned(), "true".into()),
            ("GITHUB_ACTIONS".to_owned(), "true".into()),
            ("GITHUB_JOB".to_owned(), job.name.clone().into()),
            (
                "GITHUB_REPOSITORY".to_owned(),
                job.repository.clone().into(),
            ),
            ("GITHUB_RUN_ID".to_owned(), job.run_id.to_string().into()),
            ("GITHUB_WORKSPACE".to_owned(), path(&workspace)),
            ("RUNNER_NAME".to_owned(), runner.name.clone().into()),
            ("RUNNER_OS".to_owned(), "Linux".into()),
            ("RUNNER_TEMP".to_owned(), path(&temp)),
            ("RUNNER_TOOL_CACHE".to_owned(), runner.tool_cache.clone()),
            ("RUNNER_WORKSPACE".to_owned(), path(&runner_workspace)),
        ]);
        Ok(Self {
            temp,
            workspace,
            env,
        })
    }
}

/// The job's output so far; every piece is also handed to `echo` as it arrives.
struct Transcript<'a> {
    text: Vec<u8>,
    echo: &'a mut dyn FnMut(&[u8]),
}

impl Transcript<'_> {
    fn push(&mut self, bytes: &[u8]) {
        self.text.extend_from_slice(bytes);
        (self.echo)(bytes);
    }

    fn line(&mut self, line: &str) {
        if !self.text.is_empty() && !self.text.ends_with(b"\n") {
            self.push(b"\n");
        }
        self.push(line.as_bytes());
        self.push(b"\n");
    }
}

/// A step name on one line.
fn display_name(step: &JobStep) -> String {
    step.name.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Runs the job's steps in order, stopping at the first failure; never fails itself: what goes
/// wrong is in the output and fails the job, as it would on GitHub.
pub async fn run_job(
    job: &AcquiredJob,
    runner: &RunnerInfo,
    echo: &mut dyn FnMut(&[u8]),
) -> JobResult {
    let mut out = Transcript {
        text: Vec::new(),
        echo,
    };
    let failed = match JobDirs::prepare(job, runner) {
        Ok(dirs) => run_steps(job, &dirs, &mut out).await,
        Err(e) => {
            out.line(&format!("##[error]{}", crate::chain(&e)));
            true
        }
    };
    JobResult {
        conclusion: if failed {
            Conclusion::Failure
        } else {
            Conclusion::Success
        },
        output: String::from_utf8_lossy(&out.text).into_owned(),
    }
}

/// Returns whether a step failed.
async fn run_steps(job: &AcquiredJob, dirs: &JobDirs, out: &mut Transcript<'_>) -> bool {
    let mut failed: Option<usize> = None;
    for (i, step) in job.steps.iter().enumerate() {
        let name = display_name(step);
        if let Some(first) = failed {
            out.line(&format!(
                "Step {} ({name}) did not run: step {} failed.",
                i + 1,
                first + 1
            ));
            continue;
        }
        out.line(&format!("##[group]Run {name}"));
        for line in step.run.lines() {
            out.line(line);
        }
        out.line(&format!("shell: {SHELL} {} {{0}}", SHELL_ARGS.join(" ")));
        out.line("##[endgroup]");
        let problem = match run_step(dirs, step, out).await {
            Ok(status) if status.success() => None,
            Ok(status) => Some(match (status.code(), status.signal()) {
                (Some(code), _) => format!("Process completed with exit code {code}."),
                (None, Some(signal)) => format!("Process was killed by signal {signal}."),
                (None, None) => "Process completed without an exit code.".to_owned(),
            }),
            Err(e) => Some(crate::chain(&e)),
        };
        if let Some(problem) = problem {
            out.line(&format!("##[error]{problem}"));
            failed = Some(i);
        }
    }
    failed.is_some()
}

async fn run_step(
    dirs: &JobDirs,
    step: &JobStep,
    out: &mut Transcript<'_>,
) -> Result<ExitStatus, StepError> {
    let script = dirs.temp.join(format!("{}.sh", uuid::Uuid::new_v4()));
    std::fs::write(&script, &step.run).map_err(|e| StepError::Script(script.clone(), e))?;
    let result = run_script(dirs, &script, out).await;
    let _ = std::fs::remove_file(&script);
    result
}

async fn run_script(
    dirs: &JobDirs,
    script: &Path,
    out: &mut Transcript<'_>,
) -> Result<ExitStatus, StepError> {
    let (writer, mut reader) = tokio::net::unix::pipe::pipe().map_err(StepError::Spawn)?;
    let stdout = writer.into_blocking_fd().map_err(StepError::Spawn)?;
    let stderr = stdout.try_clone().map_err(StepError::Spawn)?;
    let mut command = tokio::process::Command::new(SHELL);
    command
        .args(SHELL_ARGS)
        .arg(script)
        .current_dir(&dirs.workspace)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    // `main` took the inputs out of the environment already; this keeps it so if that changes.
    for (key, _) in std::env::vars_os() {
        if key.to_str().and_then(cli::input_name).is_some() {
            command.env_remove(key);
        }
    }
    command.envs(&dirs.env);
    let mut child = command.spawn().map_err(StepError::Spawn)?;
    // Our copies of the pipe's write end go with the command: EOF once the step's processes exit.
    drop(command);

    let mut chunk = vec![0u8; 16 * 1024];
    let mut status = None;
    let mut drain_until: Option<Instant> = None;
    loop {
        let deadline = drain_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            read = reader.read(&mut chunk) => match read {
                Ok(0) => break,
                Ok(n) => out.push(&chunk[..n]),
                Err(e) => return Err(StepError::Output(e)),
            },
            exited = child.wait(), if status.is_none() => {
                status = Some(exited.map_err(StepError::Spawn)?);
                drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = tokio::time::sleep_until(deadline), if drain_until.is_some() => break,
        }
    }
    match status {
        Some(status) => Ok(status),
        None => child.wait().await.map_err(StepError::Spawn),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn job(repository: &str, steps: &[(&str, &str)]) -> AcquiredJob {
        AcquiredJob {
            job_id: 1,
            run_id: 2,
            repository: repository.into(),
            name: "build".into(),
            labels: vec!["self-hosted".into()],
            steps: steps
                .iter()
                .map(|(name, run)| JobStep {
                    name: (*name).into(),
                    run: (*run).into(),
                })
                .collect(),
            env: BTreeMap::from([("GREETING".into(), "hi".into()), ("CI".into(), "no".into())]),
        }
    }

    async fn run(job: &AcquiredJob, work: &Path) -> (JobResult, Vec<u8>) {
        let runner = RunnerInfo {
            name: "vm-1".into(),
            work: work.to_path_buf(),
            tool_cache: "/tools".into(),
        };
        let mut echoed = Vec::new();
        let result = run_job(job, &runner, &mut |b| echoed.extend_from_slice(b)).await;
        (result, echoed)
    }

    #[test]
    fn only_plain_owner_and_name_make_a_workspace() {
        assert_eq!(repo_dir_name("acme/api"), Some("api"));
        for bad in ["api", "acme/", "/api", "acme/..", "acme/a/b", "../x"] {
            assert_eq!(repo_dir_name(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn steps_run_in_order_in_the_workspace_and_stop_at_the_first_failure() {
        let work = tempfile::tempdir().unwrap();
        let job = job(
            "acme/api",
            &[
                (
                    "First",
                    "echo \"$GREETING $CI $RUNNER_TOOL_CACHE\"; pwd; echo err >&2; echo out",
                ),
                ("Second", "echo two\nfalse\necho not-reached"),
                ("Third", "echo three"),
            ],
        );
        let (result, echoed) =
            tokio::time::timeout(Duration::from_secs(30), run(&job, work.path()))
                .await
                .unwrap();
        assert_eq!(result.conclusion, Conclusion::Failure);
        assert_eq!(String::from_utf8(echoed).unwrap(), result.output);
        let workspace = work.path().join("api/api");
        let expected = format!(
            "##[group]Run First\n\
             echo \"$GREETING $CI $RUNNER_TOOL_CACHE\"; pwd; echo err >&2; echo out\n\
             shell: bash --noprofile --norc -eo pipefail {{0}}\n\
             ##[endgroup]\n\
             hi true /tools\n{}\nerr\nout\n\
             ##[group]Run Second\n\
             echo two\nfalse\necho not-reached\n\
             shell: bash --noprofile --norc -eo pipefail {{0}}\n\
             ##[endgroup]\n\
             two\n\
             ##[error]Process completed with exit code 1.\n\
             Step 3 (Third) did not run: step 2 failed.\n",
            workspace.display()
        );
        assert_eq!(result.output, expected);
        // The scripts are gone from the temp directory once run.
        assert_eq!(
            std::fs::read_dir(work.path().join("_temp"))
                .unwrap()
                .count(),
            0
        );
    }

    #[tokio::test]
    async fn a_job_whose_steps_pass_succeeds_and_pipefail_catches_a_pipeline() {
        let work = tempfile::tempdir().unwrap();
        let (ok, _) = run(&job("acme/api", &[("Only", "true | cat")]), work.path()).await;
        assert_eq!(ok.conclusion, Conclusion::Success);
        let (piped, _) = run(&job("acme/api", &[("Pipe", "false | cat")]), work.path()).await;
        assert_eq!(piped.conclusion, Conclusion::Failure);
        let (bad, _) = run(&job("acme", &[("Only", "true")]), work.path()).await;
        assert_eq!(bad.conclusion, Conclusion::Failure);
        assert!(bad.output.contains("not owner/name"), "{}", bad.output);
    }
}
