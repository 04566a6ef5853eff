//! S-5 direct methods (invoked over REST, S-9.5): round trip, 504, 404, 409, connectTimeout,
//! matching by (thing, method, clientToken) and dropping late or unmatched responses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use iothub_spec::topic::Topic;
use serde_json::{Value, json};

use crate::api::Resp;
use crate::case::Case;
use crate::check;
use crate::ctx::{Ctx, Device, Thing};
use crate::ensure;
use crate::mqtt::{Msg, Proto};

/// The S-5 cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "s5_method_round_trip_v311",
            &["S-5.1", "S-5.2", "S-5.3", "S-9.5"],
            "REST call -> request on T/methods/m/req -> response -> REST 200 with the device's answer (3.1.1)",
            |c| round_trip(c, Proto::V311),
        ),
        Case::new(
            "s5_method_round_trip_v5",
            &["S-5.1", "S-5.2", "S-5.3", "S-9.5"],
            "the same over MQTT 5",
            |c| round_trip(c, Proto::V5),
        ),
        Case::new(
            "s5_method_null_data_and_minimal_response",
            &["S-5.1", "S-5.2"],
            "no data -> \"data\":null; a response without message/data reads as \"\" and null",
            minimal,
        ),
        Case::new(
            "s5_method_device_error_code",
            &["S-5.2", "S-9.5"],
            "a device code 500 comes back inside a 200 REST answer",
            device_error,
        ),
        Case::new(
            "s5_method_timeout_504",
            &["S-5.3", "S-9.5"],
            "no response within timeout -> 504 after about timeout seconds",
            timeout_504,
        ),
        Case::new(
            "s5_method_late_response_dropped",
            &["S-5.2"],
            "a response after the 504 is dropped and never answers a later call",
            late_dropped,
        ),
        Case::new(
            "s5_method_unmatched_responses_ignored",
            &["S-5.2"],
            "responses with a wrong token or method do not answer the call",
            unmatched,
        ),
        Case::new(
            "s5_method_unknown_thing_404",
            &["S-5.3", "S-9.5"],
            "calling a method of an unknown thing -> 404",
            unknown_thing,
        ),
        Case::new(
            "s5_method_offline_409",
            &["S-5.3", "S-9.5"],
            "calling an offline thing with connectTimeout 0 -> 409",
            offline,
        ),
        Case::new(
            "s5_method_connect_timeout_waits",
            &["S-5.3", "S-9.5"],
            "with connectTimeout the call waits for the thing to connect",
            connect_timeout,
        ),
        Case::new(
            "s5_method_bad_timeouts_400",
            &["S-5.3", "S-9.5"],
            "timeout 0 or 301 and connectTimeout 301 -> 400",
            bad_timeouts,
        ),
    ]
}

fn method_path(id: &str, m: &str) -> String {
    format!("/api/v1/things/{id}/methods/{m}")
}

async fn call(ctx: &Ctx, id: &str, m: &str, body: Value, secs: u64) -> anyhow::Result<Resp> {
    ctx.api
        .send(
            reqwest::Method::POST,
            &method_path(id, m),
            Some(body.to_string()),
            true,
            Duration::from_secs(secs + 10),
        )
        .await
}

fn spawn_call(
    ctx: &Arc<Ctx>,
    id: &str,
    m: &str,
    body: Value,
    secs: u64,
) -> tokio::task::JoinHandle<anyhow::Result<Resp>> {
    let (ctx, id, m) = (ctx.clone(), id.to_string(), m.to_string());
    tokio::spawn(async move { call(&ctx, &id, &m, body, secs).await })
}

pub(crate) async fn method_device(ctx: &Ctx, proto: Proto) -> anyhow::Result<Device> {
    let t = ctx.create_thing().await?;
    let req = format!(
        "{}",
        Topic::MethodRequest {
            thing: &t.id,
            method: "m"
        }
    )
    .replace("/m/req", "/+/req");
    ctx.connect(&t, proto, vec![req]).await
}

