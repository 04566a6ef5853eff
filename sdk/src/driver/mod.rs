//! The driver task: owns the rumqttc event loop and the sans-IO [`Device`], moves bytes and time
//! between them, and turns the device's events into answers for the handles.
//!
//! It follows the device's driving contract: `handle_*` on every input, then drain
//! `poll_transmit` and `poll_event`, and keep one timer armed at `poll_timeout`. All protocol
//! decisions (subscriptions, tokens, delta order, timeouts, NTP, OTA) are the device's.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use iothub_sdk_nostd::spec::code::OtaErrorCode;
use iothub_sdk_nostd::spec::topic::Topic;
use iothub_sdk_nostd::{Config, Device, Ignored, Instant, QoS, RawJson, SubscriptionId, Transmit};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant as TokioInstant;

use crate::error::{ConnectError, Error, Result};
use crate::ntp::NtpResult;
use crate::options::{Backoff, ThingOptions};
use crate::ota::OtaTask;
use crate::shadow::{Delta, Document};
use crate::thing::{ConnectionState, Shared, UserMessage};
use crate::transport::{self, Client, Loop, NetError, NetEvent, Out, PollFuture};

mod events;

/// The device core as the std SDK sizes it: 16 shadows, the hub's 10 requests in flight, 64
/// queued messages.
type Core<'a> = Device<'a, 16, 10, 64>;
/// Bytes of the core's transmit queue.
const TX_BYTES: usize = 128 * 1024;
/// One outgoing message: a topic plus the largest request payload, with room to spare.
const MSG_BYTES: usize = 16 * 1024;
/// How long a clean close waits for the DISCONNECT to leave.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

type Reply<T> = oneshot::Sender<Result<T>>;

