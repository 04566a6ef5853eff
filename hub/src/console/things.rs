//! The things page (`/`): list and S-9.4 search, live connected state, create (the secret is
//! shown once, on the answer to the create form), enable, disable, delete.

use axum::Form;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::login::csrf_refused;
use super::{Notice, PageError, SignedIn, format_ms, layout};
use crate::api::{ApiError, AppState};
use crate::query::ThingQuery;
use crate::store::ThingRecord;
use crate::things::{CreateThing, CreatedThing};

/// Things per page.
pub const PAGE_SIZE: u64 = 50;

/// `?q=` (an S-9.4 query) and `?page=` (0-based).
#[derive(Deserialize, Default)]
pub struct ListParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: u64,
}

/// The create form: an optional id (generated when empty).
#[derive(Deserialize)]
pub struct CreateForm {
    /// Missing is refused like a wrong token (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    thing_id: String,
}

/// The enable/disable form; `back` says which page to return to.
#[derive(Deserialize)]
pub struct EnabledForm {
    /// Missing is refused like a wrong token (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    enabled: bool,
    #[serde(default)]
    back: Back,
}

/// The delete form.
#[derive(Deserialize)]
pub struct DeleteForm {
    /// Missing is refused like a wrong token (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
}

/// Where a form returns to: never a URL from the form, so there is no open redirect.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Back {
    /// The things list.
    #[default]
    List,
    /// The thing's own page.
    Thing,
}

/// `GET /`.
pub async fn page(
    signed: SignedIn,
    State(state): State<AppState>,
    Query(p): Query<ListParams>,
) -> Response {
    render(&state, &signed, &p, None, None).await
}

/// `POST /console/things`: creates a thing and shows the list with its secret, this once.
pub async fn create(
    signed: SignedIn,
    State(state): State<AppState>,
    Form(f): Form<CreateForm>,
) -> Response {
    if !signed.csrf_ok(&f.csrf) {
        return csrf_refused();
    }
    let id = f.thing_id.trim();
    let req = CreateThing {
        thing_id: (!id.is_empty()).then(|| id.to_owned()),
        ..CreateThing::default()
    };
    let params = ListParams::default();
    match state.things.create(req).await {
        Ok(created) => render(&state, &signed, &params, None, Some(&created)).await,
        Err(e) => {
            let notice = Notice::Failed(e.into());
            render(&state, &signed, &params, Some(notice), None).await
        }
    }
}

/// `POST /console/things/{id}/enabled`.
pub async fn set_enabled(
    signed: SignedIn,
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Form(f): Form<EnabledForm>,
) -> Result<Response, PageError> {
    if !signed.csrf_ok(&f.csrf) {
        return Ok(csrf_refused());
    }
    state.things.set_enabled(&id, f.enabled).await?;
    Ok(match f.back {
        Back::List => Redirect::to("/"),
        Back::Thing => Redirect::to(&format!("/console/things/{id}")),
    }
    .into_response())
}

/// `POST /console/things/{id}/delete`.
pub async fn delete(
    signed: SignedIn,
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    Form(f): Form<DeleteForm>,
) -> Result<Response, PageError> {
    if !signed.csrf_ok(&f.csrf) {
        return Ok(csrf_refused());
    }
    state.things.delete(&id).await?;
    Ok(Redirect::to("/").into_response())
}

