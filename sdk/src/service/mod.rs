//! The back-end side: a [`Receiver`] connects to the hub as a service user (S-1.5), subscribes
//! to fleet streams (telemetry, application messages, shadow documents, presence and lifecycle
//! events; the filters of `iothub_spec::topic::fleet`) and dispatches each message to
//! [`Handler`]s. Several receiver processes share the load as members of one MQTT 5 shared
//! subscription group ([`ReceiverOptions::shared_group`], S-2.8, D-80): the hub hands each
//! message to one member.
//!
//! Handlers shipped: [`JsonLines`] (one JSON record per line to stdout or any writer),
//! [`HttpForward`] (POST to a URL, retries with backoff and jitter) and [`MqttForward`]
//! (republish to another broker on a topic template, QoS 1).
//!
//! ```no_run
//! use iothub_sdk::service::{JsonLines, Receiver, ReceiverOptions, Stream};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let opts = ReceiverOptions::new("127.0.0.1", 1883, "$backend", "secret")?
//!     .shared_group("telemetry-writers")?
//!     .streams([Stream::Telemetry]);
//! let stats = Receiver::new(opts)
//!     .handler(JsonLines::stdout())
//!     .run(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! eprintln!("{} messages", stats.received);
//! # Ok(()) }
//! ```

mod handler;
mod http;
mod message;
mod mqtt;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use iothub_spec::ids::is_service_user;
use iothub_spec::limits::Limits;
use iothub_spec::topic::fleet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use tokio::sync::{mpsc, watch};

pub use handler::{Handler, HandlerError, JsonLines};
pub use http::{HttpForward, HttpForwardError};
pub use message::{Kind, Message, Stream};
pub use mqtt::{MqttForward, MqttForwardError, MqttForwardOptions};

use crate::{Backoff, max_document_bytes};
use handler::DynHandler;

/// How long a clean shutdown waits for the DISCONNECT to be written.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) use crate::driver::random_unit;

/// Why a receiver could not be set up or stopped for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiverError {
    /// The user name is not a service user's (it must start with `$`, and not `$claim/`,
    /// S-1.5).
    #[error("{0:?} is not a service user name")]
    NotServiceUser(String),
    /// The shared group name is empty or holds `/`, `+`, `#` or NUL (MQTT 5 §4.8.2).
    #[error("invalid shared subscription group {0:?}")]
    InvalidGroup(String),
    /// The hub refused the first CONNECT (S-1.3: wrong secret or unknown service user); later
    /// refusals are retried with backoff.
    #[error("connection refused by the hub: {0}")]
    Refused(String),
    /// The hub refused a subscription (a broker without shared subscriptions, D-80).
    #[error("subscription to {filter} refused: {code}")]
    SubscribeRefused {
        /// The filter as sent.
        filter: String,
        /// The SUBACK reason.
        code: String,
    },
    /// TLS could not be set up (PEM text without a usable certificate or key), or the first
    /// TLS handshake failed for a reason retrying does not fix ([`crate::TlsError::Handshake`]:
    /// the hub's certificate is not trusted or does not name the host, or the hub refused the
    /// client certificate); later handshake failures are retried with backoff.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::TlsError),
}

/// Where a [`Receiver`] connects, as whom, and to what.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    host: String,
    port: u16,
    user: String,
    secret: String,
    client_id: String,
    group: Option<String>,
    streams: Vec<Stream>,
    queue: usize,
    keep_alive: Duration,
    backoff: Backoff,
    max_message_bytes: usize,
    #[cfg(feature = "tls")]
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The roots given to [`ReceiverOptions::tls_ca_pem`], for a later client certificate.
    #[cfg(feature = "tls")]
    tls_roots: Option<rustls::RootCertStore>,
}

