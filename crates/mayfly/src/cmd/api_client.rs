//! A client of the server's `/api/v1` for CLI commands: the server's URL, a bearer token read
//! from a file (never from argv, where `ps` and shell history would show it) and an optional
//! private CA. Answers other than 200 become a [`Failure`] that says what to do.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use mayfly_server::read_secret_file;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use url::Url;

use crate::exit::{ConfigContext, Failure, RuntimeContext};

/// Where the server is and how to prove who is asking.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The server's base URL, e.g. --server https://mayfly.example.com:8443 (plain http:// only
    /// on loopback, for a server started with --insecure-dev).
    #[arg(long, env = "MAYFLY_SERVER", value_name = "URL")]
    pub server: Url,
    /// A file holding an API token (`mayfly token create` prints one; keep the file mode 600),
    /// e.g. --token-file ~/.config/mayfly/token. Tokens are never taken on the command line.
    #[arg(long, env = "MAYFLY_TOKEN_FILE", value_name = "FILE")]
    pub token_file: PathBuf,
    /// A PEM CA certificate to trust for the server (a private CA such as the quickstart's
    /// ca/ca.pem), e.g. --ca-file /etc/mayfly/ca.pem. Without it, the system's roots.
    #[arg(long, env = "MAYFLY_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// A connection to one server with one token.
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: SecretString,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Reads the token and CA; refuses a token file others can read and a token sent in the
    /// clear beyond this machine.
    pub fn new(args: &ApiArgs) -> Result<Self, Failure> {
        let base = &args.server;
        let loopback = match base.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        };
        match base.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => {
                return Err(anyhow!(
                    "--server must be https:// (http:// only on loopback), not {base}"
                ))
                .config_err()
            }
        }
        // The file's bytes are wiped when dropped; the token lives on only in the SecretString.
        let raw = zeroize::Zeroizing::new(
            read_secret_file(&args.token_file)
                .with_context(|| "could not read the API token (--token-file, MAYFLY_TOKEN_FILE)")
                .config_err()?,
        );
        let token = std::str::from_utf8(&raw)
            .map_err(|_| anyhow!("{} is not a token", args.token_file.display()))
            .config_err()?;
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &args.ca_file {
            let pem = std::fs::read(ca)
                .with_context(|| format!("could not read the CA file {}", ca.display()))
                .config_err()?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))
                .config_err()?;
            builder = builder.add_root_certificate(cert);
        }
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            http: builder.build().config_err()?,
            base,
            token: SecretString::from(token.trim().to_owned()),
        })
    }

    /// GETs `path` (relative to the base URL, e.g. `api/v1/usage/jobs`) with `query`; the body
    /// of a 200 answer.
    pub async fn get(&self, path: &str, query: &impl Serialize) -> Result<Vec<u8>, Failure> {
        let url = self.base.join(path).runtime_err()?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.token.expose_secret()))
            .map_err(|_| anyhow!("the token file holds characters a token cannot have"))
            .config_err()?;
        auth.set_sensitive(true);
        let response = self
            .http
            .get(url)
            .query(query)
            .header(AUTHORIZATION, auth)
            .send()
            .await
            .with_context(|| format!("could not reach the server at {}", self.base))
            .runtime_err()?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("the answer of {} broke off", self.base))
            .runtime_err()?;
        if status == StatusCode::OK {
            return Ok(body.to_vec());
        }
        Err(refusal(status, &body))
    }
}

/// The `{code, message}` of an error answer.
#[derive(serde::Deserialize)]
struct ErrorBody {
    message: Option<String>,
}

fn refusal(status: StatusCode, body: &[u8]) -> Failure {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.message)
        .map(|m| strip_controls(&m));
    match status {
        StatusCode::BAD_REQUEST => Failure::BadInput(anyhow!(
            "the server refused the query: {}",
            message.as_deref().unwrap_or("bad request")
        )),
        StatusCode::UNAUTHORIZED => Failure::Runtime(anyhow!(
            "the server did not accept the token (401): check --token-file / MAYFLY_TOKEN_FILE; \
             the token may be mistyped, revoked, or for another server (`mayfly token list` on \
             the server shows the live ones)"
        )),
        StatusCode::FORBIDDEN => Failure::Runtime(anyhow!(
            "the token may not see this (403): a tenant token sees only its own installation; \
             leave out --installation or name the token's own, or use a read or admin token"
        )),
        other => Failure::Runtime(anyhow!(
            "the server answered {other}{}",
            message.map(|m| format!(": {m}")).unwrap_or_default()
        )),
    }
}

/// Text from the server (customers' names among it) as it may go to a terminal.
pub fn strip_controls(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}
