//! A device (or service user) connection over MQTT 3.1.1 or MQTT 5, driven by rumqttc, that turns
//! both protocol versions into one stream of [`Ev`] events the cases can wait on.
//!
//! Every wait takes a timeout. Events the case is not waiting for are kept in order, so a case
//! can wait for a SUBACK and later still read the PUBLISH that arrived before it.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use rumqttc::v5::mqttbytes::v5 as p5;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use crate::net::MqttTarget;
use crate::transcript::{self, Dir, Transcript};

/// The MQTT protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.
    V5,
}

impl Proto {
    /// Both versions, for cases that run once per version.
    pub const BOTH: [Proto; 2] = [Proto::V311, Proto::V5];

    /// `v311` or `v5`, used in case ids.
    pub fn tag(self) -> &'static str {
        match self {
            Proto::V311 => "v311",
            Proto::V5 => "v5",
        }
    }
}

/// How long a single protocol exchange (CONNACK, SUBACK, PUBACK, a reply) may take.
pub const STEP: Duration = Duration::from_secs(5);

/// A received PUBLISH.
#[derive(Debug, Clone)]
pub struct Msg {
    /// Topic name.
    pub topic: String,
    /// Raw payload.
    pub payload: Vec<u8>,
    /// QoS it was delivered at (0, 1, 2).
    pub qos: u8,
    /// The RETAIN flag as delivered.
    pub retain: bool,
}

impl Msg {
    /// The payload as JSON, `Null` when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// One event of a connection after CONNACK.
#[derive(Debug, Clone)]
pub enum Ev {
    /// SUBACK with one code per filter (3.1.1: 0, 1, 2 or 0x80; MQTT 5 reason codes).
    SubAck(Vec<u8>),
    /// PUBACK with its reason code (always 0 for 3.1.1).
    PubAck(u8),
    /// An incoming PUBLISH.
    Publish(Msg),
    /// The connection ended; the text says how (server DISCONNECT reason, I/O error).
    Closed(String),
}

/// What happened to a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// CONNACK refused it with this code (3.1.1 return code or MQTT 5 reason code).
    Refused(u8),
    /// Anything else (network error, timeout, unexpected packet).
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(c) => write!(f, "CONNACK refused with code {c:#04x}"),
            ConnectError::Other(s) => write!(f, "connect failed: {s}"),
        }
    }
}

/// Parameters of a CONNECT.
#[derive(Debug, Clone, Default)]
pub struct ConnectOpts {
    /// MQTT client identifier.
    pub client_id: String,
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
    /// An optional Will `(topic, payload)`, QoS 1, not retained.
    pub will: Option<(String, Vec<u8>)>,
    /// Filters subscribed (QoS 1) in the same flight as the CONNECT, before the first poll.
    pub pre_subscribe: Vec<String>,
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A live MQTT connection.
pub struct Conn {
    /// The protocol version.
    pub proto: Proto,
    client: Client,
    rx: mpsc::UnboundedReceiver<Ev>,
    buf: VecDeque<Ev>,
    task: JoinHandle<()>,
    closed: Option<String>,
    /// Where the case records this connection's messages.
    rec: Rec,
}

/// Records one connection's messages into the transcript of the case that opened it.
#[derive(Clone)]
struct Rec {
    t: Option<Transcript>,
    who: String,
}

impl Rec {
    fn log(&self, dir: Dir, what: impl FnOnce() -> String) {
        if let Some(t) = &self.t {
            t.push(&self.who, dir, &what());
        }
    }

