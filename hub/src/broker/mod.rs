//! The embedded MQTT broker: `rmqtt` used as a library (MQTT 3.1.1 and 5 on one port).
//!
//! rmqtt owns sockets, sessions, QoS flows and routing between clients. The hub plugs in through
//! rmqtt's hooks (`hooks.rs`): CONNECT authentication (S-1), the subscribe and publish allow-lists
//! (S-2.1, S-2.2), connect/disconnect events for presence (S-8) and the hand-off of authorized
//! requests to the [`crate::router`]. The hub publishes through [`RmqttBus`], its [`Bus`].
//!
//! Two rmqtt facts shape this module:
//! - rmqtt runs its `message_publish` hook *before* the ACL check, so the hub takes requests in the
//!   `message_publish_check_acl` hook, where the allow-list decision is made: a request is routed
//!   only if it passed S-2.1.
//! - superusers skip rmqtt's ACL hooks altogether, so service users (S-1.5) are ordinary users whose
//!   allow-list is "any `$iothub/...` topic"; that keeps their requests flowing through the router.

mod admission;
pub mod authn;
mod fitter;
mod hooks;
mod retain;
mod router;
mod shared;
mod takeover;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rmqtt::codec::types::Publish as CodecPublish;
use rmqtt::codec::types::QoS;
use rmqtt::codec::v5::PublishProperties;
use rmqtt::context::ServerContext;
use rmqtt::hook::Type;
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::types::{From, Id, Publish};
use tokio::task::JoinHandle;

use crate::bus::Bus;
use crate::metrics::Metrics;
use crate::presence::Presence;
use crate::router::RouterHandle;
use authn::Authenticator;
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
}

/// Everything the hooks need to decide and to hand messages on.
pub(crate) struct HookDeps {
    pub authenticator: Authenticator,
    pub presence: Presence,
    pub router: RouterHandle,
    pub ota: crate::ota::OtaService,
    /// Topic filters a thing may hold subscribed at once.
    pub max_subscriptions: usize,
    /// Refusals of MQTT connections, summarized in the log.
    pub refusals: Arc<crate::guard::refusals::RefusalLog>,
}

/// A running embedded broker.
pub struct EmbeddedBroker {
    scx: ServerContext,
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Builds the broker context (hooks not yet attached). Then the hub starts it with its hooks attached.
    pub async fn context() -> ServerContext {
        let scx = ServerContext::new().build().await;
        *scx.extends.retain_mut().await = Box::new(retain::HubRetainer::default());
        *scx.extends.router_mut().await = Box::new(router::ThingRouter::new(Some(scx.clone())));
        *scx.extends.fitter_mgr_mut().await = Box::new(fitter::HubFitterManager);
        *scx.extends.shared_subscription_mut().await = Box::new(shared::RoundRobin::default());
        scx
    }

    /// Attaches the hub's hooks and starts listening.
    pub(crate) async fn start(
        scx: ServerContext,
        config: &BrokerConfig,
        deps: HookDeps,
    ) -> anyhow::Result<EmbeddedBroker> {
        let admission = admission::MqttAdmission::new(
            config.max_connections,
            config.max_pending,
            config.max_pending_per_addr,
            deps.refusals.clone(),
        );
        let handler = Arc::new(hooks::HubHooks::new(
            deps,
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
        register.start().await;

        let listener = Builder::new()
            .name("external/tcp")
            .laddr(config.addr)
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
            .message_expiry_interval(Duration::ZERO)
            .bind()
            .map_err(|e| anyhow::anyhow!("cannot listen for MQTT on {}: {e}", config.addr))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| anyhow::anyhow!("MQTT listener has no address: {e}"))?;
        let listener = listener
            .tcp()
            .map_err(|e| anyhow::anyhow!("MQTT listener: {e}"))?;
        let server = MqttServer::new(scx.clone())
            .listener_by_id(listener, local_addr.port())
            .build();
        let task = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "MQTT server stopped");
            }
        });
        Ok(EmbeddedBroker {
            scx,
            local_addr,
            task,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and drops the live ones.
    pub async fn stop(self) {
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
        for id in ids {
            kick(&self.scx, id).await;
        }
    }
}

/// The hub's [`Bus`] over the embedded broker.
#[derive(Clone)]
pub struct RmqttBus {
    scx: ServerContext,
    presence: Presence,
    metrics: Arc<Metrics>,
    hub_id: Id,
}

impl RmqttBus {
    /// A bus that publishes into `scx` as the hub itself.
    pub fn new(scx: ServerContext, presence: Presence, metrics: Arc<Metrics>) -> Self {
        let hub_id = Id::new(scx.node.id(), 0, None, None, "$iothub".into(), None);
        RmqttBus {
            scx,
            presence,
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
        kick(&self.scx, id).await;
    }

    fn is_connected(&self, client_id: &str) -> bool {
        self.presence.is_connected(client_id)
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

async fn kick(scx: &ServerContext, id: Id) {
    let entry = scx.extends.shared().await.entry(id.clone());
    match entry.try_lock().await {
        Ok(mut locked) => {
            if let Err(e) = locked.kick(true, true, true).await {
                tracing::warn!(client = %id.client_id, error = %e, "kick failed");
            }
        }
        Err(e) => tracing::warn!(client = %id.client_id, error = %e, "kick: session busy"),
    }
}
