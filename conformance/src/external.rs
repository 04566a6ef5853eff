//! `hub --external-broker`: what changes when the hub under test runs on a broker it does not run
//! (docs/spec.md D-59 to D-66, e.g. Mosquitto 2.0 with dynamic security).
//!
//! Three things change, each because the contract says so, and nothing else is relaxed:
//! - **Denials are the broker's own** (D-59, S-2.2 describes the embedded broker): a refused
//!   SUBSCRIBE may carry any SUBACK failure code, a refused PUBLISH any PUBACK or a closed
//!   connection. That nothing reaches another thing, and that a refused PUBLISH reaches no
//!   subscriber, is still required ([`Denials`]).
//! - **The allow-list is ACL patterns** (D-59, `iothub_spec::topic::grants`): where a pattern
//!   says less than S-2.1 at a free level (an empty level in a free tail, the bare `T`), the
//!   broker may grant what S-2.1 refuses; such a vector is not judged ([`acl_expectation`]).
//!   The thing-id level is never a wildcard, so no cross-thing vector is affected.
//! - **Some cases cannot apply** ([`NOT_APPLICABLE`]): they check what only a hub that runs the
//!   broker can do. They are reported skipped with the reason, so an expected-results file
//!   records them.

use iothub_spec::topic::grants::{Access, grants};
use iothub_spec::topic::{filter_matches, is_valid_filter};

use crate::case::Case;

/// Who answers a SUBSCRIBE or PUBLISH outside the allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Denials {
    /// The hub's own broker, with the codes of S-2.2.
    #[default]
    Hub,
    /// A broker the hub does not run: any refusal, in the broker's own way (D-59).
    Broker,
}

/// What an allow-list vector expects of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclExpectation {
    /// Granted (SUBSCRIBE) or acknowledged and delivered (PUBLISH).
    Allowed,
    /// Refused, nothing delivered.
    Denied,
    /// Refused by S-2.1 but inside the thing's own D-59 patterns: either is right.
    Either,
}

/// The expectation for one vector: `allowed` is S-2.1's verdict (`topics.json`); on an external
/// broker a vector S-2.1 refuses but the thing's D-59 patterns cover may go either way.
pub fn acl_expectation(
    denials: Denials,
    allowed: bool,
    thing: &str,
    topic_or_filter: &str,
    subscribe: bool,
) -> AclExpectation {
    if allowed {
        return AclExpectation::Allowed;
    }
    let covered = if subscribe {
        broker_may_subscribe(thing, topic_or_filter)
    } else {
        broker_may_publish(thing, topic_or_filter)
    };
    match denials {
        Denials::Broker if covered => AclExpectation::Either,
        _ => AclExpectation::Denied,
    }
}

/// Whether `thing`'s D-59 publish patterns match the topic name `topic` (no wildcards).
pub fn broker_may_publish(thing: &str, topic: &str) -> bool {
    if topic.contains(['+', '#']) {
        return false;
    }
    grants(thing).is_ok_and(|gs| {
        gs.iter()
            .any(|g| g.access == Access::Publish && filter_matches(&g.pattern, topic))
    })
}

/// Whether the well-formed `filter` lies inside one of `thing`'s D-59 subscribe trees
/// (`T/#`, `$iothub/user/things/{id}/#`): equal to the tree's root or below it. MQTT's `X/#`
/// also matches `X` itself, which is why the bare `T` passes such a broker.
pub fn broker_may_subscribe(thing: &str, filter: &str) -> bool {
    if filter.is_empty() || !is_valid_filter(filter) {
        return false;
    }
    grants(thing).is_ok_and(|gs| {
        gs.iter()
            .filter(|g| g.access == Access::Subscribe)
            .filter_map(|g| g.pattern.strip_suffix("/#"))
            .any(|root| {
                filter == root
                    || filter
                        .strip_prefix(root)
                        .is_some_and(|rest| rest.starts_with('/'))
            })
    })
}

