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
        // 203.0.113.1 is the host's side of the internet stand-in, where the simulated GitHub
        // delivers webhooks from.
        let names = ["localhost", "127.0.0.1", "203.0.113.1"].map(str::to_owned);
        let ca = Self::issue(dir, &names, "mayfly quickstart")?;
        // The marker goes last: a run interrupted before it starts over with a new CA.
        super::atomic_file::write(&current, b"", 0o644, Existing::Refuse)?;
        Ok(ca)
    }

    /// Makes a CA and a server certificate for `names` (DNS names or IP addresses) in `dir`
    /// (made mode 700); the server key is mode 600. Refuses to replace any of the files. The
    /// CA key is not kept: the CA signs this one certificate; agents pin it when they enrol.
    pub fn issue(dir: &Path, names: &[String], common_name: &str) -> anyhow::Result<Self> {
        let ca = Self {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };
        crate::cmd::atomic_file::create_private_dir_all(dir)?;
        let ca_key = KeyPair::generate().context("could not generate the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::new()).context("CA parameters")?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{common_name} CA"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("could not sign the CA certificate")?;

        let server_key = KeyPair::generate().context("could not generate the server key")?;
        let mut params =
            CertificateParams::new(names.to_vec()).context("server certificate parameters")?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{common_name} server"));
        let server_cert = params
            .signed_by(&server_key, &ca_cert, &ca_key)
            .context("could not sign the server certificate")?;

        super::atomic_file::write(
            &ca.server_key,
            server_key.serialize_pem().as_bytes(),
            0o600,
            Existing::Refuse,
        )?;
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
        Ok(ca)
    }
}
