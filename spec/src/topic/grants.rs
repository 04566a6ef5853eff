//! S-2.1's allow-list of one thing written as broker ACL patterns (MQTT topic filters), for a
//! broker the hub does not run itself: Mosquitto's dynamic-security roles, or any broker whose
//! ACLs are lists of filters (D-59 in docs/spec.md).
//!
//! A filter cannot say everything [`acl`](super::acl) says, so the patterns are as narrow as MQTT
//! filters allow and wider only at the free levels: a shadow or method name level is `+` (any
//! level, also an invalid name, which the hub then ignores as a request it cannot parse), and a
//! free tail under `T/messages/will` or `$iothub/user/things/{id}` may hold an empty level. The
//! thing-id level is never a wildcard, so no pattern reaches another thing's topics.

use super::{PREFIX, TopicError, TopicString};
use crate::ids::is_valid_thing_id;

/// What a [`Grant`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Publishing on topics the pattern matches.
    Publish,
    /// Subscribing to filters that lie inside the pattern.
    Subscribe,
}

/// One ACL entry: an access and the MQTT topic filter it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Publish or subscribe.
    pub access: Access,
    /// The topic filter the access is granted on.
    pub pattern: TopicString,
}

/// How many grants [`grants`] returns: one per S-2.1 publish topic and two subscribe trees.
pub const GRANTS_PER_THING: usize = 10;

/// The filters of every device request the hub consumes ([`Topic::is_hub_request`]), for any
/// thing: a hub on an external broker subscribes to them as one shared subscription group, so
/// each request reaches exactly one hub instance.
///
/// [`Topic::is_hub_request`]: super::Topic::is_hub_request
pub const HUB_REQUEST_FILTERS: [&str; 5] = [
    "$iothub/things/+/shadows/name/+/get",
    "$iothub/things/+/shadows/name/+/update",
    "$iothub/things/+/methods/+/resp",
    "$iothub/things/+/ntp/req",
    "$iothub/things/+/ota/task/result",
];

/// The whole hub namespace as one filter: what the hub itself publishes and subscribes in on an
/// external broker.
pub const HUB_NAMESPACE_FILTER: &str = "$iothub/#";

/// Publish patterns below `$iothub/things/{id}/` (S-2.1's publish list).
const PUBLISH_BELOW_T: [&str; 7] = [
    "shadows/name/+/get",
    "shadows/name/+/update",
    "methods/+/resp",
    "ntp/req",
    "ota/task/result",
    "messages/property",
    "messages/will/#",
];

