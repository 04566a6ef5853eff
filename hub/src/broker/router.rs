//! The embedded broker's subscription router: one flat entry per thing for the filters confined
//! to that thing, rmqtt's own [`DefaultRouter`] for everything else.
//!
//! Why the hub has its own: rmqtt's `DefaultRouter` keeps every filter in a topic trie with a
//! hash table per node, plus a `HashMap` of subscribers per filter. A device subscribes 5 filters
//! of its own (`Filter::all_for`: `$iothub/things/{id}/shadows/name/{shadow}/get/+`, ...), which
//! share only their first two levels with other things' filters, so each thing cost ~15 trie
//! nodes (~5.9 KB) and 5 relation maps (~2.1 KB) (heaptrack, BENCHMARKS.md "Hub memory per
//! connected thing"). Here those filters sit in one map keyed by thing id, each thing holding a
//! `Vec` of exactly its subscriptions (filter, subscriber `Id`, options): ~0.65 KB per thing by
//! estimate (map slot, id, 5 x 40 B entries, 5 filter strings). Measured with release builds,
//! 2,000 idle connected things (`iothub-sim run --rate 0`), hub RSS per thing: 30,463 B with
//! rmqtt's router, 22,550 B with this one (two runs each; -7.9 KB); with rmqtt-net's 512-byte
//! connection buffers (`vendor/`) 23,830 B with rmqtt's router, 15,000 B with this one.
//!
//! A filter goes to the per-thing map when `iothub_spec::topic::filter_thing` names the one
//! thing it is confined to; a topic is looked up there under `iothub_spec::topic::topic_thing`,
//! which is the same level (a confined filter matches only topics of its thing). Filters that
//! may match several things (a service user's `$iothub/things/+/presence`, `#`) stay in the
//! inner `DefaultRouter`. [`ThingRouter::matches`] merges both answers per client the way
//! rmqtt's `SubscriptioRelationsCollector` does, so a client matched by filters of both parts
//! gets one MQTT 5 delivery with every subscription identifier (MQTT 3.1.1: one per filter).
//!
//! Shared subscriptions (`$share/{group}/...`, MQTT 5 §4.8.2; service users only, the
//! subscribe hook refuses them to things) always go to the inner `DefaultRouter`, which picks
//! one member of each group per message. The hub builds rmqtt without `limit-subscription`,
//! the only user of [`Router::relations`].

use std::str::FromStr;
use std::sync::atomic::{AtomicIsize, Ordering};

use async_trait::async_trait;
use iothub_spec::topic::{filter_matches, filter_thing, topic_thing};
use rmqtt::Result;
use rmqtt::context::ServerContext;
use rmqtt::router::{DefaultRouter, Router};
use rmqtt::topic::Topic;
use rmqtt::types::{
    AllRelationsMap, ClientId, DashMap, HashMap, Id, NodeId, Route, SubRelations, SubRelationsMap,
    SubsSearchParams, SubsSearchResult, SubscriptionOptions, TopicFilter, TopicName,
};
use rmqtt::utils::{Counter, StatsMergeMode};
use serde_json::json;

/// One subscription of a filter confined to a thing.
struct ThingSub {
    /// The filter as subscribed (its thing level is the map key).
    filter: Box<str>,
    /// The subscribing session (any client, not necessarily the thing itself).
    id: Id,
    opts: SubscriptionOptions,
}

/// rmqtt's [`Router`] with the filters confined to one thing in a map keyed by thing id; every
/// other filter is routed by an inner [`DefaultRouter`]. Installed by
/// `EmbeddedBroker::context`.
pub struct ThingRouter {
    /// Thing id → the subscriptions of filters confined to it; an entry is removed with its
    /// last subscription. Each `Vec` is kept at its length (`reserve_exact`).
    things: DashMap<Box<str>, Vec<ThingSub>>,
    /// Distinct (thing, filter) pairs in `things`: rmqtt's "topics" count.
    thing_filters: Counter,
    /// Subscriptions in `things`: rmqtt's "routes" count.
    thing_subs: Counter,
    /// Highest sums of both parts' counts seen, for the counters' `max`.
    topics_max: AtomicIsize,
    routes_max: AtomicIsize,
    inner: DefaultRouter,
}