/// What the handles ask the driver.
pub(crate) enum Command {
    Get {
        shadow: usize,
        reply: Reply<Document>,
    },
    Update {
        shadow: usize,
        desired: Option<Value>,
        reported: Option<Value>,
        version: Option<u64>,
        reply: Reply<u64>,
    },
    Respond {
        method: String,
        token: String,
        code: u16,
        message: Option<String>,
        data: Option<Value>,
    },
    Ntp {
        samples: u8,
        reply: Reply<NtpResult>,
    },
    Ota {
        task_id: String,
        update: OtaUpdate,
        reply: Reply<()>,
    },
    Telemetry {
        value: Value,
        qos: QoS,
        reply: Reply<()>,
    },
    User {
        rest: String,
        payload: Vec<u8>,
        reply: Reply<()>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// An OTA status report (S-7.2).
#[derive(Debug, Clone)]
pub(crate) enum OtaUpdate {
    Progress(u8),
    Done,
    Failed(OtaErrorCode, String),
    Canceled,
}

/// Why a shadow may be out of sync, for [`crate::SyncedState::next`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum SyncProblem {
    TooLarge { needed: usize, capacity: usize },
    SyncLost { attempts: u8 },
}

impl SyncProblem {
    pub(crate) fn error(self) -> Error {
        match self {
            SyncProblem::TooLarge { needed, capacity } => Error::TooLarge { needed, capacity },
            SyncProblem::SyncLost { attempts } => Error::SyncLost { attempts },
        }
    }
}

/// The sending halves of the channels the handles read.
pub(crate) struct Senders {
    pub(crate) deltas: Vec<watch::Sender<Option<Delta>>>,
    /// Per shadow, the newest reason it may be out of sync (every send notifies).
    pub(crate) problems: Vec<watch::Sender<Option<SyncProblem>>>,
    pub(crate) ota: watch::Sender<Option<OtaTask>>,
    pub(crate) conn: watch::Sender<ConnectionState>,
    pub(crate) user: broadcast::Sender<UserMessage>,
}

enum Pending {
    Get(Reply<Document>),
    Update(Reply<u64>),
    Ntp(Reply<NtpResult>),
}

enum Wake {
    Net(Loop, std::result::Result<NetEvent, NetError>),
    Cmd(Option<Command>),
    Timer,
    CloseTimeout,
    ConnectDeadline,
}

/// A number in `[0, 1)` for backoff jitter; not for anything that must be unpredictable.
pub(crate) fn random_unit() -> f64 {
    let x = RandomState::new().hash_one(SystemTime::now());
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

fn json(raw: Option<RawJson<'_>>) -> Option<Value> {
    raw.and_then(|r| serde_json::from_str(r.as_str()).ok())
}

fn object(v: Option<Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// A string the core handed over still JSON-escaped, unescaped.
fn unescape(s: &str) -> String {
    serde_json::from_str(&format!("\"{s}\"")).unwrap_or_else(|_| s.to_owned())
}

fn core_error(e: iothub_sdk_nostd::Error) -> Error {
    match e {
        iothub_sdk_nostd::Error::NotConnected => Error::NotConnected,
        other => Error::Core(other),
    }
}

async fn sleep_opt(at: Option<TokioInstant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Runs the driver task until the thing is closed.
pub(crate) async fn run(
    opts: ThingOptions,
    shared: Arc<Shared>,
    senders: Senders,
    rx: mpsc::Receiver<Command>,
    weak: mpsc::WeakSender<Command>,
    ready: oneshot::Sender<Result<()>>,
) {
    let thing_id = opts.thing_id.clone();
    let names = opts.shadows.clone();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut config = Config::new(&thing_id, &refs);
    config.all_methods = true;
    config.token_seed = RandomState::new().hash_one(unix_ms()) as u32;
    config.request_timeout_ms = millis(opts.request_timeout).max(1);
    let mut tx = vec![0u8; TX_BYTES];
    let device = match Core::new(config, &mut tx) {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err(Error::Config(e)));
            return;
        }
    };
    let (client, el) = transport::new(&opts);
    let start = TokioInstant::now();
    let driver = Driver {
        device,
        names: &refs,
        buf: vec![0u8; MSG_BYTES],
        client,
        poll: transport::poll(el, Duration::ZERO),
        start,
        shared,
        senders,
        weak,
        pending: HashMap::new(),
        outbox: None,
        subs: VecDeque::new(),
        subs_by_pkid: HashMap::new(),
        ready: Some(ready),
        connect_deadline: start + opts.connect_timeout,
        connect_timeout: opts.connect_timeout,
        last_error: None,
        attempt: 0,
        backoff: opts.backoff,
        user_topics: opts.user_topics,
        methods: Arc::new(Semaphore::new(opts.max_concurrent_methods)),
        closing: None,
        close_deadline: None,
        subscribing: false,
        max_message: opts.max_message_bytes,
    };
    driver.run(rx).await;
}

struct Driver<'a> {
    device: Core<'a>,
    names: &'a [&'a str],
    buf: Vec<u8>,
    client: Client,
    poll: PollFuture,
    start: TokioInstant,
    shared: Arc<Shared>,
    senders: Senders,
    weak: mpsc::WeakSender<Command>,
    pending: HashMap<u32, Pending>,
    /// A message rumqttc's channel had no room for; sent before anything else.
    outbox: Option<(Out, Option<SubscriptionId>)>,
    /// Subscriptions handed to rumqttc, waiting for their packet id.
    subs: VecDeque<Option<SubscriptionId>>,
    subs_by_pkid: HashMap<u16, Option<SubscriptionId>>,
    ready: Option<oneshot::Sender<Result<()>>>,
    connect_deadline: TokioInstant,
    connect_timeout: Duration,
    /// Why the last connection attempt failed, for the error of [`crate::Thing::connect`].
    last_error: Option<ConnectError>,
    attempt: u32,
    backoff: Backoff,
    user_topics: bool,
    methods: Arc<Semaphore>,
    closing: Option<Option<oneshot::Sender<()>>>,
    close_deadline: Option<TokioInstant>,
    /// Connected, waiting for the SUBACKs of the subscriptions made on connecting.
    subscribing: bool,
    /// [`ThingOptions::max_message_bytes`].
    max_message: usize,
}

