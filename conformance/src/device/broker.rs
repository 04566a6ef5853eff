//! The scripted hub's MQTT side: a minimal single-device MQTT 3.1.1 / 5 server on a free
//! loopback port. It authenticates the one thing (S-1.2), grants subscriptions by the S-2.1
//! allow-list, refuses forbidden publishes as S-2.2 says, answers shadow and NTP requests
//! ([`super::hub::answer`]), delivers the hub's own publishes (deltas, method calls, OTA tasks)
//! only through matching subscriptions, and records everything in an observation log that the
//! cases wait on and judge. It can drop the device and refuse reconnects (a scripted outage).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::{Bytes, BytesMut};
use iothub_spec::topic::{Topic, thing_may_subscribe};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use super::hub::{self, HubShadow, Obs, ObsEv, Shadows};
use super::judge;
use super::wire::{self, Pkt, Pub};
use crate::mqtt::{Proto, STEP};

/// Environment variable that makes the scripted hub print its observations on stderr.
pub const TRACE_ENV: &str = "IOTHUB_CONFORMANCE_TRACE";

/// One line describing an observation (for traces and failure reasons).
pub fn describe(ev: &ObsEv) -> String {
    match ev {
        ObsEv::Publish { topic, payload, .. } => {
            format!(
                "device PUBLISH {topic} {}",
                String::from_utf8_lossy(payload)
            )
        }
        ObsEv::Sent {
            topic,
            payload,
            delivered,
        } => format!(
            "hub PUBLISH {topic} {}{}",
            String::from_utf8_lossy(payload),
            if *delivered { "" } else { " (not delivered)" }
        ),
        other => format!("{other:?}"),
    }
}

/// Messages queued towards the device before the hub gives up on it.
const SEND_QUEUE: usize = 1024;

/// The live connection of the device.
struct Live {
    id: u32,
    proto: Proto,
    tx: mpsc::Sender<Bytes>,
    /// Granted filters of this connection.
    subs: Vec<String>,
    next_pkid: u16,
    close: Arc<Notify>,
}

/// Everything the scripted hub knows; read it with [`Broker::with`].
pub struct State {
    /// The observation log, in order.
    pub log: Vec<Obs>,
    /// The shadows the hub serves.
    pub shadows: Shadows,
    live: Option<Live>,
    conns: u32,
    refuse: u32,
}

struct Shared {
    /// Print every observation on stderr (`IOTHUB_CONFORMANCE_TRACE=1`).
    trace: bool,
    thing: String,
    secret: String,
    st: Mutex<State>,
    seq: watch::Sender<u64>,
    /// The transcript of the case that started this hub.
    rec: Option<crate::transcript::Transcript>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, st: &mut State, conn: u32, ev: ObsEv) {
        if self.trace {
            eprintln!("[hub {}] conn {conn}: {}", self.thing, describe(&ev));
        }
        if let Some(t) = &self.rec {
            use crate::transcript::Dir;
            let dir = match &ev {
                ObsEv::Sent { .. } | ObsEv::Refused => Dir::Out,
                ObsEv::Accepted | ObsEv::Closed(_) => Dir::Note,
                _ => Dir::In,
            };
            t.push(&format!("conn {conn}"), dir, &describe(&ev));
        }
        st.log.push(Obs {
            at: Instant::now(),
            conn,
            ev,
        });
        self.seq.send_modify(|n| *n += 1);
    }

    /// Sends a PUBLISH to the device if a granted subscription of its live connection matches;
    /// records it either way. Returns whether it was delivered.
    fn send(&self, st: &mut State, topic: &str, body: &Value) -> bool {
        let payload = Bytes::from(body.to_string());
        let mut delivered = false;
        let mut conn = 0;
        if let Some(live) = st.live.as_mut() {
            conn = live.id;
            if live.subs.iter().any(|f| judge::filter_matches(f, topic)) {
                live.next_pkid = live.next_pkid.checked_add(1).unwrap_or(1);
                let p = Pkt::Publish(Pub {
                    topic: topic.to_owned(),
                    payload: payload.clone(),
                    qos: 1,
                    retain: false,
                    pkid: live.next_pkid,
                    alias: None,
                });
                delivered = push(live, &p);
            }
        }
        self.record(
            st,
            conn,
            ObsEv::Sent {
                topic: topic.to_owned(),
                payload,
                delivered,
            },
        );
        delivered
    }
}

/// Encodes `p` for the live connection and queues it; closes the connection when the queue is
/// full (a device that does not read).
fn push(live: &Live, p: &Pkt) -> bool {
    let sent = wire::encode(p, live.proto).is_ok_and(|b| live.tx.try_send(b).is_ok());
    if !sent {
        live.close.notify_one();
    }
    sent
}

/// A running scripted hub; stops on drop.
pub struct Broker {
    addr: SocketAddr,
    sh: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.accept.abort();
        if let Some(live) = self.sh.lock().live.take() {
            live.close.notify_one();
        }
    }
}

