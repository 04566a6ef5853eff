//! S-11 configurations: a desired-state patch reaches exactly the things its target condition
//! matches, then the things that come to match later; per-thing records and counts follow the
//! devices' reports; bad configurations are refused with their codes (D-47).
//!
//! Each case targets a tag value that carries the run id, so other things on the hub are never
//! touched, and deletes its configurations at the end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use iothub_spec::ids::DEFAULT_SHADOW;
use serde_json::{Value, json};

use crate::case::Case;
use crate::ctx::Ctx;
use crate::ensure;
use crate::mqtt::Proto;

/// How long a rollout to a handful of things may take: the default sweep is 1 s (D-50).
const ROLLOUT: Duration = Duration::from_secs(15);

/// The S-11 cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "s11_configuration_rollout",
            &["S-11.1", "S-11.2"],
            "a configuration patches exactly the matching things, then a thing re-tagged into the target; records, applied and succeeded counts follow",
            rollout,
        ),
        Case::new(
            "s11_configuration_refusals",
            &["S-11.1"],
            "invalid configurations answer 400, a taken name 409, an unknown one 404 (D-47)",
            refusals,
        ),
    ]
}

fn path(name: &str) -> String {
    format!("/api/v1/configurations/{name}")
}

/// The configuration's counts once `done` holds for them, within [`ROLLOUT`].
async fn counts_until(
    ctx: &Ctx,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + ROLLOUT;
    loop {
        let r = ctx.api.get(&path(name)).await?;
        r.expect("S-11.1 GET /configurations/{name}", &[200])?;
        let last = r.data()["counts"].clone();
        if done(&last) {
            return Ok(last);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("S-11.2 {what} not reached within {ROLLOUT:?}: counts {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn desired_of(ctx: &Ctx, thing: &str) -> anyhow::Result<Value> {
    let r = ctx
        .api
        .get(&format!("/api/v1/things/{thing}/shadows/{DEFAULT_SHADOW}"))
        .await?;
    // A thing nothing was written to has no shadow yet.
    if r.status == 404 {
        return Ok(Value::Null);
    }
    r.expect("S-9.3 GET shadow", &[200])?;
    Ok(r.data()["state"]["desired"].clone())
}

async fn rollout(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let building = format!("{}-b1", ctx.run_id());
    let tags = json!({"tags": {"location": {"building": building}}});
    let a = ctx.create_thing_with(tags.clone()).await?;
    let b = ctx.create_thing_with(tags).await?;
    let other = ctx
        .create_thing_with(json!({"tags": {"location": {"building": "elsewhere"}}}))
        .await?;
    let name = format!("{}-conf", ctx.run_id());
    let r = ctx
        .api
        .post(
            "/api/v1/configurations",
            json!({
                "name": name,
                "targetCondition": format!("tags.location.building = '{building}'"),
                "desired": {"telemetryInterval": 15},
                "successCondition": "state.reported.telemetryInterval = 15",
            }),
        )
        .await?;
    r.expect("S-11.1 POST /configurations", &[201])?;
    ensure!(
        r.data()["name"] == json!(name),
        "S-11.1 the created configuration is {}",
        r.data()
    );

    let result = async {
        counts_until(&ctx, &name, "2 targeted and applied", |c| {
            c["targeted"] == 2 && c["applied"] == 2
        })
        .await?;
        for t in [&a, &b] {
            let d = desired_of(&ctx, &t.id).await?;
            ensure!(
                d["telemetryInterval"] == 15,
                "S-11.1 thing {} has desired {d}, not the configuration's patch",
                t.id
            );
            let r = ctx
                .api
                .get(&format!("/api/v1/things/{}/configurations", t.id))
                .await?;
            r.expect("S-11.1 GET /things/{id}/configurations", &[200])?;
            let records = r.data().as_array().cloned().unwrap_or_default();
            let rec = records
                .iter()
                .find(|x| x["configuration"] == json!(name))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "S-11.1 thing {} has no record of {name}: {}",
                        t.id,
                        r.data()
                    )
                })?;
            ensure!(
                rec["status"] == "applied" && rec["keys"] == json!(["telemetryInterval"]),
                "S-11.1 thing {}'s record is {rec}",
                t.id
            );
        }
        let d = desired_of(&ctx, &other.id).await?;
        ensure!(
            d.get("telemetryInterval").is_none(),
            "S-11.1 a thing outside the target got the patch: desired {d}"
        );

        // A device reports the value: succeeded follows.
        let mut dev = ctx.connect(&a, Proto::V5, vec![]).await?;
        dev.subscribe_shadow(DEFAULT_SHADOW).await?;
        dev.update_ok(
            DEFAULT_SHADOW,
            &json!({"state": {"reported": {"telemetryInterval": 15}}, "clientToken": "c1"}),
        )
        .await?;
        counts_until(&ctx, &name, "1 succeeded", |c| c["succeeded"] == 1).await?;
        dev.conn.disconnect().await;

        // A thing re-tagged into the building gets the patch too.
        let r = ctx
            .api
            .patch(
                &format!("/api/v1/things/{}/tags", other.id),
                json!({"tags": {"location": {"building": building}}}),
            )
            .await?;
        r.expect("S-9.3 PATCH tags", &[200])?;
        let c = counts_until(&ctx, &name, "3 targeted and applied", |c| {
            c["targeted"] == 3 && c["applied"] == 3
        })
        .await?;
        ensure!(
            c["failed"] == 0,
            "S-11.2 counts {c} after a rollout nothing refused"
        );
        let d = desired_of(&ctx, &other.id).await?;
        ensure!(
            d["telemetryInterval"] == 15,
            "S-11.2 the re-tagged thing has desired {d}"
        );

        // The same counts at /metrics.
        let line =
            format!("iothub_configuration_things{{configuration=\"{name}\",status=\"applied\"}} 3");
        let seen = Ctx::poll_until(ROLLOUT, || async {
            let m = ctx
                .api
                .send(
                    reqwest::Method::GET,
                    "/metrics",
                    None,
                    false,
                    Duration::from_secs(10),
                )
                .await
                .ok()?;
            m.text.contains(&line).then_some(())
        })
        .await;
        ensure!(seen.is_some(), "S-11.2 /metrics has no line {line}");
        Ok(())
    }
    .await;
    let removed = ctx.api.delete(&path(&name)).await;
    result?;
    removed?.expect("S-11.1 DELETE /configurations/{name}", &[200, 204])?;
    let r = ctx.api.get(&path(&name)).await?;
    r.expect("S-11.1 GET a deleted configuration", &[404])?;
    Ok(())
}

