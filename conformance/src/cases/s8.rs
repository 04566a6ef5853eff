//! S-8 presence and events: presence on connect/disconnect (retained and event topics), the
//! registry's connection status, all things disconnected after a restart, lifecycle events.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::topic::Topic;
use serde_json::{Value, json};

use crate::case::{Case, skip};
use crate::cases::s3::setup_update;
use crate::ctx::{Ctx, Reply, for_spawned};
use crate::ensure;
use crate::mqtt::{Conn, Msg, Proto, STEP};
use crate::spawn::SpawnedHub;

/// The S-8 cases.
pub fn cases() -> Vec<Case> {
    let mut v = vec![
        Case::new(
            "s8_presence_events",
            &["S-8.1"],
            "connect and disconnect publish presence on T/presence and the events topic",
            presence,
        ),
        Case::new(
            "s8_registry_connection_status",
            &["S-8.2", "S-9.2"],
            "GET /things/{id} shows connected, connectedAt, disconnectedAt",
            registry,
        ),
        Case::new(
            "s8_lifecycle_events",
            &["S-8.3"],
            "create, disable, enable, delete publish lifecycle events",
            lifecycle,
        ),
    ];
    let mut c = Case::new(
        "s8_restart_durable_and_disconnected",
        &["S-3.5", "S-8.2"],
        "after a crash (SIGKILL) accepted updates survive and every thing starts disconnected (--spawn-hub only)",
        restart,
    );
    c.limit = Duration::from_secs(120);
    v.push(c);
    v
}

fn check_presence(m: &Msg, id: &str, kind: &str) -> Vec<String> {
    let v = m.json();
    let mut e = Vec::new();
    if v["thingId"] != id || v["clientId"] != id {
        e.push(format!(
            "thingId/clientId {} / {}",
            v["thingId"], v["clientId"]
        ));
    }
    if v["eventType"] != kind {
        e.push(format!("eventType {} (expected {kind})", v["eventType"]));
    }
    if !v["timestamp"].is_u64() {
        e.push("timestamp missing".into());
    }
    let addr_ok = v["remoteAddr"]
        .as_str()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .is_some();
    if !addr_ok {
        e.push(format!("remoteAddr {} is not ip:port", v["remoteAddr"]));
    }
    e.into_iter()
        .map(|x| format!("{} {kind}: {x}", m.topic))
        .collect()
}

async fn presence(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let retained = Topic::Presence { thing: &t.id }.to_string();
    let event = Topic::PresenceEvent { thing: &t.id }.to_string();
    let mut s = ctx.observer(&[retained.clone(), event.clone()]).await?;
    let d = ctx.connect(&t, Proto::V5, vec![]).await?;
    let mut errs = Vec::new();
    expect_presence(&mut s, &t.id, "connected", &retained, &event, &mut errs).await;
    d.conn.disconnect().await;
    expect_presence(&mut s, &t.id, "disconnected", &retained, &event, &mut errs).await;
    ensure!(errs.is_empty(), "S-8.1 {}", errs.join("; "));
    Ok(())
}

async fn expect_presence(
    s: &mut Conn,
    id: &str,
    kind: &str,
    retained: &str,
    event: &str,
    errs: &mut Vec<String>,
) {
    for topic in [retained, event] {
        match s
            .recv(STEP, |m| m.topic == topic && m.json()["eventType"] == kind)
            .await
        {
            Some(m) => {
                errs.extend(check_presence(&m, id, kind));
                if topic == event && m.retain {
                    errs.push(format!("{event} is retained"));
                }
            }
            None => errs.push(format!("no {kind} event on {topic}")),
        }
    }
}

async fn thing_field(ctx: &Ctx, id: &str) -> anyhow::Result<Value> {
    let r = ctx.api.get(&format!("/api/v1/things/{id}")).await?;
    r.expect("S-9.2 GET thing", &[200])?;
    Ok(r.data().clone())
}

