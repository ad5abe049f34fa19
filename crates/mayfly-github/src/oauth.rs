//! "Sign in with GitHub" for the App's users (CONTRACTS.md §8): the authorize URL, the code
//! exchange on the web host (`github.com`), and the user's identity and installations on the API
//! host. Invariants: the client secret, codes and tokens travel only in request bodies and the
//! `Authorization` header, never in a URL, log line or Debug output; GitHub's 200-with-`error`
//! answers become typed errors; pagination follows `Link: rel="next"` on the API origin only.

use std::time::Duration;

use mayfly_core::InstallationId;
use reqwest::header::{ACCEPT, AUTHORIZATION, USER_AGENT};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::rest::{http_client, next_link};
use crate::secret::{OAuthClientSecret, UserAccessToken, UserRefreshToken};

/// Why signing a user in failed. Messages never carry a code, token or secret.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("GitHub refused the App's client id or client secret (incorrect_client_credentials)")]
    IncorrectClientCredentials,
    #[error("the redirect_uri is not the one the code was issued for (redirect_uri_mismatch)")]
    RedirectUriMismatch,
    #[error("the code is incorrect, expired or already used (bad_verification_code)")]
    BadVerificationCode,
    #[error("the user's primary email is not verified (unverified_user_email)")]
    UnverifiedUserEmail,
    #[error("GitHub refused the token request: {0}")]
    Refused(String),
    #[error("GitHub refused the user token for {path} (401); the user must sign in again")]
    Unauthorized { path: String },
    #[error("GitHub forbade {path} (403)")]
    Forbidden { path: String },
    #[error("GitHub answered {path} with unexpected status {status}")]
    Unexpected { path: String, status: StatusCode },
    #[error("GitHub's answer to {path} could not be read")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("GitHub's token answer was not a bearer token")]
    NotBearer,
    #[error("could not reach GitHub at {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("a pagination link pointed away from the configured API URL; refusing to follow it")]
    ForeignLink,
    #[error("the OAuth client could not be configured: {0}")]
    Config(String),
}

/// How the App's OAuth client is set up.
#[derive(Debug, Clone)]
pub struct OAuthAppConfig {
    /// The App's client id (`Iv23li…`), not its numeric id.
    pub client_id: String,
    pub client_secret: OAuthClientSecret,
    /// `https://github.com/`, or the simulator's URL.
    pub web_base: Url,
    /// `https://api.github.com/`, or the simulator's URL.
    pub api_base: Url,
    /// An extra root certificate (PEM) to trust, e.g. the simulator's CA.
    pub extra_root_pem: Option<Vec<u8>>,
    pub request_timeout: Duration,
}

impl OAuthAppConfig {
    pub fn new(
        client_id: impl Into<String>,
        client_secret: OAuthClientSecret,
        web_base: Url,
        api_base: Url,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret,
            web_base,
            api_base,
            extra_root_pem: None,
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// A user access token of the App and what GitHub said about it.
#[derive(Debug, Clone)]
pub struct UserToken {
    /// `ghu_…`: acts as the user, for 8 hours.
    pub access_token: UserAccessToken,
    /// `ghr_…`; absent when the App opted out of expiring user tokens.
    pub refresh_token: Option<UserRefreshToken>,
    pub expires_in: Option<Duration>,
    pub refresh_token_expires_in: Option<Duration>,
}

/// The signed-in user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    pub login: String,
    pub id: i64,
}

/// An installation of the App the user may access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInstallation {
    pub id: InstallationId,
    /// The login of the account (organisation or user) the App is installed on.
    pub account_login: String,
}

/// The token endpoint's answer: a token or an `error` (no Debug: it may hold a token).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    token_type: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    refresh_token_expires_in: Option<u64>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct InstallationPage {
    installations: Vec<InstallationItem>,
}

#[derive(Deserialize)]
struct InstallationItem {
    id: i64,
    account: Option<AccountItem>,
}

#[derive(Deserialize)]
struct AccountItem {
    // `<simple-user>` has `login`; `<enterprise>` has `slug`.
    login: Option<String>,
    slug: Option<String>,
}

/// The App's OAuth client.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    client_id: String,
    client_secret: OAuthClientSecret,
    web_base: Url,
    api_base: Url,
    http: reqwest::Client,
}

/// Pages are capped; 100 × 100 installations is far beyond any one user.
const PAGE_BUDGET: usize = 100;

fn with_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

fn shown(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.to_string()
}

