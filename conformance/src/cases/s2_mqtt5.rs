//! S-2 rules that MQTT 5 clients see at the protocol level: session persistence decided by the
//! Session Expiry Interval (MQTT 5 §3.1.2.11.2), retained messages on a thing's free topics and
//! their per-thing cap, and Topic Alias misuse closing the connection with DISCONNECT 0x94
//! (MQTT 5 §3.3.2.3.4; the hub offers no topic aliases), and shared subscriptions (S-2.8,
//! MQTT 5 §4.8.2): service users share a group, things are refused.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use iothub_spec::limits::MAX_RETAINED_PER_THING;
use iothub_spec::topic::{Topic, fleet};

use crate::case::Case;
use crate::check::{self, SubOutcome};
use crate::ctx::Ctx;
use crate::ensure;
use crate::mqtt::{Proto, STEP};
use crate::raw::{ConnectOpts, Raw, RawReply, prop};

/// DISCONNECT 0x94 Topic Alias invalid (MQTT 5 §3.3.2.3.4).
const TOPIC_ALIAS_INVALID: u8 = 0x94;
/// PUBACK 0x97 Quota exceeded (MQTT 5 §3.4.2.1).
const QUOTA_EXCEEDED: u8 = 0x97;
/// How long a case watches for something that must not arrive.
const QUIET: Duration = Duration::from_millis(700);
/// PUBACK 0x10 No matching subscribers: a success (MQTT 5 §3.4.2.1), which a broker may send
/// for a message nobody receives (Mosquitto does).
const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;

/// Whether a PUBACK reason code says the message was accepted (MQTT 5 §3.4.2.1).
fn accepted(reply: &RawReply) -> bool {
    matches!(reply, RawReply::PubAck(0 | NO_MATCHING_SUBSCRIBERS))
}

/// The MQTT 5 S-2 cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "s2_session_expiry_keeps_session_v5",
            &["S-2"],
            "MQTT 5 Clean Start 1 + Session Expiry 3600, offline, Clean Start 0: Session Present 1 and the queued QoS 1 message",
            session_kept,
        ),
        Case::new(
            "s2_session_expiry_zero_starts_clean_v5",
            &["S-2"],
            "MQTT 5 Session Expiry 0 with Clean Start 0: Session Present 0 and nothing queued",
            session_zero,
        ),
        Case::new(
            "s2_retained_user_topic",
            &["S-2"],
            "a retained message on $iothub/user/things/{id}/.. reaches a later subscriber with RETAIN 1",
            retained_user_topic,
        ),
        Case::new(
            "s2_retained_cap_v5",
            &["S-2"],
            "one retained user topic over the per-thing limit gets PUBACK 0x97",
            retained_cap,
        ),
        Case::new(
            "s2_topic_alias_refused_v5",
            &["S-2"],
            "Topic Alias 1 (maximum 0) and Topic Alias 0 each close the connection with DISCONNECT 0x94",
            topic_alias_refused,
        ),
        Case::new(
            "s2_shared_subscription_service_users_v5",
            &["S-2.8", "S-1.5"],
            "two service users in one $share/{group}/ group are both granted; each QoS 1 message reaches exactly one of them; outside $iothub/ a shared filter is answered as the plain one",
            shared_service_users,
        ),
        Case::new(
            "s2_shared_subscription_refused_to_things",
            &["S-2.8", "S-2.1"],
            "a thing's $share/{group}/ SUBSCRIBE to its own filter is refused (0x87 / 0x80); the plain filter is still granted",
            shared_refused_to_things,
        ),
    ]
}

fn user_topic(thing: &str, rest: &str) -> String {
    Topic::User { thing, rest }.to_string()
}

/// Waits until the registry says the thing is offline (S-8.2).
async fn wait_offline(ctx: &Ctx, thing: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/things/{thing}");
    Ctx::poll_until(STEP, || async {
        let r = ctx.api.get(&path).await.ok()?;
        (r.data()["connected"] == serde_json::json!(false)).then_some(())
    })
    .await
    .with_context(|| format!("S-8.2 {thing} still connected after DISCONNECT"))
}

/// A service user connection that publishes `payload` at QoS 1 on `topic`.
async fn service_publish(ctx: &Ctx, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
    let mut s = ctx.service(Proto::V5).await?;
    let ack = s
        .publish_acked(topic, payload)
        .await
        .context("S-1.5 service user publish")?;
    ensure!(
        matches!(ack, Some(0 | NO_MATCHING_SUBSCRIBERS)),
        "S-1.5 service user publish not acknowledged: {ack:?}"
    );
    s.disconnect().await;
    Ok(())
}

