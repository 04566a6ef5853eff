#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod driver;
mod error;
mod method;
mod ntp;
mod options;
mod ota;
mod shadow;
mod thing;
#[cfg(feature = "tls")]
mod tls;
mod transport;

pub use error::{Error, Result};
pub use futures_util::{Stream, StreamExt};
pub use iothub_sdk_nostd as core;
pub use iothub_sdk_nostd::spec;
pub use iothub_sdk_nostd::spec::code::OtaErrorCode;
pub use method::{MethodError, MethodRequest, MethodResult};
pub use ntp::{Ntp, NtpResult};
pub use options::{Backoff, Protocol, ThingOptions};
pub use ota::{DownloadError, DownloadOptions, Downloaded, Ota, OtaTask};
pub use shadow::{Delta, Document, Shadow, SyncedState, merge_json};
pub use thing::{ConnectionState, Thing, UserMessage};

/// The rustls crate the SDK uses, to build a [`rustls::ClientConfig`] for
/// [`ThingOptions::tls_config`] (feature `tls`).
#[cfg(feature = "tls")]
pub use rustls;
#[cfg(feature = "tls")]
pub use tls::TlsError;
