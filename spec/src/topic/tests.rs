use super::*;
use std::string::{String, ToString};

fn all_topics<'a>(t: &'a str, s: &'a str, m: &'a str, r: &'a str) -> [Topic<'a>; 21] {
    [
        Topic::ShadowGet {
            thing: t,
            shadow: s,
        },
        Topic::ShadowGetAccepted {
            thing: t,
            shadow: s,
        },
        Topic::ShadowGetRejected {
            thing: t,
            shadow: s,
        },
        Topic::ShadowUpdate {
            thing: t,
            shadow: s,
        },
        Topic::ShadowUpdateAccepted {
            thing: t,
            shadow: s,
        },
        Topic::ShadowUpdateRejected {
            thing: t,
            shadow: s,
        },
        Topic::ShadowUpdateDelta {
            thing: t,
            shadow: s,
        },
        Topic::ShadowUpdateDocuments {
            thing: t,
            shadow: s,
        },
        Topic::MethodRequest {
            thing: t,
            method: m,
        },
        Topic::MethodResponse {
            thing: t,
            method: m,
        },
        Topic::NtpRequest { thing: t },
        Topic::NtpResponse { thing: t },
        Topic::OtaTask { thing: t },
        Topic::OtaTaskResult { thing: t },
        Topic::Property { thing: t },
        Topic::Will { thing: t, rest: r },
        Topic::Will { thing: t, rest: "" },
        Topic::Presence { thing: t },
        Topic::PresenceEvent { thing: t },
        Topic::LifecycleEvent { thing: t },
        Topic::User { thing: t, rest: r },
    ]
}

#[test]
fn round_trip_every_variant() {
    let mut buf = [0u8; MAX_TOPIC_LEN];
    for t in all_topics("dev-1", "cfg:a", "re.boot", "a/b") {
        let s = t.write_to(&mut buf).unwrap();
        assert_eq!(Topic::parse(s), Ok(t), "{s}");
        assert_eq!(t.to_string(), s);
        assert_eq!(t.to_topic_string().unwrap().as_str(), s);
        assert_eq!(t.thing(), "dev-1");
    }
}

#[test]
fn exact_strings() {
    let t = Topic::ShadowUpdateDelta {
        thing: "t1",
        shadow: "default",
    };
    assert_eq!(
        t.to_string(),
        "$iothub/things/t1/shadows/name/default/update/delta"
    );
    assert_eq!(
        Topic::parse("$iothub/things/t1/messages/will").unwrap(),
        Topic::Will {
            thing: "t1",
            rest: ""
        }
    );
    assert_eq!(
        Topic::parse("$iothub/user/things/t1/x/y").unwrap(),
        Topic::User {
            thing: "t1",
            rest: "x/y"
        }
    );
    assert_eq!(
        Topic::parse("$iothub/events/things/t1/lifecycle").unwrap(),
        Topic::LifecycleEvent { thing: "t1" }
    );
}

#[test]
fn parse_errors() {
    use TopicError::*;
    let cases: &[(&str, TopicError)] = &[
        ("", NotIothub),
        ("iothub/things/t1/ntp/req", NotIothub),
        ("$iothubx/things/t1/ntp/req", NotIothub),
        ("$iothub", UnknownShape),
        ("$iothub/", UnknownShape),
        ("$iothub/things", UnknownShape),
        ("$iothub/things/t1", UnknownShape),
        ("$iothub/things/t1/", UnknownShape),
        ("$iothub/things/t1/ntp", UnknownShape),
        ("$iothub/things/t1/ntp/req/x", UnknownShape),
        ("$iothub/things/t 1/ntp/req", InvalidThingId),
        ("$iothub/things//ntp/req", InvalidThingId),
        ("$iothub/things/+/ntp/req", InvalidThingId),
        ("$iothub/things/t1/shadows/name/a.b/get", InvalidShadowName),
        ("$iothub/things/t1/shadows/name//get", InvalidShadowName),
        ("$iothub/things/t1/shadows/name/default/get/x", UnknownShape),
        ("$iothub/things/t1/methods/a:b/req", InvalidMethodName),
        ("$iothub/things/t1/methods/m/foo", UnknownShape),
        ("$iothub/things/t1/messages/will/", InvalidLevel),
        ("$iothub/things/t1/messages/will/a//b", InvalidLevel),
        ("$iothub/things/t1/messages/will/#", InvalidLevel),
        ("$iothub/things/t1/messages/willy", UnknownShape),
        ("$iothub/user/things/t1", UnknownShape),
        ("$iothub/user/things/t1/", InvalidLevel),
        ("$iothub/user/things/t1/+", InvalidLevel),
        ("$iothub/events/things/t1/foo", UnknownShape),
    ];
    for (topic, err) in cases {
        assert_eq!(Topic::parse(topic), Err(*err), "{topic}");
    }
    let long = String::from("$iothub/user/things/t1/") + &"a".repeat(300);
    assert_eq!(Topic::parse(&long), Err(TooLong));
}

