//! The router: authorized requests from the broker, dispatched to the service that owns them.
//!
//! Requests are dispatched on N shards (one task each, N = `--dispatch-shards`, one per core by
//! default), so that parsing, validation and the services' work use every core. Each thing
//! belongs to one shard ([`shard_of`]), whose task reads a bounded queue in arrival order, so a
//! thing's requests reach the services in the order it sent them. A full shard queue makes the
//! publishing connection wait (backpressure) instead of growing memory; the other shards go on.

use bytes::Bytes;
use iothub_spec::topic::Topic;
use tokio::sync::{mpsc, oneshot};

use crate::method::Methods;
use crate::ntp;
use crate::ota::OtaService;
use crate::shadow::ShadowOp;
use crate::shadow::service::ShadowService;
use std::sync::Arc;

use crate::bus::Bus;
use crate::metrics::Metrics;
use crate::shard::shard_of;

/// Messages waiting for the router, in all (split evenly between the shards).
const QUEUE: usize = 16_384;

/// A message that passed the allow-list.
#[derive(Debug)]
pub struct Inbound {
    /// Username of the publisher (a thingId, or a `$` service user).
    pub sender: String,
    /// The topic it was published on.
    pub topic: String,
    /// The payload, as received.
    pub payload: Bytes,
    /// When the broker received it (ms), for NTP's `serverRecvTime`.
    pub received_at: u64,
}

/// The broker's handle to the router: one queue per shard.
#[derive(Clone)]
pub struct RouterHandle(Arc<[mpsc::Sender<Inbound>]>);

/// One shard's end of its queue, handed to [`run`].
pub struct RouterQueue(mpsc::Receiver<Inbound>);

/// A router of `shards` shards (at least 1), 16,384 queued messages in all.
pub fn channel(shards: usize) -> (RouterHandle, Vec<RouterQueue>) {
    channel_with(shards, QUEUE.div_ceil(shards.max(1)))
}

fn channel_with(shards: usize, per_shard: usize) -> (RouterHandle, Vec<RouterQueue>) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..shards.max(1))
        .map(|_| mpsc::channel(per_shard.max(1)))
        .unzip();
    (
        RouterHandle(txs.into()),
        rxs.into_iter().map(RouterQueue).collect(),
    )
}

impl RouterHandle {
    /// Hands a request about `thing` to its shard, waiting while that shard's queue is full.
    pub async fn offer(&self, thing: &str, message: Inbound) {
        let shard = &self.0[shard_of(thing, self.0.len())];
        if shard.send(message).await.is_err() {
            tracing::debug!("router gone (shutting down); message not handled");
        }
    }

    /// How many shards requests are spread over.
    pub fn shards(&self) -> usize {
        self.0.len()
    }
}