impl ReceiverOptions {
    /// Connects to the hub's MQTT listener at `host:port` as service user `user` (configured in
    /// the hub, S-1.5) with its secret; subscribes to every [`Stream`], not shared. Fails for a
    /// user name that is not a service user's.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        secret: impl Into<String>,
    ) -> Result<ReceiverOptions, ReceiverError> {
        let user = user.into();
        if !is_service_user(&user) {
            return Err(ReceiverError::NotServiceUser(user));
        }
        let client_id = format!(
            "{}-receiver-{}-{:x}",
            user.trim_start_matches('$'),
            std::process::id(),
            (random_unit() * f64::from(u32::MAX)) as u32
        );
        Ok(ReceiverOptions {
            host: host.into(),
            port,
            user,
            secret: secret.into(),
            client_id,
            group: None,
            streams: Stream::ALL.to_vec(),
            queue: 1024,
            keep_alive: Duration::from_secs(30),
            backoff: Backoff::default(),
            max_message_bytes: max_document_bytes(Limits::DEFAULT.max_state_bytes),
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            tls_roots: None,
        })
    }

    /// Connect with TLS (feature `tls`) to the hub's MQTT over TLS listener (`--mqtts-addr`),
    /// trusting exactly the CA certificates in `ca_pem` (PEM; the system roots are not used).
    /// The hub's certificate must name the host given to [`ReceiverOptions::new`] (a DNS name
    /// or an IP address SAN). Replaces any earlier TLS setting, client certificate included.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use iothub_sdk::service::ReceiverOptions;
    /// let opts = ReceiverOptions::new("hub.example.com", 8883, "$backend", "secret")?
    ///     .tls_ca_pem(&std::fs::read("ca.pem")?)?
    ///     // Optional, when the hub asks for client certificates:
    ///     .tls_client_cert_pem(&std::fs::read("backend.pem")?, &std::fs::read("backend.key")?)?;
    /// # let _ = opts;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_ca_pem(mut self, ca_pem: &[u8]) -> Result<Self, ReceiverError> {
        let roots = crate::tls::roots(ca_pem)?;
        self.tls = Some(crate::tls::client_config(roots.clone(), None)?);
        self.tls_roots = Some(roots);
        Ok(self)
    }

    /// Also present a client certificate (mutual TLS, feature `tls`): `cert_chain_pem` holds
    /// the certificate (then any intermediates), `key_pem` its private key. The service user
    /// still logs in with its name and secret (S-1.5). Call after
    /// [`ReceiverOptions::tls_ca_pem`].
    #[cfg(feature = "tls")]
    pub fn tls_client_cert_pem(
        mut self,
        cert_chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, ReceiverError> {
        let roots = self.tls_roots.clone().ok_or(crate::TlsError::NoCa)?;
        self.tls = Some(crate::tls::client_config(
            roots,
            Some((cert_chain_pem, key_pem)),
        )?);
        Ok(self)
    }

    /// Connect with TLS using a ready rustls configuration (feature `tls`).
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self.tls_roots = None;
        self
    }

    /// Whether the connection uses TLS.
    pub fn uses_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.tls.is_some()
        }
        #[cfg(not(feature = "tls"))]
        {
            false
        }
    }

    /// Joins shared subscription group `group` (`$share/{group}/{filter}`, S-2.8): the
    /// receivers of one group split the messages between them, each message to one of them.
    pub fn shared_group(mut self, group: impl Into<String>) -> Result<Self, ReceiverError> {
        let group = group.into();
        if !fleet::is_valid_share_group(&group) {
            return Err(ReceiverError::InvalidGroup(group));
        }
        self.group = Some(group);
        Ok(self)
    }

    /// The streams to subscribe to (default: all).
    pub fn streams(mut self, streams: impl IntoIterator<Item = Stream>) -> Self {
        self.streams = streams.into_iter().collect();
        self
    }

    /// The capacity of each handler's queue (default 1024, at least 1).
    pub fn queue(mut self, capacity: usize) -> Self {
        self.queue = capacity.max(1);
        self
    }

    /// The MQTT client identifier (default: the user name without `$`, `-receiver-`, the
    /// process id and a random number; each receiver needs its own, or the hub's takeover
    /// closes the other, S-1.4).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// MQTT keep alive (default 30 s).
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// The pause between reconnection attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The largest message accepted (default: what the hub's default limits allow for a
    /// shadow's `update/documents`, [`max_document_bytes`]).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The SUBSCRIBE filters: each stream's fleet filter, as `$share/{group}/...` in a group.
    pub fn filters(&self) -> Vec<String> {
        self.streams
            .iter()
            .map(|s| match &self.group {
                // The group was validated and a fleet filter is at most ~50 bytes, so this
                // cannot fail; the plain filter is no wrong answer if it ever did.
                Some(g) => fleet::shared(g, s.filter())
                    .map(|f| f.as_str().to_owned())
                    .unwrap_or_else(|_| s.filter().to_owned()),
                None => s.filter().to_owned(),
            })
            .collect()
    }
}

