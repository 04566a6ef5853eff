//! A few raw MQTT packets written by hand, for what rumqttc refuses to send: malformed
//! SUBSCRIBE filters (`a/#/b`, `ntp#`, the empty filter) and topic names with wildcards.
//! The allow-list cases need to see what the hub does with them. The S-2 session, retain and
//! topic alias cases use the MQTT 5 helpers at the end (Clean Start and Session Expiry chosen
//! per CONNECT, Topic Alias properties, DISCONNECT reason codes).

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::mqtt::{Proto, STEP};

/// What the hub answered to one raw packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawReply {
    /// SUBACK with its codes.
    SubAck(Vec<u8>),
    /// PUBACK with its reason (0 for 3.1.1 or an MQTT 5 PUBACK without reason).
    PubAck(u8),
    /// The hub closed the connection (or sent DISCONNECT).
    Closed,
    /// Nothing within the timeout.
    Silent,
}

/// A raw connection after a successful CONNECT.
pub struct RawConn {
    stream: TcpStream,
    proto: Proto,
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

impl RawConn {
    /// Connects and checks CONNACK success.
    pub async fn connect(
        host: &str,
        port: u16,
        proto: Proto,
        id: &str,
        password: &str,
    ) -> anyhow::Result<RawConn> {
        let stream = timeout(STEP, TcpStream::connect((host, port)))
            .await
            .context("raw connect timed out")??;
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.push(if proto == Proto::V5 { 5 } else { 4 });
        body.push(0xC2);
        body.extend_from_slice(&30u16.to_be_bytes());
        if proto == Proto::V5 {
            body.push(0);
        }
        put_str(&mut body, id.as_bytes());
        put_str(&mut body, id.as_bytes());
        put_str(&mut body, password.as_bytes());
        let mut c = RawConn { stream, proto };
        c.stream.write_all(&packet(0x10, &body)).await?;
        match c.read_packet(STEP).await? {
            Some((0x20, b)) if b.len() >= 2 && b[1] == 0 => Ok(c),
            Some((0x20, b)) => bail!("raw CONNACK refused: {b:02x?}"),
            other => bail!("raw CONNECT: unexpected answer {other:?}"),
        }
    }

    /// Reads one packet: `Ok(None)` on EOF, `Err` on timeout or I/O error.
    async fn read_packet(&mut self, within: Duration) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
        let fut = async {
            let mut first = [0u8; 1];
            if self.stream.read(&mut first).await? == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            let (mut len, mut mult) = (0usize, 1usize);
            loop {
                let mut b = [0u8; 1];
                self.stream.read_exact(&mut b).await?;
                len += usize::from(b[0] & 0x7F) * mult;
                mult *= 128;
                if b[0] & 0x80 == 0 || mult > 128 * 128 * 128 {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await?;
            Ok(Some((first[0] & 0xF0, body)))
        };
        match timeout(within, fut).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(None),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("timeout"),
        }
    }

    async fn answer(&mut self, want: u8) -> RawReply {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_packet(left).await {
                Ok(None) => return RawReply::Closed,
                Ok(Some((0xE0, _))) => return RawReply::Closed,
                Ok(Some((t, b))) if t == want => {
                    return match (t, self.proto) {
                        (0x90, Proto::V311) => RawReply::SubAck(b.get(2..).unwrap_or(&[]).to_vec()),
                        (0x90, Proto::V5) => {
                            // pkid, then properties (length is a varint, short here).
                            let plen = usize::from(*b.get(2).unwrap_or(&0));
                            RawReply::SubAck(b.get(3 + plen..).unwrap_or(&[]).to_vec())
                        }
                        _ => RawReply::PubAck(*b.get(2).unwrap_or(&0)),
                    };
                }
                Ok(Some(_)) => continue,
                Err(e) if e.to_string() == "timeout" => return RawReply::Silent,
                Err(_) => return RawReply::Closed,
            }
        }
    }

    /// Sends SUBSCRIBE (QoS 1) with `filter` exactly as given and reports the answer.
    pub async fn subscribe(&mut self, filter: &[u8]) -> anyhow::Result<RawReply> {
        let mut body = 1u16.to_be_bytes().to_vec();
        if self.proto == Proto::V5 {
            body.push(0);
        }
        put_str(&mut body, filter);
        body.push(1);
        if self.stream.write_all(&packet(0x82, &body)).await.is_err() {
            return Ok(RawReply::Closed);
        }
        Ok(self.answer(0x90).await)
    }

    /// Sends PUBLISH at QoS 1 on `topic` exactly as given and reports the answer.
    pub async fn publish(&mut self, topic: &[u8], payload: &[u8]) -> anyhow::Result<RawReply> {
        let mut body = Vec::new();
        put_str(&mut body, topic);
        body.extend_from_slice(&2u16.to_be_bytes());
        if self.proto == Proto::V5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        if self.stream.write_all(&packet(0x32, &body)).await.is_err() {
            return Ok(RawReply::Closed);
        }
        Ok(self.answer(0x40).await)
    }

