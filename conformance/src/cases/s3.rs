//! S-3 shadows: every golden vector of `shadow.json` and `errors.json` over MQTT, document and
//! message shapes (S-3.2, S-3.5 .. S-3.7), version conflicts, concurrent writers, and every
//! error code and limit of S-3.8/S-3.9.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use iothub_spec::ids::DEFAULT_SHADOW;
use serde_json::{Value, json};

use crate::case::Case;
use crate::check;
use crate::ctx::{Ctx, Device, Reply};
use crate::ensure;
use crate::mqtt::{Proto, STEP};
use crate::vectors;

mod golden;
mod limits;

use golden::{run_error, run_vector};
use limits::{in_flight_limit, named_quota, payload_too_large, rate_limit, state_too_large};

/// The S-3 cases.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (i, c) in vectors::cases(vectors::SHADOW).into_iter().enumerate() {
        let name = c["name"].as_str().unwrap_or("unnamed").to_string();
        let clause = c["clause"].as_str().unwrap_or("S-3.4").to_string();
        let proto = if i % 2 == 0 { Proto::V311 } else { Proto::V5 };
        let title = format!("shadow.json vector {name} ({})", proto.tag());
        v.push(Case::new(
            format!("s3_vector_{name}"),
            &[clause.as_str(), "S-3.2"],
            title,
            move |ctx| run_vector(ctx, c.clone(), proto),
        ));
    }
    for (i, c) in vectors::cases(vectors::ERRORS).into_iter().enumerate() {
        let name = c["name"].as_str().unwrap_or("unnamed").to_string();
        let clause = c["clause"].as_str().unwrap_or("S-3.8").to_string();
        let proto = if i % 2 == 0 { Proto::V5 } else { Proto::V311 };
        let title = format!("errors.json vector {name} ({})", proto.tag());
        v.push(Case::new(
            format!("s3_error_{name}"),
            &[clause.as_str()],
            title,
            move |ctx| run_error(ctx, c.clone(), proto),
        ));
    }
    v.push(Case::new(
        "s3_get_missing_is_404",
        &["S-3.2", "S-3.8"],
        "get of a never-written shadow answers get/rejected 404",
        get_missing,
    ));
    v.push(Case::new("s3_document_and_accepted_shapes", &["S-3.2", "S-3.5"], "update/accepted echoes the request state with metadata of the keys written; get omits empty sections", shapes));
    v.push(Case::new("s3_delta_message", &["S-3.6"], "update/delta carries the full delta, its desired metadata, version and token; none after reported-only updates", delta_message));
    v.push(Case::new(
        "s3_documents_message",
        &["S-3.7", "S-1.5"],
        "update/documents carries previous and current to the thing and to service users",
        documents_message,
    ));
    v.push(Case::new(
        "s3_concurrent_same_version",
        &["S-3.4", "S-9.3"],
        "MQTT and REST writers racing on one version: exactly one succeeds, the rest get 409",
        concurrent_same_version,
    ));
    v.push(Case::new(
        "s3_concurrent_writers_no_lost_update",
        &["S-3.4", "S-9.3"],
        "concurrent MQTT and REST writers without version: every write lands, versions distinct",
        concurrent_no_lost_update,
    ));
    v.push(Case::new(
        "s3_payload_over_limit_413",
        &["S-3.8", "S-3.9"],
        "a request payload over maxRequestPayload gets 413",
        payload_too_large,
    ));
    v.push(Case::new(
        "s3_state_over_limit_413",
        &["S-3.8", "S-3.9"],
        "an update that makes the state exceed maxStateBytes gets 413 and changes nothing",
        state_too_large,
    ));
    v.push(Case::new("s3_rate_limit_429", &["S-3.8", "S-3.9"], "more than shadowRequestsPerSec requests in a burst get 429, every one answered, then it recovers", rate_limit));
    v.push(Case::new(
        "s3_in_flight_limit_429",
        &["S-3.8", "S-3.9"],
        "more than maxInFlight pipelined updates: the excess gets 429, every one answered",
        in_flight_limit,
    ));
    v.push(Case::new(
        "s3_named_shadow_quota_403",
        &["S-3.8", "S-3.9"],
        "an update creating one shadow more than maxNamedShadows gets 403",
        named_quota,
    ));
    v.push(Case::new(
        "s3_named_shadows_independent",
        &["S-2", "S-3.1"],
        "a named shadow is separate from the default one",
        named_independent,
    ));
    v
}

/// Sends an update, waiting out a 429 (the suite's own setup must not trip the rate limit).
pub async fn setup_update(d: &mut Device, shadow: &str, body: &Value) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match d
            .request(shadow, true, body.to_string().as_bytes(), None)
            .await?
        {
            Reply::Accepted(v) => return Ok(v),
            Reply::Rejected(v) if v["code"] == 429 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Reply::Rejected(v) => bail!("setup update {body} rejected: {v}"),
        }
    }
}

