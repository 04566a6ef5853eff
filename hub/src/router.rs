//! The router: authorized messages from the broker, dispatched to the service that owns them.
//!
//! One task reads a bounded queue in arrival order, so each thing's requests reach the services
//! in the order it sent them. A full queue makes the publishing connection wait (backpressure)
//! instead of growing memory.

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

/// Messages waiting for the router.
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

/// The broker's handle to the router.
#[derive(Clone)]
pub struct RouterHandle(mpsc::Sender<Inbound>);

/// The router's end of the queue.
pub struct RouterQueue(mpsc::Receiver<Inbound>);

/// A new router queue.
pub fn channel() -> (RouterHandle, RouterQueue) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (RouterHandle(tx), RouterQueue(rx))
}

impl RouterHandle {
    /// Hands a message to the router, waiting while its queue is full.
    pub async fn offer(&self, message: Inbound) {
        if self.0.send(message).await.is_err() {
            tracing::debug!("router gone (shutting down); message not handled");
        }
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

/// Dispatches until `stop` fires (or every [`RouterHandle`] is gone), then handles what is
/// already queued and returns.
pub async fn run(queue: RouterQueue, mut stop: oneshot::Receiver<()>, services: Services) {
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
    services.metrics.inc_mqtt_messages_in();
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