/// What one handler did during a receiver's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerStats {
    /// [`Handler::name`].
    pub name: String,
    /// Messages handled without error.
    pub handled: u64,
    /// Messages whose `handle` failed.
    pub failed: u64,
}

/// What a receiver did during its run, returned by [`Receiver::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Messages received on the fleet streams.
    pub received: u64,
    /// Per handler, in the order they were added.
    pub handlers: Vec<HandlerStats>,
}

/// A service-user connection that dispatches fleet messages to handlers.
///
/// [`Receiver::run`] drives it: it connects, subscribes to [`ReceiverOptions::filters`] at QoS 1
/// after every CONNACK, and puts each message into every handler's bounded queue. When a queue
/// is full the receiver waits before reading on, and the hub's flow control (MQTT 5 Receive
/// Maximum, then its queue for the session) holds the rest back; size the queues for the
/// slowest handler's longest pause, as what a hub does beyond its session queue is its own. A
/// lost connection is retried with exponential backoff and jitter. Delivery is at least once up
/// to the queues: a message is acknowledged to the hub when it was read, so messages still
/// queued when the process dies are lost; a clean shutdown drains the queues first.
pub struct Receiver {
    opts: ReceiverOptions,
    handlers: Vec<Arc<dyn DynHandler>>,
    subscribed: watch::Sender<bool>,
}

impl Receiver {
    /// A receiver without handlers yet.
    pub fn new(opts: ReceiverOptions) -> Receiver {
        Receiver {
            opts,
            handlers: Vec::new(),
            subscribed: watch::channel(false).0,
        }
    }

    /// Adds a handler; each message goes to every handler.
    pub fn handler(mut self, handler: impl Handler) -> Receiver {
        self.handlers.push(Arc::new(handler));
        self
    }

    /// `true` while the receiver is connected with all its subscriptions granted: wait for it
    /// before relying on the receiver to get what is published next.
    pub fn subscribed(&self) -> watch::Receiver<bool> {
        self.subscribed.subscribe()
    }

    /// Runs until `shutdown` completes, then disconnects, lets every handler drain its queue and
    /// close, and returns what was done. Ends early with an error only for what retrying does
    /// not fix: the first CONNECT refused, or a subscription refused.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<ReceiverStats, ReceiverError> {
        let Receiver {
            opts,
            handlers,
            subscribed,
        } = self;
        let mut queues = Vec::with_capacity(handlers.len());
        let mut workers = Vec::with_capacity(handlers.len());
        for h in handlers {
            let (tx, rx) = mpsc::channel(opts.queue);
            queues.push(tx);
            workers.push(tokio::spawn(work(h, rx)));
        }
        let result = read(&opts, &queues, &subscribed, shutdown).await;
        subscribed.send_replace(false);
        drop(queues);
        let mut stats = Vec::with_capacity(workers.len());
        for w in workers {
            if let Ok(s) = w.await {
                stats.push(s);
            }
        }
        result.map(|received| ReceiverStats {
            received,
            handlers: stats,
        })
    }
}

/// One handler's task: handles what its queue brings until the queue closes, then closes it.
async fn work(h: Arc<dyn DynHandler>, mut rx: mpsc::Receiver<Arc<Message>>) -> HandlerStats {
    let mut stats = HandlerStats {
        name: h.name().to_owned(),
        handled: 0,
        failed: 0,
    };
    while let Some(msg) = rx.recv().await {
        match h.handle(msg.clone()).await {
            Ok(()) => stats.handled += 1,
            Err(e) => {
                stats.failed += 1;
                let (handler, topic) = (&stats.name, &msg.topic);
                tracing::warn!(%handler, %topic, error = %e, "handler failed");
            }
        }
    }
    h.close().await;
    stats
}

