//! The faults of a chaos run. Which fault comes next, after how long, against which process and
//! for how long all come from one RNG seeded by `--seed`, so a seed replays the same schedule
//! (what each fault then hits — which QEMU is running, which deliveries exist — depends on
//! timing). Every fault is undone before the next one starts.

use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::Rng;
use serde_json::json;

use super::cluster::Cluster;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultKind {
    KillServer,
    KillAgent,
    KillQemu,
    CutLink,
    SimServerErrors,
    SimRateLimit,
    DropWebhooks,
    DuplicateWebhooks,
    RestartPostgres,
}

impl FaultKind {
    /// The kinds a run draws from: `only` when given (each once), else all of them, a QEMU kill
    /// twice as often as the rest. PostgreSQL is restarted only when the run uses it.
    pub fn menu(postgres: bool, only: &[Self]) -> anyhow::Result<Vec<Self>> {
        if !only.is_empty() {
            if !postgres && only.contains(&Self::RestartPostgres) {
                anyhow::bail!("--faults restart-postgres needs --postgres URL");
            }
            let mut kinds = only.to_vec();
            kinds.dedup();
            return Ok(kinds);
        }
        let mut kinds = vec![
            Self::KillServer,
            Self::KillAgent,
            Self::KillQemu,
            Self::KillQemu,
            Self::CutLink,
            Self::SimServerErrors,
            Self::SimRateLimit,
            Self::DropWebhooks,
            Self::DuplicateWebhooks,
        ];
        if postgres {
            kinds.push(Self::RestartPostgres);
        }
        Ok(kinds)
    }
}

/// A fault as it happened: seconds since the run started, and what was done.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub at_secs: f64,
    pub what: String,
}

/// What the faults act on.
#[derive(Debug)]
pub struct Targets {
    pub sim_base: String,
    pub http: reqwest::Client,
    pub started: Instant,
    /// `pg_ctlcluster VERSION main restart`, when the run uses PostgreSQL.
    pub postgres_cluster: Option<String>,
}

/// Draws the next fault and injects it (and undoes it); returns what was done.
pub async fn inject(
    rng: &mut StdRng,
    menu: &[FaultKind],
    cluster: &mut Cluster,
    targets: &Targets,
) -> String {
    let kind = menu[rng.gen_range(0..menu.len())];
    // Every parameter is drawn before acting, so the schedule does not depend on outcomes.
    let server = rng.gen_range(0..cluster.servers.len());
    let agent = rng.gen_range(0..cluster.agents.len());
    let down = Duration::from_millis(rng.gen_range(1_000..=10_000));
    let cut = Duration::from_millis(rng.gen_range(3_000..=40_000));
    let outage = Duration::from_millis(rng.gen_range(5_000..=30_000));
    let count = rng.gen_range(1..=3u32);
    let pick: u64 = rng.gen();
    let status = [500u16, 502, 503][rng.gen_range(0..3)];
    let result = match kind {
        FaultKind::KillServer => kill_server(cluster, server, down).await,
        FaultKind::KillAgent => kill_agent(cluster, agent, down).await,
        FaultKind::KillQemu => kill_qemu(cluster, agent, pick),
        FaultKind::CutLink => {
            let link = &cluster.agents[agent].link;
            announce(
                targets,
                &format!("cut {}'s link", cluster.agents[agent].name),
            );
            link.set_cut(true);
            tokio::time::sleep(cut).await;
            link.set_cut(false);
            Ok(format!(
                "cut the link of {} to its server for {:.1} s (TCP forwarder: nothing passes, nothing is reset)",
                cluster.agents[agent].name,
                cut.as_secs_f64()
            ))
        }
        FaultKind::SimServerErrors => {
            let fault = json!({ "type": "server_error", "status": status });
            sim_outage(targets, fault, outage)
                .await
                .map(|()| format!("GitHub answers {status} for {:.1} s", outage.as_secs_f64()))
        }
        FaultKind::SimRateLimit => {
            let fault = json!({
                "type": "rate_limit",
                "status": 429,
                "limit": { "mode": "secondary", "retry_after_s": 5 },
            });
            sim_outage(targets, fault, outage).await.map(|()| {
                format!(
                    "GitHub answers 429 (retry-after 5 s) for {:.1} s",
                    outage.as_secs_f64()
                )
            })
        }
        FaultKind::DropWebhooks => drop_webhooks(targets, count)
            .await
            .map(|()| format!("drop the next {count} webhook(s)")),
        FaultKind::DuplicateWebhooks => duplicate_webhooks(targets, count, pick).await,
        FaultKind::RestartPostgres => restart_postgres(targets).await,
    };
    result.unwrap_or_else(|e| format!("{kind:?} failed: {e:#}"))
}

