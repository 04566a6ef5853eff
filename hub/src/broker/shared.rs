//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 §4.8.2), offered to service users so
//! that several instances of a back end split one stream (the subscribe hook refuses them to
//! things). rmqtt's inner router groups the members of each group and asks this which one gets
//! a message: round robin over the members that are online, or over all of them (their
//! sessions queue it) when none is.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use rmqtt::context::ServerContext;
use rmqtt::subscribe::SharedSubscription;
use rmqtt::types::{
    ClientId, Id, IsOnline, NodeId, SharedGroup, SubscriptionIdentifier, SubscriptionOptions,
    TopicName,
};

/// One member of a shared group, as rmqtt's router hands it over.
type Member = (
    NodeId,
    ClientId,
    SubscriptionOptions,
    Option<Vec<SubscriptionIdentifier>>,
    Option<IsOnline>,
);

/// Round-robin choice among a group's members.
#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The index of the member that gets the next message, and whether it is online.
    fn pick(&self, members: &[Member]) -> Option<(usize, IsOnline)> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let online: Vec<usize> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.4.unwrap_or(true))
            .map(|(i, _)| i)
            .collect();
        if online.is_empty() {
            let n = members.len();
            return (n > 0).then(|| (turn % n, false));
        }
        Some((online[turn % online.len()], true))
    }
}

#[async_trait]
impl SharedSubscription for RoundRobin {
    fn is_supported(&self) -> bool {
        true
    }

    async fn choice(
        &self,
        _scx: &ServerContext,
        _group: &SharedGroup,
        _publisher_id: &Id,
        _topic: &TopicName,
        members: &[Member],
    ) -> Option<(usize, IsOnline)> {
        self.pick(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmqtt::types::SubscriptionOptions;

    fn member(name: &str, online: Option<bool>) -> Member {
        (1, name.into(), SubscriptionOptions::default(), None, online)
    }

    #[test]
    fn takes_turns_among_online_members_else_among_all() {
        let rr = RoundRobin::default();
        let members = [
            member("a", Some(true)),
            member("b", Some(false)),
            member("c", Some(true)),
        ];
        let picks: Vec<usize> = (0..4)
            .filter_map(|_| rr.pick(&members))
            .map(|p| p.0)
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2], "offline b skipped");
        let offline = [member("a", Some(false)), member("b", Some(false))];
        let (i, online) = rr.pick(&offline).expect("someone queues it");
        assert!(!online && i < 2);
        assert_eq!(rr.pick(&[]), None);
    }
}
