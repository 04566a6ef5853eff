//! Log output: tracing to stderr as text or JSON lines (`--log-format`).
//!
//! ANSI colours only when stderr is a terminal, so a log redirected to a file or collected by a
//! supervisor holds no escape codes. Request-level lines carry the thing id through their spans
//! (`rest` in `api/`, `mqtt` in `router.rs`), which both formats print.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter when `RUST_LOG` is unset: rmqtt logs every refused or dropped connection at INFO;
/// the hub summarizes refusals itself (guard::refusals), so a flood cannot flood the log.
const DEFAULT_FILTER: &str = "info,rmqtt=warn,rmqtt_net=warn";

/// Installs the global subscriber; call once, before the hub starts. `RUST_LOG` overrides the
/// default filter.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
