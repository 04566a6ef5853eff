//! S-2 topics: the allow-list in both directions over both protocol versions (every `acl`
//! vector of `topics.json`), SUBACK/PUBACK codes, QoS and retain of hub responses, and the
//! forwarding of telemetry, Wills and user topics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::topic::{Topic, is_valid_filter};
use serde_json::{Value, json};

use crate::case::Case;
use crate::check::{self, PubOutcome, SubOutcome};
use crate::ctx::{Ctx, Thing, own_filter};
use crate::ensure;
use crate::external::{AclExpectation, acl_expectation};
use crate::mqtt::{Conn, ConnectOpts, Proto, STEP};
use crate::raw::{self, Raw, RawReply};
use crate::vectors;

/// The S-2 cases.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for p in Proto::BOTH {
        let t = p.tag();
        v.push(Case::new(format!("s2_acl_publish_{t}"), &["S-2.1", "S-2.2"], format!("every publish vector of topics.json: allowed ones acked, denied ones never delivered ({t})"), move |c| acl_publish(c, p)));
        v.push(Case::new(format!("s2_acl_subscribe_{t}"), &["S-2.1", "S-2.2"], format!("every subscribe vector of topics.json: SUBACK grant or failure code, nothing leaks ({t})"), move |c| acl_subscribe(c, p)));
        v.push(Case::new(
            format!("s2_subscription_cap_{t}"),
            &["S-2.2", "S-3.9"],
            format!("a thing gets maxSubscriptions filters; one more is refused in SUBACK (0x97 / 0x80), re-subscribing a held one is not ({t})"),
            move |c| subscription_cap(c, p),
        ));
        v.push(Case::new(
            format!("s2_responses_qos1_not_retained_{t}"),
            &["S-2.3"],
            format!("shadow replies, delta and documents arrive at QoS 1 without retain ({t})"),
            move |c| responses_qos(c, p),
        ));
    }
    v.push(Case::new(
        "s2_presence_retained",
        &["S-2.3", "S-8.1"],
        "T/presence is retained: a late subscriber gets the last event with RETAIN",
        presence_retained,
    ));
    v.push(Case::new(
        "s2_property_forwarded",
        &["S-2"],
        "T/messages/property is forwarded to service users",
        property_forwarded,
    ));
    v.push(Case::new(
        "s2_user_topics_both_ways",
        &["S-2"],
        "$iothub/user/things/{id}/.. flows thing -> service user and back",
        user_topics,
    ));
    v.push(Case::new(
        "s2_will_forwarded",
        &["S-2"],
        "a thing's Will on T/messages/will/.. reaches service users when it drops",
        will_forwarded,
    ));
    v
}

/// Replaces the vector ids `t1`, `t2`, `t10` (whole levels) by this run's things.
fn subst(topic: &str, a: &str, b: &str, c: &str) -> String {
    topic
        .split('/')
        .map(|l| match l {
            "t1" => a,
            "t2" => b,
            "t10" => c,
            other => other,
        })
        .collect::<Vec<_>>()
        .join("/")
}

struct Things {
    a: Thing,
    b: Thing,
    c: Thing,
}

async fn acl_things(ctx: &Ctx) -> anyhow::Result<Things> {
    let a = ctx.create_thing().await?;
    let b = ctx.create_thing().await?;
    let c = ctx
        .create_thing_named(&format!("{}0", a.id), json!({}))
        .await?;
    Ok(Things { a, b, c })
}