async fn get_missing(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V5).await?;
    let p = json!({"clientToken": "miss-1"}).to_string();
    match d
        .request(DEFAULT_SHADOW, false, p.as_bytes(), Some("miss-1"))
        .await?
    {
        Reply::Rejected(r) => {
            let e = check::error_reply(&r, 404, Some("miss-1"));
            ensure!(e.is_empty(), "S-3.2 {}", e.join("; "));
        }
        Reply::Accepted(a) => bail!("S-3.2 get of a never-written shadow was accepted: {a}"),
    }
    Ok(())
}

fn paths_of(prefix: &str, meta: &Value) -> Result<BTreeSet<String>, String> {
    check::metadata_leaf_paths(&json!({ prefix: meta }))
}

async fn shapes(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V311).await?;
    let req = json!({"state": {"reported": {"a": 1, "n": {"b": [1, 2]}}}, "clientToken": "s-1"});
    let acc = d.update_ok(DEFAULT_SHADOW, &req).await?;
    let mut errs = Vec::new();
    if !check::json_eq(&acc["state"], &req["state"]) {
        errs.push(format!(
            "S-3.5 update/accepted state {} differs from the request's {}",
            acc["state"], req["state"]
        ));
    }
    match check::metadata_leaf_paths(&acc["metadata"]) {
        Ok(p)
            if p == ["reported.a", "reported.n.b"]
                .into_iter()
                .map(String::from)
                .collect() => {}
        other => errs.push(format!(
            "S-3.5 update/accepted metadata leaves {other:?}, expected reported.a and reported.n.b"
        )),
    }
    if acc["version"] != 1 || !acc["timestamp"].is_u64() {
        errs.push(format!(
            "S-3.5 update/accepted version {} timestamp {}",
            acc["version"], acc["timestamp"]
        ));
    }
    errs.extend(check::token_echo(&acc, Some("s-1")));
    let doc = match d.get(DEFAULT_SHADOW).await? {
        Reply::Accepted(doc) => doc,
        Reply::Rejected(r) => bail!("S-3.2 get rejected: {r}"),
    };
    for k in ["desired", "delta"] {
        if doc["state"].get(k).is_some() {
            errs.push(format!(
                "S-3.2 empty section {k} is present in the document"
            ));
        }
    }
    if doc["metadata"].get("desired").is_some() {
        errs.push("S-3.2 empty metadata.desired is present".into());
    }
    ensure!(errs.is_empty(), "{}", errs.join("; "));
    Ok(())
}

async fn delta_message(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V5).await?;
    let id = d.thing.id.clone();
    let delta_t = iothub_spec::topic::Topic::ShadowUpdateDelta {
        thing: &id,
        shadow: DEFAULT_SHADOW,
    }
    .to_string();
    setup_update(
        &mut d,
        DEFAULT_SHADOW,
        &json!({"state": {"reported": {"a": 1}}}),
    )
    .await?;
    d.update_ok(
        DEFAULT_SHADOW,
        &json!({"state": {"desired": {"a": 2, "b": {"c": 3}}}, "clientToken": "d-1"}),
    )
    .await?;
    let m = d
        .recv_on(&delta_t, STEP)
        .await
        .context("S-3.6 no update/delta after a desired change that leaves a delta")?;
    let v = m.json();
    let mut errs = Vec::new();
    if !check::json_eq(&v["state"], &json!({"a": 2, "b": {"c": 3}})) {
        errs.push(format!(
            "state {} (expected the full delta {{\"a\":2,\"b\":{{\"c\":3}}}})",
            v["state"]
        ));
    }
    match paths_of("desired", &v["metadata"]) {
        Ok(p)
            if p == ["desired.a", "desired.b.c"]
                .into_iter()
                .map(String::from)
                .collect() => {}
        other => errs.push(format!("metadata leaves {other:?}, expected a and b.c")),
    }
    if v["version"] != 2 {
        errs.push(format!("version {} (expected 2)", v["version"]));
    }
    errs.extend(check::token_echo(&v, Some("d-1")));
    // A reported-only update (version 3) publishes no delta; the next desired change (4) does.
    d.update_ok(DEFAULT_SHADOW, &json!({"state": {"reported": {"x": 1}}}))
        .await?;
    d.update_ok(DEFAULT_SHADOW, &json!({"state": {"desired": {"a": 1}}}))
        .await?;
    match d.recv_on(&delta_t, STEP).await {
        Some(m) if m.json()["version"] == 4 => {
            if !check::json_eq(&m.json()["state"], &json!({"b": {"c": 3}})) {
                errs.push(format!("delta v4 state {} (expected {{\"b\":{{\"c\":3}}}})", m.json()["state"]));
            }
        }
        Some(m) => errs.push(format!("got a delta with version {} where only version 4 should come (no delta after reported-only updates)", m.json()["version"])),
        None => errs.push("no delta for version 4".into()),
    }
    // Desired equal to reported leaves no delta: version 5 publishes none, 6 does.
    d.update_ok(
        DEFAULT_SHADOW,
        &json!({"state": {"reported": {"b": {"c": 3}}}}),
    )
    .await?;
    d.update_ok(DEFAULT_SHADOW, &json!({"state": {"desired": {"a": 1}}}))
        .await?;
    d.update_ok(DEFAULT_SHADOW, &json!({"state": {"desired": {"z": 9}}}))
        .await?;
    match d.recv_on(&delta_t, STEP).await {
        Some(m) if m.json()["version"] == 7 => {}
        Some(m) => errs.push(format!(
            "got a delta with version {} although that update left no delta",
            m.json()["version"]
        )),
        None => errs.push("no delta for version 7".into()),
    }
    ensure!(errs.is_empty(), "S-3.6 {}", errs.join("; "));
    Ok(())
}

