//! Per-connection MQTT parameters the hub decides itself, on top of rmqtt's defaults.
//!
//! - Server Keep Alive (MQTT 5 §3.2.2.3.14): every connection needs a deadline, so an MQTT 5
//!   client asking for no keep alive (0) or for more than [`MAX_KEEP_ALIVE_SECS`] gets
//!   [`MAX_KEEP_ALIVE_SECS`], announced in CONNACK; a smaller request is kept and announced as
//!   it is. MQTT 3.1.1 cannot announce a value, so its keep alive is taken as the client sent it
//!   (a silently shortened one would disconnect a client that pings on its own schedule).
//! - The message queue beyond the inflight window: a service user's holds
//!   [`SERVICE_MQUEUE_LEN`](super::queue_full::SERVICE_MQUEUE_LEN) messages (D-84), a thing's
//!   rmqtt's default.
//! - Everything else (session expiry, message expiry, in-flight window, aliases) is rmqtt's
//!   default fitter, fed by the listener settings in `mod.rs`.

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iothub_spec::ids::is_service_user;
use rmqtt::Result;
use rmqtt::codec::types::{MQTT_LEVEL_5, Publish};
use rmqtt::fitter::{DefaultFitter, Fitter, FitterManager};
use rmqtt::types::{ConnectInfo, Disconnect, FitterType, Id, ListenerConfig};

/// Longest keep alive an MQTT 5 client gets (AWS IoT's maximum too): a dead connection is
/// noticed within 1.5 times this.
pub const MAX_KEEP_ALIVE_SECS: u16 = 1200;

/// Creates a [`HubFitter`] for each connection.
pub struct HubFitterManager;

impl FitterManager for HubFitterManager {
    fn create(&self, conn_info: Arc<ConnectInfo>, id: Id, cfg: ListenerConfig) -> FitterType {
        let mqtt5 = conn_info.proto_ver() == MQTT_LEVEL_5;
        let service = is_service_user(id.username_ref());
        Arc::new(HubFitter {
            inner: DefaultFitter::new(conn_info, id, cfg),
            mqtt5,
            service,
        })
    }
}

/// rmqtt's default fitter with the hub's Server Keep Alive rule.
struct HubFitter {
    inner: DefaultFitter,
    mqtt5: bool,
    /// A service user: a back end taking a fleet's messages gets a long queue (D-84).
    service: bool,
}

/// The keep alive the hub grants an MQTT 5 client that asked for `requested` seconds.
pub fn server_keep_alive(requested: u16) -> u16 {
    if requested == 0 {
        MAX_KEEP_ALIVE_SECS
    } else {
        requested.min(MAX_KEEP_ALIVE_SECS)
    }
}

#[async_trait]
impl Fitter for HubFitter {
    /// `keep_alive` comes in as the client's value and leaves as the one CONNACK announces.
    fn keep_alive(&self, keep_alive: &mut u16) -> Result<u16> {
        if self.mqtt5 {
            *keep_alive = server_keep_alive(*keep_alive);
        }
        self.inner.keep_alive(keep_alive)
    }

    fn max_mqueue_len(&self) -> usize {
        if self.service {
            super::queue_full::SERVICE_MQUEUE_LEN.max(self.inner.max_mqueue_len())
        } else {
            self.inner.max_mqueue_len()
        }
    }

    fn mqueue_rate_limit(&self) -> (NonZeroU32, Duration) {
        self.inner.mqueue_rate_limit()
    }

    fn max_inflight(&self) -> NonZeroU16 {
        self.inner.max_inflight()
    }

    fn session_expiry_interval(&self, d: Option<&Disconnect>) -> Duration {
        self.inner.session_expiry_interval(d)
    }

    fn message_expiry_interval(&self, publish: &Publish) -> Duration {
        self.inner.message_expiry_interval(publish)
    }

    fn max_client_topic_aliases(&self) -> u16 {
        self.inner.max_client_topic_aliases()
    }

    fn max_server_topic_aliases(&self) -> u16 {
        self.inner.max_server_topic_aliases()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_keep_alive_caps_and_replaces_zero() {
        assert_eq!(server_keep_alive(0), MAX_KEEP_ALIVE_SECS);
        assert_eq!(server_keep_alive(30), 30);
        assert_eq!(server_keep_alive(MAX_KEEP_ALIVE_SECS), MAX_KEEP_ALIVE_SECS);
        assert_eq!(server_keep_alive(u16::MAX), MAX_KEEP_ALIVE_SECS);
    }
}
