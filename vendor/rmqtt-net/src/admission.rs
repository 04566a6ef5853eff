//! iothub patch (whole file): a say on each TCP connection before any MQTT byte is read.
//! See vendor/README.md.

use std::any::Any;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// iothub patch: decides, right after `accept`, whether a connection may proceed.
pub trait Admission: Send + Sync + 'static {
    /// Called for every accepted TCP connection. `None` closes the socket at once.
    fn admit(&self, remote: SocketAddr) -> Option<Ticket>;
}

/// iothub patch: what an admitted connection holds. `connection` lives as long as the
/// connection; `handshake` is dropped when a CONNACK accepting the client is sent (or with
/// the connection, whichever comes first).
pub struct Ticket {
    /// Held for the connection's whole life.
    pub connection: Box<dyn Any + Send + Sync>,
    /// Held until the client is accepted.
    pub handshake: Option<Box<dyn Any + Send + Sync>>,
}

/// iothub patch: a shareable [`Admission`] for the listener's configuration.
#[derive(Clone)]
pub struct AdmissionRef(pub Arc<dyn Admission>);

impl fmt::Debug for AdmissionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdmissionRef")
    }
}
