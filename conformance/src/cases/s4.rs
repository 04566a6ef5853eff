//! S-4 clientToken: every reply carries the request's token, so pipelined requests match.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::bail;
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::topic::Topic;
use serde_json::{Value, json};

use crate::case::Case;
use crate::check;
use crate::ctx::{Ctx, Reply};
use crate::ensure;
use crate::mqtt::{Proto, STEP};

/// The S-4 cases.
pub fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "s4_pipelined_requests_matched",
            &["S-4.1"],
            "gets and updates in flight together: each reply carries its own token, once",
            pipelined,
        ),
        Case::new(
            "s4_token_on_every_reply",
            &["S-4.1", "S-3.5", "S-3.6", "S-3.7", "S-3.8"],
            "accepted, delta, documents and rejected replies echo the token",
            every_reply,
        ),
    ]
}

async fn pipelined(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V5).await?;
    let get = d.shadow_topic(DEFAULT_SHADOW, false);
    let upd = d.shadow_topic(DEFAULT_SHADOW, true);
    let mut want = BTreeSet::new();
    for i in 0..3 {
        let t = format!("p-u{i}");
        d.conn
            .publish(
                &upd,
                json!({"state": {"reported": {"i": i}}, "clientToken": t})
                    .to_string()
                    .as_bytes(),
                true,
            )
            .await?;
        want.insert(t);
        let t = format!("p-g{i}");
        d.conn
            .publish(&get, json!({"clientToken": t}).to_string().as_bytes(), true)
            .await?;
        want.insert(t);
    }
    let id = d.thing.id.clone();
    let replies: Vec<String> = [
        Topic::ShadowGetAccepted {
            thing: &id,
            shadow: DEFAULT_SHADOW,
        },
        Topic::ShadowGetRejected {
            thing: &id,
            shadow: DEFAULT_SHADOW,
        },
        Topic::ShadowUpdateAccepted {
            thing: &id,
            shadow: DEFAULT_SHADOW,
        },
        Topic::ShadowUpdateRejected {
            thing: &id,
            shadow: DEFAULT_SHADOW,
        },
    ]
    .iter()
    .map(|t| t.to_string())
    .collect();
    let mut got = Vec::new();
    for _ in 0..want.len() {
        match d.conn.recv(STEP, |m| replies.contains(&m.topic)).await {
            Some(m) => got.push(
                m.json()
                    .get("clientToken")
                    .and_then(Value::as_str)
                    .unwrap_or("<none>")
                    .to_string(),
            ),
            None => bail!("S-4.1 only {} of {} replies arrived", got.len(), want.len()),
        }
    }
    let set: BTreeSet<String> = got.iter().cloned().collect();
    ensure!(
        set == want && got.len() == want.len(),
        "S-4.1 reply tokens {got:?}, expected each of {want:?} once"
    );
    Ok(())
}

async fn every_reply(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V311).await?;
    let id = d.thing.id.clone();
    let mut errs = Vec::new();
    // get/rejected 404
    let r = d
        .request(DEFAULT_SHADOW, false, br#"{"clientToken":"e-404"}"#, None)
        .await?;
    errs.extend(check::token_echo(r.body(), Some("e-404")).map(|e| format!("get/rejected: {e}")));
    // update/accepted, delta, documents
    let r = d
        .request(
            DEFAULT_SHADOW,
            true,
            br#"{"state":{"desired":{"a":1}},"clientToken":"e-acc"}"#,
            None,
        )
        .await?;
    errs.extend(
        check::token_echo(r.body(), Some("e-acc")).map(|e| format!("update/accepted: {e}")),
    );
    for t in [
        Topic::ShadowUpdateDelta {
            thing: &id,
            shadow: DEFAULT_SHADOW,
        },
        Topic::ShadowUpdateDocuments {
            thing: &id,
            shadow: DEFAULT_SHADOW,
        },
    ] {
        let t = t.to_string();
        match d.recv_on(&t, STEP).await {
            Some(m) => errs
                .extend(check::token_echo(&m.json(), Some("e-acc")).map(|e| format!("{t}: {e}"))),
            None => errs.push(format!("{t}: not received")),
        }
    }
    // update/rejected 409
    match d
        .request(
            DEFAULT_SHADOW,
            true,
            br#"{"state":{"desired":{"a":2}},"version":7,"clientToken":"e-409"}"#,
            None,
        )
        .await?
    {
        Reply::Rejected(r) => errs.extend(
            check::error_reply(&r, 409, Some("e-409"))
                .into_iter()
                .map(|e| format!("update/rejected: {e}")),
        ),
        Reply::Accepted(a) => errs.push(format!("update with a wrong version was accepted: {a}")),
    }
    // get/accepted
    let r = d
        .request(DEFAULT_SHADOW, false, br#"{"clientToken":"e-get"}"#, None)
        .await?;
    errs.extend(check::token_echo(r.body(), Some("e-get")).map(|e| format!("get/accepted: {e}")));
    ensure!(errs.is_empty(), "S-4.1 {}", errs.join("; "));
    Ok(())
}
