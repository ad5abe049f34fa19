//! The processes of a chaos run, each a real `mayfly` process so that `kill -9` is real: the
//! simulator (in the internet stand-in, where guests reach it), one or more servers
//! (`--insecure-dev` on loopback, each with its own config file), and one agent per server
//! dialling it through a cuttable forwarder. Logs go to `<data-dir>/logs/`, appended across
//! restarts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tokio::process::{Child, Command};

use super::relay::Forwarder;

/// One `mayfly server` process and how to start it again.
#[derive(Debug)]
pub struct ServerProc {
    pub name: String,
    pub config: PathBuf,
    pub port: u16,
    pub agent_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// One `mayfly agent` process, its state root and its link to its server.
#[derive(Debug)]
pub struct AgentProc {
    pub name: String,
    pub state_root: PathBuf,
    pub link: Forwarder,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

#[derive(Debug)]
pub struct Cluster {
    exe: PathBuf,
    pub servers: Vec<ServerProc>,
    pub agents: Vec<AgentProc>,
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("could not open {}", path.display()))
}

/// Everything the servers share, for their config files.
#[derive(Debug)]
pub struct ServerSpec<'a> {
    pub root: &'a Path,
    pub sim_dir: &'a Path,
    pub sim_base: &'a str,
    pub digest: &'a str,
    pub postgres_url: Option<&'a str>,
    pub lease_secs: u64,
    pub reconcile_secs: u64,
}

