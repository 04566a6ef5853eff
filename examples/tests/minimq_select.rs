//! Cancel-safety of the `no_std` core through its minimq adapter, driven the way firmware
//! drives it: the application waits in `select(timer, client.next_event(..))` (embassy's
//! `select`, the timer first so that it wins whenever both are ready and `next_event` is
//! dropped with a message waiting), against the real `iothub` binary over TCP.
//!
//! The business side sends N deltas over REST, method calls over REST and OTA tasks as a
//! service user; the application must see every delta exactly once and in order (the versions
//! the REST answers named), answer every call from its handler (never the hub's timeout), and
//! get every OTA task.
//!
//! The same again over TLS (`TlsTransport`, D-90) through a socket that hands out at most 7 bytes
//! per read and yields before each: every TLS record arrives in many pieces, so the runner's
//! `select`s (a wake-up, minimq's keepalive deadline) drop reads in the middle of records, many
//! times; nothing may be lost or garbled.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use embassy_futures::select::{Either, select};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embedded_io_adapters::tokio_1::FromTokio;
use iothub_sdk_nostd::minimq::tls::READ_RECORD_HUB;
use iothub_sdk_nostd::minimq::{
    Client, MqttConfig, Reconnect, Resources, Runner, State, TlsConfig, TlsResources, TlsTransport,
    Transport,
};
use iothub_sdk_nostd::spec::payload::{self, field};
use iothub_sdk_nostd::{Config, Device, Event, Instant as DevInstant, OtaReport, QoS};
use serde_json::json;
use support::{Rest, STEP, dev_certs, ota, spawn_hub, spawn_tls_hub};

/// Deltas sent; a method call every `CALL_EVERY` and an OTA task every `OTA_EVERY` of them.
const DELTAS: u64 = 60;
const CALL_EVERY: u64 = 5;
const OTA_EVERY: u64 = 20;
/// The competing branch: a timer this short fires between almost every two messages.
const TICK: embassy_time::Duration = embassy_time::Duration::from_millis(1);

const SHADOWS: usize = 1;
const IN_FLIGHT: usize = 4;
const QUEUE: usize = 8;
const INBOX: usize = 2048;

/// What the application saw.
#[derive(Debug, Default)]
struct Seen {
    deltas: Vec<u64>,
    calls: u64,
    ota_tasks: Vec<String>,
    documents: u64,
    timer_wins: u64,
}

/// Counts how often the future it wraps was dropped after being polled but before it
/// completed: each is a `next_event` the timer cancelled mid-wait.
struct Tracked<'c, F: Future> {
    inner: Pin<Box<F>>,
    polled: bool,
    done: bool,
    cancelled: &'c AtomicU64,
}

impl<'c, F: Future> Tracked<'c, F> {
    fn new(inner: F, cancelled: &'c AtomicU64) -> Self {
        Tracked {
            inner: Box::pin(inner),
            polled: false,
            done: false,
            cancelled,
        }
    }
}

impl<F: Future> Future for Tracked<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.polled = true;
        let out = this.inner.as_mut().poll(cx);
        this.done = out.is_ready();
        out
    }
}

impl<F: Future> Drop for Tracked<'_, F> {
    fn drop(&mut self) {
        if self.polled && !self.done {
            self.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Tcp(SocketAddr);

impl Transport for Tcp {
    type Io<'t> = FromTokio<tokio::net::TcpStream>;
    type Error = std::io::Error;

    async fn connect(&mut self) -> Result<Self::Io<'_>, Self::Error> {
        let stream = tokio::net::TcpStream::connect(self.0).await?;
        stream.set_nodelay(true)?;
        Ok(FromTokio::new(stream))
    }
}

/// Bytes handed out per read by [`Dribble`].
const DRIBBLE: usize = 7;

/// A host socket for `TlsTransport` that hands out at most [`DRIBBLE`] bytes per read and
/// yields before each read. It follows the TLS record headers in what it hands out and counts
/// the reads dropped (cancelled) while a record was half delivered.
struct Dribble {
    addr: SocketAddr,
    stream: Option<FromTokio<tokio::net::TcpStream>>,
    /// A read is under way (set before its await, cleared after).
    reading: bool,
    /// Position in the server's byte stream: header bytes seen of the current record, and
    /// bytes of its body still to come.
    header: Vec<u8>,
    body_left: usize,
    cancelled_mid_record: Arc<AtomicU64>,
}

impl Dribble {
    fn new(addr: SocketAddr, cancelled_mid_record: Arc<AtomicU64>) -> Self {
        Dribble {
            addr,
            stream: None,
            reading: false,
            header: Vec::new(),
            body_left: 0,
            cancelled_mid_record,
        }
    }

    fn stream(&mut self) -> std::io::Result<&mut FromTokio<tokio::net::TcpStream>> {
        self.stream
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }

    /// Follows the record framing over `bytes`, handed out in order.
    fn track(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.body_left > 0 {
                self.body_left -= 1;
            } else {
                self.header.push(b);
                if self.header.len() == 5 {
                    self.body_left =
                        usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                    self.header.clear();
                }
            }
        }
    }
}

