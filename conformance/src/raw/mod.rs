//! A raw MQTT client (3.1.1 and 5) written from the specifications, for what rumqttc hides or
//! refuses to send: malformed SUBSCRIBE filters (`a/#/b`, `ntp#`, the empty filter) and topic
//! names with wildcards for the allow-list cases; Clean Start and Session Expiry chosen per
//! CONNECT, CONNACK properties read one by one, Topic Alias properties and DISCONNECT reason
//! codes for the S-2 session, retain and alias cases. The hub's own MQTT 5 protocol tests
//! (`hub/tests/mqtt5/`) use it too, so the wire code exists once.
//!
//! [`codec`] encodes and decodes packets; [`Raw`] moves them over one connection (TCP, or TLS
//! when the [`MqttTarget`] says so), every wait bounded by [`STEP`] or the caller's limit.

pub mod codec;

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::mqtt::Proto;
use crate::net::{Io, MqttTarget};
use crate::transcript::{self, Dir, Transcript};

pub use codec::{ConnAck, ConnectOpts, Packet, Props, Publish, Value, prop};

/// Bound on any single wait of this client.
pub const STEP: Duration = Duration::from_secs(10);

/// What the hub answered to one packet, when it was not the expected answer or the check needs
/// to tell the cases apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawReply {
    /// SUBACK with its codes.
    SubAck(Vec<u8>),
    /// PUBACK with its reason (0 for 3.1.1 or an MQTT 5 PUBACK without reason).
    PubAck(u8),
    /// The hub sent DISCONNECT with this reason code (MQTT 5).
    Disconnect(u8),
    /// The hub closed the connection without a DISCONNECT.
    Closed,
    /// Nothing within the time allowed.
    Silent,
}

impl RawReply {
    /// Whether the hub ended the connection (with or without a DISCONNECT).
    pub fn is_closed(&self) -> bool {
        matches!(self, RawReply::Closed | RawReply::Disconnect(_))
    }
}

/// One raw MQTT connection.
pub struct Raw {
    stream: Box<dyn Io>,
    proto: Proto,
    next_id: u16,
    /// The transcript of the case that opened it, and this connection's name in it.
    rec: Option<(Transcript, String)>,
}

impl Raw {
    /// Sends CONNECT and returns the connection with the CONNACK, whatever its reason code;
    /// an error when the connection (TCP, TLS handshake) fails or no CONNACK comes.
    pub async fn connect(
        to: impl Into<MqttTarget>,
        opts: &ConnectOpts<'_>,
    ) -> anyhow::Result<(Raw, ConnAck)> {
        let stream = to.into().open().await?;
        let mut raw = Raw {
            stream,
            proto: opts.proto,
            next_id: 1,
            rec: transcript::current()
                .map(|t| (t, format!("[raw {}] {}", opts.proto.tag(), opts.client_id))),
        };
        raw.send(&opts.packet()).await;
        let p = match raw.read_packet(STEP).await {
            Ok(p) => p,
            Err(r) => bail!("no CONNACK: {r:?}"),
        };
        let ack = p
            .connack()
            .with_context(|| format!("expected CONNACK, got {p:?}"))?;
        Ok((raw, ack))
    }

    /// Like [`Raw::connect`], and an error when the CONNACK refuses.
    pub async fn connect_ok(
        to: impl Into<MqttTarget>,
        opts: &ConnectOpts<'_>,
    ) -> anyhow::Result<(Raw, ConnAck)> {
        let (raw, ack) = Raw::connect(to, opts).await?;
        if ack.reason != 0 {
            bail!("CONNACK refused: {ack:?}");
        }
        Ok((raw, ack))
    }

