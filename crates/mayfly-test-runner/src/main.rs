//! `mayfly-test-runner --jitconfig <encoded>`: the test image's stand-in for actions/runner.
//! It authenticates to the simulator's job broker with the JIT config, takes its one job, runs
//! the job's `script` with `/bin/sh -c`, reports success or failure with the combined output,
//! and exits with the script's exit code. The JIT config is never printed.
//!
//! Exit codes: the script's own; 64 bad command line; 70 broker failure; 75 no job in time.
#![forbid(unsafe_code)]

use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use mayfly_sim::runner_client::{AcquiredJob, RunnerClient, RunnerClientError};
use mayfly_sim::Conclusion;

const POLL_EVERY: Duration = Duration::from_millis(500);
const POLL_FOR: Duration = Duration::from_secs(120);
const EXIT_USAGE: u8 = 64;
const EXIT_BROKER: u8 = 70;
const EXIT_NO_JOB: u8 = 75;

/// Why the runner stopped before or after the job's script.
#[derive(Debug, thiserror::Error)]
enum RunnerError {
    #[error("{0} failed")]
    Broker(&'static str, #[source] RunnerClientError),
    #[error("no job for this runner after {}s of polling the broker", POLL_FOR.as_secs())]
    NoJob,
    #[error("running /bin/sh failed")]
    Script(#[source] std::io::Error),
}

/// The error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn parse_args(args: &[String]) -> Option<String> {
    match args {
        [flag, encoded] if flag == "--jitconfig" && !encoded.is_empty() => Some(encoded.clone()),
        _ => None,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(encoded) = parse_args(&args) else {
        eprintln!("usage: mayfly-test-runner --jitconfig <encoded_jit_config>");
        return ExitCode::from(EXIT_USAGE);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mayfly-test-runner: starting the runtime failed: {e}");
            return ExitCode::from(EXIT_BROKER);
        }
    };
    match runtime.block_on(run(&encoded)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("mayfly-test-runner: {}", chain(&e));
            ExitCode::from(match e {
                RunnerError::NoJob => EXIT_NO_JOB,
                _ => EXIT_BROKER,
            })
        }
    }
}

async fn run(encoded: &str) -> Result<u8, RunnerError> {
    let mut client = RunnerClient::from_encoded_jit_config(encoded, None)
        .map_err(|e| RunnerError::Broker("reading the JIT config", e))?;
    eprintln!(
        "mayfly-test-runner: runner {} ({}) asking for a job",
        client.runner_name(),
        client.runner_id()
    );
    client
        .authenticate()
        .await
        .map_err(|e| RunnerError::Broker("authenticating", e))?;
    let job = acquire(&mut client).await?;
    eprintln!(
        "mayfly-test-runner: running job {} of {}",
        job.job_id, job.repository
    );
    let (code, output) = run_script(&job).await?;
    // The job's output also goes to the console (the VM's serial log).
    eprint!("{output}");
    let conclusion = if code == 0 {
        Conclusion::Success
    } else {
        Conclusion::Failure
    };
    client
        .complete(job.job_id, conclusion, &output)
        .await
        .map_err(|e| RunnerError::Broker("completing the job", e))?;
    eprintln!(
        "mayfly-test-runner: job {} finished with {code}",
        job.job_id
    );
    Ok(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
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

/// Runs the script with the job's environment; stdout and stderr share one pipe, so the
/// combined output keeps its order. Returns (exit code or -1 for a signal, output).
async fn run_script(job: &AcquiredJob) -> Result<(i32, String), RunnerError> {
    let output = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("exec 2>&1\n{}", job.script))
        .envs(&job.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .await
        .map_err(RunnerError::Script)?;
    let code = output.status.code().unwrap_or(-1);
    Ok((code, String::from_utf8_lossy(&output.stdout).into_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn takes_exactly_one_jitconfig_flag() {
        let ok = parse_args(&["--jitconfig".into(), "abc".into()]);
        assert_eq!(ok.as_deref(), Some("abc"));
        assert_eq!(parse_args(&[]), None);
        assert_eq!(parse_args(&["--jitconfig".into()]), None);
        assert_eq!(parse_args(&["--jitconfig".into(), String::new()]), None);
        assert_eq!(parse_args(&["--other".into(), "abc".into()]), None);
    }
}
