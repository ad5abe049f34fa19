//! `mayfly usage` against a real `mayfly server` holding two tenants' jobs (sent as signed
//! webhooks, as GitHub sends them): a tenant token's CSV and JSON hold only that tenant's jobs;
//! the summary's numbers equal sums computed here from the job rows; bad input exits 2 with the
//! server's reason; no output carries a token or the webhook secret.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use mayfly_github::webhook::{signature_header, WebhookSecret};
use serde_json::{json, Value};

const WEBHOOK_SECRET: &str = "usage-webhook-secret";
const ACME: i64 = 4101;
const GLOBEX: i64 = 4202;

fn write_private(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn fixture(name: &str) -> Value {
    let text = std::fs::read_to_string(format!(
        "{}/../../testdata/github/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

struct Server {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `tls`: serve HTTPS with a certificate of a private CA (written to `ca.pem`), else
    /// `--insecure-dev`.
    async fn start(tls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_private(&dir.path().join("secret"), WEBHOOK_SECRET);
        write_private(
            &dir.path().join("db.key"),
            mayfly_store::DbKey::random().to_hex().as_str(),
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_mayfly"));
        command
            .args(["server", "--listen"])
            .arg(format!("127.0.0.1:{port}"));
        let mut http = reqwest::Client::builder();
        let base = if tls {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            std::fs::write(dir.path().join("server.crt"), cert.pem()).unwrap();
            write_private(&dir.path().join("server.key"), &key.serialize_pem());
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            command
                .arg("--tls-cert")
                .arg(dir.path().join("server.crt"))
                .arg("--tls-key")
                .arg(dir.path().join("server.key"));
            http = http
                .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap());
            format!("https://localhost:{port}")
        } else {
            command.arg("--insecure-dev");
            format!("http://127.0.0.1:{port}")
        };
        let child = command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--webhook-secret-file")
            .arg(dir.path().join("secret"))
            .env_remove("MAYFLY_CONFIG")
            .env("MAYFLY_DB_KEY_FILE", dir.path().join("db.key"))
            .env("MAYFLY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self { child, base, dir };
        let http = http.build().unwrap();
        for _ in 0..200 {
            if http
                .get(format!("{}/readyz", server.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server did not start");
    }

    async fn send(&self, n: usize, event: &str, body: &Value) {
        let body = serde_json::to_vec(body).unwrap();
        let signature = signature_header(
            &WebhookSecret::new(WEBHOOK_SECRET.as_bytes().to_vec()),
            &body,
        );
        let answer = reqwest::Client::new()
            .post(format!("{}/webhooks/github", self.base))
            .header("x-github-event", event)
            .header("x-github-delivery", format!("usage-{n}"))
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{event}: {}", answer.status());
    }

    /// A token made by the operator command, in a mode-600 file.
    fn token(&self, name: &str, scope: &[&str]) -> (String, PathBuf) {
        let out = Command::new(env!("CARGO_BIN_EXE_mayfly"))
            .args(["token", "create", "--name", name, "--scope"])
            .args(scope)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .env_remove("MAYFLY_CONFIG")
            .env("MAYFLY_DB_KEY_FILE", self.dir.path().join("db.key"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let path = self.dir.path().join(format!("{name}.token"));
        write_private(&path, &format!("{token}\n"));
        (token, path)
    }

    /// `mayfly usage …` with the server and token from the environment, stdout piped.
    fn usage(&self, token_file: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mayfly"))
            .arg("usage")
            .args(args)
            .env("MAYFLY_SERVER", &self.base)
            .env("MAYFLY_TOKEN_FILE", token_file)
            .output()
            .unwrap()
    }
}

struct Job {
    id: i64,
    installation: i64,
    repo: &'static str,
    workflow: &'static str,
    conclusion: Option<&'static str>,
    seconds: i64,
}

fn installation(id: i64, account: &str, repos: &[&str]) -> Value {
    let mut body = fixture("installation.created.json");
    body["installation"]["id"] = json!(id);
    body["installation"]["account"]["login"] = json!(account);
    body["repositories"] = repos
        .iter()
        .enumerate()
        .map(|(i, full)| {
            json!({"id": id * 100 + i as i64, "node_id": "x", "name": full.split('/').nth(1),
                   "full_name": full, "private": true})
        })
        .collect();
    body
}

/// A `completed` (or, without a conclusion, `in_progress`) delivery. GitHub's job start is
/// after mayfly hears of the job, so the phase waterfall keeps it as given.
fn job_event(job: &Job, started: DateTime<Utc>) -> (&'static str, Value) {
    let mut body = fixture("workflow_job.completed.success.with-organization.json");
    let (owner, name) = job.repo.split_once('/').unwrap();
    let w = &mut body["workflow_job"];
    w["id"] = json!(job.id);
    w["run_id"] = json!(job.id * 10);
    w["workflow_name"] = json!(job.workflow);
    w["labels"] = json!(["self-hosted", "linux"]);
    w["created_at"] = json!((started - chrono::Duration::seconds(30)).to_rfc3339());
    w["started_at"] = json!(started.to_rfc3339());
    match job.conclusion {
        Some(c) => {
            w["conclusion"] = json!(c);
            w["completed_at"] =
                json!((started + chrono::Duration::seconds(job.seconds)).to_rfc3339());
        }
        None => {
            body["action"] = json!("in_progress");
            body["workflow_job"]["status"] = json!("in_progress");
            body["workflow_job"]["conclusion"] = Value::Null;
            body["workflow_job"]["completed_at"] = Value::Null;
        }
    }
    body["repository"]["full_name"] = json!(job.repo);
    body["repository"]["name"] = json!(name);
    body["repository"]["owner"]["login"] = json!(owner);
    body["organization"]["login"] = json!(owner);
    body["installation"] = json!({"id": job.installation, "node_id": "x"});
    let event = if job.conclusion.is_some() {
        "completed"
    } else {
        "in_progress"
    };
    (event, body)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Splits CSV lines on commas outside quotes.
fn csv_rows(csv: &str) -> Vec<Vec<String>> {
    csv.lines()
        .map(|line| {
            let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
            for c in line.chars() {
                match c {
                    '"' => quoted = !quoted,
                    ',' if !quoted => fields.push(std::mem::take(&mut field)),
                    c => field.push(c),
                }
            }
            fields.push(field);
            fields
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_per_tenant_with_the_servers_numbers_and_reasons() {
    let server = Server::start(false).await;
    server
        .send(
            0,
            "installation",
            &installation(
                ACME,
                "acme-robotics",
                &["acme-robotics/rocket", "acme-robotics/engine"],
            ),
        )
        .await;
    server
        .send(
            1,
            "installation",
            &installation(GLOBEX, "globex-labs", &["globex-labs/secret-plans"]),
        )
        .await;
    let jobs = [
        Job {
            id: 501,
            installation: ACME,
            repo: "acme-robotics/rocket",
            workflow: "CI",
            conclusion: Some("success"),
            seconds: 61,
        },
        Job {
            id: 502,
            installation: ACME,
            repo: "acme-robotics/rocket",
            workflow: "CI",
            conclusion: Some("failure"),
            seconds: 125,
        },
        Job {
            id: 503,
            installation: ACME,
            repo: "acme-robotics/engine",
            workflow: "Nightly, full",
            conclusion: Some("success"),
            seconds: 30,
        },
        Job {
            id: 504,
            installation: ACME,
            repo: "acme-robotics/engine",
            workflow: "CI",
            conclusion: None,
            seconds: 0,
        },
        Job {
            id: 601,
            installation: GLOBEX,
            repo: "globex-labs/secret-plans",
            workflow: "Deploy",
            conclusion: Some("success"),
            seconds: 300,
        },
        Job {
            id: 602,
            installation: GLOBEX,
            repo: "globex-labs/secret-plans",
            workflow: "Deploy",
            conclusion: Some("timed_out"),
            seconds: 3600,
        },
    ];
    let started = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(120);
    for (n, job) in jobs.iter().enumerate() {
        let (_, body) = job_event(job, started + chrono::Duration::seconds(n as i64));
        server.send(10 + n, "workflow_job", &body).await;
    }

    let (admin, admin_file) = server.token("ops", &["admin"]);
    let acme_scope = ACME.to_string();
    let (tenant, tenant_file) = server.token("acme", &["tenant", "--installation", &acme_scope]);

    // The job rows as the API holds them, once the deliveries are applied.
    let http = reqwest::Client::new();
    let mut rows: Vec<Value> = Vec::new();
    for _ in 0..200 {
        rows = http
            .get(format!("{}/api/v1/jobs", server.base))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if rows.len() == jobs.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows.len(), jobs.len(), "{rows:?}");
    let mut outputs: Vec<String> = Vec::new();

    // A tenant's per-job log, as CSV and as JSON: its own jobs only.
    let out = server.usage(&tenant_file, &["jobs", "--since", "7d", "--format", "csv"]);
    assert!(out.status.success(), "{}", text(&out));
    let csv = String::from_utf8(out.stdout.clone()).unwrap();
    outputs.push(text(&out));
    let table = csv_rows(&csv);
    let header = &table[0];
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(table.len(), 1 + 4, "{csv}");
    assert!(table.iter().all(|r| r.len() == header.len()), "{csv}");
    let mut ids: Vec<&str> = table[1..]
        .iter()
        .map(|r| r[column("job_id")].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["501", "502", "503", "504"]);
    for r in &table[1..] {
        assert_eq!(r[column("installation_id")], acme_scope);
        assert!(
            r[column("repository")].starts_with("acme-robotics/"),
            "{csv}"
        );
    }
    assert!(
        csv.contains("\"Nightly, full\""),
        "a comma is quoted: {csv}"
    );
    assert!(!csv.contains("globex"), "another tenant's rows: {csv}");

    let out = server.usage(&tenant_file, &["jobs", "--since", "7d", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    outputs.push(text(&out));
    let lines: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["installation_id"] == json!(ACME)));
    assert!(!text(&out).contains("globex"), "{}", text(&out));

    // Piped without --format: JSON, the same as --format json.
    let out = server.usage(&tenant_file, &["jobs", "--since", "7d"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        Value::Array(lines.clone())
    );

    // summary --by day,repo equals sums over the job rows, for the operator and the tenant.
    for (file, only) in [(&admin_file, None), (&tenant_file, Some(ACME))] {
        let out = server.usage(
            file,
            &[
                "summary", "--since", "today", "--by", "day,repo", "--format", "json",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        outputs.push(text(&out));
        let groups: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut expected: BTreeMap<(String, String), (u64, i64, i64)> = BTreeMap::new();
        for row in rows
            .iter()
            .filter(|r| only.is_none_or(|i| r["installation_id"] == json!(i)))
        {
            let day = row["first_seen_at"].as_str().unwrap()[..10].to_owned();
            let repo = row["repository"].as_str().unwrap().to_owned();
            let e = expected.entry((day, repo)).or_default();
            e.0 += 1;
            if let (Some(s), Some(c)) = (row["started_at"].as_str(), row["completed_at"].as_str()) {
                let secs = (c.parse::<DateTime<Utc>>().unwrap()
                    - s.parse::<DateTime<Utc>>().unwrap())
                .num_seconds();
                e.1 += secs;
                e.2 += (secs + 59) / 60 * 60;
            }
        }
        let got: BTreeMap<(String, String), (u64, i64, i64)> = groups
            .iter()
            .map(|g| {
                (
                    (
                        g["group"]["day"].as_str().unwrap().to_owned(),
                        g["group"]["repo"].as_str().unwrap().to_owned(),
                    ),
                    (
                        g["jobs"].as_u64().unwrap(),
                        g["executed_seconds"].as_f64().unwrap().round() as i64,
                        g["billed_seconds"].as_i64().unwrap(),
                    ),
                )
            })
            .collect();
        assert_eq!(got, expected, "{}", text(&out));
        assert_eq!(got.len(), if only.is_some() { 2 } else { 3 });
    }

    // The table says what it covers; the CSV of groups parses with the same columns.
    let out = server.usage(
        &admin_file,
        &["top", "--since", "today", "--format", "table"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = shown.lines().find(|l| l.contains("secret-plans")).unwrap();
    assert!(first.contains("50.0%") && first.contains(" 65 "), "{shown}");
    outputs.push(text(&out));
    let out = server.usage(
        &admin_file,
        &[
            "summary", "--since", "today", "--by", "repo", "--format", "csv",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let groups = csv_rows(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(groups[0][..2], ["repo".to_owned(), "jobs".to_owned()]);
    assert_eq!(groups.len(), 1 + 3);
    outputs.push(text(&out));

    // Bad input: the server's reason, exit 2.
    for (args, reason) in [
        (
            &["jobs", "--from", "2026-11-10", "--to", "2026-11-01"][..],
            "from (2026-11-10) is after to (2026-11-01)",
        ),
        (
            &["summary", "--since", "400d"][..],
            "older than the retention",
        ),
        (
            &["jobs", "--conclusion", "exploded"][..],
            "is not a job conclusion",
        ),
        (&["top", "--by", "day,repo"][..], "top groups by one of"),
    ] {
        let out = server.usage(&tenant_file, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("the server refused the query: ") && stderr.contains(reason),
            "{args:?}: {stderr}"
        );
        outputs.push(text(&out));
    }
    // A tenant naming another installation, and a token the server does not know: exit 1 with
    // what to do.
    let out = server.usage(
        &tenant_file,
        &["jobs", "--installation", &GLOBEX.to_string()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("a tenant token sees only its own installation"),
        "{}",
        text(&out)
    );
    outputs.push(text(&out));
    let forged = server.dir.path().join("forged.token");
    write_private(&forged, "mfy_0000000000000000000000000000000000000000000");
    let out = server.usage(&forged, &["jobs"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("check --token-file"), "{}", text(&out));
    outputs.push(text(&out));
    // A token file others can read is refused before anything is sent.
    std::fs::set_permissions(&tenant_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = server.usage(&tenant_file, &["jobs"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    outputs.push(text(&out));

    for output in &outputs {
        for secret in [admin.as_str(), tenant.as_str(), WEBHOOK_SECRET] {
            assert!(!output.contains(secret), "a secret in the output: {output}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_trusts_a_private_ca_only_when_given_and_sends_tokens_only_over_tls() {
    let server = Server::start(true).await;
    let (_, token_file) = server.token("ops", &["admin"]);
    let ca = server.dir.path().join("ca.pem");
    let ca = ca.to_str().unwrap();
    let out = server.usage(
        &token_file,
        &["summary", "--ca-file", ca, "--format", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!([])
    );
    // The system's roots do not know the private CA.
    let out = server.usage(&token_file, &["summary"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("could not reach the server"),
        "{}",
        text(&out)
    );
    // A token is not sent in the clear beyond loopback.
    let out = server.usage(
        &token_file,
        &["summary", "--server", "http://mayfly.example.com"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("must be https://"), "{}", text(&out));
}
