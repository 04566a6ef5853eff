//! External broker mode (issue 23, D-60..D-66): the hub on a Mosquitto 2.0 it does not run.
//!
//! Devices connect to Mosquitto, which authenticates them and enforces S-2.1 with the accounts
//! the hub keeps in its dynamic-security plugin ([`dynsec`]). The hub joins as one privileged
//! MQTT 5 client and
//! - consumes the device requests ([`HUB_REQUEST_FILTERS`]) and hands them to the core as
//!   [`Events::publish_in`] whose sender is the topic's thing (Mosquitto already held the sender
//!   to its own topics);
//! - publishes replies, deltas, documents, presence and OTA tasks through the [`Bus`];
//! - reads connects, disconnects and subscriptions from Mosquitto's log topics ([`log`], D-63);
//! - applies every registry change to dynamic-security ([`Bus::thing_changed`]) and reconciles
//!   the accounts with the registry at start-up.
//!
//! One task drives the connection (reconnecting with backoff and jitter, resubscribing after
//! every CONNACK), one feeds the core in order through a bounded queue, so a slow core holds
//! Mosquitto back instead of growing memory.

mod control;
pub mod dynsec;
mod feed;
pub mod log;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use iothub_spec::topic::grants::HUB_REQUEST_FILTERS;
use rand::Rng;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use crate::bus::{Bus, BusError, ThingChange};
use crate::cluster::Ownership;
use crate::edge::Events;
use crate::store::SharedStore;
use control::{Control, reconcile};
use feed::feed;

/// Messages from Mosquitto waiting for the core; when full, the connection task waits.
const INBOUND_QUEUE: usize = 1024;
/// Requests (publishes, subscribes, commands) waiting for the connection task.
const OUTBOUND_QUEUE: usize = 1024;
/// Longest wait for a publish to be queued, or for a dynamic-security answer.
const DEADLINE: Duration = Duration::from_secs(10);
/// Dynamic-security command documents in flight at once.
const CONTROL_IN_FLIGHT: usize = 4;
/// New things' accounts per command document when a batch is created.
const ACCOUNTS_PER_DOCUMENT: usize = 100;
/// Commands per document during reconciliation, and the pause between documents: a large
/// registry is reconciled in paced steps instead of one burst on the broker's only thread.
const RECONCILE_BATCH: usize = 100;
const RECONCILE_PAUSE: Duration = Duration::from_millis(20);
/// Reconnect backoff: doubled per failure from the first, capped, with up to half of it as
/// random jitter so hubs restarted together do not reconnect in step.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Seconds Mosquitto keeps the hub's session (and queues requests for it) while it reconnects.
const SESSION_EXPIRY_SECS: u32 = 300;

/// Where and as whom the hub joins the external broker (`--broker*` flags).
#[derive(Clone)]
pub struct ExternalConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// The hub's user name.
    pub username: String,
    /// This instance's name among the hubs on the broker (D-73); its client identifier is
    /// `username/instance`.
    pub instance: String,
    /// Its password.
    pub password: String,
}

/// Why a `--broker` URL is not usable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    /// Only `mqtt://` is served.
    #[error("the broker URL must start with mqtt:// (TLS to the broker is not served yet)")]
    Scheme,
    /// No `:PORT`, or not a number from 1 to 65535.
    #[error("the broker URL needs a port from 1 to 65535: mqtt://HOST:PORT")]
    Port,
    /// Empty host, or a path after the port.
    #[error("the broker URL must be mqtt://HOST:PORT, nothing more")]
    Shape,
}

/// Splits `mqtt://HOST:PORT` into host and port.
pub fn parse_broker_url(url: &str) -> Result<(String, u16), BrokerUrlError> {
    let rest = url.strip_prefix("mqtt://").ok_or(BrokerUrlError::Scheme)?;
    let (host, port) = rest.rsplit_once(':').ok_or(BrokerUrlError::Port)?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or(BrokerUrlError::Port)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(BrokerUrlError::Shape);
    }
    Ok((host.to_owned(), port))
}

