//! [`Topic::parse`], written over bytes.
//!
//! Levels are found by scanning for the byte `/` and compared as byte strings: no `char`
//! patterns (`split`, `split_once`, which link a UTF-8 char searcher and `memchr`) and no UTF-8
//! decoding. The topic is a `&str` already and `/` is ASCII, so every level boundary found is a
//! char boundary. The fixed tails are compared against small tables in one loop instead of a
//! `match` on string patterns. What follows a level is compared with its `/`, against the same
//! pieces the builders write (`topic.rs`), so each fixed piece is in flash once (the parser's own
//! copies without the `/` cost the `core-only` probe 200 bytes). On thumbv7em at opt-level "z" this made the `core-only` probe
//! 392 bytes and the thermostat firmware 756 bytes smaller than the `split`-based parser it
//! replaced (BENCHMARKS.md, "no_std footprint"); that parser is kept in the tests below, and a
//! proptest checks that both give the same result for arbitrary strings.

use super::{
    EVENTS_THINGS, LIFECYCLE, MESSAGES_WILL, METHOD_REQ, METHOD_RESP, METHODS, PREFIX, PRESENCE,
    SHADOW_TAILS, SHADOWS_NAME, THING_TAILS, THINGS, Topic, TopicError, USER_THINGS, thing_id,
};
use crate::ids::{is_valid_method_name, is_valid_shadow_name};
use crate::limits::MAX_TOPIC_LEN;

/// The most levels after the thing id in a topic of `$iothub/things/{id}/` other than a Will
/// (`shadows/name/{shadow}/update/accepted`); anything with more is [`TopicError::UnknownShape`],
/// whatever its levels hold.
const MAX_THING_LEVELS: usize = 5;

/// Splits off the first level: `("a", Some("b/c"))` for `"a/b/c"`, `("a", None)` for `"a"`.
pub(super) fn split1(s: &str) -> (&str, Option<&str>) {
    // The rest [`split_keep`] gives starts with the `/` found, so `get(1..)` is always `Some`.
    let (level, rest) = split_keep(s);
    (level, rest.and_then(|r| r.get(1..)))
}

/// Whether `rest` is a valid free-form tail: non-empty levels without wildcards or NUL.
pub(super) fn valid_rest(rest: &str) -> bool {
    // `prev` starts as a separator, so a leading `/` is an empty first level.
    let mut prev = b'/';
    for &b in rest.as_bytes() {
        if matches!(b, b'+' | b'#' | 0) || (b == b'/' && prev == b'/') {
            return false;
        }
        prev = b;
    }
    // Also false for an empty `rest` and a trailing `/`.
    prev != b'/'
}

/// Splits off the first level and keeps the separator with the rest: `("a", Some("/b/c"))` for
/// `"a/b/c"`, `("a", None)` for `"a"`. The rest is compared against the builders' own pieces,
/// which start with their `/` (one copy of each fixed piece in flash).
pub(super) fn split_keep(s: &str) -> (&str, Option<&str>) {
    match s
        .bytes()
        .position(|b| b == b'/')
        .and_then(|i| s.split_at_checked(i))
    {
        Some((level, rest)) => (level, Some(rest)),
        None => (s, None),
    }
}

impl<'a> Topic<'a> {
    /// Parses a PUBLISH topic name.
    ///
    /// Fails on anything that is not exactly one of the shapes of S-2 with valid ids and names,
    /// and on any topic longer than [`MAX_TOPIC_LEN`] bytes. Never panics, whatever the input.
    pub fn parse(topic: &'a str) -> Result<Topic<'a>, TopicError> {
        if topic.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong);
        }
        let (first, rest) = split_keep(topic);
        if first != PREFIX {
            return Err(TopicError::NotIothub);
        }
        let rest = rest.ok_or(TopicError::UnknownShape)?;
        if let Some(s) = rest.strip_prefix(THINGS) {
            return parse_thing(s);
        }
        if let Some(s) = rest.strip_prefix(EVENTS_THINGS) {
            let (id, tail) = split_keep(s);
            let thing = thing_id(id)?;
            return match tail {
                Some(PRESENCE) => Ok(Topic::PresenceEvent { thing }),
                Some(LIFECYCLE) => Ok(Topic::LifecycleEvent { thing }),
                _ => Err(TopicError::UnknownShape),
            };
        }
        if let Some(s) = rest.strip_prefix(USER_THINGS) {
            let (id, tail) = split1(s);
            let thing = thing_id(id)?;
            let rest = tail.ok_or(TopicError::UnknownShape)?;
            if !valid_rest(rest) {
                return Err(TopicError::InvalidLevel);
            }
            return Ok(Topic::User { thing, rest });
        }
        Err(TopicError::UnknownShape)
    }
}

