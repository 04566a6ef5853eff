//! A raw MQTT 5 client written from the MQTT 5 specification, for what a library client hides
//! or refuses to send: Clean Start and Session Expiry chosen per CONNECT, CONNACK properties
//! read one by one, Topic Alias 0, unacknowledged QoS 2 floods, DISCONNECT reason codes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Property identifiers (MQTT 5 §2.2.2.2) used by these tests.
pub mod prop {
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const SESSION_EXPIRY: u8 = 0x11;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// One property value as it appears on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Byte, two-byte and four-byte integers and variable byte integers.
    Int(u32),
    /// UTF-8 strings and binary data.
    Bytes(Vec<u8>),
    /// A user property.
    Pair(Vec<u8>, Vec<u8>),
}

/// Properties in wire order.
#[derive(Debug, Clone, Default)]
pub struct Props(pub Vec<(u8, Value)>);

impl Props {
    /// The integer value of property `id`, if present.
    pub fn int(&self, id: u8) -> Option<u32> {
        self.0.iter().find_map(|(k, v)| match v {
            Value::Int(n) if *k == id => Some(*n),
            _ => None,
        })
    }

    /// Whether property `id` is present.
    pub fn has(&self, id: u8) -> bool {
        self.0.iter().any(|(k, _)| *k == id)
    }
}

/// Width of a property's value (MQTT 5 §2.2.2.2 table); `None` for unknown identifiers.
fn width(id: u8) -> Option<u8> {
    Some(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
        0x13 | 0x21 | 0x22 | 0x23 => 2,
        0x02 | 0x11 | 0x18 | 0x27 => 4,
        0x0B => 0, // variable byte integer
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => 3, // length-prefixed
        0x26 => 5, // string pair
        _ => return None,
    })
}

fn varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn read_varint(buf: &[u8], at: &mut usize) -> Option<usize> {
    let (mut n, mut mult) = (0usize, 1usize);
    for _ in 0..4 {
        let b = *buf.get(*at)?;
        *at += 1;
        n += usize::from(b & 0x7F) * mult;
        if b & 0x80 == 0 {
            return Some(n);
        }
        mult *= 128;
    }
    None
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn read_bin(buf: &[u8], at: &mut usize) -> Option<Vec<u8>> {
    let len = usize::from(u16::from_be_bytes([*buf.get(*at)?, *buf.get(*at + 1)?]));
    let v = buf.get(*at + 2..*at + 2 + len)?.to_vec();
    *at += 2 + len;
    Some(v)
}

/// Encodes integer properties `(id, value)`; the width comes from the identifier.
pub fn encode_props(props: &[(u8, u32)]) -> Vec<u8> {
    let mut body = Vec::new();
    for &(id, v) in props {
        body.push(id);
        match width(id) {
            Some(1) => body.push(v as u8),
            Some(2) => body.extend_from_slice(&(v as u16).to_be_bytes()),
            Some(4) => body.extend_from_slice(&v.to_be_bytes()),
            _ => panic!("encode_props: property {id:#x} is not a fixed-width integer"),
        }
    }
    let mut out = Vec::new();
    varint(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// Decodes a property block at `at` (length first); `None` if malformed.
pub fn decode_props(buf: &[u8], at: &mut usize) -> Option<Props> {
    let len = read_varint(buf, at)?;
    let end = *at + len;
    let mut props = Props::default();
    while *at < end {
        let id = *buf.get(*at)?;
        *at += 1;
        let value = match width(id)? {
            0 => Value::Int(read_varint(buf, at)? as u32),
            1 => {
                *at += 1;
                Value::Int(u32::from(*buf.get(*at - 1)?))
            }
            2 => {
                *at += 2;
                Value::Int(u32::from(u16::from_be_bytes([
                    *buf.get(*at - 2)?,
                    *buf.get(*at - 1)?,
                ])))
            }
            4 => {
                *at += 4;
                Value::Int(u32::from_be_bytes(buf.get(*at - 4..*at)?.try_into().ok()?))
            }
            3 => Value::Bytes(read_bin(buf, at)?),
            _ => Value::Pair(read_bin(buf, at)?, read_bin(buf, at)?),
        };
        props.0.push((id, value));
    }
    (*at == end).then_some(props)
}

/// One packet as read: type nibble, flags nibble, body.
#[derive(Debug, Clone)]
pub struct Packet {
    pub kind: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

/// A decoded CONNACK.
#[derive(Debug, Clone)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: u8,
    pub props: Props,
}

/// A decoded PUBLISH.
#[derive(Debug, Clone)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub packet_id: Option<u16>,
    pub props: Props,
    pub payload: Vec<u8>,
}

impl Packet {
    /// Decodes this packet as a PUBLISH.
    pub fn publish(&self) -> Option<Publish> {
        if self.kind != 3 {
            return None;
        }
        let qos = (self.flags >> 1) & 3;
        let mut at = 0;
        let topic = String::from_utf8(read_bin(&self.body, &mut at)?).ok()?;
        let packet_id = if qos > 0 {
            at += 2;
            Some(u16::from_be_bytes([
                *self.body.get(at - 2)?,
                *self.body.get(at - 1)?,
            ]))
        } else {
            None
        };
        let props = decode_props(&self.body, &mut at)?;
        Some(Publish {
            topic,
            qos,
            retain: self.flags & 1 == 1,
            packet_id,
            props,
            payload: self.body.get(at..)?.to_vec(),
        })
    }
}

/// What a CONNECT carries besides the credentials.
#[derive(Debug, Clone)]
pub struct ConnectOpts<'a> {
    pub client_id: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub clean_start: bool,
    pub keep_alive: u16,
    /// Integer CONNECT properties (Session Expiry Interval, Receive Maximum, ...).
    pub props: Vec<(u8, u32)>,
}

impl<'a> ConnectOpts<'a> {
    /// Clean Start 1, keep alive 30 s, no properties.
    pub fn new(client_id: &'a str, username: &'a str, password: &'a str) -> Self {
        ConnectOpts {
            client_id,
            username,
            password,
            clean_start: true,
            keep_alive: 30,
            props: Vec::new(),
        }
    }

    /// Sets Clean Start.
    pub fn clean_start(mut self, clean_start: bool) -> Self {
        self.clean_start = clean_start;
        self
    }

    /// Sets the Session Expiry Interval property.
    pub fn session_expiry(mut self, secs: u32) -> Self {
        self.props.push((prop::SESSION_EXPIRY, secs));
        self
    }

    /// Sets the keep alive.
    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }
}

