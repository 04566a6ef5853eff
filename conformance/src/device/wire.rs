//! MQTT framing for the device side, through rumqttc's maintained codecs
//! (`rumqttc::mqttbytes::v4` for 3.1.1, `rumqttc::v5::mqttbytes::v5` for 5): nothing here
//! encodes or decodes MQTT bytes by hand. Both versions are mapped onto one small [`Pkt`] type
//! holding what the scripted hub and the shims' break proxy need.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::QoS as Q4;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5 as m5;
use rumqttc::v5::mqttbytes::{self as b5};

use crate::mqtt::Proto;

/// Largest packet accepted either way (a shadow document with metadata fits with room).
pub const MAX_PACKET: usize = 1 << 20;

/// A PUBLISH of either version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pub {
    /// Topic name (empty when an MQTT 5 topic alias stands for it).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// Packet id (0 at QoS 0).
    pub pkid: u16,
    /// MQTT 5 topic alias, when the sender used one.
    pub alias: Option<u16>,
}

/// The packets the device side deals with, either version. Codes are the numbers on the wire
/// (3.1.1 return codes, MQTT 5 reason codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkt {
    /// CONNECT.
    Connect {
        /// Client identifier.
        client_id: String,
        /// User name, when given.
        username: Option<String>,
        /// Password, when given.
        password: Option<String>,
        /// Keep-alive, s.
        keep_alive: u16,
        /// Clean session (3.1.1) or clean start (5).
        clean: bool,
    },
    /// CONNACK.
    ConnAck {
        /// 0 accepted; otherwise the refusal code.
        code: u8,
        /// Session present flag.
        session_present: bool,
    },
    /// PUBLISH.
    Publish(Pub),
    /// PUBACK with its reason code (0 for 3.1.1).
    PubAck {
        /// Packet id.
        pkid: u16,
        /// Reason code.
        code: u8,
    },
    /// SUBSCRIBE.
    Subscribe {
        /// Packet id.
        pkid: u16,
        /// The filters, in order.
        filters: Vec<String>,
    },
    /// SUBACK, one code per filter.
    SubAck {
        /// Packet id.
        pkid: u16,
        /// Granted QoS or failure code per filter.
        codes: Vec<u8>,
    },
    /// PINGREQ.
    PingReq,
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect,
    /// Any other packet (kept only by name).
    Other(&'static str),
}

/// A framing error (malformed packet, wrong protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

/// Reads a CONNECT of either version from the front of `buf`: `Ok(None)` when more bytes are
/// needed, else the version the client speaks and the packet.
pub fn read_connect(buf: &mut BytesMut) -> Result<Option<(Proto, Pkt)>, WireError> {
    let mut probe = buf.clone();
    match m5::Packet::read(&mut probe, Some(MAX_PACKET as u32)) {
        Ok(p) => {
            *buf = probe;
            Ok(Some((Proto::V5, from5(p))))
        }
        Err(b5::Error::InsufficientBytes(_)) => Ok(None),
        Err(b5::Error::InvalidProtocolLevel(4)) => {
            read(buf, Proto::V311).map(|p| p.map(|p| (Proto::V311, p)))
        }
        Err(e) => Err(WireError(format!("malformed CONNECT: {e}"))),
    }
}