async fn render(
    state: &AppState,
    signed: &SignedIn,
    p: &ListParams,
    notice: Option<Notice>,
    created: Option<&CreatedThing>,
) -> Response {
    let (notice, listed) = match load(state, p).await {
        Ok(listed) => (notice, Some(listed)),
        Err(e) => (Some(Notice::Failed(e)), None),
    };
    let body = html! {
        h1 { "Things" }
        @if let Some(n) = &notice { (n.render()) }
        @if let Some(c) = created {
            div.notice.ok #created {
                p { "Created " a href=(format!("/console/things/{}", c.thing.thing_id)) #created-id { (c.thing.thing_id) } "." }
                p { "Its secret, shown only this once: " code #secret { (c.password) } }
            }
        }
        div.toolbar {
            form #search method="get" action="/" {
                input #q type="search" name="q" value=(p.q) placeholder="S-9.4 query, e.g. SELECT * FROM things WHERE tags.site = 'lab'" size="60";
                button type="submit" { "Search" }
            }
            form #create method="post" action="/console/things" {
                (signed.csrf_field())
                input #new-thing-id type="text" name="thing_id" placeholder="thingId (empty: generated)" pattern="[0-9A-Za-z_\\-]{1,64}";
                button #create-thing type="submit" { "Create thing" }
            }
        }
        @if let Some((total, things)) = &listed {
            p.hint { (total) " things" @if !p.q.is_empty() { " match" } "." }
            table #things {
                thead { tr { th { "thingId" } th { "state" } th { "connection" } th { "last change" } th { "created" } th {} } }
                tbody {
                    @for t in things { (row(state, signed, t)) }
                }
            }
            (pager(p, *total))
        }
    };
    layout("Things", Some(signed), Some(""), body)
}

async fn load(state: &AppState, p: &ListParams) -> Result<(u64, Vec<ThingRecord>), ApiError> {
    let q = p.q.trim();
    if q.is_empty() {
        Ok(state.things.list(p.page, PAGE_SIZE, None).await?)
    } else {
        let query = ThingQuery::parse(q)
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
        Ok(state.things.query(&query, p.page, PAGE_SIZE).await?)
    }
}

fn row(state: &AppState, signed: &SignedIn, t: &ThingRecord) -> Markup {
    let connected = state
        .console
        .events
        .is_connected(&t.thing_id)
        .unwrap_or(t.connected);
    let last = t.connected_at.max(t.disconnected_at);
    html! {
        tr data-row=(t.thing_id) {
            td { a href=(format!("/console/things/{}", t.thing_id)) { (t.thing_id) } }
            td { @if t.enabled { "enabled" } @else { span.off { "disabled" } } }
            td { (connection_badge(&t.thing_id, connected)) }
            td { @if let Some(ms) = last { (format_ms(ms)) } }
            td { (format_ms(t.created_at)) }
            td.actions { (actions(signed, t, super::things::Back::List)) }
        }
    }
}

/// The live connected/disconnected badge of a thing (the script updates it from events).
pub(crate) fn connection_badge(thing: &str, connected: bool) -> Markup {
    html! {
        span.conn.on[connected].off[!connected] data-conn=(thing) {
            @if connected { "connected" } @else { "disconnected" }
        }
    }
}

/// Enable/disable and delete buttons.
pub(crate) fn actions(signed: &SignedIn, t: &ThingRecord, back: Back) -> Markup {
    let back = match back {
        Back::List => "list",
        Back::Thing => "thing",
    };
    html! {
        form.inline method="post" action=(format!("/console/things/{}/enabled", t.thing_id)) {
            (signed.csrf_field())
            input type="hidden" name="back" value=(back);
            input type="hidden" name="enabled" value=(if t.enabled { "false" } else { "true" });
            button type="submit" { @if t.enabled { "Disable" } @else { "Enable" } }
        }
        form.inline.confirm method="post" action=(format!("/console/things/{}/delete", t.thing_id)) {
            (signed.csrf_field())
            button.danger type="submit" { "Delete" }
        }
    }
}

fn pager(p: &ListParams, total: u64) -> Markup {
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let link = |page: u64| {
        let mut url = format!("/?page={page}");
        if !p.q.is_empty() {
            url.push_str("&q=");
            url.push_str(&url_encode(&p.q));
        }
        url
    };
    html! {
        @if pages > 1 {
            p.pager {
                @if p.page > 0 { a href=(link(p.page - 1)) { "← previous" } " " }
                "page " (p.page + 1) " of " (pages)
                @if p.page + 1 < pages { " " a href=(link(p.page + 1)) { "next →" } }
            }
        }
    }
}

/// Percent-encodes a query-string value (every byte but unreserved ones).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(super::url_encode("a b&c='x'"), "a%20b%26c%3D%27x%27");
    }
}
