//! The embedded MQTT broker: `rmqtt` used as a library (MQTT 3.1.1 and 5 on one port), one
//! implementation of the broker boundary ([`crate::edge`]).
//!
//! rmqtt owns sockets, sessions, QoS flows and routing between clients. Its hooks (`hooks.rs`)
//! turn CONNECTs, connections, subscriptions and authorized publishes into the boundary's
//! [`Events`] and apply the allow-lists of [`iothub_spec::topic::acl`] (S-2.1, S-2.2). The hub
//! publishes through [`RmqttBus`], this broker's [`Bus`].
//!
//! Two rmqtt facts shape this module:
//! - rmqtt runs its `message_publish` hook *before* the ACL check, so the hub takes requests in the
//!   `message_publish_check_acl` hook, where the allow-list decision is made: a request is routed
//!   only if it passed S-2.1.
//! - superusers skip rmqtt's ACL hooks altogether, so service users (S-1.5) are ordinary users whose
//!   allow-list is "any `$iothub/...` topic"; that keeps their requests flowing through the router.

mod admission;
mod fitter;
mod hooks;
mod listeners;
mod oversize;
mod queue_full;
mod retain;
mod router;
mod shared;
mod takeover;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use rmqtt::codec::types::Publish as CodecPublish;
use rmqtt::codec::types::QoS;
use rmqtt::codec::v5::PublishProperties;
use rmqtt::context::ServerContext;
use rmqtt::hook::Type;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::types::{From, Id, Publish};
use tokio::task::JoinHandle;

pub use listeners::BrokerAddrs;

use crate::bus::Bus;
use crate::edge::Events;
use crate::guard::refusals::RefusalLog;
use crate::metrics::Metrics;
use iothub_spec::payload::ErrorResponse;
use iothub_spec::topic::Topic as SpecTopic;

/// Concurrent CONNECT handshakes (authentication included); later ones wait in rmqtt's queue.
///
/// rmqtt creates this many handshake worker futures up front, ~540 bytes each, when the first
/// client connects, and keeps them: 20,000 workers held 10.7 MB (measured with heaptrack). A
/// handshake's cost is the credential check, bounded by the cores, so 1,000 workers already
/// keep every core busy during a connect storm; waiting handshakes still obey the handshake
/// timeout. Every handshake holds an unauthenticated slot (`max_pending`), so a refusal
/// delayed by the failure backoff never holds more workers than there are such slots.
const HANDSHAKE_WORKERS: usize = 1_000;

/// Settings of the MQTT listener.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Address to listen on (port 0 picks a free port).
    pub addr: SocketAddr,
    /// Most concurrent connections the listener accepts.
    pub max_connections: usize,
    /// Largest MQTT packet accepted, in bytes. Shadow payload limits are enforced separately
    /// (S-3.9) so that an oversized request still gets its 413 reply.
    pub max_packet_size: u32,
    /// The whole handshake (version probe and CONNECT) must arrive within this time.
    pub handshake_timeout: Duration,
    /// Largest CONNECT accepted before authentication, in bytes.
    pub max_connect_size: u32,
    /// Most connections not yet accepted by a CONNACK, in all.
    pub max_pending: usize,
    /// Most connections not yet accepted by a CONNACK, per source address.
    pub max_pending_per_addr: usize,
    /// Topic filters a thing may hold subscribed at once.
    pub max_subscriptions: usize,
    /// MQTT over TLS listens here, if set (needs `tls`).
    pub mqtts_addr: Option<SocketAddr>,
    /// MQTT over WebSocket (`/mqtt`) listens here, if set.
    pub ws_addr: Option<SocketAddr>,
    /// MQTT over secure WebSocket (`/mqtt`) listens here, if set (needs `tls`).
    pub wss_addr: Option<SocketAddr>,
    /// The TLS configuration of the TLS and WSS listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The current connection of each connected client id: is-connected for the [`Bus`], and which
/// connection a disconnect ends (a taken-over one is not current any more).
type Live = Arc<DashMap<String, Id>>;

/// A broker whose context exists (so its [`RmqttBus`] can be handed to the services) but that
/// does not listen yet; [`PreparedBroker::start`] attaches the core's events and listens.
pub struct PreparedBroker {
    scx: ServerContext,
    live: Live,
}

impl PreparedBroker {
    /// The bus that publishes into this broker as the hub itself.
    pub fn bus(&self, metrics: Arc<Metrics>) -> RmqttBus {
        RmqttBus::new(self.scx.clone(), self.live.clone(), metrics)
    }

