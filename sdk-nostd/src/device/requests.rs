//! Requests in flight (the application's and the device's own gets), matched to their replies
//! by clientToken, and the shadow documents the gets return.

use iothub_spec::payload::field;
use iothub_spec::topic::Topic;

use super::{
    Device, GetState, Kind, ReqState, Request, as_u64, is_object, raw_json, wire, write_publish,
};
use crate::fmt::warning;
use crate::json;
use crate::time::Instant;
use crate::token;
use crate::types::*;

impl<'a, const SHADOWS: usize, const IN_FLIGHT: usize, const QUEUE: usize>
    Device<'a, SHADOWS, IN_FLIGHT, QUEUE>
{
    /// Records a queued request; its message is already in the queue (capacity was checked).
    pub(super) fn push_request(
        &mut self,
        id: u32,
        kind: Kind,
        shadow: ShadowId,
    ) -> Result<RequestId, Error> {
        let req = Request {
            id,
            kind,
            shadow: shadow.0,
            state: ReqState::Queued,
        };
        if self.requests.push(req).is_err() {
            // Unreachable after `request_checks`; undo the queued message to stay consistent.
            self.drop_last_queued();
            return Err(Error::TooManyInFlight);
        }
        let _ = self.take_id();
        Ok(RequestId(id))
    }

    /// The shadow whose own get is due, if a request slot is free.
    pub(super) fn poll_get(&self, now: Instant) -> Result<Option<usize>, Error> {
        if self.requests.len() >= self.capacity() {
            return Ok(None);
        }
        Ok(self
            .conn
            .gets
            .iter()
            .position(|g| matches!(*g, GetState::Wanted { not_before, .. } if not_before <= now)))
    }

    pub(super) fn transmit_get<'b>(
        &mut self,
        now: Instant,
        index: usize,
        buf: &'b mut [u8],
    ) -> Result<Transmit<'b>, Error> {
        let shadow = *self.config.shadows.get(index).ok_or(Error::UnknownShadow)?;
        let attempt = match self.conn.gets.get(index) {
            Some(GetState::Wanted { attempt, .. }) => *attempt,
            _ => 0,
        };
        let id = self.session.next_id;
        let seed = self.config.token_seed;
        let t = write_publish(
            buf,
            Topic::ShadowGet {
                thing: self.config.thing_id,
                shadow,
            },
            &|w| wire::get_request(w, seed, id),
            QoS::AtLeastOnce,
        )?;
        let req = Request {
            id,
            kind: Kind::Get { internal: true },
            shadow: u8::try_from(index).map_err(|_| Error::UnknownShadow)?,
            state: ReqState::Sent {
                deadline: now.add_millis(self.config.request_timeout_ms),
            },
        };
        self.requests
            .push(req)
            .map_err(|_| Error::TooManyInFlight)?;
        let _ = self.take_id();
        if let Some(g) = self.conn.gets.get_mut(index) {
            *g = GetState::InFlight { attempt };
        }
        Ok(t)
    }

    /// Removes the request a reply's clientToken names, if it is in flight with this shadow and
    /// kind; a reply to anything else is [`Ignored::Unmatched`].
    pub(super) fn take_request_raw(
        &mut self,
        tok: Option<&str>,
        shadow: ShadowId,
        get: bool,
    ) -> Result<Request, Ignored> {
        let tok = tok.and_then(json::as_plain).ok_or(Ignored::Unmatched)?;
        let id = token::parse(self.config.token_seed, tok).ok_or(Ignored::Unmatched)?;
        let pos = self
            .requests
            .iter()
            .position(|r| {
                r.id == id
                    && r.shadow == shadow.0
                    && matches!(r.state, ReqState::Sent { .. })
                    && matches!(r.kind, Kind::Get { .. }) == get
            })
            .ok_or(Ignored::Unmatched)?;
        self.remove_request(pos).ok_or(Ignored::Unmatched)
    }

    /// Schedules the device's own get of shadow `index` again once its backoff has passed (after a
    /// timeout or a rejection); with `in_flight_only`, only when that get is in flight.
    pub(super) fn retry_get(&mut self, index: usize, now: Instant, in_flight_only: bool) {
        let attempt = match self.conn.gets.get(index) {
            Some(GetState::InFlight { attempt }) => *attempt,
            _ if in_flight_only => return,
            _ => 0,
        };
        let not_before = now.add_millis(self.backoff(attempt));
        if let Some(g) = self.conn.gets.get_mut(index) {
            *g = GetState::Wanted {
                not_before,
                attempt: attempt.saturating_add(1),
            };
        }
    }

    /// Forgets the device's own gets (only the failed ones when `failed_only`), keeping the order
    /// of the other requests: `Vec::retain` by hand, without heapless' generic retain machinery.
    pub(super) fn drop_internal_gets(&mut self, failed_only: bool) {
        let mut kept = 0;
        for i in 0..self.requests.len() {
            let Some(r) = self.requests.get(i).copied() else {
                break;
            };
            let internal = matches!(r.kind, Kind::Get { internal: true });
            if internal && (!failed_only || matches!(r.state, ReqState::Failed)) {
                continue;
            }
            if let Some(slot) = self.requests.get_mut(kept) {
                *slot = r;
            }
            kept += 1;
        }
        self.requests.truncate(kept);
    }

    /// `swap_remove` without its panic path (callers take `pos` from `position`).
    pub(super) fn remove_request(&mut self, pos: usize) -> Option<Request> {
        let last = self.requests.pop()?;
        match self.requests.get_mut(pos) {
            Some(slot) => Some(core::mem::replace(slot, last)),
            None => Some(last),
        }
    }

    // Always inlined: a wrapper of `take_request_raw` for `handle_publish`'s update replies;
    // out of line it cost more than the two calls it saves (BENCHMARKS.md, footprint).
    #[inline(always)]
    pub(super) fn take_request(
        &mut self,
        tok: Option<&str>,
        shadow: ShadowId,
        kind: Kind,
    ) -> Result<RequestId, Ignored> {
        let get = matches!(kind, Kind::Get { .. });
        self.take_request_raw(tok, shadow, get)
            .map(|r| RequestId(r.id))
    }

    /// A get of `shadow` finished (answered): the device's own get is done.
    pub(super) fn finish_get(&mut self, req: &Request) {
        if matches!(req.kind, Kind::Get { internal: true })
            && let Some(g) = self.conn.gets.get_mut(usize::from(req.shadow))
        {
            *g = GetState::Idle;
        }
    }

    // Out of line: measured smaller on thumbv7em at opt-level "z" (BENCHMARKS.md, footprint).
    #[inline(never)]
    pub(super) fn on_get_accepted<'p>(
        &mut self,
        _now: Instant,
        s: ShadowId,
        payload: &'p str,
    ) -> Result<Option<Event<'p>>, Ignored> {
        let depth = self.config.max_input_depth;
        let [state, version, tok] = json::split_str(
            payload,
            &[field::STATE, field::VERSION, field::CLIENT_TOKEN],
            depth,
        )
        .map_err(Ignored::Json)?;
        let version = version.and_then(as_u64).ok_or(Ignored::Malformed)?;
        let [desired, reported, delta] = match state {
            Some(st) if is_object(st) => json::split_str(
                st,
                &[field::DESIRED, field::REPORTED, field::DELTA],
                depth.saturating_sub(1),
            )
            .map_err(Ignored::Json)?,
            Some(_) => return Err(Ignored::Malformed),
            None => [None, None, None],
        };
        let section = |raw: Option<&'p str>| raw.filter(|v| is_object(v)).map(raw_json);
        let req = self.take_request_raw(tok, s, true)?;
        self.finish_get(&req);
        self.document(
            req,
            s,
            version,
            section(desired),
            section(reported),
            section(delta),
        )
    }

    pub(super) fn document<'p>(
        &mut self,
        req: Request,
        s: ShadowId,
        version: u64,
        desired: Option<RawJson<'p>>,
        reported: Option<RawJson<'p>>,
        delta: Option<RawJson<'p>>,
    ) -> Result<Option<Event<'p>>, Ignored> {
        let app = matches!(req.kind, Kind::Get { internal: false });
        let slot = self
            .session
            .applied
            .get_mut(s.index())
            .ok_or(Ignored::UnknownShadow)?;
        if slot.is_some_and(|a| version < a) {
            return if app {
                Ok(Some(Event::Accepted {
                    request: RequestId(req.id),
                    shadow: s,
                    version,
                }))
            } else {
                Err(Ignored::Stale)
            };
        }
        *slot = Some(version);
        if let Some(lost) = self.session.lost_gets.get_mut(s.index()) {
            *lost = 0;
        }
        Ok(Some(Event::Shadow(ShadowEvent {
            shadow: s,
            version,
            request: app.then_some(RequestId(req.id)),
            desired,
            reported,
            delta,
        })))
    }

    /// A get of shadow `s` rejected with `code` (read by `handle_publish`), for the request the
    /// clientToken `tok` names.
    // Out of line: measured smaller on thumbv7em at opt-level "z" (BENCHMARKS.md, footprint).
    #[inline(never)]
    pub(super) fn on_get_rejected<'p>(
        &mut self,
        now: Instant,
        s: ShadowId,
        code: u64,
        tok: Option<&str>,
    ) -> Result<Option<Event<'p>>, Ignored> {
        let code = u16::try_from(code).unwrap_or(u16::MAX);
        let req = self.take_request_raw(tok, s, true)?;
        if code == iothub_spec::code::ErrorCode::NotFound.as_u16() {
            // S-3.2: a shadow never written is an empty shadow at version 0.
            self.finish_get(&req);
            return self.document(req, s, 0, None, None, None);
        }
        if matches!(req.kind, Kind::Get { internal: true }) {
            warning!("get of shadow {} rejected with {}", s.index(), code);
            self.retry_get(s.index(), now, false);
            return Ok(None);
        }
        Ok(Some(Event::Rejected {
            request: RequestId(req.id),
            shadow: s,
            code,
        }))
    }
}