/// Reads one packet of version `proto` from the front of `buf`; `Ok(None)` when more bytes are
/// needed.
pub fn read(buf: &mut BytesMut, proto: Proto) -> Result<Option<Pkt>, WireError> {
    match proto {
        Proto::V311 => match v4::Packet::read(buf, MAX_PACKET) {
            Ok(p) => Ok(Some(from4(p))),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(WireError(format!("malformed MQTT 3.1.1 packet: {e}"))),
        },
        Proto::V5 => match m5::Packet::read(buf, Some(MAX_PACKET as u32)) {
            Ok(p) => Ok(Some(from5(p))),
            Err(b5::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(WireError(format!("malformed MQTT 5 packet: {e}"))),
        },
    }
}

/// Like [`read`], also returning the packet's bytes as received (so a proxy can forward what it
/// does not change byte for byte).
pub fn read_raw(buf: &mut BytesMut, proto: Proto) -> Result<Option<(Pkt, Bytes)>, WireError> {
    let mut probe = buf.clone();
    let Some(p) = read(&mut probe, proto)? else {
        return Ok(None);
    };
    let used = buf.len() - probe.len();
    Ok(Some((p, buf.split_to(used).freeze())))
}

/// Encodes `p` for version `proto` and appends it to `out`.
pub fn write(p: &Pkt, proto: Proto, out: &mut BytesMut) -> Result<(), WireError> {
    let r = match proto {
        Proto::V311 => to4(p)?
            .write(out, MAX_PACKET)
            .map_err(|e| WireError(e.to_string())),
        Proto::V5 => to5(p)?
            .write(out, Some(MAX_PACKET as u32))
            .map_err(|e| WireError(e.to_string())),
    };
    r.map(|_| ())
}

/// [`write()`] into a fresh buffer.
pub fn encode(p: &Pkt, proto: Proto) -> Result<Bytes, WireError> {
    let mut out = BytesMut::new();
    write(p, proto, &mut out)?;
    Ok(out.freeze())
}

fn from4(p: v4::Packet) -> Pkt {
    match p {
        v4::Packet::Connect(c) => Pkt::Connect {
            client_id: c.client_id,
            username: c.login.as_ref().map(|l| l.username.clone()),
            password: c.login.map(|l| l.password),
            keep_alive: c.keep_alive,
            clean: c.clean_session,
        },
        v4::Packet::ConnAck(a) => Pkt::ConnAck {
            code: a.code as u8,
            session_present: a.session_present,
        },
        v4::Packet::Publish(p) => Pkt::Publish(Pub {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos as u8,
            retain: p.retain,
            pkid: p.pkid,
            alias: None,
        }),
        v4::Packet::PubAck(a) => Pkt::PubAck {
            pkid: a.pkid,
            code: 0,
        },
        v4::Packet::Subscribe(s) => Pkt::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| f.path).collect(),
        },
        v4::Packet::SubAck(s) => Pkt::SubAck {
            pkid: s.pkid,
            codes: s
                .return_codes
                .iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => *q as u8,
                    v4::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
        },
        v4::Packet::PingReq => Pkt::PingReq,
        v4::Packet::PingResp => Pkt::PingResp,
        v4::Packet::Disconnect => Pkt::Disconnect,
        v4::Packet::PubRec(_) => Pkt::Other("PUBREC"),
        v4::Packet::PubRel(_) => Pkt::Other("PUBREL"),
        v4::Packet::PubComp(_) => Pkt::Other("PUBCOMP"),
        v4::Packet::Unsubscribe(_) => Pkt::Other("UNSUBSCRIBE"),
        v4::Packet::UnsubAck(_) => Pkt::Other("UNSUBACK"),
    }
}

