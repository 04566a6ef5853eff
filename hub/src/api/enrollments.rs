//! Enrollments for provisioning over MQTT (S-10, D-46): `/api/v1/enrollments...`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, envelope, ok};
use super::schema::{Envelope, ListParams, NullEnvelope, Page};
use super::things::DEFAULT_PAGE_SIZE;
use crate::provision::Provisioner;
use crate::provision::enrollments::{CreateEnrollment, EnrollError};
use crate::store::enroll::{EnrollmentPatch, EnrollmentRecord, IdRule, ThingTemplate};

impl From<EnrollError> for ApiError {
    fn from(e: EnrollError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        ApiError::new(status, e.to_string())
    }
}

fn service(state: &AppState) -> Result<&Provisioner, ApiError> {
    state.provisioner.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "provisioning is not served by this hub",
        )
    })
}

/// What provisioned things start as.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBody {
    /// Tags of each provisioned thing (`serial`, `enrollment`, `attributes` are added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<Map<String, Value>>,
    /// Initial desired state of the `default` shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub desired: Option<Map<String, Value>>,
    /// Whether provisioned things may connect (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// How a provisioned thing's id is chosen (D-44).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IdRuleBody {
    /// `generated`, `prefix` or `pattern`.
    pub kind: String,
    /// The prefix, or the pattern (`*` = any run of id characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `POST /enrollments` body.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateEnrollmentRequest {
    /// The enrollment's id (thing id rule, S-1.1).
    pub enrollment_id: String,
    /// What provisioned things start as.
    #[serde(default)]
    pub template: Option<TemplateBody>,
    /// How their ids are chosen (default `generated`).
    #[serde(default)]
    pub id_rule: Option<IdRuleBody>,
    /// Most new things it may provision (default: no limit).
    #[serde(default)]
    pub max_uses: Option<u64>,
    /// Expiry, ms since the epoch (default: never).
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// Whether it provisions (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The claim secret (1 to 256 bytes); generated when absent.
    #[serde(default)]
    pub claim_secret: Option<String>,
}

/// `PATCH /enrollments/{id}` body: absent fields stay; `null` removes a limit.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PatchEnrollmentRequest {
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// New maximum of uses, `null` for none.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub max_uses: Option<Option<u64>>,
    /// New expiry (ms), `null` for never.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub expires_at: Option<Option<u64>>,
}

/// A field that is present (`Some`), possibly `null` (`Some(None)`); absent is the default.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

/// An enrollment; `claimSecret` only in the answer to its creation.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentView {
    /// Its id.
    pub enrollment_id: String,
    /// What provisioned things start as.
    pub template: TemplateBody,
    /// How their ids are chosen.
    pub id_rule: IdRuleBody,
    /// Most new things (`null`: no limit).
    pub max_uses: Option<u64>,
    /// New things provisioned so far.
    pub uses: u64,
    /// Expiry, ms (`null`: never).
    pub expires_at: Option<u64>,
    /// Whether it provisions.
    pub enabled: bool,
    /// Creation time, ms.
    pub created_at: u64,
    /// The claim secret, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_secret: Option<String>,
}

impl From<EnrollmentRecord> for EnrollmentView {
    fn from(e: EnrollmentRecord) -> Self {
        let (kind, value) = match e.id_rule {
            IdRule::Generated => ("generated", None),
            IdRule::Prefix(p) => ("prefix", Some(p)),
            IdRule::Pattern(p) => ("pattern", Some(p)),
        };
        EnrollmentView {
            enrollment_id: e.enrollment_id,
            template: TemplateBody {
                tags: Some(e.template.tags),
                desired: e.template.desired,
                enabled: Some(e.template.enabled),
            },
            id_rule: IdRuleBody {
                kind: kind.into(),
                value,
            },
            max_uses: e.max_uses,
            uses: e.uses,
            expires_at: e.expires_at,
            enabled: e.enabled,
            created_at: e.created_at,
            claim_secret: None,
        }
    }
}

