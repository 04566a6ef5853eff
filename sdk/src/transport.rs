//! The two rumqttc flavours (MQTT 3.1.1 and 5) behind one small interface: the driver only
//! subscribes, publishes, and reads normalized events.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;

use crate::error::ConnectError;
use crate::options::{Protocol, ThingOptions};

/// Requests the rumqttc channel holds; the driver keeps at most one more aside when it is full.
const CHANNEL: usize = 256;

/// What the driver learns from the connection.
#[derive(Debug)]
pub(crate) enum NetEvent {
    ConnAck,
    Publish {
        topic: String,
        payload: Bytes,
    },
    /// A SUBSCRIBE left with this packet id (in the order they were requested).
    Subscribed(u16),
    SubAck {
        pkid: u16,
        granted: bool,
    },
    /// The DISCONNECT asked for by a clean close has been written.
    DisconnectSent,
    Other,
}

/// Why the connection failed or ended.
#[derive(Debug)]
pub(crate) enum NetError {
    /// CONNACK refused (S-1.3).
    Refused(String),
    /// The TLS handshake failed for a reason retrying does not fix.
    #[cfg(feature = "tls")]
    Tls(rustls::Error),
    /// No CONNACK within the connect timeout.
    Timeout,
    /// A packet over the incoming size limit: `needed` bytes. rumqttc cannot skip it, so the
    /// connection ends.
    TooLarge(usize),
    /// Network or protocol error, with its cause.
    Other(ConnectError),
}

/// A message to hand to rumqttc.
#[derive(Debug, Clone)]
pub(crate) enum Out {
    Subscribe(String),
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: iothub_sdk_nostd::QoS,
    },
    Disconnect,
}

pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

pub(crate) enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

pub(crate) type PollFuture =
    Pin<Box<dyn Future<Output = (Loop, Result<NetEvent, NetError>)> + Send>>;

fn qos4(q: iothub_sdk_nostd::QoS) -> rumqttc::QoS {
    match q {
        iothub_sdk_nostd::QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        _ => rumqttc::QoS::AtLeastOnce,
    }
}

fn qos5(q: iothub_sdk_nostd::QoS) -> v5::mqttbytes::QoS {
    match q {
        iothub_sdk_nostd::QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        _ => v5::mqttbytes::QoS::AtLeastOnce,
    }
}

/// Creates the client and its event loop; nothing is connected until the loop is polled.
pub(crate) fn new(opts: &ThingOptions) -> (Client, Loop) {
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(opts.connect_timeout.as_secs().max(1));
    match opts.protocol {
        Protocol::V5 => {
            let mut o = v5::MqttOptions::new(&opts.thing_id, broker_addr(opts), opts.port);
            o.set_credentials(&opts.thing_id, &opts.secret)
                .set_keep_alive(opts.keep_alive)
                .set_clean_start(true)
                .set_max_packet_size(Some(
                    u32::try_from(opts.max_message_bytes).unwrap_or(u32::MAX),
                ))
                .set_request_channel_capacity(CHANNEL)
                .set_network_options(net);
            if let Some(transport) = transport(opts) {
                o.set_transport(transport);
            }
            let (c, l) = v5::AsyncClient::new(o, CHANNEL);
            (Client::V5(c), Loop::V5(Box::new(l)))
        }
        _ => {
            let mut o = rumqttc::MqttOptions::new(&opts.thing_id, broker_addr(opts), opts.port);
            o.set_credentials(&opts.thing_id, &opts.secret)
                .set_keep_alive(opts.keep_alive)
                .set_clean_session(true)
                .set_max_packet_size(opts.max_message_bytes, opts.max_message_bytes)
                .set_request_channel_capacity(CHANNEL);
            if let Some(transport) = transport(opts) {
                o.set_transport(transport);
            }
            let (c, mut l) = rumqttc::AsyncClient::new(o, CHANNEL);
            l.set_network_options(net);
            (Client::V4(c), Loop::V4(Box::new(l)))
        }
    }
}

