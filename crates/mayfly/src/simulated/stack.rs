//! What simulated agents run against, all in this process: the GitHub simulator and `mayfly
//! server` over TLS (its certificate its own CA, as agents pin it) with its agent listener, one
//! profile for the simulated image, webhooks flowing, and one installation with one repository
//! to queue jobs in. `bench control-plane` and the simulated agents' tests start the same one.

use std::path::Path;
use std::sync::Arc;

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
    pub server: mayfly_server::ServerHandle,
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
    }
}

impl SimulatedStack {
    /// Starts both on `store`, with files in `dir`, webhooks signed with `secret`, and the
    /// simulator's runner keys as `reuse_runner_keys` says (`SimConfig::reuse_runner_keys`).
    pub async fn start(
        store: Arc<dyn Store>,
        dir: &Path,
        secret: &[u8],
        profile: Profile,
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
        std::fs::write(&tls.key_file, cert.key_pair.serialize_pem())
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
        let github = mayfly_github::GitHubClient::new(mayfly_github::GitHubClientConfig::new(
            sim.base_url(),
            mayfly_github::AppCredentials::new(
                1,
                mayfly_github::AppPrivateKeyPem::new(app.private_pem.expose_secret().to_owned()),
            )?,
        ))?;
        let config = mayfly_server::ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.to_owned(),
            tls: Some(tls),
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
        sim.control().set_webhook_url(Some(
            format!("{}webhooks/github", server.base_url()).parse()?,
        ));
        let control = sim.control();
        let inst = control
            .create_installation(NewInstallation {
                account: "load".into(),
                account_type: AccountType::Organization,
                sender: None,
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let repo = control
            .create_repo(NewRepo {
                installation_id: inst.id,
                name: "app".into(),
                private: true,
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .full_name;
        Ok(Self {
            sim,
            server,
            cert_pem,
            repo,
        })
    }

    /// The agent listener's URL, as the agents dial it (the name the certificate holds).
    pub fn agent_url(&self) -> anyhow::Result<String> {
        let port = self
            .server
            .agent_addr()
            .context("the server has no agent listener")?
            .port();
        Ok(format!("https://localhost:{port}"))
    }
}
