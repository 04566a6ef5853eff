//! Subscription filters: the filters a device subscribes to ([`Filter`]) and the MQTT filter
//! rules a broker applies (well-formedness, matching, the thing a filter or topic belongs to and
//! the S-2.1 subscribe allow-list).

use core::fmt;

use super::parse::split1;
use super::{
    PREFIX, Pieces, SHADOWS_NAME, THINGS, Topic, TopicError, TopicString, fmt_pieces, thing_id,
    to_topic_string, write_pieces,
};
use crate::ids::{is_valid_shadow_name, is_valid_thing_id};
use crate::limits::MAX_TOPIC_LEN;

/// The subscription filters a device needs (S-2), built without allocation.
///
/// A device subscribes to these after every (re)connect, before its first request, so that no
/// reply is lost. `ShadowUpdateReplies` covers accepted, rejected, delta and documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Filter<'a> {
    /// `S/get/+`: get/accepted and get/rejected of one shadow.
    ShadowGetReplies {
        /// The thing id.
        thing: &'a str,
        /// The shadow name.
        shadow: &'a str,
    },
    /// `S/update/+`: update/accepted, rejected, delta and documents of one shadow.
    ShadowUpdateReplies {
        /// The thing id.
        thing: &'a str,
        /// The shadow name.
        shadow: &'a str,
    },
    /// `T/methods/+/req`: every direct-method call.
    MethodRequests {
        /// The thing id.
        thing: &'a str,
    },
    /// `T/ntp/resp`: NTP answers.
    NtpResponse {
        /// The thing id.
        thing: &'a str,
    },
    /// `T/ota/task`: OTA tasks.
    OtaTask {
        /// The thing id.
        thing: &'a str,
    },
}

impl<'a> Filter<'a> {
    /// The filters a device subscribes to for one shadow plus methods, NTP and OTA, in the order
    /// the SDKs subscribe.
    pub fn all_for(thing: &'a str, shadow: &'a str) -> [Filter<'a>; 5] {
        [
            Filter::ShadowGetReplies { thing, shadow },
            Filter::ShadowUpdateReplies { thing, shadow },
            Filter::MethodRequests { thing },
            Filter::NtpResponse { thing },
            Filter::OtaTask { thing },
        ]
    }

    /// The thing the filter belongs to.
    pub fn thing(&self) -> &'a str {
        match *self {
            Filter::ShadowGetReplies { thing, .. }
            | Filter::ShadowUpdateReplies { thing, .. }
            | Filter::MethodRequests { thing }
            | Filter::NtpResponse { thing }
            | Filter::OtaTask { thing } => thing,
        }
    }

    /// Whether the filter matches `topic` (MQTT matching for these fixed shapes).
    pub fn matches(&self, topic: &Topic<'_>) -> bool {
        match (*self, *topic) {
            (
                Filter::ShadowGetReplies { thing, shadow },
                Topic::ShadowGetAccepted {
                    thing: t,
                    shadow: s,
                }
                | Topic::ShadowGetRejected {
                    thing: t,
                    shadow: s,
                },
            ) => thing == t && shadow == s,
            (
                Filter::ShadowUpdateReplies { thing, shadow },
                Topic::ShadowUpdateAccepted {
                    thing: t,
                    shadow: s,
                }
                | Topic::ShadowUpdateRejected {
                    thing: t,
                    shadow: s,
                }
                | Topic::ShadowUpdateDelta {
                    thing: t,
                    shadow: s,
                }
                | Topic::ShadowUpdateDocuments {
                    thing: t,
                    shadow: s,
                },
            ) => thing == t && shadow == s,
            (Filter::MethodRequests { thing }, Topic::MethodRequest { thing: t, .. })
            | (Filter::NtpResponse { thing }, Topic::NtpResponse { thing: t })
            | (Filter::OtaTask { thing }, Topic::OtaTask { thing: t }) => thing == t,
            _ => false,
        }
    }

    /// Builds the filter into `buf`, validating the id and shadow name; see [`Topic::write_to`].
    pub fn write_to<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, TopicError> {
        self.validate()?;
        write_pieces(&self.pieces(), buf)
    }

    /// Builds the filter into a [`TopicString`], validating it.
    pub fn to_topic_string(&self) -> Result<TopicString, TopicError> {
        self.validate()?;
        to_topic_string(&self.pieces())
    }

    fn validate(&self) -> Result<(), TopicError> {
        thing_id(self.thing())?;
        match *self {
            Filter::ShadowGetReplies { shadow, .. }
            | Filter::ShadowUpdateReplies { shadow, .. }
                if !is_valid_shadow_name(shadow) =>
            {
                Err(TopicError::InvalidShadowName)
            }
            _ => Ok(()),
        }
    }
}