async fn refusals(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let name = format!("{}-ref", ctx.run_id());
    let target = format!("tags.nothing = '{}'", ctx.run_id());
    let good = json!({"name": name, "targetCondition": target, "desired": {"a": 1}});
    let bad = [
        (
            "a name with a space",
            json!({"name": "a b", "targetCondition": target, "desired": {"a": 1}}),
        ),
        (
            "an empty desired",
            json!({"name": name, "targetCondition": target, "desired": {}}),
        ),
        (
            "a desired that is not an object",
            json!({"name": name, "targetCondition": target, "desired": 5}),
        ),
        (
            "an unknown field",
            json!({"name": name, "targetCondition": target, "desired": {"a": 1}, "extra": 1}),
        ),
        (
            "ORDER BY in the condition",
            json!({"name": name, "targetCondition": format!("{target} ORDER BY thingId"), "desired": {"a": 1}}),
        ),
        (
            "a condition that does not parse",
            json!({"name": name, "targetCondition": "tags.a = = 1", "desired": {"a": 1}}),
        ),
    ];
    for (what, body) in bad {
        let r = ctx.api.post("/api/v1/configurations", body).await?;
        r.expect(&format!("S-11.1 (D-47) {what}"), &[400])?;
    }
    let r = ctx.api.post("/api/v1/configurations", good.clone()).await?;
    r.expect("S-11.1 POST /configurations", &[201])?;
    let result = async {
        let r = ctx.api.post("/api/v1/configurations", good).await?;
        r.expect("S-11.1 (D-47) a taken name", &[409])?;
        let r = ctx.api.get(&path(&format!("{name}-none"))).await?;
        r.expect("S-11.1 (D-47) an unknown name", &[404])?;
        let r = ctx.api.get("/api/v1/configurations").await?;
        r.expect("S-11.1 GET /configurations", &[200])?;
        ensure!(
            r.data()
                .as_array()
                .is_some_and(|a| a.iter().any(|c| c["name"] == json!(name))),
            "S-11.1 the list does not hold {name}: {}",
            r.data()
        );
        Ok(())
    }
    .await;
    let removed = ctx.api.delete(&path(&name)).await;
    result?;
    removed?.expect("S-11.1 DELETE /configurations/{name}", &[200, 204])?;
    Ok(())
}