#[test]
fn write_to_split_hands_back_the_rest() {
    let mut buf = [7u8; MAX_TOPIC_LEN + 4];
    for t in all_topics("dev-1", "cfg:a", "re.boot", "a/b") {
        let (s, rest) = t.write_to_split(&mut buf).unwrap();
        assert_eq!(Topic::parse(s), Ok(t), "{s}");
        assert_eq!(rest.len(), MAX_TOPIC_LEN + 4 - s.len());
    }
    let t = Topic::NtpRequest { thing: "t1" };
    let n = t.to_string().len();
    let mut exact = std::vec![0u8; n];
    let (s, rest) = t.write_to_split(&mut exact).unwrap();
    assert_eq!((s.len(), rest.len()), (n, 0));
    let mut short = std::vec![0u8; n - 1];
    assert_eq!(
        t.write_to_split(&mut short).err(),
        Some(TopicError::BufferTooSmall)
    );
    assert_eq!(
        Topic::NtpRequest { thing: "a/b" }
            .write_to_split(&mut buf)
            .err(),
        Some(TopicError::InvalidThingId)
    );
}

#[test]
fn write_errors() {
    let mut small = [0u8; 10];
    let t = Topic::NtpRequest { thing: "t1" };
    assert_eq!(t.write_to(&mut small), Err(TopicError::BufferTooSmall));
    let mut buf = [0u8; 512];
    assert_eq!(
        Topic::NtpRequest { thing: "a/b" }.write_to(&mut buf),
        Err(TopicError::InvalidThingId)
    );
    let rest = "a".repeat(250);
    assert_eq!(
        Topic::User {
            thing: "t1",
            rest: &rest
        }
        .write_to(&mut buf),
        Err(TopicError::TooLong)
    );
    assert_eq!(
        Filter::ShadowGetReplies {
            thing: "t1",
            shadow: "a b"
        }
        .write_to(&mut buf),
        Err(TopicError::InvalidShadowName)
    );
}

#[test]
fn publish_acl() {
    let me = "t1";
    let mut allowed = 0;
    for t in all_topics(me, "default", "m", "x") {
        if t.thing_may_publish(me) {
            allowed += 1;
        }
        assert!(!t.thing_may_publish("t2"));
    }
    // get, update, method resp, ntp req, ota result, property, will x2, user.
    assert_eq!(allowed, 9);
}

#[test]
fn subscribe_acl() {
    for f in [
        "$iothub/things/t1/#",
        "$iothub/things/t1/shadows/name/default/update/+",
        "$iothub/things/t1/shadows/name/+/get/accepted",
        "$iothub/things/t1/methods/+/req",
        "$iothub/things/t1/+/+",
        "$iothub/user/things/t1/#",
        "$iothub/user/things/t1/a/+/b",
    ] {
        assert!(thing_may_subscribe(f, "t1"), "{f}");
    }
    for f in [
        "#",
        "$iothub/#",
        "$iothub/things/+/ntp/resp",
        "$iothub/things/#",
        "$iothub/+/t1/#",
        "$iothub/things/t2/#",
        "$iothub/things/t1",
        "$iothub/things/t1/",
        "$iothub/things/t1//x",
        "$iothub/things/t1/a#",
        "$iothub/things/t1/#/x",
        "$iothub/things/t1/a+",
        "$iothub/things/t10/#",
        "$iothub/user/things/t1",
        "$iothub/events/things/t1/presence",
        "$iothub/user/things/+/x",
    ] {
        assert!(!thing_may_subscribe(f, "t1"), "{f}");
    }
    assert!(!thing_may_subscribe("$iothub/things/+/#", "+"));
}

#[test]
fn filters() {
    let mut buf = [0u8; MAX_TOPIC_LEN];
    let expected = [
        "$iothub/things/t1/shadows/name/default/get/+",
        "$iothub/things/t1/shadows/name/default/update/+",
        "$iothub/things/t1/methods/+/req",
        "$iothub/things/t1/ntp/resp",
        "$iothub/things/t1/ota/task",
    ];
    for (f, e) in Filter::all_for("t1", "default").iter().zip(expected) {
        assert_eq!(f.write_to(&mut buf).unwrap(), e);
        assert_eq!(f.to_string(), e);
        assert!(thing_may_subscribe(e, "t1"));
        assert!(is_valid_filter(e));
    }
    let f = Filter::ShadowUpdateReplies {
        thing: "t1",
        shadow: "default",
    };
    assert!(f.matches(&Topic::ShadowUpdateDelta {
        thing: "t1",
        shadow: "default"
    }));
    assert!(!f.matches(&Topic::ShadowGetAccepted {
        thing: "t1",
        shadow: "default"
    }));
    assert!(!f.matches(&Topic::ShadowUpdateDelta {
        thing: "t1",
        shadow: "other"
    }));
}

