//! One VM's network: its namespace, veth pair, addresses, the namespace's own nft rule and its
//! passt. `create` undoes exactly what it made when a step fails (never a same-index network
//! that was already there); `destroy` works from a persisted record alone and is idempotent.

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::addressing::{index_from_name, Addressing, LINK_PREFIX_LEN};
use super::host_rules::{ensure_host_rules, link_cidr, netns_ruleset, HostLock};
use super::owner::{self, NetworkOwner};
use super::{exec, passt, NetworkError, NetworkSpec, TeardownStep};
use crate::process::ProcessId;

pub(crate) const NETNS_DIR: &str = "/run/netns";

/// What a reaper needs to tear a VM network down after a crash of its owner; persist it in the
/// VM's state dir. Everything but the passt fields follows from `index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRecord {
    pub index: u32,
    pub netns: String,
    pub host_veth: String,
    pub host_addr: Ipv4Addr,
    pub guest_addr: Ipv4Addr,
    pub prefix_len: u8,
    /// passt's pid when it was started (checked against its command line before signalling).
    pub passt_pid: Option<u32>,
    pub passt_socket: Option<PathBuf>,
    /// The directory holding passt's socket and pidfile, removed by `destroy`.
    pub passt_dir: Option<PathBuf>,
}

impl NetworkRecord {
    fn from_addressing(a: &Addressing) -> Self {
        Self {
            index: a.index,
            netns: a.netns.clone(),
            host_veth: a.host_veth.clone(),
            host_addr: a.host_addr,
            guest_addr: a.guest_addr,
            prefix_len: LINK_PREFIX_LEN,
            passt_pid: None,
            passt_socket: None,
            passt_dir: None,
        }
    }
}

/// A live VM network. Dropping it does nothing: call [`VmNetwork::destroy`] with its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNetwork {
    record: NetworkRecord,
    passt_socket: PathBuf,
    passt_pid: u32,
    /// How long starting passt took, of the whole `create`.
    passt_took: std::time::Duration,
}

/// What `create` has made so far, so a failure undoes exactly that.
#[derive(Debug, Default)]
struct Made {
    netns: bool,
    veth: bool,
    passt_dir: Option<PathBuf>,
    passt: Option<passt::Passt>,
}

impl VmNetwork {
    /// Makes the VM network for `spec.index`. If any step fails, everything this call made is
    /// removed before the error is returned.
    pub async fn create(spec: &NetworkSpec) -> Result<VmNetwork, NetworkError> {
        let a = Addressing::for_index(spec.index)?;
        if !nix::unistd::geteuid().is_root() {
            return Err(NetworkError::NotRoot);
        }
        ensure_host_rules().await?;
        let creator = ProcessId::current().ok_or_else(|| NetworkError::Io {
            what: "read this process's start time".to_owned(),
            source: std::io::Error::other("no /proc entry"),
        })?;
        // The claim and the owner marker happen under the host lock, so a reaper (which decides
        // under it too) never sees a claimed namespace without its marker.
        let claim = HostLock::acquire().await?;
        if Path::new(NETNS_DIR).join(&a.netns).exists() {
            return Err(NetworkError::InUse {
                index: a.index,
                what: format!("netns {}", a.netns),
            });
        }
        if link_exists(&a.host_veth).await {
            return Err(NetworkError::InUse {
                index: a.index,
                what: format!("link {}", a.host_veth),
            });
        }
        // `ip netns add` is the atomic claim on the index.
        if let Err(e) = exec::run("ip", &["netns", "add", &a.netns]).await {
            return Err(match &e {
                NetworkError::Command { stderr, .. } if stderr.contains("exists") => {
                    NetworkError::InUse {
                        index: a.index,
                        what: format!("netns {}", a.netns),
                    }
                }
                _ => e,
            });
        }
        let marked = owner::write(
            &a.netns,
            &NetworkOwner {
                owner: creator,
                runtime_dir: spec.runtime_dir.clone(),
                created_at: chrono::Utc::now(),
            },
        );
        drop(claim);
        if let Err(e) = marked {
            let record = NetworkRecord::from_addressing(&a);
            teardown(&record, true, false).await;
            return Err(e);
        }
        let mut made = Made {
            netns: true,
            ..Made::default()
        };
        match build(&a, spec, &mut made).await {
            Ok((passt, passt_took)) => {
                let mut record = NetworkRecord::from_addressing(&a);
                record.passt_pid = Some(passt.pid);
                record.passt_socket = Some(passt.socket.clone());
                record.passt_dir = Some(passt.dir.clone());
                tracing::info!(netns = %a.netns, guest = %a.guest_addr, passt_pid = passt.pid, "VM network created");
                Ok(VmNetwork {
                    record,
                    passt_socket: passt.socket,
                    passt_pid: passt.pid,
                    passt_took,
                })
            }
            Err(e) => {
                let mut record = NetworkRecord::from_addressing(&a);
                record.passt_pid = made.passt.as_ref().map(|p| p.pid);
                record.passt_socket = made.passt.as_ref().map(|p| p.socket.clone());
                record.passt_dir = made.passt_dir.clone();
                let steps = teardown(&record, made.netns, made.veth).await;
                for step in steps.iter().filter(|s| !s.ok) {
                    tracing::warn!(what = %step.what, error = ?step.error, "undoing a failed VM network create");
                }
                Err(e)
            }
        }
    }

