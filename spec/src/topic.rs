//! Topic names and filters of S-2: a parser ([`Topic::parse`]), builders ([`Topic::write_to`],
//! [`Filter::write_to`], `Display`) and the per-thing allow-list of S-2.1
//! ([`Topic::thing_may_publish`], [`thing_may_subscribe`]), and the MQTT helpers a broker needs
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

mod parse;

use parse::{split1, valid_rest};

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
        const T: &str = "/things/";
        let (to_id, to_name, name) = match *self {
            Topic::ShadowGet { shadow, .. }
            | Topic::ShadowGetAccepted { shadow, .. }
            | Topic::ShadowGetRejected { shadow, .. }
            | Topic::ShadowUpdate { shadow, .. }
            | Topic::ShadowUpdateAccepted { shadow, .. }
            | Topic::ShadowUpdateRejected { shadow, .. }
            | Topic::ShadowUpdateDelta { shadow, .. }
            | Topic::ShadowUpdateDocuments { shadow, .. } => (T, "/shadows/name/", shadow),
            Topic::MethodRequest { method, .. } | Topic::MethodResponse { method, .. } => {
                (T, "/methods/", method)
            }
            Topic::Will { rest: "", .. } => (T, "/messages/will", ""),
            Topic::Will { rest, .. } => (T, "/messages/will/", rest),
            Topic::PresenceEvent { .. } | Topic::LifecycleEvent { .. } => {
                ("/events/things/", "", "")
            }
            Topic::User { rest, .. } => ("/user/things/", "/", rest),
            _ => (T, "", ""),
        };
        [PREFIX, to_id, self.thing(), to_name, name, self.tail()]
    }

    /// The fixed levels that end the topic (`""` for [`Topic::Will`] and [`Topic::User`]).
    fn tail(&self) -> &'static str {
        match self {
            Topic::ShadowGet { .. } => "/get",
            Topic::ShadowGetAccepted { .. } => "/get/accepted",
            Topic::ShadowGetRejected { .. } => "/get/rejected",
            Topic::ShadowUpdate { .. } => "/update",
            Topic::ShadowUpdateAccepted { .. } => "/update/accepted",
            Topic::ShadowUpdateRejected { .. } => "/update/rejected",
            Topic::ShadowUpdateDelta { .. } => "/update/delta",
            Topic::ShadowUpdateDocuments { .. } => "/update/documents",
            Topic::MethodRequest { .. } => "/req",
            Topic::MethodResponse { .. } => "/resp",
            Topic::NtpRequest { .. } => "/ntp/req",
            Topic::NtpResponse { .. } => "/ntp/resp",
            Topic::OtaTask { .. } => "/ota/task",
            Topic::OtaTaskResult { .. } => "/ota/task/result",
            Topic::Property { .. } => "/messages/property",
            Topic::Presence { .. } | Topic::PresenceEvent { .. } => "/presence",
            Topic::LifecycleEvent { .. } => "/lifecycle",
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
        const T: &str = "/things/";
        const S: &str = "/shadows/name/";
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

#[cfg(test)]
mod tests;
