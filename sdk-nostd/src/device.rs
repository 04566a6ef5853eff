//! The sans-IO device state machine.

mod commands;
mod inputs;
#[cfg(feature = "methods")]
mod methods;
#[cfg(feature = "ntp")]
mod ntp;
#[cfg(feature = "ota")]
mod ota;
mod outputs;
mod queue;
mod requests;
mod wire;

use heapless::{Deque, Vec};
use iothub_spec::ids::{is_valid_method_name, is_valid_shadow_name, is_valid_thing_id};
use iothub_spec::limits::MAX_TOPIC_LEN;
use iothub_spec::topic::{Filter, Topic, TopicError};

use crate::json;
use crate::json::writer::JsonWriter;
use crate::time::Instant;
use crate::types::*;

/// The smallest transmit buffer [`Device::new`] accepts: one topic plus a small payload.
/// Size it for the largest report or telemetry message the application sends, plus
/// [`MAX_TOPIC_LEN`] per message queued.
pub const MIN_TX_BUFFER: usize = MAX_TOPIC_LEN + 256;

/// Filters the device subscribes to besides two per shadow: methods, NTP, OTA (those of the
/// enabled features).
const COMMON_FILTERS: usize = cfg!(feature = "methods") as usize
    + cfg!(feature = "ntp") as usize
    + cfg!(feature = "ota") as usize;
/// Most shadows a device may follow (the subscription set is a 64-bit mask).
const MAX_SHADOWS: usize = 30;
/// Connections lost in a row with the device's own get of a shadow unanswered after which the
/// application is told ([`Event::SyncLost`]).
pub const SYNC_LOST_AFTER: u8 = 3;

