//! [`Message`]: one message of a fleet stream, typed from its topic by the spec's parser.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use iothub_spec::payload::field;
use iothub_spec::topic::{Topic, fleet};
use serde_json::{Map, Value, json};

/// The fleet streams a [`Receiver`](super::Receiver) can subscribe to, one filter of
/// `iothub_spec::topic::fleet` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stream {
    /// Telemetry, `T/messages/property` ([`fleet::TELEMETRY`]).
    Telemetry,
    /// Application messages, `$iothub/user/things/{id}/...` ([`fleet::USER_MESSAGES`]).
    UserMessages,
    /// Shadow changes, `S/update/documents` ([`fleet::SHADOW_DOCUMENTS`]).
    ShadowDocuments,
    /// Retained presence, `T/presence` ([`fleet::PRESENCE`]).
    Presence,
    /// Presence events ([`fleet::PRESENCE_EVENTS`]).
    PresenceEvents,
    /// Lifecycle events ([`fleet::LIFECYCLE_EVENTS`]).
    LifecycleEvents,
    /// Forwarded Wills ([`fleet::WILLS`]).
    Wills,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 7] = [
        Stream::Telemetry,
        Stream::UserMessages,
        Stream::ShadowDocuments,
        Stream::Presence,
        Stream::PresenceEvents,
        Stream::LifecycleEvents,
        Stream::Wills,
    ];

    /// The stream's fleet-wide filter, from the spec crate.
    pub fn filter(self) -> &'static str {
        match self {
            Stream::Telemetry => fleet::TELEMETRY,
            Stream::UserMessages => fleet::USER_MESSAGES,
            Stream::ShadowDocuments => fleet::SHADOW_DOCUMENTS,
            Stream::Presence => fleet::PRESENCE,
            Stream::PresenceEvents => fleet::PRESENCE_EVENTS,
            Stream::LifecycleEvents => fleet::LIFECYCLE_EVENTS,
            Stream::Wills => fleet::WILLS,
        }
    }
}

/// What a [`Message`] is, with the topic levels that say more than the thing id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// Telemetry (`T/messages/property`).
    Telemetry,
    /// An application message on `$iothub/user/things/{id}/{rest}`.
    User {
        /// The levels after the thing id.
        rest: String,
    },
    /// A shadow change: previous and current document (S-3.7).
    ShadowDocuments {
        /// The shadow name.
        shadow: String,
    },
    /// Retained presence (S-8.1).
    Presence,
    /// A presence event (S-8.1).
    PresenceEvent,
    /// A lifecycle event (S-8.3).
    Lifecycle,
    /// A forwarded Will.
    Will {
        /// The levels after `will/`, empty for the bare Will topic.
        rest: String,
    },
}

impl Kind {
    /// A short lower-case name: `telemetry`, `user`, `shadow-documents`, `presence`,
    /// `presence-event`, `lifecycle`, `will` (the `{kind}` of an MQTT forward's topic template
    /// and the `kind` of a forwarded JSON record).
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::User { .. } => "user",
            Kind::ShadowDocuments { .. } => "shadow-documents",
            Kind::Presence => "presence",
            Kind::PresenceEvent => "presence-event",
            Kind::Lifecycle => "lifecycle",
            Kind::Will { .. } => "will",
        }
    }
}

/// One message of a fleet stream as the hub delivered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The thing it is about.
    pub thing: String,
    /// What it is.
    pub kind: Kind,
    /// The topic it came on.
    pub topic: String,
    /// The payload as received (JSON for every stream of the hub; application messages may be
    /// anything).
    pub payload: Bytes,
    /// Whether the broker delivered it as a retained message (presence after subscribing).
    pub retained: bool,
    /// When this receiver got it, milliseconds since the Unix epoch.
    pub received_at_ms: u64,
}

impl Message {
    /// Types a delivered PUBLISH; `None` for a topic outside the fleet streams (which a
    /// receiver never subscribes to, so it ignores such a message).
    pub fn from_publish(topic: &str, payload: Bytes, retained: bool) -> Option<Message> {
        let parsed = Topic::parse(topic).ok()?;
        let thing = parsed.thing().to_owned();
        let kind = match parsed {
            Topic::Property { .. } => Kind::Telemetry,
            Topic::User { rest, .. } => Kind::User {
                rest: rest.to_owned(),
            },
            Topic::ShadowUpdateDocuments { shadow, .. } => Kind::ShadowDocuments {
                shadow: shadow.to_owned(),
            },
            Topic::Presence { .. } => Kind::Presence,
            Topic::PresenceEvent { .. } => Kind::PresenceEvent,
            Topic::LifecycleEvent { .. } => Kind::Lifecycle,
            Topic::Will { rest, .. } => Kind::Will {
                rest: rest.to_owned(),
            },
            _ => return None,
        };
        let received_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Some(Message {
            thing,
            kind,
            topic: topic.to_owned(),
            payload,
            retained,
            received_at_ms,
        })
    }

