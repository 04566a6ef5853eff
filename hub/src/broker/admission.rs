//! Which MQTT connections the listener takes, decided right after `accept`, before a byte is
//! read (through the `iothub patch` admission hook of `vendor/rmqtt-net`).
//!
//! A connection needs two slots: one of `max_connections` for its whole life, and one of the
//! unauthenticated slots (in all, and per source address) until its CONNACK accepts it. A
//! refused socket is closed at once, so an idle or slow client can hold at most its
//! address's share of the unauthenticated slots, each for at most the handshake timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use rmqtt::net::{Admission, Ticket};

use crate::guard::limiter::ConnLimiter;
use crate::guard::refusals::RefusalLog;

/// The MQTT listener's admission: connection caps and the refusal log.
pub(crate) struct MqttAdmission {
    connections: ConnLimiter,
    unauthenticated: ConnLimiter,
    refusals: Arc<RefusalLog>,
}

impl MqttAdmission {
    pub(crate) fn new(
        max_connections: usize,
        max_pending: usize,
        max_pending_per_addr: usize,
        refusals: Arc<RefusalLog>,
    ) -> Self {
        MqttAdmission {
            connections: ConnLimiter::new(max_connections, None),
            unauthenticated: ConnLimiter::new(max_pending, Some(max_pending_per_addr)),
            refusals,
        }
    }
}

impl MqttAdmission {
    /// The unauthenticated-connection slots, shared with the hooks that authenticate.
    pub(crate) fn unauthenticated(&self) -> ConnLimiter {
        self.unauthenticated.clone()
    }
}

impl Admission for MqttAdmission {
    fn admit(&self, remote: SocketAddr) -> Option<Ticket> {
        let ip = remote.ip();
        let connection = match self.connections.try_acquire(ip) {
            Ok(permit) => permit,
            Err(e) => {
                self.refusals.record(Some(ip), "connection cap");
                tracing::trace!(%remote, error = %e, "MQTT connection refused at accept");
                return None;
            }
        };
        let handshake = match self.unauthenticated.try_acquire(ip) {
            Ok(permit) => permit,
            Err(e) => {
                self.refusals.record(Some(ip), e.label());
                tracing::trace!(%remote, error = %e, "MQTT connection refused at accept");
                return None;
            }
        };
        Some(Ticket {
            connection: Box::new(connection),
            handshake: Some(Box::new(handshake)),
        })
    }
}
