//! Topic names and filters of S-2: a parser ([`Topic::parse`]), builders ([`Topic::write_to`],
//! [`Filter::write_to`], `Display`) and the per-thing allow-list of S-2.1
//! ([`Topic::thing_may_publish`], [`thing_may_subscribe`]; a broker asks [`acl`], which adds the
//! service users' rule), and the MQTT helpers a broker needs
//! to index subscriptions by thing ([`filter_thing`], [`topic_thing`], [`filter_matches`]).
//!
//! With `T = $iothub/things/{thingId}` and `S = T/shadows/name/{shadowName}`:
//!
//! | variant | topic |
//! | --- | --- |
//! | [`Topic::ShadowGet`] · `Accepted` · `Rejected` | `S/get` · `S/get/accepted` · `S/get/rejected` |
//! | [`Topic::ShadowUpdate`] · `Accepted` · `Rejected` | `S/update` · `S/update/accepted` · `S/update/rejected` |
//! | [`Topic::ShadowUpdateDelta`] · [`Topic::ShadowUpdateDocuments`] | `S/update/delta` · `S/update/documents` |
//! | [`Topic::MethodRequest`] · [`Topic::MethodResponse`] | `T/methods/{method}/req` · `T/methods/{method}/resp` |
//! | [`Topic::NtpRequest`] · [`Topic::NtpResponse`] | `T/ntp/req` · `T/ntp/resp` |
//! | [`Topic::OtaTask`] · [`Topic::OtaTaskResult`] | `T/ota/task` · `T/ota/task/result` |
//! | [`Topic::Property`] | `T/messages/property` |
//! | [`Topic::Will`] | `T/messages/will` or `T/messages/will/{rest}` |
//! | [`Topic::Presence`] | `T/presence` |
//! | [`Topic::PresenceEvent`] · [`Topic::LifecycleEvent`] | `$iothub/events/things/{thingId}/presence` · `.../lifecycle` |
//! | [`Topic::User`] | `$iothub/user/things/{thingId}/{rest}` |
//!
//! The free-form `rest` of [`Topic::Will`] and [`Topic::User`] holds one or more non-empty levels
//! without `+`, `#` or NUL; `Will` also accepts an empty `rest` (the bare `T/messages/will`),
//! `User` does not.

use core::fmt;

use crate::ids::{is_valid_method_name, is_valid_shadow_name, is_valid_thing_id};
use crate::limits::MAX_TOPIC_LEN;

pub mod acl;
mod filter;
pub mod fleet;
pub mod grants;
mod parse;
pub mod provision;

pub use filter::{
    Filter, filter_matches, filter_thing, is_valid_filter, thing_may_subscribe, topic_thing,
};
use parse::valid_rest;

/// The first level of every topic of this spec.
pub const PREFIX: &str = "$iothub";

/// A topic string held without allocation; [`MAX_TOPIC_LEN`] bytes always suffice for a valid
/// topic or filter of this spec.
pub type TopicString = heapless::String<MAX_TOPIC_LEN>;

/// Why a topic or filter was refused or could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic does not start with `$iothub/`.
    NotIothub,
    /// The topic starts with `$iothub/` but has no shape of S-2.
    UnknownShape,
    /// The thing id level is not a valid thing id (S-1.1).
    InvalidThingId,
    /// The shadow name level is not a valid shadow name (S-2).
    InvalidShadowName,
    /// The method level is not a valid method name (S-5.1).
    InvalidMethodName,
    /// A free-form `will/` or `user/` tail is empty where it must not be, has an empty level, or
    /// holds `+`, `#` or NUL.
    InvalidLevel,
    /// The topic is longer than [`MAX_TOPIC_LEN`] bytes.
    TooLong,
    /// The caller's buffer cannot hold the topic.
    BufferTooSmall,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::NotIothub => "topic is not under $iothub/",
            TopicError::UnknownShape => "unknown $iothub topic",
            TopicError::InvalidThingId => "invalid thing id in topic",
            TopicError::InvalidShadowName => "invalid shadow name in topic",
            TopicError::InvalidMethodName => "invalid method name in topic",
            TopicError::InvalidLevel => "invalid free-form topic level",
            TopicError::TooLong => "topic too long",
            TopicError::BufferTooSmall => "buffer too small for topic",
        })
    }
}

