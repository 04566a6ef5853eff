//! S-12 jobs: a method job ends every thing in a final state with the device's code (a listed
//! thing that does not exist 404, one never online `timed_out` at `endAt`); desired and tags
//! jobs go through the shadow and tags pipelines; a scheduled job can be canceled once; bad jobs
//! are refused with their codes (D-51).
//!
//! Jobs are not deleted over REST: the hub's retention removes them (D-56). Their ids carry the
//! run id.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use iothub_spec::ids::DEFAULT_SHADOW;
use serde_json::{Value, json};

use crate::case::Case;
use crate::ctx::Ctx;
use crate::ensure;
use crate::mqtt::Proto;

use super::s5::{method_device, next_request, respond};

/// How long the small jobs here may take to end: `endAt` is 4 s out, a sweep looks every 500 ms
/// for offline things (D-54).
const JOB_END: Duration = Duration::from_secs(20);

/// The S-12 cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "s12_method_job_outcomes",
            &["S-12.1", "S-12.2", "S-12.3"],
            "a method job: answered 200 -> succeeded, 409 -> failed with the code, unknown thing -> failed 404, never online -> timed_out at endAt; counts add up",
            method_job,
        ),
        Case::new(
            "s12_desired_and_tags_jobs",
            &["S-12.1", "S-12.3"],
            "a desired-state job over a query patches each shadow; a tags job merge-patches the tags; every record succeeded with code 200",
            desired_and_tags,
        ),
        Case::new(
            "s12_refusals_and_cancel",
            &["S-12.1", "S-12.2"],
            "invalid jobs 400, a taken id 409, an unknown job 404; a scheduled job canceled ends its things canceled, a second cancel 409 (D-51, D-55)",
            refusals_and_cancel,
        ),
    ]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

async fn create(ctx: &Ctx, body: Value) -> anyhow::Result<Value> {
    let r = ctx.api.post("/api/v1/jobs", body).await?;
    r.expect("S-12.1 POST /jobs", &[201])?;
    Ok(r.data().clone())
}

