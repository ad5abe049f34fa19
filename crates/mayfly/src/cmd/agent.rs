//! `mayfly agent`: one per host. Reads its flags (or `MAYFLY_AGENT_*` variables), sets up the
//! QEMU driver over the host's image store, and runs the agent (crate `mayfly-agent`) until
//! SIGINT/SIGTERM, when every VM it runs is destroyed and reported before it exits.
//! `mayfly agent enrol` trades a one-time bootstrap token for a client certificate; the agent
//! then speaks mTLS and trusts only the server CA the token pinned. Without credentials the
//! server must be on loopback: JIT configs never cross a network in clear. Enrolling over
//! existing credentials needs `--force`; they are then replaced file by file, each atomically,
//! and `agent.json`, written last, names the certificate it belongs to, so a set left half
//! replaced is recognised instead of half used. `--vm-driver simulated` (a load driver that
//! runs no VM, refused without `--allow-simulated-vms`) is in [`simulated`].

mod simulated;

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

use super::atomic_file::{self, Existing};
use crate::exit::{ConfigContext, Failure, RuntimeContext};

/// What runs each job. Deliberately no environment variable: only an explicit flag selects
/// the simulated driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VmDriverKind {
    /// A fresh QEMU VM per job.
    Qemu,
    /// NO VM: a load driver for the control plane that only plays each VM's life through the
    /// protocol (needs --allow-simulated-vms).
    Simulated,
}

/// Which accelerator VMs use.
#[derive(Debug, Clone, Copy, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentAccel {
    /// Probe KVM with a short timeout, fall back to TCG.
    Auto,
    Kvm,
    Tcg,
}

/// `mayfly agent [enrol]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Enrol this host: trade a one-time bootstrap token (from `mayfly agents bootstrap` on the
    /// server) for a client certificate, pinning the server CA the token names.
    ///
    /// A credentials directory that already holds credentials is left alone and the token is not
    /// used, unless --force is given: then the new credentials replace the old ones (each file
    /// atomically; an interrupted replacement is detected when the agent starts, and enrolling
    /// again with --force repairs it). The server keeps accepting the old certificate of another
    /// agent name until `mayfly agents revoke <name>`; under the same name, the new certificate
    /// replaces the old one at once.
    Enrol(EnrolArgs),
}

#[derive(Debug, Args)]
pub struct EnrolArgs {
    /// The server's HTTPS address, e.g. https://ci.example.com:8443.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The bootstrap token (`mfya_…`). Prefer --token-file or MAYFLY_AGENT_TOKEN: arguments
    /// are visible to other users.
    #[arg(
        long,
        env = "MAYFLY_AGENT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// A file holding the bootstrap token.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Where to keep the key, certificate and pinned CA.
    #[arg(
        long,
        env = "MAYFLY_AGENT_CREDENTIALS",
        default_value = "/var/lib/mayfly/agent",
        value_name = "DIR"
    )]
    credentials: PathBuf,
    /// Replace the credentials already in the directory (see above).
    #[arg(long)]
    force: bool,
}

