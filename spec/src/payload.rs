//! Every JSON message body of S-3 .. S-9 (docs/spec.md), as serde structs with the exact field
//! names of the wire.
//!
//! Strings are borrowed from the received bytes (`&'a str`), so parsing allocates nothing; JSON
//! bodies whose shape is application-defined (shadow state, metadata, method data) are generic
//! parameters: std users plug `serde_json::Value`, `no_std` users plug typed structs, and both
//! encode and decode with the same struct. Optional fields are omitted when `None` and read as
//! `None` when absent or `null`.
//!
//! ```
//! use iothub_spec::payload::NtpResponse;
//! let (resp, _): (NtpResponse, _) = serde_json_core::from_str(
//!     r#"{"clientSendTime":1000,"serverRecvTime":1600,"serverSendTime":1602}"#,
//! ).unwrap();
//! assert_eq!(resp.round_trip_ms(1202), 200);
//! assert_eq!(resp.now_ms(1202), 1702);
//! ```
//!
//! Code that must address fields inside untyped JSON (the hub's merge over `serde_json::Value`)
//! takes the names from [`field`].

use serde::{Deserialize, Serialize};

use crate::code::{ErrorCode, LifecycleOp, OtaStatus, PresenceEventType};

/// The JSON field names of the wire, for code that works on untyped JSON.
///
/// No other crate spells a field name; use these constants instead.
pub mod field {
    /// `state` (S-3.2, S-3.3).
    pub const STATE: &str = "state";
    /// `desired` (S-3.1).
    pub const DESIRED: &str = "desired";
    /// `reported` (S-3.1).
    pub const REPORTED: &str = "reported";
    /// `delta` (S-3.2, S-3.6).
    pub const DELTA: &str = "delta";
    /// `metadata` (S-3.1).
    pub const METADATA: &str = "metadata";
    /// `version` (S-3.1, S-3.4).
    pub const VERSION: &str = "version";
    /// `timestamp`, milliseconds since the epoch; also the metadata leaf `{"timestamp": ms}`.
    pub const TIMESTAMP: &str = "timestamp";
    /// `clientToken` (S-4).
    pub const CLIENT_TOKEN: &str = "clientToken";
    /// `previous` of update/documents (S-3.7).
    pub const PREVIOUS: &str = "previous";
    /// `current` of update/documents (S-3.7).
    pub const CURRENT: &str = "current";
    /// `code` of errors, method responses and REST bodies.
    pub const CODE: &str = "code";
    /// `message` of errors, method responses and REST bodies.
    pub const MESSAGE: &str = "message";
    /// `data` of method requests and responses and REST bodies.
    pub const DATA: &str = "data";
    /// `clientSendTime` (S-6).
    pub const CLIENT_SEND_TIME: &str = "clientSendTime";
    /// `serverRecvTime` (S-6).
    pub const SERVER_RECV_TIME: &str = "serverRecvTime";
    /// `serverSendTime` (S-6).
    pub const SERVER_SEND_TIME: &str = "serverSendTime";
    /// `taskId` (S-7).
    pub const TASK_ID: &str = "taskId";
    /// `type` of an OTA task (S-7.1).
    pub const TYPE: &str = "type";
    /// `meta` of an OTA task (S-7.1).
    pub const META: &str = "meta";
    /// `fileUrl` of an OTA task (S-7.1).
    pub const FILE_URL: &str = "fileUrl";
    /// `md5` of an OTA task's `meta` (S-7.1); its `version` is [`VERSION`].
    pub const MD5: &str = "md5";
    /// `sha256` of an OTA task's `meta` (S-7.1).
    pub const SHA256: &str = "sha256";
    /// `content-type` of an OTA task's `meta` (S-7.1).
    pub const CONTENT_TYPE: &str = "content-type";
    /// `content-length` of an OTA task's `meta` (S-7.1).
    pub const CONTENT_LENGTH: &str = "content-length";
    /// `status` of an OTA result (S-7.2).
    pub const STATUS: &str = "status";
    /// `progress` of an OTA result (S-7.2).
    pub const PROGRESS: &str = "progress";
    /// `errCode` of an OTA result (S-7.2).
    pub const ERR_CODE: &str = "errCode";
    /// `errMsg` of an OTA result (S-7.2).
    pub const ERR_MSG: &str = "errMsg";
    /// `thingId` (S-8, S-9).
    pub const THING_ID: &str = "thingId";
    /// `clientId` of a presence event (S-8.1).
    pub const CLIENT_ID: &str = "clientId";
    /// `eventType` of a presence event (S-8.1).
    pub const EVENT_TYPE: &str = "eventType";
    /// `remoteAddr` of a presence event (S-8.1).
    pub const REMOTE_ADDR: &str = "remoteAddr";
    /// `disconnectReason` of a presence event (S-8.1).
    pub const DISCONNECT_REASON: &str = "disconnectReason";
    /// `op` of a lifecycle event (S-8.3).
    pub const OP: &str = "op";
    /// `tags` of a thing (S-9.2, S-9.3).
    pub const TAGS: &str = "tags";
    /// `total` of a page (S-9.2).
    pub const TOTAL: &str = "total";
    /// `content` of a page (S-9.2).
    pub const CONTENT: &str = "content";
    /// `attributes` of a provisioning request (S-10.2), also the tag the hub keeps them under.
    pub const ATTRIBUTES: &str = "attributes";
    /// `serial` of a provisioning request (S-10.2), also the tag the hub keeps it under.
    pub const SERIAL: &str = "serial";
    /// The tag naming the enrollment a thing was provisioned under (S-10.4).
    pub const ENROLLMENT: &str = "enrollment";
}

