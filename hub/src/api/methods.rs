//! `POST /api/v1/things/{id}/methods/{method}` (S-5.3, S-9.5): invokes a direct method and
//! answers the device's `{code,message,data}`. tio's field names `respTimeout` and
//! `connTimeout` are read as `timeout` and `connectTimeout` (docs/tio-compatibility.md).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use iothub_spec::ids::is_valid_method_name;
use iothub_spec::limits::{
    CONNECT_TIMEOUT_DEFAULT_S, CONNECT_TIMEOUT_MAX_S, METHOD_TIMEOUT_DEFAULT_S,
    METHOD_TIMEOUT_MAX_S, METHOD_TIMEOUT_MIN_S,
};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ok};
use super::schema::{Envelope, MethodRequest, MethodResult, NullEnvelope};
use crate::method::MethodError;

/// Turns a seconds value from the body into a duration within `min..=max`.
fn seconds(
    v: Option<f64>,
    default: u32,
    min: u32,
    max: u32,
    name: &str,
) -> Result<Duration, ApiError> {
    let s = v.unwrap_or(f64::from(default));
    if !s.is_finite() || s < f64::from(min) || s > f64::from(max) {
        return Err(ApiError::bad_request(format!(
            "{name} must be {min} to {max} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Invokes a direct method on a thing and waits for its answer.
#[utoipa::path(post, path = "/api/v1/things/{id}/methods/{method}", operation_id = "invokeMethod", tag = "methods",
    params(("id" = String, Path, description = "thingId"), ("method" = String, Path, description = "method name, ^[0-9A-Za-z_.-]{1,64}$")),
    request_body = MethodRequest,
    responses(
        (status = 200, description = "The device's answer", body = Envelope<MethodResult>),
        (status = 400, description = "Bad method name or timeout", body = NullEnvelope),
        (status = 404, description = "No such thing", body = NullEnvelope),
        (status = 409, description = "Thing offline after connectTimeout", body = NullEnvelope),
        (status = 429, description = "Too many pending calls", body = NullEnvelope),
        (status = 504, description = "No answer within timeout", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn invoke(
    State(state): State<AppState>,
    ApiPath((id, method)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<MethodRequest>,
) -> Result<Response, ApiError> {
    let timeout = req.response_timeout().map_err(ApiError::bad_request)?;
    let connect_timeout = req.connect_timeout().map_err(ApiError::bad_request)?;
    let result = call(&state, &id, &method, req.data, timeout, connect_timeout).await?;
    Ok(ok(result))
}

/// Invokes `method` on thing `id` with `data` and waits for the device's answer: the REST
/// route and the web console share it. Timeouts are seconds from the caller (`None`: defaults).
pub async fn call(
    state: &AppState,
    id: &str,
    method: &str,
    data: serde_json::Value,
    timeout: Option<f64>,
    connect_timeout: Option<f64>,
) -> Result<MethodResult, ApiError> {
    if !is_valid_method_name(method) {
        return Err(ApiError::bad_request(
            "invalid method name: must match ^[0-9A-Za-z_.-]{1,64}$",
        ));
    }
    let timeout = seconds(
        timeout,
        METHOD_TIMEOUT_DEFAULT_S,
        METHOD_TIMEOUT_MIN_S,
        METHOD_TIMEOUT_MAX_S,
        "timeout",
    )?;
    let connect_timeout = seconds(
        connect_timeout,
        CONNECT_TIMEOUT_DEFAULT_S,
        0,
        CONNECT_TIMEOUT_MAX_S,
        "connectTimeout",
    )?;
    // 404 for an unknown thing before anything is published (S-5.3).
    state.things.get(id).await?;
    state.metrics.inc_method_invocation();
    let started = std::time::Instant::now();
    match state
        .methods
        .invoke(id, method, data, timeout, connect_timeout)
        .await
    {
        Ok(reply) => {
            state.metrics.observe_method_round_trip(started.elapsed());
            Ok(MethodResult {
                code: reply.code,
                message: reply.message.unwrap_or_default(),
                data: reply.data.unwrap_or(serde_json::Value::Null),
            })
        }
        Err(MethodError::Offline) => Err(ApiError::new(StatusCode::CONFLICT, "thing is offline")),
        Err(MethodError::Timeout) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "device did not respond in time",
        )),
        Err(MethodError::TooMany) => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many pending method calls",
        )),
        #[allow(unreachable_patterns)]
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}
