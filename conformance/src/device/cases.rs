//! The device cases: each starts its own scripted hub and device, plays the hub and the
//! business side, and judges the device against docs/spec.md.
//!
//! What the suite assumes of a device (documented in the crate README): it follows the
//! `default` shadow and applies a desired `setpoint` (the suite sends small integers, so
//! devices holding it as an integer or a float both work) and reports it back under the same
//! key, answers the direct method named by `--method` (default `reboot`) with 200, syncs its
//! clock over NTP after connecting, and runs OTA tasks it is sent.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::payload::field;
use iothub_spec::topic::Topic;
use serde_json::{Map, Value, json};

use super::hub::{HubShadow, ObsEv, Shadows};
use super::judge;
use super::{DeviceCtx, REACT, Run, STARTUP, published_in};
use crate::case::Case;
use crate::case::PROFILE;
use crate::ensure;

mod services;

use services::{
    call, method_answered, ntp_request, ota_progress, response, run_ota, unknown_method,
};

/// The desired key the suite changes.
pub const KEY: &str = "setpoint";
/// Time limit of one device case.
pub const LIMIT: Duration = Duration::from_secs(45);

fn case<F, Fut>(id: &str, clauses: &[&str], title: &str, f: F) -> Case<DeviceCtx>
where
    F: Fn(Arc<DeviceCtx>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Case::new(id, clauses, title, f).with_limit(LIMIT)
}

