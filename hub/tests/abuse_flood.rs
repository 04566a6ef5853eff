//! Load tool (ignored; run by hand, figures in BENCHMARKS.md): legitimate connects' latency
//! with and without a wrong-password flood of 800 CONNECTs/s for 15 s.
//!
//! `cargo test --release -p iothub-hub --test abuse_flood -- --ignored --nocapture`
//!
//! The flood comes from 127.0.0.2, the legitimate thing from 127.0.0.1 (both loopback), so the
//! per-address caps apply to the attacker only, as they would on a network.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::*;

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

/// Legitimate connects, one after the other, for `for_`; their latencies.
async fn legit_latencies(hub: SocketAddr, packet: &[u8], for_: Duration) -> Vec<Duration> {
    let end = Instant::now() + for_;
    let mut out = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        let code = connect_once("127.0.0.1", hub, packet).await;
        assert_eq!(code, Some(0), "the legitimate thing was refused");
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load tool: run by hand, see BENCHMARKS.md"]
async fn wrong_password_flood_keeps_legitimate_connects_fast() {
    let hub = Hub::start();
    let secret = hub.create_thing("legit").await;
    let victim_secret = hub.create_thing("victim").await;
    assert_ne!(secret, victim_secret);
    let good = connect_packet("legit", &secret);
    let bad = connect_packet("victim", "wrong-password");

    let mut quiet = legit_latencies(hub.mqtt, &good, Duration::from_secs(15)).await;

    let flood_hub = hub.mqtt;
    let flood = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_250)); // 800/s
        let end = Instant::now() + Duration::from_secs(15);
        let mut sent = 0u64;
        while Instant::now() < end {
            tick.tick().await;
            let bad = bad.clone();
            tokio::spawn(async move { connect_once("127.0.0.2", flood_hub, &bad).await });
            sent += 1;
        }
        sent
    });
    let mut flooded = legit_latencies(hub.mqtt, &good, Duration::from_secs(15)).await;
    let sent = flood.await.expect("flood task");

    let (q50, q99) = (pct(&mut quiet, 0.5), pct(&mut quiet, 0.99));
    let (f50, f99) = (pct(&mut flooded, 0.5), pct(&mut flooded, 0.99));
    println!(
        "quiet: n={} p50={q50:?} p99={q99:?}; flood ({sent} wrong-password CONNECTs in 15 s): n={} p50={f50:?} p99={f99:?}; p99 ratio {:.2}",
        quiet.len(),
        flooded.len(),
        f99.as_secs_f64() / q99.as_secs_f64()
    );
    let log = hub.stderr();
    let summaries = log
        .lines()
        .filter(|l| l.contains("refused") && l.contains("MQTT connections in the last"))
        .count();
    println!("refusal summary lines in the hub log: {summaries}");
    assert!(f99 < Duration::from_millis(50), "p99 under flood {f99:?}");
}
