//! "Sign in with GitHub" against the simulator, driven like a browser would: the authorize page,
//! its sign-in form, the redirect to the callback URL, the code exchange, then `/user` and
//! `/user/installations` with the user token (validated against GitHub's OpenAPI document).

use std::collections::HashMap;
use std::time::Duration;

use axum::http::StatusCode;
use mayfly_sim::{AccountType, NewUser, SimInstallation, SIM_USER_PASSWORD};
use reqwest::redirect::Policy;
use serde_json::{json, Value};
use url::Url;

use super::support::{bounded, TestSim};

/// The dashboard's callback; never fetched (the browser's redirect is not followed).
pub const CALLBACK: &str = "http://127.0.0.1:9/auth/github/callback";

/// A browser that does not follow redirects, so the test sees where GitHub sends it.
fn browser(t: &TestSim) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().redirect(Policy::none());
    if let Some(pem) = &t.ca_pem {
        builder =
            builder.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

pub async fn start() -> TestSim {
    let t =
        TestSim::start_with(|c| c.oauth_callback_urls = vec![Url::parse(CALLBACK).unwrap()]).await;
    t
}

/// The quickstart's two organisations, each with a repository.
pub async fn quickstart_orgs(t: &TestSim) -> (SimInstallation, SimInstallation) {
    let acme = t.install("acme-robotics", AccountType::Organization);
    t.repo(acme.id, "firmware");
    let globex = t.install("globex-labs", AccountType::Organization);
    t.repo(globex.id, "site");
    (acme, globex)
}

/// `name → value` of the `<input>`s of the page's form (values un-escaped).
fn form_inputs(html: &str) -> HashMap<String, String> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = tag[start..].find('"')?;
        Some(
            tag[start..start + len]
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    };
    html.split("<input")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default()))
        })
        .collect()
}