/// What rumqttc connects to: the WebSocket URL when there is one (rumqttc takes host and port
/// from it), else the host.
fn broker_addr(opts: &ThingOptions) -> String {
    #[cfg(feature = "websocket")]
    if let Some(url) = &opts.websocket {
        return url.clone();
    }
    opts.host.clone()
}

/// The transport when it is not plain TCP: TLS, WebSocket, or WebSocket over TLS (the
/// combinations were checked by `ThingOptions::check`). TCP_NODELAY is set on the socket before
/// any handshake.
#[cfg_attr(
    not(any(feature = "tls", feature = "websocket")),
    allow(unused_variables, clippy::unnecessary_wraps)
)]
fn transport(opts: &ThingOptions) -> Option<rumqttc::Transport> {
    #[cfg(feature = "websocket")]
    if opts.websocket.is_some() {
        #[cfg(feature = "tls")]
        if let Some(tls) = opts.tls.clone() {
            return Some(rumqttc::Transport::wss_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        return Some(rumqttc::Transport::Ws);
    }
    #[cfg(feature = "tls")]
    if let Some(tls) = opts.tls.clone() {
        return Some(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    None
}

impl Client {
    /// Hands `out` to rumqttc without waiting; gives it back when the channel is full.
    pub(crate) fn send(&self, out: Out) -> Result<(), Out> {
        let r = match (self, &out) {
            (Client::V4(c), Out::Subscribe(f)) => c
                .try_subscribe(f.as_str(), rumqttc::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            (
                Client::V4(c),
                Out::Publish {
                    topic,
                    payload,
                    qos,
                },
            ) => c
                .try_publish(topic.as_str(), qos4(*qos), false, payload.clone())
                .map_err(|e| e.to_string()),
            (Client::V4(c), Out::Disconnect) => c.try_disconnect().map_err(|e| e.to_string()),
            (Client::V5(c), Out::Subscribe(f)) => c
                .try_subscribe(f.as_str(), v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            (
                Client::V5(c),
                Out::Publish {
                    topic,
                    payload,
                    qos,
                },
            ) => c
                .try_publish(topic.as_str(), qos5(*qos), false, payload.clone())
                .map_err(|e| e.to_string()),
            (Client::V5(c), Out::Disconnect) => c.try_disconnect().map_err(|e| e.to_string()),
        };
        match r {
            Ok(()) => Ok(()),
            Err(_) => Err(out),
        }
    }
}

/// Polls the loop once, after waiting `delay` (the reconnect backoff). The future owns the loop
/// and gives it back, so it can live across the driver's `select!` without being cancelled
/// half-way through a write.
pub(crate) fn poll(l: Loop, delay: Duration) -> PollFuture {
    Box::pin(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match l {
            Loop::V4(mut el) => {
                let r = poll4(&mut el).await;
                (Loop::V4(el), r)
            }
            Loop::V5(mut el) => {
                let r = poll5(&mut el).await;
                (Loop::V5(el), r)
            }
        }
    })
}

async fn poll4(el: &mut rumqttc::EventLoop) -> Result<NetEvent, NetError> {
    use rumqttc::{Event, Outgoing, Packet};
    match el.poll().await {
        Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(NetEvent::ConnAck),
        Ok(Event::Incoming(Packet::Publish(p))) => Ok(NetEvent::Publish {
            topic: p.topic,
            payload: p.payload,
        }),
        Ok(Event::Incoming(Packet::SubAck(s))) => Ok(NetEvent::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .iter()
                .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
        }),
        Ok(Event::Outgoing(Outgoing::Subscribe(pkid))) => Ok(NetEvent::Subscribed(pkid)),
        Ok(Event::Outgoing(Outgoing::Disconnect)) => Ok(NetEvent::DisconnectSent),
        Ok(_) => Ok(NetEvent::Other),
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            Err(NetError::Refused(format!("{code:?}")))
        }
        Err(rumqttc::ConnectionError::NetworkTimeout) => Err(NetError::Timeout),
        Err(rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(remaining),
        ))) => Err(NetError::TooLarge(packet_len(remaining))),
        Err(rumqttc::ConnectionError::Io(io)) => {
            Err(io_error(el.mqtt_options.broker_address(), io).await)
        }
        Err(e) => Err(other(&e)),
    }
}

async fn poll5(el: &mut v5::EventLoop) -> Result<NetEvent, NetError> {
    use v5::mqttbytes::v5::Packet;
    use v5::{Event, mqttbytes::v5::SubscribeReasonCode};
    match el.poll().await {
        Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(NetEvent::ConnAck),
        Ok(Event::Incoming(Packet::Publish(p))) => Ok(NetEvent::Publish {
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
        }),
        Ok(Event::Incoming(Packet::SubAck(s))) => Ok(NetEvent::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .iter()
                .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
        }),
        Ok(Event::Outgoing(rumqttc::Outgoing::Subscribe(pkid))) => Ok(NetEvent::Subscribed(pkid)),
        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => Ok(NetEvent::DisconnectSent),
        Ok(_) => Ok(NetEvent::Other),
        Err(v5::ConnectionError::ConnectionRefused(code)) => {
            Err(NetError::Refused(format!("{code:?}")))
        }
        Err(v5::ConnectionError::Timeout(_)) => Err(NetError::Timeout),
        Err(v5::ConnectionError::MqttState(v5::StateError::Deserialization(
            v5::mqttbytes::Error::PayloadSizeLimitExceeded { pkt_size, .. },
        ))) => Err(NetError::TooLarge(packet_len(pkt_size))),
        Err(v5::ConnectionError::Io(io)) => Err(io_error(el.options.broker_address(), io).await),
        // rumqttc's v5 StateError does not expose its cause as `source()`: an alert received
        // while reading CONNACK (the hub refused the client certificate) sits in here.
        #[cfg(feature = "tls")]
        Err(v5::ConnectionError::MqttState(v5::StateError::Deserialization(
            v5::mqttbytes::Error::Io(io),
        ))) => Err(other(&io)),
        Err(e) => Err(other(&e)),
    }
}

