//! `mayfly init server|agent`: the first step on a new host. `init server` writes the server's
//! configuration and makes its keys (database key, master key of sealed values, a CA and a TLS
//! certificate unless one is given), each key mode 600 and owned by the service's user;
//! `init agent` enrols the host and writes the agent's configuration. Neither replaces
//! anything: they check every file first and refuse if one exists, and a failure half-way
//! removes what the run wrote.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};

use super::atomic_file::{self, Existing};
use crate::exit::{ConfigContext, Failure, RuntimeContext};

#[derive(Debug, Subcommand)]
pub enum InitCommand {
    /// Set up a server: /etc/mayfly/mayfly.toml, the database key, the master key of sealed
    /// values and (unless --tls-cert is given) a CA with a TLS certificate. Then create the
    /// GitHub App with `mayfly github app create` and start the server.
    Server(ServerInit),
    /// Set up an agent host: enrol with the server (a one-time token from `mayfly agents
    /// bootstrap`) and write /etc/mayfly/agent.toml. Then start the agent.
    Agent(AgentInit),
}

#[derive(Debug, Args)]
pub struct ServerInit {
    /// Where the configuration, keys and certificates go.
    #[arg(long, value_name = "DIR", default_value = "/etc/mayfly")]
    config_dir: PathBuf,
    /// The server's state (the database, the agents' CA).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/mayfly")]
    data_dir: PathBuf,
    /// The HTTPS listener (webhooks, API, dashboard).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// The agents' gRPC listener (mTLS).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8444")]
    agent_listen: SocketAddr,
    /// A name the certificate is for (DNS name or IP address); repeat for several
    /// [default: this host's name, localhost, 127.0.0.1].
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Use this certificate chain (PEM) instead of making a CA; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// GitHub's API: https://api.github.com/ or a GHES https://HOST/api/v3/.
    #[arg(long, value_name = "URL", default_value = "https://api.github.com/")]
    github_api_url: url::Url,
    /// The user the service runs as, who must read the keys [default: `mayfly` if that user
    /// exists and this runs as root, else the current user].
    #[arg(long, value_name = "USER")]
    user: Option<String>,
}

#[derive(Debug, Args)]
pub struct AgentInit {
    /// The server's HTTPS address, e.g. https://ci.example.com:8443.
    #[arg(long, value_name = "URL")]
    server: String,
    /// A file holding the one-time bootstrap token (`mayfly agents bootstrap` on the server).
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// Where agent.toml goes.
    #[arg(long, value_name = "DIR", default_value = "/etc/mayfly")]
    config_dir: PathBuf,
    /// Where the agent's key, certificate and pinned CA go (under the agent unit's
    /// StateDirectory, apart from the server's /var/lib/mayfly).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/mayfly-agent/credentials"
    )]
    credentials: PathBuf,
    /// How many VMs may run at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// vCPUs this host offers.
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// Memory in MiB this host offers.
    #[arg(long, default_value_t = 4096)]
    memory_mib: u64,
    /// State directory of the VMs.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/mayfly-agent/state"
    )]
    state_root: PathBuf,
    /// Image store.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/mayfly-agent/images"
    )]
    images: PathBuf,
}

pub async fn run(command: InitCommand) -> Result<(), Failure> {
    match command {
        InitCommand::Server(args) => init_server(args),
        InitCommand::Agent(args) => init_agent(args).await,
    }
}

/// Files one run writes, removed again if the run fails before the end.
struct Written {
    files: Vec<PathBuf>,
    done: bool,
}

impl Written {
    fn new() -> Self {
        Self {
            files: Vec::new(),
            done: false,
        }
    }

