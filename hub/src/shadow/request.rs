//! Validation of shadow request payloads (S-3.3, S-3.8, S-3.9, S-4): untrusted bytes in, a typed
//! request or a [`ShadowError`] with its protocol code out.
//!
//! Checks run cheapest-first and never hand a payload to a recursive parser before its nesting
//! depth is known to be within the limit: size (413), UTF-8 (415), depth (400, by the
//! non-recursive [`json_depth_exceeds`]), JSON syntax (400), then types (400). Every error
//! echoes the request's `clientToken` when it can be recovered (docs/spec.md S-4.2): once
//! the JSON parsed, its top-level string `clientToken` of at most the limit; before that (413,
//! 415, depth, syntax), what the spec's allocation-free [`scan::client_token`] finds.

use serde_json::{Map, Value};

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::{Limits, json_depth_exceeds};
use iothub_spec::payload::field;
use iothub_spec::scan;

use super::ShadowError;

/// What a request does to one section (`desired` or `reported`).
#[derive(Debug, Clone, PartialEq)]
pub enum SectionPatch {
    /// `"desired": null`: delete the whole section and its metadata.
    Clear,
    /// `"desired": {..}`: merge these keys (S-3.4).
    Merge(Map<String, Value>),
}

/// A validated `update` request (S-3.3).
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    /// The request's `state` object as sent, echoed in `update/accepted` (S-3.5).
    pub state: Value,
    /// The `desired` section, if present.
    pub desired: Option<SectionPatch>,
    /// The `reported` section, if present.
    pub reported: Option<SectionPatch>,
    /// The request's `clientToken` (S-4).
    pub client_token: Option<String>,
    /// The expected current version, if given (S-3.4).
    pub version: Option<u64>,
}

/// A validated `get` request (S-2, S-4).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GetRequest {
    /// The request's `clientToken` (S-4).
    pub client_token: Option<String>,
}

fn bad(message: impl Into<String>, client_token: Option<String>) -> ShadowError {
    ShadowError::new(ErrorCode::BadRequest, message).with_client_token(client_token)
}

/// Size, UTF-8, depth and syntax checks shared by every request; `Ok(None)` for a payload that
/// is empty or only whitespace.
fn parse_json(payload: &[u8], limits: &Limits) -> Result<Option<Value>, ShadowError> {
    // Every refusal here happens before the document exists; the token still comes back.
    let refused = |code: ErrorCode, message: String| {
        ShadowError::new(code, message).with_client_token(client_token_of(payload, limits))
    };
    if payload.len() > limits.max_request_payload {
        return Err(refused(
            ErrorCode::PayloadTooLarge,
            format!(
                "payload of {} bytes is over the limit of {} bytes",
                payload.len(),
                limits.max_request_payload
            ),
        ));
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return Err(refused(
            ErrorCode::UnsupportedMediaType,
            "payload is not valid utf-8".into(),
        ));
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    // Before serde_json: its parser recurses, so depth is checked by the spec's iterative scan.
    if json_depth_exceeds(payload, limits.max_json_depth) {
        return Err(refused(
            ErrorCode::BadRequest,
            format!("json nesting is deeper than {}", limits.max_json_depth),
        ));
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| refused(ErrorCode::BadRequest, format!("malformed json: {e}")))
}

/// The `clientToken` of a parsed request: `Ok(None)` when absent, `Err` when present but not a
/// string of at most `max_client_token` bytes (S-4.1).
fn client_token(obj: &Map<String, Value>, limits: &Limits) -> Result<Option<String>, ShadowError> {
    match obj.get(field::CLIENT_TOKEN) {
        None => Ok(None),
        Some(Value::String(t)) if t.len() <= limits.max_client_token => Ok(Some(t.clone())),
        Some(Value::String(t)) => Err(bad(
            format!(
                "clientToken of {} bytes is over the limit of {} bytes",
                t.len(),
                limits.max_client_token
            ),
            None,
        )),
        Some(_) => Err(bad("clientToken must be a string", None)),
    }
}

/// The `clientToken` of any payload, recovered without parsing it (docs/spec.md S-4.2): for
/// error replies produced before, or instead of, full validation (413, 415, 400 for depth or
/// syntax, 429, 503). `None` when [`scan::client_token`] finds none, or the token decodes to
/// more than the limit or is not a valid JSON string.
pub fn client_token_of(payload: &[u8], limits: &Limits) -> Option<String> {
    let raw = scan::client_token(payload, limits.max_client_token)?;
    let token = if raw.contains('\\') {
        // Escaped: decode the (bounded) string alone, not the document.
        serde_json::from_str::<String>(&format!("\"{raw}\"")).ok()?
    } else {
        raw.to_owned()
    };
    (token.len() <= limits.max_client_token).then_some(token)
}

/// Validates a `get` payload. An empty payload means `{}` (S-3.8, as AWS).
pub fn parse_get(payload: &[u8], limits: &Limits) -> Result<GetRequest, ShadowError> {
    match parse_json(payload, limits)? {
        None => Ok(GetRequest::default()),
        Some(Value::Object(obj)) => Ok(GetRequest {
            client_token: client_token(&obj, limits)?,
        }),
        Some(_) => Err(bad("get request must be a json object", None)),
    }
}

/// Validates an `update` payload (S-3.3). An empty payload is a 400 (S-3.8, stricter than tio).
///
/// Unknown keys, at the top level or inside `state`, are ignored (docs/spec.md D-9), but
/// `state` must hold `desired` or `reported`, so `{"state":{"delta":..}}` is a 400.
pub fn parse_update(payload: &[u8], limits: &Limits) -> Result<UpdateRequest, ShadowError> {
    let Some(value) = parse_json(payload, limits)? else {
        return Err(bad("empty update payload", None));
    };
    let Value::Object(mut obj) = value else {
        return Err(bad("update request must be a json object", None));
    };
    let token = client_token(&obj, limits)?;
    let version = match obj.get(field::VERSION) {
        None => None,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(_) => {
            return Err(bad("version must be a non-negative integer", token));
        }
    };
    let state = match obj.remove(field::STATE) {
        None | Some(Value::Null) => return Err(bad("update request has no state", token)),
        Some(state @ Value::Object(_)) => state,
        Some(_) => return Err(bad("state must be a json object", token)),
    };
    let Value::Object(sections) = &state else {
        return Err(bad("state must be a json object", token));
    };
    let section = |name: &str| -> Result<Option<SectionPatch>, ShadowError> {
        match sections.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(SectionPatch::Clear)),
            Some(Value::Object(m)) => Ok(Some(SectionPatch::Merge(m.clone()))),
            Some(_) => Err(bad(
                format!("state.{name} must be a json object or null"),
                token.clone(),
            )),
        }
    };
    let desired = section(field::DESIRED)?;
    let reported = section(field::REPORTED)?;
    if desired.is_none() && reported.is_none() {
        return Err(bad("state has neither desired nor reported", token));
    }
    Ok(UpdateRequest {
        state,
        desired,
        reported,
        client_token: token,
        version,
    })
}

