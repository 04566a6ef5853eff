//! End-to-end tests of S-3 (shadows) and S-4 (clientToken) over MQTT 3.1.1 and MQTT 5, with
//! REST used to look at the stored result.

mod support;

use serde_json::{Value, json};
use support::*;

fn ts(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("timestamp must be an integer of ms, got {v}"))
}

/// A timestamp taken by the hub during this test (same clock on loopback).
fn assert_recent(v: &Value, since: u64) {
    let t = ts(v);
    assert!(
        t + 5 >= since && t <= now_ms() + 5,
        "timestamp {t} not within [{since}, now]"
    );
}

/// S-3.2: `get` on a never-written shadow → `get/rejected` 404 with the clientToken echoed.
async fn s3_2_get_never_written_404(proto: Proto) {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(proto, "t").await;
    let since = now_ms();
    let (accepted, reply) = c
        .shadow_request(
            &id,
            "default",
            "get",
            br#"{"clientToken":"g-1"}"#.to_vec(),
            "g-1",
        )
        .await;
    assert!(
        !accepted,
        "S-3.2: never-written shadow must be rejected: {reply}"
    );
    assert_eq!(reply["code"], 404, "{reply}");
    assert_eq!(reply["clientToken"], "g-1");
    assert!(reply["message"].is_string(), "S-3.8: message: {reply}");
    assert_recent(&reply["timestamp"], since);

    // S-3.8: an empty get payload means {} → still a 404 reply (no token to echo).
    c.publish(&shadow_topic(&id, "default", "get"), Vec::new())
        .await
        .expect("publish");
    let reply = c
        .expect_message(&shadow_topic(&id, "default", "get/rejected"), STEP)
        .await;
    assert_eq!(reply["code"], 404, "empty get payload: {reply}");
}
both!(s3_2_get_never_written_404);

/// S-3.8: a malformed `get` payload gets a 400 on `get/rejected`, never silence.
async fn s3_8_malformed_get_400(proto: Proto) {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(proto, "t").await;
    for payload in [&b"{"[..], b"[1]", br#"{"clientToken":5}"#] {
        c.publish(&shadow_topic(&id, "default", "get"), payload.to_vec())
            .await
            .expect("publish");
        let reply = c
            .expect_message(&shadow_topic(&id, "default", "get/rejected"), STEP)
            .await;
        assert_eq!(
            reply["code"],
            400,
            "S-3.8 malformed get {:?}: {reply}",
            String::from_utf8_lossy(payload)
        );
    }
}
both!(s3_8_malformed_get_400);

/// S-2.3: the hub's replies are QoS 1 and not retained.
async fn s2_3_replies_qos1_not_retained(proto: Proto) {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(proto, "t").await;
    let (ok, _) = c
        .update(&id, "default", json!({"state":{"desired":{"a":1}}}))
        .await;
    assert!(ok);
    let (ok, _) = c.get(&id, "default").await;
    assert!(ok);
    let (ok, _) = c
        .update(
            &id,
            "default",
            json!({"state":{"reported":{"a":1}},"version":9}),
        )
        .await;
    assert!(!ok);
    // Everything received so far (accepted, rejected, delta, documents) and one more reply.
    c.publish(&shadow_topic(&id, "default", "get"), Vec::new())
        .await
        .expect("publish");
    let mut seen = 0;
    let presence = format!("{}/presence", thing_topic(&id));
    while let Some(m) = c.next_message(QUIET).await {
        if m.topic == presence {
            continue; // the one retained topic (S-2.3)
        }
        assert_eq!(m.qos, 1, "S-2.3: {} at QoS {}", m.topic, m.qos);
        assert!(!m.retain, "S-2.3: {} retained", m.topic);
        seen += 1;
    }
    assert!(seen >= 3, "only {seen} messages");
}
both!(s2_3_replies_qos1_not_retained);