impl embedded_io_async::ErrorType for Dribble {
    type Error = std::io::Error;
}

impl embedded_io_async::Read for Dribble {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.reading && (self.body_left > 0 || !self.header.is_empty()) {
            self.cancelled_mid_record.fetch_add(1, Ordering::Relaxed);
        }
        self.reading = true;
        tokio::task::yield_now().await;
        let n = buf.len().min(DRIBBLE);
        let n = embedded_io_async::Read::read(self.stream()?, &mut buf[..n]).await?;
        self.reading = false;
        self.track(&buf[..n]);
        Ok(n)
    }
}

impl embedded_io_async::Write for Dribble {
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        embedded_io_async::Write::write(self.stream()?, buf).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        embedded_io_async::Write::flush(self.stream()?).await
    }
}

impl Reconnect for Dribble {
    type ConnectError = std::io::Error;

    async fn reconnect(&mut self) -> std::io::Result<()> {
        self.stream = None;
        (self.reading, self.body_left) = (false, 0);
        self.header.clear();
        self.stream = Some(Tcp(self.addr).connect().await?);
        Ok(())
    }
}

/// What the TLS run needs: the dev CA (DER) and the counter of [`Dribble`].
struct TlsSetup {
    ca_der: Vec<u8>,
    cancelled_mid_record: Arc<AtomicU64>,
}

type AppDevice<'a> = Device<'a, SHADOWS, IN_FLIGHT, QUEUE>;

/// The application's handlers: count, answer calls with the count, finish OTA tasks at once.
fn on_event(event: Event<'_>, dev: &mut AppDevice<'_>, now: DevInstant, seen: &Mutex<Seen>) {
    let mut seen = seen.lock().unwrap();
    match event {
        Event::Delta(d) => seen.deltas.push(d.version),
        Event::Shadow(_) => seen.documents += 1,
        Event::MethodCall(call) => {
            seen.calls += 1;
            let count = seen.calls;
            dev.respond(now, call.method, call.client_token, 200, None, Some(&count))
                .expect("respond");
        }
        Event::OtaTask(task) => {
            seen.ota_tasks.push(task.task_id.to_owned());
            dev.report_ota(now, OtaReport::Done).expect("report ota");
        }
        _ => {}
    }
}

/// The firmware-style loop: a timer competing with `next_event`, some telemetry on each tick.
async fn app(
    mut client: Client<'_, '_, NoopRawMutex, SHADOWS, IN_FLIGHT, QUEUE, INBOX>,
    seen: &Mutex<Seen>,
    stop: &AtomicBool,
    cancelled: &AtomicU64,
) {
    let mut ticks: u64 = 0;
    loop {
        let next = client.next_event(|event, dev, now| on_event(event, dev, now, seen));
        let woke = select(
            embassy_time::Timer::after(TICK),
            Tracked::new(next, cancelled),
        )
        .await;
        if let Either::First(()) = woke {
            ticks += 1;
            seen.lock().unwrap().timer_wins += 1;
            if stop.load(Ordering::Relaxed) {
                return;
            }
            if ticks.is_multiple_of(50) {
                let _ = client.command(|dev, now| {
                    dev.publish_telemetry(now, &json!({"ticks": ticks}), QoS::AtMostOnce)
                });
            }
        }
    }
}

/// Runs the device (runner and application joined in one future, as on a single-core MCU) on
/// this thread until `stop`.
fn device(
    mqtt: SocketAddr,
    thing: String,
    secret: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    cancelled: Arc<AtomicU64>,
    tls: Option<TlsSetup>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let shadows = ["default"];
        let mut config = Config::new(&thing, &shadows);
        config.methods = &["count"];
        config.token_seed = std::process::id();
        let mut tx = [0u8; 2048];
        let device: AppDevice<'_> = Device::new(config, &mut tx).unwrap();
        let state: State<'_, NoopRawMutex, SHADOWS, IN_FLIGHT, QUEUE, INBOX> = State::new(device);
        let mut resources = Resources::<4096, 8192, 2048>::new();
        let mut mqtt_config = MqttConfig::new(&thing, secret.as_bytes());
        mqtt_config.backoff_max_ms = 2_000;
        let Some(tls) = tls else {
            let (client, runner) =
                Runner::new(&state, Tcp(mqtt), resources.buffers(), mqtt_config).unwrap();
            select(runner.run(), app(client, &seen, &stop, &cancelled)).await;
            return;
        };
        // The firmware's TLS sizes: whole records of the hub (D-91) in, 1 KiB records out.
        let mut tls_buffers = TlsResources::<{ READ_RECORD_HUB }, 1024>::new();
        let config = TlsConfig {
            server_name: "localhost",
            ca_der: &tls.ca_der,
            client: None,
        };
        let transport = TlsTransport::new(
            Dribble::new(mqtt, tls.cancelled_mid_record),
            tls_buffers.buffers(),
            config,
            rand_core::OsRng,
        )
        .unwrap();
        let (client, runner) =
            Runner::new(&state, transport, resources.buffers(), mqtt_config).unwrap();
        select(runner.run(), app(client, &seen, &stop, &cancelled)).await;
    });
}

