//! The runner side of the simulated Actions service, for the stand-in runner (in tests and in
//! the VM): decode an `encoded_jit_config`, authenticate with a JWT client assertion signed by
//! the config's RSA key, acquire the one job, complete it. The key and access token stay in
//! memory and are never printed.

use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use rsa::pkcs1::EncodeRsaPrivateKey;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use url::Url;

pub use crate::broker::AcquiredJob;
use crate::broker::TokenResponse;
use crate::jitconfig::{JitConfig, JitConfigError};
use crate::state::Conclusion;

/// Client assertions live five minutes at most.
const ASSERTION_LIFETIME_S: i64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum RunnerClientError {
    #[error("the JIT config is unusable")]
    JitConfig(#[from] JitConfigError),
    #[error("the CA certificate is not PEM")]
    Ca(#[source] reqwest::Error),
    #[error("building the HTTP client failed")]
    Client(#[source] reqwest::Error),
    #[error("the JIT config names an invalid URL")]
    Url(#[from] url::ParseError),
    #[error("signing the client assertion failed")]
    Sign,
    #[error("request to the Actions service failed")]
    Http(#[source] reqwest::Error),
    #[error("the Actions service refused this runner's credential")]
    Unauthorized,
    #[error("this runner already took its one job")]
    AlreadyAssigned,
    #[error("the Actions service answered {0}")]
    Unexpected(u16),
}

/// A JIT runner's connection to the (simulated) Actions service.
pub struct RunnerClient {
    http: reqwest::Client,
    config: JitConfig,
    server_url: Url,
    access_token: Option<SecretString>,
}

impl std::fmt::Debug for RunnerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerClient")
            .field("config", &self.config)
            .field("authenticated", &self.access_token.is_some())
            .finish_non_exhaustive()
    }
}

impl RunnerClient {
    /// Decodes the config; `ca_pem` is the root to trust when the service is served over HTTPS.
    pub fn from_encoded_jit_config(
        encoded: &str,
        ca_pem: Option<&str>,
    ) -> Result<Self, RunnerClientError> {
        let config = JitConfig::decode(encoded)?;
        let server_url = Url::parse(&config.server_url)?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(30));
        if let Some(pem) = ca_pem {
            let cert =
                reqwest::Certificate::from_pem(pem.as_bytes()).map_err(RunnerClientError::Ca)?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().map_err(RunnerClientError::Client)?;
        Ok(Self {
            http,
            config,
            server_url,
            access_token: None,
        })
    }

    pub fn runner_id(&self) -> u64 {
        self.config.agent_id
    }

    pub fn runner_name(&self) -> &str {
        &self.config.agent_name
    }

    /// The decoded JIT config (its Debug output redacts the key).
    pub fn config(&self) -> &JitConfig {
        &self.config
    }

    fn client_assertion(&self) -> Result<String, RunnerClientError> {
        let der = self
            .config
            .private_key
            .to_pkcs1_der()
            .map_err(|_| RunnerClientError::Sign)?;
        let key = EncodingKey::from_rsa_der(der.as_bytes());
        let now = Utc::now().timestamp();
        let claims = json!({
            "iss": self.config.client_id,
            "sub": self.config.client_id,
            "aud": self.config.authorization_url,
            "iat": now,
            "nbf": now - 30,
            "exp": now + ASSERTION_LIFETIME_S,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
            .map_err(|_| RunnerClientError::Sign)
    }

    /// Exchanges a signed client assertion for an access token.
    pub async fn authenticate(&mut self) -> Result<(), RunnerClientError> {
        let assertion = self.client_assertion()?;
        let form = [
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
        ];
        let response = self
            .http
            .post(&self.config.authorization_url)
            .form(&form)
            .send()
            .await
            .map_err(RunnerClientError::Http)?;
        match response.status() {
            StatusCode::OK => {
                let token: TokenResponse =
                    response.json().await.map_err(RunnerClientError::Http)?;
                self.access_token = Some(SecretString::from(token.access_token));
                Ok(())
            }
            StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST => {
                Err(RunnerClientError::Unauthorized)
            }
            other => Err(RunnerClientError::Unexpected(other.as_u16())),
        }
    }

    async fn token(&mut self) -> Result<String, RunnerClientError> {
        if self.access_token.is_none() {
            self.authenticate().await?;
        }
        self.access_token
            .as_ref()
            .map(|t| t.expose_secret().to_string())
            .ok_or(RunnerClientError::Unauthorized)
    }

    /// Asks for a job once: `Ok(None)` when nothing matching is queued yet (poll again).
    pub async fn acquire(&mut self) -> Result<Option<AcquiredJob>, RunnerClientError> {
        let token = self.token().await?;
        let url = self.server_url.join("_sim/broker/acquire")?;
        let response = self
            .http
            .post(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(RunnerClientError::Http)?;
        match response.status() {
            StatusCode::OK => Ok(Some(
                response.json().await.map_err(RunnerClientError::Http)?,
            )),
            StatusCode::NO_CONTENT => Ok(None),
            StatusCode::UNAUTHORIZED => Err(RunnerClientError::Unauthorized),
            StatusCode::CONFLICT => Err(RunnerClientError::AlreadyAssigned),
            other => Err(RunnerClientError::Unexpected(other.as_u16())),
        }
    }

    /// Renews the lock on the job it runs (the runner is alive and working on it).
    pub async fn renew(&mut self, job_id: u64) -> Result<(), RunnerClientError> {
        self.post_job(job_id, "renew", None).await
    }

    /// Reports the job's result; afterwards the runner no longer exists.
    pub async fn complete(
        &mut self,
        job_id: u64,
        conclusion: Conclusion,
        output: &str,
    ) -> Result<(), RunnerClientError> {
        let body = json!({ "conclusion": conclusion, "output": output });
        self.post_job(job_id, "complete", Some(body)).await
    }

    /// `POST _sim/broker/jobs/{job_id}/{action}` with the runner's token; 200 is success.
    async fn post_job(
        &mut self,
        job_id: u64,
        action: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(), RunnerClientError> {
        let token = self.token().await?;
        let url = self
            .server_url
            .join(&format!("_sim/broker/jobs/{job_id}/{action}"))?;
        let mut request = self.http.post(url).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(RunnerClientError::Http)?;
        match response.status() {
            StatusCode::OK => Ok(()),
            StatusCode::UNAUTHORIZED => Err(RunnerClientError::Unauthorized),
            other => Err(RunnerClientError::Unexpected(other.as_u16())),
        }
    }
}