async fn session_kept(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let addr = &ctx.mqtt;
    let topic = user_topic(&t.id, "queued");
    let opts = ConnectOpts::new(&t.id, &t.id, &t.secret).session_expiry(3600);
    let (mut c, ack) = Raw::connect_ok(addr, &opts).await?;
    ensure!(
        !ack.session_present,
        "MQTT 5 §3.2.2.1.1: Clean Start 1 reported Session Present 1"
    );
    ensure!(
        c.subscribe_raw(&topic, 1).await == RawReply::SubAck(vec![1]),
        "S-2.1 own user topic refused"
    );
    c.disconnect(None).await;
    wait_offline(&ctx, &t.id).await?;
    service_publish(&ctx, &topic, b"{\"n\":1}").await?;
    let (mut c, ack) = Raw::connect_ok(addr, &opts.clean_start(false)).await?;
    ensure!(
        ack.session_present,
        "MQTT 5 §3.1.2.11.2: a session with Session Expiry 3600 was not kept (Session Present 0)"
    );
    let got = c.expect_publish(&topic, STEP).await;
    ensure!(
        got.is_some(),
        "MQTT 5 §4.1: the QoS 1 message queued while offline was lost"
    );
    Ok(())
}

async fn session_zero(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let addr = &ctx.mqtt;
    let topic = user_topic(&t.id, "queued");
    let opts = ConnectOpts::new(&t.id, &t.id, &t.secret)
        .clean_start(false)
        .session_expiry(0);
    let (mut c, _) = Raw::connect_ok(addr, &opts).await?;
    ensure!(
        c.subscribe_raw(&topic, 1).await == RawReply::SubAck(vec![1]),
        "S-2.1 own user topic refused"
    );
    c.disconnect(None).await;
    wait_offline(&ctx, &t.id).await?;
    service_publish(&ctx, &topic, b"{\"n\":1}").await?;
    let (mut c, ack) = Raw::connect_ok(addr, &opts).await?;
    ensure!(
        !ack.session_present,
        "MQTT 5 §3.1.2.11.2: a session with Session Expiry 0 outlived its connection"
    );
    ensure!(
        c.expect_publish(&topic, QUIET).await.is_none(),
        "MQTT 5 §3.1.2.11.2: a message was queued for an ended session"
    );
    Ok(())
}

async fn retained_user_topic(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let topic = user_topic(&t.id, "config");
    let addr = &ctx.mqtt;
    for p in Proto::BOTH {
        let opts = ConnectOpts::new(&t.id, &t.id, &t.secret).proto(p);
        let (mut c, _) = Raw::connect_ok(addr, &opts).await?;
        let payload = format!("{{\"proto\":\"{}\"}}", p.tag());
        let ack = c.publish_acked(&topic, payload.as_bytes(), true, &[]).await;
        ensure!(
            accepted(&ack),
            "S-2 retained publish on the thing's own user topic not acknowledged ({}): {ack:?}",
            p.tag()
        );
        let (mut late, _) = Raw::connect_ok(addr, &opts).await?;
        ensure!(
            late.subscribe_raw(&topic, 1).await == RawReply::SubAck(vec![1]),
            "S-2.1 own user topic refused"
        );
        let got = late
            .expect_publish(&topic, STEP)
            .await
            .map(|p| (p.retain, p.payload));
        ensure!(
            got == Some((true, payload.clone().into_bytes())),
            "S-2 the retained message did not reach a later subscriber with RETAIN 1 ({}): {got:?}",
            p.tag()
        );
    }
    Ok(())
}

async fn retained_cap(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let addr = &ctx.mqtt;
    let (mut c, _) = Raw::connect_ok(addr, &ConnectOpts::new(&t.id, &t.id, &t.secret)).await?;
    for i in 0..MAX_RETAINED_PER_THING {
        let topic = user_topic(&t.id, &format!("k{i}"));
        let ack = c.publish_acked(&topic, b"{}", true, &[]).await;
        ensure!(
            accepted(&ack),
            "S-2 retained message {i} of {MAX_RETAINED_PER_THING} refused: {ack:?}"
        );
    }
    let extra = user_topic(&t.id, "extra");
    let r = c.publish_acked(&extra, b"{}", true, &[]).await;
    ensure!(
        r == RawReply::PubAck(QUOTA_EXCEEDED),
        "S-2 retained message {} of a thing: want PUBACK 0x97, got {r:?}",
        MAX_RETAINED_PER_THING + 1
    );
    Ok(())
}