impl OAuthApp {
    pub fn new(config: OAuthAppConfig) -> Result<Self, OAuthError> {
        let https = config.web_base.scheme() == "https" && config.api_base.scheme() == "https";
        let http = http_client(
            https,
            config.request_timeout,
            config.extra_root_pem.as_deref(),
        )
        .map_err(OAuthError::Config)?;
        Ok(Self {
            client_id: config.client_id,
            client_secret: config.client_secret,
            web_base: with_slash(config.web_base),
            api_base: with_slash(config.api_base),
            http,
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Where to send the user's browser (step 1). `state` must be unguessable and checked
    /// when the browser comes back.
    pub fn authorize_url(&self, redirect_uri: &Url, state: &str) -> Url {
        let mut url = join(&self.web_base, &["login", "oauth", "authorize"]);
        url.query_pairs_mut()
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri.as_str())
            .append_pair("state", state);
        url
    }

    /// Exchanges the code from the callback for a user token (step 3).
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &Url,
    ) -> Result<UserToken, OAuthError> {
        let url = join(&self.web_base, &["login", "oauth", "access_token"]);
        let form = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("code", code),
            ("redirect_uri", redirect_uri.as_str()),
        ];
        let response = self
            .http
            .post(url.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("mayfly/", env!("CARGO_PKG_VERSION")))
            .form(&form)
            .send()
            .await
            .map_err(|source| OAuthError::Transport {
                url: shown(&url),
                source,
            })?;
        let (status, _, body) = read(response, &url).await?;
        let path = url.path().to_owned();
        if status != StatusCode::OK {
            return Err(OAuthError::Unexpected { path, status });
        }
        let answer: TokenAnswer = decode(&path, &body)?;
        if let Some(error) = answer.error {
            return Err(match error.as_str() {
                "incorrect_client_credentials" => OAuthError::IncorrectClientCredentials,
                "redirect_uri_mismatch" => OAuthError::RedirectUriMismatch,
                "bad_verification_code" => OAuthError::BadVerificationCode,
                "unverified_user_email" => OAuthError::UnverifiedUserEmail,
                other => OAuthError::Refused(
                    other
                        .chars()
                        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .take(64)
                        .collect(),
                ),
            });
        }
        let bearer = answer
            .token_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer"));
        let access_token = answer.access_token.filter(|_| bearer);
        let Some(access_token) = access_token else {
            return Err(OAuthError::NotBearer);
        };
        Ok(UserToken {
            access_token: UserAccessToken::new(access_token),
            refresh_token: answer.refresh_token.map(UserRefreshToken::new),
            expires_in: answer.expires_in.map(Duration::from_secs),
            refresh_token_expires_in: answer.refresh_token_expires_in.map(Duration::from_secs),
        })
    }

    /// `GET /user`: who the token acts for (re-check it for every new token, [D3]).
    pub async fn user(&self, token: &UserToken) -> Result<User, OAuthError> {
        let url = join(&self.api_base, &["user"]);
        let (_, body) = self.get(url.clone(), token).await?;
        decode(url.path(), &body)
    }

    /// `GET /user/installations`, every page: the App's installations the user may access.
    pub async fn user_installations(
        &self,
        token: &UserToken,
    ) -> Result<Vec<UserInstallation>, OAuthError> {
        let mut url = join(&self.api_base, &["user", "installations"]);
        url.query_pairs_mut().append_pair("per_page", "100");
        let mut next = Some(url);
        let mut found = Vec::new();
        for _ in 0..PAGE_BUDGET {
            let Some(url) = next.take() else { break };
            let (headers, body) = self.get(url.clone(), token).await?;
            let page: InstallationPage = decode(url.path(), &body)?;
            found.extend(page.installations.into_iter().map(|i| {
                let account = i.account.and_then(|a| a.login.or(a.slug));
                UserInstallation {
                    id: InstallationId(i.id),
                    account_login: account.unwrap_or_default(),
                }
            }));
            next = match next_link(&headers) {
                Some(link) if self.on_api(&link) => Some(link),
                Some(_) => return Err(OAuthError::ForeignLink),
                None => None,
            };
        }
        Ok(found)
    }

    fn on_api(&self, link: &Url) -> bool {
        link.origin() == self.api_base.origin() && link.path().starts_with(self.api_base.path())
    }

    async fn get(
        &self,
        url: Url,
        token: &UserToken,
    ) -> Result<(reqwest::header::HeaderMap, bytes::Bytes), OAuthError> {
        let response = self
            .http
            .get(url.clone())
            .header(ACCEPT, "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header(USER_AGENT, concat!("mayfly/", env!("CARGO_PKG_VERSION")))
            .header(
                AUTHORIZATION,
                format!("Bearer {}", token.access_token.expose()),
            )
            .send()
            .await
            .map_err(|source| OAuthError::Transport {
                url: shown(&url),
                source,
            })?;
        let (status, headers, body) = read(response, &url).await?;
        let path = url.path().to_owned();
        match status {
            StatusCode::OK => Ok((headers, body)),
            StatusCode::UNAUTHORIZED => Err(OAuthError::Unauthorized { path }),
            StatusCode::FORBIDDEN => Err(OAuthError::Forbidden { path }),
            status => Err(OAuthError::Unexpected { path, status }),
        }
    }
}

async fn read(
    response: reqwest::Response,
    url: &Url,
) -> Result<(StatusCode, reqwest::header::HeaderMap, bytes::Bytes), OAuthError> {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|source| OAuthError::Transport {
            url: shown(url),
            source,
        })?;
    Ok((status, headers, body))
}

fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, OAuthError> {
    serde_json::from_slice(body).map_err(|source| OAuthError::Decode {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn app() -> OAuthApp {
        OAuthApp::new(OAuthAppConfig::new(
            "Iv23liABC",
            OAuthClientSecret::new("s3cr3t-value"),
            Url::parse("https://github.com").unwrap(),
            Url::parse("https://api.github.com").unwrap(),
        ))
        .unwrap()
    }

    #[test]
    fn authorize_url_carries_client_id_redirect_and_state_only() {
        let redirect = Url::parse("https://mayfly.example/auth/callback?x=1").unwrap();
        let url = app().authorize_url(&redirect, "st&ate");
        assert_eq!(
            url.as_str(),
            "https://github.com/login/oauth/authorize?client_id=Iv23liABC&redirect_uri=https%3A%2F%2Fmayfly.example%2Fauth%2Fcallback%3Fx%3D1&state=st%26ate"
        );
    }

    #[test]
    fn debug_output_hides_the_secret_and_tokens() {
        let token = UserToken {
            access_token: UserAccessToken::new("ghu_topsecret"),
            refresh_token: Some(UserRefreshToken::new("ghr_topsecret")),
            expires_in: Some(Duration::from_secs(28_800)),
            refresh_token_expires_in: None,
        };
        for shown in [format!("{:?}", app()), format!("{token:?}")] {
            assert!(
                !shown.contains("s3cr3t") && !shown.contains("topsecret"),
                "{shown}"
            );
        }
    }
}
