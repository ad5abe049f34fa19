//! The host's side of VM isolation: IPv4 forwarding on, and one nftables table `inet mayfly`
//! that matches VM traffic by interface name prefix (`mfv*`), so a VM's veth is covered from the
//! moment it exists and there are no per-VM elements to add or forget. The table is replaced
//! atomically (one `nft -f` transaction) on every ensure; no other table is ever touched.

use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::Deserialize;

use super::addressing::{network_of, LINK_PREFIX_LEN, VETH_PREFIX, VM_SUPERNET};
use super::exec;
use super::standin::STANDIN_HOST_VETH;
use super::NetworkError;

/// The nftables table this module owns on the host.
pub const HOST_TABLE: &str = "mayfly";
/// The nftables table this module owns inside each VM namespace.
pub const NETNS_TABLE: &str = "mayfly_ns";
/// The uid passt drops to (`--runas`); the namespace rule keys on it.
pub(crate) const PASST_UID: u32 = 65534;

/// Destinations a VM may never reach, whatever the host's routes say: "this network", private
/// ranges (RFC 1918, which include every VM's 10.201.0.0/16), CGNAT, loopback, link-local
/// (cloud metadata at 169.254.169.254), multicast and reserved space.
const BLOCKED_V4: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

const LOCK_PATH: &str = "/run/mayfly-network.lock";

/// Serialises changes to shared host state (the host table, the internet stand-in) across
/// threads and processes; released on drop.
pub(crate) struct HostLock {
    _lock: Flock<std::fs::File>,
}

impl std::fmt::Debug for HostLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostLock")
    }
}

impl HostLock {
    pub async fn acquire() -> Result<Self, NetworkError> {
        let lock = tokio::task::spawn_blocking(|| {
            let path = Path::new(LOCK_PATH);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(|source| NetworkError::Io {
                    what: format!("open {LOCK_PATH}"),
                    source,
                })?;
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| NetworkError::Io {
                what: format!("lock {LOCK_PATH}"),
                source: std::io::Error::from(errno),
            })
        })
        .await
        .map_err(|e| NetworkError::Io {
            what: "lock task".to_owned(),
            source: std::io::Error::other(e),
        })??;
        Ok(Self { _lock: lock })
    }
}

/// Turns on forwarding and (re)installs the host table. Idempotent; safe to call concurrently.
pub(crate) async fn ensure_host_rules() -> Result<(), NetworkError> {
    let _lock = HostLock::acquire().await?;
    tokio::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
        .await
        .map_err(|source| NetworkError::Io {
            what: "set net.ipv4.ip_forward=1".to_owned(),
            source,
        })?;
    let subnets = host_subnets().await?;
    let resolvers = host_resolvers(
        &tokio::fs::read_to_string("/etc/resolv.conf")
            .await
            .unwrap_or_default(),
    );
    exec::run_with_stdin(
        "nft",
        &["-f", "-"],
        Some(&host_ruleset(&subnets, &resolvers)),
    )
    .await?;
    Ok(())
}

/// Removes the host table (for uninstall; live VMs lose their isolation *and* their internet).
pub async fn remove_host_rules() -> Result<(), NetworkError> {
    let _lock = HostLock::acquire().await?;
    let script = format!("add table inet {HOST_TABLE}\ndelete table inet {HOST_TABLE}\n");
    exec::run_with_stdin("nft", &["-f", "-"], Some(&script)).await?;
    Ok(())
}

#[derive(Deserialize)]
struct IpAddrJson {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    local: std::net::Ipv4Addr,
    prefixlen: u8,
}

/// The IPv4 networks directly attached to the host (except loopback, VM links and the
/// stand-in): neighbours on these are not "the internet" (other machines, the control plane).
async fn host_subnets() -> Result<Vec<String>, NetworkError> {
    let out = exec::run("ip", &["-j", "-4", "addr", "show"]).await?;
    let links: Vec<IpAddrJson> = serde_json::from_str(&out).map_err(|e| NetworkError::Parse {
        what: "`ip -j -4 addr show`".to_owned(),
        detail: e.to_string(),
    })?;
    let mut nets: Vec<String> = links
        .iter()
        .filter(|l| {
            l.ifname != "lo" && l.ifname != STANDIN_HOST_VETH && !l.ifname.starts_with(VETH_PREFIX)
        })
        .flat_map(|l| l.addr_info.iter().map(|a| network_of(a.local, a.prefixlen)))
        .collect();
    nets.sort();
    nets.dedup();
    Ok(nets)
}

