//! A stand-in for "the internet" on machines that have none: a namespace `mayfly-inet` joined to
//! the host by a veth, holding a public-looking documentation address (203.0.113.2, TEST-NET-3).
//! VMs reach it exactly as they would reach a public server (forwarded, masqueraded), so it is
//! the positive control of every isolation test and where the GitHub simulator listens.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::process::Command;

use super::exec;
use super::host_rules::{ensure_host_rules, HostLock};
use super::{NetworkError, TeardownStep};

/// The stand-in's namespace.
pub const STANDIN_NETNS: &str = "mayfly-inet";
/// Its host-side veth (deliberately not `mfv*`: it is not a VM).
pub const STANDIN_HOST_VETH: &str = "mfinet0";
const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const INET_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

/// The internet stand-in (see the module docs). Cheap to copy; the namespace outlives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InternetStandIn {
    _private: (),
}

impl InternetStandIn {
    /// Makes the stand-in if it is not already there (idempotent, safe to call concurrently
    /// from several processes), and the host rules that let VMs reach it.
    pub async fn ensure() -> Result<Self, NetworkError> {
        ensure_host_rules().await?;
        let _lock = HostLock::acquire().await?;
        if is_complete().await {
            return Ok(Self { _private: () });
        }
        // Half-made (a crash, or a teardown racing us): start from nothing.
        let _ = teardown_locked().await;
        if let Err(e) = build().await {
            let _ = teardown_locked().await;
            return Err(e);
        }
        Ok(Self { _private: () })
    }

    /// The stand-in's public-looking address: what VMs connect to.
    pub fn addr(&self) -> Ipv4Addr {
        INET_ADDR
    }

    /// The host's address on the stand-in link (a host address: VMs must NOT reach it).
    pub fn host_addr(&self) -> Ipv4Addr {
        HOST_ADDR
    }

    /// The stand-in's namespace name.
    pub fn netns(&self) -> &'static str {
        STANDIN_NETNS
    }

    /// A command that runs `program` inside the stand-in (`ip netns exec mayfly-inet program`);
    /// add arguments and spawn it as usual. Servers started so bind to [`Self::addr`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        exec::netns_command(STANDIN_NETNS, program)
    }

    /// Removes the stand-in: kills what runs in it, deletes the namespace and the veth.
    /// Idempotent. Other users of the stand-in (tests running in parallel) lose it too.
    pub async fn teardown() -> Vec<TeardownStep> {
        match HostLock::acquire().await {
            Ok(_lock) => teardown_locked().await,
            Err(e) => vec![TeardownStep::from_result(
                "lock host network state",
                Err(e.to_string()),
            )],
        }
    }
}

async fn is_complete() -> bool {
    let Ok(addrs) = exec::run(
        "ip",
        &["-4", "-o", "addr", "show", "dev", STANDIN_HOST_VETH],
    )
    .await
    else {
        return false;
    };
    let Ok(inner) = exec::run_in_netns(
        STANDIN_NETNS,
        "ip",
        &["-4", "-o", "addr", "show", "dev", "eth0"],
    )
    .await
    else {
        return false;
    };
    addrs.contains(&format!("{HOST_ADDR}/30")) && inner.contains(&format!("{INET_ADDR}/30"))
}

async fn build() -> Result<(), NetworkError> {
    let host_cidr = format!("{HOST_ADDR}/30");
    let inet_cidr = format!("{INET_ADDR}/30");
    let host_addr = HOST_ADDR.to_string();
    exec::run("ip", &["netns", "add", STANDIN_NETNS]).await?;
    exec::run("ip", &["-n", STANDIN_NETNS, "link", "set", "lo", "up"]).await?;
    exec::run(
        "ip",
        &[
            "link",
            "add",
            STANDIN_HOST_VETH,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            STANDIN_NETNS,
        ],
    )
    .await?;
    exec::run("ip", &["addr", "add", &host_cidr, "dev", STANDIN_HOST_VETH]).await?;
    exec::run("ip", &["link", "set", STANDIN_HOST_VETH, "up"]).await?;
    exec::run(
        "ip",
        &[
            "-n",
            STANDIN_NETNS,
            "addr",
            "add",
            &inet_cidr,
            "dev",
            "eth0",
        ],
    )
    .await?;
    exec::run("ip", &["-n", STANDIN_NETNS, "link", "set", "eth0", "up"]).await?;
    exec::run(
        "ip",
        &[
            "-n",
            STANDIN_NETNS,
            "route",
            "add",
            "default",
            "via",
            &host_addr,
        ],
    )
    .await?;
    Ok(())
}

async fn teardown_locked() -> Vec<TeardownStep> {
    let mut steps = Vec::new();
    steps.push(super::vm::kill_netns_processes(STANDIN_NETNS).await);
    let netns = match exec::run("ip", &["netns", "delete", STANDIN_NETNS]).await {
        Err(e) if !exec::is_absent(&e) => Err(e.to_string()),
        _ => Ok(()),
    };
    steps.push(TeardownStep::from_result(
        &format!("delete netns {STANDIN_NETNS}"),
        netns,
    ));
    steps.push(super::vm::delete_link(STANDIN_HOST_VETH, Duration::from_secs(2)).await);
    steps
}
