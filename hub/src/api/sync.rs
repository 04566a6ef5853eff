//! Registry sync (S-13): `GET /api/v1/sync` (what is configured, the last round, the queue) and
//! `GET /api/v1/sync/events` (S-13.5). Both read; admin and read-only tokens may call them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use iothub_spec::code::SyncEventKind;
use iothub_spec::ids::is_valid_thing_id;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiQuery, ok};
use super::schema::{Envelope, NullEnvelope};
use crate::store::StoreError;
use crate::store::sync::{EventFilter, MAX_EVENTS_PAGE, SyncEvent};
use crate::sync::schedule::RoundReport;

/// Events per answer when `limit` is not given.
pub const DEFAULT_EVENTS: u64 = 100;

fn unavailable(e: &StoreError) -> ApiError {
    tracing::warn!(error = %e, "registry sync store failure");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
}

/// `GET /sync/events` query string.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events at or after this time, ms since the Unix epoch.
    pub since: Option<u64>,
    /// Only events with a larger `id` (the last `id` seen, to read on).
    pub after: Option<u64>,
    /// Only this thing's events.
    pub thing: Option<String>,
    /// Only events of this kind (S-13.5), e.g. `external-create-failed`.
    pub kind: Option<String>,
    /// At most this many, 1 to 1000 (default 100).
    pub limit: Option<u64>,
}

/// One sync event (S-13.5).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncEventView {
    /// Increasing id: pass the last one as `after` to read on.
    pub id: u64,
    /// When, ms since the Unix epoch.
    pub at: u64,
    /// What happened (S-13.5).
    #[schema(value_type = String)]
    pub kind: SyncEventKind,
    /// The thing concerned.
    pub thing_id: Option<String>,
    /// The attempt number (events of a task).
    pub attempt: Option<u32>,
    /// Why (an error), when there is one.
    pub detail: Option<String>,
}

impl From<SyncEvent> for SyncEventView {
    fn from(e: SyncEvent) -> Self {
        SyncEventView {
            id: e.id,
            at: e.event.at,
            kind: e.event.kind,
            thing_id: e.event.thing_id,
            attempt: e.event.attempt,
            detail: e.event.detail,
        }
    }
}

/// What `GET /sync` shows.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncView {
    /// Whether a `[registry_sync]` section is configured.
    pub configured: bool,
    /// The external registry's base URL.
    pub url: Option<String>,
    /// Mode (a) runs: the external registry is master.
    pub schedule: bool,
    /// Mode (a) disables instead of deleting.
    pub soft_delete: bool,
    /// Mode (b) runs: the hub is master.
    pub push: bool,
    /// Tasks waiting to reach the external registry.
    pub pending_tasks: u64,
    /// The last scheduled round on this instance (null before the first, and on instances
    /// that are not the leader).
    pub last_round: Option<RoundReport>,
}

/// The sync's configuration, last round and queue length.
#[utoipa::path(get, path = "/api/v1/sync", operation_id = "getSync", tag = "sync",
    responses(
        (status = 200, description = "The sync's state", body = Envelope<SyncView>),
        (status = 503, description = "Storage unavailable", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let pending = match state.store.sync() {
        Some(sync) => sync.pending_tasks().await.map_err(|e| unavailable(&e))?,
        None => 0,
    };
    let config = state.sync.as_ref().map(|s| s.config.clone());
    Ok(ok(SyncView {
        configured: config.is_some(),
        url: config.as_ref().map(|c| c.url.clone()),
        schedule: config.as_ref().is_some_and(|c| c.schedule.is_some()),
        soft_delete: config
            .as_ref()
            .and_then(|c| c.schedule.as_ref())
            .is_some_and(|s| s.soft_delete),
        push: config.as_ref().is_some_and(|c| c.push.is_some()),
        pending_tasks: pending,
        last_round: state.sync.as_ref().and_then(|s| s.last_round()),
    }))
}

/// Sync events, oldest first, filtered by time, id, thing and kind.
#[utoipa::path(get, path = "/api/v1/sync/events", operation_id = "listSyncEvents", tag = "sync",
    params(EventParams),
    responses(
        (status = 200, description = "The events, ascending by id", body = Envelope<Vec<SyncEventView>>),
        (status = 400, description = "Bad kind, thing or limit", body = NullEnvelope),
        (status = 503, description = "Storage unavailable", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Response, ApiError> {
    let kind = p
        .kind
        .as_deref()
        .map(|k| {
            SyncEventKind::parse(k).ok_or_else(|| {
                let known: Vec<&str> = SyncEventKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::bad_request(format!("kind must be one of {}", known.join(", ")))
            })
        })
        .transpose()?;
    if p.thing.as_deref().is_some_and(|t| !is_valid_thing_id(t)) {
        return Err(ApiError::bad_request(
            "thing must match ^[0-9A-Za-z_-]{1,64}$",
        ));
    }
    let limit = p.limit.unwrap_or(DEFAULT_EVENTS);
    if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1 to 1000"));
    }
    let Some(sync) = state.store.sync() else {
        return Ok(ok(Vec::<SyncEventView>::new()));
    };
    let filter = EventFilter {
        since: p.since,
        after: p.after,
        thing: p.thing,
        kind,
        limit,
        newest_first: false,
    };
    let events = sync.events(&filter).await.map_err(|e| unavailable(&e))?;
    Ok(ok(events
        .into_iter()
        .map(SyncEventView::from)
        .collect::<Vec<_>>()))
}
