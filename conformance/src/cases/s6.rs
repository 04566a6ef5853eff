//! S-6 NTP: the hub echoes `clientSendTime` and stamps receive and send times.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use iothub_spec::topic::Topic;
use serde_json::json;

use crate::case::Case;
use crate::ctx::Ctx;
use crate::ensure;
use crate::mqtt::{Proto, STEP};

/// The S-6 cases.
pub fn cases() -> Vec<Case> {
    Proto::BOTH
        .into_iter()
        .map(|p| {
            Case::new(
                format!("s6_ntp_round_trip_{}", p.tag()),
                &["S-6.1", "S-6.2"],
                format!(
                    "T/ntp/req answered on T/ntp/resp with echo and server times ({})",
                    p.tag()
                ),
                move |c| ntp(c, p),
            )
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn ntp(ctx: Arc<Ctx>, p: Proto) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let resp = Topic::NtpResponse { thing: &t.id }.to_string();
    let mut d = ctx.connect(&t, p, vec![resp.clone()]).await?;
    let sent = now_ms();
    d.conn
        .publish(
            &Topic::NtpRequest { thing: &t.id }.to_string(),
            json!({"clientSendTime": sent}).to_string().as_bytes(),
            true,
        )
        .await?;
    let m = d
        .recv_on(&resp, STEP)
        .await
        .with_context(|| format!("S-6.1 no answer on {resp}"))?;
    let recv = now_ms();
    let v = m.json();
    ensure!(
        v["clientSendTime"] == sent,
        "S-6.1 clientSendTime not echoed: {v}"
    );
    let (sr, ss) = (v["serverRecvTime"].as_u64(), v["serverSendTime"].as_u64());
    let (Some(sr), Some(ss)) = (sr, ss) else {
        anyhow::bail!("S-6.1 serverRecvTime/serverSendTime missing or not integers: {v}");
    };
    ensure!(
        sr <= ss,
        "S-6.1 serverRecvTime {sr} is after serverSendTime {ss}"
    );
    // Same clock domain within a day: catches seconds-instead-of-ms and zeros.
    let day = 86_400_000;
    ensure!(
        sr + day > sent && sr < recv + day,
        "S-6.1 server times {sr} are not ms since the epoch near {sent}"
    );
    let rtt = (recv - sent).saturating_sub(ss - sr);
    ensure!(
        rtt <= recv - sent,
        "S-6.2 round trip {rtt} ms larger than the wall time"
    );
    Ok(())
}