/// Flags of `mayfly agent` (running). Each overrides the same key of the configuration file.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML configuration file (`mayfly init agent` writes one; keys as the flags' long names
    /// with `_` for `-`, e.g. `server_url`, `slots`, `state_root`). Unknown keys are refused.
    #[arg(long, short, env = "MAYFLY_AGENT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server's agent endpoint [default: from the credentials]. Without credentials only a
    /// loopback http:// development server is allowed.
    #[arg(long, env = "MAYFLY_AGENT_SERVER_URL", value_name = "URL")]
    server_url: Option<String>,
    /// The directory `mayfly agent enrol` wrote (key, certificate, pinned CA): speak mTLS.
    #[arg(long, env = "MAYFLY_AGENT_CREDENTIALS", value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// This host's stable id [default: the host name].
    #[arg(long, env = "MAYFLY_AGENT_ID", value_name = "ID")]
    id: Option<String>,
    /// How many VMs may run at once [default: 1].
    #[arg(long, env = "MAYFLY_AGENT_SLOTS")]
    slots: Option<u32>,
    /// vCPUs this host offers (reported to the server) [default: 2].
    #[arg(long, env = "MAYFLY_AGENT_VCPUS")]
    vcpus: Option<u32>,
    /// Memory in MiB this host offers (reported to the server) [default: 4096].
    #[arg(long, env = "MAYFLY_AGENT_MEMORY_MIB")]
    memory_mib: Option<u64>,
    /// State directory of the VMs (per-VM directories under <DIR>/vms)
    /// [default: /var/lib/mayfly/state].
    #[arg(long, env = "MAYFLY_AGENT_STATE_ROOT", value_name = "DIR")]
    state_root: Option<PathBuf>,
    /// Image store [default: /var/lib/mayfly/images].
    #[arg(long, env = "MAYFLY_AGENT_IMAGES", value_name = "DIR")]
    images: Option<PathBuf>,
    /// The agent's journal [default: <state-root>/agent-journal.json].
    #[arg(long, env = "MAYFLY_AGENT_JOURNAL", value_name = "FILE")]
    journal: Option<PathBuf>,
    /// Accelerator [default: auto].
    #[arg(long, env = "MAYFLY_AGENT_ACCEL", value_enum)]
    accel: Option<AgentAccel>,
    /// Seconds without a word from the server after which VMs whose runner has not started yet
    /// are destroyed (the server gives their jobs to other agents after its own lease, the
    /// server's `agent_lease_secs`); VMs whose runner started keep running up to their max
    /// runtime [default: 60].
    #[arg(long, env = "MAYFLY_AGENT_LEASE_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    lease_secs: Option<u64>,
    /// What runs each job: `qemu`, a fresh VM; or `simulated`, which runs NO VM and no job
    /// step (each VM's life is only played through the protocol, its runner against `mayfly
    /// sim`), for load tests of the control plane; it needs --allow-simulated-vms too.
    /// Deliberately not a key of the configuration file.
    #[arg(long, value_enum, default_value_t = VmDriverKind::Qemu, value_name = "DRIVER")]
    vm_driver: VmDriverKind,
    /// Allow `--vm-driver simulated`: this agent then runs no VM, and says so on every line
    /// it logs.
    #[arg(long)]
    allow_simulated_vms: bool,
    #[command(flatten)]
    simulated: simulated::SimulatedArgs,
}

/// The agent's configuration file: the running flags' values (see [`RunArgs`]).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_root: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<AgentAccel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_secs: Option<u64>,
}

impl AgentFile {
    /// Reads `path`, refusing unknown keys and wrong types with the file's name.
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("could not read the agent configuration {}", path.display())
        })?;
        let file: Self = toml::from_str(&text)
            .with_context(|| format!("the agent configuration {} is not valid", path.display()))?;
        if file.slots == Some(0) || file.lease_secs == Some(0) {
            anyhow::bail!(
                "the agent configuration {}: slots and lease_secs must be at least 1",
                path.display()
            );
        }
        Ok(file)
    }
}

impl RunArgs {
    /// Fills what no flag (or `MAYFLY_AGENT_*` variable) gave from the configuration file.
    fn apply_file(&mut self) -> Result<(), Failure> {
        let Some(path) = &self.config else {
            return Ok(());
        };
        let file = AgentFile::read(path).config_err()?;
        fn fill<T>(flag: &mut Option<T>, file: Option<T>) {
            if flag.is_none() {
                *flag = file;
            }
        }
        fill(&mut self.server_url, file.server_url);
        fill(&mut self.credentials, file.credentials);
        fill(&mut self.id, file.id);
        fill(&mut self.slots, file.slots);
        fill(&mut self.vcpus, file.vcpus);
        fill(&mut self.memory_mib, file.memory_mib);
        fill(&mut self.state_root, file.state_root);
        fill(&mut self.images, file.images);
        fill(&mut self.journal, file.journal);
        fill(&mut self.accel, file.accel);
        fill(&mut self.lease_secs, file.lease_secs);
        Ok(())
    }

    fn slots(&self) -> u32 {
        self.slots.unwrap_or(1)
    }

    fn state_root(&self) -> PathBuf {
        self.state_root
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/mayfly/state"))
    }

    fn images(&self) -> PathBuf {
        self.images
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/mayfly/images"))
    }

    fn lease_secs(&self) -> u64 {
        self.lease_secs.unwrap_or(60)
    }
}

impl AgentArgs {
    /// Whether this runs agents of the simulated driver (asked for; maybe refused later).
    pub fn runs_simulated_vms(&self) -> bool {
        self.command.is_none() && self.run.vm_driver == VmDriverKind::Simulated
    }
}

/// The prefix of every log line of `mayfly agent --vm-driver simulated`.
pub const SIMULATED_LOG_PREFIX: &str = simulated::LOG_PREFIX;