fn check_documents(
    v: &Value,
    version: u64,
    token: Option<&str>,
    want_current: &Value,
) -> Vec<String> {
    let mut errs = Vec::new();
    let prev = v.get("previous").filter(|p| !p.is_null());
    match (version, prev) {
        (1, None) => {}
        (1, Some(p)) => errs.push(format!("previous present for the first version: {p}")),
        (_, None) => errs.push("previous missing".into()),
        (_, Some(p)) => {
            if p["version"].as_u64() != Some(version - 1) {
                errs.push(format!(
                    "previous.version {} (expected {})",
                    p["version"],
                    version - 1
                ));
            }
        }
    }
    let cur = &v["current"];
    if cur["version"].as_u64() != Some(version) {
        errs.push(format!(
            "current.version {} (expected {version})",
            cur["version"]
        ));
    }
    if !check::json_eq(&cur["state"], want_current) {
        errs.push(format!(
            "current.state {} (expected {want_current})",
            cur["state"]
        ));
    }
    if cur["state"].get("delta").is_some() {
        errs.push("current.state has a delta".into());
    }
    if let Err(e) = check::metadata_leaf_paths(&cur["metadata"]) {
        errs.push(format!("current.metadata: {e}"));
    }
    if !v["timestamp"].is_u64() {
        errs.push("timestamp missing".into());
    }
    errs.extend(check::token_echo(v, token));
    errs
}

async fn documents_message(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V311).await?;
    let id = d.thing.id.clone();
    let t = iothub_spec::topic::Topic::ShadowUpdateDocuments {
        thing: &id,
        shadow: DEFAULT_SHADOW,
    }
    .to_string();
    let mut s = ctx.observer(std::slice::from_ref(&t)).await?;
    d.update_ok(
        DEFAULT_SHADOW,
        &json!({"state": {"reported": {"a": 1}}, "clientToken": "doc-1"}),
    )
    .await?;
    d.update_ok(
        DEFAULT_SHADOW,
        &json!({"state": {"desired": {"a": 2}}, "clientToken": "doc-2"}),
    )
    .await?;
    let mut errs = Vec::new();
    for (who, conn) in [("thing", &mut d.conn), ("service user", &mut s)] {
        for (v, tok, cur) in [
            (1, "doc-1", json!({"reported": {"a": 1}})),
            (
                2,
                "doc-2",
                json!({"desired": {"a": 2}, "reported": {"a": 1}}),
            ),
        ] {
            match conn.recv_on(&t, STEP).await {
                Some(m) => errs.extend(
                    check_documents(&m.json(), v, Some(tok), &cur)
                        .into_iter()
                        .map(|e| format!("{who} v{v}: {e}")),
                ),
                None => errs.push(format!("{who}: no update/documents for version {v}")),
            }
        }
    }
    ensure!(errs.is_empty(), "S-3.7 {}", errs.join("; "));
    Ok(())
}

fn desired_path(id: &str) -> String {
    format!("/api/v1/things/{id}/shadows/{DEFAULT_SHADOW}/state/desired")
}