/// S-3.9: at most 10 named shadows per thing (plus `default`); the 11th is refused and the
/// others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_9_named_shadow_quota() {
    let hub = Hub::start_args(&["--shadow-requests-per-sec", "1000"]);
    let (id, _s, mut c) = hub.new_thing(Proto::V5, "t").await;
    let (ok, r) = c
        .update(&id, "default", json!({"state":{"reported":{"d":1}}}))
        .await;
    assert!(ok, "{r}");
    for i in 0..10 {
        let (ok, r) = c
            .update(&id, &format!("n{i}"), json!({"state":{"reported":{"i":i}}}))
            .await;
        assert!(ok, "named shadow {i} of 10: {r}");
    }
    let (ok, r) = c
        .update(&id, "n10", json!({"state":{"reported":{"i":10}}}))
        .await;
    assert!(!ok, "S-3.9: an 11th named shadow must be refused: {r}");
    let code = r["code"].as_u64().expect("code");
    assert!((400..500).contains(&code), "S-3.8 code for the quota: {r}");
    let (status, _) = hub.rest_shadow(&id, "n10").await;
    assert_eq!(status, 404);
    let (status, doc) = hub.rest_shadow(&id, "n9").await;
    assert_eq!(status, 200, "{doc}");
}

/// S-3.5 then S-3.2: an update is accepted at version 1 with its state echoed and metadata
/// timestamps; `get` then returns the whole document with the delta.
async fn s3_5_update_accepted_then_get(proto: Proto) {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(proto, "t").await;
    let since = now_ms();
    let state = json!({
        "desired": {"led": "on", "cfg": {"rate": 5}},
        "reported": {"led": "off", "temp": 21.5, "fw": {"v": "1.0"}, "list": [1, 2]}
    });
    let (accepted, acc) = c.update(&id, "default", json!({ "state": state })).await;
    assert!(accepted, "S-3.5: {acc}");
    assert_eq!(
        acc["version"], 1,
        "S-3.4: first update creates version 1: {acc}"
    );
    assert_eq!(acc["state"], state, "S-3.5: state echoed: {acc}");
    assert_recent(&acc["timestamp"], since);
    for path in [
        "/metadata/desired/led/timestamp",
        "/metadata/desired/cfg/rate/timestamp",
        "/metadata/reported/led/timestamp",
        "/metadata/reported/temp/timestamp",
        "/metadata/reported/fw/v/timestamp",
        "/metadata/reported/list/timestamp",
    ] {
        assert_recent(
            acc.pointer(path)
                .unwrap_or_else(|| panic!("S-3.5: no {path} in {acc}")),
            since,
        );
    }
    assert!(acc["clientToken"].is_string());

    let (accepted, doc) = c.get(&id, "default").await;
    assert!(accepted, "{doc}");
    assert_eq!(doc["version"], 1, "{doc}");
    assert_eq!(doc["state"]["desired"], state["desired"], "{doc}");
    assert_eq!(doc["state"]["reported"], state["reported"], "{doc}");
    assert_eq!(
        doc["state"]["delta"],
        json!({"led": "on", "cfg": {"rate": 5}}),
        "S-3.6 delta in S-3.2 document: {doc}"
    );
    assert_recent(&doc["metadata"]["desired"]["led"]["timestamp"], since);
    assert_recent(&doc["metadata"]["reported"]["fw"]["v"]["timestamp"], since);
    assert_recent(&doc["timestamp"], since);
    assert!(doc["clientToken"].is_string(), "S-4.1: {doc}");

    // The same document over REST (S-9.3).
    let (status, rest) = hub.rest_shadow(&id, "default").await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["version"], 1);
    assert_eq!(rest["state"]["reported"], state["reported"]);
}
both!(s3_5_update_accepted_then_get);

/// S-3.2: an empty section is omitted from the document (no `delta` when in sync, no
/// `desired` when never written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_2_empty_sections_omitted() {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(Proto::V5, "t").await;
    let (ok, _) = c
        .update(&id, "default", json!({"state":{"reported":{"a":1}}}))
        .await;
    assert!(ok);
    let (ok, doc) = c.get(&id, "default").await;
    assert!(ok);
    let st = doc["state"].as_object().expect("state object");
    assert!(
        !st.contains_key("desired"),
        "S-3.2 empty desired omitted: {doc}"
    );
    assert!(
        !st.contains_key("delta"),
        "S-3.2 empty delta omitted: {doc}"
    );
}

