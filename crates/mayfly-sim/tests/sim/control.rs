//! The `/_sim` control API over HTTP: the same operations as the in-process methods.

use serde_json::{json, Value};

use super::support::{bounded, TestSim};

#[tokio::test]
async fn control_api_over_http_drives_the_simulation() {
    bounded(async {
        let t = TestSim::start().await;
        let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
            let mut request = t.http.request(method, t.url(path));
            if let Some(body) = body {
                request = request.json(&body);
            }
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let text = response.text().await.unwrap();
                (
                    status,
                    serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                )
            }
        };
        use reqwest::Method;
        let (status, inst) = call(
            Method::POST,
            "/_sim/installations",
            Some(json!({ "account": "acme", "account_type": "Organization" })),
        )
        .await;
        assert_eq!(status, 201, "{inst}");
        let (status, _) = call(
            Method::POST,
            "/_sim/installations",
            Some(json!({ "account": "acme", "account_type": "Organization" })),
        )
        .await;
        assert_eq!(status, 409);
        let (status, repo) = call(
            Method::POST,
            "/_sim/repos",
            Some(json!({ "installation_id": inst["id"], "name": "api" })),
        )
        .await;
        assert_eq!(status, 201);
        assert_eq!(repo["full_name"], "acme/api");
        let (status, job) = call(
            Method::POST,
            "/_sim/jobs",
            Some(json!({ "repository": "acme/api", "labels": ["self-hosted"], "waiting": true })),
        )
        .await;
        assert_eq!(status, 201, "{job}");
        assert_eq!(job["status"], "waiting");
        let id = job["id"].as_u64().unwrap();
        let (_, approved) = call(Method::POST, &format!("/_sim/jobs/{id}/approve"), None).await;
        assert_eq!(approved["status"], "queued");
        let (_, cancelled) = call(Method::POST, &format!("/_sim/jobs/{id}/cancel"), None).await;
        assert_eq!(cancelled["conclusion"], "cancelled");
        let (status, _) = call(Method::POST, &format!("/_sim/jobs/{id}/cancel"), None).await;
        assert_eq!(status, 409);
        let (_, one) = call(Method::GET, &format!("/_sim/jobs/{id}"), None).await;
        assert_eq!(one["status"], "completed");
        let (status, _) = call(
            Method::POST,
            "/_sim/jobs",
            Some(json!({ "repository": "acme/nope", "labels": ["x"] })),
        )
        .await;
        assert_eq!(status, 404);

        let (status, _) = call(
            Method::PUT,
            "/_sim/faults/webhooks",
            Some(json!({ "drop_next": 1 })),
        )
        .await;
        assert_eq!(status, 204);
        call(
            Method::POST,
            "/_sim/jobs",
            Some(json!({ "repository": "acme/api", "labels": ["x"] })),
        )
        .await;
        let (_, deliveries) = call(Method::GET, "/_sim/deliveries", None).await;
        let last = deliveries.as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["outcome"]["state"], "dropped");
        assert_eq!(last["event"], "workflow_job");
        assert!(last["headers"]["X-Hub-Signature-256"]
            .as_str()
            .unwrap()
            .starts_with("sha256="));
        let (status, redelivered) = call(
            Method::POST,
            &format!("/_sim/deliveries/{}/redeliver", last["id"]),
            None,
        )
        .await;
        assert_eq!(status, 202);
        assert!(redelivered["id"].as_u64().is_some());

        let (status, _) = call(
            Method::POST,
            "/_sim/faults/rest",
            Some(json!({ "type": "server_error", "status": 503, "count": 1 })),
        )
        .await;
        assert_eq!(status, 204);
        assert_eq!(t.get("/app", &t.jwt()).await.0.as_u16(), 503);
        let (status, _) = call(
            Method::POST,
            "/_sim/faults/rest",
            Some(json!({ "type": "server_error", "status": 200 })),
        )
        .await;
        assert_eq!(status, 422);

        let jwt = t.jwt();
        let (status, _) = call(
            Method::POST,
            "/_sim/clock/advance",
            Some(json!({ "seconds": 3600 })),
        )
        .await;
        assert_eq!(status, 204);
        assert_eq!(t.get("/app", &jwt).await.0.as_u16(), 401);
        let (status, _) = call(
            Method::PUT,
            "/_sim/webhook-url",
            Some(json!({ "url": "not a url" })),
        )
        .await;
        assert_eq!(status, 422);
        let (status, _) = call(
            Method::PUT,
            "/_sim/webhook-url",
            Some(json!({ "url": null })),
        )
        .await;
        assert_eq!(status, 204);
        t.check_contract();
    })
    .await;
}
