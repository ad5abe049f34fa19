//! What simulated agents run against, all in this process: the GitHub simulator and `mayfly
//! server` over TLS (its certificate its own CA, as agents pin it) with its agent listener, one
//! profile for the simulated image, webhooks flowing, and one installation with one repository
//! to queue jobs in. `bench control-plane` and the simulated agents' tests start the same one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mayfly_core::{Profile, SystemClock};
use mayfly_github::webhook::WebhookSecret;
use mayfly_sim::{AccountType, NewInstallation, NewRepo, SimHandle};
use mayfly_store::Store;
use secrecy::ExposeSecret;

use super::SIMULATED_IMAGE;

/// The simulator and the server, started.
#[derive(Debug)]
pub struct SimulatedStack {
    pub sim: SimHandle,
    pub server: StackServer,
    /// The server's certificate (PEM), to trust and to pin.
    pub cert_pem: String,
    /// `owner/name` of the repository jobs go to (installation `load`, repository `app`).
    pub repo: String,
}

/// The profile jobs labelled `self-hosted, simulated` take: the simulated image, one small VM.
pub fn simulated_profile() -> Profile {
    Profile {
        name: "simulated".into(),
        labels: vec!["self-hosted".into(), "simulated".into()],
        vcpus: 1,
        memory_mib: 512,
        image: SIMULATED_IMAGE.into(),
        max_runtime_secs: 600,
        disk_gib: 1,
        runner_entry: None,
        boot_timeout_secs: 60,
        idle_timeout_secs: 300,
        warm: 0,
        warm_max_age_secs: 3600,
    }
}

impl SimulatedStack {
    /// Starts both in this process on `store`, with files in `dir`, webhooks signed with
    /// `secret`, and the simulator's runner keys as `reuse_runner_keys` says
    /// (`SimConfig::reuse_runner_keys`). The simulated agents' tests start this one.
    #[cfg_attr(not(test), allow(dead_code))]
    pub async fn start(
        store: Arc<dyn Store>,
        dir: &Path,
        secret: &[u8],
        profile: Profile,
        reuse_runner_keys: Option<usize>,
    ) -> anyhow::Result<Self> {
        let parts = Parts::start(dir, secret, reuse_runner_keys).await?;
        let github = mayfly_github::GitHubClient::new(mayfly_github::GitHubClientConfig::new(
            parts.sim.base_url(),
            mayfly_github::AppCredentials::new(
                1,
                mayfly_github::AppPrivateKeyPem::new(
                    parts.app.private_pem.expose_secret().to_owned(),
                ),
            )?,
        ))?;
        let config = mayfly_server::ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.to_owned(),
            tls: Some(parts.tls.clone()),
            webhook: mayfly_server::WebhookConfig {
                secret_files: vec!["unused".into()],
                ..mayfly_server::WebhookConfig::default()
            },
            agent_listen: "127.0.0.1:0".parse()?,
            profiles: vec![profile],
            ..mayfly_server::ServerConfig::default()
        };
        let server = mayfly_server::start(
            &config,
            mayfly_server::Dependencies {
                store,
                clock: Arc::new(SystemClock),
                webhook_secrets: vec![WebhookSecret::new(secret.to_vec())],
                github: Some(Arc::new(github)),
            },
        )
        .await?;
        parts.finish(StackServer::InProcess(server))
    }

    /// Starts the simulator here and the server as `exe server --config <dir>/server.toml` on
    /// `database` (its log in `<dir>/server.log`), then waits until the server is ready.
    pub async fn start_process(
        exe: &Path,
        database: mayfly_server::DatabaseConfig,
        dir: &Path,
        secret: &[u8],
        profile: Profile,
        reuse_runner_keys: Option<usize>,
    ) -> anyhow::Result<Self> {
        let parts = Parts::start(dir, secret, reuse_runner_keys).await?;
        let secret_file = dir.join("webhook.secret");
        let app_key_file = dir.join("app.pem");
        crate::cmd::atomic_file::write_private(&secret_file, secret)?;
        crate::cmd::atomic_file::write_private(
            &app_key_file,
            parts.app.private_pem.expose_secret().as_bytes(),
        )?;
        let port = crate::cmd::quickstart::free_port_hint();
        let config = mayfly_server::ServerConfig {
            listen: ([127, 0, 0, 1], port).into(),
            data_dir: dir.to_owned(),
            tls: Some(parts.tls.clone()),
            webhook: mayfly_server::WebhookConfig {
                secret_files: vec![secret_file],
                ..mayfly_server::WebhookConfig::default()
            },
            agent_listen: ([127, 0, 0, 1], crate::cmd::quickstart::free_port_hint()).into(),
            github: Some(mayfly_server::GitHubConfig {
                api_url: parts.sim.base_url().to_string(),
                app_id: Some(1),
                private_key_file: Some(app_key_file),
                ca_file: None,
            }),
            profiles: vec![profile],
            database,
            ..mayfly_server::ServerConfig::default()
        };
        let server = ServerProcess::start(exe, &config, dir, &parts.cert_pem).await?;
        parts.finish(StackServer::Process(server))
    }

    /// The agent listener's URL, as the agents dial it (the name the certificate holds).
    pub fn agent_url(&self) -> anyhow::Result<String> {
        Ok(format!("https://localhost:{}", self.server.agent_port()?))
    }
}

/// The simulator, the server's certificate and the App's key: what both ways of starting the
/// stack make before the server.
struct Parts {
    sim: SimHandle,
    app: mayfly_sim::AppKeyPair,
    tls: mayfly_server::TlsFiles,
    cert_pem: String,
}