impl ThingRouter {
    /// A router for the broker `scx` (the inner `DefaultRouter` asks it whether a client is
    /// online); `None` only in tests that do not ask.
    pub fn new(scx: Option<ServerContext>) -> Self {
        ThingRouter {
            things: DashMap::default(),
            thing_filters: Counter::new(),
            thing_subs: Counter::new(),
            topics_max: AtomicIsize::new(0),
            routes_max: AtomicIsize::new(0),
            inner: DefaultRouter::new(scx),
        }
    }

    /// The sum of the inner router's and our counter, with the highest sum seen as its max.
    fn sum(inner: &Counter, ours: &Counter, max: &AtomicIsize) -> Counter {
        let count = inner.count() + ours.count();
        let max = max.fetch_max(count, Ordering::Relaxed).max(count);
        Counter::new_with(count, max, StatsMergeMode::None)
    }

    /// Records the current sums in the `max` fields (after an add).
    fn note_max(&self) {
        let _ = Self::sum(&self.inner.topics(), &self.thing_filters, &self.topics_max);
        let _ = Self::sum(&self.inner.routes(), &self.thing_subs, &self.routes_max);
    }

    /// Calls `f` with every subscription of a confined filter matching `topic`.
    fn for_each_match(&self, topic: &str, mut f: impl FnMut(&ThingSub)) {
        let Some(thing) = topic_thing(topic) else {
            return;
        };
        if let Some(subs) = self.things.get(thing) {
            subs.iter()
                .filter(|s| filter_matches(&s.filter, topic))
                .for_each(&mut f);
        }
    }

    /// Every confined subscription passing `q`'s client id and QoS conditions, at most `limit`.
    fn query_things(
        &self,
        q: &SubsSearchParams,
        limit: usize,
        mut select: impl FnMut(&ThingSub) -> bool,
    ) -> Vec<SubsSearchResult> {
        let mut found = Vec::new();
        let mut push = |s: &ThingSub| {
            if found.len() < limit && select(s) && query_condition(q, s) {
                found.push(search_result(s));
            }
        };
        if let Some(topic) = &q.topic {
            if let Some(subs) = filter_thing(topic).and_then(|t| self.things.get(t)) {
                subs.iter().for_each(&mut push);
            }
        } else if let Some(topic) = &q._match_topic {
            self.for_each_match(topic, &mut push);
        } else {
            for entry in self.things.iter() {
                entry.value().iter().for_each(&mut push);
            }
        }
        found
    }
}

/// rmqtt's own conditions of a subscription query (`DefaultRouter`): client id and QoS.
fn query_condition(q: &SubsSearchParams, s: &ThingSub) -> bool {
    q.clientid
        .as_ref()
        .is_none_or(|c| c.as_bytes() == s.id.client_id.as_bytes())
        && q.qos.is_none_or(|qos| qos == s.opts.qos_value())
}

fn search_result(s: &ThingSub) -> SubsSearchResult {
    SubsSearchResult {
        node_id: s.id.node_id,
        clientid: s.id.client_id.clone(),
        client_addr: s.id.remote_addr,
        topic: TopicFilter::from(&*s.filter),
        opts: s.opts.clone(),
    }
}

