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

pub mod dynsec;
pub mod log;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use iothub_spec::topic::Topic;
use iothub_spec::topic::grants::HUB_REQUEST_FILTERS;
use rand::Rng;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::bus::{Bus, BusError, ThingChange};
use crate::cluster::Ownership;
use crate::edge::{Client, Events, PublishIn};
use crate::store::SharedStore;

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

/// The connection to dynamic-security: numbered command documents and their answers.
struct Control {
    client: AsyncClient,
    /// Whether the hub's subscriptions (the answers' topic among them) are in place.
    ready: watch::Receiver<bool>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// Prefix of this instance's correlation data: every hub on the broker sees every answer.
    prefix: String,
    next: AtomicU64,
    slots: Semaphore,
}

impl Control {
    /// Sends `commands` as one document and returns one answer per command, in order.
    async fn call(&self, mut commands: Vec<Value>) -> Result<Vec<Value>, BusError> {
        let timeout = |what: &str| BusError::Unavailable(format!("no {what} within {DEADLINE:?}"));
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| BusError::Unavailable("stopped".into()))?;
        let mut ready = self.ready.clone();
        tokio::time::timeout(DEADLINE, ready.wait_for(|r| *r))
            .await
            .map_err(|_| timeout("connection to the broker"))?
            .map_err(|_| BusError::Unavailable("stopped".into()))?;
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        for command in &mut commands {
            if let Some(map) = command.as_object_mut() {
                map.insert("correlationData".into(), Value::from(id.as_str()));
            }
        }
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.clone(), tx);
        let body = json!({ "commands": commands }).to_string();
        let sent = tokio::time::timeout(
            DEADLINE,
            self.client
                .publish(dynsec::CONTROL_TOPIC, QoS::AtLeastOnce, false, body),
        )
        .await;
        let answer = match sent {
            Ok(Ok(())) => tokio::time::timeout(DEADLINE, rx)
                .await
                .ok()
                .and_then(Result::ok),
            _ => None,
        };
        self.lock().remove(&id);
        let answer = answer.ok_or_else(|| timeout("dynamic-security answer"))?;
        let responses = answer
            .get("responses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if responses.len() != commands.len() {
            return Err(BusError::Refused(format!(
                "{} answers to {} commands",
                responses.len(),
                commands.len()
            )));
        }
        Ok(responses)
    }

    /// Like [`Control::call`], failing unless every command [`dynsec::succeeded`].
    async fn apply(&self, commands: Vec<Value>) -> Result<(), BusError> {
        let answers = self.call(commands.clone()).await?;
        for (command, answer) in commands.iter().zip(&answers) {
            if !dynsec::succeeded(command, answer) {
                return Err(BusError::Refused(format!(
                    "{}: {}",
                    command["command"].as_str().unwrap_or("?"),
                    answer["error"].as_str().unwrap_or("?")
                )));
            }
        }
        Ok(())
    }

    /// An answer document arrived: hand it to the call that waits for it.
    fn deliver(&self, payload: &[u8]) {
        let Ok(answer) = serde_json::from_slice::<Value>(payload) else {
            tracing::warn!("unreadable dynamic-security answer");
            return;
        };
        let id = answer
            .pointer("/responses/0/correlationData")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(tx) = self.lock().remove(id) {
            let _ = tx.send(answer);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Value>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Up to [`ACCOUNTS_PER_DOCUMENT`] accounts per command document: Mosquitto writes its whole
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

/// Feeds the core in arrival order: log lines become connects, disconnects and subscriptions;
/// request topics become [`Events::publish_in`] from the topic's thing. With several instances
/// (D-73) each takes the requests and presence of its own things, every method response (the
/// call may be waiting here), and, on the leader, OTA results and subscriptions; every instance
/// keeps the whole list of connected clients.
async fn feed(
    mut inbound: mpsc::Receiver<Publish>,
    events: Arc<dyn Events>,
    connected: Connected,
    progress: Arc<Progress>,
    ownership: Arc<Ownership>,
) {
    while let Some(publish) = inbound.recv().await {
        handle(&publish, events.as_ref(), &connected, &ownership).await;
        progress.handled.send_modify(|n| *n += 1);
    }
}

/// One message from the broker: a log line, or a device request for the core.
async fn handle(
    publish: &Publish,
    events: &dyn Events,
    connected: &Connected,
    ownership: &Ownership,
) {
    let Ok(topic) = std::str::from_utf8(&publish.topic) else {
        return;
    };
    if topic.starts_with("$SYS/") {
        let Ok(line) = std::str::from_utf8(&publish.payload) else {
            return;
        };
        let subscribe = topic.ends_with("/subscribe");
        if let Some(event) = log::parse(line, subscribe) {
            on_log(event, events, connected, ownership).await;
        }
        return;
    }
    let Some(parsed) = Topic::parse(topic).ok().filter(Topic::is_hub_request) else {
        return;
    };
    let thing = parsed.thing().to_owned();
    let ours = match parsed {
        // The call may be waiting on this instance; an unknown token is dropped.
        Topic::MethodResponse { .. } => true,
        // OTA rollouts run on the leader only.
        Topic::OtaTaskResult { .. } => ownership.is_leader(),
        _ => ownership.owns(&thing),
    };
    if !ours {
        return;
    }
    events
        .publish_in(PublishIn {
            sender: &thing,
            topic,
            payload: &publish.payload,
            received_at: crate::clock::now_ms(),
        })
        .await;
}

async fn on_log(
    event: log::LogEvent<'_>,
    events: &dyn Events,
    connected: &Connected,
    ownership: &Ownership,
) {
    match event {
        log::LogEvent::Connected {
            client_id,
            username,
            addr,
        } => {
            // Mosquitto logs no line for the connection a takeover closes: a second connect of a
            // connected identifier is that takeover (S-1.4).
            let remote_addr = addr.parse().ok();
            let replaced = lock(connected)
                .insert(client_id.to_owned(), (username.to_owned(), remote_addr))
                .is_some();
            if !ownership.owns(client_id) {
                return;
            }
            let client = Client {
                client_id,
                username,
                remote_addr,
            };
            events.connected(&client, replaced).await;
        }
        log::LogEvent::Disconnected { client_id, reason } => {
            let Some((username, remote_addr)) = lock(connected).remove(client_id) else {
                return;
            };
            if !ownership.owns(client_id) {
                return;
            }
            let client = Client {
                client_id,
                username: &username,
                remote_addr,
            };
            events.disconnected(&client, reason, true).await;
        }
        log::LogEvent::Subscribed { client_id, filter } => {
            let Some((username, remote_addr)) = lock(connected).get(client_id).cloned() else {
                return;
            };
            // A subscription only makes a thing ready for the OTA rollouts, which the leader runs.
            if !ownership.is_leader() {
                return;
            }
            let client = Client {
                client_id,
                username: &username,
                remote_addr,
            };
            events.subscribed(&client, filter).await;
        }
    }
}

/// Makes the broker's accounts follow the registry (D-62): reads the broker, then the registry,
/// plans with [`dynsec::plan`], sends the commands in paced documents.
async fn reconcile(control: &Control, store: &SharedStore) -> anyhow::Result<()> {
    let mut clients = Vec::new();
    let mut roles = HashSet::new();
    loop {
        let offset = clients.len();
        let answers = control
            .call(vec![
                json!({"command": "listClients", "verbose": true, "count": 1000, "offset": offset}),
            ])
            .await?;
        let (total, page) = answers
            .first()
            .and_then(dynsec::parse_clients)
            .context("unreadable listClients answer")?;
        let done = page.is_empty();
        clients.extend(page);
        if done || clients.len() as u64 >= total {
            break;
        }
    }
    loop {
        let offset = roles.len();
        let answers = control
            .call(vec![
                json!({"command": "listRoles", "verbose": false, "count": 1000, "offset": offset}),
            ])
            .await?;
        let (total, page) = answers
            .first()
            .and_then(dynsec::parse_roles)
            .context("unreadable listRoles answer")?;
        let done = page.is_empty();
        roles.extend(page);
        if done || roles.len() as u64 >= total {
            break;
        }
    }
    // The registry is read after the broker: a thing created meanwhile then looks missing on
    // the broker (its re-creation fails harmlessly, the account exists), never like a deleted
    // thing whose account and role are removed under a live connection.
    let mut registry = HashMap::new();
    for page in 0.. {
        let (total, things) = store
            .list_things(page, 1000, None)
            .await
            .context("cannot read the registry")?;
        let last = things.is_empty() || (page + 1) * 1000 >= total;
        registry.extend(things.into_iter().map(|t| (t.thing_id, t.enabled)));
        if last {
            break;
        }
    }
    let plan = dynsec::plan(&registry, &clients, &roles);
    if !plan.foreign.is_empty() {
        tracing::warn!(things = ?plan.foreign, "broker accounts named like things but not the hub's; left alone");
    }
    if !plan.without_secret.is_empty() {
        tracing::warn!(count = plan.without_secret.len(), first = ?plan.without_secret.first(), "things had no broker account; created without a secret, they cannot connect until they get a new one");
    }
    for command in &plan.commands {
        tracing::debug!(command = %command["command"], name = %command.get("username").or(command.get("rolename")).unwrap_or(&serde_json::Value::Null), "reconciling");
    }
    let mut failed = 0usize;
    for batch in plan.commands.chunks(RECONCILE_BATCH) {
        let answers = control.call(batch.to_vec()).await?;
        failed += batch
            .iter()
            .zip(&answers)
            .filter(|(c, a)| !dynsec::succeeded(c, a))
            .count();
        tokio::time::sleep(RECONCILE_PAUSE).await;
    }
    tracing::info!(
        things = registry.len(),
        accounts = clients.len(),
        commands = plan.commands.len(),
        failed,
        "broker accounts reconciled with the registry"
    );
    Ok(())
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
