//! Configurations (S-11): `/api/v1/configurations...` and `/api/v1/things/{id}/configurations`.
//!
//! The shapes, bounds and codes are docs/spec.md D-47; the counts are live from the engine's
//! last sweep (D-50).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, envelope, ok};
use super::schema::{Envelope, NullEnvelope};
use crate::configurations::{ConfigurationError, ConfigurationSpec, Configurations, Counts};
use crate::store::configurations::{Configuration, ConfigurationRecord};

impl From<ConfigurationError> for ApiError {
    fn from(e: ConfigurationError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        ApiError::new(status, e.to_string())
    }
}

fn service(state: &AppState) -> Result<&Configurations, ApiError> {
    state.configurations.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "configurations are not served by this hub",
        )
    })
}

/// A configuration to create (`name` is required) or replace (`name`, if given, must be the
/// path's).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigurationBody {
    /// 1 to 64 characters of `[0-9A-Za-z_-]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The `WHERE` part of an S-9.4 query, e.g. `tags.location.building = 'b1'`.
    pub target_condition: String,
    /// Higher wins a key several configurations set (D-48); default 0.
    #[serde(default)]
    pub priority: i64,
    /// The desired-state patch (at most 8192 bytes of JSON).
    #[schema(value_type = Object)]
    pub desired: Map<String, Value>,
    /// A condition over the thing, e.g. `state.reported.telemetryInterval = 15`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// Delete the configuration's keys from `desired` when a thing stops matching (D-49).
    #[serde(default)]
    pub remove_on_unmatch: bool,
}

impl From<ConfigurationBody> for ConfigurationSpec {
    fn from(b: ConfigurationBody) -> Self {
        ConfigurationSpec {
            target: b.target_condition,
            priority: b.priority,
            desired: b.desired,
            success: b.success_condition,
            remove_on_unmatch: b.remove_on_unmatch,
        }
    }
}

/// Things of a configuration by status (S-11.2).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConfigurationCounts {
    /// Things the target condition matches.
    pub targeted: u64,
    /// Targeted things whose patch is in their desired state.
    pub applied: u64,
    /// Targeted things whose success condition holds.
    pub succeeded: u64,
    /// Targeted things whose patch the shadow refused.
    pub failed: u64,
    /// Targeted things not yet applied.
    pub pending: u64,
}

impl From<Counts> for ConfigurationCounts {
    fn from(c: Counts) -> Self {
        ConfigurationCounts {
            targeted: c.targeted,
            applied: c.applied,
            succeeded: c.succeeded,
            failed: c.failed,
            pending: c.pending,
        }
    }
}

/// A configuration with its counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationView {
    /// Its name.
    pub name: String,
    /// Target condition.
    pub target_condition: String,
    /// Priority.
    pub priority: i64,
    /// The desired-state patch.
    #[schema(value_type = Object)]
    pub desired: Map<String, Value>,
    /// Success condition.
    pub success_condition: Option<String>,
    /// Whether keys are deleted when a thing stops matching.
    pub remove_on_unmatch: bool,
    /// Things by status.
    pub counts: ConfigurationCounts,
    /// ms.
    pub created_at: u64,
    /// ms.
    pub updated_at: u64,
}

