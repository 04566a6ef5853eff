//! TLS for the hub's listeners (D-67, D-68): the certificate and key files, read at start-up and
//! again on SIGHUP, behind one rustls configuration per use (MQTT, HTTPS).
//!
//! Reloading swaps the [`CertifiedKey`] a [`ReloadableCert`] hands to each new handshake, and
//! the client CA a [`ReloadableVerifier`] checks client certificates against; a connection
//! already established keeps the session it negotiated, so nothing is dropped. A reload that
//! fails (a missing file, a key that does not match, an unreadable CA) keeps all of them in use
//! and reports why. rustls' `ring` provider everywhere, as in the rest of the workspace.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

/// Why the TLS files could not be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A TLS listener was asked for without `--tls-cert` and `--tls-key`.
    #[error("{listener} needs --tls-cert and --tls-key")]
    NotConfigured {
        /// The flag that asked for TLS.
        listener: &'static str,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (not a `source`: the message already says it).
        error: std::io::Error,
    },
    /// The file is not valid PEM.
    #[error("{path} is not valid PEM: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint.
        message: String,
    },
    /// The file holds no `CERTIFICATE` section.
    #[error("{path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no private key section (PKCS#8, PKCS#1 or SEC1).
    #[error("{path} holds no PEM private key")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is not usable with the certificate (unsupported algorithm, or not its key).
    #[error("the key in {key} does not fit the certificate in {cert}: {error}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        error: rustls::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS set-up: {0}")]
    Setup(rustls::Error),
    /// The client CA file could not be made into a verifier.
    #[error("client CA certificates in {path} are not usable: {message}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// Where the hub's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// CA certificates (PEM) a client certificate must chain to on the MQTT TLS listeners;
    /// `None`: no client certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// The certificate new handshakes are given; replaced by [`HubTls::reload`].
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a complete certificate (it is replaced whole).
        Some(match self.current.read() {
            Ok(key) => key.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

/// The client CA new handshakes verify client certificates against (D-71); replaced by
/// [`HubTls::reload`].
#[derive(Debug)]
pub struct ReloadableVerifier {
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl ReloadableVerifier {
    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        match self.current.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, verifier: Arc<dyn ClientCertVerifier>) {
        match self.current.write() {
            Ok(mut v) => *v = verifier,
            Err(poisoned) => *poisoned.into_inner() = verifier,
        }
    }
}

impl ClientCertVerifier for ReloadableVerifier {
    fn offer_client_auth(&self) -> bool {
        self.get().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.get().client_auth_mandatory()
    }

    /// None: the hints would borrow from a verifier a reload may drop. They only help a client
    /// holding several certificates choose; a device has one and sends it anyway.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

/// A verifier requiring client certificates that chain to the CA certificates in `path`.
fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs(path)? {
        roots.add(ca).map_err(|e| TlsError::ClientCa {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::ClientCa {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// The TLS configurations of the hub's listeners, sharing one reloadable certificate and,
/// when client certificates are required, one reloadable client CA.
#[derive(Debug, Clone)]
pub struct HubTls {
    files: TlsFiles,
    cert: Arc<ReloadableCert>,
    client_ca: Option<Arc<ReloadableVerifier>>,
    /// For MQTT over TLS and WSS: asks for a client certificate when a client CA is set.
    pub mqtt: Arc<ServerConfig>,
    /// For HTTPS: no client certificate (the REST API authenticates with its token), ALPN
    /// `http/1.1`.
    pub https: Arc<ServerConfig>,
}

/// The largest TLS record the MQTT listeners (TLS and secure WebSocket) send, header included,
/// before encryption (D-91): a device decrypts a whole record at a time, so this bounds its
/// receive buffer (4,113 bytes with AES-GCM's tag instead of 16,645).
pub const MQTT_MAX_RECORD: usize = 4096;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

impl HubTls {
    /// Reads the files and builds the configurations.
    pub fn load(files: TlsFiles) -> Result<HubTls, TlsError> {
        let cert = Arc::new(ReloadableCert {
            current: RwLock::new(Arc::new(certified_key(&files)?)),
        });
        let provider = provider();
        let client_ca = match &files.client_ca {
            None => None,
            Some(path) => Some(Arc::new(ReloadableVerifier {
                current: RwLock::new(client_verifier(path, provider.clone())?),
            })),
        };
        let verifier: Arc<dyn ClientCertVerifier> = match &client_ca {
            None => WebPkiClientVerifier::no_client_auth(),
            Some(reloadable) => reloadable.clone(),
        };
        let versions = |provider: Arc<CryptoProvider>| {
            ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(TlsError::Setup)
        };
        let mut mqtt = versions(provider.clone())?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert.clone());
        // D-91: records small enough for a microcontroller's receive buffer.
        mqtt.max_fragment_size = Some(MQTT_MAX_RECORD);
        let mut https = versions(provider)?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HubTls {
            files,
            cert,
            client_ca,
            mqtt: Arc::new(mqtt),
            https: Arc::new(https),
        })
    }

    /// Reads the certificate, key and client CA files again; new handshakes get them,
    /// established connections keep theirs. On error everything in use stays: all files are
    /// read before anything is swapped.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = Arc::new(certified_key(&self.files)?);
        let client_ca = match (&self.files.client_ca, &self.client_ca) {
            (Some(path), Some(reloadable)) => {
                Some((reloadable, client_verifier(path, provider())?))
            }
            _ => None,
        };
        match self.cert.current.write() {
            Ok(mut current) => *current = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
        if let Some((reloadable, verifier)) = client_ca {
            reloadable.set(verifier);
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_owned(),
        error,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(&files.cert)?;
    let pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        other => TlsError::Pem {
            path: files.key.clone(),
            message: other.to_string(),
        },
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|error| TlsError::KeyMismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &Path, cert: &str, key: &str) -> TlsFiles {
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert).expect("write cert");
        std::fs::write(&k, key).expect("write key");
        TlsFiles {
            cert: c,
            key: k,
            client_ca: None,
        }
    }

    #[test]
    fn bad_files_are_typed_errors_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = identity("localhost");
        let (_, other_key) = identity("localhost");
        assert!(HubTls::load(files(dir.path(), &cert, &key)).is_ok());

        let missing = TlsFiles {
            cert: dir.path().join("absent.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
        };
        let e = HubTls::load(missing).expect_err("missing file");
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
        assert!(e.to_string().contains("absent.pem"), "{e}");

        let e = HubTls::load(files(dir.path(), "not pem", &key)).expect_err("no cert");
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = HubTls::load(files(dir.path(), &cert, "not pem")).expect_err("no key");
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
        let e = HubTls::load(files(
            dir.path(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n",
            &key,
        ))
        .expect_err("cut pem");
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        let e = HubTls::load(files(dir.path(), &cert, &other_key)).expect_err("other key");
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");

        let mut with_ca = files(dir.path(), &cert, &key);
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "nothing").expect("write ca");
        with_ca.client_ca = Some(ca);
        let e = HubTls::load(with_ca).expect_err("empty ca");
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
    }

    #[test]
    fn a_failed_reload_keeps_the_certificate_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = identity("localhost");
        let tls = HubTls::load(files(dir.path(), &cert, &key)).expect("load");
        let before = tls.cert.current.read().expect("lock").cert.clone();
        std::fs::write(dir.path().join("key.pem"), "garbage").expect("break key");
        assert!(matches!(tls.reload(), Err(TlsError::NoKey { .. })));
        assert_eq!(tls.cert.current.read().expect("lock").cert, before);

        let (cert2, key2) = identity("localhost");
        files(dir.path(), &cert2, &key2);
        tls.reload().expect("reload");
        assert_ne!(tls.cert.current.read().expect("lock").cert, before);
    }
}
