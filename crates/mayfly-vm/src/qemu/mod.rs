//! `QemuDriver`: one QEMU process per VM, started inside the VM's network namespace, booting the
//! image's kernel and initramfs with the image's base disk read-only and a sparse scratch disk
//! of its own (the guest encrypts it with a key that never leaves the guest). The runner config
//! goes over the virtio-serial channel only; the console stays in memory.
//!
//! State on disk, per VM, under `<state_root>/vms/<vm-id>/` (mode 700: the config socket must be
//! reachable by root only): `vm.json` (the record a reaper needs), `scratch.raw`, `cfg.sock`,
//! `qemu.pid`; and `<state_root>/net/<vm-id>/` (mode 711) for passt, which runs as `nobody`.
//! `destroy` removes all of it.

mod command;
mod console;
mod record;
mod teardown;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use mayfly_core::{DestructionRecord, StartStep, VmId};
use tokio::process::Command;
use tokio::sync::Mutex;

pub use console::ConsoleTail;
pub use record::{ProcessId, VmRecord};
pub use teardown::ReapReport;

use crate::accel::Accel;
use crate::channel::{ChannelError, GuestChannel, GuestConfig, GuestEvent};
use crate::driver::{GuestExit, VmDriver, VmError, VmInfo, VmSpec};
use crate::image::{Image, ImageStore};
use crate::network::{NetworkSpec, VmNetwork};
pub use command::vm_uid;
use command::QemuLaunch;

/// Whether VMs get a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// A namespace per VM with nftables isolation (production).
    Isolated,
    /// No network device at all.
    Disabled,
}

/// How the driver is set up.
#[derive(Debug)]
pub struct QemuConfig {
    /// Where per-VM state directories live (`<state_root>/vms/<id>`).
    pub state_root: PathBuf,
    pub images: ImageStore,
    pub qemu: PathBuf,
    pub qemu_img: PathBuf,
    pub accel: Accel,
    pub network: NetworkMode,
    /// How long QEMU gets to stop after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// Run each VM's QEMU as a uid of its own (`command::vm_uid`) instead of root.
    pub unprivileged: bool,
    /// How old a VM namespace without an owner marker (made by an older mayfly) must be before
    /// the reaper may take it for an orphan.
    pub orphan_grace: Duration,
}

impl QemuConfig {
    pub fn new(state_root: PathBuf, images: ImageStore, accel: Accel) -> Self {
        Self {
            state_root,
            images,
            qemu: PathBuf::from("qemu-system-x86_64"),
            qemu_img: PathBuf::from("qemu-img"),
            accel,
            network: NetworkMode::Isolated,
            stop_grace: Duration::from_secs(5),
            unprivileged: true,
            orphan_grace: Duration::from_secs(60),
        }
    }
}

/// A VM could not be set up; the message names the fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0} was not found or does not run: install QEMU with `apt-get install qemu-system-x86 qemu-utils` (`mayfly doctor` lists what is missing)")]
    MissingBinary(String),
    #[error("the image {digest} is not usable: {reason}")]
    Image { digest: String, reason: String },
    #[error("could not prepare {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not create the scratch disk: {0}")]
    Scratch(String),
    #[error("could not set up the VM's network: {0}")]
    Network(String),
    #[error("could not start QEMU")]
    Spawn(#[source] std::io::Error),
    #[error("this process has no /proc entry; is /proc mounted?")]
    NoProc,
}

