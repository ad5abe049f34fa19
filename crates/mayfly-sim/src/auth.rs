//! Who is calling: App JWTs (RS256 against the App's public key, GitHub's claim rules) and
//! installation access tokens (looked up by digest, expiring, scoped to an installation and
//! optionally to some repositories). Failures carry only GitHub's fixed messages.

use std::collections::HashSet;

use axum::http::{header, HeaderMap};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::state::{digest, TokenGrant, World};

/// Longest App JWT lifetime GitHub accepts (`exp - iat`).
const MAX_JWT_LIFETIME_S: i64 = 600;
/// Clock drift tolerated on `iat` and `exp`.
const SKEW_S: i64 = 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum AuthError {
    #[error("Requires authentication")]
    Missing,
    #[error("A JSON web token could not be decoded")]
    Undecodable,
    #[error("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires")]
    Expired,
    #[error("'Expiration time' claim ('exp') is too far in the future")]
    TooLong,
    #[error("'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued")]
    IssuedAt,
    #[error("Integration not found")]
    Issuer,
    #[error("Bad credentials")]
    BadCredentials,
}

/// The credential of the `Authorization` header (`Bearer x` or legacy `token x`).
pub(crate) fn credential(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
        Some(rest.trim()).filter(|c| !c.is_empty())
    } else {
        None
    }
}

fn looks_like_jwt(credential: &str) -> bool {
    credential.split('.').count() == 3
}

/// Checks an App JWT: RS256 signature, `iss` = App id (number or string) or client id,
/// `exp` in the future and at most ten minutes after `iat`, `iat` not in the future.
pub(crate) fn verify_app_jwt(
    headers: &HeaderMap,
    key: &DecodingKey,
    app_id: u64,
    client_id: &str,
    now: DateTime<Utc>,
) -> Result<(), AuthError> {
    let jwt = credential(headers).ok_or(AuthError::Missing)?;
    if !looks_like_jwt(jwt) {
        return Err(AuthError::Undecodable);
    }
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| AuthError::Undecodable)?;
    if header.alg != Algorithm::RS256 {
        return Err(AuthError::Undecodable);
    }
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims = HashSet::new();
    let claims = jsonwebtoken::decode::<Value>(jwt, key, &validation)
        .map_err(|_| AuthError::Undecodable)?
        .claims;
    let now = now.timestamp();
    let iat = claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or(AuthError::IssuedAt)?;
    if iat > now + SKEW_S {
        return Err(AuthError::IssuedAt);
    }
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(AuthError::Expired)?;
    if exp <= now {
        return Err(AuthError::Expired);
    }
    if exp - iat > MAX_JWT_LIFETIME_S || exp > now + MAX_JWT_LIFETIME_S + SKEW_S {
        return Err(AuthError::TooLong);
    }
    let iss_ok = match claims.get("iss") {
        Some(Value::Number(n)) => n.as_u64() == Some(app_id),
        Some(Value::String(s)) => s == &app_id.to_string() || s == client_id,
        _ => false,
    };
    if !iss_ok {
        return Err(AuthError::Issuer);
    }
    Ok(())
}

/// Resolves an installation access token to what it grants. JWTs, unknown and expired tokens
/// are all "Bad credentials", as on GitHub.
pub(crate) fn installation_token(
    headers: &HeaderMap,
    world: &World,
    now: DateTime<Utc>,
) -> Result<TokenGrant, AuthError> {
    let token = credential(headers).ok_or(AuthError::Missing)?;
    let grant = world.token_grant(token).ok_or(AuthError::BadCredentials)?;
    if grant.expires_at <= now {
        return Err(AuthError::BadCredentials);
    }
    Ok(grant.clone())
}

/// Which rate-limit bucket a request counts against; never the credential itself.
pub(crate) fn rate_key(headers: &HeaderMap) -> String {
    match credential(headers) {
        Some(c) if looks_like_jwt(c) => "app".into(),
        Some(c) => format!("token:{}", hex::encode(digest(c))),
        None => "anonymous".into(),
    }
}