pub async fn run(args: AgentArgs) -> Result<(), Failure> {
    match args.command {
        Some(AgentCommand::Enrol(enrol_args)) => run_enrol(enrol_args).await,
        None => run_agent(args.run).await,
    }
}

#[allow(clippy::print_stdout)] // what was enrolled is the command's output
async fn run_enrol(args: EnrolArgs) -> Result<(), Failure> {
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => zeroize::Zeroizing::new(token.clone()),
        (None, Some(file)) => zeroize::Zeroizing::new(
            std::fs::read_to_string(file)
                .with_context(|| format!("could not read {}", file.display()))
                .config_err()?,
        ),
        (None, None) => {
            return Err(anyhow!(
                "give the bootstrap token with --token-file or MAYFLY_AGENT_TOKEN"
            ))
            .config_err()
        }
    };
    // Checked before the token is spent, so a refusal costs the operator nothing.
    let previous = existing_enrolment(&args.credentials);
    if let (Some(previous), false) = (&previous, args.force) {
        return Err(anyhow!(
            "{} already holds {}: give --force to replace them, or choose another --credentials \
             directory; the token was not used",
            args.credentials.display(),
            previous.describe()
        ))
        .config_err();
    }
    let credentials = enrol(&args.server, token.trim(), &args.credentials)
        .await
        .runtime_err()?;
    println!(
        "enrolled as {}; credentials in {}; run: mayfly agent --credentials {}",
        credentials.agent,
        args.credentials.display(),
        args.credentials.display()
    );
    match previous.and_then(|p| p.agent) {
        Some(old) if old == credentials.agent => println!(
            "replaced the previous credentials of {old}: the server no longer accepts its old \
             certificate"
        ),
        Some(old) => println!(
            "replaced the credentials of {old}; the server still accepts them: if no host runs \
             as {old} any more, revoke it there with `mayfly agents revoke {old}`"
        ),
        None => {}
    }
    Ok(())
}

/// Credentials found in a directory `enrol` would write to.
#[derive(Debug)]
pub(crate) struct PreviousEnrolment {
    /// The agent they name, when `agent.json` is readable.
    agent: Option<String>,
}

impl PreviousEnrolment {
    pub(crate) fn describe(&self) -> String {
        match &self.agent {
            Some(agent) => format!("the credentials of agent {agent}"),
            None => "agent credentials".to_owned(),
        }
    }
}

/// `Some` when `dir` holds any file of an enrolment (complete or not).
pub(crate) fn existing_enrolment(dir: &std::path::Path) -> Option<PreviousEnrolment> {
    let found = CREDENTIAL_FILES.iter().any(|name| dir.join(name).exists());
    found.then(|| PreviousEnrolment {
        agent: std::fs::read(dir.join(AGENT_JSON))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Credentials>(&bytes).ok())
            .map(|c| c.agent),
    })
}

/// What an enrolled agent keeps beside its key and certificate.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub agent: String,
    /// `https://host:port` of the agent listener.
    pub agent_url: String,
    /// SHA-256 of `agent.crt` (DER): ties this file to the certificate and key written before
    /// it. Absent in credentials written before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
}

const AGENT_KEY: &str = "agent.key";
const AGENT_CRT: &str = "agent.crt";
const SERVER_CA: &str = "server-ca.pem";
const AGENT_JSON: &str = "agent.json";
/// In the order `enrol` writes them: `agent.json` last, as the commit.
const CREDENTIAL_FILES: [&str; 4] = [SERVER_CA, AGENT_CRT, AGENT_KEY, AGENT_JSON];

