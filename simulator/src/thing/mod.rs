//! One virtual thing: a tokio task that owns a TCP connection and one sans-IO
//! [`iothub_sdk_nostd::Device`], the same device core the SDKs drive.
//!
//! The task only moves bytes and time: it encodes what the core asks to send with rumqttc's
//! codec modules, feeds it every PUBLISH, SUBACK, connect and disconnect, and arms one timer for
//! the core's next timeout plus the behaviour's own timers (reports, telemetry, NTP, delayed
//! delta applies and method answers, churn, keep-alive). Subscriptions, the shadow `get` after
//! each connect, clientTokens, request timeouts, delta ordering, 404 for unknown methods and the
//! NTP arithmetic are all the core's. Buffers are small and per connection: an idle thing holds
//! no read buffer at all (it waits for readability, then reads).

use std::time::Duration;

use bytes::BytesMut;
use iothub_sdk_nostd::{Config, Device, Instant as DevInstant, RequestId, SubscriptionId};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::time::Instant;

use crate::fleet::{Fleet, Phase};
use crate::mqtt::{Codec, Version};

mod behaviour;
mod conn;
mod first_boot;
pub mod link;
mod session;

/// The device core as a virtual thing sizes it: the classic shadow only, the hub's 10 requests
/// in flight, 8 queued messages.
pub type Core<'a> = Device<'a, 1, 10, 8>;

const SHADOWS: &[&str] = &[iothub_sdk_nostd::spec::ids::DEFAULT_SHADOW];
/// TCP connect timeout.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// CONNACK and SUBACK wait: generous, since the hub verifies secrets with argon2 at connect.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a single write may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping thing waits for its last answers.
const DRAIN: Duration = Duration::from_secs(10);
/// Read chunk reserved when the socket is readable.
const READ_CHUNK: usize = 2048;
/// Buffers larger than this are dropped once empty, so a big document does not pin memory.
const KEEP_BUFFER: usize = 4096;
/// Failed attempts after which a thing counts as "first connect done" (failed) for the ramp.
const FIRST_ATTEMPTS: u32 = 3;

thread_local! {
    /// Where `poll_transmit` writes before the packet is encoded: one per worker thread instead
    /// of one per thing.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

/// A reported-state update of the load: `{"temp":..,"seq":..,"pad":".."}`.
#[derive(Serialize)]
struct LoadReport<'a> {
    temp: u32,
    seq: u64,
    pad: &'a str,
}

/// The desired keys a thing applies and reports back: the business side's `setpoint` (desired
/// changes) and a configuration rollout's `telemetryInterval`. A delta holds the keys that
/// differ; the report carries the ones being applied.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
struct DesiredKeys {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    setpoint: Option<u64>,
    #[serde(
        default,
        rename = "telemetryInterval",
        skip_serializing_if = "Option::is_none"
    )]
    telemetry_interval: Option<u64>,
}

impl DesiredKeys {
    /// Whether no key is set.
    fn is_empty(&self) -> bool {
        self.setpoint.is_none() && self.telemetry_interval.is_none()
    }

    /// `self` with the keys `newer` sets replaced.
    fn overlaid(self, newer: DesiredKeys) -> DesiredKeys {
        DesiredKeys {
            setpoint: newer.setpoint.or(self.setpoint),
            telemetry_interval: newer.telemetry_interval.or(self.telemetry_interval),
        }
    }
}

/// Telemetry: `{"seq":..,"pad":".."}`.
#[derive(Serialize)]
struct Telemetry<'a> {
    seq: u64,
    pad: &'a str,
}

/// A method answer.
#[derive(Serialize)]
struct Answer {
    ok: bool,
}

/// Padding for payloads, shared.
fn padding(len: usize) -> &'static str {
    static PAD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let pad = PAD.get_or_init(|| "x".repeat(8192));
    &pad[..len.min(pad.len())]
}

/// A request of this thing awaiting its answer.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    id: RequestId,
    sent: Instant,
    /// The desired keys this update reports (a delta being applied), if any.
    applied: DesiredKeys,
}

/// A method answer waiting for its latency to pass.
#[derive(Debug)]
struct PendingAnswer {
    due: Instant,
    method: String,
    token: String,
    code: u16,
}

/// The first report of a first-boot thing: sent right after its first connect, timed from its
/// first claim CONNECT to its `accepted`.
#[derive(Debug, Clone, Copy)]
struct Boot {
    /// The first claim CONNECT.
    began: Instant,
    /// The report in flight (`None`: to send on the next connect).
    report: Option<RequestId>,
}