fn acl_vectors(key: &str) -> Vec<(String, String, bool)> {
    vectors::load(vectors::TOPICS)["acl"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| {
                    Some((
                        v["thing"].as_str()?.to_string(),
                        v.get(key)?.as_str()?.to_string(),
                        v["allowed"].as_bool()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn acl_publish(ctx: Arc<Ctx>, p: Proto) -> anyhow::Result<()> {
    let th = acl_things(&ctx).await?;
    let mut obs = ctx.service(Proto::V5).await?;
    obs.subscribe_ok("$iothub/#").await?;
    // Outside $iothub a service user may be refused; then the hub has nowhere to leak to there.
    let _ = obs.subscribe("#").await;
    let mut errors = Vec::new();
    let mut denied = Vec::new();
    for (i, (thing, topic, allowed)) in acl_vectors("publish").into_iter().enumerate() {
        let who = match thing.as_str() {
            "t1" => &th.a,
            "t2" => &th.b,
            _ => &th.c,
        };
        let topic = subst(&topic, &th.a.id, &th.b.id, &th.c.id);
        let nonce = format!("acl-{}-{i}", ctx.fresh_id());
        let payload = json!({ "nonce": nonce }).to_string();
        let malformed = Topic::parse(&topic).is_err() && topic.contains(['+', '#']);
        let mut got = PubOutcome {
            ack: None,
            closed: false,
            delivered: false,
        };
        if malformed {
            let opts = raw::ConnectOpts::new(&who.id, &who.id, &who.secret).proto(p);
            let (mut raw, _) = Raw::connect_ok(&ctx.mqtt, &opts).await?;
            match raw
                .publish_acked(&topic, payload.as_bytes(), false, &[])
                .await
            {
                RawReply::PubAck(c) => got.ack = Some(c),
                r if r.is_closed() => got.closed = true,
                _ => {}
            }
        } else {
            let mut d = ctx.connect(who, p, vec![]).await?;
            got.ack = d.conn.publish_acked(&topic, payload.as_bytes()).await?;
            got.closed =
                d.conn.closed_reason().is_some() || !d.conn.ping(&own_filter(&who.id)).await;
        }
        match acl_expectation(ctx.denials, allowed, &who.id, &topic, false) {
            AclExpectation::Denied => denied.push((topic.clone(), nonce, malformed, got.clone())),
            AclExpectation::Allowed => {
                if let Err(e) = check::judge_publish(ctx.denials, true, malformed, p, &got) {
                    errors.push(format!("{} publish {topic}: {e}", who.id));
                }
            }
            AclExpectation::Either => {}
        }
    }
    // Let anything the hub wrongly forwards arrive: a sentinel from the observer itself, then a
    // short grace period, bounds the wait.
    let sentinel = Topic::User {
        thing: &th.a.id,
        rest: "sentinel",
    }
    .to_string();
    obs.publish(&sentinel, b"{}", true).await?;
    ensure!(
        obs.recv_on(&sentinel, STEP).await.is_some(),
        "observer sentinel did not arrive"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen: Vec<String> = obs
        .drain_publishes()
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect();
    for (topic, nonce, malformed, mut got) in denied {
        got.delivered = seen.iter().any(|s| s.contains(&nonce));
        if let Err(e) = check::judge_publish(ctx.denials, false, malformed, p, &got) {
            errors.push(format!("publish {topic}: {e}"));
        }
    }
    ensure!(errors.is_empty(), "S-2.1/S-2.2: {}", errors.join("; "));
    Ok(())
}

async fn acl_subscribe(ctx: Arc<Ctx>, p: Proto) -> anyhow::Result<()> {
    let th = acl_things(&ctx).await?;
    let mut errors = Vec::new();
    let mut d = ctx.connect(&th.a, p, vec![]).await?;
    let mut denied_ok = 0;
    for (_, filter, allowed) in acl_vectors("subscribe") {
        let filter = subst(&filter, &th.a.id, &th.b.id, &th.c.id);
        let malformed = !is_valid_filter(&filter) || filter.is_empty();
        let got = if malformed {
            let opts = raw::ConnectOpts::new(&th.a.id, &th.a.id, &th.a.secret).proto(p);
            let (mut raw, _) = Raw::connect_ok(&ctx.mqtt, &opts).await?;
            let r = raw.subscribe_raw(&filter, 1).await;
            // The raw connection took the session over; reconnect the rumqttc one.
            drop(raw);
            d = ctx.connect(&th.a, p, vec![]).await?;
            match r {
                RawReply::SubAck(c) => SubOutcome::Codes(c),
                r if r.is_closed() => SubOutcome::Closed,
                _ => SubOutcome::Silent,
            }
        } else {
            match d.conn.subscribe(&filter).await {
                Ok(c) => SubOutcome::Codes(c),
                Err(_) if d.conn.closed_reason().is_some() => {
                    d = ctx.connect(&th.a, p, vec![]).await?;
                    SubOutcome::Closed
                }
                Err(_) => SubOutcome::Silent,
            }
        };
        if !allowed && matches!(&got, SubOutcome::Codes(c) if c.iter().all(|x| *x > 2)) {
            denied_ok += 1;
        }
        let allowed = match acl_expectation(ctx.denials, allowed, &th.a.id, &filter, true) {
            AclExpectation::Allowed => true,
            AclExpectation::Denied => false,
            AclExpectation::Either => continue,
        };
        if let Err(e) = check::judge_subscribe(ctx.denials, allowed, malformed, p, &got) {
            errors.push(format!("subscribe {filter:?}: {e}"));
        }
    }
    // Nothing outside its own tree may reach the thing through the refused filters.
    if ctx.service.is_some() && denied_ok > 0 {
        let s = ctx.service(Proto::V5).await?;
        for t in [
            Topic::Property { thing: &th.b.id }.to_string(),
            Topic::User {
                thing: &th.b.id,
                rest: "x",
            }
            .to_string(),
            Topic::PresenceEvent { thing: &th.a.id }.to_string(),
        ] {
            s.publish(&t, b"{\"leak\":true}", true).await?;
        }
        let own = Topic::User {
            thing: &th.a.id,
            rest: "sentinel",
        }
        .to_string();
        d.conn.subscribe_ok(&own).await?;
        s.publish(&own, b"{}", true).await?;
        ensure!(
            d.recv_on(&own, STEP).await.is_some(),
            "sentinel on {own} did not arrive"
        );
        let leaked: Vec<String> = d
            .conn
            .drain_publishes()
            .into_iter()
            .filter(|m| m.payload == b"{\"leak\":true}")
            .map(|m| m.topic)
            .collect();
        if !leaked.is_empty() {
            errors.push(format!(
                "the thing received messages of other things through refused filters: {leaked:?}"
            ));
        }
    }
    ensure!(errors.is_empty(), "S-2.1/S-2.2: {}", errors.join("; "));
    Ok(())
}

/// The per-thing subscription cap reported by `GET /api/v1/limits` (`maxSubscriptions`).
async fn subscription_cap(ctx: Arc<Ctx>, p: Proto) -> anyhow::Result<()> {
    let max = ctx.limits.max_subscriptions as usize;
    let thing = ctx.create_thing().await?;
    let mut d = ctx.connect(&thing, p, vec![]).await?;
    let filter = |i: usize| {
        Topic::User {
            thing: &thing.id,
            rest: &format!("cap/{i}"),
        }
        .to_string()
    };
    // The connection may hold subscriptions of its own already; fill up to the cap.
    let mut granted = 0;
    let mut i = 0;
    let refusal = loop {
        ensure!(
            i <= max,
            "{} filters subscribed, none refused (cap {max})",
            i
        );
        let codes = d.conn.subscribe(&filter(i)).await.context("SUBSCRIBE")?;
        let code = codes.first().copied().context("empty SUBACK")?;
        if code > 2 {
            break code;
        }
        granted += 1;
        i += 1;
    };
    let expected = match p {
        Proto::V5 => 0x97,
        Proto::V311 => 0x80,
    };
    ensure!(
        refusal == expected,
        "SUBACK {refusal:#04x} over the cap, want {expected:#04x}"
    );
    ensure!(
        granted >= 1 && granted <= max,
        "{granted} filters granted, cap {max}"
    );
    let again = d
        .conn
        .subscribe(&filter(0))
        .await
        .context("SUBSCRIBE again")?;
    ensure!(
        again.first().is_some_and(|c| *c <= 2),
        "re-subscribing a held filter at the cap was refused: {again:?}"
    );
    Ok(())
}

async fn responses_qos(ctx: Arc<Ctx>, p: Proto) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(p).await?;
    let id = d.thing.id.clone();
    let upd = d.shadow_topic(DEFAULT_SHADOW, true);
    d.conn
        .publish(
            &upd,
            json!({"state": {"desired": {"a": 1}}})
                .to_string()
                .as_bytes(),
            true,
        )
        .await?;
    let mut bad = Vec::new();
    for t in [
        Topic::ShadowUpdateAccepted {
            thing: &id,
            shadow: DEFAULT_SHADOW,
        },
        Topic::ShadowUpdateDelta {
            thing: &id,
            shadow: DEFAULT_SHADOW,
        },
        Topic::ShadowUpdateDocuments {
            thing: &id,
            shadow: DEFAULT_SHADOW,
        },
    ] {
        let t = t.to_string();
        match d.recv_on(&t, STEP).await {
            Some(m) if m.qos == 1 && !m.retain => {}
            Some(m) => bad.push(format!("{t}: qos {} retain {}", m.qos, m.retain)),
            None => bad.push(format!("{t}: not received")),
        }
    }
    let get = d.shadow_topic(DEFAULT_SHADOW, false);
    d.conn.publish(&get, b"{}", true).await?;
    let acc = Topic::ShadowGetAccepted {
        thing: &id,
        shadow: DEFAULT_SHADOW,
    }
    .to_string();
    match d.recv_on(&acc, STEP).await {
        Some(m) if m.qos == 1 && !m.retain => {}
        Some(m) => bad.push(format!("{acc}: qos {} retain {}", m.qos, m.retain)),
        None => bad.push(format!("{acc}: not received")),
    }
    ensure!(bad.is_empty(), "S-2.3 {}", bad.join("; "));
    Ok(())
}

async fn presence_retained(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let topic = Topic::Presence { thing: &t.id }.to_string();
    // The event may follow the CONNACK (a hub on an external broker learns of connects from the
    // broker's log, D-63): a first subscriber sees it published, then a later one must get it
    // retained.
    let mut first = ctx.observer(std::slice::from_ref(&topic)).await?;
    let _d = ctx.connect(&t, Proto::V311, vec![]).await?;
    first
        .recv_on(&topic, STEP)
        .await
        .with_context(|| format!("S-8.1 no presence event on {topic} after the connect"))?;
    let mut s = ctx.service(Proto::V311).await?;
    s.subscribe_ok(&topic).await?;
    let m = s
        .recv_on(&topic, STEP)
        .await
        .with_context(|| format!("S-2.3 no retained message on {topic} for a late subscriber"))?;
    ensure!(
        m.retain,
        "S-2.3 the presence message on {topic} was delivered without RETAIN to a new subscriber"
    );
    let v = m.json();
    ensure!(
        v["eventType"] == "connected",
        "S-8.1 retained presence says {}, expected connected",
        v["eventType"]
    );
    Ok(())
}

async fn property_forwarded(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let topic = Topic::Property { thing: &t.id }.to_string();
    let mut s = ctx.observer(std::slice::from_ref(&topic)).await?;
    let d = ctx.connect(&t, Proto::V5, vec![]).await?;
    let body = json!({"temp": 21.5, "door": {"open": false}});
    d.conn
        .publish(&topic, body.to_string().as_bytes(), true)
        .await?;
    let m = s
        .recv_on(&topic, STEP)
        .await
        .context("S-2 property not forwarded to the service user")?;
    ensure!(
        check::json_eq(&m.json(), &body),
        "S-2 property payload changed: {}",
        String::from_utf8_lossy(&m.payload)
    );
    Ok(())
}

async fn user_topics(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let up = Topic::User {
        thing: &t.id,
        rest: "up/x",
    }
    .to_string();
    let down = Topic::User {
        thing: &t.id,
        rest: "down/y",
    }
    .to_string();
    let mut s = ctx.observer(std::slice::from_ref(&up)).await?;
    let mut d = ctx.connect(&t, Proto::V311, vec![]).await?;
    d.conn.subscribe_ok(&down).await?;
    d.conn.publish(&up, b"{\"n\":1}", true).await?;
    ensure!(
        s.recv_on(&up, STEP).await.is_some(),
        "S-2 {up} did not reach the service user"
    );
    s.publish(&down, b"{\"n\":2}", true).await?;
    ensure!(
        d.recv_on(&down, STEP).await.is_some(),
        "S-2 {down} did not reach the thing"
    );
    Ok(())
}

async fn will_forwarded(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let will = Topic::Will {
        thing: &t.id,
        rest: "lost",
    }
    .to_string();
    let mut s = ctx.observer(std::slice::from_ref(&will)).await?;
    let c = Conn::connect(
        &ctx.mqtt,
        Proto::V311,
        ConnectOpts {
            client_id: t.id.clone(),
            username: t.id.clone(),
            password: t.secret.clone(),
            will: Some((will.clone(), b"{\"gone\":true}".to_vec())),
            pre_subscribe: vec![],
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("S-1.2 connect with a Will: {e}"))?;
    c.kill();
    let m = s.recv_on(&will, Duration::from_secs(10)).await;
    let Some(m) = m else {
        bail!("S-2 the Will on {will} was not forwarded within 10 s of the drop")
    };
    ensure!(
        m.json() == json!({"gone": true}),
        "S-2 Will payload changed: {}",
        Value::from(String::from_utf8_lossy(&m.payload).into_owned())
    );
    Ok(())
}