/// The device's own `get` of one shadow (connection state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GetState {
    Idle,
    /// Send a get once `not_before` has passed; `attempt` counts retries (for the backoff).
    Wanted {
        not_before: Instant,
        attempt: u8,
    },
    InFlight {
        attempt: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A get; `internal` when the device sent it itself (after connecting).
    Get {
        internal: bool,
    },
    Update,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    /// In the transmit queue.
    Queued,
    /// Sent; fails at `deadline`.
    Sent { deadline: Instant },
    /// Timed out or lost with its connection; reported by `poll_event`, then forgotten.
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Request {
    id: u32,
    kind: Kind,
    shadow: u8,
    state: ReqState,
}

/// One message in the transmit queue: its topic then its payload, at the front of `tx`.
#[derive(Debug, Clone, Copy)]
struct Queued {
    topic_len: usize,
    payload_len: usize,
    qos: QoS,
    request: Option<u32>,
}

/// State that outlives a connection.
#[derive(Debug, Clone)]
struct Session<const SHADOWS: usize> {
    /// Per shadow, the version of the last delta or document handed to the application.
    applied: [Option<u64>; SHADOWS],
    /// Whether the device has connected since it started (the first connect always resyncs).
    started: bool,
    /// Per shadow, connections lost in a row while the device's own get waited for its
    /// document (reset by a document).
    lost_gets: [u8; SHADOWS],
    /// Shadows whose `lost_gets` just reached [`SYNC_LOST_AFTER`], not yet reported.
    sync_lost: u64,
    next_id: u32,
    clock: Option<NtpSample>,
    #[cfg(feature = "ota")]
    ota: Option<ota::OtaState>,
}

/// State of one MQTT connection.
#[derive(Debug)]
struct Connection<const SHADOWS: usize, const QUEUE: usize> {
    up: bool,
    /// Subscriptions still to send (bit `i` = [`SubscriptionId`] `i`).
    subs_pending: u64,
    /// Subscriptions refused and not yet reported.
    subs_failed: u64,
    gets: [GetState; SHADOWS],
    queue: Deque<Queued, QUEUE>,
    /// Bytes of `tx` used by `queue`.
    tx_len: usize,
}

impl<const SHADOWS: usize, const QUEUE: usize> Connection<SHADOWS, QUEUE> {
    fn new() -> Self {
        Connection {
            up: false,
            subs_pending: 0,
            subs_failed: 0,
            gets: [GetState::Idle; SHADOWS],
            queue: Deque::new(),
            tx_len: 0,
        }
    }
}

/// A thing's protocol logic, without I/O: subscriptions, shadow gets and updates with
/// clientTokens and timeouts, deltas in version order, direct methods, NTP and OTA.
///
/// Capacities are in the type: `SHADOWS` shadows followed (default 2), `IN_FLIGHT` shadow
/// requests awaiting an answer (default 10, and never more than the hub's
/// [`iothub_spec::limits::Limits::max_in_flight`]), `QUEUE` messages waiting in the transmit
/// queue (default 8), whose bytes live in the caller's `tx` buffer.
///
/// # Driving contract
///
/// The device never does I/O and never reads a clock: every input carries `now`, a reading of the
/// driver's monotonic clock ([`Instant`]), which must never go backwards.
///
/// 1. Create it with [`Device::new`], then connect MQTT with client id = username =
///    [`Config::thing_id`] (S-1.2).
/// 2. On CONNACK call [`Device::handle_connected`] with the session-present flag; when the
///    connection ends (error, close, keep-alive) call [`Device::handle_disconnected`]. Drop
///    whatever the MQTT client still holds for the lost connection (a client such as rumqttc
///    sends it first on the next one, before the device's new SUBSCRIBEs, which S-2 forbids);
///    the device sends again what it still needs.
/// 3. For every PUBLISH received call [`Device::handle_publish`]; it returns at once the event
///    the message produced, borrowing the topic and payload (zero-copy): handle it before the
///    payload buffer is reused. `Err(Ignored)` only explains why a message was dropped. A
///    PUBLISH the driver could not hold goes to [`Device::handle_too_large`] instead, with the
///    bytes it needed: the application gets [`Event::TooLarge`], never a silent drop.
/// 4. Optionally report SUBACKs with [`Device::handle_suback`].
/// 5. After **every** `handle_*` call and every application command, drain the outputs:
///    loop on [`Device::poll_transmit`] until `Ok(None)`, sending each [`Transmit`] in order on
///    the connection (subscriptions come first, so replies are never missed), and loop on
///    [`Device::poll_event`] until `None`.
/// 6. Arm one timer for [`Device::poll_timeout`] (re-read after step 5; `None` = no timer). When
///    it fires call [`Device::handle_timeout`], then step 5.
///
/// Application commands ([`Device::report`], [`Device::update`], [`Device::get_shadow`],
/// `Device::respond`, `Device::request_ntp`, `Device::report_ota` (features `methods`, `ntp`,
/// `ota`), [`Device::publish_telemetry`]) serialize their message into the transmit queue and are refused
/// with [`Error::NotConnected`] while disconnected. Requests return a [`RequestId`]; exactly one
/// event answers each: [`Event::Accepted`], [`Event::Rejected`], [`Event::Shadow`],
/// [`Event::Ntp`] or [`Event::TimedOut`], the latter at most [`Config::request_timeout_ms`]
/// after the request was sent, or as soon as its connection ends.
///
/// # What it does by itself
///
/// - On the first connection, and on every connection that did not resume a session, it
///   subscribes to the replies of each shadow, to method calls, NTP answers and OTA tasks, then
///   `get`s every shadow, retrying with backoff until a document (or 404) arrives.
/// - It hands the application a delta or document only when its version is not older than the
///   last applied one (deltas: strictly newer), so state is applied in version order whatever the
///   network does.
/// - A delta too large for the driver makes it `get` the shadow again; a document too large
///   answers its get. When the connection keeps ending while its own get waits (a document
///   larger than the MQTT client's receive buffer), it asks again after a doubling backoff and
///   says so with [`Event::SyncLost`].
/// - It answers 404 to calls of unregistered methods, keeps the best of N NTP samples, keeps the
///   OTA task's ids and re-sends the final result when the hub sends the same task again.
///
/// Session state (applied versions, OTA task, NTP clock, token counter) survives reconnects;
/// connection state (subscriptions, gets, transmit queue, requests in flight) does not.
pub struct Device<'a, const SHADOWS: usize = 2, const IN_FLIGHT: usize = 10, const QUEUE: usize = 8>
{
    config: Config<'a>,
    tx: &'a mut [u8],
    session: Session<SHADOWS>,
    conn: Connection<SHADOWS, QUEUE>,
    requests: Vec<Request, IN_FLIGHT>,
    #[cfg(feature = "ntp")]
    ntp: Option<ntp::NtpRun>,
}

impl<const SHADOWS: usize, const IN_FLIGHT: usize, const QUEUE: usize> core::fmt::Debug
    for Device<'_, SHADOWS, IN_FLIGHT, QUEUE>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("thing_id", &self.config.thing_id)
            .field("connected", &self.conn.up)
            .field("applied", &self.session.applied)
            .field("in_flight", &self.requests.len())
            .field("queued", &self.conn.queue.len())
            .finish_non_exhaustive()
    }
}