/// S-3.6: `update/delta` carries the full current delta after a desired change; none when the
/// delta is empty; numbers compare numerically, `1 != "1"`.
async fn s3_6_delta_published(proto: Proto) {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(proto, "t").await;
    let delta_topic = shadow_topic(&id, "default", "update/delta");

    let (ok, r) = c
        .update(
            &id,
            "default",
            json!({"state":{"reported":{"cfg":{"a":1},"n":1,"s":"1"}}}),
        )
        .await;
    assert!(ok, "{r}");
    assert!(
        !c.sees(&delta_topic, QUIET).await,
        "S-3.6: no delta after a reported-only update"
    );

    let (ok, r) = c
        .update(
            &id,
            "default",
            json!({"state":{"desired":{"led":"on","cfg":{"a":1,"b":2},"n":1.0,"s":1}}}),
        )
        .await;
    assert!(ok, "{r}");
    let token = r["clientToken"].clone();
    let delta = c.expect_message(&delta_topic, STEP).await;
    assert_eq!(
        delta["state"],
        json!({"led":"on","cfg":{"b":2},"s":1}),
        "S-3.6: full delta, objects recursive, 1 == 1.0, 1 != \"1\": {delta}"
    );
    assert_eq!(delta["version"], 2, "{delta}");
    assert_eq!(delta["clientToken"], token, "{delta}");
    for path in [
        "/metadata/led/timestamp",
        "/metadata/cfg/b/timestamp",
        "/metadata/s/timestamp",
    ] {
        assert!(delta.pointer(path).is_some(), "S-3.6: no {path} in {delta}");
    }
    assert!(
        delta.pointer("/metadata/cfg/a").is_none(),
        "S-3.6: metadata only of the delta's leaves: {delta}"
    );

    // The device catches up: reported-only, so no delta message.
    let (ok, _) = c
        .update(
            &id,
            "default",
            json!({"state":{"reported":{"led":"on","cfg":{"b":2},"s":1}}}),
        )
        .await;
    assert!(ok);
    assert!(
        !c.sees(&delta_topic, QUIET).await,
        "S-3.6: no delta message"
    );

    // A desired change that leaves the delta empty publishes no delta either.
    let (ok, _) = c
        .update(&id, "default", json!({"state":{"desired":{"n":1}}}))
        .await;
    assert!(ok);
    assert!(
        !c.sees(&delta_topic, QUIET).await,
        "S-3.6: an empty delta is not published"
    );
    let (ok, doc) = c.get(&id, "default").await;
    assert!(ok);
    assert!(doc["state"].get("delta").is_none(), "in sync: {doc}");

    // A second desired change: the delta message holds the FULL delta, not just the new key.
    let (ok, _) = c
        .update(&id, "default", json!({"state":{"desired":{"x":true}}}))
        .await;
    assert!(ok);
    let (ok, _) = c
        .update(&id, "default", json!({"state":{"desired":{"y":[1,2]}}}))
        .await;
    assert!(ok);
    let _first = c.expect_message(&delta_topic, STEP).await;
    let second = c.expect_message(&delta_topic, STEP).await;
    assert_eq!(second["state"], json!({"x":true,"y":[1,2]}), "{second}");
}
both!(s3_6_delta_published);

/// S-3.7: `update/documents` with previous/current after every accepted update, to the thing and
/// to service users.
async fn s3_7_documents(proto: Proto) {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(proto, "t").await;
    let mut svc = hub.connect_service(proto).await;
    let docs_topic = shadow_topic(&id, "default", "update/documents");
    assert!(svc.subscribe(&docs_topic).await.expect("sub") < 0x80);

    let (ok, r1) = c
        .update(
            &id,
            "default",
            json!({"state":{"reported":{"a":1,"b":{"c":2}}}}),
        )
        .await;
    assert!(ok);
    let d1 = c.expect_message(&docs_topic, STEP).await;
    assert_eq!(d1["current"]["version"], 1, "{d1}");
    assert_eq!(
        d1["current"]["state"]["reported"],
        json!({"a":1,"b":{"c":2}})
    );
    assert_eq!(d1["clientToken"], r1["clientToken"]);
    assert!(d1["timestamp"].is_u64(), "{d1}");
    if let Some(prev) = d1.get("previous").filter(|p| !p.is_null()) {
        assert_eq!(
            prev["version"], 0,
            "S-3.7 previous of the first update: {d1}"
        );
    }

    let (ok, r2) = c
        .update(
            &id,
            "default",
            json!({"state":{"reported":{"a":null,"b":{"d":3}}}}),
        )
        .await;
    assert!(ok);
    let d2 = c.expect_message(&docs_topic, STEP).await;
    assert_eq!(d2["previous"]["version"], 1, "{d2}");
    assert_eq!(
        d2["previous"]["state"]["reported"],
        json!({"a":1,"b":{"c":2}})
    );
    assert_eq!(d2["current"]["version"], 2);
    assert_eq!(
        d2["current"]["state"]["reported"],
        json!({"b":{"c":2,"d":3}})
    );
    assert!(
        d2["current"]["metadata"]["reported"]["b"]["d"]["timestamp"].is_u64(),
        "{d2}"
    );
    assert!(
        d2["current"]["metadata"]["reported"].get("a").is_none(),
        "S-3.4: null deletes the key's metadata: {d2}"
    );
    assert_eq!(d2["clientToken"], r2["clientToken"]);

    // The service user sees the same two documents.
    let s1 = svc.expect_message(&docs_topic, STEP).await;
    let s2 = svc.expect_message(&docs_topic, STEP).await;
    assert_eq!(s1["current"]["version"], 1);
    assert_eq!(s2["current"]["version"], 2);
}
both!(s3_7_documents);

