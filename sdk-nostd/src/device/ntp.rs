//! NTP for the device (S-6): best-of-N exchanges, one request at a time (feature `ntp`).

use super::{Device, wire};
use crate::time::Instant;
use crate::types::{Error, Event, Ignored, NtpSample, RequestId};

/// Most samples one NTP exchange takes.
const MAX_NTP_SAMPLES: u8 = 16;

/// A running best-of-N NTP exchange.
#[derive(Debug, Clone, Copy)]
pub(super) struct NtpRun {
    pub(super) id: u32,
    /// Requests still to send.
    pub(super) attempts_left: u8,
    pub(super) best: Option<NtpSample>,
    /// The `clientSendTime` of the request awaiting its answer, and its deadline.
    pub(super) outstanding: Option<(u64, Instant)>,
    pub(super) finished: bool,
}

impl<'a, const SHADOWS: usize, const IN_FLIGHT: usize, const QUEUE: usize>
    Device<'a, SHADOWS, IN_FLIGHT, QUEUE>
{
    /// Starts an NTP exchange of `samples` requests (1 to 16), one after the other, keeping the
    /// answer with the smallest round trip (S-6.2). Answered by [`Event::Ntp`], or
    /// [`Event::TimedOut`] when no answer came. The result also sets [`Device::unix_time_ms`].
    /// Feature `ntp`.
    pub fn request_ntp(&mut self, now: Instant, samples: u8) -> Result<RequestId, Error> {
        let _ = now;
        if !self.conn.up {
            return Err(Error::NotConnected);
        }
        if self.ntp.is_some() {
            return Err(Error::Busy);
        }
        let id = self.take_id();
        self.ntp = Some(NtpRun {
            id,
            attempts_left: samples.clamp(1, MAX_NTP_SAMPLES),
            best: None,
            outstanding: None,
            finished: false,
        });
        Ok(RequestId(id))
    }

    // Out of line: measured smaller on thumbv7em at opt-level "z" (BENCHMARKS.md, footprint).
    #[inline(never)]
    pub(super) fn on_ntp<'p>(
        &mut self,
        now: Instant,
        payload: &'p str,
    ) -> Result<Option<Event<'p>>, Ignored> {
        let resp =
            wire::ntp_response(payload, self.config.max_input_depth).ok_or(Ignored::Malformed)?;
        let ntp = self.ntp.as_mut().ok_or(Ignored::Unmatched)?;
        match ntp.outstanding {
            Some((send, _)) if send == resp.client_send_time && !ntp.finished => {}
            _ => return Err(Ignored::Unmatched),
        }
        ntp.outstanding = None;
        let recv = now.as_millis();
        let sample = NtpSample {
            server_time_ms: resp.now_ms(recv),
            round_trip_ms: resp.round_trip_ms(recv),
            local: now,
        };
        if ntp
            .best
            .is_none_or(|b| sample.round_trip_ms < b.round_trip_ms)
        {
            ntp.best = Some(sample);
        }
        if ntp.attempts_left > 0 {
            return Ok(None);
        }
        let run = *ntp;
        self.ntp = None;
        Ok(Some(self.finish_ntp(run)))
    }

    /// Ends an NTP exchange: the best sample becomes the device's clock ([`Event::Ntp`]), or
    /// [`Event::TimedOut`] when no answer came.
    // Out of line: one copy for `on_ntp` and `poll_event`, which is inlined into the driver's
    // loop; measured smaller on thumbv7em at opt-level "z" (BENCHMARKS.md, footprint).
    #[inline(never)]
    pub(super) fn finish_ntp(&mut self, run: NtpRun) -> Event<'static> {
        match run.best {
            Some(sample) => {
                self.session.clock = Some(sample);
                Event::Ntp {
                    request: RequestId(run.id),
                    sample,
                }
            }
            None => Event::TimedOut {
                request: RequestId(run.id),
            },
        }
    }
}
