//! Agents' certificates. The server keeps an *agent CA* whose private key is a sealed value in
//! the store (so every server on one database can enrol agents, and the key is never in the
//! database in the clear). An operator makes a one-time, expiring *bootstrap token* for a host
//! (`mayfly agent-token create`); the token carries the SHA-256 of the server's CA certificate,
//! which the agent pins. The agent sends a CSR with the token's secret to
//! `POST /api/v1/agents/enrol`; the server signs it (client-auth only, named after the host) and
//! records the certificate's hash. From then on every agent connection is mTLS and the server
//! refuses certificates it did not issue, revoked agents, and agents claiming another name.

use base64::Engine;
use chrono::{DateTime, Utc};
use mayfly_store::{BootstrapRow, BootstrapUse, NewAudit, Sealer, Store, StoreError};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const SEALED_KIND: &str = "agent-ca";
const TOKEN_PREFIX: &str = "mfya_";

/// Why the agent PKI could not do something.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] mayfly_store::SealError),
    #[error("the agent CA could not be made or read: {0}")]
    Ca(String),
    #[error("the certificate signing request is not valid: {0}")]
    Csr(String),
}

/// SHA-256, hex: how certificates, token secrets and API tokens are named in the store.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of the first certificate in a PEM text, hex.
pub fn pem_sha256(pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(sha256_hex(&der))
}

/// The agent CA, and the server CA agents pin.
pub struct AgentPki {
    ca_cert_pem: String,
    ca_key: KeyPair,
    issuer: rcgen::Certificate,
    /// The CA that issued the server's own TLS certificate (what agents pin).
    pub server_ca_pem: String,
    pub server_ca_sha256: String,
}

impl std::fmt::Debug for AgentPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentPki")
            .field("server_ca_sha256", &self.server_ca_sha256)
            .finish_non_exhaustive()
    }
}

impl AgentPki {
    /// Loads the agent CA from the store's sealed values, making it on first use.
    pub async fn load_or_create(
        store: &dyn Store,
        sealer: &Sealer,
        server_ca_pem: String,
    ) -> Result<Self, PkiError> {
        let server_ca_sha256 = pem_sha256(&server_ca_pem)
            .ok_or_else(|| PkiError::Ca("the server CA certificate is not PEM".into()))?;
        let key = sealer.open(store, SEALED_KIND, "key").await?;
        let cert = sealer.open(store, SEALED_KIND, "cert").await?;
        let (key_pem, cert_pem) = match (key, cert) {
            (Some(key), Some(cert)) => (
                Zeroizing::new(
                    String::from_utf8(key.to_vec()).map_err(|e| PkiError::Ca(e.to_string()))?,
                ),
                String::from_utf8(cert.to_vec()).map_err(|e| PkiError::Ca(e.to_string()))?,
            ),
            _ => {
                let key = KeyPair::generate().map_err(|e| PkiError::Ca(e.to_string()))?;
                let mut params =
                    CertificateParams::new(Vec::new()).map_err(|e| PkiError::Ca(e.to_string()))?;
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params
                    .distinguished_name
                    .push(DnType::CommonName, "mayfly agent CA");
                params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
                params.not_before = rcgen::date_time_ymd(2025, 1, 1);
                params.not_after = rcgen::date_time_ymd(2045, 1, 1);
                let cert = params
                    .self_signed(&key)
                    .map_err(|e| PkiError::Ca(e.to_string()))?;
                let key_pem = Zeroizing::new(key.serialize_pem());
                sealer
                    .seal(store, SEALED_KIND, "key", key_pem.as_bytes())
                    .await?;
                sealer
                    .seal(store, SEALED_KIND, "cert", cert.pem().as_bytes())
                    .await?;
                tracing::info!("made the agent CA (its key is sealed in the store)");
                (key_pem, cert.pem())
            }
        };
        let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Ca(e.to_string()))?;
        let issuer = CertificateParams::from_ca_cert_pem(&cert_pem)
            .and_then(|p| p.self_signed(&ca_key))
            .map_err(|e| PkiError::Ca(e.to_string()))?;
        Ok(Self {
            ca_cert_pem: cert_pem,
            ca_key,
            issuer,
            server_ca_pem,
            server_ca_sha256,
        })
    }

    /// The agent CA certificate (PEM): what the agent listener trusts for client certificates.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// Signs an agent's CSR as a client certificate for `agent_name`, valid for a year. Returns
    /// the certificate (PEM) and its SHA-256.
    pub fn sign(&self, csr_pem: &str, agent_name: &str) -> Result<(String, String), PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        let mut params =
            CertificateParams::new(Vec::new()).map_err(|e| PkiError::Csr(e.to_string()))?;
        params
            .distinguished_name
            .push(DnType::CommonName, agent_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(365);
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer, &self.ca_key)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        let sha = sha256_hex(cert.der());
        Ok((cert.pem(), sha))
    }
}

