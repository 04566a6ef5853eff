//! Health, metrics, limits and the OpenAPI document (S-9.1, S-9.7).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::AppState;
use super::error::{ApiError, envelope, ok};
use super::schema::{self, Envelope, Health};

/// Liveness and readiness: 200 when the store answers and its writes succeed, 503 otherwise,
/// with the reason in `message` and `data` (a full disk, for one). No token needed.
#[utoipa::path(get, path = "/healthz", operation_id = "getHealth", tag = "system",
    responses(
        (status = 200, description = "Healthy", body = Envelope<Health>),
        (status = 503, description = "Storage unavailable: writes fail or reads fail", body = Envelope<Health>),
    ))]
pub async fn healthz(State(state): State<AppState>) -> Response {
    let report = state.store.health();
    let from_report = |status: &str, report: &crate::store::health::HealthReport| Health {
        partitions: state.ownership.held(),
        leader: state.ownership.is_leader(),
        ..Health::from_report(status, report)
    };
    if !report.healthy {
        let reason = report.reason.clone().unwrap_or_default();
        return envelope(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("storage unavailable: writes are failing: {reason}"),
            from_report("unavailable", &report),
        );
    }
    match state.store.list_things(0, 1, None).await {
        Ok(_) => ok(from_report("ok", &report)),
        Err(e) => {
            let mut health = from_report("unavailable", &report);
            health.reason = Some(e.to_string());
            envelope(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("storage unavailable: {e}"),
                health,
            )
        }
    }
}

/// Metrics in the Prometheus text format (the one route without the envelope). No token needed.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "system",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // The store keeps its own health; the gauges mirror it at scrape time.
    state.metrics.set_store_health(&state.store.health());
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
#[utoipa::path(get, path = "/api/v1/limits", operation_id = "getLimits", tag = "system",
    responses((status = 200, description = "The hub's limits", body = Envelope<serde_json::Value>)),
    security(("bearer" = [])))]
pub async fn limits(State(state): State<AppState>) -> Response {
    ok(state.limits)
}

/// This document. No token needed: it describes the API and discloses nothing.
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "getOpenApi", tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document (not enveloped)", body = serde_json::Value)))]
pub async fn openapi() -> Result<Response, ApiError> {
    let doc = ApiDoc::openapi()
        .to_json()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], doc).into_response())
}

/// The OpenAPI description of the REST API, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "iothub REST API", description = "Thing registry, shadows, tags, query, direct methods and OTA jobs (protocol clause S-9); routes to other systems and the message history (S-14). Every body is the envelope {\"code\",\"message\",\"data\"}. The routes tagged `tio` are aliases for clients written for tio (docs/tio-compatibility.md). The routes tagged `broker` are called by an MQTT broker (EMQX 5's HTTP authentication and authorization), with their own token, and answer in that broker's format (docs/spec.md D-57)."),
    servers((url = "/", description = "The hub serving this document")),
    paths(
        super::things::create,
        super::things::create_batch,
        super::things::list,
        super::things::get_thing,
        super::things::patch,
        super::things::delete,
        super::things::put_tags,
        super::things::patch_tags,
        super::certificates::register,
        super::certificates::list,
        super::certificates::revoke,
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
        super::enrollments::create,
        super::enrollments::list,
        super::enrollments::get_one,
        super::enrollments::patch,
        super::enrollments::delete,
        super::configurations::create,
        super::configurations::list,
        super::configurations::get,
        super::configurations::replace,
        super::configurations::delete,
        super::configurations::thing_records,
        super::jobs::create,
        super::jobs::list,
        super::jobs::get_job,
        super::jobs::cancel,
        super::jobs::list_things,
        super::jobs::get_thing,
        super::sync::status,
        super::sync::events,
        super::routes::list,
        super::routes::create,
        super::routes::get_route,
        super::routes::replace,
        super::routes::delete,
        super::routes::pause,
        super::routes::resume,
        super::routes::dead_letters,
        super::routes::replay,
        super::routes::history,
        super::tio::query_shadows,
        super::tio::put_shadow_tags,
        super::broker_auth::authn,
        super::broker_auth::authz,
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
        super::certificates::RegisterCertificateRequest,
        super::certificates::CertificateView,
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
        super::configurations::ConfigurationBody,
        super::configurations::ConfigurationView,
        super::configurations::ConfigurationCounts,
        super::configurations::AppliedView,
        super::jobs::FleetJobBody,
        super::jobs::OperationBody,
        super::jobs::FleetJobView,
        super::jobs::JobThingView,
        super::sync::SyncView,
        super::sync::SyncEventView,
        crate::sync::schedule::RoundReport,
        crate::routes::config::RouteSpec,
        crate::routes::config::Source,
        crate::routes::config::Sink,
        crate::routes::config::FullPolicy,
        crate::routes::wire::MessageView,
        super::routes::RouteView,
        super::routes::DeadLetterView,
        super::routes::DeadLetterPage,
        super::routes::ReplayBody,
        super::routes::Replayed,
        super::tio::TioQueryRequest,
        super::enrollments::CreateEnrollmentRequest,
        super::enrollments::PatchEnrollmentRequest,
        super::enrollments::EnrollmentView,
        super::enrollments::TemplateBody,
        super::enrollments::IdRuleBody,
        super::broker_auth::AuthnRequest,
        super::broker_auth::AuthzRequest,
        super::broker_auth::Action,
        super::broker_auth::Verdict,
        super::broker_auth::AuthnResponse,
        super::broker_auth::AuthzResponse,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

/// Declares the security schemes the routes refer to: `bearer` (the admin token) and `broker`
/// (`--broker-auth-token`, D-57).
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "broker",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}
