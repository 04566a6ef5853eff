use super::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;

use iothub_spec::topic::{Filter, Topic as SpecTopic};
use proptest::prelude::*;
use rmqtt::codec::types::QoS;
use rmqtt::codec::v5::RetainHandling;
use rmqtt::types::{SubOptionsV3, SubOptionsV5};

const NODE: NodeId = 1;

/// A session of `client`; `conn` tells sessions of the same client id apart (as rmqtt's
/// creation time would, which has only millisecond resolution).
fn session(client: &str, conn: u16) -> Id {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), conn);
    Id::new(NODE, 0, None, Some(addr), client.into(), None)
}

fn v3() -> SubscriptionOptions {
    SubscriptionOptions::V3(SubOptionsV3 {
        qos: QoS::AtLeastOnce,
        shared_group: None,
    })
}

fn v5(no_local: bool, sub_id: Option<u32>) -> SubscriptionOptions {
    SubscriptionOptions::V5(SubOptionsV5 {
        qos: QoS::AtLeastOnce,
        no_local,
        retain_as_published: false,
        retain_handling: RetainHandling::AtSubscribe,
        id: sub_id.and_then(NonZeroU32::new),
        shared_group: None,
    })
}

type Delivered = Vec<(NodeId, String, String, Vec<u32>)>;

/// A relation reduced to what reaches the client: MQTT 5 entries by client with their sorted
/// subscription identifiers (which filter's options rmqtt keeps for a client matched twice
/// depends on its trie's iteration order), MQTT 3.1.1 entries by filter and client.
fn delivered(rels: &SubRelationsMap) -> Delivered {
    let mut out = Vec::new();
    for (node, subs) in rels {
        for (filter, client, opts, sub_ids, group) in subs {
            assert!(group.is_none(), "no shared subscriptions in the hub");
            let mut ids: Vec<u32> = sub_ids.iter().flatten().map(|i| i.get()).collect();
            ids.sort_unstable();
            let filter = if opts.is_v3() {
                filter.to_string()
            } else {
                String::new()
            };
            out.push((*node, filter, client.to_string(), ids));
        }
    }
    out.sort();
    out
}

/// What a publish to `topic` reaches, through both routers (`None`: the topic was refused).
async fn both_deliver(
    ours: &ThingRouter,
    theirs: &DefaultRouter,
    from: &Id,
    topic: &str,
) -> (Option<Delivered>, Option<Delivered>) {
    let topic = TopicName::from(topic);
    let a = ours.matches(from.clone(), &topic).await.ok();
    let b = theirs.matches(from.clone(), &topic).await.ok();
    (a.as_ref().map(delivered), b.as_ref().map(delivered))
}