/// Enrols with the server at `server` (HTTPS) using a bootstrap token; writes `server-ca.pem`,
/// `agent.crt`, `agent.key` (mode 600) and `agent.json` into `dir` (made mode 700), replacing
/// what is there, each file atomically.
pub async fn enrol(
    server: &str,
    token: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Credentials> {
    use mayfly_server::agent_pki::{pem_sha256, BootstrapClaims, EnrolResponse};
    let claims = BootstrapClaims::decode(token)
        .context("that is not a mayfly bootstrap token (they start with mfya_)")?;
    if claims.expires_at <= chrono::Utc::now() {
        return Err(anyhow!(
            "the bootstrap token expired at {}: make a new one with `mayfly agents bootstrap`",
            claims.expires_at
        ));
    }
    let base = url::Url::parse(server).with_context(|| format!("`{server}` is not a URL"))?;
    if base.scheme() != "https" {
        return Err(anyhow!(
            "the server address must be https://, not `{server}`"
        ));
    }
    // The CA is fetched over a connection not yet trusted, then trusted only if it is the
    // one the token pins.
    let probe = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(20))
        .build()?;
    let ca_pem = probe
        .get(base.join("api/v1/agents/server-ca")?)
        .send()
        .await
        .with_context(|| format!("could not reach {server}"))?
        .error_for_status()
        .context("the server did not hand out its CA (is it a mayfly server with TLS?)")?
        .text()
        .await?;
    let fingerprint = pem_sha256(&ca_pem).context("the server's CA is not a PEM certificate")?;
    if fingerprint != claims.ca_sha256 {
        return Err(anyhow!(
            "the server's CA ({fingerprint}) is not the one the token pins ({}): refusing to enrol; someone may be in between, or the token is for another server",
            claims.ca_sha256
        ));
    }
    let pinned = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .timeout(Duration::from_secs(20))
        .build()?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, claims.agent.clone());
    let csr = params.serialize_request(&key)?.pem()?;
    let response = pinned
        .post(base.join("api/v1/agents/enrol")?)
        .json(&serde_json::json!({ "token": token, "csr_pem": csr }))
        .send()
        .await
        .with_context(|| format!("could not reach {server}"))?;
    match response.status() {
        s if s.is_success() => {}
        reqwest::StatusCode::UNAUTHORIZED => {
            return Err(anyhow!(
                "the server refused the token: it is unknown, already used or expired; make a                  new one with `mayfly agents bootstrap`"
            ))
        }
        s => return Err(anyhow!("enrolment failed: the server answered {s}")),
    }
    let enrolled: EnrolResponse = response.json().await?;
    let host = base.host_str().context("the server address has no host")?;
    let credentials = Credentials {
        agent: enrolled.agent,
        agent_url: format!("https://{host}:{}", enrolled.agent_port),
        cert_sha256: Some(
            pem_sha256(&enrolled.cert_pem)
                .context("the server's answer holds no PEM certificate")?,
        ),
    };
    create_private_dir(dir)?;
    atomic_file::remove_leftovers(dir);
    let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
    for (name, bytes, mode) in [
        (SERVER_CA, ca_pem.into_bytes(), 0o644),
        (AGENT_CRT, enrolled.cert_pem.into_bytes(), 0o644),
        (AGENT_KEY, key_pem.as_bytes().to_vec(), 0o600),
        (AGENT_JSON, serde_json::to_vec_pretty(&credentials)?, 0o644),
    ] {
        let bytes = zeroize::Zeroizing::new(bytes);
        atomic_file::write(&dir.join(name), &bytes, mode, Existing::Replace)?;
    }
    Ok(credentials)
}

/// Makes `dir` (mode 700) if it is missing; its parents get the usual mode, since the agent's
/// state may live beside it and must stay reachable.
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("could not create {}", parent.display()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("could not create {}", dir.display()))
}

/// Reads what `enrol` wrote.
pub fn load_credentials(
    dir: &std::path::Path,
) -> anyhow::Result<(Credentials, mayfly_agent::AgentTls)> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).with_context(|| {
            format!(
                "could not read {} (run `mayfly agent enrol` first)",
                dir.join(name).display()
            )
        })
    };
    let credentials: Credentials = serde_json::from_slice(&read(AGENT_JSON)?)
        .with_context(|| format!("{} is damaged", dir.join(AGENT_JSON).display()))?;
    let key = zeroize::Zeroizing::new(mayfly_server::read_secret_file(&dir.join(AGENT_KEY))?);
    let tls = mayfly_agent::AgentTls {
        server_ca_pem: read(SERVER_CA)?,
        cert_pem: read(AGENT_CRT)?,
        key_pem: key,
    };
    if let Some(expected) = &credentials.cert_sha256 {
        let actual = std::str::from_utf8(&tls.cert_pem)
            .ok()
            .and_then(mayfly_server::agent_pki::pem_sha256);
        if actual.as_ref() != Some(expected) {
            return Err(anyhow!(
                "the credentials in {} do not belong together (an enrolment was interrupted \
                 while replacing them): enrol again with `mayfly agent enrol --force`",
                dir.display()
            ));
        }
    }
    Ok((credentials, tls))
}

