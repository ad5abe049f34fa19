//! The simulated GitHub world: accounts, installations, repositories, runners, runs, jobs and
//! credentials. Pure data plus transitions that take the time as a parameter. Invariants: jobs
//! only move forward (waiting ⇄ queued is the one loop); a runner runs at most one job; tokens
//! are stored as SHA-256 digests, never in plain text.

use std::collections::{BTreeMap, BTreeSet, HashMap};

mod jobs;
mod users;
pub use jobs::{Conclusion, JobStatus, JobStep};
pub(crate) use jobs::{Job, NewJobSpec, Run};
pub(crate) use users::{
    CodeGrant, IssuedTokens, User, Users, ACCESS_TTL_S, CODE_TTL, REFRESH_TTL_S,
};

use chrono::{DateTime, Utc};
use rand::distributions::{Alphanumeric, DistString};
use rand::Rng;
use rsa::RsaPublicKey;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AccountType {
    Organization,
    User,
}

impl AccountType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Organization => "Organization",
            Self::User => "User",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub id: u64,
    pub login: String,
    pub kind: AccountType,
}

#[derive(Debug, Clone)]
pub(crate) struct Installation {
    pub id: u64,
    pub account: Account,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub(crate) struct Repo {
    pub id: u64,
    pub name: String,
    pub owner: Account,
    pub installation_id: u64,
    pub private: bool,
    pub created_at: DateTime<Utc>,
}

impl Repo {
    pub(crate) fn full_name(&self) -> String {
        format!("{}/{}", self.owner.login, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunnerScope {
    Repo(u64),
    /// An organisation-level runner of the installation with this id.
    Org(u64),
}

#[derive(Debug, Clone)]
pub(crate) struct Label {
    pub id: u64,
    pub name: String,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub id: u64,
    pub name: String,
    pub scope: RunnerScope,
    pub labels: Vec<Label>,
    pub online: bool,
    pub busy: bool,
    pub client_id: String,
    pub public_key: RsaPublicKey,
    pub job_id: Option<u64>,
    /// When the runner last reached the broker (acquiring, renewing or completing its job).
    pub last_contact: Option<DateTime<Utc>>,
}

/// What an installation access token may reach.
#[derive(Debug, Clone)]
pub(crate) struct TokenGrant {
    pub installation_id: u64,
    /// `None` = every repository of the installation.
    pub repo_ids: Option<BTreeSet<u64>>,
    /// What the token may do: the installation's permissions, or fewer if the request asked.
    pub permissions: BTreeMap<String, Level>,
    pub expires_at: DateTime<Utc>,
}

impl TokenGrant {
    /// Whether the token holds `permission` at `level` or above.
    pub(crate) fn allows(&self, permission: &str, level: Level) -> bool {
        self.permissions
            .get(permission)
            .is_some_and(|l| *l >= level)
    }
}

/// A permission's level; `write` includes `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Read,
    Write,
}

impl Level {
    pub(crate) fn parse(value: &str) -> Option<Self> {
        match value {
            "read" => Some(Self::Read),
            "write" => Some(Self::Write),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// The permissions the simulated App asks for, which every installation grants.
pub(crate) const INSTALLATION_PERMISSIONS: [(&str, Level); 4] = [
    ("actions", Level::Read),
    ("administration", Level::Write),
    ("metadata", Level::Read),
    ("organization_self_hosted_runners", Level::Write),
];

/// [`INSTALLATION_PERMISSIONS`] as a map.
pub(crate) fn installation_permissions() -> BTreeMap<String, Level> {
    INSTALLATION_PERMISSIONS
        .iter()
        .map(|(name, level)| ((*name).to_owned(), *level))
        .collect()
}

/// GitHub's read-only default labels; any other label is `custom`.
const DEFAULT_LABELS: [&str; 8] = [
    "self-hosted",
    "X64",
    "ARM64",
    "ARM",
    "Linux",
    "macOS",
    "Windows",
    "x86",
];

/// The one runner group the simulator has, in every organisation.
pub(crate) const DEFAULT_GROUP_ID: u64 = 1;
pub(crate) const DEFAULT_GROUP_NAME: &str = "Default";

pub(crate) type Digest32 = [u8; 32];

pub(crate) fn digest(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

/// A random opaque credential: `prefix` then 36–60 alphanumerics (length varies on purpose,
/// GitHub's token format is changing and clients must not assume 40 characters).
pub(crate) fn random_secret(prefix: &str) -> String {
    let mut rng = rand::thread_rng();
    let len = rng.gen_range(36..=60);
    format!("{prefix}{}", Alphanumeric.sample_string(&mut rng, len))
}

#[derive(Debug)]
pub(crate) struct World {
    next_account: u64,
    next_installation: u64,
    next_repo: u64,
    next_runner: u64,
    next_label: u64,
    next_run: u64,
    next_job: u64,
    pub accounts: BTreeMap<String, Account>,
    pub installations: BTreeMap<u64, Installation>,
    pub repos: BTreeMap<u64, Repo>,
    pub runners: BTreeMap<u64, Runner>,
    pub runs: BTreeMap<u64, Run>,
    pub jobs: BTreeMap<u64, Job>,
    /// Indexes over `jobs` and `runs`, kept by `jobs.rs` (the only place jobs change) so that a
    /// runner's poll and a webhook's payload cost the same with a million jobs behind them.
    job_index: jobs::JobIndex,
    labels: HashMap<String, Label>,
    tokens: HashMap<Digest32, TokenGrant>,
    runner_tokens: HashMap<Digest32, (u64, DateTime<Utc>)>,
    users: Users,
}

impl Default for World {
    fn default() -> Self {
        // Distinct ranges per kind so that an id used as the wrong kind is caught; job and run
        // ids exceed 2^32 as real ones do.
        Self {
            next_account: 9_000_001,
            next_installation: 41_000_001,
            next_repo: 610_000_001,
            next_runner: 20,
            next_label: 5,
            next_run: 9_000_000_001,
            next_job: 30_000_000_001,
            accounts: BTreeMap::new(),
            installations: BTreeMap::new(),
            repos: BTreeMap::new(),
            runners: BTreeMap::new(),
            runs: BTreeMap::new(),
            jobs: BTreeMap::new(),
            job_index: jobs::JobIndex::default(),
            labels: HashMap::new(),
            tokens: HashMap::new(),
            runner_tokens: HashMap::new(),
            users: Users::default(),
        }
    }
}

fn bump(counter: &mut u64) -> u64 {
    let id = *counter;
    *counter += 1;
    id
}

impl World {
    /// The account with this login, created (as `kind`) if it does not exist yet.
    pub(crate) fn account(&mut self, login: &str, kind: AccountType) -> Account {
        let key = login.to_ascii_lowercase();
        if let Some(account) = self.accounts.get(&key) {
            return account.clone();
        }
        let account = Account {
            id: bump(&mut self.next_account),
            login: login.to_string(),
            kind,
        };
        self.accounts.insert(key, account.clone());
        account
    }

    pub(crate) fn create_installation(
        &mut self,
        login: &str,
        kind: AccountType,
        now: DateTime<Utc>,
    ) -> Result<Installation, StateError> {
        if login.is_empty() || login.contains('/') {
            return Err(StateError::Invalid(format!(
                "invalid account login {login:?}"
            )));
        }
        if let Some(existing) = self.accounts.get(&login.to_ascii_lowercase()) {
            if existing.kind != kind {
                return Err(StateError::Conflict(format!(
                    "{login} already exists as a {}",
                    existing.kind.as_str()
                )));
            }
        }
        let account = self.account(login, kind);
        if self
            .installations
            .values()
            .any(|i| i.account.id == account.id)
        {
            return Err(StateError::Conflict(format!(
                "the App is already installed on {login}"
            )));
        }
        let installation = Installation {
            id: bump(&mut self.next_installation),
            account,
            created_at: now,
        };
        self.installations
            .insert(installation.id, installation.clone());
        Ok(installation)
    }

    pub(crate) fn create_repo(
        &mut self,
        installation_id: u64,
        name: &str,
        private: bool,
        now: DateTime<Utc>,
    ) -> Result<Repo, StateError> {
        let owner = self
            .installations
            .get(&installation_id)
            .ok_or(StateError::NotFound)?
            .account
            .clone();
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(StateError::Invalid(format!(
                "invalid repository name {name:?}"
            )));
        }
        if self.find_repo(&owner.login, name).is_some() {
            return Err(StateError::Conflict(format!(
                "{}/{name} already exists",
                owner.login
            )));
        }
        let repo = Repo {
            id: bump(&mut self.next_repo),
            name: name.to_string(),
            owner,
            installation_id,
            private,
            created_at: now,
        };
        self.repos.insert(repo.id, repo.clone());
        Ok(repo)
    }

    /// Owner and name are case-insensitive, as on GitHub.
    pub(crate) fn find_repo(&self, owner: &str, name: &str) -> Option<&Repo> {
        self.repos.values().find(|r| {
            r.owner.login.eq_ignore_ascii_case(owner) && r.name.eq_ignore_ascii_case(name)
        })
    }

    pub(crate) fn installation_of_account(&self, login: &str) -> Option<&Installation> {
        self.installations
            .values()
            .find(|i| i.account.login.eq_ignore_ascii_case(login))
    }

    pub(crate) fn repos_of_installation(&self, installation_id: u64) -> Vec<&Repo> {
        self.repos
            .values()
            .filter(|r| r.installation_id == installation_id)
            .collect()
    }

    // ---- installation access tokens ----

    pub(crate) fn issue_token(&mut self, grant: TokenGrant) -> SecretString {
        let token = random_secret("ghs_");
        self.tokens.insert(digest(&token), grant);
        SecretString::from(token)
    }

    pub(crate) fn token_grant(&self, token: &str) -> Option<&TokenGrant> {
        self.tokens.get(&digest(token))
    }

    // ---- runners ----

    fn label(&mut self, name: &str) -> Label {
        let key = name.to_ascii_lowercase();
        if let Some(label) = self.labels.get(&key) {
            return label.clone();
        }
        let read_only = DEFAULT_LABELS.iter().any(|d| d.eq_ignore_ascii_case(name));
        let label = Label {
            id: bump(&mut self.next_label),
            name: name.to_string(),
            read_only,
        };
        self.labels.insert(key, label.clone());
        label
    }

    pub(crate) fn register_runner(
        &mut self,
        scope: RunnerScope,
        name: &str,
        labels: &[String],
        client_id: String,
        public_key: RsaPublicKey,
    ) -> Result<Runner, StateError> {
        if self
            .runners
            .values()
            .any(|r| r.scope == scope && r.name.eq_ignore_ascii_case(name))
        {
            return Err(StateError::Conflict(format!(
                "Already exists - A runner with the name {name} already exists."
            )));
        }
        let mut runner_labels: Vec<Label> = Vec::new();
        for name in labels {
            let label = self.label(name);
            if !runner_labels.iter().any(|l| l.id == label.id) {
                runner_labels.push(label);
            }
        }
        let runner = Runner {
            id: bump(&mut self.next_runner),
            name: name.to_string(),
            scope,
            labels: runner_labels,
            online: false,
            busy: false,
            client_id,
            public_key,
            job_id: None,
            last_contact: None,
        };
        self.runners.insert(runner.id, runner.clone());
        Ok(runner)
    }

    pub(crate) fn runners_in(&self, scope: RunnerScope) -> Vec<&Runner> {
        self.runners.values().filter(|r| r.scope == scope).collect()
    }

    /// Removes a runner that is not running a job; its credential stops working.
    pub(crate) fn delete_runner(&mut self, scope: RunnerScope, id: u64) -> Result<(), StateError> {
        let runner = self
            .runners
            .get(&id)
            .filter(|r| r.scope == scope)
            .ok_or(StateError::NotFound)?;
        if runner.busy {
            return Err(StateError::Invalid(format!(
                "Bad request - Runner \"{}\" is still running a job\"",
                runner.name
            )));
        }
        self.forget_runner(id);
        Ok(())
    }

    fn forget_runner(&mut self, id: u64) {
        self.runners.remove(&id);
        self.runner_tokens.retain(|_, (runner, _)| *runner != id);
    }

    pub(crate) fn runner_by_client_id(&self, client_id: &str) -> Option<&Runner> {
        self.runners.values().find(|r| r.client_id == client_id)
    }

    pub(crate) fn issue_runner_token(
        &mut self,
        runner_id: u64,
        expires_at: DateTime<Utc>,
    ) -> SecretString {
        let token = random_secret("");
        self.runner_tokens
            .insert(digest(&token), (runner_id, expires_at));
        SecretString::from(token)
    }

    pub(crate) fn runner_for_token(&self, token: &str, now: DateTime<Utc>) -> Option<&Runner> {
        let (runner_id, expires_at) = self.runner_tokens.get(&digest(token))?;
        if *expires_at <= now {
            return None;
        }
        self.runners.get(runner_id)
    }
}
