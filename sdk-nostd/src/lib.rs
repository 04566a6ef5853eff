#![doc = include_str!("../README.md")]
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
// No panicking path from network input: no indexing or slicing that can fail, no unwrap, no
// explicit panics (BENCHMARKS.md, "no_std footprint", says how the thumb build is checked too).
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable
    )
)]

#[cfg(test)]
extern crate std;

mod device;
mod fmt;
pub mod json;
#[cfg(feature = "minimq")]
pub mod minimq;
#[cfg(feature = "ota-verify")]
mod ota_chunks;
mod patch;
#[cfg(feature = "provisioning")]
pub mod provision;
mod time;
mod token;
mod types;

pub use device::{Device, MIN_TX_BUFFER, SYNC_LOST_AFTER};
pub use iothub_spec as spec;
#[cfg(feature = "ota-verify")]
pub use ota_chunks::{OtaPacing, OtaVerifier, OtaVerifyError};
pub use patch::Patch;
pub use time::Instant;
pub use types::{
    Config, ConfigError, DeltaEvent, Error, Event, Ignored, MethodCall, NtpSample, OtaReport, QoS,
    RawJson, RequestId, ShadowEvent, ShadowId, SubscriptionId, TooLarge, TooLargeKind, Transmit,
};