    /// MQTT 5 CONNECT with Clean Start and a Session Expiry Interval (MQTT 5 §3.1.2.11.2);
    /// returns the connection and CONNACK's Session Present, or an error if refused.
    pub async fn connect_v5_session(
        host: &str,
        port: u16,
        id: &str,
        password: &str,
        clean_start: bool,
        session_expiry: u32,
    ) -> anyhow::Result<(RawConn, bool)> {
        let stream = timeout(STEP, TcpStream::connect((host, port)))
            .await
            .context("raw connect timed out")??;
        let mut body = Vec::new();
        put_str(&mut body, b"MQTT");
        body.push(5);
        body.push(0xC0 | if clean_start { 0x02 } else { 0 });
        body.extend_from_slice(&30u16.to_be_bytes());
        // Properties: Session Expiry Interval (0x11, four bytes).
        body.push(5);
        body.push(0x11);
        body.extend_from_slice(&session_expiry.to_be_bytes());
        put_str(&mut body, id.as_bytes());
        put_str(&mut body, id.as_bytes());
        put_str(&mut body, password.as_bytes());
        let mut c = RawConn {
            stream,
            proto: Proto::V5,
        };
        c.stream.write_all(&packet(0x10, &body)).await?;
        match c.read_packet(STEP).await? {
            Some((0x20, b)) if b.len() >= 2 && b[1] == 0 => Ok((c, b[0] & 1 == 1)),
            Some((0x20, b)) => bail!("raw CONNACK refused: {b:02x?}"),
            other => bail!("raw CONNECT: unexpected answer {other:?}"),
        }
    }

    /// MQTT 5 PUBLISH at QoS 1 with a Topic Alias property (MQTT 5 §3.3.2.3.4); returns the
    /// DISCONNECT reason code the hub answers with, `Ok(None)` when it answers anything else
    /// (a PUBACK, silence, a close without DISCONNECT).
    pub async fn publish_with_alias(
        &mut self,
        topic: &[u8],
        alias: u16,
    ) -> anyhow::Result<Option<u8>> {
        let mut body = Vec::new();
        put_str(&mut body, topic);
        body.extend_from_slice(&3u16.to_be_bytes());
        body.push(3);
        body.push(0x23);
        body.extend_from_slice(&alias.to_be_bytes());
        body.extend_from_slice(b"{}");
        if self.stream.write_all(&packet(0x32, &body)).await.is_err() {
            return Ok(None);
        }
        loop {
            match self.read_packet(STEP).await {
                Ok(Some((0xE0, b))) => return Ok(Some(b.first().copied().unwrap_or(0))),
                Ok(Some((0x40, _))) | Ok(None) | Err(_) => return Ok(None),
                Ok(Some(_)) => continue,
            }
        }
    }

    /// PUBLISH at QoS 1 with the RETAIN flag; returns the answer like [`RawConn::publish`].
    pub async fn publish_retained(
        &mut self,
        topic: &[u8],
        payload: &[u8],
    ) -> anyhow::Result<RawReply> {
        let mut body = Vec::new();
        put_str(&mut body, topic);
        body.extend_from_slice(&4u16.to_be_bytes());
        if self.proto == Proto::V5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        if self.stream.write_all(&packet(0x33, &body)).await.is_err() {
            return Ok(RawReply::Closed);
        }
        Ok(self.answer(0x40).await)
    }

    /// Waits for a PUBLISH on `topic` (acknowledging QoS 1 ones); returns its RETAIN flag and
    /// payload, `None` if none comes within `within`.
    pub async fn recv_publish(&mut self, topic: &str, within: Duration) -> Option<(bool, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (first, body) = self.read_packet_raw(left).await?;
            if first & 0xF0 != 0x30 {
                continue;
            }
            let qos = (first >> 1) & 3;
            let tlen = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
            let name = body.get(2..2 + tlen)?;
            let mut at = 2 + tlen;
            if qos > 0 {
                let pid = body.get(at..at + 2)?.to_vec();
                at += 2;
                let _ = self.stream.write_all(&packet(0x40, &pid)).await;
            }
            if self.proto == Proto::V5 {
                // Property length: a varint, short here (no properties this case relies on).
                let plen = usize::from(*body.get(at)? & 0x7F);
                at += 1 + plen;
            }
            if name == topic.as_bytes() {
                return Some((first & 1 == 1, body.get(at..)?.to_vec()));
            }
        }
    }

    /// Like `read_packet`, keeping the whole first byte (flags included); `None` on EOF,
    /// error or timeout.
    async fn read_packet_raw(&mut self, within: Duration) -> Option<(u8, Vec<u8>)> {
        let fut = async {
            let mut first = [0u8; 1];
            if self.stream.read(&mut first).await? == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            let (mut len, mut mult) = (0usize, 1usize);
            loop {
                let mut b = [0u8; 1];
                self.stream.read_exact(&mut b).await?;
                len += usize::from(b[0] & 0x7F) * mult;
                mult *= 128;
                if b[0] & 0x80 == 0 || mult > 128 * 128 * 128 {
                    break;
                }
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await?;
            Ok(Some((first[0], body)))
        };
        timeout(within, fut).await.ok()?.ok()?
    }

    /// Sends DISCONNECT (reason 0, no properties) and closes.
    pub async fn disconnect(mut self) {
        let body: &[u8] = if self.proto == Proto::V5 {
            &[0, 0]
        } else {
            &[]
        };
        let _ = self.stream.write_all(&packet(0xE0, body)).await;
        let _ = self.stream.shutdown().await;
    }
}
