//! generate-jitconfig (validation, conflicts, the encoded config), runners and runner groups.

use axum::http::StatusCode;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mayfly_sim::JitConfig;
use reqwest::Method;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

use super::support::{bounded, TestSim};

#[tokio::test]
async fn generate_jitconfig_validates_its_body() {
    bounded(async {
        let t = TestSim::start().await;
        let (_, repo, token) = t.org_with_repo().await;
        let path = format!("/repos/{repo}/actions/runners/generate-jitconfig");
        let labels = |n: usize| (0..n).map(|i| format!("l{i}")).collect::<Vec<_>>();
        let cases = [
            (
                "no name",
                json!({ "runner_group_id": 1, "labels": ["self-hosted"] }),
            ),
            (
                "empty name",
                json!({ "name": "", "runner_group_id": 1, "labels": ["self-hosted"] }),
            ),
            (
                "name not a string",
                json!({ "name": 7, "runner_group_id": 1, "labels": ["self-hosted"] }),
            ),
            ("no labels", json!({ "name": "r", "runner_group_id": 1 })),
            (
                "0 labels",
                json!({ "name": "r", "runner_group_id": 1, "labels": [] }),
            ),
            (
                "101 labels",
                json!({ "name": "r", "runner_group_id": 1, "labels": labels(101) }),
            ),
            (
                "label not a string",
                json!({ "name": "r", "runner_group_id": 1, "labels": [3] }),
            ),
            (
                "empty label",
                json!({ "name": "r", "runner_group_id": 1, "labels": [""] }),
            ),
            (
                "no runner_group_id",
                json!({ "name": "r", "labels": ["x"] }),
            ),
            (
                "runner_group_id a string",
                json!({ "name": "r", "runner_group_id": "1", "labels": ["x"] }),
            ),
            (
                "unknown runner group",
                json!({ "name": "r", "runner_group_id": 7, "labels": ["x"] }),
            ),
            (
                "work_folder not a string",
                json!({ "name": "r", "runner_group_id": 1, "labels": ["x"], "work_folder": 1 }),
            ),
            ("not an object", json!(["r"])),
        ];
        for (what, body) in cases {
            let (status, headers, reply) = t.post(&path, &token, body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {reply}");
            assert!(
                reply["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("Invalid request."),
                "{what}"
            );
            assert!(!reply["errors"].as_array().unwrap().is_empty(), "{what}");
            assert_eq!(
                headers["x-ratelimit-resource"],
                "actions_runner_registration"
            );
        }
        // Not JSON at all: GitHub's documented "Problems parsing JSON" 400.
        let response = t
            .http
            .post(t.url(&path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{name: r")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["message"], "Problems parsing JSON");

        // 100 labels and unknown fields are fine.
        let (status, _, reply) = t
            .post(
                &path,
                &token,
                json!({ "name": "r", "runner_group_id": 1, "labels": labels(100), "extra": true }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{reply}");
        assert!(t.sim.jobs().is_empty());
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn duplicate_runner_name_conflicts_within_a_scope_only() {
    bounded(async {
        let t = TestSim::start().await;
        let (inst, repo, token) = t.org_with_repo().await;
        let other = t.repo(inst.id, "web");
        t.jit(&token, &repo, "vm-1", &["self-hosted"]).await;
        let (status, _, body) = t
            .post(
                &format!("/repos/{repo}/actions/runners/generate-jitconfig"),
                &token,
                json!({ "name": "vm-1", "runner_group_id": 1, "labels": ["self-hosted"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body["message"].as_str().unwrap().contains("already exists"));
        // Same name in another repository, or at org level, is a different runner.
        t.jit(&token, &other, "vm-1", &["self-hosted"]).await;
        let (status, _, _) = t
            .post(
                "/orgs/acme/actions/runners/generate-jitconfig",
                &token,
                json!({ "name": "vm-1", "runner_group_id": 1, "labels": ["self-hosted"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn jitconfig_holds_the_three_runner_files_and_a_usable_key() {
    bounded(async {
        let t = TestSim::start().await;
        let (_, repo, token) = t.org_with_repo().await;
        let (status, _, body) = t
            .post(
                &format!("/repos/{repo}/actions/runners/generate-jitconfig"),
                &token,
                json!({ "name": "vm-7", "runner_group_id": 1, "labels": ["self-hosted", "X64", "Linux", "mayfly-2cpu"], "work_folder": "/w" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let runner = &body["runner"];
        assert_eq!(runner["status"], "offline");
        assert_eq!(runner["busy"], false);
        assert_eq!(runner["ephemeral"], true);
        let types: Vec<(&str, &str)> = runner["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["name"].as_str().unwrap(), l["type"].as_str().unwrap()))
            .collect();
        assert_eq!(
            types,
            vec![("self-hosted", "read-only"), ("X64", "read-only"), ("Linux", "read-only"), ("mayfly-2cpu", "custom")]
        );

        let encoded = body["encoded_jit_config"].as_str().unwrap();
        let outer: Value = serde_json::from_slice(&STANDARD.decode(encoded).unwrap()).unwrap();
        let file = |name: &str| -> Value {
            serde_json::from_slice(&STANDARD.decode(outer[name].as_str().unwrap()).unwrap()).unwrap()
        };
        let dot_runner = file(".runner");
        assert_eq!(dot_runner["AgentId"], runner["id"].as_u64().unwrap().to_string());
        assert_eq!(dot_runner["AgentName"], "vm-7");
        assert_eq!(dot_runner["Ephemeral"], "True");
        assert_eq!(dot_runner["PoolId"], "1");
        assert_eq!(dot_runner["WorkFolder"], "/w");
        assert_eq!(dot_runner["ServerUrl"], t.sim.base_url().as_str());
        assert_eq!(dot_runner["GitHubUrl"], t.url(&repo).as_str());
        for key in ["AgentId", "AgentName", "DisableUpdate", "Ephemeral", "PoolId", "PoolName", "ServerUrl", "WorkFolder", "GitHubUrl"] {
            assert!(dot_runner[key].is_string(), "{key}");
        }
        let credentials = file(".credentials");
        assert_eq!(credentials["Scheme"], "OAuth");
        assert!(uuid::Uuid::parse_str(credentials["Data"]["ClientId"].as_str().unwrap()).is_ok());
        assert_eq!(credentials["Data"]["AuthorizationUrl"], t.url("/_sim/runner/token").as_str());
        let params = file(".credentials_rsaparams");
        for key in ["d", "dp", "dq", "exponent", "inverseQ", "modulus", "p", "q"] {
            assert!(STANDARD.decode(params[key].as_str().unwrap()).is_ok(), "{key}");
        }

        let config = JitConfig::decode(encoded).unwrap();
        assert_eq!(config.private_key.size(), 256, "RSA-2048");
        // Usable: the broker accepts an assertion signed with it.
        let mut client = mayfly_sim::runner_client::RunnerClient::from_encoded_jit_config(encoded, None).unwrap();
        client.authenticate().await.unwrap();
        // Each runner gets its own key.
        let (_, second) = t.jit(&token, &repo, "vm-8", &["self-hosted"]).await;
        assert_ne!(JitConfig::decode(&second).unwrap().private_key, config.private_key);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn runners_can_be_listed_fetched_and_deleted() {
    bounded(async {
        let t = TestSim::start().await;
        let (_, repo, token) = t.org_with_repo().await;
        let (id, _) = t.jit(&token, &repo, "vm-1", &["self-hosted"]).await;
        t.jit(&token, &repo, "vm-2", &["self-hosted"]).await;
        let list = format!("/repos/{repo}/actions/runners");
        let (status, headers, body) = t.get(&format!("{list}?per_page=1"), &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["total_count"], 2);
        assert_eq!(body["runners"].as_array().unwrap().len(), 1);
        assert!(headers["link"].to_str().unwrap().contains("rel=\"last\""));
        let (_, _, named) = t.get(&format!("{list}?name=vm-2"), &token).await;
        assert_eq!(named["total_count"], 1);
        assert_eq!(named["runners"][0]["name"], "vm-2");

        let one = format!("{list}/{id}");
        let (status, _, body) = t.get(&one, &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["name"], "vm-1");
        let (status, _, _) = t.call(Method::DELETE, &one, Some(&token), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(t.get(&one, &token).await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            t.call(Method::DELETE, &one, Some(&token), None).await.0,
            StatusCode::NOT_FOUND
        );

        // Org runners and the org's runner groups.
        let (status, _, body) = t
            .post(
                "/orgs/acme/actions/runners/generate-jitconfig",
                &token,
                json!({ "name": "org-vm", "runner_group_id": 1, "labels": ["self-hosted"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let org_id = body["runner"]["id"].as_u64().unwrap();
        let (_, _, listed) = t.get("/orgs/acme/actions/runners", &token).await;
        assert_eq!(listed["total_count"], 1);
        assert_eq!(
            t.get(&format!("/orgs/acme/actions/runners/{org_id}"), &token)
                .await
                .0,
            StatusCode::OK
        );
        // An org runner is not a runner of the repository.
        assert_eq!(
            t.get(&format!("{list}/{org_id}"), &token).await.0,
            StatusCode::NOT_FOUND
        );
        let (_, _, groups) = t.get("/orgs/acme/actions/runner-groups", &token).await;
        assert_eq!(groups["runner_groups"][0]["id"], 1);
        assert_eq!(groups["runner_groups"][0]["name"], "Default");
        let (status, _, _) = t
            .call(
                Method::DELETE,
                &format!("/orgs/acme/actions/runners/{org_id}"),
                Some(&token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        t.check_contract();
    })
    .await;
}
