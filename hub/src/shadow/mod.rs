//! Shadows (docs/spec.md S-3, S-4): the pure core and the service that drives it.
//!
//! The submodules split the work as the rest of the hub does, sans-IO core first:
//! - [`request`] validates untrusted request payloads into typed requests or a [`ShadowError`];
//! - [`merge`] is the merge (S-3.4), metadata and delta (S-3.6) arithmetic on JSON maps;
//! - [`document`] builds every reply payload (S-3.2, S-3.5–S-3.8);
//! - this module ties them together in [`apply_update`], still without I/O or clock: `now` is a
//!   parameter;
//! - [`service`] is the only part that does I/O: the ordered apply/commit/reply pipeline.
//!
//! # Decisions
//! Where S-3 is silent, this module follows the decisions of docs/spec.md, written there once:
//! D-3 (the first `update/documents`), D-9 (unknown fields), D-12 (the named-shadow quota,
//! enforced by the [`service`]), D-13 (versions, a missing shadow at version 0), D-14 (empty
//! objects), D-16 (deleting resets the version), D-17 (what the state size measures), D-18 (when
//! a delta is published), D-19 (metadata of `update/accepted`).

mod apply;
pub mod document;
pub mod merge;
mod pipeline;
mod reply;
pub mod request;
pub mod service;

use serde_json::{Map, Value};

use iothub_spec::code::ErrorCode;
use iothub_spec::limits::Limits;
use iothub_spec::payload::field;

pub use document::{
    UpdateReplies, error_payload, get_document, update_replies, update_replies_with,
};
pub use merge::{delta, json_eq};
pub use request::{
    DeviceUpdates, GetRequest, SectionPatch, UpdateRequest, parse_device_update, parse_get,
    parse_update,
};
pub use service::ShadowService;

/// One shadow in memory: both sections, their metadata mirrors and the version.
///
/// `version == 0` means the shadow does not exist (never written, or deleted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shadow {
    /// `state.desired`.
    pub desired: Map<String, Value>,
    /// `state.reported`.
    pub reported: Map<String, Value>,
    /// `metadata.desired`: mirrors `desired` with a `{"timestamp": ms}` leaf per scalar/array.
    pub metadata_desired: Map<String, Value>,
    /// `metadata.reported`: mirrors `reported` likewise.
    pub metadata_reported: Map<String, Value>,
    /// The version of the last accepted update; 0 when the shadow does not exist.
    pub version: u64,
}

/// A stored shadow body that is not the layout the hub writes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// Not JSON.
    #[error("stored shadow body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but a section is not an object.
    #[error("stored shadow body has a malformed {0} section")]
    Layout(&'static str),
}

impl Shadow {
    /// The storage body (layout in the hub contract): `{"state":..,"metadata":..}`.
    pub fn to_body(&self) -> String {
        document::body_object(self).to_string()
    }

    /// Reads a body written by [`Shadow::to_body`] (or by another implementation using the same
    /// layout) at the version the store recorded.
    pub fn from_body(body: &str, version: u64) -> Result<Shadow, BodyError> {
        let value: Value = serde_json::from_str(body)?;
        let section = |outer: &'static str, inner: &'static str| -> Result<_, BodyError> {
            match value.get(outer).and_then(|o| o.get(inner)) {
                None | Some(Value::Null) => Ok(Map::new()),
                Some(Value::Object(m)) => Ok(m.clone()),
                Some(_) => Err(BodyError::Layout(inner)),
            }
        };
        Ok(Shadow {
            desired: section(field::STATE, field::DESIRED)?,
            reported: section(field::STATE, field::REPORTED)?,
            metadata_desired: section(field::METADATA, field::DESIRED)?,
            metadata_reported: section(field::METADATA, field::REPORTED)?,
            version,
        })
    }

    /// Whether the shadow exists (has been written and not deleted).
    pub fn exists(&self) -> bool {
        self.version > 0
    }

    /// Size in bytes of the compact JSON of `{"desired":..,"reported":..}`, the quantity
    /// `max_state_bytes` bounds (S-3.9).
    pub fn state_bytes(&self) -> usize {
        Value::Object(document::state_object(self))
            .to_string()
            .len()
    }
}

/// A shadow operation as it arrives on MQTT (S-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShadowOp {
    /// `S/get`.
    Get,
    /// `S/update`.
    Update,
}

/// A rejected shadow request: the S-3.8 error with its code, for MQTT `*/rejected` replies and
/// REST errors alike.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ShadowError {
    /// The protocol's code (400, 404, 409, 413, 415, 429, 500, 503).
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
    /// The request's clientToken, when it was readable (S-3.8).
    pub client_token: Option<String>,
}

impl ShadowError {
    /// An error without clientToken.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ShadowError {
        ShadowError {
            code,
            message: message.into(),
            client_token: None,
        }
    }

    /// The same error echoing `client_token`.
    pub fn with_client_token(mut self, client_token: Option<String>) -> ShadowError {
        self.client_token = client_token;
        self
    }
}

/// Applies a validated update to `current` (version 0 = does not exist) at time `now`:
/// the version check (409), the merge (S-3.4) and the state-size limit (413).
///
/// On error nothing changes. On success returns the new shadow at `current.version + 1`; build
/// its replies with [`update_replies`].
pub fn apply_update(
    current: &Shadow,
    req: &UpdateRequest,
    limits: &Limits,
    now: u64,
) -> Result<Shadow, ShadowError> {
    let token = || req.client_token.clone();
    if let Some(expected) = req.version
        && expected != current.version
    {
        return Err(ShadowError::new(
            ErrorCode::Conflict,
            format!(
                "version conflict: request has {expected}, shadow is at {}",
                current.version
            ),
        )
        .with_client_token(token()));
    }
    let Some(version) = current.version.checked_add(1) else {
        return Err(
            ShadowError::new(ErrorCode::Internal, "version overflow").with_client_token(token())
        );
    };
    let mut next = current.clone();
    next.version = version;
    apply_section(
        &mut next.desired,
        &mut next.metadata_desired,
        req.desired.as_ref(),
        now,
    );
    apply_section(
        &mut next.reported,
        &mut next.metadata_reported,
        req.reported.as_ref(),
        now,
    );
    let size = next.state_bytes();
    if size > limits.max_state_bytes {
        return Err(ShadowError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "resulting state of {size} bytes is over the limit of {} bytes",
                limits.max_state_bytes
            ),
        )
        .with_client_token(token()));
    }
    Ok(next)
}

fn apply_section(
    state: &mut Map<String, Value>,
    metadata: &mut Map<String, Value>,
    patch: Option<&SectionPatch>,
    now: u64,
) {
    match patch {
        None => {}
        Some(SectionPatch::Clear) => {
            state.clear();
            metadata.clear();
        }
        Some(SectionPatch::Merge(p)) => merge::merge_section(state, metadata, p, now),
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;
