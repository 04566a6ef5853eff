//! S-1 identity and connection: refusals in CONNACK, client id = username, disable/delete
//! kicks, session takeover, service users, secrets shown once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use iothub_spec::topic::Topic;
use serde_json::{Value, json};

use crate::case::Case;
use crate::ctx::{Ctx, Thing, own_filter};
use crate::ensure;
use crate::mqtt::{Conn, ConnectError, ConnectOpts, Proto};

/// The S-1 cases.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    for p in Proto::BOTH {
        let t = p.tag();
        v.push(Case::new(
            format!("s1_connect_ok_{t}"),
            &["S-1.2"],
            format!("a thing connects with id = username and its secret ({t})"),
            move |c| connect_ok(c, p),
        ));
        v.push(Case::new(
            format!("s1_wrong_secret_refused_{t}"),
            &["S-1.3"],
            format!("a wrong secret is refused in CONNACK ({t})"),
            move |c| refused(c, p, Bad::Secret),
        ));
        v.push(Case::new(
            format!("s1_unknown_thing_refused_{t}"),
            &["S-1.3"],
            format!("an unknown thing is refused in CONNACK ({t})"),
            move |c| refused(c, p, Bad::Unknown),
        ));
        v.push(Case::new(
            format!("s1_client_id_mismatch_refused_{t}"),
            &["S-1.2"],
            format!("client id != username is refused as bad credentials ({t})"),
            move |c| refused(c, p, Bad::ClientId),
        ));
        v.push(Case::new(
            format!("s1_disabled_refused_{t}"),
            &["S-1.3", "S-9.2"],
            format!("a disabled thing is refused in CONNACK ({t})"),
            move |c| refused(c, p, Bad::Disabled),
        ));
        v.push(Case::new(
            format!("s1_disable_closes_connection_{t}"),
            &["S-1.3"],
            format!("disabling a thing closes its live connection ({t})"),
            move |c| kicked(c, p, false),
        ));
        v.push(Case::new(
            format!("s1_delete_closes_connection_{t}"),
            &["S-1.3"],
            format!("deleting a thing closes its live connection ({t})"),
            move |c| kicked(c, p, true),
        ));
        v.push(Case::new(
            format!("s1_takeover_{t}"),
            &["S-1.4"],
            format!("a second connection with the same client id takes over ({t})"),
            move |c| takeover(c, p),
        ));
    }
    v.push(Case::new(
        "s1_service_user_any_topic",
        &["S-1.5"],
        "a service user subscribes to and publishes on other things' topics",
        service_user,
    ));
    v.push(Case::new(
        "s1_secret_shown_once",
        &["S-1.6", "S-9.2"],
        "the secret is returned at creation only, never by GET or list",
        secret_once,
    ));
    v
}

#[derive(Clone, Copy)]
enum Bad {
    Secret,
    Unknown,
    ClientId,
    Disabled,
}

async fn raw_connect(
    ctx: &Ctx,
    p: Proto,
    client_id: &str,
    user: &str,
    pw: &str,
) -> Result<Conn, ConnectError> {
    Conn::connect(
        &ctx.mqtt,
        p,
        ConnectOpts {
            client_id: client_id.into(),
            username: user.into(),
            password: pw.into(),
            ..Default::default()
        },
    )
    .await
}

async fn connect_ok(ctx: Arc<Ctx>, p: Proto) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let mut d = ctx.connect(&t, p, vec![]).await?;
    let own = own_filter(&t.id);
    ensure!(
        d.conn.ping(&own).await,
        "S-2.1 the connected thing could not subscribe to {own}"
    );
    Ok(())
}

