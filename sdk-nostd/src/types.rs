//! The small value types of the device's API: ids, configuration, transmits, events, errors.

use core::fmt;

use iothub_spec::code::OtaErrorCode;
use iothub_spec::limits::Limits;
use iothub_spec::payload::OtaTask;
use iothub_spec::topic::TopicError;
use serde::Deserialize;

use crate::json::JsonError;
use crate::time::Instant;

/// Identifies one request the application made (report, update, get, NTP); every event that
/// answers it carries the same id. Ids are unique for the lifetime of a [`crate::Device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub(crate) u32);

impl RequestId {
    /// The number behind the id (also the tail of the request's clientToken).
    pub const fn as_u32(self) -> u32 {
        self.0
    }
}

/// A shadow of this thing: the index of its name in [`Config::shadows`].
///
/// Get one with [`crate::Device::shadow_id`]; `ShadowId::FIRST` is the first configured shadow
/// (usually `default`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShadowId(pub(crate) u8);

impl ShadowId {
    /// The first shadow of [`Config::shadows`].
    pub const FIRST: ShadowId = ShadowId(0);

    /// The index into [`Config::shadows`].
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// One of the subscriptions the device asks for (an index into its filter list); handed out in
/// [`Transmit::Subscribe`] and given back in [`crate::Device::handle_suback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(pub(crate) u8);

impl SubscriptionId {
    /// The index in the order the device subscribes.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// MQTT quality of service of a transmit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QoS {
    /// QoS 0: fire and forget (telemetry, when the application asks for it).
    AtMostOnce,
    /// QoS 1: every subscription, request and reply of the device.
    AtLeastOnce,
}

/// Something the driver must send to the broker, written into the buffer given to
/// [`crate::Device::poll_transmit`] and borrowing from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transmit<'b> {
    /// SUBSCRIBE to `filter`; report the SUBACK with [`crate::Device::handle_suback`] (optional).
    Subscribe {
        /// Which of the device's subscriptions this is.
        id: SubscriptionId,
        /// The topic filter.
        filter: &'b str,
        /// The QoS to ask for.
        qos: QoS,
    },
    /// PUBLISH `payload` on `topic`, not retained.
    Publish {
        /// The topic name.
        topic: &'b str,
        /// The JSON payload.
        payload: &'b [u8],
        /// The QoS to publish with.
        qos: QoS,
    },
}

/// A raw JSON value borrowed from a received payload, with helpers to deserialize it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawJson<'p>(pub(crate) &'p str);

impl<'p> RawJson<'p> {
    /// The JSON text.
    pub const fn as_str(&self) -> &'p str {
        self.0
    }

    /// The JSON text as bytes.
    pub const fn as_bytes(&self) -> &'p [u8] {
        self.0.as_bytes()
    }

    /// Deserializes the value into `T` with `serde-json-core`, borrowing strings from the payload.
    ///
    /// Strings with JSON escapes are handed over still escaped (use [`RawJson::parse_escaped`]
    /// when that matters). Unknown keys are ignored, so a typed state struct lists only the keys
    /// the device understands; model every key as `Option<T>` with `#[serde(default)]` (a delta
    /// holds only the keys that differ).
    pub fn parse<T: Deserialize<'p>>(&self) -> Result<T, serde_json_core::de::Error> {
        serde_json_core::from_str(self.0).map(|(v, _)| v)
    }

    /// Like [`RawJson::parse`], unescaping strings into `scratch` (which must hold the longest
    /// escaped string).
    pub fn parse_escaped<T: Deserialize<'p>>(
        &self,
        scratch: &mut [u8],
    ) -> Result<T, serde_json_core::de::Error> {
        serde_json_core::from_slice_escaped(self.as_bytes(), scratch).map(|(v, _)| v)
    }
}

