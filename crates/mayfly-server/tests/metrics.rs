//! `/metrics` as an operator meets it: only an admin token reads it (401 without a token, 403
//! for any other), in OpenMetrics; a real Prometheus (Debian's `prometheus`) scrapes it with
//! the token during a run of jobs through the simulator and a stand-in agent, and its query of
//! a phase histogram counts exactly the run's jobs; `promtool check metrics` finds nothing to
//! say about the body; the shipped dashboard and alert rules name only metrics a scrape of the
//! server shows, and `promtool check rules` accepts the rules.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mayfly_server::metrics::{CLASSIC_TEXT, OPENMETRICS};
use mayfly_server::tokens::{self, Scope};
use mayfly_sim::{
    AccountType, Conclusion, NewInstallation, NewJob, NewRepo, RestFault, RestFaultKind,
};
use mayfly_store::{CommonStore, Store};
use reqwest::StatusCode;
use support::agent::FakeAgent;

const SECRET: &[u8] = b"metrics-test-secret";

fn client(cert_pem: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(pem) = cert_pem {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn scrape(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    accept: Option<&str>,
) -> reqwest::Response {
    let mut request = client.get(format!("{base}metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_token_reads_metrics_and_refusals_are_audited() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let t = support::start(true, SECRET, None, |_| {}).await;
        let store = t.store.as_ref();
        let admin = tokens::create(store, "cli:test", "prometheus", Scope::Admin)
            .await
            .unwrap();
        let read = tokens::create(store, "cli:test", "dash", Scope::Read)
            .await
            .unwrap();
        let tenant = tokens::create(store, "cli:test", "org-nine", Scope::Tenant(9))
            .await
            .unwrap();
        let http = client(t.cert_pem.as_deref());
        let base = t.server.base_url();

        let none = scrape(&http, &base, None, None).await;
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            none.json::<serde_json::Value>().await.unwrap(),
            serde_json::json!({ "code": "unauthorized" })
        );
        let bogus = scrape(&http, &base, Some("mfy_not-a-token"), None).await;
        assert_eq!(bogus.status(), StatusCode::UNAUTHORIZED);
        for token in [read.expose(), tenant.expose()] {
            let refused = scrape(&http, &base, Some(token), None).await;
            assert_eq!(refused.status(), StatusCode::FORBIDDEN);
            let body: serde_json::Value = refused.json().await.unwrap();
            assert_eq!(body["code"], "forbidden");
            assert!(!body.to_string().contains("mayfly_"), "{body}");
        }

        // A forged delivery is refused and counted as such.
        let forged = http
            .post(format!("{base}webhooks/github"))
            .header("x-github-event", "ping")
            .header("x-github-delivery", "forged-1")
            .header("x-hub-signature-256", format!("sha256={}", "0".repeat(64)))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

        // What Prometheus sends, and what curl sends: OpenMetrics either way.
        for accept in [
            Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
            None,
        ] {
            let ok = scrape(&http, &base, Some(admin.expose()), accept).await;
            assert_eq!(ok.status(), StatusCode::OK);
            assert_eq!(ok.headers()["content-type"], OPENMETRICS);
            let body = ok.text().await.unwrap();
            assert!(body.ends_with("# EOF\n"), "{body}");
            assert!(
                body.contains(&format!(
                    "mayfly_build_info{{version=\"{}\"}} 1",
                    env!("CARGO_PKG_VERSION")
                )),
                "{body}"
            );
            assert!(
                body.contains("mayfly_webhook_deliveries_total{result=\"rejected_signature\"} 1"),
                "{body}"
            );
            assert!(
                body.contains("# TYPE mayfly_webhook_deliveries counter"),
                "{body}"
            );
        }
        let classic = scrape(&http, &base, Some(admin.expose()), Some("text/plain")).await;
        assert_eq!(classic.headers()["content-type"], CLASSIC_TEXT);
        assert!(!classic.text().await.unwrap().contains("# EOF"));

        // Refusals are audited one by one; the admin's scrapes once (its first).
        let audit = store.audit_log(0, 1000).await.unwrap();
        let scrapes: Vec<_> = audit
            .iter()
            .filter(|r| r.action == "api GET /metrics")
            .collect();
        let outcomes: Vec<(&str, &str)> = scrapes
            .iter()
            .map(|r| (r.actor.as_str(), r.outcome.as_str()))
            .collect();
        let admin_actor = format!("token:{}", admin.row.id);
        assert_eq!(
            outcomes,
            vec![
                ("anonymous", "401"),
                ("anonymous", "401"),
                (format!("token:{}", read.row.id).as_str(), "403"),
                (format!("token:{}", tenant.row.id).as_str(), "403"),
                (admin_actor.as_str(), "200"),
            ]
        );
        assert!(scrapes.iter().all(|r| r.source.is_some()));
        t.server.shutdown().await;
        t.store.close().await;
    })
    .await
    .expect("timed out");
}

/// Debian's `prometheus` and `promtool` (scripts/setup installs them).
fn tool(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: run scripts/setup (apt-get install prometheus)"
    );
    path
}

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (host:port, plain HTTP) every second with `token`.
    fn start(target: &str, token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: mayfly\n    scheme: http\n\
                 \x20   authorization:\n      credentials_file: {}\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n",
                token_file.display()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The single value of an instant query, if it has one.
    async fn value(&self, http: &reqwest::Client, query: &str) -> Option<String> {
        let answer: serde_json::Value = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on `body`: (exit code, everything it printed).
fn promtool_check_metrics(body: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const JOBS: usize = 3;

fn new_job(sim: &mayfly_sim::SimHandle, repo: &str, label: &str) -> u64 {
    sim.create_job(NewJob {
        repository: repo.to_owned(),
        labels: vec!["self-hosted".into(), label.into()],
        ..NewJob::default()
    })
    .unwrap()
    .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_a_runs_jobs_and_the_shipped_rules_name_only_exported_metrics() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let (sim, github) = support::sim_with_client(SECRET).await;
        let t = support::start(false, SECRET, Some(github), |config| {
            config.profiles = vec![support::profile(600)];
        })
        .await;
        sim.set_webhook_url(Some(
            format!("{}webhooks/github", t.server.base_url())
                .parse()
                .unwrap(),
        ));
        let admin = tokens::create(t.store.as_ref(), "cli:test", "prometheus", Scope::Admin)
            .await
            .unwrap();
        let prometheus = Prometheus::start(&t.server.local_addr().to_string(), admin.expose());
        let http = client(None);

        let mut agent = FakeAgent::connect(t.server.agent_addr().unwrap()).await;
        let inst = sim
            .create_installation(NewInstallation {
                account: "org-m".into(),
                account_type: AccountType::Organization,
                sender: None,
            })
            .unwrap();
        let repo = sim
            .create_repo(NewRepo {
                installation_id: inst.id,
                name: "app".into(),
                private: true,
            })
            .unwrap()
            .full_name;
        for _ in 0..JOBS {
            new_job(&sim, &repo, "mayfly-linux-2cpu");
        }

        let started = agent.run_jobs(JOBS, |_| Conclusion::Success).await;
        assert_eq!(started, JOBS, "one VM per job");

        // Prometheus sees every job in every phase histogram, and the jobs by conclusion.
        let expected = JOBS.to_string();
        let queries = [
            "sum(mayfly_job_phase_duration_seconds_count{phase=\"job_run\"})".to_owned(),
            "sum(mayfly_job_phase_duration_seconds_count{phase=\"vm_boot\"})".to_owned(),
            "sum(mayfly_vm_boot_duration_seconds_count)".to_owned(),
            "sum(mayfly_jobs_total{conclusion=\"success\",profile=\"mayfly-linux-2cpu\"})"
                .to_owned(),
        ];
        for query in &queries {
            let mut last = None;
            let reached = tokio::time::timeout(Duration::from_secs(60), async {
                loop {
                    last = prometheus.value(&http, query).await;
                    if last.as_deref() == Some(expected.as_str()) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
            .await;
            if reached.is_err() {
                let jobs: Vec<String> = t
                    .store
                    .jobs()
                    .await
                    .unwrap()
                    .iter()
                    .map(|j| {
                        format!(
                            "{} {:?} {:?} {:?}",
                            j.job_id, j.status, j.conclusion, j.dispatch
                        )
                    })
                    .collect();
                panic!(
                    "{query} is {last:?}, not {expected}; jobs {jobs:#?}; Prometheus said:\n{}",
                    prometheus.log()
                );
            }
        }
        // Every scheduling pass is timed: the jobs above took several.
        let passes = prometheus
            .value(&http, "sum(mayfly_scheduler_pass_duration_seconds_count)")
            .await;
        assert!(
            passes
                .as_deref()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|n| n >= 2.0),
            "passes timed: {passes:?}"
        );
        assert_eq!(
            prometheus
                .value(&http, "sum(mayfly_agents_connected)")
                .await
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            prometheus
                .value(&http, "sum(mayfly_vm_slots)")
                .await
                .as_deref(),
            Some("4"),
            "the agent's Hello said 4 slots"
        );
        assert!(prometheus
            .value(&http, "min(mayfly_github_rate_limit_remaining)")
            .await
            .is_some());

        // promtool lints the body (classic text, which is what it reads) without a word.
        let body = scrape(
            &http,
            &t.server.base_url(),
            Some(admin.expose()),
            Some("text/plain"),
        )
        .await
        .text()
        .await
        .unwrap();
        assert!(body.contains("mayfly_job_phase_duration_seconds_bucket{"));
        let (code, said) = promtool_check_metrics(&body);
        assert_eq!(code, Some(0), "promtool check metrics:\n{said}\n{body}");
        assert_eq!(said.trim(), "", "promtool check metrics:\n{body}");

        // After a job mayfly could not place and one it does not serve, every family has a
        // sample, and the shipped dashboard and rules name only those.
        // A refusal, not an outage: an outage only delays a job.
        sim.add_rest_fault(RestFault {
            kind: RestFaultKind::Refusal { status: 422 },
            count: None,
            path_prefix: Some(format!("/repos/{repo}/actions/runners/generate-jitconfig")),
        })
        .unwrap();
        let failing = new_job(&sim, &repo, "mayfly-linux-2cpu");
        new_job(&sim, &repo, "gpu-xl");
        let store = t.store.clone();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let job = store.job(mayfly_core::JobId(failing as i64)).await.unwrap();
                if job.is_some_and(|j| j.dispatch.disposition == "failed") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the job whose JIT config always fails is not given up on");
        let body = scrape(
            &http,
            &t.server.base_url(),
            Some(admin.expose()),
            Some("text/plain"),
        )
        .await
        .text()
        .await
        .unwrap();
        assert!(
            body.contains("mayfly_jobs_waiting{reason=\"no_matching_profile\""),
            "{body}"
        );
        check_deploy_files(&body);

        drop(prometheus);
        t.server.shutdown().await;
        sim.shutdown().await;
        t.store.close().await;
    })
    .await
    .expect("timed out");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `mayfly_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("mayfly_") {
        let boundary = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if boundary {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The PromQL of the dashboard: every `expr` in the JSON.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The shipped dashboard and alert rules name only metrics in `body` (a classic-text scrape),
/// and promtool accepts the rules.
fn check_deploy_files(body: &str) {
    // Families and their types, as exported (classic names: counters with `_total`).
    let families: Vec<(String, String)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect();
    let exported = |name: &str| {
        families.iter().any(|(f, _)| f == name)
            || ["_bucket", "_count", "_sum"].iter().any(|suffix| {
                name.strip_suffix(suffix).is_some_and(|base| {
                    families
                        .iter()
                        .any(|(f, kind)| f == base && kind == "histogram")
                })
            })
    };

    let root = repo_root();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/mayfly.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(
        exprs.iter().any(|e| e.contains("histogram_quantile(")),
        "the dashboard shows phase quantiles"
    );
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    for (file, names) in [
        (
            "deploy/grafana/mayfly.json",
            metric_names(&exprs.join("\n")),
        ),
        ("deploy/prometheus/alerts.yml", metric_names(&rules)),
    ] {
        assert!(names.len() >= 4, "{file} names only {names:?}");
        let unknown: Vec<_> = names.iter().filter(|n| !exported(n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the server does not export: {unknown:?}"
        );
    }

    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(root.join("deploy/prometheus/alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