async fn refused(ctx: Arc<Ctx>, p: Proto, bad: Bad) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let other = ctx.create_thing().await?;
    let unknown = ctx.fresh_id();
    let r = match bad {
        Bad::Secret => raw_connect(&ctx, p, &t.id, &t.id, "wrong-secret").await,
        Bad::Unknown => raw_connect(&ctx, p, &unknown, &unknown, "whatever").await,
        Bad::ClientId => raw_connect(&ctx, p, &other.id, &t.id, &t.secret).await,
        Bad::Disabled => {
            ctx.api
                .patch(
                    &format!("/api/v1/things/{}", t.id),
                    json!({"enabled": false}),
                )
                .await?
                .expect("S-9.2 PATCH enabled=false", &[200])?;
            raw_connect(&ctx, p, &t.id, &t.id, &t.secret).await
        }
    };
    let ok: &[u8] = match p {
        Proto::V311 => &[4, 5],
        Proto::V5 => &[0x86, 0x87],
    };
    match r {
        Err(ConnectError::Refused(c)) if ok.contains(&c) => Ok(()),
        Err(ConnectError::Refused(c)) => {
            bail!("S-1.3 refused with code {c:#04x}, expected one of {ok:02x?}")
        }
        Err(ConnectError::Other(e)) => bail!("S-1.3 no CONNACK refusal: {e}"),
        Ok(_) => bail!("S-1.3 the hub ACCEPTED the connection"),
    }
}

async fn kicked(ctx: Arc<Ctx>, p: Proto, delete: bool) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let mut d = ctx.connect(&t, p, vec![]).await?;
    let path = format!("/api/v1/things/{}", t.id);
    if delete {
        ctx.api
            .delete(&path)
            .await?
            .expect("S-9.2 DELETE thing", &[200, 204])?;
    } else {
        ctx.api
            .patch(&path, json!({"enabled": false}))
            .await?
            .expect("S-9.2 PATCH enabled=false", &[200])?;
    }
    let what = if delete { "deleting" } else { "disabling" };
    ensure!(
        d.conn.wait_closed(Duration::from_secs(5)).await.is_some(),
        "S-1.3 {what} the thing left its connection open for 5 s"
    );
    Ok(())
}

async fn takeover(ctx: Arc<Ctx>, p: Proto) -> anyhow::Result<()> {
    let t: Thing = ctx.create_thing().await?;
    let mut first = ctx.connect(&t, p, vec![]).await?;
    let mut second = ctx.connect(&t, p, vec![]).await?;
    ensure!(
        first
            .conn
            .wait_closed(Duration::from_secs(5))
            .await
            .is_some(),
        "S-1.4 the old connection stayed open after a takeover"
    );
    let own = own_filter(&t.id);
    ensure!(
        second.conn.ping(&own).await,
        "S-1.4 the new connection does not work after the takeover"
    );
    Ok(())
}

async fn service_user(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let user_topic = Topic::User {
        thing: &t.id,
        rest: "cmd/x",
    }
    .to_string();
    let mut d = ctx.connect(&t, Proto::V311, vec![]).await?;
    d.conn.subscribe_ok(&user_topic).await?;
    let mut s = ctx.service(Proto::V311).await?;
    let codes = s.subscribe("$iothub/#").await?;
    ensure!(
        codes.iter().all(|c| *c <= 2),
        "S-1.5 service user SUBSCRIBE $iothub/# refused: {codes:02x?}"
    );
    s.publish(&user_topic, b"{\"hello\":1}", true).await?;
    ensure!(
        d.recv_on(&user_topic, Duration::from_secs(5))
            .await
            .is_some(),
        "S-1.5 the thing did not receive the service user's publish on {user_topic}"
    );
    let prop = Topic::Property { thing: &t.id }.to_string();
    d.conn.publish(&prop, b"{\"temp\":1}", true).await?;
    ensure!(
        s.recv_on(&prop, Duration::from_secs(5)).await.is_some(),
        "S-1.5 the service user did not receive {prop} on $iothub/#"
    );
    Ok(())
}

async fn secret_once(ctx: Arc<Ctx>) -> anyhow::Result<()> {
    let t = ctx.create_thing().await?;
    let g = ctx.api.get(&format!("/api/v1/things/{}", t.id)).await?;
    g.expect("S-9.2 GET thing", &[200])?;
    ensure!(
        !g.text.contains(&t.secret),
        "S-1.6 GET /things/{{id}} shows the secret"
    );
    ensure!(
        g.data().get("password").is_none_or(Value::is_null),
        "S-1.6 GET /things/{{id}} has a password field"
    );
    let l = ctx.api.get("/api/v1/things").await?;
    ensure!(
        !l.text.contains(&t.secret),
        "S-1.6 the thing list shows the secret"
    );
    Ok(())
}
