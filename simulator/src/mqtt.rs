//! MQTT 3.1.1 and 5 packets for the virtual things, through rumqttc's codec modules
//! (`rumqttc::mqttbytes::v4` and `rumqttc::v5::mqttbytes::v5`) and nothing else of rumqttc: no
//! event loop, no client channel, no per-connection state beyond two small buffers the caller
//! owns. The virtual thing encodes what its device core asks for and decodes what the hub sends.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

/// Largest packet a virtual thing accepts from the hub (a shadow document with metadata at the
/// S-3.9 limits stays well below it).
pub const MAX_INCOMING: usize = 256 * 1024;

/// The MQTT protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Version {
    /// MQTT 3.1.1.
    V4,
    /// MQTT 5.
    V5,
}

/// Why a packet could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// An MQTT 3.1.1 packet was malformed or too large.
    #[error("mqtt 3.1.1 codec: {0}")]
    V4(#[from] rumqttc::mqttbytes::Error),
    /// An MQTT 5 packet was malformed or too large.
    #[error("mqtt 5 codec: {0}")]
    V5(#[from] rumqttc::v5::mqttbytes::Error),
}

/// What the hub sent, reduced to what a virtual thing acts on.
#[derive(Debug)]
pub enum Incoming {
    /// CONNACK: `code` 0 is success (3.1.1 return code or MQTT 5 reason code otherwise).
    ConnAck {
        /// Return or reason code; 0 = accepted.
        code: u8,
        /// The session-present flag.
        session_present: bool,
    },
    /// PUBLISH. `pkid` is set for QoS 1 (answer with PUBACK).
    Publish {
        /// Topic name as raw bytes.
        topic: bytes::Bytes,
        /// Payload.
        payload: bytes::Bytes,
        /// Packet id when QoS > 0.
        pkid: Option<u16>,
    },
    /// SUBACK of one filter.
    SubAck {
        /// Packet id of the SUBSCRIBE.
        pkid: u16,
        /// Whether the filter was granted.
        granted: bool,
    },
    /// PUBACK; `reason` is 0 for MQTT 3.1.1, else the MQTT 5 reason code.
    PubAck {
        /// Packet id.
        pkid: u16,
        /// MQTT 5 reason code (0 success, 0x10 no matching subscribers, >= 0x80 failure).
        reason: u8,
    },
    /// PINGRESP.
    PingResp,
    /// DISCONNECT from the server (MQTT 5).
    Disconnect,
    /// Anything a client does not expect (PUBREC, SUBSCRIBE...): a protocol error for the caller.
    Unexpected(&'static str),
}

/// Encodes and decodes packets of one protocol version.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    /// The version spoken.
    pub version: Version,
}

fn qos4(q: iothub_sdk_nostd::QoS) -> rumqttc::QoS {
    match q {
        iothub_sdk_nostd::QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        _ => rumqttc::QoS::AtLeastOnce,
    }
}

fn qos5(q: iothub_sdk_nostd::QoS) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        iothub_sdk_nostd::QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        _ => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
    }
}

impl Codec {
    /// CONNECT with client id = username = `thing_id` (S-1.2), clean session.
    pub fn connect(
        &self,
        thing_id: &str,
        secret: &str,
        keep_alive_s: u16,
        out: &mut BytesMut,
    ) -> Result<(), CodecError> {
        match self.version {
            Version::V4 => {
                let mut c = v4::Connect::new(thing_id);
                c.keep_alive = keep_alive_s;
                c.clean_session = true;
                c.set_login(thing_id, secret);
                v4::Packet::Connect(c).write(out, usize::MAX)?;
            }
            Version::V5 => {
                let c = v5::Connect {
                    keep_alive: keep_alive_s,
                    client_id: thing_id.to_owned(),
                    clean_start: true,
                    properties: None,
                };
                let login = v5::Login::new(thing_id, secret);
                v5::Packet::Connect(c, None, Some(login)).write(out, None)?;
            }
        }
        Ok(())
    }

