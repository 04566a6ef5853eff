#![doc = include_str!("../README.md")]
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

mod device;
mod fmt;
pub mod json;
#[cfg(feature = "minimq")]
pub mod minimq;
mod patch;
mod time;
mod token;
mod types;

pub use device::{Device, MIN_TX_BUFFER};
pub use iothub_spec as spec;
pub use patch::Patch;
pub use time::Instant;
pub use types::{
    Config, ConfigError, DeltaEvent, Error, Event, Ignored, MethodCall, NtpSample, OtaReport, QoS,
    RawJson, RequestId, ShadowEvent, ShadowId, SubscriptionId, Transmit,
};
