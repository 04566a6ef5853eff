//! Connection abuse guards shared by the MQTT and HTTP listeners (issue 14): connection caps per
//! source address and in all ([`limiter`]), growing delays before refusing failed CONNECTs
//! ([`backoff`]) and one summary log line per window instead of one line per refusal
//! ([`refusals`]); the descriptor limit raised at start-up and shared out between the listeners
//! ([`fds`]). Each is plain state with `now` passed in where time matters, so the unit
//! tests need no clock.

pub mod backoff;
pub mod fds;
pub mod limiter;
pub mod refusals;
