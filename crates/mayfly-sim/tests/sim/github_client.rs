//! mayfly's own GitHub client (`mayfly-github`) against the simulator: every call it makes is
//! recorded and validated against GitHub's contract, so this proves that client and simulator
//! agree with GitHub, not merely with each other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use mayfly_core::{Clock, InstallationId, JobId, RepoFullName, RunId};
use mayfly_github::{
    AppCredentials, AppPrivateKeyPem, GitHubClient, GitHubClientConfig, GitHubError,
    JitConfigRequest, RetryPolicy, TokenScope,
};
use mayfly_sim::runner_client::RunnerClient;
use mayfly_sim::{AccountType, AppKeyPair, NewJob, RateLimitKind, RestFault, RestFaultKind};
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::support::{bounded, TestSim};

/// A clock the test moves by hand, in step with the simulator's.
#[derive(Debug)]
struct TestClock(Mutex<DateTime<Utc>>);

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

fn client_with(t: &TestSim, keys: &AppKeyPair, clock: Arc<dyn Clock>) -> GitHubClient {
    let credentials = AppCredentials::new(
        1,
        AppPrivateKeyPem::new(keys.private_pem.expose_secret().to_owned()),
    )
    .unwrap();
    let mut config = GitHubClientConfig::new(t.sim.base_url(), credentials);
    config.retry = RetryPolicy {
        max_attempts: 3,
        max_wait: Duration::from_secs(5),
        base_backoff: Duration::from_millis(50),
    };
    GitHubClient::with_clock(config, clock).unwrap()
}

fn client(t: &TestSim) -> GitHubClient {
    client_with(t, &t.keys, Arc::new(mayfly_core::SystemClock))
}

fn labels() -> Vec<String> {
    vec!["self-hosted".into(), "mayfly-linux-2cpu".into()]
}

fn access_token_requests(t: &TestSim) -> usize {
    t.sim
        .exchanges()
        .iter()
        .filter(|e| e.method == "POST" && e.path.ends_with("/access_tokens"))
        .count()
}