impl Driver<'_> {
    fn now(&self) -> Instant {
        Instant::from_millis(millis(self.start.elapsed()))
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        loop {
            let timer = self
                .device
                .poll_timeout()
                .map(|t| self.start + Duration::from_millis(t.as_millis()));
            let closing = self.closing.is_some();
            let connect_deadline = self.ready.as_ref().map(|_| self.connect_deadline);
            let wake = tokio::select! {
                (el, r) = &mut self.poll => Wake::Net(el, r),
                c = rx.recv(), if !closing => Wake::Cmd(c),
                () = sleep_opt(timer) => Wake::Timer,
                () = sleep_opt(self.close_deadline) => Wake::CloseTimeout,
                () = sleep_opt(connect_deadline) => Wake::ConnectDeadline,
            };
            let go_on = match wake {
                Wake::Net(el, r) => self.on_net(el, r),
                Wake::Cmd(Some(c)) => self.on_command(c),
                Wake::Cmd(None) => self.start_close(None),
                Wake::Timer => {
                    let now = self.now();
                    self.device.handle_timeout(now);
                    true
                }
                Wake::CloseTimeout => false,
                Wake::ConnectDeadline => {
                    // Give up with the cause of the last failed attempt, not a bare timeout.
                    let cause = self
                        .last_error
                        .take()
                        .unwrap_or(ConnectError::Timeout(self.connect_timeout));
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Err(Error::Connect(cause)));
                    }
                    false
                }
            };
            if !go_on {
                break;
            }
            self.pump();
        }
        self.finish();
    }

    fn set_conn(&self, f: impl FnOnce(&mut ConnectionState)) {
        self.senders.conn.send_modify(f);
    }

    fn on_net(&mut self, el: Loop, r: std::result::Result<NetEvent, NetError>) -> bool {
        let now = self.now();
        let mut delay = Duration::ZERO;
        match r {
            Ok(NetEvent::ConnAck) => {
                self.attempt = 0;
                self.device.handle_connected(now, false);
                if self.user_topics {
                    let filter = Topic::User {
                        thing: &self.shared.thing_id,
                        rest: "#",
                    }
                    .to_string();
                    self.outbox = Some((Out::Subscribe(filter), None));
                }
                // Connected for the handles once every subscription is acknowledged, so that no
                // method call or delta published right after `connect` returns can be missed.
                self.subscribing = true;
            }
            Ok(NetEvent::Publish { topic, payload }) => self.on_publish(&topic, &payload),
            Ok(NetEvent::Subscribed(pkid)) => {
                if let Some(id) = self.subs.pop_front() {
                    self.subs_by_pkid.insert(pkid, id);
                }
            }
            Ok(NetEvent::SubAck { pkid, granted }) => {
                match self.subs_by_pkid.remove(&pkid) {
                    Some(Some(id)) => self.device.handle_suback(now, id, granted),
                    _ if !granted => tracing::warn!("user topic subscription refused"),
                    _ => {}
                }
                let sub_waiting = matches!(self.outbox, Some((Out::Subscribe(_), _)));
                if self.subscribing
                    && self.subs.is_empty()
                    && self.subs_by_pkid.is_empty()
                    && !sub_waiting
                {
                    self.subscribing = false;
                    self.set_conn(|s| {
                        s.connected = true;
                        s.connects += 1;
                    });
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                    tracing::info!(thing = %self.shared.thing_id, "connected");
                }
            }
            Ok(NetEvent::DisconnectSent) if self.closing.is_some() => return false,
            Ok(_) => {}
            Err(e) => {
                if self.closing.is_some() {
                    return false;
                }
                if let NetError::TooLarge(needed) = e {
                    // Which message is not known (rumqttc did not read it): every shadow's
                    // application hears of it; the resync after reconnecting asks again.
                    tracing::warn!(
                        thing = %self.shared.thing_id,
                        needed,
                        capacity = self.max_message,
                        "message over max_message_bytes lost; reconnecting"
                    );
                    let problem = SyncProblem::TooLarge {
                        needed,
                        capacity: self.max_message,
                    };
                    for tx in &self.senders.problems {
                        tx.send_replace(Some(problem));
                    }
                }
                self.subscribing = false;
                if self.device.is_connected() {
                    tracing::warn!(thing = %self.shared.thing_id, error = ?e, "connection lost");
                    self.device.handle_disconnected(now);
                    self.set_conn(|s| s.connected = false);
                }
                self.outbox = None;
                self.subs.clear();
                self.subs_by_pkid.clear();
                tracing::debug!(error = ?e, "connection attempt failed");
                if self.ready.is_some() {
                    let fatal = match e {
                        NetError::Refused(code) => Some(Error::Refused(code)),
                        #[cfg(feature = "tls")]
                        NetError::Tls(e) => Some(Error::Tls(crate::TlsError::Handshake(e))),
                        NetError::Timeout => {
                            self.last_error = Some(ConnectError::Timeout(self.connect_timeout));
                            None
                        }
                        NetError::Other(cause) => {
                            self.last_error = Some(cause);
                            None
                        }
                        NetError::TooLarge(needed) => {
                            self.last_error = Some(ConnectError::Protocol(format!(
                                "a message of {needed} bytes was over max_message_bytes"
                            )));
                            None
                        }
                    };
                    if let Some(err) = fatal {
                        if let Some(ready) = self.ready.take() {
                            let _ = ready.send(Err(err));
                        }
                        return false;
                    }
                }
                delay = self.backoff.delay(self.attempt, random_unit());
                self.attempt = self.attempt.saturating_add(1);
                tracing::debug!(?delay, "reconnecting");
            }
        }
        self.poll = transport::poll(el, delay);
        true
    }

    fn on_publish(&mut self, topic: &str, payload: &Bytes) {
        let now = self.now();
        match self.device.handle_publish(now, topic, payload) {
            Ok(Some(ev)) => self.on_event(ev, Some(payload)),
            Ok(None) => {}
            Err(Ignored::NotForDevice) => {
                if let Ok(Topic::User { thing, rest }) = Topic::parse(topic)
                    && thing == self.shared.thing_id
                {
                    let _ = self.senders.user.send(UserMessage {
                        rest: rest.to_owned(),
                        payload: payload.clone(),
                    });
                }
            }
            Err(why) => tracing::debug!(topic, %why, "message ignored"),
        }
    }

    /// Begins a clean close; false when there is nothing to wait for.
    fn start_close(&mut self, reply: Option<oneshot::Sender<()>>) -> bool {
        self.closing = Some(reply);
        if !self.device.is_connected() || self.client.send(Out::Disconnect).is_err() {
            return false;
        }
        self.close_deadline = Some(TokioInstant::now() + CLOSE_GRACE);
        true
    }

    /// Drains the device's transmits into rumqttc and its events into the handles.
    fn pump(&mut self) {
        let now = self.now();
        loop {
            if let Some((out, sub)) = self.outbox.take() {
                let is_sub = matches!(out, Out::Subscribe(_));
                match self.client.send(out) {
                    Ok(()) if is_sub => self.subs.push_back(sub),
                    Ok(()) => {}
                    Err(out) => {
                        // rumqttc's channel is full: retry after its next event.
                        self.outbox = Some((out, sub));
                        break;
                    }
                }
            }
            match self.device.poll_transmit(now, &mut self.buf) {
                Ok(Some(Transmit::Subscribe { id, filter, .. })) => {
                    self.outbox = Some((Out::Subscribe(filter.to_owned()), Some(id)));
                }
                Ok(Some(Transmit::Publish {
                    topic,
                    payload,
                    qos,
                })) => {
                    let out = Out::Publish {
                        topic: topic.to_owned(),
                        payload: payload.to_vec(),
                        qos,
                    };
                    self.outbox = Some((out, None));
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "transmit failed");
                    break;
                }
            }
        }
        while let Some(ev) = self.device.poll_event() {
            self.on_event(ev, None);
        }
    }

    fn finish(mut self) {
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Get(r) => drop(r.send(Err(Error::Closed))),
                Pending::Update(r) => drop(r.send(Err(Error::Closed))),
                Pending::Ntp(r) => drop(r.send(Err(Error::Closed))),
            }
        }
        self.set_conn(|s| {
            s.connected = false;
            s.closed = true;
        });
        if let Some(Some(reply)) = self.closing.take() {
            let _ = reply.send(());
        }
    }
}
