//! Retained messages (S-2.4): the hub's `T/presence` (S-2.3, S-8.1) and the retained messages
//! published on a thing's free topics `$iothub/user/things/{thingId}/…`, at most
//! [`MAX_RETAINED_PER_THING`] of those per thing.
//!
//! rmqtt keeps retained messages only through a plugin; this small store keeps exactly what
//! docs/spec.md allows. Only topics that parse as `Topic::Presence` or `Topic::User` are kept, so
//! nobody can grow it with retained publishes elsewhere (on a request topic the retain flag has
//! no effect: requests are commands to the hub, not state), and each thing holds at most one
//! presence message and [`MAX_RETAINED_PER_THING`] user messages. The cap is checked before a
//! PUBLISH is accepted ([`would_exceed_cap`], from the publish hook) so the client gets PUBACK
//! 0x97 rather than a closed connection; `set` enforces it again.
//!
//! The messages sit in a map keyed by thing id rather than in rmqtt's `RetainTree`: the tree
//! spent two nodes with a hash table each per thing (~1.6 KB, heaptrack), the map one entry.
//! A filter confined to one thing (`iothub_spec::topic::filter_thing`: every thing's own
//! subscriptions) is answered with one lookup; only filters that may match several things
//! (service users' `+`/`#` subscriptions) walk the map.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use iothub_spec::limits::MAX_RETAINED_PER_THING;
use iothub_spec::topic::Topic as SpecTopic;
use rmqtt::Result;
use rmqtt::retain::RetainStorage;
use rmqtt::topic::Topic;
use rmqtt::types::{Retain, TopicFilter, TopicName};

/// What one thing has retained.
#[derive(Default)]
struct ThingRetained {
    presence: Option<Retain>,
    /// Full topic name → message, for `$iothub/user/things/{thingId}/…`.
    user: BTreeMap<String, Retain>,
}

impl ThingRetained {
    fn is_empty(&self) -> bool {
        self.presence.is_none() && self.user.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &Retain> {
        self.presence.iter().chain(self.user.values())
    }
}

/// Which slot of its thing a retained topic goes to.
enum Slot<'a> {
    Presence(&'a str),
    User(&'a str),
}

fn slot(topic: &str) -> Option<Slot<'_>> {
    match SpecTopic::parse(topic) {
        Ok(SpecTopic::Presence { thing }) => Some(Slot::Presence(thing)),
        Ok(SpecTopic::User { thing, .. }) => Some(Slot::User(thing)),
        _ => None,
    }
}

/// The retained-message store of the embedded broker: thing id → what it has retained.
#[derive(Default)]
pub struct HubRetainer {
    by_thing: RwLock<HashMap<String, ThingRetained>>,
}

/// For a topic of a thing's free space (`$iothub/user/things/{thingId}/…`), the filter that
/// covers all of that thing's free topics (the topic up to its id level, then `/#`).
pub(crate) fn user_space_filter(topic: &str) -> Option<TopicFilter> {
    let Some(Slot::User(thing)) = slot(topic) else {
        return None;
    };
    // `thing` borrows from `topic`, so its end is an offset into it.
    let end = (thing.as_ptr() as usize - topic.as_ptr() as usize) + thing.len();
    Some(TopicFilter::from(format!("{}/#", topic.get(..end)?)))
}

/// Whether a retained PUBLISH of a non-empty message on `topic` would put a thing over
/// [`MAX_RETAINED_PER_THING`], given the thing's retained user topics `existing` (as returned
/// for the filter `$iothub/user/things/{thingId}/#`). Replacing or deleting never does.
pub(crate) fn would_exceed_cap(topic: &str, empty_payload: bool, existing: &[TopicName]) -> bool {
    matches!(slot(topic), Some(Slot::User(_)))
        && !empty_payload
        && existing.len() >= MAX_RETAINED_PER_THING
        && !existing.iter().any(|t| t.as_ref() as &str == topic)
}

#[async_trait]
impl RetainStorage for HubRetainer {
    fn enable(&self) -> bool {
        true
    }

