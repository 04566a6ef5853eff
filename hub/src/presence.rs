//! Presence (S-8.1, S-8.2): who is connected, events for service users, the registry's record.
//!
//! The broker boundary's events ([`crate::edge::Events`]) call `Presence::connected` and
//! `Presence::disconnected`; they only queue a change, so a CONNECT never waits for storage. One
//! task publishes the events and writes the registry, in order, batching registry writes. Which
//! things are connected now is the broker's to say ([`Bus::is_connected`]).
//!
//! Session takeover (S-1.4): the new connection's `connected` can be seen before the old one's
//! `disconnected`. The broker says which connection is current, so the old connection's
//! disconnect is still announced on the (non-retained) event topic but neither overwrites the
//! retained `T/presence` nor marks the thing disconnected in the registry (D-34).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use iothub_spec::code::PresenceEventType;
use iothub_spec::payload::PresenceEvent;
use iothub_spec::topic::Topic;
use tokio::sync::mpsc;

use crate::bus::Bus;
use crate::clock::now_ms;
use crate::edge::Client;
use crate::metrics::Metrics;
use crate::store::{SharedStore, StoreError};

/// Changes waiting for the presence task; senders wait when it is full (backpressure on CONNECT).
const QUEUE: usize = 8192;
/// Registry writes per transaction.
const BATCH: usize = 512;

/// Presence of things: the broker's connection events, queued for the presence task.
#[derive(Clone)]
pub struct Presence {
    tx: mpsc::Sender<Change>,
    metrics: Arc<Metrics>,
    stopping: Arc<AtomicBool>,
}

/// The receiving end, handed to [`run`].
pub struct PresenceQueue(mpsc::Receiver<Change>, Arc<AtomicBool>);

#[derive(Debug)]
struct Change {
    thing: String,
    event: PresenceEventType,
    at: u64,
    remote_addr: String,
    reason: Option<String>,
    /// False for the disconnect of a connection that was already taken over.
    current: bool,
}

impl Presence {
    /// A presence tracker and the queue its task consumes.
    pub fn new(metrics: Arc<Metrics>) -> (Presence, PresenceQueue) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stopping = Arc::new(AtomicBool::new(false));
        (
            Presence {
                tx,
                metrics,
                stopping: stopping.clone(),
            },
            PresenceQueue(rx, stopping),
        )
    }

    /// The hub is stopping: from now on the presence task still publishes the events but no
    /// longer records each change in the registry. Every connection is about to close, and
    /// one durable write per thing (an fsync each) made a hub with 18,000 connections take
    /// longer than 15 s to stop (issue 24); the shutdown marks every thing disconnected in one
    /// statement instead ([`crate::RunningHub::shutdown`]).
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// A thing's connection is established; `replaced`: it took over a live one (S-1.4).
    pub(crate) async fn connected(&self, client: &Client<'_>, replaced: bool) {
        if !replaced {
            self.metrics.inc_connected();
        }
        self.send(Change {
            thing: client.client_id.to_owned(),
            event: PresenceEventType::Connected,
            at: now_ms(),
            remote_addr: remote_addr(client),
            reason: None,
            current: true,
        })
        .await;
    }

    /// A thing's connection ended; `current`: it had not been taken over (D-34).
    pub(crate) async fn disconnected(&self, client: &Client<'_>, reason: &str, current: bool) {
        if current {
            self.metrics.dec_connected();
        }
        self.send(Change {
            thing: client.client_id.to_owned(),
            event: PresenceEventType::Disconnected,
            at: now_ms(),
            remote_addr: remote_addr(client),
            reason: Some(reason.to_owned()),
            current,
        })
        .await;
    }

    async fn send(&self, change: Change) {
        if self.tx.send(change).await.is_err() {
            tracing::debug!("presence task gone (shutting down)");
        }
    }
}

fn remote_addr(client: &Client<'_>) -> String {
    client
        .remote_addr
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// Publishes presence events and records them in the registry until the queue closes.
pub async fn run(queue: PresenceQueue, bus: Arc<dyn Bus>, store: SharedStore) {
    let PresenceQueue(mut rx, stopping) = queue;
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        for change in &batch {
            publish(bus.as_ref(), change).await;
        }
        if stopping.load(Ordering::Relaxed) {
            batch.clear();
            continue;
        }
        for change in batch.drain(..).filter(|c| c.current) {
            let connected = change.event == PresenceEventType::Connected;
            if let Err(e) = store
                .set_connected(&change.thing, connected, change.at)
                .await
            {
                match e {
                    // Deleting a thing disconnects it: its last presence has nowhere to go.
                    StoreError::NotFound => {
                        tracing::debug!(thing = %change.thing, "presence of a deleted thing not recorded");
                    }
                    e => {
                        tracing::warn!(thing = %change.thing, error = %e, "cannot record presence")
                    }
                }
            }
        }
    }
}

async fn publish(bus: &dyn Bus, change: &Change) {
    let event = PresenceEvent {
        thing_id: &change.thing,
        client_id: &change.thing,
        event_type: change.event,
        timestamp: change.at,
        remote_addr: &change.remote_addr,
        disconnect_reason: change.reason.as_deref(),
    };
    let payload = match serde_json::to_vec(&event) {
        Ok(p) => Bytes::from(p),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode presence event");
            return;
        }
    };
    let thing = change.thing.as_str();
    if change.current {
        bus.publish(
            &Topic::Presence { thing }.to_string(),
            payload.clone(),
            true,
        )
        .await;
    }
    bus.publish(&Topic::PresenceEvent { thing }.to_string(), payload, false)
        .await;
}
