//! `mayfly github app create`: makes the GitHub App in one step with GitHub's manifest flow
//! (CONTRACTS.md §9). It serves a one-time page on a loopback address; the page posts the
//! manifest (the permissions and events mayfly needs, the webhook and OAuth callback URLs) to
//! GitHub; GitHub sends the browser back with a code; the code is converted
//! (`POST /app-manifests/{code}/conversions`) into the App's id, private key, webhook secret and
//! OAuth client secret, which are sealed into the server's store for every server on that
//! database. Nothing is written to disk in clear.
//!
//! The page and the redirect back are plain HTTP on loopback, as for OAuth's native-app
//! redirects (RFC 8252 §7.3): the browser runs on this machine (or reaches it through an SSH
//! tunnel), and the code is single-use, lives an hour and is bound to a random `state`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::{Args, Subcommand};
use mayfly_github::{AppCredentials, AppPrivateKeyPem, OAuthClientSecret};
use mayfly_server::github_app::StoredApp;
use mayfly_store::{NewAudit, Store};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use url::Url;

use super::server::{load_config, open_store};
use super::token::cli_actor;
use crate::exit::{ConfigContext, Failure, RuntimeContext};

#[derive(Debug, Subcommand)]
pub enum GithubCommand {
    /// The GitHub App mayfly acts as.
    #[command(subcommand)]
    App(AppCommand),
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create the GitHub App with GitHub's manifest flow and seal its credentials into the
    /// server's store: open the printed address in a browser signed in to GitHub, press the
    /// button, confirm on GitHub. Servers started afterwards with a `[github]` section that
    /// names no app_id use it.
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The server's TOML configuration (for the database and the master key).
    #[arg(long, short, env = "MAYFLY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server's data directory [default: from the configuration, /var/lib/mayfly].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The organisation that owns the App (it can then register organisation runners too).
    /// Without it, the App belongs to your personal account.
    #[arg(long, value_name = "ORG")]
    org: Option<String>,
    /// This server's address as GitHub and browsers reach it, e.g. https://ci.example.com:
    /// webhooks go to <URL>/webhooks/github, dashboard sign-ins return to
    /// <URL>/dashboard/callback.
    #[arg(long, value_name = "URL")]
    url: Url,
    /// The App's name on GitHub (unique on GitHub; you can change it on GitHub's page).
    #[arg(long, default_value = "mayfly")]
    name: String,
    /// GitHub's web address: https://github.com, a GHES host, or the simulator's.
    #[arg(long, value_name = "URL", default_value = "https://github.com")]
    github_url: Url,
    /// GitHub's API [default: [github] api_url of the configuration, else
    /// https://api.github.com/].
    #[arg(long, value_name = "URL")]
    api_url: Option<Url>,
    /// An extra root certificate (PEM) to trust for the API [default: [github] ca_file].
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Where the one-time page listens (a loopback address; forward it with `ssh -L` when the
    /// browser runs elsewhere). Port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8765")]
    listen: SocketAddr,
    /// Give up after this many seconds (GitHub's codes live one hour).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    timeout_secs: u64,
    /// Replace an App already stored (the old App stays on GitHub: delete it there).
    #[arg(long)]
    replace: bool,
}

pub async fn run(command: GithubCommand) -> Result<(), Failure> {
    match command {
        GithubCommand::App(AppCommand::Create(args)) => create(args).await,
    }
}

/// The permissions mayfly needs (CONTRACTS.md §9.4): repository runners (administration:
/// write), runs and jobs (actions: read, which also receives `workflow_job`), metadata; and for
/// an organisation's App, the organisation's runners.
pub fn manifest_permissions(org: bool) -> Value {
    let mut permissions = json!({
        "actions": "read",
        "administration": "write",
        "metadata": "read",
    });
    if org {
        permissions["organization_self_hosted_runners"] = json!("write");
    }
    permissions
}

/// The manifest for an App whose server is at `url`, sending the browser back to `redirect`.
/// Events: `workflow_job`; GitHub sends every App its `installation` and
/// `installation_repositories` events without a subscription.
pub fn manifest(name: &str, url: &Url, redirect: &Url, org: bool) -> Value {
    let at = |path: &str| {
        let mut u = url.clone();
        u.set_path(&format!("{}{path}", url.path().trim_end_matches('/')));
        u.to_string()
    };
    json!({
        "name": name,
        "url": url.as_str(),
        "description": "A fresh virtual machine for every GitHub Actions job (mayfly).",
        "hook_attributes": { "url": at("/webhooks/github"), "active": true },
        "redirect_url": redirect.as_str(),
        "callback_urls": [at("/dashboard/callback")],
        "public": false,
        "default_permissions": manifest_permissions(org),
        "default_events": ["workflow_job"],
    })
}

/// What the page's server shares with the command.
struct Flow {
    /// The form's target on GitHub (with `state`).
    action: Url,
    manifest: String,
    state: String,
    convert: Converter,
    /// The App, once converted (also ends the command).
    done: mpsc::Sender<StoredApp>,
    finished: Mutex<bool>,
}

async fn create(args: CreateArgs) -> Result<(), Failure> {
    let mut config = load_config(args.config.as_deref())?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if !args.listen.ip().is_loopback() {
        return Err(anyhow::anyhow!(
            "--listen {} is not a loopback address: the page and GitHub's redirect stay on this \
             machine (forward it with `ssh -L` to reach it from elsewhere)",
            args.listen
        ))
        .config_err();
    }
    if !matches!(args.url.scheme(), "https" | "http") || args.url.host().is_none() {
        return Err(anyhow::anyhow!(
            "--url {} is not an http(s) address",
            args.url
        ))
        .config_err();
    }
    if let Some(org) = &args.org {
        let valid = !org.is_empty()
            && org.len() <= 39
            && org.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !valid {
            return Err(anyhow::anyhow!(
                "--org {org:?} is not a GitHub organisation name"
            ))
            .config_err();
        }
    }
    let api_url = match (&args.api_url, &config.github) {
        (Some(url), _) => url.clone(),
        (None, Some(github)) => Url::parse(&github.api_url)
            .with_context(|| format!("[github] api_url `{}` is not a URL", github.api_url))
            .config_err()?,
        (None, None) => Url::parse("https://api.github.com/").config_err()?,
    };
    let ca_file = args
        .ca_file
        .clone()
        .or_else(|| config.github.as_ref().and_then(|g| g.ca_file.clone()));
    let convert = Converter::new(api_url, ca_file.as_deref()).config_err()?;

    crate::cmd::atomic_file::create_private_dir_all(&config.data_dir).config_err()?;
    let store = open_store(&config).await?;
    let sealer = mayfly_server::sealer(&config).config_err()?;
    if let Some(existing) = StoredApp::load(&sealer, store.as_ref())
        .await
        .config_err()?
    {
        if !args.replace {
            store.close().await;
            return Err(anyhow::anyhow!(
                "the database already holds GitHub App {} ({}); pass --replace to make a new \
                 one (then delete the old App on GitHub)",
                existing.app_id,
                existing.slug
            ))
            .config_err();
        }
    }

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))
        .config_err()?;
    let local = listener.local_addr().runtime_err()?;
    let page_url = Url::parse(&format!("http://{local}/")).config_err()?;
    let redirect = page_url.join("callback").config_err()?;
    let state = hex::encode(rand::random::<[u8; 16]>());
    let mut action = match &args.org {
        Some(org) => args
            .github_url
            .join(&format!("organizations/{org}/settings/apps/new")),
        None => args.github_url.join("settings/apps/new"),
    }
    .config_err()?;
    action.query_pairs_mut().append_pair("state", &state);
    let manifest = manifest(&args.name, &args.url, &redirect, args.org.is_some());
    let (done, mut created) = mpsc::channel(1);
    let flow = Arc::new(Flow {
        action,
        manifest: manifest.to_string(),
        state,
        convert,
        done,
        finished: Mutex::new(false),
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/callback", get(callback))
        .with_state(flow);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let serving = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        })
    };
    eprintln!("Open {page_url} in a browser signed in to GitHub, and press the button.");
    eprintln!(
        "The App will be owned by {}, send webhooks to {}webhooks/github, and be stored sealed in {}.",
        args.org.as_deref().map_or("your personal account".to_owned(), |o| format!("the organisation {o}")),
        args.url.as_str().trim_end_matches('/').to_owned() + "/",
        store_name(&config),
    );
    let outcome = tokio::select! {
        app = created.recv() => app.ok_or_else(|| anyhow::anyhow!("the page stopped")),
        () = tokio::time::sleep(Duration::from_secs(args.timeout_secs)) => Err(anyhow::anyhow!(
            "no App was created within {} s; run the command again", args.timeout_secs
        )),
        r = tokio::signal::ctrl_c() => {
            let _ = r;
            Err(anyhow::anyhow!("interrupted: no App was created"))
        }
    };
    let result = match outcome {
        Ok(app) => save(&app, &sealer, store.as_ref()).await.map(|()| app),
        Err(e) => Err(e),
    };
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
    store.close().await;
    let app = result.runtime_err()?;
    print_created(&app);
    Ok(())
}