async fn wait_connected(ctx: &Ctx, id: &str, want: bool) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = thing_field(ctx, id).await?;
        if v["connected"] == want {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "S-8.2 connected is {} 5 s after the thing {}",
                v["connected"],
                if want { "connected" } else { "disconnected" }
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn registry(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let v = thing_field(&ctx, &t.id).await?;
    ensure!(
        v["connected"] == false,
        "S-8.2 a new thing shows connected = {}",
        v["connected"]
    );
    let d = ctx.connect(&t, Proto::V311, vec![]).await?;
    let v = wait_connected(&ctx, &t.id, true).await?;
    ensure!(
        v["connectedAt"].is_u64(),
        "S-8.2 connectedAt {} while connected",
        v["connectedAt"]
    );
    d.conn.disconnect().await;
    let v = wait_connected(&ctx, &t.id, false).await?;
    ensure!(
        v["disconnectedAt"].is_u64(),
        "S-8.2 disconnectedAt {} after a disconnect",
        v["disconnectedAt"]
    );
    Ok(())
}

async fn lifecycle(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut s = ctx
        .observer(&["$iothub/events/things/+/lifecycle".to_string()])
        .await?;
    let t = ctx.create_thing().await?;
    let path = format!("/api/v1/things/{}", t.id);
    ctx.api
        .patch(&path, json!({"enabled": false}))
        .await?
        .expect("PATCH disable", &[200])?;
    ctx.api
        .patch(&path, json!({"enabled": true}))
        .await?
        .expect("PATCH enable", &[200])?;
    ctx.api.delete(&path).await?.expect("DELETE", &[200, 204])?;
    let topic = Topic::LifecycleEvent { thing: &t.id }.to_string();
    let mut errs = Vec::new();
    for op in ["create", "disable", "enable", "delete"] {
        match s
            .recv(STEP, |m| m.topic == topic && m.json()["op"] == op)
            .await
        {
            Some(m) => {
                let v = m.json();
                if v["thingId"] != t.id.as_str() || !v["timestamp"].is_u64() {
                    errs.push(format!("{op}: {v}"));
                }
            }
            None => errs.push(format!("no {op} event on {topic}")),
        }
    }
    ensure!(errs.is_empty(), "S-8.3 {}", errs.join("; "));
    Ok(())
}

async fn restart(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let Some(spec) = &ctx.spawn else {
        return skip("needs --spawn-hub (the suite must be able to kill and restart a hub)");
    };
    // A hub instance of its own, so the crash does not disturb the other cases; spawned like
    // the hub under test, so with --tls it restarts over TLS too.
    let mut hub = SpawnedHub::start_spec(spec).await?;
    let c1 = for_spawned(&hub, None).await?;
    let mut d = c1.shadow_device(Proto::V5).await?;
    let id = d.thing.id.clone();
    setup_update(
        &mut d,
        DEFAULT_SHADOW,
        &json!({"state": {"reported": {"a": 1}}}),
    )
    .await?;
    let acc = d
        .update_ok(DEFAULT_SHADOW, &json!({"state": {"reported": {"b": 2}}}))
        .await?;
    ensure!(acc["version"] == 2, "S-3.4 version {}", acc["version"]);
    wait_connected(&c1, &id, true).await?;
    hub.crash_and_restart()
        .await
        .context("restarting the hub after SIGKILL")?;
    let c2 = for_spawned(&hub, None).await?;
    let v = thing_field(&c2, &id).await?;
    ensure!(
        v["connected"] == false,
        "S-8.2 after a restart the thing shows connected = {}",
        v["connected"]
    );
    let mut d2 = c2.connect(&d.thing, Proto::V311, vec![]).await?;
    d2.subscribe_shadow(DEFAULT_SHADOW).await?;
    match d2.get(DEFAULT_SHADOW).await? {
        Reply::Accepted(doc) => ensure!(
            doc["version"] == 2 && doc["state"]["reported"] == json!({"a": 1, "b": 2}),
            "S-3.5 after a crash the shadow is {doc} (expected version 2 with a and b)"
        ),
        Reply::Rejected(r) => bail!("S-3.5 after a crash get was rejected: {r}"),
    }
    Ok(())
}