/// Adds one matched subscription to a node's relations the way rmqtt's
/// `SubscriptioRelationsCollector` does: MQTT 3.1.1 subscriptions each get their own entry (one
/// delivery per matching filter); an MQTT 5 client gets one entry, the first match's filter and
/// options, carrying the subscription identifiers of all its matching filters.
fn collect(
    rels: &mut SubRelations,
    filter: &str,
    client_id: &ClientId,
    opts: &SubscriptionOptions,
) {
    if !opts.is_v3() {
        let earlier = rels
            .iter_mut()
            .find(|(_, c, o, _, _)| !o.is_v3() && c == client_id);
        if let Some((_, _, _, sub_ids, _)) = earlier {
            if let Some(sub_id) = opts.subscription_identifier() {
                sub_ids.get_or_insert_with(Vec::new).push(sub_id);
            }
            return;
        }
    }
    let sub_ids = opts.subscription_identifier().map(|i| vec![i]);
    rels.push((
        TopicFilter::from(filter),
        client_id.clone(),
        opts.clone(),
        sub_ids,
        None,
    ));
}

#[async_trait]
impl Router for ThingRouter {
    async fn add(&self, topic_filter: &str, id: Id, opts: SubscriptionOptions) -> Result<()> {
        let confined = filter_thing(topic_filter).filter(|_| !opts.has_shared_group());
        let Some(thing) = confined else {
            self.inner.add(topic_filter, id, opts).await?;
            self.note_max();
            return Ok(());
        };
        // The same validation as DefaultRouter::add.
        Topic::from_str(topic_filter)?;
        let mut subs = match self.things.get_mut(thing) {
            Some(subs) => subs,
            None => self.things.entry(Box::from(thing)).or_default(),
        };
        let same_client = subs
            .iter_mut()
            .find(|s| &*s.filter == topic_filter && s.id.client_id == id.client_id);
        if let Some(existing) = same_client {
            // A client subscribing again (or its new session taking over): replaced, as
            // DefaultRouter's relation map does.
            existing.id = id;
            existing.opts = opts;
        } else {
            if !subs.iter().any(|s| &*s.filter == topic_filter) {
                self.thing_filters.inc();
            }
            subs.reserve_exact(1);
            subs.push(ThingSub {
                filter: Box::from(topic_filter),
                id,
                opts,
            });
            self.thing_subs.inc();
        }
        drop(subs);
        self.note_max();
        Ok(())
    }

    async fn remove(&self, topic_filter: &str, id: Id) -> Result<bool> {
        let Some(thing) = filter_thing(topic_filter) else {
            return self.inner.remove(topic_filter, id).await;
        };
        let Some(mut subs) = self.things.get_mut(thing) else {
            // A shared subscription to a confined filter lives in the inner router.
            return self.inner.remove(topic_filter, id).await;
        };
        let Some(pos) = subs
            .iter()
            .position(|s| &*s.filter == topic_filter && s.id.client_id == id.client_id)
        else {
            drop(subs);
            return self.inner.remove(topic_filter, id).await;
        };
        // As DefaultRouter::remove: only the session that subscribed removes its subscription,
        // not an older session of the same client id that ends after a takeover.
        if subs[pos].id != id {
            tracing::debug!(%topic_filter, client = %id.client_id, "remove by another session ignored");
            return Ok(false);
        }
        subs.swap_remove(pos);
        self.thing_subs.dec();
        if !subs.iter().any(|s| &*s.filter == topic_filter) {
            self.thing_filters.dec();
        }
        let now_empty = subs.is_empty();
        drop(subs);
        if now_empty {
            self.things.remove_if(thing, |_, subs| subs.is_empty());
        }
        Ok(true)
    }

    async fn matches(&self, id: Id, topic: &TopicName) -> Result<SubRelationsMap> {
        // Also validates the topic name as DefaultRouter does.
        let mut rels = self.inner.matches(id.clone(), topic).await?;
        self.for_each_match(topic, |s| {
            // MQTT 5 No Local: not back to the session that published it.
            if s.opts.no_local() == Some(true) && s.id == id {
                return;
            }
            collect(
                rels.entry(s.id.node_id).or_default(),
                &s.filter,
                &s.id.client_id,
                &s.opts,
            );
        });
        Ok(rels)
    }

    async fn is_online(&self, node_id: NodeId, client_id: &str) -> bool {
        self.inner.is_online(node_id, client_id).await
    }