pub(crate) async fn next_request(d: &mut Device, method: &str) -> anyhow::Result<(Msg, String)> {
    let t = Topic::MethodRequest {
        thing: &d.thing.id,
        method,
    }
    .to_string();
    let m = d
        .recv_on(&t, Duration::from_secs(10))
        .await
        .with_context(|| format!("S-5.1 no request on {t}"))?;
    let tok = m
        .json()
        .get("clientToken")
        .and_then(Value::as_str)
        .map(String::from)
        .with_context(|| {
            format!(
                "S-5.1 request without a string clientToken: {}",
                String::from_utf8_lossy(&m.payload)
            )
        })?;
    Ok((m, tok))
}

pub(crate) async fn respond(d: &Device, method: &str, body: Value) -> anyhow::Result<()> {
    let t = Topic::MethodResponse {
        thing: &d.thing.id,
        method,
    }
    .to_string();
    d.conn.publish(&t, body.to_string().as_bytes(), true).await
}

async fn round_trip(ctx: Arc<Ctx>, p: Proto) -> anyhow::Result<()> {
    let mut d = method_device(&ctx, p).await?;
    let h = spawn_call(
        &ctx,
        &d.thing.id,
        "reboot.now",
        json!({"data": {"delay": 5}, "timeout": 10}),
        10,
    );
    let (m, tok) = next_request(&mut d, "reboot.now").await?;
    ensure!(
        m.json()["data"] == json!({"delay": 5}),
        "S-5.1 request data {} (expected {{\"delay\":5}})",
        m.json()["data"]
    );
    respond(
        &d,
        "reboot.now",
        json!({"clientToken": tok, "code": 200, "message": "rebooting", "data": {"at": 1}}),
    )
    .await?;
    let r = h.await??;
    r.expect("S-9.5 method call", &[200])?;
    let want = json!({"code": 200, "message": "rebooting", "data": {"at": 1}});
    ensure!(
        check::json_eq(r.data(), &want),
        "S-9.5 REST data {} (expected {want})",
        r.data()
    );
    Ok(())
}

async fn minimal(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = method_device(&ctx, Proto::V5).await?;
    let h = spawn_call(&ctx, &d.thing.id, "info", json!({"timeout": 10}), 10);
    let (m, tok) = next_request(&mut d, "info").await?;
    ensure!(
        m.json().get("data") == Some(&Value::Null),
        "S-5.1 a call without data must send \"data\":null, got {}",
        String::from_utf8_lossy(&m.payload)
    );
    respond(&d, "info", json!({"clientToken": tok, "code": 200})).await?;
    let r = h.await??;
    r.expect("S-9.5 method call", &[200])?;
    let want = json!({"code": 200, "message": "", "data": null});
    ensure!(
        check::json_eq(r.data(), &want),
        "S-5.2 REST data {} (expected {want})",
        r.data()
    );
    Ok(())
}

async fn device_error(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = method_device(&ctx, Proto::V311).await?;
    let h = spawn_call(
        &ctx,
        &d.thing.id,
        "fail",
        json!({"data": 1, "timeout": 10}),
        10,
    );
    let (_, tok) = next_request(&mut d, "fail").await?;
    respond(
        &d,
        "fail",
        json!({"clientToken": tok, "code": 500, "message": "boom"}),
    )
    .await?;
    let r = h.await??;
    r.expect("S-9.5 method call", &[200])?;
    ensure!(
        r.data()["code"] == 500 && r.data()["message"] == "boom",
        "S-9.5 REST data {}",
        r.data()
    );
    Ok(())
}

async fn timeout_504(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = method_device(&ctx, Proto::V5).await?;
    let start = Instant::now();
    let h = spawn_call(&ctx, &d.thing.id, "slow", json!({"timeout": 1}), 1);
    next_request(&mut d, "slow").await?;
    let r = h.await??;
    let took = start.elapsed();
    r.expect("S-5.3 unanswered call", &[504])?;
    ensure!(
        took >= Duration::from_millis(900) && took <= Duration::from_secs(4),
        "S-5.3 504 after {took:?} with timeout 1 s"
    );
    Ok(())
}