/// A best-of-N NTP result (S-6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NtpSample {
    /// The hub's time (ms since the Unix epoch) at `local`, by S-6.2's formula.
    pub server_time_ms: u64,
    /// The network round trip of this sample, ms; the smallest of the samples taken.
    pub round_trip_ms: u64,
    /// The device's clock when the answer arrived.
    pub local: Instant,
}

impl NtpSample {
    /// The Unix time in ms at `now` (a later reading of the same monotonic clock).
    pub const fn unix_time_ms(&self, now: Instant) -> u64 {
        self.server_time_ms
            .saturating_add(now.millis_since(self.local))
    }
}

/// A delta for one shadow (S-3.6): the full current difference between desired and reported.
///
/// Delivered only when its version is newer than the last one applied for the shadow, so an
/// application that applies every delta it is given applies them in version order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaEvent<'p> {
    /// The shadow.
    pub shadow: ShadowId,
    /// The shadow version the delta belongs to.
    pub version: u64,
    /// The raw `state` object: keys of desired whose value differs from reported.
    pub state: RawJson<'p>,
}

/// A shadow document (S-3.2), answering the device's automatic `get` after connecting or an
/// application [`crate::Device::get_shadow`].
///
/// Never older than the last version applied (a stale answer to an application get is reported
/// as [`Event::Accepted`] instead). A shadow that does not exist (404, S-3.2) comes as version 0
/// with every section `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowEvent<'p> {
    /// The shadow.
    pub shadow: ShadowId,
    /// The document's version (0 for a shadow that does not exist).
    pub version: u64,
    /// The application's request, `None` for the device's own get.
    pub request: Option<RequestId>,
    /// `state.desired`, when present.
    pub desired: Option<RawJson<'p>>,
    /// `state.reported`, when present.
    pub reported: Option<RawJson<'p>>,
    /// `state.delta`, when present: what the device should apply.
    pub delta: Option<RawJson<'p>>,
}

/// A direct-method call (S-5.1) for a method listed in [`Config::methods`] (or any method with
/// [`Config::all_methods`]).
///
/// Answer it with `Device::respond` (feature `methods`) using `method` and `client_token`. Calls of any
/// other method are answered 404 by the device itself (S-5.2) and never reach the application.
/// MQTT delivers at least once: the same call may come twice; the hub keeps the first answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodCall<'p> {
    /// The method name, from the topic.
    pub method: &'p str,
    /// The call's clientToken, to echo.
    pub client_token: &'p str,
    /// The call's `data` (`null` when it had none).
    pub data: RawJson<'p>,
}

/// A received message that did not fit the driver's buffers (the event
/// [`Event::TooLarge`]): what it was, how many bytes it needed and how many there were.
///
/// `needed` and `capacity` are in the unit of the buffer that was too small; for the minimq
/// adapter that is its inbox (topic plus payload, the `INBOX` of `minimq::State`). The message
/// itself is lost; see [`TooLargeKind`] for what the device does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TooLarge {
    /// What the message was, from its topic.
    pub kind: TooLargeKind,
    /// Bytes the message needed.
    pub needed: usize,
    /// Bytes the buffer had.
    pub capacity: usize,
}

