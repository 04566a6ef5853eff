//! Retained messages, for the one retained topic of SPEC.md: `T/presence` (S-2.3, S-8.1).
//!
//! rmqtt keeps retained messages only through a plugin; the hub needs just the presence topics,
//! so this small store keeps the last message per topic in rmqtt's own topic tree. Only topics
//! that parse as `Topic::Presence` are kept, so things cannot grow it with retained publishes of
//! their own: it holds at most one message per thing.

use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use iothub_spec::topic::Topic as SpecTopic;
use rmqtt::Result;
use rmqtt::retain::{RetainStorage, RetainTree};
use std::str::FromStr;

use rmqtt::topic::Topic;
use rmqtt::types::{Retain, TopicFilter, TopicName};

/// The retained-message store of the embedded broker.
#[derive(Default)]
pub struct PresenceRetainer {
    tree: RwLock<RetainTree<Retain>>,
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
        if !matches!(SpecTopic::parse(topic), Ok(SpecTopic::Presence { .. })) {
            return Ok(());
        }
        let parsed = Topic::from_str(topic)?;
        let mut tree = self
            .tree
            .write()
            .map_err(|_| anyhow::anyhow!("retain store poisoned"))?;
        if retain.publish.payload.is_empty() {
            tree.remove(&parsed);
        } else {
            tree.insert(&parsed, retain);
        }
        Ok(())
    }

    async fn get(&self, topic_filter: &TopicFilter) -> Result<Vec<(TopicName, Retain)>> {
        let filter = Topic::from_str(topic_filter)?;
        let tree = self
            .tree
            .read()
            .map_err(|_| anyhow::anyhow!("retain store poisoned"))?;
        Ok(tree
            .matches(&filter)
            .into_iter()
            .map(|(topic, retain)| (TopicName::from(topic.to_string()), retain))
            .collect())
    }

    async fn count(&self) -> isize {
        self.tree
            .read()
            .map(|t| t.values_size() as isize)
            .unwrap_or(0)
    }

    async fn max(&self) -> isize {
        self.count().await
    }
}
