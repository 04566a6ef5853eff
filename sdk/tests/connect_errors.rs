//! `Thing::connect` failures keep their cause: nothing listening, a name that does not
//! resolve, a peer that never answers, wrong credentials (the last one against the real hub in
//! `tests/shadow.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use iothub_sdk::{Backoff, ConnectError, Error, Thing, ThingOptions};

fn options(host: &str, port: u16) -> ThingOptions {
    ThingOptions::new("t-1", "secret", host, port)
        .connect_timeout(Duration::from_secs(2))
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            jitter: 0.5,
        })
}

#[tokio::test]
async fn nothing_listening_is_refused_not_a_timeout() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = Thing::connect(options("127.0.0.1", port))
        .await
        .expect_err("nothing listens");
    match &err {
        Error::Connect(ConnectError::Refused { addr, .. }) => {
            assert_eq!(addr, &format!("127.0.0.1:{port}"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!("could not connect: connection refused by 127.0.0.1:{port}")
    );
}

#[tokio::test]
async fn an_unknown_host_is_a_dns_error() {
    // `.invalid` never resolves (RFC 2606).
    let err = Thing::connect(options("no-such-hub.invalid", 1883))
        .await
        .expect_err("does not resolve");
    match err {
        Error::Connect(ConnectError::Dns { host, .. }) => assert_eq!(host, "no-such-hub.invalid"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_never_answers_is_a_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts, reads nothing, answers nothing.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let err = Thing::connect(options("127.0.0.1", port).connect_timeout(Duration::from_secs(1)))
        .await
        .expect_err("no CONNACK");
    assert!(
        matches!(err, Error::Connect(ConnectError::Timeout(_))),
        "{err:?}"
    );
    silent.abort();
}
