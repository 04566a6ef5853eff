//! A thing's page (`/console/things/{id}`): its record, its shadows (desired, reported, delta,
//! metadata, version) updated live, a form to set desired state, a form to invoke a direct method
//! and see the answer or the error code, and the thing's presence and lifecycle events.

use axum::Form;
use axum::extract::{Path, State};
use axum::response::Response;
use iothub_spec::payload::{ShadowDocument, ShadowState, UpdateRequest};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::login::csrf_refused;
use super::things::{Back, actions, connection_badge};
use super::{Notice, PageError, SignedIn, format_ms, layout};
use crate::api::schema::MethodResult;
use crate::api::{ApiError, AppState};

/// Shadow shown in the forms when the thing has none yet.
const DEFAULT_SHADOW: &str = "default";

/// The desired-state form.
#[derive(Deserialize)]
pub struct DesiredForm {
    /// Missing is refused like a wrong token (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    shadow: String,
    /// The `desired` object as JSON text.
    desired: String,
}

/// The method form.
#[derive(Deserialize)]
pub struct MethodForm {
    /// Missing is refused like a wrong token (403), not as a malformed form.
    #[serde(default)]
    csrf: String,
    method: String,
    /// The request's data as JSON text (empty: `null`).
    #[serde(default)]
    payload: String,
    /// Seconds to wait for the answer (empty: the default).
    #[serde(default)]
    timeout: String,
}

/// What a write left to show on the page.
#[derive(Default)]
struct Outcome {
    notice: Option<Notice>,
    method: Option<(String, Result<MethodResult, ApiError>)>,
}

/// `GET /console/things/{id}`.
pub async fn page(
    signed: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    render(&state, &signed, &id, Outcome::default()).await
}

/// `POST /console/things/{id}/desired`: the shadow pipeline's answer is shown on the page.
pub async fn set_desired(
    signed: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(f): Form<DesiredForm>,
) -> Result<Response, PageError> {
    if !signed.csrf_ok(&f.csrf) {
        return Ok(csrf_refused());
    }
    let notice = match desired_body(&f.desired) {
        Err(e) => Notice::Failed(e),
        Ok(body) => match state
            .shadows
            .update_desired(&id, f.shadow.trim(), &body)
            .await
        {
            Ok(_) => Notice::Done(format!("Desired state of '{}' accepted.", f.shadow.trim())),
            Err(e) => Notice::Failed(e.into()),
        },
    };
    let outcome = Outcome {
        notice: Some(notice),
        method: None,
    };
    render(&state, &signed, &id, outcome).await
}

/// The S-3.3 update body for a desired object given as JSON text.
fn desired_body(text: &str) -> Result<Vec<u8>, ApiError> {
    let desired: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("desired state is not JSON: {e}")))?;
    let req = UpdateRequest {
        state: ShadowState::<Value, (), ()> {
            desired: Some(desired),
            reported: None,
            delta: None,
        },
        client_token: None,
        version: None,
    };
    serde_json::to_vec(&req).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `POST /console/things/{id}/method`: waits for the device and shows its answer or the error.
pub async fn call_method(
    signed: SignedIn,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(f): Form<MethodForm>,
) -> Result<Response, PageError> {
    if !signed.csrf_ok(&f.csrf) {
        return Ok(csrf_refused());
    }
    let method = f.method.trim().to_owned();
    let result = match parse_method_form(&f) {
        Ok((data, timeout)) => {
            crate::api::methods::call(&state, &id, &method, data, timeout, None).await
        }
        Err(e) => Err(e),
    };
    let outcome = Outcome {
        notice: None,
        method: Some((method, result)),
    };
    render(&state, &signed, &id, outcome).await
}

fn parse_method_form(f: &MethodForm) -> Result<(Value, Option<f64>), ApiError> {
    let data = if f.payload.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&f.payload)
            .map_err(|e| ApiError::bad_request(format!("payload is not JSON: {e}")))?
    };
    let timeout = match f.timeout.trim() {
        "" => None,
        t => Some(
            t.parse::<f64>()
                .map_err(|_| ApiError::bad_request("timeout must be a number of seconds"))?,
        ),
    };
    Ok((data, timeout))
}

