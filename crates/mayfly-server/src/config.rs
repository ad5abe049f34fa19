//! `mayfly server` configuration: serde structs with `deny_unknown_fields`, defaults here,
//! overridden by the TOML file and then `MAYFLY_*` variables (loaded by the binary). Secrets are
//! never values in the config, only paths to files that only their owner may read.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole server configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTPS listener (webhooks, health).
    pub listen: SocketAddr,
    /// Where the database and other state live.
    pub data_dir: PathBuf,
    /// Certificate and key for the listener. Required unless `insecure_dev` is set.
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP. Development only: refused unless `listen` is a loopback address.
    pub insecure_dev: bool,
    pub webhook: WebhookConfig,
    /// Address agents dial (gRPC over mTLS; plain TCP on loopback only with `insecure_dev`).
    pub agent_listen: SocketAddr,
    /// The GitHub App; without it the server only records deliveries and schedules nothing.
    pub github: Option<GitHubConfig>,
    /// Hardware profiles: a job whose `runs-on` names one gets a VM of that kind.
    pub profiles: Vec<mayfly_core::Profile>,
    /// The runner's entry point inside the guest.
    pub runner_entry: String,
    /// How often to ask GitHub for queued jobs whose webhook never arrived (also at start).
    pub reconcile_interval_secs: u64,
    /// An agent not heard from for this long is lost (its VMs are marked lost, their idle
    /// runners deleted, their jobs placed elsewhere). Agents heartbeat every 10 s.
    pub agent_lease_secs: u64,
    /// This server's name in claims and leases when several share one PostgreSQL database.
    /// Default: the host name, the process id and a random suffix.
    pub server_id: Option<String>,
    pub database: DatabaseConfig,
    pub retention: RetentionConfig,
    /// `/.well-known/security.txt` (RFC 9116). Without it the file is not served.
    pub security_txt: Option<SecurityTxtConfig>,
    /// The usage dashboard at `/dashboard` (sign in with GitHub). Needs `[github]`.
    pub dashboard: Option<DashboardConfig>,
    pub refusals: RefusalConfig,
}

/// Per-source limits on refused requests: bad webhook signatures, missing or unknown API and
/// `/metrics` tokens, refused dashboard sign-ins, enrolment attempts. A source (an IPv4 address
/// or an IPv6 /64) refused `burst` times in a window gets 429 until the window ends; what it
/// sends meanwhile is audited as one summary row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefusalConfig {
    /// Refusals a source may have in one window, each audited as a row of its own.
    pub burst: u32,
    /// The window's length in seconds.
    pub window_secs: u64,
    /// Sources with an open window that are remembered; sources beyond them share one window.
    pub max_sources: usize,
}

impl Default for RefusalConfig {
    fn default() -> Self {
        Self {
            burst: 20,
            window_secs: 60,
            max_sources: 10_000,
        }
    }
}

/// The usage dashboard: customers sign in with GitHub (the App's OAuth web flow) and see the
/// installations GitHub says they may access; an operator signs in with an admin token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// This server's address as browsers reach it, e.g. `https://ci.example.com`. GitHub sends
    /// users back to `<public_url>/dashboard/callback`: register that as the App's callback URL.
    pub public_url: String,
    /// The GitHub App's client id (`Iv23li…`; the App's settings page shows it). Leave it and
    /// `client_secret_file` out to use the stored App's (`mayfly github app create`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The App's OAuth client secret (mode 600).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// GitHub's web address (where users sign in): `https://github.com`, a GHES host, or the
    /// simulator's.
    #[serde(default = "default_github_web")]
    pub github_url: String,
    /// How long a sign-in lasts.
    #[serde(default = "default_session_hours")]
    pub session_hours: u32,
}

fn default_github_web() -> String {
    "https://github.com".to_owned()
}

fn default_session_hours() -> u32 {
    8
}

/// What `/.well-known/security.txt` says (RFC 9116).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityTxtConfig {
    /// Where to report a vulnerability: `mailto:`, `https:` or `tel:` URIs, most preferred
    /// first.
    pub contact: Vec<String>,
    /// The disclosure policy (an `https:` URL).
    #[serde(default)]
    pub policy: Option<String>,
    /// A key to encrypt reports with (an `https:` URL to an OpenPGP key).
    #[serde(default)]
    pub encryption: Option<String>,
    /// Languages reports may be written in (`en`, or `en, de`).
    #[serde(default = "default_languages")]
    pub preferred_languages: String,
    /// The file's own `https:` URL(s), as reporters reach it.
    #[serde(default)]
    pub canonical: Vec<String>,
    /// `Expires` is this many days after the current day (RFC 9116 advises under a year).
    #[serde(default = "default_expires_days")]
    pub expires_days: u32,
}