/// How a connection ended.
enum End {
    /// The run is over.
    Stopped,
    /// Dropped on purpose (churn).
    Churned,
    /// Lost (error, hub closed it, keep-alive); the reason is counted already.
    Lost,
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("tcp connect: {0}")]
    Tcp(std::io::ErrorKind),
    #[error("tcp connect timeout")]
    TcpTimeout,
    /// The TLS handshake failed for a reason of TLS (not the network's).
    #[error("tls handshake: {0}")]
    Tls(String),
    #[error("connack refused: code {0}")]
    Refused(u8),
    #[error("handshake timeout")]
    Timeout,
    #[error("closed during handshake")]
    Closed,
    #[error("subscription refused")]
    SubscribeRefused,
    #[error("protocol error during handshake")]
    Protocol,
    #[error("run stopped")]
    Stopped,
}

impl ConnectError {
    fn kind(&self) -> String {
        match self {
            ConnectError::Tcp(k) => format!("tcp connect: {k:?}"),
            other => other.to_string(),
        }
    }
}

/// Per-thing state that is not the device core's: the behaviour and its timers.
struct Thing {
    fleet: Arc<Fleet>,
    index: usize,
    codec: Codec,
    rng: SmallRng,
    next_pkid: u16,
    /// SUBSCRIBE packet ids and the core's subscription they carry.
    subs: heapless::Vec<(u16, SubscriptionId), 8>,
    in_flight: heapless::Vec<InFlight, 10>,
    /// QoS 1 telemetry awaiting its PUBACK: (packet id, when it was encoded).
    telemetry_in_flight: heapless::Vec<(u16, Instant), 10>,
    ntp: Option<(RequestId, Instant)>,
    answers: std::collections::VecDeque<PendingAnswer>,
    /// When the connection was lost (not churned), until the resync after the reconnect.
    lost_at: Option<Instant>,
    /// The OTA task in progress: (next report, reports made).
    ota: Option<(Instant, u8)>,
    /// The OTA task in progress drops the connection after its first progress report.
    ota_drop: bool,
    /// A delta to report back: (when, the keys).
    apply: Option<(Instant, DesiredKeys)>,
    /// A first-boot thing's first report, until it is answered.
    boot: Option<Boot>,
    last_version: Option<u64>,
    seq: u64,
    next_report: Option<Instant>,
    next_telemetry: Option<Instant>,
    next_ntp: Option<Instant>,
    next_churn: Option<Instant>,
    stop_by: Option<Instant>,
    wbuf: BytesMut,
    rbuf: BytesMut,
    last_read: Instant,
    last_write: Instant,
}

