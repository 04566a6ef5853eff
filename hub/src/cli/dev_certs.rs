//! `iothub dev-certs`: a development CA, a server certificate for the given names and one
//! client certificate per thing (D-71), so that TLS works in one command. Not for production:
//! the CA key sits next to the certificates.
//!
//! A CA already in `--out` (`ca.pem` and `ca.key`) is reused, so client certificates for more
//! things can be added later and still chain to the CA the hub and devices already trust; the
//! server and client certificates are written afresh.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The start of the CA's common name; the rest is derived from the CA's key, so that a reused
/// CA key issues certificates whose issuer matches the `ca.pem` written the first time, and
/// two development CAs never share a name (a client trusting one would otherwise report the
/// other's certificates as badly signed instead of from an unknown issuer).
const CA_NAME: &str = "iothub development CA";

/// Arguments of `iothub dev-certs`.
#[derive(Debug, clap::Args)]
pub struct DevCertsArgs {
    /// Directory to write into (created if missing): ca.pem, ca.key, server.pem, server.key,
    /// and thing-ID.pem / thing-ID.key per --thing.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A DNS name or IP address the server certificate is valid for; repeat for several.
    #[arg(long = "name", value_name = "NAME", default_values = ["localhost", "127.0.0.1"])]
    pub names: Vec<String>,
    /// A thing id to make a client certificate for (its common name); repeat for several.
    #[arg(long = "thing", value_name = "ID")]
    pub things: Vec<String>,
}

/// Why `dev-certs` failed.
#[derive(Debug, thiserror::Error)]
pub enum DevCertsError {
    /// A thing id that S-1.1 does not allow.
    #[error("{0:?} is not a valid thing id (S-1.1: 1 to 64 of A-Z a-z 0-9 _ -)")]
    ThingId(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen refused (e.g. a name that is neither a DNS name nor an IP address).
    #[error("{what}: {source}")]
    Cert {
        /// What was being made.
        what: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> DevCertsError {
    let what = what.into();
    move |source| DevCertsError::Cert { what, source }
}

/// Writes the files and returns their paths, in the order written.
pub fn run(args: &DevCertsArgs) -> Result<Vec<PathBuf>, DevCertsError> {
    if let Some(bad) = args
        .things
        .iter()
        .find(|t| !iothub_spec::ids::is_valid_thing_id(t))
    {
        return Err(DevCertsError::ThingId(bad.clone()));
    }
    std::fs::create_dir_all(&args.out).map_err(|source| DevCertsError::Io {
        path: args.out.clone(),
        source,
    })?;
    let mut written = Vec::new();
    let (ca_pem, ca_key) = (args.out.join("ca.pem"), args.out.join("ca.key"));
    let ca_key_pair = if ca_pem.exists() && ca_key.exists() {
        KeyPair::from_pem(&read(&ca_key)?).map_err(cert_err(format!("{}", ca_key.display())))?
    } else {
        let key = KeyPair::generate().map_err(cert_err("CA key"))?;
        let cert = ca_params(&key)
            .self_signed(&key)
            .map_err(cert_err("CA certificate"))?;
        write(&ca_pem, &cert.pem(), false, &mut written)?;
        write(&ca_key, &key.serialize_pem(), true, &mut written)?;
        key
    };
    // The issuer as rcgen needs it: same name and key as ca.pem, so what it signs chains to it.
    let ca = ca_params(&ca_key_pair)
        .self_signed(&ca_key_pair)
        .map_err(cert_err("CA certificate"))?;

    let mut server =
        CertificateParams::new(args.names.clone()).map_err(cert_err("server names"))?;
    server.distinguished_name.push(
        DnType::CommonName,
        args.names.first().map_or("iothub", |n| n.as_str()),
    );
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(cert_err("server key"))?;
    let cert = server
        .signed_by(&key, &ca, &ca_key_pair)
        .map_err(cert_err("server certificate"))?;
    write(
        &args.out.join("server.pem"),
        &cert.pem(),
        false,
        &mut written,
    )?;
    write(
        &args.out.join("server.key"),
        &key.serialize_pem(),
        true,
        &mut written,
    )?;

    for thing in &args.things {
        let mut client = CertificateParams::default();
        client
            .distinguished_name
            .push(DnType::CommonName, thing.as_str());
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(cert_err(format!("key of {thing}")))?;
        let cert = client
            .signed_by(&key, &ca, &ca_key_pair)
            .map_err(cert_err(format!("certificate of {thing}")))?;
        let base = format!("thing-{thing}");
        write(
            &args.out.join(format!("{base}.pem")),
            &cert.pem(),
            false,
            &mut written,
        )?;
        write(
            &args.out.join(format!("{base}.key")),
            &key.serialize_pem(),
            true,
            &mut written,
        )?;
    }
    Ok(written)
}

fn ca_params(key: &KeyPair) -> CertificateParams {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(key.public_key_der());
    let tag: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{CA_NAME} {tag}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn read(path: &Path) -> Result<String, DevCertsError> {
    std::fs::read_to_string(path).map_err(|source| DevCertsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `text` to `path`; a private key is readable by its owner only.
fn write(
    path: &Path,
    text: &str,
    private: bool,
    written: &mut Vec<PathBuf>,
) -> Result<(), DevCertsError> {
    let io = |source| DevCertsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io)?;
    // `mode` applies to a new file only; an older key file is made private too.
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    written.push(path.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_thing_id_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("certs");
        let args = DevCertsArgs {
            out: out.clone(),
            names: vec!["localhost".into()],
            things: vec!["ok".into(), "not/ok".into()],
        };
        assert!(matches!(run(&args), Err(DevCertsError::ThingId(t)) if t == "not/ok"));
        assert!(!out.exists());
    }

    #[test]
    fn the_ca_is_reused_and_keys_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = |things: &[&str]| DevCertsArgs {
            out: dir.path().to_owned(),
            names: vec!["localhost".into(), "127.0.0.1".into()],
            things: things.iter().map(|t| (*t).to_owned()).collect(),
        };
        let first = run(&args(&["t1"])).expect("first run");
        assert_eq!(first.len(), 6, "{first:?}");
        let ca = std::fs::read(dir.path().join("ca.pem")).expect("ca");
        let second = run(&args(&["t2"])).expect("second run");
        assert_eq!(second.len(), 4, "{second:?}: the CA is not rewritten");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).expect("ca"), ca);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for key in ["ca.key", "server.key", "thing-t2.key"] {
                let mode = std::fs::metadata(dir.path().join(key))
                    .expect("key file")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o077, 0, "{key} is readable by others: {mode:o}");
            }
        }
    }
}
