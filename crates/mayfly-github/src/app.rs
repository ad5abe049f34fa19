//! GitHub App authentication: RS256 JWTs signed with the App's private key. `iat` is set 60 s in
//! the past against clock drift and `exp` 9 minutes ahead, so the token's whole life stays within
//! GitHub's 10-minute limit.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::secret::{AppJwt, AppPrivateKeyPem};

/// Why an App JWT could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AppAuthError {
    #[error("the GitHub App private key is not an RSA private key in PEM form")]
    BadKey(#[source] jsonwebtoken::errors::Error),
    #[error("signing the App JWT failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// The App's identity: its id (the JWT issuer) and private key.
#[derive(Debug, Clone)]
pub struct AppCredentials {
    app_id: u64,
    key: AppPrivateKeyPem,
}

#[derive(Serialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: String,
}

/// How far back `iat` is set, against clock drift (GitHub's recommendation).
pub const JWT_BACKDATE_SECS: i64 = 60;
/// How far ahead `exp` is set: `exp - iat` is then exactly GitHub's 10-minute maximum.
pub const JWT_LIFETIME_SECS: i64 = 540;

impl AppCredentials {
    /// Checks that the key is a usable RSA private key before accepting it.
    pub fn new(app_id: u64, key: AppPrivateKeyPem) -> Result<Self, AppAuthError> {
        EncodingKey::from_rsa_pem(key.expose().as_bytes()).map_err(AppAuthError::BadKey)?;
        Ok(Self { app_id, key })
    }

    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// A JWT valid from `now - 60 s` to `now + 9 min`.
    pub fn jwt(&self, now: DateTime<Utc>) -> Result<AppJwt, AppAuthError> {
        let claims = Claims {
            iat: now.timestamp() - JWT_BACKDATE_SECS,
            exp: now.timestamp() + JWT_LIFETIME_SECS,
            iss: self.app_id.to_string(),
        };
        let key = EncodingKey::from_rsa_pem(self.key.expose().as_bytes())
            .map_err(AppAuthError::BadKey)?;
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
            .map(AppJwt::new)
            .map_err(AppAuthError::Sign)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding};

    #[derive(serde::Deserialize)]
    struct Decoded {
        iat: i64,
        exp: i64,
        iss: String,
    }

    #[test]
    fn jwt_claims_follow_github_rules() {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        let private = key.to_pkcs1_pem(LineEnding::LF).unwrap();
        let public = key.to_public_key().to_pkcs1_pem(LineEnding::LF).unwrap();
        let app = AppCredentials::new(42, AppPrivateKeyPem::new(private.to_string())).unwrap();
        let now = Utc::now();
        let jwt = app.jwt(now).unwrap();

        let header = jsonwebtoken::decode_header(jwt.expose()).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.set_issuer(&["42"]);
        let decoded = jsonwebtoken::decode::<Decoded>(
            jwt.expose(),
            &DecodingKey::from_rsa_pem(public.as_bytes()).unwrap(),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(decoded.iss, "42");
        assert_eq!(decoded.iat, now.timestamp() - 60);
        assert!(decoded.exp - decoded.iat <= 600);
        assert!(decoded.exp > now.timestamp());
    }

    #[test]
    fn refuses_a_key_that_is_not_rsa_pem() {
        let err = AppCredentials::new(1, AppPrivateKeyPem::new("not a key")).unwrap_err();
        assert!(matches!(err, AppAuthError::BadKey(_)));
        assert!(!err.to_string().contains("not a key"));
    }
}