/// S-3.4: merge rules: absent keys untouched, null deletes, objects merge, arrays replace,
/// emptied objects removed, `"desired": null` clears desired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_4_merge_rules() {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(Proto::V5, "t").await;
    let (ok, _) = c
        .update(
            &id,
            "default",
            json!({"state":{
                "reported":{"keep":1,"obj":{"x":1,"y":2},"arr":[1,2,3],"gone":true},
                "desired":{"d1":1,"d2":{"e":2}}
            }}),
        )
        .await;
    assert!(ok);
    let (ok, r) = c
        .update(
            &id,
            "default",
            json!({"state":{"reported":{"obj":{"x":null,"y":null},"arr":[9],"gone":null,"new":{"k":"v"}}}}),
        )
        .await;
    assert!(ok, "{r}");
    assert_eq!(r["version"], 2);
    let (ok, doc) = c.get(&id, "default").await;
    assert!(ok);
    assert_eq!(
        doc["state"]["reported"],
        json!({"keep":1,"arr":[9],"new":{"k":"v"}}),
        "S-3.4 merge: {doc}"
    );
    let md = &doc["metadata"]["reported"];
    assert!(
        md.get("obj").is_none(),
        "S-3.4 emptied object removed: {doc}"
    );
    assert!(
        md.get("gone").is_none(),
        "S-3.4 null deletes metadata: {doc}"
    );
    assert!(
        md["arr"]["timestamp"].is_u64(),
        "array leaf timestamp: {doc}"
    );

    let (ok, _) = c
        .update(&id, "default", json!({"state":{"desired":null}}))
        .await;
    assert!(ok);
    let (ok, doc) = c.get(&id, "default").await;
    assert!(ok);
    assert!(
        doc["state"].get("desired").is_none() || doc["state"]["desired"] == json!({}),
        "S-3.3 desired:null clears desired: {doc}"
    );
    assert_eq!(doc["version"], 3);
}

/// S-2/S-3: named shadows (`name/config`) are separate documents.
async fn s3_named_shadow(proto: Proto) {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(proto, "t").await;
    let (ok, r) = c
        .update(&id, "config", json!({"state":{"desired":{"rate":10}}}))
        .await;
    assert!(ok, "{r}");
    assert_eq!(r["version"], 1);
    let delta = c
        .expect_message(&shadow_topic(&id, "config", "update/delta"), STEP)
        .await;
    assert_eq!(delta["state"], json!({"rate":10}));
    let (ok, doc) = c.get(&id, "config").await;
    assert!(ok, "{doc}");
    assert_eq!(doc["state"]["desired"], json!({"rate":10}));
    let (ok, d) = c.get(&id, "default").await;
    assert!(!ok, "the classic shadow is untouched: {d}");
    let (status, rest) = hub.rest_shadow(&id, "config").await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(rest["version"], 1);
    let (status, _) = hub.rest_shadow(&id, "default").await;
    assert_eq!(status, 404);
}
both!(s3_named_shadow);

