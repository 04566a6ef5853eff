//! The wire side of the raw client: MQTT 3.1.1 and MQTT 5 packets encoded and decoded by hand
//! from the two OASIS specifications, with no client library in between, so the checks see
//! exactly the bytes the hub sends and can send bytes a library would refuse.

use crate::mqtt::Proto;

/// Property identifiers (MQTT 5 §2.2.2.2) the checks use.
pub mod prop {
    /// Message Expiry Interval (four bytes).
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    /// Session Expiry Interval (four bytes).
    pub const SESSION_EXPIRY: u8 = 0x11;
    /// Server Keep Alive (two bytes).
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// Receive Maximum (two bytes).
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Topic Alias Maximum (two bytes).
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// Topic Alias (two bytes).
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// Retain Available (one byte).
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// Shared Subscription Available (one byte).
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

/// Properties in wire order (always empty for MQTT 3.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// Width of a property's value (MQTT 5 §2.2.2.2 table): 1, 2 or 4 bytes, 0 for a variable byte
/// integer, 3 for length-prefixed data, 5 for a string pair; `None` for unknown identifiers.
fn width(id: u8) -> Option<u8> {
    Some(match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
        0x13 | 0x21 | 0x22 | 0x23 => 2,
        0x02 | 0x11 | 0x18 | 0x27 => 4,
        0x0B => 0,
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => 3,
        0x26 => 5,
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

/// Encodes integer properties `(id, value)`, length first; the width comes from the identifier.
/// Panics on an identifier that is not a fixed-width integer (a mistake in the check itself).
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

/// A packet: the first byte, the remaining length, the body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// What a CONNECT carries besides the credentials.
#[derive(Debug, Clone)]
pub struct ConnectOpts<'a> {
    /// MQTT 3.1.1 or 5.
    pub proto: Proto,
    /// Client identifier.
    pub client_id: &'a str,
    /// User name.
    pub username: &'a str,
    /// Password.
    pub password: &'a str,
    /// Clean Start (MQTT 5) / Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep alive, seconds.
    pub keep_alive: u16,
    /// Integer CONNECT properties (Session Expiry Interval, Receive Maximum, ...; MQTT 5 only).
    pub props: Vec<(u8, u32)>,
}

impl<'a> ConnectOpts<'a> {
    /// MQTT 5, Clean Start 1, keep alive 30 s, no properties.
    pub fn new(client_id: &'a str, username: &'a str, password: &'a str) -> Self {
        ConnectOpts {
            proto: Proto::V5,
            client_id,
            username,
            password,
            clean_start: true,
            keep_alive: 30,
            props: Vec::new(),
        }
    }

    /// Sets the protocol version.
    pub fn proto(mut self, proto: Proto) -> Self {
        self.proto = proto;
        self
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

    /// The CONNECT packet (MQTT 3.1.1 §3.1, MQTT 5 §3.1): user name and password flags set,
    /// no Will; properties only in MQTT 5.
    pub fn packet(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.push(if self.proto == Proto::V5 { 5 } else { 4 });
        body.push(0xC0 | if self.clean_start { 0x02 } else { 0 });
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        if self.proto == Proto::V5 {
            body.extend_from_slice(&encode_props(&self.props));
        }
        put_str(&mut body, self.client_id.as_bytes());
        put_str(&mut body, self.username.as_bytes());
        put_str(&mut body, self.password.as_bytes());
        frame(0x10, &body)
    }
}

/// SUBSCRIBE with one filter, sent exactly as given (malformed filters included).
pub fn subscribe_packet(proto: Proto, id: u16, filter: &[u8], qos: u8) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    if proto == Proto::V5 {
        body.push(0);
    }
    put_str(&mut body, filter);
    body.push(qos);
    frame(0x82, &body)
}

/// PUBLISH on `topic`, sent exactly as given; `id` is the packet id (ignored at QoS 0);
/// properties only in MQTT 5.
pub fn publish_packet(
    proto: Proto,
    topic: &[u8],
    payload: &[u8],
    (qos, retain, id): (u8, bool, u16),
    props: &[(u8, u32)],
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic);
    if qos > 0 {
        body.extend_from_slice(&id.to_be_bytes());
    }
    if proto == Proto::V5 {
        body.extend_from_slice(&encode_props(props));
    }
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// One packet as read: type nibble, flags nibble, body, and the protocol of its connection.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Packet type (MQTT §2.1.2): 2 CONNACK, 3 PUBLISH, 4 PUBACK, 9 SUBACK, 14 DISCONNECT, ...
    pub kind: u8,
    /// The low nibble of the first byte.
    pub flags: u8,
    /// Everything after the remaining length.
    pub body: Vec<u8>,
    /// The connection's protocol (MQTT 3.1.1 packets have no properties).
    pub proto: Proto,
}

/// A decoded CONNACK.
#[derive(Debug, Clone)]
pub struct ConnAck {
    /// Session Present.
    pub session_present: bool,
    /// Return code (3.1.1) or reason code (5).
    pub reason: u8,
    /// CONNACK properties (MQTT 5).
    pub props: Props,
}

/// A decoded PUBLISH.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Topic name.
    pub topic: String,
    /// QoS.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// Packet id (QoS 1 and 2).
    pub packet_id: Option<u16>,
    /// Properties (MQTT 5).
    pub props: Props,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Packet {
    fn props_at(&self, at: &mut usize) -> Option<Props> {
        match self.proto {
            Proto::V5 => decode_props(&self.body, at),
            Proto::V311 => Some(Props::default()),
        }
    }

    /// This packet as a CONNACK.
    pub fn connack(&self) -> Option<ConnAck> {
        if self.kind != 2 {
            return None;
        }
        let mut at = 2;
        Some(ConnAck {
            session_present: *self.body.first()? & 1 == 1,
            reason: *self.body.get(1)?,
            props: self.props_at(&mut at)?,
        })
    }

    /// This packet as a PUBLISH.
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
        let props = self.props_at(&mut at)?;
        Some(Publish {
            topic,
            qos,
            retain: self.flags & 1 == 1,
            packet_id,
            props,
            payload: self.body.get(at..)?.to_vec(),
        })
    }

