//! The admin CLI's HTTP client: the REST API's envelope (S-9.1) in, a typed failure with its
//! exit code out.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::exit::Outcome;
use iothub_hub::api::schema::Envelope;

/// The environment variable holding the admin token (never a flag: flags show up in `ps`).
pub const TOKEN_ENV: &str = "IOTHUB_TOKEN";
/// How long a REST call may take when the command sets no longer limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the hub is and how to print, shared by every admin command.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Base URL of the hub's REST API.
    #[arg(
        long,
        global = true,
        env = "IOTHUB_URL",
        default_value = "http://127.0.0.1:9000"
    )]
    pub url: String,
    /// Print the answer's data as JSON (for scripts) instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Why a command failed, and its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code it maps to.
    pub outcome: Outcome,
    /// What to tell the user.
    pub message: String,
}

impl Failure {
    /// A failure with `outcome`.
    pub fn new(outcome: Outcome, message: impl Into<String>) -> Failure {
        Failure {
            outcome,
            message: message.into(),
        }
    }
}

/// A REST client of one hub with the admin token.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client of `remote.url` with the token from [`TOKEN_ENV`].
    pub fn new(remote: &Remote) -> Result<Client, Failure> {
        let token = std::env::var(TOKEN_ENV).unwrap_or_default();
        if token.is_empty() {
            return Err(Failure::new(
                Outcome::Unauthorized,
                format!("set {TOKEN_ENV} to the hub's admin token"),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Failure::new(Outcome::Failure, format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            base: remote.url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// `METHOD /api/v1{path}` with an optional JSON body and query; the envelope's `data` on a
    /// 2xx answer, the envelope's message and status as a [`Failure`] otherwise.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&(impl Serialize + ?Sized)>,
        timeout: Duration,
    ) -> Result<Value, Failure> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .timeout(timeout)
            .query(query);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| {
            let outcome = if e.is_timeout() {
                Outcome::Timeout
            } else {
                Outcome::Unavailable
            };
            Failure::new(outcome, format!("{url}: {e}"))
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| {
            Failure::new(
                Outcome::Unavailable,
                format!("{url}: reading the answer: {e}"),
            )
        })?;
        let envelope: Envelope<Value> = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::new(
                Outcome::of_status(status),
                format!("{url}: HTTP {status}, not an iothub answer ({e})"),
            )
        })?;
        if (200..300).contains(&status) {
            Ok(envelope.data.unwrap_or(Value::Null))
        } else {
            Err(Failure::new(
                Outcome::of_status(status),
                format!("{} (HTTP {status})", envelope.message),
            ))
        }
    }
}

/// `s` as one URL path segment (thing ids and names are plain, but nothing is assumed).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:$".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
