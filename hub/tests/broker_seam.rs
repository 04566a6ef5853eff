//! The broker boundary's behavioural contract (`hub/src/edge/mod.rs`), written once and generic
//! over the broker implementation: events in (authenticate, connected, disconnected, subscribed,
//! publish-in with the sender's identity), operations out (publish, disconnect, is-connected) and
//! the allow-list decisions of `iothub_spec::topic::acl`.
//!
//! Every implementation runs every case: today the embedded rmqtt broker ([`Embedded`]); an
//! external broker gets its own [`BrokerUnderTest`] and one more line per case in `cases!`.
//! Real MQTT clients over TCP on 127.0.0.1; the hub core is replaced by [`Recorder`], an
//! [`Events`] that accepts fixed accounts and records what the broker reports.

#[allow(unused_imports)]
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use iothub_hub::broker::{BrokerConfig, EmbeddedBroker};
use iothub_hub::bus::Bus;
use iothub_hub::edge::{Acceptance, Admission, Client as EdgeClient, Connect, Events, PublishIn};
use iothub_hub::guard::refusals::RefusalLog;
use iothub_hub::metrics::Metrics;
use support::{Client, ConnectError, Proto};

/// Things the recorder accepts: `(thing id, secret)`.
const ACCOUNTS: [(&str, &str); 2] = [("seam-a", "secret-a"), ("seam-b", "secret-b")];
/// Longest wait for an event or a message.
const WAIT: Duration = Duration::from_secs(10);

/// What the broker reported, in order.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Connected {
        client_id: String,
        username: String,
        loopback: bool,
        replaced: bool,
    },
    Disconnected {
        client_id: String,
        current: bool,
    },
    Subscribed {
        client_id: String,
        filter: String,
    },
    Publish {
        sender: String,
        topic: String,
        payload: Vec<u8>,
    },
}

/// The hub core stand-in: accepts [`ACCOUNTS`] (client id = user name), records every event.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    refused: Mutex<Vec<String>>,
}

#[async_trait]
impl Events for Recorder {
    async fn authenticate(&self, connect: &Connect<'_>) -> Admission {
        let c = connect.client;
        let ok = ACCOUNTS.iter().any(|(id, secret)| {
            c.username == *id && c.client_id == *id && connect.password == secret.as_bytes()
        });
        if ok {
            Admission::Allow
        } else {
            self.refused
                .lock()
                .expect("recorder lock")
                .push(c.client_id.to_owned());
            Admission::BadCredentials
        }
    }
    async fn connected(&self, client: &EdgeClient<'_>, replaced: bool) {
        self.push(Event::Connected {
            client_id: client.client_id.to_owned(),
            username: client.username.to_owned(),
            loopback: client.remote_addr.is_some_and(|a| a.ip().is_loopback()),
            replaced,
        });
    }
    async fn disconnected(&self, client: &EdgeClient<'_>, _reason: &str, current: bool) {
        self.push(Event::Disconnected {
            client_id: client.client_id.to_owned(),
            current,
        });
    }
    async fn subscribed(&self, client: &EdgeClient<'_>, filter: &str) {
        self.push(Event::Subscribed {
            client_id: client.client_id.to_owned(),
            filter: filter.to_owned(),
        });
    }
    async fn publish_in(&self, message: PublishIn<'_>) -> Acceptance {
        self.push(Event::Publish {
            sender: message.sender.to_owned(),
            topic: message.topic.to_owned(),
            payload: message.payload.to_vec(),
        });
        Acceptance::Accepted
    }
}

impl Recorder {
    fn push(&self, event: Event) {
        self.events.lock().expect("recorder lock").push(event);
    }

    fn all(&self) -> Vec<Event> {
        self.events.lock().expect("recorder lock").clone()
    }