async fn render(
    state: &AppState,
    signed: &SignedIn,
    id: &str,
    outcome: Outcome,
) -> Result<Response, PageError> {
    let thing = state.things.get(id).await?;
    let names =
        state.store.shadow_names(id).await.map_err(|e| {
            ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        })?;
    let mut shadows = Vec::with_capacity(names.len());
    for name in &names {
        // A shadow deleted since the listing is simply not shown.
        if let Ok(doc) = state.shadows.get(id, name).await {
            shadows.push(shadow_section(name, &doc));
        }
    }
    let connected = state
        .console
        .events
        .is_connected(id)
        .unwrap_or(thing.connected);
    let first = names.first().map_or(DEFAULT_SHADOW, String::as_str);
    let body = html! {
        h1 { "Thing " span #thing-id { (thing.thing_id) } " " (connection_badge(&thing.thing_id, connected)) }
        @if let Some(n) = &outcome.notice { (n.render()) }
        p {
            @if thing.enabled { "Enabled" } @else { span.off { "Disabled" } }
            ", created " (format_ms(thing.created_at)) ". "
            (actions(signed, &thing, Back::Thing))
        }
        h2 { "Shadows" }
        div #shadows {
            @for s in &shadows { (s) }
            @if shadows.is_empty() { p.hint #no-shadows { "No shadow yet: the device or the form below creates one." } }
        }
        div.columns {
            form #desired-form method="post" action=(format!("/console/things/{id}/desired")) {
                h3 { "Set desired state" }
                (signed.csrf_field())
                label for="shadow" { "Shadow" }
                input #shadow type="text" name="shadow" value=(first) required;
                label for="desired" { "Desired (JSON object; null deletes a key)" }
                textarea #desired name="desired" rows="6" required { "{}" }
                button #set-desired type="submit" { "Update desired" }
            }
            form #method-form method="post" action=(format!("/console/things/{id}/method")) {
                h3 { "Invoke a method" }
                (signed.csrf_field())
                label for="method" { "Method" }
                input #method type="text" name="method" required
                    value=[outcome.method.as_ref().map(|(m, _)| m.as_str())];
                label for="payload" { "Payload (JSON)" }
                textarea #payload name="payload" rows="4" { "{}" }
                label for="timeout" { "Timeout (s)" }
                input #timeout type="number" name="timeout" min="1" step="any" placeholder="default";
                button #invoke type="submit" { "Invoke" }
                @if let Some((_, result)) = &outcome.method { (method_result(result)) }
            }
        }
        h2 { "Events" }
        ul #activity { li.hint { "Presence and lifecycle events of this thing appear here as they happen." } }
    };
    Ok(layout(&format!("Thing {id}"), Some(signed), Some(id), body))
}

fn method_result(result: &Result<MethodResult, ApiError>) -> Markup {
    html! {
        div #method-result {
            @match result {
                Ok(r) => {
                    p.notice.ok { "Device answered code " span #method-code { (r.code) }
                        @if !r.message.is_empty() { ": " (r.message) } }
                    pre #method-data { (pretty(&r.data)) }
                }
                Err(e) => {
                    p.notice.error { "Error " span #method-code { (e.status.as_u16()) } ": " (e.message) }
                }
            }
        }
    }
}

/// One shadow's markup, sent again whole by the event stream when the shadow changes.
pub(crate) fn shadow_section(name: &str, doc: &Value) -> Markup {
    type Doc<'a> = ShadowDocument<'a, ShadowState<Value, Value, Value>, Value>;
    let parsed = Doc::deserialize(doc);
    html! {
        section.shadow id=(format!("shadow-{name}")) data-shadow=(name) {
            @match parsed {
                Ok(d) => {
                    h3 { (name) " " small { "version " span.version { (d.version) } } }
                    div.parts {
                        (part("desired", d.state.desired.as_ref()))
                        (part("reported", d.state.reported.as_ref()))
                        (part("delta", d.state.delta.as_ref()))
                        (part("metadata", Some(&d.metadata)))
                    }
                }
                // Not a document this console understands: show it as it is.
                Err(_) => { h3 { (name) } pre { (pretty(doc)) } }
            }
        }
    }
}

fn part(label: &str, value: Option<&Value>) -> Markup {
    html! {
        div.part data-part=(label) {
            h4 { (label) }
            pre { @match value { Some(v) => (pretty(v)), None => "—" } }
        }
    }
}

/// One row of the events list.
pub(crate) fn activity_row(thing: &str, kind: &str, payload: &str) -> Markup {
    let now = format_ms(crate::clock::now_ms());
    html! {
        li data-thing=(thing) { span.time { (now) } " " b { (kind) } " " code { (payload) } }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
