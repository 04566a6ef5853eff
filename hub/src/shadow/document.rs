//! Reply payloads (S-3.2, S-3.5, S-3.6, S-3.7, S-3.8) built from [`Shadow`]s. Pure: `now` is a
//! parameter. The envelopes are the `iothub_spec::payload` structs with `serde_json::Value`
//! bodies; the bodies' keys come from `iothub_spec::payload::field`.

use serde::Serialize;
use serde_json::{Map, Value};

use iothub_spec::payload::{
    Delta, DocumentSnapshot, Documents, ErrorResponse, ShadowDocument, UpdateAccepted, field,
};

use super::merge::{delta, delta_metadata, written_metadata};
use super::request::UpdateRequest;
use super::{Shadow, ShadowError};

fn insert_nonempty(out: &mut Map<String, Value>, key: &str, section: &Map<String, Value>) {
    if !section.is_empty() {
        out.insert(key.into(), Value::Object(section.clone()));
    }
}

/// Serializes a spec payload struct. These structs hold only strings, integers and
/// `serde_json::Value`s, which always serialize; `Null` is unreachable in practice.
fn to_value(payload: &impl Serialize) -> Value {
    serde_json::to_value(payload).unwrap_or(Value::Null)
}

/// `{"desired":..,"reported":..}` with empty sections omitted.
pub fn state_object(shadow: &Shadow) -> Map<String, Value> {
    let mut state = Map::new();
    insert_nonempty(&mut state, field::DESIRED, &shadow.desired);
    insert_nonempty(&mut state, field::REPORTED, &shadow.reported);
    state
}

/// `{"desired":..,"reported":..}` of the metadata, with empty sections omitted.
pub fn metadata_object(shadow: &Shadow) -> Map<String, Value> {
    let mut meta = Map::new();
    insert_nonempty(&mut meta, field::DESIRED, &shadow.metadata_desired);
    insert_nonempty(&mut meta, field::REPORTED, &shadow.metadata_reported);
    meta
}

/// The storage body (hub contract): `{"state":{..},"metadata":{..}}`, empty sections omitted.
pub fn body_object(shadow: &Shadow) -> Value {
    let mut out = Map::new();
    out.insert(field::STATE.into(), Value::Object(state_object(shadow)));
    out.insert(
        field::METADATA.into(),
        Value::Object(metadata_object(shadow)),
    );
    Value::Object(out)
}

/// The shadow document of `get/accepted` and REST `GET` (S-3.2): state with delta, metadata,
/// version, timestamp and the request's clientToken. Empty sections are omitted; `state` and
/// `metadata` themselves are always present (possibly `{}`).
pub fn get_document(shadow: &Shadow, now: u64, client_token: Option<&str>) -> Value {
    let mut state = state_object(shadow);
    insert_nonempty(&mut state, field::DELTA, &delta(shadow));
    to_value(&ShadowDocument {
        state: Value::Object(state),
        metadata: Value::Object(metadata_object(shadow)),
        version: shadow.version,
        timestamp: now,
        client_token,
    })
}

/// One side of `update/documents` (S-3.7): state (no delta), metadata and version.
pub fn snapshot(shadow: &Shadow) -> DocumentSnapshot<Value, Value> {
    DocumentSnapshot {
        state: Value::Object(state_object(shadow)),
        metadata: Value::Object(metadata_object(shadow)),
        version: shadow.version,
    }
}

/// The three payloads an accepted update produces.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateReplies {
    /// `update/accepted` (S-3.5).
    pub accepted: Value,
    /// `update/delta` (S-3.6), when the request wrote `desired` and the delta is not empty.
    pub delta: Option<Value>,
    /// `update/documents` (S-3.7).
    pub documents: Value,
}

/// Builds the replies to `req`, which turned `previous` into `current` (see
/// [`apply_update`](super::apply_update)).
///
/// `update/accepted` echoes the request's state and stamps every key it wrote, `null`s included
/// (S-3.5). `update/delta` is the full current delta, present only when the request had a
/// `desired` section and the delta is not empty (S-3.6). `update/documents` omits `previous` when
/// the update created the shadow (S-3.7, docs/spec.md D-3).
pub fn update_replies(
    previous: &Shadow,
    current: &Shadow,
    req: &UpdateRequest,
    now: u64,
) -> UpdateReplies {
    update_replies_with(previous, current, req, now, true)
}

/// [`update_replies`], building `update/documents` only when `with_documents` (otherwise it is
/// `Null`): the hub skips it when nobody subscribes to that topic.
pub fn update_replies_with(
    previous: &Shadow,
    current: &Shadow,
    req: &UpdateRequest,
    now: u64,
    with_documents: bool,
) -> UpdateReplies {
    let client_token = req.client_token.as_deref();

    let mut metadata = Map::new();
    for name in [field::DESIRED, field::REPORTED] {
        if let Some(section) = req.state.get(name) {
            metadata.insert(name.into(), written_metadata(section, now));
        }
    }
    let accepted = to_value(&UpdateAccepted {
        state: req.state.clone(),
        metadata: Value::Object(metadata),
        version: current.version,
        timestamp: now,
        client_token,
    });

    let current_delta = delta(current);
    let delta = (req.desired.is_some() && !current_delta.is_empty()).then(|| {
        let metadata = delta_metadata(&current_delta, &current.metadata_desired);
        to_value(&Delta {
            state: Value::Object(current_delta),
            metadata: Value::Object(metadata),
            version: current.version,
            timestamp: now,
            client_token,
        })
    });

    let documents = if with_documents {
        to_value(&Documents {
            previous: previous.exists().then(|| snapshot(previous)),
            current: snapshot(current),
            timestamp: now,
            client_token,
        })
    } else {
        Value::Null
    };

    UpdateReplies {
        accepted,
        delta,
        documents,
    }
}

/// The error payload of `get/rejected` and `update/rejected` (S-3.8).
pub fn error_payload(err: &ShadowError, now: u64) -> Value {
    to_value(&ErrorResponse {
        code: err.code.as_u16(),
        message: &err.message,
        timestamp: now,
        client_token: err.client_token.as_deref(),
    })
}