fn store_name(config: &mayfly_server::ServerConfig) -> String {
    match &config.database.postgres_url {
        Some(_) => "the PostgreSQL database".into(),
        None => config.database_path().display().to_string(),
    }
}

async fn save(
    app: &StoredApp,
    sealer: &mayfly_store::Sealer,
    store: &dyn Store,
) -> anyhow::Result<()> {
    app.save(sealer, store)
        .await
        .context("the App was created on GitHub but could not be stored; delete it on GitHub and run the command again")?;
    store
        .append_audit(&NewAudit {
            at: chrono::Utc::now(),
            actor: cli_actor(),
            source: None,
            action: "github app create".into(),
            target: Some(format!("app {} ({})", app.app_id, app.slug)),
            outcome: "ok".into(),
        })
        .await
        .context("the App is stored, but the audit log could not be written")?;
    Ok(())
}

#[allow(clippy::print_stdout)] // what was created is the command's output
fn print_created(app: &StoredApp) {
    println!("Created the GitHub App {} (id {}).", app.slug, app.app_id);
    println!("Next: install it on the accounts whose jobs mayfly runs:");
    println!("  {}/installations/new", app.html_url.trim_end_matches('/'));
    println!(
        "Then start `mayfly server` with a [github] section that has api_url and no app_id: it \
         uses this App, its webhook secret and (for the dashboard) its OAuth client."
    );
}