impl<'a> Filter<'a> {
    /// The pieces of the filter string (see [`Pieces`]).
    fn pieces(&self) -> Pieces<'a> {
        const T: &str = THINGS;
        const S: &str = SHADOWS_NAME;
        match *self {
            Filter::ShadowGetReplies { thing, shadow } => [PREFIX, T, thing, S, shadow, "/get/+"],
            Filter::ShadowUpdateReplies { thing, shadow } => {
                [PREFIX, T, thing, S, shadow, "/update/+"]
            }
            Filter::MethodRequests { thing } => [PREFIX, T, thing, "/methods/+/req", "", ""],
            Filter::NtpResponse { thing } => [PREFIX, T, thing, "/ntp/resp", "", ""],
            Filter::OtaTask { thing } => [PREFIX, T, thing, "/ota/task", "", ""],
        }
    }
}

impl fmt::Display for Filter<'_> {
    /// Writes the filter without validating it; use [`Filter::write_to`] for untrusted parts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_pieces(&self.pieces(), f)
    }
}

/// Whether `filter` is a well-formed MQTT topic filter: non-empty, at most [`MAX_TOPIC_LEN`]
/// bytes, no NUL, `#` only as the whole last level and `+` only as a whole level.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !is_last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// The thing a topic filter is confined to: the id level of `$iothub/things/{id}/...` or
/// `$iothub/user/things/{id}/...`, when that level is a valid thing id (so no wildcard in it or
/// before it). `None` for filters that may match several things' topics, such as a service
/// user's `$iothub/things/+/presence` or `#`. Does not check the rest of the filter.
pub fn filter_thing(filter: &str) -> Option<&str> {
    let (id, _) = split_thing_level(filter)?;
    is_valid_thing_id(id).then_some(id)
}

/// The thing a topic *name* belongs to: the id level of `$iothub/things/{id}/...` or
/// `$iothub/user/things/{id}/...` (or of the bare `$iothub/things/{id}`), when that level is a
/// valid thing id; the rest of the topic is not checked.
///
/// It is the counterpart of [`filter_thing`] for brokers that index subscriptions by thing: a
/// filter confined to thing `x` (`filter_thing(f) == Some(x)`) matches only topic names with
/// `topic_thing(name) == Some(x)`, so the filters to try for a topic are those of its thing
/// (plus the filters that are not confined to one thing).
pub fn topic_thing(topic: &str) -> Option<&str> {
    // A topic name has no wildcards, so the rule for filters reads the same level.
    filter_thing(topic)
}

/// Whether the topic filter `filter` matches the topic name `topic` (MQTT 3.1.1 section 4.7,
/// MQTT 5 section 4.7): levels compared as strings, `+` matches exactly one level (an empty one
/// too), a trailing `#` matches the rest including no level at all (`a/#` matches `a`), and a
/// filter starting with a wildcard does not match a topic starting with `$`.
///
/// `filter` should be well-formed ([`is_valid_filter`]) and `topic` a topic name without
/// wildcards; for other input the answer is unspecified, but it never panics.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            _ => return false,
        }
    }
}

/// Whether the thing `thing_id` may subscribe to `filter` (S-2.1).
///
/// True when `filter` is a well-formed MQTT filter ([`is_valid_filter`]) that lies strictly
/// inside `$iothub/things/{thing_id}/...` or `$iothub/user/things/{thing_id}/...`, with no
/// wildcard in or before the id level and no empty level after it; `+` and `#` are allowed after
/// the id (so `$iothub/things/{thing_id}/#` is allowed). Service users are not subject to it.
pub fn thing_may_subscribe(filter: &str, thing_id: &str) -> bool {
    if !is_valid_thing_id(thing_id) || !is_valid_filter(filter) {
        return false;
    }
    match split_thing_level(filter) {
        Some((id, Some(tail))) if id == thing_id => {
            !tail.is_empty() && tail.split('/').all(|l| !l.is_empty())
        }
        _ => false,
    }
}

/// `(id level, rest after it)` of a filter under `$iothub/things/` or `$iothub/user/things/`.
fn split_thing_level(filter: &str) -> Option<(&str, Option<&str>)> {
    let rest = filter.strip_prefix(PREFIX)?.strip_prefix('/')?;
    let below = rest
        .strip_prefix("things/")
        .or_else(|| rest.strip_prefix("user/things/"))?;
    Some(split1(below))
}