    /// SUBSCRIBE to one filter.
    pub fn subscribe(
        &self,
        pkid: u16,
        filter: &str,
        qos: iothub_sdk_nostd::QoS,
        out: &mut BytesMut,
    ) -> Result<(), CodecError> {
        match self.version {
            Version::V4 => {
                let mut s = v4::Subscribe::new(filter, qos4(qos));
                s.pkid = pkid;
                v4::Packet::Subscribe(s).write(out, usize::MAX)?;
            }
            Version::V5 => {
                let mut s = v5::Subscribe::new(v5::Filter::new(filter, qos5(qos)), None);
                s.pkid = pkid;
                v5::Packet::Subscribe(s).write(out, None)?;
            }
        }
        Ok(())
    }

    /// PUBLISH (not retained); `pkid` is used for QoS 1.
    pub fn publish(
        &self,
        topic: &str,
        payload: &[u8],
        qos: iothub_sdk_nostd::QoS,
        pkid: u16,
        out: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let qos1 = !matches!(qos, iothub_sdk_nostd::QoS::AtMostOnce);
        match self.version {
            Version::V4 => {
                let mut p = v4::Publish::new(topic, qos4(qos), payload);
                if qos1 {
                    p.pkid = pkid;
                }
                v4::Packet::Publish(p).write(out, usize::MAX)?;
            }
            Version::V5 => {
                let mut p = v5::Publish::new(
                    topic,
                    qos5(qos),
                    bytes::Bytes::copy_from_slice(payload),
                    None,
                );
                if qos1 {
                    p.pkid = pkid;
                }
                v5::Packet::Publish(p).write(out, None)?;
            }
        }
        Ok(())
    }

    /// PUBACK of a received QoS 1 PUBLISH.
    pub fn puback(&self, pkid: u16, out: &mut BytesMut) -> Result<(), CodecError> {
        match self.version {
            Version::V4 => {
                v4::Packet::PubAck(v4::PubAck::new(pkid)).write(out, usize::MAX)?;
            }
            Version::V5 => {
                v5::Packet::PubAck(v5::PubAck::new(pkid, None)).write(out, None)?;
            }
        }
        Ok(())
    }

    /// PINGREQ.
    pub fn ping(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        match self.version {
            Version::V4 => {
                v4::Packet::PingReq.write(out, usize::MAX)?;
            }
            Version::V5 => {
                v5::Packet::PingReq(v5::PingReq).write(out, None)?;
            }
        }
        Ok(())
    }

    /// DISCONNECT (normal).
    pub fn disconnect(&self, out: &mut BytesMut) -> Result<(), CodecError> {
        match self.version {
            Version::V4 => {
                v4::Packet::Disconnect.write(out, usize::MAX)?;
            }
            Version::V5 => {
                v5::Packet::Disconnect(v5::Disconnect::new(
                    v5::DisconnectReasonCode::NormalDisconnection,
                ))
                .write(out, None)?;
            }
        }
        Ok(())
    }

