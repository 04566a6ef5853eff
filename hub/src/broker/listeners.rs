//! The broker's listeners: plain MQTT, and when configured MQTT over TLS, over WebSocket and
//! over secure WebSocket (D-67, D-69). All of them share one admission (the connection caps
//! count every listener's connections together) and the same limits; only the transport
//! differs. WebSocket listeners serve MQTT on the path `/mqtt` with the subprotocol `mqtt`
//! (vendor/README.md).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use rmqtt::net::{Builder, Listener};
use rustls::ServerConfig;

/// The transport of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "external/tcp",
            Transport::Tls => "external/tls",
            Transport::Ws => "external/ws",
            Transport::Wss => "external/wss",
        }
    }
}

/// Where the broker's listeners are bound.
#[derive(Debug, Clone, Copy)]
pub struct BrokerAddrs {
    /// Plain MQTT.
    pub mqtt: SocketAddr,
    /// MQTT over TLS, if served.
    pub mqtts: Option<SocketAddr>,
    /// MQTT over WebSocket (`/mqtt`), if served.
    pub ws: Option<SocketAddr>,
    /// MQTT over secure WebSocket (`/mqtt`), if served.
    pub wss: Option<SocketAddr>,
}

/// The addresses asked for; TLS ones need `tls`.
pub struct Wanted<'a> {
    pub mqtt: SocketAddr,
    pub mqtts: Option<SocketAddr>,
    pub ws: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    pub tls: Option<&'a Arc<ServerConfig>>,
}

/// Binds every listener asked for from `base` (the shared settings). Each comes with its id
/// for rmqtt (its bound port, unique per listener).
pub fn bind(
    base: &Builder,
    wanted: &Wanted<'_>,
) -> anyhow::Result<(Vec<(Listener, u16)>, BrokerAddrs)> {
    let mut bound = Vec::new();
    let mut ports = HashSet::new();
    let mut one = |addr: SocketAddr, transport: Transport| -> anyhow::Result<SocketAddr> {
        let mut builder = base.clone().name(transport.name()).laddr(addr);
        if matches!(transport, Transport::Tls | Transport::Wss) {
            let tls = wanted.tls.ok_or_else(|| {
                anyhow::anyhow!("MQTT {transport:?} listener without TLS settings")
            })?;
            // The client certificate's fingerprint goes with the CONNECT to the auth hook (D-82).
            builder = builder
                .tls_server_config(tls.clone())
                .collect_cert_info(true);
        }
        let listener = builder.bind().map_err(|e| {
            anyhow::anyhow!("cannot listen for MQTT ({transport:?}) on {addr}: {e}")
        })?;
        let local = listener
            .local_addr()
            .map_err(|e| anyhow::anyhow!("MQTT listener has no address: {e}"))?;
        let listener = match transport {
            Transport::Tcp => listener.tcp(),
            Transport::Tls => listener.tls(),
            Transport::Ws => listener.ws(),
            Transport::Wss => listener.wss(),
        }
        .map_err(|e| anyhow::anyhow!("MQTT {transport:?} listener on {local}: {e}"))?;
        // rmqtt keys a listener's settings by this id and panics on a duplicate.
        if !ports.insert(local.port()) {
            anyhow::bail!(
                "two MQTT listeners on port {}; give each its own port",
                local.port()
            );
        }
        bound.push((listener, local.port()));
        Ok(local)
    };
    let mqtt = one(wanted.mqtt, Transport::Tcp)?;
    let mqtts = wanted.mqtts.map(|a| one(a, Transport::Tls)).transpose()?;
    let ws = wanted.ws.map(|a| one(a, Transport::Ws)).transpose()?;
    let wss = wanted.wss.map(|a| one(a, Transport::Wss)).transpose()?;
    Ok((
        bound,
        BrokerAddrs {
            mqtt,
            mqtts,
            ws,
            wss,
        },
    ))
}
