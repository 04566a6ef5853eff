//! Routes (S-14): `/api/v1/routes...`, and the message history
//! `GET /api/v1/things/{id}/messages`.
//!
//! The shapes are [`crate::routes::config::RouteSpec`] (the same as a `[[routes]]` table of the
//! config file) and [`RouteView`]; a webhook's secret is never shown (`****`), and sending
//! `****` back in an update keeps the stored one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, envelope, ok};
use super::schema::{Envelope, NullEnvelope};
use crate::routes::wire::MessageView;
use crate::routes::{RouteError, RouteSpec, RouteStatus, Routes};
use crate::store::routes::{MAX_ROWS, StoredMessage};

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        ApiError::new(status, e.to_string())
    }
}

fn service(state: &AppState) -> Result<&Routes, ApiError> {
    state.routes.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "routes are not served by this hub",
        )
    })
}

/// A route with its state and counters (S-14.5).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    /// The definition (a webhook secret shows as `****`).
    pub route: RouteSpec,
    /// Paused: the outbox fills, nothing is delivered.
    pub paused: bool,
    /// Declared in the config file (written again at every start).
    pub from_file: bool,
    /// Messages waiting in the outbox.
    pub outbox: u64,
    /// Messages committed to the outbox since the hub started.
    pub accepted: u64,
    /// Messages the sink confirmed since the hub started.
    pub delivered: u64,
    /// Failed delivery attempts (of a batch) since the hub started.
    pub failed: u64,
    /// Messages dropped by `drop-oldest` since the hub started.
    pub dropped: u64,
    /// Messages refused by `refuse` since the hub started.
    pub refused: u64,
    /// Messages moved to the dead letters since the hub started.
    pub dead_lettered: u64,
    /// Dead letters deleted for `deadLettersMax` or `deadLetterMaxAgeS` since the hub started
    /// (D-88).
    pub dead_letters_dropped: u64,
    /// The last delivery error, cleared by a success.
    pub last_error: Option<String>,
}

impl From<RouteStatus> for RouteView {
    fn from(s: RouteStatus) -> Self {
        RouteView {
            route: s.spec,
            paused: s.paused,
            from_file: s.from_file,
            outbox: s.outbox,
            accepted: s.accepted,
            delivered: s.delivered,
            failed: s.failed,
            dropped: s.dropped,
            refused: s.refused,
            dead_lettered: s.dead_lettered,
            dead_letters_dropped: s.dead_letters_dropped,
            last_error: s.last_error,
        }
    }
}

/// Every route.
#[utoipa::path(get, path = "/api/v1/routes", operation_id = "listRoutes", tag = "routes",
    responses((status = 200, description = "Every route, by id", body = Envelope<Vec<RouteView>>)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let all: Vec<RouteView> = service(&state)?
        .list()
        .into_iter()
        .map(RouteView::from)
        .collect();
    Ok(ok(all))
}