    fn write(&mut self, path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
        atomic_file::write(path, bytes, mode, Existing::Refuse)?;
        self.files.push(path.to_owned());
        Ok(())
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if !self.done {
            for file in self.files.iter().rev() {
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

/// Refuses when any of `paths` exists, naming them all.
fn refuse_existing(paths: &[&Path], what: &str) -> Result<(), Failure> {
    let existing: Vec<String> = paths
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    Err(anyhow!(
        "{what} is already set up here ({} exist{}); `mayfly init` never replaces keys or \
         configuration: remove them first if you really mean to start over",
        existing.join(", "),
        if existing.len() == 1 { "s" } else { "" }
    ))
    .config_err()
}

/// The uid and gid of the service's user: `--user`, or `mayfly` when it exists and this runs
/// as root; `None`: leave files to the current user.
fn service_owner(
    user: Option<&str>,
) -> anyhow::Result<Option<(nix::unistd::Uid, nix::unistd::Gid, String)>> {
    let lookup = |name: &str| nix::unistd::User::from_name(name).ok().flatten();
    match user {
        Some(name) => {
            let user = lookup(name).ok_or_else(|| anyhow!("there is no user {name}"))?;
            Ok(Some((user.uid, user.gid, user.name)))
        }
        None if nix::unistd::geteuid().is_root() => {
            Ok(lookup("mayfly").map(|u| (u.uid, u.gid, u.name)))
        }
        None => Ok(None),
    }
}

fn init_server(args: ServerInit) -> Result<(), Failure> {
    let dir = &args.config_dir;
    let config_file = dir.join("mayfly.toml");
    let db_key = dir.join("db.key");
    let master_key = dir.join("master.key");
    let tls_dir = dir.join("tls");
    let (ca, cert, key) = (
        tls_dir.join("ca.pem"),
        tls_dir.join("server.crt"),
        tls_dir.join("server.key"),
    );
    let mut targets = vec![
        config_file.as_path(),
        db_key.as_path(),
        master_key.as_path(),
    ];
    if args.tls_cert.is_none() {
        targets.extend([ca.as_path(), cert.as_path(), key.as_path()]);
    }
    refuse_existing(&targets, "a mayfly server")?;
    for given in [&args.tls_cert, &args.tls_key].into_iter().flatten() {
        if !given.is_file() {
            return Err(anyhow!("{} does not exist", given.display())).config_err();
        }
    }
    let owner = service_owner(args.user.as_deref()).config_err()?;

    let mut written = Written::new();
    let result = (|| -> anyhow::Result<()> {
        atomic_file::create_private_dir_all(dir)?;
        written.write(
            &db_key,
            mayfly_store::DbKey::random().to_hex().as_bytes(),
            0o600,
        )?;
        // Checked absent above; written mode 600 through a temporary file.
        mayfly_store::MasterKey::random().write(&master_key)?;
        written.files.push(master_key.clone());
        let (cert_file, key_file, ca_file) = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone(), None),
            _ => {
                let names = if args.names.is_empty() {
                    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|h| h.trim().to_owned())
                        .unwrap_or_default();
                    [host.as_str(), "localhost", "127.0.0.1"]
                        .into_iter()
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect()
                } else {
                    args.names.clone()
                };
                let issued = super::local_ca::LocalCa::issue(&tls_dir, &names, "mayfly")?;
                written.files.extend([
                    issued.server_key.clone(),
                    issued.server_cert.clone(),
                    issued.ca_cert.clone(),
                ]);
                (issued.server_cert, issued.server_key, Some(issued.ca_cert))
            }
        };
        let config = server_config(
            &args,
            &cert_file,
            &key_file,
            ca_file.as_deref(),
            &db_key,
            &master_key,
        );
        written.write(&config_file, config.as_bytes(), 0o640)?;
        if let Some((uid, gid, _)) = &owner {
            let chown = |p: &Path| {
                nix::unistd::chown(p, Some(*uid), Some(*gid)).with_context(|| {
                    format!("could not give {} to the service's user", p.display())
                })
            };
            for file in &written.files {
                chown(file)?;
            }
            chown(dir)?;
            if tls_dir.exists() {
                chown(&tls_dir)?;
            }
        }
        Ok(())
    })();
    result.config_err()?;
    written.done = true;
    print_server_next(&args, &config_file, owner.as_ref().map(|o| o.2.as_str()));
    Ok(())
}

fn server_config(
    args: &ServerInit,
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    db_key: &Path,
    master_key: &Path,
) -> String {
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let ca_line = ca
        .map(|ca| format!("ca_file = {}\n", q(ca)))
        .unwrap_or_default();
    format!(
        r#"# Written by `mayfly init server`. Every key is described in
# /usr/share/doc/mayfly/mayfly.example.toml (mayfly.example.toml in the sources).
listen = "{listen}"
agent_listen = "{agent_listen}"
data_dir = {data_dir}

[tls]
cert_file = {cert}
key_file = {key}
{ca_line}
[database]
key_file = {db_key}
master_key_file = {master_key}
# For several servers, one PostgreSQL database:
# postgres_url = "postgres://mayfly@db.example.com/mayfly"

# The GitHub App. `mayfly github app create --config <this file> --url https://<this host>:{port}`
# makes it and seals its id, key and secrets into the database; then restart the server.
# Files instead: app_id = 123 and private_key_file = "/etc/mayfly/app.pem" here, and
# [webhook] secret_files = ["/etc/mayfly/webhook.secret"].
[github]
api_url = "{api}"

# Hardware profiles: a job whose `runs-on` names one gets a VM of that kind.
# [[profiles]]
# name = "mayfly-linux-2cpu"
# labels = ["self-hosted", "linux", "mayfly-linux-2cpu"]
# vcpus = 2
# memory_mib = 4096
# image = "<digest from `mayfly image list`>"
"#,
        listen = args.listen,
        agent_listen = args.agent_listen,
        data_dir = q(&args.data_dir),
        cert = q(cert),
        key = q(key),
        db_key = q(db_key),
        master_key = q(master_key),
        port = args.listen.port(),
        api = args.github_api_url,
    )
}

#[allow(clippy::print_stdout)] // the next steps are the command's output
fn print_server_next(args: &ServerInit, config: &Path, owner: Option<&str>) {
    println!(
        "Wrote {} and the server's keys (mode 600{}).",
        config.display(),
        owner.map(|o| format!(", owned by {o}")).unwrap_or_default()
    );
    println!("Next:");
    println!(
        "  1. mayfly github app create --config {} --url https://<this host>:{}",
        config.display(),
        args.listen.port()
    );
    println!(
        "  2. systemctl enable --now mayfly-server   (or: mayfly server --config {})",
        config.display()
    );
    println!(
        "  3. on each VM host: mayfly agents bootstrap --config {} (here), then",
        config.display()
    );
    println!(
        "     mayfly init agent --server https://<this host>:{} --token-file <file> (there)",
        args.listen.port()
    );
}

async fn init_agent(args: AgentInit) -> Result<(), Failure> {
    let config_file = args.config_dir.join("agent.toml");
    refuse_existing(&[config_file.as_path()], "a mayfly agent")?;
    let token = zeroize::Zeroizing::new(
        std::fs::read_to_string(&args.token_file)
            .with_context(|| format!("could not read {}", args.token_file.display()))
            .config_err()?,
    );
    // The agent's own checks: an existing enrolment is refused before the token is spent.
    if let Some(previous) = super::agent::existing_enrolment(&args.credentials) {
        return Err(anyhow!(
            "{} already holds {}; the token was not used (`mayfly agent enrol --force` \
             replaces them)",
            args.credentials.display(),
            previous.describe()
        ))
        .config_err();
    }
    let file = super::agent::AgentFile {
        credentials: Some(args.credentials.clone()),
        slots: Some(args.slots),
        vcpus: Some(args.vcpus),
        memory_mib: Some(args.memory_mib),
        state_root: Some(args.state_root.clone()),
        images: Some(args.images.clone()),
        ..Default::default()
    };
    let text = toml::to_string(&file)
        .context("the agent configuration")
        .config_err()?;
    let credentials = super::agent::enrol(&args.server, token.trim(), &args.credentials)
        .await
        .runtime_err()?;
    atomic_file::create_private_dir_all(&args.config_dir).config_err()?;
    let text = format!(
        "# Written by `mayfly init agent` for {} (enrolled with {}).\n# Flags of `mayfly agent` override these keys.\n{text}",
        credentials.agent, args.server
    );
    atomic_file::write(&config_file, text.as_bytes(), 0o644, Existing::Refuse).config_err()?;
    print_agent_next(&credentials.agent, &config_file);
    Ok(())
}

#[allow(clippy::print_stdout)] // the next steps are the command's output
fn print_agent_next(agent: &str, config: &Path) {
    println!("Enrolled as {agent}; wrote {}.", config.display());
    println!("Next: build or copy a guest image (mayfly image build), then");
    println!(
        "  systemctl enable --now mayfly-agent   (or: mayfly agent --config {})",
        config.display()
    );
}
