//! The device cases for the services beside shadows, and the helpers that drive them: direct
//! methods (S-5), NTP requests (S-6) and OTA tasks (S-7).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use iothub_spec::code::OtaStatus;
use iothub_spec::payload::{self, field};
use iothub_spec::topic::Topic;
use serde_json::{Value, json};

use crate::device::hub::Shadows;
use crate::device::judge;
use crate::device::{DeviceCtx, REACT, Run, published_in};
use crate::ensure;

/// Sends a method call and returns its clientToken.
pub(super) fn call(run: &Run, method: &str, token: &str) -> anyhow::Result<String> {
    let req = payload::MethodRequest {
        client_token: token,
        data: json!({}),
    };
    let topic = Topic::MethodRequest {
        thing: &run.thing,
        method,
    };
    topic
        .validate()
        .map_err(|e| anyhow!("method name {method:?}: {e}"))?;
    run.hub
        .send(&topic.to_string(), &serde_json::to_value(req)?)?;
    Ok(token.to_owned())
}

/// Waits for the response on `T/methods/{method}/resp` whose clientToken is `token`.
pub(super) async fn response(
    run: &Run,
    mark: usize,
    method: &str,
    token: &str,
) -> anyhow::Result<Value> {
    let topic = Topic::MethodResponse {
        thing: &run.thing,
        method,
    }
    .to_string();
    let found = run
        .hub
        .wait_for(REACT, "", |log| {
            published_in(log, mark, &topic)
                .into_iter()
                .find(|s| s.body[field::CLIENT_TOKEN] == token)
        })
        .await;
    match found {
        Ok(s) => Ok(s.body),
        Err(_) => {
            // Name every method response seen, on any method's topic (a wrong method name or
            // token shows up here).
            let got: Vec<String> = run.hub.with(|st| {
                st.log[mark..]
                    .iter()
                    .filter_map(|o| o.publish_topic())
                    .filter(|(t, _)| matches!(t, Topic::MethodResponse { .. }))
                    .map(|(t, v)| format!("{t} {v}"))
                    .collect()
            });
            bail!(
                "S-5.2 no response with clientToken {token:?} on {topic} within {REACT:?} (method responses seen: {got:?})"
            )
        }
    }
}

pub(super) async fn method_answered(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    run.ready().await?;
    let mark = run.mark();
    let a = call(&run, &ctx.method, &format!("cf-call-a-{}", run.thing))?;
    let b = call(&run, &ctx.method, &format!("cf-call-b-{}", run.thing))?;
    for tok in [&a, &b] {
        let body = response(&run, mark, &ctx.method, tok).await?;
        judge::method_response(&body, tok, 200).map_err(|e| anyhow!(e))?;
    }
    Ok(())
}

pub(super) async fn unknown_method(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    run.ready().await?;
    let mark = run.mark();
    let method = "cfNoSuchMethod";
    let tok = call(&run, method, "cf-unknown-1")?;
    let body = response(&run, mark, method, &tok).await?;
    judge::method_response(&body, &tok, 404).map_err(|e| anyhow!(e))?;
    Ok(())
}

pub(super) async fn ntp_request(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    run.connected().await?;
    let topic = Topic::NtpRequest { thing: &run.thing }.to_string();
    run.hub
        .wait_for(
            Duration::from_secs(10),
            &format!("S-6.1 the device sent no NTP request on {topic} after connecting"),
            |log| published_in(log, 0, &topic).into_iter().next(),
        )
        .await?;
    // Let a best-of-N exchange finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut last = 0;
    for s in run.published(0, &topic) {
        let t = judge::ntp_request(&s.body).map_err(|e| anyhow!(e))?;
        ensure!(
            t >= last,
            "S-6.1 clientSendTime went backwards ({last} then {t}) on one device clock"
        );
        last = t;
    }
    Ok(())
}

pub(super) async fn ota_progress(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    run.ready().await?;
    let (token, task_id) = ("cf-ota-token-1", "cf-task-1");
    run_ota(&run, token, task_id).await.map(|_| ())
}

/// Sends an OTA task (S-7.1) and judges the results (S-7.2) up to the final one.
pub(super) async fn run_ota(run: &Run, token: &str, task_id: &str) -> anyhow::Result<()> {
    let task = payload::OtaTask {
        client_token: token,
        task_id,
        r#type: "app",
        meta: payload::OtaMeta {
            version: "9.9.9",
            md5: None,
            sha256: None,
            content_type: Some("application/octet-stream"),
            content_length: Some(1024),
        },
        // Nothing listens there: a device that downloads reports failed 1400, which is valid.
        file_url: "http://127.0.0.1:9/cf-firmware.bin",
    };
    let mark = run.mark();
    run.hub.send(
        &Topic::OtaTask { thing: &run.thing }.to_string(),
        &serde_json::to_value(task)?,
    )?;
    let topic = Topic::OtaTaskResult { thing: &run.thing }.to_string();
    let finished = run
        .hub
        .wait_for(Duration::from_secs(20), "", |log| {
            published_in(log, mark, &topic)
                .into_iter()
                .find(|s| s.body[field::STATUS].as_str() != Some(OtaStatus::Ongoing.as_str()))
        })
        .await;
    let results = || -> Vec<Value> {
        run.published(mark, &topic)
            .into_iter()
            .map(|s| s.body)
            .collect()
    };
    if finished.is_err() {
        bail!(
            "S-7.2 no final OTA result on {topic} within 20 s; results seen: {:?}",
            results()
        );
    }
    // Anything after the final result is an error: give it a moment to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    judge::ota_sequence(&results(), token, task_id).map_err(|e| anyhow!(e))?;
    Ok(())
}