    /// The protocol version of this connection.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Writes raw bytes; a failed write is left to the next read to notice (the peer closed).
    pub async fn send(&mut self, bytes: &[u8]) {
        if let Some((t, who)) = &self.rec {
            let what = match Packet::parse_frame(bytes, self.proto) {
                Some(p) if bytes.first() != Some(&0x10) => p.describe(),
                // A CONNECT carries the password: name it only.
                Some(_) => "CONNECT".to_owned(),
                None => format!(
                    "{} byte(s): {:02x?}",
                    bytes.len(),
                    &bytes[..bytes.len().min(32)]
                ),
            };
            t.push(who, Dir::Out, &what);
        }
        let _ = self.stream.write_all(bytes).await;
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Reads one packet; `Err(Closed)` on EOF or reset, `Err(Silent)` on timeout.
    pub async fn read_packet(&mut self, within: Duration) -> Result<Packet, RawReply> {
        let proto = self.proto;
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
                proto,
            }))
        };
        let r = match timeout(within, fut).await {
            Ok(Ok(Some(p))) => Ok(p),
            Ok(Ok(None) | Err(_)) => Err(RawReply::Closed),
            Err(_) => Err(RawReply::Silent),
        };
        if let Some((t, who)) = &self.rec {
            match &r {
                Ok(p) => t.push(who, Dir::In, &p.describe()),
                Err(RawReply::Closed) => t.push(who, Dir::Note, "connection closed by the hub"),
                Err(_) => {}
            }
        }
        r
    }

    /// Reads one packet; `None` on EOF, reset or timeout.
    pub async fn read(&mut self, within: Duration) -> Option<Packet> {
        self.read_packet(within).await.ok()
    }

    /// Reads until a packet `pick` accepts; a DISCONNECT, the end of the connection or
    /// [`STEP`] without it ends the wait with the matching [`RawReply`].
    async fn wait_for<T>(&mut self, pick: impl Fn(&Packet) -> Option<T>) -> Result<T, RawReply> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = self.read_packet(left).await?;
            if let Some(t) = pick(&p) {
                return Ok(t);
            }
            if let Some(reason) = p.disconnect_reason() {
                return Err(RawReply::Disconnect(reason));
            }
        }
    }

    /// Sends SUBSCRIBE with `filter` exactly as given (malformed ones included) and reports the
    /// answer: the SUBACK's codes, or how the hub ended the connection.
    pub async fn subscribe_raw(&mut self, filter: &str, qos: u8) -> RawReply {
        let id = self.packet_id();
        let packet = codec::subscribe_packet(self.proto, id, filter.as_bytes(), qos);
        self.send(&packet).await;
        match self.wait_for(Packet::suback_codes).await {
            Ok(codes) => RawReply::SubAck(codes),
            Err(r) => r,
        }
    }

    /// Subscribes to `filter` with maximum QoS `qos`; returns the SUBACK's one reason code.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> anyhow::Result<u8> {
        match self.subscribe_raw(filter, qos).await {
            RawReply::SubAck(codes) if codes.len() == 1 => Ok(codes[0]),
            other => bail!("SUBSCRIBE {filter}: {other:?}"),
        }
    }

    /// Sends PUBLISH on `topic` exactly as given; returns its packet id (0 at QoS 0). Does not
    /// wait for an answer.
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        props: &[(u8, u32)],
    ) -> u16 {
        let id = if qos > 0 { self.packet_id() } else { 0 };
        let packet = codec::publish_packet(
            self.proto,
            topic.as_bytes(),
            payload,
            (qos, retain, id),
            props,
        );
        self.send(&packet).await;
        id
    }

    /// Waits for the PUBACK of packet `id`; the PUBACK, or how the wait ended.
    pub async fn puback_of(&mut self, id: u16) -> Result<Packet, RawReply> {
        self.wait_for(|p| (p.puback()?.0 == id).then(|| p.clone()))
            .await
    }

    /// PUBLISH at QoS 1 and wait for its PUBACK: `PubAck(reason)`, or how the hub ended the
    /// connection, or `Silent`.
    pub async fn publish_acked(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        props: &[(u8, u32)],
    ) -> RawReply {
        let id = self.publish(topic, payload, 1, retain, props).await;
        match self.puback_of(id).await {
            Ok(p) => RawReply::PubAck(p.puback().map_or(0, |(_, reason)| reason)),
            Err(r) => r,
        }
    }

    /// Acknowledges a QoS 1 PUBLISH.
    pub async fn puback(&mut self, packet_id: u16) {
        self.send(&codec::frame(0x40, &packet_id.to_be_bytes()))
            .await;
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
            if let Some(reason) = self.read(left).await?.disconnect_reason() {
                return Some(reason);
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

    /// Sends DISCONNECT (reason 0; in MQTT 5 with an optional Session Expiry Interval) and
    /// closes.
    pub async fn disconnect(mut self, session_expiry: Option<u32>) {
        let body = match self.proto {
            Proto::V311 => Vec::new(),
            Proto::V5 => {
                let props: Vec<(u8, u32)> = session_expiry
                    .map(|s| (prop::SESSION_EXPIRY, s))
                    .into_iter()
                    .collect();
                let mut body = vec![0u8];
                body.extend_from_slice(&codec::encode_props(&props));
                body
            }
        };
        self.send(&codec::frame(0xE0, &body)).await;
        let _ = self.stream.shutdown().await;
    }
}