fn shadow_filters(thing: &str) -> Vec<String> {
    Filter::all_for(thing, "default")
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

#[tokio::test]
async fn device_filters_go_to_the_thing_map_and_match_only_their_thing() {
    let router = ThingRouter::new(None);
    for (thing, conn) in [("t1", 1), ("t2", 2)] {
        for filter in shadow_filters(thing) {
            router
                .add(&filter, session(thing, conn), v3())
                .await
                .expect("add");
        }
    }
    assert_eq!(router.things.len(), 2);
    assert_eq!(router.inner.relations().len(), 0, "nothing in rmqtt's trie");
    assert_eq!(router.topics().count(), 10);
    assert_eq!(router.routes().count(), 10);
    assert_eq!(router.topics_tree().await, 10);

    let hub = session("$iothub", 0);
    let accepted = SpecTopic::ShadowUpdateAccepted {
        thing: "t1",
        shadow: "default",
    }
    .to_string();
    let rels = router
        .matches(hub.clone(), &TopicName::from(accepted.as_str()))
        .await
        .expect("matches");
    let update_replies = Filter::ShadowUpdateReplies {
        thing: "t1",
        shadow: "default",
    }
    .to_string();
    assert_eq!(
        delivered(&rels),
        vec![(NODE, update_replies.clone(), "t1".into(), vec![])]
    );
    let routes = router.get(&accepted).await.expect("get");
    assert_eq!(
        routes,
        vec![Route {
            node_id: NODE,
            topic: update_replies.as_str().into()
        }]
    );

    let call = SpecTopic::MethodRequest {
        thing: "t2",
        method: "reboot",
    }
    .to_string();
    let rels = router
        .matches(hub.clone(), &TopicName::from(call.as_str()))
        .await
        .expect("matches");
    assert_eq!(delivered(&rels).len(), 1);
    assert_eq!(delivered(&rels)[0].2, "t2");

    // A topic of a thing nobody subscribed for, and one that is no thing's.
    for topic in [
        SpecTopic::OtaTask { thing: "t3" }.to_string(),
        "other/topic".to_owned(),
    ] {
        let rels = router
            .matches(hub.clone(), &TopicName::from(topic.as_str()))
            .await
            .expect("matches");
        assert!(delivered(&rels).is_empty(), "{topic}");
        assert!(router.get(&topic).await.expect("get").is_empty());
    }
}

#[tokio::test]
async fn remove_takes_only_the_subscribing_session_and_clears_the_thing() {
    let router = ThingRouter::new(None);
    let filter = Filter::OtaTask { thing: "t1" }.to_string();
    let topic = TopicName::from(SpecTopic::OtaTask { thing: "t1" }.to_string());
    let old = session("t1", 1);
    let new = session("t1", 2);
    router.add(&filter, old.clone(), v3()).await.expect("add");
    // The client reconnects: its new session subscribes again and replaces the old one.
    router.add(&filter, new.clone(), v3()).await.expect("add");
    assert_eq!(router.routes().count(), 1);
    assert_eq!(router.topics().count(), 1);
    // The old session ends after the takeover: its remove must not drop the new subscription.
    assert!(!router.remove(&filter, old).await.expect("remove"));
    let hub = session("$iothub", 0);
    let rels = router.matches(hub.clone(), &topic).await.expect("matches");
    assert_eq!(delivered(&rels).len(), 1);
    // Another client's remove, and a filter nobody has, remove nothing.
    assert!(
        !router
            .remove(&filter, session("t2", 3))
            .await
            .expect("remove")
    );
    let other = Filter::NtpResponse { thing: "t1" }.to_string();
    assert!(!router.remove(&other, new.clone()).await.expect("remove"));

    assert!(router.remove(&filter, new.clone()).await.expect("remove"));
    assert!(
        delivered(&router.matches(hub, &topic).await.expect("matches")).is_empty(),
        "unsubscribed"
    );
    assert_eq!(
        router.things.len(),
        0,
        "the thing's entry goes with its last filter"
    );
    assert_eq!(router.routes().count(), 0);
    assert_eq!(router.topics().count(), 0);
    assert_eq!(router.routes().max(), 1);
    assert!(!router.remove(&filter, new).await.expect("remove twice"));
}

#[tokio::test]
async fn wildcard_filters_stay_in_rmqtts_router_and_results_merge_per_client() {
    let router = ThingRouter::new(None);
    let presence = SpecTopic::Presence { thing: "t1" }.to_string();
    let every_presence = presence.replace("/t1/", "/+/");
    let svc5 = session("svc5", 1);
    let svc3 = session("svc3", 2);
    router
        .add(&every_presence, svc5.clone(), v5(false, Some(7)))
        .await
        .expect("add");
    router
        .add(&presence, svc5.clone(), v5(false, Some(9)))
        .await
        .expect("add");
    router
        .add(&every_presence, svc3.clone(), v3())
        .await
        .expect("add");
    router
        .add(&presence, svc3.clone(), v3())
        .await
        .expect("add");
    router.add("#", svc3.clone(), v3()).await.expect("add");
    assert_eq!(router.inner.relations().len(), 2, "the + and # filters");
    assert_eq!(router.things.len(), 1);
    assert_eq!(router.topics().count(), 3);
    assert_eq!(router.routes().count(), 5);

    let hub = session("$iothub", 0);
    let rels = router
        .matches(hub, &TopicName::from(presence.as_str()))
        .await
        .expect("matches");
    // MQTT 5: one delivery carrying both subscription identifiers; MQTT 3.1.1: one per filter
    // (`#` does not match a `$` topic).
    let mut expected = vec![
        (NODE, String::new(), "svc5".into(), vec![7, 9]),
        (NODE, every_presence.clone(), "svc3".into(), vec![]),
        (NODE, presence.clone(), "svc3".into(), vec![]),
    ];
    expected.sort();
    assert_eq!(delivered(&rels), expected);
    let mut routes: Vec<String> = router
        .get(&presence)
        .await
        .expect("get")
        .into_iter()
        .map(|r| r.topic.to_string())
        .collect();
    routes.sort();
    let mut expected = vec![every_presence.clone(), presence.clone()];
    expected.sort();
    assert_eq!(routes, expected, "one route per filter and node");

    // Queries and listings see both parts.
    let q =
        |clientid: Option<&str>, topic: Option<&str>, matching: Option<&str>| SubsSearchParams {
            _limit: 100,
            clientid: clientid.map(str::to_owned),
            topic: topic.map(str::to_owned),
            qos: None,
            share: None,
            _match_topic: matching.map(str::to_owned),
        };
    assert_eq!(
        router.query_subscriptions(&q(None, None, None)).await.len(),
        5
    );
    assert_eq!(
        router
            .query_subscriptions(&q(Some("svc5"), None, None))
            .await
            .len(),
        2
    );
    assert_eq!(
        router
            .query_subscriptions(&q(None, Some(&presence), None))
            .await
            .len(),
        2
    );
    assert_eq!(
        router
            .query_subscriptions(&q(None, Some(&every_presence), None))
            .await
            .len(),
        2
    );
    assert_eq!(
        router
            .query_subscriptions(&q(None, None, Some(&presence)))
            .await
            .len(),
        4
    );
    let limited = SubsSearchParams {
        _limit: 4,
        ..q(None, None, None)
    };
    assert_eq!(router.query_subscriptions(&limited).await.len(), 4);
    assert_eq!(router.list_relations(100).await.len(), 5);
    assert_eq!(router.list_relations(3).await.len(), 3);
    assert!(router.list_topics(10).await.contains(&presence));
    assert_eq!(router.gets(100).await.len(), 3);
}

#[tokio::test]
async fn no_local_keeps_a_publish_from_its_own_session() {
    let router = ThingRouter::new(None);
    let filter = SpecTopic::Presence { thing: "t1" }.to_string();
    let me = session("svc", 1);
    let other = session("svc2", 2);
    router
        .add(&filter, me.clone(), v5(true, None))
        .await
        .expect("add");
    router
        .add(&filter, other.clone(), v5(false, None))
        .await
        .expect("add");
    let topic = TopicName::from(filter.as_str());
    let clients = |rels: SubRelationsMap| -> Vec<String> {
        delivered(&rels).into_iter().map(|d| d.2).collect()
    };
    let rels = router.matches(me.clone(), &topic).await.expect("matches");
    assert_eq!(clients(rels), vec!["svc2".to_owned()]);
    let rels = router.matches(other, &topic).await.expect("matches");
    let mut got = clients(rels);
    got.sort();
    assert_eq!(got, vec!["svc".to_owned(), "svc2".to_owned()]);
}

#[tokio::test]
async fn invalid_filters_and_topics_are_refused_like_rmqtt_does() {
    let router = ThingRouter::new(None);
    let id = session("t1", 1);
    assert!(
        router
            .add("$iothub/things/t1/a#", id.clone(), v3())
            .await
            .is_err()
    );
    assert!(router.add("a/#/b", id.clone(), v3()).await.is_err());
    assert_eq!(router.things.len(), 0);
    assert!(
        router
            .matches(id, &TopicName::from("$iothub/things/t1/$x"))
            .await
            .is_err()
    );
}

/// One step of a random workload: subscribe or unsubscribe.
#[derive(Debug, Clone)]
struct Step {
    subscribe: bool,
    filter: String,
    client: usize,
    /// Which of the client's two sessions (a reconnect takes over the subscriptions).
    conn: usize,
    no_local: bool,
    sub_id: Option<u32>,
}

/// Filters near the hub's: confined ones, service wildcards, and plain MQTT ones.
fn filter() -> impl Strategy<Value = String> {
    let prefix = "(\\$iothub/things/t1|\\$iothub/things/t2|\\$iothub/things/\\+|\\$iothub/user/things/t1|\\$iothub|\\+|x)";
    let level = "(presence|ota|task|\\+|\\$x|t1|)";
    (
        prefix,
        proptest::collection::vec(level, 0..3),
        any::<bool>(),
    )
        .prop_map(|(prefix, levels, hash)| {
            let mut f = prefix;
            for l in levels {
                f.push('/');
                f.push_str(&l);
            }
            if hash {
                f.push_str("/#");
            }
            f
        })
}

fn topic() -> impl Strategy<Value = String> {
    let prefix = "(\\$iothub/things/t1|\\$iothub/things/t2|\\$iothub/user/things/t1|\\$iothub|x)";
    let level = "(presence|ota|task|\\$x|t1|)";
    (prefix, proptest::collection::vec(level, 0..4)).prop_map(|(prefix, levels)| {
        let mut t = prefix;
        for l in levels {
            t.push('/');
            t.push_str(&l);
        }
        t
    })
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![3 => Just(true), 1 => Just(false)],
        filter(),
        0usize..4,
        0usize..2,
        any::<bool>(),
        proptest::option::of(1u32..100),
    )
        .prop_map(|(subscribe, filter, client, conn, no_local, sub_id)| Step {
            subscribe,
            filter,
            client,
            conn,
            no_local,
            sub_id,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The same subscribes and unsubscribes into this router and into rmqtt's DefaultRouter:
    /// every publish reaches the same clients with the same subscription identifiers, `get`
    /// gives the same routes and the counters agree.
    #[test]
    fn routes_like_rmqtts_default_router(
        steps in proptest::collection::vec(step(), 1..24),
        topics in proptest::collection::vec(topic(), 1..6),
        publisher in 0usize..9,
    ) {
        rt().block_on(async {
            let ours = ThingRouter::new(None);
            let theirs = DefaultRouter::new(None);
            // Clients 0 and 1 speak MQTT 3.1.1, 2 and 3 MQTT 5, each with two sessions;
            // the last is the hub itself.
            let ids: Vec<Id> = (0..9u16).map(|i| session(&format!("c{}", i / 2), i)).collect();
            for s in &steps {
                let id = ids[s.client * 2 + s.conn].clone();
                if s.subscribe {
                    let opts = if s.client < 2 { v3() } else { v5(s.no_local, s.sub_id) };
                    let a = ours.add(&s.filter, id.clone(), opts.clone()).await.is_ok();
                    let b = theirs.add(&s.filter, id, opts).await.is_ok();
                    prop_assert_eq!(a, b, "add {}", s.filter);
                } else {
                    let a = ours.remove(&s.filter, id.clone()).await.ok();
                    let b = theirs.remove(&s.filter, id).await.ok();
                    prop_assert_eq!(a, b, "remove {}", s.filter);
                }
            }
            prop_assert_eq!(ours.topics().count(), theirs.topics().count());
            prop_assert_eq!(ours.routes().count(), theirs.routes().count());
            for topic in &topics {
                let (a, b) = both_deliver(&ours, &theirs, &ids[publisher], topic).await;
                prop_assert_eq!(a, b, "{}", topic);
                let mut ra = ours.get(topic).await.ok();
                let mut rb = theirs.get(topic).await.ok();
                for routes in [&mut ra, &mut rb].into_iter().flatten() {
                    routes.sort_by(|x, y| x.topic.cmp(&y.topic));
                }
                prop_assert_eq!(ra, rb, "{}", topic);
            }
            Ok(())
        })?;
    }
}