/// The reply came from the application's handler as its `n`th call (not the hub's timeout).
fn answered_by_handler(reply: &serde_json::Value, n: u64) {
    assert_eq!(reply["code"], 200, "{reply}");
    assert_eq!(reply["data"], n, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_delta_call_or_ota_task_is_lost_when_a_timer_wins_the_select() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_hub, mqtt, http) = spawn_hub(dir.path(), "127.0.0.1:0", "127.0.0.1:0");
    race(mqtt, mqtt, http, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_nothing_is_lost_when_reads_are_dropped_in_the_middle_of_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path().join("certs");
    dev_certs(&certs, &[]);
    let hub = spawn_tls_hub(dir.path(), &certs, false);
    use rustls_pki_types::pem::PemObject as _;
    let ca_der = rustls_pki_types::CertificateDer::from_pem_file(certs.join("ca.pem"))
        .expect("dev CA")
        .to_vec();
    let cancelled_mid_record = Arc::new(AtomicU64::new(0));
    let setup = TlsSetup {
        ca_der,
        cancelled_mid_record: cancelled_mid_record.clone(),
    };
    race(hub.mqtts, hub.mqtt, hub.http, Some(setup)).await;
    // The stashes really were put to the test: reads dropped with a record half delivered.
    let mid = cancelled_mid_record.load(Ordering::Relaxed);
    assert!(mid > 0, "no read was dropped in the middle of a record");
    eprintln!("reads dropped in the middle of a TLS record: {mid}");
}

/// The race of the module docs: the device on `device_mqtt` (TLS when `tls`), OTA tasks sent
/// by the service user on the plain `mqtt`.
async fn race(device_mqtt: SocketAddr, mqtt: SocketAddr, http: SocketAddr, tls: Option<TlsSetup>) {
    let rest = Rest::new(http);
    let thing = format!("fw-select-{}", std::process::id());
    let secret = rest.create_thing(&thing).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let cancelled = Arc::new(AtomicU64::new(0));
    let dev = {
        let (thing, seen, stop, c) = (thing.clone(), seen.clone(), stop.clone(), cancelled.clone());
        std::thread::spawn(move || device(device_mqtt, thing, secret, seen, stop, c, tls))
    };

    // The first answered call shows the device connected and subscribed (deltas before that
    // would legitimately come as the document instead).
    let mut calls = 1;
    answered_by_handler(&rest.invoke(&thing, "count").await, calls);
    let mut versions = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..DELTAS {
        let path = format!("/things/{thing}/shadows/default/state/desired");
        let (status, body) = rest
            .call(
                reqwest::Method::PUT,
                &path,
                Some(json!({"state": {"desired": {"n": i}}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        versions.push(body["data"][field::VERSION].as_u64().expect("version"));
        if i % CALL_EVERY == 0 {
            calls += 1;
            answered_by_handler(&rest.invoke(&thing, "count").await, calls);
        }
        if i % OTA_EVERY == 0 {
            let id = format!("task-{i}");
            let meta = payload::OtaMeta {
                version: "2.0.0",
                md5: None,
                sha256: None,
                content_type: None,
                content_length: None,
            };
            let results = ota(mqtt, &thing, &id, "http://127.0.0.1:9/fw.bin", meta).await;
            assert_eq!(
                results.last().unwrap()[field::STATUS],
                "done",
                "{results:?}"
            );
            tasks.push(id);
        }
    }

    let deadline = Instant::now() + STEP;
    while seen.lock().unwrap().deltas.len() < versions.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    dev.join().expect("device thread");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.deltas, versions, "every delta once, in order");
    assert_eq!(seen.calls, calls);
    assert_eq!(seen.ota_tasks, tasks);
    assert_eq!(seen.documents, 1, "one document, after connecting");
    // The race really was run: `next_event` was cancelled mid-wait, many times.
    let cancelled = cancelled.load(Ordering::Relaxed);
    assert!(cancelled > 0, "{seen:?}");
    eprintln!(
        "deltas {} calls {} ota tasks {} timer wins {} next_event cancelled {cancelled}",
        seen.deltas.len(),
        seen.calls,
        seen.ota_tasks.len(),
        seen.timer_wins
    );
}