/// `S/get` request body (S-3.2, S-4): `{"clientToken"?}`.
///
/// An empty payload means `{}`. Hubs may also parse any failed request as this type to recover a
/// readable `clientToken` for the error reply (unknown fields are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetRequest<'a> {
    /// Echoed in the reply; at most 64 bytes.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
}

/// `S/update` request body (S-3.3): `{"state":{..},"clientToken"?,"version"?}`.
///
/// `S` is the state object, typically [`ShadowState`] with the delta type unused, or
/// `serde_json::Value`. To clear a whole section, `S` must be able to write `"desired": null`
/// (e.g. `serde_json::Value`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRequest<'a, S> {
    /// `{"desired"?:{..}|null,"reported"?:{..}|null}`; at least one section.
    pub state: S,
    /// Echoed in the replies; at most 64 bytes.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
    /// Expected current version; a mismatch is refused with 409 (S-3.4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// The `state` object of documents and requests: `{"desired"?,"reported"?,"delta"?}`.
///
/// Each section is omitted when `None`. In update requests leave `delta` as `None`; in
/// update/documents snapshots `delta` is never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ShadowState<D, R, X> {
    /// What the application wants the device to be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<D>,
    /// What the device says it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<R>,
    /// Desired keys whose value differs from reported (S-3.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<X>,
}

/// The shadow document of `S/get/accepted` (S-3.2):
/// `{"state":{..},"metadata":{..},"version":N,"timestamp":ms,"clientToken"?}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowDocument<'a, S, M> {
    /// Desired, reported and delta, each omitted when empty.
    pub state: S,
    /// `{"desired":{..},"reported":{..}}` with a `{"timestamp":ms}` per leaf; `{}` when empty.
    pub metadata: M,
    /// Current version, 1 after the first update.
    pub version: u64,
    /// When the hub sent this document, ms.
    pub timestamp: u64,
    /// The request's clientToken.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
}

/// `S/update/accepted` body (S-3.5): the request's state, the timestamps of the keys written, the
/// new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateAccepted<'a, S, M> {
    /// The request's `state`, as sent.
    pub state: S,
    /// Metadata of the keys the request wrote.
    pub metadata: M,
    /// The new version.
    pub version: u64,
    /// When the hub accepted the update, ms.
    pub timestamp: u64,
    /// The request's clientToken.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
}

