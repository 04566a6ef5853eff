//! `shim-nostd`: the same thermostat as `shim-std`, built on `iothub-sdk-nostd`'s sans-IO
//! [`Device`] core (no heap inside the core: capacities are const generics, the transmit queue
//! lives in a buffer lent by this program), driven here over MQTT 5 by rumqttc's v5 client.
//! This program is the "host variant" driver: it only moves bytes and time in and out, as the
//! core's driving contract says, and keeps the application state (setpoint, mode, firmware,
//! OTA progress) itself.
//!
//! Environment: `IOTHUB_MQTT_ADDR`, `IOTHUB_THING_ID`, `IOTHUB_THING_SECRET`, and the test-only
//! `IOTHUB_SHIM_BREAK` (see the crate's `shim` module). It runs until killed.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use anyhow::anyhow;
use iothub_conformance::shim::{Env, METHOD, OTA_STEP_MS, OTA_STEPS, Thermostat};
use iothub_sdk_nostd::spec::code::method_code;
use iothub_sdk_nostd::spec::ids::DEFAULT_SHADOW;
use iothub_sdk_nostd::{
    Config, Device, Event, Instant, OtaReport, QoS, RawJson, ShadowId, SubscriptionId, Transmit,
};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS as MqttQoS;
use rumqttc::v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use serde::{Deserialize, Serialize};

/// Shadows followed, methods answered.
const SHADOWS: &[&str] = &[DEFAULT_SHADOW];
const METHODS: &[&str] = &[METHOD];
/// Transmit queue bytes and one outgoing message.
const TX_BUFFER: usize = 16 * 1024;
const OUT_BUFFER: usize = 8 * 1024;
/// Reconnect backoff: first delay, longest delay (jitter takes up to half off).
const BACKOFF_MS: u64 = 200;
const BACKOFF_MAX_MS: u64 = 10_000;

/// The core with this program's capacities: one shadow, 10 requests in flight, 16 queued.
type Core<'a> = Device<'a, 1, 10, 16>;

/// What a delta may hold; unknown keys are ignored.
#[derive(Debug, Default, Deserialize)]
struct ThermoDelta<'a> {
    #[serde(default)]
    setpoint: Option<f64>,
    #[serde(default, borrow)]
    mode: Option<&'a str>,
}

/// What is reported (the whole state).
#[derive(Serialize)]
struct Reported<'a> {
    setpoint: f64,
    mode: &'a str,
    firmware: &'a str,
}

/// An OTA task being "installed": the next progress step and the version.
struct OtaJob {
    step: usize,
    version: String,
}

/// The application: the thermostat's state and its reactions to the core's events.
struct App {
    state: Thermostat,
    ota: Option<OtaJob>,
    ntp_started: bool,
}

impl App {
    fn apply(&mut self, delta: RawJson<'_>) {
        match delta.parse::<ThermoDelta<'_>>() {
            Ok(d) => {
                if let Some(s) = d.setpoint {
                    self.state.setpoint = s;
                }
                if let Some(m) = d.mode {
                    self.state.mode = m.to_owned();
                }
            }
            Err(e) => eprintln!("shim-nostd: delta not understood: {e:?}"),
        }
    }

    fn report(&self, core: &mut Core<'_>, now: Instant) {
        let r = Reported {
            setpoint: self.state.setpoint,
            mode: &self.state.mode,
            firmware: &self.state.firmware,
        };
        if let Err(e) = core.report(now, ShadowId::FIRST, &r) {
            eprintln!("shim-nostd: report not queued: {e}");
        }
    }

    fn on_event(&mut self, core: &mut Core<'_>, now: Instant, ev: Event<'_>) {
        match ev {
            Event::Shadow(doc) => {
                // A (re)synchronized document: apply its delta, report the whole state.
                if let Some(d) = doc.delta {
                    self.apply(d);
                }
                self.report(core, now);
            }
            Event::Delta(d) => {
                self.apply(d.state);
                self.report(core, now);
            }
            Event::MethodCall(call) => {
                let data = serde_json::json!({ "rebootingIn": 0 });
                let r = core.respond(
                    now,
                    call.method,
                    call.client_token,
                    method_code::OK,
                    None,
                    Some(&data),
                );
                if let Err(e) = r {
                    eprintln!("shim-nostd: method response not queued: {e}");
                }
            }
            Event::OtaTask(task) => {
                self.ota = Some(OtaJob {
                    step: 0,
                    version: task.meta.version.to_owned(),
                });
            }
            Event::Ntp { sample, .. } => {
                eprintln!("shim-nostd: hub time {} ms", sample.server_time_ms);
            }
            other => eprintln!("shim-nostd: {other:?}"),
        }
    }

    /// One OTA step: the next progress report, then `done`.
    fn ota_step(&mut self, core: &mut Core<'_>, now: Instant) {
        let Some(job) = self.ota.as_mut() else { return };
        let report = match OTA_STEPS.get(job.step) {
            Some(p) => OtaReport::Ongoing { progress: *p },
            None => OtaReport::Done,
        };
        match core.report_ota(now, report) {
            Ok(()) if report == OtaReport::Done => {
                self.state.firmware = job.version.clone();
                self.ota = None;
                self.report(core, now);
            }
            Ok(()) => job.step += 1,
            Err(iothub_sdk_nostd::Error::NoOtaTask) => self.ota = None,
            Err(e) => eprintln!("shim-nostd: OTA report not queued (retrying): {e}"),
        }
    }
}