    fn publish(&self, dir: Dir, topic: &str, qos: u8, retain: bool, payload: &[u8]) {
        self.log(dir, || {
            format!(
                "PUBLISH {topic} qos{qos}{} {}",
                if retain { " retain" } else { "" },
                transcript::payload(payload)
            )
        });
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn v5_connack_code(c: p5::ConnectReturnCode) -> u8 {
    use p5::ConnectReturnCode as C;
    match c {
        C::Success => 0x00,
        C::RefusedProtocolVersion => 0x84,
        C::BadClientId => 0x85,
        C::ServiceUnavailable => 0x88,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
    }
}

fn v5_suback_code(c: &p5::SubscribeReasonCode) -> u8 {
    use p5::SubscribeReasonCode as C;
    match c {
        C::Success(q) => *q as u8,
        C::Failure | C::Unspecified => 0x80,
        C::ImplementationSpecific => 0x83,
        C::NotAuthorized => 0x87,
        C::TopicFilterInvalid => 0x8F,
        C::PkidInUse => 0x91,
        C::QuotaExceeded => 0x97,
        C::SharedSubscriptionsNotSupported => 0x9E,
        C::SubscriptionIdNotSupported => 0xA1,
        C::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn v5_puback_code(c: &p5::PubAckReason) -> u8 {
    use p5::PubAckReason as C;
    match c {
        C::Success => 0x00,
        C::NoMatchingSubscribers => 0x10,
        C::UnspecifiedError => 0x80,
        C::ImplementationSpecificError => 0x83,
        C::NotAuthorized => 0x87,
        C::TopicNameInvalid => 0x90,
        C::PacketIdentifierInUse => 0x91,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
    }
}

/// Largest packet either side may send; shadow documents reach 32 KiB plus metadata.
const MAX_PACKET: usize = 1024 * 1024;

impl Conn {
    /// Connects to `to` (over TLS when it says so) and waits (at most [`STEP`]) for the
    /// CONNACK.
    pub async fn connect(
        to: &MqttTarget,
        proto: Proto,
        opts: ConnectOpts,
    ) -> Result<Conn, ConnectError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ctx, crx) = oneshot::channel::<Result<(), ConnectError>>();
        let rec = Rec {
            t: transcript::current(),
            who: format!("[{}] {}", proto.tag(), opts.client_id),
        };
        rec.log(Dir::Out, || {
            format!(
                "CONNECT user {:?}{}{}",
                opts.username,
                if opts.will.is_some() {
                    " with a Will"
                } else {
                    ""
                },
                if opts.pre_subscribe.is_empty() {
                    String::new()
                } else {
                    format!(", then SUBSCRIBE {:?}", opts.pre_subscribe)
                }
            )
        });
        let (client, task) = match proto {
            Proto::V311 => {
                let mut o = rumqttc::MqttOptions::new(&opts.client_id, &to.host, to.port);
                o.set_transport(to.rumqttc_transport());
                o.set_credentials(&opts.username, &opts.password)
                    .set_keep_alive(Duration::from_secs(30))
                    .set_clean_session(true)
                    .set_max_packet_size(MAX_PACKET, MAX_PACKET)
                    .set_inflight(100);
                if let Some((t, p)) = &opts.will {
                    o.set_last_will(rumqttc::LastWill::new(
                        t,
                        p.clone(),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                    ));
                }
                let (client, el) = rumqttc::AsyncClient::new(o, 1000);
                for f in &opts.pre_subscribe {
                    client
                        .try_subscribe(f, rumqttc::QoS::AtLeastOnce)
                        .map_err(|e| ConnectError::Other(e.to_string()))?;
                }
                (
                    Client::V4(client),
                    tokio::spawn(drive_v4(el, tx, ctx, rec.clone())),
                )
            }
            Proto::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(&opts.client_id, &to.host, to.port);
                o.set_transport(to.rumqttc_transport());
                o.set_credentials(&opts.username, &opts.password)
                    .set_keep_alive(Duration::from_secs(30))
                    .set_clean_start(true)
                    .set_max_packet_size(Some(MAX_PACKET as u32))
                    .set_outgoing_inflight_upper_limit(100);
                if let Some((t, p)) = &opts.will {
                    o.set_last_will(p5::LastWill::new(
                        t,
                        p.clone(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        None,
                    ));
                }
                let (client, el) = rumqttc::v5::AsyncClient::new(o, 1000);
                for f in &opts.pre_subscribe {
                    client
                        .try_subscribe(f, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                        .map_err(|e| ConnectError::Other(e.to_string()))?;
                }
                (
                    Client::V5(client),
                    tokio::spawn(drive_v5(el, tx, ctx, rec.clone())),
                )
            }
        };
        let conn = Conn {
            proto,
            client,
            rx,
            buf: VecDeque::new(),
            task,
            closed: None,
            rec,
        };
        match tokio::time::timeout(STEP, crx).await {
            Ok(Ok(Ok(()))) => Ok(conn),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ConnectError::Other("event loop ended".into())),
            Err(_) => {
                conn.task.abort();
                Err(ConnectError::Other("no CONNACK within 5 s".into()))
            }
        }
    }

    /// Waits up to `within` for the first event matching `pred`, removing it; earlier
    /// non-matching events stay queued. `None` on timeout or when the connection closed first
    /// (see [`Conn::closed_reason`]).
    pub async fn wait_ev<F: FnMut(&Ev) -> bool>(
        &mut self,
        within: Duration,
        mut pred: F,
    ) -> Option<Ev> {
        if let Some(i) = self.buf.iter().position(&mut pred) {
            return self.buf.remove(i);
        }
        let deadline = Instant::now() + within;
        loop {
            if self.closed.is_some() {
                return None;
            }
            match timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    if let Ev::Closed(r) = &ev {
                        self.closed = Some(r.clone());
                    }
                    if pred(&ev) {
                        return Some(ev);
                    }
                    self.buf.push_back(ev);
                }
                Ok(None) => {
                    self.closed.get_or_insert_with(|| "event loop ended".into());
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits up to `within` for a PUBLISH matching `pred`.
    pub async fn recv<F: FnMut(&Msg) -> bool>(
        &mut self,
        within: Duration,
        mut pred: F,
    ) -> Option<Msg> {
        match self
            .wait_ev(within, |e| matches!(e, Ev::Publish(m) if pred(m)))
            .await
        {
            Some(Ev::Publish(m)) => Some(m),
            _ => None,
        }
    }

    /// Waits up to `within` for a PUBLISH on exactly `topic`.
    pub async fn recv_on(&mut self, topic: &str, within: Duration) -> Option<Msg> {
        self.recv(within, |m| m.topic == topic).await
    }

    /// Every PUBLISH received so far (without waiting), removed from the queue.
    pub fn drain_publishes(&mut self) -> Vec<Msg> {
        while let Ok(ev) = self.rx.try_recv() {
            if let Ev::Closed(r) = &ev {
                self.closed = Some(r.clone());
            }
            self.buf.push_back(ev);
        }
        let mut out = Vec::new();
        self.buf.retain(|e| match e {
            Ev::Publish(m) => {
                out.push(m.clone());
                false
            }
            _ => true,
        });
        out
    }

    /// Subscribes to `filter` at QoS 1 and returns the SUBACK codes. Errors when the client
    /// refuses the filter locally, or no SUBACK arrives within [`STEP`].
    pub async fn subscribe(&mut self, filter: &str) -> anyhow::Result<Vec<u8>> {
        self.rec
            .log(Dir::Out, || format!("SUBSCRIBE {filter} qos1"));
        match &self.client {
            Client::V4(c) => c
                .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .map_err(|e| anyhow!("client refused SUBSCRIBE {filter:?}: {e}"))?,
            Client::V5(c) => c
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .map_err(|e| anyhow!("client refused SUBSCRIBE {filter:?}: {e}"))?,
        }
        match self.wait_ev(STEP, |e| matches!(e, Ev::SubAck(_))).await {
            Some(Ev::SubAck(codes)) => Ok(codes),
            _ => match &self.closed {
                Some(r) => bail!("connection closed before SUBACK for {filter:?} ({r})"),
                None => bail!("no SUBACK for {filter:?} within {STEP:?}"),
            },
        }
    }

    /// Subscribes and fails unless every code grants QoS 0..2.
    pub async fn subscribe_ok(&mut self, filter: &str) -> anyhow::Result<()> {
        let codes = self.subscribe(filter).await?;
        if codes.iter().any(|c| *c > 2) {
            bail!("SUBSCRIBE {filter:?} refused with {codes:02x?}");
        }
        Ok(())
    }

    /// Publishes without waiting for an acknowledgement.
    pub async fn publish(&self, topic: &str, payload: &[u8], qos1: bool) -> anyhow::Result<()> {
        self.rec
            .publish(Dir::Out, topic, u8::from(qos1), false, payload);
        match &self.client {
            Client::V4(c) => {
                let q = if qos1 {
                    rumqttc::QoS::AtLeastOnce
                } else {
                    rumqttc::QoS::AtMostOnce
                };
                c.publish(topic, q, false, payload.to_vec())
                    .await
                    .map_err(|e| anyhow!("client refused PUBLISH {topic:?}: {e}"))
            }
            Client::V5(c) => {
                use rumqttc::v5::mqttbytes::QoS;
                let q = if qos1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                };
                c.publish(topic, q, false, payload.to_vec())
                    .await
                    .map_err(|e| anyhow!("client refused PUBLISH {topic:?}: {e}"))
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK: `Some(reason)` (0 for 3.1.1) or `None` when
    /// the connection closed or nothing came within [`STEP`].
    pub async fn publish_acked(
        &mut self,
        topic: &str,
        payload: &[u8],
    ) -> anyhow::Result<Option<u8>> {
        self.publish(topic, payload, true).await?;
        Ok(
            match self.wait_ev(STEP, |e| matches!(e, Ev::PubAck(_))).await {
                Some(Ev::PubAck(c)) => Some(c),
                _ => None,
            },
        )
    }

    /// Whether the connection has been seen closed (without waiting).
    pub fn closed_reason(&mut self) -> Option<String> {
        while let Ok(ev) = self.rx.try_recv() {
            if let Ev::Closed(r) = &ev {
                self.closed = Some(r.clone());
            }
            self.buf.push_back(ev);
        }
        self.closed.clone()
    }

    /// Waits up to `within` for the connection to close; returns how it closed.
    pub async fn wait_closed(&mut self, within: Duration) -> Option<String> {
        if let Some(r) = self.closed_reason() {
            return Some(r);
        }
        self.wait_ev(within, |e| matches!(e, Ev::Closed(_))).await;
        self.closed.clone()
    }

    /// Checks the connection is alive with a round trip the hub must answer (a SUBSCRIBE to a
    /// filter inside the thing's own tree, which the allow-list grants).
    pub async fn ping(&mut self, own_filter: &str) -> bool {
        self.subscribe(own_filter).await.is_ok()
    }

    /// Sends DISCONNECT and waits (at most [`STEP`]) for the socket to close.
    pub async fn disconnect(mut self) {
        self.rec.log(Dir::Out, || "DISCONNECT".into());
        let _ = match &self.client {
            Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
            Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
        };
        self.wait_closed(STEP).await;
    }

    /// Drops the TCP connection without DISCONNECT (so the hub publishes the Will).
    pub fn kill(self) {
        self.rec.log(Dir::Note, || {
            "TCP connection dropped without DISCONNECT".into()
        });
        self.task.abort();
    }
}

async fn drive_v4(
    mut el: rumqttc::EventLoop,
    tx: mpsc::UnboundedSender<Ev>,
    connack: oneshot::Sender<Result<(), ConnectError>>,
    rec: Rec,
) {
    use rumqttc::{ConnectionError, Event, Packet};
    let mut connack = Some(connack);
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(a))) => {
                rec.log(Dir::In, || format!("CONNACK {:?}", a.code));
                if let Some(c) = connack.take() {
                    let _ = c.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                let codes = s
                    .return_codes
                    .iter()
                    .map(|c| match c {
                        rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                        rumqttc::SubscribeReasonCode::Failure => 0x80,
                    })
                    .collect::<Vec<u8>>();
                rec.log(Dir::In, || format!("SUBACK {codes:02x?}"));
                let _ = tx.send(Ev::SubAck(codes));
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                rec.log(Dir::In, || "PUBACK".into());
                let _ = tx.send(Ev::PubAck(0));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                rec.publish(Dir::In, &p.topic, p.qos as u8, p.retain, &p.payload);
                let _ = tx.send(Ev::Publish(Msg {
                    topic: p.topic.clone(),
                    payload: p.payload.to_vec(),
                    qos: p.qos as u8,
                    retain: p.retain,
                }));
            }
            Ok(_) => {}
            Err(e) => {
                rec.log(Dir::Note, || format!("connection ended: {e}"));
                if let Some(c) = connack.take() {
                    let err = match e {
                        ConnectionError::ConnectionRefused(code) => {
                            ConnectError::Refused(code as u8)
                        }
                        other => ConnectError::Other(other.to_string()),
                    };
                    let _ = c.send(Err(err));
                } else {
                    let _ = tx.send(Ev::Closed(e.to_string()));
                }
                return;
            }
        }
    }
}

async fn drive_v5(
    mut el: rumqttc::v5::EventLoop,
    tx: mpsc::UnboundedSender<Ev>,
    connack: oneshot::Sender<Result<(), ConnectError>>,
    rec: Rec,
) {
    use p5::Packet;
    use rumqttc::v5::{ConnectionError, Event};
    let mut connack = Some(connack);
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(a))) => {
                rec.log(Dir::In, || {
                    format!("CONNACK {:#04x}", v5_connack_code(a.code))
                });
                if let Some(c) = connack.take() {
                    let r = if a.code == p5::ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(ConnectError::Refused(v5_connack_code(a.code)))
                    };
                    let failed = r.is_err();
                    let _ = c.send(r);
                    if failed {
                        return;
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                let codes: Vec<u8> = s.return_codes.iter().map(v5_suback_code).collect();
                rec.log(Dir::In, || format!("SUBACK {codes:02x?}"));
                let _ = tx.send(Ev::SubAck(codes));
            }
            Ok(Event::Incoming(Packet::PubAck(a))) => {
                let code = v5_puback_code(&a.reason);
                rec.log(Dir::In, || format!("PUBACK {code:#04x}"));
                let _ = tx.send(Ev::PubAck(code));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                rec.publish(
                    Dir::In,
                    &String::from_utf8_lossy(&p.topic),
                    p.qos as u8,
                    p.retain,
                    &p.payload,
                );
                let _ = tx.send(Ev::Publish(Msg {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.to_vec(),
                    qos: p.qos as u8,
                    retain: p.retain,
                }));
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                rec.log(Dir::In, || {
                    format!("DISCONNECT {:#04x}", d.reason_code as u8)
                });
                let _ = tx.send(Ev::Closed(format!(
                    "server DISCONNECT {:#04x}",
                    d.reason_code as u8
                )));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                rec.log(Dir::Note, || format!("connection ended: {e}"));
                if let Some(c) = connack.take() {
                    let err = match e {
                        ConnectionError::ConnectionRefused(code) => {
                            ConnectError::Refused(v5_connack_code(code))
                        }
                        other => ConnectError::Other(other.to_string()),
                    };
                    let _ = c.send(Err(err));
                } else {
                    let _ = tx.send(Ev::Closed(e.to_string()));
                }
                return;
            }
        }
    }
}

/// Context for errors from [`Conn::connect`] in `anyhow` code.
pub fn connect_context(r: Result<Conn, ConnectError>, who: &str) -> anyhow::Result<Conn> {
    r.map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("connecting {who}"))
}
