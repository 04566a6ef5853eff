//! S-7 OTA and S-9.6 OTA jobs: a job's task reaches the thing with the S-7.1 shape, results
//! update the task's status, a pending task is sent again on reconnect, a job can be cancelled,
//! a task without a final result times out.
//!
//! Where docs/spec.md is silent the cases read the REST shapes the S-9 conventions imply: the
//! created job's id in `data.jobId`, tasks listed as an S-9.2 page
//! (`{"total","content":[{"thingId","status",..}]}`) with the S-7.3 state names, job counts in
//! `data.counts` keyed by those names, `timeoutMinutes` accepting a fraction of a minute.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use iothub_spec::code::{OtaStatus, OtaTaskState};
use iothub_spec::payload;
use iothub_spec::topic::Topic;
use serde_json::{Value, json};

use crate::case::Case;
use crate::ctx::{Ctx, Device, Thing};
use crate::ensure;
use crate::mqtt::{Msg, Proto, STEP};

/// The S-7 cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "s7_ota_task_delivered",
            &["S-7.1", "S-9.6"],
            "a job's task reaches the thing on T/ota/task with the S-7.1 shape",
            |c| delivered(c, Proto::V5),
        ),
        Case::new(
            "s7_ota_results_recorded",
            &["S-7.2", "S-7.3", "S-9.6"],
            "ongoing/done results on T/ota/task/result update the task status and the job counts",
            |c| results(c, Proto::V311),
        ),
        Case::new(
            "s7_ota_rollout_rate",
            &["S-7.3"],
            "a job with maxPerMinute 1 over two connected things sends one task, the other stays queued (first 3 s)",
            rollout,
        ),
        Case::new(
            "s7_ota_resend_on_reconnect",
            &["S-7.3"],
            "a pending task is sent again when its thing reconnects",
            resend,
        ),
        Case::new(
            "s7_ota_task_timeout",
            &["S-7.3"],
            "a task without a final result times out",
            timeout,
        ),
        Case::new(
            "s7_ota_job_cancel",
            &["S-7.3", "S-9.6"],
            "cancelling a job cancels its open tasks",
            cancel,
        ),
        Case::new(
            "s9_ota_jobs_rest",
            &["S-9.6"],
            "POST /ota/jobs refuses bad bodies (400), unknown jobs are 404",
            rest,
        ),
    ]
}

/// The S-9.6 job body for `things`.
fn job_body(things: &[&str], extra: Value) -> Value {
    let mut b = json!({
        "targets": {"thingIds": things},
        "task": {
            "type": "app",
            "meta": {"version": "2.0.0", "content-length": 1024},
            "fileUrl": "http://127.0.0.1:9/cf-firmware.bin"
        }
    });
    if let (Some(m), Some(e)) = (b.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    b
}

/// Creates a job; returns its id.
async fn create_job(ctx: &Ctx, body: Value) -> anyhow::Result<String> {
    let r = ctx.api.post("/api/v1/ota/jobs", body).await?;
    r.expect("S-9.6 POST /api/v1/ota/jobs", &[200, 201])?;
    r.data()
        .get("jobId")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("S-9.6 the created job has no data.jobId: {}", r.text))
}

/// The status of `thing`'s task in the job's task list.
async fn task_status(ctx: &Ctx, job: &str, thing: &str) -> anyhow::Result<Option<String>> {
    let r = ctx
        .api
        .get(&format!("/api/v1/ota/jobs/{job}/tasks"))
        .await?;
    r.expect("S-9.6 GET /api/v1/ota/jobs/{id}/tasks", &[200])?;
    let content = r
        .data()
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("S-9.6 the task list is not a page: {}", r.text))?;
    Ok(content
        .iter()
        .find(|t| t["thingId"] == thing)
        .and_then(|t| t["status"].as_str())
        .map(str::to_owned))
}

