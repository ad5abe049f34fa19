//! `GitHubClient`: one HTTP connection pool, the App's credentials, and a cache of installation
//! tokens that are refreshed a margin before they expire. Tokens are opaque strings of any length
//! and live only in memory.
//!
//! Each token is asked for with least privilege ([`TokenScope`]): only the permissions its use
//! needs, and where the use concerns one repository, only that repository. A JIT config's token
//! can register runners in the job's repository and nowhere else; the reconciler's tokens read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mayfly_core::{Clock, InstallationId, JobId, RepoFullName, RunId, SystemClock};
use reqwest::{Method, StatusCode};
use tokio::sync::Mutex;
use url::Url;

use super::error::GitHubError;
use super::retry::RetryPolicy;
use super::transport::not_found_is_none;
use super::types::{
    AppInstallation, InstallationRepository, InstallationTokenResponse, JitConfigRequest,
    JitConfigResponse, Job, JobList, RepositoryList, RunList, Runner, RunnerList, WorkflowRun,
};
use crate::app::AppCredentials;
use crate::secret::{InstallationToken, JitConfig};

/// How the client is set up.
#[derive(Debug, Clone)]
pub struct GitHubClientConfig {
    /// `https://api.github.com/`, a GHES `https://host/api/v3/`, or the simulator's URL.
    pub api_url: Url,
    pub credentials: AppCredentials,
    /// An extra root certificate (PEM) to trust, e.g. the simulator's.
    pub extra_root_pem: Option<Vec<u8>>,
    pub retry: RetryPolicy,
    /// A cached token is replaced when it has less than this left.
    pub token_refresh_margin: Duration,
    pub request_timeout: Duration,
}

impl GitHubClientConfig {
    pub fn new(api_url: Url, credentials: AppCredentials) -> Self {
        Self {
            api_url,
            credentials,
            extra_root_pem: None,
            retry: RetryPolicy::default(),
            token_refresh_margin: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A runner registered just in time, with the config its VM needs.
#[derive(Debug)]
pub struct JitRunner {
    pub runner: Runner,
    pub config: JitConfig,
}

/// A job GitHub reports as queued, with its repository.
#[derive(Debug, Clone)]
pub struct QueuedJob {
    pub repo: RepoFullName,
    pub job: Job,
}

#[derive(Clone)]
pub(super) struct CachedToken {
    token: InstallationToken,
    expires_at: DateTime<Utc>,
}

#[derive(Clone, Copy)]
pub(super) enum Auth<'a> {
    App,
    Installation(InstallationId, TokenScope<'a>),
}

/// Permissions as `(name, level)` pairs, as GitHub spells them in a token request.
pub type Permissions = &'static [(&'static str, &'static str)];

/// What an installation token is asked for: `permissions` only, on `repository` only (a name
/// in the installation's account) or, when `None`, on what the installation can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenScope<'a> {
    pub repository: Option<&'a str>,
    pub permissions: Permissions,
}

impl<'a> TokenScope<'a> {
    /// Registering and removing runners of one repository (generate-jitconfig, delete).
    pub fn repo_runners(repo: &'a RepoFullName) -> Self {
        Self::repo(repo, &[("administration", "write")])
    }

    /// Reading runners of one repository.
    pub fn read_repo_runners(repo: &'a RepoFullName) -> Self {
        Self::repo(repo, &[("administration", "read")])
    }

    /// Registering and removing the organisation's runners.
    pub const ORG_RUNNERS: TokenScope<'static> = TokenScope {
        repository: None,
        permissions: &[("organization_self_hosted_runners", "write")],
    };

    /// Reading the organisation's runners.
    pub const READ_ORG_RUNNERS: TokenScope<'static> = TokenScope {
        repository: None,
        permissions: &[("organization_self_hosted_runners", "read")],
    };

    /// The reconciler's: reading repositories, runs and jobs.
    pub const READ_ACTIONS: TokenScope<'static> = TokenScope {
        repository: None,
        permissions: &[("actions", "read"), ("metadata", "read")],
    };

    fn repo(repo: &'a RepoFullName, permissions: Permissions) -> Self {
        Self {
            repository: Some(repo.name()),
            permissions,
        }
    }

    /// The body of `POST /app/installations/{id}/access_tokens`.
    fn request_body(&self) -> serde_json::Value {
        let permissions: serde_json::Map<String, serde_json::Value> = self
            .permissions
            .iter()
            .map(|(name, level)| ((*name).to_owned(), (*level).into()))
            .collect();
        let mut body = serde_json::json!({ "permissions": permissions });
        if let Some(repository) = self.repository {
            body["repositories"] = serde_json::json!([repository]);
        }
        body
    }

    pub(super) fn key(&self, installation: InstallationId) -> TokenKey {
        (
            installation,
            self.repository.map(str::to_owned),
            self.permissions,
        )
    }
}