/// Reconnect delay before attempt `n`, with up to half taken off at random.
fn backoff(n: u32) -> Duration {
    let base = BACKOFF_MS
        .saturating_mul(1u64 << n.min(16))
        .min(BACKOFF_MAX_MS);
    let jitter = u64::from(iothub_conformance::ctx::rand_u32()) % (base / 2 + 1);
    Duration::from_millis(base - jitter)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    iothub_conformance::shim::answer_help(
        "Usage: shim-nostd\n\nshim-nostd: a thermostat-like device on the sans-IO device core (iothub-sdk-nostd), the device under\ntest of `iothub-conformance device --exec shim-nostd`. Runs until killed or until its stdin closes.",
    );
    let env = Env::from_env()?;
    iothub_conformance::shim::exit_on_stdin_eof();
    let (host, port) = Env::split_addr(&env.connect_addr().await?)?;
    let mut config = Config::new(&env.thing, SHADOWS);
    config.methods = METHODS;
    config.token_seed = iothub_conformance::ctx::rand_u32();
    let mut tx = vec![0u8; TX_BUFFER];
    let mut core: Core<'_> =
        Device::new(config, &mut tx).map_err(|e| anyhow!("device config: {e}"))?;
    let mut out = vec![0u8; OUT_BUFFER];

    let mut opts = MqttOptions::new(&env.thing, host, port);
    opts.set_credentials(&env.thing, &env.secret)
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_start(true);
    let (client, eventloop) = AsyncClient::new(opts, 256);
    // rumqttc's poll must not be cancelled mid-connect, so it runs in its own task (which also
    // waits out the reconnect backoff) and hands every event over.
    let (net_tx, mut net) = tokio::sync::mpsc::channel(64);
    tokio::spawn(drive(eventloop, net_tx));

    let start = tokio::time::Instant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as u64);
    let mut app = App {
        state: Thermostat::default(),
        ota: None,
        ntp_started: false,
    };
    // SUBSCRIBEs handed to rumqttc, waiting for their packet ids; then ids waiting for SUBACK.
    let mut subs_queued: VecDeque<SubscriptionId> = VecDeque::new();
    let mut subs_sent: HashMap<u16, SubscriptionId> = HashMap::new();
    let mut ota_tick = tokio::time::interval(Duration::from_millis(OTA_STEP_MS));
    let mut telemetry = tokio::time::interval(Duration::from_secs(5));
    loop {
        let timer = core
            .poll_timeout()
            .map(|t| start + Duration::from_millis(t.as_millis()))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            ev = net.recv() => match ev {
                None => return Ok(()),
                Some(Ok(MqttEvent::Incoming(Packet::ConnAck(ack)))) => {
                    subs_queued.clear();
                    subs_sent.clear();
                    core.handle_connected(now(), ack.session_present);
                    if !app.ntp_started {
                        app.ntp_started = core.request_ntp(now(), 4).is_ok();
                    }
                }
                Some(Ok(MqttEvent::Incoming(Packet::Publish(p)))) => {
                    let Ok(topic) = std::str::from_utf8(&p.topic) else { continue };
                    match core.handle_publish(now(), topic, &p.payload) {
                        Ok(Some(ev)) => app.on_event(&mut core, now(), ev),
                        Ok(None) => {}
                        Err(why) => eprintln!("shim-nostd: ignored {topic}: {why}"),
                    }
                }
                Some(Ok(MqttEvent::Incoming(Packet::SubAck(ack)))) => {
                    if let Some(id) = subs_sent.remove(&ack.pkid) {
                        let granted = ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                        core.handle_suback(now(), id, granted);
                    }
                }
                Some(Ok(MqttEvent::Outgoing(Outgoing::Subscribe(pkid)))) => {
                    if let Some(id) = subs_queued.pop_front() {
                        subs_sent.insert(pkid, id);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err((e, told))) => {
                    core.handle_disconnected(now());
                    eprintln!("shim-nostd: connection lost ({e})");
                    let _ = told.send(());
                }
            },
            _ = tokio::time::sleep_until(timer) => core.handle_timeout(now()),
            _ = ota_tick.tick() => app.ota_step(&mut core, now()),
            _ = telemetry.tick() => {
                let t = serde_json::json!({ "temperature": app.state.setpoint });
                let _ = core.publish_telemetry(now(), &t, QoS::AtMostOnce);
            }
        }
        // Outputs: events caused by time or the connection, then everything to send.
        while let Some(ev) = core.poll_event() {
            app.on_event(&mut core, now(), ev);
        }
        flush(&mut core, &client, &mut out, now(), &mut subs_queued);
    }
}