/// Bound on any single wait of this client.
pub const STEP: Duration = Duration::from_secs(10);

/// One raw MQTT 5 connection.
pub struct Raw {
    stream: TcpStream,
    next_id: u16,
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

impl Raw {
    /// Sends CONNECT and returns the connection with the CONNACK, whatever its reason code.
    pub async fn connect(addr: SocketAddr, opts: &ConnectOpts<'_>) -> (Raw, ConnAck) {
        let stream = timeout(STEP, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.push(5);
        body.push(0xC0 | if opts.clean_start { 0x02 } else { 0 });
        body.extend_from_slice(&opts.keep_alive.to_be_bytes());
        body.extend_from_slice(&encode_props(&opts.props));
        put_str(&mut body, opts.client_id.as_bytes());
        put_str(&mut body, opts.username.as_bytes());
        put_str(&mut body, opts.password.as_bytes());
        let mut raw = Raw { stream, next_id: 1 };
        raw.send(&frame(0x10, &body)).await;
        let p = raw
            .read(STEP)
            .await
            .expect("connection closed before CONNACK");
        assert_eq!(p.kind, 2, "expected CONNACK, got {p:?}");
        let mut at = 2;
        let props = decode_props(&p.body, &mut at).expect("CONNACK properties decode");
        let ack = ConnAck {
            session_present: p.body.first() == Some(&1),
            reason: p.body.get(1).copied().expect("CONNACK reason"),
            props,
        };
        (raw, ack)
    }

    /// Connects and asserts CONNACK success.
    pub async fn connect_ok(addr: SocketAddr, opts: &ConnectOpts<'_>) -> (Raw, ConnAck) {
        let (raw, ack) = Raw::connect(addr, opts).await;
        assert_eq!(ack.reason, 0, "CONNACK refused: {ack:?}");
        (raw, ack)
    }

    /// Writes raw bytes; a failed write is left to the next read to notice (the peer closed).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Reads one packet; `None` on EOF, reset or timeout.
    pub async fn read(&mut self, within: Duration) -> Option<Packet> {
        let fut = async {
            let mut first = [0u8; 1];
            if self.stream.read(&mut first).await? == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            let (mut len, mut mult) = (0usize, 1usize);
            for _ in 0..4 {
                let mut b = [0u8; 1];
                self.stream.read_exact(&mut b).await?;
                len += usize::from(b[0] & 0x7F) * mult;
                mult *= 128;
                if b[0] & 0x80 == 0 {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await?;
            Ok(Some(Packet {
                kind: first[0] >> 4,
                flags: first[0] & 0x0F,
                body,
            }))
        };
        timeout(within, fut)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }

    /// Subscribes to `filter` with maximum QoS `qos`; returns the SUBACK reason code.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> u8 {
        let id = self.packet_id();
        let mut body = id.to_be_bytes().to_vec();
        body.push(0);
        put_str(&mut body, filter.as_bytes());
        body.push(qos);
        self.send(&frame(0x82, &body)).await;
        loop {
            let p = self.read(STEP).await.expect("no SUBACK");
            if p.kind == 9 {
                let mut at = 2;
                decode_props(&p.body, &mut at).expect("SUBACK properties");
                return *p.body.get(at).expect("SUBACK reason code");
            }
        }
    }

    /// Sends PUBLISH; returns its packet id (0 at QoS 0). Does not wait for an answer.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        props: &[(u8, u32)],
    ) -> u16 {
        let mut body = Vec::new();
        put_str(&mut body, topic.as_bytes());
        let id = if qos > 0 { self.packet_id() } else { 0 };
        if qos > 0 {
            body.extend_from_slice(&id.to_be_bytes());
        }
        body.extend_from_slice(&encode_props(props));
        body.extend_from_slice(payload);
        let first = 0x30 | (qos << 1) | u8::from(retain);
        self.send(&frame(first, &body)).await;
        id
    }

    /// PUBLISH at QoS 1 and wait for its PUBACK; returns the PUBACK reason code (0 when
    /// omitted, MQTT 5 §3.4.2.1) and the PUBACK's whole variable header.
    pub async fn publish_acked(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        props: &[(u8, u32)],
    ) -> (u8, Vec<u8>) {
        let id = self.publish(topic, payload, 1, retain, props).await;
        loop {
            let p = self.read(STEP).await.expect("no PUBACK");
            if p.kind == 4 && p.body.get(..2) == Some(&id.to_be_bytes()[..]) {
                return (p.body.get(2).copied().unwrap_or(0), p.body);
            }
        }
    }

    /// Acknowledges a QoS 1 PUBLISH.
    pub async fn puback(&mut self, packet_id: u16) {
        self.send(&frame(0x40, &packet_id.to_be_bytes())).await;
    }

    /// Waits for a PUBLISH on `topic`, acknowledging QoS 1 ones; `None` if none comes in time.
    pub async fn expect_publish(&mut self, topic: &str, within: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = self.read(left).await?;
            if let Some(publish) = p.publish() {
                if let Some(id) = publish.packet_id.filter(|_| publish.qos == 1) {
                    self.puback(id).await;
                }
                if publish.topic == topic {
                    return Some(publish);
                }
            }
        }
    }

    /// Reads until the server closes; returns the DISCONNECT reason code it sent first, or
    /// `None` if it closed without one (or did not close within `within`).
    pub async fn disconnect_reason(&mut self, within: Duration) -> Option<u8> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = self.read(left).await?;
            if p.kind == 14 {
                return Some(p.body.first().copied().unwrap_or(0));
            }
        }
    }

    /// Whether the server closed the connection (EOF or reset) within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut b = [0u8; 256];
            match timeout(left, self.stream.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Sends DISCONNECT 0x00 with an optional Session Expiry Interval and closes.
    pub async fn disconnect(mut self, session_expiry: Option<u32>) {
        let mut body = vec![0u8];
        let props: Vec<(u8, u32)> = session_expiry
            .map(|s| (prop::SESSION_EXPIRY, s))
            .into_iter()
            .collect();
        body.extend_from_slice(&encode_props(&props));
        self.send(&frame(0xE0, &body)).await;
        let _ = self.stream.shutdown().await;
    }
}
