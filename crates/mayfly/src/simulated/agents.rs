//! Many simulated agents in one process, for `mayfly agent --vm-driver simulated
//! --simulated-agents N` and a bench of the control plane. Each agent is a whole
//! `mayfly_agent::run` with its own id, journal, slots, session and driver; only the process is
//! shared. With mTLS each needs its own enrolment: [`enrol_simulated_agents`] does what
//! `mayfly agents bootstrap` and `mayfly agent enrol` do, once per agent, for a caller that
//! holds the server's store (a bench that started the server itself).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use mayfly_agent::{AgentConfig, AgentTls};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{SimulatedDriver, SimulatedTimings, SIMULATED_IMAGE};

/// One simulated agent: its id (with mTLS, the name it was enrolled under) and credentials.
#[derive(Debug, Clone)]
pub struct SimulatedAgent {
    pub id: String,
    /// From its enrolment; `None` for a loopback development server (`insecure_dev`).
    pub tls: Option<AgentTls>,
}

/// How to run a set of simulated agents.
#[derive(Debug, Clone)]
pub struct SimulatedAgentsConfig {
    /// The server's agent endpoint: `https://localhost:PORT` with mTLS, or
    /// `http://127.0.0.1:PORT` for an `insecure_dev` server.
    pub server_url: String,
    pub agents: Vec<SimulatedAgent>,
    /// Slots of each agent.
    pub slots: u32,
    pub timings: SimulatedTimings,
    /// Each agent's journal is `<journal_dir>/<id>.journal.json` (the directory must exist).
    pub journal_dir: PathBuf,
    /// The root to trust when the simulator serves HTTPS with a private CA.
    pub sim_ca_pem: Option<String>,
    /// The agents' side of the lease (`mayfly agent --lease-secs`).
    pub lease: Duration,
}

/// Runs every agent until `shutdown` is cancelled, then stops them all (each destroys its
/// simulated VMs and reports them). If one agent stops with an error, the others are stopped
/// too and that error is returned, naming the agent.
pub async fn run_simulated_agents(
    config: SimulatedAgentsConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    check_ids(&config.agents)?;
    let stop = shutdown.child_token();
    let mut agents = JoinSet::new();
    for agent in &config.agents {
        let driver = Arc::new(SimulatedDriver::new(
            config.timings.clone(),
            config.sim_ca_pem.clone(),
        ));
        let journal = config
            .journal_dir
            .join(format!("{}.journal.json", agent.id));
        let mut agent_config =
            AgentConfig::new(agent.id.clone(), config.server_url.clone(), driver, journal);
        agent_config.tls = agent.tls.clone();
        agent_config.slots = config.slots;
        agent_config.vcpus = config.slots;
        agent_config.memory_mib = u64::from(config.slots) * 1024;
        agent_config.images = vec![SIMULATED_IMAGE.to_owned()];
        agent_config.lease = config.lease;
        let id = agent.id.clone();
        let stop = stop.clone();
        agents.spawn(async move { (id, mayfly_agent::run(agent_config, stop).await) });
    }
    let mut first_error = None;
    while let Some(ended) = agents.join_next().await {
        let failure = match ended {
            Ok((_, Ok(()))) => continue,
            Ok((id, Err(e))) => anyhow::Error::new(e).context(format!("simulated agent {id}")),
            Err(e) => anyhow::Error::new(e).context("a simulated agent's task ended abnormally"),
        };
        stop.cancel();
        first_error.get_or_insert(failure);
    }
    first_error.map_or(Ok(()), Err)
}

/// Ids must be distinct (the server keeps one session per agent) and usable as file names.
fn check_ids(agents: &[SimulatedAgent]) -> anyhow::Result<()> {
    if agents.is_empty() {
        return Err(anyhow!("no simulated agent to run"));
    }
    let mut seen = HashSet::new();
    for agent in agents {
        let plain = !agent.id.is_empty()
            && agent.id.len() <= 100
            && agent
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !agent.id.starts_with('.');
        if !plain {
            return Err(anyhow!(
                "simulated agent id `{}` must be 1 to 100 letters, digits, `-`, `_` or `.`",
                agent.id
            ));
        }
        if !seen.insert(agent.id.as_str()) {
            return Err(anyhow!("simulated agent id `{}` is used twice", agent.id));
        }
    }
    Ok(())
}

/// Enrols one agent per name with the server at `server_base_url` (its HTTPS address) whose
/// store is `store`: a one-time bootstrap token pinning `server_ca_pem`, then the enrolment a
/// remote host would do (CSR, client certificate), its credentials written to
/// `<credentials_root>/<name>/`. Returns the agents ready for [`run_simulated_agents`].
pub async fn enrol_simulated_agents(
    store: &dyn mayfly_store::Store,
    server_base_url: &str,
    server_ca_pem: &str,
    names: &[String],
    credentials_root: &Path,
) -> anyhow::Result<Vec<SimulatedAgent>> {
    let ca_sha256 = mayfly_server::agent_pki::pem_sha256(server_ca_pem)
        .context("the server CA is not a PEM certificate")?;
    check_ids(
        &names
            .iter()
            .map(|id| SimulatedAgent {
                id: id.clone(),
                tls: None,
            })
            .collect::<Vec<_>>(),
    )?;
    let mut agents = Vec::with_capacity(names.len());
    for name in names {
        let (token, _) = mayfly_server::agent_pki::create_bootstrap(
            store,
            "simulated-agents",
            name,
            &ca_sha256,
            chrono::Duration::minutes(10),
        )
        .await
        .with_context(|| format!("could not make a bootstrap token for {name}"))?;
        let dir = credentials_root.join(name);
        crate::cmd::agent::enrol(server_base_url, &token, &dir)
            .await
            .with_context(|| format!("simulated agent {name} could not enrol"))?;
        let (credentials, tls) = crate::cmd::agent::load_credentials(&dir)?;
        agents.push(SimulatedAgent {
            id: credentials.agent,
            tls: Some(tls),
        });
    }
    Ok(agents)
}
