//! The driver's outputs (steps 5 and 6 of the driving contract on [`Device`]): messages to
//! send, events for the application, and when the next timer is due.

#[cfg(feature = "ntp")]
use iothub_spec::payload;
#[cfg(feature = "ntp")]
use iothub_spec::topic::Topic;

use super::{Device, GetState, ReqState, map_topic_err};
#[cfg(feature = "ntp")]
use super::{wire, write_publish};
use crate::time::Instant;
use crate::types::*;

impl<'a, const SHADOWS: usize, const IN_FLIGHT: usize, const QUEUE: usize>
    Device<'a, SHADOWS, IN_FLIGHT, QUEUE>
{
    /// The next message to send, written into `buf` (topic then payload); `Ok(None)` when there
    /// is nothing to send (always while disconnected).
    ///
    /// Call it in a loop after every input and command. A `buf` of
    /// [`MAX_TOPIC_LEN`](iothub_spec::limits::MAX_TOPIC_LEN) bytes plus the largest payload always
    /// suffices; when it is too small the message stays queued and
    /// [`Error::BufferTooSmall`] is returned. A request's timeout starts when it is returned here.
    pub fn poll_transmit<'b>(
        &mut self,
        now: Instant,
        buf: &'b mut [u8],
    ) -> Result<Option<Transmit<'b>>, Error> {
        if !self.conn.up {
            return Ok(None);
        }
        if self.conn.subs_pending != 0 {
            let i = self.conn.subs_pending.trailing_zeros() as usize;
            // Clears bit `i`, the lowest one set (no variable 64-bit shift).
            let rest = self.conn.subs_pending & self.conn.subs_pending.wrapping_sub(1);
            let Some(filter) = self.filter(i) else {
                self.conn.subs_pending = rest;
                return Ok(None);
            };
            let filter = filter.write_to(buf).map_err(map_topic_err)?;
            self.conn.subs_pending = rest;
            return Ok(Some(Transmit::Subscribe {
                id: SubscriptionId(u8::try_from(i).unwrap_or(u8::MAX)),
                filter,
                qos: QoS::AtLeastOnce,
            }));
        }
        if let Some(t) = self.poll_get(now)? {
            // Reborrow dance: the get is written into `buf` below to keep one borrow.
            return self.transmit_get(now, t, buf).map(Some);
        }
        #[cfg(feature = "ntp")]
        if let Some(ntp) = self.ntp.as_mut()
            && !ntp.finished
            && ntp.outstanding.is_none()
            && ntp.attempts_left > 0
        {
            let thing = self.config.thing_id;
            let send = now.as_millis();
            let body = payload::NtpRequest {
                client_send_time: send,
            };
            let t = write_publish(
                buf,
                Topic::NtpRequest { thing },
                &|w| wire::ntp_request(w, &body),
                QoS::AtLeastOnce,
            )?;
            ntp.attempts_left -= 1;
            ntp.outstanding = Some((send, now.add_millis(self.config.request_timeout_ms)));
            return Ok(Some(t));
        }
        self.pop_queued(now, buf)
    }

    /// The next event caused by time or the connection: a request that timed out or lost its
    /// connection, an NTP exchange that ended on a timeout, a refused subscription. Call it in a
    /// loop until `None`. (Events caused by a message come from [`Device::handle_publish`].)
    pub fn poll_event(&mut self) -> Option<Event<'static>> {
        if self.conn.subs_failed != 0 {
            let i = self.conn.subs_failed.trailing_zeros();
            // Clears bit `i`, the lowest one set.
            self.conn.subs_failed &= self.conn.subs_failed.wrapping_sub(1);
            return Some(Event::SubscribeFailed {
                subscription: SubscriptionId(u8::try_from(i).unwrap_or(u8::MAX)),
            });
        }
        if self.session.sync_lost != 0 {
            let i = self.session.sync_lost.trailing_zeros() as usize;
            self.session.sync_lost &= self.session.sync_lost.wrapping_sub(1);
            return Some(Event::SyncLost {
                shadow: ShadowId(u8::try_from(i).unwrap_or(u8::MAX)),
                connections: self.session.lost_gets.get(i).copied().unwrap_or(0),
            });
        }
        #[cfg(feature = "ntp")]
        if let Some(ntp) = self.ntp
            && ntp.finished
        {
            self.ntp = None;
            return Some(self.finish_ntp(ntp));
        }
        let pos = self
            .requests
            .iter()
            .position(|r| matches!(r.state, ReqState::Failed))?;
        let r = self.remove_request(pos)?;
        Some(Event::TimedOut {
            request: RequestId(r.id),
        })
    }

    /// When [`Device::handle_timeout`] must be called next, `None` when no timer is needed.
    ///
    /// May be in the past; then call `handle_timeout` right away.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            next = Some(match next {
                Some(n) if n <= t => n,
                _ => t,
            });
        };
        for r in &self.requests {
            if let ReqState::Sent { deadline } = r.state {
                consider(deadline);
            }
        }
        #[cfg(feature = "ntp")]
        if let Some((_, deadline)) = self.ntp.and_then(|n| n.outstanding) {
            consider(deadline);
        }
        if self.conn.up {
            for g in &self.conn.gets {
                if let GetState::Wanted {
                    not_before,
                    attempt,
                } = *g
                    && attempt > 0
                {
                    // A retry waiting for its backoff; first attempts go out on the next poll.
                    consider(not_before);
                }
            }
        }
        next
    }
}
