//! S-10 provisioning: a device holding only a claim credential gets its own identity over MQTT,
//! the claim connection can do nothing else, refusals carry their codes, and a serial
//! provisioned again keeps its thing while its old secret stops working.
//!
//! Enrollments are created over REST (D-46) with ids that carry the run id; each case deletes
//! its enrollment at the end, and the things it provisioned are removed with the run's things.

use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use iothub_spec::code::ErrorCode;
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::payload::provision_message as msg;
use iothub_spec::topic::provision::{Claim, ProvisionKind};
use serde_json::{Value, json};

use crate::case::Case;
use crate::ctx::{Ctx, Reply, Thing};
use crate::ensure;
use crate::mqtt::{Conn, ConnectOpts, Proto, STEP};

/// The S-10 cases.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for proto in [Proto::V311, Proto::V5] {
        v.push(Case::new(
            format!("s10_provision_then_connect_{}", proto.tag()),
            &["S-10.1", "S-10.3", "S-10.4"],
            format!(
                "a claim connection provisions a thing (template tags and desired state), is closed, and the new credentials connect ({})",
                proto.tag()
            ),
            move |ctx| provision_then_connect(ctx, proto),
        ));
    }
    v.push(Case::new(
        "s10_claim_may_only_provision",
        &["S-10.1", "S-10.2"],
        "a wrong claim secret is refused at CONNECT; a claim cannot subscribe outside its own replies",
        claim_confined,
    ));
    v.push(Case::new(
        "s10_refusals_and_reprovisioning",
        &["S-10.4", "S-10.5"],
        "disabled and exhausted enrollments answer 403, an id outside the rule 400; a serial provisioned again keeps its thing and its old secret is refused",
        refusals_and_reprovisioning,
    ));
    v
}

/// An enrollment created for one case; deleted by [`Enrollment::remove`].
struct Enrollment {
    id: String,
    secret: String,
    /// The id rule's prefix: every thing it provisions carries the run id, so the run's
    /// cleanup removes it.
    prefix: String,
}

impl Enrollment {
    async fn create(ctx: &Ctx, extra: Value) -> anyhow::Result<Enrollment> {
        let id = format!("{}-e", ctx.fresh_id());
        let prefix = format!("{id}-");
        let mut body = json!({
            "enrollmentId": id,
            "idRule": {"kind": "prefix", "value": prefix},
        });
        if let (Value::Object(b), Value::Object(x)) = (&mut body, extra) {
            b.extend(x);
        }
        let r = ctx.api.post("/api/v1/enrollments", body).await?;
        r.expect("S-10.1 POST /api/v1/enrollments (D-46)", &[201])?;
        let secret = r.data()["claimSecret"]
            .as_str()
            .ok_or_else(|| anyhow!("S-10.1 the new enrollment carries no data.claimSecret"))?;
        Ok(Enrollment {
            id,
            secret: secret.to_owned(),
            prefix,
        })
    }

    fn claim<'a>(&'a self, serial: &'a str) -> anyhow::Result<Claim<'a>> {
        Claim::parse_parts(&self.id, serial)
            .ok_or_else(|| anyhow!("enrollment {} / serial {serial} is not a claim", self.id))
    }

    async fn patch(&self, ctx: &Ctx, body: Value) -> anyhow::Result<()> {
        let r = ctx
            .api
            .patch(&format!("/api/v1/enrollments/{}", self.id), body)
            .await?;
        r.expect("S-10.1 PATCH /api/v1/enrollments/{id} (D-46)", &[200])?;
        Ok(())
    }

    async fn remove(&self, ctx: &Ctx) -> anyhow::Result<()> {
        let r = ctx
            .api
            .delete(&format!("/api/v1/enrollments/{}", self.id))
            .await?;
        r.expect("S-10.1 DELETE /api/v1/enrollments/{id} (D-46)", &[200, 204])?;
        Ok(())
    }

