//! The HTTP server loop of the REST API: accept, TCP_NODELAY, read timeouts, a connection cap,
//! graceful shutdown.
//!
//! Why not `axum::serve`: it gives hyper no timer, so hyper's header-read timeout never fires
//! and a client that opens a connection and sends nothing (or half a header, or half a body)
//! holds it and its task forever; it also leaves Nagle's algorithm on. Here each connection is
//! served by hyper's HTTP/1 builder with tokio's timer:
//! - a request's head must arrive within [`HttpServerConfig::read_timeout`] (hyper also applies
//!   this to an idle keep-alive connection waiting for its next request), else the connection
//!   is closed;
//! - a request body that stalls for longer than the same timeout ends with an error answer
//!   (tower-http's `RequestBodyTimeoutLayer`; the body size limits are the router's);
//! - at most [`HttpServerConfig::max_connections`] connections are served at once; further
//!   clients wait in the listen backlog until one closes;
//! - accept errors (such as running out of file descriptors) back off with jitter instead of
//!   spinning.
//!
//! Handlers that wait on purpose (a direct method call waits for the device up to its
//! `timeout`) are not limited here: only reading from the client is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// How long in-flight requests may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Limits of the REST API's HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpServerConfig {
    /// Longest wait for a request's head, or between two pieces of a request body.
    pub read_timeout: Duration,
    /// Most HTTP connections served at once.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// (for up to 10 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: HttpServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let service = TowerToHyperService::new(
        ServiceBuilder::new()
            .layer(RequestBodyTimeoutLayer::new(config.read_timeout))
            .service(app),
    );
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.read_timeout);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut accept_failures: u32 = 0;
    tokio::pin!(shutdown);

    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => break,
            },
        };
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
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY not set on an HTTP connection");
        }
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(serve_one(connection, peer, slot));
    }

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
    _slot: tokio::sync::OwnedSemaphorePermit,
) {
    if let Err(e) = connection.await {
        // Timeouts and clients that hang up land here; they are the client's business.
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
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
