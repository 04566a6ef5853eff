//! Load tool (ignored; run by hand, figures in BENCHMARKS.md): a legitimate thing's connect
//! latency without a flood and under wrong-password floods of 800 CONNECTs/s for 15 s each,
//! in one run against one hub:
//!
//! 1. from one address (127.0.0.2), all for one existing thing;
//! 2. from 253 addresses (127.0.0.2 to 127.0.0.254, in turn), all for that thing: the
//!    per-address backoff and caps hardly apply, the per-thing backoff does;
//! 3. from 253 addresses, each CONNECT for another thing id: only the global caps apply.
//!
//! The hub should be a release build of the binary only (the tool itself may stay a debug
//! build: it sends 800 packets/s):
//!
//! ```sh
//! cargo build --release -p iothub-hub --bin iothub
//! IOTHUB_BIN=$PWD/target/release/iothub \
//!   cargo test -p iothub-hub --test abuse_flood -- --ignored --nocapture
//! ```
//!
//! The legitimate thing connects from 127.0.0.1 (loopback too), so the per-address caps apply
//! to the attacker only, as they would on a network.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::*;

/// Attack rate and length.
const RATE: u64 = 800;
const FLOOD: Duration = Duration::from_secs(15);

/// A raw MQTT 3.1.1 CONNECT with username = client id and a password.
fn connect_packet(id: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for field in [id, id, password] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Connects from `from`, sends `packet`, returns the CONNACK return code (None: closed).
async fn connect_once(from: &str, hub: SocketAddr, packet: &[u8]) -> Option<u8> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(format!("{from}:0").parse().ok()?).ok()?;
    let mut s: TcpStream = socket.connect(hub).await.ok()?;
    s.write_all(packet).await.ok()?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut ack))
        .await
        .ok()?
        .ok()?;
    Some(ack[3])
}