fn map_topic_err(e: TopicError) -> Error {
    match e {
        TopicError::BufferTooSmall => Error::BufferTooSmall,
        _ => Error::InvalidArgument,
    }
}

/// Writes a publish (topic, then the payload `body` writes) into `buf`.
fn write_publish<'b>(
    buf: &'b mut [u8],
    topic: Topic<'_>,
    body: &dyn Fn(&mut JsonWriter<'_>),
    qos: QoS,
) -> Result<Transmit<'b>, Error> {
    let (topic, rest) = topic.write_to_split(buf).map_err(map_topic_err)?;
    let mut w = JsonWriter::new(rest);
    body(&mut w);
    let p = w.finish().ok_or(Error::BufferTooSmall)?;
    let rest: &'b [u8] = rest;
    Ok(Transmit::Publish {
        topic,
        payload: rest.get(..p).ok_or(Error::BufferTooSmall)?,
        qos,
    })
}

/// `base` doubled `attempt` times, capped at `max`.
fn backoff_ms(base: u64, max: u64, attempt: u8) -> u64 {
    // At most 2^20: a 32-bit shift (a variable 64-bit one links `__aeabi_llsl`).
    let factor = u64::from(1u32 << u32::from(attempt.min(20)));
    base.saturating_mul(factor).min(max)
}

/// [`json::as_u64`] of a value split from a payload.
fn as_u64(raw: &str) -> Option<u64> {
    json::as_u64(raw.as_bytes())
}

/// [`json::is_object`] of a value split from a payload.
fn is_object(raw: &str) -> bool {
    json::is_object(raw.as_bytes())
}

/// A raw JSON value split from a payload already checked as UTF-8, for the application.
fn raw_json(raw: &str) -> RawJson<'_> {
    RawJson(raw)
}

#[cfg(any(feature = "methods", feature = "ota"))]
/// A clientToken the device can echo: a plain string within the hub's limit.
fn plain_token(raw: Option<&str>, max: usize) -> Option<&str> {
    json::as_plain(raw?).filter(|t| t.len() <= max.min(iothub_spec::ids::MAX_ID_LEN))
}

