//! A development CA and a server certificate for the embedded hub of a `--tls` run, made per
//! run with rcgen (as `iothub dev-certs` does) and written into the run's temporary directory.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The files of a run's certificates.
#[derive(Debug)]
pub struct DevCerts {
    /// The CA the things trust.
    pub ca: PathBuf,
    /// The hub's certificate (for 127.0.0.1 and localhost).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// Makes a CA and a server certificate it signs, and writes them into `dir`.
pub fn write(dir: &Path) -> anyhow::Result<DevCerts> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "iothub-sim run CA");
    let ca_key = KeyPair::generate().context("CA key")?;
    let ca = ca_params.self_signed(&ca_key).context("CA certificate")?;

    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .context("server params")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "iothub-sim embedded hub");
    let key = KeyPair::generate().context("server key")?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .context("server certificate")?;

    let files = DevCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    for (path, text) in [
        (&files.ca, ca.pem()),
        (&files.cert, cert.pem()),
        (&files.key, key.serialize_pem()),
    ] {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(files)
}
