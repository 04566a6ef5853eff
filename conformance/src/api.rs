//! The business side: a small REST client for `/api/v1` (S-9) that checks the S-9.1 envelope on
//! every response it reads.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use reqwest::Method;
use serde_json::Value;

use crate::check;

/// One REST response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    /// The body as text.
    pub text: String,
}

impl Resp {
    /// The envelope's `data` (`Null` when absent).
    pub fn data(&self) -> &Value {
        self.body.get("data").unwrap_or(&Value::Null)
    }

    /// Fails unless the status is one of `want`, naming the call.
    pub fn expect(&self, what: &str, want: &[u16]) -> anyhow::Result<&Self> {
        if want.contains(&self.status) {
            Ok(self)
        } else {
            Err(anyhow!(
                "{what}: HTTP {} (expected {want:?}): {}",
                self.status,
                truncate(&self.text, 300)
            ))
        }
    }
}

/// Shortens `s` for failure messages.
pub fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut end = n;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// REST client bound to one hub.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// Default time limit of one REST call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

impl Api {
    /// A client for the hub at `base` (`http://host:port`) with the admin bearer `token`.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request. `path` starts with `/`; `body` is sent as JSON text when `Some`. When
    /// `auth` the admin bearer token goes along. Bodies of `/api/v1/...` responses (except the
    /// OpenAPI document) must carry the S-9.1 envelope, else the call fails.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        auth: bool,
        limit: Duration,
    ) -> anyhow::Result<Resp> {
        let mut rb = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path))
            .timeout(limit);
        if auth {
            rb = rb.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b);
        }
        let r = rb
            .send()
            .await
            .with_context(|| format!("{method} {path}: request failed"))?;
        let status = r.status().as_u16();
        let text = r
            .text()
            .await
            .with_context(|| format!("{method} {path}: reading body"))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if path.starts_with("/api/v1/") && !path.ends_with("openapi.json") {
            check::envelope(status, &body).map_err(|e| {
                anyhow!(
                    "S-9.1 envelope of {method} {path} (HTTP {status}): {e}: {}",
                    truncate(&text, 200)
                )
            })?;
        }
        Ok(Resp { status, body, text })
    }

    /// The HTTP status of `GET path` (with the admin token when `auth`), the body unchecked:
    /// for the preflight, which must tell a refused token from a broken envelope.
    pub async fn status_of(&self, path: &str, auth: bool, limit: Duration) -> anyhow::Result<u16> {
        let mut rb = self
            .http
            .get(format!("{}{}", self.base, path))
            .timeout(limit);
        if auth {
            rb = rb.bearer_auth(&self.token);
        }
        let r = rb
            .send()
            .await
            .with_context(|| format!("GET {path}: request failed"))?;
        Ok(r.status().as_u16())
    }

    /// Authorized JSON call with the default time limit.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Resp> {
        self.send(
            method,
            path,
            body.map(|b| b.to_string()),
            true,
            CALL_TIMEOUT,
        )
        .await
    }

    /// `GET` with the token.
    pub async fn get(&self, path: &str) -> anyhow::Result<Resp> {
        self.call(Method::GET, path, None).await
    }

    /// `POST` JSON with the token.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Resp> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `PUT` JSON with the token.
    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Resp> {
        self.call(Method::PUT, path, Some(body)).await
    }

    /// `PATCH` JSON with the token.
    pub async fn patch(&self, path: &str, body: Value) -> anyhow::Result<Resp> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    /// `DELETE` with the token.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Resp> {
        self.call(Method::DELETE, path, None).await
    }
}
