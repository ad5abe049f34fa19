//! `encoded_jit_config` as CONTRACTS.md §6 describes it: standard base64 of a JSON object mapping
//! `.runner`, `.credentials` and `.credentials_rsaparams` to base64 of each file's JSON. Used by
//! the simulator to encode and by the runner client to decode; the private key never leaves it
//! except as the encoded string handed to the caller of generate-jitconfig.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum JitConfigError {
    #[error("encoded_jit_config is not standard base64")]
    Base64,
    #[error("encoded_jit_config does not hold the JSON object GitHub's runner expects")]
    Json,
    #[error("encoded_jit_config lacks the file {0}")]
    MissingFile(&'static str),
    #[error("the RSA parameters do not form a valid private key")]
    RsaParams,
    #[error("the RSA key lacks precomputed CRT values")]
    Precompute,
}

/// The decoded contents of an `encoded_jit_config`. Debug never prints the private key.
pub struct JitConfig {
    pub agent_id: u64,
    pub agent_name: String,
    pub pool_id: u64,
    pub pool_name: String,
    pub server_url: String,
    pub github_url: String,
    pub work_folder: String,
    pub client_id: String,
    pub authorization_url: String,
    /// The runner's credential: proves it is this runner to `authorization_url`.
    pub private_key: RsaPrivateKey,
}

