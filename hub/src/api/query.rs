//! `POST /api/v1/things/query` (S-9.4): the query text is parsed into a typed
//! [`ThingQuery`] and rendered with bound parameters, never spliced.

use axum::extract::State;
use axum::response::Response;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, ok};
use super::schema::{Envelope, NullEnvelope, Page, PageParams, QueryRequest, Thing};
use super::things::DEFAULT_PAGE_SIZE;
use crate::query::ThingQuery;

/// Runs a thing query; one page of matching things and the total.
#[utoipa::path(post, path = "/api/v1/things/query", operation_id = "queryThings", tag = "things",
    params(PageParams),
    request_body = QueryRequest,
    responses(
        (status = 200, description = "One page of matching things", body = Envelope<Page<Thing>>),
        (status = 400, description = "Query not in the supported grammar, or bad paging", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn query(
    State(state): State<AppState>,
    ApiQuery(paging): ApiQuery<PageParams>,
    ApiJson(req): ApiJson<QueryRequest>,
) -> Result<Response, ApiError> {
    let q = ThingQuery::parse(&req.query)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let page_index = paging.page_index.or(req.page_index).unwrap_or(0);
    let page_size = paging
        .page_size
        .or(req.page_size)
        .unwrap_or(DEFAULT_PAGE_SIZE);
    let (total, things) = state.things.query(&q, page_index, page_size).await?;
    Ok(ok(iothub_spec::payload::Page {
        total,
        content: things.into_iter().map(Thing::from).collect::<Vec<_>>(),
    }))
}