impl<'a, const SHADOWS: usize, const IN_FLIGHT: usize, const QUEUE: usize>
    Device<'a, SHADOWS, IN_FLIGHT, QUEUE>
{
    /// A disconnected device for `config`, queueing its messages in `tx` (at least
    /// [`MIN_TX_BUFFER`] bytes).
    pub fn new(config: Config<'a>, tx: &'a mut [u8]) -> Result<Self, ConfigError> {
        if !is_valid_thing_id(config.thing_id) {
            return Err(ConfigError::InvalidThingId);
        }
        let n = config.shadows.len();
        if n == 0 || n > SHADOWS || n > MAX_SHADOWS {
            return Err(ConfigError::ShadowCount);
        }
        for (i, s) in config.shadows.iter().enumerate() {
            let repeated = config.shadows.iter().take(i).any(|o| o == s);
            if !is_valid_shadow_name(s) || repeated {
                return Err(ConfigError::InvalidShadowName);
            }
        }
        if !config.methods.iter().all(|m| is_valid_method_name(m)) {
            return Err(ConfigError::InvalidMethodName);
        }
        if IN_FLIGHT == 0 || QUEUE == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        if tx.len() < MIN_TX_BUFFER {
            return Err(ConfigError::BufferTooSmall);
        }
        Ok(Device {
            config,
            tx,
            session: Session {
                applied: [None; SHADOWS],
                started: false,
                lost_gets: [0; SHADOWS],
                sync_lost: 0,
                next_id: 0,
                clock: None,
                #[cfg(feature = "ota")]
                ota: None,
            },
            conn: Connection::new(),
            requests: Vec::new(),
            #[cfg(feature = "ntp")]
            ntp: None,
        })
    }

    // ----- queries ------------------------------------------------------------------------

    /// The id of the shadow named `name`, if the device follows it.
    pub fn shadow_id(&self, name: &str) -> Option<ShadowId> {
        let i = self.config.shadows.iter().position(|s| *s == name)?;
        u8::try_from(i).ok().map(ShadowId)
    }

    /// The name of a shadow.
    pub fn shadow_name(&self, shadow: ShadowId) -> Option<&'a str> {
        self.config.shadows.get(shadow.index()).copied()
    }

    /// The version of the last delta or document handed to the application for `shadow`.
    pub fn applied_version(&self, shadow: ShadowId) -> Option<u64> {
        self.session.applied.get(shadow.index()).copied().flatten()
    }

    /// Forgets the applied version of `shadow`, so the next document or delta is taken whatever
    /// its version. Call it when the application knows the shadow was deleted and created again
    /// (versions restart at 1, S-3.4).
    pub fn forget_version(&mut self, shadow: ShadowId) {
        if let Some(v) = self.session.applied.get_mut(shadow.index()) {
            *v = None;
        }
    }

    /// Whether the device is connected.
    pub fn is_connected(&self) -> bool {
        self.conn.up
    }

    /// Shadow requests awaiting an answer (or an event), the device's own gets included.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// The Unix time in ms at `now`, from the last NTP result; `None` before one.
    pub fn unix_time_ms(&self, now: Instant) -> Option<u64> {
        self.session.clock.map(|c| c.unix_time_ms(now))
    }

    /// The configuration.
    pub fn config(&self) -> &Config<'a> {
        &self.config
    }

    // ----- internals ----------------------------------------------------------------------

    fn filter_count(&self) -> usize {
        self.config
            .shadows
            .len()
            .saturating_mul(2)
            .saturating_add(COMMON_FILTERS)
    }

    /// Subscription `i`: two per shadow (get replies, update replies), then methods, NTP, OTA
    /// (those of the enabled features).
    fn filter(&self, i: usize) -> Option<Filter<'a>> {
        let thing = self.config.thing_id;
        let n = self.config.shadows.len().saturating_mul(2);
        if i < n {
            let shadow = *self.config.shadows.get(i / 2)?;
            return Some(if i.is_multiple_of(2) {
                Filter::ShadowGetReplies { thing, shadow }
            } else {
                Filter::ShadowUpdateReplies { thing, shadow }
            });
        }
        // `k` indexes methods, NTP, OTA; the filters of disabled features are skipped (with all
        // features on, every `if` below is `if false`).
        let mut k = i.checked_sub(n)?;
        if !cfg!(feature = "methods") {
            k = k.saturating_add(1);
        }
        if !cfg!(feature = "ntp") && k >= 1 {
            k = k.saturating_add(1);
        }
        if !cfg!(feature = "ota") && k >= 2 {
            k = k.saturating_add(1);
        }
        match k {
            0 => Some(Filter::MethodRequests { thing }),
            1 => Some(Filter::NtpResponse { thing }),
            2 => Some(Filter::OtaTask { thing }),
            _ => None,
        }
    }

    fn backoff(&self, attempt: u8) -> u64 {
        backoff_ms(
            self.config.retry_backoff_ms,
            self.config.max_retry_backoff_ms,
            attempt,
        )
    }

    fn capacity(&self) -> usize {
        let hub = usize::try_from(self.config.limits.max_in_flight).unwrap_or(usize::MAX);
        IN_FLIGHT.min(hub).max(1)
    }

    fn take_id(&mut self) -> u32 {
        let id = self.session.next_id;
        self.session.next_id = id.wrapping_add(1);
        id
    }

    fn request_checks(&self, shadow: ShadowId) -> Result<&'a str, Error> {
        if !self.conn.up {
            return Err(Error::NotConnected);
        }
        let name = self.shadow_name(shadow).ok_or(Error::UnknownShadow)?;
        if self.requests.len() >= self.capacity() {
            return Err(Error::TooManyInFlight);
        }
        Ok(name)
    }
}

