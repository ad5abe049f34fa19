//! Configuration of one simulator instance. Plain data; `Sim::start` validates it once
//! (the App public key must parse, TLS files must load) before anything listens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mayfly_github::webhook::WebhookSecret;
use mayfly_github::OAuthClientSecret;
use rand::RngCore;
use url::Url;

use crate::control::NewUser;

/// PEM files for serving HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert_pem: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key_pem: PathBuf,
}

/// Everything `Sim::start` needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to listen on; `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// `None` serves plain HTTP.
    pub tls: Option<TlsFiles>,
    /// The App's numeric id (`iss` of App JWTs, `X-GitHub-Hook-Installation-Target-ID`).
    pub app_id: u64,
    /// The App's RSA public key (PKCS#1 or SPKI PEM) that App JWTs are verified against.
    pub app_public_key_pem: String,
    /// Where signed webhooks are delivered; `None` logs deliveries as failed.
    pub webhook_url: Option<Url>,
    pub webhook_secret: WebhookSecret,
    /// An extra root certificate to trust when delivering to an `https` webhook URL.
    pub webhook_ca_pem: Option<String>,
    /// Lifetime of installation access tokens (GitHub: one hour).
    pub token_ttl: Duration,
    /// Keep every REST request/response pair for contract tests.
    pub record_exchanges: bool,
    /// Where the bare git repositories of simulated repositories are made; emptied at start (the
    /// simulator's world starts empty every time). `None`: a temporary directory, removed with
    /// the simulator.
    pub git_dir: Option<PathBuf>,
    /// The `git` program that makes them (`git` on `PATH`). If it cannot be run, repositories
    /// are still created, with a warning, and their git URLs answer 404.
    pub git: PathBuf,
    /// The App's OAuth client secret (its client id is `Iv23li` + the App id, 14 digits).
    pub oauth_client_secret: OAuthClientSecret,
    /// The App's registered callback URLs (GitHub: at most 10); the first is the default
    /// `redirect_uri`. Also settable at run time (`SimControl::set_oauth_callback_urls`).
    pub oauth_callback_urls: Vec<Url>,
    /// The users who exist from the start; `SimConfig::new` seeds [`SimConfig::default_users`].
    pub users: Vec<NewUser>,
    /// A runner running a job that has not renewed it (or said anything) for this long has
    /// lost communication: its job fails, as GitHub fails a job whose runner vanished. GitHub
    /// waits about ten minutes; tests set less.
    pub runner_timeout: Duration,
    /// Runner keys for load drivers only: `Some(n)` makes `n` RSA keys at start and hands them
    /// out in turn, instead of one new key per JIT config as GitHub makes. GitHub's cost of
    /// making a key is GitHub's, not the client's; a benchmark of the client on the same cores
    /// says it uses this.
    pub reuse_runner_keys: Option<usize>,
}

impl SimConfig {
    /// A config with GitHub's defaults: App id 1, one-hour tokens, no webhook URL, plain HTTP,
    /// git repositories in a temporary directory.
    pub fn new(
        listen: SocketAddr,
        app_public_key_pem: String,
        webhook_secret: WebhookSecret,
    ) -> Self {
        Self {
            listen,
            tls: None,
            app_id: 1,
            app_public_key_pem,
            webhook_url: None,
            webhook_secret,
            webhook_ca_pem: None,
            token_ttl: Duration::from_secs(3600),
            record_exchanges: false,
            git_dir: None,
            git: PathBuf::from("git"),
            oauth_client_secret: random_client_secret(),
            oauth_callback_urls: Vec::new(),
            users: Self::default_users(),
            runner_timeout: Duration::from_secs(600),
            reuse_runner_keys: None,
        }
    }

    /// The seeded users, members of the quickstart's organisations: `mona` (`acme-robotics`),
    /// `hubot` (`globex-labs`), `octocat` (both) and `nemo` (none; sees no installation).
    pub fn default_users() -> Vec<NewUser> {
        let user = |login: &str, orgs: &[&str]| NewUser {
            login: login.to_owned(),
            orgs: orgs.iter().map(|o| (*o).to_owned()).collect(),
        };
        vec![
            user("mona", &["acme-robotics"]),
            user("hubot", &["globex-labs"]),
            user("octocat", &["acme-robotics", "globex-labs"]),
            user("nemo", &[]),
        ]
    }
}

/// 40 hex characters, the shape of a GitHub App's client secret.
pub fn random_client_secret() -> OAuthClientSecret {
    let mut raw = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut raw);
    OAuthClientSecret::new(hex::encode(raw))
}