    /// Hands every CONNECT, connection, subscription and authorized publish to `events`, then
    /// listens. Refused connections (over the limits) are counted in `refusals`.
    pub async fn start(
        self,
        config: &BrokerConfig,
        events: Arc<dyn Events>,
        refusals: Arc<RefusalLog>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<EmbeddedBroker> {
        EmbeddedBroker::start(self, config, events, refusals, metrics).await
    }
}

/// A running embedded broker.
pub struct EmbeddedBroker {
    scx: ServerContext,
    addrs: BrokerAddrs,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Builds the broker context (nothing attached, not listening); the hub takes its bus, then
    /// starts it with [`PreparedBroker::start`].
    pub async fn prepare() -> PreparedBroker {
        let scx = ServerContext::new().build().await;
        *scx.extends.retain_mut().await = Box::new(retain::HubRetainer::default());
        *scx.extends.router_mut().await = Box::new(router::ThingRouter::new(Some(scx.clone())));
        *scx.extends.fitter_mgr_mut().await = Box::new(fitter::HubFitterManager);
        *scx.extends.shared_subscription_mut().await = Box::new(shared::RoundRobin::default());
        PreparedBroker {
            scx,
            live: Arc::new(DashMap::new()),
        }
    }

    async fn start(
        prepared: PreparedBroker,
        config: &BrokerConfig,
        events: Arc<dyn Events>,
        refusals: Arc<RefusalLog>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<EmbeddedBroker> {
        let PreparedBroker { scx, live } = prepared;
        let admission = admission::MqttAdmission::new(
            config.max_connections,
            config.max_pending,
            config.max_pending_per_addr,
            refusals,
        );
        let queue_full = queue_full::CountQueueFull::new(metrics.clone());
        let oversize = oversize::DropOversized::new(metrics);
        let handler = Arc::new(hooks::HubHooks::new(
            events,
            live,
            config.max_subscriptions,
            scx.clone(),
            admission.unauthenticated(),
        ));
        let register = scx.extends.hook_mgr().register();
        for typ in [
            Type::ClientAuthenticate,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
            Type::ClientConnected,
            Type::ClientDisconnected,
            Type::SessionSubscribed,
        ] {
            register
                .add(typ, Box::new(hooks::SharedHooks(handler.clone())))
                .await;
        }
        register
            .add(Type::MessageExpiryCheck, Box::new(oversize))
            .await;
        register
            .add(Type::MessageDropped, Box::new(queue_full))
            .await;
        register.start().await;

        let base = Builder::new()
            .nodelay(true)
            .allow_anonymous(false)
            .allow_zero_keepalive(true)
            .max_connections(config.max_connections)
            .max_handshaking_limit(
                HANDSHAKE_WORKERS
                    .min(config.max_pending)
                    .min(config.max_connections)
                    .max(1),
            )
            .max_packet_size(config.max_packet_size)
            .max_connect_size(config.max_connect_size)
            .admission(rmqtt::net::AdmissionRef(Arc::new(admission)))
            .backlog(4096)
            .reuseaddr(Some(true))
            .max_inflight(std::num::NonZeroU16::new(64).unwrap_or(std::num::NonZeroU16::MIN))
            .handshake_timeout(config.handshake_timeout)
            // rmqtt gives a message without a Message Expiry Interval a 300 s one by default,
            // so a method request or OTA task queued for an offline session would vanish after
            // 5 minutes. MQTT 5 §3.3.2.3.3: without the property a message does not expire;
            // one that carries it is still honoured.
            .message_expiry_interval(Duration::ZERO);
        let (bound, addrs) = listeners::bind(
            &base,
            &listeners::Wanted {
                mqtt: config.addr,
                mqtts: config.mqtts_addr,
                ws: config.ws_addr,
                wss: config.wss_addr,
                tls: config.tls.as_ref(),
            },
        )?;
        let mut server = MqttServer::new(scx.clone());
        for (listener, id) in bound {
            server = server.listener_by_id(listener, id);
        }
        let server = server.build();
        let task = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "MQTT server stopped");
            }
        });
        Ok(EmbeddedBroker { scx, addrs, task })
    }

    /// The address the plain MQTT listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs.mqtt
    }

    /// Where every listener is bound.
    pub fn addrs(&self) -> BrokerAddrs {
        self.addrs
    }

    /// Stops accepting connections and drops the live ones.
    pub async fn stop(self) {
        use futures::StreamExt as _;
        self.task.abort();
        let _ = self.task.await;
        let ids: Vec<Id> = self
            .scx
            .extends
            .shared()
            .await
            .iter()
            .map(|e| e.id())
            .collect();
        // Concurrently: each kick waits for its session task to run the disconnect hooks, so
        // one after the other 18,000 connections took more than 15 s (issue 24). Bounded, so
        // the presence queue applies its back-pressure to a fixed number of kicks.
        let scx = &self.scx;
        futures::stream::iter(ids)
            .for_each_concurrent(KICKS_IN_FLIGHT, |id| kick(scx, id, Kick::Stopping))
            .await;
    }
}