/// `S/update/delta` body (S-3.6): `state` is the full current delta itself (not wrapped in
/// `delta`), `metadata` the desired metadata of its leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delta<'a, S, M> {
    /// The full current delta object.
    pub state: S,
    /// Desired metadata of the delta's leaves.
    pub metadata: M,
    /// The version the delta belongs to; devices apply deltas in version order.
    pub version: u64,
    /// When the hub sent the delta, ms.
    pub timestamp: u64,
    /// The clientToken of the update that caused the delta.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
}

/// One side of `S/update/documents` (S-3.7): `{"state":{"desired","reported"},"metadata","version"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentSnapshot<S, M> {
    /// Desired and reported (no delta).
    pub state: S,
    /// Their metadata.
    pub metadata: M,
    /// The version of this snapshot.
    pub version: u64,
}

/// `S/update/documents` body (S-3.7), published after every accepted update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Documents<'a, S, M> {
    /// The document before the update; omitted when the update created the shadow (version 1).
    /// Read as `None` when absent or `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<DocumentSnapshot<S, M>>,
    /// The document after the update.
    pub current: DocumentSnapshot<S, M>,
    /// When the hub accepted the update, ms.
    pub timestamp: u64,
    /// The update's clientToken.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
}

/// Error body of `get/rejected` and `update/rejected` (S-3.8):
/// `{"code":C,"message":"..","timestamp":ms,"clientToken"?}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse<'a> {
    /// An [`ErrorCode`] number.
    pub code: u16,
    /// Lowercase human-readable reason.
    pub message: &'a str,
    /// When the hub refused the request, ms.
    pub timestamp: u64,
    /// The request's clientToken, when it had a readable one.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<&'a str>,
}

impl<'a> ErrorResponse<'a> {
    /// An error with the code's [`ErrorCode::default_message`].
    pub fn new(code: ErrorCode, timestamp: u64, client_token: Option<&'a str>) -> Self {
        ErrorResponse {
            code: code.as_u16(),
            message: code.default_message(),
            timestamp,
            client_token,
        }
    }

    /// The code as an [`ErrorCode`], `None` for a number the spec does not define.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

/// Direct-method request, hub → thing on `T/methods/{method}/req` (S-5.1).
///
/// The hub always writes `data` (`null` when the REST call gave none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodRequest<'a, D> {
    /// Matches the response to the request.
    pub client_token: &'a str,
    /// The call's input, any JSON.
    pub data: D,
}

/// Direct-method response, thing → hub on `T/methods/{method}/resp` (S-5.2).
///
/// `message` and `data` may be omitted; the hub reports them as `""` and `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodResponse<'a, D> {
    /// The request's clientToken.
    pub client_token: &'a str,
    /// HTTP-like result, see [`crate::code::method_code`].
    pub code: u16,
    /// Human-readable result.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    /// The method's output, any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<D>,
}

/// NTP request, thing → hub on `T/ntp/req` (S-6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NtpRequest {
    /// The device's clock when it sent the request, ms.
    pub client_send_time: u64,
}

/// NTP response, hub → thing on `T/ntp/resp` (S-6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NtpResponse {
    /// Echo of the request's `clientSendTime`.
    pub client_send_time: u64,
    /// Hub clock when the request arrived, ms.
    pub server_recv_time: u64,
    /// Hub clock when the response left, ms.
    pub server_send_time: u64,
}

impl NtpResponse {
    /// The current time in ms, from the device's receive time `client_recv_time` (S-6.2):
    /// `(serverRecvTime + serverSendTime + clientRecvTime - clientSendTime) / 2`.
    ///
    /// Computed without overflow and saturating at 0 and `u64::MAX`, so odd clocks never panic.
    pub fn now_ms(&self, client_recv_time: u64) -> u64 {
        let sum = u128::from(self.server_recv_time)
            + u128::from(self.server_send_time)
            + u128::from(client_recv_time);
        let now = sum.saturating_sub(u128::from(self.client_send_time)) / 2;
        u64::try_from(now).unwrap_or(u64::MAX)
    }