/// Polls until `thing`'s task has status `want` (S-7.3 names), at most `within`.
async fn await_status(
    ctx: &Ctx,
    job: &str,
    thing: &str,
    want: OtaTaskState,
    within: Duration,
) -> anyhow::Result<()> {
    let mut last = None;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        last = task_status(ctx, job, thing).await?.or(last);
        if last.as_deref() == Some(want.as_str()) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "S-7.3 the task of {thing} is {last:?} after {within:?}, expected {:?}",
                want.as_str()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connects `thing` subscribed to `T/ota/task`.
async fn ota_device(ctx: &Ctx, thing: &Thing, p: Proto) -> anyhow::Result<Device> {
    let topic = Topic::OtaTask { thing: &thing.id }.to_string();
    ctx.connect(thing, p, vec![topic]).await
}

/// Waits for a task on `T/ota/task` and checks its S-7.1 shape; returns it and its
/// `(clientToken, taskId)`.
async fn next_task(d: &mut Device) -> anyhow::Result<(Msg, String, String)> {
    let topic = Topic::OtaTask { thing: &d.thing.id }.to_string();
    let m = d
        .recv_on(&topic, STEP)
        .await
        .with_context(|| format!("S-7.3 no task on {topic} within {STEP:?}"))?;
    let task: payload::OtaTask<'_> = serde_json::from_slice(&m.payload).map_err(|e| {
        anyhow!(
            "S-7.1 the task is not {{clientToken, taskId, type, meta, fileUrl}} ({e}): {}",
            String::from_utf8_lossy(&m.payload)
        )
    })?;
    ensure!(
        !task.client_token.is_empty() && !task.task_id.is_empty(),
        "S-7.1 empty clientToken or taskId"
    );
    let ids = (task.client_token.to_owned(), task.task_id.to_owned());
    Ok((m, ids.0, ids.1))
}

/// Publishes an S-7.2 result.
async fn result(
    d: &Device,
    token: &str,
    task_id: &str,
    status: OtaStatus,
    progress: Option<u8>,
) -> anyhow::Result<()> {
    let r = payload::OtaResult {
        client_token: token,
        task_id,
        status,
        progress,
        err_code: None,
        err_msg: None,
        timestamp: crate::device::hub::now_ms(),
    };
    let topic = Topic::OtaTaskResult { thing: &d.thing.id }.to_string();
    d.conn
        .publish(&topic, serde_json::to_string(&r)?.as_bytes(), true)
        .await
}

async fn delivered(ctx: Arc<Ctx>, p: Proto) -> anyhow::Result<()> {
    let thing = ctx.create_thing().await?;
    let mut d = ota_device(&ctx, &thing, p).await?;
    create_job(&ctx, job_body(&[&thing.id], json!({}))).await?;
    let (m, _, _) = next_task(&mut d).await?;
    let v = m.json();
    ensure!(
        v["type"] == "app"
            && v["meta"]["version"] == "2.0.0"
            && v["meta"]["content-length"] == 1024
            && v["fileUrl"] == "http://127.0.0.1:9/cf-firmware.bin",
        "S-7.1 the task does not carry the job's type, meta and fileUrl: {v}"
    );
    ensure!(
        m.qos == 1 && !m.retain,
        "S-2.3 the task came at QoS {} retain {}",
        m.qos,
        m.retain
    );
    Ok(())
}

async fn results(ctx: Arc<Ctx>, p: Proto) -> anyhow::Result<()> {
    let thing = ctx.create_thing().await?;
    let mut d = ota_device(&ctx, &thing, p).await?;
    let job = create_job(&ctx, job_body(&[&thing.id], json!({}))).await?;
    let (_, tok, id) = next_task(&mut d).await?;
    result(&d, &tok, &id, OtaStatus::Ongoing, Some(40)).await?;
    await_status(&ctx, &job, &thing.id, OtaTaskState::Ongoing, STEP).await?;
    result(&d, &tok, &id, OtaStatus::Done, None).await?;
    await_status(&ctx, &job, &thing.id, OtaTaskState::Done, STEP).await?;
    let r = ctx.api.get(&format!("/api/v1/ota/jobs/{job}")).await?;
    r.expect("S-9.6 GET /api/v1/ota/jobs/{id}", &[200])?;
    let done = &r.data()["counts"][OtaTaskState::Done.as_str()];
    ensure!(
        done == 1,
        "S-9.6 job counts per status show done = {done}: {}",
        r.text
    );
    Ok(())
}