/// Says what is about to happen (for the long faults).
fn announce(targets: &Targets, what: &str) {
    eprintln!(
        "[{:>6.1} s] fault: {what} …",
        targets.started.elapsed().as_secs_f64()
    );
}

async fn kill_server(cluster: &mut Cluster, i: usize, down: Duration) -> anyhow::Result<String> {
    let name = cluster.servers[i].name.clone();
    let pid = cluster.kill_server(i).await;
    tokio::time::sleep(down).await;
    cluster.start_server(i).await?;
    Ok(format!(
        "kill -9 {name} (pid {}), restarted after {:.1} s",
        pid.map_or_else(|| "none".to_owned(), |p| p.to_string()),
        down.as_secs_f64()
    ))
}

async fn kill_agent(cluster: &mut Cluster, i: usize, down: Duration) -> anyhow::Result<String> {
    let name = cluster.agents[i].name.clone();
    let pid = cluster.kill_agent(i).await;
    tokio::time::sleep(down).await;
    cluster.start_agent(i)?;
    Ok(format!(
        "kill -9 {name} (pid {}), restarted after {:.1} s",
        pid.map_or_else(|| "none".to_owned(), |p| p.to_string()),
        down.as_secs_f64()
    ))
}

/// `kill -9` of one QEMU process of agent `i`'s state root, chosen by `pick`.
fn kill_qemu(cluster: &Cluster, i: usize, pick: u64) -> anyhow::Result<String> {
    let root = cluster.agents[i].state_root.display().to_string();
    let qemus = super::report::processes_under("qemu-system", &root);
    if qemus.is_empty() {
        return Ok(format!(
            "kill -9 a QEMU of {}: none running",
            cluster.agents[i].name
        ));
    }
    let pid = qemus[usize::try_from(pick % qemus.len() as u64).unwrap_or(0)];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .context("kill")?;
    Ok(format!(
        "kill -9 QEMU pid {pid} of {} ({} running)",
        cluster.agents[i].name,
        qemus.len()
    ))
}

/// The simulator answers the provider's REST calls with `fault` for `outage`, then recovers.
async fn sim_outage(
    targets: &Targets,
    fault: serde_json::Value,
    outage: Duration,
) -> anyhow::Result<()> {
    announce(targets, &format!("GitHub REST answers {fault}"));
    // The provider's calls (App, installations, repositories, organisations); the runner's own
    // protocol inside the VM is left alone.
    for prefix in ["/app", "/repos", "/orgs", "/installation"] {
        let mut fault = fault.clone();
        fault["path_prefix"] = json!(prefix);
        targets
            .http
            .post(format!("{}_sim/faults/rest", targets.sim_base))
            .json(&fault)
            .send()
            .await?
            .error_for_status()?;
    }
    tokio::time::sleep(outage).await;
    targets
        .http
        .delete(format!("{}_sim/faults/rest", targets.sim_base))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

async fn drop_webhooks(targets: &Targets, n: u32) -> anyhow::Result<()> {
    targets
        .http
        .put(format!("{}_sim/faults/webhooks", targets.sim_base))
        .json(&json!({ "drop_next": n }))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Sends `n` recent `workflow_job` deliveries again (same GUID), as GitHub's redelivery does.
async fn duplicate_webhooks(targets: &Targets, n: u32, pick: u64) -> anyhow::Result<String> {
    let deliveries: Vec<serde_json::Value> = targets
        .http
        .get(format!("{}_sim/deliveries", targets.sim_base))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let recent: Vec<u64> = deliveries
        .iter()
        .filter(|d| d["event"] == "workflow_job" && d["outcome"]["state"] != "dropped")
        .filter_map(|d| d["id"].as_u64())
        .rev()
        .take(20)
        .collect();
    if recent.is_empty() {
        return Ok("duplicate webhooks: none sent yet".to_owned());
    }
    let mut sent = Vec::new();
    for k in 0..u64::from(n) {
        let id = recent[usize::try_from((pick + k) % recent.len() as u64).unwrap_or(0)];
        targets
            .http
            .post(format!(
                "{}_sim/deliveries/{id}/redeliver",
                targets.sim_base
            ))
            .send()
            .await?
            .error_for_status()?;
        sent.push(id.to_string());
    }
    Ok(format!(
        "duplicate webhook deliveries {} (redelivered, same GUID)",
        sent.join(", ")
    ))
}

async fn restart_postgres(targets: &Targets) -> anyhow::Result<String> {
    let version = targets
        .postgres_cluster
        .as_deref()
        .context("no PostgreSQL cluster")?;
    announce(targets, "restart PostgreSQL");
    let status = tokio::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", "restart"])
        .status()
        .await
        .context("pg_ctlcluster")?;
    Ok(format!(
        "restart PostgreSQL {version} (pg_ctlcluster: {status})"
    ))
}
