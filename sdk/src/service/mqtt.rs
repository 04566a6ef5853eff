//! [`MqttForward`]: republishes each message to another MQTT broker on a templated topic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Handler, HandlerError, Message, random_unit};
use crate::Backoff;

/// What a topic template may hold besides literal levels.
const PLACEHOLDERS: [&str; 2] = ["{thingId}", "{kind}"];
/// How long [`Handler::close`] waits for the broker to acknowledge what was published.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an [`MqttForward`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttForwardError {
    /// The topic template is empty, holds a wildcard, an unknown `{...}` or a NUL.
    #[error("invalid topic template {0:?}")]
    Template(String),
}

/// Where and how an [`MqttForward`] republishes.
#[derive(Debug, Clone)]
pub struct MqttForwardOptions {
    host: String,
    port: u16,
    client_id: String,
    credentials: Option<(String, String)>,
    template: String,
    backoff: Backoff,
}

impl MqttForwardOptions {
    /// Republishes to the broker at `host:port` on `template`, where `{thingId}` and `{kind}`
    /// ([`Kind::name`](super::Kind::name)) are replaced: `devices/{thingId}/telemetry`.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        template: impl Into<String>,
    ) -> Result<MqttForwardOptions, MqttForwardError> {
        let template = template.into();
        let mut rest = template.clone();
        for p in PLACEHOLDERS {
            rest = rest.replace(p, "x");
        }
        if template.is_empty() || rest.contains(['+', '#', '{', '}', '\0']) {
            return Err(MqttForwardError::Template(template));
        }
        Ok(MqttForwardOptions {
            host: host.into(),
            port,
            client_id: format!("iothub-forward-{}", std::process::id()),
            credentials: None,
            template,
            backoff: Backoff::default(),
        })
    }

    /// The MQTT client identifier (default `iothub-forward-{pid}`).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// User name and password for the broker.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// The pause between reconnection attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The topic a message is republished on.
    pub fn topic_for(&self, msg: &Message) -> String {
        self.template
            .replace("{thingId}", &msg.thing)
            .replace("{kind}", msg.kind.name())
    }
}

/// A handler that republishes each message's payload unchanged, QoS 1, to another MQTT broker
/// (MQTT 5) on a topic made from a template ([`MqttForwardOptions::new`]).
///
/// The connection is its own: it reconnects with backoff and jitter, and rumqttc sends again
/// what the broker had not acknowledged. `handle` returns once the message is queued for the
/// connection; [`Handler::close`] waits (up to 10 s) until the broker acknowledged everything
/// published, then disconnects.
pub struct MqttForward {
    opts: MqttForwardOptions,
    client: AsyncClient,
    published: AtomicU64,
    acked: watch::Receiver<u64>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl MqttForward {
    /// Starts the connection (in the background; `handle` waits while it is down and the
    /// request queue is full). Call from within a tokio runtime.
    pub fn start(opts: MqttForwardOptions) -> MqttForward {
        let mut o = MqttOptions::new(&opts.client_id, &opts.host, opts.port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_clean_start(true);
        if let Some((user, password)) = &opts.credentials {
            o.set_credentials(user, password);
        }
        let (client, mut el) = AsyncClient::new(o, 256);
        let (acked_tx, acked) = watch::channel(0u64);
        let backoff = opts.backoff;
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => failures = 0,
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
                    Err(e) => {
                        let delay = backoff.delay(failures, random_unit());
                        tracing::warn!(error = %e, ?delay, "mqtt forward: connection lost");
                        failures = failures.saturating_add(1);
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        });
        MqttForward {
            opts,
            client,
            published: AtomicU64::new(0),
            acked,
            task: std::sync::Mutex::new(Some(task)),
        }
    }
}

impl Handler for MqttForward {
    fn name(&self) -> &str {
        "mqtt-forward"
    }

    async fn handle(&self, msg: Arc<Message>) -> Result<(), HandlerError> {
        let topic = self.opts.topic_for(&msg);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, msg.payload.clone())
            .await?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn close(&self) {
        let want = self.published.load(Ordering::Relaxed);
        let mut acked = self.acked.clone();
        let all = acked.wait_for(|n| *n >= want);
        if tokio::time::timeout(CLOSE_TIMEOUT, all).await.is_err() {
            tracing::warn!(
                published = want,
                acked = *self.acked.borrow(),
                "mqtt forward: closing with messages not acknowledged"
            );
        }
        let _ = self.client.disconnect().await;
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, task).await;
        }
    }
}