/// Opens the authorize URL and submits the sign-in form; returns the answer to the form.
async fn submit_sign_in(
    t: &TestSim,
    query: &[(&str, &str)],
    login: &str,
    password: &str,
) -> reqwest::Response {
    let browser = browser(t);
    let mut authorize = t.url("/login/oauth/authorize");
    authorize.query_pairs_mut().extend_pairs(query);
    let page = browser.get(authorize).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    for needle in [
        "id=\"login_field\"",
        "id=\"password\"",
        "name=\"commit\" value=\"Sign in\"",
    ] {
        assert!(html.contains(needle), "{needle} missing from {html}");
    }
    let mut form = form_inputs(&html);
    form.insert("login".into(), login.into());
    form.insert("password".into(), password.into());
    browser
        .post(t.url("/session"))
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// Opens a ready-made authorize URL (as the dashboard makes it), signs `login` in, and returns
/// the code from the callback (after checking the state came back).
pub async fn follow_authorize_url(t: &TestSim, authorize: Url, login: &str) -> String {
    let query: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    assert_eq!(authorize.path(), "/login/oauth/authorize");
    let pairs: Vec<(&str, &str)> = query
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let response = submit_sign_in(t, &pairs, login, SIM_USER_PASSWORD).await;
    let to = location(&response);
    let back = query_of(&to);
    let state = query.iter().find(|(k, _)| k == "state").map(|(_, v)| v);
    assert_eq!(back.get("state"), state);
    back["code"].clone()
}

fn location(response: &reqwest::Response) -> Url {
    assert_eq!(response.status(), StatusCode::FOUND);
    Url::parse(response.headers()["location"].to_str().unwrap()).unwrap()
}

fn query_of(url: &Url) -> HashMap<String, String> {
    url.query_pairs().into_owned().collect()
}

/// Signs `login` in; returns the code GitHub put on the callback URL (after checking `state`).
pub async fn sign_in(t: &TestSim, login: &str) -> String {
    let client_id = t.sim.oauth_app().client_id;
    let response = submit_sign_in(
        t,
        &[
            ("client_id", &client_id),
            ("redirect_uri", CALLBACK),
            ("state", "st-123"),
        ],
        login,
        SIM_USER_PASSWORD,
    )
    .await;
    let to = location(&response);
    assert_eq!(&to[..url::Position::AfterPath], CALLBACK);
    let query = query_of(&to);
    assert_eq!(query["state"], "st-123");
    query["code"].clone()
}

/// POSTs to the token endpoint (form body, `Accept: application/json`); returns the JSON.
async fn token_request(t: &TestSim, params: &[(&str, &str)]) -> Value {
    let response = browser(t)
        .post(t.url("/login/oauth/access_token"))
        .header("accept", "application/json")
        .form(params)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GitHub answers 200");
    response.json().await.unwrap()
}

async fn exchange(t: &TestSim, code: &str) -> Value {
    let client_id = t.sim.oauth_app().client_id;
    let secret = t.sim.oauth_client_secret();
    token_request(
        t,
        &[
            ("client_id", &client_id),
            ("client_secret", secret.expose()),
            ("code", code),
            ("redirect_uri", CALLBACK),
        ],
    )
    .await
}

async fn user_token(t: &TestSim, login: &str) -> String {
    let code = sign_in(t, login).await;
    let body = exchange(t, &code).await;
    body["access_token"].as_str().unwrap().to_owned()
}

fn installation_logins(body: &Value) -> Vec<String> {
    body["installations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["account"]["login"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_one_org_user_signs_in_and_sees_that_orgs_installation() {
    bounded(async {
        let t = start().await;
        let (acme, _) = quickstart_orgs(&t).await;
        let code = sign_in(&t, "mona").await;
        assert_eq!(code.len(), 20);
        let body = exchange(&t, &code).await;
        let token = body["access_token"].as_str().unwrap();
        assert!(token.starts_with("ghu_"), "{body}");
        assert!(body["refresh_token"].as_str().unwrap().starts_with("ghr_"));
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["scope"], "");
        assert_eq!(body["expires_in"], 28_800);
        assert_eq!(body["refresh_token_expires_in"], 15_897_600);

        let (status, _, user) = t.get("/user", token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(user["login"], "mona");
        let (status, _, list) = t.get("/user/installations", token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["total_count"], 1);
        assert_eq!(installation_logins(&list), vec!["acme-robotics"]);
        assert_eq!(list["installations"][0]["id"], acme.id);
        let (status, _, repos) = t
            .get(
                &format!("/user/installations/{}/repositories", acme.id),
                token,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            repos["repositories"][0]["full_name"],
            "acme-robotics/firmware"
        );
        assert_eq!(repos["repositories"][0]["permissions"]["pull"], true);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn a_two_org_user_sees_both_across_pages_and_a_user_in_no_org_sees_none() {
    bounded(async {
        let t = start().await;
        let (acme, globex) = quickstart_orgs(&t).await;
        let token = user_token(&t, "octocat").await;
        let (status, headers, first) = t.get("/user/installations?per_page=1", &token).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(first["total_count"], 2);
        assert_eq!(installation_logins(&first), vec!["acme-robotics"]);
        let link = headers["link"].to_str().unwrap();
        assert!(link.contains("rel=\"next\""), "{link}");
        let (_, _, second) = t.get("/user/installations?per_page=1&page=2", &token).await;
        assert_eq!(installation_logins(&second), vec!["globex-labs"]);

        // Another user's installation stays invisible, even by id.
        let hubot = user_token(&t, "hubot").await;
        let (_, _, list) = t.get("/user/installations", &hubot).await;
        assert_eq!(installation_logins(&list), vec!["globex-labs"]);
        let (status, _, _) = t
            .get(
                &format!("/user/installations/{}/repositories", acme.id),
                &hubot,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_ne!(acme.id, globex.id);

        let nemo = user_token(&t, "nemo").await;
        let (status, _, list) = t.get("/user/installations", &nemo).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list, json!({ "total_count": 0, "installations": [] }));
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn users_and_callback_urls_can_be_set_up_through_the_control_api() {
    bounded(async {
        let t = TestSim::start().await;
        let http = reqwest::Client::new();
        let inst = t.install("initech", AccountType::Organization);
        let created = http
            .post(t.url("/_sim/users"))
            .json(&NewUser {
                login: "peter".into(),
                orgs: vec!["initech".into()],
            })
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let put = http
            .put(t.url("/_sim/oauth/callback-urls"))
            .json(&json!({ "urls": [CALLBACK] }))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), StatusCode::NO_CONTENT);
        let app: Value = http
            .get(t.url("/_sim/oauth/app"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(app["client_id"].as_str().unwrap().starts_with("Iv23li"));
        assert_eq!(app["callback_urls"], json!([CALLBACK]));
        let secret = t.sim.oauth_client_secret();
        assert!(
            !app.to_string().contains(secret.expose()),
            "no secret over HTTP"
        );

        let token = user_token(&t, "peter").await;
        let (_, _, list) = t.get("/user/installations", &token).await;
        assert_eq!(list["installations"][0]["id"], inst.id);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn authorize_refuses_unknown_apps_and_unregistered_callbacks() {
    bounded(async {
        let t = start().await;
        let browser = browser(&t);
        let mut url = t.url("/login/oauth/authorize");
        url.query_pairs_mut()
            .append_pair("client_id", "Iv23liUnknown")
            .append_pair("redirect_uri", CALLBACK);
        let page = browser.get(url).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::NOT_FOUND);
        assert!(!page.text().await.unwrap().contains("login_field"));

        let client_id = t.sim.oauth_app().client_id;
        let mut url = t.url("/login/oauth/authorize");
        url.query_pairs_mut()
            .append_pair("client_id", &client_id)
            .append_pair("redirect_uri", "http://evil.example/cb")
            .append_pair("state", "s1");
        let refused = browser.get(url).send().await.unwrap();
        let to = location(&refused);
        assert_eq!(
            &to[..url::Position::AfterPath],
            CALLBACK,
            "only ever the registered URL"
        );
        let query = query_of(&to);
        assert_eq!(query["error"], "redirect_uri_mismatch");
        assert_eq!(query["state"], "s1");
        assert!(!query.contains_key("code"));

        // Without redirect_uri the first callback URL is used.
        let response = submit_sign_in(
            &t,
            &[("client_id", &client_id), ("state", "s2")],
            "mona",
            SIM_USER_PASSWORD,
        )
        .await;
        assert_eq!(&location(&response)[..url::Position::AfterPath], CALLBACK);

        // A wrong password shows the page again with GitHub's message, and no code.
        let response = submit_sign_in(&t, &[("client_id", &client_id)], "mona", "wrong").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response
            .text()
            .await
            .unwrap()
            .contains("Incorrect username or password."));
        let response = submit_sign_in(
            &t,
            &[("client_id", &client_id)],
            "nobody",
            SIM_USER_PASSWORD,
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn the_token_endpoint_answers_documented_errors_with_200() {
    bounded(async {
        let t = start().await;
        let client_id = t.sim.oauth_app().client_id;
        let secret = t.sim.oauth_client_secret();
        let error = |body: &Value| body["error"].as_str().unwrap_or_default().to_owned();

        let code = sign_in(&t, "mona").await;
        let body = token_request(
            &t,
            &[
                ("client_id", &client_id),
                ("client_secret", "0123"),
                ("code", &code),
            ],
        )
        .await;
        assert_eq!(error(&body), "incorrect_client_credentials");
        assert!(body["error_uri"]
            .as_str()
            .unwrap()
            .starts_with("https://docs.github.com/"));
        let body = token_request(
            &t,
            &[
                ("client_id", "Iv23liOther"),
                ("client_secret", secret.expose()),
                ("code", &code),
            ],
        )
        .await;
        assert_eq!(error(&body), "incorrect_client_credentials");
        // The code survived the refused client and still works once.
        let body = token_request(
            &t,
            &[
                ("client_id", &client_id),
                ("client_secret", secret.expose()),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:9/elsewhere"),
            ],
        )
        .await;
        assert_eq!(error(&body), "redirect_uri_mismatch");

        let code = sign_in(&t, "mona").await;
        assert!(exchange(&t, &code).await["access_token"].is_string());
        assert_eq!(
            error(&exchange(&t, &code).await),
            "bad_verification_code",
            "reused"
        );
        assert_eq!(
            error(&exchange(&t, "0123456789abcdef0123").await),
            "bad_verification_code"
        );

        let code = sign_in(&t, "mona").await;
        t.sim.advance_clock(Duration::from_secs(601));
        assert_eq!(
            error(&exchange(&t, &code).await),
            "bad_verification_code",
            "expired"
        );
    })
    .await;
}

#[tokio::test]
async fn without_accept_json_the_answer_is_form_encoded() {
    bounded(async {
        let t = start().await;
        let code = sign_in(&t, "mona").await;
        let client_id = t.sim.oauth_app().client_id;
        let secret = t.sim.oauth_client_secret();
        let response = browser(&t)
            .post(t.url("/login/oauth/access_token"))
            .query(&[
                ("client_id", client_id.as_str()),
                ("client_secret", secret.expose()),
            ])
            .form(&[("code", code.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/x-www-form-urlencoded"));
        let text = response.text().await.unwrap();
        let fields: HashMap<String, String> = url::form_urlencoded::parse(text.as_bytes())
            .into_owned()
            .collect();
        assert!(fields["access_token"].starts_with("ghu_"));
        assert_eq!(fields["token_type"], "bearer");
        assert_eq!(fields["scope"], "");
        assert_eq!(fields["expires_in"], "28800");
    })
    .await;
}

#[tokio::test]
async fn pkce_and_refresh_follow_the_docs() {
    bounded(async {
        let t = start().await;
        let client_id = t.sim.oauth_app().client_id;
        let secret = t.sim.oauth_client_secret();
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let pkce_code = || async {
            let response = submit_sign_in(
                &t,
                &[
                    ("client_id", &client_id),
                    ("code_challenge", challenge),
                    ("code_challenge_method", "S256"),
                ],
                "mona",
                SIM_USER_PASSWORD,
            )
            .await;
            query_of(&location(&response))["code"].clone()
        };
        let code = pkce_code().await;
        assert_eq!(exchange(&t, &code).await["error"], "bad_verification_code");
        let code = pkce_code().await;
        let base = [
            ("client_id", client_id.as_str()),
            ("client_secret", secret.expose()),
        ];
        let mut params = base.to_vec();
        params.extend([("code", code.as_str()), ("code_verifier", verifier)]);
        let first = token_request(&t, &params).await;
        let access = first["access_token"].as_str().unwrap();

        let mut params = base.to_vec();
        let refresh = first["refresh_token"].as_str().unwrap();
        params.extend([("grant_type", "refresh_token"), ("refresh_token", refresh)]);
        let second = token_request(&t, &params).await;
        assert!(second["access_token"].as_str().unwrap().starts_with("ghu_"));
        assert_eq!(
            token_request(&t, &params).await["error"],
            "bad_refresh_token"
        );
        let (status, _, _) = t.get("/user", access).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "the old token is gone");
        let (status, _, _) = t
            .get("/user", second["access_token"].as_str().unwrap())
            .await;
        assert_eq!(status, StatusCode::OK);
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn user_routes_take_user_tokens_only_and_user_tokens_reach_nothing_else() {
    bounded(async {
        let t = start().await;
        let (acme, _) = quickstart_orgs(&t).await;
        let user = user_token(&t, "mona").await;
        let installation = t.token(acme.id).await;
        let forged = format!("ghu_{}", "x".repeat(40));
        for path in ["/user", "/user/installations"] {
            let (status, _, body) = t.get(path, &forged).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
            assert_eq!(body["message"], "Bad credentials");
            let (status, _, body) = t.call(reqwest::Method::GET, path, None, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
            let (status, _, body) = t.get(path, &installation).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
            assert_eq!(body["message"], "Resource not accessible by integration");
            let (status, _, _) = t.get(path, &t.jwt()).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        }
        for path in ["/app", "/app/installations", "/installation/repositories"] {
            let (status, _, _) = t.get(path, &user).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        }
        // Eight hours on, the user token has expired.
        t.sim.advance_clock(Duration::from_secs(28_800));
        let (status, _, _) = t.get("/user/installations", &user).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        t.check_contract();
    })
    .await;
}
