//! Unit tests and proptests of the JSON scanner, the one-pass split checked against a reference
//! split built on [`Members`].

use super::*;
use proptest::prelude::*;
use std::string::String;
use std::vec;
use std::vec::Vec;

/// `split_into` as it was before the one-pass scan: walk [`Members`], skipping each value
/// (kept as the reference).
fn reference<'j>(
    bytes: &'j [u8],
    keys: &[&str],
    out: &mut [Option<&'j [u8]>],
    max_depth: usize,
    unique: bool,
) -> Result<(), JsonError> {
    for member in Members::new(bytes, max_depth)? {
        let (key, value) = member?;
        for (slot, want) in out.iter_mut().zip(keys.iter()) {
            if key == *want {
                if unique && slot.is_some() {
                    return Err(JsonError::Syntax);
                }
                *slot = Some(value);
            }
        }
    }
    Ok(())
}

fn both(bytes: &[u8], keys: &[&str], depth: usize, unique: bool) {
    let mut ours = [None; 3];
    let mut theirs = [None; 3];
    let a = split_into(bytes, keys, &mut ours, depth, unique);
    let b = reference(bytes, keys, &mut theirs, depth, unique);
    assert_eq!(
        (a, ours),
        (b, theirs),
        "{:?} depth {depth} unique {unique}",
        String::from_utf8_lossy(bytes)
    );
}

/// JSON-ish bytes: the scanner's vocabulary (brackets, keys, scalars, strings, separators,
/// whitespace) in any order, plus arbitrary bytes.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"a\"",
            "\"b\"",
            "\"c\"",
            "\"a\":",
            "\"b\":",
            "1",
            "-2.5e3",
            "true",
            "null",
            "nope",
            "\"x\\\"y\"",
            "\"\\\\\"",
            "\"\u{e9}\"",
            "{\"a\":",
            "[[",
            "]]",
            "}}",
            "\t\n",
        ])
        .prop_map(|t| t.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 1..3),
    ];
    prop::collection::vec(token, 0..24).prop_map(|v| v.concat())
}

/// Well-formed JSON text built from the scanner's vocabulary, objects keyed by `a` to `d`.
fn json_value() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop::sample::select(vec![
        "1",
        "-2.5e3",
        "0",
        "true",
        "null",
        "\"x\"",
        "\"\u{e9}\"",
        "\"q\\\"r\"",
        "\"}\"",
    ])
    .prop_map(|t| t.as_bytes().to_vec());
    leaf.prop_recursive(5, 48, 4, |inner| {
        let key = prop::sample::select(vec!["a", "b", "c", "d"]);
        let ws = prop::sample::select(vec!["", " ", "\n\t"]);
        prop_oneof![
            prop::collection::vec((ws.clone(), inner.clone()), 0..4).prop_map(|items| {
                let parts: Vec<Vec<u8>> = items
                    .into_iter()
                    .map(|(w, v)| [w.as_bytes(), &v].concat())
                    .collect();
                [&b"["[..], &parts.join(&b","[..]), b"]"].concat()
            }),
            prop::collection::vec((key, ws, inner), 0..4).prop_map(|members| {
                let parts: Vec<Vec<u8>> = members
                    .into_iter()
                    .map(|(k, w, v)| [b"\"", k.as_bytes(), b"\":", w.as_bytes(), &v].concat())
                    .collect();
                [&b"{"[..], &parts.join(&b","[..]), b"}"].concat()
            }),
        ]
    })
}

