//! NTP (S-6): [`Ntp`] and its result.

use std::time::{Duration, SystemTime};

use crate::driver::Command;
use crate::error::Result;
use crate::thing::Thing;

/// The hub's clock as measured by [`Ntp::measure`] (S-6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NtpResult {
    /// The hub's time when the result was computed.
    pub server_time: SystemTime,
    /// Hub time minus this machine's clock, in ms (positive: the local clock is behind).
    pub offset_ms: i64,
    /// The network round trip of the best sample (S-6.2), ms resolution.
    pub round_trip: Duration,
}

/// NTP exchanges with the hub; get one with [`Thing::ntp`].
#[derive(Debug, Clone)]
pub struct Ntp {
    pub(crate) thing: Thing,
    pub(crate) samples: u8,
}

impl Ntp {
    /// How many request/response exchanges one sync makes (1 to 16, default 4); the one with
    /// the smallest round trip wins.
    pub fn samples(mut self, n: u8) -> Self {
        self.samples = n.clamp(1, 16);
        self
    }

    /// Measures the hub's clock against this machine's: one exchange of [`Ntp::samples`]
    /// samples. Each sample waits at most the request timeout; [`crate::Error::Timeout`] when
    /// none was answered. Nothing is changed on this machine: apply
    /// [`NtpResult::offset_ms`] (or use [`NtpResult::server_time`]) as the application needs.
    pub async fn measure(&self) -> Result<NtpResult> {
        let samples = self.samples;
        self.thing
            .request_for(
                self.thing.shared.request_timeout * u32::from(samples),
                |reply| Command::Ntp { samples, reply },
            )
            .await
    }
}