#[tokio::test]
async fn tokens_are_cached_and_refreshed_before_they_expire() {
    bounded(async {
        let t = TestSim::start_with(|c| c.token_ttl = Duration::from_secs(600)).await;
        let inst = t.install("acme", AccountType::Organization);
        let clock = Arc::new(TestClock(Mutex::new(Utc::now())));
        let github = client_with(&t, &t.keys, clock.clone());
        let id = InstallationId(inst.id as i64);

        let first = github
            .installation_token(id, TokenScope::READ_ACTIONS)
            .await
            .unwrap();
        let again = github
            .installation_token(id, TokenScope::READ_ACTIONS)
            .await
            .unwrap();
        assert_eq!(first.expose(), again.expose(), "a fresh token is reused");
        assert_eq!(access_token_requests(&t), 1);

        // Six minutes on, four are left: less than the five-minute margin, so it is replaced.
        t.sim.advance_clock(Duration::from_secs(360));
        *clock.0.lock().unwrap() += chrono::Duration::seconds(360);
        let refreshed = github
            .installation_token(id, TokenScope::READ_ACTIONS)
            .await
            .unwrap();
        assert_ne!(refreshed.expose(), first.expose());
        assert_eq!(access_token_requests(&t), 2);
        assert!(!format!("{refreshed:?}").contains(refreshed.expose()));
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn repo_jit_configs_runners_and_jobs() {
    bounded(async {
        let t = TestSim::start().await;
        let inst = t.install("acme", AccountType::Organization);
        let repo_name = t.repo(inst.id, "api");
        let repo: RepoFullName = repo_name.parse().unwrap();
        let id = InstallationId(inst.id as i64);
        let github = client(&t);

        let jit = github
            .generate_repo_jitconfig(id, &repo, &JitConfigRequest::new("vm-1", labels()))
            .await
            .unwrap();
        assert_eq!(jit.runner.name, "vm-1");
        assert!(
            !format!("{jit:?}").contains(jit.config.expose()),
            "the JIT config is redacted"
        );
        let runner = RunnerClient::from_encoded_jit_config(jit.config.expose(), None).unwrap();
        assert_eq!(runner.runner_id() as i64, jit.runner.id);

        let duplicate = github
            .generate_repo_jitconfig(id, &repo, &JitConfigRequest::new("vm-1", labels()))
            .await;
        assert!(
            matches!(duplicate, Err(GitHubError::Conflict { .. })),
            "{duplicate:?}"
        );
        let no_labels = github
            .generate_repo_jitconfig(id, &repo, &JitConfigRequest::new("vm-2", vec![]))
            .await;
        assert!(matches!(no_labels, Err(GitHubError::InvalidRequest(_))));

        let listed = github.list_repo_runners(id, &repo).await.unwrap();
        assert_eq!(listed.len(), 1);
        let got = github
            .get_repo_runner(id, &repo, jit.runner.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.status, "offline");
        assert!(github
            .delete_repo_runner(id, &repo, jit.runner.id)
            .await
            .unwrap());
        assert!(!github
            .delete_repo_runner(id, &repo, jit.runner.id)
            .await
            .unwrap());
        assert!(github
            .get_repo_runner(id, &repo, jit.runner.id)
            .await
            .unwrap()
            .is_none());

        let org = github
            .generate_org_jitconfig(id, "acme", &JitConfigRequest::new("org-vm", labels()))
            .await
            .unwrap();
        assert!(github
            .get_org_runner(id, "acme", org.runner.id)
            .await
            .unwrap()
            .is_some());
        assert!(github
            .delete_org_runner(id, "acme", org.runner.id)
            .await
            .unwrap());

        let job = t
            .sim
            .create_job(NewJob {
                repository: repo_name.clone(),
                labels: labels(),
                ..NewJob::default()
            })
            .unwrap();
        let got = github
            .get_job(id, &repo, JobId(job.id as i64))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.status, "queued");
        assert_eq!(got.labels, labels());
        assert!(github
            .get_job(id, &repo, JobId(987_654_321))
            .await
            .unwrap()
            .is_none());

        let runs = github.list_queued_runs(id, &repo).await.unwrap();
        assert_eq!(runs.len(), 1);
        let jobs = github
            .list_run_jobs(id, &repo, RunId(runs[0].id))
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1);
        let queued = github.queued_jobs(id).await.unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].repo, repo);
        assert_eq!(queued[0].job.id, job.id as i64);
        let installs = github.list_installations().await.unwrap();
        assert_eq!(installs.len(), 1);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn each_token_is_asked_for_one_use_only() {
    bounded(async {
        let t = TestSim::start().await;
        let inst = t.install("acme", AccountType::Organization);
        let api: RepoFullName = t.repo(inst.id, "api").parse().unwrap();
        let web: RepoFullName = t.repo(inst.id, "web").parse().unwrap();
        let id = InstallationId(inst.id as i64);
        let github = client(&t);
        github
            .generate_repo_jitconfig(id, &api, &JitConfigRequest::new("vm-1", labels()))
            .await
            .unwrap();

        // The token the JIT config was made with reaches its repository only.
        let jit_token = github
            .installation_token(id, TokenScope::repo_runners(&api))
            .await
            .unwrap();
        let (status, _, body) = t
            .get(&format!("/repos/{api}/actions/runners"), jit_token.expose())
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total_count"], 1);
        let (status, _, _) = t
            .get(&format!("/repos/{web}/actions/runners"), jit_token.expose())
            .await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "another repository's runners"
        );
        let (status, _, _) = t
            .get(&format!("/repos/{api}/actions/runs"), jit_token.expose())
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "actions are not the JIT token's"
        );

        // What the client asked GitHub for: the permission and the repository of each use.
        let asked: Vec<Value> = t
            .sim
            .exchanges()
            .iter()
            .filter(|e| e.method == "POST" && e.path.ends_with("/access_tokens"))
            .map(|e| serde_json::from_slice(&e.request_body).unwrap())
            .collect();
        assert_eq!(
            asked,
            [json!({ "permissions": { "administration": "write" }, "repositories": ["api"] })]
        );

        // A token limited to metadata: read cannot generate a JIT config.
        let metadata = github
            .installation_token(
                id,
                TokenScope {
                    repository: None,
                    permissions: &[("metadata", "read")],
                },
            )
            .await
            .unwrap();
        let (status, _, body) = t
            .post(
                &format!("/repos/{api}/actions/runners/generate-jitconfig"),
                metadata.expose(),
                json!({ "name": "vm-2", "runner_group_id": 1, "labels": labels() }),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_token_reaches_its_own_installation_only() {
    bounded(async {
        let t = TestSim::start().await;
        let a = t.install("org-a", AccountType::Organization);
        let b = t.install("org-b", AccountType::Organization);
        t.repo(a.id, "app");
        let b_repo: RepoFullName = t.repo(b.id, "app").parse().unwrap();
        let github = client(&t);
        let wrong = github
            .generate_repo_jitconfig(
                InstallationId(a.id as i64),
                &b_repo,
                &JitConfigRequest::new("x", labels()),
            )
            .await;
        assert!(
            matches!(wrong, Err(GitHubError::NotFound { .. })),
            "{wrong:?}"
        );
        let right = github
            .generate_repo_jitconfig(
                InstallationId(b.id as i64),
                &b_repo,
                &JitConfigRequest::new("x", labels()),
            )
            .await;
        assert!(right.is_ok());
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_within_bounds() {
    bounded(async {
        let t = TestSim::start().await;
        let inst = t.install("acme", AccountType::Organization);
        let repo: RepoFullName = t.repo(inst.id, "api").parse().unwrap();
        let id = InstallationId(inst.id as i64);
        let github = client(&t);
        github
            .installation_token(id, TokenScope::READ_ACTIONS)
            .await
            .unwrap();
        let runners = format!("/repos/{repo}/actions/runners");

        // A secondary limit with retry-after: 1 → waited out, then success.
        t.sim
            .add_rest_fault(RestFault {
                kind: RestFaultKind::RateLimit {
                    status: 429,
                    limit: RateLimitKind::Secondary { retry_after_s: 1 },
                },
                count: Some(1),
                path_prefix: Some(runners.clone()),
            })
            .unwrap();
        assert!(github.list_repo_runners(id, &repo).await.is_ok());

        // A primary limit whose reset is an hour away: beyond the client's bound → typed error.
        t.sim
            .add_rest_fault(RestFault {
                kind: RestFaultKind::RateLimit {
                    status: 403,
                    limit: RateLimitKind::Primary { reset_in_s: 3600 },
                },
                count: Some(1),
                path_prefix: Some(runners.clone()),
            })
            .unwrap();
        let limited = github.list_repo_runners(id, &repo).await;
        assert!(
            matches!(limited, Err(GitHubError::RateLimited { .. })),
            "{limited:?}"
        );

        // Two 502s then success on a GET: retried.
        t.sim
            .add_rest_fault(RestFault {
                kind: RestFaultKind::ServerError { status: 502 },
                count: Some(2),
                path_prefix: Some(runners.clone()),
            })
            .unwrap();
        assert!(github.list_repo_runners(id, &repo).await.is_ok());

        // Server errors that outlast the attempts: a typed, transient error.
        t.sim
            .add_rest_fault(RestFault {
                kind: RestFaultKind::ServerError { status: 503 },
                count: Some(5),
                path_prefix: Some(runners.clone()),
            })
            .unwrap();
        let failed = github.list_repo_runners(id, &repo).await;
        assert!(
            matches!(&failed, Err(e @ GitHubError::Server { .. }) if e.is_transient()),
            "{failed:?}"
        );
        t.sim.clear_rest_faults();
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_wrong_app_key_is_unauthorized() {
    bounded(async {
        let t = TestSim::start().await;
        let inst = t.install("acme", AccountType::Organization);
        let other = AppKeyPair::generate().unwrap();
        let github = client_with(&t, &other, Arc::new(mayfly_core::SystemClock));
        let err = github
            .installation_token(InstallationId(inst.id as i64), TokenScope::READ_ACTIONS)
            .await
            .unwrap_err();
        assert!(matches!(err, GitHubError::Unauthorized { .. }), "{err:?}");
        assert!(err.to_string().contains("private key"), "{err}");
        t.check_contract();
    })
    .await;
}