fn default_languages() -> String {
    "en".to_owned()
}

fn default_expires_days() -> u32 {
    180
}

/// How long metadata is kept. A purge runs at start and every hour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days a finished job's metadata row (and its VM rows) is kept.
    pub job_days: u32,
    /// Days a processed webhook delivery is kept (for deduplication of redeliveries).
    pub delivery_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            job_days: 90,
            delivery_days: 14,
        }
    }
}

/// The store: the encrypted embedded SQLite file (the default; its key from a key file or a
/// passphrase file through Argon2id, one of the two), or PostgreSQL for several servers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// 64 hex digits (32 random bytes), mode 600. Also `MAYFLY_DB_KEY_FILE`.
    pub key_file: Option<PathBuf>,
    /// A passphrase, mode 600; the key is derived with Argon2id and a salt kept beside the
    /// database (`mayfly.db.salt`).
    pub passphrase_file: Option<PathBuf>,
    /// Use PostgreSQL at this URL (`postgres://user@host:5432/db`) instead of the embedded file.
    /// Several servers may share it. No password in the URL: see `postgres_password_file`.
    pub postgres_url: Option<String>,
    /// The PostgreSQL password (mode 600).
    pub postgres_password_file: Option<PathBuf>,
    /// The master key for sealed values (64 hex digits, mode 600). Created by `mayfly keys
    /// init`, replaced by `mayfly keys rotate`. Default: `<data_dir>/master.key`.
    pub master_key_file: Option<PathBuf>,
}

/// The GitHub App mayfly acts as.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubConfig {
    /// `https://api.github.com/`, a GHES API URL, or the simulator's.
    pub api_url: String,
    /// The App's id. Leave it and `private_key_file` out to use the App that
    /// `mayfly github app create` sealed into the store.
    #[serde(default)]
    pub app_id: Option<u64>,
    /// The App's private key (PEM, mode 600).
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// An extra root certificate (PEM) to trust for the API, e.g. the simulator's CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl DatabaseConfig {
    /// The store's key: read from the key file, or derived from the passphrase file with the
    /// salt beside the database (created on first use).
    pub fn key(&self, database: &Path) -> Result<mayfly_store::DbKey, ConfigError> {
        match (&self.key_file, &self.passphrase_file) {
            (None, None) => Err(ConfigError::NoDbKey),
            (Some(_), Some(_)) => Err(ConfigError::TwoDbKeys),
            (Some(file), None) => {
                let text = zeroize::Zeroizing::new(read_secret_file(file)?);
                Ok(mayfly_store::DbKey::from_hex(&text)?)
            }
            (None, Some(file)) => {
                let passphrase = zeroize::Zeroizing::new(read_secret_file(file)?);
                let salt_path = database.with_extension("db.salt");
                let salt_err = |source| ConfigError::Salt {
                    path: salt_path.clone(),
                    source,
                };
                if !salt_path.exists() {
                    write_salt(&salt_path).map_err(salt_err)?;
                }
                let salt = std::fs::read(&salt_path).map_err(salt_err)?;
                Ok(mayfly_store::DbKey::derive(&passphrase, &salt)?)
            }
        }
    }
}

/// A new random salt file, mode 600 (it is not secret, but the data directory is the owner's).
fn write_salt(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let salt: [u8; 16] = rand::random();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(&salt)?;
    file.sync_all()
}