fn sub5_code(c: &m5::SubscribeReasonCode) -> u8 {
    use m5::SubscribeReasonCode as S;
    match c {
        S::Success(q) => *q as u8,
        S::Failure | S::Unspecified => 0x80,
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8F,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9E,
        S::SubscriptionIdNotSupported => 0xA1,
        S::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

fn from5(p: m5::Packet) -> Pkt {
    match p {
        m5::Packet::Connect(c, _will, login) => Pkt::Connect {
            client_id: c.client_id,
            username: login.as_ref().map(|l| l.username.clone()),
            password: login.map(|l| l.password),
            keep_alive: c.keep_alive,
            clean: c.clean_start,
        },
        m5::Packet::ConnAck(a) => Pkt::ConnAck {
            code: if a.code == m5::ConnectReturnCode::Success {
                0
            } else {
                0x80
            },
            session_present: a.session_present,
        },
        m5::Packet::Publish(p) => Pkt::Publish(Pub {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
            qos: p.qos as u8,
            retain: p.retain,
            pkid: p.pkid,
            alias: p.properties.and_then(|pr| pr.topic_alias),
        }),
        m5::Packet::PubAck(a) => Pkt::PubAck {
            pkid: a.pkid,
            code: if a.reason == m5::PubAckReason::Success {
                0
            } else {
                0x80
            },
        },
        m5::Packet::Subscribe(s) => Pkt::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| f.path).collect(),
        },
        m5::Packet::SubAck(s) => Pkt::SubAck {
            pkid: s.pkid,
            codes: s.return_codes.iter().map(sub5_code).collect(),
        },
        m5::Packet::PingReq(_) => Pkt::PingReq,
        m5::Packet::PingResp(_) => Pkt::PingResp,
        m5::Packet::Disconnect(_) => Pkt::Disconnect,
        m5::Packet::Auth(_) => Pkt::Other("AUTH"),
        m5::Packet::PubRec(_) => Pkt::Other("PUBREC"),
        m5::Packet::PubRel(_) => Pkt::Other("PUBREL"),
        m5::Packet::PubComp(_) => Pkt::Other("PUBCOMP"),
        m5::Packet::Unsubscribe(_) => Pkt::Other("UNSUBSCRIBE"),
        m5::Packet::UnsubAck(_) => Pkt::Other("UNSUBACK"),
    }
}

fn qos4(q: u8) -> Q4 {
    match q {
        0 => Q4::AtMostOnce,
        1 => Q4::AtLeastOnce,
        _ => Q4::ExactlyOnce,
    }
}

fn qos5(q: u8) -> b5::QoS {
    match q {
        0 => b5::QoS::AtMostOnce,
        1 => b5::QoS::AtLeastOnce,
        _ => b5::QoS::ExactlyOnce,
    }
}

fn unsupported(p: &Pkt) -> WireError {
    WireError(format!("cannot encode {p:?}"))
}

