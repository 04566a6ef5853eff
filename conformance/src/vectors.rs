//! The golden vectors of `spec/vectors/`, compiled into the binary so the suite runs anywhere.

use serde_json::Value;

/// `spec/vectors/shadow.json`.
pub const SHADOW: &str = include_str!("../../spec/vectors/shadow.json");
/// `spec/vectors/errors.json`.
pub const ERRORS: &str = include_str!("../../spec/vectors/errors.json");
/// `spec/vectors/topics.json`.
pub const TOPICS: &str = include_str!("../../spec/vectors/topics.json");

/// Parses one vector file.
pub fn load(text: &str) -> Value {
    // The files are checked by spec/tests/vectors.rs; a broken one is a build-time bug.
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// The `cases` array of a vector file (empty when missing).
pub fn cases(text: &str) -> Vec<Value> {
    load(text)
        .get("cases")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Decodes a `payloadHex` string.
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn vectors_load() {
        assert!(super::cases(super::SHADOW).len() >= 60);
        assert!(super::cases(super::ERRORS).len() >= 30);
        assert_eq!(super::hex("7bff"), vec![0x7b, 0xff]);
    }
}