/// Every device case, in run order.
pub fn all() -> Vec<Case<DeviceCtx>> {
    vec![
        case(
            "dev_s1_identity",
            &["S-1.2"],
            "the device connects with client id = user name = thingId and its secret",
            identity,
        ),
        case(
            "dev_s2_subscribes_before_requests",
            &["S-2", "S-3.2"],
            "every request comes after granted subscriptions covering its replies",
            subscribes_first,
        ),
        case(
            "dev_s2_allow_list",
            &["S-2.1"],
            "over a whole session (sync, delta, methods, NTP, OTA) every SUBSCRIBE and PUBLISH stays inside the allow-list",
            allow_list,
        ),
        case(
            "dev_s3_get_after_connect",
            &["S-3.2", "S-3.6"],
            "after connecting the device gets its shadow and applies the document's delta",
            get_after_connect,
        ),
        case(
            "dev_s3_delta_applied",
            &["S-3.6", "S-3.3", "S-4.1"],
            "a delta is applied and reported back in an update carrying a clientToken",
            delta_applied,
        ),
        case(
            "dev_s3_stale_delta_ignored",
            &["S-3.6"],
            "a delta with a lower version than one already applied is ignored",
            stale_delta,
        ),
        case(
            "dev_s4_client_tokens",
            &["S-4.1"],
            "every get and update carries a clientToken of 1..64 bytes, never reused",
            client_tokens,
        ),
        case(
            "dev_s5_method_answered",
            &["S-5.1", "S-5.2", "S-4.1"],
            "two concurrent calls of the device's method are each answered 200 with their own clientToken",
            method_answered,
        ),
        case(
            "dev_s5_unknown_method_404",
            &["S-5.2"],
            "a call of a method the device does not have is answered 404 with its clientToken",
            unknown_method,
        ),
        case(
            "dev_s6_ntp_request",
            &["S-6.1"],
            "after connecting the device sends well-formed NTP requests",
            ntp_request,
        ),
        case(
            "dev_s7_ota_progress",
            &["S-7.1", "S-7.2"],
            "an OTA task is answered by ongoing results with non-decreasing progress, then one final result",
            ota_progress,
        ),
        case(
            "dev_profile_state_report_at_start_up",
            &[PROFILE],
            "profile check (no clause): after getting its shadow the device reports its state once, not only on change",
            state_report_at_start_up,
        ),
        case(
            "dev_reconnect_backoff_resync",
            &["S-1.2", "S-3.2", "S-3.6"],
            "after the broker drops it the device reconnects with backoff, resubscribes, gets its shadow again and applies what changed",
            reconnect,
        ),
    ]
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// A `default` shadow preset with `desired` and `reported` at `version`.
fn preset(desired: Value, reported: Value, version: u64) -> Shadows {
    let mut s = Shadows::new();
    s.insert(
        DEFAULT_SHADOW.into(),
        HubShadow {
            desired: obj(desired),
            reported: obj(reported),
            version,
        },
    );
    s
}

async fn identity(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    let first = run
        .hub
        .wait_for(STARTUP, "the device never sent CONNECT", |log| {
            log.iter().find_map(|o| match &o.ev {
                ObsEv::Connect {
                    client_id,
                    username,
                    password_ok,
                    ..
                } => Some((client_id.clone(), username.clone(), *password_ok)),
                _ => None,
            })
        })
        .await?;
    let (client_id, username, password_ok) = first;
    ensure!(
        client_id == run.thing,
        "S-1.2 client identifier {client_id:?}, want the thingId {:?}",
        run.thing
    );
    ensure!(
        username.as_deref() == Some(run.thing.as_str()),
        "S-1.2 user name {username:?}, want the thingId {:?}",
        run.thing
    );
    ensure!(password_ok, "S-1.2 the password is not the thing's secret");
    Ok(())
}

async fn state_report_at_start_up(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    run.reported_at_start_up().await?;
    Ok(())
}

async fn subscribes_first(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    let conn = run.connected().await?;
    run.ready().await?;
    let problems = run
        .hub
        .with(|st| judge::subscribed_before_requests(&st.log, conn));
    ensure!(problems.is_empty(), "S-2 {}", problems.join("; "));
    let gets = run.published(0, &run.topic_get());
    ensure!(
        gets.iter().any(|g| g.conn == conn),
        "S-3.2 the device never sent a get on {}",
        run.topic_get()
    );
    Ok(())
}

async fn get_after_connect(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let shadows = preset(
        json!({KEY: 23, "mode": "heat"}),
        json!({KEY: 20, "mode": "heat"}),
        7,
    );
    let run = ctx.start(shadows).await?;
    let conn = run.connected().await?;
    let get = run.topic_get();
    run.hub
        .wait_for(
            REACT,
            &format!("S-3.2 the device did not get its shadow ({get}) after connecting"),
            |log| {
                published_in(log, 0, &get)
                    .into_iter()
                    .find(|s| s.conn == conn)
            },
        )
        .await?;
    run.reported(
        0,
        KEY,
        &json!(23),
        REACT,
        "S-3.6 the device did not apply the delta of its shadow document (never reported setpoint 23)",
    )
    .await?;
    Ok(())
}

async fn delta_applied(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    run.ready().await?;
    let mark = run.mark();
    run.hub
        .set_desired(DEFAULT_SHADOW, &obj(json!({KEY: 25})))?;
    let seen = run
        .reported(
            mark,
            KEY,
            &json!(25),
            REACT,
            "S-3.6 the device did not report setpoint 25 after a delta asking for it",
        )
        .await?;
    judge::client_token(&seen.body, "the update reporting the delta").map_err(|e| anyhow!(e))?;
    ensure!(
        seen.body[field::STATE].get(field::DESIRED).is_none(),
        "S-3.3 the device wrote desired while reporting a delta: {}",
        seen.body
    );
    Ok(())
}

async fn stale_delta(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    run.ready().await?;
    let mark = run.mark();
    let applied = run
        .hub
        .set_desired(DEFAULT_SHADOW, &obj(json!({KEY: 26})))?;
    run.reported(
        mark,
        KEY,
        &json!(26),
        REACT,
        "S-3.6 the device did not apply a fresh delta (setpoint 26)",
    )
    .await?;
    // A delayed, older delta (as after a network reordering): version below the one applied.
    let stale = super::hub::delta_body(&obj(json!({KEY: 19})), applied - 1, None);
    let topic = Topic::ShadowUpdateDelta {
        thing: &run.thing,
        shadow: DEFAULT_SHADOW,
    }
    .to_string();
    let mark = run.mark();
    run.hub.send(&topic, &stale)?;
    let applied_stale = run
        .reported(mark, KEY, &json!(19), Duration::from_millis(1500), "")
        .await;
    if let Ok(s) = applied_stale {
        bail!(
            "S-3.6 the device applied a delta of version {} after applying version {applied}: reported {}",
            applied - 1,
            s.body
        );
    }
    // A sentinel: a newer delta must still be applied (the device did not stop listening).
    run.hub
        .set_desired(DEFAULT_SHADOW, &obj(json!({KEY: 27})))?;
    run.reported(
        mark,
        KEY,
        &json!(27),
        REACT,
        "S-3.6 after the stale delta the device did not apply a newer one (setpoint 27)",
    )
    .await?;
    let late = run
        .published(mark, &run.topic_update())
        .into_iter()
        .find(|s| crate::check::json_eq(&s.body[field::STATE][field::REPORTED][KEY], &json!(19)));
    ensure!(
        late.is_none(),
        "S-3.6 the device applied the stale delta (reported setpoint 19)"
    );
    Ok(())
}

/// Checks the clientToken of every get and update so far (S-4.1): present, 1..64 bytes, never
/// reused. Returns how many requests there were.
fn check_tokens(run: &Run) -> anyhow::Result<usize> {
    let mut seen = BTreeSet::new();
    let mut n = 0;
    for topic in [run.topic_get(), run.topic_update()] {
        for s in run.published(0, &topic) {
            let what = format!("request on {topic}");
            let tok = judge::client_token(&s.body, &what).map_err(|e| anyhow!(e))?;
            ensure!(
                seen.insert(tok.clone()),
                "S-4.1 clientToken {tok:?} used by two requests"
            );
            n += 1;
        }
    }
    Ok(n)
}

async fn client_tokens(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    run.ready().await?;
    check_tokens(&run)?;
    for v in [31, 32] {
        let mark = run.mark();
        run.hub.set_desired(DEFAULT_SHADOW, &obj(json!({KEY: v})))?;
        run.reported(
            mark,
            KEY,
            &json!(v),
            REACT,
            &format!("S-3.6 the device did not report setpoint {v}"),
        )
        .await?;
    }
    let n = check_tokens(&run)?;
    ensure!(
        n >= 3,
        "S-4.1 only {n} shadow requests seen, want at least a get and two updates"
    );
    Ok(())
}

async fn allow_list(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    let acl = |run: &Run| -> anyhow::Result<()> {
        let problems = run.hub.with(|st| judge::allow_list(&st.log, &run.thing));
        ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(())
    };
    // Whatever else fails (a device kicked for a forbidden publish, S-2.2, may never get
    // ready), the allow-list verdict on what it did comes first.
    let scenario = async {
        run.ready().await?;
        let mark = run.mark();
        run.hub
            .set_desired(DEFAULT_SHADOW, &obj(json!({KEY: 24})))?;
        run.reported(
            mark,
            KEY,
            &json!(24),
            REACT,
            "S-3.6 the device did not report setpoint 24",
        )
        .await?;
        let m = call(&run, &ctx.method, "cf-acl-1")?;
        response(&run, mark, &ctx.method, &m).await?;
        let u = call(&run, "cfNoSuchMethod", "cf-acl-2")?;
        response(&run, mark, "cfNoSuchMethod", &u).await?;
        run_ota(&run, "cf-acl-ota", "cf-acl-task").await
    }
    .await;
    acl(&run)?;
    scenario
}

async fn reconnect(ctx: Arc<DeviceCtx>) -> anyhow::Result<()> {
    let run = ctx.start(Shadows::new()).await?;
    let first = run.connected().await?;
    run.ready().await?;
    let refused = 3;
    run.hub.refuse_next(refused);
    let mark = run.mark();
    run.hub.drop_device();
    run.hub
        .wait_for(REACT, "the scripted hub could not drop the device", |log| {
            log[mark..]
                .iter()
                .any(|o| o.conn == first && matches!(o.ev, ObsEv::Closed(_)))
                .then_some(())
        })
        .await?;
    // Changed while the device is offline: it must learn it from the get after reconnecting.
    run.hub.with(|st| {
        st.shadows
            .entry(DEFAULT_SHADOW.into())
            .or_default()
            .set_desired(&obj(json!({KEY: 28})))
    });
    let conn = run
        .hub
        .wait_for(
            Duration::from_secs(30),
            "the device did not reconnect within 30 s of being dropped",
            |log| {
                log[mark..].iter().find_map(|o| match o.ev {
                    ObsEv::Connect { accepted: true, .. } => Some(o.conn),
                    _ => None,
                })
            },
        )
        .await?;
    let attempts: Vec<_> = run.hub.with(|st| {
        st.log[mark..]
            .iter()
            .filter(|o| matches!(o.ev, ObsEv::Accepted) && o.conn <= conn)
            .map(|o| o.at)
            .collect()
    });
    ensure!(
        attempts.len() > refused as usize,
        "expected {} refused attempts before the reconnect, saw {}",
        refused,
        attempts.len().saturating_sub(1)
    );
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    judge::backoff(&gaps).map_err(|e| anyhow!("reconnect {e}"))?;
    let get = run.topic_get();
    run.hub
        .wait_for(
            REACT,
            &format!("S-3.2 after reconnecting the device did not get its shadow again ({get})"),
            |log| {
                published_in(log, mark, &get)
                    .into_iter()
                    .find(|s| s.conn == conn)
            },
        )
        .await?;
    run.reported(
        mark,
        KEY,
        &json!(28),
        REACT,
        "S-3.6 after reconnecting the device did not apply the desired change made while it was offline (setpoint 28)",
    )
    .await?;
    let problems = run
        .hub
        .with(|st| judge::subscribed_before_requests(&st.log, conn));
    ensure!(
        problems.is_empty(),
        "S-2 after reconnecting: {}",
        problems.join("; ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    #[test]
    fn ids_unique_and_prefixed() {
        let all = super::all();
        let ids: BTreeSet<_> = all.iter().map(|c| c.id.clone()).collect();
        assert_eq!(ids.len(), all.len());
        assert!(all.iter().all(|c| c.id.starts_with("dev_")));
        let hub: BTreeSet<_> = crate::cases::all().into_iter().map(|c| c.id).collect();
        assert!(ids.is_disjoint(&hub));
    }
}
