//! The broker's allow-list decisions (S-1.5, S-2.1, D-33, D-35) as pure functions of the MQTT
//! user name and the topic or filter, so that every broker the hub runs on (the embedded one, an
//! external broker's authorization hook) decides exactly alike.

use super::provision::{Claim, claim_may_publish, claim_may_subscribe};
use super::{PREFIX, Topic, thing_may_subscribe};
use crate::ids::{is_claim_user, is_service_user};

/// Whether `topic` or `filter` lies in the hub's namespace, `$iothub/...` (S-1.5).
pub fn in_hub_namespace(topic_or_filter: &str) -> bool {
    topic_or_filter
        .strip_prefix(PREFIX)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether the client with user name `username` may publish on `topic`.
///
/// A service user (S-1.5) may publish anywhere under `$iothub/`; a thing only on its own
/// allow-list (S-2.1, [`Topic::thing_may_publish`]); a claim connection only its own
/// provisioning request (S-10.3).
pub fn may_publish(username: &str, topic: &str) -> bool {
    if is_claim_user(username) {
        return Claim::parse(username).is_some_and(|c| claim_may_publish(&c, topic));
    }
    if is_service_user(username) {
        return in_hub_namespace(topic);
    }
    Topic::parse(topic).is_ok_and(|t| t.thing_may_publish(username))
}

/// Whether the client with user name `username` may subscribe to `filter`; `shared` tells that
/// the client asked for it as `$share/{group}/{filter}` (`filter` is then without that prefix).
///
/// A service user may subscribe to any filter under `$iothub/`, shared or not (back ends split a
/// stream that way, MQTT 5 §4.8.2); a thing only to its own filters (S-2.1) and never shared
/// (D-35); a claim connection only to its own provisioning replies (S-10.3).
pub fn may_subscribe(username: &str, filter: &str, shared: bool) -> bool {
    if is_claim_user(username) {
        return Claim::parse(username).is_some_and(|c| claim_may_subscribe(&c, filter, shared));
    }
    if is_service_user(username) {
        return in_hub_namespace(filter);
    }
    !shared && thing_may_subscribe(filter, username)
}

/// The first level of a shared subscription's filter, `$share/{group}/{filter}` (MQTT 5 §4.8.2).
pub const SHARED_PREFIX: &str = "$share/";

/// Splits a SUBSCRIBE filter as the client sent it into the filter proper and whether it asked
/// for a shared subscription, for [`may_subscribe`]: `$share/{group}/{filter}` is
/// `({filter}, true)`, any other filter is `(filter, false)`.
///
/// A broker that strips the prefix itself (rmqtt) passes the stripped filter and its own flag
/// instead. A `$share/` filter without a group, with a wildcard in the group or without a
/// filter is malformed (MQTT 5 §4.8.2) and comes back whole, marked shared: no `$share/...`
/// filter is in the hub's namespace, so [`may_subscribe`] refuses it for everyone.
pub fn split_shared(filter: &str) -> (&str, bool) {
    let Some(rest) = filter.strip_prefix(SHARED_PREFIX) else {
        return (filter, false);
    };
    match rest.split_once('/') {
        Some((group, inner))
            if !group.is_empty() && !group.contains(['+', '#']) && !inner.is_empty() =>
        {
            (inner, true)
        }
        _ => (filter, true),
    }
}

/// Whether a CONNECT from `username` may carry a Will on `will_topic` (D-33): a broker publishes
/// a Will without asking the publish allow-list, so a thing's Will must already be on it
/// (`T/messages/will/#` or its other own topics). Service users are trusted back ends; a claim
/// connection has nothing to say in a Will (S-10.3).
pub fn may_set_will(username: &str, will_topic: &str) -> bool {
    if is_claim_user(username) {
        return false;
    }
    is_service_user(username) || may_publish(username, will_topic)
}

impl Topic<'_> {
    /// Whether the hub consumes this topic as a device request: a shadow get or update, a method
    /// response, an NTP request or an OTA task result. Everything else a client may publish
    /// (telemetry, Wills, user topics) travels as plain MQTT to its subscribers only.
    pub fn is_hub_request(&self) -> bool {
        matches!(
            self,
            Topic::ShadowGet { .. }
                | Topic::ShadowUpdate { .. }
                | Topic::MethodResponse { .. }
                | Topic::NtpRequest { .. }
                | Topic::OtaTaskResult { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_users_own_the_hub_namespace_and_nothing_else() {
        assert!(may_publish(
            "$backend",
            "$iothub/things/t1/shadows/name/default/update"
        ));
        assert!(may_publish("$backend", "$iothub/anything/at/all"));
        assert!(!may_publish("$backend", "other/topic"));
        assert!(!may_publish("$backend", "$iothubx/things/t1"));
        assert!(may_subscribe(
            "$backend",
            "$iothub/things/+/messages/property",
            false
        ));
        assert!(may_subscribe(
            "$backend",
            "$iothub/things/+/messages/property",
            true
        ));
        assert!(!may_subscribe("$backend", "#", false));
        assert!(may_set_will("$backend", "anything"));
    }

    #[test]
    fn things_keep_to_their_own_topics() {
        assert!(may_publish(
            "t1",
            "$iothub/things/t1/shadows/name/default/update"
        ));
        assert!(!may_publish(
            "t1",
            "$iothub/things/t2/shadows/name/default/update"
        ));
        assert!(!may_publish(
            "t1",
            "$iothub/things/t1/shadows/name/default/update/accepted"
        ));
        assert!(may_subscribe("t1", "$iothub/things/t1/#", false));
        assert!(!may_subscribe("t1", "$iothub/things/t1/#", true));
        assert!(!may_subscribe("t1", "$iothub/things/+/#", false));
        assert!(may_set_will("t1", "$iothub/things/t1/messages/will"));
        assert!(!may_set_will("t1", "$iothub/things/t2/messages/will"));
        assert!(!may_set_will("t1", "$iothub/things/t1/presence"));
    }

    #[test]
    fn claims_only_provision() {
        let claim = "$claim/e1/s1";
        assert!(may_publish(claim, "$iothub/provision/e1/s1/request"));
        assert!(!may_publish(claim, "$iothub/provision/e1/s2/request"));
        assert!(!may_publish(claim, "$iothub/things/s1/ntp/req"));
        assert!(!may_publish(claim, "$iothub/anything"));
        assert!(!may_publish("$claim/bad", "$iothub/provision/bad/request"));
        assert!(may_subscribe(
            claim,
            "$iothub/provision/e1/s1/accepted",
            false
        ));
        assert!(!may_subscribe(claim, "$iothub/#", false));
        assert!(!may_subscribe(
            claim,
            "$iothub/provision/e1/s1/accepted",
            true
        ));
        assert!(!may_set_will(claim, "$iothub/provision/e1/s1/request"));
        // A thing may not use the provisioning topics.
        assert!(!may_publish("s1", "$iothub/provision/e1/s1/request"));
        assert!(!may_subscribe(
            "s1",
            "$iothub/provision/e1/s1/accepted",
            false
        ));
    }

    #[test]
    fn shared_filters_split_into_group_filter_and_flag() {
        assert_eq!(
            split_shared("$share/g/$iothub/things/t1/#"),
            ("$iothub/things/t1/#", true)
        );
        assert_eq!(
            split_shared("$iothub/things/t1/#"),
            ("$iothub/things/t1/#", false)
        );
        // Malformed: whole and shared, so refused to everyone.
        for bad in [
            "$share/",
            "$share//$iothub/x",
            "$share/g",
            "$share/g/",
            "$share/+/$iothub/x",
        ] {
            assert_eq!(split_shared(bad), (bad, true), "{bad}");
            let (filter, shared) = split_shared(bad);
            assert!(!may_subscribe("$backend", filter, shared), "{bad}");
            assert!(!may_subscribe("t1", filter, shared), "{bad}");
        }
        // What the split feeds into: a service user's shared group, a thing's refused one (D-35).
        let (filter, shared) = split_shared("$share/g/$iothub/things/+/messages/property");
        assert!(may_subscribe("$backend", filter, shared));
        let (filter, shared) = split_shared("$share/g/$iothub/things/t1/#");
        assert!(!may_subscribe("t1", filter, shared));
    }

    #[test]
    fn only_requests_go_to_the_hub() {
        let requests = [
            "$iothub/things/t1/shadows/name/default/get",
            "$iothub/things/t1/shadows/name/default/update",
            "$iothub/things/t1/methods/reboot/resp",
            "$iothub/things/t1/ntp/req",
            "$iothub/things/t1/ota/task/result",
        ];
        for topic in requests {
            assert!(
                Topic::parse(topic).is_ok_and(|t| t.is_hub_request()),
                "{topic}"
            );
        }
        let plain = [
            "$iothub/things/t1/messages/property",
            "$iothub/things/t1/messages/will",
            "$iothub/user/things/t1/x",
            "$iothub/things/t1/shadows/name/default/update/accepted",
        ];
        for topic in plain {
            assert!(
                Topic::parse(topic).is_ok_and(|t| !t.is_hub_request()),
                "{topic}"
            );
        }
    }
}
