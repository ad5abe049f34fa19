//! mayfly's "Sign in with GitHub" client (`mayfly_github::OAuthApp`) against the simulator over
//! HTTPS with the simulator's own CA, as the dashboard will use it: the authorize URL it makes is
//! opened by a browser, the code exchanged, the user and every page of installations read; every
//! REST answer is validated against GitHub's contract.

use mayfly_core::InstallationId;
use mayfly_github::{OAuthApp, OAuthAppConfig, OAuthError, UserAccessToken, UserToken};
use mayfly_sim::{AccountType, NewUser, TlsFiles};
use url::Url;

use super::oauth::{follow_authorize_url, quickstart_orgs, CALLBACK};
use super::support::{bounded, TestSim};

async fn https_sim() -> TestSim {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let files = TlsFiles {
        cert_pem: cert_path,
        key_pem: key_path,
    };
    let mut t = TestSim::start_with(move |c| {
        c.tls = Some(files);
        c.oauth_callback_urls = vec![Url::parse(CALLBACK).unwrap()];
    })
    .await;
    t.ca_pem = Some(cert.cert.pem());
    t
}

fn client(t: &TestSim) -> OAuthApp {
    let mut config = OAuthAppConfig::new(
        t.sim.oauth_app().client_id,
        t.sim.oauth_client_secret(),
        t.sim.base_url(),
        t.sim.base_url(),
    );
    config.extra_root_pem = t.ca_pem.as_ref().map(|p| p.clone().into_bytes());
    OAuthApp::new(config).unwrap()
}

#[tokio::test]
async fn the_client_signs_users_in_and_lists_every_page_of_their_installations() {
    bounded(async {
        let t = https_sim().await;
        let (acme, globex) = quickstart_orgs(&t).await;
        // More installations than fit on one of the client's 100-item pages.
        let mut orgs = Vec::new();
        for n in 0..101 {
            orgs.push(
                t.install(&format!("org-{n:03}"), AccountType::Organization)
                    .id,
            );
        }
        t.sim
            .create_user(NewUser {
                login: "busy".into(),
                orgs: (0..101).map(|n| format!("org-{n:03}")).collect(),
            })
            .unwrap();
        let app = client(&t);
        let redirect = Url::parse(CALLBACK).unwrap();

        let code = follow_authorize_url(&t, app.authorize_url(&redirect, "s-1"), "octocat").await;
        let token = app.exchange_code(&code, &redirect).await.unwrap();
        assert!(token.access_token.expose().starts_with("ghu_"));
        assert!(token.refresh_token.is_some());
        assert_eq!(token.expires_in.map(|d| d.as_secs()), Some(28_800));
        let user = app.user(&token).await.unwrap();
        assert_eq!(user.login, "octocat");
        let installations = app.user_installations(&token).await.unwrap();
        let ids: Vec<InstallationId> = installations.iter().map(|i| i.id).collect();
        assert_eq!(
            ids,
            vec![
                InstallationId(acme.id as i64),
                InstallationId(globex.id as i64)
            ]
        );
        assert_eq!(installations[0].account_login, "acme-robotics");

        let code = follow_authorize_url(&t, app.authorize_url(&redirect, "s-2"), "busy").await;
        let token = app.exchange_code(&code, &redirect).await.unwrap();
        let installations = app.user_installations(&token).await.unwrap();
        let ids: Vec<u64> = installations.iter().map(|i| i.id.0 as u64).collect();
        assert_eq!(ids, orgs, "both pages, in order");

        let code = follow_authorize_url(&t, app.authorize_url(&redirect, "s-3"), "nemo").await;
        let token = app.exchange_code(&code, &redirect).await.unwrap();
        assert!(app.user_installations(&token).await.unwrap().is_empty());
        t.check_contract();
    })
    .await;
}

#[tokio::test]
async fn the_client_maps_refusals_to_typed_errors() {
    bounded(async {
        let t = https_sim().await;
        let app = client(&t);
        let redirect = Url::parse(CALLBACK).unwrap();
        let code = follow_authorize_url(&t, app.authorize_url(&redirect, "s"), "mona").await;
        let elsewhere = Url::parse("http://127.0.0.1:9/elsewhere").unwrap();
        assert!(matches!(
            app.exchange_code(&code, &elsewhere).await,
            Err(OAuthError::RedirectUriMismatch)
        ));
        assert!(matches!(
            app.exchange_code(&code, &redirect).await,
            Err(OAuthError::BadVerificationCode)
        ));

        let mut config = OAuthAppConfig::new(
            t.sim.oauth_app().client_id,
            mayfly_sim::random_client_secret(),
            t.sim.base_url(),
            t.sim.base_url(),
        );
        config.extra_root_pem = t.ca_pem.as_ref().map(|p| p.clone().into_bytes());
        let wrong_secret = OAuthApp::new(config).unwrap();
        let code = follow_authorize_url(&t, app.authorize_url(&redirect, "s"), "mona").await;
        let refused = wrong_secret
            .exchange_code(&code, &redirect)
            .await
            .unwrap_err();
        assert!(matches!(refused, OAuthError::IncorrectClientCredentials));
        assert!(!refused.to_string().contains(&code));

        let forged = UserToken {
            access_token: UserAccessToken::new("ghu_forged000000000000000000000000000000"),
            refresh_token: None,
            expires_in: None,
            refresh_token_expires_in: None,
        };
        assert!(matches!(
            app.user(&forged).await,
            Err(OAuthError::Unauthorized { .. })
        ));
        assert!(matches!(
            app.user_installations(&forged).await,
            Err(OAuthError::Unauthorized { .. })
        ));

        // Without the simulator's CA the client refuses the connection.
        let untrusting = OAuthApp::new(OAuthAppConfig::new(
            t.sim.oauth_app().client_id,
            t.sim.oauth_client_secret(),
            t.sim.base_url(),
            t.sim.base_url(),
        ))
        .unwrap();
        assert!(matches!(
            untrusting.exchange_code(&code, &redirect).await,
            Err(OAuthError::Transport { .. })
        ));
        t.check_contract();
    })
    .await;
}
