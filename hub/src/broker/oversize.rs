//! MQTT 5 Maximum Packet Size on delivery (§3.1.2.11.4, D-40): a message larger than the size
//! the client announced in CONNECT is discarded, counted and logged, as if it had been sent.
//!
//! rmqtt 0.24 hands every delivery to its encoder, which refuses a packet over the client's
//! maximum (`OverMaxPacketSize`), and the session then closes the connection: one large delta
//! or shadow document disconnected the device, and again on every resync. rmqtt asks the
//! `MessageExpiryCheck` hook about every delivery before it takes a packet id slot in the
//! inflight window, and drops the message when the hook says it expired; answering that for
//! a packet too large is the discard the standard asks for, with no change to rmqtt.

use std::sync::Arc;

use async_trait::async_trait;
use rmqtt::codec::types::Publish as CodecPublish;
use rmqtt::codec::types::QoS;
use rmqtt::codec::v5::PublishProperties;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType};

use crate::metrics::Metrics;

/// Drops deliveries larger than the receiving client's MQTT 5 Maximum Packet Size.
pub(super) struct DropOversized {
    metrics: Arc<Metrics>,
}

impl DropOversized {
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        DropOversized { metrics }
    }
}

#[async_trait]
impl Handler for DropOversized {
    async fn hook(&self, param: &Parameter, acc: Option<HookResult>) -> ReturnType {
        let Parameter::MessageExpiryCheck(session, _, publish) = param else {
            return (true, acc);
        };
        let Ok(info) = session.connect_info().await else {
            return (true, acc);
        };
        let Some(max) = info.max_packet_size() else {
            // MQTT 3.1.1, or MQTT 5 without the property: no limit but the protocol's.
            return (true, acc);
        };
        // The session adds a Message Expiry Interval when the message or the listener has one,
        // and a Topic Alias when it offers the client aliases; count them exactly then, so a
        // packet that fits to the byte is never dropped.
        let extras = Extras {
            expiry: publish
                .inner
                .properties
                .as_ref()
                .is_some_and(|p| p.message_expiry_interval.is_some())
                || !session.listen_cfg().message_expiry_interval.is_zero(),
            alias: session.fitter.max_server_topic_aliases() > 0,
        };
        let size = packet_size(&publish.inner, extras);
        if fits(size, max.get()) {
            return (true, acc);
        }
        self.metrics.inc_mqtt_oversized_dropped();
        tracing::debug!(
            thing = %session.id.client_id,
            topic = %publish.inner.topic,
            size,
            max = max.get(),
            "delivery larger than the client's Maximum Packet Size discarded"
        );
        (false, Some(HookResult::MessageExpiry))
    }
}

/// Whether a packet of `size` bytes passes the encoder for a client maximum of `max`. The
/// vendored rmqtt-codec reserves the largest fixed header (5 bytes) and checks the remaining
/// length against `max - 5`, so a packet up to 4 bytes under the maximum can still be refused;
/// the same rule here keeps the encoder from ever failing (sending less than the maximum is
/// what the standard asks; D-40).
fn fits(size: usize, max: u32) -> bool {
    let max = max as usize;
    let remaining = size - 1 - varint_len_of_packet(size);
    let limit = if max > 5 { max - 5 } else { max };
    remaining <= limit
}

/// Bytes of the remaining-length field of a packet of `size` bytes in all.
fn varint_len_of_packet(size: usize) -> usize {
    (1..=4)
        .find(|&n| varint_len(size - 1 - n) == n)
        .unwrap_or(4)
}

/// Bytes of a variable byte integer (MQTT 5 §1.5.5).
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Properties the session may add to a PUBLISH's property block when it sends it.
#[derive(Debug, Clone, Copy)]
struct Extras {
    /// A Message Expiry Interval (5 bytes).
    expiry: bool,
    /// A Topic Alias (3 bytes); the topic may then be sent empty, so counting both is an upper
    /// bound that is exact on the first use of an alias.
    alias: bool,
}

/// The size of the PUBLISH the session would write for `p`, fixed header included
/// (§3.1.2.11.4 counts the whole packet). Exact unless the session sends less than `extras`
/// allows (an expiry interval rounded to 0, a topic replaced by its alias).
fn packet_size(p: &CodecPublish, extras: Extras) -> usize {
    let props = p
        .properties
        .as_ref()
        .map_or(0, |props| properties_size(props, extras));
    let packet_id = if p.qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + p.topic.len() + packet_id + varint_len(props) + props + p.payload.len();
    1 + varint_len(remaining) + remaining
}

