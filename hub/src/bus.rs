//! How services publish to things and service users without knowing which broker carries it:
//! the operations-out half of the broker boundary ([`crate::edge`] has the whole contract).
//!
//! The embedded rmqtt broker implements [`Bus`]; so does the external Mosquitto mode
//! ([`crate::external`]), which also holds each thing's credentials and ACLs in the broker and so
//! needs to hear of registry changes ([`Bus::thing_changed`]).

use async_trait::async_trait;
use bytes::Bytes;

/// A registry change that a broker holding its own accounts must follow (D-61). Its `Debug`
/// never shows the secret.
#[derive(Clone, Copy)]
pub enum ThingChange<'a> {
    /// The thing was created with this secret (in clear; never log it).
    Created {
        /// The thing's secret.
        password: &'a str,
    },
    /// The thing was enabled (`true`) or disabled (`false`).
    Enabled(bool),
    /// The thing was deleted.
    Deleted,
}

impl std::fmt::Debug for ThingChange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThingChange::Created { .. } => f.write_str("Created"),
            ThingChange::Enabled(on) => write!(f, "Enabled({on})"),
            ThingChange::Deleted => f.write_str("Deleted"),
        }
    }
}

/// Why a broker could not apply a [`ThingChange`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The broker did not answer in time or the connection to it is down.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker answered with an error.
    #[error("broker refused: {0}")]
    Refused(String),
}

/// The hub's way out to MQTT clients.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes a hub-originated message at QoS 1 (S-2.3). `retain` only for `T/presence`.
    async fn publish(&self, topic: &str, payload: Bytes, retain: bool);
    /// Closes the live MQTT connection of `client_id`, if any (S-1.3 disable/delete).
    async fn disconnect(&self, client_id: &str);
    /// Whether `client_id` has a live connection now.
    fn is_connected(&self, client_id: &str) -> bool;
    /// Names the live connection of `client_id` now, if the broker can tell its connections
    /// apart: a later connection with the same client id gets another value. Lets a delayed
    /// close spare the connection that replaced the one it was meant for.
    fn connection(&self, _client_id: &str) -> Option<u64> {
        None
    }
    /// Closes the connection of `client_id` named `connection` by [`Bus::connection`], and only
    /// if it is still the live one.
    async fn disconnect_connection(&self, client_id: &str, connection: u64) {
        if self.connection(client_id) == Some(connection) {
            self.disconnect(client_id).await;
        }
    }
    /// Whether any subscription matches `topic`, so that a costly payload nobody would receive
    /// can be skipped. When unsure, say `true`.
    async fn has_subscribers(&self, _topic: &str) -> bool {
        true
    }
    /// Returns once the hub has taken in every connect, disconnect and subscription the broker
    /// had reported before this call, so that [`Bus::is_connected`] is at least as new as the
    /// call. The embedded broker reports them before it answers the client: nothing to wait
    /// for. An external broker reports them in its log (D-63), some milliseconds after its
    /// CONNACK; a thing that was just told it is connected must not be called offline (S-5.3).
    async fn presence_caught_up(&self) {}
    /// Applies a registry change to a broker that keeps its own accounts (the external
    /// Mosquitto's dynamic-security plugin, D-61). The embedded broker asks the registry at
    /// every CONNECT and has nothing to do. `Ok` once the broker has applied it.
    async fn thing_changed(&self, _thing: &str, _change: ThingChange<'_>) -> Result<(), BusError> {
        Ok(())
    }
    /// [`Bus::thing_changed`] with [`ThingChange::Created`] for each `(thing, password)` of a
    /// batch, one result per thing in order. A broker that can take many accounts in one
    /// request overrides it (Mosquitto writes its whole account file once per request).
    async fn things_created(&self, things: &[(&str, &str)]) -> Vec<Result<(), BusError>> {
        let mut results = Vec::with_capacity(things.len());
        for (thing, password) in things {
            results.push(
                self.thing_changed(thing, ThingChange::Created { password })
                    .await,
            );
        }
        results
    }
}
