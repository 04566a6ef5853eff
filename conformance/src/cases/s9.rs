//! S-9 REST API: envelope and auth, things CRUD and pages, batch create, shadows over REST,
//! tags, the query language (including injection attempts), health, limits and metrics.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use iothub_spec::ids::{DEFAULT_SHADOW, is_valid_thing_id};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::CALL_TIMEOUT;
use crate::case::Case;
use crate::check;
use crate::ctx::{Ctx, Reply};
use crate::ensure;
use crate::mqtt::Proto;

/// The S-9 cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "s9_auth_and_envelope",
            &["S-9.1"],
            "no or a wrong bearer token -> 401 in the envelope; OpenAPI served",
            auth,
        ),
        Case::new(
            "s9_things_crud",
            &["S-9.2"],
            "create (409 on duplicate), get, list pages, enabled filter, patch, delete (404 when absent)",
            crud,
        ),
        Case::new(
            "s9_things_generated_and_invalid_ids",
            &["S-9.2", "S-1.1"],
            "POST without thingId generates a valid id; invalid ids -> 400",
            ids,
        ),
        Case::new(
            "s9_things_batch",
            &["S-9.2"],
            "POST /things/batch creates several things; more than 1000 is refused",
            batch,
        ),
        Case::new(
            "s9_shadow_rest",
            &["S-9.3", "S-3.2", "S-3.4"],
            "GET/PUT desired/DELETE shadow with 404, 409, 400, 413 kept",
            shadow_rest,
        ),
        Case::new(
            "s9_tags",
            &["S-9.3", "S-3.1"],
            "PUT tags merges, null deletes, version conflict 409; tags never reach the device",
            tags,
        ),
        Case::new(
            "s9_query",
            &["S-9.4"],
            "the S-9.4 example query, OR/NOT/IS NULL/ORDER BY, and injection attempts",
            query,
        ),
        Case::new(
            "s9_health_limits_metrics",
            &["S-9.7", "S-3.9"],
            "/healthz, /api/v1/limits (all seven limits), /metrics in Prometheus text",
            health,
        ),
    ]
}

async fn auth(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    for auth in [false] {
        let r = ctx
            .api
            .send(Method::GET, "/api/v1/things", None, auth, CALL_TIMEOUT)
            .await?;
        r.expect("S-9.1 without a token", &[401])?;
    }
    let bad = crate::api::Api::new(ctx.api.base(), "not-the-token")?;
    bad.get("/api/v1/things")
        .await?
        .expect("S-9.1 with a wrong token", &[401])?;
    let o = ctx
        .api
        .send(
            Method::GET,
            "/api/v1/openapi.json",
            None,
            true,
            CALL_TIMEOUT,
        )
        .await?;
    o.expect("S-9.1 GET /api/v1/openapi.json", &[200])?;
    ensure!(
        o.body.get("openapi").is_some() && o.body.get("paths").is_some(),
        "S-9.1 openapi.json is not an OpenAPI document"
    );
    Ok(())
}

async fn crud(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing_with(json!({"tags": {"k": "v"}})).await?;
    let path = format!("/api/v1/things/{}", t.id);
    ctx.api
        .post("/api/v1/things", json!({"thingId": t.id}))
        .await?
        .expect("S-9.2 duplicate thingId", &[409])?;
    let g = ctx.api.get(&path).await?;
    g.expect("S-9.2 GET thing", &[200])?;
    ensure!(
        g.data()["thingId"] == t.id.as_str()
            && g.data()["connected"] == false
            && g.data()["enabled"] == true,
        "S-9.2 GET thing data {}",
        g.data()
    );
    let l = ctx.api.get("/api/v1/things?pageIndex=0&pageSize=2").await?;
    l.expect("S-9.2 list things", &[200])?;
    let page = l.data();
    ensure!(
        page["total"].is_u64() && page["content"].is_array(),
        "S-9.2 a page is {{total, content}}: {page}"
    );
    ensure!(
        page["content"].as_array().is_some_and(|c| c.len() <= 2),
        "S-9.2 pageSize 2 returned {} items",
        page["content"].as_array().map_or(0, Vec::len)
    );
    ctx.api
        .patch(&path, json!({"enabled": false}))
        .await?
        .expect("S-9.2 PATCH enabled", &[200])?;
    let g = ctx.api.get(&path).await?;
    ensure!(
        g.data()["enabled"] == false,
        "S-9.2 enabled after PATCH {}",
        g.data()["enabled"]
    );
    let l = ctx
        .api
        .get("/api/v1/things?pageIndex=0&pageSize=1000&enabled=false")
        .await?;
    l.expect("S-9.2 list enabled=false", &[200])?;
    let content = l.data()["content"].as_array().cloned().unwrap_or_default();
    ensure!(
        content.iter().all(|x| x["enabled"] == false),
        "S-9.2 enabled=false listed enabled things"
    );
    ctx.api
        .delete(&path)
        .await?
        .expect("S-9.2 DELETE thing", &[200, 204])?;
    ctx.api
        .get(&path)
        .await?
        .expect("S-9.2 GET deleted thing", &[404])?;
    ctx.api
        .delete(&path)
        .await?
        .expect("S-9.2 DELETE absent thing", &[404])?;
    ctx.api
        .patch(&path, json!({"enabled": true}))
        .await?
        .expect("S-9.2 PATCH absent thing", &[404])?;
    Ok(())
}