    /// The next complete packet at the front of `buf` (consumed), `Ok(None)` when more bytes are
    /// needed.
    pub fn read(&self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        match self.version {
            Version::V4 => match v4::Packet::read(buf, MAX_INCOMING) {
                Ok(p) => Ok(Some(from_v4(p))),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
            Version::V5 => match v5::Packet::read(buf, Some(MAX_INCOMING as u32)) {
                Ok(p) => Ok(Some(from_v5(p))),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }
}

fn from_v4(p: v4::Packet) -> Incoming {
    match p {
        v4::Packet::ConnAck(a) => Incoming::ConnAck {
            code: a.code as u8,
            session_present: a.session_present,
        },
        v4::Packet::Publish(p) => Incoming::Publish {
            pkid: (p.qos != rumqttc::QoS::AtMostOnce).then_some(p.pkid),
            topic: bytes::Bytes::from(p.topic.into_bytes()),
            payload: p.payload,
        },
        v4::Packet::SubAck(a) => Incoming::SubAck {
            pkid: a.pkid,
            granted: a
                .return_codes
                .iter()
                .all(|c| matches!(c, v4::SubscribeReasonCode::Success(_))),
        },
        v4::Packet::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            reason: 0,
        },
        v4::Packet::PingResp => Incoming::PingResp,
        v4::Packet::Disconnect => Incoming::Disconnect,
        v4::Packet::PubRec(_) | v4::Packet::PubRel(_) | v4::Packet::PubComp(_) => {
            Incoming::Unexpected("QoS 2 packet")
        }
        _ => Incoming::Unexpected("packet a client never receives"),
    }
}

fn from_v5(p: v5::Packet) -> Incoming {
    match p {
        v5::Packet::ConnAck(a) => Incoming::ConnAck {
            code: connack_code5(a.code),
            session_present: a.session_present,
        },
        v5::Packet::Publish(p) => Incoming::Publish {
            pkid: (p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce).then_some(p.pkid),
            topic: p.topic,
            payload: p.payload,
        },
        v5::Packet::SubAck(a) => Incoming::SubAck {
            pkid: a.pkid,
            granted: a
                .return_codes
                .iter()
                .all(|c| matches!(c, v5::SubscribeReasonCode::Success(_))),
        },
        v5::Packet::PubAck(a) => Incoming::PubAck {
            pkid: a.pkid,
            reason: puback_code5(a.reason),
        },
        v5::Packet::PingResp(_) => Incoming::PingResp,
        v5::Packet::Disconnect(_) => Incoming::Disconnect,
        v5::Packet::PubRec(_) | v5::Packet::PubRel(_) | v5::Packet::PubComp(_) => {
            Incoming::Unexpected("QoS 2 packet")
        }
        _ => Incoming::Unexpected("packet a client never receives"),
    }
}

/// MQTT 5 CONNACK reason codes (MQTT 5 §3.2.2.2), 0 for success.
fn connack_code5(c: v5::ConnectReturnCode) -> u8 {
    use v5::ConnectReturnCode as C;
    match c {
        C::Success => 0,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::ClientIdentifierNotValid => 0x85,
        C::QuotaExceeded => 0x97,
        _ => 0x80,
    }
}

/// MQTT 5 PUBACK reason codes: 0 success, 0x10 no matching subscribers, >= 0x80 failures.
fn puback_code5(r: v5::PubAckReason) -> u8 {
    use v5::PubAckReason as R;
    match r {
        R::Success => 0,
        R::NoMatchingSubscribers => 0x10,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
        R::ImplementationSpecificError => 0x83,
        _ => 0x80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip through the hub-side decoder of the same crate: what we encode is a valid
    /// packet of the right version, and what we decode from it is what we meant.
    #[test]
    fn publish_round_trips_in_both_versions() {
        for version in [Version::V4, Version::V5] {
            let codec = Codec { version };
            let mut out = BytesMut::new();
            codec
                .publish(
                    "$iothub/things/t1/ntp/req",
                    b"{\"clientSendTime\":1}",
                    iothub_sdk_nostd::QoS::AtLeastOnce,
                    7,
                    &mut out,
                )
                .expect("encode");
            match codec.read(&mut out).expect("decode") {
                Some(Incoming::Publish {
                    topic,
                    payload,
                    pkid,
                }) => {
                    assert_eq!(&topic[..], b"$iothub/things/t1/ntp/req");
                    assert_eq!(&payload[..], b"{\"clientSendTime\":1}");
                    assert_eq!(pkid, Some(7));
                }
                other => panic!("{version:?}: {other:?}"),
            }
            assert!(out.is_empty());
        }
    }

    #[test]
    fn partial_packets_wait_for_more_bytes() {
        let codec = Codec {
            version: Version::V4,
        };
        let mut full = BytesMut::new();
        codec.puback(3, &mut full).expect("encode");
        let mut half = BytesMut::from(&full[..2]);
        assert!(codec.read(&mut half).expect("no error").is_none());
        half.extend_from_slice(&full[2..]);
        // A client never receives a PUBACK for nothing, but the codec decodes it.
        assert!(matches!(
            codec.read(&mut half).expect("decode"),
            Some(Incoming::PubAck { pkid: 3, reason: 0 })
        ));
    }
}
