//! Limits (S-3.9, S-5.3, S-9.2) and the non-recursive JSON depth check.
//!
//! The hub reads its defaults from [`Limits::DEFAULT`], lets its configuration override them and
//! reports the values in force at `GET /api/v1/limits` (the JSON shape is [`Limits`] itself).

use serde::{Deserialize, Serialize};

/// Maximum length in bytes of a topic name or filter this spec accepts.
///
/// The longest topic of the spec (`S/update/documents` with a 64-byte id and shadow name) is 175
/// bytes; the rest of the budget is for the free-form `will/` and `user/` tails.
/// [`crate::topic::Topic::parse`] rejects anything longer, and a 256-byte buffer always fits a
/// topic built by [`crate::topic::Topic::write_to`].
pub const MAX_TOPIC_LEN: usize = 256;

/// Default timeout of a direct-method call in seconds, when the REST call gives none (S-5.3).
pub const METHOD_TIMEOUT_DEFAULT_S: u32 = 30;
/// Smallest accepted `timeout` of a direct-method call in seconds (S-5.3).
pub const METHOD_TIMEOUT_MIN_S: u32 = 1;
/// Largest accepted `timeout` of a direct-method call in seconds (S-5.3).
pub const METHOD_TIMEOUT_MAX_S: u32 = 300;
/// Default `connectTimeout` of a direct-method call in seconds: do not wait for an offline thing
/// (S-5.3).
pub const CONNECT_TIMEOUT_DEFAULT_S: u32 = 0;
/// Largest accepted `connectTimeout` of a direct-method call in seconds (S-5.3).
pub const CONNECT_TIMEOUT_MAX_S: u32 = 300;
/// Most things one `POST /things/batch` may create (S-9.2).
pub const MAX_BATCH_CREATE: usize = 1000;
/// Largest OTA `progress` value, in percent (S-7.2).
pub const OTA_PROGRESS_MAX: u8 = 100;
/// Most retained messages the hub keeps on one thing's `$iothub/user/things/{thingId}/…` topics
/// (S-2.4); a retained PUBLISH that would add one more is refused (MQTT 5 PUBACK 0x97).
pub const MAX_RETAINED_PER_THING: usize = 16;
/// Most configurations (desired-state patches by query) one hub holds (S-11.1).
pub const MAX_CONFIGURATIONS: usize = 100;
/// Largest `desired` patch of one configuration, in bytes of its JSON text (S-11.1).
pub const MAX_CONFIGURATION_DESIRED: usize = 8192;
/// Most things one fleet job targets (S-12.1), whether listed or matched by a query.
pub const MAX_JOB_TARGETS: usize = 100_000;
/// Largest operation body of one fleet job (method payload, desired patch or tags), in bytes of
/// its JSON text (S-12.1); also the largest method response a job keeps per thing (S-12.3).
pub const MAX_JOB_PAYLOAD: usize = 8192;
/// Most retries of one thing in a fleet job, after its first attempt (S-12.2).
pub const MAX_JOB_RETRIES: u32 = 10;

/// The configurable per-hub limits of S-3.9.
///
/// Use [`Limits::DEFAULT`] (or `Limits::default()`) unless the hub's configuration says otherwise;
/// SDKs use it to refuse oversized requests before sending them. Serialized in camelCase, this
/// is the `data` of `GET /api/v1/limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest shadow request payload in bytes (default 8192); larger gets 413.
    pub max_request_payload: usize,
    /// Largest whole shadow state (desired plus reported, serialized) in bytes (default 32768);
    /// an update that would make it larger gets 413.
    pub max_state_bytes: usize,
    /// Deepest JSON nesting of a request payload as counted by [`json_depth_exceeds`] (default 8);
    /// deeper gets 400.
    pub max_json_depth: usize,
    /// Longest `clientToken` in bytes (default 64); longer gets 400 (S-4.1).
    pub max_client_token: usize,
    /// Shadow requests per second per thing (default 20); more gets 429.
    pub shadow_requests_per_sec: u32,
    /// Shadow requests in flight per thing (default 10); more gets 429.
    pub max_in_flight: u32,
    /// Named shadows per thing, `default` not counted (default 10); an update that would create
    /// one more gets 403 (as Azure answers a quota; `docs/spec.md` D-12).
    pub max_named_shadows: u32,
    /// Topic filters one thing may hold subscribed at once (default 100); a SUBSCRIBE that would
    /// add one more is refused for that filter with SUBACK 0x97 (MQTT 5) or 0x80 (3.1.1).
    /// Re-subscribing a filter the thing already holds is not "one more".
    #[serde(default = "default_max_subscriptions")]
    pub max_subscriptions: u32,
}

fn default_max_subscriptions() -> u32 {
    Limits::DEFAULT.max_subscriptions
}

