//! `POST /app-manifests/{code}/conversions` (apps/create-from-manifest, CONTRACTS.md §9.3): a
//! manifest's one-time code becomes an App with a new id, RSA key, webhook secret and OAuth
//! client secret, answered once (201) with all of them. No credential is needed. An unknown,
//! used or expired code is 404. The new App replaces the simulator's (see `crate::manifest`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use mayfly_github::webhook::WebhookSecret;
use mayfly_github::OAuthClientSecret;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::LineEnding;
use rsa::RsaPublicKey;
use serde_json::json;

use super::{AppState, RestError};
use crate::manifest::{slug, PendingApp};
use crate::payloads::{self, AppInfo};
use crate::server::{lock, AppKey, Registration};

pub(super) fn routes() -> Router<std::sync::Arc<crate::server::Shared>> {
    Router::new().route("/app-manifests/{code}/conversions", post(convert))
}

async fn convert(State(shared): AppState, Path(code): Path<String>) -> Result<Response, RestError> {
    let now = shared.clock.now();
    let PendingApp {
        manifest, owner, ..
    } = lock(&shared.manifests)
        .take(&code, now)
        .ok_or(RestError::NotFound)?;
    let private = tokio::task::spawn_blocking(crate::keys::generate_rsa_2048)
        .await
        .map_err(|_| RestError::Internal)?
        .map_err(|_| RestError::Internal)?;
    let pem = private
        .to_pkcs1_pem(LineEnding::LF)
        .map_err(|_| RestError::Internal)?;
    let key = crate::keys::decoding_key(&RsaPublicKey::from(&private))
        .map_err(|_| RestError::Internal)?;
    let webhook_secret = hex::encode(rand::random::<[u8; 20]>());
    let client_secret = hex::encode(rand::random::<[u8; 20]>());
    let name = manifest.name.clone().unwrap_or_else(|| "mayfly".into());
    // App ids above the configured App's, as GitHub's grow.
    let id = shared.app().id + 1 + u64::from(rand::random::<u16>());
    let app = AppInfo {
        id,
        slug: slug(&name),
        name,
        client_id: format!("Iv23li{}", hex::encode(rand::random::<[u8; 7]>())),
        description: manifest.description.clone(),
        external_url: Some(manifest.url.clone()),
        owner,
        permissions: manifest.permissions.clone(),
        events: manifest.events.clone(),
        created_at: now,
    };
    let mut body = payloads::integration(&shared.links, &app, 0);
    if let Some(map) = body.as_object_mut() {
        map.remove("installations_count");
    }
    body["client_id"] = json!(app.client_id);
    body["client_secret"] = json!(client_secret);
    body["webhook_secret"] = json!(webhook_secret);
    body["pem"] = json!(pem.as_str());
    shared.webhooks.set_app(
        manifest.hook_url.clone(),
        WebhookSecret::new(webhook_secret.into_bytes()),
        app.id,
    );
    *lock(&shared.oauth.callback_urls) = manifest.callback_urls.clone();
    shared.replace_registration(Registration {
        app,
        key: AppKey(key),
        client_secret: OAuthClientSecret::new(client_secret),
    });
    tracing::info!(
        app_id = id,
        "an App was created from a manifest and replaces the simulated App"
    );
    Ok((StatusCode::CREATED, Json(body)).into_response())
}