/// The whole packet's size from its remaining length (what rumqttc reports): plus the type byte
/// and the remaining length's own bytes (MQTT §2.1.4).
fn packet_len(remaining: usize) -> usize {
    let header = match remaining {
        0..=127 => 2,
        128..=16_383 => 3,
        16_384..=2_097_151 => 4,
        _ => 5,
    };
    remaining + header
}

/// A network or protocol error; with TLS, a handshake failure that retrying does not fix is
/// told apart.
fn other(e: &(dyn std::error::Error + 'static)) -> NetError {
    #[cfg(feature = "tls")]
    if let Some(tls) = crate::tls::permanent_handshake_error(e) {
        return NetError::Tls(tls);
    }
    NetError::Other(ConnectError::Protocol(e.to_string()))
}

/// An I/O error of the connection, with its cause: refused, a name that does not resolve
/// (rumqttc reports a failed lookup as a plain I/O error, so the name is looked up again to
/// tell), or anything else.
async fn io_error((host, port): (String, u16), io: std::io::Error) -> NetError {
    #[cfg(feature = "tls")]
    if let Some(tls) = crate::tls::permanent_handshake_error(&io) {
        return NetError::Tls(tls);
    }
    let addr = format!("{host}:{port}");
    let cause = match io.kind() {
        std::io::ErrorKind::ConnectionRefused => ConnectError::Refused { addr, source: io },
        std::io::ErrorKind::TimedOut => ConnectError::Io(io),
        _ if host.parse::<std::net::IpAddr>().is_err() => {
            match tokio::net::lookup_host(addr.as_str()).await {
                Err(source) => ConnectError::Dns { host, source },
                Ok(_) => ConnectError::Io(io),
            }
        }
        _ => ConnectError::Io(io),
    };
    NetError::Other(cause)
}
