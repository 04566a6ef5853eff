//! The MQTT bridge sink: each message published at QoS 1 to another broker (rumqttc, MQTT
//! 3.1.1), on `topicPrefix` + its topic, with its payload unchanged. A batch is confirmed when
//! the broker acknowledged every message of it (PUBACK) within `timeoutMs`.
//!
//! TLS (`mqtts://`) uses rustls with the ring provider, the roots of `caFile` (PEM) or, without
//! it, the system's, and a client certificate when `certFile` and `keyFile` are given. A
//! connection is kept between batches while it is young enough for the broker's keep alive; a
//! failed batch drops it, and the next attempt connects afresh (no half-sent state is reused).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::config::{RouteSpec, Sink};
use crate::store::routes::StoredMessage;

/// Keep alive announced to the broker; a connection idle for half of it is not reused.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

pub(super) struct Bridge {
    options: MqttOptions,
    prefix: String,
    timeout: Duration,
    capacity: usize,
    conn: Option<(AsyncClient, EventLoop, Instant)>,
}

fn tls(
    ca_file: Option<&str>,
    cert: Option<&str>,
    key: Option<&str>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{path}: {e}"))?;
                roots.add(cert).map_err(|e| format!("{path}: {e}"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert).map_err(|e| format!("{cert}: {e}"))?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{cert}: {e}"))?;
            let pem = std::fs::read(key).map_err(|e| format!("{key}: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("{key}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

impl Bridge {
    pub(super) fn new(spec: &RouteSpec) -> Result<Bridge, String> {
        let Sink::Mqtt {
            url,
            client_id,
            username,
            password,
            topic_prefix,
            ca_file,
            cert_file,
            key_file,
            timeout_ms,
        } = &spec.sink
        else {
            return Err("not an MQTT bridge route".into());
        };
        let url = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        let secure = url.scheme() == "mqtts";
        let host = url.host_str().ok_or("the broker URL has no host")?;
        let port = url.port().unwrap_or(if secure { 8883 } else { 1883 });
        let id = client_id
            .clone()
            .unwrap_or_else(|| format!("iothub-route-{}", spec.id));
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(KEEP_ALIVE);
        options.set_clean_session(true);
        if let Some(user) = username {
            options.set_credentials(user, password.clone().unwrap_or_default());
        }
        if secure {
            let config = tls(
                ca_file.as_deref(),
                cert_file.as_deref(),
                key_file.as_deref(),
            )?;
            options.set_transport(Transport::tls_with_config(config.into()));
        }
        Ok(Bridge {
            options,
            prefix: topic_prefix.clone(),
            timeout: Duration::from_millis(*timeout_ms),
            capacity: spec.batch_max as usize + 8,
            conn: None,
        })
    }

    pub(super) async fn deliver(&mut self, batch: &[StoredMessage]) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let result = tokio::time::timeout_at(deadline, self.send(batch)).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err("MQTT bridge: no PUBACK for the whole batch in time".into())
            }
        }
    }

    async fn send(&mut self, batch: &[StoredMessage]) -> Result<(), String> {
        let reuse = self
            .conn
            .as_ref()
            .is_some_and(|(_, _, at)| at.elapsed() < KEEP_ALIVE / 2);
        if !reuse {
            let (client, mut eventloop) = AsyncClient::new(self.options.clone(), self.capacity);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => return Err(format!("MQTT bridge: {e}")),
                }
            }
            self.conn = Some((client, eventloop, Instant::now()));
        }
        let Some((client, eventloop, at)) = self.conn.as_mut() else {
            return Err("MQTT bridge: no connection".into());
        };
        for m in batch {
            let topic = format!("{}{}", self.prefix, m.message.topic);
            client
                .try_publish(topic, QoS::AtLeastOnce, false, m.message.payload.clone())
                .map_err(|e| format!("MQTT bridge: {e}"))?;
        }
        let mut acked = 0;
        while acked < batch.len() {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(format!("MQTT bridge: {e}")),
            }
        }
        *at = Instant::now();
        Ok(())
    }
}
