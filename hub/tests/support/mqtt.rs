//! The MQTT test client: one connection over MQTT 3.1.1 or 5 (rumqttc), with requests that
//! wait for their acknowledgement and a buffer of received messages to wait on.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{STEP, shadow_topic, unique};

mod events;

use events::{Ev, drive_v4, drive_v5};

/// MQTT protocol version of a test client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.
    V5,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// CONNACK with this return code (3.1.1) or reason code (5).
    Refused(u8),
    /// No CONNACK: the connection failed or was closed.
    Failed(String),
}

/// A request could not complete: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnected(pub String);

/// One received PUBLISH.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its retain flag.
    pub retain: bool,
    /// Its QoS (0, 1 or 2).
    pub qos: u8,
}

impl Msg {
    /// The payload as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "payload on {} is not JSON ({e}): {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

enum Handle {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A test MQTT client over either protocol version. Its event loop runs in a task that forwards
/// events here; the client never reconnects (a closed connection stays closed).
pub struct Client {
    /// The client identifier.
    pub id: String,
    /// The protocol version.
    pub proto: Proto,
    handle: Handle,
    rx: mpsc::UnboundedReceiver<Ev>,
    task: tokio::task::JoinHandle<()>,
    msgs: VecDeque<Msg>,
    closed: Option<String>,
    pub_issued: u64,
    pub_seen: u64,
    pub_pkid: HashMap<u64, u16>,
    puback: HashMap<u16, u8>,
    sub_issued: u64,
    sub_seen: u64,
    sub_pkid: HashMap<u64, u16>,
    suback: HashMap<u16, Vec<u8>>,
}

/// TCP_NODELAY: without it, Nagle's algorithm and delayed ACKs hold small packets back ~40 ms,
/// which skews round trips (S-6) and slows every request/reply exchange.
fn nodelay() -> rumqttc::NetworkOptions {
    let mut options = rumqttc::NetworkOptions::new();
    options.set_tcp_nodelay(true);
    options
}

/// Largest packet the test clients send or accept.
const CLIENT_MAX_PACKET: usize = 4 * 1024 * 1024;

impl Client {
    /// Connects with clean session, keepalive 10 s; waits (at most 10 s) for CONNACK.
    pub async fn connect(
        proto: Proto,
        addr: SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
    ) -> Result<Client, ConnectError> {
        Client::connect_opts(proto, addr, client_id, username, password, true).await
    }

    /// Like [`Client::connect`], choosing clean session (3.1.1) / clean start (5).
    pub async fn connect_opts(
        proto: Proto,
        addr: SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
        clean: bool,
    ) -> Result<Client, ConnectError> {
        Client::connect_with_will(proto, addr, client_id, username, password, clean, None).await
    }

    /// Like [`Client::connect_opts`], with an optional MQTT Will `(topic, payload)` at QoS 1.
    pub async fn connect_with_will(
        proto: Proto,
        addr: SocketAddr,
        client_id: &str,
        username: &str,
        password: &str,
        clean: bool,
        will: Option<(&str, &[u8])>,
    ) -> Result<Client, ConnectError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let host = addr.ip().to_string();
        let (handle, task) = match proto {
            Proto::V311 => {
                let mut opts = rumqttc::MqttOptions::new(client_id, host, addr.port());
                opts.set_keep_alive(Duration::from_secs(10))
                    .set_clean_session(clean)
                    .set_credentials(username, password)
                    .set_max_packet_size(CLIENT_MAX_PACKET, CLIENT_MAX_PACKET)
                    .set_inflight(200);
                if let Some((topic, payload)) = will {
                    opts.set_last_will(rumqttc::LastWill::new(
                        topic,
                        payload.to_vec(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                    ));
                }
                let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1024);
                eventloop.set_network_options(nodelay());
                (Handle::V4(client), tokio::spawn(drive_v4(eventloop, tx)))
            }
            Proto::V5 => {
                let mut opts = rumqttc::v5::MqttOptions::new(client_id, host, addr.port());
                opts.set_keep_alive(Duration::from_secs(10))
                    .set_clean_start(clean)
                    .set_credentials(username, password)
                    .set_max_packet_size(Some(CLIENT_MAX_PACKET as u32))
                    .set_network_options(nodelay());
                if let Some((topic, payload)) = will {
                    opts.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                        topic,
                        payload.to_vec(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        None,
                    ));
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 1024);
                (Handle::V5(client), tokio::spawn(drive_v5(eventloop, tx)))
            }
        };
        let mut client = Client {
            id: client_id.to_string(),
            proto,
            handle,
            rx,
            task,
            msgs: VecDeque::new(),
            closed: None,
            pub_issued: 0,
            pub_seen: 0,
            pub_pkid: HashMap::new(),
            puback: HashMap::new(),
            sub_issued: 0,
            sub_seen: 0,
            sub_pkid: HashMap::new(),
            suback: HashMap::new(),
        };
        let first = tokio::time::timeout(Duration::from_secs(10), client.rx.recv()).await;
        match first {
            Ok(Some(Ev::ConnAck)) => Ok(client),
            Ok(Some(Ev::Refused(code))) => Err(ConnectError::Refused(code)),
            Ok(Some(Ev::Closed(e))) => Err(ConnectError::Failed(e)),
            Ok(Some(_)) => Err(ConnectError::Failed("event before CONNACK".into())),
            Ok(None) => Err(ConnectError::Failed("event loop ended".into())),
            Err(_) => Err(ConnectError::Failed("no CONNACK within 10 s".into())),
        }
    }