/// The host's IPv4 DNS resolvers (from resolv.conf). passt hands them to guests, so guests may
/// reach them on port 53 and nothing else, even when they sit in a private range. A loopback
/// resolver (a local stub) is not reachable from a VM and is left out.
pub(crate) fn host_resolvers(resolv_conf: &str) -> Vec<String> {
    let mut out: Vec<String> = resolv_conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .filter_map(|addr| addr.trim().parse::<std::net::Ipv4Addr>().ok())
        .filter(|addr| !addr.is_loopback() && !addr.is_unspecified())
        .map(|addr| addr.to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The whole host table, as one atomic `nft -f` script that replaces any previous version.
pub(crate) fn host_ruleset(host_subnets: &[String], resolvers: &[String]) -> String {
    let resolver_set = if resolvers.is_empty() {
        String::new()
    } else {
        format!("elements = {{ {} }}", resolvers.join(", "))
    };
    let blocked = BLOCKED_V4.join(", ");
    let host_set = if host_subnets.is_empty() {
        String::new()
    } else {
        format!("elements = {{ {} }}", host_subnets.join(", "))
    };
    format!(
        r#"add table inet {HOST_TABLE}
delete table inet {HOST_TABLE}
table inet {HOST_TABLE} {{
  set blocked_v4 {{
    type ipv4_addr; flags interval; auto-merge
    elements = {{ {blocked} }}
  }}
  set host_subnets_v4 {{
    type ipv4_addr; flags interval; auto-merge
    {host_set}
  }}
  set resolvers_v4 {{
    type ipv4_addr
    {resolver_set}
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{VETH_PREFIX}*" counter drop comment "no host service on any address for VMs"
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{VETH_PREFIX}*" meta nfproto != ipv4 counter drop comment "no IPv6 from VMs"
    iifname "{VETH_PREFIX}*" fib saddr . iif oif missing counter drop comment "anti-spoofing"
    iifname "{VETH_PREFIX}*" ip saddr != {VM_SUPERNET} counter drop
    iifname "{VETH_PREFIX}*" fib daddr type local counter drop comment "host addresses"
    iifname "{VETH_PREFIX}*" ip daddr @resolvers_v4 meta l4proto {{ tcp, udp }} th dport 53 counter accept comment "DNS to the host's resolvers only"
    iifname "{VETH_PREFIX}*" ip daddr @blocked_v4 counter drop comment "other VMs, private, metadata"
    iifname "{VETH_PREFIX}*" ip daddr @host_subnets_v4 counter drop comment "host's own subnets"
    iifname "{VETH_PREFIX}*" fib daddr type {{ broadcast, multicast, anycast }} counter drop
    oifname "{VETH_PREFIX}*" ct state != {{ established, related }} counter drop comment "nothing new into VMs"
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {VM_SUPERNET} oifname != "{VETH_PREFIX}*" masquerade
  }}
}}
"#
    )
}

/// The table inside one VM namespace: passt runs as `nobody`, so traffic from that uid to the
/// namespace's own loopback (its 127.0.0.1, or its own address) is what a guest would use to
/// reach anything local to the namespace.
pub(crate) fn netns_ruleset() -> String {
    format!(
        r#"add table inet {NETNS_TABLE}
delete table inet {NETNS_TABLE}
table inet {NETNS_TABLE} {{
  chain output {{
    type filter hook output priority filter; policy accept;
    meta skuid {PASST_UID} oifname "lo" counter drop comment "passt (the guest) never reaches the namespace itself"
    meta skuid {PASST_UID} meta nfproto ipv6 counter drop
  }}
}}
"#
    )
}

/// The prefix length as text, for `ip addr add a.b.c.d/30`.
pub(crate) fn link_cidr(addr: std::net::Ipv4Addr) -> String {
    format!("{addr}/{LINK_PREFIX_LEN}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn resolvers_come_from_resolv_conf_without_loopback_stubs() {
        let conf = "# comment\nnameserver 10.255.255.53\nnameserver 127.0.0.53\nnameserver ::1\nsearch x\nnameserver 1.1.1.1\n";
        assert_eq!(host_resolvers(conf), ["1.1.1.1", "10.255.255.53"]);
        assert!(host_resolvers("").is_empty());
    }

    #[test]
    fn host_ruleset_replaces_only_its_own_table() {
        let rules = host_ruleset(&["192.0.2.0/24".to_owned()], &["10.255.255.53".to_owned()]);
        assert!(rules.contains("elements = { 10.255.255.53 }"), "{rules}");
        assert!(rules.starts_with("add table inet mayfly\ndelete table inet mayfly\n"));
        assert!(!rules.contains("flush ruleset"));
        assert!(rules.contains("elements = { 192.0.2.0/24 }"));
        let empty = host_ruleset(&[], &[]);
        assert!(!empty.contains("elements = {  }"));
    }
}
