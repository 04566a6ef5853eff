//! The event-loop tasks of the test client: they drive rumqttc's 3.1.1 or 5 event loop and
//! forward what the client waits on (CONNACK, messages, acknowledgements, packet ids, the close)
//! as [`Ev`]s, with reason codes as their wire bytes.

use tokio::sync::mpsc;

use super::Msg;

pub(super) enum Ev {
    ConnAck,
    Refused(u8),
    Msg(Msg),
    PubAck(u16, u8),
    SubAck(u16, Vec<u8>),
    OutPublish(u16),
    OutSubscribe(u16),
    Closed(String),
}

pub(super) async fn drive_v4(mut eventloop: rumqttc::EventLoop, tx: mpsc::UnboundedSender<Ev>) {
    use rumqttc::{ConnectionError, Event, Outgoing, Packet, SubscribeReasonCode};
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
            Ok(Event::Incoming(Packet::Publish(p))) => Ev::Msg(Msg {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
                retain: p.retain,
                qos: p.qos as u8,
            }),
            Ok(Event::Incoming(Packet::PubAck(a))) => Ev::PubAck(a.pkid, 0),
            Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                s.pkid,
                s.return_codes
                    .iter()
                    .map(|c| match c {
                        SubscribeReasonCode::Success(q) => *q as u8,
                        SubscribeReasonCode::Failure => 0x80,
                    })
                    .collect(),
            ),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ev::OutPublish(pkid),
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => Ev::OutSubscribe(pkid),
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => {
                let _ = tx.send(Ev::Refused(code as u8));
                return;
            }
            Err(e) => {
                let _ = tx.send(Ev::Closed(e.to_string()));
                return;
            }
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}

pub(super) async fn drive_v5(mut eventloop: rumqttc::v5::EventLoop, tx: mpsc::UnboundedSender<Ev>) {
    use rumqttc::Outgoing;
    use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode as C, Packet, PubAckReason, SubscribeReasonCode as S,
    };
    use rumqttc::v5::{ConnectionError, Event};
    loop {
        let ev = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
            Ok(Event::Incoming(Packet::Publish(p))) => Ev::Msg(Msg {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
                retain: p.retain,
                qos: p.qos as u8,
            }),
            Ok(Event::Incoming(Packet::PubAck(a))) => Ev::PubAck(
                a.pkid,
                match a.reason {
                    PubAckReason::Success => 0x00,
                    PubAckReason::NoMatchingSubscribers => 0x10,
                    PubAckReason::UnspecifiedError => 0x80,
                    PubAckReason::ImplementationSpecificError => 0x83,
                    PubAckReason::NotAuthorized => 0x87,
                    PubAckReason::TopicNameInvalid => 0x90,
                    PubAckReason::PacketIdentifierInUse => 0x91,
                    PubAckReason::QuotaExceeded => 0x97,
                    PubAckReason::PayloadFormatInvalid => 0x99,
                },
            ),
            Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(
                s.pkid,
                s.return_codes
                    .iter()
                    .map(|c| match c {
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
                    })
                    .collect(),
            ),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ev::OutPublish(pkid),
            Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => Ev::OutSubscribe(pkid),
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => {
                let code = match code {
                    C::Success => 0x00,
                    C::UnspecifiedError => 0x80,
                    C::MalformedPacket => 0x81,
                    C::ProtocolError => 0x82,
                    C::ImplementationSpecificError => 0x83,
                    C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => 0x84,
                    C::ClientIdentifierNotValid | C::BadClientId => 0x85,
                    C::BadUserNamePassword => 0x86,
                    C::NotAuthorized => 0x87,
                    C::ServerUnavailable | C::ServiceUnavailable => 0x88,
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
                };
                let _ = tx.send(Ev::Refused(code));
                return;
            }
            Err(e) => {
                let _ = tx.send(Ev::Closed(e.to_string()));
                return;
            }
        };
        if tx.send(ev).is_err() {
            return;
        }
    }
}