async fn rollout(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let (a, b) = (ctx.create_thing().await?, ctx.create_thing().await?);
    let mut da = ota_device(&ctx, &a, Proto::V5).await?;
    let mut db = ota_device(&ctx, &b, Proto::V311).await?;
    let job = create_job(&ctx, job_body(&[&a.id, &b.id], json!({"maxPerMinute": 1}))).await?;
    let window = Duration::from_secs(3);
    let ta = Topic::OtaTask { thing: &a.id }.to_string();
    let tb = Topic::OtaTask { thing: &b.id }.to_string();
    let (got_a, got_b) = tokio::join!(da.recv_on(&ta, window), db.recv_on(&tb, window));
    let waiting = match (got_a.is_some(), got_b.is_some()) {
        (true, true) => bail!("S-7.3 maxPerMinute 1, yet both things got their task at once"),
        (false, false) => bail!("S-7.3 neither thing got a task within {window:?}"),
        (true, false) => &b.id,
        (false, true) => &a.id,
    };
    let st = task_status(&ctx, &job, waiting).await?;
    ensure!(
        st.as_deref() == Some(OtaTaskState::Queued.as_str()),
        "S-7.3 the task held back by maxPerMinute is {st:?}, expected \"queued\""
    );
    Ok(())
}

async fn resend(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let thing = ctx.create_thing().await?;
    let mut d = ota_device(&ctx, &thing, Proto::V5).await?;
    create_job(&ctx, job_body(&[&thing.id], json!({}))).await?;
    let (_, _, first) = next_task(&mut d).await?;
    drop(d);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut d = ota_device(&ctx, &thing, Proto::V311).await?;
    let (_, _, again) = next_task(&mut d).await?;
    ensure!(
        again == first,
        "S-7.3 after reconnecting the thing got task {again:?}, not its pending {first:?}"
    );
    Ok(())
}

async fn timeout(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let thing = ctx.create_thing().await?;
    let mut d = ota_device(&ctx, &thing, Proto::V5).await?;
    // 0.05 min = 3 s.
    let job = create_job(
        &ctx,
        job_body(&[&thing.id], json!({"timeoutMinutes": 0.05})),
    )
    .await?;
    let (_, tok, id) = next_task(&mut d).await?;
    result(&d, &tok, &id, OtaStatus::Ongoing, Some(10)).await?;
    await_status(
        &ctx,
        &job,
        &thing.id,
        OtaTaskState::TimedOut,
        Duration::from_secs(15),
    )
    .await
}

async fn cancel(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    // A thing that never connects: its task stays open.
    let thing = ctx.create_thing().await?;
    let job = create_job(&ctx, job_body(&[&thing.id], json!({}))).await?;
    let r = ctx
        .api
        .post(&format!("/api/v1/ota/jobs/{job}/cancel"), json!({}))
        .await?;
    r.expect("S-9.6 POST /api/v1/ota/jobs/{id}/cancel", &[200, 202, 204])?;
    await_status(&ctx, &job, &thing.id, OtaTaskState::Canceled, STEP).await
}

async fn rest(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let thing = ctx.create_thing().await?;
    for (what, body) in [
        (
            "no targets",
            json!({"task": job_body(&[], json!({}))["task"]}),
        ),
        ("no task", json!({"targets": {"thingIds": [thing.id]}})),
        ("no fileUrl", {
            let mut b = job_body(&[&thing.id], json!({}));
            if let Some(t) = b["task"].as_object_mut() {
                t.remove("fileUrl");
            }
            b
        }),
    ] {
        let r = ctx.api.post("/api/v1/ota/jobs", body).await?;
        r.expect(&format!("S-9.6 POST /api/v1/ota/jobs with {what}"), &[400])?;
    }
    let r = ctx.api.get("/api/v1/ota/jobs/cf-no-such-job").await?;
    r.expect("S-9.6 GET of an unknown job", &[404])?;
    let r = ctx
        .api
        .post("/api/v1/ota/jobs/cf-no-such-job/cancel", json!({}))
        .await?;
    r.expect("S-9.6 cancel of an unknown job", &[404])?;
    Ok(())
}
