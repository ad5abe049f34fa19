//! `mayfly sim`: runs the GitHub simulator as its own process. On first start it creates, in its
//! data directory, what GitHub would hand a provider: the App's private key, a webhook secret and
//! the App's OAuth client secret (all mode 600), which `mayfly server` is then pointed at; they
//! are kept across restarts. The simulated repositories' git
//! repositories live in its `git/` subdirectory, made afresh at every start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use mayfly_github::webhook::WebhookSecret;
use mayfly_github::OAuthClientSecret;
use mayfly_server::read_secret_file;
use mayfly_sim::{random_client_secret, AppKeyPair, Sim, SimConfig, TlsFiles};
use rand::RngCore;
use secrecy::ExposeSecret;
use url::Url;

use crate::cmd::atomic_file::{self, write_private, Existing};
use crate::cmd::server::shutdown_signal;
use crate::exit::{ConfigContext, Failure, RuntimeContext};

/// Flags of `mayfly sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on. Keep it on loopback: the control API under /_sim has no auth.
    #[arg(long, default_value = "127.0.0.1:9000", value_name = "ADDR")]
    listen: SocketAddr,
    /// Directory for the App key pair and webhook secret, created with them on first start; and
    /// for the simulated repositories' git repositories (`git/`, emptied at every start).
    #[arg(long, default_value = "mayfly-sim", value_name = "DIR")]
    data_dir: PathBuf,
    /// Where to deliver signed webhooks, e.g. https://127.0.0.1:8443/webhooks/github.
    /// Without it, deliveries are logged as failed (and can be redelivered later).
    #[arg(long, value_name = "URL")]
    webhook_url: Option<Url>,
    /// Extra root certificate (PEM) to trust when delivering to an https webhook URL.
    #[arg(long, value_name = "FILE")]
    webhook_ca_file: Option<PathBuf>,
    /// PEM certificate chain to serve HTTPS; needs --tls-key. Without both, plain HTTP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key to serve HTTPS; needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The simulated App's id: the `iss` its JWTs must carry.
    #[arg(long, default_value_t = 1, value_name = "ID")]
    app_id: u64,
    /// Lifetime of installation tokens in seconds (GitHub: 3600).
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    token_ttl_secs: u64,
    /// Seconds a runner running a job may go without renewing it before GitHub fails the job
    /// ("lost communication") and removes the runner (GitHub: about 600).
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    runner_timeout_secs: u64,
    /// A callback URL of the App's OAuth web flow (GitHub's "Callback URL"; repeat for up to
    /// 10, the first is the default redirect_uri), e.g.
    /// --oauth-callback-url https://127.0.0.1:8443/auth/callback
    #[arg(long = "oauth-callback-url", value_name = "URL")]
    oauth_callback_urls: Vec<Url>,
    /// Stop when the process that started this one dies, however it dies (the quickstart's
    /// simulator must not outlive a quickstart that was killed).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
}

/// File names inside the simulator's data directory.
pub const APP_PRIVATE_KEY: &str = "app-private-key.pem";
pub const APP_PUBLIC_KEY: &str = "app-public-key.pem";
pub const WEBHOOK_SECRET: &str = "webhook-secret";
pub const OAUTH_CLIENT_SECRET: &str = "oauth-client-secret";

/// What the simulated GitHub shares with a provider, kept in the simulator's directory.
pub struct SimIdentity {
    pub app_public_key_pem: String,
    pub webhook_secret: WebhookSecret,
    pub oauth_client_secret: OAuthClientSecret,
}