#[cfg(test)]
mod feature_tests {
    //! Runs under any feature set (`cargo test -p iothub-sdk-nostd --lib --no-default-features
    //! --features ...`): subscriptions and dispatch follow the enabled features.
    use super::*;
    use std::string::{String, ToString};
    use std::vec::Vec as StdVec;

    #[test]
    fn subscriptions_and_dispatch_follow_features() {
        let mut tx = [0u8; 1024];
        let mut config = Config::new("t1", &["default"]);
        config.methods = &["m"];
        let mut dev = Device::<1, 2, 4>::new(config, &mut tx).unwrap();
        let now = Instant::ZERO;
        dev.handle_connected(now, false);
        let mut buf = [0u8; 512];
        let mut filters: StdVec<String> = StdVec::new();
        while let Ok(Some(Transmit::Subscribe { filter, .. })) = dev.poll_transmit(now, &mut buf) {
            filters.push(filter.to_string());
        }
        assert_eq!(filters.len(), 2 + COMMON_FILTERS, "{filters:?}");
        let has = |end: &str| filters.iter().any(|f| f.ends_with(end));
        assert_eq!(has("/methods/+/req"), cfg!(feature = "methods"));
        assert_eq!(has("/ntp/resp"), cfg!(feature = "ntp"));
        assert_eq!(has("/ota/task"), cfg!(feature = "ota"));

        let call = dev.handle_publish(
            now,
            "$iothub/things/t1/methods/m/req",
            br#"{"clientToken":"c1","data":null}"#,
        );
        assert_eq!(call.is_ok_and(|e| e.is_some()), cfg!(feature = "methods"));
        let task = dev.handle_publish(
            now,
            "$iothub/things/t1/ota/task",
            br#"{"clientToken":"o1","taskId":"x","type":"app","meta":{"version":"1"},"fileUrl":"u"}"#,
        );
        assert_eq!(task.is_ok_and(|e| e.is_some()), cfg!(feature = "ota"));
        if !cfg!(feature = "ota") {
            assert_eq!(task, Err(Ignored::NotForDevice));
        }
        let ntp = dev.handle_publish(
            now,
            "$iothub/things/t1/ntp/resp",
            br#"{"clientSendTime":0,"serverRecvTime":5,"serverSendTime":6}"#,
        );
        // No exchange is running: unmatched with the feature, not for the device without it.
        let expected = if cfg!(feature = "ntp") {
            Ignored::Unmatched
        } else {
            Ignored::NotForDevice
        };
        assert_eq!(ntp, Err(expected));
    }
}
