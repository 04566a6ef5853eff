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
use iothub_sdk_nostd::spec::code::{OtaErrorCode, method_code};
use iothub_sdk_nostd::spec::payload::{ShadowState, field};
use iothub_sdk_nostd::spec::topic::Topic;
use iothub_sdk_nostd::{
    Config, Device, Event, Ignored, Instant, OtaReport, QoS, RawJson, ShadowId, SubscriptionId,
    Transmit,
};
use serde_json::{Map, Value};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant as TokioInstant;

use crate::error::{Error, Result};
use crate::method::MethodRequest;
use crate::ntp::NtpResult;
use crate::options::{Backoff, ThingOptions};
use crate::ota::OtaTask;
use crate::shadow::{Delta, Document};
use crate::thing::{ConnectionState, Shared, UserMessage};
use crate::transport::{self, Client, Loop, NetError, NetEvent, Out, PollFuture};

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

/// The sending halves of the channels the handles read.
pub(crate) struct Senders {
    pub(crate) deltas: Vec<watch::Sender<Option<Delta>>>,
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
}

fn random_unit() -> f64 {
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
        attempt: 0,
        backoff: opts.backoff,
        user_topics: opts.user_topics,
        methods: Arc::new(Semaphore::new(opts.max_concurrent_methods)),
        closing: None,
        close_deadline: None,
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
    attempt: u32,
    backoff: Backoff,
    user_topics: bool,
    methods: Arc<Semaphore>,
    closing: Option<Option<oneshot::Sender<()>>>,
    close_deadline: Option<TokioInstant>,
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
            let wake = tokio::select! {
                (el, r) = &mut self.poll => Wake::Net(el, r),
                c = rx.recv(), if !closing => Wake::Cmd(c),
                () = sleep_opt(timer) => Wake::Timer,
                () = sleep_opt(self.close_deadline) => Wake::CloseTimeout,
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
                self.set_conn(|s| {
                    s.connected = true;
                    s.connects += 1;
                });
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(Ok(()));
                }
                tracing::info!(thing = %self.shared.thing_id, "connected");
            }
            Ok(NetEvent::Publish { topic, payload }) => self.on_publish(&topic, &payload),
            Ok(NetEvent::Subscribed(pkid)) => {
                if let Some(id) = self.subs.pop_front() {
                    self.subs_by_pkid.insert(pkid, id);
                }
            }
            Ok(NetEvent::SubAck { pkid, granted }) => match self.subs_by_pkid.remove(&pkid) {
                Some(Some(id)) => self.device.handle_suback(now, id, granted),
                _ if !granted => tracing::warn!("user topic subscription refused"),
                _ => {}
            },
            Ok(NetEvent::DisconnectSent) if self.closing.is_some() => return false,
            Ok(_) => {}
            Err(e) => {
                if self.closing.is_some() {
                    return false;
                }
                if self.device.is_connected() {
                    tracing::warn!(thing = %self.shared.thing_id, error = ?e, "connection lost");
                    self.device.handle_disconnected(now);
                    self.set_conn(|s| s.connected = false);
                }
                self.outbox = None;
                self.subs.clear();
                self.subs_by_pkid.clear();
                if self.ready.is_some() {
                    let fatal = match &e {
                        NetError::Refused(code) => Some(Error::Refused(code.clone())),
                        NetError::Other(m) if TokioInstant::now() >= self.connect_deadline => {
                            Some(Error::Connect(m.clone()))
                        }
                        NetError::Other(_) => None,
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
                tracing::debug!(?delay, error = ?e, "reconnecting");
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

    fn on_event(&mut self, ev: Event<'_>, raw: Option<&[u8]>) {
        match ev {
            Event::Delta(d) => self.publish_delta(
                d.shadow,
                Delta {
                    version: d.version,
                    state: object(json(Some(d.state))),
                    resync: false,
                },
            ),
            Event::Shadow(s) => {
                let doc = Document {
                    version: s.version,
                    desired: json(s.desired),
                    reported: json(s.reported),
                    delta: json(s.delta),
                };
                let delta = Delta {
                    version: s.version,
                    state: object(doc.delta.clone()),
                    resync: true,
                };
                self.publish_delta(s.shadow, delta);
                if let Some(req) = s.request
                    && let Some(Pending::Get(reply)) = self.pending.remove(&req.as_u32())
                {
                    let _ = reply.send(Ok(doc));
                }
            }
            Event::MethodCall(c) => {
                let data = json(Some(c.data)).unwrap_or(Value::Null);
                self.dispatch(c.method, c.client_token, data);
            }
            Event::OtaTask(t) => {
                let task = OtaTask {
                    task_id: unescape(t.task_id),
                    task_type: unescape(t.r#type),
                    version: unescape(t.meta.version),
                    md5: t.meta.md5.map(unescape),
                    sha256: t.meta.sha256.map(unescape),
                    content_type: t.meta.content_type.map(unescape),
                    content_length: t.meta.content_length,
                    file_url: unescape(t.file_url),
                    thing: None,
                };
                self.senders.ota.send_replace(Some(task));
            }
            Event::Ntp { request, sample } => {
                if let Some(Pending::Ntp(reply)) = self.pending.remove(&request.as_u32()) {
                    let server_ms = sample.unix_time_ms(self.now());
                    let local_ms = unix_ms();
                    let offset_ms = i64::try_from(server_ms).unwrap_or(i64::MAX)
                        - i64::try_from(local_ms).unwrap_or(i64::MAX);
                    let _ = reply.send(Ok(NtpResult {
                        server_time: UNIX_EPOCH + Duration::from_millis(server_ms),
                        offset_ms,
                        round_trip: Duration::from_millis(sample.round_trip_ms),
                    }));
                }
            }
            Event::Accepted {
                request, version, ..
            } => match self.pending.remove(&request.as_u32()) {
                Some(Pending::Update(reply)) => {
                    let _ = reply.send(Ok(version));
                }
                Some(Pending::Get(reply)) => {
                    // A document older than a delta already handed out: still the answer.
                    let _ = reply.send(stale_document(raw, version));
                }
                _ => {}
            },
            Event::Rejected { request, code, .. } => {
                let message = raw
                    .and_then(|r| serde_json::from_slice::<Value>(r).ok())
                    .and_then(|v| v.get(field::MESSAGE)?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let err = Error::Rejected { code, message };
                match self.pending.remove(&request.as_u32()) {
                    Some(Pending::Get(r)) => drop(r.send(Err(err))),
                    Some(Pending::Update(r)) => drop(r.send(Err(err))),
                    Some(Pending::Ntp(r)) => drop(r.send(Err(err))),
                    None => {}
                }
            }
            Event::TimedOut { request } => {
                let err = || {
                    if self.device.is_connected() {
                        Error::Timeout(self.shared.request_timeout)
                    } else {
                        Error::ConnectionLost
                    }
                };
                match self.pending.remove(&request.as_u32()) {
                    Some(Pending::Get(r)) => drop(r.send(Err(err()))),
                    Some(Pending::Update(r)) => drop(r.send(Err(err()))),
                    Some(Pending::Ntp(r)) => drop(r.send(Err(err()))),
                    None => {}
                }
            }
            Event::SubscribeFailed { subscription } => {
                tracing::warn!(
                    index = subscription.index(),
                    "subscription refused by the hub"
                );
            }
            _ => {}
        }
    }

    fn publish_delta(&self, shadow: ShadowId, delta: Delta) {
        if let Some(tx) = self.senders.deltas.get(shadow.index()) {
            tx.send_replace(Some(delta));
        }
    }

    /// Runs the handler of a method call in its own task, or answers 404 / 503 at once.
    fn dispatch(&mut self, method: &str, token: &str, data: Value) {
        let handler = self
            .shared
            .handlers
            .read()
            .ok()
            .and_then(|h| h.get(method).cloned());
        let Some(handler) = handler else {
            self.respond(
                method,
                token,
                method_code::NOT_FOUND,
                Some("no such method"),
                None,
            );
            return;
        };
        let Ok(permit) = self.methods.clone().try_acquire_owned() else {
            self.respond(method, token, 503, Some("too many calls in progress"), None);
            return;
        };
        let (method, token, weak) = (method.to_owned(), token.to_owned(), self.weak.clone());
        tokio::spawn(async move {
            let req = MethodRequest {
                method: method.clone(),
                data,
            };
            let outcome = tokio::spawn(handler(req)).await;
            drop(permit);
            let (code, message, data) = match outcome {
                Ok(Ok(v)) => (method_code::OK, None, Some(v)),
                Ok(Err(e)) => (e.code, Some(e.message), e.data),
                Err(_) => (
                    method_code::DEVICE_ERROR,
                    Some("handler failed".to_owned()),
                    None,
                ),
            };
            if let Some(tx) = weak.upgrade() {
                let _ = tx
                    .send(Command::Respond {
                        method,
                        token,
                        code,
                        message,
                        data,
                    })
                    .await;
            }
        });
    }

    fn respond(
        &mut self,
        method: &str,
        token: &str,
        code: u16,
        message: Option<&str>,
        data: Option<&Value>,
    ) {
        let now = self.now();
        if let Err(e) = self.device.respond(now, method, token, code, message, data) {
            tracing::warn!(method, error = %e, "method response not sent");
        }
    }

    fn shadow_id(&self, index: usize) -> Result<ShadowId> {
        self.names
            .get(index)
            .and_then(|n| self.device.shadow_id(n))
            .ok_or_else(|| Error::UnknownShadow(index.to_string()))
    }

    fn on_command(&mut self, c: Command) -> bool {
        let now = self.now();
        match c {
            Command::Get { shadow, reply } => {
                match self
                    .shadow_id(shadow)
                    .and_then(|s| self.device.get_shadow(now, s).map_err(core_error))
                {
                    Ok(r) => {
                        self.pending.insert(r.as_u32(), Pending::Get(reply));
                    }
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Command::Update {
                shadow,
                desired,
                reported,
                version,
                reply,
            } => {
                let state: ShadowState<Value, Value, ()> = ShadowState {
                    desired,
                    reported,
                    delta: None,
                };
                match self.shadow_id(shadow).and_then(|s| {
                    self.device
                        .update(now, s, &state, version)
                        .map_err(core_error)
                }) {
                    Ok(r) => {
                        self.pending.insert(r.as_u32(), Pending::Update(reply));
                    }
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            Command::Respond {
                method,
                token,
                code,
                message,
                data,
            } => self.respond(&method, &token, code, message.as_deref(), data.as_ref()),
            Command::Ntp { samples, reply } => match self.device.request_ntp(now, samples) {
                Ok(r) => {
                    self.pending.insert(r.as_u32(), Pending::Ntp(reply));
                }
                Err(e) => drop(reply.send(Err(core_error(e)))),
            },
            Command::Ota {
                task_id,
                update,
                reply,
            } => drop(reply.send(self.report_ota(now, &task_id, update))),
            Command::Telemetry { value, qos, reply } => {
                let r = self.device.publish_telemetry(now, &value, qos);
                drop(reply.send(r.map_err(core_error)));
            }
            Command::User {
                rest,
                payload,
                reply,
            } => drop(reply.send(self.publish_user(&rest, payload))),
            Command::Close { reply } => return self.start_close(Some(reply)),
        }
        true
    }

    fn report_ota(&mut self, now: Instant, task_id: &str, update: OtaUpdate) -> Result<()> {
        if self.device.ota_task_id() != Some(task_id) {
            return Err(Error::OtaTaskGone(task_id.to_owned()));
        }
        let report = match &update {
            OtaUpdate::Progress(p) => OtaReport::Ongoing { progress: *p },
            OtaUpdate::Done => OtaReport::Done,
            OtaUpdate::Failed(code, msg) => OtaReport::Failed {
                code: *code,
                message: Some(msg.as_str()),
            },
            OtaUpdate::Canceled => OtaReport::Canceled,
        };
        self.device.report_ota(now, report).map_err(core_error)?;
        if self.device.ota_task_id().is_none() {
            // Finished: new subscribers of the task stream must not see it again.
            self.senders.ota.send_replace(None);
        }
        Ok(())
    }

    fn publish_user(&mut self, rest: &str, payload: Vec<u8>) -> Result<()> {
        if !self.device.is_connected() {
            return Err(Error::NotConnected);
        }
        let topic = Topic::User {
            thing: &self.shared.thing_id,
            rest,
        };
        topic
            .validate()
            .map_err(|_| Error::InvalidArgument("invalid user topic"))?;
        if self.outbox.is_some() {
            return Err(Error::Core(iothub_sdk_nostd::Error::QueueFull));
        }
        let out = Out::Publish {
            topic: topic.to_string(),
            payload,
            qos: QoS::AtLeastOnce,
        };
        self.client
            .send(out)
            .map_err(|_| Error::Core(iothub_sdk_nostd::Error::QueueFull))
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

fn stale_document(raw: Option<&[u8]>, version: u64) -> Result<Document> {
    let v: Value = serde_json::from_slice(raw.unwrap_or(b"{}"))?;
    let state = v.get(field::STATE);
    let section = |name: &str| state.and_then(|s| s.get(name)).cloned();
    Ok(Document {
        version,
        desired: section(field::DESIRED),
        reported: section(field::REPORTED),
        delta: section(field::DELTA),
    })
}