/// The broker ACL patterns of thing `thing_id`: everything it may publish and the two trees it
/// may subscribe in (`T/#`, `$iothub/user/things/{id}/#`). Everything else stays denied, so a
/// broker whose default is deny gives the thing S-2.1's allow-list.
///
/// The user-topic publish pattern is `$iothub/user/things/{id}/+/#`, which (unlike `.../#`) does
/// not match the bare `$iothub/user/things/{id}` (D-7). Fails with
/// [`TopicError::InvalidThingId`] for an id that is not one of S-1.1.
pub fn grants(thing_id: &str) -> Result<heapless::Vec<Grant, GRANTS_PER_THING>, TopicError> {
    if !is_valid_thing_id(thing_id) {
        return Err(TopicError::InvalidThingId);
    }
    let mut out = heapless::Vec::new();
    let mut push = |access, parts: &[&str]| -> Result<(), TopicError> {
        let mut pattern = TopicString::new();
        for part in parts {
            pattern.push_str(part).map_err(|()| TopicError::TooLong)?;
        }
        out.push(Grant { access, pattern })
            .map_err(|_| TopicError::BufferTooSmall)
    };
    for tail in PUBLISH_BELOW_T {
        push(Access::Publish, &[PREFIX, "/things/", thing_id, "/", tail])?;
    }
    push(
        Access::Publish,
        &[PREFIX, "/user/things/", thing_id, "/+/#"],
    )?;
    push(Access::Subscribe, &[PREFIX, "/things/", thing_id, "/#"])?;
    push(
        Access::Subscribe,
        &[PREFIX, "/user/things/", thing_id, "/#"],
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::acl::{may_publish, may_subscribe};
    use crate::topic::{filter_matches, is_valid_filter};
    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn patterns(thing: &str, access: Access) -> Vec<String> {
        grants(thing)
            .unwrap()
            .iter()
            .filter(|g| g.access == access)
            .map(|g| g.pattern.as_str().to_string())
            .collect()
    }

    fn granted(thing: &str, topic: &str) -> bool {
        patterns(thing, Access::Publish)
            .iter()
            .any(|p| filter_matches(p, topic))
    }

    #[test]
    fn every_pattern_is_a_filter_pinned_to_the_thing() {
        let all = grants("t1").unwrap();
        assert_eq!(all.len(), GRANTS_PER_THING);
        for g in &all {
            assert!(is_valid_filter(&g.pattern), "{}", g.pattern);
            assert!(
                g.pattern.starts_with("$iothub/things/t1/")
                    || g.pattern.starts_with("$iothub/user/things/t1/"),
                "{}",
                g.pattern
            );
        }
    }

    /// Written from S-2's table by hand: the patterns agree with the allow-list on every topic
    /// of the contract, own and foreign.
    #[test]
    fn publish_patterns_agree_with_the_allow_list() {
        let tails = [
            "shadows/name/default/get",
            "shadows/name/x:y/update",
            "shadows/name/default/get/accepted",
            "shadows/name/default/update/delta",
            "shadows/name/default/update/documents",
            "methods/reboot/resp",
            "methods/reboot/req",
            "ntp/req",
            "ntp/resp",
            "ota/task",
            "ota/task/result",
            "messages/property",
            "messages/will",
            "messages/will/last/words",
            "presence",
        ];
        for thing in ["t1", "t2"] {
            for tail in tails {
                let topic = format!("$iothub/things/{thing}/{tail}");
                assert_eq!(granted("t1", &topic), may_publish("t1", &topic), "{topic}");
            }
            for tail in ["a", "a/b/c"] {
                let topic = format!("$iothub/user/things/{thing}/{tail}");
                assert_eq!(granted("t1", &topic), may_publish("t1", &topic), "{topic}");
            }
        }
        for topic in [
            "$iothub/user/things/t1",
            "$iothub/events/things/t1/presence",
            "$iothub/events/things/t1/lifecycle",
            "$iothub/things/t10/ntp/req",
        ] {
            assert!(!granted("t1", topic), "{topic}");
            assert!(!may_publish("t1", topic), "{topic}");
        }
    }

    #[test]
    fn subscribe_trees_are_the_things_own() {
        let subs = patterns("t1", Access::Subscribe);
        assert_eq!(subs, ["$iothub/things/t1/#", "$iothub/user/things/t1/#"]);
        // What the trees contain is what the allow-list lets a thing subscribe to.
        for filter in ["$iothub/things/t1/#", "$iothub/user/things/t1/x/+"] {
            assert!(may_subscribe("t1", filter, false), "{filter}");
        }
        for filter in ["$iothub/things/t2/#", "$iothub/things/+/ntp/resp"] {
            assert!(!subs.iter().any(|p| p == filter), "{filter}");
            assert!(!may_subscribe("t1", filter, false), "{filter}");
        }
    }

    #[test]
    fn request_filters_match_requests_only() {
        use crate::topic::Topic;
        let topics = [
            "$iothub/things/t1/shadows/name/default/get",
            "$iothub/things/t1/shadows/name/default/update",
            "$iothub/things/t1/shadows/name/default/update/delta",
            "$iothub/things/t1/shadows/name/default/get/accepted",
            "$iothub/things/t1/methods/reboot/resp",
            "$iothub/things/t1/methods/reboot/req",
            "$iothub/things/t1/ntp/req",
            "$iothub/things/t1/ntp/resp",
            "$iothub/things/t1/ota/task/result",
            "$iothub/things/t1/ota/task",
            "$iothub/things/t1/messages/property",
            "$iothub/user/things/t1/ntp/req",
        ];
        for topic in topics {
            let request = Topic::parse(topic).is_ok_and(|t| t.is_hub_request());
            let matching = HUB_REQUEST_FILTERS
                .iter()
                .filter(|f| filter_matches(f, topic))
                .count();
            assert_eq!(matching, usize::from(request), "{topic}");
            assert!(filter_matches(HUB_NAMESPACE_FILTER, topic), "{topic}");
        }
    }

    #[test]
    fn invalid_ids_get_no_grants() {
        for id in ["", "a/b", "+", "#", "a b"] {
            assert_eq!(grants(id), Err(TopicError::InvalidThingId), "{id:?}");
        }
    }
}