impl core::error::Error for TopicError {}

/// A topic of S-2, parsed or about to be built; every field borrows from the topic string or
/// from the caller.
///
/// Hubs parse every PUBLISH topic with [`Topic::parse`] and route on the variant; devices and hubs
/// build the topics they publish with [`Topic::write_to`] (no heap) or `Display`/`to_string()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Topic<'a> {
    /// `S/get`: a thing asks for its shadow document (thing → hub).
    ShadowGet {
        /// The thing id.
        thing: &'a str,
        /// The shadow name.
        shadow: &'a str,
    },
    /// `S/get/accepted`: the shadow document (hub → thing).
    ShadowGetAccepted {
        /// The thing id.
        thing: &'a str,
        /// The shadow name.
        shadow: &'a str,
    },
    /// `S/get/rejected`: an error answering a get (hub → thing).
    ShadowGetRejected {
        /// The thing id.
        thing: &'a str,
        /// The shadow name.
        shadow: &'a str,
    },
    /// `S/update`: an update request (thing → hub).
    ShadowUpdate {
        /// The thing id.
        thing: &'a str,
        /// The shadow name.
        shadow: &'a str,
    },
    /// `S/update/accepted`: an update was stored (hub → thing).
    ShadowUpdateAccepted {
        /// The thing id.
        thing: &'a str,
        /// The shadow name.
        shadow: &'a str,
    },
    /// `S/update/rejected`: an error answering an update (hub → thing).
    ShadowUpdateRejected {
        /// The thing id.
        thing: &'a str,
        /// The shadow name.
        shadow: &'a str,
    },
    /// `S/update/delta`: the current delta after a change of desired (hub → thing).
    ShadowUpdateDelta {
        /// The thing id.
        thing: &'a str,
        /// The shadow name.
        shadow: &'a str,
    },
    /// `S/update/documents`: previous and current documents (hub → thing and service users).
    ShadowUpdateDocuments {
        /// The thing id.
        thing: &'a str,
        /// The shadow name.
        shadow: &'a str,
    },
    /// `T/methods/{method}/req`: a direct-method call (hub → thing).
    MethodRequest {
        /// The thing id.
        thing: &'a str,
        /// The method name.
        method: &'a str,
    },
    /// `T/methods/{method}/resp`: the device's answer (thing → hub).
    MethodResponse {
        /// The thing id.
        thing: &'a str,
        /// The method name.
        method: &'a str,
    },
    /// `T/ntp/req`: a time request (thing → hub).
    NtpRequest {
        /// The thing id.
        thing: &'a str,
    },
    /// `T/ntp/resp`: the time answer (hub → thing).
    NtpResponse {
        /// The thing id.
        thing: &'a str,
    },
    /// `T/ota/task`: an OTA task (hub → thing).
    OtaTask {
        /// The thing id.
        thing: &'a str,
    },
    /// `T/ota/task/result`: an OTA status report (thing → hub).
    OtaTaskResult {
        /// The thing id.
        thing: &'a str,
    },
    /// `T/messages/property`: telemetry (thing → hub → service users).
    Property {
        /// The thing id.
        thing: &'a str,
    },
    /// `T/messages/will` or `T/messages/will/{rest}`: the thing's MQTT Will, forwarded.
    Will {
        /// The thing id.
        thing: &'a str,
        /// Everything after `will/`, `""` for the bare `T/messages/will`.
        rest: &'a str,
    },
    /// `T/presence`: retained presence (hub → service users, S-8.1).
    Presence {
        /// The thing id.
        thing: &'a str,
    },
    /// `$iothub/events/things/{thingId}/presence`: presence event, not retained (S-8.1).
    PresenceEvent {
        /// The thing id.
        thing: &'a str,
    },
    /// `$iothub/events/things/{thingId}/lifecycle`: lifecycle event (S-8.3).
    LifecycleEvent {
        /// The thing id.
        thing: &'a str,
    },
    /// `$iothub/user/things/{thingId}/{rest}`: application-defined, both ways.
    User {
        /// The thing id.
        thing: &'a str,
        /// Everything after the id level; never empty.
        rest: &'a str,
    },
}