/// What a thing's own update over MQTT means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceUpdates {
    /// As S-3.3/S-3.4 say: a thing may write both sections, `"version": 0` means "only if the
    /// shadow does not exist yet" (docs/spec.md D-13).
    #[default]
    Spec,
    /// As tio does (`--tio-compat`, docs/tio-compatibility.md): a thing writes `reported`
    /// only, its `desired` section is ignored, and `"version": 0` means "no version check".
    /// tio's Go clients send `"desired": null` and `"version": 0` with every report (its
    /// `shadow.StateReq` has no `omitempty`); read as S-3.3 says, each report would erase the
    /// desired state, or be refused with 409 once the shadow exists.
    Tio,
}

/// Validates an `update` payload that a thing published (S-3.3), read as `mode` says.
pub fn parse_device_update(
    payload: &[u8],
    limits: &Limits,
    mode: DeviceUpdates,
) -> Result<UpdateRequest, ShadowError> {
    let mut req = parse_update(payload, limits)?;
    if mode == DeviceUpdates::Tio {
        if req.version == Some(0) {
            req.version = None;
        }
        if req.desired.take().is_some()
            && let Value::Object(sections) = &mut req.state
        {
            sections.remove(field::DESIRED);
        }
        if req.reported.is_none() {
            return Err(bad(
                "a thing's update writes state.reported (tio compatibility)",
                req.client_token,
            ));
        }
    }
    Ok(req)
}

/// Validates a REST `PUT .../state/desired` body (S-9.3): an update request whose state holds
/// `desired` only. With [`DeviceUpdates::Tio`] the body of tio's Go `shadow.StateReq` reads as
/// tio reads it: `"reported": null` is ignored and `"version": 0` is no version check.
pub fn parse_desired_update(
    body: &[u8],
    limits: &Limits,
    mode: DeviceUpdates,
) -> Result<UpdateRequest, ShadowError> {
    let mut req = parse_update(body, limits)?;
    if mode == DeviceUpdates::Tio {
        if req.version == Some(0) {
            req.version = None;
        }
        if req.reported == Some(SectionPatch::Clear) {
            req.reported = None;
            if let Value::Object(sections) = &mut req.state {
                sections.remove(field::REPORTED);
            }
        }
    }
    if req.reported.is_some() || req.desired.is_none() {
        return Err(bad(
            "rest updates write state.desired only",
            req.client_token,
        ));
    }
    Ok(req)
}
