//! Registry routes (S-9.2) and tags (S-9.3): `/api/v1/things...`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, envelope, ok};
use super::schema::{
    BatchItem, BatchRequest, CreateThingRequest, CreatedThingView, Envelope, ListParams,
    NullEnvelope, Page, PatchThingRequest, TagsRequest, TagsView, Thing,
};
use crate::things::{CreateThing, MAX_BATCH};

/// Default `pageSize`.
pub const DEFAULT_PAGE_SIZE: u64 = 20;

fn to_create(r: CreateThingRequest) -> CreateThing {
    CreateThing {
        thing_id: r.thing_id,
        password: r.password,
        tags: r.tags.unwrap_or_default(),
    }
}

/// Creates a thing; its secret is in `password`, shown this once (S-1.6).
#[utoipa::path(post, path = "/api/v1/things", operation_id = "createThing", tag = "things",
    request_body = CreateThingRequest,
    responses(
        (status = 201, description = "Created; `password` is shown only now", body = Envelope<CreatedThingView>),
        (status = 400, description = "Invalid thingId, password or tags", body = NullEnvelope),
        (status = 409, description = "The thingId exists", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateThingRequest>,
) -> Result<Response, ApiError> {
    let created = state.things.create(to_create(req)).await?;
    Ok(envelope(
        StatusCode::CREATED,
        "created",
        CreatedThingView::from(created),
    ))
}

/// Creates up to 1000 things in one transaction, with one result per item.
#[utoipa::path(post, path = "/api/v1/things/batch", operation_id = "createThingsBatch", tag = "things",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Per-item results in request order", body = Envelope<Vec<BatchItem>>),
        (status = 400, description = "Not a list, or more than 1000 items", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create_batch(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<Response, ApiError> {
    let items = req.into_items();
    if items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_BATCH} things per batch"
        )));
    }
    let ids: Vec<Option<String>> = items.iter().map(|i| i.thing_id.clone()).collect();
    let results = state
        .things
        .create_batch(items.into_iter().map(to_create).collect())
        .await?;
    let out: Vec<BatchItem> = results
        .into_iter()
        .zip(ids)
        .map(|(r, requested)| match r {
            Ok(created) => BatchItem {
                code: StatusCode::CREATED.as_u16(),
                message: "created".into(),
                thing_id: Some(created.thing.thing_id.clone()),
                data: Some(created.into()),
            },
            Err(e) => BatchItem {
                code: e.status(),
                message: e.to_string(),
                thing_id: requested,
                data: None,
            },
        })
        .collect();
    Ok(ok(out))
}

/// Lists things in id order.
#[utoipa::path(get, path = "/api/v1/things", operation_id = "listThings", tag = "things",
    params(ListParams),
    responses(
        (status = 200, description = "One page", body = Envelope<Page<Thing>>),
        (status = 400, description = "Bad paging", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let (total, things) = state
        .things
        .list(
            p.page_index.unwrap_or(0),
            p.page_size.unwrap_or(DEFAULT_PAGE_SIZE),
            p.enabled,
        )
        .await?;
    Ok(ok(iothub_spec::payload::Page {
        total,
        content: things.into_iter().map(Thing::from).collect::<Vec<_>>(),
    }))
}

/// One thing with its connection status (never its secret).
#[utoipa::path(get, path = "/api/v1/things/{id}", operation_id = "getThing", tag = "things",
    params(("id" = String, Path, description = "thingId")),
    responses(
        (status = 200, description = "The thing", body = Envelope<Thing>),
        (status = 404, description = "No such thing", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn get_thing(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(ok(Thing::from(state.things.get(&id).await?)))
}

/// Enables or disables a thing; disabling closes its live connection (S-1.3).
#[utoipa::path(patch, path = "/api/v1/things/{id}", operation_id = "patchThing", tag = "things",
    params(("id" = String, Path, description = "thingId")),
    request_body = PatchThingRequest,
    responses(
        (status = 200, description = "The updated thing", body = Envelope<Thing>),
        (status = 400, description = "Bad body", body = NullEnvelope),
        (status = 404, description = "No such thing", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn patch(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PatchThingRequest>,
) -> Result<Response, ApiError> {
    Ok(ok(Thing::from(
        state.things.set_enabled(&id, req.enabled).await?,
    )))
}

/// Deletes a thing and its shadows and closes its live connection.
#[utoipa::path(delete, path = "/api/v1/things/{id}", operation_id = "deleteThing", tag = "things",
    params(("id" = String, Path, description = "thingId")),
    responses(
        (status = 200, description = "Deleted", body = NullEnvelope),
        (status = 404, description = "No such thing", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.things.delete(&id).await?;
    Ok(ok(()))
}

/// Sets tags (`null` deletes one); with `version`, only at that tags version.
#[utoipa::path(put, path = "/api/v1/things/{id}/tags", operation_id = "putThingTags", tag = "things",
    params(("id" = String, Path, description = "thingId")),
    request_body = TagsRequest,
    responses(
        (status = 200, description = "All tags and their new version", body = Envelope<TagsView>),
        (status = 400, description = "Bad body or tags too large", body = NullEnvelope),
        (status = 404, description = "No such thing", body = NullEnvelope),
        (status = 409, description = "Version mismatch", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn put_tags(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<TagsRequest>,
) -> Result<Response, ApiError> {
    let tags = state.things.update_tags(&id, req.tags, req.version).await?;
    Ok(ok(TagsView {
        tags: tags.tags,
        version: tags.version,
    }))
}

/// Deep-merges an RFC 7386 JSON merge-patch into the tags (D-42): objects merge, `null` deletes,
/// anything else replaces. The tags version, in `If-Match` or in `version`, is a precondition.
#[utoipa::path(patch, path = "/api/v1/things/{id}/tags", operation_id = "patchThingTags", tag = "things",
    params(
        ("id" = String, Path, description = "thingId"),
        ("If-Match" = Option<String>, Header, description = "The tags version the patch applies to, as the ETag `\"N\"` this route answers (or `*`)"),
    ),
    request_body = TagsRequest,
    responses(
        (status = 200, description = "All tags and their new version (also in `ETag`)", body = Envelope<TagsView>),
        (status = 400, description = "Bad body, bad If-Match, If-Match and version disagree, or the result is too large or too deep", body = NullEnvelope),
        (status = 404, description = "No such thing", body = NullEnvelope),
        (status = 409, description = "The tags version is not the one given", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn patch_tags(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<TagsRequest>,
) -> Result<Response, ApiError> {
    let version = match (if_match(&headers)?, req.version) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::bad_request(
                "If-Match and version name different tags versions",
            ));
        }
        (a, b) => a.or(b),
    };
    let tags = state.things.merge_tags(&id, req.tags, version).await?;
    let etag = HeaderValue::from_str(&format!("\"{}\"", tags.version))
        .map_err(|_| ApiError::bad_request("unrepresentable version"))?;
    let mut resp = ok(TagsView {
        tags: tags.tags,
        version: tags.version,
    });
    resp.headers_mut().insert(header::ETAG, etag);
    Ok(resp)
}

/// The tags version of an `If-Match` header: `"N"` (or `W/"N"`, or a bare `N`); `*` or no
/// header is no precondition. A list of several versions is refused: one write has one base.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(raw) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request("If-Match must be one tags version, as \"N\"");
    let text = raw.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    text.parse::<u64>().map(Some).map_err(|_| bad())
}