struct Entry {
    dir: PathBuf,
    record: VmRecord,
    image: Image,
    spec: VmSpec,
    network: Option<VmNetwork>,
    child: Option<tokio::process::Child>,
    channel: Option<GuestChannel>,
    console: ConsoleTail,
    /// How the guest ended, when `wait_runner_started` read it before `wait_exit` ran.
    ended: Option<GuestExit>,
    /// The steps of making and starting it so far, timed.
    steps: Vec<StartStep>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("dir", &self.dir)
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// The QEMU driver.
#[derive(Debug)]
pub struct QemuDriver {
    config: QemuConfig,
    owner: ProcessId,
    vms: Mutex<HashMap<VmId, Arc<Mutex<Entry>>>>,
    /// Records of VMs this driver destroyed, so a repeated `destroy` returns the same record.
    destroyed: Mutex<HashMap<VmId, DestructionRecord>>,
    /// Images whose digest this driver has checked (hashing a whole image per VM is too slow).
    verified_images: Mutex<HashMap<String, Image>>,
}

impl QemuDriver {
    pub fn new(config: QemuConfig) -> Result<Self, SetupError> {
        let owner = ProcessId::current().ok_or(SetupError::NoProc)?;
        for binary in [&config.qemu, &config.qemu_img] {
            if !on_path(binary) {
                return Err(SetupError::MissingBinary(binary.display().to_string()));
            }
        }
        for (dir, mode) in [
            (config.state_root.clone(), 0o711),
            (config.state_root.join("vms"), 0o700),
            (config.state_root.join("net"), 0o711),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)
                .and_then(|()| {
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                })
                .map_err(|source| SetupError::StateDir {
                    path: dir.clone(),
                    source,
                })?;
        }
        Ok(Self {
            config,
            owner,
            vms: Mutex::new(HashMap::new()),
            verified_images: Mutex::new(HashMap::new()),
            destroyed: Mutex::new(HashMap::new()),
        })
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.config.state_root.join("vms")
    }

    /// The console tail of a VM (in memory only), for diagnostics.
    pub async fn console(&self, vm: &VmId) -> Option<ConsoleTail> {
        let entry = self.vms.lock().await.get(vm).cloned()?;
        let console = entry.lock().await.console.clone();
        Some(console)
    }

    /// The guest's address inside its network namespace (tests use it to show VMs cannot reach
    /// each other), or `None` for a VM without a network.
    pub async fn guest_addr(&self, vm: &VmId) -> Option<std::net::Ipv4Addr> {
        let entry = self.vms.lock().await.get(vm).cloned()?;
        let entry = entry.lock().await;
        entry.network.as_ref().map(VmNetwork::guest_addr)
    }

    async fn entry(&self, vm: &VmId) -> Result<Arc<Mutex<Entry>>, VmError> {
        self.vms
            .lock()
            .await
            .get(vm)
            .cloned()
            .ok_or_else(|| VmError::Unknown(vm.clone()))
    }

    /// Checks an image against its digest now (an agent does this at start, so no VM start
    /// pays for hashing a multi-GB base disk).
    pub async fn verify_image(&self, digest: &str) -> Result<(), SetupError> {
        self.image(digest).await.map(drop)
    }

    /// The image, checked against its digest the first time this driver uses it.
    async fn image(&self, digest: &str) -> Result<Image, SetupError> {
        let mut verified = self.verified_images.lock().await;
        if let Some(image) = verified.get(digest) {
            return Ok(image.clone());
        }
        let image = self
            .config
            .images
            .get(digest)
            .map_err(|e| SetupError::Image {
                digest: digest.to_owned(),
                reason: e.to_string(),
            })?;
        verified.insert(digest.to_owned(), image.clone());
        Ok(image)
    }

