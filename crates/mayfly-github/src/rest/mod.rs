//! The GitHub REST client: App-JWT and installation-token authentication, the endpoints mayfly
//! uses (CONTRACTS.md §2), bounded retries on rate limits and server errors.

mod client;
mod error;
mod retry;
mod transport;
mod types;

pub(crate) use client::http_client;
pub use client::{
    Exchange, GitHubClient, GitHubClientConfig, JitRunner, Permissions, QueuedJob, RequestObserver,
    TokenScope,
};
pub use error::GitHubError;
pub use retry::RetryPolicy;
pub(crate) use transport::next_link;
pub use types::{
    AppInstallation, InstallationAccount, InstallationRepository, JitConfigRequest, Job, Runner,
    RunnerLabel, WorkflowRun,
};
