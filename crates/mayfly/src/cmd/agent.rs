//! `mayfly agent`: one per host. Reads its flags (or `MAYFLY_AGENT_*` variables), sets up the
//! QEMU driver over the host's image store, and runs the agent (crate `mayfly-agent`) until
//! SIGINT/SIGTERM, when every VM it runs is destroyed and reported before it exits.
//! Until mTLS arrives the server must be on loopback: JIT configs never cross a network in clear.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, ValueEnum};
use mayfly_agent::AgentConfig;
use mayfly_vm::image::ImageStore;
use mayfly_vm::{Accel, QemuConfig, QemuDriver};
use tokio_util::sync::CancellationToken;

use crate::exit::{ConfigContext, Failure, RuntimeContext};

/// Which accelerator VMs use.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum AgentAccel {
    /// Probe KVM with a short timeout, fall back to TCG.
    Auto,
    Kvm,
    Tcg,
}

/// Flags of `mayfly agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The server's agent endpoint, e.g. http://127.0.0.1:7443 (loopback only until mTLS).
    #[arg(long, env = "MAYFLY_AGENT_SERVER_URL", value_name = "URL")]
    server_url: String,
    /// This host's stable id [default: the host name].
    #[arg(long, env = "MAYFLY_AGENT_ID", value_name = "ID")]
    id: Option<String>,
    /// How many VMs may run at once.
    #[arg(long, env = "MAYFLY_AGENT_SLOTS", default_value_t = 1)]
    slots: u32,
    /// vCPUs this host offers (reported to the server).
    #[arg(long, env = "MAYFLY_AGENT_VCPUS", default_value_t = 2)]
    vcpus: u32,
    /// Memory in MiB this host offers (reported to the server).
    #[arg(long, env = "MAYFLY_AGENT_MEMORY_MIB", default_value_t = 4096)]
    memory_mib: u64,
    /// State directory of the VMs (per-VM directories under <DIR>/vms).
    #[arg(
        long,
        env = "MAYFLY_AGENT_STATE_ROOT",
        default_value = "/var/lib/mayfly/state",
        value_name = "DIR"
    )]
    state_root: PathBuf,
    /// Image store.
    #[arg(
        long,
        env = "MAYFLY_AGENT_IMAGES",
        default_value = "/var/lib/mayfly/images",
        value_name = "DIR"
    )]
    images: PathBuf,
    /// The agent's journal [default: <state-root>/agent-journal.json].
    #[arg(long, env = "MAYFLY_AGENT_JOURNAL", value_name = "FILE")]
    journal: Option<PathBuf>,
    /// Accelerator.
    #[arg(long, env = "MAYFLY_AGENT_ACCEL", value_enum, default_value_t = AgentAccel::Auto)]
    accel: AgentAccel,
}

pub async fn run(args: AgentArgs) -> Result<(), Failure> {
    check_loopback(&args.server_url).config_err()?;
    let store = ImageStore::new(args.images.clone());
    let images: Vec<String> = store
        .list()
        .config_err()?
        .into_iter()
        .map(|listing| listing.digest)
        .collect();
    if images.is_empty() {
        tracing::warn!(store = %args.images.display(), "no guest image in the store: build one with `mayfly image build`");
    }
    let accel = match args.accel {
        AgentAccel::Kvm => Accel::Kvm,
        AgentAccel::Tcg => Accel::Tcg,
        AgentAccel::Auto => match images.first().map(|digest| store.get(digest)) {
            Some(Ok(image)) => {
                let probe = mayfly_vm::accel::probe(
                    std::path::Path::new("qemu-system-x86_64"),
                    &image.kernel,
                )
                .await;
                tracing::info!(accel = ?probe.accel, reason = probe.reason, "acceleration");
                probe.accel
            }
            _ => Accel::Tcg,
        },
    };
    let driver =
        QemuDriver::new(QemuConfig::new(args.state_root.clone(), store, accel)).config_err()?;
    let id = match args.id {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .context("could not read the host name; give --id")
            .config_err()?,
    };
    let journal = args
        .journal
        .unwrap_or_else(|| args.state_root.join("agent-journal.json"));
    let mut config = AgentConfig::new(id, args.server_url, Arc::new(driver), journal);
    config.slots = args.slots;
    config.vcpus = args.vcpus;
    config.memory_mib = args.memory_mib;
    config.images = images;

    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(mayfly_agent::run(config, shutdown.clone()));
    tokio::pin!(agent);
    tokio::select! {
        ended = &mut agent => return ended.runtime_err()?.runtime_err(),
        signal = super::server::shutdown_signal() => signal.runtime_err()?,
    }
    tracing::info!("stopping: destroying every VM");
    shutdown.cancel();
    // The agent bounds its own shutdown; this is a last guard against a stuck destroy.
    match tokio::time::timeout(Duration::from_secs(120), agent).await {
        Ok(ended) => ended.runtime_err()?.runtime_err(),
        Err(_) => Err(Failure::Runtime(anyhow!(
            "the agent did not stop within 120 s; run `mayfly vm reap` to clean up what is left"
        ))),
    }
}

/// Refuses a server URL that leaves this host: protocol v1 runs without TLS for now.
fn check_loopback(server_url: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(server_url)
        .with_context(|| format!("--server-url `{server_url}` is not a URL"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    if url.scheme() != "http" || !loopback {
        return Err(anyhow!(
            "--server-url must be http:// on a loopback address (127.0.0.1, ::1, localhost) until \
             the agent speaks mTLS; `{server_url}` is not"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::check_loopback;

    #[test]
    fn only_loopback_servers_are_accepted_until_mtls() {
        for ok in [
            "http://127.0.0.1:7443",
            "http://[::1]:7443",
            "http://localhost:1",
        ] {
            check_loopback(ok).unwrap();
        }
        for bad in [
            "http://10.0.0.5:7443",
            "https://127.0.0.1:7443",
            "http://example.com",
            "nonsense",
        ] {
            let err = check_loopback(bad).unwrap_err().to_string();
            assert!(err.contains("--server-url"), "{err}");
        }
    }
}