/// Parses what follows `$iothub/things/`.
fn parse_thing(s: &str) -> Result<Topic<'_>, TopicError> {
    let (id, rest) = split_keep(s);
    let thing = thing_id(id)?;
    // `rest` starts with the `/` after the id.
    let rest = rest.ok_or(TopicError::UnknownShape)?;
    if let Some(will) = rest.strip_prefix(MESSAGES_WILL) {
        if will.is_empty() {
            return Ok(Topic::Will { thing, rest: "" });
        }
        if let Some(tail) = will.strip_prefix("/") {
            if !valid_rest(tail) {
                return Err(TopicError::InvalidLevel);
            }
            return Ok(Topic::Will { thing, rest: tail });
        }
        return Err(TopicError::UnknownShape);
    }
    // The `/` after the id counts too.
    let separators = rest.bytes().filter(|&b| b == b'/').count();
    if separators > MAX_THING_LEVELS {
        return Err(TopicError::UnknownShape);
    }
    if let Some(s) = rest.strip_prefix(SHADOWS_NAME) {
        let (shadow, tail) = split_keep(s);
        if !is_valid_shadow_name(shadow) {
            return Err(TopicError::InvalidShadowName);
        }
        let i = tail.and_then(|t| position(&SHADOW_TAILS, t));
        return match i {
            Some(0) => Ok(Topic::ShadowGet { thing, shadow }),
            Some(1) => Ok(Topic::ShadowGetAccepted { thing, shadow }),
            Some(2) => Ok(Topic::ShadowGetRejected { thing, shadow }),
            Some(3) => Ok(Topic::ShadowUpdate { thing, shadow }),
            Some(4) => Ok(Topic::ShadowUpdateAccepted { thing, shadow }),
            Some(5) => Ok(Topic::ShadowUpdateRejected { thing, shadow }),
            Some(6) => Ok(Topic::ShadowUpdateDelta { thing, shadow }),
            Some(7) => Ok(Topic::ShadowUpdateDocuments { thing, shadow }),
            _ => Err(TopicError::UnknownShape),
        };
    }
    if let Some(s) = rest.strip_prefix(METHODS) {
        // Exactly `methods/{method}/{dir}`: `dir` keeps its `/`, so one more is one too many.
        let (method, dir) = split_keep(s);
        let dir = dir.ok_or(TopicError::UnknownShape)?;
        if dir.bytes().filter(|&b| b == b'/').count() > 1 {
            return Err(TopicError::UnknownShape);
        }
        if !is_valid_method_name(method) {
            return Err(TopicError::InvalidMethodName);
        }
        return match dir {
            METHOD_REQ => Ok(Topic::MethodRequest { thing, method }),
            METHOD_RESP => Ok(Topic::MethodResponse { thing, method }),
            _ => Err(TopicError::UnknownShape),
        };
    }
    match position(&THING_TAILS, rest) {
        Some(0) => Ok(Topic::NtpRequest { thing }),
        Some(1) => Ok(Topic::NtpResponse { thing }),
        Some(2) => Ok(Topic::OtaTask { thing }),
        Some(3) => Ok(Topic::OtaTaskResult { thing }),
        Some(4) => Ok(Topic::Property { thing }),
        Some(5) => Ok(Topic::Presence { thing }),
        _ => Err(TopicError::UnknownShape),
    }
}