    /// Waits for one event (until `deadline`) and records it. False on timeout.
    async fn pump(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() && self.rx.is_empty() {
            // Nothing more will come; don't wait for the deadline.
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(left, self.rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => {
                self.closed.get_or_insert_with(|| "event loop ended".into());
                return true;
            }
            Err(_) => return false,
        };
        match ev {
            Ev::ConnAck => {}
            Ev::Refused(code) => {
                self.closed = Some(format!("refused {code:#x}"));
            }
            Ev::Msg(m) => self.msgs.push_back(m),
            Ev::PubAck(pkid, rc) => {
                self.puback.insert(pkid, rc);
            }
            Ev::SubAck(pkid, codes) => {
                self.suback.insert(pkid, codes);
            }
            Ev::OutPublish(pkid) => {
                // A reused packet id makes any old acknowledgement of it stale.
                self.puback.remove(&pkid);
                self.pub_pkid.insert(self.pub_seen, pkid);
                self.pub_seen += 1;
            }
            Ev::OutSubscribe(pkid) => {
                self.suback.remove(&pkid);
                self.sub_pkid.insert(self.sub_seen, pkid);
                self.sub_seen += 1;
            }
            Ev::Closed(e) => {
                self.closed = Some(e);
            }
        }
        true
    }

    /// Whether the connection is known to be closed (without waiting).
    pub fn closed(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// Subscribes at QoS 1 and returns the SUBACK return/reason code (0x80 / 0x87 = failure).
    pub async fn subscribe(&mut self, filter: &str) -> Result<u8, Disconnected> {
        self.check_open()?;
        let seq = self.sub_issued;
        self.sub_issued += 1;
        let sent = match &self.handle {
            Handle::V4(c) => c.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.is_ok(),
            Handle::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .is_ok(),
        };
        if !sent {
            return Err(Disconnected(format!("subscribe {filter}: client refused")));
        }
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(pkid) = self.sub_pkid.get(&seq).copied()
                && let Some(codes) = self.suback.remove(&pkid)
            {
                self.sub_pkid.remove(&seq);
                return Ok(codes.first().copied().unwrap_or(0x80));
            }
            if let Some(e) = &self.closed {
                return Err(Disconnected(e.clone()));
            }
            if !self.pump(deadline).await {
                panic!("{}: no SUBACK for {filter} within {STEP:?}", self.id);
            }
        }
    }

    fn check_open(&self) -> Result<(), Disconnected> {
        match &self.closed {
            Some(e) => Err(Disconnected(e.clone())),
            None => Ok(()),
        }
    }

    /// Publishes at QoS 1 without waiting for the PUBACK (for pipelining).
    pub async fn publish_nowait(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), Disconnected> {
        self.check_open()?;
        let payload: Vec<u8> = payload.into();
        let ok = match &self.handle {
            Handle::V4(c) => c
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .is_ok(),
            Handle::V5(c) => c
                .publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .is_ok(),
        };
        if !ok {
            return Err(Disconnected(format!("publish {topic}: client refused")));
        }
        self.pub_issued += 1;
        Ok(())
    }

    /// Publishes at QoS 1 and waits for the PUBACK: `Ok(reason)` (always 0 in 3.1.1; MQTT 5
    /// reason code, 0x87 = not authorized), or `Err` when the connection is closed first.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<u8, Disconnected> {
        let seq = self.pub_issued;
        self.publish_nowait(topic, payload).await?;
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(pkid) = self.pub_pkid.get(&seq).copied()
                && let Some(rc) = self.puback.remove(&pkid)
            {
                self.pub_pkid.remove(&seq);
                return Ok(rc);
            }
            if let Some(e) = &self.closed {
                return Err(Disconnected(e.clone()));
            }
            if !self.pump(deadline).await {
                panic!("{}: no PUBACK for {topic} within {STEP:?}", self.id);
            }
        }
    }

    /// Publishes JSON at QoS 1 and asserts a successful PUBACK.
    pub async fn publish_json(&mut self, topic: &str, payload: &Value) {
        let rc = self
            .publish(topic, serde_json::to_vec(payload).expect("json"))
            .await
            .unwrap_or_else(|e| panic!("{}: publish {topic}: {e:?}", self.id));
        assert!(rc < 0x80, "{}: PUBACK {rc:#x} for {topic}", self.id);
    }

    /// The next received message (buffered first), or None after `timeout`.
    pub async fn next_message(&mut self, timeout: Duration) -> Option<Msg> {
        self.wait_message(timeout, |_| true).await
    }

    /// The first received message matching `pred` (buffered ones first; non-matching messages
    /// stay buffered), or None after `timeout` or when the connection closed.
    pub async fn wait_message(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Msg) -> bool,
    ) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            while checked < self.msgs.len() {
                if pred(&self.msgs[checked]) {
                    return self.msgs.remove(checked);
                }
                checked += 1;
            }
            if !self.pump(deadline).await {
                return None;
            }
        }
    }

    /// The JSON payload of the next message on `topic`; panics after `timeout`.
    pub async fn expect_message(&mut self, topic: &str, timeout: Duration) -> Value {
        match self.wait_message(timeout, |m| m.topic == topic).await {
            Some(m) => m.json(),
            None => panic!(
                "{}: no message on {topic} within {timeout:?} (closed: {:?}; buffered: {:?})",
                self.id,
                self.closed,
                self.msgs.iter().map(|m| &m.topic).collect::<Vec<_>>()
            ),
        }
    }

    /// The first message on `topic` whose JSON payload satisfies `pred`; panics after `timeout`.
    pub async fn expect_json(
        &mut self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let found = self
            .wait_message(timeout, |m| {
                m.topic == topic
                    && serde_json::from_slice::<Value>(&m.payload)
                        .map(|v| pred(&v))
                        .unwrap_or(false)
            })
            .await;
        match found {
            Some(m) => m.json(),
            None => panic!(
                "{}: no matching message on {topic} within {timeout:?} (closed: {:?}; buffered: {:?})",
                self.id,
                self.closed,
                self.msgs
                    .iter()
                    .map(|m| (
                        m.topic.clone(),
                        String::from_utf8_lossy(&m.payload).into_owned()
                    ))
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// Whether a message on `topic` arrives within `timeout` (used to assert silence).
    pub async fn sees(&mut self, topic: &str, timeout: Duration) -> bool {
        self.wait_message(timeout, |m| m.topic == topic)
            .await
            .is_some()
    }

    /// Forgets every buffered message.
    pub fn clear(&mut self) {
        self.msgs.clear();
    }

    /// True once the connection is closed (waiting at most `timeout`).
    pub async fn is_disconnected(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.closed.is_none() {
            if !self.pump(deadline).await {
                break;
            }
        }
        self.closed.is_some()
    }

    /// Sends DISCONNECT and waits (briefly) for the event loop to end.
    pub async fn disconnect(mut self) {
        let _ = match &self.handle {
            Handle::V4(c) => c.disconnect().await.is_ok(),
            Handle::V5(c) => c.disconnect().await.is_ok(),
        };
        let _ = self.is_disconnected(Duration::from_secs(3)).await;
    }

    /// Sends a shadow request on `S/{op}` and waits for the matching `S/{op}/accepted` or
    /// `S/{op}/rejected` carrying `token`. The client must be subscribed to them (e.g. `T/#`).
    /// Returns `(accepted, payload)`.
    pub async fn shadow_request(
        &mut self,
        thing: &str,
        shadow: &str,
        op: &str,
        payload: impl Into<Vec<u8>>,
        token: &str,
    ) -> (bool, Value) {
        let topic = shadow_topic(thing, shadow, op);
        self.publish(&topic, payload)
            .await
            .unwrap_or_else(|e| panic!("{}: publish {topic}: {e:?}", self.id));
        self.shadow_reply(thing, shadow, op, token).await
    }

    /// Waits for `S/{op}/accepted|rejected` with `clientToken == token`.
    pub async fn shadow_reply(
        &mut self,
        thing: &str,
        shadow: &str,
        op: &str,
        token: &str,
    ) -> (bool, Value) {
        let accepted = shadow_topic(thing, shadow, &format!("{op}/accepted"));
        let rejected = shadow_topic(thing, shadow, &format!("{op}/rejected"));
        let found = self
            .wait_message(STEP, |m| {
                (m.topic == accepted || m.topic == rejected)
                    && serde_json::from_slice::<Value>(&m.payload)
                        .map(|v| v["clientToken"] == token)
                        .unwrap_or(false)
            })
            .await;
        match found {
            Some(m) => (m.topic == accepted, m.json()),
            None => panic!(
                "{}: no {op} reply with clientToken {token:?} within {STEP:?} (closed: {:?})",
                self.id, self.closed
            ),
        }
    }

    /// Sends an update with `clientToken` and returns `(accepted, reply)`.
    pub async fn update(&mut self, thing: &str, shadow: &str, mut request: Value) -> (bool, Value) {
        let token = unique("tok");
        request["clientToken"] = json!(token);
        let bytes = serde_json::to_vec(&request).expect("json");
        self.shadow_request(thing, shadow, "update", bytes, &token)
            .await
    }

    /// Sends a get with `clientToken` and returns `(accepted, reply)`.
    pub async fn get(&mut self, thing: &str, shadow: &str) -> (bool, Value) {
        let token = unique("tok");
        let bytes = serde_json::to_vec(&json!({ "clientToken": token })).expect("json");
        self.shadow_request(thing, shadow, "get", bytes, &token)
            .await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