fn id_rule(body: Option<IdRuleBody>) -> Result<IdRule, ApiError> {
    let Some(body) = body else {
        return Ok(IdRule::Generated);
    };
    match (body.kind.as_str(), body.value) {
        ("generated", None) => Ok(IdRule::Generated),
        ("prefix", value) => Ok(IdRule::Prefix(value.unwrap_or_default())),
        ("pattern", Some(value)) => Ok(IdRule::Pattern(value)),
        _ => Err(ApiError::bad_request(
            "invalid idRule: kind generated (no value), prefix or pattern (with value)",
        )),
    }
}

/// Creates an enrollment; the answer carries its claim secret, this one time.
#[utoipa::path(post, path = "/api/v1/enrollments", operation_id = "createEnrollment", tag = "provisioning",
    request_body = CreateEnrollmentRequest,
    responses(
        (status = 201, description = "Created, with `claimSecret`", body = Envelope<EnrollmentView>),
        (status = 400, description = "Invalid id, id rule, template or secret", body = NullEnvelope),
        (status = 409, description = "The id is taken", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateEnrollmentRequest>,
) -> Result<Response, ApiError> {
    let template = req.template.unwrap_or_default();
    let created = service(&state)?
        .create_enrollment(CreateEnrollment {
            enrollment_id: req.enrollment_id,
            template: ThingTemplate {
                tags: template.tags.unwrap_or_default(),
                desired: template.desired,
                enabled: template.enabled.unwrap_or(true),
            },
            id_rule: id_rule(req.id_rule)?,
            max_uses: req.max_uses,
            expires_at: req.expires_at,
            enabled: req.enabled.unwrap_or(true),
            claim_secret: req.claim_secret,
        })
        .await?;
    let mut view = EnrollmentView::from(created.enrollment);
    view.claim_secret = Some(created.claim_secret);
    Ok(envelope(StatusCode::CREATED, "created", view))
}

/// Lists enrollments in id order.
#[utoipa::path(get, path = "/api/v1/enrollments", operation_id = "listEnrollments", tag = "provisioning",
    params(ListParams),
    responses(
        (status = 200, description = "One page", body = Envelope<Page<EnrollmentView>>),
        (status = 400, description = "Bad paging", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let (total, page) = service(&state)?
        .list_enrollments(
            p.page_index.unwrap_or(0),
            p.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
        )
        .await?;
    Ok(ok(iothub_spec::payload::Page {
        total,
        content: page
            .into_iter()
            .map(EnrollmentView::from)
            .collect::<Vec<_>>(),
    }))
}

/// One enrollment (never its claim secret).
#[utoipa::path(get, path = "/api/v1/enrollments/{id}", operation_id = "getEnrollment", tag = "provisioning",
    params(("id" = String, Path, description = "enrollmentId")),
    responses(
        (status = 200, description = "The enrollment", body = Envelope<EnrollmentView>),
        (status = 404, description = "No such enrollment", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let e = service(&state)?.get_enrollment(&id).await?;
    Ok(ok(EnrollmentView::from(e)))
}

/// Enables or disables an enrollment, or changes its maximum of uses or its expiry.
#[utoipa::path(patch, path = "/api/v1/enrollments/{id}", operation_id = "patchEnrollment", tag = "provisioning",
    params(("id" = String, Path, description = "enrollmentId")),
    request_body = PatchEnrollmentRequest,
    responses(
        (status = 200, description = "The changed enrollment", body = Envelope<EnrollmentView>),
        (status = 404, description = "No such enrollment", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn patch(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PatchEnrollmentRequest>,
) -> Result<Response, ApiError> {
    let patch = EnrollmentPatch {
        enabled: req.enabled,
        max_uses: req.max_uses,
        expires_at: req.expires_at,
    };
    let e = service(&state)?.update_enrollment(&id, &patch).await?;
    Ok(ok(EnrollmentView::from(e)))
}

/// Deletes an enrollment; the things it provisioned stay.
#[utoipa::path(delete, path = "/api/v1/enrollments/{id}", operation_id = "deleteEnrollment", tag = "provisioning",
    params(("id" = String, Path, description = "enrollmentId")),
    responses(
        (status = 200, description = "Deleted", body = NullEnvelope),
        (status = 404, description = "No such enrollment", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    service(&state)?.delete_enrollment(&id).await?;
    Ok(ok(()))
}
