//! `mayfly server`: loads the configuration (defaults → TOML file → `MAYFLY_*` environment →
//! flags), opens the store and runs until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use mayfly_core::SystemClock;
use mayfly_github::webhook::WebhookSecret;
use mayfly_server::github_app::StoredApp;
use mayfly_server::{read_secret_file, Dependencies, ServerConfig, TlsFiles};
use mayfly_store::{PgStore, SqliteStore, Store};

use crate::exit::{ConfigContext, Failure, RuntimeContext};

/// Flags of `mayfly server`. Each overrides the same key of the configuration file.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML configuration file (see mayfly.example.toml). Keys can also be set with MAYFLY_*
    /// variables, nested keys joined by `__` (e.g. MAYFLY_WEBHOOK__MAX_BODY_BYTES=65536).
    #[arg(long, short, env = "MAYFLY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address for the HTTPS listener (webhooks, health) [default: 127.0.0.1:8443].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Directory for the database and other state [default: /var/lib/mayfly].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain for the listener; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the listener; needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// File holding a webhook secret (mode 600). Repeat during a rotation: deliveries signed
    /// with any of them are accepted.
    #[arg(long = "webhook-secret-file", value_name = "FILE")]
    webhook_secret_files: Vec<PathBuf>,
    /// Serve plain HTTP instead of TLS. Development only: allowed on loopback addresses only,
    /// and logged as a warning.
    #[arg(long)]
    insecure_dev: bool,
}

const CONFIG_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "tls",
    "insecure_dev",
    "webhook",
    "agent_listen",
    "github",
    "profiles",
    "reconcile_interval_secs",
    "agent_lease_secs",
    "runner_entry",
    "server_id",
    "database",
    "retention",
    "refusals",
    "security_txt",
    "dashboard",
];

