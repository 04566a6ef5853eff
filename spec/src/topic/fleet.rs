//! The fleet-wide filters a back end subscribes to as a service user (S-1.5, D-81): one filter
//! per stream of the fleet, each matching that stream's topic for every thing, and the
//! `$share/{group}/{filter}` form that splits a stream between several back-end processes
//! (S-2.8, D-35, D-80).
//!
//! | constant | matches |
//! | --- | --- |
//! | [`TELEMETRY`] | [`Topic::Property`](super::Topic::Property) |
//! | [`USER_MESSAGES`] | [`Topic::User`](super::Topic::User) |
//! | [`SHADOW_DOCUMENTS`] | [`Topic::ShadowUpdateDocuments`](super::Topic::ShadowUpdateDocuments) |
//! | [`PRESENCE`] | [`Topic::Presence`](super::Topic::Presence) (retained) |
//! | [`PRESENCE_EVENTS`] | [`Topic::PresenceEvent`](super::Topic::PresenceEvent) |
//! | [`LIFECYCLE_EVENTS`] | [`Topic::LifecycleEvent`](super::Topic::LifecycleEvent) |
//! | [`WILLS`] | [`Topic::Will`](super::Topic::Will) |

use super::acl::SHARED_PREFIX;
use super::{TopicError, TopicString, is_valid_filter, write_pieces};

/// Telemetry of every thing: `$iothub/things/+/messages/property`.
pub const TELEMETRY: &str = "$iothub/things/+/messages/property";
/// Application messages of every thing, both ways: `$iothub/user/things/+/#`.
pub const USER_MESSAGES: &str = "$iothub/user/things/+/#";
/// Every shadow change of every thing, previous and current document (S-3.7):
/// `$iothub/things/+/shadows/name/+/update/documents`.
pub const SHADOW_DOCUMENTS: &str = "$iothub/things/+/shadows/name/+/update/documents";
/// Retained presence of every thing (S-8.1): `$iothub/things/+/presence`.
pub const PRESENCE: &str = "$iothub/things/+/presence";
/// Presence events, not retained (S-8.1): `$iothub/events/things/+/presence`.
pub const PRESENCE_EVENTS: &str = "$iothub/events/things/+/presence";
/// Lifecycle events (S-8.3): `$iothub/events/things/+/lifecycle`.
pub const LIFECYCLE_EVENTS: &str = "$iothub/events/things/+/lifecycle";
/// Forwarded Wills (D-33): `$iothub/things/+/messages/will/#` (also the bare `T/messages/will`).
pub const WILLS: &str = "$iothub/things/+/messages/will/#";

/// Every fleet filter above, in the order of the table.
pub const ALL: [&str; 7] = [
    TELEMETRY,
    USER_MESSAGES,
    SHADOW_DOCUMENTS,
    PRESENCE,
    PRESENCE_EVENTS,
    LIFECYCLE_EVENTS,
    WILLS,
];

/// Whether `group` may name a shared subscription group: non-empty, no `/`, `+`, `#` or NUL
/// (MQTT 5 §4.8.2).
pub fn is_valid_share_group(group: &str) -> bool {
    !group.is_empty() && !group.contains(['/', '+', '#', '\0'])
}

/// Writes `$share/{group}/{filter}` into `buf`: the SUBSCRIBE filter that makes the client one
/// member of shared group `group` for `filter` (S-2.8). The hub grants it to service users with
/// the ACL of `filter` (D-80); [`split_shared`](super::acl::split_shared) takes it apart again.
///
/// Fails with [`TopicError::InvalidLevel`] for a group [`is_valid_share_group`] refuses or a
/// filter that is not well-formed, [`TopicError::TooLong`] beyond `MAX_TOPIC_LEN` bytes and
/// [`TopicError::BufferTooSmall`] when `buf` is shorter than the result.
pub fn write_shared<'b>(
    group: &str,
    filter: &str,
    buf: &'b mut [u8],
) -> Result<&'b str, TopicError> {
    if !is_valid_share_group(group) || !is_valid_filter(filter) {
        return Err(TopicError::InvalidLevel);
    }
    write_pieces(&[SHARED_PREFIX, group, "/", filter], buf)
}