/// The index of `s` in `table`.
fn position(table: &[&str], s: &str) -> Option<usize> {
    table.iter().position(|t| *t == s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::string::String;

    /// The `split`-based parser this module replaced, kept verbatim as the reference.
    mod reference {
        use super::super::super::{PREFIX, Topic, TopicError, thing_id};
        use crate::ids::{is_valid_method_name, is_valid_shadow_name};
        use crate::limits::MAX_TOPIC_LEN;

        /// Splits off the first level: `("a", Some("b/c"))` for `"a/b/c"`, `("a", None)` for `"a"`.
        fn split1(s: &str) -> (&str, Option<&str>) {
            match s.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (s, None),
            }
        }

        /// Whether `rest` is a valid free-form tail: non-empty levels without wildcards or NUL.
        fn valid_rest(rest: &str) -> bool {
            !rest.is_empty()
                && rest
                    .split('/')
                    .all(|l| !l.is_empty() && !l.bytes().any(|b| matches!(b, b'+' | b'#' | 0)))
        }

        /// Parses a PUBLISH topic name.
        ///
        /// Fails on anything that is not exactly one of the shapes of S-2 with valid ids and names,
        /// and on any topic longer than [`MAX_TOPIC_LEN`] bytes. Never panics, whatever the input.
        pub(in super::super) fn parse<'a>(topic: &'a str) -> Result<Topic<'a>, TopicError> {
            if topic.len() > MAX_TOPIC_LEN {
                return Err(TopicError::TooLong);
            }
            let (first, rest) = split1(topic);
            if first != PREFIX {
                return Err(TopicError::NotIothub);
            }
            let rest = rest.ok_or(TopicError::UnknownShape)?;
            let (kind, rest) = split1(rest);
            let rest = rest.ok_or(TopicError::UnknownShape)?;
            match kind {
                "things" => parse_thing(rest),
                "events" => {
                    let (things, rest) = split1(rest);
                    if things != "things" {
                        return Err(TopicError::UnknownShape);
                    }
                    let (id, rest) = split1(rest.ok_or(TopicError::UnknownShape)?);
                    let thing = thing_id(id)?;
                    match rest {
                        Some("presence") => Ok(Topic::PresenceEvent { thing }),
                        Some("lifecycle") => Ok(Topic::LifecycleEvent { thing }),
                        _ => Err(TopicError::UnknownShape),
                    }
                }
                "user" => {
                    let (things, rest) = split1(rest);
                    if things != "things" {
                        return Err(TopicError::UnknownShape);
                    }
                    let (id, rest) = split1(rest.ok_or(TopicError::UnknownShape)?);
                    let thing = thing_id(id)?;
                    let rest = rest.ok_or(TopicError::UnknownShape)?;
                    if !valid_rest(rest) {
                        return Err(TopicError::InvalidLevel);
                    }
                    Ok(Topic::User { thing, rest })
                }
                _ => Err(TopicError::UnknownShape),
            }
        }

        /// Parses what follows `$iothub/things/`.
        fn parse_thing<'a>(s: &'a str) -> Result<Topic<'a>, TopicError> {
            let (id, rest) = split1(s);
            let thing = thing_id(id)?;
            let rest = rest.ok_or(TopicError::UnknownShape)?;
            if let Some(will) = rest.strip_prefix("messages/will") {
                if will.is_empty() {
                    return Ok(Topic::Will { thing, rest: "" });
                }
                if let Some(tail) = will.strip_prefix('/') {
                    if !valid_rest(tail) {
                        return Err(TopicError::InvalidLevel);
                    }
                    return Ok(Topic::Will { thing, rest: tail });
                }
                return Err(TopicError::UnknownShape);
            }
            let mut levels: [&str; 5] = [""; 5];
            let mut n = 0;
            for level in rest.split('/') {
                let slot = levels.get_mut(n).ok_or(TopicError::UnknownShape)?;
                *slot = level;
                n += 1;
            }
            match &levels[..n] {
                ["shadows", "name", shadow, tail @ ..] => {
                    let shadow = *shadow;
                    if !is_valid_shadow_name(shadow) {
                        return Err(TopicError::InvalidShadowName);
                    }
                    match tail {
                        ["get"] => Ok(Topic::ShadowGet { thing, shadow }),
                        ["get", "accepted"] => Ok(Topic::ShadowGetAccepted { thing, shadow }),
                        ["get", "rejected"] => Ok(Topic::ShadowGetRejected { thing, shadow }),
                        ["update"] => Ok(Topic::ShadowUpdate { thing, shadow }),
                        ["update", "accepted"] => Ok(Topic::ShadowUpdateAccepted { thing, shadow }),
                        ["update", "rejected"] => Ok(Topic::ShadowUpdateRejected { thing, shadow }),
                        ["update", "delta"] => Ok(Topic::ShadowUpdateDelta { thing, shadow }),
                        ["update", "documents"] => {
                            Ok(Topic::ShadowUpdateDocuments { thing, shadow })
                        }
                        _ => Err(TopicError::UnknownShape),
                    }
                }
                ["methods", method, dir] => {
                    let method = *method;
                    if !is_valid_method_name(method) {
                        return Err(TopicError::InvalidMethodName);
                    }
                    match *dir {
                        "req" => Ok(Topic::MethodRequest { thing, method }),
                        "resp" => Ok(Topic::MethodResponse { thing, method }),
                        _ => Err(TopicError::UnknownShape),
                    }
                }
                ["ntp", "req"] => Ok(Topic::NtpRequest { thing }),
                ["ntp", "resp"] => Ok(Topic::NtpResponse { thing }),
                ["ota", "task"] => Ok(Topic::OtaTask { thing }),
                ["ota", "task", "result"] => Ok(Topic::OtaTaskResult { thing }),
                ["messages", "property"] => Ok(Topic::Property { thing }),
                ["presence"] => Ok(Topic::Presence { thing }),
                _ => Err(TopicError::UnknownShape),
            }
        }
    }

    fn same(s: &str) -> Result<(), TestCaseError> {
        prop_assert_eq!(Topic::parse(s), reference::parse(s), "{:?}", s);
        Ok(())
    }

    /// Levels that make up the topics of S-2, plus near misses.
    const LEVELS: &str = "(things|user|events|shadows|name|default|get|update|accepted|rejected|\
        delta|documents|methods|ntp|ota|task|result|messages|will|willy|property|presence|\
        lifecycle|req|resp|t1|a:b|a\\.b|a b|\\+|#|\u{0}|é||x)";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn same_as_reference_on_arbitrary_strings(s in "\\PC{0,300}") {
            same(&s)?;
        }

        #[test]
        fn same_as_reference_on_near_topics(
            prefix in "(\\$iothub|\\$iothub/things|\\$iothub/things/t1|\\$iothub/user/things|\\$iothub/events/things|\\$iothubx|)",
            levels in proptest::collection::vec(LEVELS, 0..9),
            trailing in "(/|)",
        ) {
            let mut s = prefix;
            for l in &levels {
                s.push('/');
                s.push_str(l);
            }
            s.push_str(&trailing);
            same(&s)?;
            // The same levels straight after the thing id, where most shapes live.
            let t = String::from("$iothub/things/t1/") + &levels.join("/");
            same(&t)?;
        }

        #[test]
        fn same_as_reference_on_long_topics(n in 200usize..300, tail in "[a/]{0,4}") {
            let s = String::from("$iothub/user/things/t1/") + &"a".repeat(n) + &tail;
            same(&s)?;
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(split1("a/b/c"), ("a", Some("b/c")));
        assert_eq!(split1("a"), ("a", None));
        assert_eq!(split1("/"), ("", Some("")));
        assert_eq!(split1("é/x"), ("é", Some("x")));
        assert_eq!(split_keep("a/b/c"), ("a", Some("/b/c")));
        assert_eq!(split_keep("a"), ("a", None));
        assert_eq!(split_keep("/"), ("", Some("/")));
        for ok in ["a", "a/b", "é/$ x"] {
            assert!(valid_rest(ok), "{ok}");
        }
        for bad in ["", "/", "a/", "/a", "a//b", "a/+", "a#", "a\u{0}b"] {
            assert!(!valid_rest(bad), "{bad:?}");
        }
    }
}