impl From<(Configuration, Counts)> for ConfigurationView {
    fn from((c, n): (Configuration, Counts)) -> Self {
        ConfigurationView {
            name: c.name,
            target_condition: c.target,
            priority: c.priority,
            desired: c.desired,
            success_condition: c.success,
            remove_on_unmatch: c.remove_on_unmatch,
            counts: n.into(),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// What one configuration applied to one thing.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedView {
    /// The configuration.
    pub configuration: String,
    /// `applied` or `failed`.
    pub status: String,
    /// The top-level desired keys it owns on this thing (D-48).
    pub keys: Vec<String>,
    /// Why the shadow refused it.
    pub error: Option<String>,
    /// ms.
    pub updated_at: u64,
}

impl From<ConfigurationRecord> for AppliedView {
    fn from(r: ConfigurationRecord) -> Self {
        AppliedView {
            configuration: r.configuration,
            status: r.status.as_str().to_owned(),
            keys: r.patch.keys().cloned().collect(),
            error: r.error,
            updated_at: r.updated_at,
        }
    }
}

/// Creates a configuration; the hub starts applying it at once.
#[utoipa::path(post, path = "/api/v1/configurations", operation_id = "createConfiguration", tag = "configurations",
    request_body = ConfigurationBody,
    responses(
        (status = 201, description = "Created", body = Envelope<ConfigurationView>),
        (status = 400, description = "Invalid name, condition or desired patch", body = NullEnvelope),
        (status = 403, description = "Already 100 configurations", body = NullEnvelope),
        (status = 409, description = "The name is taken", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ConfigurationBody>,
) -> Result<Response, ApiError> {
    let name = body
        .name
        .clone()
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let created = service(&state)?
        .create(&name, body.into(), crate::clock::now_ms())
        .await?;
    Ok(envelope(
        StatusCode::CREATED,
        "created",
        ConfigurationView::from(created),
    ))
}

/// Every configuration with its counts, by name.
#[utoipa::path(get, path = "/api/v1/configurations", operation_id = "listConfigurations", tag = "configurations",
    responses((status = 200, description = "All configurations", body = Envelope<Vec<ConfigurationView>>)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all = service(&state)?.list().await?;
    Ok(ok(all
        .into_iter()
        .map(ConfigurationView::from)
        .collect::<Vec<_>>()))
}

/// One configuration with its counts.
#[utoipa::path(get, path = "/api/v1/configurations/{name}", operation_id = "getConfiguration", tag = "configurations",
    params(("name" = String, Path, description = "The configuration's name")),
    responses(
        (status = 200, description = "The configuration", body = Envelope<ConfigurationView>),
        (status = 404, description = "No such configuration", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let c = service(&state)?.get(&name).await?;
    Ok(ok(ConfigurationView::from(c)))
}

/// Replaces a configuration; things are re-planned at the next sweep.
#[utoipa::path(put, path = "/api/v1/configurations/{name}", operation_id = "replaceConfiguration", tag = "configurations",
    params(("name" = String, Path, description = "The configuration's name")),
    request_body = ConfigurationBody,
    responses(
        (status = 200, description = "Replaced", body = Envelope<ConfigurationView>),
        (status = 400, description = "Invalid condition or desired patch, or another name", body = NullEnvelope),
        (status = 404, description = "No such configuration", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn replace(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ConfigurationBody>,
) -> Result<Response, ApiError> {
    if body.name.as_ref().is_some_and(|n| n != &name) {
        return Err(ApiError::bad_request("name differs from the path"));
    }
    let c = service(&state)?
        .update(&name, body.into(), crate::clock::now_ms())
        .await?;
    Ok(ok(ConfigurationView::from(c)))
}

/// Deletes a configuration; the values it applied stay in the things' desired state.
#[utoipa::path(delete, path = "/api/v1/configurations/{name}", operation_id = "deleteConfiguration", tag = "configurations",
    params(("name" = String, Path, description = "The configuration's name")),
    responses(
        (status = 200, description = "Deleted", body = NullEnvelope),
        (status = 404, description = "No such configuration", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    service(&state)?.delete(&name).await?;
    Ok(ok(Value::Null))
}

/// Which configuration applied which keys to a thing.
#[utoipa::path(get, path = "/api/v1/things/{id}/configurations", operation_id = "getThingConfigurations", tag = "configurations",
    params(("id" = String, Path, description = "thingId")),
    responses(
        (status = 200, description = "One entry per configuration that applied to the thing", body = Envelope<Vec<AppliedView>>),
        (status = 404, description = "No such thing", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn thing_records(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.things.get(&id).await?;
    let records = service(&state)?.thing_records(&id).await?;
    Ok(ok(records
        .into_iter()
        .map(AppliedView::from)
        .collect::<Vec<_>>()))
}
