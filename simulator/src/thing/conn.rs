//! The connection of a virtual thing: TCP connect from its source address (and the TLS
//! handshake in a TLS run), the MQTT handshake up to the last SUBACK, and reads and writes with
//! small buffers.

use bytes::BytesMut;
use tokio::net::TcpSocket;
use tokio::time::Instant;

use super::link::Link;
use super::{
    ConnectError, Core, HANDSHAKE_TIMEOUT, KEEP_BUFFER, TCP_TIMEOUT, Thing, WRITE_TIMEOUT, dev_now,
    wait_stop,
};
use crate::fleet::Phase;
use crate::mqtt::Incoming;

impl Thing {
    /// TCP connect (TCP_NODELAY, from the thing's source address), CONNECT, CONNACK, then the
    /// core's subscriptions up to the last SUBACK.
    pub(super) async fn connect(
        &mut self,
        device: &mut Core<'_>,
        thing_id: &str,
        secret: &str,
        phase: &mut tokio::sync::watch::Receiver<Phase>,
    ) -> Result<Link, ConnectError> {
        let began = Instant::now();
        let handshake = async {
            let mut stream = self.open().await?;
            self.wbuf.clear();
            let keep_alive = self.fleet.scenario.profile.keep_alive_s;
            self.codec
                .connect(thing_id, secret, keep_alive, &mut self.wbuf)
                .map_err(|_| ConnectError::Protocol)?;
            self.write(&mut stream)
                .await
                .map_err(|_| ConnectError::Closed)?;
            match self.next_packet(&mut stream).await? {
                Incoming::ConnAck {
                    code: 0,
                    session_present,
                } => device.handle_connected(dev_now(&self.fleet), session_present),
                Incoming::ConnAck { code, .. } => return Err(ConnectError::Refused(code)),
                _ => return Err(ConnectError::Protocol),
            }
            self.subs.clear();
            self.pump(device);
            self.write(&mut stream)
                .await
                .map_err(|_| ConnectError::Closed)?;
            while !self.subs.is_empty() {
                match self.next_packet(&mut stream).await? {
                    Incoming::SubAck { pkid, granted } => {
                        let Some(pos) = self.subs.iter().position(|(p, _)| *p == pkid) else {
                            return Err(ConnectError::Protocol);
                        };
                        let (_, id) = self.subs.swap_remove(pos);
                        device.handle_suback(dev_now(&self.fleet), id, granted);
                        if !granted {
                            return Err(ConnectError::SubscribeRefused);
                        }
                    }
                    // Replies to the core's first get may overtake the last SUBACK.
                    Incoming::Publish {
                        topic,
                        payload,
                        pkid,
                    } => {
                        self.on_publish(device, &topic, &payload, pkid);
                    }
                    Incoming::PubAck { .. } | Incoming::PingResp => {}
                    _ => return Err(ConnectError::Protocol),
                }
            }
            self.pump(device);
            self.write(&mut stream)
                .await
                .map_err(|_| ConnectError::Closed)?;
            Ok(stream)
        };
        let result = tokio::select! {
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => r.unwrap_or(Err(ConnectError::Timeout)),
            _ = wait_stop(phase) => Err(ConnectError::Stopped),
        };
        if result.is_ok() {
            self.stats().connect.record(began.elapsed());
        }
        result
    }

    /// TCP connect, then the TLS handshake when the run uses TLS.
    pub(super) async fn open(&mut self) -> Result<Link, ConnectError> {
        let addr = self.fleet.mqtt;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| ConnectError::Tcp(e.kind()))?;
        if let Some(local) = self.fleet.source_address(self.index) {
            socket
                .bind(local)
                .map_err(|e| ConnectError::Tcp(e.kind()))?;
        }
        let stream = tokio::time::timeout(TCP_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| ConnectError::TcpTimeout)?
            .map_err(|e| ConnectError::Tcp(e.kind()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ConnectError::Tcp(e.kind()))?;
        let link = match &self.fleet.tls {
            None => Link::Plain(stream),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(tls_error)?;
                Link::Tls(Box::new(stream))
            }
        };
        let now = Instant::now();
        self.last_read = now;
        self.last_write = now;
        Ok(link)
    }

    /// Reads until one whole packet is decoded (handshake only).
    pub(super) async fn next_packet(
        &mut self,
        stream: &mut Link,
    ) -> Result<Incoming, ConnectError> {
        loop {
            match self.codec.read(&mut self.rbuf) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => {
                    self.stats().protocol_errors.add(e.to_string());
                    return Err(ConnectError::Protocol);
                }
            }
            match stream.read_into(&mut self.rbuf).await {
                Ok(n) if n > 0 => self.last_read = Instant::now(),
                Ok(_) | Err(_) => return Err(ConnectError::Closed),
            }
        }
    }

    /// Drops the read buffer when it holds nothing.
    pub(super) fn release_rbuf(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
    }

    /// Writes everything encoded so far.
    pub(super) async fn write(&mut self, stream: &mut Link) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        if self.wbuf.capacity() > KEEP_BUFFER {
            self.wbuf = BytesMut::new();
        }
        self.last_write = Instant::now();
        match r {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// A failed TLS handshake: rustls' reason (an untrusted certificate, a wrong name: retrying
/// does not help), or the connection closed under it (as for plain MQTT).
fn tls_error(e: std::io::Error) -> ConnectError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>())
    {
        Some(tls) => ConnectError::Tls(tls.to_string()),
        None => ConnectError::Closed,
    }
}