    /// Waits (at most [`WAIT`]) for an event `wanted` accepts, and returns it.
    async fn wait_for(&self, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(e) = self.all().into_iter().find(|e| wanted(e)) {
                return e;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} within {WAIT:?}; events: {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A broker implementation, started for one case with a [`Recorder`] as the hub core.
#[async_trait]
trait BrokerUnderTest: Sized + Send {
    /// Starts the broker; an external broker also provisions [`ACCOUNTS`] here.
    async fn start(events: Arc<Recorder>) -> Self;
    /// Where devices connect.
    fn mqtt_addr(&self) -> SocketAddr;
    /// The operations-out half.
    fn bus(&self) -> Arc<dyn Bus>;
    /// Stops it.
    async fn stop(self);
}

/// The embedded rmqtt broker.
struct Embedded {
    broker: EmbeddedBroker,
    bus: Arc<dyn Bus>,
}

#[async_trait]
impl BrokerUnderTest for Embedded {
    async fn start(events: Arc<Recorder>) -> Self {
        let prepared = EmbeddedBroker::prepare().await;
        let bus: Arc<dyn Bus> = Arc::new(prepared.bus(Metrics::new()));
        let config = BrokerConfig {
            addr: "127.0.0.1:0".parse().expect("address"),
            max_connections: 64,
            max_packet_size: 64 * 1024,
            handshake_timeout: Duration::from_secs(5),
            max_connect_size: 4096,
            max_pending: 64,
            max_pending_per_addr: 64,
            max_subscriptions: 16,
            mqtts_addr: None,
            ws_addr: None,
            wss_addr: None,
            tls: None,
        };
        let broker = prepared
            .start(
                &config,
                events,
                RefusalLog::new("seam test"),
                Metrics::new(),
            )
            .await
            .expect("start the embedded broker");
        Embedded { broker, bus }
    }
    fn mqtt_addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }
    fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }
    async fn stop(self) {
        self.broker.stop().await;
    }
}

fn thing_topic(thing: &str, tail: &str) -> String {
    format!("$iothub/things/{thing}/{tail}")
}

async fn connect<B: BrokerUnderTest>(b: &B, proto: Proto, account: (&str, &str)) -> Client {
    Client::connect(proto, b.mqtt_addr(), account.0, account.0, account.1)
        .await
        .unwrap_or_else(|e| panic!("{} refused: {e:?}", account.0))
}

/// Connected reports the client's identity; the broker then says it is connected.
async fn connect_is_reported_with_identity<B: BrokerUnderTest>(proto: Proto) {
    let rec = Arc::new(Recorder::default());
    let b = B::start(rec.clone()).await;
    let _a = connect(&b, proto, ACCOUNTS[0]).await;
    let event = rec
        .wait_for("connected", |e| matches!(e, Event::Connected { .. }))
        .await;
    assert_eq!(
        event,
        Event::Connected {
            client_id: "seam-a".into(),
            username: "seam-a".into(),
            loopback: true,
            replaced: false,
        }
    );
    assert!(b.bus().is_connected("seam-a"));
    assert!(!b.bus().is_connected("seam-b"));
    b.stop().await;
}

/// A CONNECT the core refuses never connects, with the CONNACK code the core chose (D-33).
async fn refused_connect_never_connects<B: BrokerUnderTest>(proto: Proto) {
    let rec = Arc::new(Recorder::default());
    let b = B::start(rec.clone()).await;
    let refused = Client::connect(proto, b.mqtt_addr(), "seam-a", "seam-a", "wrong").await;
    let expected = match proto {
        Proto::V311 => 4,
        Proto::V5 => 0x86,
    };
    assert_eq!(refused.err(), Some(ConnectError::Refused(expected)));
    assert_eq!(
        rec.refused.lock().expect("recorder lock").as_slice(),
        ["seam-a"]
    );
    assert!(!b.bus().is_connected("seam-a"));
    assert!(rec.all().is_empty(), "{:#?}", rec.all());
    b.stop().await;
}

/// An allowed PUBLISH reaches the core with its sender, topic and bytes; a thing's publish on
/// another thing's topic does not, nor does its subscription to another thing's topics.
async fn publish_in_carries_the_sender_and_the_allow_list_holds<B: BrokerUnderTest>(proto: Proto) {
    let rec = Arc::new(Recorder::default());
    let b = B::start(rec.clone()).await;
    let mut a = connect(&b, proto, ACCOUNTS[0]).await;
    let own = thing_topic("seam-a", "shadows/name/default/update");
    let foreign = thing_topic("seam-b", "shadows/name/default/update");
    // Denied first: the allowed one after it proves the denied one had its chance to arrive.
    let _ = a.publish_nowait(&foreign, b"{\"x\":1}".to_vec()).await;
    let subscribed = a.subscribe(&thing_topic("seam-b", "#")).await;
    let rc = subscribed.as_ref().map_or(0x80, |rc| *rc);
    assert!(rc >= 0x80, "another thing's filter granted: {rc:#x}");
    // MQTT 3.1.1 has no refusal but closing (S-2.2): go on with a new connection. The close may
    // not have been seen yet (a refused SUBSCRIBE can come first), so 3.1.1 always reconnects.
    if proto == Proto::V311 || subscribed.is_err() || a.closed().is_some() {
        a = connect(&b, proto, ACCOUNTS[0]).await;
    }
    a.publish_nowait(&own, b"{\"state\":{}}".to_vec())
        .await
        .expect("publish");
    let event = rec
        .wait_for("publish-in", |e| matches!(e, Event::Publish { .. }))
        .await;
    assert_eq!(
        event,
        Event::Publish {
            sender: "seam-a".into(),
            topic: own,
            payload: b"{\"state\":{}}".to_vec(),
        }
    );
    let publishes = rec
        .all()
        .into_iter()
        .filter(|e| matches!(e, Event::Publish { .. }))
        .count();
    assert_eq!(publishes, 1, "{:#?}", rec.all());
    b.stop().await;
}

/// What the core publishes reaches a matching subscription at QoS 1; the subscription was
/// reported; a retained message is kept for later subscribers.
async fn publish_out_reaches_subscribers<B: BrokerUnderTest>(proto: Proto) {
    let rec = Arc::new(Recorder::default());
    let b = B::start(rec.clone()).await;
    let mut a = connect(&b, proto, ACCOUNTS[0]).await;
    let filter = thing_topic("seam-a", "shadows/name/default/update/+");
    assert!(a.subscribe(&filter).await.expect("subscribe") < 0x80);
    rec.wait_for("subscribed", |e| {
        *e == Event::Subscribed {
            client_id: "seam-a".into(),
            filter: filter.clone(),
        }
    })
    .await;
    let delta = thing_topic("seam-a", "shadows/name/default/update/delta");
    b.bus()
        .publish(&delta, Bytes::from_static(b"{\"v\":1}"), false)
        .await;
    let msg = a
        .wait_message(WAIT, |m| m.topic == delta)
        .await
        .expect("delivered");
    assert_eq!((msg.payload.as_slice(), msg.qos), (&b"{\"v\":1}"[..], 1));

    let presence = thing_topic("seam-b", "presence");
    b.bus()
        .publish(&presence, Bytes::from_static(b"{\"p\":1}"), true)
        .await;
    let mut bb = connect(&b, proto, ACCOUNTS[1]).await;
    assert!(bb.subscribe(&presence).await.expect("subscribe") < 0x80);
    let msg = bb
        .wait_message(WAIT, |m| m.topic == presence)
        .await
        .expect("retained");
    assert_eq!(msg.payload, b"{\"p\":1}");
    b.stop().await;
}

/// Disconnect closes the client's connection and reports it as its current one ending.
async fn disconnect_closes_the_client<B: BrokerUnderTest>(proto: Proto) {
    let rec = Arc::new(Recorder::default());
    let b = B::start(rec.clone()).await;
    let mut a = connect(&b, proto, ACCOUNTS[0]).await;
    rec.wait_for("connected", |e| matches!(e, Event::Connected { .. }))
        .await;
    b.bus().disconnect("seam-a").await;
    assert!(a.is_disconnected(WAIT).await, "still connected");
    let event = rec
        .wait_for("disconnected", |e| matches!(e, Event::Disconnected { .. }))
        .await;
    assert_eq!(
        event,
        Event::Disconnected {
            client_id: "seam-a".into(),
            current: true,
        }
    );
    assert!(!b.bus().is_connected("seam-a"));
    b.stop().await;
}

/// A second connection with the same client id takes over (S-1.4) and the old connection
/// closes. Either the old connection's end is reported first (as its current one, and the new
/// connection replaces nothing), or the new connection first (as replacing one, and the old
/// connection's end as not current, D-34): never both current, never a live thing reported gone.
async fn takeover_is_reported_consistently<B: BrokerUnderTest>(proto: Proto) {
    let rec = Arc::new(Recorder::default());
    let b = B::start(rec.clone()).await;
    let mut first = connect(&b, proto, ACCOUNTS[0]).await;
    rec.wait_for("connected", |e| matches!(e, Event::Connected { .. }))
        .await;
    let _second = connect(&b, proto, ACCOUNTS[0]).await;
    assert!(
        first.is_disconnected(WAIT).await,
        "old connection still open"
    );
    rec.wait_for("the old connection's end", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while rec
        .all()
        .iter()
        .filter(|e| matches!(e, Event::Connected { .. }))
        .count()
        < 2
    {
        assert!(tokio::time::Instant::now() < deadline, "{:#?}", rec.all());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let events = rec.all();
    let later: Vec<&Event> = events[1..]
        .iter()
        .filter(|e| matches!(e, Event::Connected { .. } | Event::Disconnected { .. }))
        .collect();
    let ended_first = Event::Disconnected {
        client_id: "seam-a".into(),
        current: true,
    };
    let connected = |replaced| Event::Connected {
        client_id: "seam-a".into(),
        username: "seam-a".into(),
        loopback: true,
        replaced,
    };
    let taken_over = Event::Disconnected {
        client_id: "seam-a".into(),
        current: false,
    };
    let order_a = [&ended_first, &connected(false)];
    let order_b = [&connected(true), &taken_over];
    assert!(
        later == order_a || later == order_b,
        "inconsistent takeover: {events:#?}"
    );
    assert!(b.bus().is_connected("seam-a"), "the new connection is live");
    b.stop().await;
}

/// One test per case, implementation and protocol version.
macro_rules! cases {
    ($imp:ident: $($case:ident),* $(,)?) => {
        $(
            mod $case {
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn v311() {
                    super::$case::<$imp>(Proto::V311).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn v5() {
                    super::$case::<$imp>(Proto::V5).await
                }
            }
        )*
    };
}

mod embedded {
    use super::*;
    type Rmqtt = Embedded;
    cases!(Rmqtt:
        connect_is_reported_with_identity,
        refused_connect_never_connects,
        publish_in_carries_the_sender_and_the_allow_list_holds,
        publish_out_reaches_subscribers,
        disconnect_closes_the_client,
        takeover_is_reported_consistently,
    );
}
