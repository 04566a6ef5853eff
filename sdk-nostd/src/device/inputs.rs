//! The driver's inputs (steps 2 to 4 and 6 of the driving contract on [`Device`]): the
//! connection coming up or going down, SUBACKs, timers, and every PUBLISH received.

use iothub_spec::limits::json_depth_exceeds;
use iothub_spec::payload::field;
use iothub_spec::topic::Topic;

use super::{
    Connection, Device, GetState, Kind, ReqState, SYNC_LOST_AFTER, as_u64, backoff_ms, is_object,
    raw_json,
};
use crate::fmt::debug;
use crate::json::{self, JsonError, bit};
use crate::time::Instant;
use crate::types::*;

impl<'a, const SHADOWS: usize, const IN_FLIGHT: usize, const QUEUE: usize>
    Device<'a, SHADOWS, IN_FLIGHT, QUEUE>
{
    /// The MQTT connection is up (CONNACK accepted). `session_present` is the CONNACK flag.
    ///
    /// On the first connection, or when the broker kept no session, the device queues its
    /// subscriptions and a `get` of every shadow.
    pub fn handle_connected(&mut self, now: Instant, session_present: bool) {
        if self.conn.up {
            self.handle_disconnected(now);
        }
        self.conn = Connection::new();
        self.conn.up = true;
        if !session_present || !self.session.started {
            let filters = self.filter_count();
            // The low `filters` bits (all 64 when `bit` gives 0).
            self.conn.subs_pending = bit(filters).wrapping_sub(1);
            for g in self.conn.gets.iter_mut().take(self.config.shadows.len()) {
                *g = GetState::Wanted {
                    not_before: now,
                    attempt: 0,
                };
            }
        }
        // A get lost with its connection is asked again even when the session was resumed (its
        // answer went to a request the device no longer has); after two losses in a row, later
        // each time: some brokers close the connection rather than send a message larger than
        // the client's Maximum Packet Size, so the get itself may be what ends it, and the
        // connection should stay up in between (to report, to answer methods).
        for (i, g) in self.conn.gets.iter_mut().enumerate() {
            let lost = self.session.lost_gets.get(i).copied().unwrap_or(0);
            if lost > 0 {
                let not_before = match lost {
                    1 => now,
                    _ => now.add_millis(backoff_ms(
                        self.config.retry_backoff_ms,
                        self.config.max_retry_backoff_ms,
                        lost - 2,
                    )),
                };
                *g = GetState::Wanted {
                    not_before,
                    attempt: lost,
                };
            }
        }
        self.session.started = true;
        debug!("connected at {} ms", now.as_millis());
    }

    /// The MQTT connection ended. Requests in flight fail ([`Event::TimedOut`]), the transmit
    /// queue is dropped, and a running NTP exchange ends with the samples it has.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let _ = now;
        for (i, g) in self.conn.gets.iter().enumerate() {
            if let (GetState::InFlight { .. }, Some(lost)) = (g, self.session.lost_gets.get_mut(i))
            {
                *lost = lost.saturating_add(1);
                if *lost == SYNC_LOST_AFTER {
                    self.session.sync_lost |= bit(i);
                }
            }
        }
        for r in self.requests.iter_mut() {
            if !matches!(r.kind, Kind::Get { internal: true }) {
                r.state = ReqState::Failed;
            }
        }
        self.drop_internal_gets(false);
        #[cfg(feature = "ntp")]
        if let Some(ntp) = self.ntp.as_mut() {
            ntp.outstanding = None;
            ntp.finished = true;
        }
        self.conn = Connection::new();
    }

    /// The broker answered a SUBSCRIBE: `granted` is false for a SUBACK failure (reported as
    /// [`Event::SubscribeFailed`]). Optional: a driver that cannot tell may skip it.
    pub fn handle_suback(&mut self, now: Instant, id: SubscriptionId, granted: bool) {
        let _ = now;
        if !granted {
            self.conn.subs_failed |= bit(id.index());
        }
    }

    /// Time has reached the instant [`Device::poll_timeout`] gave (or later): requests without
    /// an answer fail, the device's own gets are retried with backoff, NTP moves on.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut retry: u64 = 0;
        for r in self.requests.iter_mut() {
            if let ReqState::Sent { deadline } = r.state
                && deadline <= now
            {
                if matches!(r.kind, Kind::Get { internal: true }) {
                    retry |= bit(usize::from(r.shadow));
                }
                r.state = ReqState::Failed;
            }
        }
        self.drop_internal_gets(true);
        for i in 0..SHADOWS {
            if retry & bit(i) != 0 {
                self.retry_get(i, now, true);
            }
        }
        #[cfg(feature = "ntp")]
        if let Some(ntp) = self.ntp.as_mut()
            && let Some((_, deadline)) = ntp.outstanding
            && deadline <= now
        {
            ntp.outstanding = None;
            if ntp.attempts_left == 0 {
                ntp.finished = true;
            }
        }
    }

    /// A PUBLISH arrived on `topic` with `payload`.
    ///
    /// Returns the event it produced, borrowing `topic` and `payload`; `Ok(None)` when the
    /// message was consumed without one (an NTP sample that is not the last, a call of an
    /// unknown method answered 404); `Err` when it was dropped, with the reason. Never panics,
    /// whatever the bytes.
    pub fn handle_publish<'p>(
        &mut self,
        now: Instant,
        topic: &'p str,
        payload: &'p [u8],
    ) -> Result<Option<Event<'p>>, Ignored> {
        let topic = Topic::parse(topic).map_err(Ignored::Topic)?;
        if topic.thing() != self.config.thing_id {
            return Err(Ignored::OtherThing);
        }
        // Checked as UTF-8 once, here: every member split from it below is a `str` already.
        let Ok(payload) = core::str::from_utf8(payload) else {
            return Err(Ignored::NotUtf8);
        };
        if json_depth_exceeds(payload.as_bytes(), self.config.max_input_depth) {
            return Err(Ignored::Json(JsonError::TooDeep));
        }
        let depth = self.config.max_input_depth;
        let shadow = match topic.shadow() {
            Some(name) => Some(self.shadow_id(name).ok_or(Ignored::UnknownShadow)?),
            None => None,
        };
        match (topic, shadow) {
            (Topic::ShadowGetAccepted { .. }, Some(s)) => self.on_get_accepted(now, s, payload),
            // One arm for the rejections, the replies to an update and deltas: each carries a
            // number (the code of a rejection, or a version) and one other member (the
            // clientToken, or the delta's state), split in one call.
            (
                Topic::ShadowGetRejected { .. }
                | Topic::ShadowUpdateAccepted { .. }
                | Topic::ShadowUpdateRejected { .. }
                | Topic::ShadowUpdateDelta { .. },
                Some(s),
            ) => {
                // Static key tables (in flash), not arrays built on the stack at each call.
                let keys: &[&str; 2] = match topic {
                    Topic::ShadowUpdateAccepted { .. } => &[field::VERSION, field::CLIENT_TOKEN],
                    Topic::ShadowUpdateDelta { .. } => &[field::VERSION, field::STATE],
                    _ => &[field::CODE, field::CLIENT_TOKEN],
                };
                let [number, other] =
                    json::split_str(payload, keys, depth).map_err(Ignored::Json)?;
                let number = number.and_then(as_u64).ok_or(Ignored::Malformed)?;
                match topic {
                    Topic::ShadowUpdateAccepted { .. } => Ok(Some(Event::Accepted {
                        request: self.take_request(other, s, Kind::Update)?,
                        shadow: s,
                        version: number,
                    })),
                    Topic::ShadowUpdateRejected { .. } => Ok(Some(Event::Rejected {
                        request: self.take_request(other, s, Kind::Update)?,
                        shadow: s,
                        code: u16::try_from(number).unwrap_or(u16::MAX),
                    })),
                    Topic::ShadowGetRejected { .. } => self.on_get_rejected(now, s, number, other),
                    _ => self.on_delta(s, number, other),
                }
            }
            (Topic::ShadowUpdateDocuments { .. }, Some(_)) => Err(Ignored::Echo),
            #[cfg(feature = "methods")]
            (Topic::MethodRequest { method, .. }, _) => self.on_method(method, payload),
            #[cfg(feature = "ntp")]
            (Topic::NtpResponse { .. }, _) => self.on_ntp(now, payload),
            #[cfg(feature = "ota")]
            (Topic::OtaTask { .. }, _) => self.on_ota_task(now, payload),
            _ => Err(Ignored::NotForDevice),
        }
    }

    /// A PUBLISH arrived on `topic` that did not fit the driver's buffer: `needed` bytes for a
    /// buffer of `capacity` (for example the minimq adapter's inbox). Pass an empty `topic`
    /// when the topic did not fit either.
    ///
    /// Returns the [`Event::TooLarge`] to hand to the application, after acting on it
    /// ([`TooLargeKind`] says how): a delta starts a resync (the device's own `get` of that
    /// shadow, to drain with `poll_transmit`), a document or an update reply answers the
    /// oldest matching request in flight. `Err` when the message was not for this device (its
    /// topic names another thing or an unknown shadow, or is the `update/documents` echo).
    pub fn handle_too_large(
        &mut self,
        now: Instant,
        topic: &str,
        needed: usize,
        capacity: usize,
    ) -> Result<Event<'static>, Ignored> {
        let kind = match Topic::parse(topic) {
            // Subscribed topics only arrive here; one that cannot be read is still reported.
            Err(_) => TooLargeKind::Other,
            Ok(topic) => {
                if topic.thing() != self.config.thing_id {
                    return Err(Ignored::OtherThing);
                }
                let shadow = match topic.shadow() {
                    Some(name) => Some(self.shadow_id(name).ok_or(Ignored::UnknownShadow)?),
                    None => None,
                };
                match (topic, shadow) {
                    (Topic::ShadowUpdateDelta { .. }, Some(s)) => {
                        self.resync(now, s);
                        TooLargeKind::Delta { shadow: s }
                    }
                    (Topic::ShadowGetAccepted { .. }, Some(s)) => TooLargeKind::Document {
                        shadow: s,
                        request: self.settle_oldest(s, true),
                    },
                    (Topic::ShadowUpdateAccepted { .. }, Some(s)) => TooLargeKind::UpdateReply {
                        shadow: s,
                        request: self.settle_oldest(s, false),
                        accepted: true,
                    },
                    (Topic::ShadowUpdateRejected { .. }, Some(s)) => TooLargeKind::UpdateReply {
                        shadow: s,
                        request: self.settle_oldest(s, false),
                        accepted: false,
                    },
                    (Topic::ShadowUpdateDocuments { .. }, _) => return Err(Ignored::Echo),
                    (Topic::MethodRequest { .. }, _) => TooLargeKind::MethodCall,
                    (Topic::OtaTask { .. }, _) => TooLargeKind::OtaTask,
                    _ => TooLargeKind::Other,
                }
            }
        };
        debug!(
            "message too large: {} needs {} bytes, {} available",
            kind.as_str(),
            needed,
            capacity
        );
        Ok(Event::TooLarge(TooLarge {
            kind,
            needed,
            capacity,
        }))
    }

    /// Asks for shadow `s` again with the device's own get, unless one is already wanted or in
    /// flight (a delta was lost; the document tells what it said).
    fn resync(&mut self, now: Instant, s: ShadowId) {
        if let Some(g) = self.conn.gets.get_mut(s.index())
            && *g == GetState::Idle
            && self.conn.up
        {
            *g = GetState::Wanted {
                not_before: now,
                attempt: 0,
            };
        }
    }

    /// Removes the oldest sent get (`get`) or update of shadow `s`: the request an unreadable
    /// reply answers, since the hub answers in order. The application's id, `None` when there
    /// was none or it was the device's own get (which then is not retried: its document does
    /// not fit).
    fn settle_oldest(&mut self, s: ShadowId, get: bool) -> Option<RequestId> {
        let pos = self
            .requests
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.shadow == s.0
                    && matches!(r.state, ReqState::Sent { .. })
                    && matches!(r.kind, Kind::Get { .. }) == get
            })
            // Ids grow with every request, so the smallest is the oldest.
            .min_by_key(|(_, r)| r.id)
            .map(|(i, _)| i)?;
        let req = self.remove_request(pos)?;
        self.finish_get(&req);
        (!matches!(req.kind, Kind::Get { internal: true })).then_some(RequestId(req.id))
    }

    /// A delta of shadow `s` at `version` with its `state` member: handed to the application
    /// only when newer than the last one applied.
    fn on_delta<'p>(
        &mut self,
        s: ShadowId,
        version: u64,
        state: Option<&'p str>,
    ) -> Result<Option<Event<'p>>, Ignored> {
        let state = state
            .filter(|v| is_object(v))
            .map(raw_json)
            .ok_or(Ignored::Malformed)?;
        let slot = self
            .session
            .applied
            .get_mut(s.index())
            .ok_or(Ignored::UnknownShadow)?;
        if slot.is_some_and(|a| version <= a) {
            return Err(Ignored::Stale);
        }
        *slot = Some(version);
        Ok(Some(Event::Delta(DeltaEvent {
            shadow: s,
            version,
            state,
        })))
    }
}
