//! Shadow routes (S-9.3): read, write `desired`, delete, through the shadow pipeline so REST
//! and MQTT updates are ordered, versioned and published alike. Errors keep the pipeline's protocol
//! code (400/404/409/413/429/503), never a blanket 500.

use axum::extract::{Request, State};
use axum::response::Response;
use iothub_spec::ids::{is_valid_shadow_name, is_valid_thing_id};

use super::AppState;
use super::error::{ApiError, ApiPath, body_bytes, ok};
use super::schema::{DesiredRequest, Envelope, NullEnvelope};

fn check_names(thing: &str, shadow: &str) -> Result<(), ApiError> {
    if !is_valid_thing_id(thing) {
        return Err(ApiError::not_found("thing not found"));
    }
    if !is_valid_shadow_name(shadow) {
        return Err(ApiError::bad_request(
            "invalid shadow name: must match ^[0-9A-Za-z_:-]{1,64}$",
        ));
    }
    Ok(())
}

/// The shadow document (S-3.2).
#[utoipa::path(get, path = "/api/v1/things/{id}/shadows/{name}", operation_id = "getShadow", tag = "shadows",
    params(("id" = String, Path, description = "thingId"), ("name" = String, Path, description = "shadow name, `default` for the classic shadow")),
    responses(
        (status = 200, description = "The S-3.2 document", body = Envelope<serde_json::Value>),
        (status = 400, description = "Invalid shadow name", body = NullEnvelope),
        (status = 404, description = "No such thing or shadow", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn get_shadow(
    State(state): State<AppState>,
    ApiPath((id, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    read(&state, &id, &name).await
}

/// `GET /things/{id}/shadows/{name}` for one shadow.
pub(super) async fn read(state: &AppState, id: &str, name: &str) -> Result<Response, ApiError> {
    check_names(id, name)?;
    Ok(ok(state.shadows.get(id, name).await?))
}

/// Updates `state.desired` (S-3.3/S-3.4); answers the S-3.5 accepted document.
#[utoipa::path(put, path = "/api/v1/things/{id}/shadows/{name}/state/desired", operation_id = "putShadowDesired", tag = "shadows",
    params(("id" = String, Path, description = "thingId"), ("name" = String, Path, description = "shadow name")),
    request_body = DesiredRequest,
    responses(
        (status = 200, description = "The S-3.5 accepted document", body = Envelope<serde_json::Value>),
        (status = 400, description = "Malformed update", body = NullEnvelope),
        (status = 404, description = "No such thing", body = NullEnvelope),
        (status = 409, description = "Version conflict", body = NullEnvelope),
        (status = 413, description = "Payload or resulting document too large", body = NullEnvelope),
        (status = 429, description = "Too many shadow requests for this thing", body = NullEnvelope),
        (status = 503, description = "Storage unavailable", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn put_desired(
    State(state): State<AppState>,
    ApiPath((id, name)): ApiPath<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    check_names(&id, &name)?;
    let body = body_bytes(req, &state).await?;
    if body.len() > state.limits.max_request_payload {
        return Err(ApiError::too_large(format!(
            "request payload over {} bytes",
            state.limits.max_request_payload
        )));
    }
    Ok(ok(state.shadows.update_desired(&id, &name, &body).await?))
}

/// Deletes a shadow.
#[utoipa::path(delete, path = "/api/v1/things/{id}/shadows/{name}", operation_id = "deleteShadow", tag = "shadows",
    params(("id" = String, Path, description = "thingId"), ("name" = String, Path, description = "shadow name")),
    responses(
        (status = 200, description = "Deleted", body = NullEnvelope),
        (status = 404, description = "No such thing or shadow", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete_shadow(
    State(state): State<AppState>,
    ApiPath((id, name)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    remove(&state, &id, &name).await
}

/// `DELETE /things/{id}/shadows/{name}` for one shadow.
pub(super) async fn remove(state: &AppState, id: &str, name: &str) -> Result<Response, ApiError> {
    check_names(id, name)?;
    state.shadows.delete(id, name).await?;
    Ok(ok(()))
}