async fn concurrent_same_version(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V5).await?;
    let id = d.thing.id.clone();
    setup_update(
        &mut d,
        DEFAULT_SHADOW,
        &json!({"state": {"reported": {"r": 0}}}),
    )
    .await?;
    let topic = d.shadow_topic(DEFAULT_SHADOW, true);
    let n = 4;
    let mut rest = Vec::new();
    for i in 0..n {
        let api = ctx.api.clone();
        let path = desired_path(&id);
        rest.push(tokio::spawn(async move {
            api.put(
                &path,
                json!({"state": {"desired": {"w": format!("rest{i}")}}, "version": 1}),
            )
            .await
        }));
    }
    for i in 0..n {
        let p = json!({"state": {"reported": {"w": format!("mqtt{i}")}}, "version": 1, "clientToken": format!("cv{i}")});
        d.conn
            .publish(&topic, p.to_string().as_bytes(), true)
            .await?;
    }
    let mut won = 0;
    let mut errs = Vec::new();
    for i in 0..n {
        match d
            .reply(DEFAULT_SHADOW, true, Some(&format!("cv{i}")))
            .await?
        {
            Reply::Accepted(_) => won += 1,
            Reply::Rejected(r) if r["code"] == 409 => {}
            Reply::Rejected(r) => errs.push(format!("mqtt writer {i}: {r}")),
        }
    }
    for (i, h) in rest.into_iter().enumerate() {
        let r = h.await??;
        match r.status {
            200 => won += 1,
            409 => {}
            s => errs.push(format!("rest writer {i}: HTTP {s}")),
        }
    }
    ensure!(
        errs.is_empty(),
        "S-3.4 unexpected answers: {}",
        errs.join("; ")
    );
    ensure!(
        won == 1,
        "S-3.4 {won} of {} writers with version 1 succeeded (exactly one may)",
        2 * n
    );
    match d.get(DEFAULT_SHADOW).await? {
        Reply::Accepted(doc) => ensure!(
            doc["version"] == 2,
            "S-3.4 final version {} (expected 2)",
            doc["version"]
        ),
        Reply::Rejected(r) => bail!("get: {r}"),
    }
    Ok(())
}

async fn concurrent_no_lost_update(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V311).await?;
    let id = d.thing.id.clone();
    let topic = d.shadow_topic(DEFAULT_SHADOW, true);
    let n = 4;
    let mut rest = Vec::new();
    for i in 0..n {
        let api = ctx.api.clone();
        let path = desired_path(&id);
        rest.push(tokio::spawn(async move {
            api.put(&path, json!({"state": {"desired": {format!("d{i}"): i}}}))
                .await
        }));
    }
    for i in 0..n {
        let p =
            json!({"state": {"reported": {format!("r{i}"): i}}, "clientToken": format!("nl{i}")});
        d.conn
            .publish(&topic, p.to_string().as_bytes(), true)
            .await?;
    }
    let mut versions = BTreeSet::new();
    let mut seen = 0;
    for i in 0..n {
        match d
            .reply(DEFAULT_SHADOW, true, Some(&format!("nl{i}")))
            .await?
        {
            Reply::Accepted(a) => {
                versions.insert(a["version"].as_u64().unwrap_or(0));
                seen += 1;
            }
            Reply::Rejected(r) => bail!("S-3.4 mqtt writer {i} rejected: {r}"),
        }
    }
    for (i, h) in rest.into_iter().enumerate() {
        let r = h.await??;
        r.expect(&format!("S-9.3 rest writer {i}"), &[200])?;
        if let Some(v) = r.data().get("version").and_then(Value::as_u64) {
            versions.insert(v);
            seen += 1;
        }
    }
    let doc = match d.get(DEFAULT_SHADOW).await? {
        Reply::Accepted(doc) => doc,
        Reply::Rejected(r) => bail!("get: {r}"),
    };
    ensure!(
        doc["version"] == 2 * n,
        "S-3.4 final version {} after {} accepted updates",
        doc["version"],
        2 * n
    );
    for i in 0..n {
        ensure!(
            doc["state"]["desired"][format!("d{i}")] == i,
            "S-3.4 lost update: desired.d{i} missing in {}",
            doc["state"]
        );
        ensure!(
            doc["state"]["reported"][format!("r{i}")] == i,
            "S-3.4 lost update: reported.r{i} missing in {}",
            doc["state"]
        );
    }
    ensure!(
        versions.len() == seen,
        "S-3.4 two writers got the same version: {versions:?} for {seen} writes"
    );
    Ok(())
}

async fn named_independent(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V311).await?;
    d.subscribe_shadow("cfg:net").await?;
    d.update_ok(
        "cfg:net",
        &json!({"state": {"reported": {"ip": "10.0.0.2"}}}),
    )
    .await?;
    match d.get(DEFAULT_SHADOW).await? {
        Reply::Rejected(r) if r["code"] == 404 => {}
        other => {
            bail!("S-3.1 writing shadow cfg:net created or changed the default shadow: {other:?}")
        }
    }
    match d.get("cfg:net").await? {
        Reply::Accepted(doc) => ensure!(
            doc["state"]["reported"]["ip"] == "10.0.0.2" && doc["version"] == 1,
            "S-3.1 named shadow document {doc}"
        ),
        Reply::Rejected(r) => bail!("S-3.1 get of the named shadow: {r}"),
    }
    Ok(())
}