/// Connections closed at once while the hub stops.
const KICKS_IN_FLIGHT: usize = 256;

/// The hub's [`Bus`] over the embedded broker.
#[derive(Clone)]
pub struct RmqttBus {
    scx: ServerContext,
    live: Live,
    metrics: Arc<Metrics>,
    hub_id: Id,
}

impl RmqttBus {
    fn new(scx: ServerContext, live: Live, metrics: Arc<Metrics>) -> Self {
        let hub_id = Id::new(scx.node.id(), 0, None, None, "$iothub".into(), None);
        RmqttBus {
            scx,
            live,
            metrics,
            hub_id,
        }
    }
}

impl RmqttBus {
    /// Counts what leaves the hub; shadow update replies by outcome.
    fn count(&self, topic: &str, payload: &[u8]) {
        self.metrics.inc_mqtt_messages_out();
        match SpecTopic::parse(topic) {
            Ok(SpecTopic::ShadowUpdateAccepted { .. }) => self.metrics.inc_shadow_update_accepted(),
            Ok(SpecTopic::ShadowUpdateRejected { .. }) => {
                let code =
                    serde_json::from_slice::<ErrorResponse<'_>>(payload).map_or(0, |e| e.code);
                self.metrics.inc_shadow_update_rejected(code);
            }
            _ => {}
        }
    }
}

#[async_trait]
impl Bus for RmqttBus {
    async fn publish(&self, topic: &str, payload: Bytes, retain: bool) {
        self.count(topic, &payload);
        let publish = CodecPublish {
            dup: false,
            retain,
            qos: QoS::AtLeastOnce,
            topic: topic.into(),
            packet_id: None,
            payload,
            // Empty, but present: rmqtt adds an MQTT 5 subscriber's subscription identifiers
            // only to a message that has properties (MQTT 5 3.3.4: they must be sent).
            properties: Some(PublishProperties::default()),
        };
        let publish = Publish::new(
            Box::new(publish),
            None,
            None,
            Some(rmqtt::utils::timestamp_millis()),
        );
        let from = From::from_system(self.hub_id.clone());
        if retain {
            let retainer = self.scx.extends.retain().await;
            let topic_name = publish.topic.clone();
            let value = rmqtt::types::Retain {
                msg_id: None,
                from: from.clone(),
                publish: publish.clone(),
            };
            if let Err(e) = retainer.set(&topic_name, value, None).await {
                tracing::warn!(%topic, error = %e, "cannot retain message");
            }
        }
        // Err only lists subscribers the message could not reach (none, or a full queue);
        // rmqtt already reported those through its message_dropped hook.
        if let Err((_, dropped)) = self
            .scx
            .extends
            .shared()
            .await
            .forwards(None, from, publish)
            .await
        {
            tracing::trace!(%topic, dropped = dropped.len(), "hub publish not delivered to some subscribers");
        }
    }

    async fn disconnect(&self, client_id: &str) {
        let id = Id::new(self.scx.node.id(), 0, None, None, client_id.into(), None);
        kick(&self.scx, id, Kick::One).await;
    }

    fn is_connected(&self, client_id: &str) -> bool {
        self.live.contains_key(client_id)
    }

    fn connection(&self, client_id: &str) -> Option<u64> {
        use std::hash::{Hash as _, Hasher as _};
        // rmqtt's Id hashes its addresses and creation time: two connections differ. The
        // default hasher has fixed keys, so one connection always gets the same value.
        let live = self.live.get(client_id)?;
        let mut hasher = std::hash::DefaultHasher::new();
        live.hash(&mut hasher);
        Some(hasher.finish())
    }

    async fn has_subscribers(&self, topic: &str) -> bool {
        self.scx
            .extends
            .router()
            .await
            .get(topic)
            .await
            .map_or(true, |routes| !routes.is_empty())
    }
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kick {
    /// One connection, on request (a thing disabled, deleted, revoked).
    One,
    /// Every connection, because the hub stops: many of them are closing by themselves at the
    /// same moment (their clients see the hub go), and a kick that finds its session gone is
    /// expected then, not worth a warning per connection.
    Stopping,
}

async fn kick(scx: &ServerContext, id: Id, why: Kick) {
    let entry = scx.extends.shared().await.entry(id.clone());
    let failed = match entry.try_lock().await {
        Ok(mut locked) => match locked.kick(true, true, true).await {
            Ok(_) => return,
            Err(e) => format!("kick failed: {e}"),
        },
        Err(e) => format!("kick: session busy: {e}"),
    };
    match why {
        Kick::One => tracing::warn!(client = %id.client_id, "{failed}"),
        Kick::Stopping => tracing::debug!(client = %id.client_id, "{failed}"),
    }
}
