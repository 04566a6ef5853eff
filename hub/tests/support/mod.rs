//! Harness shared by the hub's end-to-end tests: starts the real `iothub` binary on loopback and
//! drives it over TCP with rumqttc (MQTT 3.1.1 and MQTT 5) and reqwest (REST).
//!
//! Nothing here sleeps to synchronize: every wait polls with a deadline. Topics and payloads are
//! written from docs/spec.md by hand (never taken from the hub's or the spec crate's code), so the
//! tests are an independent check of the wire contract.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod hub;
pub mod mosquitto;
mod mqtt;
pub mod registry;
// Shared with the conformance suite (feature `test-servers`); only some test binaries use it.
#[allow(unused_imports)]
pub use iothub_launch::postgres;
pub mod streams;

pub use hub::*;
pub use mqtt::*;

/// Runs the test function `$name(Proto)` twice, as `$name::v311` and `$name::v5`.
#[allow(unused_macros)]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v311() {
                super::$name(Proto::V311).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v5() {
                super::$name(Proto::V5).await
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both;

/// Bearer token every test hub is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// The service user every test hub is configured with (S-1.5).
pub const SVC_USER: &str = "$svc";
/// Its secret.
pub const SVC_SECRET: &str = "svc-secret";
/// How long to wait for something that must happen (a reply, an event).
pub const STEP: Duration = Duration::from_secs(10);
/// How long to watch for something that must NOT happen.
pub const QUIET: Duration = Duration::from_millis(700);

/// Milliseconds since the Unix epoch, as the hub stamps its documents.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A process-unique suffix for thing ids and client tokens.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// `$iothub/things/{thing}`.
pub fn thing_topic(thing: &str) -> String {
    format!("$iothub/things/{thing}")
}

/// `$iothub/things/{thing}/shadows/name/{shadow}/{suffix}` (S-2).
pub fn shadow_topic(thing: &str, shadow: &str, suffix: &str) -> String {
    format!("$iothub/things/{thing}/shadows/name/{shadow}/{suffix}")
}

/// Asserts the S-9.1 envelope: `{"code":C,"message":"..","data":..}` with `code` == status.
pub fn assert_envelope(status: u16, body: &Value) {
    assert!(
        body.is_object(),
        "HTTP {status}: body is not a JSON object: {body}"
    );
    assert_eq!(
        body["code"].as_u64(),
        Some(u64::from(status)),
        "HTTP {status}: envelope code differs: {body}"
    );
    assert!(
        body["message"].is_string(),
        "HTTP {status}: no message: {body}"
    );
    assert!(
        body.as_object().is_some_and(|o| o.contains_key("data")),
        "HTTP {status}: no data: {body}"
    );
}

/// Polls `probe` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