/// A cached token's installation and scope.
pub(super) type TokenKey = (InstallationId, Option<String>, Permissions);

/// A GitHub App's REST client.
#[derive(Debug)]
pub struct GitHubClient {
    pub(super) http: reqwest::Client,
    pub(super) api_url: Url,
    pub(super) credentials: AppCredentials,
    pub(super) retry: RetryPolicy,
    pub(super) refresh_margin: chrono::Duration,
    pub(super) clock: Arc<dyn Clock>,
    /// One slot per scope, each behind its own lock: a token being fetched for one scope never
    /// holds up calls with another (a JIT config for one customer waiting on another's token).
    pub(super) tokens: Mutex<HashMap<TokenKey, Arc<Mutex<Option<CachedToken>>>>>,
    pub(super) observer: std::sync::RwLock<Option<Arc<dyn RequestObserver>>>,
}

/// Told about every HTTP exchange with GitHub (each attempt of a retried call), e.g. to count
/// them in metrics. Called on the request path: keep it cheap and non-blocking.
pub trait RequestObserver: Send + Sync + std::fmt::Debug {
    fn observe(&self, exchange: &Exchange);
}

/// One HTTP exchange with GitHub, as a [`RequestObserver`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub method: &'static str,
    /// `None`: the request never got an answer (connection, TLS or timeout error).
    pub status: Option<u16>,
    /// The installation whose token was used; `None` for App-JWT calls.
    pub installation: Option<InstallationId>,
    /// GitHub's `x-ratelimit-remaining` and `x-ratelimit-limit`, when present.
    pub rate_limit_remaining: Option<u64>,
    pub rate_limit_limit: Option<u64>,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The HTTP client every GitHub call goes through: rustls with the webpki roots plus an optional