/// What a bootstrap token carries (base64url JSON after `mfya_`).
#[derive(Debug, Serialize, Deserialize)]
pub struct BootstrapClaims {
    /// The token's id.
    pub id: String,
    /// The one-time secret (only its hash is stored).
    pub secret: String,
    /// SHA-256 (hex) of the server CA certificate the agent must pin.
    pub ca_sha256: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
    /// The name the agent will have.
    pub agent: String,
}

impl BootstrapClaims {
    /// Decodes a token; `None` for anything that is not one.
    pub fn decode(token: &str) -> Option<Self> {
        let body = token.trim().strip_prefix(TOKEN_PREFIX)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .ok()?;
        serde_json::from_slice(&json).ok()
    }

    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn secret_hash(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }
}

/// Makes a one-time bootstrap token for `agent`, valid for `ttl`, and audits it. Returns the
/// token text (shown once) and its claims.
pub async fn create_bootstrap(
    store: &dyn Store,
    actor: &str,
    agent: &str,
    server_ca_sha256: &str,
    ttl: chrono::Duration,
) -> Result<(Zeroizing<String>, BootstrapClaims), StoreError> {
    let mut secret = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut secret);
    let now = Utc::now();
    let claims = BootstrapClaims {
        id: format!("boot_{}", hex::encode(rand::random::<[u8; 6]>())),
        secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        ca_sha256: server_ca_sha256.to_owned(),
        expires_at: now + ttl,
        agent: agent.to_owned(),
    };
    store
        .append_audit(&NewAudit {
            at: now,
            actor: actor.to_owned(),
            source: None,
            action: "agent bootstrap create".into(),
            target: Some(format!("{} for agent {agent}", claims.id)),
            outcome: "ok".into(),
        })
        .await?;
    store
        .insert_bootstrap(&BootstrapRow {
            id: claims.id.clone(),
            agent_name: agent.to_owned(),
            secret_hash: claims.secret_hash(),
            created_at: now,
            expires_at: claims.expires_at,
        })
        .await?;
    Ok((Zeroizing::new(claims.encode()), claims))
}

/// Revokes an agent (its certificate is refused from then on, its open session ended), audited
/// before and after. `false` when there is no such live agent.
pub async fn revoke(store: &dyn Store, actor: &str, agent: &str) -> Result<bool, StoreError> {
    crate::tokens::audited_revoke(
        store,
        actor,
        "agent revoke",
        agent,
        "no such live agent",
        || store.revoke_agent(agent, Utc::now()),
    )
    .await
}

/// What `POST /api/v1/agents/enrol` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EnrolRequest {
    /// The bootstrap token (`mfya_…`).
    pub token: String,
    /// A PEM certificate signing request for the agent's own key.
    pub csr_pem: String,
}

/// What it answers.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrolResponse {
    /// The agent's name (its certificate's common name).
    pub agent: String,
    /// The agent's client certificate (PEM).
    pub cert_pem: String,
    /// The port of the agent listener on this server's host.
    pub agent_port: u16,
}

/// Outcome of an enrolment attempt, for the audit log.
pub(crate) async fn enrol(
    store: &dyn Store,
    pki: &AgentPki,
    request: &EnrolRequest,
) -> Result<(String, String), EnrolRefusal> {
    let claims = BootstrapClaims::decode(&request.token).ok_or(EnrolRefusal::Token("malformed"))?;
    let used = store
        .consume_bootstrap(&claims.id, &claims.secret_hash(), Utc::now())
        .await
        .map_err(EnrolRefusal::Store)?;
    let agent = match used {
        BootstrapUse::Accepted { agent_name } => agent_name,
        BootstrapUse::Unknown => return Err(EnrolRefusal::Token("unknown")),
        BootstrapUse::AlreadyUsed => return Err(EnrolRefusal::Token("already used")),
        BootstrapUse::Expired => return Err(EnrolRefusal::Token("expired")),
    };
    let (cert_pem, sha) = pki
        .sign(&request.csr_pem, &agent)
        .map_err(|e| EnrolRefusal::Csr(e.to_string()))?;
    store
        .enrol_agent(&agent, &sha, Utc::now())
        .await
        .map_err(EnrolRefusal::Store)?;
    Ok((agent, cert_pem))
}

#[derive(Debug)]
pub(crate) enum EnrolRefusal {
    Token(&'static str),
    Csr(String),
    Store(StoreError),
}
