//! The HTTP server loop of the REST API: accept, TCP_NODELAY, deadlines, connection caps,
//! graceful shutdown.
//!
//! Why not `axum::serve`: it gives hyper no timer, so hyper's header-read timeout never fires
//! and a client that opens a connection and sends nothing (or half a header, or half a body)
//! holds it and its task forever; it also leaves Nagle's algorithm on. Here each connection is
//! served by hyper's HTTP/1 builder with tokio's timer:
//! - a request's head must arrive within [`HttpServerConfig::header_timeout`] (hyper also
//!   applies this to an idle keep-alive connection waiting for its next request), else the
//!   connection is closed;
//! - a request body must be complete within [`HttpServerConfig::request_timeout`] of its head
//!   ([`deadline`]), and may not stall for longer than [`HttpServerConfig::read_timeout`]
//!   between two pieces (tower-http's `RequestBodyTimeoutLayer`); either ends with an error
//!   answer (the body size limits are the router's);
//! - at most [`HttpServerConfig::max_connections`] connections are served at once, and at
//!   most [`HttpServerConfig::max_connections_per_addr`] from one address. A connection over
//!   a cap is answered 503 at once and closed: queueing it (in the listen backlog) would make
//!   every client, `/healthz` included, wait behind whoever holds the slots (issue 14);
//! - accept errors (such as running out of file descriptors) back off with jitter instead of
//!   spinning;
//! - with `--https` (D-70) each connection's TLS handshake runs in the connection's own task
//!   and must end within the header timeout, so a slow handshake holds neither the accept loop
//!   nor more than its own slot; a connection over a cap is closed without the 503 (the answer
//!   would have to be encrypted, and the handshake is the work the cap avoids).
//!
//! Handlers that wait on purpose (a direct method call waits for the device up to its
//! `timeout`) are not limited here: only reading from the client is.

pub mod deadline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::guard::limiter::{ConnLimiter, ConnPermit};
use crate::guard::refusals::RefusalLog;
use deadline::DeadlineBody;

/// How long in-flight requests may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Limits of the REST API's HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpServerConfig {
    /// Longest wait for a request's head (or for the next request on a kept-alive connection).
    pub header_timeout: Duration,
    /// Longest wait between two pieces of a request body.
    pub read_timeout: Duration,
    /// Longest time from a request's head to the end of its body.
    pub request_timeout: Duration,
    /// Most HTTP connections served at once.
    pub max_connections: usize,
    /// Most HTTP connections served at once from one IP address.
    pub max_connections_per_addr: usize,
}

/// How often refused HTTP connections are summarized in the log.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// (for up to 10 s). Connections refused at accept are counted in `refusals`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    config: HttpServerConfig,
    refusals: Arc<RefusalLog>,
    shutdown: impl Future<Output = ()>,
) {
    let request_timeout = config.request_timeout;
    let service = TowerToHyperService::new(
        ServiceBuilder::new()
            .map_request(move |req: hyper::Request<_>| {
                let deadline = tokio::time::Instant::now() + request_timeout;
                req.map(|body| DeadlineBody::new(body, deadline))
            })
            .layer(RequestBodyTimeoutLayer::new(config.read_timeout))
            .service(app),
    );
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let graceful = GracefulShutdown::new();
    let slots = ConnLimiter::new(
        config.max_connections.max(1),
        Some(config.max_connections_per_addr.max(1)),
    );
    let reporter = refusals.clone().spawn_reporter(REFUSAL_LOG_EVERY);
    let mut accept_failures: u32 = 0;
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_failures = 0;
                    accepted
                }
                Err(e) => {
                    accept_failures = accept_failures.saturating_add(1);
                    let pause = accept_backoff(accept_failures);
                    tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "HTTP accept failed");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        let slot = match slots.try_acquire(peer.ip()) {
            Ok(slot) => slot,
            Err(e) => {
                refusals.record(Some(peer.ip()), e.label());
                if tls.is_none() {
                    refuse(&stream);
                }
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set on an HTTP connection");
        }
        match &tls {
            None => {
                let connection =
                    graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
                tokio::spawn(serve_one(connection, peer, slot));
            }
            Some(acceptor) => {
                let (acceptor, http, service) = (acceptor.clone(), http.clone(), service.clone());
                let watcher = graceful.watcher();
                let handshake_limit = config.header_timeout;
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        handshake_limit,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "HTTPS handshake timed out");
                            return;
                        }
                    };
                    let connection =
                        watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                    serve_one(connection, peer, slot).await;
                });
            }
        }
    }

    reporter.abort();
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still running after the shutdown grace period; dropped");
    }
}

async fn serve_one(
    connection: impl Future<Output = Result<(), hyper::Error>>,
    peer: SocketAddr,
    _slot: ConnPermit,
) {
    if let Err(e) = connection.await {
        // Timeouts and clients that hang up land here; they are the client's business.
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// Answers a connection over a cap with 503 and lets it close (when `stream` is dropped).
///
/// A fresh socket's send buffer is empty, so the answer is written without waiting; if it
/// does not fit, the client just sees the connection close, which is an answer too.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(over_capacity_response());
}

/// The 503 answer to a connection over a cap, in the API's envelope (S-9.1).
fn over_capacity_response() -> &'static [u8] {
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    RESPONSE.get_or_init(|| {
        let body = serde_json::to_string(&iothub_spec::payload::ApiResponse {
            code: 503,
            message: "too many connections; retry later",
            data: None::<()>,
        })
        .unwrap_or_default();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

/// 10 ms doubling to 1 s, with up to 50 % jitter so that many failing loops do not retry in step.
fn accept_backoff(failures: u32) -> Duration {
    let base_ms = 10u64.saturating_mul(1u64 << failures.min(7)).min(1_000);
    let jitter_ms = rand::thread_rng().gen_range(0..=base_ms / 2);
    Duration::from_millis(base_ms + jitter_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_grows_and_is_capped() {
        for failures in 1..40 {
            let pause = accept_backoff(failures);
            let base = (10u64 << failures.min(7)).min(1_000);
            assert!(
                pause >= Duration::from_millis(base),
                "{failures}: {pause:?}"
            );
            assert!(
                pause <= Duration::from_millis(base * 3 / 2),
                "{failures}: {pause:?}"
            );
        }
        assert!(accept_backoff(1) < Duration::from_millis(40));
        assert!(accept_backoff(30) >= Duration::from_secs(1));
    }
}
