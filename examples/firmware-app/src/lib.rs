//! A firmware-style thermostat on the [`iothub_sdk_nostd::minimq`] adapter: `no_std`, no heap,
//! every buffer sized at compile time. The same code is built for a Cortex-M4F
//! (`examples/firmware`, embassy-executor + embassy-net) and for Linux
//! (`iothub-examples`' `firmware_host` bin, minimq over a tokio `TcpStream`), which the
//! end-to-end test runs against a real hub.
//!
//! What it does:
//! - keeps `setpoint` (integer °C) and `mode` in sync with the `default` shadow: applies the
//!   document after every (re)connect and every newer delta, then reports its whole state;
//! - answers the direct method `reboot` (200, `{"boots":N}`) and counts boots;
//! - requests NTP after connecting, keeps the Unix time and reports `time_synced`;
//! - runs OTA tasks: with feature `ota-download` and `ota::run_downloading` it downloads the
//!   file and verifies it with the SDK's `OtaVerifier` (`done`, or `failed` 1400/1403/1404);
//!   otherwise it simulates one, `ongoing` every tick (25 % steps), then `done`;
//! - on first boot, with only a claim credential, provisions itself ([`first_boot`], S-10);
//! - sends telemetry (`temperature` in tenths of °C, `heating`) every tick;
//! - reports a message too large for its buffers (`Event::TooLarge`, or `Event::SyncLost` when
//!   it is larger than minimq's receive buffer) as `too_large` in its reported state, until a
//!   delta or document applies again (the operator sees it in the shadow; the device cannot
//!   take that desired state).
#![no_std]

pub mod first_boot;
#[cfg(feature = "ota-download")]
pub mod ota;

use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_time::{Duration, Ticker};
use iothub_sdk_nostd::minimq::{self, Client};
use iothub_sdk_nostd::spec::payload::OtaTask;
use iothub_sdk_nostd::{
    Config, Device, Event, Instant, OtaReport, QoS, RequestId, TooLarge, TooLargeKind,
};
use serde::{Deserialize, Serialize};

/// The shadows the thermostat keeps.
pub const SHADOWS: &[&str] = &["default"];
/// The direct methods it answers (others get 404 from the core).
pub const METHODS: &[&str] = &["reboot"];

/// Shadows, requests in flight and transmit-queue messages of the device.
pub const N_SHADOWS: usize = 1;
/// Requests in flight at most.
pub const IN_FLIGHT: usize = 4;
/// Messages queued at most.
pub const QUEUE: usize = 8;

/// The largest shadow document expected: states of up to 256 bytes with 8 leaves each
/// (this thermostat's state is under 80 bytes and 4 leaves).
pub const DOCUMENT: usize = minimq::document_size(256, 8);
/// The device's transmit-queue buffer: the minimum plus a report of up to 256 bytes.
pub const QUEUE_BYTES: usize = iothub_sdk_nostd::MIN_TX_BUFFER + 256;
/// The inbox of the shared state.
pub const INBOX: usize = minimq::inbox_size(DOCUMENT);
/// minimq's receive buffer.
pub const RX: usize = minimq::rx_size(DOCUMENT);
/// minimq's transmit buffer: `IN_FLIGHT` reports plus as many replies and telemetry messages.
pub const TX: usize = minimq::tx_size(256, 2 * IN_FLIGHT);
/// The runner's scratch for one outgoing message (at least the queue buffer).
pub const OUT: usize = QUEUE_BYTES;

/// The device type of this application.
pub type AppDevice<'a> = Device<'a, N_SHADOWS, IN_FLIGHT, QUEUE>;
/// The shared state of this application.
pub type AppState<'a, M> = minimq::State<'a, M, N_SHADOWS, IN_FLIGHT, QUEUE, INBOX>;
/// The client of this application (`INBOX` bytes of inbox, [`INBOX`] by default).
pub type AppClient<'s, 'a, M, const INBOX_BYTES: usize = INBOX> =
    Client<'s, 'a, M, N_SHADOWS, IN_FLIGHT, QUEUE, INBOX_BYTES>;
