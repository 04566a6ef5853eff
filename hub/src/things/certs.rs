//! Client certificates registered on things (D-82): register, list, revoke.
//!
//! The hub keeps a certificate's SHA-256 fingerprint (of its DER encoding) with the thing; a
//! TLS connection presenting that certificate authenticates as that thing without a secret.
//! Registration checks only that the PEM holds one X.509 certificate: whether it chains to
//! `--tls-client-ca` and is within its validity period is checked by every TLS handshake
//! (`tls.rs`), so a certificate registered before its CA was configured, or one that expired,
//! simply never gets a connection through.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use super::{Things, ThingsError};
use crate::clock::now_ms;
use crate::store::certs::{CertificateRecord, fingerprint_hex};

/// Largest PEM accepted, in bytes (a device certificate is 1 to 2 KiB).
pub const MAX_CERTIFICATE_PEM: usize = 16 * 1024;

impl Things {
    /// Registers the certificate in `pem` on thing `id` (`POST /things/{id}/certificates`).
    /// [`ThingsError::InvalidCertificate`] unless `pem` holds exactly one X.509 certificate;
    /// [`ThingsError::AlreadyExists`] if its fingerprint is registered (on any thing).
    pub async fn add_certificate(
        &self,
        id: &str,
        pem: &str,
    ) -> Result<CertificateRecord, ThingsError> {
        let store = self
            .inner
            .store
            .certificates()
            .ok_or(ThingsError::NoCertificates)?;
        self.get(id).await?;
        let record = parse(id, pem)?;
        store.add_certificate(&record).await?;
        Ok(record)
    }

    /// The certificates registered on thing `id`, oldest first.
    pub async fn certificates(&self, id: &str) -> Result<Vec<CertificateRecord>, ThingsError> {
        let store = self
            .inner
            .store
            .certificates()
            .ok_or(ThingsError::NoCertificates)?;
        self.get(id).await?;
        Ok(store.certificates(id).await?)
    }

    /// Revokes a certificate of thing `id` (`DELETE /things/{id}/certificates/{fingerprint}`,
    /// hex, either case): the next CONNECT with it is refused, and the thing's live connection
    /// is closed now (S-1.3's path for disable and delete), whichever credential it used.
    pub async fn revoke_certificate(&self, id: &str, fingerprint: &str) -> Result<(), ThingsError> {
        let store = self
            .inner
            .store
            .certificates()
            .ok_or(ThingsError::NoCertificates)?;
        let fingerprint = fingerprint.to_ascii_lowercase();
        if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ThingsError::NotFound);
        }
        store.delete_certificate(id, &fingerprint).await?;
        self.inner.bus.disconnect(id).await;
        Ok(())
    }
}

/// The record of `pem` for thing `id`.
fn parse(id: &str, pem: &str) -> Result<CertificateRecord, ThingsError> {
    let bad = |m: &str| ThingsError::InvalidCertificate(m.to_owned());
    if pem.len() > MAX_CERTIFICATE_PEM {
        return Err(bad("larger than 16 KiB"));
    }
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes());
    let der = match certs.next() {
        Some(Ok(der)) => der,
        Some(Err(e)) => return Err(ThingsError::InvalidCertificate(e.to_string())),
        None => return Err(bad("no PEM CERTIFICATE section")),
    };
    if certs.next().is_some() {
        return Err(bad(
            "more than one certificate: register the device's own only",
        ));
    }
    let (rest, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| ThingsError::InvalidCertificate(format!("not X.509: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate"));
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .unwrap_or(0)
        .saturating_mul(1000);
    let sha256: [u8; 32] = Sha256::digest(der.as_ref()).into();
    Ok(CertificateRecord {
        fingerprint: fingerprint_hex(&sha256),
        thing_id: id.to_owned(),
        pem: pem.trim().to_owned(),
        common_name,
        not_after,
        created_at: now_ms(),
    })
}