/// The configuration from defaults, the TOML file and `MAYFLY_*` variables, not yet validated
/// (flags are applied by the caller).
pub fn load_config(path: Option<&std::path::Path>) -> Result<ServerConfig, Failure> {
    let mut figment = Figment::from(Serialized::defaults(ServerConfig::default()));
    if let Some(path) = path {
        if !path.is_file() {
            return Err(Failure::Config(anyhow::anyhow!(
                "the configuration file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file(path));
    }
    // Only keys of the server configuration: other MAYFLY_* variables belong to other tools.
    figment = figment.merge(Env::prefixed("MAYFLY_").split("__").filter(|key| {
        let key = key.as_str().to_ascii_lowercase();
        CONFIG_KEYS
            .iter()
            // `split("__")` has already turned `A__B` into `a.b`.
            .any(|top| key == *top || key.starts_with(&format!("{top}.")))
    }));
    let mut config: ServerConfig = figment
        .extract()
        .context("the server configuration is not valid")
        .config_err()?;
    if let Some(file) = std::env::var_os("MAYFLY_DB_KEY_FILE") {
        config.database.key_file = Some(PathBuf::from(file));
    }
    Ok(config)
}

impl ServerArgs {
    fn load(&self) -> Result<ServerConfig, Failure> {
        let mut config = load_config(self.config.as_deref())?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let (Some(cert_file), Some(key_file)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(TlsFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                ca_file: None,
            });
        }
        if !self.webhook_secret_files.is_empty() {
            config.webhook.secret_files = self.webhook_secret_files.clone();
        }
        config.insecure_dev |= self.insecure_dev;
        config.validate().config_err()?;
        Ok(config)
    }
}

pub async fn run(args: ServerArgs) -> Result<(), Failure> {
    let config = args.load()?;
    // Secret files first: a bad one is refused before the database is touched.
    let mut secrets = config
        .webhook
        .secret_files
        .iter()
        .map(|path| read_secret_file(path).map(WebhookSecret::new))
        .collect::<Result<Vec<_>, _>>()
        .config_err()?;
    crate::cmd::atomic_file::create_private_dir_all(&config.data_dir).config_err()?;
    let store = open_store(&config).await?;
    let stored = stored_app(&config, store.as_ref()).await?;
    if secrets.is_empty() {
        // `validate` let this through only for a stored App, which `stored_app` found.
        secrets.extend(stored.as_ref().map(StoredApp::webhook_secret));
    }
    let github = match &config.github {
        Some(github) if !config.uses_stored_app() || stored.is_some() => Some(Arc::new(
            github_client(github, stored.as_ref()).config_err()?,
        )),
        Some(_) => {
            tracing::warn!(
                "no GitHub App yet: create it with `mayfly github app create`, then restart; \
                 until then webhooks are refused and nothing is scheduled"
            );
            None
        }
        None => {
            tracing::warn!(
                "no [github] App configured: deliveries are recorded, nothing is scheduled"
            );
            None
        }
    };
    let deps = Dependencies {
        store: store.clone(),
        clock: Arc::new(SystemClock),
        webhook_secrets: secrets,
        github,
    };
    let server = mayfly_server::start(&config, deps).await.config_err()?;
    tracing::info!(url = %server.base_url(), "mayfly server listening");
    shutdown_signal().await.runtime_err()?;
    tracing::info!("shutting down");
    server.shutdown().await;
    store.close().await;
    Ok(())
}

/// The App `mayfly github app create` sealed into the store, when the configuration names no
/// App of its own (`None` before it is created: the server then runs without GitHub).
async fn stored_app(
    config: &ServerConfig,
    store: &dyn Store,
) -> Result<Option<StoredApp>, Failure> {
    if !config.uses_stored_app() {
        return Ok(None);
    }
    let sealer = mayfly_server::sealer(config).config_err()?;
    let app = StoredApp::load(&sealer, store).await.config_err()?;
    if let Some(app) = &app {
        tracing::info!(app_id = app.app_id, slug = %app.slug, "using the GitHub App stored in the database");
    }
    Ok(app)
}

/// The configured store: PostgreSQL when `[database] postgres_url` is set, else the encrypted
/// SQLite file in the data directory.
pub async fn open_store(config: &ServerConfig) -> Result<Arc<dyn Store>, Failure> {
    if let Some(url) = &config.database.postgres_url {
        let password = match &config.database.postgres_password_file {
            Some(file) => {
                let bytes = zeroize::Zeroizing::new(read_secret_file(file).config_err()?);
                Some(zeroize::Zeroizing::new(
                    String::from_utf8(bytes.to_vec())
                        .context("the PostgreSQL password file is not text")
                        .config_err()?,
                ))
            }
            None => None,
        };
        let store = PgStore::connect_with_password(url, password.as_deref().map(String::as_str))
            .await
            .config_err()?;
        return Ok(Arc::new(store));
    }
    let key = config.database.key(&config.database_path()).config_err()?;
    let store = SqliteStore::open(&config.database_path(), &key)
        .await
        .config_err()?;
    Ok(Arc::new(store))
}

/// The GitHub App client from its configuration (reads the private key file, mode 600), or
/// from the stored App when the configuration names none.
pub fn github_client(
    config: &mayfly_server::GitHubConfig,
    stored: Option<&StoredApp>,
) -> anyhow::Result<mayfly_github::GitHubClient> {
    let api_url = url::Url::parse(&config.api_url)
        .with_context(|| format!("github.api_url `{}` is not a URL", config.api_url))?;
    let credentials = match (config.app_id, &config.private_key_file, stored) {
        (Some(app_id), Some(file), _) => {
            let key = read_secret_file(file)?;
            let key = String::from_utf8(key).context("the App private key is not text (PEM)")?;
            mayfly_github::AppCredentials::new(app_id, mayfly_github::AppPrivateKeyPem::new(key))?
        }
        (_, _, Some(app)) => mayfly_github::AppCredentials::new(app.app_id, app.private_key())?,
        _ => anyhow::bail!("[github] needs app_id and private_key_file, or a stored App"),
    };
    let mut client_config = mayfly_github::GitHubClientConfig::new(api_url, credentials);
    if let Some(ca) = &config.ca_file {
        client_config.extra_root_pem =
            Some(std::fs::read(ca).with_context(|| format!("could not read {}", ca.display()))?);
    }
    Ok(mayfly_github::GitHubClient::new(client_config)?)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