/// extra root (the simulator's CA), no redirects followed, a timeout per request.
pub(crate) fn http_client(
    https_only: bool,
    timeout: Duration,
    extra_root_pem: Option<&[u8]>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .https_only(https_only)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = extra_root_pem {
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|e| format!("the extra root certificate: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| e.to_string())
}

impl GitHubClient {
    pub fn new(config: GitHubClientConfig) -> Result<Self, GitHubError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    pub fn with_clock(
        config: GitHubClientConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, GitHubError> {
        let http = http_client(
            config.api_url.scheme() == "https",
            config.request_timeout,
            config.extra_root_pem.as_deref(),
        )
        .map_err(GitHubError::Config)?;
        let refresh_margin = chrono::Duration::from_std(config.token_refresh_margin)
            .map_err(|_| GitHubError::Config("token refresh margin too large".to_owned()))?;
        let mut api_url = config.api_url;
        if !api_url.path().ends_with('/') {
            let path = format!("{}/", api_url.path());
            api_url.set_path(&path);
        }
        Ok(Self {
            http,
            api_url,
            credentials: config.credentials,
            retry: config.retry,
            refresh_margin,
            clock,
            tokens: Mutex::new(HashMap::new()),
            observer: std::sync::RwLock::new(None),
        })
    }

    /// Reports every later exchange to `observer` (replacing any earlier one).
    pub fn set_observer(&self, observer: Arc<dyn RequestObserver>) {
        if let Ok(mut slot) = self.observer.write() {
            *slot = Some(observer);
        }
    }

    pub(super) fn observe(&self, exchange: &Exchange) {
        let observer = self.observer.read().ok().and_then(|o| o.clone());
        if let Some(observer) = observer {
            observer.observe(exchange);
        }
    }

    /// An installation token for `scope`, from the cache while it has more than the margin
    /// left.
    pub async fn installation_token(
        &self,
        installation: InstallationId,
        scope: TokenScope<'_>,
    ) -> Result<InstallationToken, GitHubError> {
        let slot = {
            let mut slots = self.tokens.lock().await;
            Arc::clone(slots.entry(scope.key(installation)).or_default())
        };
        // Held while this scope's token is fetched, so concurrent calls with it wait for that
        // one token instead of asking for more.
        let mut slot = slot.lock().await;
        let now = self.clock.now();
        if let Some(cached) = slot.as_ref() {
            if cached.expires_at - now > self.refresh_margin {
                return Ok(cached.token.clone());
            }
        }
        let url = self.endpoint(&[
            "app",
            "installations",
            &installation.to_string(),
            "access_tokens",
        ]);
        let response: InstallationTokenResponse = self
            .call_json(
                Method::POST,
                url,
                Auth::App,
                Some(&scope.request_body()),
                &[StatusCode::CREATED],
            )
            .await?;
        let token = InstallationToken::new(response.token);
        match DateTime::parse_from_rfc3339(&response.expires_at) {
            Ok(expires_at) => {
                let expires_at = expires_at.with_timezone(&Utc);
                *slot = Some(CachedToken {
                    token: token.clone(),
                    expires_at,
                });
            }
            // Without a readable expiry the token is used once and not cached.
            Err(_) => {
                *slot = None;
                tracing::warn!(%installation, "installation token has an unreadable expires_at")
            }
        }
        Ok(token)
    }

    /// Registers a runner for one repository and returns its JIT config.
    pub async fn generate_repo_jitconfig(
        &self,
        installation: InstallationId,
        repo: &RepoFullName,
        request: &JitConfigRequest,
    ) -> Result<JitRunner, GitHubError> {
        let url = self.repo_endpoint(repo, &["actions", "runners", "generate-jitconfig"]);
        let auth = Auth::Installation(installation, TokenScope::repo_runners(repo));
        self.generate_jitconfig(auth, url, request).await
    }

    /// Registers a runner at organisation level. Prefer the repository level: its credential
    /// reaches one repository only.
    pub async fn generate_org_jitconfig(
        &self,
        installation: InstallationId,
        org: &str,
        request: &JitConfigRequest,
    ) -> Result<JitRunner, GitHubError> {
        let url = self.endpoint(&["orgs", org, "actions", "runners", "generate-jitconfig"]);
        let auth = Auth::Installation(installation, TokenScope::ORG_RUNNERS);
        self.generate_jitconfig(auth, url, request).await
    }

    async fn generate_jitconfig(
        &self,
        auth: Auth<'_>,
        url: Url,
        request: &JitConfigRequest,
    ) -> Result<JitRunner, GitHubError> {
        if request.name.is_empty() {
            return Err(GitHubError::InvalidRequest("a runner needs a name"));
        }
        if request.labels.is_empty() || request.labels.len() > 100 {
            return Err(GitHubError::InvalidRequest(
                "a runner needs 1 to 100 labels",
            ));
        }
        let body = serde_json::to_value(request).map_err(|source| GitHubError::Decode {
            path: url.path().to_owned(),
            source,
        })?;
        let response: JitConfigResponse = self
            .call_json(Method::POST, url, auth, Some(&body), &[StatusCode::CREATED])
            .await?;
        Ok(JitRunner {
            runner: response.runner,
            config: JitConfig::new(response.encoded_jit_config),
        })
    }

    /// A repository runner, or `None` if GitHub no longer knows it.
    pub async fn get_repo_runner(
        &self,
        installation: InstallationId,
        repo: &RepoFullName,
        runner_id: i64,
    ) -> Result<Option<Runner>, GitHubError> {
        let url = self.repo_endpoint(repo, &["actions", "runners", &runner_id.to_string()]);
        not_found_is_none(
            self.call_json(
                Method::GET,
                url,
                Auth::Installation(installation, TokenScope::read_repo_runners(repo)),
                None,
                &[StatusCode::OK],
            )
            .await,
        )
    }

    /// An organisation runner, or `None`.
    pub async fn get_org_runner(
        &self,
        installation: InstallationId,
        org: &str,
        runner_id: i64,
    ) -> Result<Option<Runner>, GitHubError> {
        let url = self.endpoint(&["orgs", org, "actions", "runners", &runner_id.to_string()]);
        not_found_is_none(
            self.call_json(
                Method::GET,
                url,
                Auth::Installation(installation, TokenScope::READ_ORG_RUNNERS),
                None,
                &[StatusCode::OK],
            )
            .await,
        )
    }

    /// Lists a repository's runners (all pages).
    pub async fn list_repo_runners(
        &self,
        installation: InstallationId,
        repo: &RepoFullName,
    ) -> Result<Vec<Runner>, GitHubError> {
        let url = self.repo_endpoint(repo, &["actions", "runners"]);
        let pages: Vec<RunnerList> = self
            .paginate(
                url,
                Auth::Installation(installation, TokenScope::read_repo_runners(repo)),
            )
            .await?;
        Ok(pages.into_iter().flat_map(|p| p.runners).collect())
    }

    /// Removes a repository runner. `Ok(false)` if it was already gone.
    pub async fn delete_repo_runner(
        &self,
        installation: InstallationId,
        repo: &RepoFullName,
        runner_id: i64,
    ) -> Result<bool, GitHubError> {
        let url = self.repo_endpoint(repo, &["actions", "runners", &runner_id.to_string()]);
        let auth = Auth::Installation(installation, TokenScope::repo_runners(repo));
        self.delete(auth, url).await
    }

    /// Removes an organisation runner. `Ok(false)` if it was already gone.
    pub async fn delete_org_runner(
        &self,
        installation: InstallationId,
        org: &str,
        runner_id: i64,
    ) -> Result<bool, GitHubError> {
        let url = self.endpoint(&["orgs", org, "actions", "runners", &runner_id.to_string()]);
        let auth = Auth::Installation(installation, TokenScope::ORG_RUNNERS);
        self.delete(auth, url).await
    }

    async fn delete(&self, auth: Auth<'_>, url: Url) -> Result<bool, GitHubError> {
        let path = url.path().to_owned();
        let (status, _, _) = self.send(Method::DELETE, url, auth, None).await?;
        match status {
            StatusCode::NO_CONTENT => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(GitHubError::Unexpected { path, status }),
        }
    }

    /// A workflow job, or `None` if it doesn't exist (or the installation can't see it).
    pub async fn get_job(
        &self,
        installation: InstallationId,
        repo: &RepoFullName,
        job: JobId,
    ) -> Result<Option<Job>, GitHubError> {
        let url = self.repo_endpoint(repo, &["actions", "jobs", &job.to_string()]);
        not_found_is_none(
            self.call_json(
                Method::GET,
                url,
                Auth::Installation(installation, TokenScope::READ_ACTIONS),
                None,
                &[StatusCode::OK],
            )
            .await,
        )
    }

    /// Repositories the installation can access (all pages).
    pub async fn list_installation_repos(
        &self,
        installation: InstallationId,
    ) -> Result<Vec<InstallationRepository>, GitHubError> {
        let url = self.endpoint(&["installation", "repositories"]);
        let pages: Vec<RepositoryList> = self
            .paginate(
                url,
                Auth::Installation(installation, TokenScope::READ_ACTIONS),
            )
            .await?;
        Ok(pages.into_iter().flat_map(|p| p.repositories).collect())
    }

    /// Workflow runs of a repository with `status=queued` (all pages).
    pub async fn list_queued_runs(
        &self,
        installation: InstallationId,
        repo: &RepoFullName,
    ) -> Result<Vec<WorkflowRun>, GitHubError> {
        let mut url = self.repo_endpoint(repo, &["actions", "runs"]);
        url.query_pairs_mut().append_pair("status", "queued");
        let pages: Vec<RunList> = self
            .paginate(
                url,
                Auth::Installation(installation, TokenScope::READ_ACTIONS),
            )
            .await?;
        Ok(pages.into_iter().flat_map(|p| p.workflow_runs).collect())
    }

    /// The jobs of one run (all pages).
    pub async fn list_run_jobs(
        &self,
        installation: InstallationId,
        repo: &RepoFullName,
        run: RunId,
    ) -> Result<Vec<Job>, GitHubError> {
        let url = self.repo_endpoint(repo, &["actions", "runs", &run.to_string(), "jobs"]);
        let pages: Vec<JobList> = self
            .paginate(
                url,
                Auth::Installation(installation, TokenScope::READ_ACTIONS),
            )
            .await?;
        Ok(pages.into_iter().flat_map(|p| p.jobs).collect())
    }

    /// Every queued job in the installation's repositories. GitHub has no such listing, so this
    /// walks repositories → queued runs → their jobs (CONTRACTS.md §2.5).
    pub async fn queued_jobs(
        &self,
        installation: InstallationId,
    ) -> Result<Vec<QueuedJob>, GitHubError> {
        let mut queued = Vec::new();
        for repo in self.list_installation_repos(installation).await? {
            let Ok(full) = repo.full_name.parse::<RepoFullName>() else {
                tracing::warn!(repo = %repo.full_name, "skipping a repository with an unreadable name");
                continue;
            };
            for run in self.list_queued_runs(installation, &full).await? {
                for job in self
                    .list_run_jobs(installation, &full, RunId(run.id))
                    .await?
                {
                    if job.status == "queued" {
                        queued.push(QueuedJob {
                            repo: full.clone(),
                            job,
                        });
                    }
                }
            }
        }
        Ok(queued)
    }

    /// The App's installations (App JWT, all pages).
    pub async fn list_installations(&self) -> Result<Vec<AppInstallation>, GitHubError> {
        let url = self.endpoint(&["app", "installations"]);
        let pages: Vec<Vec<AppInstallation>> = self.paginate(url, Auth::App).await?;
        Ok(pages.into_iter().flatten().collect())
    }
}