/// What a message too large for the driver's buffers was, and what the device did about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TooLargeKind {
    /// A delta of `shadow`. The device resyncs: it asks for the whole document with its own
    /// `get` (unless one is already under way), which comes as [`Event::Shadow`] when it fits,
    /// or as a second `TooLarge` of kind [`TooLargeKind::Document`] when it does not. A later
    /// delta that fits is applied as usual (a delta holds every key that differs).
    Delta {
        /// The shadow.
        shadow: ShadowId,
    },
    /// A shadow document (the answer to a get) of `shadow`. It answers `request`, the
    /// application's oldest get of that shadow in flight, or the device's own get (`None`),
    /// which is not retried: the document will not fit until desired state shrinks or the
    /// buffers grow. The application should say so (report it, log it): this is the case
    /// where only larger buffers help.
    Document {
        /// The shadow.
        shadow: ShadowId,
        /// The application's get it answers, `None` for the device's own.
        request: Option<RequestId>,
    },
    /// The hub's answer to an update of `shadow` (`update/accepted` echoes the whole state
    /// written, so a large report has a large answer). It answers `request`, the oldest update
    /// of that shadow in flight, if any: `accepted` says which topic it came on, so the outcome
    /// is known even though the new version is not.
    UpdateReply {
        /// The shadow.
        shadow: ShadowId,
        /// The update it answers, if one was in flight.
        request: Option<RequestId>,
        /// `true` on `update/accepted`, `false` on `update/rejected`.
        accepted: bool,
    },
    /// A direct-method call: it cannot be answered (its clientToken is in the payload), so the
    /// caller gets the hub's timeout (S-5).
    MethodCall,
    /// An OTA task: it cannot be answered (its ids are in the payload).
    OtaTask,
    /// Anything else, including a message whose topic did not fit either.
    Other,
}

impl TooLargeKind {
    /// A short lowercase name of the kind (`delta`, `document`, `update-reply`, `method-call`,
    /// `ota-task`, `other`), for logs and reports.
    pub const fn as_str(&self) -> &'static str {
        match self {
            TooLargeKind::Delta { .. } => "delta",
            TooLargeKind::Document { .. } => "document",
            TooLargeKind::UpdateReply { .. } => "update-reply",
            TooLargeKind::MethodCall => "method-call",
            TooLargeKind::OtaTask => "ota-task",
            TooLargeKind::Other => "other",
        }
    }
}

