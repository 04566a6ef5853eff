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
        Case::new(
            "s4_token_on_refused_requests",
            &["S-4.1", "S-3.8", "S-3.9"],
            "requests refused before parsing (413, 415, depth 400, malformed 400) still echo a \
             readable top-level token; a token over the limit is never echoed",
            refused_requests,
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

/// The settled S-3.8/S-4.1 ambiguity: the token is echoed whenever it can be recovered, even
/// when the payload was refused before it was parsed.
async fn refused_requests(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(Proto::V5).await?;
    let max = ctx.limits.max_request_payload;
    let depth = ctx.limits.max_json_depth;
    let over_payload = |token_first: bool| {
        let blob = "x".repeat(max + 1);
        if token_first {
            format!(r#"{{"clientToken":"r-413a","state":{{"reported":{{"blob":"{blob}"}}}}}}"#)
        } else {
            format!(r#"{{"state":{{"reported":{{"blob":"{blob}"}}}},"clientToken":"r-413b"}}"#)
        }
    };
    let too_deep = format!(
        r#"{{"clientToken":"r-deep","state":{{"reported":{}1{}}}}}"#,
        r#"{"k":"#.repeat(depth),
        "}".repeat(depth)
    );
    let long_token = "t".repeat(ctx.limits.max_client_token + 1);
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        (
            "413, token first",
            over_payload(true).into_bytes(),
            413,
            Some("r-413a"),
        ),
        (
            "413, token last",
            over_payload(false).into_bytes(),
            413,
            Some("r-413b"),
        ),
        (
            "depth over the limit",
            too_deep.into_bytes(),
            400,
            Some("r-deep"),
        ),
        (
            "malformed json",
            br#"{"clientToken":"r-syntax","state":{"reported":{"a":}}}"#.to_vec(),
            400,
            Some("r-syntax"),
        ),
        (
            "not utf-8",
            b"{\"clientToken\":\"r-415\",\"state\":{\"reported\":{\"a\":\"\xff\"}}}".to_vec(),
            415,
            Some("r-415"),
        ),
        (
            "token over the limit",
            format!(r#"{{"clientToken":"{long_token}","state":{{"reported":{{"a":1}}}}}}"#)
                .into_bytes(),
            400,
            None,
        ),
        (
            "token nested, not top-level",
            br#"{"state":{"reported":{"clientToken":"inner","a":}}}"#.to_vec(),
            400,
            None,
        ),
    ];
    let mut errs = Vec::new();
    for (what, payload, code, token) in cases {
        match d.request(DEFAULT_SHADOW, true, &payload, None).await? {
            Reply::Rejected(r) => errs.extend(
                check::error_reply(&r, code, token)
                    .into_iter()
                    .map(|e| format!("{what}: {e}")),
            ),
            Reply::Accepted(a) => errs.push(format!("{what}: accepted: {a}")),
        }
    }
    // A get refused for its size answers on get/rejected with the token too.
    let get = format!(
        r#"{{"clientToken":"r-get","pad":"{}"}}"#,
        "x".repeat(max + 1)
    );
    match d
        .request(DEFAULT_SHADOW, false, get.as_bytes(), None)
        .await?
    {
        Reply::Rejected(r) => errs.extend(
            check::error_reply(&r, 413, Some("r-get"))
                .into_iter()
                .map(|e| format!("get 413: {e}")),
        ),
        Reply::Accepted(a) => errs.push(format!("get 413: accepted: {a}")),
    }
    ensure!(errs.is_empty(), "S-4.1 {}", errs.join("; "));
    Ok(())
}
