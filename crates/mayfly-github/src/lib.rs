//! The GitHub side of mayfly: App authentication (RS256 JWT, installation tokens), the REST
//! client, webhook verification and typed webhook payloads, and "Sign in with GitHub" (`oauth`).
#![forbid(unsafe_code)]

pub mod app;
pub mod oauth;
pub mod rest;
pub mod secret;
pub mod webhook;

pub use app::{AppAuthError, AppCredentials};
pub use oauth::{OAuthApp, OAuthAppConfig, OAuthError, User, UserInstallation, UserToken};
pub use rest::{
    Exchange, GitHubClient, GitHubClientConfig, GitHubError, JitConfigRequest, RequestObserver,
    RetryPolicy, TokenScope,
};
pub use secret::{
    AppJwt, AppPrivateKeyPem, InstallationToken, JitConfig, OAuthClientSecret, UserAccessToken,
    UserRefreshToken,
};