/// Runs thing `index` of `fleet` until the run stops.
pub async fn run(fleet: Arc<Fleet>, index: usize) {
    let mut rng = SmallRng::seed_from_u64(
        fleet.scenario.seed ^ (fleet.global(index) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let token_seed = rng.r#gen();
    let version = if fleet.uses_mqtt5(index) {
        Version::V5
    } else {
        Version::V4
    };
    let now = Instant::now();
    let mut thing = Thing {
        fleet: fleet.clone(),
        index,
        codec: Codec { version },
        rng,
        next_pkid: 1,
        subs: heapless::Vec::new(),
        in_flight: heapless::Vec::new(),
        telemetry_in_flight: heapless::Vec::new(),
        ntp: None,
        answers: std::collections::VecDeque::new(),
        ota: None,
        ota_drop: false,
        lost_at: None,
        apply: None,
        boot: None,
        last_version: None,
        seq: 0,
        next_report: None,
        next_telemetry: None,
        next_ntp: None,
        next_churn: None,
        stop_by: None,
        wbuf: BytesMut::new(),
        rbuf: BytesMut::new(),
        last_read: now,
        last_write: now,
    };
    let mut phase = fleet.phase.clone();
    let mut at = fleet.epoch + fleet.connect_offset(index);
    let (thing_id, secret) = match &fleet.claim {
        None => (fleet.thing_id(index), fleet.secret(index)),
        Some(claim) => {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = wait_stop(&mut phase) => {
                    fleet.stats.provision_failed.add("run stopped");
                    fleet.stats.first_done.inc();
                    fleet.stats.running.dec();
                    return;
                }
            }
            // Boxed: the claim exchange's state stays out of the thing's future.
            match Box::pin(thing.first_boot(claim, &mut phase)).await {
                Some(p) => {
                    thing.boot = Some(Boot {
                        began: p.began,
                        report: None,
                    });
                    at = Instant::now();
                    (p.thing_id, p.password)
                }
                None => {
                    fleet.stats.first_done.inc();
                    fleet.stats.running.dec();
                    return;
                }
            }
        }
    };
    let profile = &fleet.scenario.profile;
    let tx_len = iothub_sdk_nostd::MIN_TX_BUFFER
        + 2 * profile.reported_bytes.max(profile.telemetry_bytes)
        + 512;
    let mut tx = vec![0u8; tx_len].into_boxed_slice();
    let mut config = Config::new(&thing_id, SHADOWS);
    config.methods = fleet.methods;
    config.request_timeout_ms = profile.request_timeout_ms;
    config.token_seed = token_seed;
    let mut device = match Core::new(config, &mut tx[..]) {
        Ok(d) => d,
        Err(e) => {
            fleet
                .stats
                .connect_errors
                .add(format!("device config: {e}"));
            fleet.stats.first_done.inc();
            fleet.stats.running.dec();
            return;
        }
    };
    let mut attempt: u32 = 0;
    let mut ever = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = wait_stop(&mut phase) => break,
        }
        match thing
            .connect(&mut device, &thing_id, &secret, &mut phase)
            .await
        {
            Ok(stream) => {
                if ever {
                    fleet.stats.reconnects.inc();
                } else {
                    fleet.stats.ever_connected.inc();
                    if attempt < FIRST_ATTEMPTS {
                        fleet.stats.first_done.inc();
                    }
                    ever = true;
                }
                attempt = 0;
                let end = thing.session(&mut device, stream, &mut phase).await;
                thing.closed(&mut device);
                match end {
                    End::Stopped => break,
                    End::Churned => fleet.stats.churned.inc(),
                    End::Lost => thing.lost_at = Some(Instant::now()),
                }
            }
            Err(ConnectError::Stopped) => break,
            Err(e) => {
                fleet.stats.connect_errors.add(e.kind());
                device.handle_disconnected(dev_now(&fleet));
                thing.drain_events(&mut device);
                thing.abort_in_flight();
                attempt += 1;
                if attempt == FIRST_ATTEMPTS && !ever {
                    fleet.stats.first_done.inc();
                }
            }
        }
        at = Instant::now() + thing.backoff(attempt);
    }
    if !ever && attempt < FIRST_ATTEMPTS {
        fleet.stats.first_done.inc();
    }
    if thing.boot.is_some() {
        // Provisioned, but its first report never got an answer (never connected, or the run
        // ended first): counted, so that every provisioned thing has an outcome.
        fleet
            .stats
            .first_report_errors
            .add("no answer before the run ended");
    }
    fleet.stats.running.dec();
}

/// Resolves when the phase becomes [`Phase::Stop`] (or the run is gone).
async fn wait_stop(phase: &mut tokio::sync::watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Stop).await;
}

/// The tick after `at` every `secs`; when more than a period late, one period from `now`
/// (ticks are delayed, never bunched).
fn next_tick(at: Instant, now: Instant, secs: f64) -> Instant {
    let every = Duration::from_secs_f64(secs);
    let next = at + every;
    if next <= now { now + every } else { next }
}

fn dev_now(fleet: &Fleet) -> DevInstant {
    DevInstant::from_millis(u64::try_from(fleet.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
}

impl Thing {
    fn stats(&self) -> &crate::stats::Stats {
        &self.fleet.stats
    }

    fn pkid(&mut self) -> u16 {
        let id = self.next_pkid;
        self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
        id
    }

    /// Reconnect delay: `reconnect_backoff_ms` doubled per failed attempt, capped, ±50 % jitter.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let p = &self.fleet.scenario.profile;
        let base = p
            .reconnect_backoff_ms
            .saturating_mul(1u64 << attempt.min(16))
            .min(p.max_reconnect_backoff_ms)
            .max(1);
        Duration::from_millis(self.rng.gen_range(base / 2..=base + base / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    /// The per-thing state lives in the task's future: keep it small (issue 6 targets at most
    /// 16 KiB per thing in all, buffers and kernel-side bookkeeping of tokio included).
    #[test]
    fn a_virtual_thing_is_small() {
        let (_tx, rx) = tokio::sync::watch::channel(Phase::Ramp);
        let fleet = Arc::new(Fleet::new(
            Scenario::default(),
            "127.0.0.1:1".parse().expect("address"),
            rx,
        ));
        let future = run(fleet, 0);
        let size = std::mem::size_of_val(&future);
        eprintln!(
            "future {size} B, Thing {} B, Core {} B",
            std::mem::size_of::<Thing>(),
            std::mem::size_of::<Core<'static>>()
        );
        assert!(size < 8 * 1024, "a virtual thing's future is {size} bytes");
    }
}
