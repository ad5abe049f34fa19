//! App JWT rules, installation tokens (expiry, scope, restriction) and the App endpoints.

use std::time::Duration;

use axum::http::StatusCode;
use mayfly_sim::{AccountType, AppKeyPair};
use reqwest::Method;
use serde_json::{json, Value};

use super::support::{bounded, TestSim};

fn assert_401(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["status"], "401");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(body["documentation_url"].as_str().is_some());
}

#[tokio::test]
async fn app_jwt_is_checked_like_github_does() {
    bounded(async {
        let t = TestSim::start().await;
        let now = chrono::Utc::now().timestamp();

        let (status, headers, body) = t.get("/app", &t.jwt()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["id"], 1);
        assert_eq!(headers["x-ratelimit-resource"], "core");

        // `iss` may be the App id as a string, or the client id.
        let as_string = t.jwt_with(
            json!({ "iat": now - 60, "exp": now + 500, "iss": "1" }),
            None,
        );
        assert_eq!(t.get("/app", &as_string).await.0, StatusCode::OK);
        let client_id = body["client_id"].as_str().unwrap();
        let by_client = t.jwt_with(
            json!({ "iat": now, "exp": now + 600, "iss": client_id }),
            None,
        );
        assert_eq!(t.get("/app", &by_client).await.0, StatusCode::OK);

        let other_key = AppKeyPair::generate().unwrap();
        let cases = [
            (
                "wrong key",
                t.jwt_with(
                    json!({ "iat": now, "exp": now + 300, "iss": 1 }),
                    Some(&other_key),
                ),
            ),
            (
                "expired",
                t.jwt_with(
                    json!({ "iat": now - 700, "exp": now - 100, "iss": 1 }),
                    None,
                ),
            ),
            (
                "exp more than 10 min after iat",
                t.jwt_with(json!({ "iat": now, "exp": now + 660, "iss": 1 }), None),
            ),
            (
                "wrong iss",
                t.jwt_with(json!({ "iat": now, "exp": now + 300, "iss": 2 }), None),
            ),
            ("no exp", t.jwt_with(json!({ "iat": now, "iss": 1 }), None)),
            (
                "iat in the future",
                t.jwt_with(
                    json!({ "iat": now + 300, "exp": now + 600, "iss": 1 }),
                    None,
                ),
            ),
            ("not a JWT", "ghs_notajwt".to_string()),
        ];
        for (what, jwt) in cases {
            let (status, _, body) = t.get("/app", &jwt).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
            assert_401(status, &body);
        }
        let (status, _, body) = t.call(Method::GET, "/app", None, None).await;
        assert_401(status, &body);

        // A JWT that was fine goes stale when the clock moves past its exp.
        let jwt = t.jwt();
        t.sim.advance_clock(Duration::from_secs(601));
        let (status, _, body) = t.get("/app", &jwt).await;
        assert_401(status, &body);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn installation_token_is_refused_on_app_endpoints_and_expires() {
    bounded(async {
        let t = TestSim::start_with(|c| c.token_ttl = Duration::from_secs(120)).await;
        let (inst, repo, token) = t.org_with_repo().await;
        assert!(token.starts_with("ghs_"));

        for path in [
            "/app",
            "/app/installations",
            &format!("/app/installations/{}", inst.id),
        ] {
            let (status, _, body) = t.get(path, &token).await;
            assert_401(status, &body);
        }
        let (status, _, body) = t
            .call(
                Method::POST,
                &format!("/app/installations/{}/access_tokens", inst.id),
                Some(&token),
                None,
            )
            .await;
        assert_401(status, &body);

        let runs = format!("/repos/{repo}/actions/runs");
        assert_eq!(t.get(&runs, &token).await.0, StatusCode::OK);
        // The legacy `token` scheme works too.
        let legacy = t
            .http
            .get(t.url(&runs))
            .header("authorization", format!("token {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(legacy.status().as_u16(), 200);

        // A JWT is not an installation token.
        let (status, _, body) = t.get(&runs, &t.jwt()).await;
        assert_401(status, &body);
        let (status, _, body) = t.get(&runs, "ghs_unknown").await;
        assert_401(status, &body);
        assert_eq!(body["message"], "Bad credentials");

        t.sim.advance_clock(Duration::from_secs(121));
        let (status, _, body) = t.get(&runs, &token).await;
        assert_401(status, &body);
        assert_eq!(body["message"], "Bad credentials");
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn tokens_differ_in_length_and_expire_when_github_says() {
    bounded(async {
        let t = TestSim::start().await;
        let inst = t.install("acme", AccountType::Organization);
        let mut lengths = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let (status, _, body) = t
                .call(
                    Method::POST,
                    &format!("/app/installations/{}/access_tokens", inst.id),
                    Some(&t.jwt()),
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
            lengths.insert(body["token"].as_str().unwrap().len());
            let expires =
                chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
            let ttl = expires.timestamp() - chrono::Utc::now().timestamp();
            assert!((3590..=3600).contains(&ttl), "ttl {ttl}");
            assert_eq!(body["repository_selection"], "all");
        }
        assert!(lengths.len() > 1, "token lengths vary: {lengths:?}");
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_token_reaches_only_its_installation_and_its_repositories() {
    bounded(async {
        let t = TestSim::start().await;
        let (acme, acme_api, acme_token) = t.org_with_repo().await;
        let acme_web = t.repo(acme.id, "web");
        let other = t.install("umbrella", AccountType::Organization);
        let other_repo = t.repo(other.id, "secret");
        let user = t.install("alice", AccountType::User);
        t.repo(user.id, "dotfiles");

        // Another installation's repository or organisation is "Not Found", not "Forbidden".
        for path in [
            format!("/repos/{other_repo}/actions/runs"),
            format!("/repos/{other_repo}/actions/runners"),
            "/orgs/umbrella/actions/runners".to_string(),
            "/orgs/umbrella/actions/runner-groups".to_string(),
            "/repos/alice/dotfiles/actions/runs".to_string(),
            "/orgs/alice/actions/runners".to_string(),
            "/repos/acme/nope/actions/runs".to_string(),
        ] {
            let (status, _, body) = t.get(&path, &acme_token).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
            assert_eq!(body["message"], "Not Found");
        }
        // Owner and repo names are case-insensitive.
        assert_eq!(
            t.get("/repos/ACME/Api/actions/runs", &acme_token).await.0,
            StatusCode::OK
        );

        let (status, _, body) = t.get("/installation/repositories", &acme_token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["total_count"], 2);
        let names: Vec<&str> = body["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["full_name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec![acme_api.as_str(), acme_web.as_str()]);

        // A token restricted to one repository.
        let path = format!("/app/installations/{}/access_tokens", acme.id);
        let (status, _, body) = t
            .post(&path, &t.jwt(), json!({ "repositories": ["api"] }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["repository_selection"], "selected");
        assert_eq!(body["repositories"][0]["full_name"], acme_api);
        let restricted = body["token"].as_str().unwrap().to_string();
        assert_eq!(
            t.get(&format!("/repos/{acme_api}/actions/runs"), &restricted)
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            t.get(&format!("/repos/{acme_web}/actions/runs"), &restricted)
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        let (_, _, body) = t.get("/installation/repositories", &restricted).await;
        assert_eq!(body["total_count"], 1);
        assert_eq!(body["repository_selection"], "selected");

        // Repositories outside the installation: 422.
        for request in [
            json!({ "repositories": ["secret"] }),
            json!({ "repository_ids": [1] }),
            json!({ "repositories": "api" }),
        ] {
            let (status, _, body) = t.post(&path, &t.jwt(), request.clone()).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{request}: {body}"
            );
        }
        let (status, _, _) = t
            .post("/app/installations/999/access_tokens", &t.jwt(), json!({}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_token_holds_only_the_permissions_it_asked_for() {
    bounded(async {
        let t = TestSim::start().await;
        let acme = t.install("acme", AccountType::Organization);
        let api = t.repo(acme.id, "api");
        let path = format!("/app/installations/{}/access_tokens", acme.id);
        let jit_body = json!({ "name": "vm-1", "runner_group_id": 1, "labels": ["self-hosted"] });

        // Limited to metadata: read, the token is told so, and cannot register a runner (403
        // as GitHub words it) nor read runs; it still lists its repositories.
        let (status, _, body) = t
            .post(
                &path,
                &t.jwt(),
                json!({ "permissions": { "metadata": "read" } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["permissions"], json!({ "metadata": "read" }));
        let metadata = body["token"].as_str().unwrap().to_string();
        let jit = format!("/repos/{api}/actions/runners/generate-jitconfig");
        let (status, _, body) = t.post(&jit, &metadata, jit_body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["message"], "Resource not accessible by integration");
        let runs = format!("/repos/{api}/actions/runs");
        assert_eq!(t.get(&runs, &metadata).await.0, StatusCode::FORBIDDEN);
        assert_eq!(
            t.get("/installation/repositories", &metadata).await.0,
            StatusCode::OK
        );

        // Read is not write: administration: read lists runners but registers none.
        let (_, _, body) = t
            .post(
                &path,
                &t.jwt(),
                json!({ "permissions": { "administration": "read" } }),
            )
            .await;
        let reader = body["token"].as_str().unwrap().to_string();
        let runners = format!("/repos/{api}/actions/runners");
        assert_eq!(t.get(&runners, &reader).await.0, StatusCode::OK);
        assert_eq!(
            t.post(&jit, &reader, jit_body.clone()).await.0,
            StatusCode::FORBIDDEN
        );

        // Administration: write registers one.
        let (_, _, body) = t
            .post(
                &path,
                &t.jwt(),
                json!({ "permissions": { "administration": "write" } }),
            )
            .await;
        let writer = body["token"].as_str().unwrap().to_string();
        assert_eq!(t.post(&jit, &writer, jit_body).await.0, StatusCode::CREATED);

        // More than the installation holds, or not a level: 422, and no token.
        for request in [
            json!({ "permissions": { "contents": "write" } }),
            json!({ "permissions": { "actions": "write" } }),
            json!({ "permissions": { "administration": "admin" } }),
            json!({ "permissions": "all" }),
        ] {
            let (status, _, body) = t.post(&path, &t.jwt(), request.clone()).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{request}: {body}"
            );
            assert!(body.get("token").is_none(), "{request}: {body}");
        }
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_manifest_code_converts_once_and_not_after_an_hour() {
    bounded(async {
        let t = TestSim::start().await;
        // A browser that does not follow the redirect, to read the code from it.
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let manifest = json!({
            "name": "mayfly test",
            "url": "https://ci.example.com",
            "hook_attributes": { "url": "https://ci.example.com/webhooks/github" },
            "redirect_url": "http://127.0.0.1:9/callback",
            "default_permissions": { "administration": "write", "actions": "read" },
            "default_events": ["workflow_job"],
        });
        let code = || async {
            let answer = browser
                .post(t.url("/organizations/acme/settings/apps/new?state=s1"))
                .form(&[("manifest", manifest.to_string())])
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), StatusCode::FOUND);
            let to = url::Url::parse(answer.headers()["location"].to_str().unwrap()).unwrap();
            assert_eq!(to.path(), "/callback");
            let pairs: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
            assert_eq!(pairs["state"], "s1");
            pairs["code"].clone()
        };
        let sim = &t;
        let convert = |code: String| async move {
            sim.call(
                Method::POST,
                &format!("/app-manifests/{code}/conversions"),
                None,
                None,
            )
            .await
        };

        let first = code().await;
        assert_eq!(first.len(), 40);
        let (status, _, body) = convert(first.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(
            body["permissions"],
            json!({ "actions": "read", "administration": "write" })
        );
        assert_eq!(body["events"], json!(["workflow_job"]));
        assert_eq!(body["owner"]["login"], "acme");
        assert!(body["pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert_eq!(body["webhook_secret"].as_str().unwrap().len(), 40);
        // Used: gone.
        assert_eq!(convert(first).await.0, StatusCode::NOT_FOUND);
        // Older than an hour: gone too.
        let late = code().await;
        t.sim.advance_clock(Duration::from_secs(3601));
        assert_eq!(convert(late).await.0, StatusCode::NOT_FOUND);
        assert_eq!(convert("0123".into()).await.0, StatusCode::NOT_FOUND);

        // A manifest GitHub would not take: its page says why, and no code is made.
        let answer = browser
            .post(t.url("/settings/apps/new"))
            .form(&[("manifest", r#"{"url":"https://ci.example.com"}"#)])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(answer.text().await.unwrap().contains("redirect_url"));
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn app_installation_endpoints() {
    bounded(async {
        let t = TestSim::start().await;
        let acme = t.install("acme", AccountType::Organization);
        t.repo(acme.id, "api");
        let alice = t.install("alice", AccountType::User);
        t.repo(alice.id, "dotfiles");
        let jwt = t.jwt();

        let (status, headers, body) = t.get("/app/installations?per_page=1", &jwt).await;
        assert_eq!(status, StatusCode::OK);
        let items = body.as_array().expect("a bare array");
        assert_eq!(items.len(), 1);
        assert!(items[0].get("client_id").is_none());
        let link = headers["link"].to_str().unwrap();
        assert!(
            link.contains("rel=\"next\"") && link.contains("page=2"),
            "{link}"
        );
        let (_, _, page2) = t.get("/app/installations?per_page=1&page=2", &jwt).await;
        assert_eq!(page2[0]["account"]["login"], "alice");

        let (status, _, body) = t
            .get(&format!("/app/installations/{}", acme.id), &jwt)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["account"]["type"], "Organization");
        assert_eq!(body["target_type"], "Organization");
        assert!(body["client_id"].is_string());

        assert_eq!(
            t.get("/repos/acme/api/installation", &jwt).await.2["id"],
            acme.id
        );
        assert_eq!(
            t.get("/orgs/acme/installation", &jwt).await.2["id"],
            acme.id
        );
        assert_eq!(
            t.get("/repos/alice/dotfiles/installation", &jwt).await.2["id"],
            alice.id
        );
        assert_eq!(
            t.get("/orgs/alice/installation", &jwt).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            t.get("/app/installations/12345", &jwt).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            t.get("/app/installations/abc", &jwt).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            t.get("/repos/acme/nope/installation", &jwt).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(t.get("/app", &jwt).await.2["installations_count"], 2);
        t.check_contract();
    })
    .await;
}