    async fn set(
        &self,
        topic: &TopicName,
        retain: Retain,
        _expiry: Option<Duration>,
    ) -> Result<()> {
        let Some(slot) = slot(topic) else {
            return Ok(());
        };
        let mut map = self
            .by_thing
            .write()
            .map_err(|_| anyhow::anyhow!("retain store poisoned"))?;
        let clear = retain.publish.payload.is_empty();
        let thing = match slot {
            Slot::Presence(thing) | Slot::User(thing) => thing,
        };
        if clear && !map.contains_key(thing) {
            return Ok(());
        }
        let entry = map.entry(thing.to_owned()).or_default();
        match (slot, clear) {
            (Slot::Presence(_), true) => entry.presence = None,
            (Slot::Presence(_), false) => entry.presence = Some(retain),
            (Slot::User(_), true) => {
                entry.user.remove(topic.as_ref() as &str);
            }
            (Slot::User(_), false) => {
                let known = entry.user.contains_key(topic.as_ref() as &str);
                if !known && entry.user.len() >= MAX_RETAINED_PER_THING {
                    // The publish hook refused this already; a racing second publish lands here.
                    return Err(anyhow::anyhow!("retained message quota of {thing} reached"));
                }
                entry.user.insert(topic.to_string(), retain);
            }
        }
        if entry.is_empty() {
            map.remove(thing);
        }
        Ok(())
    }

    async fn get(&self, topic_filter: &TopicFilter) -> Result<Vec<(TopicName, Retain)>> {
        let filter = Topic::from_str(topic_filter)?;
        let map = self
            .by_thing
            .read()
            .map_err(|_| anyhow::anyhow!("retain store poisoned"))?;
        let matching = |retain: &&Retain| filter.matches_str::<str>(&retain.publish.topic);
        let found: Vec<&Retain> = match iothub_spec::topic::filter_thing(topic_filter) {
            Some(thing) => map
                .get(thing)
                .into_iter()
                .flat_map(ThingRetained::iter)
                .filter(matching)
                .collect(),
            None => map
                .values()
                .flat_map(ThingRetained::iter)
                .filter(matching)
                .collect(),
        };
        Ok(found
            .into_iter()
            .map(|retain| (retain.publish.topic.clone(), retain.clone()))
            .collect())
    }

    async fn count(&self) -> isize {
        self.by_thing
            .read()
            .map(|m| {
                let n: usize = m.values().map(|t| t.iter().count()).sum();
                isize::try_from(n).unwrap_or(isize::MAX)
            })
            .unwrap_or(0)
    }