#[test]
fn replies() {
    let g = Topic::ShadowGet {
        thing: "t1",
        shadow: "s",
    };
    assert_eq!(
        g.rejected(),
        Some(Topic::ShadowGetRejected {
            thing: "t1",
            shadow: "s"
        })
    );
    assert_eq!(
        g.reply(),
        Some(Topic::ShadowGetAccepted {
            thing: "t1",
            shadow: "s"
        })
    );
    let m = Topic::MethodRequest {
        thing: "t1",
        method: "m",
    };
    assert_eq!(
        m.reply(),
        Some(Topic::MethodResponse {
            thing: "t1",
            method: "m"
        })
    );
    assert_eq!(Topic::OtaTask { thing: "t1" }.reply(), None);
}

#[test]
fn filter_thing_names_the_one_thing_a_filter_is_confined_to() {
    for (filter, thing) in [
        ("$iothub/things/t1/presence", Some("t1")),
        ("$iothub/things/t1/#", Some("t1")),
        ("$iothub/things/t1/shadows/+/update/delta", Some("t1")),
        ("$iothub/user/things/t-2/x", Some("t-2")),
        ("$iothub/things/t1", Some("t1")),
        ("$iothub/things/+/presence", None),
        ("$iothub/things/#", None),
        ("$iothub/+/t1/presence", None),
        ("$iothub/#", None),
        ("#", None),
        ("+/things/t1/presence", None),
        ("$iothub/user/+/t1/x", None),
        ("$iothub/other/t1/presence", None),
        ("$iothub/things/bad.id/presence", None),
    ] {
        assert_eq!(filter_thing(filter), thing, "{filter}");
    }
}

#[test]
fn topic_thing_names_the_thing_of_a_topic_name() {
    for (topic, thing) in [
        (
            "$iothub/things/t1/shadows/name/default/update/accepted",
            Some("t1"),
        ),
        ("$iothub/things/t1/presence", Some("t1")),
        ("$iothub/things/t1", Some("t1")),
        ("$iothub/things/t1/", Some("t1")),
        ("$iothub/things/t1/not/a/spec/shape", Some("t1")),
        ("$iothub/user/things/t-2/x/y", Some("t-2")),
        ("$iothub/events/things/t1/presence", None),
        ("$iothub/things/bad.id/presence", None),
        ("$iothub/things/", None),
        ("$iothub/things", None),
        ("$iothubx/things/t1/presence", None),
        ("other/things/t1", None),
        ("", None),
    ] {
        assert_eq!(topic_thing(topic), thing, "{topic}");
    }
}

#[test]
fn filter_matches_follows_mqtt_matching() {
    for (filter, topic, expected) in [
        ("a/b/c", "a/b/c", true),
        ("a/b/c", "a/b", false),
        ("a/b", "a/b/c", false),
        ("a/+/c", "a/b/c", true),
        ("a/+/c", "a//c", true),
        ("a/+", "a", false),
        ("a/+", "a/b/c", false),
        ("+/+", "/x", true),
        ("a/#", "a", true),
        ("a/#", "a/b/c", true),
        ("a/#", "ab", false),
        ("#", "a/b", true),
        ("#", "$iothub/things/t1", false),
        ("+/things/t1", "$iothub/things/t1", false),
        ("$iothub/#", "$iothub/things/t1", true),
        (
            "$iothub/things/+/presence",
            "$iothub/things/t1/presence",
            true,
        ),
        ("$iothub/things/t1/+", "$iothub/things/t1/$x", true),
        (
            "$iothub/things/t1/presence",
            "$iothub/things/t2/presence",
            false,
        ),
        ("a/b", "A/b", false),
    ] {
        assert_eq!(
            filter_matches(filter, topic),
            expected,
            "{filter} vs {topic}"
        );
    }
}

mod thing_index {
    use super::*;
    use proptest::prelude::*;

    /// Levels near the thing level of S-2 topics, wildcards and `$` levels included.
    const LEVEL: &str = "(\\$iothub|things|user|t1|t2|x|\\$x|)";
    const FILTER_LEVEL: &str = "(\\$iothub|things|user|t1|t2|x|\\$x||\\+)";

    fn join(levels: &[String]) -> String {
        levels.join("/")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// What a broker indexing filters by thing relies on: a filter confined to a thing
        /// matches only topic names of that thing.
        #[test]
        fn a_confined_filter_matches_only_its_things_topics(
            filter_levels in proptest::collection::vec(FILTER_LEVEL, 1..7),
            hash in any::<bool>(),
            topic_levels in proptest::collection::vec(LEVEL, 1..8),
            prefix in "(\\$iothub/things/t1|\\$iothub/user/things/t2|)",
        ) {
            let mut filter = join(&filter_levels);
            if hash {
                filter.push_str("/#");
            }
            // Half the topics share the filter's first levels, so that matches are common.
            let topic = if prefix.is_empty() {
                join(&topic_levels)
            } else {
                prefix + "/" + &join(&topic_levels)
            };
            prop_assume!(is_valid_filter(&filter));
            for f in [filter.clone(), String::from("$iothub/things/t1/") + &filter] {
                if let (Some(thing), true) = (filter_thing(&f), filter_matches(&f, &topic)) {
                    prop_assert_eq!(topic_thing(&topic), Some(thing), "{} vs {}", f, topic);
                }
            }
        }
    }
}