async fn ids(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let r = ctx.api.post("/api/v1/things", json!({})).await?;
    r.expect("S-9.2 POST without thingId", &[200, 201])?;
    let id = r.data()["thingId"].as_str().unwrap_or("");
    ensure!(
        is_valid_thing_id(id),
        "S-1.1 generated thingId {id:?} is not valid"
    );
    ensure!(
        r.data()["password"].is_string(),
        "S-9.2 no password returned"
    );
    // The generated id does not carry the run id: delete it here, the run's clean-up would not
    // find it.
    ctx.api.delete(&format!("/api/v1/things/{id}")).await?;
    let mut errs = Vec::new();
    for bad in ["a b", "$svc", "a/b", &"x".repeat(65), "é"] {
        let r = ctx
            .api
            .post("/api/v1/things", json!({"thingId": bad}))
            .await?;
        if r.status != 400 {
            errs.push(format!("{bad:?} -> HTTP {}", r.status));
        }
    }
    ensure!(
        errs.is_empty(),
        "S-1.1 invalid thing ids not refused with 400: {}",
        errs.join("; ")
    );
    Ok(())
}

async fn batch(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let ids: Vec<String> = (0..3).map(|_| ctx.fresh_id()).collect();
    let things: Vec<Value> = ids.iter().map(|i| json!({"thingId": i})).collect();
    let mut r = ctx
        .api
        .post("/api/v1/things/batch", json!({"things": things}))
        .await?;
    if r.status == 400 || r.status == 422 {
        r = ctx.api.post("/api/v1/things/batch", json!(things)).await?;
    }
    r.expect("S-9.2 POST /things/batch", &[200, 201])?;
    ensure!(
        ids.iter().all(|i| r.text.contains(i.as_str())),
        "S-9.2 batch answer does not list the created things: {}",
        crate::api::truncate(&r.text, 300)
    );
    for i in &ids {
        ctx.api
            .get(&format!("/api/v1/things/{i}"))
            .await?
            .expect("S-9.2 GET batch-created thing", &[200])?;
    }
    let many: Vec<Value> = (0..1001)
        .map(|n| json!({"thingId": format!("{}-b{n}", ctx.fresh_id())}))
        .collect();
    let r = ctx
        .api
        .post("/api/v1/things/batch", json!({"things": many}))
        .await?;
    ensure!(
        r.status == 400 || r.status == 413,
        "S-9.2 a batch of 1001 got HTTP {} (expected 400 or 413)",
        r.status
    );
    Ok(())
}

