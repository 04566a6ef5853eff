//! Provisioning bodies (S-10.2): the request a claim connection publishes, the `accepted` reply
//! and the messages of the `rejected` replies (whose body is an [`ErrorResponse`]).
//!
//! [`ErrorResponse`]: super::ErrorResponse

use serde::{Deserialize, Serialize};

/// Provisioning request on `$iothub/provision/{enrollment}/{serial}/request` (S-10.2):
/// `{"clientToken":"..","thingId"?:"..","serial"?:"..","attributes"?:{..}}`.
///
/// `A` is the attributes object (any JSON object; the hub stores it under the thing's tags,
/// key `attributes`). The serial is the topic's; a `serial` in the body must equal it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionRequest<'a, A> {
    /// Echoed in the reply; at most 64 bytes.
    pub client_token: &'a str,
    /// The thing id the device asks for; how the hub uses it is the enrollment's id rule.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub thing_id: Option<&'a str>,
    /// The device's serial, repeated from the topic (optional).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<&'a str>,
    /// Free-form attributes of the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<A>,
}

/// The `accepted` reply (S-10.2): `{"clientToken":"..","thingId":"..","password":"..",
/// "settings":{..},"timestamp":ms}`.
///
/// `password` is the thing's new secret, sent this once; the device connects with
/// `thingId`/`password` as any thing (S-1.2). `S` is the settings object, in the reference hub
/// [`ProvisionSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionAccepted<'a, S> {
    /// The request's clientToken.
    pub client_token: &'a str,
    /// The provisioned thing's id.
    pub thing_id: &'a str,
    /// The thing's secret, shown once.
    pub password: &'a str,
    /// The hub's settings the device needs.
    pub settings: S,
    /// When the hub provisioned the thing, ms.
    pub timestamp: u64,
}

/// The `settings` of an `accepted` reply: the limits the hub enforces (S-3.9), so a device
/// sizes its requests without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionSettings {
    /// The hub's limits, as `GET /api/v1/limits` reports them.
    pub limits: crate::limits::Limits,
}

/// The `message` of each `rejected` reply the reference hub sends (S-10.5); `code` tells the
/// class, the message which refusal of that class.
pub mod provision_message {
    /// 400: the request is not JSON of the request's shape, or its `serial` differs from the
    /// topic's.
    pub const BAD_REQUEST: &str = "bad provisioning request";
    /// 400: the requested thing id is missing, invalid or outside the enrollment's id rule.
    pub const ID_RULE: &str = "thing id not allowed by the enrollment";
    /// 403: the enrollment has been used its maximum number of times.
    pub const EXHAUSTED: &str = "enrollment exhausted";
    /// 403: the enrollment's expiry has passed.
    pub const EXPIRED: &str = "enrollment expired";
    /// 403: the enrollment is disabled.
    pub const DISABLED: &str = "enrollment disabled";
    /// 409: the thing id is taken by a thing this serial did not provision.
    pub const ID_TAKEN: &str = "thing id taken";
    /// 429: too many provisioning requests in flight.
    pub const BUSY: &str = "too many provisioning requests";
    /// 503: the store could not be written; nothing was created.
    pub const UNAVAILABLE: &str = "service unavailable, retry later";
}
