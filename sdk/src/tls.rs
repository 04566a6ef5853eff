//! TLS to the hub (feature `tls`): rustls client configurations built from PEM text, with
//! typed errors, and the classification of handshake failures.
//!
//! Configurations are built with an explicit crypto provider (the process default if the
//! application installed one, else rustls' `ring`), so building one never panics when several
//! rustls providers are compiled in.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Why TLS could not be set up, or why the TLS handshake with the hub failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The PEM text is malformed (bad base64, a section without its end line).
    #[error("invalid PEM: {0}")]
    Pem(#[source] pem::Error),
    /// The PEM text holds no `CERTIFICATE` section.
    #[error("no certificate in the PEM text")]
    NoCertificate,
    /// A CA certificate cannot be used as a trust anchor (it is not valid DER X.509).
    #[error("CA certificate not usable as a trust anchor: {0}")]
    BadCaCertificate(#[source] rustls::Error),
    /// The key PEM text holds no private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key in the PEM text")]
    NoPrivateKey,
    /// The client certificate and key were refused: unsupported key type, or a key that does
    /// not belong to the certificate.
    #[error("client certificate or key refused: {0}")]
    ClientAuth(#[source] rustls::Error),
    /// A client certificate was given before any CA ([`crate::ThingOptions::tls_ca_pem`]
    /// comes first).
    #[error("tls_client_cert_pem needs tls_ca_pem first")]
    NoCa,
    /// The TLS handshake with the hub failed for a reason that retrying does not fix: the
    /// hub's certificate is not trusted or does not name the host, or the hub refused the
    /// client certificate. Returned by [`crate::Thing::connect`]; later reconnects retry.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] rustls::Error),
}

impl From<TlsError> for crate::Error {
    fn from(e: TlsError) -> Self {
        crate::Error::Tls(e)
    }
}

/// The crypto provider: the process default when installed, else `ring`.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// The certificates of `pem_text`, at least one.
fn certs(pem_text: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::Pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(certs)
}

/// A root store with exactly the certificates of `ca_pem` (no system roots).
pub(crate) fn roots(ca_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem)? {
        roots.add(cert).map_err(TlsError::BadCaCertificate)?;
    }
    Ok(roots)
}

/// A client configuration trusting `roots`, with an optional client certificate chain and
/// key (PEM text).
pub(crate) fn client_config(
    roots: RootCertStore,
    client_auth: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::ClientAuth)?
        .with_root_certificates(roots);
    let config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => {
            let chain = certs(chain_pem)?;
            let key = match PrivateKeyDer::from_pem_slice(key_pem) {
                Ok(k) => k,
                Err(pem::Error::NoItemsFound) => return Err(TlsError::NoPrivateKey),
                Err(e) => return Err(TlsError::Pem(e)),
            };
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsError::ClientAuth)?
        }
    };
    Ok(Arc::new(config))
}

/// The rustls error inside a connection error from rumqttc, if the TLS handshake failed for a
/// reason that retrying does not fix (see [`TlsError::Handshake`]).
pub(crate) fn permanent_handshake_error(
    e: &(dyn std::error::Error + 'static),
) -> Option<rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let found = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(r) = found {
            return is_permanent(r).then(|| r.clone());
        }
        cur = err.source();
    }
    None
}

fn is_permanent(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType
            | rustls::Error::PeerIncompatible(_)
            | rustls::Error::NoApplicationProtocol
            | rustls::Error::AlertReceived(_)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn bad_pem_is_a_typed_error() {
        assert!(matches!(roots(b""), Err(TlsError::NoCertificate)));
        assert!(matches!(
            roots(b"not pem at all"),
            Err(TlsError::NoCertificate)
        ));
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(
            matches!(roots(broken), Err(TlsError::Pem(_))),
            "{:?}",
            roots(broken)
        );
        let unterminated = b"-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(matches!(roots(unterminated), Err(TlsError::Pem(_))));
        // Valid base64 that is not a certificate.
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(roots(garbage), Err(TlsError::BadCaCertificate(_))));
    }

    #[test]
    fn handshake_errors_are_found_inside_io_errors() {
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, cert.clone());
        assert_eq!(permanent_handshake_error(&io), Some(cert));
        let transient =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(permanent_handshake_error(&transient), None);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(permanent_handshake_error(&reset), None);
    }
}