impl Broker {
    /// Listens on `127.0.0.1:0` for the thing `thing` with password `secret`, serving
    /// `shadows` as the hub's shadow store.
    pub async fn start(thing: &str, secret: &str, shadows: Shadows) -> anyhow::Result<Broker> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (seq, _) = watch::channel(0);
        let sh = Arc::new(Shared {
            trace: std::env::var(TRACE_ENV).is_ok_and(|v| v == "1"),
            thing: thing.to_owned(),
            secret: secret.to_owned(),
            st: Mutex::new(State {
                log: Vec::new(),
                shadows,
                live: None,
                conns: 0,
                refuse: 0,
            }),
            seq,
            rec: crate::transcript::current(),
        });
        let sh2 = sh.clone();
        let accept = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                let id = {
                    let mut st = sh2.lock();
                    st.conns += 1;
                    st.conns
                };
                tokio::spawn(serve(sh2.clone(), sock, id));
            }
        });
        Ok(Broker { addr, sh, accept })
    }

    /// The `host:port` the device connects to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `f` on the hub's state (never across an await).
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.sh.lock())
    }

    /// A copy of the observation log.
    pub fn log(&self) -> Vec<Obs> {
        self.with(|st| st.log.clone())
    }

    /// Waits until `f` finds what it looks for in the log, at most `within`; the error says
    /// `what` was not seen.
    pub async fn wait_for<T>(
        &self,
        within: Duration,
        what: &str,
        mut f: impl FnMut(&[Obs]) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + within;
        let mut rx = self.sh.seq.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(t) = self.with(|st| f(&st.log)) {
                return Ok(t);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the scripted hub stopped while waiting for {what}"),
                Err(_) => return Err(anyhow!("{what} (waited {within:?})")),
            }
        }
    }

    /// Publishes `body` on `topic` to the device (QoS 1, not retained, S-2.3). Fails when no
    /// granted subscription of the live connection matches it (the device could not receive it).
    pub fn send(&self, topic: &str, body: &Value) -> anyhow::Result<()> {
        let ok = self.with(|st| self.sh.send(st, topic, body));
        if !ok {
            bail!("the device is not connected or has no granted subscription matching {topic}");
        }
        Ok(())
    }

    /// Writes `desired` into `shadow` as the business side would (S-3.4 merge, version + 1) and
    /// sends the resulting delta (S-3.6). Returns the new version.
    pub fn set_desired(&self, shadow: &str, desired: &Map<String, Value>) -> anyhow::Result<u64> {
        let thing = self.sh.thing.clone();
        let (version, delta) = self.with(|st| {
            let s = st.shadows.entry(shadow.to_owned()).or_default();
            let d = s.set_desired(desired);
            (s.version, d)
        });
        if let Some(d) = delta {
            self.send(
                &Topic::ShadowUpdateDelta {
                    thing: &thing,
                    shadow,
                }
                .to_string(),
                &d,
            )?;
        }
        Ok(version)
    }

    /// A copy of one shadow as the hub holds it.
    pub fn shadow(&self, name: &str) -> HubShadow {
        self.with(|st| st.shadows.get(name).cloned().unwrap_or_default())
    }

    /// Closes the device's connection (no DISCONNECT: the broker "drops" it).
    pub fn drop_device(&self) {
        self.with(|st| {
            if let Some(live) = &st.live {
                live.close.notify_one();
            }
        });
    }

    /// Closes the next `n` TCP connections right after accepting them (the hub is "down").
    pub fn refuse_next(&self, n: u32) {
        self.with(|st| st.refuse = n);
    }
}

async fn read_more(sock: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut BytesMut) -> bool {
    matches!(sock.read_buf(buf).await, Ok(n) if n > 0)
}

