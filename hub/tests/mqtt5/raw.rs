//! The conformance suite's raw MQTT client (`iothub_conformance::raw`, written from the MQTT 5
//! specification), with the one thing a test adds: what the suite reports as an error, a test
//! turns into a panic with the reason, so the tests below read as straight-line exchanges.

use std::net::SocketAddr;
use std::time::Duration;

use iothub_conformance::raw as lib;

pub use iothub_conformance::raw::{ConnAck, ConnectOpts, Packet, Publish, prop};

/// One raw MQTT 5 connection (see the module docs).
pub struct Raw(lib::Raw);

impl Raw {
    /// Sends CONNECT and returns the connection with the CONNACK, whatever its reason code.
    pub async fn connect(addr: SocketAddr, opts: &ConnectOpts<'_>) -> (Raw, ConnAck) {
        let (raw, ack) = lib::Raw::connect(addr, opts)
            .await
            .unwrap_or_else(|e| panic!("CONNECT {}: {e:#}", opts.client_id));
        (Raw(raw), ack)
    }

    /// Connects and asserts CONNACK success.
    pub async fn connect_ok(addr: SocketAddr, opts: &ConnectOpts<'_>) -> (Raw, ConnAck) {
        let (raw, ack) = Raw::connect(addr, opts).await;
        assert_eq!(ack.reason, 0, "CONNACK refused: {ack:?}");
        (raw, ack)
    }

    /// Reads one packet; `None` on EOF, reset or timeout.
    pub async fn read(&mut self, within: Duration) -> Option<Packet> {
        self.0.read(within).await
    }

    /// Subscribes to `filter` with maximum QoS `qos`; returns the SUBACK reason code.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) -> u8 {
        self.0
            .subscribe(filter, qos)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
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
        self.0.publish(topic, payload, qos, retain, props).await
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
        let id = self.0.publish(topic, payload, 1, retain, props).await;
        match self.0.puback_of(id).await {
            Ok(p) => (p.puback().map_or(0, |(_, reason)| reason), p.body),
            Err(r) => panic!("no PUBACK for {topic}: {r:?}"),
        }
    }

    /// Acknowledges a QoS 1 PUBLISH.
    pub async fn puback(&mut self, packet_id: u16) {
        self.0.puback(packet_id).await;
    }

    /// Waits for a PUBLISH on `topic`, acknowledging QoS 1 ones; `None` if none comes in time.
    pub async fn expect_publish(&mut self, topic: &str, within: Duration) -> Option<Publish> {
        self.0.expect_publish(topic, within).await
    }

    /// The DISCONNECT reason code the server sent before closing, `None` without one.
    pub async fn disconnect_reason(&mut self, within: Duration) -> Option<u8> {
        self.0.disconnect_reason(within).await
    }

    /// Whether the server closed the connection within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        self.0.closed_within(within).await
    }

    /// Sends DISCONNECT 0x00 with an optional Session Expiry Interval and closes.
    pub async fn disconnect(self, session_expiry: Option<u32>) {
        self.0.disconnect(session_expiry).await;
    }
}