/// The runner's buffers of this application.
pub type AppResources = minimq::Resources<RX, TX, OUT>;

/// The device configuration for thing `thing_id`; `seed` makes its clientTokens unique (a boot
/// counter or an RNG value).
pub fn device_config(thing_id: &str, seed: u32) -> Config<'_> {
    let mut config = Config::new(thing_id, SHADOWS);
    config.methods = METHODS;
    config.token_seed = seed;
    config
}

/// Operating mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Off.
    Off,
    /// Heating to the setpoint.
    Heat,
    /// Cooling to the setpoint.
    Cool,
    /// Heating or cooling.
    Auto,
}

/// The desired keys the thermostat understands. A delta carries only the keys that differ
/// (never `null`), so each is an `Option` with `#[serde(default)]`; other keys are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct Desired {
    /// Target temperature in °C.
    #[serde(default)]
    pub setpoint: Option<i32>,
    /// Operating mode.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// What it reports: its whole state.
#[derive(Debug, Serialize)]
pub struct Reported<'a> {
    /// Target temperature in °C.
    pub setpoint: i32,
    /// Operating mode.
    pub mode: Mode,
    /// Boots so far (the `reboot` method counts one).
    pub boots: u32,
    /// Firmware version.
    pub firmware: &'a str,
    /// Whether the clock has been set by NTP.
    pub time_synced: bool,
    /// Messages that did not fit since the last delta or document applied; `null` (which
    /// deletes the key, S-3.4) when there were none.
    pub too_large: Option<TooLargeSeen>,
}

/// Bytes needed and available of the last message of one kind that did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizes {
    /// Bytes the message needed.
    pub needed: usize,
    /// Bytes the buffer had.
    pub capacity: usize,
}

/// The messages too large for the device's buffers since it last synced, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TooLargeSeen {
    /// A delta (the device asked for the document again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<Sizes>,
    /// A shadow document: only larger buffers or a smaller desired state help.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<Sizes>,
    /// A method call (its caller got the hub's timeout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method_call: Option<Sizes>,
    /// An OTA task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ota_task: Option<Sizes>,
    /// Anything else.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other: Option<Sizes>,
    /// Connections lost in a row waiting for the shadow document (`Event::SyncLost`): most
    /// likely a document larger than minimq's receive buffer, size unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_lost: Option<u8>,
}

/// A telemetry message.
#[derive(Debug, Serialize)]
struct Telemetry {
    /// Tenths of °C.
    temperature: i32,
    heating: bool,
}

/// The reply to `reboot`.
#[derive(Debug, Serialize)]
struct RebootReply {
    boots: u32,
}

/// The thermostat's application state; all of it is plain data.
#[derive(Debug)]
pub struct Thermostat {
    /// Target temperature in °C.
    pub setpoint: i32,
    /// Operating mode.
    pub mode: Mode,
    /// Boot counter.
    pub boots: u32,
    /// Firmware version reported.
    pub firmware: &'static str,
    /// Simulated room temperature in tenths of °C.
    pub temperature: i32,
    /// Unix time in ms at the last tick, once NTP answered.
    pub unix_ms: Option<u64>,
    /// Progress of the running OTA task, if any.
    pub ota_progress: Option<u8>,
    /// Deltas and documents applied.
    pub applied: u32,
    /// Messages too large for the buffers since the last delta or document applied.
    pub too_large: Option<TooLargeSeen>,
    report_due: bool,
    last_report: Option<RequestId>,
    last_ntp: Option<RequestId>,
    ntp_due: bool,
    /// Set by `ota::run_downloading`: OTA tasks are downloaded, not simulated.
    #[cfg(feature = "ota-download")]
    downloads: bool,
    #[cfg(feature = "ota-download")]
    download: Option<ota::Download>,
}