pub async fn run(args: SimArgs) -> Result<(), Failure> {
    if args.exit_with_parent {
        let parent = nix::unistd::getppid();
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
            .context("could not ask to be stopped with the parent process")
            .config_err()?;
        // The parent may have died before the request was made.
        if nix::unistd::getppid() != parent {
            return Ok(());
        }
    }
    let identity = ensure_identity(&args.data_dir).config_err()?;
    let mut config = SimConfig::new(
        args.listen,
        identity.app_public_key_pem,
        identity.webhook_secret,
    );
    config.oauth_client_secret = identity.oauth_client_secret;
    config.oauth_callback_urls = args.oauth_callback_urls.clone();
    config.app_id = args.app_id;
    config.webhook_url = args.webhook_url.clone();
    config.token_ttl = Duration::from_secs(args.token_ttl_secs);
    config.runner_timeout = Duration::from_secs(args.runner_timeout_secs);
    config.git_dir = Some(args.data_dir.join("git"));
    if let Some(ca) = &args.webhook_ca_file {
        let pem = std::fs::read_to_string(ca)
            .with_context(|| format!("could not read the webhook CA file {}", ca.display()))
            .config_err()?;
        config.webhook_ca_pem = Some(pem);
    }
    if let (Some(cert_pem), Some(key_pem)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(TlsFiles {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
        });
    }
    let sim = Sim::start(config).await.config_err()?;
    eprintln!("GitHub simulator listening on {}", sim.base_url());
    eprintln!("  App id:           {}", args.app_id);
    eprintln!(
        "  App private key:  {}",
        args.data_dir.join(APP_PRIVATE_KEY).display()
    );
    eprintln!(
        "  webhook secret:   {}",
        args.data_dir.join(WEBHOOK_SECRET).display()
    );
    eprintln!(
        "  OAuth client id:  {}",
        sim.control().oauth_app().client_id
    );
    eprintln!(
        "  OAuth secret:     {}",
        args.data_dir.join(OAUTH_CLIENT_SECRET).display()
    );
    for url in &args.oauth_callback_urls {
        eprintln!("  OAuth callback:   {url}");
    }
    match &args.webhook_url {
        Some(url) => eprintln!("  webhooks go to:   {url}"),
        None => eprintln!("  webhooks go nowhere (no --webhook-url)"),
    }
    eprintln!(
        "  control API:      {}_sim/ (see ARCHITECTURE.md)",
        sim.base_url()
    );
    shutdown_signal().await.runtime_err()?;
    sim.shutdown().await;
    Ok(())
}

/// Loads the App public key, webhook secret and OAuth client secret from `dir`, creating them on
/// first start (and the key pair again when a previous start was interrupted before both halves
/// were written).
pub fn ensure_identity(dir: &Path) -> anyhow::Result<SimIdentity> {
    atomic_file::create_private_dir_all(dir)?;
    atomic_file::remove_leftovers(dir);
    let private_path = dir.join(APP_PRIVATE_KEY);
    let public_path = dir.join(APP_PUBLIC_KEY);
    if !private_path.exists() || !public_path.exists() {
        let pair = AppKeyPair::generate().context("could not generate the App key pair")?;
        atomic_file::write(
            &private_path,
            pair.private_pem.expose_secret().as_bytes(),
            0o600,
            Existing::Replace,
        )?;
        atomic_file::write(
            &public_path,
            pair.public_pem.as_bytes(),
            0o644,
            Existing::Replace,
        )?;
    }
    let public_pem = std::fs::read_to_string(&public_path)
        .with_context(|| format!("could not read {}", public_path.display()))?;
    let secret_path = dir.join(WEBHOOK_SECRET);
    if !secret_path.exists() {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        write_private(&secret_path, hex::encode(raw).as_bytes())?;
    }
    let secret = read_secret_file(&secret_path)?;
    let oauth_path = dir.join(OAUTH_CLIENT_SECRET);
    if !oauth_path.exists() {
        write_private(&oauth_path, random_client_secret().expose().as_bytes())?;
    }
    let oauth = String::from_utf8(read_secret_file(&oauth_path)?)
        .map_err(|_| anyhow::anyhow!("{} is not text", oauth_path.display()))?;
    Ok(SimIdentity {
        app_public_key_pem: public_pem,
        webhook_secret: WebhookSecret::new(secret),
        oauth_client_secret: OAuthClientSecret::new(oauth),
    })
}