async fn late_dropped(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = method_device(&ctx, Proto::V311).await?;
    let h = spawn_call(&ctx, &d.thing.id, "m", json!({"timeout": 1}), 1);
    let (_, old) = next_request(&mut d, "m").await?;
    h.await??.expect("S-5.3 unanswered call", &[504])?;
    respond(
        &d,
        "m",
        json!({"clientToken": old, "code": 200, "data": "late"}),
    )
    .await?;
    let h = spawn_call(&ctx, &d.thing.id, "m", json!({"timeout": 10}), 10);
    let (_, new) = next_request(&mut d, "m").await?;
    ensure!(
        new != old,
        "S-5.2 two calls used the same clientToken {old:?}"
    );
    respond(
        &d,
        "m",
        json!({"clientToken": old, "code": 200, "data": "late-again"}),
    )
    .await?;
    respond(
        &d,
        "m",
        json!({"clientToken": new, "code": 200, "data": "fresh"}),
    )
    .await?;
    let r = h.await??;
    r.expect("S-9.5 method call", &[200])?;
    ensure!(
        r.data()["data"] == "fresh",
        "S-5.2 the call was answered by a late response: {}",
        r.data()
    );
    Ok(())
}

async fn unmatched(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = method_device(&ctx, Proto::V5).await?;
    let h = spawn_call(&ctx, &d.thing.id, "m", json!({"timeout": 10}), 10);
    let (_, tok) = next_request(&mut d, "m").await?;
    respond(
        &d,
        "m",
        json!({"clientToken": "not-it", "code": 200, "data": "wrong-token"}),
    )
    .await?;
    respond(
        &d,
        "other",
        json!({"clientToken": tok, "code": 200, "data": "wrong-method"}),
    )
    .await?;
    respond(
        &d,
        "m",
        json!({"clientToken": tok, "code": 200, "data": "right"}),
    )
    .await?;
    let r = h.await??;
    r.expect("S-9.5 method call", &[200])?;
    ensure!(
        r.data()["data"] == "right",
        "S-5.2 the call was answered by an unmatched response: {}",
        r.data()
    );
    Ok(())
}

async fn unknown_thing(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let r = call(&ctx, &ctx.fresh_id(), "m", json!({"timeout": 1}), 1).await?;
    r.expect("S-5.3 method of an unknown thing", &[404])?;
    Ok(())
}

async fn offline(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let start = Instant::now();
    let r = call(&ctx, &t.id, "m", json!({"timeout": 5}), 5).await?;
    r.expect("S-5.3 method of an offline thing", &[409])?;
    ensure!(
        start.elapsed() < Duration::from_secs(3),
        "S-5.3 409 took {:?} with connectTimeout 0",
        start.elapsed()
    );
    Ok(())
}

async fn connect_timeout(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t: Thing = ctx.create_thing().await?;
    let h = spawn_call(
        &ctx,
        &t.id,
        "wake",
        json!({"timeout": 10, "connectTimeout": 10}),
        20,
    );
    // Let the call start waiting: poll until the REST request is in flight at the hub.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !h.is_finished(),
        "S-5.3 the call with connectTimeout 10 returned at once: {:?}",
        h.await?
    );
    let req = Topic::MethodRequest {
        thing: &t.id,
        method: "wake",
    }
    .to_string();
    let mut d = ctx.connect(&t, Proto::V311, vec![req]).await?;
    let (_, tok) = next_request(&mut d, "wake")
        .await
        .context("S-5.3 the request was not delivered after the thing connected")?;
    respond(
        &d,
        "wake",
        json!({"clientToken": tok, "code": 200, "data": "up"}),
    )
    .await?;
    let r = h.await??;
    r.expect("S-5.3 call with connectTimeout", &[200])?;
    ensure!(r.data()["data"] == "up", "S-9.5 REST data {}", r.data());
    Ok(())
}

async fn bad_timeouts(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let d = method_device(&ctx, Proto::V5).await?;
    let mut errs = Vec::new();
    for body in [
        json!({"timeout": 0}),
        json!({"timeout": 301}),
        json!({"connectTimeout": 301}),
    ] {
        let r = call(&ctx, &d.thing.id, "m", body.clone(), 2).await?;
        if r.status != 400 {
            errs.push(format!("{body} -> HTTP {}", r.status));
        }
    }
    if errs.is_empty() {
        return Ok(());
    }
    bail!(
        "S-5.3 out-of-range timeouts not refused with 400: {}",
        errs.join("; ")
    )
}
