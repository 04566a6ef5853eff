//! Drives the [`Device`](crate::Device) over [`minimq`] (MQTT 5, `async`, `embedded-io-async`),
//! in the embassy style: a [`Client`] the application calls and a [`Runner`] that must be
//! spawned (or joined) and owns the connection. Feature `minimq`.
//!
//! - The runner connects through a [`Transport`] (any `embedded-io-async` byte stream: an
//!   `embassy-net` `TcpSocket`, a TLS stream, a tokio `TcpStream` behind `embedded-io-adapters`),
//!   performs the MQTT handshake, keeps the connection alive (minimq's PINGREQ), moves the core's
//!   transmits to the broker and the broker's publishes to the client, fires the core's timers,
//!   and reconnects with exponential backoff and jitter when anything fails.
//! - The client handle runs application commands against the core ([`Client::command`]: report,
//!   respond, NTP, OTA progress, telemetry) and hands out events ([`Client::next_event`]).
//!
//! ## Memory
//!
//! Nothing is allocated. The caller provides:
//! - the [`State`] (holds the `Device`, one inbox slot of `INBOX` bytes and two signals); put it
//!   in a `static_cell::StaticCell` to spawn the runner as an embassy task, or on the stack when
//!   the runner and the application are joined in one future;
//! - three byte buffers ([`Buffers`], or a [`Resources`] with arrays): minimq's `rx` and `tx`
//!   and `out`, the scratch buffer one outgoing message is copied into;
//! - the `Device`'s own transmit-queue buffer (given to [`Device::new`](crate::Device::new)).
//!
//! ## Sizing rules
//!
//! The crate's README ("Sizing the buffers") has the rules for every buffer, a worked table
//! for the hub's default limits (`GET /api/v1/limits`), and what happens to a message that
//! does not fit: larger than the inbox, it becomes [`Event::TooLarge`](crate::Event::TooLarge)
//! with its size; larger than `rx`, the broker does not deliver it. [`document_size`],
//! [`rx_size`], [`inbox_size`] and [`tx_size`] compute them.
//!
//! ## Flow control
//!
//! The inbox holds one message: the runner waits until the client has taken it before it reads
//! the next one, so the application must keep calling [`Client::next_event`]. While it does not,
//! nothing is read, and minimq's keepalive is not served either: an application that blocks for
//! longer than the keepalive is disconnected (and reconnected) by the broker.
//!
//! ## First boot
//!
//! With feature `provisioning`, [`provision::provision`] runs one S-10 exchange with a claim
//! credential on a connection of its own and copies the new thing's credentials into the
//! caller's buffer.

mod client;
#[cfg(feature = "provisioning")]
pub mod provision;
mod runner;
#[cfg(feature = "embassy-net")]
mod tcp;
#[cfg(feature = "tls")]
pub mod tls;

pub use client::{Client, State};
pub use runner::{MqttConfig, Runner};
#[cfg(feature = "embassy-net")]
pub use tcp::TcpTransport;
#[cfg(feature = "tls")]
pub use tls::{
    ClientIdentity, Reconnect, TlsBuffers, TlsConfig, TlsConnectError, TlsResources, TlsSetupError,
    TlsStream, TlsTransport,
};

use crate::spec::limits::MAX_TOPIC_LEN;

/// A way to open a fresh byte stream to the broker, called by the [`Runner`] for every
/// (re)connect attempt.
///
/// `Io` may borrow the transport (an `embassy-net` `TcpSocket` is reused: abort, then connect
/// again); it is dropped before the next call. Reads must stay pending while no data is there
/// (minimq treats `TimedOut`/`Interrupted` as a broken connection) and should be cancel-safe.
#[allow(async_fn_in_trait)] // embassy style: no Send bound wanted on single-core executors
pub trait Transport {
    /// The connected stream.
    type Io<'t>: embedded_io_async::Read + embedded_io_async::Write
    where
        Self: 't;
    /// Why a connection could not be opened.
    type Error;

    /// Opens a new connection to the broker (TCP connect, TLS handshake, ...).
    async fn connect(&mut self) -> Result<Self::Io<'_>, Self::Error>;
}

/// The three byte buffers the runner needs, borrowed for its lifetime. See the module's
/// sizing rules.
#[derive(Debug)]
pub struct Buffers<'r> {
    /// minimq's inbound packet buffer (one whole PUBLISH).
    pub rx: &'r mut [u8],
    /// minimq's outbound buffer (QoS 1 packets until acked, CONNECT).
    pub tx: &'r mut [u8],
    /// Scratch for one outgoing message of the core.
    pub out: &'r mut [u8],
}

/// The three buffers as arrays, for a `StaticCell` or a `static`: `Resources<RX, TX, OUT>`.
#[derive(Debug)]
pub struct Resources<const RX: usize, const TX: usize, const OUT: usize> {
    rx: [u8; RX],
    tx: [u8; TX],
    out: [u8; OUT],
}

impl<const RX: usize, const TX: usize, const OUT: usize> Resources<RX, TX, OUT> {
    /// Zeroed buffers (a `const fn`, so it can initialise a `static`).
    pub const fn new() -> Self {
        Resources {
            rx: [0; RX],
            tx: [0; TX],
            out: [0; OUT],
        }
    }

    /// Lends the arrays as [`Buffers`].
    pub fn buffers(&mut self) -> Buffers<'_> {
        Buffers {
            rx: &mut self.rx,
            tx: &mut self.tx,
            out: &mut self.out,
        }
    }
}

impl<const RX: usize, const TX: usize, const OUT: usize> Default for Resources<RX, TX, OUT> {
    fn default() -> Self {
        Self::new()
    }
}

/// Upper bound of the shadow document the hub sends for a state whose `desired` and `reported`
/// each serialize to at most `state_bytes` bytes with at most `leaves` leaf values.
///
/// A document holds desired, reported and delta (at most desired again), and metadata with one
/// `{"timestamp":N}` (about 30 bytes with its key) per leaf of desired and of reported, plus the
/// envelope (version, timestamp, clientToken: under 160 bytes).
pub const fn document_size(state_bytes: usize, leaves: usize) -> usize {
    3 * state_bytes + 2 * leaves * 32 + 160
}

/// minimq `rx` size for documents of `document` bytes: the payload, the longest topic, and
/// 32 bytes of fixed header, packet id and properties.
pub const fn rx_size(document: usize) -> usize {
    document + MAX_TOPIC_LEN + 32
}

/// `INBOX` size for documents of `document` bytes: the payload and the longest topic.
pub const fn inbox_size(document: usize) -> usize {
    document + MAX_TOPIC_LEN
}

/// minimq `tx` size for `in_flight` unacknowledged QoS 1 messages of at most `message` payload
/// bytes: each with the longest topic and 16 bytes of header, plus 256 bytes for CONNECT (client
/// id, user name and password of at most 64 bytes each).
pub const fn tx_size(message: usize, in_flight: usize) -> usize {
    in_flight * (message + MAX_TOPIC_LEN + 16) + 256
}

/// Milliseconds on embassy's clock as the core's [`crate::Instant`].
pub(crate) fn now() -> crate::Instant {
    crate::Instant::from_millis(embassy_time::Instant::now().as_millis())
}