/// Serves one TCP connection.
async fn serve(sh: Arc<Shared>, sock: TcpStream, id: u32) {
    {
        let mut st = sh.lock();
        sh.record(&mut st, id, ObsEv::Accepted);
        if st.refuse > 0 {
            st.refuse -= 1;
            sh.record(&mut st, id, ObsEv::Refused);
            return;
        }
    }
    let (mut rd, mut wr) = sock.into_split();
    let mut buf = BytesMut::with_capacity(4096);
    // CONNECT first, within one protocol step.
    let first = tokio::time::timeout(STEP, async {
        loop {
            match wire::read_connect(&mut buf) {
                Ok(Some(c)) => return Ok(c),
                Ok(None) if read_more(&mut rd, &mut buf).await => {}
                Ok(None) => return Err("closed before CONNECT".to_owned()),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let (proto, connect) = match first {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return close(&sh, id, ObsEv::Protocol(e)),
        Err(_) => return close(&sh, id, ObsEv::Protocol("no CONNECT within 5 s".into())),
    };
    let Pkt::Connect {
        client_id,
        username,
        password,
        ..
    } = connect
    else {
        return close(
            &sh,
            id,
            ObsEv::Protocol("first packet is not CONNECT".into()),
        );
    };
    let password_ok = password.as_deref() == Some(sh.secret.as_str());
    let accepted = password_ok && client_id == sh.thing && username.as_deref() == Some(&sh.thing);
    let (tx, mut rx) = mpsc::channel::<Bytes>(SEND_QUEUE);
    let close_me = Arc::new(Notify::new());
    {
        let mut st = sh.lock();
        sh.record(
            &mut st,
            id,
            ObsEv::Connect {
                proto,
                client_id,
                username,
                password_ok,
                accepted,
            },
        );
        if accepted {
            // S-1.4: a new connection takes over the old one.
            if let Some(old) = st.live.take() {
                old.close.notify_one();
            }
            st.live = Some(Live {
                id,
                proto,
                tx: tx.clone(),
                subs: Vec::new(),
                next_pkid: 0,
                close: close_me.clone(),
            });
        }
    }
    // S-1.3: bad credentials are refused in CONNACK (3.1.1: 4; MQTT 5: 0x86).
    let code = match (accepted, proto) {
        (true, _) => 0,
        (false, Proto::V311) => 4,
        (false, Proto::V5) => 0x86,
    };
    let ack = Pkt::ConnAck {
        code,
        session_present: false,
    };
    if let Ok(b) = wire::encode(&ack, proto) {
        let _ = wr.write_all(&b).await;
    }
    if !accepted {
        return close(&sh, id, ObsEv::Closed("credentials refused".into()));
    }
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
    });
    drop(tx);
    let mut aliases: std::collections::HashMap<u16, String> = Default::default();
    let reason = 'conn: loop {
        loop {
            match wire::read(&mut buf, proto) {
                Ok(Some(p)) => {
                    if let Some(r) = handle(&sh, id, proto, p, &mut aliases) {
                        break 'conn r;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let mut st = sh.lock();
                    sh.record(&mut st, id, ObsEv::Protocol(e.to_string()));
                    break 'conn "malformed packet".to_owned();
                }
            }
        }
        tokio::select! {
            more = read_more(&mut rd, &mut buf) => if !more {
                break "closed by the device".to_owned();
            },
            _ = close_me.notified() => break "closed by the hub".to_owned(),
        }
    };
    {
        let mut st = sh.lock();
        if st.live.as_ref().is_some_and(|l| l.id == id) {
            st.live = None;
        }
    }
    writer.abort();
    close(&sh, id, ObsEv::Closed(reason));
}

fn close(sh: &Shared, id: u32, ev: ObsEv) {
    let mut st = sh.lock();
    sh.record(&mut st, id, ev);
}

/// Handles one packet of the live connection; `Some(reason)` ends the connection.
fn handle(
    sh: &Shared,
    id: u32,
    proto: Proto,
    p: Pkt,
    aliases: &mut std::collections::HashMap<u16, String>,
) -> Option<String> {
    let mut st = sh.lock();
    let st = &mut *st;
    st.live.as_ref().filter(|l| l.id == id)?;
    let reply = |st: &mut State, p: &Pkt| {
        if let Some(live) = st.live.as_ref() {
            push(live, p);
        }
    };
    match p {
        Pkt::Publish(mut p) => {
            if let Some(a) = p.alias {
                if p.topic.is_empty() {
                    p.topic = aliases.get(&a).cloned().unwrap_or_default();
                } else {
                    aliases.insert(a, p.topic.clone());
                }
            }
            let parsed = Topic::parse(&p.topic);
            let allowed = parsed.is_ok_and(|t| t.thing_may_publish(&sh.thing));
            sh.record(st, id, pub_obs(&p));
            if !allowed && proto == Proto::V311 {
                // S-2.2: MQTT 3.1.1 closes the connection on a denied publish.
                return Some(format!("denied PUBLISH on {} (S-2.2)", p.topic));
            }
            if p.qos > 0 {
                let code = if allowed { 0 } else { 0x87 };
                reply(st, &Pkt::PubAck { pkid: p.pkid, code });
            }
            if allowed && let Ok(t) = parsed {
                for (t, body) in hub::answer(&sh.thing, &mut st.shadows, &t, &p.payload) {
                    sh.send(st, &t, &body);
                }
            }
            None
        }
        Pkt::Subscribe { pkid, filters } => {
            let mut codes = Vec::new();
            for f in filters {
                let granted = thing_may_subscribe(&f, &sh.thing);
                codes.push(match (granted, proto) {
                    (true, _) => 1,
                    (false, Proto::V311) => 0x80,
                    (false, Proto::V5) => 0x87,
                });
                if granted && let Some(live) = st.live.as_mut() {
                    live.subs.push(f.clone());
                }
                sh.record(st, id, ObsEv::Subscribe { filter: f, granted });
            }
            reply(st, &Pkt::SubAck { pkid, codes });
            None
        }
        Pkt::PingReq => {
            reply(st, &Pkt::PingResp);
            None
        }
        Pkt::PubAck { .. } => None,
        Pkt::Disconnect => Some("DISCONNECT from the device".into()),
        other => {
            sh.record(st, id, ObsEv::Protocol(format!("unexpected {other:?}")));
            None
        }
    }
}

fn pub_obs(p: &Pub) -> ObsEv {
    ObsEv::Publish {
        topic: p.topic.clone(),
        payload: p.payload.clone(),
        qos: p.qos,
        retain: p.retain,
    }
}
