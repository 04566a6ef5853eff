//! A thing's client certificates (D-82): `/api/v1/things/{id}/certificates...`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, envelope, ok};
use super::schema::{Envelope, NullEnvelope};
use crate::store::certs::CertificateRecord;

/// `POST /things/{id}/certificates` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterCertificateRequest {
    /// The device's certificate (PEM, one `CERTIFICATE` section, at most 16 KiB). It must
    /// chain to the hub's `--tls-client-ca` to be of any use.
    pub certificate_pem: String,
}

/// A certificate registered on a thing.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    /// SHA-256 of the certificate's DER encoding, 64 lowercase hex digits: its name in the
    /// revoke route.
    pub fingerprint: String,
    /// The thing it authenticates.
    pub thing_id: String,
    /// Its subject's common name, if any (informational: the fingerprint is the identity).
    pub common_name: Option<String>,
    /// End of its validity, ms since the Unix epoch.
    pub not_after: u64,
    /// When it was registered, ms since the Unix epoch.
    pub created_at: u64,
    /// The certificate (PEM).
    pub certificate_pem: String,
}

impl From<CertificateRecord> for CertificateView {
    fn from(c: CertificateRecord) -> Self {
        CertificateView {
            fingerprint: c.fingerprint,
            thing_id: c.thing_id,
            common_name: c.common_name,
            not_after: c.not_after,
            created_at: c.created_at,
            certificate_pem: c.pem,
        }
    }
}

/// Registers a client certificate on a thing: a TLS connection presenting it authenticates as
/// this thing, without a secret (D-82).
#[utoipa::path(post, path = "/api/v1/things/{id}/certificates", operation_id = "registerThingCertificate", tag = "things",
    params(("id" = String, Path, description = "thingId")),
    request_body = RegisterCertificateRequest,
    responses(
        (status = 201, description = "Registered", body = Envelope<CertificateView>),
        (status = 400, description = "Not one PEM X.509 certificate", body = NullEnvelope),
        (status = 404, description = "No such thing", body = NullEnvelope),
        (status = 409, description = "The certificate is registered already (on this or another thing)", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn register(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RegisterCertificateRequest>,
) -> Result<Response, ApiError> {
    let record = state
        .things
        .add_certificate(&id, &req.certificate_pem)
        .await?;
    Ok(envelope(
        StatusCode::CREATED,
        "created",
        CertificateView::from(record),
    ))
}

/// Lists the certificates registered on a thing, oldest first.
#[utoipa::path(get, path = "/api/v1/things/{id}/certificates", operation_id = "listThingCertificates", tag = "things",
    params(("id" = String, Path, description = "thingId")),
    responses(
        (status = 200, description = "All of them", body = Envelope<Vec<CertificateView>>),
        (status = 404, description = "No such thing", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let certs = state.things.certificates(&id).await?;
    Ok(ok(certs
        .into_iter()
        .map(CertificateView::from)
        .collect::<Vec<_>>()))
}

/// Revokes a certificate of a thing: the next CONNECT with it is refused and the thing's live
/// connection is closed.
#[utoipa::path(delete, path = "/api/v1/things/{id}/certificates/{fingerprint}", operation_id = "revokeThingCertificate", tag = "things",
    params(
        ("id" = String, Path, description = "thingId"),
        ("fingerprint" = String, Path, description = "SHA-256 fingerprint, 64 hex digits"),
    ),
    responses(
        (status = 200, description = "Revoked", body = NullEnvelope),
        (status = 404, description = "Not registered on this thing", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    ApiPath((id, fingerprint)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    state.things.revoke_certificate(&id, &fingerprint).await?;
    Ok(ok(()))
}