async fn topic_alias_refused(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let topic = user_topic(&t.id, "a");
    let addr = &ctx.mqtt;
    for alias in [1u32, 0] {
        let (mut c, _) = Raw::connect_ok(addr, &ConnectOpts::new(&t.id, &t.id, &t.secret)).await?;
        let got = c
            .publish_acked(&topic, b"{}", false, &[(prop::TOPIC_ALIAS, alias)])
            .await;
        ensure!(
            got == RawReply::Disconnect(TOPIC_ALIAS_INVALID),
            "MQTT 5 §3.3.2.3.4: Topic Alias {alias} with Topic Alias Maximum 0: want DISCONNECT 0x94, got {got:?}"
        );
    }
    Ok(())
}

/// Messages a thing publishes to the shared group.
const SHARED_MESSAGES: u64 = 10;

async fn shared_service_users(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let topic = user_topic(&t.id, "shared");
    // A group of this run's own, so that no other client is a member.
    let group = format!("conformance{}", ctx.fresh_id().replace('-', ""));
    let filter = fleet::shared(&group, &topic).context("S-2.8 a shared filter")?;
    let mut members = Vec::new();
    for _ in 0..2 {
        let mut m = ctx.service(Proto::V5).await?;
        let codes = m.subscribe(&filter).await?;
        ensure!(
            codes == [1],
            "S-2.8 a service user's SUBSCRIBE {filter} was not granted QoS 1: SUBACK {codes:02x?}"
        );
        members.push(m);
    }
    // D-80: a shared filter gets the answer of its inner filter, also outside `$iothub/`.
    let outside = format!("conformance/{}", ctx.fresh_id());
    let plain = members[0].subscribe(&outside).await?;
    let other = fleet::shared(&format!("{group}x"), &outside).context("a shared filter")?;
    let shared = members[0].subscribe(&other).await?;
    ensure!(
        plain.iter().all(|c| *c <= 2) == shared.iter().all(|c| *c <= 2),
        "S-2.8 (D-80) {other} answered unlike {outside}: SUBACK {shared:02x?}, plain {plain:02x?}"
    );
    let d = ctx.connect(&t, Proto::V5, vec![]).await?;
    let mut d = d.conn;
    for i in 0..SHARED_MESSAGES {
        let ack = d
            .publish_acked(&topic, format!("{{\"i\":{i}}}").as_bytes())
            .await?;
        ensure!(
            matches!(ack, Some(0 | NO_MATCHING_SUBSCRIBERS)),
            "S-2 the thing's QoS 1 publish {i} on {topic} not acknowledged: {ack:?}"
        );
    }
    // Until every message arrived, then a little longer for a duplicate.
    let mut got: Vec<Vec<u64>> = vec![Vec::new(); members.len()];
    let collect = |members: &mut Vec<crate::mqtt::Conn>, got: &mut Vec<Vec<u64>>| {
        for (m, g) in members.iter_mut().zip(got.iter_mut()) {
            g.extend(
                m.drain_publishes()
                    .iter()
                    .filter(|p| p.topic == topic)
                    .filter_map(|p| p.json()["i"].as_u64()),
            );
        }
    };
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        collect(&mut members, &mut got);
        let n: usize = got.iter().map(Vec::len).sum();
        if n as u64 >= SHARED_MESSAGES || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(QUIET).await;
    collect(&mut members, &mut got);
    let mut all: Vec<u64> = got.concat();
    all.sort_unstable();
    let want: Vec<u64> = (0..SHARED_MESSAGES).collect();
    ensure!(
        all == want,
        "S-2.8 each message goes to exactly one member of the group: want {want:?} once each, the members got {:?} and {:?}",
        got[0],
        got[1]
    );
    Ok(())
}

async fn shared_refused_to_things(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let own = user_topic(&t.id, "shared");
    let filter = fleet::shared("things", &own).context("S-2.8 a shared filter")?;
    for p in Proto::BOTH {
        let mut d = ctx.connect(&t, p, vec![]).await?;
        let got = match d.conn.subscribe(&filter).await {
            Ok(c) => SubOutcome::Codes(c),
            Err(_) if d.conn.closed_reason().is_some() => {
                d = ctx.connect(&t, p, vec![]).await?;
                SubOutcome::Closed
            }
            Err(_) => SubOutcome::Silent,
        };
        if let Err(e) = check::judge_subscribe(ctx.denials, false, false, p, &got) {
            anyhow::bail!("S-2.8 a thing's SUBSCRIBE {filter} ({}): {e}", p.tag());
        }
        let codes = d.conn.subscribe(&own).await?;
        ensure!(
            codes == [1],
            "S-2.1 the thing's own filter {own} after the refused $share one ({}): SUBACK {codes:02x?}",
            p.tag()
        );
    }
    Ok(())
}
