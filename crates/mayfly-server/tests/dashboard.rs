//! The usage dashboard as a customer meets it, in a real browser: headless Chromium, driven over
//! WebDriver (chromedriver), signs in through the simulator's GitHub sign-in page as a user of
//! one organisation after a run of jobs through the server, sees that organisation's jobs and
//! charts with data points (a screenshot is kept in `target/test-artifacts/`), and does not see
//! the other organisation's — not by editing the URL, not through an export link. A user in no
//! organisation sees an empty dashboard. Forged or stale OAuth `state`, a tampered or expired
//! session cookie and an operator's wrong token are refused; the operator's admin token sees every tenant; sign-ins
//! and sign-outs are in the audit log; no export or page carries a token or secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use mayfly_server::tokens::{self, Scope};
use mayfly_sim::{AccountType, Conclusion, NewInstallation, NewJob, NewRepo};
use mayfly_store::{CommonStore, Store};
use support::agent::FakeAgent;

const SECRET: &[u8] = b"dashboard-test-secret";

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
        let path = PathBuf::from(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is not installed: scripts/setup installs chromium and chromium-driver");
}

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Owned by `Driver` at once, so its Drop kills and waits for it on every path.
        let driver = Self {
            child: Command::new(tool("chromedriver"))
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            port,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not listen on {port}");
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": tool("chromium"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1400,1900"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signs `login` in through the simulator's GitHub page; returns the dashboard's HTML.
async fn sign_in(browser: &Client, base: &str, login: &str) -> String {
    browser.goto(&format!("{base}dashboard")).await.unwrap();
    browser
        .find(Locator::Css("#sign-in-github"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Css("#login_field"))
        .await
        .unwrap()
        .send_keys(login)
        .await
        .unwrap();
    browser
        .find(Locator::Css("#password"))
        .await
        .unwrap()
        .send_keys(mayfly_sim::SIM_USER_PASSWORD)
        .await
        .unwrap();
    browser
        .find(Locator::Css("[name=commit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Css("#who"))
        .await
        .unwrap();
    browser.source().await.unwrap()
}

async fn sign_out(browser: &Client) {
    browser
        .find(Locator::Css("header form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Css("#sign-in-github"))
        .await
        .unwrap();
}

/// What the browser's session fetches at `path` (the exports are downloads, so they are
/// fetched with the browser's cookie by a plain client).
async fn fetch_as(browser: &Client, base: &str, path: &str) -> (u16, String) {
    let cookies = browser.get_all_cookies().await.unwrap();
    let header = cookies
        .iter()
        .map(|c| format!("{}={}", c.name(), c.value()))
        .collect::<Vec<_>>()
        .join("; ");
    let response = reqwest::Client::new()
        .get(format!("{base}{}", path.trim_start_matches('/')))
        .header("cookie", header)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_with_github_and_sees_only_their_organisations_usage() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let (sim, github) = support::sim_with_client(SECRET).await;
        let secret_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret_file.path(), sim.oauth_client_secret().expose()).unwrap();
        std::fs::set_permissions(
            secret_file.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        // The server's address is known only once it listens; the dashboard's public URL is
        // that address, so the listener is bound first and handed over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://localhost:{port}/");
        let client_id = sim.oauth_app().client_id;
        let t = support::start(false, SECRET, Some(github), |config| {
            config.listen = format!("127.0.0.1:{port}").parse().unwrap();
            config.profiles = vec![support::profile(600)];
            config.github = Some(mayfly_server::GitHubConfig {
                api_url: sim.base_url().to_string(),
                app_id: Some(1),
                private_key_file: Some("unused".into()),
                ca_file: None,
            });
            config.dashboard = Some(mayfly_server::DashboardConfig {
                public_url: base.clone(),
                client_id: Some(client_id.clone()),
                client_secret_file: Some(secret_file.path().to_owned()),
                github_url: sim.base_url().to_string(),
                session_hours: 8,
            });
        })
        .await;
        sim.set_oauth_callback_urls(vec![format!("{base}dashboard/callback").parse().unwrap()])
            .unwrap();
        sim.set_webhook_url(Some(
            format!("{}webhooks/github", t.server.base_url())
                .parse()
                .unwrap(),
        ));

        // A run: acme-robotics has two jobs (one fails), globex-labs one.
        let mut agent = FakeAgent::connect(t.server.agent_addr().unwrap()).await;
        let mut repos = Vec::new();
        for (org, repo) in [("acme-robotics", "firmware"), ("globex-labs", "site")] {
            let inst = sim
                .create_installation(NewInstallation {
                    account: org.into(),
                    account_type: AccountType::Organization,
                    sender: None,
                })
                .unwrap();
            repos.push(
                sim.create_repo(NewRepo {
                    installation_id: inst.id,
                    name: repo.into(),
                    private: true,
                })
                .unwrap()
                .full_name,
            );
        }
        let mut ids = Vec::new();
        for repo in [&repos[0], &repos[0], &repos[1]] {
            let job = sim
                .create_job(NewJob {
                    repository: repo.clone(),
                    labels: vec!["self-hosted".into(), "mayfly-linux-2cpu".into()],
                    ..NewJob::default()
                })
                .unwrap();
            ids.push(job.id);
        }
        let first_acme_fails = ids[0];
        agent
            .run_jobs(3, move |job| {
                if job == first_acme_fails {
                    Conclusion::Failure
                } else {
                    Conclusion::Success
                }
            })
            .await;
        // The completions arrive as webhooks the processor applies: the store is asked until
        // it has them (the test's own timeout bounds the wait).
        loop {
            let jobs = t.store.jobs().await.unwrap();
            if jobs.len() == 3 && jobs.iter().all(|j| j.completed_at.is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let driver = Driver::start().await;
        let browser = driver.browser().await;

        // mona is in acme-robotics only.
        let page = sign_in(&browser, &base, "mona").await;
        assert!(page.contains("Signed in as github:mona"), "{page}");
        assert!(page.contains("acme-robotics/firmware"), "{page}");
        assert!(!page.contains("globex"), "another org's data on the page");
        let rows = browser
            .find_all(Locator::Css("#jobs tbody tr[data-job-id]"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 2, "acme's two jobs");
        for chart in [
            "#chart-minutes",
            "#chart-minutes-repo",
            "#chart-jobs",
            "#chart-queue",
        ] {
            let points = browser
                .find_all(Locator::Css(&format!(
                    "{chart} rect[data-value], {chart} circle[data-value]"
                )))
                .await
                .unwrap();
            assert!(!points.is_empty(), "{chart} has no data points");
        }
        let failed = browser
            .find_all(Locator::Css("#chart-jobs rect[data-series=failure]"))
            .await
            .unwrap();
        assert_eq!(failed.len(), 1, "the failed job is charted");
        let waterfall = browser
            .find_all(Locator::Css("#jobs svg.waterfall rect[data-phase=job]"))
            .await
            .unwrap();
        assert_eq!(waterfall.len(), 2, "each job's waterfall has its job phase");
        let shot = browser.screenshot().await.unwrap();
        let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        std::fs::write(artifacts.join("dashboard.png"), &shot).unwrap();
        assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");

        // Editing the URL or the export link does not reach globex-labs.
        let globex_inst = t
            .store
            .installations()
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.account.as_deref() == Some("globex-labs"))
            .unwrap()
            .installation_id
            .0;
        for path in [
            format!("dashboard?installation={globex_inst}"),
            format!("dashboard/export.csv?installation={globex_inst}"),
            format!("dashboard/export.json?installation={globex_inst}"),
            "dashboard/export.csv?repo=globex-labs/site".to_owned(),
            "dashboard?from=2026-01-10&to=2026-01-01".to_owned(),
            "dashboard?conclusion=great".to_owned(),
        ] {
            let (status, body) = fetch_as(&browser, &base, &path).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert!(!body.contains("globex-labs/site") || path.contains("repo="), "{path}");
            assert!(body.contains("id=\"error\""), "{path}: a page that says why: {body}");
        }
        browser
            .goto(&format!("{base}dashboard?installation={globex_inst}"))
            .await
            .unwrap();
        let error = browser.find(Locator::Css("#error")).await.unwrap().text().await.unwrap();
        assert!(error.contains("not one you may see"), "{error}");

        // The exports hold exactly the page's jobs, and no secret.
        let (status, csv) = fetch_as(&browser, &base, "dashboard/export.csv?range=7d").await;
        assert_eq!(status, 200);
        assert_eq!(csv.lines().count(), 3, "header and acme's two jobs: {csv}");
        assert!(!csv.contains("globex"));
        let (status, json) = fetch_as(&browser, &base, "dashboard/export.json?range=7d").await;
        assert_eq!(status, 200);
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(report["totals"]["jobs"], 2);
        assert_eq!(report["totals"]["conclusions"]["failure"], 1);
        let secret = sim.oauth_client_secret();
        for text in [&csv, &json, &page] {
            assert!(!text.contains(secret.expose()));
            assert!(!text.contains("ghu_") && !text.contains("ghr_") && !text.contains("mfy_"));
            assert!(!text.to_lowercase().contains("jitconfig") && !text.contains("encoded_jit_config"));
        }
        sign_out(&browser).await;
        let (_, after) = fetch_as(&browser, &base, "dashboard").await;
        assert!(after.contains("sign-in-github"), "signed out");

        // A tampered session cookie is no session.
        let (_, forged) = {
            let response = reqwest::Client::new()
                .get(format!("{base}dashboard"))
                .header(
                    "cookie",
                    "__Host-mayfly_session=%7B%22who%22%3A%22github%3Aeve%22%2C%22installations%22%3A%5B%5D%2C%22operator%22%3Atrue%2C%22expires%22%3A%222099-01-01T00%3A00%3A00Z%22%7D",
                )
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        };
        assert!(forged.contains("sign-in-github") && !forged.contains("acme"), "{forged}");
        // A callback whose state this browser did not start is refused.
        browser
            .goto(&format!("{base}dashboard/callback?code=abc&state=forged"))
            .await
            .unwrap();
        let text = browser.find(Locator::Css("main")).await.unwrap().text().await.unwrap();
        assert!(text.contains("Sign-in failed"), "{text}");

        // octocat is in both orgs; nemo in none: an empty dashboard, not an error.
        let page = sign_in(&browser, &base, "octocat").await;
        assert!(page.contains("acme-robotics/firmware") && page.contains("globex-labs/site"));
        sign_out(&browser).await;
        let page = sign_in(&browser, &base, "nemo").await;
        assert!(page.contains("no-jobs"), "an empty dashboard: {page}");
        assert!(!page.contains("acme-robotics/firmware") && !page.contains("globex-labs/site"));
        sign_out(&browser).await;

        // The operator signs in with an admin token and sees both; a tenant token is refused.
        let admin = tokens::create(t.store.as_ref(), "cli:test", "ops", Scope::Admin)
            .await
            .unwrap();
        let tenant = tokens::create(t.store.as_ref(), "cli:test", "acme", Scope::Tenant(1))
            .await
            .unwrap();
        for (token, ok) in [(tenant.expose(), false), (admin.expose(), true)] {
            browser.goto(&format!("{base}dashboard")).await.unwrap();
            browser
                .find(Locator::Css("details summary"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            browser
                .find(Locator::Css("#token"))
                .await
                .unwrap()
                .send_keys(token)
                .await
                .unwrap();
            browser
                .find(Locator::Css("details form button"))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            // The answer's page, not the form's: a signed-in page, or the refusal's address.
            if ok {
                browser.wait().for_element(Locator::Css("#who")).await.unwrap();
            } else {
                let refused = format!("{base}dashboard/login/operator").parse().unwrap();
                browser.wait().for_url(refused).await.unwrap();
            }
            let page = browser.source().await.unwrap();
            assert_eq!(page.contains("operator: every tenant"), ok, "{page}");
            if ok {
                assert!(page.contains("acme-robotics/firmware") && page.contains("globex-labs/site"));
            }
        }
        sign_out(&browser).await;

        // Expiry, on the server's clock: a sign-in started more than ten minutes ago is refused
        // at the callback; a session past its 8 hours is no session.
        browser.goto(&format!("{base}dashboard")).await.unwrap();
        browser
            .find(Locator::Css("#sign-in-github"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        browser
            .wait()
            .for_element(Locator::Css("#login_field"))
            .await
            .unwrap()
            .send_keys("mona")
            .await
            .unwrap();
        browser
            .find(Locator::Css("#password"))
            .await
            .unwrap()
            .send_keys(mayfly_sim::SIM_USER_PASSWORD)
            .await
            .unwrap();
        t.clock.advance(chrono::Duration::minutes(11));
        browser
            .find(Locator::Css("[name=commit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let text = browser
            .wait()
            .for_element(Locator::Css("main"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(text.contains("Sign-in failed"), "a stale state: {text}");
        let page = sign_in(&browser, &base, "mona").await;
        assert!(page.contains("Signed in as github:mona"));
        t.clock.advance(chrono::Duration::hours(9));
        browser.goto(&format!("{base}dashboard")).await.unwrap();
        let page = browser.source().await.unwrap();
        assert!(
            page.contains("sign-in-github") && !page.contains("acme-robotics/firmware"),
            "an expired session: {page}"
        );
        browser.close().await.unwrap();

        // The audit log has the sign-ins, sign-outs, refusals and page views.
        let rows = t.store.audit_log(0, 10_000).await.unwrap();
        let has = |actor: &str, action: &str| {
            rows.iter()
                .any(|r| r.actor == actor && r.action == action)
        };
        assert!(has("github:mona", "dashboard login"));
        assert!(has("github:mona", "dashboard logout"));
        assert!(has("github:mona", "dashboard GET /dashboard/export.csv"));
        assert!(has("github:nemo", "dashboard login"));
        let stale_or_forged = rows
            .iter()
            .filter(|r| r.action == "dashboard login" && r.outcome == "refused: state")
            .count();
        assert_eq!(stale_or_forged, 2, "the forged state and the stale one");
        assert!(has(&format!("operator:{}", admin.row.id), "dashboard login operator"));
        assert!(rows
            .iter()
            .any(|r| r.action == "dashboard login operator" && r.outcome == "refused"));
        t.server.shutdown().await;
        t.store.close().await;
    })
    .await
    .expect("the dashboard test finished in time");
}
