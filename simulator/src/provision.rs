//! Creating and deleting the run's things through the hub's REST API (S-9.2).

use std::time::Duration;

use anyhow::{Context, bail};
use iothub_spec::limits::MAX_BATCH_CREATE;
use serde_json::{Value, json};

/// A thing of the run and its secret.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The thingId (also client id and username).
    pub thing_id: String,
    /// Its secret.
    pub secret: String,
}

/// The admin side of the REST API.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// A client for the hub at `base` (e.g. `http://127.0.0.1:9000`).
    pub fn new(base: &str, token: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    /// Creates `things` with batch requests of at most [`MAX_BATCH_CREATE`].
    pub async fn create_things(&self, things: &[Credentials]) -> anyhow::Result<()> {
        for chunk in things.chunks(MAX_BATCH_CREATE) {
            let items: Vec<Value> = chunk
                .iter()
                .map(|c| json!({ "thingId": c.thing_id, "password": c.secret }))
                .collect();
            let body = self
                .send(
                    self.http
                        .post(self.url("/api/v1/things/batch"))
                        .json(&json!({ "things": items })),
                )
                .await?;
            let failures = count_failed_items(&body);
            if failures > 0 {
                bail!("{failures} things of a batch were not created: {body}");
            }
        }
        Ok(())
    }

    /// Deletes the run's things; missing ones are fine.
    pub async fn delete_things(&self, things: &[Credentials]) -> anyhow::Result<()> {
        for c in things {
            let url = self.url(&format!("/api/v1/things/{}", c.thing_id));
            let response = self
                .http
                .delete(url)
                .bearer_auth(&self.token)
                .send()
                .await?;
            if !(response.status().is_success()
                || response.status() == reqwest::StatusCode::NOT_FOUND)
            {
                bail!("deleting {} failed: {}", c.thing_id, response.status());
            }
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .context("hub API unreachable")?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .context("hub API answered with a non-JSON body")?;
        if !status.is_success() {
            bail!("hub API answered {status}: {body}");
        }
        Ok(body)
    }
}

/// Batch replies list one result per item; count the ones that are not 2xx.
fn count_failed_items(body: &Value) -> usize {
    let items = body
        .pointer("/data/results")
        .or_else(|| body.pointer("/data"))
        .and_then(Value::as_array);
    items
        .map(|items| {
            items
                .iter()
                .filter(|item| {
                    item.get("code")
                        .and_then(Value::as_u64)
                        .is_some_and(|c| !(200..300).contains(&c))
                })
                .count()
        })
        .unwrap_or(0)
}