async fn shadow_rest(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V5).await?;
    let base = format!("/api/v1/things/{}/shadows/{DEFAULT_SHADOW}", d.thing.id);
    ctx.api
        .get(&base)
        .await?
        .expect("S-9.3 GET never-written shadow", &[404])?;
    let r = ctx
        .api
        .put(
            &format!("{base}/state/desired"),
            json!({"state": {"desired": {"mode": "eco"}}, "clientToken": "r1"}),
        )
        .await?;
    r.expect("S-9.3 PUT desired", &[200])?;
    let g = ctx.api.get(&base).await?;
    g.expect("S-9.3 GET shadow", &[200])?;
    let doc = g.data();
    ensure!(
        doc["state"]["desired"] == json!({"mode": "eco"})
            && doc["state"]["delta"] == json!({"mode": "eco"})
            && doc["version"] == 1,
        "S-9.3 document {doc}"
    );
    ensure!(
        check::metadata_leaf_paths(&doc["metadata"]).is_ok_and(|p| p.len() == 1),
        "S-3.2 REST document metadata {}",
        doc["metadata"]
    );
    match d.get(DEFAULT_SHADOW).await? {
        Reply::Accepted(v) => ensure!(
            v["state"]["desired"] == json!({"mode": "eco"}),
            "S-9.3 the device sees {v}"
        ),
        Reply::Rejected(r) => bail!("S-9.3 the device cannot get the REST-written shadow: {r}"),
    }
    ctx.api
        .put(
            &format!("{base}/state/desired"),
            json!({"state": {"desired": {"mode": "x"}}, "version": 7}),
        )
        .await?
        .expect("S-9.3 PUT with a wrong version", &[409])?;
    let bad = ctx
        .api
        .send(
            Method::PUT,
            &format!("{base}/state/desired"),
            Some("{\"state\":".into()),
            true,
            CALL_TIMEOUT,
        )
        .await?;
    bad.expect("S-9.3 PUT malformed JSON", &[400])?;
    let big =
        json!({"state": {"desired": {"blob": "z".repeat(ctx.limits.max_request_payload + 10)}}});
    ctx.api
        .put(&format!("{base}/state/desired"), big)
        .await?
        .expect("S-9.3 PUT over the payload limit", &[413])?;
    ctx.api
        .put(
            &format!(
                "/api/v1/things/{}/shadows/{DEFAULT_SHADOW}/state/desired",
                ctx.fresh_id()
            ),
            json!({"state": {"desired": {"a": 1}}}),
        )
        .await?
        .expect("S-9.3 PUT desired of an unknown thing", &[404])?;
    ctx.api
        .delete(&base)
        .await?
        .expect("S-9.3 DELETE shadow", &[200, 204])?;
    ctx.api
        .get(&base)
        .await?
        .expect("S-9.3 GET deleted shadow", &[404])?;
    Ok(())
}

async fn tags(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V311).await?;
    let id = d.thing.id.clone();
    d.conn.subscribe_ok(&crate::ctx::own_filter(&id)).await?;
    let tp = format!("/api/v1/things/{id}/tags");
    ctx.api
        .put(&tp, json!({"tags": {"building": "b1", "floor": 2}}))
        .await?
        .expect("S-9.3 PUT tags", &[200])?;
    ctx.api
        .put(&tp, json!({"tags": {"floor": null, "room": "r7"}}))
        .await?
        .expect("S-9.3 PUT tags with null", &[200])?;
    let g = ctx.api.get(&format!("/api/v1/things/{id}")).await?;
    ensure!(
        check::json_eq(&g.data()["tags"], &json!({"building": "b1", "room": "r7"})),
        "S-9.3 tags after merge {}",
        g.data()["tags"]
    );
    ctx.api
        .put(&tp, json!({"tags": {"x": 1}, "version": 999}))
        .await?
        .expect("S-9.3 PUT tags with a wrong version", &[409])?;
    d.update_ok(DEFAULT_SHADOW, &json!({"state": {"reported": {"a": 1}}}))
        .await?;
    match d.get(DEFAULT_SHADOW).await? {
        Reply::Accepted(v) => ensure!(
            !v.to_string().contains("\"building\""),
            "S-3.1 tags sent to the device: {v}"
        ),
        Reply::Rejected(r) => bail!("get: {r}"),
    }
    let leaked: Vec<String> = d
        .conn
        .drain_publishes()
        .into_iter()
        .filter(|m| String::from_utf8_lossy(&m.payload).contains("\"building\""))
        .map(|m| m.topic)
        .collect();
    ensure!(
        leaked.is_empty(),
        "S-3.1 tags reached the device on {leaked:?}"
    );
    Ok(())
}

async fn run_query(ctx: &Ctx, q: &str) -> anyhow::Result<(u16, Vec<String>)> {
    let r = ctx
        .api
        .post("/api/v1/things/query", json!({"query": q}))
        .await?;
    let content = r
        .data()
        .get("content")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ids = content
        .iter()
        .filter_map(|t| t["thingId"].as_str().map(String::from))
        .collect();
    Ok((r.status, ids))
}