/// PEM files for a TLS listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA certificate that issued `cert_file`, which agents pin when they enrol. Default:
    /// the last certificate in `cert_file` (the chain's top).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Webhook intake settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Files each holding one active webhook secret. Several during a rotation.
    pub secret_files: Vec<PathBuf>,
    /// Deliveries larger than this get 413 and are not read past the limit.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: PathBuf::from("/var/lib/mayfly"),
            tls: None,
            insecure_dev: false,
            webhook: WebhookConfig::default(),
            agent_listen: SocketAddr::from(([127, 0, 0, 1], 8444)),
            github: None,
            profiles: Vec::new(),
            runner_entry: "/home/runner/actions-runner/run.sh".to_owned(),
            reconcile_interval_secs: 60,
            agent_lease_secs: 60,
            server_id: None,
            database: DatabaseConfig::default(),
            retention: RetentionConfig::default(),
            security_txt: None,
            dashboard: None,
            refusals: RefusalConfig::default(),
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        // The events mayfly handles are a few kilobytes; GitHub's own cap is 25 MB, which only
        // events mayfly ignores (large pushes) come near.
        Self {
            secret_files: Vec::new(),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// A configuration that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no TLS certificate is configured: set [tls] cert_file and key_file, or pass --insecure-dev for a loopback-only development server")]
    NoTls,
    #[error("--insecure-dev serves plain HTTP and is allowed on loopback addresses only, not {0}")]
    InsecureNotLoopback(SocketAddr),
    #[error("no webhook secret is configured: set [webhook] secret_files, or use the App `mayfly github app create` stored (a [github] section without app_id)")]
    NoWebhookSecret,
    #[error("{0}: set both, or neither to use the App `mayfly github app create` stored")]
    HalfAnApp(&'static str),
    #[error("webhook.max_body_bytes must be between 1 KiB and 25 MiB")]
    BodyLimit,
    #[error(
        "without TLS (--insecure-dev) agents speak plain gRPC, so agent_listen must be a loopback address, not {0}"
    )]
    AgentNotLoopback(SocketAddr),
    #[error("profile `{0}` is defined twice")]
    DuplicateProfile(String),
    #[error("profile `{0}`: warm_max_age_secs must be between 1 and 86400 (a pool VM's guest powers off after waiting 25 hours for its config)")]
    WarmMaxAge(String),
    #[error("the database is encrypted and needs a key: set [database] key_file (or MAYFLY_DB_KEY_FILE); make one with `openssl rand -hex 32 > db.key && chmod 600 db.key`")]
    NoDbKey,
    #[error("set one of [database] key_file and passphrase_file, not both")]
    TwoDbKeys,
    #[error(
        "[refusals] burst and max_sources must be at least 1, window_secs between 1 and 86400"
    )]
    Refusals,
    #[error("[dashboard] {0}")]
    Dashboard(&'static str),
    #[error("[security_txt] {0}")]
    SecurityTxt(&'static str),
    #[error("[database] postgres_url must not carry a password: put it in postgres_password_file (mode 600)")]
    PasswordInUrl,
    #[error(transparent)]
    BadDbKey(#[from] mayfly_store::KeyError),
    #[error("could not read or create the salt file {path}")]
    Salt {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the secret file {path}")]
    SecretRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the secret file {path} can be read by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    SecretPermissions { path: PathBuf, mode: u32 },
    #[error("the secret file {path} is empty")]
    SecretEmpty { path: PathBuf },
}

impl ServerConfig {
    /// Whether the GitHub App comes from the store (`[github]` without `app_id`): its webhook
    /// secret then too, when no secret file is named.
    pub fn uses_stored_app(&self) -> bool {
        self.github.as_ref().is_some_and(|g| g.app_id.is_none())
    }

    /// Checks what can be checked without touching the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.insecure_dev {
            if !self.listen.ip().is_loopback() {
                return Err(ConfigError::InsecureNotLoopback(self.listen));
            }
        } else if self.tls.is_none() {
            return Err(ConfigError::NoTls);
        }
        if let Some(github) = &self.github {
            if github.app_id.is_some() != github.private_key_file.is_some() {
                return Err(ConfigError::HalfAnApp(
                    "[github] app_id and private_key_file",
                ));
            }
        }
        if self.webhook.secret_files.is_empty() && !self.uses_stored_app() {
            return Err(ConfigError::NoWebhookSecret);
        }
        if !(1024..=25 * 1024 * 1024).contains(&self.webhook.max_body_bytes) {
            return Err(ConfigError::BodyLimit);
        }
        let r = &self.refusals;
        if r.burst == 0 || !(1..=86_400).contains(&r.window_secs) || r.max_sources == 0 {
            return Err(ConfigError::Refusals);
        }
        if let Some(url) = &self.database.postgres_url {
            let userinfo = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .map(|(userinfo, _)| userinfo);
            if userinfo.is_some_and(|u| u.contains(':')) {
                return Err(ConfigError::PasswordInUrl);
            }
        }
        if let Some(d) = &self.dashboard {
            if d.client_id.is_some() != d.client_secret_file.is_some() {
                return Err(ConfigError::HalfAnApp(
                    "[dashboard] client_id and client_secret_file",
                ));
            }
            if self.github.is_none() {
                return Err(ConfigError::Dashboard(
                    "needs [github]: users sign in with the GitHub App",
                ));
            }
            let web =
                |u: &str| url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
            if !web(&d.public_url) || !web(&d.github_url) {
                return Err(ConfigError::Dashboard(
                    "public_url and github_url must be http(s) URLs",
                ));
            }
            if !(1..=24 * 7).contains(&d.session_hours) {
                return Err(ConfigError::Dashboard(
                    "session_hours must be between 1 and 168",
                ));
            }
        }
        if let Some(sec) = &self.security_txt {
            if sec.contact.is_empty() {
                return Err(ConfigError::SecurityTxt(
                    "contact needs at least one mailto:, https: or tel: URI",
                ));
            }
            let uri_ok = |u: &String| {
                ["mailto:", "https://", "tel:"]
                    .iter()
                    .any(|p| u.starts_with(p))
                    && !u.contains(char::is_whitespace)
            };
            if !sec.contact.iter().all(uri_ok) {
                return Err(ConfigError::SecurityTxt(
                    "each contact must be a mailto:, https: or tel: URI",
                ));
            }
            let https = |u: &String| u.starts_with("https://") && !u.contains(char::is_whitespace);
            if !sec
                .policy
                .iter()
                .chain(&sec.encryption)
                .chain(&sec.canonical)
                .all(https)
            {
                return Err(ConfigError::SecurityTxt(
                    "policy, encryption and canonical must be https:// URLs",
                ));
            }
            if !(1..=365).contains(&sec.expires_days) {
                return Err(ConfigError::SecurityTxt(
                    "expires_days must be between 1 and 365",
                ));
            }
        }
        if self.tls.is_none() && !self.agent_listen.ip().is_loopback() {
            return Err(ConfigError::AgentNotLoopback(self.agent_listen));
        }
        for (i, p) in self.profiles.iter().enumerate() {
            if self.profiles[..i]
                .iter()
                .any(|q| q.name.eq_ignore_ascii_case(&p.name))
            {
                return Err(ConfigError::DuplicateProfile(p.name.clone()));
            }
            if p.warm > 0
                && !(1..=mayfly_core::WARM_MAX_AGE_LIMIT_SECS).contains(&p.warm_max_age_secs)
            {
                return Err(ConfigError::WarmMaxAge(p.name.clone()));
            }
        }
        Ok(())
    }

    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("mayfly.db")
    }

    /// Where the master key for sealed values lives.
    pub fn master_key_path(&self) -> PathBuf {
        self.database
            .master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }
}