    /// The payload parsed as JSON, or `None` when it is not JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.payload).ok()
    }

    /// The message as one JSON record, what [`JsonLines`](super::JsonLines) writes and
    /// [`HttpForward`](super::HttpForward) posts: `thingId`, `kind`, `topic`, `receivedAt`
    /// (ms), `retained`, `shadow` or `rest` when the kind has one, and `payload` (the JSON
    /// value) or, for a payload that is not JSON, `payloadText` (UTF-8) or `payloadHex`.
    pub fn to_record(&self) -> Value {
        let mut m = Map::new();
        // The thing id under the contract's own field name; the other keys are this record's.
        m.insert(field::THING_ID.into(), json!(self.thing));
        m.insert("kind".into(), json!(self.kind.name()));
        m.insert("topic".into(), json!(self.topic));
        m.insert("receivedAt".into(), json!(self.received_at_ms));
        m.insert("retained".into(), json!(self.retained));
        match &self.kind {
            Kind::ShadowDocuments { shadow } => {
                m.insert("shadow".into(), json!(shadow));
            }
            Kind::User { rest } | Kind::Will { rest } => {
                m.insert("rest".into(), json!(rest));
            }
            _ => {}
        }
        match (self.json(), std::str::from_utf8(&self.payload)) {
            (Some(v), _) => m.insert("payload".into(), v),
            (None, Ok(text)) => m.insert("payloadText".into(), json!(text)),
            (None, Err(_)) => m.insert("payloadHex".into(), json!(hex(&self.payload))),
        };
        Value::Object(m)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(t: Topic<'_>) -> String {
        t.to_string()
    }

    #[test]
    fn types_each_stream_and_ignores_the_rest() {
        let cases = [
            (topic(Topic::Property { thing: "t1" }), Kind::Telemetry),
            (
                topic(Topic::User {
                    thing: "t1",
                    rest: "a/b",
                }),
                Kind::User { rest: "a/b".into() },
            ),
            (
                topic(Topic::ShadowUpdateDocuments {
                    thing: "t1",
                    shadow: "cfg",
                }),
                Kind::ShadowDocuments {
                    shadow: "cfg".into(),
                },
            ),
            (topic(Topic::Presence { thing: "t1" }), Kind::Presence),
            (
                topic(Topic::PresenceEvent { thing: "t1" }),
                Kind::PresenceEvent,
            ),
            (
                topic(Topic::LifecycleEvent { thing: "t1" }),
                Kind::Lifecycle,
            ),
            (
                topic(Topic::Will {
                    thing: "t1",
                    rest: "",
                }),
                Kind::Will { rest: "".into() },
            ),
        ];
        for (t, kind) in cases {
            let m = Message::from_publish(&t, Bytes::from_static(b"{}"), false).expect(&t);
            assert_eq!((m.thing.as_str(), &m.kind), ("t1", &kind), "{t}");
        }
        let get = topic(Topic::ShadowGet {
            thing: "t1",
            shadow: "default",
        });
        assert_eq!(Message::from_publish(&get, Bytes::new(), false), None);
        assert_eq!(
            Message::from_publish("other/topic", Bytes::new(), false),
            None
        );
    }

    #[test]
    fn records_keep_json_text_and_bytes() {
        let t = topic(Topic::Property { thing: "t1" });
        let r = Message::from_publish(&t, Bytes::from_static(br#"{"t":21}"#), false)
            .expect("typed")
            .to_record();
        assert_eq!(
            (&r["thingId"], &r["kind"], &r["payload"]),
            (&json!("t1"), &json!("telemetry"), &json!({"t": 21}))
        );
        let r = Message::from_publish(&t, Bytes::from_static(b"hi there"), false)
            .expect("typed")
            .to_record();
        assert_eq!(r["payloadText"], json!("hi there"));
        let r = Message::from_publish(&t, Bytes::from_static(&[0xff, 0x01]), false)
            .expect("typed")
            .to_record();
        assert_eq!(r["payloadHex"], json!("ff01"));
    }
}
