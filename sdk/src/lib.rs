#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod driver;
mod error;
mod method;
mod ntp;
mod options;
mod ota;
mod provision;
#[cfg(feature = "service")]
pub mod service;
mod shadow;
mod synced;
mod thing;
#[cfg(feature = "tls")]
mod tls;
mod transport;
mod typed;

pub use error::{ConnectError, Error, Result};
pub use futures_util::{Stream, StreamExt};
pub use iothub_sdk_nostd as core;
pub use iothub_sdk_nostd::spec;
pub use iothub_sdk_nostd::spec::code::OtaErrorCode;
pub use method::{MethodError, MethodRequest, MethodResult};
pub use ntp::{Ntp, NtpResult};
pub use options::{Backoff, Protocol, ThingOptions, max_document_bytes};
#[cfg(feature = "ota-download")]
pub use ota::{DownloadError, DownloadOptions, Downloaded};
pub use ota::{Ota, OtaTask};
pub use provision::{ProvisionOptions, Provisioned, provision};
pub use shadow::{Delta, Document, Shadow, ShadowUpdate};
pub use synced::{Applied, SyncedState, merge_json};
pub use thing::{ConnectionState, Thing, UserMessage};
pub use typed::StateError;

/// The rustls crate the SDK uses, to build a [`rustls::ClientConfig`] for
/// [`ThingOptions::tls_config`] (feature `tls`).
#[cfg(feature = "tls")]
pub use rustls;
#[cfg(feature = "tls")]
pub use tls::TlsError;