/// Legitimate connects, one after the other, for `for_`: the latencies of those accepted,
/// and how many were refused (CONNACK code, or `None` when closed without one).
async fn legit_latencies(
    hub: SocketAddr,
    packet: &[u8],
    for_: Duration,
) -> (Vec<Duration>, BTreeMap<Option<u8>, u64>) {
    let end = Instant::now() + for_;
    let mut out = Vec::new();
    let mut refused = BTreeMap::new();
    while Instant::now() < end {
        let t = Instant::now();
        match connect_once("127.0.0.1", hub, packet).await {
            Some(0) => out.push(t.elapsed()),
            code => *refused.entry(code).or_default() += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (out, refused)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::MAX;
    }
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Where the attack comes from and which thing it names.
#[derive(Clone, Copy, Debug)]
enum Attack {
    OneAddressOneThing,
    ManyAddressesOneThing,
    ManyAddressesManyThings,
}

/// What the attacker's CONNECTs got: refused with a CONNACK code, or closed without one.
#[derive(Default)]
struct Outcomes {
    sent: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
    accepted: AtomicU64,
}

/// Sends `RATE` wrong-password CONNECTs per second for `FLOOD`; waits for their answers.
async fn flood(hub: SocketAddr, victim: String, attack: Attack) -> Arc<Outcomes> {
    let out = Arc::new(Outcomes::default());
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let end = Instant::now() + FLOOD;
    let mut tasks = Vec::new();
    let mut n: u64 = 0;
    while Instant::now() < end {
        tick.tick().await;
        let from = match attack {
            Attack::OneAddressOneThing => "127.0.0.2".to_owned(),
            _ => format!("127.0.0.{}", 2 + n % 253),
        };
        let thing = match attack {
            Attack::ManyAddressesManyThings => format!("guess-{n}"),
            _ => victim.clone(),
        };
        let out = out.clone();
        tasks.push(tokio::spawn(async move {
            out.sent.fetch_add(1, Ordering::Relaxed);
            let packet = connect_packet(&thing, "wrong-password");
            let counter = match connect_once(&from, hub, &packet).await {
                Some(0) => &out.accepted,
                Some(_) => &out.refused,
                None => &out.closed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        n += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    out
}

/// `iothub_connections_refused_total` by label set, from `/metrics`.
async fn refusal_metrics(hub: &Hub) -> BTreeMap<String, u64> {
    let (_, _, text) = hub.get_text("/metrics").await;
    text.lines()
        .filter_map(|l| l.strip_prefix("iothub_connections_refused_total"))
        .filter_map(|l| {
            let (labels, n) = l.rsplit_once(' ')?;
            Some((labels.to_owned(), n.parse().ok()?))
        })
        .collect()
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{k} +{d}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU seconds (user + system) the process has used, from `/proc/{pid}/stat`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces, hence the last ')').
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// Refusal summary lines in the hub's whole log so far.
fn summary_lines(hub: &Hub) -> usize {
    let log = std::fs::read_to_string(hub.dir().join("hub-stderr.log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("refused") && l.contains("MQTT connections in the last"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load tool: run by hand, see BENCHMARKS.md"]
async fn wrong_password_floods_keep_legitimate_connects_fast() {
    let hub = match std::env::var_os("IOTHUB_BIN") {
        Some(bin) => Hub::start_bin(&PathBuf::from(bin), &[]),
        None => Hub::start(),
    };
    println!(
        "hub binary: {}",
        std::env::var("IOTHUB_BIN").unwrap_or_else(|_| "the test build's (debug)".into())
    );
    let secret = hub.create_thing("legit").await;
    hub.create_thing("victim").await;
    let good = connect_packet("legit", &secret);

    let cpu = cpu_secs(hub.pid());
    let t = Instant::now();
    let (mut quiet, refused) = legit_latencies(hub.mqtt, &good, FLOOD).await;
    assert!(refused.is_empty(), "refused without a flood: {refused:?}");
    let quiet_cores = (cpu_secs(hub.pid()) - cpu) / t.elapsed().as_secs_f64();
    let (q50, q99) = (pct(&mut quiet, 0.5), pct(&mut quiet, 0.99));
    println!(
        "no flood: {} connects, p50 {q50:?}, p99 {q99:?}; hub {quiet_cores:.2} cores",
        quiet.len()
    );

    let mut worst = Duration::ZERO;
    let mut legit_failures = 0;
    for attack in [
        Attack::OneAddressOneThing,
        Attack::ManyAddressesOneThing,
        Attack::ManyAddressesManyThings,
    ] {
        let metrics = refusal_metrics(&hub).await;
        let summaries = summary_lines(&hub);
        let cpu = cpu_secs(hub.pid());
        let t = Instant::now();
        let attacker = tokio::spawn(flood(hub.mqtt, "victim".into(), attack));
        let (mut flooded, legit_refused) = legit_latencies(hub.mqtt, &good, FLOOD).await;
        let cores = (cpu_secs(hub.pid()) - cpu) / t.elapsed().as_secs_f64();
        let out = attacker.await.expect("flood task");
        // Let the 10 s summary of the flood's last refusals be written.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let (f50, f99) = (pct(&mut flooded, 0.5), pct(&mut flooded, 0.99));
        worst = worst.max(f99);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        println!(
            "{attack:?}: {} wrong-password CONNECTs in {FLOOD:?} ({} refused by CONNACK, {} \
             closed without one, {} accepted); legitimate: {} connects ({legit_refused:?} \
             refused: code or None for closed), p50 {f50:?}, p99 \
             {f99:?}, p99 ratio to no flood {:.2}; hub {cores:.2} cores; /metrics: {}; refusal \
             summary lines in the log: {}",
            get(&out.sent),
            get(&out.refused),
            get(&out.closed),
            get(&out.accepted),
            flooded.len(),
            f99.as_secs_f64() / q99.as_secs_f64(),
            delta(&metrics, &refusal_metrics(&hub).await),
            summary_lines(&hub) - summaries,
        );
        assert_eq!(get(&out.accepted), 0, "a wrong password was accepted");
        legit_failures += legit_refused.values().sum::<u64>();
    }
    let log = hub.stderr();
    assert!(
        !log.lines().any(|l| l.contains("CONNECT refused")),
        "refusals are logged one by one at info"
    );
    assert_eq!(
        legit_failures, 0,
        "legitimate connects refused under a flood"
    );
    assert!(
        worst < Duration::from_millis(50),
        "p99 under a flood {worst:?}"
    );
}
