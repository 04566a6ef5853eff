//! The REST API's HTTP server against slow and greedy clients (hub/src/api/serve.rs): a client
//! that sends nothing, half a request head or half a body is let go after `--http-read-timeout`,
//! and `--max-http-connections` caps the connections served at once.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than the 1 s read timeout the tests configure: a connection still open after this
/// long was not let go.
const HELD_FOREVER: Duration = Duration::from_secs(15);

/// Reads until the hub closes the connection; returns what it sent, or `None` if the
/// connection was still open after [`HELD_FOREVER`].
async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(HELD_FOREVER, read_all).await.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_sent_heads_are_let_go() {
    let hub = Hub::start_args(&["--http-read-timeout", "1"]);

    let mut silent = TcpStream::connect(hub.http).await.expect("connect");
    let answer = read_until_closed(&mut silent).await;
    assert!(answer.is_some(), "a client that sends nothing is held open");

    let mut half = TcpStream::connect(hub.http).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut half).await;
    let answer = answer.expect("a client that sends half a head is held open");
    assert!(
        !answer.contains("200 OK"),
        "half a head was answered as a request: {answer}"
    );

    // A kept-alive connection that goes quiet after a request is let go too.
    let mut idle = TcpStream::connect(hub.http).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n")
        .await
        .expect("write");
    let answer = read_until_closed(&mut idle)
        .await
        .expect("an idle kept-alive connection is held open");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The server still serves everyone else.
    let (status, _) = hub.get("/things?pageSize=1").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_an_error_and_nothing_is_created() {
    let hub = Hub::start_args(&["--http-read-timeout", "1"]);
    let mut stream = TcpStream::connect(hub.http).await.expect("connect");
    let head = format!(
        "POST /api/v1/things HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"thingId\":\"stalled"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let answer = read_until_closed(&mut stream)
        .await
        .expect("a stalled body is held open");
    let status: u16 = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!(
        answer.is_empty() || (400..500).contains(&status),
        "a stalled body must end in a client error or a closed connection: {answer}"
    );
    let (status, _) = hub.rest_thing("stalled").await;
    assert_eq!(status, 404, "half a body created a thing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_answered_503_at_once() {
    let hub = Hub::start_args(&["--max-http-connections", "2", "--http-header-timeout", "60"]);
    let holders = [
        TcpStream::connect(hub.http).await.expect("connect"),
        TcpStream::connect(hub.http).await.expect("connect"),
    ];
    // Give the hub time to take both into its two slots.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let url = format!("http://{}/healthz", hub.http);
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    // Over the cap: an immediate 503 (or, if the client's request raced the close, a closed
    // connection), never a wait in the backlog until a holder lets go.
    let third = tokio::time::timeout(HELD_FOREVER, client.get(&url).send())
        .await
        .expect("a third connection over the cap was left waiting");
    if let Ok(resp) = third {
        assert_eq!(resp.status().as_u16(), 503, "over the cap of 2");
    }

    drop(holders);
    let status = eventually(HELD_FOREVER, || {
        let client = client.clone();
        let url = url.clone();
        async move {
            match client.get(url).send().await {
                Ok(r) if r.status().as_u16() == 200 => Some(200u16),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(status, Some(200), "the slots never freed");
}

#[test]
fn bad_limits_are_refused_at_start_up() {
    for (flag, value) in [
        ("--http-read-timeout", "0"),
        ("--http-read-timeout", "ten"),
        ("--max-http-connections", "0"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_iothub"))
            .args([flag, value])
            .output()
            .expect("run iothub");
        assert!(!out.status.success(), "{flag} {value} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}