/// What the device tells the application.
///
/// Events produced by a received message borrow from the topic and payload given to
/// [`crate::Device::handle_publish`] and are returned by it; events produced by time or by the
/// connection (timeouts, NTP giving up, failed subscriptions) come from
/// [`crate::Device::poll_event`] and borrow nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'p> {
    /// A newer delta to apply.
    Delta(DeltaEvent<'p>),
    /// A shadow document at least as new as anything applied.
    Shadow(ShadowEvent<'p>),
    /// A direct-method call to answer.
    MethodCall(MethodCall<'p>),
    /// A new OTA task (S-7.1); report progress with `Device::report_ota` (feature `ota`).
    /// Strings are borrowed from the payload, escapes left as they are.
    OtaTask(OtaTask<'p>),
    /// An NTP exchange finished with at least one answer (the best sample kept).
    Ntp {
        /// The request.
        request: RequestId,
        /// The sample with the smallest round trip.
        sample: NtpSample,
    },
    /// The hub accepted an update (the new version) or answered a get with a document older than
    /// what the device already applied (that document's version).
    Accepted {
        /// The request.
        request: RequestId,
        /// Its shadow.
        shadow: ShadowId,
        /// The shadow version.
        version: u64,
    },
    /// The hub refused a request (S-3.8). 429 and 503 mean "retry later"; 409 means the version
    /// given was not current.
    Rejected {
        /// The request.
        request: RequestId,
        /// Its shadow.
        shadow: ShadowId,
        /// The error code.
        code: u16,
    },
    /// No answer came in time, or the connection the request was (to be) sent on ended. Its
    /// outcome is unknown: retry later, with the application's current state.
    TimedOut {
        /// The request.
        request: RequestId,
    },
    /// The broker refused one of the device's subscriptions (SUBACK failure).
    SubscribeFailed {
        /// Which subscription.
        subscription: SubscriptionId,
    },
    /// The connection ended `connections` times in a row (first at
    /// [`crate::SYNC_LOST_AFTER`]) while the device's own `get` of `shadow` waited for
    /// its document. The likeliest cause is a document larger than the MQTT client's receive
    /// buffer: the client announces that size (MQTT 5 Maximum Packet Size) and the broker
    /// under the hub closes the connection rather than send more. The size is not known on
    /// the device. The device keeps asking, later each time (so the connection stays up in
    /// between); a smaller desired state, or larger buffers, end it. Reported once per streak.
    SyncLost {
        /// The shadow.
        shadow: ShadowId,
        /// Connections lost in a row.
        connections: u8,
    },
    /// A received message did not fit the driver's buffers and was lost; reported by the
    /// driver through [`crate::Device::handle_too_large`], never a silent drop.
    TooLarge(TooLarge),
}

/// How the device reports on its OTA task (S-7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OtaReport<'m> {
    /// Downloading or installing; `progress` in percent (capped at 100).
    Ongoing {
        /// Percent done.
        progress: u8,
    },
    /// Installed.
    Done,
    /// Failed with an S-7.2 code and an optional reason.
    Failed {
        /// Why.
        code: OtaErrorCode,
        /// A short human-readable reason.
        message: Option<&'m str>,
    },
    /// The device gave up on the task.
    Canceled,
}

/// Device settings; build with [`Config::new`] and adjust the public fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config<'a> {
    /// The thing id (S-1.1); also the MQTT client id and username.
    pub thing_id: &'a str,
    /// The shadows the device follows, `default` for the classic one; at most `SHADOWS`.
    pub shadows: &'a [&'a str],
    /// The direct methods the application answers; calls of others get 404 (S-5.2).
    pub methods: &'a [&'a str],
    /// Hand calls of *every* method to the application, listed in `methods` or not (default
    /// false). For drivers that register handlers at run time (the std SDK): the application
    /// then answers each call itself, 404 for methods it does not know (S-5.2).
    pub all_methods: bool,
    /// Different on every boot (a random number or a boot counter), so that replies to a previous
    /// boot's requests are never mistaken for this one's.
    pub token_seed: u32,
    /// How long a request waits for its answer after it was sent, ms (default 10 000).
    pub request_timeout_ms: u64,
    /// First delay before the device retries its own `get` after a timeout or a 429/503, ms,
    /// doubling on each retry (default 1 000).
    pub retry_backoff_ms: u64,
    /// Longest retry delay, ms (default 60 000).
    pub max_retry_backoff_ms: u64,
    /// Deepest JSON accepted from the hub, counted as [`iothub_spec::limits::json_depth`]
    /// (default 16: documents carry metadata a level deeper than the state limit of S-3.9).
    pub max_input_depth: usize,
    /// The hub's limits (request payload size, clientToken length, requests in flight).
    pub limits: Limits,
}

impl<'a> Config<'a> {
    /// Settings for `thing_id` following `shadows`, with the defaults above and no methods.
    pub const fn new(thing_id: &'a str, shadows: &'a [&'a str]) -> Self {
        Config {
            thing_id,
            shadows,
            methods: &[],
            all_methods: false,
            token_seed: 0,
            request_timeout_ms: 10_000,
            retry_backoff_ms: 1_000,
            max_retry_backoff_ms: 60_000,
            max_input_depth: 16,
            limits: Limits::DEFAULT,
        }
    }
}

/// Why [`crate::Device::new`] refused a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The thing id is not valid (S-1.1).
    InvalidThingId,
    /// A shadow name is not valid (S-2), or appears twice.
    InvalidShadowName,
    /// No shadow, or more than `SHADOWS` (or 30).
    ShadowCount,
    /// A method name is not valid (S-5.1).
    InvalidMethodName,
    /// `IN_FLIGHT` or `QUEUE` is 0.
    ZeroCapacity,
    /// The transmit buffer is smaller than [`crate::MIN_TX_BUFFER`].
    BufferTooSmall,
}