/// Creates a route; its delivery starts at once (unless `paused`).
#[utoipa::path(post, path = "/api/v1/routes", operation_id = "createRoute", tag = "routes",
    request_body = RouteSpec,
    responses(
        (status = 201, description = "Created", body = Envelope<RouteView>),
        (status = 400, description = "Invalid definition", body = NullEnvelope),
        (status = 409, description = "The id is taken, or the hub has 64 routes", body = NullEnvelope),
        (status = 503, description = "Storage unavailable; nothing was stored", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(spec): ApiJson<RouteSpec>,
) -> Result<Response, ApiError> {
    let status = service(&state)?.put(spec, false).await?;
    Ok(envelope(
        StatusCode::CREATED,
        "created",
        RouteView::from(status),
    ))
}

/// One route with its state and counters.
#[utoipa::path(get, path = "/api/v1/routes/{id}", operation_id = "getRoute", tag = "routes",
    params(("id" = String, Path, description = "The route's id")),
    responses(
        (status = 200, description = "The route", body = Envelope<RouteView>),
        (status = 404, description = "No such route", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn get_route(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(ok(RouteView::from(service(&state)?.get(&id)?)))
}

/// Replaces a route's definition; its outbox and dead letters stay, and its paused state.
#[utoipa::path(put, path = "/api/v1/routes/{id}", operation_id = "replaceRoute", tag = "routes",
    params(("id" = String, Path, description = "The route's id")),
    request_body = RouteSpec,
    responses(
        (status = 200, description = "Replaced", body = Envelope<RouteView>),
        (status = 400, description = "Invalid definition, or its id differs from the path's", body = NullEnvelope),
        (status = 404, description = "No such route", body = NullEnvelope),
        (status = 503, description = "Storage unavailable; nothing was changed", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn replace(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(spec): ApiJson<RouteSpec>,
) -> Result<Response, ApiError> {
    if spec.id != id {
        return Err(RouteError::IdMismatch.into());
    }
    Ok(ok(RouteView::from(service(&state)?.put(spec, true).await?)))
}

/// Deletes a route with its outbox and dead letters (what they hold is not delivered).
#[utoipa::path(delete, path = "/api/v1/routes/{id}", operation_id = "deleteRoute", tag = "routes",
    params(("id" = String, Path, description = "The route's id")),
    responses(
        (status = 200, description = "Deleted", body = NullEnvelope),
        (status = 404, description = "No such route", body = NullEnvelope),
        (status = 503, description = "Storage unavailable; nothing was deleted", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    service(&state)?.delete(&id).await?;
    Ok(ok(()))
}

/// Pauses a route: its outbox keeps filling (up to its bound), nothing is delivered.
#[utoipa::path(post, path = "/api/v1/routes/{id}/pause", operation_id = "pauseRoute", tag = "routes",
    params(("id" = String, Path, description = "The route's id")),
    responses(
        (status = 200, description = "Paused", body = Envelope<RouteView>),
        (status = 404, description = "No such route", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(ok(RouteView::from(
        service(&state)?.set_paused(&id, true).await?,
    )))
}

/// Resumes a paused route: it delivers its outbox in order.
#[utoipa::path(post, path = "/api/v1/routes/{id}/resume", operation_id = "resumeRoute", tag = "routes",
    params(("id" = String, Path, description = "The route's id")),
    responses(
        (status = 200, description = "Resumed", body = Envelope<RouteView>),
        (status = 404, description = "No such route", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(ok(RouteView::from(
        service(&state)?.set_paused(&id, false).await?,
    )))
}

/// `GET .../dead-letters` query string.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct DeadLetterParams {
    /// Only dead letters with a larger `seq` (the last `seq` of the previous page; default 0).
    pub after: Option<u64>,
    /// Most dead letters, 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

/// A dead letter.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    /// The message (its `seq` numbers the dead letters).
    #[serde(flatten)]
    pub message: serde_json::Value,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// When it became a dead letter, ms since the Unix epoch.
    pub failed_at: u64,
}

/// A page of dead letters.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeadLetterPage {
    /// Dead letters of the route in all.
    pub total: u64,
    /// This page, oldest first.
    pub content: Vec<DeadLetterView>,
}

fn limit(limit: Option<u32>, default: u32) -> Result<u32, ApiError> {
    let n = limit.unwrap_or(default);
    if !(1..=MAX_ROWS).contains(&n) {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    Ok(n)
}

fn view(route: Option<&str>, m: &StoredMessage) -> serde_json::Value {
    serde_json::to_value(MessageView::of(route, m)).unwrap_or_default()
}

/// A route's dead letters, oldest first.
#[utoipa::path(get, path = "/api/v1/routes/{id}/dead-letters", operation_id = "listDeadLetters", tag = "routes",
    params(("id" = String, Path, description = "The route's id"), DeadLetterParams),
    responses(
        (status = 200, description = "A page of dead letters", body = Envelope<DeadLetterPage>),
        (status = 400, description = "Bad limit", body = NullEnvelope),
        (status = 404, description = "No such route", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn dead_letters(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<DeadLetterParams>,
) -> Result<Response, ApiError> {
    let n = limit(p.limit, 100)?;
    let (total, letters) = service(&state)?
        .dead_letters(&id, p.after.unwrap_or(0), n)
        .await?;
    let content = letters
        .iter()
        .map(|d| DeadLetterView {
            message: view(Some(&id), &d.stored),
            attempts: d.attempts,
            error: d.error.clone(),
            failed_at: d.failed_at,
        })
        .collect();
    Ok(ok(DeadLetterPage { total, content }))
}

/// `POST .../dead-letters/replay` body.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayBody {
    /// Most dead letters to replay, oldest first, 1 to 1000 (default 1000).
    pub limit: Option<u32>,
}

/// What a replay moved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Replayed {
    /// Dead letters moved back to the end of the outbox.
    pub replayed: u64,
}

/// Moves a route's oldest dead letters back to the end of its outbox, to be delivered again
/// (with new `seq` numbers).
#[utoipa::path(post, path = "/api/v1/routes/{id}/dead-letters/replay", operation_id = "replayDeadLetters", tag = "routes",
    params(("id" = String, Path, description = "The route's id")),
    request_body(content = Option<ReplayBody>, description = "Optional; {} replays up to 1000"),
    responses(
        (status = 200, description = "Replayed", body = Envelope<Replayed>),
        (status = 400, description = "Bad limit", body = NullEnvelope),
        (status = 404, description = "No such route", body = NullEnvelope),
        (status = 503, description = "Storage unavailable; nothing was moved", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn replay(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: none (or `{}`) replays up to 1000.
    let body: ReplayBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?
    };
    let n = limit(body.limit, MAX_ROWS)?;
    let replayed = service(&state)?.replay(&id, n).await?;
    Ok(ok(Replayed { replayed }))
}

/// `GET /things/{id}/messages` query string.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// From this time on, ms since the Unix epoch (inclusive; default 0).
    pub from: Option<u64>,
    /// Before this time, ms since the Unix epoch (exclusive; default: no end).
    pub to: Option<u64>,
    /// Most messages, 1 to 1000 (default 100).
    pub limit: Option<u32>,
}

/// A thing's message history (the `history` sink of S-14.4), oldest first.
#[utoipa::path(get, path = "/api/v1/things/{id}/messages", operation_id = "listThingMessages", tag = "routes",
    params(("id" = String, Path, description = "thingId"), HistoryParams),
    responses(
        (status = 200, description = "The messages, oldest first", body = Envelope<Vec<MessageView>>),
        (status = 400, description = "Bad limit, or from after to", body = NullEnvelope),
        (status = 503, description = "Storage unavailable", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn history(
    State(state): State<AppState>,
    ApiPath(thing): ApiPath<String>,
    ApiQuery(p): ApiQuery<HistoryParams>,
) -> Result<Response, ApiError> {
    let n = limit(p.limit, 100)?;
    let (from, to) = (p.from.unwrap_or(0), p.to.unwrap_or(i64::MAX as u64));
    if from > to {
        return Err(ApiError::bad_request("from must not be after to"));
    }
    let Some(rs) = state.store.routes() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this store keeps no history",
        ));
    };
    let messages = rs
        .history(&thing, from, to, n)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let views: Vec<serde_json::Value> = messages.iter().map(|m| view(None, m)).collect();
    Ok(ok(views))
}