    async fn prepare(&self, id: &VmId, spec: &VmSpec, dir: &Path) -> Result<Entry, SetupError> {
        let prepared = Instant::now();
        let image = self.image(&spec.image).await?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|source| SetupError::StateDir {
                path: dir.to_owned(),
                source,
            })?;
        let record = VmRecord {
            id: id.clone(),
            image: spec.image.clone(),
            owner: self.owner,
            qemu: None,
            network: None,
            created_at: Utc::now(),
        };
        record.save(dir).map_err(|source| SetupError::StateDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut entry = Entry {
            dir: dir.to_owned(),
            record,
            image,
            spec: spec.clone(),
            network: None,
            child: None,
            channel: None,
            console: ConsoleTail::default(),
            ended: None,
            steps: Vec::new(),
        };
        entry.steps.push(timed("state directory", prepared));
        let scratch = Instant::now();
        make_scratch(&dir.join(SCRATCH_FILE), spec.disk_gib)?;
        entry.steps.push(timed("scratch disk", scratch));
        if self.config.network == NetworkMode::Isolated {
            let net_dir = net_dir(&self.config.state_root, id);
            std::fs::DirBuilder::new()
                .mode(0o711)
                .create(&net_dir)
                .and_then(|()| {
                    std::fs::set_permissions(&net_dir, std::fs::Permissions::from_mode(0o711))
                })
                .map_err(|source| SetupError::StateDir {
                    path: net_dir.clone(),
                    source,
                })?;
            let index = rand::random::<u32>() % 15_000 + 1;
            let made = Instant::now();
            let network = VmNetwork::create(&NetworkSpec {
                index,
                runtime_dir: net_dir,
            })
            .await
            .map_err(|e| SetupError::Network(e.to_string()))?;
            let took = made.elapsed();
            entry.steps.push(step(
                "network namespace",
                took.saturating_sub(network.passt_took()),
            ));
            entry.steps.push(step("passt", network.passt_took()));
            entry.record.network = Some(network.record());
            entry.network = Some(network);
            entry
                .record
                .save(dir)
                .map_err(|source| SetupError::StateDir {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        Ok(entry)
    }

    fn spawn(&self, entry: &mut Entry) -> Result<(), SetupError> {
        let dir = entry.dir.clone();
        let scratch = dir.join(SCRATCH_FILE);
        let socket = dir.join("cfg.sock");
        let pidfile = dir.join("qemu.pid");
        let name = entry.record.id.to_string();
        let run_as = self
            .config
            .unprivileged
            .then(|| command::vm_uid(&entry.record.id));
        if let (Some(uid), Some(network)) = (run_as, &entry.network) {
            network
                .grant_socket(uid)
                .map_err(|e| SetupError::Network(format!("passt socket: {e}")))?;
        }
        let launch = QemuLaunch {
            name: &name,
            accel: self.config.accel,
            vcpus: entry.spec.vcpus,
            memory_mib: entry.spec.memory_mib,
            image: &entry.image,
            scratch: &scratch,
            channel_socket: &socket,
            pidfile: &pidfile,
            network_args: entry
                .network
                .as_ref()
                .map(VmNetwork::qemu_args)
                .unwrap_or_default(),
            run_as,
        };
        let mut command = match &entry.network {
            Some(network) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", network.netns()])
                    .arg(&self.config.qemu);
                c
            }
            None => Command::new(&self.config.qemu),
        };
        command
            .args(launch.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                SetupError::MissingBinary(self.config.qemu.display().to_string())
            }
            _ => SetupError::Spawn(e),
        })?;
        if let Some(stdout) = child.stdout.take() {
            entry.console.follow(stdout);
        }
        if let Some(stderr) = child.stderr.take() {
            entry.console.follow(stderr);
        }
        entry.record.qemu = child.id().and_then(ProcessId::of);
        entry.child = Some(child);
        entry
            .record
            .save(&dir)
            .map_err(|source| SetupError::StateDir { path: dir, source })
    }
}

#[async_trait]
impl VmDriver for QemuDriver {
    async fn create(&self, spec: &VmSpec) -> Result<VmId, VmError> {
        let id = VmId::from_random(rand::random());
        let dir = self.vms_dir().join(id.as_str());
        match self.prepare(&id, spec, &dir).await {
            Ok(entry) => {
                self.vms
                    .lock()
                    .await
                    .insert(id.clone(), Arc::new(Mutex::new(entry)));
                Ok(id)
            }
            Err(e) => {
                // Nothing leaks when a start fails halfway.
                let net = net_dir(&self.config.state_root, &id);
                teardown::from_disk(&dir, &net, &id, "creation failed", self.config.stop_grace)
                    .await;
                Err(e.into())
            }
        }
    }

