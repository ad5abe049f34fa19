//! API bearer tokens: `mfy_` and 43 characters of base64url (32 random bytes). Only the
//! SHA-256 of a token is stored (tokens are random, so a plain hash cannot be reversed or
//! guessed); the token itself is shown once, at creation. Creating and revoking are audited.

use chrono::Utc;
use mayfly_store::{NewAudit, Store, StoreError, TokenRow};
use rand::RngCore;
use zeroize::Zeroizing;

const PREFIX: &str = "mfy_";

/// What a token may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything, the audit log included.
    Admin,
    /// Every tenant's jobs, VMs, usage and installations.
    Read,
    /// One installation's jobs, VMs, usage and installation row.
    Tenant(i64),
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Read => "read",
            Self::Tenant(_) => "tenant",
        }
    }

    pub fn installation(self) -> Option<i64> {
        match self {
            Self::Tenant(i) => Some(i),
            Self::Admin | Self::Read => None,
        }
    }

    pub(crate) fn from_row(row: &TokenRow) -> Option<Self> {
        match (row.scope.as_str(), row.installation_id) {
            ("admin", None) => Some(Self::Admin),
            ("read", None) => Some(Self::Read),
            ("tenant", Some(i)) => Some(Self::Tenant(i)),
            _ => None,
        }
    }
}

/// A freshly made token. Debug does not print it; it is zeroized on drop.
pub struct NewToken {
    pub row: TokenRow,
    secret: Zeroizing<String>,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

impl NewToken {
    /// The token, to show once.
    pub fn expose(&self) -> &str {
        &self.secret
    }
}

/// Makes, stores and audits a token.
pub async fn create(
    store: &dyn Store,
    actor: &str,
    name: &str,
    scope: Scope,
) -> Result<NewToken, StoreError> {
    use base64::Engine;
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(bytes.as_mut());
    let secret = Zeroizing::new(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref())
    ));
    let row = TokenRow {
        id: format!("tok_{}", hex::encode(rand::random::<[u8; 6]>())),
        name: name.to_owned(),
        scope: scope.name().to_owned(),
        installation_id: scope.installation(),
        token_hash: crate::agent_pki::sha256_hex(secret.as_bytes()),
        created_at: Utc::now(),
        revoked_at: None,
    };
    // Audit first: a token whose creation could not be recorded must not exist.
    store
        .append_audit(&NewAudit {
            at: Utc::now(),
            actor: actor.to_owned(),
            source: None,
            action: "token create".into(),
            target: Some(format!(
                "{} ({}{})",
                row.id,
                row.scope,
                row.installation_id
                    .map(|i| format!(", installation {i}"))
                    .unwrap_or_default()
            )),
            outcome: "ok".into(),
        })
        .await?;
    store.insert_token(&row).await?;
    Ok(NewToken { row, secret })
}

/// Revokes and audits; `false` when there was no such live token.
pub async fn revoke(store: &dyn Store, actor: &str, id: &str) -> Result<bool, StoreError> {
    audited_revoke(
        store,
        actor,
        "token revoke",
        id,
        "no such live token",
        || store.revoke_token(id, Utc::now()),
    )
    .await
}

/// Revokes something (`revoke` says whether there was a live one to revoke), audited before
/// (`requested`: a revocation that cannot be recorded does not happen) and after (its outcome).
pub(crate) async fn audited_revoke<F, Fut>(
    store: &dyn Store,
    actor: &str,
    action: &str,
    target: &str,
    not_found: &str,
    revoke: F,
) -> Result<bool, StoreError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<bool, StoreError>>,
{
    let event = |outcome: &str| NewAudit {
        at: Utc::now(),
        actor: actor.to_owned(),
        source: None,
        action: action.to_owned(),
        target: Some(target.to_owned()),
        outcome: outcome.to_owned(),
    };
    store.append_audit(&event("requested")).await?;
    let revoked = revoke().await?;
    store
        .append_audit(&event(if revoked { "ok" } else { not_found }))
        .await?;
    Ok(revoked)
}

/// The live token `presented` names, if any: well-formed, known, not revoked.
pub async fn lookup(store: &dyn Store, presented: &str) -> Result<Option<TokenRow>, StoreError> {
    if !presented.starts_with(PREFIX) || presented.len() != PREFIX.len() + 43 {
        return Ok(None);
    }
    let row = store
        .token_by_hash(&crate::agent_pki::sha256_hex(presented.as_bytes()))
        .await?;
    Ok(row.filter(|r| r.revoked_at.is_none()))
}