impl Cluster {
    pub fn new(exe: PathBuf) -> Self {
        Self {
            exe,
            servers: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// Writes server `i`'s config file (ports chosen now, kept across restarts).
    pub fn add_server(&mut self, i: usize, spec: &ServerSpec<'_>) -> anyhow::Result<()> {
        let name = format!("server-{i}");
        let dir = spec.root.join("server").join(&name);
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .recursive(true)
            .create(&dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let (port, agent_port) = (
            super::super::quickstart::free_port_hint(),
            super::super::quickstart::free_port_hint(),
        );
        let database = match spec.postgres_url {
            Some(url) => format!(
                "postgres_url = \"{url}\"\nmaster_key_file = \"{}\"",
                spec.root.join("server/master.key").display()
            ),
            None => {
                // The key file is made here, the database by the server.
                super::super::quickstart::quickstart_db_key(&dir).map_err(|e| anyhow!("{e:?}"))?;
                format!("key_file = \"{}\"", dir.join("db.key").display())
            }
        };
        let config = format!(
            r#"# Written by `mayfly chaos`.
listen = "127.0.0.1:{port}"
data_dir = "{data}"
insecure_dev = true
agent_listen = "127.0.0.1:{agent_port}"
server_id = "chaos-{name}"
reconcile_interval_secs = {reconcile}
agent_lease_secs = {lease}

[webhook]
secret_files = ["{sim}/{secret}"]

[database]
{database}

[github]
api_url = "{sim_base}"
app_id = 1
private_key_file = "{sim}/{key}"

[[profiles]]
name = "{profile}"
labels = ["self-hosted", "linux", "x64"]
vcpus = 1
memory_mib = 512
image = "{digest}"
max_runtime_secs = 600
boot_timeout_secs = 180
idle_timeout_secs = 300
"#,
            data = dir.display(),
            reconcile = spec.reconcile_secs,
            lease = spec.lease_secs,
            sim = spec.sim_dir.display(),
            secret = super::super::sim::WEBHOOK_SECRET,
            key = super::super::sim::APP_PRIVATE_KEY,
            sim_base = spec.sim_base,
            profile = super::super::quickstart::PROFILE,
            digest = spec.digest,
        );
        let config_path = dir.join("mayfly.toml");
        std::fs::write(&config_path, config)
            .with_context(|| format!("could not write {}", config_path.display()))?;
        self.servers.push(ServerProc {
            log: spec.root.join(format!("logs/{name}.log")),
            name,
            config: config_path,
            port,
            agent_port,
            child: None,
        });
        Ok(())
    }

    /// Starts (or restarts) server `i` and waits until it is ready.
    pub async fn start_server(&mut self, i: usize) -> anyhow::Result<()> {
        let server = &mut self.servers[i];
        let child = Command::new(&self.exe)
            .arg("server")
            .arg("--config")
            .arg(&server.config)
            .env("MAYFLY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&server.log)?)
            .kill_on_drop(true)
            .spawn()
            .context("could not start mayfly server")?;
        server.child = Some(child);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("http://127.0.0.1:{}/readyz", server.port);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(Ok(Some(status))) = server.child.as_mut().map(Child::try_wait) {
                return Err(anyhow!(
                    "{} exited ({status}); see {}",
                    server.name,
                    server.log.display()
                ));
            }
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(anyhow!("{} did not become ready in 90 s", server.name));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Adds agent `i`, dialling server `i` through its own forwarder.
    pub async fn add_agent(
        &mut self,
        i: usize,
        root: &Path,
        images: &Path,
        slots: u32,
        lease_secs: u64,
    ) -> anyhow::Result<()> {
        let name = format!("chaos-agent-{i}");
        let server = &self.servers[i % self.servers.len()];
        let link = Forwarder::start(
            "127.0.0.1:0".parse()?,
            vec![SocketAddr::from(([127, 0, 0, 1], server.agent_port))],
        )
        .await?;
        let state_root = root.join(format!("state-{i}"));
        let args = vec![
            "agent".to_owned(),
            "--server-url".to_owned(),
            format!("http://{}", link.addr),
            "--id".to_owned(),
            name.clone(),
            "--slots".to_owned(),
            slots.to_string(),
            "--vcpus".to_owned(),
            slots.to_string(),
            "--memory-mib".to_owned(),
            (u64::from(slots) * 1024).to_string(),
            "--state-root".to_owned(),
            state_root.display().to_string(),
            "--images".to_owned(),
            images.display().to_string(),
            "--lease-secs".to_owned(),
            lease_secs.to_string(),
        ];
        self.agents.push(AgentProc {
            log: root.join(format!("logs/{name}.log")),
            name,
            state_root,
            link,
            args,
            child: None,
        });
        Ok(())
    }

    pub fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let agent = &mut self.agents[i];
        let child = Command::new(&self.exe)
            .args(&agent.args)
            .env("MAYFLY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&agent.log)?)
            .kill_on_drop(true)
            .spawn()
            .context("could not start mayfly agent")?;
        agent.child = Some(child);
        Ok(())
    }

    /// `kill -9` of server `i`; returns its pid.
    pub async fn kill_server(&mut self, i: usize) -> Option<u32> {
        kill9(&mut self.servers[i].child).await
    }

    /// `kill -9` of agent `i`; returns its pid.
    pub async fn kill_agent(&mut self, i: usize) -> Option<u32> {
        kill9(&mut self.agents[i].child).await
    }

    /// A process that exited on its own (not by a fault) is a finding.
    pub fn exited(&mut self) -> Vec<String> {
        let mut gone = Vec::new();
        for s in &mut self.servers {
            if let Some(Ok(Some(status))) = s.child.as_mut().map(Child::try_wait) {
                gone.push(format!("{} exited by itself ({status})", s.name));
                s.child = None;
            }
        }
        for a in &mut self.agents {
            if let Some(Ok(Some(status))) = a.child.as_mut().map(Child::try_wait) {
                gone.push(format!("{} exited by itself ({status})", a.name));
                a.child = None;
            }
        }
        gone
    }

    /// SIGTERM to the agents: they destroy their VMs and report before they exit.
    pub async fn stop_agents(&mut self) {
        for agent in &mut self.agents {
            term(&mut agent.child, Duration::from_secs(60)).await;
        }
    }

    pub async fn stop_servers(&mut self) {
        for server in &mut self.servers {
            term(&mut server.child, Duration::from_secs(30)).await;
        }
    }
}

async fn kill9(child: &mut Option<Child>) -> Option<u32> {
    let mut c = child.take()?;
    let pid = c.id();
    let _ = c.start_kill();
    let _ = c.wait().await;
    pid
}

pub(crate) async fn term(child: &mut Option<Child>, grace: Duration) {
    let Some(mut c) = child.take() else { return };
    if let Some(pid) = c.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(grace, c.wait()).await.is_err() {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
}
