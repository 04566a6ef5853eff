//! [`Error`]: everything an SDK call can fail with.

use std::time::Duration;

use iothub_sdk_nostd::ConfigError;
use iothub_spec::code::ErrorCode;

use crate::typed::StateError;

/// Why a connection attempt failed: the cause kept from the network layer, so that a wrong
/// port, a wrong host name and a hub that does not answer read differently.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing accepts connections at the address (TCP connection refused).
    #[error("connection refused by {addr}")]
    Refused {
        /// `host:port` as configured.
        addr: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The host name does not resolve.
    #[error("cannot resolve {host}")]
    Dns {
        /// The host as configured.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// No CONNACK came within the connect timeout (the address does not answer, or does not
    /// speak MQTT).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Another network error (connection reset, unreachable network, ...).
    #[error("network error")]
    Io(#[source] std::io::Error),
    /// The peer broke the MQTT protocol or closed the connection.
    #[error("mqtt: {0}")]
    Protocol(String),
}
/// Why an SDK call failed. Every wait in the SDK is bounded, so a call ends with a value or one
/// of these, never hangs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options are not valid (thing id, shadow or method names, capacities).
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// An argument is not valid (for example a user topic suffix).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The hub refused the connection in CONNACK (S-1.3): wrong secret, unknown or disabled
    /// thing. Returned by [`crate::Thing::connect`]; later refusals are retried with backoff.
    #[error("connection refused by the hub: {0}")]
    Refused(String),
    /// No connection could be made within [`crate::ThingOptions::connect_timeout`]; the
    /// [`ConnectError`] says why the last attempt failed (refused, DNS, timeout, ...).
    #[error("could not connect: {0}")]
    Connect(#[source] ConnectError),
    /// TLS could not be set up (bad PEM text, a key that does not match its certificate), or
    /// the TLS handshake of [`crate::Thing::connect`] failed for good (the hub's certificate is
    /// not trusted). Only with the `tls` feature.
    #[cfg(feature = "tls")]
    #[error("tls: {0}")]
    Tls(#[source] crate::tls::TlsError),
    /// The thing is not connected right now (it is reconnecting). Nothing was sent; retry
    /// after [`crate::Thing::wait_connected`].
    #[error("not connected")]
    NotConnected,
    /// The connection ended before the answer came. The request may or may not have been
    /// applied by the hub: retry it with the current state.
    #[error("connection lost before the answer came")]
    ConnectionLost,
    /// No answer within the request timeout; the outcome is unknown.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The hub refused a shadow request (S-3.8), for example 409 on a version conflict.
    #[error("rejected by the hub with {code}: {message}")]
    Rejected {
        /// The S-3.8 code.
        code: u16,
        /// The hub's message.
        message: String,
    },
    /// The shadow was not listed in [`crate::ThingOptions::shadows`].
    #[error("shadow {0:?} is not followed by this thing")]
    UnknownShadow(String),
    /// A shadow section or delta does not fit the application's type; the error names the
    /// keys ([`crate::SyncedState::next`], [`crate::Delta::parse`], [`crate::Document::reported_as`]).
    #[error("state: {0}")]
    State(#[from] StateError),
    /// A value could not be turned into JSON or back.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The device core refused the command: too many requests in flight, transmit queue full,
    /// payload larger than the hub accepts. Retry later (or send less).
    #[error("device core: {0}")]
    Core(iothub_sdk_nostd::Error),
    /// The OTA task is no longer the current one (a newer task replaced it, or it is finished).
    #[error("ota task {0:?} is not in progress")]
    OtaTaskGone(String),
    /// A message from the hub was larger than [`crate::ThingOptions::max_message_bytes`]
    /// (`capacity`) and was lost: `needed` bytes (the MQTT packet). Which message is not known
    /// (the packet was not read); the likeliest is a shadow document or delta, so raise the
    /// limit (see [`crate::max_document_bytes`]) or shrink the desired state.
    #[error("a message of {needed} bytes was over the {capacity}-byte limit and was lost")]
    TooLarge {
        /// Bytes the message needed.
        needed: usize,
        /// The limit.
        capacity: usize,
    },
    /// The thing's own `get` of the shadow went unanswered `attempts` times in a row (the
    /// connection ended while it waited, or no answer came in time: over MQTT 5 the hub
    /// discards a document over the announced size, D-40): the likeliest cause is a document
    /// larger than [`crate::ThingOptions::max_message_bytes`]. The SDK keeps asking, later each
    /// time.
    #[error("shadow document out of reach after {attempts} attempts (too large?)")]
    SyncLost {
        /// Attempts in a row.
        attempts: u8,
    },
    /// [`crate::Thing::close`] was called or the driver task ended.
    #[error("the thing is closed")]
    Closed,
}

impl Error {
    /// The S-3.8 code of a [`Error::Rejected`].
    pub fn rejection_code(&self) -> Option<u16> {
        match self {
            Error::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether this is a 409 version conflict (S-3.4): the version given was not current.
    pub fn is_version_conflict(&self) -> bool {
        self.rejection_code() == Some(ErrorCode::Conflict.as_u16())
    }

    /// Whether retrying the same call later may succeed: connection problems, timeouts, full
    /// queues, and the hub's 429 and 503.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::NotConnected | Error::ConnectionLost | Error::Timeout(_) | Error::Core(_) => {
                true
            }
            Error::Rejected { code, .. } => matches!(
                ErrorCode::from_u16(*code),
                Some(ErrorCode::TooManyRequests | ErrorCode::Unavailable)
            ),
            _ => false,
        }
    }
}

/// The result type of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;