impl Thermostat {
    /// A thermostat at 20 °C, off, booted `boots` times.
    pub const fn new(firmware: &'static str, boots: u32) -> Self {
        Thermostat {
            setpoint: 20,
            mode: Mode::Off,
            boots,
            firmware,
            temperature: 200,
            unix_ms: None,
            ota_progress: None,
            applied: 0,
            too_large: None,
            report_due: true,
            last_report: None,
            last_ntp: None,
            ntp_due: true,
            #[cfg(feature = "ota-download")]
            downloads: false,
            #[cfg(feature = "ota-download")]
            download: None,
        }
    }

    /// The state as reported.
    pub fn reported(&self) -> Reported<'_> {
        Reported {
            setpoint: self.setpoint,
            mode: self.mode,
            boots: self.boots,
            firmware: self.firmware,
            time_synced: self.unix_ms.is_some(),
            too_large: self.too_large,
        }
    }

    fn apply(&mut self, desired: Desired) {
        if let Some(s) = desired.setpoint {
            self.setpoint = s.clamp(-50, 100);
        }
        if let Some(m) = desired.mode {
            self.mode = m;
        }
        self.applied = self.applied.saturating_add(1);
        self.report_due = true;
    }

    /// A message did not fit: remembered (and reported) when it carried state the thermostat
    /// needs. The echo of its own large report is not: reporting again would only echo again.
    fn on_too_large(&mut self, t: TooLarge) {
        if let TooLargeKind::UpdateReply {
            request, accepted, ..
        } = t.kind
        {
            if request.is_some() && request == self.last_report && !accepted {
                self.report_due = true;
            }
            return;
        }
        let sizes = Some(Sizes {
            needed: t.needed,
            capacity: t.capacity,
        });
        let seen = self.too_large.get_or_insert_with(TooLargeSeen::default);
        match t.kind {
            TooLargeKind::Delta { .. } => seen.delta = sizes,
            TooLargeKind::Document { .. } => seen.document = sizes,
            TooLargeKind::MethodCall => seen.method_call = sizes,
            TooLargeKind::OtaTask => seen.ota_task = sizes,
            _ => seen.other = sizes,
        }
        self.report_due = true;
    }

    fn report(&mut self, dev: &mut AppDevice<'_>, now: Instant) {
        let Some(shadow) = dev.shadow_id("default") else {
            return;
        };
        match dev.report(now, shadow, &self.reported()) {
            Ok(id) => {
                self.last_report = Some(id);
                self.report_due = false;
            }
            // Not connected or no room: the next tick or (re)connect tries again.
            Err(_) => self.report_due = true,
        }
    }

    /// Reacts to one event of the device; what it queues is sent when it returns.
    pub fn on_event(&mut self, event: Event<'_>, dev: &mut AppDevice<'_>, now: Instant) {
        match event {
            Event::Shadow(doc) => {
                // In sync again: whatever did not fit before is superseded.
                self.too_large = None;
                // After every (re)connect: the whole document; apply what differs.
                if let Some(Ok(delta)) = doc.delta.map(|d| d.parse::<Desired>()) {
                    self.apply(delta);
                }
                self.report_due = true;
                self.ntp_due |= self.unix_ms.is_none();
            }
            Event::Delta(delta) => {
                // Reported as `null`, which removes what was reported before.
                self.report_due |= self.too_large.take().is_some();
                if let Ok(desired) = delta.state.parse::<Desired>() {
                    self.apply(desired);
                }
            }
            Event::MethodCall(call) => {
                // Only `reboot` is registered; the core answers 404 to anything else.
                self.boots = self.boots.saturating_add(1);
                self.report_due = true;
                let reply = RebootReply { boots: self.boots };
                let _ = dev.respond(now, call.method, call.client_token, 200, None, Some(&reply));
            }
            Event::Ntp { sample, .. } => {
                self.report_due |= self.unix_ms.is_none();
                self.unix_ms = Some(sample.unix_time_ms(now));
            }
            Event::OtaTask(task) => self.on_ota_task(&task, dev, now),
            Event::TooLarge(t) => self.on_too_large(t),
            Event::SyncLost { connections, .. } => {
                let seen = self.too_large.get_or_insert_with(TooLargeSeen::default);
                seen.sync_lost = Some(connections);
                self.report_due = true;
            }
            Event::Rejected { request, .. } | Event::TimedOut { request }
                if Some(request) == self.last_report =>
            {
                self.report_due = true;
            }
            Event::TimedOut { request } if Some(request) == self.last_ntp => {
                self.ntp_due = true;
            }
            _ => {}
        }
        if self.report_due {
            self.report(dev, now);
        }
        if self.ntp_due && dev.is_connected() {
            self.request_ntp(dev, now);
        }
    }

    fn on_ota_task(&mut self, task: &OtaTask<'_>, dev: &mut AppDevice<'_>, now: Instant) {
        #[cfg(feature = "ota-download")]
        if self.downloads {
            self.download = ota::Download::start(task, dev, now);
            return;
        }
        let _ = task;
        self.ota_progress = Some(0);
        let _ = dev.report_ota(now, OtaReport::Ongoing { progress: 0 });
    }

    fn request_ntp(&mut self, dev: &mut AppDevice<'_>, now: Instant) {
        if let Ok(id) = dev.request_ntp(now, 4) {
            self.last_ntp = Some(id);
            self.ntp_due = false;
        }
    }

    /// Periodic work: simulated physics, telemetry, OTA progress, retries.
    pub fn on_tick(&mut self, dev: &mut AppDevice<'_>, now: Instant) {
        let target = self.setpoint.saturating_mul(10);
        let heating = matches!(self.mode, Mode::Heat | Mode::Auto) && self.temperature < target;
        let cooling = matches!(self.mode, Mode::Cool | Mode::Auto) && self.temperature > target;
        self.temperature += i32::from(heating) - i32::from(cooling);
        if let Some(t) = dev.unix_time_ms(now) {
            self.unix_ms = Some(t);
        }
        if !dev.is_connected() {
            return;
        }
        let _ = dev.publish_telemetry(
            now,
            &Telemetry {
                temperature: self.temperature,
                heating,
            },
            QoS::AtMostOnce,
        );
        #[cfg(feature = "ota-download")]
        if let Some(d) = self.download.as_mut() {
            d.retry(dev, now);
        }
        if let Some(p) = self.ota_progress {
            let next = p.saturating_add(25);
            let sent = if next >= 100 {
                dev.report_ota(now, OtaReport::Done)
            } else {
                dev.report_ota(now, OtaReport::Ongoing { progress: next })
            };
            if sent.is_ok() || dev.ota_task_id().is_none() {
                self.ota_progress = (next < 100 && dev.ota_task_id().is_some()).then_some(next);
            }
        }
        if self.report_due {
            self.report(dev, now);
        }
        if self.ntp_due {
            self.request_ntp(dev, now);
        }
    }
}

/// The application loop: events as they come, [`Thermostat::on_tick`] every `tick`. Runs
/// forever next to the [`minimq::Runner`].
pub async fn run<M: RawMutex, const INBOX_BYTES: usize>(
    mut client: AppClient<'_, '_, M, INBOX_BYTES>,
    thermostat: &mut Thermostat,
    tick: Duration,
) -> ! {
    let mut ticker = Ticker::every(tick);
    loop {
        let woke = select(
            client.next_event(|event, dev, now| thermostat.on_event(event, dev, now)),
            ticker.next(),
        )
        .await;
        if let Either::Second(()) = woke {
            client.command(|dev, now| thermostat.on_tick(dev, now));
        }
    }
}
