//! Injected REST faults (5xx, primary and secondary rate limits, slow answers), rate-limit
//! accounting, and GitHub's 404 for unknown routes.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use mayfly_sim::{RateLimitKind, RestFault, RestFaultKind};
use reqwest::Method;

use super::support::{bounded, TestSim};

#[tokio::test]
async fn server_error_fault_hits_only_its_path_prefix_and_count() {
    bounded(async {
        let t = TestSim::start().await;
        let (_, repo, token) = t.org_with_repo().await;
        t.sim
            .add_rest_fault(RestFault {
                kind: RestFaultKind::ServerError { status: 502 },
                count: Some(2),
                path_prefix: Some(format!("/repos/{repo}/actions/runs")),
            })
            .unwrap();
        let runs = format!("/repos/{repo}/actions/runs");
        assert_eq!(
            t.get("/installation/repositories", &token).await.0,
            StatusCode::OK
        );
        for _ in 0..2 {
            let (status, headers, body) = t.get(&runs, &token).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY);
            assert_eq!(body["status"], "502");
            assert!(headers.contains_key("x-ratelimit-remaining"));
        }
        assert_eq!(t.get(&runs, &token).await.0, StatusCode::OK);
        // The control API is never faulted.
        t.sim
            .add_rest_fault(RestFault {
                kind: RestFaultKind::ServerError { status: 500 },
                count: None,
                path_prefix: None,
            })
            .unwrap();
        let control = t.http.get(t.url("/_sim/jobs")).send().await.unwrap();
        assert_eq!(control.status().as_u16(), 200);
        assert_eq!(
            t.get("/app", &t.jwt()).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        t.sim.clear_rest_faults();
        assert_eq!(t.get("/app", &t.jwt()).await.0, StatusCode::OK);
        let bad = RestFault {
            kind: RestFaultKind::RateLimit {
                status: 500,
                limit: RateLimitKind::Secondary { retry_after_s: 1 },
            },
            count: None,
            path_prefix: None,
        };
        assert!(t.sim.add_rest_fault(bad).is_err());
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn rate_limit_faults_answer_like_github() {
    bounded(async {
        let t = TestSim::start().await;
        let (_, repo, token) = t.org_with_repo().await;
        let runs = format!("/repos/{repo}/actions/runs");
        t.sim
            .add_rest_fault(RestFault {
                kind: RestFaultKind::RateLimit {
                    status: 403,
                    limit: RateLimitKind::Primary { reset_in_s: 120 },
                },
                count: Some(1),
                path_prefix: None,
            })
            .unwrap();
        let (status, headers, body) = t.get(&runs, &token).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        let reset: i64 = headers["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let ahead = reset - chrono::Utc::now().timestamp();
        assert!((100..=121).contains(&ahead), "reset {ahead} s ahead");
        assert!(body["message"].as_str().unwrap().contains("rate limit"));

        t.sim
            .add_rest_fault(RestFault {
                kind: RestFaultKind::RateLimit {
                    status: 429,
                    limit: RateLimitKind::Secondary { retry_after_s: 30 },
                },
                count: Some(1),
                path_prefix: None,
            })
            .unwrap();
        let (status, headers, body) = t.get(&runs, &token).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers["retry-after"], "30");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("secondary rate limit"));
        assert_eq!(t.get(&runs, &token).await.0, StatusCode::OK);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn slow_fault_delays_answers() {
    bounded(async {
        let t = TestSim::start().await;
        t.sim
            .add_rest_fault(RestFault {
                kind: RestFaultKind::Slow { delay_ms: 300 },
                count: Some(1),
                path_prefix: Some("/app".into()),
            })
            .unwrap();
        let started = Instant::now();
        assert_eq!(t.get("/app", &t.jwt()).await.0, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(300));
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn rate_limit_headers_count_per_token_and_resource() {
    bounded(async {
        let t = TestSim::start().await;
        let (inst, repo, token) = t.org_with_repo().await;
        let other = t.token(inst.id).await;
        let runs = format!("/repos/{repo}/actions/runs");
        let remaining = |h: &axum::http::HeaderMap| -> u64 {
            h["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap()
        };
        let (_, first, _) = t.get(&runs, &token).await;
        let (_, second, _) = t.get(&runs, &token).await;
        assert_eq!(first["x-ratelimit-limit"], "5000");
        assert_eq!(remaining(&first) - 1, remaining(&second));
        assert_eq!(second["x-ratelimit-used"], "2");
        assert_eq!(second["x-ratelimit-resource"], "core");
        let (_, fresh, _) = t.get(&runs, &other).await;
        assert_eq!(remaining(&fresh), 4999);
        let (_, jit, _) = t
            .post(
                &format!("/repos/{repo}/actions/runners/generate-jitconfig"),
                &token,
                serde_json::json!({ "name": "r", "runner_group_id": 1, "labels": ["self-hosted"] }),
            )
            .await;
        assert_eq!(jit["x-ratelimit-resource"], "actions_runner_registration");
        assert_eq!(jit["x-ratelimit-limit"], "10000");
        let (status, _, overview) = t.get("/rate_limit", &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(overview["resources"]["core"]["used"], 2);
        assert_eq!(
            overview["resources"]["actions_runner_registration"]["used"],
            1
        );
        assert_eq!(overview["rate"]["remaining"], 4998);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_github_404s() {
    bounded(async {
        let t = TestSim::start().await;
        let (_, repo, token) = t.org_with_repo().await;
        for (method, path) in [
            (Method::GET, "/nope".to_string()),
            (Method::GET, format!("/repos/{repo}/actions/workflows")),
            (Method::PUT, format!("/repos/{repo}/actions/runs")),
            (Method::POST, "/app".to_string()),
        ] {
            let (status, headers, body) = t.call(method.clone(), &path, Some(&token), None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(body["message"], "Not Found");
            assert_eq!(headers["content-type"], "application/json; charset=utf-8");
        }
        t.check_contract();
    })
    .await;
}
