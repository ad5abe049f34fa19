//! HTTPS for the simulator: a rustls server config (ring provider, TLS 1.2 and 1.3 only) from
//! PEM files. Nothing else in the crate touches certificates or private keys on disk.

use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}")]
    Certs {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCerts { path: String },
    #[error("cannot read a private key from {path}")]
    Key {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate and key do not form a usable TLS configuration")]
    Config(#[source] rustls::Error),
}

pub(crate) fn rustls_config(files: &TlsFiles) -> Result<RustlsConfig, TlsError> {
    let cert_path = files.cert_pem.display().to_string();
    let certs = CertificateDer::pem_file_iter(&files.cert_pem)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certs {
            path: cert_path.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCerts { path: cert_path });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_pem).map_err(|source| TlsError::Key {
        path: files.key_pem.display().to_string(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}