/// The one-time page: a form that posts the manifest to GitHub.
async fn page(State(flow): State<Arc<Flow>>) -> Response {
    if *lock(&flow.finished) {
        return message(
            StatusCode::GONE,
            "Done",
            "The App was created; close this page.",
        );
    }
    let pretty = serde_json::from_str::<Value>(&flow.manifest)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_default();
    let html = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Create the mayfly GitHub App" } }
            body {
                h1 { "Create the mayfly GitHub App" }
                p { "GitHub will show the App's settings; confirm with " b { "Create GitHub App" } "." }
                form id="manifest" action=(flow.action.as_str()) method="post" {
                    input type="hidden" name="manifest" value=(flow.manifest);
                    button type="submit" { "Create the GitHub App on GitHub" }
                }
                pre { (pretty) }
            }
        }
    };
    (
        [
            (
                "content-security-policy",
                "default-src 'none'; form-action *",
            ),
            ("referrer-policy", "no-referrer"),
        ],
        Html(html.into_string()),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
}

/// GitHub's redirect back: check `state`, convert the code, hand the App to the command.
async fn callback(State(flow): State<Arc<Flow>>, Query(query): Query<Callback>) -> Response {
    let state_ok = query.state.as_deref().is_some_and(|s| {
        use subtle::ConstantTimeEq;
        bool::from(s.as_bytes().ct_eq(flow.state.as_bytes()))
    });
    if !state_ok {
        return message(
            StatusCode::BAD_REQUEST,
            "Refused",
            "This answer does not belong to this page (its state differs). Start again from the page.",
        );
    }
    let Some(code) = query.code.filter(|c| !c.is_empty() && c.len() <= 256) else {
        return message(StatusCode::BAD_REQUEST, "Refused", "GitHub sent no code.");
    };
    if *lock(&flow.finished) {
        return message(StatusCode::GONE, "Done", "The App was already created.");
    }
    match flow.convert.convert(&code).await {
        Ok(app) => {
            *lock(&flow.finished) = true;
            let text = format!(
                "GitHub App {} (id {}) is created and its credentials are stored sealed. \
                 Install it: {}/installations/new",
                app.slug,
                app.app_id,
                app.html_url.trim_end_matches('/')
            );
            let _ = flow.done.send(app).await;
            message(StatusCode::OK, "Created", &text)
        }
        Err(e) => {
            let text = format!("{e:#}");
            tracing::warn!(error = %text, "the manifest code could not be converted");
            message(StatusCode::BAD_GATEWAY, "Not created", &text)
        }
    }
}

fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let html = maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (title) } }
            body { h1 { (title) } p { (text) } }
        }
    };
    (
        status,
        [("content-security-policy", "default-src 'none'")],
        Html(html.into_string()),
    )
        .into_response()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Calls `POST /app-manifests/{code}/conversions`.
pub struct Converter {
    http: reqwest::Client,
    api_url: Url,
}

impl std::fmt::Debug for Converter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Converter")
            .field("api_url", &self.api_url.as_str())
            .finish()
    }
}

/// GitHub's 201 answer, as far as mayfly uses it (CONTRACTS.md §9.3).
#[derive(Deserialize)]
struct Conversion {
    id: u64,
    #[serde(default)]
    slug: Option<String>,
    name: String,
    html_url: String,
    client_id: String,
    client_secret: String,
    webhook_secret: Option<String>,
    pem: String,
}

