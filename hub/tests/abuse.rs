//! Connection abuse (issue 14) against the real `iothub` binary on loopback: idle sockets are
//! closed within the handshake timeout, an oversize CONNECT is cut before authentication, and
//! one address cannot hold more than its share of unauthenticated connections.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::*;

/// Whether the hub closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut buf = [0u8; 64];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("read timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).expect("tcp connect")
}

#[test]
fn idle_and_one_byte_sockets_are_closed_within_the_handshake_timeout() {
    let hub = Hub::start_args(&[
        "--handshake-timeout",
        "1",
        "--max-pending-connects-per-addr",
        "5000",
        "--max-pending-connects",
        "5000",
    ]);
    let started = Instant::now();
    let mut sockets: Vec<TcpStream> = (0..2_000).map(|_| connect(hub.mqtt)).collect();
    for s in sockets.iter_mut().step_by(2) {
        // Half send the first byte of a CONNECT and nothing more.
        s.write_all(&[0x10]).expect("one byte");
    }
    // 1 s timeout, plus the time to open them all, plus slack for a loaded machine.
    let budget = started.elapsed() + Duration::from_secs(6);
    let mut open = 0;
    for s in &mut sockets {
        if !closed_within(s, budget) {
            open += 1;
        }
    }
    assert_eq!(open, 0, "{open} of 2000 idle sockets still open");
}

#[tokio::test]
async fn an_oversize_connect_is_cut_before_authentication() {
    let hub = Hub::start_args(&["--max-connect-size", "4096"]);
    let mut s = connect(hub.mqtt);
    // CONNECT, MQTT 3.1.1, announcing 1 MiB (remaining length 0x80 0x80 0x40), then its start.
    let mut packet = vec![0x10, 0x80, 0x80, 0x40];
    packet.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60]);
    s.write_all(&packet).expect("write");
    assert!(
        closed_within(&mut s, Duration::from_secs(3)),
        "a CONNECT announcing 1 MiB was not closed"
    );
    // A normal thing still connects.
    let (_thing, _secret, client) = hub.new_thing(Proto::V311, "ok").await;
    assert!(client.closed().is_none());
}

#[tokio::test]
async fn a_thing_gets_at_most_max_subscriptions() {
    let hub = Hub::start_args(&["--max-subscriptions", "3"]);
    for proto in [Proto::V311, Proto::V5] {
        let (thing, _secret, mut client) = hub.new_thing(proto, "subcap").await;
        let base = thing_topic(&thing);
        // new_thing may already subscribe; fill up to the cap with our own filters.
        let mut codes = Vec::new();
        for i in 0..6 {
            let code = client
                .subscribe(&format!("{base}/user{i}/#"))
                .await
                .expect("suback");
            codes.push(code);
        }
        let refused = if proto == Proto::V5 { 0x97 } else { 0x80 };
        assert!(
            codes.contains(&refused),
            "{proto:?}: no refusal in {codes:?}"
        );
        let granted = codes.iter().filter(|c| **c < 0x80).count();
        assert!(granted <= 3, "{proto:?}: {granted} granted: {codes:?}");
        // Re-subscribing a filter already held is not one more.
        let first_granted = codes.iter().position(|c| *c < 0x80).expect("one granted");
        let again = client
            .subscribe(&format!("{base}/user{first_granted}/#"))
            .await
            .expect("suback");
        assert!(
            again < 0x80,
            "{proto:?}: re-subscribe refused with {again:#x}"
        );
    }
}

#[test]
fn one_address_cannot_hold_more_unauthenticated_connections_than_its_cap() {
    let hub = Hub::start_args(&["--max-pending-connects-per-addr", "8"]);
    let mut held: Vec<TcpStream> = (0..8).map(|_| connect(hub.mqtt)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = connect(hub.mqtt);
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "a 9th pending connection from one address was kept"
    );
    assert!(
        !closed_within(&mut held[0], Duration::from_millis(200)),
        "the first 8 stay within the handshake timeout"
    );
}

/// Opens `n` connections from 127.0.0.2 to `to`, each sending `first` (maybe nothing).
async fn hold(n: usize, to: SocketAddr, first: &[u8]) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind 127.0.0.2");
        let Ok(mut s) = socket.connect(to).await else {
            continue;
        };
        let _ = s.write_all(first).await;
        held.push(s);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_1024_descriptor_limit_things_and_rest_still_get_in() {
    // This process holds 2,200 sockets; give it its hard limit.
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim).expect("raise own descriptor limit");
    }
    let hub = Hub::start();
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", hub.pid()))
        .arg("--nofile=1024:1024")
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit failed");
    let mqtt_held = hold(1_100, hub.mqtt, b"").await;
    let http_held = hold(1_100, hub.http, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    assert!(
        mqtt_held.len() + http_held.len() > 2_000,
        "could not open the sockets"
    );

    let (_thing, _secret, client) = hub.new_thing(Proto::V311, "fdlimit").await;
    assert!(
        client.closed().is_none(),
        "the legitimate thing was dropped"
    );
    let (status, _, _) = hub.get_text("/healthz").await;
    assert_eq!(status, 200, "/healthz while 2,200 sockets are held");
    drop((mqtt_held, http_held));
}