impl Limits {
    /// The defaults of S-3.9.
    pub const DEFAULT: Limits = Limits {
        max_request_payload: 8192,
        max_state_bytes: 32768,
        max_json_depth: 8,
        max_client_token: 64,
        shadow_requests_per_sec: 20,
        max_in_flight: 10,
        max_named_shadows: 10,
        max_subscriptions: 100,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Whether the JSON text in `bytes` nests `{`/`[` deeper than `max_depth`.
///
/// Call it on every untrusted payload *before* handing it to a recursive JSON parser: it scans
/// once, without recursion or allocation, and stops at the first bracket that goes over the limit,
/// so a 10,000-deep payload costs nothing and never reaches `serde_json`.
///
/// Depth is the number of containers open at a point: a bare scalar is depth 0, `{}` and `[]` are
/// depth 1, `{"a":{"b":1}}` and `[[1]]` are depth 2. Brackets inside strings (escapes included,
/// `"\"{"`) do not count. The scan does not validate the JSON otherwise: unbalanced closers are
/// ignored and invalid text is left for the parser to reject.
pub fn json_depth_exceeds(bytes: &[u8], max_depth: usize) -> bool {
    deepest(bytes, max_depth) > max_depth
}

/// The nesting depth of the JSON text in `bytes`, counted as in [`json_depth_exceeds`].
///
/// Use it for diagnostics (an error message naming the depth); to enforce a limit prefer
/// [`json_depth_exceeds`], which stops early.
pub fn json_depth(bytes: &[u8]) -> usize {
    deepest(bytes, usize::MAX)
}

/// The deepest nesting in `bytes`, stopping as soon as it passes `stop_above`. One
/// non-recursive, allocation-free scan shared by [`json_depth_exceeds`] and [`json_depth`].
fn deepest(bytes: &[u8], stop_above: usize) -> usize {
    let mut depth: usize = 0;
    let mut max: usize = 0;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
                if max > stop_above {
                    return max;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    #[test]
    fn defaults() {
        assert_eq!(Limits::default(), Limits::DEFAULT);
        assert_eq!(Limits::DEFAULT.max_request_payload, 8 * 1024);
        assert_eq!(Limits::DEFAULT.max_state_bytes, 32 * 1024);
        let mut buf = [0u8; 256];
        let n = serde_json_core::to_slice(&Limits::DEFAULT, &mut buf).unwrap();
        assert_eq!(
            core::str::from_utf8(&buf[..n]).unwrap(),
            r#"{"maxRequestPayload":8192,"maxStateBytes":32768,"maxJsonDepth":8,"maxClientToken":64,"shadowRequestsPerSec":20,"maxInFlight":10,"maxNamedShadows":10,"maxSubscriptions":100}"#
        );
        let (back, _): (Limits, _) = serde_json_core::from_slice(&buf[..n]).unwrap();
        assert_eq!(back, Limits::DEFAULT);
    }

    #[test]
    fn depth_counting() {
        assert_eq!(json_depth(b"1"), 0);
        assert_eq!(json_depth(b"{}"), 1);
        assert_eq!(json_depth(br#"{"a":{"b":1}}"#), 2);
        assert_eq!(json_depth(br#"[[1],[2]]"#), 2);
        assert_eq!(json_depth(br#"{"a":"{{{[[["}"#), 1);
        assert_eq!(json_depth(br#"{"a":"\"{{"}"#), 1);
        assert_eq!(json_depth(br#"{"a\\":{"b":1}}"#), 2);
        assert!(!json_depth_exceeds(br#"{"a":{"b":1}}"#, 2));
        assert!(json_depth_exceeds(br#"{"a":{"b":1}}"#, 1));
        assert!(!json_depth_exceeds(b"", 0));
        assert!(json_depth_exceeds(b"[", 0));
    }

    #[test]
    fn deep_payload_stops_early() {
        let mut s = String::new();
        for _ in 0..10_000 {
            s.push('[');
        }
        assert!(json_depth_exceeds(s.as_bytes(), 8));
        assert_eq!(json_depth(s.as_bytes()), 10_000);
    }

    #[test]
    fn update_request_depth() {
        // Whole-payload counting: root 1, state 2, desired 3, a..e 4..8.
        let ok = br#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":1}}}}}}}"#;
        assert_eq!(json_depth(ok), 7);
        let at_limit = br#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}}}"#;
        assert_eq!(json_depth(at_limit), 8);
        assert!(!json_depth_exceeds(at_limit, 8));
        let over = br#"{"state":{"desired":{"a":{"b":{"c":{"d":{"e":{"f":{"g":1}}}}}}}}}"#;
        assert!(json_depth_exceeds(over, 8));
    }
}