    async fn gets(&self, limit: usize) -> Vec<Route> {
        let mut routes = self.inner.gets(limit).await;
        'things: for entry in self.things.iter() {
            for (i, s) in entry.value().iter().enumerate() {
                if routes.len() >= limit {
                    break 'things;
                }
                // One route per (node, filter), as DefaultRouter.
                let seen = entry.value()[..i]
                    .iter()
                    .any(|e| e.filter == s.filter && e.id.node_id == s.id.node_id);
                if !seen {
                    routes.push(Route {
                        node_id: s.id.node_id,
                        topic: TopicFilter::from(&*s.filter),
                    });
                }
            }
        }
        routes
    }

    async fn get(&self, topic: &str) -> Result<Vec<Route>> {
        let mut routes = self.inner.get(topic).await?;
        let mut ours: Vec<Route> = Vec::new();
        self.for_each_match(topic, |s| {
            if !ours
                .iter()
                .any(|r| r.node_id == s.id.node_id && r.topic == *s.filter)
            {
                ours.push(Route {
                    node_id: s.id.node_id,
                    topic: TopicFilter::from(&*s.filter),
                });
            }
        });
        routes.append(&mut ours);
        Ok(routes)
    }

    async fn query_subscriptions(&self, q: &SubsSearchParams) -> Vec<SubsSearchResult> {
        // A `topic` query names one filter, which lives in exactly one of the two parts.
        let confined_topic = q.topic.as_deref().and_then(filter_thing).is_some();
        let mut found = if confined_topic {
            Vec::new()
        } else {
            self.inner.query_subscriptions(q).await
        };
        if q.topic.is_none() || confined_topic {
            let room = q._limit.saturating_sub(found.len());
            found.extend(self.query_things(q, room, |_| true));
        }
        found
    }

    async fn topics_tree(&self) -> usize {
        let ours = usize::try_from(self.thing_filters.count()).unwrap_or(0);
        self.inner.topics_tree().await + ours
    }

    fn topics(&self) -> Counter {
        Self::sum(&self.inner.topics(), &self.thing_filters, &self.topics_max)
    }

    fn routes(&self) -> Counter {
        Self::sum(&self.inner.routes(), &self.thing_subs, &self.routes_max)
    }

    fn merge_topics(&self, topics_map: &HashMap<NodeId, Counter>) -> Counter {
        self.inner.merge_topics(topics_map)
    }

    fn merge_routes(&self, routes_map: &HashMap<NodeId, Counter>) -> Counter {
        self.inner.merge_routes(routes_map)
    }

    async fn list_topics(&self, top: usize) -> Vec<String> {
        // The inner trie's listing, then the confined filters (each once), `top` of them at most.
        let mut listed = self.inner.list_topics(top).await;
        let mut ours = 0;
        'things: for entry in self.things.iter() {
            for (i, s) in entry.value().iter().enumerate() {
                if ours >= top {
                    break 'things;
                }
                if !entry.value()[..i].iter().any(|e| e.filter == s.filter) {
                    listed.push(s.filter.to_string());
                    ours += 1;
                }
            }
        }
        listed
    }

    async fn list_relations(&self, top: usize) -> Vec<serde_json::Value> {
        let mut rels = self.inner.list_relations(top).await;
        'things: for entry in self.things.iter() {
            for s in entry.value() {
                if rels.len() >= top {
                    break 'things;
                }
                rels.push(json!({
                    "topic_filter": &*s.filter,
                    "client_id": s.id.client_id,
                    "node_id": s.id.node_id,
                    "opts": s.opts.to_json(),
                }));
            }
        }
        rels
    }

    /// The inner router's relations only: the filters confined to one thing are not in it.
    /// rmqtt reads this map only with its `limit-subscription` feature, which the hub does not
    /// enable.
    fn relations(&self) -> &AllRelationsMap {
        self.inner.relations()
    }
}

#[cfg(test)]
mod tests;