/// Bytes of a PUBLISH property block without its length (§3.3.2.3).
fn properties_size(p: &PublishProperties, extras: Extras) -> usize {
    const EXPIRY: usize = 5;
    const ALIAS: usize = 3;
    let string = |s: usize| 1 + 2 + s;
    let mut n = 0;
    n += if extras.expiry { EXPIRY } else { 0 };
    n += if extras.alias { ALIAS } else { 0 };
    n += p.correlation_data.as_ref().map_or(0, |d| string(d.len()));
    n += p.content_type.as_ref().map_or(0, |s| string(s.len()));
    n += p.response_topic.as_ref().map_or(0, |s| string(s.len()));
    n += if p.is_utf8_payload { 2 } else { 0 };
    n += p
        .user_properties
        .iter()
        .map(|(k, v)| 1 + 2 + k.len() + 2 + v.len())
        .sum::<usize>();
    n += p
        .subscription_ids
        .iter()
        .map(|id| 1 + varint_len(id.get() as usize))
        .sum::<usize>();
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rmqtt::codec::v5::{Codec, Packet};
    use tokio_util::codec::Encoder as _;

    fn publish(
        topic: &str,
        payload: usize,
        qos: QoS,
        props: Option<PublishProperties>,
    ) -> CodecPublish {
        CodecPublish {
            dup: false,
            retain: false,
            qos,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(std::num::NonZeroU16::MIN),
            payload: Bytes::from(vec![b'x'; payload]),
            properties: props,
        }
    }

    /// The encoder's own size of the packet, fixed header included.
    fn encoded(p: &CodecPublish) -> usize {
        let mut buf = bytes::BytesMut::new();
        Codec::new(0, 0)
            .encode(Packet::Publish(Box::new(p.clone())), &mut buf)
            .expect("encodes");
        buf.len()
    }

    /// `fits` agrees with the encoder set up the way the session sets it up.
    #[test]
    fn fits_matches_the_encoder() {
        for max in [6u32, 64, 130, 131, 132, 256, 16_390, 16_391] {
            let mut codec = Codec::new(0, 0);
            codec.set_max_outbound_size(max);
            for payload in 0..(max as usize + 8) {
                let p = publish("t/x", payload, QoS::AtLeastOnce, None);
                let size = packet_size(
                    &p,
                    Extras {
                        expiry: false,
                        alias: false,
                    },
                );
                let mut buf = bytes::BytesMut::new();
                let encodes = codec.encode(Packet::Publish(Box::new(p)), &mut buf).is_ok();
                assert_eq!(fits(size, max), encodes, "max {max}, size {size}");
            }
        }
    }

    /// The size is the encoder's, across the variable-integer boundaries of the remaining
    /// length, with and without the properties the session adds on sending.
    #[test]
    fn size_is_the_encoded_size() {
        let props = PublishProperties {
            user_properties: vec![("k".into(), "value".into())],
            subscription_ids: vec![std::num::NonZeroU32::new(300).expect("non-zero")],
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
        };
        let topic = "$iothub/things/t-1/shadow/get/accepted";
        for payload in [0, 1, 100, 127, 128, 16_300, 16_384, 200_000, 2_097_200] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                for props in [
                    None,
                    Some(PublishProperties::default()),
                    Some(props.clone()),
                ] {
                    for (expiry, alias) in
                        [(false, false), (true, false), (false, true), (true, true)]
                    {
                        let extras = Extras { expiry, alias };
                        let p = publish(topic, payload, qos, props.clone());
                        let est = packet_size(&p, extras);
                        // What the session sends: the extras set on an existing property block.
                        let mut sent = p.clone();
                        if let Some(props) = sent.properties.as_mut() {
                            props.message_expiry_interval =
                                expiry.then(|| std::num::NonZeroU32::new(60).expect("non-zero"));
                            props.topic_alias =
                                alias.then(|| std::num::NonZeroU16::new(1).expect("non-zero"));
                        }
                        assert_eq!(
                            est,
                            encoded(&sent),
                            "payload {payload}, {qos:?}, expiry {expiry}, alias {alias}"
                        );
                    }
                }
            }
        }
    }
}