    async fn start(&self, vm: &VmId) -> Result<(), VmError> {
        let entry = self.entry(vm).await?;
        let mut entry = entry.lock().await;
        if entry.child.is_some() {
            return Err(VmError::WrongState(vm.clone()));
        }
        let spawned = Instant::now();
        self.spawn(&mut entry)?;
        entry.steps.push(timed("qemu spawned", spawned));
        let socket = entry.dir.join("cfg.sock");
        let opened = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match GuestChannel::connect(&socket, Duration::from_millis(100)).await {
                Ok(channel) => {
                    entry.channel = Some(channel);
                    entry.steps.push(timed("config channel open", opened));
                    return Ok(());
                }
                Err(e) => {
                    // QEMU that exited (bad arguments, missing files) will never open it.
                    let exited = entry
                        .child
                        .as_mut()
                        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                    if exited || tokio::time::Instant::now() >= deadline {
                        // Let the pipes deliver QEMU's last words.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let said = entry.console.last(600);
                        return Err(VmError::Failed {
                            vm: vm.clone(),
                            what: format!("QEMU did not start: {e}; it said: {}", said.trim()),
                        });
                    }
                }
            }
        }
    }

    async fn wait_ready(&self, vm: &VmId, timeout: Duration) -> Result<String, VmError> {
        let entry = self.entry(vm).await?;
        let outcome = {
            let mut guard = entry.lock().await;
            let Some(channel) = guard.channel.as_mut() else {
                return Err(VmError::WrongState(vm.clone()));
            };
            tokio::time::timeout(timeout, async {
                loop {
                    match channel.next_event().await {
                        Ok(GuestEvent::Ready { kernel }) => return Ok(kernel),
                        Ok(GuestEvent::Error { message }) => return Err(message),
                        Ok(_) | Err(ChannelError::Garbled) => continue,
                        Err(e) => return Err(e.to_string()),
                    }
                }
            })
            .await
        };
        match outcome {
            Ok(Ok(kernel)) => Ok(kernel),
            Ok(Err(what)) => {
                let tail = self.console_tail(&entry).await;
                self.destroy(vm, "guest failed to boot").await;
                Err(VmError::Failed {
                    vm: vm.clone(),
                    what: format!("{what}{tail}"),
                })
            }
            Err(_) => {
                let tail = self.console_tail(&entry).await;
                self.destroy(vm, "boot timeout").await;
                Err(VmError::BootTimeout {
                    vm: vm.clone(),
                    timeout,
                    tail,
                })
            }
        }
    }

    async fn hand_over(&self, vm: &VmId, config: GuestConfig) -> Result<(), VmError> {
        let entry = self.entry(vm).await?;
        let mut entry = entry.lock().await;
        let Some(channel) = entry.channel.as_mut() else {
            return Err(VmError::WrongState(vm.clone()));
        };
        channel
            .send_config(&config)
            .await
            .map_err(|e| VmError::Failed {
                vm: vm.clone(),
                what: e.to_string(),
            })
        // `config` is dropped here: the JIT config's memory is zeroized.
    }

    async fn wait_runner_started(&self, vm: &VmId, timeout: Duration) -> Result<bool, VmError> {
        let entry = self.entry(vm).await?;
        let mut entry = entry.lock().await;
        let entry = &mut *entry;
        let Some(channel) = entry.channel.as_mut() else {
            return Err(VmError::WrongState(vm.clone()));
        };
        let read = tokio::time::timeout(timeout, async {
            loop {
                match channel.next_event().await {
                    Ok(GuestEvent::Started) => return None,
                    Ok(GuestEvent::Exited { code }) => return Some(GuestExit::Exited { code }),
                    Ok(GuestEvent::Error { message }) => {
                        return Some(GuestExit::GuestError(message))
                    }
                    Ok(GuestEvent::Ready { .. }) | Err(ChannelError::Garbled) => continue,
                    Err(_) => return Some(GuestExit::Vanished),
                }
            }
        })
        .await;
        match read {
            Ok(None) => Ok(true),
            Ok(Some(ended)) => {
                entry.ended = Some(ended);
                Ok(false)
            }
            Err(_) => Err(VmError::RunTimeout {
                vm: vm.clone(),
                timeout,
            }),
        }
    }

    async fn wait_exit(&self, vm: &VmId, timeout: Duration) -> Result<GuestExit, VmError> {
        let entry = self.entry(vm).await?;
        let mut entry = entry.lock().await;
        let ended = entry.ended.take();
        let result = tokio::time::timeout(timeout, async {
            let mut exit = GuestExit::Vanished;
            if let Some(ended) = ended {
                exit = ended;
            } else if let Some(channel) = entry.channel.as_mut() {
                loop {
                    match channel.next_event().await {
                        Ok(GuestEvent::Exited { code }) => {
                            exit = GuestExit::Exited { code };
                            break;
                        }
                        Ok(GuestEvent::Error { message }) => {
                            exit = GuestExit::GuestError(message);
                            break;
                        }
                        Ok(_) | Err(ChannelError::Garbled) => continue,
                        Err(_) => break,
                    }
                }
            }
            // A guest that said how the runner ended has nothing more to give: waiting for its
            // power-off (hundreds of ms under TCG) would only delay the destroy that stops QEMU
            // anyway. A guest that went without a word is waited for, so its end is its own.
            if exit == GuestExit::Vanished {
                if let Some(child) = entry.child.as_mut() {
                    let _ = child.wait().await;
                }
            }
            exit
        })
        .await;
        result.map_err(|_| VmError::RunTimeout {
            vm: vm.clone(),
            timeout,
        })
    }

    async fn destroy(&self, vm: &VmId, reason: &str) -> DestructionRecord {
        if let Some(record) = self.destroyed.lock().await.get(vm) {
            // Already gone (say, at its boot timeout): destroying again changes nothing.
            return record.clone();
        }
        let entry = self.vms.lock().await.remove(vm);
        let record = match entry {
            Some(entry) => {
                let mut entry = entry.lock().await;
                let net = net_dir(&self.config.state_root, vm);
                teardown::entry(&mut entry, &net, reason, self.config.stop_grace).await
            }
            None => {
                let dir = self.vms_dir().join(vm.as_str());
                let net = net_dir(&self.config.state_root, vm);
                teardown::from_disk(&dir, &net, vm, reason, self.config.stop_grace).await
            }
        };
        self.destroyed
            .lock()
            .await
            .insert(vm.clone(), record.clone());
        record
    }

    async fn start_steps(&self, vm: &VmId) -> Vec<StartStep> {
        match self.entry(vm).await {
            Ok(entry) => entry.lock().await.steps.clone(),
            Err(_) => Vec::new(),
        }
    }

    async fn list(&self) -> Vec<VmInfo> {
        let vms = self.vms.lock().await;
        let mut out = Vec::with_capacity(vms.len());
        for (id, entry) in vms.iter() {
            let entry = entry.lock().await;
            out.push(VmInfo {
                id: id.clone(),
                image: entry.spec.image.clone(),
                running: entry.record.qemu.is_some_and(|p| p.alive()),
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    async fn reap(&self) -> Vec<DestructionRecord> {
        let report = self.reap_report().await;
        for network in &report.networks {
            tracing::warn!(netns = %network.netns, why = %network.why, "reaped an orphaned VM network");
        }
        report.vms
    }
}

/// The scratch disk's file in a VM's state directory.
pub(crate) const SCRATCH_FILE: &str = "scratch.raw";

/// A start step that took `took`.
fn step(name: &str, took: Duration) -> StartStep {
    StartStep {
        step: name.to_owned(),
        millis: took.as_secs_f64() * 1000.0,
    }
}

/// A start step begun at `since` and done now.
fn timed(name: &str, since: Instant) -> StartStep {
    step(name, since.elapsed())
}

/// A sparse file of `gib` GiB: O(1) to make, whatever its size; blocks are allocated only as
/// the guest writes (encrypted) data.
fn make_scratch(path: &Path, gib: u32) -> Result<(), SetupError> {
    let fail = |e: std::io::Error| SetupError::Scratch(format!("{}: {e}", path.display()));
    if gib == 0 {
        return Err(SetupError::Scratch("the profile's disk_gib is 0".into()));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    file.set_len(u64::from(gib) << 30).map_err(fail)
}

/// Whether `program` names an executable file, directly or on `PATH`.
fn on_path(program: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return executable(program);
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
}

/// passt's runtime directory for a VM (outside the root-only VM directory).
pub(crate) fn net_dir(state_root: &Path, vm: &VmId) -> PathBuf {
    state_root.join("net").join(vm.as_str())
}

impl QemuDriver {
    /// Reaps (see [`VmDriver::reap`]) and says what: VMs of dead owners under this state root,
    /// orphaned VM networks anywhere on the host (never a live owner's), leftover runtime dirs.
    pub async fn reap_report(&self) -> ReapReport {
        // Not the entries' locks (a running job holds its entry's): this driver's networks are
        // in their VMs' records on disk, and carry this process as their creator anyway.
        let ours: HashSet<VmId> = self.vms.lock().await.keys().cloned().collect();
        teardown::reap_all(
            &self.config.state_root,
            &ours,
            self.config.stop_grace,
            self.config.orphan_grace,
        )
        .await
    }

    async fn console_tail(&self, entry: &Arc<Mutex<Entry>>) -> String {
        let tail = entry.lock().await.console.last(1500);
        if tail.trim().is_empty() {
            String::new()
        } else {
            format!("; the console ended with:\n{tail}")
        }
    }
}