impl Converter {
    pub fn new(mut api_url: Url, ca_file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        if !api_url.path().ends_with('/') {
            let path = format!("{}/", api_url.path());
            api_url.set_path(&path);
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca_file {
            let pem =
                std::fs::read(ca).with_context(|| format!("could not read {}", ca.display()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        Ok(Self {
            http: builder.build().context("could not make the HTTP client")?,
            api_url,
        })
    }

    /// Converts `code` into the App, checking that GitHub's answer is complete and its key
    /// usable before anything is kept.
    pub async fn convert(&self, code: &str) -> anyhow::Result<StoredApp> {
        let code: String = url::form_urlencoded::byte_serialize(code.as_bytes()).collect();
        let url = self
            .api_url
            .join(&format!("app-manifests/{code}/conversions"))
            .context("the API URL cannot take the code")?;
        let response = self
            .http
            .post(url)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header("user-agent", concat!("mayfly/", env!("CARGO_PKG_VERSION")))
            .send()
            .await
            .context("GitHub could not be reached to convert the code")?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .context("GitHub's answer was cut off")?;
        match status.as_u16() {
            201 => {}
            404 | 422 => anyhow::bail!(
                "GitHub does not know this code ({status}): it was used already, or is older \
                 than an hour. Start again from the page."
            ),
            _ => anyhow::bail!("GitHub answered {status} to the conversion"),
        }
        let conversion: Conversion = serde_json::from_slice(&body)
            .context("GitHub's conversion answer lacks fields mayfly needs (id, name, html_url, client_id, client_secret, webhook_secret, pem)")?;
        let webhook_secret = conversion
            .webhook_secret
            .filter(|s| !s.is_empty())
            .context(
            "GitHub's conversion answer has no webhook secret; is the manifest's webhook active?",
        )?;
        let pem = AppPrivateKeyPem::new(conversion.pem);
        AppCredentials::new(conversion.id, pem.clone())
            .context("the App private key in GitHub's answer is not a usable RSA key")?;
        let slug = conversion.slug.unwrap_or(conversion.name);
        Ok(StoredApp::new(
            conversion.id,
            slug,
            conversion.html_url,
            conversion.client_id,
            OAuthClientSecret::new(conversion.client_secret),
            webhook_secret,
            pem,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A stand-in for GitHub's conversion endpoint that answers `status` with `body`.
    async fn github_answering(status: u16, body: Value) -> Url {
        let app = Router::new().route(
            "/app-manifests/{code}/conversions",
            axum::routing::post(move || {
                let body = body.clone();
                async move { (StatusCode::from_u16(status).unwrap(), axum::Json(body)) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// The error converting a code against a GitHub that answers `status` with `body`.
    async fn conversion_error(status: u16, body: Value) -> String {
        let err = Converter::new(github_answering(status, body).await, None)
            .unwrap()
            .convert("abc")
            .await
            .unwrap_err();
        format!("{err:#}")
    }

    #[tokio::test]
    async fn an_incomplete_or_refused_conversion_is_a_clear_error() {
        let err = conversion_error(201, json!({ "id": 1, "name": "mayfly" })).await;
        assert!(err.contains("lacks fields"), "{err}");

        let bad_key = json!({
            "id": 1, "name": "mayfly", "html_url": "https://github.com/apps/mayfly",
            "client_id": "Iv23li", "client_secret": "s", "webhook_secret": "w",
            "pem": "not a key",
        });
        let err = conversion_error(201, bad_key).await;
        assert!(err.contains("not a usable RSA key"), "{err}");

        let err = conversion_error(404, json!({ "message": "Not Found" })).await;
        assert!(err.contains("used already, or is older"), "{err}");
    }

    #[test]
    fn the_manifest_asks_for_what_mayfly_needs_only() {
        let url = Url::parse("https://ci.example.com").unwrap();
        let back = Url::parse("http://127.0.0.1:8765/callback").unwrap();
        let m = manifest("mayfly", &url, &back, false);
        assert_eq!(
            m["hook_attributes"]["url"],
            "https://ci.example.com/webhooks/github"
        );
        assert_eq!(
            m["callback_urls"],
            json!(["https://ci.example.com/dashboard/callback"])
        );
        assert_eq!(
            m["default_permissions"],
            json!({ "actions": "read", "administration": "write", "metadata": "read" })
        );
        assert_eq!(m["default_events"], json!(["workflow_job"]));
        let org = manifest("mayfly", &url, &back, true);
        assert_eq!(
            org["default_permissions"]["organization_self_hosted_runners"],
            "write"
        );
    }
}