    async fn max(&self) -> isize {
        self.count().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rmqtt::codec::types::{Publish as CodecPublish, QoS};
    use rmqtt::types::{From as MsgFrom, Id, Publish};

    fn retained(topic: &str, payload: &'static [u8]) -> Retain {
        let id = Id::new(1, 0, None, None, "$iothub".into(), None);
        let publish = CodecPublish {
            dup: false,
            retain: true,
            qos: QoS::AtLeastOnce,
            topic: topic.into(),
            packet_id: None,
            payload: Bytes::from_static(payload),
            properties: None,
        };
        Retain {
            msg_id: None,
            from: MsgFrom::from_system(id),
            publish: Publish::new(Box::new(publish), None, None, None),
        }
    }

    async fn topics(store: &HubRetainer, filter: &str) -> Vec<String> {
        let mut found: Vec<String> = store
            .get(&TopicFilter::from(filter))
            .await
            .expect("get")
            .into_iter()
            .map(|(topic, retain)| {
                assert_eq!(topic, retain.publish.topic);
                topic.to_string()
            })
            .collect();
        found.sort();
        found
    }

    #[tokio::test]
    async fn keeps_one_presence_message_per_thing_and_matches_filters() {
        let store = HubRetainer::default();
        let a = SpecTopic::Presence { thing: "a" }.to_string();
        let b = SpecTopic::Presence { thing: "b" }.to_string();
        for (topic, payload) in [(&a, &b"1"[..]), (&b, b"2"), (&a, b"3")] {
            let topic = TopicName::from(topic.as_str());
            store
                .set(&topic, retained(&topic, payload), None)
                .await
                .expect("set");
        }
        // Not a presence topic: not kept.
        let other = SpecTopic::OtaTask { thing: "a" }.to_string();
        let other_name = TopicName::from(other.as_str());
        store
            .set(&other_name, retained(&other, b"x"), None)
            .await
            .expect("set");
        assert_eq!(store.count().await, 2);

        assert_eq!(topics(&store, &a).await, vec![a.clone()]);
        let got = store
            .get(&TopicFilter::from(a.as_str()))
            .await
            .expect("get");
        assert_eq!(
            got[0].1.publish.payload.as_ref(),
            b"3",
            "latest message kept"
        );
        assert!(topics(&store, &other).await.is_empty());
        let a_all = a.replace("/presence", "/#");
        assert_eq!(topics(&store, &a_all).await, vec![a.clone()]);
        let every = a.replace("/a/", "/+/");
        assert_eq!(topics(&store, &every).await, vec![a.clone(), b.clone()]);
        let prefix = a.split('/').next().expect("prefix").to_owned();
        assert_eq!(
            topics(&store, &format!("{prefix}/#")).await,
            vec![a.clone(), b.clone()]
        );
        assert!(topics(&store, "no/such/a/presence").await.is_empty());

        // An empty retained payload clears the thing's message.
        let a_name = TopicName::from(a.as_str());
        store
            .set(&a_name, retained(&a, b""), None)
            .await
            .expect("clear");
        assert_eq!(topics(&store, &every).await, vec![b.clone()]);
        assert_eq!(store.count().await, 1);
    }

    #[tokio::test]
    async fn keeps_user_topics_up_to_the_per_thing_cap() {
        let store = HubRetainer::default();
        let user = |rest: &str| SpecTopic::User { thing: "a", rest }.to_string();
        let names: Vec<String> = (0..MAX_RETAINED_PER_THING)
            .map(|i| user(&format!("k{i}")))
            .collect();
        for name in &names {
            let topic = TopicName::from(name.as_str());
            store
                .set(&topic, retained(name, b"v"), None)
                .await
                .expect("set");
        }
        let filter = user_space_filter(&names[0]).expect("user topic");
        let kept: Vec<TopicName> = store
            .get(&filter)
            .await
            .expect("get")
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(kept.len(), MAX_RETAINED_PER_THING);

        // One more topic is over the cap, in the hook's check and in the store.
        let extra = user("extra");
        assert!(would_exceed_cap(&extra, false, &kept));
        assert!(
            !would_exceed_cap(&names[0], false, &kept),
            "replacing is fine"
        );
        assert!(!would_exceed_cap(&extra, true, &kept), "deleting is fine");
        let extra_name = TopicName::from(extra.as_str());
        assert!(
            store
                .set(&extra_name, retained(&extra, b"v"), None)
                .await
                .is_err()
        );

        // Deleting one makes room again; presence stays separate from the cap.
        let first = TopicName::from(names[0].as_str());
        store
            .set(&first, retained(&names[0], b""), None)
            .await
            .expect("clear");
        store
            .set(&extra_name, retained(&extra, b"v"), None)
            .await
            .expect("room again");
        let presence = SpecTopic::Presence { thing: "a" }.to_string();
        let p_name = TopicName::from(presence.as_str());
        store
            .set(&p_name, retained(&presence, b"p"), None)
            .await
            .expect("presence");
        assert_eq!(store.count().await, (MAX_RETAINED_PER_THING + 1) as isize);
        // Another thing's filter sees none of them.
        let other = SpecTopic::User {
            thing: "b",
            rest: "k0",
        }
        .to_string();
        let other_filter = user_space_filter(&other).expect("user topic");
        assert!(store.get(&other_filter).await.expect("get").is_empty());
    }
}