    /// The reason codes of this SUBACK, one per filter.
    pub fn suback_codes(&self) -> Option<Vec<u8>> {
        if self.kind != 9 {
            return None;
        }
        let mut at = 2;
        self.props_at(&mut at)?;
        Some(self.body.get(at..)?.to_vec())
    }

    /// The packet id this PUBACK acknowledges and its reason code (0 when omitted: MQTT 5
    /// §3.4.2.1, and always in 3.1.1).
    pub fn puback(&self) -> Option<(u16, u8)> {
        if self.kind != 4 {
            return None;
        }
        let id = u16::from_be_bytes([*self.body.first()?, *self.body.get(1)?]);
        Some((id, self.body.get(2).copied().unwrap_or(0)))
    }

    /// The reason code of this DISCONNECT (0 when omitted, and in 3.1.1).
    pub fn disconnect_reason(&self) -> Option<u8> {
        (self.kind == 14).then(|| self.body.first().copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connect_builder_for_both_versions() {
        let v5 = ConnectOpts::new("t", "t", "pw").session_expiry(60);
        let v311 = v5.clone().proto(Proto::V311);
        let (a, b) = (v5.packet(), v311.packet());
        // Fixed header, "MQTT", level, flags, keep alive.
        assert_eq!(a[..2], [0x10, a.len() as u8 - 2]);
        assert_eq!(&a[2..10], &[0, 4, b'M', b'Q', b'T', b'T', 5, 0xC2]);
        assert_eq!(&b[2..10], &[0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2]);
        // MQTT 5 carries the Session Expiry property (length 5), 3.1.1 none.
        assert_eq!(&a[12..18], &[5, prop::SESSION_EXPIRY, 0, 0, 0, 60]);
        assert_eq!(&b[12..15], &[0, 1, b't']);
        assert_eq!(a.len(), b.len() + 6);
    }

    #[test]
    fn props_round_trip() {
        let enc = encode_props(&[(prop::TOPIC_ALIAS, 7), (prop::MESSAGE_EXPIRY, 9)]);
        let mut at = 0;
        let props = decode_props(&enc, &mut at).expect("decode");
        assert_eq!(props.int(prop::TOPIC_ALIAS), Some(7));
        assert_eq!(props.int(prop::MESSAGE_EXPIRY), Some(9));
        assert_eq!(at, enc.len());
    }
}