    /// How long starting passt took, of the whole `create`.
    pub fn passt_took(&self) -> std::time::Duration {
        self.passt_took
    }

    /// The namespace QEMU must run in: `ip netns exec <netns> qemu-system-x86_64 …`.
    pub fn netns(&self) -> &str {
        &self.record.netns
    }

    /// The host side of the veth (`mfv<index>`).
    pub fn host_veth(&self) -> &str {
        &self.record.host_veth
    }

    /// The host's address on the VM link: the guest's gateway (which the guest can NOT reach).
    pub fn host_addr(&self) -> Ipv4Addr {
        self.record.host_addr
    }

    /// The namespace's address, which passt also hands the guest by DHCP.
    pub fn guest_addr(&self) -> Ipv4Addr {
        self.record.guest_addr
    }

    /// passt's pid.
    pub fn passt_pid(&self) -> u32 {
        self.passt_pid
    }

    /// passt's unix socket, which QEMU connects to.
    pub fn socket_path(&self) -> &Path {
        &self.passt_socket
    }

    /// Lets only `uid` (the VM's unprivileged QEMU) and root connect to the passt socket:
    /// QEMU may connect after it has dropped to its own uid.
    pub fn grant_socket(&self, uid: u32) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(&self.passt_socket, Some(uid), Some(uid))?;
        std::fs::set_permissions(&self.passt_socket, std::fs::Permissions::from_mode(0o600))
    }

    /// QEMU arguments for a virtio-net NIC backed by this network's passt.
    pub fn qemu_args(&self) -> Vec<String> {
        // QEMU option values escape a comma by doubling it.
        let path = self.passt_socket.to_string_lossy().replace(',', ",,");
        vec![
            "-netdev".to_owned(),
            format!("stream,id=net0,server=off,addr.type=unix,addr.path={path}"),
            "-device".to_owned(),
            "virtio-net-pci,netdev=net0,romfile=".to_owned(),
        ]
    }

    /// A command that runs `program` inside this VM's namespace (`ip netns exec <netns> …`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        exec::netns_command(&self.record.netns, program)
    }

    /// What to persist so the network can be torn down after a crash.
    pub fn record(&self) -> NetworkRecord {
        self.record.clone()
    }

    /// Tears the network down: passt stopped, any process left in the namespace killed, the
    /// namespace deleted (the veth goes with it; removed explicitly if it lingers), passt's
    /// directory removed. Idempotent: absent pieces count as removed.
    pub async fn destroy(record: &NetworkRecord) -> Vec<TeardownStep> {
        teardown(record, true, true).await
    }

    /// VM networks present on this host (namespaces `mayfly-vm-*` or veths `mfv*`), live or
    /// left by a crash; the reaper decides which to destroy. passt fields are unknown (`None`):
    /// `destroy` still stops passt, because it kills every process in the namespace.
    pub async fn leftovers() -> Result<Vec<NetworkRecord>, NetworkError> {
        let mut indexes = Vec::new();
        match tokio::fs::read_dir(NETNS_DIR).await {
            Ok(mut entries) => {
                while let Some(entry) =
                    entries
                        .next_entry()
                        .await
                        .map_err(|source| NetworkError::Io {
                            what: format!("list {NETNS_DIR}"),
                            source,
                        })?
                {
                    if let Some(index) = entry.file_name().to_str().and_then(index_from_name) {
                        if entry
                            .file_name()
                            .to_str()
                            .is_some_and(|n| n.starts_with(super::NETNS_PREFIX))
                        {
                            indexes.push(index);
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetworkError::Io {
                    what: format!("list {NETNS_DIR}"),
                    source,
                })
            }
        }
        for name in link_names().await? {
            if name.starts_with(super::VETH_PREFIX) {
                if let Some(index) = index_from_name(&name) {
                    indexes.push(index);
                }
            }
        }
        indexes.sort_unstable();
        indexes.dedup();
        indexes
            .into_iter()
            .map(|i| Addressing::for_index(i).map(|a| NetworkRecord::from_addressing(&a)))
            .collect()
    }
}

/// Everything after claiming the namespace. Records each piece in `made` as soon as it exists.
async fn build(
    a: &Addressing,
    spec: &NetworkSpec,
    made: &mut Made,
) -> Result<(passt::Passt, std::time::Duration), NetworkError> {
    let ns = a.netns.as_str();
    exec::run("ip", &["-n", ns, "link", "set", "lo", "up"]).await?;
    exec::run_in_netns(
        ns,
        "sysctl",
        &[
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )
    .await?;
    exec::run_with_stdin(
        "ip",
        &["netns", "exec", ns, "nft", "-f", "-"],
        Some(&netns_ruleset()),
    )
    .await?;

    let host_cidr = link_cidr(a.host_addr);
    let guest_cidr = link_cidr(a.guest_addr);
    let host_addr = a.host_addr.to_string();
    exec::run(
        "ip",
        &[
            "link",
            "add",
            &a.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ],
    )
    .await?;
    made.veth = true;
    let no_v6 = format!("net.ipv6.conf.{}.disable_ipv6=1", a.host_veth);
    exec::run("sysctl", &["-q", "-w", &no_v6]).await?;
    exec::run("ip", &["addr", "add", &host_cidr, "dev", &a.host_veth]).await?;
    exec::run("ip", &["link", "set", &a.host_veth, "up"]).await?;
    exec::run("ip", &["-n", ns, "addr", "add", &guest_cidr, "dev", "eth0"]).await?;
    exec::run("ip", &["-n", ns, "link", "set", "eth0", "up"]).await?;
    exec::run(
        "ip",
        &["-n", ns, "route", "add", "default", "via", &host_addr],
    )
    .await?;

    let started = std::time::Instant::now();
    let dir = passt::make_dir(&spec.runtime_dir).await?;
    made.passt_dir = Some(dir.clone());
    let running = passt::start(ns, &dir).await?;
    made.passt = Some(running.clone());
    Ok((running, started.elapsed()))
}

/// The teardown behind both `destroy` and a failed `create`. `netns`/`veth` say whether those
/// are ours to delete (a failed create must not delete a same-named piece it didn't make).
/// Deleting the namespace and its veth happens under the host lock, so no creator can claim the
/// index in between and lose its fresh veth to this teardown.
async fn teardown(record: &NetworkRecord, netns: bool, veth: bool) -> Vec<TeardownStep> {
    let mut steps = stop_processes(record, netns).await;
    match HostLock::acquire().await {
        Ok(lock) => {
            steps.extend(delete_names(record, netns, veth).await);
            drop(lock);
        }
        Err(e) => {
            steps.push(TeardownStep::from_result(
                "take the host network lock",
                Err(e.to_string()),
            ));
            steps.extend(delete_names(record, netns, veth).await);
        }
    }
    steps.extend(remove_passt_dir(record).await);
    steps
}

/// [`VmNetwork::destroy`] for a caller that already holds the host lock (the reaper).
pub(crate) async fn teardown_locked(record: &NetworkRecord) -> Vec<TeardownStep> {
    let mut steps = stop_processes(record, true).await;
    steps.extend(delete_names(record, true, true).await);
    steps.extend(remove_passt_dir(record).await);
    steps
}

/// passt (by its recorded pid and its pidfile), then anything else left in the namespace.
async fn stop_processes(record: &NetworkRecord, netns: bool) -> Vec<TeardownStep> {
    let mut steps = Vec::new();
    let pidfile_pid = match &record.passt_dir {
        Some(dir) => passt::read_pid(&passt::pidfile_in(dir)).await,
        None => None,
    };
    let mut pids: Vec<u32> = record.passt_pid.into_iter().chain(pidfile_pid).collect();
    pids.dedup();
    for pid in pids {
        let result = passt::stop(pid, record.passt_socket.as_deref()).await;
        steps.push(TeardownStep::from_result(
            &format!("stop passt (pid {pid})"),
            result,
        ));
    }
    if netns {
        steps.push(kill_netns_processes(&record.netns).await);
    }
    steps
}

/// The namespace (and with it its nft table and the veth's peer), its owner marker, the veth.
async fn delete_names(record: &NetworkRecord, netns: bool, veth: bool) -> Vec<TeardownStep> {
    let mut steps = Vec::new();
    if netns {
        let result = match exec::run("ip", &["netns", "delete", &record.netns]).await {
            Err(e) if !exec::is_absent(&e) => Err(e.to_string()),
            _ => Ok(()),
        };
        let deleted = result.is_ok();
        steps.push(TeardownStep::from_result(
            &format!("delete netns {}", record.netns),
            result,
        ));
        if deleted {
            steps.push(TeardownStep::from_result(
                &format!("remove the owner marker of {}", record.netns),
                owner::remove(&record.netns),
            ));
        }
    }
    if veth {
        steps.push(delete_link(&record.host_veth, Duration::from_secs(2)).await);
    }
    steps
}

async fn remove_passt_dir(record: &NetworkRecord) -> Vec<TeardownStep> {
    let Some(dir) = &record.passt_dir else {
        return Vec::new();
    };
    let result = match tokio::fs::remove_dir_all(dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
        _ => Ok(()),
    };
    vec![TeardownStep::from_result(
        &format!("remove {}", dir.display()),
        result,
    )]
}

/// Kills every process still in `netns` (a namespace with a process in it outlives `ip netns
/// delete`, and so would its veth).
pub(crate) async fn kill_netns_processes(netns: &str) -> TeardownStep {
    let what = format!("kill processes left in netns {netns}");
    if !Path::new(NETNS_DIR).join(netns).exists() {
        return TeardownStep::from_result(&what, Ok(()));
    }
    let out = match exec::run("ip", &["netns", "pids", netns]).await {
        Ok(out) => out,
        Err(e) if exec::is_absent(&e) => return TeardownStep::from_result(&what, Ok(())),
        Err(e) => return TeardownStep::from_result(&what, Err(e.to_string())),
    };
    let mut errors = Vec::new();
    for pid in out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
        if let Err(e) = exec::terminate(pid, Duration::from_secs(1)).await {
            errors.push(e);
        }
    }
    TeardownStep::from_result(
        &what,
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        },
    )
}

/// Deletes a host link, first giving the kernel `wait` to remove it on its own (a veth whose
/// peer's namespace was just deleted disappears asynchronously).
pub(crate) async fn delete_link(name: &str, wait: Duration) -> TeardownStep {
    let what = format!("delete link {name}");
    let link = Path::new("/sys/class/net").join(name);
    if crate::process::poll_until(wait, || !link.exists()).await {
        return TeardownStep::from_result(&what, Ok(()));
    }
    let result = match exec::run("ip", &["link", "delete", name]).await {
        Err(e) if !exec::is_absent(&e) => Err(e.to_string()),
        _ => Ok(()),
    };
    TeardownStep::from_result(&what, result)
}

async fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

async fn link_names() -> Result<Vec<String>, NetworkError> {
    let mut names = Vec::new();
    let mut entries = tokio::fs::read_dir("/sys/class/net")
        .await
        .map_err(|source| NetworkError::Io {
            what: "list /sys/class/net".to_owned(),
            source,
        })?;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|source| NetworkError::Io {
            what: "list /sys/class/net".to_owned(),
            source,
        })?
    {
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}
