//! The error codes and limits of S-3.8/S-3.9: request payload and state size (413), request
//! rate and requests in flight (429), and the named-shadow quota (403).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use iothub_spec::ids::DEFAULT_SHADOW;
use serde_json::json;

use super::setup_update;
use crate::check;
use crate::ctx::{Ctx, Device, Reply};
use crate::ensure;
use crate::mqtt::Proto;

pub(super) async fn payload_too_large(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V5).await?;
    let max = ctx.limits.max_request_payload;
    let mut p = json!({"state": {"reported": {"blob": ""}}, "clientToken": "big"}).to_string();
    let pad = "x".repeat(max + 1 - p.len());
    p = p.replace("\"blob\":\"\"", &format!("\"blob\":\"{pad}\""));
    ensure!(p.len() == max + 1, "internal: payload is {} bytes", p.len());
    match d.request(DEFAULT_SHADOW, true, p.as_bytes(), None).await? {
        Reply::Rejected(r) if r["code"] == 413 => Ok(()),
        other => bail!(
            "S-3.9 a {}-byte update (limit {max}) got {:?}",
            p.len(),
            other
        ),
    }
}

pub(super) async fn state_too_large(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V311).await?;
    let chunk = ctx.limits.max_request_payload.saturating_sub(200).max(16);
    let max_state = ctx.limits.max_state_bytes;
    let mut total = 0usize;
    let mut version = 0u64;
    for i in 0..(max_state / chunk + 3) {
        let body = json!({"state": {"reported": {format!("k{i}"): "y".repeat(chunk)}}});
        match d
            .request(DEFAULT_SHADOW, true, body.to_string().as_bytes(), None)
            .await?
        {
            Reply::Accepted(a) => {
                total += chunk;
                version = a["version"].as_u64().unwrap_or(0);
                ensure!(
                    total <= max_state + chunk / 2,
                    "S-3.9 the state grew to about {total} bytes (limit {max_state}) without a 413"
                );
            }
            Reply::Rejected(r) if r["code"] == 413 => {
                ensure!(
                    total + chunk > max_state,
                    "S-3.9 413 at about {} bytes, below the {max_state}-byte limit",
                    total + chunk
                );
                match d.get(DEFAULT_SHADOW).await? {
                    Reply::Accepted(doc) => ensure!(
                        doc["version"] == version,
                        "S-3.9 the refused update changed the version to {}",
                        doc["version"]
                    ),
                    Reply::Rejected(r) => bail!("get: {r}"),
                }
                return Ok(());
            }
            Reply::Rejected(r) if r["code"] == 429 => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Reply::Rejected(r) => bail!("S-3.9 unexpected rejection while growing the state: {r}"),
        }
    }
    bail!("S-3.9 no 413 although the state reached about {total} bytes (limit {max_state})")
}

/// Sends `n` requests at once (tokens `{tag}{i}`) and collects exactly one reply per token.
async fn burst(d: &mut Device, update: bool, n: usize, tag: &str) -> anyhow::Result<Vec<Reply>> {
    let topic = d.shadow_topic(DEFAULT_SHADOW, update);
    for i in 0..n {
        let p = if update {
            json!({"state": {"reported": {"i": i}}, "clientToken": format!("{tag}{i}")})
        } else {
            json!({"clientToken": format!("{tag}{i}")})
        };
        d.conn
            .publish(&topic, p.to_string().as_bytes(), true)
            .await?;
    }
    let mut out = Vec::new();
    for i in 0..n {
        let r = d
            .reply(DEFAULT_SHADOW, update, Some(&format!("{tag}{i}")))
            .await
            .with_context(|| format!("request {i} of the burst"))?;
        out.push(r);
    }
    Ok(out)
}

pub(super) async fn rate_limit(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V5).await?;
    let n = (ctx.limits.shadow_requests_per_sec as usize) * 2 + 5;
    let replies = burst(&mut d, false, n, "rl").await?;
    let limited = replies.iter().filter(|r| r.code() == Some(429)).count();
    let other: Vec<_> = replies
        .iter()
        .filter(|r| !matches!(r.code(), Some(429) | Some(404)))
        .map(|r| r.body().to_string())
        .collect();
    ensure!(
        other.is_empty(),
        "S-3.8 unexpected replies in the burst: {other:?}"
    );
    ensure!(
        limited > 0,
        "S-3.9 {n} gets in a burst (limit {}/s): none got 429",
        ctx.limits.shadow_requests_per_sec
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        if matches!(d.get(DEFAULT_SHADOW).await, Ok(r) if r.code() == Some(404)) {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "S-3.9 still limited 3 s after the burst"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) async fn in_flight_limit(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V311).await?;
    let n =
        (ctx.limits.max_in_flight as usize + 5).min(ctx.limits.shadow_requests_per_sec as usize);
    let replies = burst(&mut d, true, n, "if").await?;
    let limited = replies.iter().filter(|r| r.code() == Some(429)).count();
    let accepted: Vec<u64> = replies
        .iter()
        .filter_map(|r| match r {
            Reply::Accepted(a) => a["version"].as_u64(),
            _ => None,
        })
        .collect();
    let other: Vec<_> = replies
        .iter()
        .filter(|r| matches!(r.code(), Some(c) if c != 429))
        .map(|r| r.body().to_string())
        .collect();
    ensure!(other.is_empty(), "S-3.8 unexpected replies: {other:?}");
    let mut sorted = accepted.clone();
    sorted.sort_unstable();
    ensure!(
        sorted == (1..=accepted.len() as u64).collect::<Vec<_>>(),
        "S-3.4 accepted versions {sorted:?} are not 1..{}",
        accepted.len()
    );
    ensure!(
        limited > 0,
        "S-3.9 {n} pipelined updates (maxInFlight {}) were all accepted: no 429",
        ctx.limits.max_in_flight
    );
    Ok(())
}

pub(super) async fn named_quota(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let thing = ctx.create_thing().await?;
    let mut d = ctx.connect(&thing, Proto::V5, vec![]).await?;
    let max = ctx.limits.max_named_shadows as usize;
    let names: Vec<String> = std::iter::once(DEFAULT_SHADOW.to_string())
        .chain((1..=max).map(|i| format!("n{i}")))
        .collect();
    for n in &names {
        d.subscribe_shadow(n).await?;
    }
    // `default` is not a named shadow (S-2): it and `max` named ones fit, one more does not.
    for n in &names {
        setup_update(&mut d, n, &json!({"state": {"reported": {"a": 1}}}))
            .await
            .with_context(|| format!("shadow {n} within the quota"))?;
    }
    let extra = &format!("n{}", max + 1);
    d.subscribe_shadow(extra).await?;
    match d
        .request(
            extra,
            true,
            br#"{"state":{"reported":{"a":1}},"clientToken":"q"}"#,
            Some("q"),
        )
        .await?
    {
        Reply::Rejected(r) => {
            let e = check::error_reply(&r, 403, Some("q"));
            ensure!(
                e.is_empty(),
                "S-3.9 shadow {} of {max}: {}",
                max + 1,
                e.join("; ")
            );
        }
        Reply::Accepted(_) => bail!(
            "S-3.9 named shadow {} was created although maxNamedShadows is {max}",
            max + 1
        ),
    }
    match d.get(extra).await? {
        Reply::Rejected(r) if r["code"] == 404 => Ok(()),
        other => bail!("S-3.9 the refused shadow exists: {other:?}"),
    }
}
