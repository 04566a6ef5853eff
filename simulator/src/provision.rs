//! The hub's REST API as the simulator uses it: creating and deleting the run's things
//! (S-9.2) or, in a first-boot run, its enrollment (D-46), and the business side's desired
//! changes (S-9.3), method calls (S-9.5), OTA jobs (S-9.6), configurations (S-11) and fleet
//! jobs (S-12).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use iothub_spec::ids::DEFAULT_SHADOW;
use iothub_spec::limits::MAX_BATCH_CREATE;
use iothub_spec::payload::{ApiResponse, ShadowState, UpdateRequest, field};
use serde::Serialize;
use serde_json::{Value, json};

/// How a business-side REST call ended, when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The hub answered with an HTTP error status.
    #[error("http {0}")]
    Status(u16),
    /// The request failed before an answer (connect, timeout, body).
    #[error("transport: {0}")]
    Transport(&'static str),
}

impl CallError {
    fn from_reqwest(e: &reqwest::Error) -> CallError {
        CallError::Transport(if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else if e.is_decode() || e.is_body() {
            "body"
        } else {
            "request"
        })
    }
}

/// The device's part of a method call's REST answer (`data` of the S-9.1 envelope).
#[derive(Debug, Default, serde::Deserialize)]
struct MethodOutcome {
    code: u16,
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

    /// The hub's version as its OpenAPI document states it (`info.version`; no token needed),
    /// `None` when the hub does not say.
    pub async fn hub_version(&self) -> Option<String> {
        let doc: Value = self
            .http
            .get(self.url("/api/v1/openapi.json"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        doc.pointer("/info/version")?.as_str().map(str::to_owned)
    }

    /// Creates the things `ids`, each with `tags`, with batch requests of at most
    /// [`MAX_BATCH_CREATE`], letting the hub generate their secrets, and returns the secrets in
    /// the order of `ids`.
    pub async fn create_things(
        &self,
        ids: &[String],
        tags: &Value,
    ) -> anyhow::Result<Vec<Box<str>>> {
        let mut secrets = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_BATCH_CREATE) {
            let items: Vec<Value> = chunk
                .iter()
                .map(|id| json!({ "thingId": id, (field::TAGS): tags }))
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
            let results = body
                .pointer("/data/results")
                .or_else(|| body.pointer("/data"))
                .and_then(Value::as_array)
                .context("batch create answered without results")?;
            for (id, result) in chunk.iter().zip(results) {
                let secret = result
                    .pointer("/data/password")
                    .and_then(Value::as_str)
                    .with_context(|| format!("no secret returned for {id}"))?;
                secrets.push(secret.into());
            }
            if results.len() != chunk.len() {
                bail!(
                    "batch create answered {} results for {} things",
                    results.len(),
                    chunk.len()
                );
            }
        }
        Ok(secrets)
    }

    /// Creates the enrollment `id` of a first-boot run (D-46) and returns its claim secret
    /// (shown this once). Its id rule is `prefix` with `prefix` (the things ask for their ids)
    /// and its template tags every thing with `tags` (the hub adds `serial` and `enrollment`).
    pub async fn create_enrollment(
        &self,
        id: &str,
        prefix: &str,
        tags: Value,
    ) -> anyhow::Result<String> {
        let body = json!({
            "enrollmentId": id,
            "template": { (field::TAGS): tags },
            "idRule": { "kind": "prefix", "value": prefix },
        });
        let answer = self
            .send(self.http.post(self.url("/api/v1/enrollments")).json(&body))
            .await
            .with_context(|| {
                format!("creating enrollment {id} (delete it, or choose population.enrollment)")
            })?;
        answer
            .pointer("/data/claimSecret")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("enrollment {id} created without a claim secret"))
    }

    /// Deletes the enrollment `id` (its things stay, D-46); a missing one is fine.
    pub async fn delete_enrollment(&self, id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(self.url(&format!("/api/v1/enrollments/{id}")))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = response.status();
        if !(status.is_success() || status == reqwest::StatusCode::NOT_FOUND) {
            bail!("deleting enrollment {id} failed: {status}");
        }
        Ok(())
    }