    /// The network round trip in ms (S-6.2):
    /// `(clientRecvTime - clientSendTime) - (serverSendTime - serverRecvTime)`, each difference
    /// saturating at 0. SDKs keep the sample with the smallest round trip.
    pub fn round_trip_ms(&self, client_recv_time: u64) -> u64 {
        client_recv_time
            .saturating_sub(self.client_send_time)
            .saturating_sub(self.server_send_time.saturating_sub(self.server_recv_time))
    }
}

/// The `meta` of an OTA task (S-7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OtaMeta<'a> {
    /// Version of the file's content.
    pub version: &'a str,
    /// Hex MD5 of the file.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<&'a str>,
    /// Hex SHA-256 of the file.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<&'a str>,
    /// MIME type, `content-type` on the wire.
    #[serde(
        rename = "content-type",
        borrow,
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<&'a str>,
    /// Size in bytes, `content-length` on the wire.
    #[serde(
        rename = "content-length",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub content_length: Option<u64>,
}

/// OTA task, hub → thing on `T/ota/task` (S-7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtaTask<'a> {
    /// Echoed in every result.
    pub client_token: &'a str,
    /// The task's id, echoed in every result.
    pub task_id: &'a str,
    /// What to update: `app`, `appconfig`, `os`, or another device-defined kind.
    pub r#type: &'a str,
    /// Version and checksums.
    #[serde(borrow)]
    pub meta: OtaMeta<'a>,
    /// Where to download the file.
    pub file_url: &'a str,
}

/// OTA result, thing → hub on `T/ota/task/result` (S-7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtaResult<'a> {
    /// The task's clientToken.
    pub client_token: &'a str,
    /// The task's id.
    pub task_id: &'a str,
    /// The task's status on the device.
    pub status: OtaStatus,
    /// 0..=100, with `ongoing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// With `failed`: see [`crate::code::OtaErrorCode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err_code: Option<u16>,
    /// With `failed`: human-readable reason.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub err_msg: Option<&'a str>,
    /// Device clock when the status was reached, ms.
    pub timestamp: u64,
}

/// Presence event (S-8.1), retained on `T/presence` and not retained on
/// `$iothub/events/things/{thingId}/presence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEvent<'a> {
    /// The thing.
    pub thing_id: &'a str,
    /// The MQTT client identifier (equal to the thing id, S-1.2).
    pub client_id: &'a str,
    /// Connected or disconnected.
    pub event_type: PresenceEventType,
    /// When it happened, ms.
    pub timestamp: u64,
    /// The peer address, `ip:port`.
    pub remote_addr: &'a str,
    /// Why the connection ended, with `disconnected`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub disconnect_reason: Option<&'a str>,
}

/// Lifecycle event (S-8.3) on `$iothub/events/things/{thingId}/lifecycle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleEvent<'a> {
    /// The thing.
    pub thing_id: &'a str,
    /// What happened to it.
    pub op: LifecycleOp,
    /// When, ms.
    pub timestamp: u64,
}

/// The REST response envelope (S-9.1): `{"code":C,"message":"..","data":..}`, `code` equal to the
/// HTTP status.
///
/// `data` is always written (`null` when `None`) and read as `None` when absent or `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiResponse<'a, D> {
    /// The HTTP status.
    pub code: u16,
    /// `"ok"` or a lowercase reason.
    pub message: &'a str,
    /// The result.
    #[serde(default)]
    pub data: Option<D>,
}

/// One page of a REST listing (S-9.2): `{"total":N,"content":[..]}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Page<C> {
    /// Number of items over all pages.
    pub total: u64,
    /// This page's items, usually a list.
    pub content: C,
}

mod provision;
pub use provision::{ProvisionAccepted, ProvisionRequest, ProvisionSettings, provision_message};

#[cfg(test)]
mod tests;
