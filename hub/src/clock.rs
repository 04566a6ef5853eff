//! The hub's wall clock. Everything else takes `now` as a parameter so it can be tested.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the unit of every timestamp in docs/spec.md.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch as UTC `YYYY-MM-DD hh:mm:ss`, for people (the console's
/// pages, the admin CLI's tables).
pub fn format_utc(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    // RFC 3339 `YYYY-MM-DDThh:mm:ssZ`, read more easily with a space and without the zone.
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replacen('T', " ", 1)
        .trim_end_matches('Z')
        .to_owned()
}