/// Why an application command or [`crate::Device::poll_transmit`] failed. Nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The device is not connected; commands are refused until [`crate::Device::handle_connected`].
    NotConnected,
    /// As many requests as allowed are in flight (`IN_FLIGHT`, at most the hub's 10): wait for
    /// events.
    TooManyInFlight,
    /// The transmit queue (`QUEUE` messages or the transmit buffer's bytes) is full: call
    /// `poll_transmit`.
    QueueFull,
    /// The payload is larger than the hub accepts, or does not fit the transmit buffer at all.
    PayloadTooLarge,
    /// The buffer given to `poll_transmit` cannot hold the next message; nothing was dequeued.
    BufferTooSmall,
    /// No such shadow id.
    UnknownShadow,
    /// A method name or clientToken is not valid.
    InvalidArgument,
    /// No OTA task is in progress.
    NoOtaTask,
    /// An NTP exchange is already running.
    Busy,
}

/// Why [`crate::Device::handle_publish`] dropped a message. None of these is fatal: drivers
/// log them at debug level and go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ignored {
    /// The topic is not a topic of S-2.
    Topic(TopicError),
    /// The topic belongs to another thing.
    OtherThing,
    /// A topic the device does not consume (its own requests, presence, documents echoes...).
    NotForDevice,
    /// A shadow not in [`Config::shadows`].
    UnknownShadow,
    /// The payload is not UTF-8.
    NotUtf8,
    /// The payload is not the JSON expected (syntax, depth, missing or mistyped fields).
    Json(JsonError),
    /// A field is missing or has the wrong type.
    Malformed,
    /// A reply matching no request in flight: late, duplicated, or another client's.
    Unmatched,
    /// A delta or document not newer than what was applied.
    Stale,
    /// An `update/documents` message: the hub's copy of accepted updates, the device's own
    /// included; the device follows deltas instead.
    Echo,
    /// An OTA task already known.
    Duplicate,
    /// A malformed OTA task; answered `failed` 400 when it had a readable task id and token.
    BadOtaTask,
    /// The device's answer (404 or an OTA result) could not be queued.
    QueueFull,
}

macro_rules! display {
    ($t:ty { $($p:pat => $s:expr),* $(,)? }) => {
        impl $t {
            /// A short lowercase description (what `Display` writes), for loggers such as
            /// `defmt` that take a `&str`.
            pub const fn as_str(&self) -> &'static str {
                match self { $($p => $s),* }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl core::error::Error for $t {}
    };
}

display!(ConfigError {
    ConfigError::InvalidThingId => "invalid thing id",
    ConfigError::InvalidShadowName => "invalid or repeated shadow name",
    ConfigError::ShadowCount => "wrong number of shadows",
    ConfigError::InvalidMethodName => "invalid method name",
    ConfigError::ZeroCapacity => "zero capacity",
    ConfigError::BufferTooSmall => "transmit buffer too small",
});

display!(Error {
    Error::NotConnected => "not connected",
    Error::TooManyInFlight => "too many requests in flight",
    Error::QueueFull => "transmit queue full",
    Error::PayloadTooLarge => "payload too large",
    Error::BufferTooSmall => "buffer too small",
    Error::UnknownShadow => "unknown shadow",
    Error::InvalidArgument => "invalid method name or client token",
    Error::NoOtaTask => "no ota task in progress",
    Error::Busy => "ntp exchange already running",
});

display!(Ignored {
    Ignored::Topic(_) => "not an iothub topic",
    Ignored::OtherThing => "topic of another thing",
    Ignored::NotForDevice => "topic not consumed by the device",
    Ignored::UnknownShadow => "unknown shadow",
    Ignored::NotUtf8 => "payload not utf-8",
    Ignored::Json(_) => "malformed json",
    Ignored::Malformed => "missing or mistyped field",
    Ignored::Unmatched => "reply to no request in flight",
    Ignored::Stale => "stale version",
    Ignored::Echo => "echo of an accepted update",
    Ignored::Duplicate => "duplicate ota task",
    Ignored::BadOtaTask => "malformed ota task",
    Ignored::QueueFull => "transmit queue full",
});
