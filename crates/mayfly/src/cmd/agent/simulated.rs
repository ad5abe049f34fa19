//! `mayfly agent --vm-driver simulated --allow-simulated-vms`: agents whose driver runs no VM
//! (`crate::simulated`), for load on the control plane. Refused without the second flag;
//! every line the process logs starts with [`LOG_PREFIX`] (see `main.rs`). Several agents in
//! one process with `--simulated-agents N`: without credentials (a loopback `insecure_dev`
//! server) they are `<id>-1` … `<id>-N`; with `--credentials DIR`, the enrolments in DIR's
//! subdirectories (`mayfly agent enrol --credentials DIR/<name>`), the first N by name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::RunArgs;
use crate::exit::{ConfigContext, Failure, RuntimeContext};
use crate::simulated::{SimulatedAgent, SimulatedAgentsConfig, SimulatedTimings};

/// Starts every line a simulated agent's process logs.
pub const LOG_PREFIX: &str = "[SIMULATED AGENT: no VMs] ";

/// The simulated driver's flags (`--vm-driver simulated` only).
#[derive(Debug, Args)]
#[command(next_help_heading = "Simulated driver (with --vm-driver simulated only; runs no VM)")]
pub struct SimulatedArgs {
    /// How many simulated agents this process runs, each with --slots slots, its own session
    /// and journal [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    simulated_agents: Option<u32>,
    /// Milliseconds a simulated VM takes to be created [default: 20].
    #[arg(long, value_name = "MS")]
    simulated_create_ms: Option<u64>,
    /// Milliseconds from a simulated VM's start until its guest is ready [default: 1000].
    #[arg(long, value_name = "MS")]
    simulated_boot_ms: Option<u64>,
    /// Milliseconds from the hand-over until the simulated runner starts [default: 200].
    #[arg(long, value_name = "MS")]
    simulated_runner_start_ms: Option<u64>,
    /// Milliseconds a simulated job runs, from taking it until completing it [default: 2000].
    #[arg(long, value_name = "MS")]
    simulated_job_ms: Option<u64>,
    /// Milliseconds a simulated VM takes to be destroyed [default: 20].
    #[arg(long, value_name = "MS")]
    simulated_destroy_ms: Option<u64>,
    /// The CA certificate (PEM) to trust when the GitHub simulator serves HTTPS.
    #[arg(long, value_name = "FILE")]
    simulated_sim_ca_file: Option<PathBuf>,
}

impl SimulatedArgs {
    /// Whether any of these flags was given.
    pub fn given(&self) -> bool {
        self.simulated_agents.is_some()
            || self.simulated_create_ms.is_some()
            || self.simulated_boot_ms.is_some()
            || self.simulated_runner_start_ms.is_some()
            || self.simulated_job_ms.is_some()
            || self.simulated_destroy_ms.is_some()
            || self.simulated_sim_ca_file.is_some()
    }

    fn timings(&self) -> SimulatedTimings {
        let ms =
            |given: Option<u64>, default: Duration| given.map_or(default, Duration::from_millis);
        let d = SimulatedTimings::default();
        SimulatedTimings {
            create: ms(self.simulated_create_ms, d.create),
            boot: ms(self.simulated_boot_ms, d.boot),
            runner_start: ms(self.simulated_runner_start_ms, d.runner_start),
            job: ms(self.simulated_job_ms, d.job),
            destroy: ms(self.simulated_destroy_ms, d.destroy),
            ..d
        }
    }
}

/// Runs the simulated agents until SIGINT/SIGTERM.
pub async fn run(args: RunArgs) -> Result<(), Failure> {
    let count = args.simulated.simulated_agents.unwrap_or(1);
    let (server_url, agents) = match &args.credentials {
        Some(dir) if count > 1 => enrolled_agents(dir, count, args.server_url.clone())?,
        _ => {
            let (url, tls, enrolled_as) = super::connection(&args)?;
            let base = match (args.id.clone(), enrolled_as) {
                (Some(id), Some(enrolled)) if id != enrolled => {
                    return Err(anyhow!(
                        "--id {id} differs from the enrolled name {enrolled}: the server would \
                         refuse it"
                    ))
                    .config_err()
                }
                (_, Some(enrolled)) => enrolled,
                (Some(id), None) => id,
                // Not the host name: that is the real agent's id on this host.
                (None, None) => "simulated".to_owned(),
            };
            let agents = if count == 1 {
                vec![SimulatedAgent { id: base, tls }]
            } else {
                (1..=count)
                    .map(|i| SimulatedAgent {
                        id: format!("{base}-{i}"),
                        tls: None,
                    })
                    .collect()
            };
            (url, agents)
        }
    };
    let sim_ca_pem = match &args.simulated.simulated_sim_ca_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("could not read {}", file.display()))
                .config_err()?,
        ),
        None => None,
    };
    let journal_dir = args.state_root().join("simulated-agents");
    std::fs::create_dir_all(&journal_dir)
        .with_context(|| format!("could not create {}", journal_dir.display()))
        .config_err()?;
    tracing::warn!(
        agents = agents.len(),
        slots = args.slots(),
        "simulated agents: NO VM runs here; each job is only played through the protocol"
    );
    let config = SimulatedAgentsConfig {
        server_url,
        agents,
        slots: args.slots(),
        timings: args.simulated.timings(),
        journal_dir,
        sim_ca_pem,
        lease: Duration::from_secs(args.lease_secs()),
    };
    let shutdown = CancellationToken::new();
    let agents = tokio::spawn(crate::simulated::run_simulated_agents(
        config,
        shutdown.clone(),
    ));
    tokio::pin!(agents);
    tokio::select! {
        ended = &mut agents => return ended.runtime_err()?.runtime_err(),
        signal = crate::cmd::server::shutdown_signal() => signal.runtime_err()?,
    }
    tracing::info!("stopping: destroying every simulated VM");
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(120), agents).await {
        Ok(ended) => ended.runtime_err()?.runtime_err(),
        Err(_) => Err(Failure::Runtime(anyhow!(
            "the simulated agents did not stop within 120 s"
        ))),
    }
}

/// The first `count` enrolments in `dir`'s subdirectories, by name.
fn enrolled_agents(
    dir: &Path,
    count: u32,
    server_url: Option<String>,
) -> Result<(String, Vec<SimulatedAgent>), Failure> {
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("could not read {}", dir.display()))
        .config_err()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join("agent.json").is_file())
        .collect();
    subdirs.sort();
    if subdirs.len() < count as usize {
        return Err(anyhow!(
            "--simulated-agents {count} with --credentials {}: it holds {} enrolments in \
             subdirectories; enrol each with `mayfly agent enrol --credentials {}/<name>`",
            dir.display(),
            subdirs.len(),
            dir.display()
        ))
        .config_err();
    }
    let mut url = server_url;
    let mut agents = Vec::new();
    for sub in subdirs.iter().take(count as usize) {
        let (credentials, tls) = super::load_credentials(sub).config_err()?;
        url.get_or_insert(credentials.agent_url);
        agents.push(SimulatedAgent {
            id: credentials.agent,
            tls: Some(tls),
        });
    }
    let url = url.context("no server URL").config_err()?;
    Ok((url, agents))
}
