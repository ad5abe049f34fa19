//! A development CA for the quickstart, kept in its data directory: a CA certificate and a
//! server certificate for `localhost`/`127.0.0.1` signed by it. Keys are written mode 600.
//! Production servers use certificates from files instead.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::atomic_file::Existing;

/// Paths of the CA and server certificate files.
#[derive(Debug, Clone)]
pub struct LocalCa {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl LocalCa {
    /// Loads the CA from `dir`, creating it (and the server certificate) on first use.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let ca = Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };
        // A marker for the certificate's current set of names: an older CA is replaced.
        let current = dir.join("v2");
        if current.exists()
            && ca.ca_cert.exists()
            && ca.server_cert.exists()
            && ca.server_key.exists()
        {
            return Ok(ca);
        }
        let _ = std::fs::remove_dir_all(dir);
        crate::cmd::atomic_file::create_private_dir_all(dir)?;

        let ca_key = KeyPair::generate().context("could not generate the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::new()).context("CA parameters")?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "mayfly quickstart CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("could not sign the CA certificate")?;

        let server_key = KeyPair::generate().context("could not generate the server key")?;
        // 203.0.113.1 is the host's side of the internet stand-in, where the simulated GitHub
        // delivers webhooks from.
        let names = ["localhost", "127.0.0.1", "203.0.113.1"]
            .map(str::to_owned)
            .to_vec();
        let mut params = CertificateParams::new(names).context("server certificate parameters")?;
        params
            .distinguished_name
            .push(DnType::CommonName, "mayfly quickstart server");
        let server_cert = params
            .signed_by(&server_key, &ca_cert, &ca_key)
            .context("could not sign the server certificate")?;

        super::atomic_file::write_private(&ca.server_key, server_key.serialize_pem().as_bytes())?;
        super::atomic_file::write(
            &ca.server_cert,
            server_cert.pem().as_bytes(),
            0o644,
            Existing::Refuse,
        )?;
        super::atomic_file::write(
            &ca.ca_cert,
            ca_cert.pem().as_bytes(),
            0o644,
            Existing::Refuse,
        )?;
        // The marker goes last: a run interrupted before it starts over with a new CA.
        super::atomic_file::write(&current, b"", 0o644, Existing::Refuse)?;
        // The CA key is not kept: the quickstart needs one server certificate, made here.
        Ok(ca)
    }
}