/// A well-formed text, possibly damaged: a token inserted, the text cut, or bytes appended.
fn near_json() -> impl Strategy<Value = Vec<u8>> {
    (
        json_value(),
        jsonish(),
        any::<prop::sample::Index>(),
        0u8..4,
    )
        .prop_map(|(mut v, junk, at, how)| {
            let at = at.index(v.len() + 1);
            match how {
                0 => {}
                1 => {
                    v.splice(at..at, junk);
                }
                2 => v.truncate(at),
                _ => v.extend_from_slice(&junk),
            }
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]
    #[test]
    fn one_pass_split_is_members_walk(
        bytes in prop_oneof![jsonish(), near_json()],
        depth in 0usize..7,
        unique in any::<bool>(),
    ) {
        both(&bytes, &["a", "b", "c"], depth, unique);
    }

    /// On UTF-8 text, `split_str` gives what `split` gives (without checking keys again),
    /// and `as_raw_str`/`as_plain` what the byte versions gave.
    #[test]
    fn str_split_is_byte_split(
        bytes in prop_oneof![jsonish(), near_json()],
        depth in 0usize..7,
    ) {
        if let Ok(text) = core::str::from_utf8(&bytes) {
            let ours = split_str(text, &["a", "b", "c"], depth);
            let theirs = split(&bytes, ["a", "b", "c"], depth);
            let theirs = theirs.map(|v| v.map(|r| r.map(|r| core::str::from_utf8(r).unwrap())));
            prop_assert_eq!(ours, theirs);
            for raw in ours.iter().flatten().flatten() {
                let old = raw
                    .as_bytes()
                    .strip_prefix(b"\"")
                    .and_then(|r| r.strip_suffix(b"\""))
                    .map(|r| core::str::from_utf8(r).unwrap());
                prop_assert_eq!(as_raw_str(raw), old);
                prop_assert_eq!(as_plain(raw), as_plain_str(raw.as_bytes()));
            }
        }
    }
}

#[test]
fn one_pass_split_depth_limits() {
    // Around the bit stack's width: the object itself plus 64 nested values is the most.
    for n in [62, 63, 64, 65, 66] {
        let mut j = b"{\"a\":".to_vec();
        j.extend(std::iter::repeat_n(b'[', n));
        j.extend(std::iter::repeat_n(b']', n));
        j.extend_from_slice(b",\"b\":{\"c\":[]}}");
        for depth in [n, n + 1, n + 2, 64, 65, 66, 100, usize::MAX] {
            for unique in [false, true] {
                both(&j, &["a", "b"], depth, unique);
            }
        }
    }
    for j in [
        &br#"{"a":1,"a":{"x":[[[[1]]]]}}"#[..],
        br#"{"a":1,"a":2}"#,
        b"{\"\xff\":1}",
        br#"{"a":{"b":1}} {"#,
        br#" {} "#,
        br#"{"b":[1,{"a":2}],"a":"}"}"#,
    ] {
        for depth in 0..6 {
            for unique in [false, true] {
                both(j, &["a", "b"], depth, unique);
            }
        }
    }
}

#[test]
fn splits_envelopes() {
    let j =
        br#" {"state": {"a":{"b":[1,2,{"c":"}"}]}}, "version":7 ,"clientToken":"t-1","x":null} "#;
    let [s, v, t, m] = split(j, ["state", "version", "clientToken", "missing"], 8).unwrap();
    assert_eq!(s.unwrap(), br#"{"a":{"b":[1,2,{"c":"}"}]}}"#);
    assert_eq!(as_u64(v.unwrap()), Some(7));
    assert_eq!(as_plain_str(t.unwrap()), Some("t-1"));
    assert!(m.is_none());
}

#[test]
fn refuses_malformed() {
    for bad in [
        &b""[..],
        b"[]",
        b"{",
        b"{\"a\"}",
        b"{\"a\":}",
        b"{\"a\":1,}",
        b"{,\"a\":1}",
        b"{\"a\":1 \"b\":2}",
        b"{\"a\":[1,]}",
        b"{\"a\":[1}",
        b"{\"a\":{\"b\"]}",
        b"{\"a\":{1:2}}",
        b"{\"a\":\"x}",
        b"{\"a\":1} x",
        b"{\"a\":nope}",
        b"{\"a\":\"\x01\"}",
    ] {
        assert!(
            split(bad, ["a"], 8).is_err(),
            "{:?}",
            core::str::from_utf8(bad)
        );
    }
}

#[test]
fn depth_limit() {
    let j = br#"{"a":{"b":{"c":1}}}"#;
    assert!(split(j, ["a"], 3).is_ok());
    assert_eq!(split(j, ["a"], 2), Err(JsonError::TooDeep));
    assert_eq!(split(b"{}", ["a"], 0), Err(JsonError::TooDeep));
}

#[test]
fn bits_and_backslashes() {
    for i in 0..64 {
        assert_eq!(bit(i), 1u64 << i, "{i}");
    }
    assert_eq!(bit(64), 0);
    assert_eq!(bit(usize::MAX), 0);
    assert!(has_backslash("a\\b"));
    assert!(!has_backslash("a/b"));
}

#[test]
fn scalars() {
    assert_eq!(as_u64(b"0"), Some(0));
    assert_eq!(as_u64(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(as_u64(b"18446744073709551616"), None);
    assert_eq!(as_u64(b"01"), None);
    assert_eq!(as_u64(b"-1"), None);
    assert_eq!(as_u64(b"1.0"), None);
    assert_eq!(as_plain_str(br#""a\"b""#), None);
    assert_eq!(as_plain_str(b"1"), None);
    assert_eq!(as_raw_str("\""), None);
    assert_eq!(as_raw_str("\"\""), Some(""));
    assert_eq!(as_raw_str("\"é\\\"\""), Some("é\\\""));
    assert_eq!(as_plain("\"a\\\"b\""), None);
    assert_eq!(as_plain("\"t-1\""), Some("t-1"));
    assert!(is_null(b"null"));
}