impl Parts {
    async fn start(
        dir: &Path,
        secret: &[u8],
        reuse_runner_keys: Option<usize>,
    ) -> anyhow::Result<Self> {
        let cert =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
        let cert_pem = cert.cert.pem();
        let tls = mayfly_server::TlsFiles {
            cert_file: dir.join("server.crt"),
            key_file: dir.join("server.key"),
            ca_file: None,
        };
        std::fs::write(&tls.cert_file, &cert_pem).context("could not write the certificate")?;
        crate::cmd::atomic_file::write_private(
            &tls.key_file,
            cert.key_pair.serialize_pem().as_bytes(),
        )
        .context("could not write the key")?;

        let app = mayfly_sim::AppKeyPair::generate()?;
        let mut sim_config = mayfly_sim::SimConfig::new(
            "127.0.0.1:0".parse()?,
            app.public_pem.clone(),
            WebhookSecret::new(secret.to_vec()),
        );
        sim_config.webhook_ca_pem = Some(cert_pem.clone());
        sim_config.reuse_runner_keys = reuse_runner_keys;
        let sim = mayfly_sim::Sim::start(sim_config).await?;
        Ok(Self {
            sim,
            app,
            tls,
            cert_pem,
        })
    }

    /// Points the simulator's webhooks at `server` and makes the installation and repository.
    fn finish(self, server: StackServer) -> anyhow::Result<SimulatedStack> {
        let Self { sim, cert_pem, .. } = self;
        sim.control().set_webhook_url(Some(
            format!("{}webhooks/github", server.base_url()).parse()?,
        ));
        let repo = add_repo(&sim, "load")?;
        Ok(SimulatedStack {
            sim,
            server,
            cert_pem,
            repo,
        })
    }
}

/// A new installation (organisation `account`) with one private repository `app`; its name.
fn add_repo(sim: &SimHandle, account: &str) -> anyhow::Result<String> {
    let control = sim.control();
    let inst = control
        .create_installation(NewInstallation {
            account: account.into(),
            account_type: AccountType::Organization,
            sender: None,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(control
        .create_repo(NewRepo {
            installation_id: inst.id,
            name: "app".into(),
            private: true,
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .full_name)
}

impl SimulatedStack {
    /// `n` more installations (`load-1`, …), a repository each, for load that would exceed
    /// what GitHub lets one installation do in an hour (10,000 runner registrations); their
    /// repositories, the first one's first.
    pub fn repos(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let mut repos = vec![self.repo.clone()];
        for i in 1..n {
            repos.push(add_repo(&self.sim, &format!("load-{i}"))?);
        }
        Ok(repos)
    }
}

/// Where the stack's server runs.
#[derive(Debug)]
pub enum StackServer {
    /// In this process (the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    InProcess(mayfly_server::ServerHandle),
    /// A `mayfly server` child process (the bench: its memory is its own).
    Process(ServerProcess),
}

impl StackServer {
    /// `https://127.0.0.1:port/`.
    pub fn base_url(&self) -> String {
        match self {
            Self::InProcess(server) => server.base_url(),
            Self::Process(server) => format!("https://127.0.0.1:{}/", server.port),
        }
    }

    /// The agent listener's port.
    pub fn agent_port(&self) -> anyhow::Result<u16> {
        match self {
            Self::InProcess(server) => Ok(server
                .agent_addr()
                .context("the server has no agent listener")?
                .port()),
            Self::Process(server) => Ok(server.agent_port),
        }
    }

    /// The server process's peak resident set (VmHWM), in MiB; `None` in process (it is not
    /// the server's alone) or where /proc cannot tell.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        match self {
            Self::InProcess(_) => None,
            Self::Process(server) => peak_rss_mib(&format!("/proc/{}/status", server.pid?)),
        }
    }

    /// Stops the server: in process as `ServerHandle::shutdown`, a child with SIGTERM (then
    /// SIGKILL after 30 s).
    pub async fn shutdown(self) {
        match self {
            Self::InProcess(server) => server.shutdown().await,
            Self::Process(mut server) => {
                crate::cmd::chaos::cluster::term(&mut server.child, Duration::from_secs(30)).await;
            }
        }
    }
}

/// A `mayfly server` child process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<tokio::process::Child>,
    pid: Option<u32>,
    port: u16,
    agent_port: u16,
}

impl ServerProcess {
    async fn start(
        exe: &Path,
        config: &mayfly_server::ServerConfig,
        dir: &Path,
        cert_pem: &str,
    ) -> anyhow::Result<Self> {
        let config_file = dir.join("server.toml");
        std::fs::write(&config_file, toml::to_string(config)?)
            .with_context(|| format!("could not write {}", config_file.display()))?;
        let log = dir.join("server.log");
        // For profiling only: `MAYFLY_BENCH_SERVER_WRAPPER="heaptrack -o /tmp/server"` runs the
        // server under that command (its RSS is then the wrapper's, not the server's).
        let wrapper = std::env::var("MAYFLY_BENCH_SERVER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = tokio::process::Command::new(program);
                command.args(words).arg(exe);
                command
            }
            None => tokio::process::Command::new(exe),
        };
        let mut child = command
            .arg("server")
            .arg("--config")
            .arg(&config_file)
            .env("MAYFLY_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("could not start {} server", exe.display()))?;
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes())?)
            .timeout(Duration::from_secs(2))
            .build()?;
        let url = format!("https://localhost:{}/readyz", config.listen.port());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                anyhow::bail!("mayfly server exited ({status}):\n{log}");
            }
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("mayfly server was not ready in 60 s; see {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            port: config.listen.port(),
            agent_port: config.agent_listen.port(),
        })
    }
}

/// Peak resident set (VmHWM) from a `/proc/<pid>/status` file, in MiB.
pub fn peak_rss_mib(status_file: &str) -> Option<f64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}