impl ExternalConfig {
    /// The external broker of `config`, or `None` for the embedded one.
    pub fn from_config(config: &crate::Config) -> anyhow::Result<Option<ExternalConfig>> {
        let Some(url) = &config.broker else {
            return Ok(None);
        };
        let (host, port) = parse_broker_url(url)?;
        let password = match (&config.broker_password, &config.broker_password_file) {
            (Some(p), None) => p.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read --broker-password-file {}", file.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            (None, None) => {
                anyhow::bail!("--broker needs --broker-password or --broker-password-file")
            }
            (Some(_), Some(_)) => {
                anyhow::bail!("give --broker-password or --broker-password-file, not both")
            }
        };
        Ok(Some(ExternalConfig {
            host,
            port,
            username: config.broker_username.clone(),
            instance: config
                .instance_id
                .clone()
                .unwrap_or_else(crate::cluster::default_instance_id),
            password,
        }))
    }
}

/// Who is connected, as read from the broker's log: client identifier → user name and the
/// address its connect line named (the disconnect lines name none, S-8.1 wants it on both).
type Connected = Arc<Mutex<HashMap<String, (String, Option<SocketAddr>)>>>;

/// How far the feeder has got: messages the driver handed it, and messages it has handled.
/// [`Bus::presence_caught_up`] waits for the second to reach the first.
#[derive(Default)]
struct Progress {
    received: AtomicU64,
    handled: watch::Sender<u64>,
}

/// The [`Bus`] over the hub's connection to the external broker.
pub struct ExternalBus {
    client: AsyncClient,
    control: Arc<Control>,
    connected: Connected,
    progress: Arc<Progress>,
}

#[async_trait]
impl Bus for ExternalBus {
    async fn publish(&self, topic: &str, payload: Bytes, retain: bool) {
        let queued = tokio::time::timeout(
            DEADLINE,
            self.client
                .publish_bytes(topic, QoS::AtLeastOnce, retain, payload),
        )
        .await;
        if !matches!(queued, Ok(Ok(()))) {
            tracing::warn!(%topic, "publish to the external broker dropped: its queue stayed full");
        }
    }

    /// Mosquitto 2.0 closes a client's connections only when its account changes; the hub's
    /// disable and delete do that through [`Bus::thing_changed`] (D-61), so nothing is left
    /// to do here.
    async fn disconnect(&self, client_id: &str) {
        tracing::debug!(%client_id, "disconnect on the external broker happens through its account");
    }

    fn is_connected(&self, client_id: &str) -> bool {
        lock(&self.connected).contains_key(client_id)
    }

    /// A dynamic-security round trip is the barrier: Mosquitto answers the command after the
    /// log lines it queued for the hub before it, and the driver hands those lines to the
    /// feeder before it reads the answer; then the feeder has to handle them.
    async fn presence_caught_up(&self) {
        let probe = json!({"command": "getDefaultACLAccess"});
        if let Err(e) = self.control.call(vec![probe]).await {
            tracing::debug!(error = %e, "presence barrier through the broker failed");
            return;
        }
        let target = self.progress.received.load(Ordering::Acquire);
        let mut handled = self.progress.handled.subscribe();
        let _ = tokio::time::timeout(DEADLINE, handled.wait_for(|n| *n >= target)).await;
    }

    async fn thing_changed(&self, thing: &str, change: ThingChange<'_>) -> Result<(), BusError> {
        let commands = match change {
            ThingChange::Created { password } => create_account(thing, password)?,
            ThingChange::Enabled(enabled) => vec![dynsec::set_enabled(thing, enabled)],
            ThingChange::Deleted => vec![dynsec::delete_client(thing), dynsec::delete_role(thing)],
        };
        self.control.apply(commands).await
    }