/// `s` as a thing id level, or [`TopicError::InvalidThingId`].
fn thing_id(s: &str) -> Result<&str, TopicError> {
    if is_valid_thing_id(s) {
        Ok(s)
    } else {
        Err(TopicError::InvalidThingId)
    }
}

// The fixed pieces of the topics, each with the `/` before it: one copy in flash, shared by
// the builders and the parser (`parse.rs` compares what follows a level with its `/` against
// these), instead of a copy with and one without the `/`.

/// `/things/`: after [`PREFIX`], before a thing id.
const THINGS: &str = "/things/";
/// `/events/things/`: after [`PREFIX`], before the thing id of an event.
const EVENTS_THINGS: &str = "/events/things/";
/// `/user/things/`: after [`PREFIX`], before the thing id of an application topic.
const USER_THINGS: &str = "/user/things/";
/// `/shadows/name/`: after the thing id, before a shadow name.
const SHADOWS_NAME: &str = "/shadows/name/";
/// `/methods/`: after the thing id, before a method name.
const METHODS: &str = "/methods/";
/// `/messages/will`: the bare Will topic's last levels.
const MESSAGES_WILL: &str = "/messages/will";
/// After a method name: a call.
const METHOD_REQ: &str = "/req";
/// After a method name: an answer.
const METHOD_RESP: &str = "/resp";
/// The last level of presence topics.
const PRESENCE: &str = "/presence";
/// The last level of lifecycle events.
const LIFECYCLE: &str = "/lifecycle";

/// What may follow a shadow name, in the order of the shadow variants (the parser finds a tail's
/// index in one loop over the table, smaller than a `match` on string patterns).
const SHADOW_TAILS: [&str; 8] = [
    "/get",
    "/get/accepted",
    "/get/rejected",
    "/update",
    "/update/accepted",
    "/update/rejected",
    "/update/delta",
    "/update/documents",
];

/// The shapes after the thing id without an id or name level, in the order the parser maps
/// them to variants.
const THING_TAILS: [&str; 6] = [
    "/ntp/req",
    "/ntp/resp",
    "/ota/task",
    "/ota/task/result",
    "/messages/property",
    PRESENCE,
];

/// A topic or filter as the pieces it is made of, in order; unused pieces are `""`.
///
/// Builders concatenate the pieces byte by byte, so building a topic needs no `core::fmt`
/// (which would cost a `no_std` device about 2 KB of flash).
type Pieces<'a> = [&'a str; 6];

/// Concatenates `pieces` into `buf` after checking the length against [`MAX_TOPIC_LEN`].
fn write_pieces<'b>(pieces: &[&str], buf: &'b mut [u8]) -> Result<&'b str, TopicError> {
    write_pieces_split(pieces, buf).map(|(topic, _)| topic)
}

/// Writes the pieces at the start of `buf`; returns them as one `&str` and the rest of `buf`.
fn write_pieces_split<'b>(
    pieces: &[&str],
    buf: &'b mut [u8],
) -> Result<(&'b str, &'b mut [u8]), TopicError> {
    let len = pieces.iter().fold(0usize, |n, p| n.saturating_add(p.len()));
    if len > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let (out, rest) = buf
        .split_at_mut_checked(len)
        .ok_or(TopicError::BufferTooSmall)?;
    let bytes = pieces.iter().flat_map(|p| p.bytes());
    // `out` holds exactly the bytes of the pieces; a zip has no length-mismatch panic path.
    out.iter_mut().zip(bytes).for_each(|(d, b)| *d = b);
    let topic = core::str::from_utf8(out).map_err(|_| TopicError::BufferTooSmall)?;
    Ok((topic, rest))
}

fn to_topic_string(pieces: &[&str]) -> Result<TopicString, TopicError> {
    let mut buf = [0u8; MAX_TOPIC_LEN];
    let s = write_pieces(pieces, &mut buf)?;
    TopicString::try_from(s).map_err(|_| TopicError::TooLong)
}