/// Cases that cannot apply to a hub on a broker it does not run, with the reason. The first
/// ones check limits the embedded broker enforces on the MQTT connection itself, which a hub
/// outside the broker cannot: the broker's own configuration decides them.
pub const NOT_APPLICABLE: &[(&str, &str)] = &[
    (
        "s2_subscription_cap_v311",
        "S-2.9's maxSubscriptions is enforced by the embedded broker; the external broker \
         answers every SUBSCRIBE itself (Mosquitto 2.0 has no per-client subscription cap)",
    ),
    (
        "s2_subscription_cap_v5",
        "S-2.9's maxSubscriptions is enforced by the embedded broker; the external broker \
         answers every SUBSCRIBE itself (Mosquitto 2.0 has no per-client subscription cap)",
    ),
    (
        "s2_retained_cap_v5",
        "S-2.4's 16 retained topics per thing are counted by the embedded broker; the external \
         broker keeps retained messages itself (Mosquitto 2.0 has no per-client cap)",
    ),
    (
        "s2_topic_alias_refused_v5",
        "S-2.6's Topic Alias Maximum 0 is the embedded broker's; the external broker announces \
         its own (Mosquitto 2.0: max_topic_alias, 10 by default)",
    ),
    (
        "s2_shared_subscription_service_users_v5",
        "D-80: shared groups of service users are the embedded broker's; Mosquitto 2.0.11 refuses \
         $share/{group}/$iothub/... under the service role of docs/running-at-scale.md, and does \
         not deliver topics starting with $ to a group where a role grants it",
    ),
    (
        "s8_restart_durable_and_disconnected",
        "D-62: the case starts a second hub of its own, on a database of its own; that hub's \
         start-up reconciliation would remove the broker accounts of the things of the hub under \
         test (hubs share a broker only with a shared database, D-73)",
    ),
    (
        "s10_provision_then_connect_v311",
        "D-61: claim connections (S-10) are not served on an external broker",
    ),
    (
        "s10_provision_then_connect_v5",
        "D-61: claim connections (S-10) are not served on an external broker",
    ),
    (
        "s10_claim_may_only_provision",
        "D-61: claim connections (S-10) are not served on an external broker",
    ),
    (
        "s10_refusals_and_reprovisioning",
        "D-61: claim connections (S-10) are not served on an external broker",
    ),
];

/// `all` with every case of [`NOT_APPLICABLE`] turned into a skip carrying its reason.
pub fn without_not_applicable<C: Send + Sync + 'static>(all: Vec<Case<C>>) -> Vec<Case<C>> {
    all.into_iter()
        .map(
            |c| match NOT_APPLICABLE.iter().find(|(id, _)| *id == c.id) {
                Some((_, reason)) => {
                    let clauses: Vec<&str> = c.clauses.iter().map(String::as_str).collect();
                    Case::pending(c.id.clone(), &clauses, c.title.clone(), reason)
                }
                None => c,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patterns_cover_own_trees_only() {
        for filter in [
            "$iothub/things/t1",
            "$iothub/things/t1/",
            "$iothub/things/t1/#",
            "$iothub/user/things/t1",
            "$iothub/user/things/t1/a//b",
        ] {
            assert!(broker_may_subscribe("t1", filter), "{filter}");
        }
        for filter in [
            "",
            "#",
            "$iothub/#",
            "$iothub/things/+/ntp/resp",
            "$iothub/things/t10/#",
            "$iothub/things/t1/ntp#",
            "$iothub/user/things/+/#",
            "$share/g/$iothub/things/t1/#",
        ] {
            assert!(!broker_may_subscribe("t1", filter), "{filter}");
        }
        assert!(broker_may_publish(
            "t1",
            "$iothub/things/t1/shadows/name/x:y/update"
        ));
        assert!(!broker_may_publish("t1", "$iothub/things/t1/ntp/#"));
        assert!(!broker_may_publish("t10", "$iothub/things/t1/ntp/req"));
        assert!(!broker_may_publish("t1", "$iothub/things/t1/ota/task"));
    }

    #[test]
    fn only_an_external_broker_gets_the_leniency() {
        let f = "$iothub/things/t1";
        assert_eq!(
            acl_expectation(Denials::Hub, false, "t1", f, true),
            AclExpectation::Denied
        );
        assert_eq!(
            acl_expectation(Denials::Broker, false, "t1", f, true),
            AclExpectation::Either
        );
        assert_eq!(
            acl_expectation(Denials::Broker, false, "t1", "$iothub/things/t2/#", true),
            AclExpectation::Denied
        );
        assert_eq!(
            acl_expectation(Denials::Broker, true, "t1", "$iothub/things/t1/#", true),
            AclExpectation::Allowed
        );
    }

    #[test]
    fn not_applicable_cases_exist() {
        let all = crate::cases::all();
        for (id, _) in NOT_APPLICABLE {
            assert!(all.iter().any(|c| c.id == *id), "{id} is not a case");
        }
        let skipped = without_not_applicable(all);
        assert!(
            skipped
                .iter()
                .filter(|c| NOT_APPLICABLE.iter().any(|(id, _)| *id == c.id))
                .all(|c| c.run.is_none())
        );
    }
}