    /// Up to 100 accounts (`ACCOUNTS_PER_DOCUMENT`) per command document: Mosquitto writes its whole
    /// account file after each document, so one per thing made a batch of 1,000 things take
    /// about a minute.
    async fn things_created(&self, things: &[(&str, &str)]) -> Vec<Result<(), BusError>> {
        let mut results = Vec::with_capacity(things.len());
        for chunk in things.chunks(ACCOUNTS_PER_DOCUMENT) {
            let mut commands = Vec::new();
            let mut sizes = Vec::new();
            for (thing, password) in chunk {
                match create_account(thing, password) {
                    Ok(c) => {
                        sizes.push(Ok(c.len()));
                        commands.extend(c);
                    }
                    Err(e) => sizes.push(Err(e)),
                }
            }
            let answers = self.control.call(commands.clone()).await;
            let mut at = 0;
            for size in sizes {
                results.push(size.and_then(|n| {
                    let answers = answers.as_ref().map_err(Clone::clone)?;
                    let range = at..at + n;
                    at += n;
                    for (command, answer) in commands[range.clone()].iter().zip(&answers[range]) {
                        if !dynsec::succeeded(command, answer) {
                            return Err(BusError::Refused(format!(
                                "{}: {}",
                                command["command"].as_str().unwrap_or("?"),
                                answer["error"].as_str().unwrap_or("?")
                            )));
                        }
                    }
                    Ok(())
                }));
            }
        }
        results
    }
}