fn to4(p: &Pkt) -> Result<v4::Packet, WireError> {
    Ok(match p {
        Pkt::ConnAck {
            code,
            session_present,
        } => {
            let code = match code {
                0 => v4::ConnectReturnCode::Success,
                1 => v4::ConnectReturnCode::RefusedProtocolVersion,
                2 => v4::ConnectReturnCode::BadClientId,
                3 => v4::ConnectReturnCode::ServiceUnavailable,
                4 => v4::ConnectReturnCode::BadUserNamePassword,
                _ => v4::ConnectReturnCode::NotAuthorized,
            };
            v4::Packet::ConnAck(v4::ConnAck::new(code, *session_present))
        }
        Pkt::Publish(p) => {
            let mut out = v4::Publish::new(p.topic.clone(), qos4(p.qos), p.payload.to_vec());
            out.retain = p.retain;
            out.pkid = p.pkid;
            v4::Packet::Publish(out)
        }
        Pkt::PubAck { pkid, .. } => v4::Packet::PubAck(v4::PubAck::new(*pkid)),
        Pkt::Subscribe { pkid, filters } => {
            let mut s = v4::Subscribe::new_many(
                filters
                    .iter()
                    .map(|f| v4::SubscribeFilter::new(f.clone(), Q4::AtLeastOnce)),
            );
            s.pkid = *pkid;
            v4::Packet::Subscribe(s)
        }
        Pkt::SubAck { pkid, codes } => v4::Packet::SubAck(v4::SubAck::new(
            *pkid,
            codes
                .iter()
                .map(|c| match c {
                    0..=2 => v4::SubscribeReasonCode::Success(qos4(*c)),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Pkt::PingReq => v4::Packet::PingReq,
        Pkt::PingResp => v4::Packet::PingResp,
        Pkt::Disconnect => v4::Packet::Disconnect,
        Pkt::Connect { .. } | Pkt::Other(_) => return Err(unsupported(p)),
    })
}

fn to5(p: &Pkt) -> Result<m5::Packet, WireError> {
    Ok(match p {
        Pkt::ConnAck {
            code,
            session_present,
        } => {
            let code = match code {
                0 => m5::ConnectReturnCode::Success,
                0x86 => m5::ConnectReturnCode::BadUserNamePassword,
                0x87 => m5::ConnectReturnCode::NotAuthorized,
                0x88 => m5::ConnectReturnCode::ServerUnavailable,
                _ => m5::ConnectReturnCode::UnspecifiedError,
            };
            m5::Packet::ConnAck(m5::ConnAck {
                session_present: *session_present,
                code,
                properties: None,
            })
        }
        Pkt::Publish(p) => {
            let props = p.alias.map(|a| m5::PublishProperties {
                topic_alias: Some(a),
                ..Default::default()
            });
            let mut out = m5::Publish::new(p.topic.clone(), qos5(p.qos), p.payload.clone(), props);
            out.retain = p.retain;
            out.pkid = p.pkid;
            m5::Packet::Publish(out)
        }
        Pkt::PubAck { pkid, code } => {
            let mut a = m5::PubAck::new(*pkid, None);
            a.reason = match code {
                0 => m5::PubAckReason::Success,
                0x87 => m5::PubAckReason::NotAuthorized,
                _ => m5::PubAckReason::UnspecifiedError,
            };
            m5::Packet::PubAck(a)
        }
        Pkt::Subscribe { pkid, filters } => {
            let mut s = m5::Subscribe::new_many(
                filters
                    .iter()
                    .map(|f| m5::Filter::new(f.clone(), b5::QoS::AtLeastOnce)),
                None,
            );
            s.pkid = *pkid;
            m5::Packet::Subscribe(s)
        }
        Pkt::SubAck { pkid, codes } => m5::Packet::SubAck(m5::SubAck {
            pkid: *pkid,
            return_codes: codes
                .iter()
                .map(|c| match c {
                    0..=2 => m5::SubscribeReasonCode::Success(qos5(*c)),
                    0x87 => m5::SubscribeReasonCode::NotAuthorized,
                    _ => m5::SubscribeReasonCode::Unspecified,
                })
                .collect(),
            properties: None,
        }),
        Pkt::PingReq => m5::Packet::PingReq(m5::PingReq),
        Pkt::PingResp => m5::Packet::PingResp(m5::PingResp),
        Pkt::Disconnect => m5::Packet::Disconnect(m5::Disconnect::new(
            m5::DisconnectReasonCode::NormalDisconnection,
        )),
        Pkt::Connect { .. } | Pkt::Other(_) => return Err(unsupported(p)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_versions() {
        for proto in Proto::BOTH {
            for p in [
                Pkt::Publish(Pub {
                    topic: "$iothub/things/a/ntp/resp".into(),
                    payload: Bytes::from_static(b"{}"),
                    qos: 1,
                    retain: false,
                    pkid: 7,
                    alias: None,
                }),
                Pkt::SubAck {
                    pkid: 3,
                    codes: vec![1, if proto == Proto::V5 { 0x87 } else { 0x80 }],
                },
                Pkt::Subscribe {
                    pkid: 9,
                    filters: vec!["$iothub/things/a/#".into()],
                },
                Pkt::PingResp,
            ] {
                let mut b = BytesMut::from(&encode(&p, proto).unwrap()[..]);
                let (back, raw) = read_raw(&mut b, proto).unwrap().unwrap();
                assert_eq!(back, p, "{proto:?}");
                assert!(b.is_empty() && !raw.is_empty());
            }
        }
    }

    #[test]
    fn partial_input_waits_for_more() {
        let full = encode(&Pkt::PingReq, Proto::V5).unwrap();
        let mut b = BytesMut::from(&full[..1]);
        assert_eq!(read(&mut b, Proto::V5).unwrap(), None);
        let mut junk = BytesMut::from(&[0xF0u8, 0x00][..]);
        assert!(read(&mut junk, Proto::V311).is_err());
    }
}
