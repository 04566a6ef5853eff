//! Validation of shadow request payloads (S-3.3, S-3.8, S-3.9, S-4): untrusted bytes in, a typed
//! request or a [`ShadowError`] with its protocol code out.
//!
//! Checks run cheapest-first and never hand a payload to a recursive parser before its nesting
//! depth is known to be within the limit: size (413), UTF-8 (415), depth (400, by the
//! non-recursive [`json_depth_exceeds`]), JSON syntax (400), then types (400). Once the JSON
//! parsed, a string `clientToken` of at most the limit is echoed in the error even when something
//! else in the request is wrong.

use serde_json::{Map, Value};

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::{Limits, json_depth_exceeds};
use iothub_spec::payload::field;

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
    if payload.len() > limits.max_request_payload {
        return Err(ShadowError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "payload of {} bytes is over the limit of {} bytes",
                payload.len(),
                limits.max_request_payload
            ),
        ));
    }
    let text = std::str::from_utf8(payload).map_err(|_| {
        ShadowError::new(
            ErrorCode::UnsupportedMediaType,
            "payload is not valid utf-8",
        )
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    // Before serde_json: its parser recurses, so depth is checked by the spec's iterative scan.
    if json_depth_exceeds(payload, limits.max_json_depth) {
        return Err(bad(
            format!("json nesting is deeper than {}", limits.max_json_depth),
            None,
        ));
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| bad(format!("malformed json: {e}"), None))
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

/// Best-effort `clientToken` of any payload, for error replies produced before (or without)
/// full validation, e.g. 429 (S-3.8). `None` when the payload fails the size, UTF-8, depth or
/// syntax checks or has no valid token.
pub fn client_token_of(payload: &[u8], limits: &Limits) -> Option<String> {
    match parse_json(payload, limits) {
        Ok(Some(Value::Object(obj))) => client_token(&obj, limits).ok().flatten(),
        _ => None,
    }
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

/// Validates a REST `PUT .../state/desired` body (S-9.3): an update request whose state holds
/// `desired` only.
pub fn parse_desired_update(body: &[u8], limits: &Limits) -> Result<UpdateRequest, ShadowError> {
    let req = parse_update(body, limits)?;
    if req.reported.is_some() || req.desired.is_none() {
        return Err(bad(
            "rest updates write state.desired only",
            req.client_token,
        ));
    }
    Ok(req)
}
