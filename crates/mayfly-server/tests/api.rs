//! `/api/v1` as a customer and an operator meet it: a tenant token sees its own installation
//! and nothing else — for every route the OpenAPI document lists, asking for another tenant's
//! data is 403 with no data; bad tokens are 401 with no detail; every call lands in the audit
//! log, whose chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod support;

use chrono::Utc;
use mayfly_core::{
    DeliveryId, InstallationChange, InstallationChangeKind, InstallationId, IntakeEvent, JobEvent,
    JobId, JobStatus, RunId,
};
use mayfly_server::tokens::{self, Scope};
use mayfly_store::{NewDelivery, Store};
use reqwest::StatusCode;
use serde_json::Value;

const SECRET: &[u8] = b"api-test-secret";

/// Tenant 9 is org-nine, tenant 10 is org-ten; each has a job, a VM and usage.
async fn seed(store: &dyn Store) {
    for (installation, org, job) in [(9_i64, "org-nine", 901_i64), (10, "org-ten", 1001)] {
        let change = InstallationChange {
            installation_id: InstallationId(installation),
            kind: InstallationChangeKind::Created,
            account: Some(org.into()),
            repos_added: vec![format!("{org}/app").parse().unwrap()],
            repos_removed: vec![],
        };
        let id = DeliveryId::parse(&format!("inst-{installation}")).unwrap();
        store
            .record_delivery(&NewDelivery {
                delivery_id: id.clone(),
                event: "installation".into(),
                action: Some("created".into()),
                received_at: Utc::now(),
                intake: IntakeEvent::Installation(change.clone()),
            })
            .await
            .unwrap();
        store
            .apply_installation_change(&id, &change, Utc::now())
            .await
            .unwrap();
        let mut event = JobEvent {
            job_id: JobId(job),
            run_id: RunId(job),
            installation_id: Some(InstallationId(installation)),
            repo: format!("{org}/app").parse().unwrap(),
            repo_id: job,
            org: Some(org.into()),
            sender: format!("{org}-dev"),
            status: JobStatus::Queued,
            conclusion: None,
            labels: vec!["self-hosted".into()],
            job_name: "build".into(),
            workflow_name: Some("CI".into()),
            runner_id: None,
            runner_name: None,
            created_at: None,
            started_at: None,
            completed_at: None,
        };
        for (step, status) in [
            JobStatus::Queued,
            JobStatus::InProgress,
            JobStatus::Completed,
        ]
        .into_iter()
        .enumerate()
        {
            event.status = status;
            if status == JobStatus::InProgress {
                event.started_at = Some(Utc::now());
            }
            if status == JobStatus::Completed {
                event.completed_at = Some(Utc::now());
                event.conclusion = Some("success".into());
            }
            let id = DeliveryId::parse(&format!("job-{job}-{step}")).unwrap();
            store
                .record_delivery(&NewDelivery {
                    delivery_id: id.clone(),
                    event: "workflow_job".into(),
                    action: Some(status.as_str().into()),
                    received_at: Utc::now(),
                    intake: IntakeEvent::Job(event.clone()),
                })
                .await
                .unwrap();
            if step == 0 {
                store
                    .apply_job_event(&id, &event, Utc::now())
                    .await
                    .unwrap();
                let dispatch = mayfly_store::JobDispatch {
                    profile: Some("linux".into()),
                    disposition: "placed".into(),
                    ..Default::default()
                };
                store.set_job_dispatch(JobId(job), &dispatch).await.unwrap();
            } else {
                store
                    .apply_job_event(&id, &event, Utc::now())
                    .await
                    .unwrap();
            }
        }
        store
            .insert_vm(&mayfly_store::VmRow {
                ran_job_id: Some(job),
                state: "destroyed".into(),
                destroyed_at: Some(Utc::now()),
                exit_code: Some(0),
                destroy_requested: true,
                ..mayfly_store::VmRow::requested(
                    mayfly_store::Placement {
                        start_id: format!("start-{org}"),
                        host: "host-a".into(),
                        profile: "linux".into(),
                        installation_id: installation,
                        repo: format!("{org}/app"),
                        runner_name: format!("mayfly-{org}"),
                        runner_id: None,
                        for_job_id: job,
                    },
                    Utc::now(),
                )
            })
            .await
            .unwrap();
    }
    assert_eq!(store.usage(None).await.unwrap().len(), 2, "seeded usage");
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut request = self
            .http
            .get(format!("{}{}", self.base, path.trim_start_matches('/')));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_data_on_every_route_and_every_call_is_audited() {
    let t = support::start(true, SECRET, None, |_| {}).await;
    let store: &dyn Store = t.store.as_ref();
    seed(store).await;
    let admin = tokens::create(store, "cli:test", "ops", Scope::Admin)
        .await
        .unwrap();
    let read = tokens::create(store, "cli:test", "dash", Scope::Read)
        .await
        .unwrap();
    let nine = tokens::create(store, "cli:test", "org-nine", Scope::Tenant(9))
        .await
        .unwrap();
    let revoked = tokens::create(store, "cli:test", "old", Scope::Tenant(9))
        .await
        .unwrap();
    assert!(tokens::revoke(store, "cli:test", &revoked.row.id)
        .await
        .unwrap());
    assert!(
        !format!("{nine:?}").contains(nine.expose()),
        "a token's Debug shows it"
    );
    let ca = reqwest::Certificate::from_pem(t.cert_pem.as_ref().unwrap().as_bytes()).unwrap();
    let api = Api {
        http: reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .unwrap(),
        base: t.server.base_url().replace("127.0.0.1", "localhost"),
    };

    // Bad tokens: 401, nothing more said.
    let malformed = "mfy_short";
    let unknown = format!("mfy_{}", "A".repeat(43));
    for token in [
        None,
        Some(malformed),
        Some(unknown.as_str()),
        Some(revoked.expose()),
    ] {
        let (status, body) = api.get("/api/v1/jobs", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(body, r#"{"code":"unauthorized"}"#);
    }

    // The OpenAPI document is generated and lists every route; each must be covered below.
    let (status, doc) = api.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert!(paths.len() >= 7, "{paths:?}");
    for path in &paths {
        // What a tenant-9 token asking for tenant 10's data looks like on this route.
        let cross = match path.as_str() {
            "/api/v1/jobs/{job_id}" => "/api/v1/jobs/1001".to_owned(),
            "/api/v1/whoami" => continue, // only the caller's own token
            // Not tenant data: the server's public CA certificate, and enrolment, which a
            // one-time bootstrap token authorises (tests/enrol.rs in the mayfly crate).
            "/api/v1/agents/server-ca" | "/api/v1/agents/enrol" => continue,
            "/api/v1/jobs"
            | "/api/v1/vms"
            | "/api/v1/usage"
            | "/api/v1/usage/report"
            | "/api/v1/usage/summary"
            | "/api/v1/usage/top"
            | "/api/v1/usage/jobs"
            | "/api/v1/installations"
            | "/api/v1/audit" => format!("{path}?installation=10"),
            other => panic!("route {other} has no cross-tenant case in this test"),
        };
        let (status, body) = api.get(&cross, Some(nine.expose())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{cross}: {body}");
        assert!(!body.contains("org-ten"), "{cross} leaked: {body}");
        // Without naming another tenant, a tenant sees its own rows only.
        let own = match path.as_str() {
            "/api/v1/usage/summary" => format!("{path}?by=repo"),
            _ => path.replace("{job_id}", "901"),
        };
        let (status, body) = api.get(&own, Some(nine.expose())).await;
        if path == "/api/v1/audit" {
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "the audit log is the operator's"
            );
            continue;
        }
        assert_eq!(status, StatusCode::OK, "{own}: {body}");
        assert!(!body.contains("org-ten"), "{own} leaked: {body}");
        assert!(
            body.contains("org-nine")
                || path == "/api/v1/usage" && body.contains("\"installation_id\":9"),
            "{own} lacks the tenant's own data: {body}"
        );
        // A read token sees both tenants (the audit log excepted).
        let (status, body) = api.get(&own, Some(read.expose())).await;
        assert_eq!(status, StatusCode::OK, "{own}: {body}");
    }
    // Usage reports refuse bad input with a clear 400 and show nothing.
    for bad in [
        "from=2026-11-10&to=2026-11-01",
        "range=400d",
        "range=yesterday",
        "range=7d&from=2026-11-01&to=2026-11-02",
        "repo=org-ten/app",
        "conclusion=great",
        "machine_type=gpu-huge",
        "workflow=Nightly",
        "colour=blue",
        "by=planet",
    ] {
        let (status, body) = api
            .get(&format!("/api/v1/usage/summary?{bad}"), Some(nine.expose()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "bad_request", "{bad}");
        assert!(
            !body["message"].as_str().unwrap().is_empty(),
            "{bad}: a 400 says why"
        );
    }
    let (status, body) = api
        .get("/api/v1/usage/report?range=today", Some(nine.expose()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["timezone"], "UTC");
    assert_eq!(report["totals"]["jobs"], 1);
    assert_eq!(report["jobs"][0]["job_id"], 901);
    assert_eq!(report["jobs"][0]["conclusion"], "success");
    // A filter value in another case names the same thing and matches the same rows.
    let (status, body) = api
        .get(
            "/api/v1/usage/report?range=today&conclusion=SUCCESS&machine_type=LINUX",
            Some(nine.expose()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["totals"]["jobs"], 1, "{body}");
    assert_eq!(report["filters"]["conclusion"], "success");
    let (_, whoami) = api.get("/api/v1/whoami", Some(nine.expose())).await;
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(whoami["scope"], "tenant");
    assert_eq!(whoami["installation_id"], 9);
    let (status, body) = api.get("/api/v1/jobs", Some(read.expose())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("org-ten") && body.contains("org-nine"));
    let (status, _) = api.get("/api/v1/audit", Some(read.expose())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api.get("/api/v1/jobs/424242", Some(admin.expose())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Every call above is in the audit log: who, what, from where, outcome; the chain holds.
    let (status, body) = api.get("/api/v1/audit", Some(admin.expose())).await;
    assert_eq!(status, StatusCode::OK);
    let rows: Vec<mayfly_store::AuditRow> = serde_json::from_str(&body).unwrap();
    assert_eq!(mayfly_store::verify_chain(&rows), Ok(rows.len()));
    let actor = format!("token:{}", nine.row.id);
    let denied = rows
        .iter()
        .find(|r| r.actor == actor && r.action == "api GET /api/v1/jobs/1001")
        .expect("the denied call is audited");
    assert_eq!(denied.outcome, "403");
    assert!(denied.source.as_deref().unwrap().starts_with("127.0.0.1:"));
    assert!(rows
        .iter()
        .any(|r| r.actor == "anonymous" && r.outcome == "401"));
    assert!(rows.iter().any(|r| r.action == "token create"));
    assert!(rows.iter().any(|r| r.action == "server start"
        && r.target
            .as_deref()
            .is_some_and(|t| t.starts_with("configuration sha256:"))));
    assert!(rows.iter().any(
        |r| r.action == "token revoke" && r.target.as_deref() == Some(revoked.row.id.as_str())
    ));
    // No token is stored or audited in the clear.
    let dump = t.store.plaintext_dump().await.unwrap();
    for token in [&admin, &read, &nine, &revoked] {
        assert!(!dump.contains(token.expose()));
    }
    t.server.shutdown().await;
    t.store.close().await;
}

/// Inserts jobs `ids` (queued, installation 9) in two transactions.
async fn add_jobs(store: &dyn Store, ids: impl IntoIterator<Item = i64>) {
    let events: Vec<(DeliveryId, JobEvent)> = ids
        .into_iter()
        .map(|id| {
            let event = JobEvent {
                job_id: JobId(id),
                run_id: RunId(id),
                installation_id: Some(InstallationId(9)),
                repo: "org-nine/app".parse().unwrap(),
                repo_id: 9,
                org: Some("org-nine".into()),
                sender: "dev".into(),
                status: JobStatus::Queued,
                conclusion: None,
                labels: vec!["self-hosted".into()],
                job_name: "build".into(),
                workflow_name: None,
                runner_id: None,
                runner_name: None,
                created_at: None,
                started_at: None,
                completed_at: None,
            };
            (DeliveryId::parse(&format!("page-{id}")).unwrap(), event)
        })
        .collect();
    let deliveries: Vec<NewDelivery> = events
        .iter()
        .map(|(id, event)| NewDelivery {
            delivery_id: id.clone(),
            event: "workflow_job".into(),
            action: Some("queued".into()),
            received_at: Utc::now(),
            intake: IntakeEvent::Job(event.clone()),
        })
        .collect();
    store.record_deliveries(&deliveries).await.unwrap();
    store.apply_job_events(&events, Utc::now()).await.unwrap();
}

async fn add_vm(store: &dyn Store, n: u32) {
    store
        .insert_vm(&mayfly_store::VmRow::requested(
            mayfly_store::Placement {
                start_id: format!("page-vm-{n:04}"),
                host: "host-a".into(),
                profile: "linux".into(),
                installation_id: 9,
                repo: "org-nine/app".into(),
                runner_name: format!("mayfly-page-{n}"),
                runner_id: None,
                for_job_id: 1,
            },
            Utc::now(),
        ))
        .await
        .unwrap();
}

/// Follows `Link: <…>; rel="next"` from `first`, calling `between` after each page; returns
/// every row's `key`, in the order the pages gave them.
async fn page_through(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    first: &str,
    key: &str,
    mut between: impl FnMut(usize) -> futures::future::BoxFuture<'static, ()>,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut next = Some(first.to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let response = http
            .get(format!("{}{}", base, path.trim_start_matches('/')))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        next = response
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned())
            .map(|l| {
                let inner = l
                    .strip_prefix('<')
                    .and_then(|l| l.strip_suffix(">; rel=\"next\""));
                inner
                    .unwrap_or_else(|| panic!("not a next link: {l}"))
                    .to_owned()
            });
        let rows: Vec<Value> = response.json().await.unwrap();
        assert!(rows.len() <= 40, "a page of {} rows, limit 40", rows.len());
        seen.extend(rows.iter().map(|r| r[key].to_string()));
        between(pages).await;
        pages += 1;
        assert!(pages < 100, "paging does not end");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_routes_page_every_row_exactly_once_while_rows_are_inserted() {
    let t = support::start(false, SECRET, None, |_| {}).await;
    let store: std::sync::Arc<dyn Store> = t.store.clone();
    let admin = tokens::create(store.as_ref(), "cli:test", "ops", Scope::Admin)
        .await
        .unwrap();
    // Ids out of order, so new rows land before and after the cursor.
    let before: Vec<i64> = (0..150).map(|i| (i * 7919) % 100_000 + 10).collect();
    add_jobs(store.as_ref(), before.clone()).await;
    for n in 0..150 {
        add_vm(store.as_ref(), n).await;
    }
    let http = reqwest::Client::new();
    let base = t.server.base_url();

    let adding = store.clone();
    let jobs = page_through(
        &http,
        &base,
        admin.expose(),
        "/api/v1/jobs?limit=40",
        "job_id",
        |page| {
            let store = adding.clone();
            Box::pin(async move {
                let page = page as i64;
                add_jobs(store.as_ref(), [1 + page, 200_000 + page, 50_000 + page]).await;
            })
        },
    )
    .await;
    let adding = store.clone();
    let vms = page_through(
        &http,
        &base,
        admin.expose(),
        "/api/v1/vms?limit=40&installation=9",
        "start_id",
        |page| {
            let store = adding.clone();
            Box::pin(async move { add_vm(store.as_ref(), 1000 + page as u32).await })
        },
    )
    .await;

    for (name, seen, wanted) in [
        (
            "jobs",
            &jobs,
            before.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
        ),
        (
            "vms",
            &vms,
            (0..150).map(|n| format!("\"page-vm-{n:04}\"")).collect(),
        ),
    ] {
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{name}: a row came twice");
        for row in wanted {
            assert!(seen.contains(&row), "{name}: {row} never came");
        }
    }
    // Rows added behind the cursor are not returned; those ahead of it are.
    assert!(jobs.contains(&"200000".to_owned()));

    let api = Api { http, base };
    for bad in [
        "/api/v1/jobs?after=x",
        "/api/v1/jobs?limit=0",
        "/api/v1/jobs?limit=1001",
        "/api/v1/vms?after=12.",
        "/api/v1/vms?after=nope",
    ] {
        let (status, body) = api.get(bad, Some(admin.expose())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}
