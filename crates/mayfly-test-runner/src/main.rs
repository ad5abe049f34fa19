//! `Runner.Listener run [--jitconfig <config>]`: the test image's stand-in for actions/runner's
//! listener, installed as `<root>/bin/Runner.Listener` and started through the layout's `run.sh`.
//! It takes the JIT config from the command line or `ACTIONS_RUNNER_INPUT_JITCONFIG` (removed
//! from its environment at once), writes the config's files into the runner root as the real
//! runner does, authenticates to the simulator's broker, takes its one job, runs the job's steps
//! (`steps`), and reports the conclusion and output. The JIT config is never printed.
#![forbid(unsafe_code)]

mod cli;
mod console;
mod root;
mod steps;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mayfly_sim::runner_client::{AcquiredJob, RunnerClient, RunnerClientError};
use mayfly_sim::Conclusion;
use secrecy::{ExposeSecret, SecretString};

use crate::console::Console;
use crate::root::{JitFilesError, RootError, RunnerRoot};

const POLL_EVERY: Duration = Duration::from_millis(500);
const POLL_FOR: Duration = Duration::from_secs(120);
/// How often the job's lock is renewed while it runs (actions/runner: every minute; more often
/// here so tests can give the simulator a short runner timeout).
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Exit codes, as actions/runner's `Constants.Runner.ReturnCode` (run-helper.sh reads them):
/// 0 the job ran, whatever its conclusion; 1 a terminated error that a retry would not fix (the
/// command line, the JIT config, a runner root it cannot write, a credential the broker refuses);
/// 2 a retryable error (the broker unreachable or answering unexpectedly, no job in time).
const EXIT_TERMINATED: u8 = 1;
const EXIT_RETRYABLE: u8 = 2;

/// Why the runner stopped without running a job.
#[derive(Debug, thiserror::Error)]
enum RunnerError {
    #[error("the JIT config is unusable")]
    JitFiles(#[from] JitFilesError),
    #[error("locating the executable failed")]
    Exe(#[source] std::io::Error),
    #[error(transparent)]
    Root(#[from] RootError),
    #[error("{0} failed")]
    Broker(&'static str, #[source] RunnerClientError),
    #[error("no job for this runner after {}s of polling the broker", POLL_FOR.as_secs())]
    NoJob,
}

impl RunnerError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Broker(_, RunnerClientError::Http(_) | RunnerClientError::Unexpected(_))
            | Self::NoJob => EXIT_RETRYABLE,
            _ => EXIT_TERMINATED,
        }
    }
}

/// The error and its causes on one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn main() -> ExitCode {
    // First, while this is the only thread (changing the environment is only sound then): the
    // inputs leave the environment, so nothing started later inherits the JIT config.
    let (env_inputs, input_vars) = cli::split_env_inputs(std::env::vars_os());
    for name in input_vars {
        std::env::remove_var(name);
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut console = Console::default();
    let jitconfig = match cli::jitconfig(&args, env_inputs) {
        Ok(config) => config,
        Err(e) => {
            console.error(&e.to_string());
            console.error(cli::USAGE);
            return ExitCode::from(EXIT_TERMINATED);
        }
    };
    let tool_cache = std::env::var_os("RUNNER_TOOL_CACHE")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| steps::DEFAULT_TOOL_CACHE.into());
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            console.error(&format!("starting the runtime failed: {e}"));
            return ExitCode::from(EXIT_TERMINATED);
        }
    };
    match runtime.block_on(run(&mut console, jitconfig, tool_cache)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            console.error(&chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(
    console: &mut Console,
    jitconfig: SecretString,
    tool_cache: OsString,
) -> Result<(), RunnerError> {
    // The whole config is checked before anything is written.
    let files = root::decode_jit_files(&jitconfig)?;
    let mut client = RunnerClient::from_encoded_jit_config(jitconfig.expose_secret(), None)
        .map_err(|e| RunnerError::Broker("reading the JIT config", e))?;
    drop(jitconfig);
    let exe = std::env::current_exe().map_err(RunnerError::Exe)?;
    let root = RunnerRoot::of_executable(&exe)?;
    console.attach_log(root.open_diag_log(chrono::Utc::now())?);
    root.write_jit_files(&files)?;
    drop(files);
    let work = root.work_folder(&client.config().work_folder)?;
    root.create_dir(&work)?;
    console.status(&format!(
        "Runner {} ({}) configured in {}",
        client.runner_name(),
        client.runner_id(),
        root.path().display()
    ));

    client
        .authenticate()
        .await
        .map_err(|e| RunnerError::Broker("authenticating", e))?;
    console.status("√ Connected to GitHub");
    console.status(&format!(
        "Current runner version: '{}' (mayfly-test-runner)",
        env!("CARGO_PKG_VERSION")
    ));
    console.status("Listening for Jobs");
    let job = acquire(&mut client).await?;
    console.status(&format!("Running job: {}", job.name));

    let runner = steps::RunnerInfo {
        name: client.runner_name().to_owned(),
        work,
        tool_cache,
    };
    let result = {
        let mut echo = |bytes: &[u8]| console.echo(bytes);
        let run = steps::run_job(&job, &runner, &mut echo);
        tokio::pin!(run);
        let job_id = job.job_id;
        let renewing = async {
            loop {
                tokio::time::sleep(RENEW_EVERY).await;
                // A transient failure is retried at the next renewal; a refusal means the job
                // was taken from this runner, and there is nothing left to renew.
                if let Err(RunnerClientError::Unauthorized) = client.renew(job_id).await {
                    return;
                }
            }
        };
        tokio::select! {
            biased;
            result = &mut run => result,
            () = renewing => run.await,
        }
    };
    client
        .complete(job.job_id, result.conclusion, &result.output)
        .await
        .map_err(|e| RunnerError::Broker("completing the job", e))?;
    let verdict = match result.conclusion {
        Conclusion::Success => "Succeeded",
        Conclusion::Failure => "Failed",
        Conclusion::Cancelled => "Canceled",
    };
    console.status(&format!(
        "Job {} completed with result: {verdict}",
        job.name
    ));
    Ok(())
}

async fn acquire(client: &mut RunnerClient) -> Result<AcquiredJob, RunnerError> {
    let deadline = Instant::now() + POLL_FOR;
    loop {
        if let Some(job) = client
            .acquire()
            .await
            .map_err(|e| RunnerError::Broker("acquiring a job", e))?
        {
            return Ok(job);
        }
        if Instant::now() >= deadline {
            return Err(RunnerError::NoJob);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::path::Path;

    use super::*;

    #[test]
    fn only_broker_trouble_is_worth_a_retry() {
        let unexpected = RunnerError::Broker("acquiring a job", RunnerClientError::Unexpected(502));
        assert_eq!(unexpected.exit_code(), EXIT_RETRYABLE);
        assert_eq!(RunnerError::NoJob.exit_code(), EXIT_RETRYABLE);
        let refused = RunnerError::Broker("authenticating", RunnerClientError::Unauthorized);
        assert_eq!(refused.exit_code(), EXIT_TERMINATED);
        let root = RunnerError::Root(RootError::NoRoot(Path::new("x").into()));
        assert_eq!(root.exit_code(), EXIT_TERMINATED);
    }
}
