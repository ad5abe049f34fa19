//! The simulated guest of one simulated VM: what `mayfly-guest` and the runner would do, without
//! either. After its runner-start delay it says `started`, then acts as the runner of the JIT
//! config against the simulator's Actions service (`mayfly_sim::runner_client`: authenticate,
//! acquire the one job, renew while it "runs", complete it with success), and says `exited`
//! with the exit code actions/runner would have (0 the job ran; 1 a config or credential
//! refused; 2 retryable). The JIT config is decoded once and dropped; nothing of it is logged.

use std::time::Duration;

use mayfly_sim::runner_client::{AcquiredJob, RunnerClient, RunnerClientError};
use mayfly_sim::Conclusion;
use mayfly_vm::GuestEvent;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::SimulatedTimings;

/// What the simulated runner reports as the job's output (GitHub shows it as the job's log).
pub const JOB_OUTPUT: &str = "simulated job: mayfly's simulated driver ran no VM and no step";

/// Exit codes of actions/runner (`Constants.Runner.ReturnCode`), as the stand-in runner uses them.
const EXIT_TERMINATED: i32 = 1;
const EXIT_RETRYABLE: i32 = 2;

/// Why the simulated runner stopped without running its job.
#[derive(Debug, thiserror::Error)]
enum SimulatedRunnerError {
    #[error("{0} failed")]
    Broker(&'static str, #[source] RunnerClientError),
    #[error("no job for this runner after {0:?} of polling the broker")]
    NoJob(Duration),
}

impl SimulatedRunnerError {
    fn exit_code(&self) -> i32 {
        match self {
            Self::Broker(_, RunnerClientError::Http(_) | RunnerClientError::Unexpected(_))
            | Self::NoJob(_) => EXIT_RETRYABLE,
            Self::Broker(..) => EXIT_TERMINATED,
        }
    }
}

/// The guest's life from the hand-over: reports go to `events` as a real guest's channel
/// would carry them. Ends after `exited` (the guest "powers off").
pub async fn simulated_guest(
    jitconfig: SecretString,
    sim_ca_pem: Option<String>,
    timings: SimulatedTimings,
    events: mpsc::Sender<GuestEvent>,
) {
    let client =
        RunnerClient::from_encoded_jit_config(jitconfig.expose_secret(), sim_ca_pem.as_deref());
    drop(jitconfig);
    tokio::time::sleep(timings.runner_start).await;
    if events.send(GuestEvent::Started).await.is_err() {
        return;
    }
    let code = match client {
        Err(e) => {
            let e = SimulatedRunnerError::Broker("reading the JIT config", e);
            tracing::warn!(error = %chain(&e), "simulated runner: stopped");
            e.exit_code()
        }
        Ok(client) => match run_job(client, &timings).await {
            Ok(job_id) => {
                tracing::debug!(job_id, "simulated runner: job completed");
                0
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "simulated runner: stopped without its job");
                e.exit_code()
            }
        },
    };
    let _ = events.send(GuestEvent::Exited { code }).await;
}

/// Authenticates, takes the job, keeps its lock for the job's duration, completes it.
async fn run_job(
    mut client: RunnerClient,
    timings: &SimulatedTimings,
) -> Result<u64, SimulatedRunnerError> {
    client
        .authenticate()
        .await
        .map_err(|e| SimulatedRunnerError::Broker("authenticating", e))?;
    let job = acquire(&mut client, timings).await?;
    tracing::debug!(job_id = job.job_id, "simulated runner: took its job");
    let ends = Instant::now() + timings.job;
    loop {
        let renew_at = Instant::now() + timings.renew;
        if renew_at >= ends {
            break;
        }
        tokio::time::sleep_until(renew_at).await;
        // As the runner: a refusal means the job was taken away; a failure is retried.
        if let Err(RunnerClientError::Unauthorized) = client.renew(job.job_id).await {
            break;
        }
    }
    tokio::time::sleep_until(ends).await;
    client
        .complete(job.job_id, Conclusion::Success, JOB_OUTPUT)
        .await
        .map_err(|e| SimulatedRunnerError::Broker("completing the job", e))?;
    Ok(job.job_id)
}

async fn acquire(
    client: &mut RunnerClient,
    timings: &SimulatedTimings,
) -> Result<AcquiredJob, SimulatedRunnerError> {
    let deadline = Instant::now() + timings.acquire_for;
    loop {
        if let Some(job) = client
            .acquire()
            .await
            .map_err(|e| SimulatedRunnerError::Broker("acquiring a job", e))?
        {
            return Ok(job);
        }
        if Instant::now() >= deadline {
            return Err(SimulatedRunnerError::NoJob(timings.acquire_for));
        }
        tokio::time::sleep(timings.poll).await;
    }
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
