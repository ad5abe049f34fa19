//! TLS for the server's listener: rustls with the ring provider, TLS 1.2 and 1.3 only, the
//! certificate chain and key read from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsFiles;

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not read the TLS certificate chain from {0}: is it a PEM file?")]
    Cert(PathBuf),
    #[error("could not read the TLS private key from {0}: is it a PEM file?")]
    Key(PathBuf),
    #[error("the TLS certificate and key do not go together, or are not supported")]
    Config(#[source] rustls::Error),
}

/// Builds the listener's TLS configuration from PEM files.
pub async fn server_config(files: &TlsFiles) -> Result<RustlsConfig, TlsError> {
    Ok(RustlsConfig::from_config(rustls_config(files)?))
}

/// Re-reads the PEM files into a running listener's configuration (SIGHUP). A pair that does
/// not load leaves the old one serving.
pub fn reload(live: &RustlsConfig, files: &TlsFiles) -> Result<(), TlsError> {
    live.reload_from_config(rustls_config(files)?);
    Ok(())
}

fn rustls_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|_| TlsError::Key(files.key_file.clone()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    let mut config = config;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's preference (ring's suites, strongest first) wins over the client's.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|_| TlsError::Cert(path.to_owned()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Cert(path.to_owned()))?;
    if certs.is_empty() {
        return Err(TlsError::Cert(path.to_owned()));
    }
    Ok(certs)
}
