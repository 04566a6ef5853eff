//! Bounded scans of untrusted request payloads that do not build the document.
//!
//! S-4.1 says every reply to a request carries its `clientToken`, error replies included. Some
//! requests are refused before they are parsed (too large, not UTF-8, nested too deep, broken
//! JSON), yet their token is usually readable: [`client_token`] finds it with one forward pass,
//! no recursion and no allocation, so a receiver can echo it at the cost of reading the bytes
//! once.

/// Longest escape sequence (`\uXXXX`) per byte of the decoded token: bounds the raw length of a
/// token that may still be within the limit once decoded.
const MAX_ESCAPE_EXPANSION: usize = 6;

/// The `clientToken` of a request payload, found without parsing the document: the value of a
/// top-level `"clientToken"` key whose value is a JSON string.
///
/// Returns the text between the quotes *as written*: if it contains a backslash it is still
/// escaped, and the caller decodes it (and checks the decoded length) before echoing it.
/// `None` when the payload is not a JSON object, has no such key, the value is not a string, the
/// string is unterminated, not UTF-8, or longer than `max_token` bytes (or than
/// `6 * max_token` bytes when escaped). When the key occurs more than once the last one wins, as
/// in a parsed document.
///
/// The scan reads every byte once, tracks nesting with a counter (any depth costs nothing) and
/// only looks at keys of the outermost object; strings, nested objects and arrays are skipped.
/// It does not validate the JSON: it is meant for payloads already refused, whose reply should
/// still carry the token. A key spelled with escapes (`"client\u0054oken"`) is not recognised.
pub fn client_token(bytes: &[u8], max_token: usize) -> Option<&str> {
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut depth: usize = 1;
    // At depth 1: the next string is a key (after `{` or `,`).
    let mut expect_key = true;
    // The last key read at depth 1 was `clientToken` and its value has not started yet.
    let mut token_value_next = false;
    let mut found: Option<&str> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' => {
                let (end, escaped) = string_end(bytes, i + 1)?;
                let body = &bytes[i + 1..end];
                if depth == 1 && expect_key {
                    token_value_next = body == b"clientToken";
                    expect_key = false;
                } else if depth == 1 && token_value_next {
                    token_value_next = false;
                    let bound = if escaped {
                        max_token.saturating_mul(MAX_ESCAPE_EXPANSION)
                    } else {
                        max_token
                    };
                    found = if body.len() <= bound {
                        core::str::from_utf8(body).ok()
                    } else {
                        None
                    };
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                token_value_next = false;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => {
                expect_key = true;
                token_value_next = false;
            }
            b':' | b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => {
                // A number, `true`, `false` or `null`: the value of `clientToken` is not a string.
                if depth == 1 {
                    token_value_next = false;
                }
            }
        }
        i += 1;
    }
    found
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index of the quote closing the string whose body starts at `start`, and whether the body
/// holds an escape; `None` when it is unterminated.
fn string_end(bytes: &[u8], start: usize) -> Option<(usize, bool)> {
    let mut escaped_any = false;
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                escaped_any = true;
                i += 2;
            }
            b'"' => return Some((i, escaped_any)),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    #[test]
    fn finds_a_top_level_token() {
        assert_eq!(client_token(br#"{"clientToken":"t1"}"#, 64), Some("t1"));
        assert_eq!(
            client_token(
                br#" { "state" : {"desired":{"clientToken":"inner"}} , "clientToken" : "t2" } "#,
                64
            ),
            Some("t2")
        );
        assert_eq!(
            client_token(
                br#"{"a":[{"clientToken":"x"}],"clientToken":"y","b":1}"#,
                64
            ),
            Some("y")
        );
    }

    #[test]
    fn ignores_nested_values_and_keys_as_values() {
        assert_eq!(
            client_token(br#"{"state":{"clientToken":"inner"}}"#, 64),
            None
        );
        // "clientToken" as a value, not a key.
        assert_eq!(client_token(br#"{"a":"clientToken","b":"x"}"#, 64), None);
        assert_eq!(client_token(br#"["clientToken","x"]"#, 64), None);
        assert_eq!(client_token(br#""clientToken""#, 64), None);
    }

    #[test]
    fn non_string_values_are_not_tokens() {
        assert_eq!(client_token(br#"{"clientToken":5}"#, 64), None);
        assert_eq!(client_token(br#"{"clientToken":null,"a":"b"}"#, 64), None);
        assert_eq!(client_token(br#"{"clientToken":{"a":"b"}}"#, 64), None);
        assert_eq!(client_token(br#"{"clientToken":["a"]}"#, 64), None);
    }

    #[test]
    fn length_bound_and_escapes() {
        let at = format_token(64);
        assert_eq!(client_token(at.as_bytes(), 64).map(str::len), Some(64));
        assert_eq!(client_token(format_token(65).as_bytes(), 64), None);
        // Escaped text is handed over as written, to be decoded by the caller.
        assert_eq!(
            client_token(br#"{"clientToken":"a\"b\u0041"}"#, 64),
            Some(r#"a\"b\u0041"#)
        );
        // Escapes do not end the string or open containers.
        assert_eq!(
            client_token(br#"{"x":"\"{[","clientToken":"ok"}"#, 64),
            Some("ok")
        );
    }

    #[test]
    fn last_occurrence_wins() {
        assert_eq!(
            client_token(br#"{"clientToken":"a","clientToken":"b"}"#, 64),
            Some("b")
        );
    }

    #[test]
    fn broken_payloads() {
        assert_eq!(client_token(b"", 64), None);
        assert_eq!(client_token(b"{\"clientToken\":", 64), None);
        assert_eq!(client_token(b"{\"clientToken\":\"unterminated", 64), None);
        assert_eq!(client_token(b"{\"clientToken\":\"\xff\xfe\"}", 64), None);
        // Recoverable from broken JSON after the token, and from a payload nested far too deep.
        assert_eq!(
            client_token(br#"{"clientToken":"t","state":{"desired":{"#, 64),
            Some("t")
        );
        let mut deep = String::from(r#"{"clientToken":"deep","state":"#);
        for _ in 0..10_000 {
            deep.push('[');
        }
        assert_eq!(client_token(deep.as_bytes(), 64), Some("deep"));
        // Nothing after the top-level object counts.
        assert_eq!(client_token(br#"{} {"clientToken":"x"}"#, 64), None);
    }

    fn format_token(len: usize) -> String {
        let mut s = String::from(r#"{"clientToken":""#);
        for _ in 0..len {
            s.push('t');
        }
        s.push_str(r#""}"#);
        s
    }
}
