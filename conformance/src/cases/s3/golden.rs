//! The golden vectors of `shadow.json` and `errors.json` run over MQTT: each vector's `before`
//! is written, its request sent, and the reply and the document after it compared with the
//! vector (S-3.2 .. S-3.4, S-3.8).

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use iothub_spec::ids::DEFAULT_SHADOW;
use serde_json::{Value, json};

use super::setup_update;
use crate::check::{self, ExpectedDoc};
use crate::ctx::{Ctx, Device, Reply};
use crate::ensure;
use crate::mqtt::Proto;
use crate::vectors;

/// The document a vector's `before` or `expect` describes.
fn expected_doc(e: &Value) -> ExpectedDoc {
    let opt = |k: &str| e.get(k).filter(|v| !v.is_null()).cloned();
    ExpectedDoc {
        desired: opt("desired"),
        reported: opt("reported"),
        delta: opt("delta"),
        version: e["version"].as_u64().unwrap_or(0),
        metadata_paths: e["metadataPaths"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Writes `before` (desired/reported as given) until the shadow is at `before.version`.
async fn establish(d: &mut Device, before: &Value) -> anyhow::Result<()> {
    let version = before["version"].as_u64().unwrap_or(1);
    let mut state = json!({});
    for k in ["desired", "reported"] {
        if let Some(s) = before.get(k).filter(|v| !v.is_null()) {
            state[k] = s.clone();
        }
    }
    for _ in 0..version {
        setup_update(d, DEFAULT_SHADOW, &json!({ "state": state })).await?;
    }
    let doc = match d.get(DEFAULT_SHADOW).await? {
        Reply::Accepted(v) => v,
        Reply::Rejected(v) => bail!("get after setup rejected: {v}"),
    };
    ensure!(
        doc["version"].as_u64() == Some(version),
        "S-3.4 after {version} accepted updates the version is {} (expected {version})",
        doc["version"]
    );
    Ok(())
}

pub(super) async fn run_vector(ctx: Arc<Ctx>, v: Value, proto: Proto) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(proto).await?;
    let before = v["before"].clone();
    if !before.is_null() {
        establish(&mut d, &before)
            .await
            .context("setting up `before`")?;
    }
    let update = &v["update"];
    let token = update.get("clientToken").and_then(Value::as_str);
    let reply = d
        .request(DEFAULT_SHADOW, true, update.to_string().as_bytes(), None)
        .await?;
    let expect = &v["expect"];
    let clause = v["clause"].as_str().unwrap_or("S-3.4");
    if expect["accepted"] == true {
        let acc = match reply {
            Reply::Accepted(a) => a,
            Reply::Rejected(r) => bail!("{clause}: update {update} was rejected: {r}"),
        };
        ensure!(
            acc["version"] == expect["version"],
            "S-3.5 update/accepted version {} (expected {})",
            acc["version"],
            expect["version"]
        );
        if let Some(e) = check::token_echo(&acc, token) {
            bail!("S-4.1 update/accepted {e}");
        }
        let doc = match d.get(DEFAULT_SHADOW).await? {
            Reply::Accepted(doc) => doc,
            Reply::Rejected(r) => bail!("S-3.2 get after the update was rejected: {r}"),
        };
        let diffs = check::compare_document(&expected_doc(expect), &doc);
        ensure!(diffs.is_empty(), "{clause}: {}", diffs.join("; "));
    } else {
        let code = expect["code"].as_u64().unwrap_or(0) as u16;
        match reply {
            Reply::Accepted(a) => bail!(
                "{clause}: update {update} was accepted (version {}), expected {code}",
                a["version"]
            ),
            Reply::Rejected(r) => {
                let errs = check::error_reply(&r, code, token);
                ensure!(
                    errs.is_empty(),
                    "S-3.8 update/rejected: {}",
                    errs.join("; ")
                );
            }
        }
        // Nothing changed.
        match (before.is_null(), d.get(DEFAULT_SHADOW).await?) {
            (true, Reply::Rejected(r)) if r["code"] == 404 => {}
            (true, other) => bail!(
                "S-3.4 a rejected update created the shadow: get answered {:?}",
                other
            ),
            (false, Reply::Accepted(doc)) => {
                let mut want = expected_doc(&before);
                want.delta = doc["state"].get("delta").cloned();
                want.metadata_paths = leaf_paths(&before);
                let diffs = check::compare_document(&want, &doc);
                ensure!(
                    diffs.is_empty(),
                    "S-3.4 a rejected update changed the shadow: {}",
                    diffs.join("; ")
                );
            }
            (false, Reply::Rejected(r)) => bail!("S-3.2 get after a rejected update: {r}"),
        }
    }
    Ok(())
}

/// Every leaf path of a vector's `before` (its metadata must have exactly these).
fn leaf_paths(before: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for k in ["desired", "reported"] {
        if let Some(s) = before.get(k).filter(|v| v.is_object()) {
            check::value_leaf_paths(k, s, &mut out);
        }
    }
    out
}

pub(super) async fn run_error(ctx: Arc<Ctx>, v: Value, proto: Proto) -> anyhow::Result<()> {
    let mut d = ctx.shadow_device(proto).await?;
    let is_get = v["topic"] == "get";
    if is_get {
        // With a shadow present, a valid get answers get/accepted.
        setup_update(
            &mut d,
            DEFAULT_SHADOW,
            &json!({"state": {"reported": {"x": 1}}}),
        )
        .await?;
    }
    let payload = match v.get("payloadHex").and_then(Value::as_str) {
        Some(h) => vectors::hex(h),
        None => v["payload"].as_str().unwrap_or("").as_bytes().to_vec(),
    };
    let token = v["expectClientToken"].as_str();
    let reply = d.request(DEFAULT_SHADOW, !is_get, &payload, None).await?;
    let clause = v["clause"].as_str().unwrap_or("S-3.8");
    match (v["expectCode"].as_u64(), reply) {
        (None, Reply::Accepted(a)) => {
            if let Some(e) = check::token_echo(&a, token) {
                bail!("S-4.1 reply {e}");
            }
        }
        (None, Reply::Rejected(r)) => bail!("{clause}: a valid request was rejected: {r}"),
        (Some(code), Reply::Accepted(a)) => {
            bail!(
                "{clause}: expected {code}, but the request was accepted (version {})",
                a["version"]
            )
        }
        (Some(code), Reply::Rejected(r)) => {
            let errs = check::error_reply(&r, code as u16, token);
            ensure!(errs.is_empty(), "{clause}: {}", errs.join("; "));
        }
    }
    Ok(())
}
