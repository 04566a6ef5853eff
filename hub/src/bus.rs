//! How services publish to things and service users without knowing which broker carries it:
//! the operations-out half of the broker boundary ([`crate::edge`] has the whole contract).
//!
//! The embedded rmqtt broker implements [`Bus`]; an external broker can implement it later.

use async_trait::async_trait;
use bytes::Bytes;

/// The hub's way out to MQTT clients.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes a hub-originated message at QoS 1 (S-2.3). `retain` only for `T/presence`.
    async fn publish(&self, topic: &str, payload: Bytes, retain: bool);
    /// Closes the live MQTT connection of `client_id`, if any (S-1.3 disable/delete).
    async fn disconnect(&self, client_id: &str);
    /// Whether `client_id` has a live connection now.
    fn is_connected(&self, client_id: &str) -> bool;
    /// Whether any subscription matches `topic`, so that a costly payload nobody would receive
    /// can be skipped. When unsure, say `true`.
    async fn has_subscribers(&self, _topic: &str) -> bool {
        true
    }
}
