//! The JSON a route's sinks write (S-14.4): one object per message, and the webhook's batch.
//! The one place these field names are spelled.

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::routes::StoredMessage;

/// One message as sinks and the history API show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView<'a> {
    /// The route (absent in the history API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    /// Ascending per route in the order messages were accepted (per thing: the thing's order).
    /// A receiver can drop a repeat (at-least-once) by (route, seq).
    pub seq: u64,
    /// `telemetry`, `messages`, `shadow`, `lifecycle`, `presence`, `ota-results` or
    /// `method-results`.
    pub source: &'a str,
    /// The thing.
    pub thing_id: &'a str,
    /// The MQTT topic.
    pub topic: &'a str,
    /// When the hub received it, ms since the Unix epoch.
    pub received_at: u64,
    /// The payload, when it is JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub payload: Option<Value>,
    /// The payload in base64, when it is not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl<'a> MessageView<'a> {
    /// The view of a stored message.
    pub fn of(route: Option<&'a str>, m: &'a StoredMessage) -> MessageView<'a> {
        let bytes = &m.message.payload;
        let (payload, payload_base64) = match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => (Some(v), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ),
        };
        MessageView {
            route,
            seq: m.seq,
            source: &m.message.source,
            thing_id: &m.message.thing_id,
            topic: &m.message.topic,
            received_at: m.message.received_at,
            payload,
            payload_base64,
        }
    }
}

/// A webhook POST's body.
#[derive(Debug, Serialize)]
pub struct Batch<'a> {
    /// The route.
    pub route: &'a str,
    /// The messages, in order.
    pub messages: Vec<MessageView<'a>>,
}
