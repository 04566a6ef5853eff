//! What every case gets: the hub's addresses, the REST client, the limits in force, and helpers
//! to create things and connect them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::limits::Limits;
use iothub_spec::topic::{Filter, Topic};
use serde_json::{Value, json};

use crate::api::Api;
use crate::external::Denials;
use crate::mqtt::{Conn, ConnectOpts, Msg, Proto, STEP};
use crate::net::{MqttTarget, TlsClient};
use crate::spawn::{SpawnSpec, SpawnedHub};
use std::sync::Arc;

/// A thing created for a case.
#[derive(Debug, Clone)]
pub struct Thing {
    /// Its id.
    pub id: String,
    /// Its secret, as returned once by `POST /things`.
    pub secret: String,
}

/// The hub under test and shared helpers.
pub struct Ctx {
    /// The hub's MQTT address, and whether connections to it go over TLS.
    pub mqtt: MqttTarget,
    /// REST client (admin token).
    pub api: Api,
    /// `(username, secret)` of a service user, when one was given.
    pub service: Option<(String, String)>,
    /// The limits the hub reports at `GET /api/v1/limits`.
    pub limits: Limits,
    /// How the suite spawned the hub, when it did (lets cases start and crash their own
    /// instance, set up the same way).
    pub spawn: Option<SpawnSpec>,
    /// Who refuses what the allow-list denies: the hub's own broker, or (`--external-broker`)
    /// a broker the hub does not run (D-59).
    pub denials: Denials,
    run: String,
    counter: AtomicU32,
}

/// A device connection plus the thing it belongs to.
pub struct Device {
    /// The thing.
    pub thing: Thing,
    /// The MQTT connection.
    pub conn: Conn,
}

/// A shadow reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `get/accepted` or `update/accepted` body.
    Accepted(Value),
    /// `get/rejected` or `update/rejected` body.
    Rejected(Value),
}

impl Reply {
    /// The body.
    pub fn body(&self) -> &Value {
        match self {
            Reply::Accepted(v) | Reply::Rejected(v) => v,
        }
    }

    /// The rejection code, `None` for an accepted reply.
    pub fn code(&self) -> Option<u64> {
        match self {
            Reply::Accepted(_) => None,
            Reply::Rejected(v) => v.get("code").and_then(Value::as_u64),
        }
    }
}

impl Ctx {
    /// Builds the context and reads the limits from `GET /api/v1/limits` (falls back to the
    /// S-3.9 defaults when the hub does not answer them; the S-9.7 case reports that). MQTT
    /// connections go over TLS when `tls` is given.
    pub async fn new(
        mqtt: &str,
        api: &str,
        token: &str,
        service: Option<(String, String)>,
        spawn: Option<SpawnSpec>,
        tls: Option<Arc<TlsClient>>,
    ) -> anyhow::Result<Ctx> {
        let (host, port) = parse_mqtt(mqtt)?;
        let api = Api::new(&iothub_launch::addr::http_base(api)?, token)?;
        let limits = match api.get("/api/v1/limits").await {
            Ok(r) if r.status == 200 => {
                serde_json::from_value(r.data().clone()).unwrap_or_default()
            }
            _ => Limits::DEFAULT,
        };
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Ok(Ctx {
            mqtt: MqttTarget::new(host, port, tls),
            api,
            service,
            limits,
            spawn,
            denials: Denials::Hub,
            run: format!("cf{:x}", t % 0xFF_FFFF),
            counter: AtomicU32::new(0),
        })
    }

    /// This run's id (`cf<hex>`): part of the id of every thing the run creates.
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// Deletes every thing on the hub whose id contains this run's id; returns how many. Pages
    /// through `GET /api/v1/things` first (ids only), then deletes, so paging is not disturbed.
    pub async fn cleanup(&self) -> anyhow::Result<usize> {
        const PAGE: u64 = 500;
        let mut ours = Vec::new();
        let mut index = 0u64;
        loop {
            let r = self
                .api
                .get(&format!("/api/v1/things?pageIndex={index}&pageSize={PAGE}"))
                .await?;
            r.expect("S-9.2 GET /api/v1/things", &[200])?;
            let content = r.data()["content"].as_array().cloned().unwrap_or_default();
            ours.extend(
                content
                    .iter()
                    .filter_map(|t| t["thingId"].as_str())
                    .filter(|id| id.contains(&self.run))
                    .map(str::to_owned),
            );
            let total = r.data()["total"].as_u64().unwrap_or(0);
            index += 1;
            if content.is_empty() || index * PAGE >= total {
                break;
            }
        }
        for id in &ours {
            let r = self.api.delete(&format!("/api/v1/things/{id}")).await?;
            r.expect("S-9.2 DELETE /api/v1/things/{id}", &[200, 204, 404])?;
        }
        Ok(ours.len())
    }

