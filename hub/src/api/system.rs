//! Health, metrics, limits and the OpenAPI document (S-9.1, S-9.7).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;
use super::error::{ApiError, envelope, ok};
use super::schema::{self, Envelope, Health, NullEnvelope};

/// Liveness and readiness: 200 when the store answers, 503 otherwise. No token needed.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses(
        (status = 200, description = "Healthy", body = Envelope<Health>),
        (status = 503, description = "Storage unavailable", body = NullEnvelope),
    ))]
pub async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.list_things(0, 1, None).await {
        Ok(_) => ok(Health {
            status: "ok".into(),
        }),
        Err(e) => envelope(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("storage unavailable: {e}"),
            (),
        ),
    }
}

/// Metrics in the Prometheus text format (the one route without the envelope). No token needed.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// The configured limits (S-3.9).
#[utoipa::path(get, path = "/api/v1/limits", tag = "system",
    responses((status = 200, description = "The hub's limits", body = Envelope<serde_json::Value>)),
    security(("bearer" = [])))]
pub async fn limits(State(state): State<AppState>) -> Response {
    ok(state.limits)
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document (not enveloped)", body = serde_json::Value)),
    security(("bearer" = [])))]
pub async fn openapi() -> Result<Response, ApiError> {
    let doc = ApiDoc::openapi()
        .to_json()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], doc).into_response())
}

/// The OpenAPI description of the REST API, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "iothub REST API", description = "Thing registry, shadows, tags, query and direct methods (docs/spec.md S-9). Every body is the envelope {\"code\",\"message\",\"data\"}."),
    paths(
        super::things::create,
        super::things::create_batch,
        super::things::list,
        super::things::get_thing,
        super::things::patch,
        super::things::delete,
        super::things::put_tags,
        super::query::query,
        super::shadows::get_shadow,
        super::shadows::put_desired,
        super::shadows::delete_shadow,
        super::methods::invoke,
        super::ota::create,
        super::ota::get_job,
        super::ota::cancel,
        super::ota::list_tasks,
        super::ota::get_task,
        super::ota::cancel_task,
        healthz,
        metrics,
        limits,
        openapi,
    ),
    components(schemas(
        schema::Thing,
        schema::CreatedThingView,
        schema::CreateThingRequest,
        schema::BatchRequest,
        schema::BatchItem,
        schema::PatchThingRequest,
        schema::TagsRequest,
        schema::TagsView,
        schema::QueryRequest,
        schema::MethodRequest,
        schema::MethodResult,
        schema::DesiredRequest,
        schema::Health,
        super::ota::CreateJobRequest,
        super::ota::TargetsBody,
        super::ota::TaskBody,
        super::ota::MetaBody,
        super::ota::JobView,
        super::ota::CountsView,
        super::ota::TaskView,
        super::ota::TaskDetail,
        super::ota::TransitionView,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// Declares the `bearer` security scheme the routes refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