    /// Connects as the claim of `serial` with `secret`.
    async fn connect(
        &self,
        ctx: &Ctx,
        proto: Proto,
        serial: &str,
        secret: &str,
    ) -> anyhow::Result<Conn> {
        let user = self.claim(serial)?.to_string();
        Conn::connect(
            &ctx.mqtt,
            proto,
            ConnectOpts {
                client_id: user.clone(),
                username: user,
                password: secret.to_owned(),
                will: None,
                pre_subscribe: vec![],
            },
        )
        .await
        .map_err(|e| anyhow!("S-10.1 connecting claim {}/{serial}: {e}", self.id))
    }

    /// One provisioning exchange on a fresh claim connection: `Ok(accepted)` or
    /// `Err(rejected body)` as [`Answer`]; checks the clientToken echo and that the hub closes
    /// the claim connection after its reply (S-10.3).
    async fn provision(
        &self,
        ctx: &Ctx,
        proto: Proto,
        serial: &str,
        request: Value,
    ) -> anyhow::Result<Answer> {
        let claim = self.claim(serial)?;
        let mut c = self.connect(ctx, proto, serial, &self.secret).await?;
        let accepted = claim.topic(ProvisionKind::Accepted).to_string();
        let rejected = claim.topic(ProvisionKind::Rejected).to_string();
        for t in [&accepted, &rejected] {
            c.subscribe_ok(t)
                .await
                .with_context(|| format!("S-10.2 a claim subscribes to its reply {t}"))?;
        }
        let token = request["clientToken"].clone();
        let body = serde_json::to_vec(&request)?;
        c.publish(
            &claim.topic(ProvisionKind::Request).to_string(),
            &body,
            true,
        )
        .await?;
        let m = c
            .recv(STEP, |m| m.topic == accepted || m.topic == rejected)
            .await
            .ok_or_else(|| anyhow!("S-10.3 no accepted or rejected reply within {STEP:?}"))?;
        let reply = m.json();
        ensure!(
            reply["clientToken"] == token,
            "S-10.3 the reply's clientToken is {} (sent {token})",
            reply["clientToken"]
        );
        ensure!(
            c.wait_closed(STEP).await.is_some(),
            "S-10.3 the claim connection is still open {STEP:?} after the reply"
        );
        Ok(if m.topic == accepted {
            Answer::Accepted(reply)
        } else {
            Answer::Rejected(reply)
        })
    }
}

enum Answer {
    Accepted(Value),
    Rejected(Value),
}

