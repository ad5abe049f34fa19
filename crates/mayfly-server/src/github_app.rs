//! The GitHub App's credentials kept in the store, sealed (`mayfly github app create` puts them
//! there from GitHub's manifest conversion), so that every server on one database uses the same
//! App without copying key files around. They are one sealed value, written in one statement:
//! an App is stored whole or not at all. Files named in the configuration still win over it.

use mayfly_github::webhook::WebhookSecret;
use mayfly_github::{AppPrivateKeyPem, OAuthClientSecret};
use mayfly_store::{SealError, Sealer, Store};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The sealed row's kind and name.
pub const SEALED_KIND: &str = "github-app";
const SEALED_NAME: &str = "current";

/// Why the stored App could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoredAppError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the stored GitHub App does not read back ({0}); create it again with `mayfly github app create --replace`")]
    Corrupt(String),
}

/// A GitHub App as GitHub's manifest conversion describes it: what mayfly needs to act as it.
/// Debug prints no secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredApp {
    pub app_id: u64,
    pub slug: String,
    /// The App's page on GitHub (`https://github.com/apps/<slug>`).
    pub html_url: String,
    pub client_id: String,
    client_secret: String,
    webhook_secret: String,
    /// PKCS#1 PEM.
    pem: String,
}

impl std::fmt::Debug for StoredApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredApp")
            .field("app_id", &self.app_id)
            .field("slug", &self.slug)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Drop for StoredApp {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.client_secret.zeroize();
        self.webhook_secret.zeroize();
        self.pem.zeroize();
    }
}

impl StoredApp {
    pub fn new(
        app_id: u64,
        slug: String,
        html_url: String,
        client_id: String,
        client_secret: OAuthClientSecret,
        webhook_secret: String,
        pem: AppPrivateKeyPem,
    ) -> Self {
        Self {
            app_id,
            slug,
            html_url,
            client_id,
            client_secret: client_secret.expose().to_owned(),
            webhook_secret,
            pem: pem.expose().to_owned(),
        }
    }

    pub fn private_key(&self) -> AppPrivateKeyPem {
        AppPrivateKeyPem::new(self.pem.clone())
    }

    pub fn webhook_secret(&self) -> WebhookSecret {
        WebhookSecret::new(self.webhook_secret.as_bytes().to_vec())
    }

    pub fn client_secret(&self) -> OAuthClientSecret {
        OAuthClientSecret::new(self.client_secret.clone())
    }

    /// The stored App, if there is one.
    pub async fn load(sealer: &Sealer, store: &dyn Store) -> Result<Option<Self>, StoredAppError> {
        let Some(bytes) = sealer.open(store, SEALED_KIND, SEALED_NAME).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoredAppError::Corrupt(e.to_string()))
    }

    /// Seals the App into the store, replacing any stored before.
    pub async fn save(&self, sealer: &Sealer, store: &dyn Store) -> Result<(), StoredAppError> {
        let bytes = Zeroizing::new(
            serde_json::to_vec(self).map_err(|e| StoredAppError::Corrupt(e.to_string()))?,
        );
        sealer.seal(store, SEALED_KIND, SEALED_NAME, &bytes).await?;
        Ok(())
    }
}
