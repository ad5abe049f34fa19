//! Test fixtures: a started simulator with an App key pair, App JWTs, installation tokens, a
//! webhook receiver, and a timeout wrapper every test runs under.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mayfly_github::webhook::WebhookSecret;
use mayfly_sim::{
    AccountType, AppKeyPair, NewInstallation, NewRepo, Sim, SimConfig, SimHandle, SimInstallation,
};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use url::Url;

pub const SECRET: &[u8] = b"It's a Secret to Everybody";

/// Runs a test body under a timeout, so no test can hang.
pub async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(90), body)
        .await
        .expect("test timed out");
}

pub fn secret() -> WebhookSecret {
    WebhookSecret::new(SECRET.to_vec())
}

pub struct TestSim {
    pub sim: SimHandle,
    pub keys: AppKeyPair,
    pub http: reqwest::Client,
    /// The root certificate (PEM) a browser must trust when the simulator serves HTTPS.
    pub ca_pem: Option<String>,
}

pub fn config(keys: &AppKeyPair) -> SimConfig {
    let mut config = SimConfig::new(
        "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        keys.public_pem.clone(),
        secret(),
    );
    config.record_exchanges = true;
    config
}

impl TestSim {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut SimConfig)) -> Self {
        let keys = AppKeyPair::generate().unwrap();
        let mut config = config(&keys);
        adjust(&mut config);
        let sim = Sim::start(config).await.unwrap();
        Self {
            sim,
            keys,
            http: reqwest::Client::new(),
            ca_pem: None,
        }
    }

    pub fn url(&self, path: &str) -> Url {
        self.sim
            .base_url()
            .join(path.trim_start_matches('/'))
            .unwrap()
    }

    /// An App JWT with the given claims, signed with the App key (or another key).
    pub fn jwt_with(&self, claims: Value, key: Option<&AppKeyPair>) -> String {
        let keys = key.unwrap_or(&self.keys);
        let key = EncodingKey::from_rsa_pem(keys.private_pem.expose_secret().as_bytes()).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap()
    }

    /// A valid App JWT, the way octokit makes them (iat 30 s back, exp = iat + 10 min).
    pub fn jwt(&self) -> String {
        let now = chrono::Utc::now().timestamp();
        self.jwt_with(
            json!({ "iat": now - 30, "exp": now - 30 + 600, "iss": 1 }),
            None,
        )
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = self
            .http
            .request(method, self.url(path))
            .header("accept", "application/vnd.github+json");
        if let Some(auth) = auth {
            request = request.bearer_auth(auth);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, headers, value)
    }

    pub async fn get(&self, path: &str, auth: &str) -> (StatusCode, HeaderMap, Value) {
        self.call(Method::GET, path, Some(auth), None).await
    }

    pub async fn post(
        &self,
        path: &str,
        auth: &str,
        body: Value,
    ) -> (StatusCode, HeaderMap, Value) {
        self.call(Method::POST, path, Some(auth), Some(body)).await
    }

    pub fn install(&self, login: &str, kind: AccountType) -> SimInstallation {
        self.sim
            .create_installation(NewInstallation {
                account: login.into(),
                account_type: kind,
                sender: None,
            })
            .unwrap()
    }

    pub fn repo(&self, installation_id: u64, name: &str) -> String {
        self.sim
            .create_repo(NewRepo {
                installation_id,
                name: name.into(),
                private: true,
            })
            .unwrap()
            .full_name
    }

    /// An installation access token (all repositories).
    pub async fn token(&self, installation_id: u64) -> String {
        let (status, _, body) = self
            .call(
                Method::POST,
                &format!("/app/installations/{installation_id}/access_tokens"),
                Some(&self.jwt()),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_string()
    }

    /// An org `acme` with repo `acme/api`, and its token.
    pub async fn org_with_repo(&self) -> (SimInstallation, String, String) {
        let inst = self.install("acme", AccountType::Organization);
        let repo = self.repo(inst.id, "api");
        let token = self.token(inst.id).await;
        (inst, repo, token)
    }

    /// A JIT config for a runner with these labels in `repo`.
    pub async fn jit(&self, token: &str, repo: &str, name: &str, labels: &[&str]) -> (u64, String) {
        let (status, _, body) = self
            .post(
                &format!("/repos/{repo}/actions/runners/generate-jitconfig"),
                token,
                json!({ "name": name, "runner_group_id": 1, "labels": labels }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["runner"]["id"].as_u64().unwrap(),
            body["encoded_jit_config"].as_str().unwrap().to_string(),
        )
    }

    /// Validates every recorded REST exchange against the contract.
    pub fn check_contract(&self) {
        super::contract::check_exchanges(&self.sim.exchanges());
    }
}

/// One received webhook.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `event.action`, e.g. `workflow_job.queued`.
    pub fn kind(&self) -> String {
        let json = self.json();
        match json.get("action").and_then(Value::as_str) {
            Some(action) => format!("{}.{action}", self.header("x-github-event").unwrap_or("")),
            None => self.header("x-github-event").unwrap_or("").to_string(),
        }
    }
}

#[derive(Clone)]
struct ReceiverState {
    tx: mpsc::UnboundedSender<Received>,
    status: Arc<Mutex<u16>>,
}

/// A tiny webhook endpoint; every delivery it gets is checked against the contract.
pub struct Receiver {
    pub url: Url,
    rx: mpsc::UnboundedReceiver<Received>,
    status: Arc<Mutex<u16>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(Mutex::new(200));
        let state = ReceiverState {
            tx,
            status: Arc::clone(&status),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: Url::parse(&format!("http://{addr}/hook")).unwrap(),
            rx,
            status,
            _server: server,
        }
    }

    /// What the receiver answers from now on.
    pub fn answer(&self, status: u16) {
        *self.status.lock().unwrap() = status;
    }

    /// The next delivery (bounded wait), checked against the webhook contract.
    pub async fn next(&mut self) -> Received {
        let received = tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .expect("no webhook arrived")
            .expect("receiver closed");
        super::contract::check_webhook(&received.headers, &received.body, &secret());
        received
    }

    /// Skips deliveries until one of this kind (`workflow_job.queued`) arrives.
    pub async fn next_of(&mut self, kind: &str) -> Received {
        loop {
            let received = self.next().await;
            if received.kind() == kind {
                return received;
            }
        }
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let _ = state.tx.send(Received { headers, body });
    StatusCode::from_u16(*state.status.lock().unwrap()).unwrap()
}