impl Answer {
    /// The new thing's identity from an `accepted` reply.
    fn thing(self) -> anyhow::Result<Thing> {
        let body = match self {
            Answer::Accepted(b) => b,
            Answer::Rejected(b) => bail!("S-10.4 provisioning was rejected: {b}"),
        };
        let (Some(id), Some(secret)) = (body["thingId"].as_str(), body["password"].as_str()) else {
            bail!("S-10.3 accepted without thingId and password: {body}");
        };
        ensure!(
            body["settings"]["limits"].is_object() && body["timestamp"].is_u64(),
            "S-10.3 accepted without settings.limits or timestamp: {body}"
        );
        Ok(Thing {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// Checks a `rejected` reply's code and, when given, its message.
    fn refused(self, clause: &str, code: ErrorCode, message: Option<&str>) -> anyhow::Result<()> {
        match self {
            Answer::Accepted(b) => bail!("{clause}: accepted, expected {}: {b}", code.as_u16()),
            Answer::Rejected(b) => {
                ensure!(
                    b["code"] == code.as_u16()
                        && message.is_none_or(|m| b["message"] == m)
                        && b["timestamp"].is_u64(),
                    "{clause}: rejected {b}, expected code {} message {message:?}",
                    code.as_u16()
                );
                Ok(())
            }
        }
    }
}

async fn provision_then_connect(ctx: Arc<Ctx>, proto: Proto) -> anyhow::Result<()> {
    let e = Enrollment::create(
        &ctx,
        json!({"template": {"tags": {"site": "cf"}, "desired": {"interval": 15}}}),
    )
    .await?;
    let serial = "AA:BB:01";
    let thing = e
        .provision(
            &ctx,
            proto,
            serial,
            json!({"clientToken": "p1", "attributes": {"model": "x1"}}),
        )
        .await?
        .thing()?;
    ensure!(
        thing.id.starts_with(&e.prefix),
        "S-10.4 thing id {} is outside the id rule's prefix {}",
        thing.id,
        e.prefix
    );

    // The template's tags, serial, enrollment and attributes are on the thing (S-10.4).
    let g = ctx.api.get(&format!("/api/v1/things/{}", thing.id)).await?;
    g.expect("S-9.2 GET the provisioned thing", &[200])?;
    let tags = &g.data()["tags"];
    ensure!(
        tags["site"] == "cf"
            && tags["serial"] == serial
            && tags["enrollment"] == e.id.as_str()
            && tags["attributes"]["model"] == "x1",
        "S-10.4 the provisioned thing's tags are {tags}"
    );

    // The new credentials connect like any thing's, and the template's desired state is there.
    let mut dev = ctx.connect(&thing, proto, vec![]).await?;
    dev.subscribe_shadow(DEFAULT_SHADOW).await?;
    match dev.get(DEFAULT_SHADOW).await? {
        Reply::Accepted(doc) => ensure!(
            doc["state"]["desired"]["interval"] == 15 && doc["state"]["delta"]["interval"] == 15,
            "S-10.4 the template's desired state is not in the new thing's shadow: {doc}"
        ),
        Reply::Rejected(b) => bail!("S-10.4 get of the provisioned thing's shadow: {b}"),
    }
    dev.conn.disconnect().await;
    e.remove(&ctx).await
}

async fn claim_confined(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let e = Enrollment::create(&ctx, json!({})).await?;
    if e.connect(&ctx, Proto::V5, "s1", "not-the-claim-secret")
        .await
        .is_ok()
    {
        bail!("S-10.1 a claim connection with a wrong secret was accepted");
    }
    let mut c = e.connect(&ctx, Proto::V5, "s1", &e.secret).await?;
    let other = e.claim("s2")?.topic(ProvisionKind::Accepted).to_string();
    for filter in ["$iothub/#", "#", other.as_str()] {
        let codes = c.subscribe(filter).await?;
        ensure!(
            codes.iter().all(|code| *code >= 0x80),
            "S-10.2 a claim was granted SUBSCRIBE {filter}: {codes:02x?}"
        );
    }
    let own = e.claim("s1")?.topic(ProvisionKind::Accepted).to_string();
    c.subscribe_ok(&own)
        .await
        .context("S-10.2 a claim subscribes to its own reply")?;
    c.disconnect().await;
    e.remove(&ctx).await
}

async fn refusals_and_reprovisioning(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let e = Enrollment::create(&ctx, json!({"maxUses": 1})).await?;
    let p = Proto::V5;

    e.patch(&ctx, json!({"enabled": false})).await?;
    e.provision(&ctx, p, "s1", json!({"clientToken": "d"}))
        .await?
        .refused("S-10.5 disabled", ErrorCode::Forbidden, Some(msg::DISABLED))?;
    e.patch(&ctx, json!({"enabled": true})).await?;

    e.provision(
        &ctx,
        p,
        "s1",
        json!({"clientToken": "r", "thingId": "outside-the-prefix"}),
    )
    .await?
    .refused("S-10.5 id outside the rule", ErrorCode::BadRequest, None)?;

    let first = e
        .provision(&ctx, p, "s1", json!({"clientToken": "a"}))
        .await?
        .thing()?;
    e.provision(&ctx, p, "s2", json!({"clientToken": "x"}))
        .await?
        .refused(
            "S-10.5 exhausted",
            ErrorCode::Forbidden,
            Some(msg::EXHAUSTED),
        )?;

    // The same serial again: the same thing, a new secret; the old one is refused (D-44).
    let again = e
        .provision(&ctx, p, "s1", json!({"clientToken": "b"}))
        .await?
        .thing()?;
    ensure!(
        again.id == first.id && again.secret != first.secret,
        "S-10.4 re-provisioning gave {} (first {}), secret changed: {}",
        again.id,
        first.id,
        again.secret != first.secret
    );
    if ctx.connect(&first, p, vec![]).await.is_ok() {
        bail!("S-10.4 the secret of the first provisioning still connects");
    }
    ctx.connect(&again, p, vec![])
        .await?
        .conn
        .disconnect()
        .await;
    e.remove(&ctx).await
}