/// Writes the pieces to a formatter (the `Display` impls).
fn fmt_pieces(pieces: &[&str], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    pieces.iter().try_for_each(|p| f.write_str(p))
}

impl<'a> Topic<'a> {
    /// The thing the topic belongs to.
    pub fn thing(&self) -> &'a str {
        match *self {
            Topic::ShadowGet { thing, .. }
            | Topic::ShadowGetAccepted { thing, .. }
            | Topic::ShadowGetRejected { thing, .. }
            | Topic::ShadowUpdate { thing, .. }
            | Topic::ShadowUpdateAccepted { thing, .. }
            | Topic::ShadowUpdateRejected { thing, .. }
            | Topic::ShadowUpdateDelta { thing, .. }
            | Topic::ShadowUpdateDocuments { thing, .. }
            | Topic::MethodRequest { thing, .. }
            | Topic::MethodResponse { thing, .. }
            | Topic::NtpRequest { thing }
            | Topic::NtpResponse { thing }
            | Topic::OtaTask { thing }
            | Topic::OtaTaskResult { thing }
            | Topic::Property { thing }
            | Topic::Will { thing, .. }
            | Topic::Presence { thing }
            | Topic::PresenceEvent { thing }
            | Topic::LifecycleEvent { thing }
            | Topic::User { thing, .. } => thing,
        }
    }

    /// The shadow name, for the eight shadow topics.
    pub fn shadow(&self) -> Option<&'a str> {
        match *self {
            Topic::ShadowGet { shadow, .. }
            | Topic::ShadowGetAccepted { shadow, .. }
            | Topic::ShadowGetRejected { shadow, .. }
            | Topic::ShadowUpdate { shadow, .. }
            | Topic::ShadowUpdateAccepted { shadow, .. }
            | Topic::ShadowUpdateRejected { shadow, .. }
            | Topic::ShadowUpdateDelta { shadow, .. }
            | Topic::ShadowUpdateDocuments { shadow, .. } => Some(shadow),
            _ => None,
        }
    }

    /// The method name, for method requests and responses.
    pub fn method(&self) -> Option<&'a str> {
        match *self {
            Topic::MethodRequest { method, .. } | Topic::MethodResponse { method, .. } => {
                Some(method)
            }
            _ => None,
        }
    }

    /// The variant's name (`"ShadowUpdate"`, `"Will"`, ...), as used by `spec/vectors/topics.json`
    /// and handy for metrics labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Topic::ShadowGet { .. } => "ShadowGet",
            Topic::ShadowGetAccepted { .. } => "ShadowGetAccepted",
            Topic::ShadowGetRejected { .. } => "ShadowGetRejected",
            Topic::ShadowUpdate { .. } => "ShadowUpdate",
            Topic::ShadowUpdateAccepted { .. } => "ShadowUpdateAccepted",
            Topic::ShadowUpdateRejected { .. } => "ShadowUpdateRejected",
            Topic::ShadowUpdateDelta { .. } => "ShadowUpdateDelta",
            Topic::ShadowUpdateDocuments { .. } => "ShadowUpdateDocuments",
            Topic::MethodRequest { .. } => "MethodRequest",
            Topic::MethodResponse { .. } => "MethodResponse",
            Topic::NtpRequest { .. } => "NtpRequest",
            Topic::NtpResponse { .. } => "NtpResponse",
            Topic::OtaTask { .. } => "OtaTask",
            Topic::OtaTaskResult { .. } => "OtaTaskResult",
            Topic::Property { .. } => "Property",
            Topic::Will { .. } => "Will",
            Topic::Presence { .. } => "Presence",
            Topic::PresenceEvent { .. } => "PresenceEvent",
            Topic::LifecycleEvent { .. } => "LifecycleEvent",
            Topic::User { .. } => "User",
        }
    }

    /// The `accepted` reply topic of a shadow request (`S/get` → `S/get/accepted`,
    /// `S/update` → `S/update/accepted`); `None` for any other topic.
    pub fn accepted(&self) -> Option<Topic<'a>> {
        match *self {
            Topic::ShadowGet { thing, shadow } => Some(Topic::ShadowGetAccepted { thing, shadow }),
            Topic::ShadowUpdate { thing, shadow } => {
                Some(Topic::ShadowUpdateAccepted { thing, shadow })
            }
            _ => None,
        }
    }

    /// The `rejected` reply topic of a shadow request (`S/get` → `S/get/rejected`,
    /// `S/update` → `S/update/rejected`); `None` for any other topic.
    pub fn rejected(&self) -> Option<Topic<'a>> {
        match *self {
            Topic::ShadowGet { thing, shadow } => Some(Topic::ShadowGetRejected { thing, shadow }),
            Topic::ShadowUpdate { thing, shadow } => {
                Some(Topic::ShadowUpdateRejected { thing, shadow })
            }
            _ => None,
        }
    }

    /// The topic that answers this request topic: `S/get`/`S/update` → their `accepted` topic (use
    /// [`Topic::rejected`] for errors), `T/methods/{m}/req` → `T/methods/{m}/resp`, and
    /// `T/ntp/req` → `T/ntp/resp`; `None` for any other topic.
    pub fn reply(&self) -> Option<Topic<'a>> {
        match *self {
            Topic::MethodRequest { thing, method } => Some(Topic::MethodResponse { thing, method }),
            Topic::NtpRequest { thing } => Some(Topic::NtpResponse { thing }),
            _ => self.accepted(),
        }
    }

    /// Whether the thing `thing_id` may publish on this topic (S-2.1 allow-list).
    ///
    /// True only for the thing's own `S/get`, `S/update`, `T/methods/+/resp`, `T/ntp/req`,
    /// `T/ota/task/result`, `T/messages/property`, `T/messages/will/#` and
    /// `$iothub/user/things/{ownId}/#`. Service users ([`crate::ids::is_service_user`]) are not
    /// subject to it; the hub checks that first.
    pub fn thing_may_publish(&self, thing_id: &str) -> bool {
        let allowed = matches!(
            self,
            Topic::ShadowGet { .. }
                | Topic::ShadowUpdate { .. }
                | Topic::MethodResponse { .. }
                | Topic::NtpRequest { .. }
                | Topic::OtaTaskResult { .. }
                | Topic::Property { .. }
                | Topic::Will { .. }
                | Topic::User { .. }
        );
        allowed && self.thing() == thing_id
    }

    /// Builds the topic into `buf` and returns it as a `&str` borrowed from `buf`.
    ///
    /// Validates the ids, names and free-form tails as [`Topic::parse`] does, so
    /// `Topic::parse(t.write_to(buf)?) == Ok(t)`. Fails with [`TopicError::TooLong`] over
    /// [`MAX_TOPIC_LEN`] and [`TopicError::BufferTooSmall`] when `buf` is short; a buffer of
    /// [`MAX_TOPIC_LEN`] bytes always suffices.
    pub fn write_to<'b>(&self, buf: &'b mut [u8]) -> Result<&'b str, TopicError> {
        self.validate()?;
        write_pieces(&self.pieces(), buf)
    }

    /// [`Topic::write_to`], also handing back the rest of `buf` after the topic: where a
    /// PUBLISH's payload goes when a driver lays out topic and payload in one buffer (no second
    /// borrow of `buf`, no second UTF-8 check of the topic).
    pub fn write_to_split<'b>(
        &self,
        buf: &'b mut [u8],
    ) -> Result<(&'b str, &'b mut [u8]), TopicError> {
        self.validate()?;
        write_pieces_split(&self.pieces(), buf)
    }

    /// Builds the topic into a [`TopicString`], validating it as [`Topic::write_to`] does.
    pub fn to_topic_string(&self) -> Result<TopicString, TopicError> {
        self.validate()?;
        to_topic_string(&self.pieces())
    }

    /// Checks the ids, names and free-form tails of a topic built by hand.
    pub fn validate(&self) -> Result<(), TopicError> {
        thing_id(self.thing())?;
        if let Some(shadow) = self.shadow()
            && !is_valid_shadow_name(shadow)
        {
            return Err(TopicError::InvalidShadowName);
        }
        if let Some(method) = self.method()
            && !is_valid_method_name(method)
        {
            return Err(TopicError::InvalidMethodName);
        }
        match *self {
            Topic::Will { rest, .. } if !rest.is_empty() && !valid_rest(rest) => {
                Err(TopicError::InvalidLevel)
            }
            Topic::User { rest, .. } if !valid_rest(rest) => Err(TopicError::InvalidLevel),
            _ => Ok(()),
        }
    }
}

