//! [`HttpForward`]: POSTs each message as JSON to a URL, retrying with backoff and jitter.

use std::sync::Arc;
use std::time::Duration;

use super::{Handler, HandlerError, Message, random_unit};
use crate::Backoff;

/// Why a message could not be forwarded over HTTP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpForwardError {
    /// The HTTP client could not be built (its TLS backend did not initialise).
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The endpoint answered with a status retrying does not change (a 4xx other than 408
    /// and 429).
    #[error("{url} answered {status}")]
    Refused {
        /// The endpoint.
        url: String,
        /// Its answer.
        status: u16,
    },
    /// Every attempt failed; the last failure.
    #[error("{url}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// The endpoint.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// What the last attempt got: a status or a transport error.
        last: String,
    },
}

/// A handler that POSTs each message to `url` as one JSON record ([`Message::to_record`],
/// `Content-Type: application/json`). Any 2xx is success. A transport error, a timeout, a 5xx,
/// 408 or 429 is retried after a backoff with jitter ([`Backoff`]), up to
/// [`HttpForward::attempts`] attempts in all; any other status fails at once.
///
/// Retries hold up the handler's queue (messages stay in order); size
/// [`ReceiverOptions::queue`](super::ReceiverOptions::queue) for the longest outage the
/// endpoint may have.
pub struct HttpForward {
    client: reqwest::Client,
    url: String,
    attempts: u32,
    backoff: Backoff,
}

impl HttpForward {
    /// Forwards to `url`: 5 s per attempt, 5 attempts, backoff from 200 ms up to 5 s with half
    /// of it random. Fails only if the HTTP client cannot be built.
    pub fn new(url: impl Into<String>) -> Result<HttpForward, HttpForwardError> {
        let timeout = Duration::from_secs(5);
        Ok(HttpForward {
            client: client(timeout)?,
            url: url.into(),
            attempts: 5,
            backoff: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
                jitter: 0.5,
            },
        })
    }

    /// The time limit of one attempt, connection included.
    pub fn timeout(mut self, timeout: Duration) -> Result<HttpForward, HttpForwardError> {
        self.client = client(timeout)?;
        Ok(self)
    }

    /// How many attempts a message gets in all (at least 1).
    pub fn attempts(mut self, attempts: u32) -> HttpForward {
        self.attempts = attempts.max(1);
        self
    }

    /// The pause between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> HttpForward {
        self.backoff = backoff;
        self
    }

    async fn post(&self, body: &[u8]) -> Result<(), HttpForwardError> {
        let mut last = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff.delay(attempt - 1, random_unit())).await;
            }
            let sent = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status().as_u16();
                    if !(status >= 500 || status == 408 || status == 429) {
                        return Err(HttpForwardError::Refused {
                            url: self.url.clone(),
                            status,
                        });
                    }
                    last = format!("HTTP {status}");
                }
                Err(e) => last = error_chain(&e),
            }
            tracing::debug!(url = %self.url, attempt, %last, "http forward: retrying");
        }
        Err(HttpForwardError::GaveUp {
            url: self.url.clone(),
            attempts: self.attempts,
            last,
        })
    }
}

fn client(timeout: Duration) -> Result<reqwest::Client, HttpForwardError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(HttpForwardError::Client)
}

/// An error and its causes on one line (reqwest's own message names only the outer layer).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

impl Handler for HttpForward {
    fn name(&self) -> &str {
        "http-forward"
    }

    async fn handle(&self, msg: Arc<Message>) -> Result<(), HandlerError> {
        let body = serde_json::to_vec(&msg.to_record())?;
        Ok(self.post(&body).await?)
    }
}