/// The commands that give a new thing its account. A leftover account of the same name (a
/// thing deleted while the hub could not reach the broker) is replaced, never reused.
fn create_account(thing: &str, password: &str) -> Result<Vec<Value>, BusError> {
    let role =
        dynsec::create_role(thing).ok_or_else(|| BusError::Refused("not a thing id".into()))?;
    Ok(vec![
        dynsec::delete_client(thing),
        dynsec::delete_role(thing),
        role,
        dynsec::create_client(thing, Some(password)),
    ])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The client made, not yet connected: its [`Bus`] exists so the services can be built before
/// [`Prepared::start`] hands the core's [`Events`] in.
pub struct Prepared {
    config: ExternalConfig,
    addr: SocketAddr,
    bus: Arc<ExternalBus>,
    eventloop: EventLoop,
    ready: watch::Sender<bool>,
}

/// The running connection to the external broker.
pub struct ExternalBroker {
    addr: SocketAddr,
    client: AsyncClient,
    tasks: Vec<JoinHandle<()>>,
}

impl Prepared {
    /// Makes the hub's MQTT 5 client for `config` (nothing is sent yet).
    pub fn new(config: ExternalConfig) -> anyhow::Result<Prepared> {
        let addr = (config.host.as_str(), config.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve the broker {}:{}", config.host, config.port))?
            .next()
            .with_context(|| format!("no address for the broker {}", config.host))?;
        let client_id = format!("{}/{}", config.username, config.instance);
        let mut options = MqttOptions::new(client_id, config.host.clone(), config.port);
        options
            .set_credentials(config.username.clone(), config.password.clone())
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_start(false)
            .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
            .set_max_packet_size(Some(4 * 1024 * 1024));
        // Replies are small writes: without this, Nagle holds one back until the broker's
        // delayed ACK (about 40 ms on Linux).
        let mut network = options.network_options();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, eventloop) = AsyncClient::new(options, OUTBOUND_QUEUE);
        let (ready, ready_rx) = watch::channel(false);
        let control = Arc::new(Control {
            client: client.clone(),
            ready: ready_rx,
            waiting: Mutex::default(),
            prefix: format!("iothub-{}", config.instance),
            next: AtomicU64::new(0),
            slots: Semaphore::new(CONTROL_IN_FLIGHT),
        });
        let bus = Arc::new(ExternalBus {
            client,
            control,
            connected: Connected::default(),
            progress: Arc::default(),
        });
        Ok(Prepared {
            config,
            addr,
            bus,
            eventloop,
            ready,
        })
    }

    /// The bus the services publish through.
    pub fn bus(&self) -> Arc<ExternalBus> {
        self.bus.clone()
    }

    /// Connects, feeds `events` from then on with what concerns the things of `ownership`
    /// (D-73), and reconciles the broker's accounts with the registry in `store` in the
    /// background.
    pub fn start(
        self,
        events: Arc<dyn Events>,
        store: SharedStore,
        ownership: Arc<Ownership>,
    ) -> ExternalBroker {
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let bus = self.bus.clone();
        tracing::info!(broker = %format!("{}:{}", self.config.host, self.config.port), user = %self.config.username, instance = %self.config.instance, "joining the external broker");
        let driver = tokio::spawn(drive(
            self.eventloop,
            bus.client.clone(),
            bus.control.clone(),
            self.ready,
            inbound_tx,
            bus.progress.clone(),
        ));
        let feeder = tokio::spawn(feed(
            inbound_rx,
            events,
            bus.connected.clone(),
            bus.progress.clone(),
            ownership,
        ));
        let control = bus.control.clone();
        let reconciler = tokio::spawn(async move {
            if let Err(e) = reconcile(&control, &store).await {
                tracing::error!(error = %e, "reconciling the broker's accounts failed; they follow the registry again at the next start");
            }
        });
        ExternalBroker {
            addr: self.addr,
            client: bus.client.clone(),
            tasks: vec![driver, feeder, reconciler],
        }
    }
}

impl ExternalBroker {
    /// The broker's address (where devices connect).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Leaves the broker (a clean DISCONNECT) and stops the tasks.
    pub async fn stop(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.disconnect()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Drives the connection: polls the event loop, subscribes after every CONNACK, routes answers
/// to [`Control`] and everything else to the feeder, and waits with backoff after a failure
/// (rumqttc reconnects at the next poll).
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    control: Arc<Control>,
    ready: watch::Sender<bool>,
    inbound: mpsc::Sender<Publish>,
    progress: Arc<Progress>,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("connected to the external broker");
                backoff = BACKOFF_FIRST;
                let filters: Vec<Filter> = HUB_REQUEST_FILTERS
                    .iter()
                    .chain(log::LOG_FILTERS.iter())
                    .chain([dynsec::RESPONSE_TOPIC].iter())
                    .map(|f| Filter::new(*f, QoS::AtLeastOnce))
                    .collect();
                // Not awaited here: this task is the one that empties the request queue.
                if client.try_subscribe_many(filters).is_err() {
                    tracing::error!("cannot queue the hub's subscriptions");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .filter(|c| {
                        !matches!(
                            c,
                            rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                        )
                    })
                    .count();
                if refused > 0 {
                    tracing::error!(
                        refused,
                        "the broker refused some of the hub's subscriptions: check its role (docs/running-at-scale.md)"
                    );
                }
                let _ = ready.send(true);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publish.topic.as_ref() == dynsec::RESPONSE_TOPIC.as_bytes() {
                    control.deliver(&publish.payload);
                } else if inbound.send(publish).await.is_err() {
                    return;
                } else {
                    progress.received.fetch_add(1, Ordering::Release);
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = ready.send(false);
                let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
                let wait = backoff + Duration::from_millis(jitter);
                tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "external broker connection lost; reconnecting");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883))
        );
        assert_eq!(
            parse_broker_url("mqtt://[::1]:1883"),
            Ok(("::1".into(), 1883))
        );
        assert_eq!(parse_broker_url("mqtts://h:1"), Err(BrokerUrlError::Scheme));
        assert_eq!(parse_broker_url("mqtt://h"), Err(BrokerUrlError::Port));
        assert_eq!(parse_broker_url("mqtt://h:0"), Err(BrokerUrlError::Port));
        assert_eq!(parse_broker_url("mqtt://:1883"), Err(BrokerUrlError::Shape));
        assert_eq!(
            parse_broker_url("mqtt://h/x:1883"),
            Err(BrokerUrlError::Shape)
        );
    }
}