impl fmt::Debug for JitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitConfig")
            .field("agent_id", &self.agent_id)
            .field("agent_name", &self.agent_name)
            .field("pool_id", &self.pool_id)
            .field("server_url", &self.server_url)
            .field("client_id", &self.client_id)
            .field("private_key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RunnerFile {
    agent_id: String,
    agent_name: String,
    disable_update: String,
    ephemeral: String,
    pool_id: String,
    pool_name: String,
    server_url: String,
    work_folder: String,
    #[serde(rename = "GitHubUrl")]
    github_url: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsFile {
    scheme: String,
    data: CredentialsData,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsData {
    client_id: String,
    authorization_url: String,
}

/// .NET `RSAParameters`, as the runner stores them: base64 of big-endian bytes.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RsaParamsFile {
    d: String,
    dp: String,
    dq: String,
    exponent: String,
    inverse_q: String,
    modulus: String,
    p: String,
    q: String,
}

const RUNNER: &str = ".runner";
const CREDENTIALS: &str = ".credentials";
const RSAPARAMS: &str = ".credentials_rsaparams";

impl JitConfig {
    /// Encodes the three runner files as GitHub does.
    pub fn encode(&self) -> Result<String, JitConfigError> {
        let runner = RunnerFile {
            agent_id: self.agent_id.to_string(),
            agent_name: self.agent_name.clone(),
            disable_update: "False".into(),
            ephemeral: "True".into(),
            pool_id: self.pool_id.to_string(),
            pool_name: self.pool_name.clone(),
            server_url: self.server_url.clone(),
            work_folder: self.work_folder.clone(),
            github_url: self.github_url.clone(),
        };
        let credentials = CredentialsFile {
            scheme: "OAuth".into(),
            data: CredentialsData {
                client_id: self.client_id.clone(),
                authorization_url: self.authorization_url.clone(),
            },
        };
        let params = rsa_params(&self.private_key)?;
        let mut files = BTreeMap::new();
        files.insert(RUNNER, file_b64(&runner)?);
        files.insert(CREDENTIALS, file_b64(&credentials)?);
        files.insert(RSAPARAMS, file_b64(&params)?);
        let outer = serde_json::to_vec(&files).map_err(|_| JitConfigError::Json)?;
        Ok(STANDARD.encode(outer))
    }

    /// Decodes an `encoded_jit_config` and rebuilds (and validates) the runner's RSA key.
    pub fn decode(encoded: &str) -> Result<Self, JitConfigError> {
        let outer = STANDARD
            .decode(encoded.trim())
            .map_err(|_| JitConfigError::Base64)?;
        let files: BTreeMap<String, Value> =
            serde_json::from_slice(&outer).map_err(|_| JitConfigError::Json)?;
        let runner: RunnerFile = read_file(&files, RUNNER)?;
        let credentials: CredentialsFile = read_file(&files, CREDENTIALS)?;
        let params: RsaParamsFile = read_file(&files, RSAPARAMS)?;
        let n = big(&params.modulus)?;
        let e = big(&params.exponent)?;
        let d = big(&params.d)?;
        let primes = vec![big(&params.p)?, big(&params.q)?];
        let private_key = RsaPrivateKey::from_components(n, e, d, primes)
            .map_err(|_| JitConfigError::RsaParams)?;
        private_key
            .validate()
            .map_err(|_| JitConfigError::RsaParams)?;
        Ok(Self {
            agent_id: runner.agent_id.parse().map_err(|_| JitConfigError::Json)?,
            agent_name: runner.agent_name,
            pool_id: runner.pool_id.parse().map_err(|_| JitConfigError::Json)?,
            pool_name: runner.pool_name,
            server_url: runner.server_url,
            github_url: runner.github_url,
            work_folder: runner.work_folder,
            client_id: credentials.data.client_id,
            authorization_url: credentials.data.authorization_url,
            private_key,
        })
    }
}

fn file_b64<T: Serialize>(file: &T) -> Result<String, JitConfigError> {
    let bytes = serde_json::to_vec(file).map_err(|_| JitConfigError::Json)?;
    Ok(STANDARD.encode(bytes))
}

fn read_file<T: for<'de> Deserialize<'de>>(
    files: &BTreeMap<String, Value>,
    name: &'static str,
) -> Result<T, JitConfigError> {
    let b64 = files
        .get(name)
        .and_then(Value::as_str)
        .ok_or(JitConfigError::MissingFile(name))?;
    let bytes = STANDARD.decode(b64).map_err(|_| JitConfigError::Base64)?;
    serde_json::from_slice(&bytes).map_err(|_| JitConfigError::Json)
}

fn big(b64: &str) -> Result<BigUint, JitConfigError> {
    let bytes = STANDARD.decode(b64).map_err(|_| JitConfigError::Base64)?;
    Ok(BigUint::from_bytes_be(&bytes))
}

fn rsa_params(key: &RsaPrivateKey) -> Result<RsaParamsFile, JitConfigError> {
    let [p, q] = key.primes() else {
        return Err(JitConfigError::RsaParams);
    };
    let one = BigUint::from(1u8);
    let two = BigUint::from(2u8);
    let dp = key.d() % (p - &one);
    let dq = key.d() % (q - &one);
    // q^-1 mod p by Fermat (p is prime): positive by construction, unlike a signed inverse.
    let inverse_q = q.modpow(&(p - &two), p);
    let b64 = |n: &BigUint| STANDARD.encode(n.to_bytes_be());
    Ok(RsaParamsFile {
        d: b64(key.d()),
        dp: b64(&dp),
        dq: b64(&dq),
        exponent: b64(key.e()),
        inverse_q: b64(&inverse_q),
        modulus: b64(key.n()),
        p: b64(p),
        q: b64(q),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::keys::generate_rsa_2048;

    #[test]
    fn encode_then_decode_round_trips_and_keeps_the_key() {
        let key = generate_rsa_2048().unwrap();
        let config = JitConfig {
            agent_id: 23,
            agent_name: "vm-1".into(),
            pool_id: 1,
            pool_name: "Default".into(),
            server_url: "http://127.0.0.1:1/".into(),
            github_url: "http://127.0.0.1:1/o/r".into(),
            work_folder: "_work".into(),
            client_id: "c1".into(),
            authorization_url: "http://127.0.0.1:1/_sim/runner/token".into(),
            private_key: key.clone(),
        };
        let encoded = config.encode().unwrap();
        let decoded = JitConfig::decode(&encoded).unwrap();
        assert_eq!(decoded.private_key, key);
        assert_eq!(decoded.agent_id, 23);
        assert_eq!(decoded.client_id, "c1");
        assert!(!format!("{decoded:?}").contains(&STANDARD.encode(key.d().to_bytes_be())));
        assert!(matches!(
            JitConfig::decode("%%%"),
            Err(JitConfigError::Base64)
        ));
    }
}