/// A connection error, with the way to tell `drive` that the core knows the connection is gone.
type Lost = (String, tokio::sync::oneshot::Sender<()>);

/// Polls rumqttc's event loop and hands every event to the main loop; after a connection
/// error waits the backoff before the next attempt (polling again reconnects).
async fn drive(
    mut eventloop: rumqttc::v5::EventLoop,
    tx: tokio::sync::mpsc::Sender<Result<MqttEvent, Lost>>,
) {
    let mut failures: u32 = 0;
    loop {
        let e = match eventloop.poll().await {
            Ok(ev) => {
                if matches!(ev, MqttEvent::Incoming(Packet::ConnAck(_))) {
                    failures = 0;
                }
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
                continue;
            }
            Err(e) => e,
        };
        let (told, core_knows) = tokio::sync::oneshot::channel();
        if tx.send(Err((e.to_string(), told))).await.is_err() || core_knows.await.is_err() {
            return;
        }
        // What the main loop handed to rumqttc before the core learned of the loss belongs to
        // the old connection: rumqttc would send it first on the new one, before the core's
        // SUBSCRIBEs (S-2). The core re-sends what it still needs after reconnecting.
        eventloop.clean();
        eventloop.pending.clear();
        let wait = backoff(failures);
        failures = failures.saturating_add(1);
        tokio::time::sleep(wait).await;
    }
}

/// Sends every queued transmit through rumqttc.
fn flush(
    core: &mut Core<'_>,
    client: &AsyncClient,
    out: &mut [u8],
    now: Instant,
    subs_queued: &mut VecDeque<SubscriptionId>,
) {
    loop {
        let t = match core.poll_transmit(now, out) {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                eprintln!("shim-nostd: poll_transmit: {e}");
                return;
            }
        };
        let sent = match t {
            Transmit::Subscribe { id, filter, .. } => {
                subs_queued.push_back(id);
                client.try_subscribe(filter, MqttQoS::AtLeastOnce)
            }
            Transmit::Publish {
                topic,
                payload,
                qos,
            } => {
                let q = match qos {
                    QoS::AtMostOnce => MqttQoS::AtMostOnce,
                    _ => MqttQoS::AtLeastOnce,
                };
                client.try_publish(topic, q, false, payload.to_vec())
            }
            _ => Ok(()),
        };
        if let Err(e) = sent {
            eprintln!("shim-nostd: message dropped by the MQTT client: {e}");
        }
    }
}