    /// Deletes the run's things; missing ones are fine.
    pub async fn delete_things(&self, ids: &[String]) -> anyhow::Result<()> {
        for id in ids {
            let url = self.url(&format!("/api/v1/things/{id}"));
            let response = self
                .http
                .delete(url)
                .bearer_auth(&self.token)
                .send()
                .await?;
            if !(response.status().is_success()
                || response.status() == reqwest::StatusCode::NOT_FOUND)
            {
                bail!("deleting {id} failed: {}", response.status());
            }
        }
        Ok(())
    }

    /// Sets `desired` on the thing's classic shadow (`PUT .../state/desired`, S-9.3).
    pub async fn put_desired<D: Serialize>(
        &self,
        thing_id: &str,
        desired: &D,
    ) -> Result<(), CallError> {
        let body = UpdateRequest {
            state: ShadowState::<&D, (), ()> {
                desired: Some(desired),
                reported: None,
                delta: None,
            },
            client_token: None,
            version: None,
        };
        let url = self.url(&format!(
            "/api/v1/things/{thing_id}/shadows/{DEFAULT_SHADOW}/state/desired"
        ));
        let response = self
            .http
            .put(url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(&e))?;
        let status = response.status();
        // Read the body so the connection goes back to the pool.
        let _ = response.bytes().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(CallError::Status(status.as_u16()))
        }
    }

    /// Calls a direct method (S-9.5) and returns the device's code.
    pub async fn call_method(
        &self,
        thing_id: &str,
        method: &str,
        data: Value,
        timeout_s: u32,
    ) -> Result<u16, CallError> {
        let url = self.url(&format!("/api/v1/things/{thing_id}/methods/{method}"));
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .json(&json!({ (field::DATA): data, "timeout": timeout_s }))
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(&e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::from_reqwest(&e))?;
        if !status.is_success() {
            return Err(CallError::Status(status.as_u16()));
        }
        let envelope: ApiResponse<'_, MethodOutcome> =
            serde_json::from_slice(&body).map_err(|_| CallError::Transport("body"))?;
        envelope
            .data
            .map(|d| d.code)
            .ok_or(CallError::Transport("body"))
    }

    /// Creates an OTA job for `thing_ids` (S-9.6) and returns its id.
    pub async fn create_ota_job(
        &self,
        thing_ids: &[String],
        version: &str,
        max_per_minute: u32,
    ) -> Result<String, CallError> {
        let body = json!({
            "targets": { "thingIds": thing_ids },
            "task": {
                "type": "app",
                "meta": { "version": version },
                "fileUrl": "http://firmware.invalid/sim.bin",
            },
            "maxPerMinute": max_per_minute,
            "timeoutMinutes": 1,
        });
        let v = self
            .call(self.http.post(self.url("/api/v1/ota/jobs")).json(&body))
            .await?;
        v.pointer("/data/jobId")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(CallError::Transport("body"))
    }

    /// An OTA job's task counts per state, once every task has ended; `None` while running.
    pub async fn ota_job_counts(
        &self,
        job_id: &str,
    ) -> Result<Option<Vec<(String, u64)>>, CallError> {
        let v = self
            .call(
                self.http
                    .get(self.url(&format!("/api/v1/ota/jobs/{job_id}"))),
            )
            .await?;
        let data = v.get(field::DATA).ok_or(CallError::Transport("body"))?;
        let progress = data.get("progress").and_then(Value::as_f64).unwrap_or(0.0);
        if progress < 100.0 {
            return Ok(None);
        }
        let counts = data
            .get("counts")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
                    .filter(|(_, n)| *n > 0)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(counts))
    }

    /// Creates a configuration (S-11.1) from its JSON `body`.
    pub async fn create_configuration(&self, body: &Value) -> Result<(), CallError> {
        self.call(
            self.http
                .post(self.url("/api/v1/configurations"))
                .json(body),
        )
        .await
        .map(|_| ())
    }

    /// The counts of configuration `name` (S-11.2) by status: `targeted`, `applied`,
    /// `succeeded`, `failed`, `pending`.
    pub async fn configuration_counts(
        &self,
        name: &str,
    ) -> Result<BTreeMap<String, u64>, CallError> {
        let v = self
            .call(
                self.http
                    .get(self.url(&format!("/api/v1/configurations/{name}"))),
            )
            .await?;
        let counts = v
            .pointer("/data/counts")
            .and_then(Value::as_object)
            .ok_or(CallError::Transport("body"))?;
        Ok(counts
            .iter()
            .filter_map(|(k, n)| Some((k.clone(), n.as_u64()?)))
            .collect())
    }

    /// Deletes configuration `name`; a missing one is fine.
    pub async fn delete_configuration(&self, name: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(self.url(&format!("/api/v1/configurations/{name}")))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = response.status();
        if !(status.is_success() || status == reqwest::StatusCode::NOT_FOUND) {
            bail!("deleting configuration {name} failed: {status}");
        }
        Ok(())
    }

    /// Creates a fleet job (S-12.1) from its JSON `body`; returns the job with its counts.
    pub async fn create_job(&self, body: &Value) -> Result<FleetJob, CallError> {
        let v = self
            .call(self.http.post(self.url("/api/v1/jobs")).json(body))
            .await?;
        data_of(v)
    }

    /// Fleet job `id` with its counts.
    pub async fn job(&self, id: &str) -> Result<FleetJob, CallError> {
        let v = self
            .call(self.http.get(self.url(&format!("/api/v1/jobs/{id}"))))
            .await?;
        data_of(v)
    }

    /// Cancels fleet job `id` (S-12.2); one that has ended already (409) is fine.
    pub async fn cancel_job(&self, id: &str) -> Result<(), CallError> {
        match self
            .call(
                self.http
                    .post(self.url(&format!("/api/v1/jobs/{id}/cancel"))),
            )
            .await
        {
            Ok(_) | Err(CallError::Status(409)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Page `page_index` (from 0, of `page_size` up to 1,000, D-26) of fleet job `id`'s
    /// per-thing records (S-12.3), with the total number of records.
    pub async fn job_things(
        &self,
        id: &str,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<JobThing>), CallError> {
        #[derive(serde::Deserialize)]
        struct Page {
            total: u64,
            content: Vec<JobThing>,
        }
        let v = self
            .call(self.http.get(self.url(&format!(
                "/api/v1/jobs/{id}/things?pageIndex={page_index}&pageSize={page_size}"
            ))))
            .await?;
        let page: Page = data_of(v)?;
        Ok((page.total, page.content))
    }

    /// A request with the token; the JSON body of a 2xx answer.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, CallError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| CallError::from_reqwest(&e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| CallError::from_reqwest(&e))?;
        if !status.is_success() {
            return Err(CallError::Status(status.as_u16()));
        }
        serde_json::from_slice(&body).map_err(|_| CallError::Transport("body"))
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

/// A fleet job as the REST API shows it (S-12.1), the fields the simulator reads.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetJob {
    /// Its id.
    pub job_id: String,
    /// `scheduled`, `running`, `completed` or `canceled`.
    pub status: String,
    /// Number of targeted things.
    pub things: u64,
    /// Things per state (S-12.3).
    pub counts: BTreeMap<String, u64>,
    /// When it starts (or started), ms since the Unix epoch.
    pub start_at: u64,
    /// When it was created, ms.
    pub created_at: u64,
    /// When it ended, ms.
    pub ended_at: Option<u64>,
}

impl FleetJob {
    /// Whether the job has ended (completed or canceled).
    pub fn ended(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "canceled")
    }
}

/// One thing's record in a fleet job (S-12.3), the fields the simulator reads.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobThing {
    /// `queued`, `in_progress`, `succeeded`, `failed`, `timed_out` or `canceled`.
    pub status: String,
    /// First attempt, ms since the Unix epoch.
    pub started_at: Option<u64>,
    /// Reached its final state, ms.
    pub ended_at: Option<u64>,
}

/// The `data` of an S-9.1 envelope as `T`.
fn data_of<T: serde::de::DeserializeOwned>(mut v: Value) -> Result<T, CallError> {
    let data = v
        .get_mut(field::DATA)
        .map(Value::take)
        .ok_or(CallError::Transport("body"))?;
    serde_json::from_value(data).map_err(|_| CallError::Transport("body"))
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