/// The services the router dispatches to.
pub struct Services {
    /// Shadows (S-3).
    pub shadows: ShadowService,
    /// Direct methods (S-5).
    pub methods: Methods,
    /// OTA jobs (S-7).
    pub ota: OtaService,
    /// Where replies go.
    pub bus: Arc<dyn Bus>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// Dispatches one shard's queue until `stop` fires (or every [`RouterHandle`] is gone), then
/// handles what is already queued and returns.
pub async fn run(queue: RouterQueue, mut stop: oneshot::Receiver<()>, services: Arc<Services>) {
    let mut rx = queue.0;
    loop {
        tokio::select! {
            message = rx.recv() => match message {
                Some(message) => dispatch_in_span(&services, message).await,
                None => return,
            },
            _ = &mut stop => break,
        }
    }
    rx.close();
    while let Some(message) = rx.recv().await {
        dispatch_in_span(&services, message).await;
    }
}

/// Every log line about a message names its publisher (the thing id, for a thing).
///
/// A debug-level span: at the default level it is disabled and costs nothing per message (an
/// enabled span formats its fields into a new string for every message of the hub's hot path);
/// the lines about single messages are at debug level, and the warnings and errors of the
/// shadow pipeline name the thing themselves.
async fn dispatch_in_span(services: &Services, message: Inbound) {
    use tracing::Instrument as _;
    let span = tracing::debug_span!("mqtt", thing_id = %message.sender);
    span.in_scope(
        || tracing::debug!(topic = %message.topic, bytes = message.payload.len(), "received"),
    );
    dispatch(services, message).instrument(span).await
}

async fn dispatch(services: &Services, message: Inbound) {
    let Ok(topic) = Topic::parse(&message.topic) else {
        // Service users may use other `$iothub/...` topics; those are plain MQTT routing.
        return;
    };
    match topic {
        Topic::ShadowGet { thing, shadow } => {
            services
                .shadows
                .handle_mqtt(thing, shadow, ShadowOp::Get, message.payload)
                .await
        }
        Topic::ShadowUpdate { thing, shadow } => {
            services
                .shadows
                .handle_mqtt(thing, shadow, ShadowOp::Update, message.payload)
                .await
        }
        Topic::MethodResponse { thing, method } => {
            services
                .methods
                .handle_response(thing, method, &message.payload)
        }
        Topic::NtpRequest { thing } => {
            ntp::respond(
                services.bus.as_ref(),
                thing,
                &message.payload,
                message.received_at,
            )
            .await
        }
        Topic::OtaTaskResult { thing } => services.ota.handle_result(thing, message.payload).await,
        // Telemetry, wills and user topics travel as plain MQTT to subscribers.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(thing: &str) -> Inbound {
        Inbound {
            sender: thing.to_owned(),
            topic: iothub_spec::topic::Topic::NtpRequest { thing }.to_string(),
            payload: Bytes::from_static(b"{}"),
            received_at: 0,
        }
    }

    /// Two things owned by different shards of `shards`.
    fn things_on_two_shards(shards: usize) -> (String, String) {
        let first = "a0".to_owned();
        let other = (1..)
            .map(|i| format!("a{i}"))
            .find(|t| shard_of(t, shards) != shard_of(&first, shards))
            .unwrap_or_default();
        (first, other)
    }

    #[tokio::test]
    async fn a_full_shard_makes_only_its_own_publishers_wait() {
        let (handle, mut queues) = channel_with(4, 2);
        let (busy, idle) = things_on_two_shards(4);
        handle.offer(&busy, message(&busy)).await;
        handle.offer(&busy, message(&busy)).await;
        // The busy thing's shard is full: its next request waits (backpressure on its
        // connection), nothing is dropped.
        let third = handle.offer(&busy, message(&busy));
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut third)
                .await
                .is_err(),
            "a full shard must hold its publisher back"
        );
        // Another shard still takes requests at once.
        tokio::time::timeout(Duration::from_secs(5), handle.offer(&idle, message(&idle)))
            .await
            .unwrap_or_else(|_| panic!("an idle shard must not wait for a full one"));
        // Draining the full shard lets the waiting request in, in order.
        let shard = &mut queues[shard_of(&busy, 4)].0;
        assert!(shard.recv().await.is_some());
        tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .unwrap_or_else(|_| panic!("the waiting request must get in once there is room"));
        let mut delivered = 0;
        while shard.try_recv().is_ok() {
            delivered += 1;
        }
        assert_eq!(delivered, 2);
        let idle_shard = &mut queues[shard_of(&idle, 4)].0;
        assert_eq!(idle_shard.try_recv().map(|m| m.sender).ok(), Some(idle));
    }

    #[test]
    fn shards_share_the_queue_budget() {
        let (handle, queues) = channel(4);
        assert_eq!(handle.shards(), 4);
        assert_eq!(queues.len(), 4);
        assert!(queues.iter().all(|q| q.0.max_capacity() == QUEUE / 4));
        let (handle, _) = channel(0);
        assert_eq!(handle.shards(), 1);
    }
}
