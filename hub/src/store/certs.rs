//! Client certificates registered on things (D-82): which SHA-256 fingerprint authenticates
//! which thing.
//!
//! Both backends implement [`CertificateStore`] (`sqlite/certs.rs`, `postgres/certs.rs`) with
//! the statements below, plain SQL with `$N` placeholders that both accept. A fingerprint
//! belongs to at most one thing (primary key); deleting the thing deletes its certificates.

use serde::Serialize;

use super::StoreError;

/// A certificate registered on a thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRecord {
    /// SHA-256 of the certificate's DER encoding, 64 lowercase hex digits.
    pub fingerprint: String,
    /// The thing it authenticates.
    pub thing_id: String,
    /// The certificate as registered (PEM).
    pub pem: String,
    /// Its subject's common name, if it has one (informational: identity is the fingerprint).
    pub common_name: Option<String>,
    /// End of its validity, ms since the Unix epoch.
    pub not_after: u64,
    /// Registration time, ms.
    pub created_at: u64,
}

/// Storage of [`CertificateRecord`]s.
#[async_trait::async_trait]
pub trait CertificateStore: Send + Sync {
    /// Registers a certificate. [`StoreError::NotFound`] if the thing does not exist,
    /// [`StoreError::AlreadyExists`] if the fingerprint is registered (on any thing).
    async fn add_certificate(&self, c: &CertificateRecord) -> Result<(), StoreError>;

    /// The thing's certificates, oldest first (empty for an unknown thing).
    async fn certificates(&self, thing: &str) -> Result<Vec<CertificateRecord>, StoreError>;

    /// Revokes (deletes) one. [`StoreError::NotFound`] if it is not registered on `thing`.
    async fn delete_certificate(&self, thing: &str, fingerprint: &str) -> Result<(), StoreError>;

    /// The thing a fingerprint is registered on and whether that thing is enabled (CONNECT).
    async fn certificate_thing(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(String, bool)>, StoreError>;
}

/// Columns of [`CertificateRecord`], in field order.
pub(crate) const CERT_COLS: &str = "fingerprint, thing_id, pem, common_name, not_after, created_at";

/// The statements both backends run.
pub(crate) mod sql {
    /// Whether the thing exists.
    pub const THING: &str = "SELECT 1 FROM things WHERE thing_id = $1";
    /// Registers; no row when the fingerprint is taken.
    pub const INSERT: &str = "INSERT INTO thing_certificates \
        (fingerprint, thing_id, pem, common_name, not_after, created_at) \
        VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (fingerprint) DO NOTHING";
    /// Revokes.
    pub const DELETE: &str =
        "DELETE FROM thing_certificates WHERE thing_id = $1 AND fingerprint = $2";
    /// CONNECT's look-up.
    pub const THING_OF: &str = "SELECT c.thing_id, t.enabled FROM thing_certificates c \
        JOIN things t ON t.thing_id = c.thing_id WHERE c.fingerprint = $1";
}

/// A fingerprint as stored and shown: 64 lowercase hex digits.
pub fn fingerprint_hex(sha256: &[u8; 32]) -> String {
    use std::fmt::Write;
    sha256.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