/// [`write_shared`] into a [`TopicString`].
pub fn shared(group: &str, filter: &str) -> Result<TopicString, TopicError> {
    let mut buf = [0u8; crate::limits::MAX_TOPIC_LEN];
    let s = write_shared(group, filter, &mut buf)?;
    TopicString::try_from(s).map_err(|_| TopicError::TooLong)
}

#[cfg(test)]
mod tests {
    use super::super::acl::{may_subscribe, split_shared};
    use super::super::{Topic, filter_matches};
    use super::*;

    /// One topic of each stream, built by the topic builders (not spelled here).
    fn samples() -> [(&'static str, Topic<'static>); 8] {
        [
            (TELEMETRY, Topic::Property { thing: "t1" }),
            (
                USER_MESSAGES,
                Topic::User {
                    thing: "t1",
                    rest: "a/b",
                },
            ),
            (
                SHADOW_DOCUMENTS,
                Topic::ShadowUpdateDocuments {
                    thing: "t1",
                    shadow: "default",
                },
            ),
            (PRESENCE, Topic::Presence { thing: "t1" }),
            (PRESENCE_EVENTS, Topic::PresenceEvent { thing: "t1" }),
            (LIFECYCLE_EVENTS, Topic::LifecycleEvent { thing: "t1" }),
            (
                WILLS,
                Topic::Will {
                    thing: "t1",
                    rest: "",
                },
            ),
            (
                WILLS,
                Topic::Will {
                    thing: "t1",
                    rest: "gone",
                },
            ),
        ]
    }

    #[test]
    fn each_filter_matches_its_stream_and_no_other() {
        let mut buf = [0u8; 256];
        for (filter, topic) in samples() {
            let name = topic.write_to(&mut buf).expect("topic");
            for other in ALL {
                assert_eq!(
                    filter_matches(other, name),
                    other == filter,
                    "{other} against {name}"
                );
            }
            assert_eq!(
                Topic::parse(name).map(|t| t.thing()),
                Ok("t1"),
                "{name} parses"
            );
        }
        // Requests to the hub and its replies to one thing are not fleet streams.
        let (thing, shadow, method) = ("t1", "default", "reboot");
        for t in [
            Topic::ShadowGet { thing, shadow },
            Topic::ShadowGetAccepted { thing, shadow },
            Topic::ShadowGetRejected { thing, shadow },
            Topic::ShadowUpdate { thing, shadow },
            Topic::ShadowUpdateAccepted { thing, shadow },
            Topic::ShadowUpdateRejected { thing, shadow },
            Topic::ShadowUpdateDelta { thing, shadow },
            Topic::MethodRequest { thing, method },
            Topic::MethodResponse { thing, method },
            Topic::NtpRequest { thing },
            Topic::NtpResponse { thing },
            Topic::OtaTask { thing },
            Topic::OtaTaskResult { thing },
        ] {
            let name = t.write_to(&mut buf).expect("topic");
            assert!(ALL.iter().all(|f| !filter_matches(f, name)), "{name}");
        }
    }

    #[test]
    fn shared_filters_round_trip_and_service_users_only() {
        for filter in ALL {
            assert!(is_valid_filter(filter), "{filter}");
            let s = shared("backend", filter).expect("shared");
            assert_eq!(split_shared(&s), (filter, true));
            assert!(may_subscribe("$svc", filter, true), "{filter}");
            assert!(!may_subscribe("t1", filter, true), "{filter}");
        }
        for bad in ["", "a/b", "a+", "#", "a\0"] {
            assert_eq!(
                shared(bad, TELEMETRY),
                Err(TopicError::InvalidLevel),
                "{bad:?}"
            );
        }
        assert_eq!(shared("g", "a/#/b"), Err(TopicError::InvalidLevel));
        let mut small = [0u8; 8];
        assert_eq!(
            write_shared("g", TELEMETRY, &mut small),
            Err(TopicError::BufferTooSmall)
        );
    }
}