/// The MQTT side: connects, subscribes, reads and dispatches until `shutdown`; the number of
/// messages received.
async fn read(
    opts: &ReceiverOptions,
    queues: &[mpsc::Sender<Arc<Message>>],
    subscribed: &watch::Sender<bool>,
    shutdown: impl Future<Output = ()>,
) -> Result<u64, ReceiverError> {
    let mut o = MqttOptions::new(&opts.client_id, &opts.host, opts.port);
    o.set_credentials(&opts.user, &opts.secret)
        .set_keep_alive(opts.keep_alive)
        .set_clean_start(true)
        .set_max_packet_size(Some(
            u32::try_from(opts.max_message_bytes).unwrap_or(u32::MAX),
        ));
    #[cfg(feature = "tls")]
    if let Some(tls) = opts.tls.clone() {
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, mut el) = AsyncClient::new(o, 64);
    let filters = opts.filters();
    let mut shutdown = std::pin::pin!(shutdown.fuse());
    let mut received = 0u64;
    let mut ever_connected = false;
    let mut failures = 0u32;
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        let event = tokio::select! {
            () = &mut shutdown, if stopping.is_none() => {
                // Drops nothing rumqttc already holds: it writes DISCONNECT after what is queued.
                let _ = client.try_disconnect();
                stopping = Some(tokio::time::Instant::now() + DISCONNECT_TIMEOUT);
                continue;
            }
            () = sleep_until(stopping) => return Ok(received),
            e = el.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                ever_connected = true;
                failures = 0;
                let subs = filters
                    .iter()
                    .map(|f| Filter::new(f.as_str(), QoS::AtLeastOnce));
                if let Err(e) = client.try_subscribe_many(subs) {
                    tracing::warn!(error = %e, "receiver: could not queue SUBSCRIBE");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .zip(&filters)
                    .find(|(c, _)| !matches!(c, SubscribeReasonCode::Success(_)));
                if let Some((code, filter)) = refused {
                    return Err(ReceiverError::SubscribeRefused {
                        filter: filter.clone(),
                        code: format!("{code:?}"),
                    });
                }
                subscribed.send_replace(true);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic);
                let Some(msg) = Message::from_publish(&topic, p.payload, p.retain) else {
                    tracing::debug!(%topic, "receiver: not a fleet stream, ignored");
                    continue;
                };
                received += 1;
                let msg = Arc::new(msg);
                // The message was read (and will be acknowledged): every handler gets it, even
                // when the shutdown comes while a full queue is being waited on.
                for q in queues {
                    let mut send = std::pin::pin!(q.send(msg.clone()));
                    loop {
                        tokio::select! {
                            r = &mut send => { let _ = r; break; }
                            () = &mut shutdown, if stopping.is_none() => {
                                let _ = client.try_disconnect();
                                stopping = Some(tokio::time::Instant::now() + DISCONNECT_TIMEOUT);
                            }
                        }
                    }
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) if stopping.is_some() => {
                return Ok(received);
            }
            Ok(_) => {}
            Err(_) if stopping.is_some() => return Ok(received),
            Err(ConnectionError::ConnectionRefused(code)) if !ever_connected => {
                return Err(ReceiverError::Refused(format!("{code:?}")));
            }
            Err(e) => {
                #[cfg(feature = "tls")]
                if !ever_connected && let Some(tls) = permanent_tls_error(&e) {
                    return Err(crate::TlsError::Handshake(tls).into());
                }
                subscribed.send_replace(false);
                let delay = opts.backoff.delay(failures, random_unit());
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, ?delay, "receiver: connection lost, reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut shutdown, if stopping.is_none() => return Ok(received),
                }
            }
        }
    }
}

/// The TLS handshake failure inside a connection error that retrying does not fix, if any
/// (rumqttc's v5 state error hides its cause from `source()`, so it is looked into here).
#[cfg(feature = "tls")]
fn permanent_tls_error(e: &ConnectionError) -> Option<rustls::Error> {
    use rumqttc::v5::StateError;
    use rumqttc::v5::mqttbytes::Error as MqttError;
    match e {
        ConnectionError::MqttState(StateError::Deserialization(MqttError::Io(io))) => {
            crate::tls::permanent_handshake_error(io)
        }
        other => crate::tls::permanent_handshake_error(other),
    }
}

/// Sleeps until `at`, or forever without it.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