async fn run_agent(mut args: RunArgs) -> Result<(), Failure> {
    args.apply_file()?;
    match (args.vm_driver, args.allow_simulated_vms) {
        (VmDriverKind::Simulated, true) => return simulated::run(args).await,
        (VmDriverKind::Simulated, false) => {
            return Err(anyhow!(
                "refusing --vm-driver simulated without --allow-simulated-vms: the simulated \
                 driver runs NO VM and no job step (each job is only reported as run); it is \
                 for load tests of the control plane"
            ))
            .config_err()
        }
        (VmDriverKind::Qemu, true) => {
            return Err(anyhow!(
                "--allow-simulated-vms is only for --vm-driver simulated"
            ))
            .config_err()
        }
        (VmDriverKind::Qemu, false) if args.simulated.given() => {
            return Err(anyhow!(
                "the --simulated-* flags are only for --vm-driver simulated"
            ))
            .config_err()
        }
        (VmDriverKind::Qemu, false) => {}
    }
    let (server_url, tls, enrolled_as) = connection(&args)?;
    run_qemu_agent(args, server_url, tls, enrolled_as).await
}

/// The server's agent URL, the mTLS material and the enrolled name (from --credentials), or
/// a loopback --server-url without them.
fn connection(
    args: &RunArgs,
) -> Result<(String, Option<mayfly_agent::AgentTls>, Option<String>), Failure> {
    Ok(match &args.credentials {
        Some(dir) => {
            let (credentials, tls) = load_credentials(dir).config_err()?;
            let url = args.server_url.clone().unwrap_or(credentials.agent_url);
            (url, Some(tls), Some(credentials.agent))
        }
        None => {
            let url = args
                .server_url
                .clone()
                .context(
                    "give --credentials (after `mayfly agent enrol`) or a loopback --server-url",
                )
                .config_err()?;
            check_loopback(&url).config_err()?;
            (url, None, None)
        }
    })
}

async fn run_qemu_agent(
    args: RunArgs,
    server_url: String,
    tls: Option<mayfly_agent::AgentTls>,
    enrolled_as: Option<String>,
) -> Result<(), Failure> {
    let image_dir = args.images();
    let store = ImageStore::new(image_dir.clone());
    let images: Vec<String> = store
        .list()
        .config_err()?
        .into_iter()
        .map(|listing| listing.digest)
        .collect();
    if images.is_empty() {
        tracing::warn!(store = %image_dir.display(), "no guest image in the store: build one with `mayfly image build`");
    }
    let accel = match args.accel.unwrap_or(AgentAccel::Auto) {
        AgentAccel::Kvm => Accel::Kvm,
        AgentAccel::Tcg => Accel::Tcg,
        AgentAccel::Auto => match images.first() {
            Some(digest) => {
                let kernel = image_dir.join(digest).join(mayfly_vm::image::KERNEL_FILE);
                let probe =
                    mayfly_vm::accel::probe(std::path::Path::new("qemu-system-x86_64"), &kernel)
                        .await;
                tracing::info!(accel = ?probe.accel, reason = probe.reason, "acceleration");
                probe.accel
            }
            None => Accel::Tcg,
        },
    };
    let driver = QemuDriver::new(QemuConfig::new(args.state_root(), store, accel)).config_err()?;
    // Each image is hashed once, here, not when a VM starts (a base disk is about a GB); one
    // that does not match its digest is not offered to the server.
    let mut verified = Vec::new();
    for digest in images {
        match driver.verify_image(&digest).await {
            Ok(()) => verified.push(digest),
            Err(e) => tracing::error!(image = %digest, error = %e, "image refused"),
        }
    }
    let images = verified;
    let id = match (args.id.clone(), enrolled_as) {
        (Some(id), Some(enrolled)) if id != enrolled => {
            return Err(anyhow!(
                "--id {id} differs from the enrolled name {enrolled}: the server would refuse it"
            ))
            .config_err()
        }
        (_, Some(enrolled)) => enrolled,
        (Some(id), None) => id,
        (None, None) => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .context("could not read the host name; give --id")
            .config_err()?,
    };
    let journal = args
        .journal
        .clone()
        .unwrap_or_else(|| args.state_root().join("agent-journal.json"));
    let mut config = AgentConfig::new(id, server_url, Arc::new(driver), journal);
    config.tls = tls;
    config.slots = args.slots();
    config.vcpus = args.vcpus.unwrap_or(2);
    config.memory_mib = args.memory_mib.unwrap_or(4096);
    config.images = images;
    config.lease = Duration::from_secs(args.lease_secs());

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

/// Without credentials (no mTLS), refuses a server URL that leaves this host.
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
            "without --credentials, --server-url must be http:// on a loopback address (127.0.0.1, \
             ::1, localhost); `{server_url}` is not. Enrol with `mayfly agent enrol` for mTLS"
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