async fn query(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let b = format!("b-{}", ctx.fresh_id());
    let mut things = Vec::new();
    for (bld, fw) in [(b.as_str(), "1.5"), (b.as_str(), "2.1"), ("other", "1.0")] {
        let t = ctx
            .create_thing_with(json!({"tags": {"location": {"building": bld}}}))
            .await?;
        let mut d = ctx.connect(&t, Proto::V5, vec![]).await?;
        d.subscribe_shadow(DEFAULT_SHADOW).await?;
        d.update_ok(DEFAULT_SHADOW, &json!({"state": {"reported": {"fw": fw}}}))
            .await?;
        things.push(t.id);
    }
    let mut errs = Vec::new();
    let q = format!(
        "SELECT * FROM things WHERE tags.location.building = '{b}' AND state.reported.fw < '2.0'"
    );
    match run_query(&ctx, &q).await? {
        (200, ids) if ids == vec![things[0].clone()] => {}
        other => errs.push(format!(
            "example query -> {other:?} (expected [{}])",
            things[0]
        )),
    }
    let q =
        format!("SELECT * FROM things WHERE tags.location.building = '{b}' ORDER BY thingId DESC");
    match run_query(&ctx, &q).await? {
        (200, ids) if ids == vec![things[1].clone(), things[0].clone()] => {}
        other => errs.push(format!("ORDER BY thingId DESC -> {other:?}")),
    }
    let q = format!(
        "SELECT * FROM things WHERE tags.location.building = '{b}' AND NOT (state.reported.fw = '1.5' OR tags.nothing IS NOT NULL)"
    );
    match run_query(&ctx, &q).await? {
        (200, ids) if ids == vec![things[1].clone()] => {}
        other => errs.push(format!("NOT/OR/IS NOT NULL -> {other:?}")),
    }
    for inj in [
        format!("SELECT * FROM things WHERE tags.location.building = '{b}' OR '1'='1'"),
        format!("SELECT * FROM things WHERE tags.location.building = '{b}'' OR ''1''=''1'"),
        "SELECT * FROM things; DROP TABLE things; --".to_string(),
        format!(
            "SELECT * FROM things WHERE thingId = '{}' UNION SELECT * FROM things",
            things[0]
        ),
    ] {
        let (status, ids) = run_query(&ctx, &inj).await?;
        if status >= 500 {
            errs.push(format!("{inj:?} -> HTTP {status}"));
        }
        if status == 200 && ids.len() > 3 && !inj.contains("'1'='1'") {
            errs.push(format!("{inj:?} returned {} things", ids.len()));
        }
    }
    ctx.api
        .get(&format!("/api/v1/things/{}", things[2]))
        .await?
        .expect("S-9.4 things still exist after injection attempts", &[200])?;
    match run_query(&ctx, "SELEC nonsense").await? {
        (400, _) => {}
        other => errs.push(format!("a syntax error -> {other:?} (expected 400)")),
    }
    ensure!(errs.is_empty(), "S-9.4 {}", errs.join("; "));
    Ok(())
}

async fn health(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    ctx.api
        .send(Method::GET, "/healthz", None, false, CALL_TIMEOUT)
        .await?
        .expect("S-9.7 GET /healthz", &[200])?;
    let l = ctx.api.get("/api/v1/limits").await?;
    l.expect("S-9.7 GET /api/v1/limits", &[200])?;
    let mut missing = Vec::new();
    for k in [
        "maxRequestPayload",
        "maxStateBytes",
        "maxJsonDepth",
        "maxClientToken",
        "shadowRequestsPerSec",
        "maxInFlight",
        "maxNamedShadows",
    ] {
        if !l.data()[k].is_u64() {
            missing.push(k);
        }
    }
    ensure!(
        missing.is_empty(),
        "S-9.7 limits lack {missing:?}: {}",
        l.data()
    );
    let m = ctx
        .api
        .send(
            Method::GET,
            "/metrics",
            None,
            false,
            Duration::from_secs(10),
        )
        .await?;
    m.expect("S-9.7 GET /metrics", &[200])?;
    let samples = m
        .text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count();
    ensure!(
        samples > 0
            && m.text.lines().all(|l| l.starts_with('#')
                || l.trim().is_empty()
                || l.split_whitespace().count() >= 2),
        "S-9.7 /metrics is not Prometheus text"
    );
    Ok(())
}