impl<'a> Topic<'a> {
    /// The pieces of the topic string (see [`Pieces`]): `PREFIX`, the path to the id, the id,
    /// the path to the name, the shadow/method name or free-form tail, and the fixed last levels.
    ///
    /// Written as two small matches over the variant rather than one arm per variant building
    /// the whole array (measured smaller on thumbv7em: BENCHMARKS.md, "no_std footprint").
    fn pieces(&self) -> Pieces<'a> {
        const T: &str = THINGS;
        let (to_id, to_name, name) = match *self {
            Topic::ShadowGet { shadow, .. }
            | Topic::ShadowGetAccepted { shadow, .. }
            | Topic::ShadowGetRejected { shadow, .. }
            | Topic::ShadowUpdate { shadow, .. }
            | Topic::ShadowUpdateAccepted { shadow, .. }
            | Topic::ShadowUpdateRejected { shadow, .. }
            | Topic::ShadowUpdateDelta { shadow, .. }
            | Topic::ShadowUpdateDocuments { shadow, .. } => (T, SHADOWS_NAME, shadow),
            Topic::MethodRequest { method, .. } | Topic::MethodResponse { method, .. } => {
                (T, METHODS, method)
            }
            Topic::Will { rest: "", .. } => (T, MESSAGES_WILL, ""),
            Topic::Will { rest, .. } => (T, "/messages/will/", rest),
            Topic::PresenceEvent { .. } | Topic::LifecycleEvent { .. } => (EVENTS_THINGS, "", ""),
            Topic::User { rest, .. } => (USER_THINGS, "/", rest),
            _ => (T, "", ""),
        };
        [PREFIX, to_id, self.thing(), to_name, name, self.tail()]
    }

    /// The fixed levels that end the topic (`""` for [`Topic::Will`] and [`Topic::User`]).
    fn tail(&self) -> &'static str {
        match self {
            Topic::ShadowGet { .. } => SHADOW_TAILS[0],
            Topic::ShadowGetAccepted { .. } => SHADOW_TAILS[1],
            Topic::ShadowGetRejected { .. } => SHADOW_TAILS[2],
            Topic::ShadowUpdate { .. } => SHADOW_TAILS[3],
            Topic::ShadowUpdateAccepted { .. } => SHADOW_TAILS[4],
            Topic::ShadowUpdateRejected { .. } => SHADOW_TAILS[5],
            Topic::ShadowUpdateDelta { .. } => SHADOW_TAILS[6],
            Topic::ShadowUpdateDocuments { .. } => SHADOW_TAILS[7],
            Topic::MethodRequest { .. } => METHOD_REQ,
            Topic::MethodResponse { .. } => METHOD_RESP,
            Topic::NtpRequest { .. } => THING_TAILS[0],
            Topic::NtpResponse { .. } => THING_TAILS[1],
            Topic::OtaTask { .. } => THING_TAILS[2],
            Topic::OtaTaskResult { .. } => THING_TAILS[3],
            Topic::Property { .. } => THING_TAILS[4],
            Topic::Presence { .. } | Topic::PresenceEvent { .. } => PRESENCE,
            Topic::LifecycleEvent { .. } => LIFECYCLE,
            Topic::Will { .. } | Topic::User { .. } => "",
        }
    }
}

impl fmt::Display for Topic<'_> {
    /// Writes the topic string without validating it; use [`Topic::write_to`] to build a topic
    /// from untrusted parts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_pieces(&self.pieces(), f)
    }
}

#[cfg(test)]
mod tests;