/// Reads a secret file, refusing one that group or others can read. One trailing newline (as
/// `echo secret > file` leaves) is not part of the secret.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let read_err = |source| ConfigError::SecretRead {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::SecretPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = std::fs::read(path).map_err(read_err)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(ConfigError::SecretEmpty {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let open = write(dir.path(), "open", b"s3cret\n", 0o644);
        let err = read_secret_file(&open).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let private = write(dir.path(), "private", b"s3cret\n", 0o600);
        assert_eq!(read_secret_file(&private).unwrap(), b"s3cret");
        let empty = write(dir.path(), "empty", b"\n", 0o600);
        assert!(matches!(
            read_secret_file(&empty),
            Err(ConfigError::SecretEmpty { .. })
        ));
    }

    #[test]
    fn plaintext_only_on_loopback_and_tls_otherwise() {
        let mut config = ServerConfig {
            webhook: WebhookConfig {
                secret_files: vec!["/x".into()],
                ..WebhookConfig::default()
            },
            ..ServerConfig::default()
        };
        assert!(matches!(config.validate(), Err(ConfigError::NoTls)));
        config.insecure_dev = true;
        assert!(config.validate().is_ok());
        config.listen = "0.0.0.0:8443".parse().unwrap();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::InsecureNotLoopback(_))
        ));
    }

    #[test]
    fn refusal_limits_must_allow_something() {
        let mut config = ServerConfig {
            insecure_dev: true,
            webhook: WebhookConfig {
                secret_files: vec!["/x".into()],
                ..WebhookConfig::default()
            },
            ..ServerConfig::default()
        };
        assert!(config.validate().is_ok(), "the defaults are valid");
        for broken in [
            RefusalConfig {
                burst: 0,
                ..RefusalConfig::default()
            },
            RefusalConfig {
                window_secs: 0,
                ..RefusalConfig::default()
            },
            RefusalConfig {
                max_sources: 0,
                ..RefusalConfig::default()
            },
        ] {
            config.refusals = broken;
            assert!(matches!(config.validate(), Err(ConfigError::Refusals)));
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<ServerConfig>(r#"{"listen":"127.0.0.1:1","lisen":"x"}"#);
        assert!(err.is_err());
    }
}
