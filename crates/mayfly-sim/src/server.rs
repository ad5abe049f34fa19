//! Starting and stopping a simulator: binds the listener (HTTP or HTTPS), builds the shared
//! state and the router, starts the webhook worker. `SimHandle` is the in-process face of the
//! control API; it shuts everything down when asked (or when dropped, the tasks are aborted).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use jsonwebtoken::DecodingKey;
use mayfly_github::OAuthClientSecret;
use url::Url;

use crate::clock::Clock;
use crate::config::SimConfig;
use crate::control::SimControl;
use crate::faults::RestFaults;
use crate::git::{self, GitError, GitRepos};
use crate::keys::{self, KeysError};
use crate::payloads::{AppInfo, Links};
use crate::state::World;
use crate::tls::{self, TlsError};
use crate::webhooks::{self, Webhooks, WebhooksError};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the App public key is unusable")]
    AppKey(#[source] KeysError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed")]
    Tls(#[source] TlsError),
    #[error("webhook delivery setup failed")]
    Webhooks(#[source] WebhooksError),
    #[error("the base URL could not be formed")]
    BaseUrl(#[source] url::ParseError),
    #[error("git repository setup failed")]
    Git(#[source] GitError),
    #[error("a configured user could not be created")]
    User(#[source] crate::control::ControlError),
    #[error("a configured OAuth callback URL was refused")]
    CallbackUrls(#[source] crate::control::ControlError),
    #[error("the reused runner keys could not be made")]
    RunnerKeys(#[source] KeysError),
}

/// One recorded REST exchange (with `record_exchanges`).
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    /// The request path, e.g. `/repos/o/r/actions/runs`.
    pub path: String,
    pub query: Option<String>,
    /// The route template (`/repos/{owner}/{repo}/actions/runs`), which is the OpenAPI path;
    /// `None` when no route matched.
    pub route: Option<String>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
    /// The request body (empty if there was none, or it was over 1 MiB).
    pub request_body: Vec<u8>,
}

/// The App's JWT verification key (Debug does not print it).
#[derive(Clone)]
pub(crate) struct AppKey(pub DecodingKey);

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKey(RS256 public key)")
    }
}

/// The App's OAuth callback URLs (its client id is `AppInfo::client_id`, its secret
/// `Registration::client_secret`).
#[derive(Debug)]
pub(crate) struct OAuthRegistration {
    pub callback_urls: Mutex<Vec<Url>>,
}

/// The simulated App: its identity, the key its JWTs are verified with and its OAuth client
/// secret. One App at a time: the one configured at start, until an App made from a manifest
/// (`crate::manifest`) takes its place.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub app: AppInfo,
    pub key: AppKey,
    pub client_secret: OAuthClientSecret,
}

/// State shared by every handler.
#[derive(Debug)]
pub(crate) struct Shared {
    registration: Mutex<Registration>,
    pub oauth: OAuthRegistration,
    /// Manifests posted to the App creation page, by their one-time code.
    pub manifests: Mutex<crate::manifest::Pending>,
    pub links: Links,
    pub base_url: Url,
    pub token_ttl: Duration,
    pub clock: Clock,
    world: Mutex<World>,
    pub faults: Mutex<RestFaults>,
    pub rate: Mutex<crate::rest::RateBook>,
    pub webhooks: Arc<Webhooks>,
    pub git: GitRepos,
    pub exchanges: Option<Mutex<Vec<Exchange>>>,
    /// See `SimConfig::runner_timeout`.
    pub runner_timeout: Mutex<Duration>,
    /// See `SimConfig::reuse_runner_keys`: the keys, and how many were handed out.
    pub runner_keys: Option<RunnerKeyPool>,
}

/// Runner keys made once and handed out in turn (`SimConfig::reuse_runner_keys`).
pub(crate) struct RunnerKeyPool {
    keys: Vec<rsa::RsaPrivateKey>,
    handed: std::sync::atomic::AtomicUsize,
}

impl RunnerKeyPool {
    /// The next key, or `None` for a pool of none.
    pub(crate) fn next(&self) -> Option<rsa::RsaPrivateKey> {
        let n = self
            .handed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.keys.get(n % self.keys.len().max(1)).cloned()
    }
}

impl std::fmt::Debug for RunnerKeyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RunnerKeyPool({} keys)", self.keys.len())
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Shared {
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    /// The App's identity as it is now.
    pub(crate) fn app(&self) -> AppInfo {
        lock(&self.registration).app.clone()
    }

    /// The App as it is now, with its key and client secret.
    pub(crate) fn registration(&self) -> Registration {
        lock(&self.registration).clone()
    }

    /// Makes `registration` the simulated App (an App created from a manifest).
    pub(crate) fn replace_registration(&self, registration: Registration) {
        *lock(&self.registration) = registration;
    }
}

/// The simulator.
#[derive(Debug)]
pub struct Sim;

impl Sim {
    /// Validates `config`, binds, and serves until `SimHandle::shutdown`.
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        let public =
            keys::parse_public_pem(&config.app_public_key_pem).map_err(SimError::AppKey)?;
        let app_key = keys::decoding_key(&public).map_err(SimError::AppKey)?;
        let tls = match &config.tls {
            Some(files) => Some(tls::rustls_config(files).map_err(SimError::Tls)?),
            None => None,
        };
        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| SimError::Bind {
                addr: config.listen,
                source,
            })?;
        let bind_err = |source| SimError::Bind {
            addr: config.listen,
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base_url =
            Url::parse(&format!("{scheme}://{local_addr}/")).map_err(SimError::BaseUrl)?;

        let git = GitRepos::new(config.git_dir.as_deref(), &config.git).map_err(SimError::Git)?;
        let http =
            webhooks::client(config.webhook_ca_pem.as_deref()).map_err(SimError::Webhooks)?;
        let (webhooks, worker) = Webhooks::start(
            config.webhook_url.clone(),
            config.webhook_secret.clone(),
            config.app_id,
            http,
        );
        let runner_keys = match config.reuse_runner_keys {
            Some(n) => {
                let keys = tokio::task::spawn_blocking(move || {
                    (0..n)
                        .map(|_| keys::generate_rsa_2048())
                        .collect::<Result<Vec<_>, _>>()
                })
                .await
                .unwrap_or_else(|_| Ok(Vec::new()))
                .map_err(SimError::RunnerKeys)?;
                Some(RunnerKeyPool {
                    keys,
                    handed: std::sync::atomic::AtomicUsize::new(0),
                })
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            registration: Mutex::new(Registration {
                app: AppInfo::new(config.app_id),
                key: AppKey(app_key),
                client_secret: config.oauth_client_secret.clone(),
            }),
            manifests: Mutex::new(crate::manifest::Pending::default()),
            oauth: OAuthRegistration {
                callback_urls: Mutex::new(Vec::new()),
            },
            links: Links::new(&base_url),
            base_url: base_url.clone(),
            token_ttl: config.token_ttl,
            clock: Clock::default(),
            world: Mutex::new(World::default()),
            faults: Mutex::new(RestFaults::default()),
            rate: Mutex::new(crate::rest::RateBook::default()),
            webhooks,
            git,
            exchanges: config.record_exchanges.then(|| Mutex::new(Vec::new())),
            runner_timeout: Mutex::new(config.runner_timeout),
            runner_keys,
        });
        let sweeper = tokio::spawn(crate::broker::fail_lost_runners(Arc::clone(&shared)));
        let control = SimControl {
            shared: Arc::clone(&shared),
        };
        control
            .set_oauth_callback_urls(config.oauth_callback_urls.clone())
            .map_err(SimError::CallbackUrls)?;
        for user in &config.users {
            control.create_user(user.clone()).map_err(SimError::User)?;
        }
        let app: Router = crate::rest::router(Arc::clone(&shared))
            .merge(crate::oauth::router(Arc::clone(&shared)))
            .merge(crate::manifest::router(Arc::clone(&shared)))
            .merge(crate::broker::router(Arc::clone(&shared)))
            .merge(crate::control::router(Arc::clone(&shared)))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                git::serve,
            ));

        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp(listener)
            .map_err(bind_err)?
            .handle(handle.clone());
        let service = app.into_make_service();
        let serve = match tls {
            Some(tls) => tokio::spawn(async move {
                if let Err(err) = server
                    .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(tls))
                    .serve(service)
                    .await
                {
                    tracing::error!(error = %err, "simulator server stopped");
                }
            }),
            None => tokio::spawn(async move {
                if let Err(err) = server.serve(service).await {
                    tracing::error!(error = %err, "simulator server stopped");
                }
            }),
        };
        tracing::info!(%base_url, "GitHub simulator listening");
        Ok(SimHandle {
            control,
            shared,
            local_addr,
            server: handle,
            tasks: vec![serve, worker, sweeper],
        })
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct SimHandle {
    pub(crate) shared: Arc<Shared>,
    control: SimControl,
    local_addr: SocketAddr,
    server: axum_server::Handle<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// `http(s)://127.0.0.1:port/`: use it as the GitHub API base URL.
    pub fn base_url(&self) -> Url {
        self.shared.base_url.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving (open connections get a second to finish) and stops webhook delivery.
    pub async fn shutdown(mut self) {
        self.server.graceful_shutdown(Some(Duration::from_secs(1)));
        let mut tasks = std::mem::take(&mut self.tasks);
        if let Some(serve) = tasks.first_mut() {
            // The server task ends once the graceful shutdown is done.
            let _ = tokio::time::timeout(Duration::from_secs(2), serve).await;
        }
        for task in &tasks {
            task.abort();
        }
    }

    /// The control operations as a cloneable value (for tasks that outlive a borrow).
    pub fn control(&self) -> SimControl {
        SimControl {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl std::ops::Deref for SimHandle {
    type Target = SimControl;
    fn deref(&self) -> &SimControl {
        &self.control
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.server.shutdown();
        for task in &self.tasks {
            task.abort();
        }
    }
}
