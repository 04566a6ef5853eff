//! The REST routes of tio (ruffjs/tio 1.3.0, `shadow/api/http.go`) that differ from ours only
//! in their path or paging, served as aliases so a client written for tio works unchanged.
//! Each answers exactly what our own route answers; `docs/tio-compatibility.md` lists every
//! difference and what was done about it.
//!
//! - `POST /things/shadows/query` = `POST /things/query` with tio's paging: `pageIndex` counts
//!   from **1** (default 1) and `pageSize` defaults to 10, both in the query string only. The
//!   query text may use tio's spelling (`select * from shadow where `tags.zone` = 'x'`).
//! - `PUT /things/{id}/shadows/tags` = `PUT /things/{id}/tags`, except that `"version": 0`
//!   means "no version check", as in tio (whose Go clients always send the field).
//! - `GET /things/` (tio's web console lists things with the trailing slash) = `GET /things`
//!   with tio's paging; `POST /things/` = `POST /things`.
//!
//! The static `shadows/tags` segment would hide a named shadow called `tags` from
//! `GET`/`DELETE /things/{id}/shadows/{name}`, so those two methods are routed here too and
//! served as that shadow.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post, put};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ok};
use super::schema::{Envelope, NullEnvelope, Page, TagsRequest, TagsView, Thing};
use super::{shadows, things};
use crate::query::ThingQuery;

/// tio's default page size.
const TIO_PAGE_SIZE: u64 = 10;
/// The shadow name that the tags alias takes over.
const TAGS: &str = "tags";

/// The alias routes, relative to `/api/v1` (admin token required, like every `/api/v1` route).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/things/", get(list_things).post(things::create))
        .route("/things/shadows/query", post(query_shadows))
        .route(
            "/things/{id}/shadows/tags",
            put(put_shadow_tags)
                .get(get_tags_shadow)
                .delete(delete_tags_shadow),
        )
}

/// tio's paging: 1-based.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct TioPageParams {
    /// 1-based page number (default 1).
    pub page_index: Option<u64>,
    /// Page size, 1 to 1000 (default 10).
    pub page_size: Option<u64>,
}

/// `GET /things/?pageIndex&pageSize&enabled` as tio pages it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TioListParams {
    page_index: Option<u64>,
    page_size: Option<u64>,
    enabled: Option<bool>,
}

/// tio's 1-based page number as our 0-based one (absent means the first page).
fn zero_based(page_index: Option<u64>) -> Result<u64, ApiError> {
    match page_index {
        None => Ok(0),
        Some(0) => Err(ApiError::bad_request(
            "pageIndex counts from 1 on this route",
        )),
        Some(n) => Ok(n - 1),
    }
}

/// tio's thing list: `GET /things` with 1-based paging.
async fn list_things(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<TioListParams>,
) -> Result<Response, ApiError> {
    let (total, things) = state
        .things
        .list(
            zero_based(p.page_index)?,
            p.page_size.unwrap_or(TIO_PAGE_SIZE),
            p.enabled,
        )
        .await?;
    Ok(ok(iothub_spec::payload::Page {
        total,
        content: things.into_iter().map(Thing::from).collect::<Vec<_>>(),
    }))
}

/// `POST /things/shadows/query` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct TioQueryRequest {
    /// `select * from shadow [where ..]`; our grammar (S-9.4) with tio's spelling allowed.
    pub query: String,
}

/// tio's thing query: `POST /things/query` with 1-based paging.
#[utoipa::path(post, path = "/api/v1/things/shadows/query", operation_id = "tioQueryShadows", tag = "tio",
    params(TioPageParams),
    request_body = TioQueryRequest,
    responses(
        (status = 200, description = "One page of matching things", body = Envelope<Page<Thing>>),
        (status = 400, description = "Query not in the supported grammar, or bad paging", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn query_shadows(
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<TioPageParams>,
    ApiJson(req): ApiJson<TioQueryRequest>,
) -> Result<Response, ApiError> {
    let page_index = zero_based(paging.page_index)?;
    let page_size = paging.page_size.unwrap_or(TIO_PAGE_SIZE);
    let q = ThingQuery::parse(&req.query)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let (total, things) = state.things.query(&q, page_index, page_size).await?;
    Ok(ok(iothub_spec::payload::Page {
        total,
        content: things.into_iter().map(Thing::from).collect::<Vec<_>>(),
    }))
}

/// tio's tags route: `PUT /things/{id}/tags`, where `"version": 0` means no version check.
#[utoipa::path(put, path = "/api/v1/things/{id}/shadows/tags", operation_id = "tioPutTags", tag = "tio",
    params(("id" = String, Path, description = "thingId")),
    request_body = TagsRequest,
    responses(
        (status = 200, description = "All tags and their new version", body = Envelope<TagsView>),
        (status = 400, description = "Bad body or tags too large", body = NullEnvelope),
        (status = 404, description = "No such thing", body = NullEnvelope),
        (status = 409, description = "Version mismatch", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn put_shadow_tags(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<TagsRequest>,
) -> Result<Response, ApiError> {
    let version = req.version.filter(|&v| v != 0);
    let tags = state.things.update_tags(&id, req.tags, version).await?;
    Ok(ok(TagsView {
        tags: tags.tags,
        version: tags.version,
    }))
}

/// `GET /things/{id}/shadows/tags`: the named shadow `tags` (the route is taken by the alias).
async fn get_tags_shadow(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    shadows::read(&state, &id, TAGS).await
}

/// `DELETE /things/{id}/shadows/tags`: the named shadow `tags`.
async fn delete_tags_shadow(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    shadows::remove(&state, &id, TAGS).await
}
