//! Retained messages, for the one retained topic of docs/spec.md: `T/presence` (S-2.3, S-8.1).
//!
//! rmqtt keeps retained messages only through a plugin; the hub needs just the presence topics,
//! so this small store keeps the last presence message per thing. Only topics that parse as
//! `Topic::Presence` are kept, so things cannot grow it with retained publishes of their own: it
//! holds at most one message per thing.
//!
//! The messages sit in a map keyed by thing id rather than in rmqtt's `RetainTree`: the tree
//! spent two nodes with a hash table each per thing (~1.6 KB, heaptrack), the map one entry.
//! A filter confined to one thing (`iothub_spec::topic::filter_thing`: every thing's own
//! subscriptions) is answered with one lookup; only filters that may match several things
//! (service users' `+`/`#` subscriptions) walk the map.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use iothub_spec::topic::Topic as SpecTopic;
use rmqtt::Result;
use rmqtt::retain::RetainStorage;
use rmqtt::topic::Topic;
use rmqtt::types::{Retain, TopicFilter, TopicName};

/// The retained-message store of the embedded broker: thing id → its retained presence message.
#[derive(Default)]
pub struct PresenceRetainer {
    by_thing: RwLock<HashMap<String, Retain>>,
}

#[async_trait]
impl RetainStorage for PresenceRetainer {
    fn enable(&self) -> bool {
        true
    }

    async fn set(
        &self,
        topic: &TopicName,
        retain: Retain,
        _expiry: Option<Duration>,
    ) -> Result<()> {
        let Ok(SpecTopic::Presence { thing }) = SpecTopic::parse(topic) else {
            return Ok(());
        };
        let mut map = self
            .by_thing
            .write()
            .map_err(|_| anyhow::anyhow!("retain store poisoned"))?;
        if retain.publish.payload.is_empty() {
            map.remove(thing);
        } else {
            map.insert(thing.to_owned(), retain);
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
        let found = match iothub_spec::topic::filter_thing(topic_filter) {
            Some(thing) => map
                .get(thing)
                .filter(matching)
                .into_iter()
                .collect::<Vec<_>>(),
            None => map.values().filter(matching).collect(),
        };
        Ok(found
            .into_iter()
            .map(|retain| (retain.publish.topic.clone(), retain.clone()))
            .collect())
    }

    async fn count(&self) -> isize {
        self.by_thing
            .read()
            .map(|m| isize::try_from(m.len()).unwrap_or(isize::MAX))
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

    async fn topics(store: &PresenceRetainer, filter: &str) -> Vec<String> {
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
        let store = PresenceRetainer::default();
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
}