/// S-3.4: a `version` that is not the current one → 409 on `update/rejected`, nothing changes.
async fn s3_4_version_conflict_409(proto: Proto) {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(proto, "t").await;
    let (ok, _) = c
        .update(
            &id,
            "default",
            json!({"state":{"reported":{"a":1}},"version":0}),
        )
        .await;
    // `version: 0` on a shadow that does not exist yet: either accepted as "must not exist" or
    // 409; docs/spec.md only fixes the behaviour against an existing version.
    if !ok {
        let (ok2, r) = c
            .update(&id, "default", json!({"state":{"reported":{"a":1}}}))
            .await;
        assert!(ok2, "{r}");
    }
    let (ok, r) = c
        .update(
            &id,
            "default",
            json!({"state":{"reported":{"a":2}},"version":1}),
        )
        .await;
    assert!(ok, "matching version must be accepted: {r}");
    assert_eq!(r["version"], 2);
    let (ok, r) = c
        .update(
            &id,
            "default",
            json!({"state":{"reported":{"a":3}},"version":1}),
        )
        .await;
    assert!(!ok, "stale version must be rejected: {r}");
    assert_eq!(r["code"], 409, "S-3.4: {r}");
    assert!(r["clientToken"].is_string(), "S-3.8 token echoed: {r}");
    let (ok, r) = c
        .update(
            &id,
            "default",
            json!({"state":{"reported":{"a":3}},"version":7}),
        )
        .await;
    assert!(!ok);
    assert_eq!(r["code"], 409, "S-3.4 future version: {r}");
    let (_, doc) = hub.rest_shadow(&id, "default").await;
    assert_eq!(doc["version"], 2, "nothing changed: {doc}");
    assert_eq!(doc["state"]["reported"]["a"], 2, "nothing changed: {doc}");
}
both!(s3_4_version_conflict_409);

/// S-4.1: several requests in flight, each reply carries its request's clientToken.
async fn s4_1_pipelined_requests_matched_by_token(proto: Proto) {
    let hub = Hub::start();
    let (id, _s, mut c) = hub.new_thing(proto, "t").await;
    let topic = shadow_topic(&id, "default", "update");
    for i in 0..8 {
        let req = json!({"state":{"reported":{"i":i}},"clientToken":format!("p-{i}")});
        c.publish_nowait(&topic, serde_json::to_vec(&req).expect("json"))
            .await
            .expect("publish");
    }
    let mut versions = Vec::new();
    for i in 0..8 {
        let (ok, r) = c
            .shadow_reply(&id, "default", "update", &format!("p-{i}"))
            .await;
        assert!(ok, "{r}");
        assert_eq!(
            r["state"]["reported"]["i"], i,
            "reply matches its request: {r}"
        );
        versions.push(r["version"].as_u64().expect("version"));
    }
    // Applied in arrival order: versions 1..=8 in request order.
    assert_eq!(versions, (1..=8).collect::<Vec<u64>>());
}
both!(s4_1_pipelined_requests_matched_by_token);

/// S-3.4: a thing (MQTT) and REST (PUT desired) racing with the same `version`: exactly one
/// wins, the other gets 409; no lost update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_4_concurrent_writers_exactly_one_wins() {
    let hub = Hub::start_args(&["--shadow-requests-per-sec", "1000"]);
    let (id, _s, mut c) = hub.new_thing(Proto::V5, "t").await;
    let (ok, _) = c
        .update(&id, "default", json!({"state":{"reported":{"r":0}}}))
        .await;
    assert!(ok);
    let rounds = 15u64;
    let mut version = 1u64;
    let (mut mqtt_wins, mut rest_wins) = (0, 0);
    for round in 0..rounds {
        let mqtt = c.update(
            &id,
            "default",
            json!({"state":{"desired":{"by":"mqtt","round":round}},"version":version}),
        );
        let path = format!("/things/{id}/shadows/default/state/desired");
        let rest = hub.put(
            &path,
            json!({"state":{"desired":{"by":"rest","round":round}},"version":version}),
        );
        let ((m_ok, m_reply), (r_status, r_body)) = tokio::join!(mqtt, rest);
        if !m_ok {
            assert_eq!(m_reply["code"], 409, "S-3.4 MQTT loser: {m_reply}");
        }
        assert!(
            r_status == 200 || r_status == 409,
            "S-3.4/S-9.3 REST: {r_status} {r_body}"
        );
        assert_envelope(r_status, &r_body);
        let r_ok = r_status == 200;
        assert!(
            m_ok ^ r_ok,
            "S-3.4 round {round}: exactly one must win (mqtt {m_ok} {m_reply}, rest {r_status} {r_body})"
        );
        if m_ok {
            mqtt_wins += 1;
        } else {
            rest_wins += 1;
        }
        version += 1;
        let (_, doc) = hub.rest_shadow(&id, "default").await;
        assert_eq!(doc["version"], version, "{doc}");
        let winner = if m_ok { "mqtt" } else { "rest" };
        assert_eq!(
            doc["state"]["desired"]["by"], winner,
            "no lost update: {doc}"
        );
    }
    eprintln!("concurrent writers: mqtt won {mqtt_wins}, rest won {rest_wins}");
}
