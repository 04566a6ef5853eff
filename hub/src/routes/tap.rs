//! The hub's own messages into the routes: a [`Bus`] around the broker's that offers shadow
//! documents, lifecycle and presence events to the routes before publishing them (S-14.2).
//!
//! What the hub publishes is already decided (a shadow document is published only after its
//! update was stored, S-3.5), so a refusal cannot be answered to anyone: it is counted on the
//! route (`refused`, `store_failures`) and logged, and the message is still published.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use iothub_spec::topic::Topic;

use super::{Routes, Source};
use crate::bus::{Bus, BusError, ThingChange};
use crate::edge::Acceptance;

/// The source of a hub-published topic, if routes may take it.
fn source_of(topic: &str) -> Option<(Source, &str)> {
    match Topic::parse(topic).ok()? {
        Topic::ShadowUpdateDocuments { thing, .. } => Some((Source::Shadow, thing)),
        Topic::LifecycleEvent { thing } => Some((Source::Lifecycle, thing)),
        Topic::PresenceEvent { thing } => Some((Source::Presence, thing)),
        _ => None,
    }
}

/// A [`Bus`] that offers the hub's own messages to the routes, then publishes them.
pub struct RoutesBus {
    inner: Arc<dyn Bus>,
    routes: Routes,
}

impl RoutesBus {
    /// `inner`, with what it publishes offered to `routes` first.
    pub fn wrap(inner: Arc<dyn Bus>, routes: Routes) -> Arc<RoutesBus> {
        Arc::new(RoutesBus { inner, routes })
    }
}

#[async_trait]
impl Bus for RoutesBus {
    async fn publish(&self, topic: &str, payload: Bytes, retain: bool) {
        if let Some((source, thing)) = source_of(topic) {
            let verdict = self
                .routes
                .offer(source, thing, topic, &payload, crate::clock::now_ms())
                .await;
            if verdict != Acceptance::Accepted {
                tracing::warn!(%topic, ?verdict, "hub message not taken by its routes");
            }
        }
        self.inner.publish(topic, payload, retain).await;
    }

    async fn disconnect(&self, client_id: &str) {
        self.inner.disconnect(client_id).await;
    }

    async fn thing_changed(&self, thing: &str, change: ThingChange<'_>) -> Result<(), BusError> {
        self.inner.thing_changed(thing, change).await
    }

    async fn things_created(&self, things: &[(&str, &str)]) -> Vec<Result<(), BusError>> {
        self.inner.things_created(things).await
    }

    fn is_connected(&self, client_id: &str) -> bool {
        self.inner.is_connected(client_id)
    }

    async fn presence_caught_up(&self) {
        self.inner.presence_caught_up().await;
    }

    fn connection(&self, client_id: &str) -> Option<u64> {
        self.inner.connection(client_id)
    }

    async fn disconnect_connection(&self, client_id: &str, connection: u64) {
        self.inner
            .disconnect_connection(client_id, connection)
            .await;
    }

    async fn has_subscribers(&self, topic: &str) -> bool {
        // Shadow documents are built only for listeners; a route that takes them is one.
        if let Some((source, _)) = source_of(topic)
            && self.routes.wants(source, topic)
        {
            return true;
        }
        self.inner.has_subscribers(topic).await
    }
}