/// The job once it has ended (`completed` or `canceled`), within [`JOB_END`].
async fn ended(ctx: &Ctx, id: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + JOB_END;
    loop {
        let r = ctx.api.get(&format!("/api/v1/jobs/{id}")).await?;
        r.expect("S-12.1 GET /jobs/{id}", &[200])?;
        let job = r.data().clone();
        if job["status"] == "completed" || job["status"] == "canceled" {
            return Ok(job);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("S-12.2 job {id} has not ended within {JOB_END:?}: {job}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that the counts hold exactly `want` (missing states are 0) and add up to `things`.
fn check_counts(job: &Value, want: &[(&str, u64)]) -> anyhow::Result<()> {
    let counts = &job["counts"];
    let mut sum = 0;
    for state in [
        "queued",
        "in_progress",
        "succeeded",
        "failed",
        "timed_out",
        "canceled",
    ] {
        let n = counts[state].as_u64().unwrap_or(0);
        let expected = want
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        ensure!(
            n == expected,
            "S-12.3 counts.{state} is {n}, expected {expected}: {counts}"
        );
        sum += n;
    }
    ensure!(
        job["things"].as_u64() == Some(sum),
        "S-12.3 the counts add up to {sum}, the job targets {}",
        job["things"]
    );
    Ok(())
}

/// The per-thing record of `thing` in job `id`.
async fn record(ctx: &Ctx, id: &str, thing: &str) -> anyhow::Result<Value> {
    let r = ctx
        .api
        .get(&format!("/api/v1/jobs/{id}/things/{thing}"))
        .await?;
    r.expect("S-12.3 GET /jobs/{id}/things/{thingId}", &[200])?;
    Ok(r.data().clone())
}

fn expect_record(rec: &Value, status: &str, code: Option<u64>) -> anyhow::Result<()> {
    ensure!(
        rec["status"] == status && rec["code"].as_u64() == code,
        "S-12.3 record of {} is {rec}, expected status {status} code {code:?}",
        rec["thingId"]
    );
    Ok(())
}

async fn method_job(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut ok = method_device(&ctx, Proto::V5).await?;
    let mut refuses = method_device(&ctx, Proto::V311).await?;
    let missing = ctx.fresh_id();
    let offline = ctx.create_thing().await?;
    let id = format!("{}-mj", ctx.run_id());
    let start = now_ms();
    let job = create(
        &ctx,
        json!({
            "jobId": id,
            "things": [ok.thing.id, refuses.thing.id, missing, offline.id],
            "operation": {"type": "method", "name": "m", "payload": {"x": 1}, "timeoutS": 10},
            "maxPerMinute": 60000,
            "endAt": start + 4000,
        }),
    )
    .await?;
    ensure!(
        job["jobId"] == json!(id) && job["things"] == 4,
        "S-12.1 the created job is {job}"
    );
    let (m, tok) = next_request(&mut ok, "m").await?;
    ensure!(
        m.json()["data"] == json!({"x": 1}),
        "S-12.1 the job's call carries data {} (expected {{\"x\":1}})",
        m.json()["data"]
    );
    respond(
        &ok,
        "m",
        json!({"clientToken": tok, "code": 200, "data": {"done": true}}),
    )
    .await?;
    let (_, tok) = next_request(&mut refuses, "m").await?;
    respond(&refuses, "m", json!({"clientToken": tok, "code": 409})).await?;

    let job = ended(&ctx, &id).await?;
    ensure!(
        job["status"] == "completed",
        "S-12.2 the job ended {}",
        job["status"]
    );
    check_counts(&job, &[("succeeded", 1), ("failed", 2), ("timed_out", 1)])?;
    let rec = record(&ctx, &id, &ok.thing.id).await?;
    expect_record(&rec, "succeeded", Some(200))?;
    ensure!(
        rec["response"] == json!({"done": true}) && rec["attempts"] == 1,
        "S-12.3 the answered record keeps the device's data and one attempt: {rec}"
    );
    expect_record(
        &record(&ctx, &id, &refuses.thing.id).await?,
        "failed",
        Some(409),
    )?;
    expect_record(&record(&ctx, &id, &missing).await?, "failed", Some(404))?;
    let rec = record(&ctx, &id, &offline.id).await?;
    ensure!(
        rec["status"] == "timed_out",
        "S-12.2 a thing never online by endAt ends timed_out: {rec}"
    );

    // The records as a page, in job order, filtered by status.
    let r = ctx
        .api
        .get(&format!("/api/v1/jobs/{id}/things?pageSize=10"))
        .await?;
    r.expect("S-12.1 GET /jobs/{id}/things", &[200])?;
    let order: Vec<&str> = r.data()["content"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["thingId"].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        r.data()["total"] == 4
            && order
                == [
                    ok.thing.id.as_str(),
                    &refuses.thing.id,
                    &missing,
                    &offline.id
                ],
        "S-12.3 the records page is {} (expected the four things in job order)",
        r.data()
    );
    let r = ctx
        .api
        .get(&format!("/api/v1/jobs/{id}/things?status=failed"))
        .await?;
    r.expect("S-12.1 GET /jobs/{id}/things?status=failed", &[200])?;
    ensure!(
        r.data()["total"] == 2,
        "S-12.1 status=failed lists {}",
        r.data()
    );
    ok.conn.disconnect().await;
    refuses.conn.disconnect().await;
    Ok(())
}

async fn desired_and_tags(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let fleet = format!("{}-fleet", ctx.run_id());
    let a = ctx
        .create_thing_with(json!({"tags": {"fleet": fleet, "keep": 1}}))
        .await?;
    let b = ctx
        .create_thing_with(json!({"tags": {"fleet": fleet, "keep": 2}}))
        .await?;
    let desired = format!("{}-dj", ctx.run_id());
    create(
        &ctx,
        json!({
            "jobId": desired,
            "query": format!("tags.fleet = '{fleet}'"),
            "operation": {"type": "desired", "patch": {"mode": "eco"}},
            "maxPerMinute": 60000,
        }),
    )
    .await?;
    let job = ended(&ctx, &desired).await?;
    check_counts(&job, &[("succeeded", 2)])?;
    for t in [&a, &b] {
        expect_record(
            &record(&ctx, &desired, &t.id).await?,
            "succeeded",
            Some(200),
        )?;
        let r = ctx
            .api
            .get(&format!("/api/v1/things/{}/shadows/{DEFAULT_SHADOW}", t.id))
            .await?;
        r.expect("S-9.3 GET shadow", &[200])?;
        ensure!(
            r.data()["state"]["desired"]["mode"] == "eco",
            "S-12.1 thing {} has desired {} after the job",
            t.id,
            r.data()["state"]["desired"]
        );
    }

    let tags = format!("{}-tj", ctx.run_id());
    create(
        &ctx,
        json!({
            "jobId": tags,
            "things": [a.id],
            "operation": {"type": "tags", "replace": false, "tags": {"ring": "beta", "keep": null}},
            "maxPerMinute": 60000,
        }),
    )
    .await?;
    let job = ended(&ctx, &tags).await?;
    check_counts(&job, &[("succeeded", 1)])?;
    let r = ctx.api.get(&format!("/api/v1/things/{}", a.id)).await?;
    r.expect("S-9.2 GET /things/{id}", &[200])?;
    let want = json!({"fleet": fleet, "ring": "beta"});
    ensure!(
        r.data()["tags"] == want,
        "S-12.1 tags after a merge-patch job are {} (expected {want})",
        r.data()["tags"]
    );
    Ok(())
}

async fn refusals_and_cancel(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let a = ctx.create_thing().await?;
    let b = ctx.create_thing().await?;
    let op = json!({"type": "desired", "patch": {"a": 1}});
    let nothing = format!("tags.nothing = '{}'", ctx.run_id());
    let bad = [
        (
            "both things and query",
            json!({"things": [a.id], "query": nothing, "operation": op}),
        ),
        ("neither things nor query", json!({"operation": op})),
        ("an empty list", json!({"things": [], "operation": op})),
        (
            "an invalid thing id",
            json!({"things": ["bad id"], "operation": op}),
        ),
        (
            "a query that matches nothing",
            json!({"query": nothing, "operation": op}),
        ),
        (
            "maxPerMinute 0",
            json!({"things": [a.id], "operation": op, "maxPerMinute": 0}),
        ),
        (
            "retries above MAX_JOB_RETRIES",
            json!({"things": [a.id], "operation": op, "retries": 11}),
        ),
        (
            "endAt before startAt",
            json!({"things": [a.id], "operation": op, "startAt": 10, "endAt": 5}),
        ),
        (
            "an empty patch",
            json!({"things": [a.id], "operation": {"type": "desired", "patch": {}}}),
        ),
        (
            "an unknown operation",
            json!({"things": [a.id], "operation": {"type": "reboot"}}),
        ),
        (
            "an unknown field",
            json!({"things": [a.id], "operation": op, "extra": 1}),
        ),
    ];
    for (what, body) in bad {
        let r = ctx.api.post("/api/v1/jobs", body).await?;
        r.expect(&format!("S-12.1 (D-51) {what}"), &[400])?;
    }

    let id = format!("{}-cj", ctx.run_id());
    let later = now_ms() + 3_600_000;
    let job = create(
        &ctx,
        json!({"jobId": id, "things": [a.id, b.id], "operation": op, "startAt": later}),
    )
    .await?;
    ensure!(
        job["status"] == "scheduled",
        "S-12.2 a job starting in an hour is {}",
        job["status"]
    );
    let r = ctx
        .api
        .post(
            "/api/v1/jobs",
            json!({"jobId": id, "things": [a.id], "operation": op}),
        )
        .await?;
    r.expect("S-12.1 (D-51) a taken job id", &[409])?;
    let r = ctx.api.get(&format!("/api/v1/jobs/{id}-none")).await?;
    r.expect("S-12.1 (D-51) an unknown job", &[404])?;

    let r = ctx
        .api
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await?;
    r.expect("S-12.1 POST /jobs/{id}/cancel", &[200])?;
    let job = ended(&ctx, &id).await?;
    ensure!(
        job["status"] == "canceled",
        "S-12.2 a canceled job is {}",
        job["status"]
    );
    check_counts(&job, &[("canceled", 2)])?;
    let r = ctx
        .api
        .post(&format!("/api/v1/jobs/{id}/cancel"), json!({}))
        .await?;
    r.expect("S-12.1 (D-51) canceling an ended job", &[409])?;
    // A canceled desired job wrote nothing.
    let r = ctx
        .api
        .get(&format!("/api/v1/things/{}/shadows/{DEFAULT_SHADOW}", a.id))
        .await?;
    ensure!(
        r.status == 404 || r.data()["state"]["desired"].get("a").is_none(),
        "S-12.2 a canceled job patched {}: {}",
        a.id,
        r.text
    );
    Ok(())
}