    /// A fresh thing id, unique in this run (`cf<run>-<n>`).
    pub fn fresh_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.run)
    }

    /// Creates a thing over REST (S-9.2) and returns its secret.
    pub async fn create_thing(&self) -> anyhow::Result<Thing> {
        self.create_thing_with(json!({})).await
    }

    /// Creates a thing with extra fields in the body (`tags`, ...).
    pub async fn create_thing_with(&self, body: Value) -> anyhow::Result<Thing> {
        self.create_thing_named(&self.fresh_id(), body).await
    }

    /// Creates the thing `id` with extra fields in the body.
    pub async fn create_thing_named(&self, id: &str, mut body: Value) -> anyhow::Result<Thing> {
        let id = id.to_string();
        body["thingId"] = json!(id);
        let r = self.api.post("/api/v1/things", body).await?;
        r.expect("S-9.2 POST /api/v1/things", &[200, 201])?;
        let secret = r
            .data()
            .get("password")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("S-9.2 POST /api/v1/things returned no data.password"))?;
        Ok(Thing {
            id,
            secret: secret.to_string(),
        })
    }

    /// Connects as `thing` with its own credentials; `pre_subscribe` goes with the CONNECT.
    pub async fn connect(
        &self,
        thing: &Thing,
        proto: Proto,
        pre_subscribe: Vec<String>,
    ) -> anyhow::Result<Device> {
        // The SUBACKs of `pre_subscribe` are awaited before returning.
        let n = pre_subscribe.len();
        let mut conn = Conn::connect(
            &self.mqtt,
            proto,
            ConnectOpts {
                client_id: thing.id.clone(),
                username: thing.id.clone(),
                password: thing.secret.clone(),
                will: None,
                pre_subscribe,
            },
        )
        .await
        .map_err(|e| anyhow!("S-1.2 connecting thing {} ({}): {e}", thing.id, proto.tag()))?;
        for _ in 0..n {
            match conn
                .wait_ev(STEP, |e| matches!(e, crate::mqtt::Ev::SubAck(_)))
                .await
            {
                Some(crate::mqtt::Ev::SubAck(c)) if c.iter().all(|x| *x <= 2) => {}
                other => bail!("S-2.1 SUBSCRIBE sent with CONNECT not granted: {other:?}"),
            }
        }
        Ok(Device {
            thing: thing.clone(),
            conn,
        })
    }

    /// Creates a thing and connects it, subscribed to the replies of its `default` shadow.
    pub async fn shadow_device(&self, proto: Proto) -> anyhow::Result<Device> {
        let thing = self.create_thing().await?;
        let mut d = self.connect(&thing, proto, vec![]).await?;
        d.subscribe_shadow(DEFAULT_SHADOW).await?;
        Ok(d)
    }

    /// Connects the service user, or skips the case when none was given.
    pub async fn service(&self, proto: Proto) -> anyhow::Result<Conn> {
        let Some((user, secret)) = &self.service else {
            return crate::case::skip("needs a service user (--service-user '$name:secret')");
        };
        Conn::connect(
            &self.mqtt,
            proto,
            ConnectOpts {
                client_id: format!("{user}-{}", self.fresh_id()),
                username: user.clone(),
                password: secret.clone(),
                will: None,
                pre_subscribe: vec![],
            },
        )
        .await
        .map_err(|e| anyhow!("S-1.5 connecting service user {user}: {e}"))
    }

    /// A service user connection subscribed to `filters`, ready before the case acts.
    pub async fn observer(&self, filters: &[String]) -> anyhow::Result<Conn> {
        let mut c = self.service(Proto::V5).await?;
        for f in filters {
            c.subscribe_ok(f)
                .await
                .context("S-1.5 service user subscribe")?;
        }
        Ok(c)
    }

    /// Polls `f` every 50 ms until it returns `Some`, for at most `within`.
    pub async fn poll_until<T, F, Fut>(within: Duration, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = f().await {
                return Some(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Device {
    /// Subscribes to `S/get/+` and `S/update/+` of `shadow`.
    pub async fn subscribe_shadow(&mut self, shadow: &str) -> anyhow::Result<()> {
        let thing = self.thing.id.clone();
        for f in [
            Filter::ShadowGetReplies {
                thing: &thing,
                shadow,
            },
            Filter::ShadowUpdateReplies {
                thing: &thing,
                shadow,
            },
        ] {
            self.conn
                .subscribe_ok(&f.to_string())
                .await
                .context("S-2.1 subscribing to own shadow replies")?;
        }
        Ok(())
    }

    /// The topic of this thing's `shadow` request `op` (`get` or `update`).
    pub fn shadow_topic(&self, shadow: &str, update: bool) -> String {
        let thing = self.thing.id.as_str();
        if update {
            Topic::ShadowUpdate { thing, shadow }.to_string()
        } else {
            Topic::ShadowGet { thing, shadow }.to_string()
        }
    }

    /// Publishes `payload` on `S/get` or `S/update` and waits (at most [`STEP`]) for the reply
    /// carrying `token` (any reply when `None`).
    pub async fn request(
        &mut self,
        shadow: &str,
        update: bool,
        payload: &[u8],
        token: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let topic = self.shadow_topic(shadow, update);
        self.conn.publish(&topic, payload, true).await?;
        self.reply(shadow, update, token).await
    }

    /// Waits for the next accepted/rejected reply of `shadow` `op`, matching `token`.
    pub async fn reply(
        &mut self,
        shadow: &str,
        update: bool,
        token: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let thing = self.thing.id.as_str();
        let (acc, rej) = if update {
            (
                Topic::ShadowUpdateAccepted { thing, shadow }.to_string(),
                Topic::ShadowUpdateRejected { thing, shadow }.to_string(),
            )
        } else {
            (
                Topic::ShadowGetAccepted { thing, shadow }.to_string(),
                Topic::ShadowGetRejected { thing, shadow }.to_string(),
            )
        };
        let m = self
            .conn
            .recv(STEP, |m| {
                (m.topic == acc || m.topic == rej)
                    && token.is_none_or(|t| {
                        m.json().get("clientToken").and_then(Value::as_str) == Some(t)
                    })
            })
            .await;
        let Some(m) = m else {
            let op = if update { "update" } else { "get" };
            match self.conn.closed_reason() {
                Some(r) => bail!("S-3.8 no reply to {op} (connection closed: {r})"),
                None => bail!("S-3.8 no reply to {op} within {STEP:?} (silence)"),
            }
        };
        let v = m.json();
        Ok(if m.topic == acc {
            Reply::Accepted(v)
        } else {
            Reply::Rejected(v)
        })
    }

    /// Sends an update and requires `update/accepted`; returns its body.
    pub async fn update_ok(&mut self, shadow: &str, body: &Value) -> anyhow::Result<Value> {
        let token = body
            .get("clientToken")
            .and_then(Value::as_str)
            .map(String::from);
        match self
            .request(shadow, true, body.to_string().as_bytes(), token.as_deref())
            .await?
        {
            Reply::Accepted(v) => Ok(v),
            Reply::Rejected(v) => bail!("update {body} rejected: {v}"),
        }
    }

    /// `get` with a fresh token; returns the reply.
    pub async fn get(&mut self, shadow: &str) -> anyhow::Result<Reply> {
        let token = format!("g{}", self.thing.id.len() + rand_u32() as usize);
        let p = json!({ "clientToken": token }).to_string();
        self.request(shadow, false, p.as_bytes(), Some(&token))
            .await
    }

    /// Waits for a message on `topic`.
    pub async fn recv_on(&mut self, topic: &str, within: Duration) -> Option<Msg> {
        self.conn.recv_on(topic, within).await
    }
}

/// Builds a context for a hub the suite spawned (over TLS when it was spawned for TLS);
/// `spawn` is kept for cases that start their own instance.
pub async fn for_spawned(hub: &SpawnedHub, spawn: Option<SpawnSpec>) -> anyhow::Result<Ctx> {
    Ctx::new(
        &hub.mqtt,
        &format!("http://{}", hub.http),
        &hub.token,
        Some(hub.service.clone()),
        spawn,
        hub.tls().cloned(),
    )
    .await
}

/// The filter `T/#` of a thing's own tree (always allowed by S-2.1).
pub fn own_filter(thing: &str) -> String {
    Topic::NtpResponse { thing }
        .to_string()
        .replace("/ntp/resp", "/#")
}

/// A pseudo-random `u32` (std's randomly keyed hasher; good enough for tokens and secrets).
pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Splits `mqtt://host:port` (or `host:port`, the forms every tool accepts, see
/// `iothub_launch::addr`) into host and port.
pub fn parse_mqtt(s: &str) -> anyhow::Result<(String, u16)> {
    let rest = iothub_launch::addr::mqtt(s)?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("MQTT address {s:?} has no port"))?;
    let port = port.parse().with_context(|| format!("bad port in {s:?}"))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}
