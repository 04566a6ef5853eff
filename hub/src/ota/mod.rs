//! OTA jobs (S-7.3, S-9.6): roll a task (S-7.1) out to many things at a bounded rate, follow
//! each thing's results (S-7.2), time tasks out, retry, cancel, and survive restarts.
//!
//! [`OtaService`] is the handle the REST API, the router and the broker hooks use. One task, the
//! engine (`engine.rs`), owns the state of running jobs and is the only writer of task rows, so
//! results, timeouts, cancels and sends for one task never race. Every change is stored before
//! anything is published ([`crate::store::ota`]), and the REST API reads counts from the store,
//! so a crash loses nothing that was shown. [`machine`] holds the transition rules, `rate.rs`
//! the pacing (pure, virtual-time tested) and `wire.rs` the S-7 payloads.
//!
//! # Decisions
//! Where S-7 is silent, the engine follows docs/spec.md D-20 (task ids and tokens: a retry is a
//! new `taskId`), D-21 (pacing, and resending `sent` tasks on subscribe), D-22 (timeouts and
//! retries) and D-23 (refused results are logged with their reason and change nothing).

mod engine;
pub mod machine;
pub(crate) mod rate;
mod wire;

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use iothub_spec::code::OtaTaskState;
use iothub_spec::ids::{MAX_ID_LEN, is_valid_thing_id};
use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::bus::Bus;
use crate::cluster::Ownership;
use crate::query::ThingQuery;
use crate::store::ota::{
    NewOtaJob, OtaJobRecord, OtaJobSettings, OtaJobStatus, OtaStore, OtaTaskRecord, OtaTemplate,
    OtaTransition,
};
use crate::store::{SharedStore, StoreError};

use engine::Cmd;

/// Most things one job may target.
pub const MAX_JOB_THINGS: usize = 100_000;
/// Default `maxPerMinute`.
pub const DEFAULT_MAX_PER_MINUTE: u32 = 1000;
/// Largest `maxPerMinute`.
pub const MAX_MAX_PER_MINUTE: u32 = 1_000_000;
/// Default per-task timeout (60 minutes).
pub const DEFAULT_TIMEOUT_MS: u64 = 60 * 60 * 1000;
/// Longest per-task timeout (7 days).
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Most retries per task.
pub const MAX_RETRIES: u32 = 10;
/// Longest `fileUrl`.
pub const MAX_URL_LEN: usize = 2048;
/// Longest `type`, `meta.version` and `meta.content-type`.
pub const MAX_FIELD_LEN: usize = 128;
/// Commands waiting for the engine; senders wait when it is full.
const QUEUE: usize = 8192;

/// Why an OTA request failed; [`OtaError::status`] is its REST status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OtaError {
    /// The request is invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// No job with this id (404).
    #[error("no such job")]
    NoSuchJob,
    /// The job has no task for this thing (404).
    #[error("no such task")]
    NoSuchTask,
    /// The job or task has ended already (409).
    #[error("{0} has ended already")]
    Ended(&'static str),
    /// Storage or the engine is unavailable (503).
    #[error("ota unavailable: {0}")]
    Unavailable(String),
}

impl OtaError {
    /// The REST status of this error.
    pub fn status(&self) -> u16 {
        match self {
            OtaError::Invalid(_) => 400,
            OtaError::NoSuchJob | OtaError::NoSuchTask => 404,
            OtaError::Ended(_) => 409,
            OtaError::Unavailable(_) => 503,
        }
    }
}

impl From<StoreError> for OtaError {
    fn from(e: StoreError) -> Self {
        OtaError::Unavailable(e.to_string())
    }
}

/// Which things a job targets (S-9.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// These things (duplicates are dropped; each must exist).
    Things(Vec<String>),
    /// The things an S-9.4 query matches when the job is created.
    Query(String),
}

/// A job to create (`POST /ota/jobs`).
#[derive(Debug, Clone)]
pub struct CreateJob {
    /// The things.
    pub targets: Targets,
    /// The task.
    pub template: OtaTemplate,
    /// Default [`DEFAULT_MAX_PER_MINUTE`].
    pub max_per_minute: Option<u32>,
    /// Default [`DEFAULT_TIMEOUT_MS`].
    pub timeout_ms: Option<u64>,
    /// Default 0.
    pub retries: Option<u32>,
}

/// `taskId` of an attempt (see the module docs).
pub fn task_id(job_id: &str, attempt: u32) -> String {
    format!("{job_id}-{attempt}")
}

/// A fresh `clientToken` (16 hex digits).
pub fn client_token() -> String {
    format!("{:016x}", rand::thread_rng().r#gen::<u64>())
}

fn new_job_id() -> String {
    format!("{:016x}", rand::thread_rng().r#gen::<u64>())
}

/// Whether `s` could be a job id (16 lowercase hex digits); anything else is a 404 unseen.
pub fn is_job_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_text(name: &str, value: &str, max: usize) -> Result<(), OtaError> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(OtaError::Invalid(format!(
            "{name} must be 1 to {max} bytes without control characters"
        )));
    }
    Ok(())
}

/// Validates the task of a job (S-7.1).
pub fn validate_template(t: &OtaTemplate) -> Result<(), OtaError> {
    check_text("task.type", &t.task_type, MAX_FIELD_LEN)?;
    check_text("task.meta.version", &t.version, MAX_FIELD_LEN)?;
    check_text("task.fileUrl", &t.file_url, MAX_URL_LEN)?;
    if !t.file_url.contains("://") || t.file_url.contains(char::is_whitespace) {
        return Err(OtaError::Invalid(
            "task.fileUrl must be an absolute URL (scheme://...)".into(),
        ));
    }
    if let Some(ct) = &t.content_type {
        check_text("task.meta.content-type", ct, MAX_FIELD_LEN)?;
    }
    if t.md5.as_deref().is_some_and(|m| !is_hex(m, 32)) {
        return Err(OtaError::Invalid(
            "task.meta.md5 must be 32 hex digits".into(),
        ));
    }
    if t.sha256.as_deref().is_some_and(|m| !is_hex(m, 64)) {
        return Err(OtaError::Invalid(
            "task.meta.sha256 must be 64 hex digits".into(),
        ));
    }
    Ok(())
}

fn settings(req: &CreateJob) -> Result<OtaJobSettings, OtaError> {
    let max_per_minute = req.max_per_minute.unwrap_or(DEFAULT_MAX_PER_MINUTE);
    if !(1..=MAX_MAX_PER_MINUTE).contains(&max_per_minute) {
        return Err(OtaError::Invalid(format!(
            "maxPerMinute must be 1 to {MAX_MAX_PER_MINUTE}"
        )));
    }
    let timeout_ms = req.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1_000..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(OtaError::Invalid(
            "timeoutMinutes must be at least 1 second and at most 7 days".into(),
        ));
    }
    let retries = req.retries.unwrap_or(0);
    if retries > MAX_RETRIES {
        return Err(OtaError::Invalid(format!(
            "retries must be 0 to {MAX_RETRIES}"
        )));
    }
    Ok(OtaJobSettings {
        max_per_minute,
        timeout_ms,
        retries,
    })
}

/// The OTA job service; cheap to clone.
#[derive(Clone)]
pub struct OtaService {
    tx: mpsc::Sender<Cmd>,
    store: SharedStore,
    leader: Arc<Ownership>,
}

/// The engine task, to await at shutdown (after [`OtaService::stop`]).
pub struct OtaTask(JoinHandle<()>);

impl OtaTask {
    /// Waits for the engine to flush and end.
    pub async fn join(self) {
        let _ = self.0.await;
    }
}

impl OtaService {
    /// Starts the engine; it resumes every running job of `store` first.
    pub fn spawn(store: SharedStore, bus: Arc<dyn Bus>) -> (OtaService, OtaTask) {
        Self::spawn_led(store, bus, Ownership::everything())
    }

    /// [`OtaService::spawn`] for one of several instances (D-73): rollouts run while this
    /// instance is the leader, and job commands on another instance are refused with 503.
    pub fn spawn_led(
        store: SharedStore,
        bus: Arc<dyn Bus>,
        leader: Arc<Ownership>,
    ) -> (OtaService, OtaTask) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = tokio::spawn(engine::run(store.clone(), bus, rx, leader.clone()));
        (OtaService { tx, store, leader }, OtaTask(handle))
    }

    /// OTA job commands change rollouts, which only the leader runs (D-73).
    fn on_leader(&self) -> Result<(), OtaError> {
        if self.leader.is_leader() {
            Ok(())
        } else {
            Err(OtaError::Unavailable(
                "OTA jobs are created and canceled on the leader hub instance (D-73); \
                 this one is not it"
                    .into(),
            ))
        }
    }

    fn ota_store(&self) -> Result<&dyn OtaStore, OtaError> {
        self.store
            .ota()
            .ok_or_else(|| OtaError::Unavailable("the store has no OTA tables".into()))
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), OtaError>>) -> Cmd,
    ) -> Result<(), OtaError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| OtaError::Unavailable("ota engine stopped".into()))?;
        rx.await
            .map_err(|_| OtaError::Unavailable("ota engine stopped".into()))?
    }

    async fn resolve(&self, targets: &Targets) -> Result<(Vec<String>, Option<String>), OtaError> {
        let things = match targets {
            Targets::Things(ids) => {
                let mut seen = HashSet::new();
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if !is_valid_thing_id(id) {
                        return Err(OtaError::Invalid(format!("invalid thingId {id:?}")));
                    }
                    if seen.insert(id.as_str()) {
                        out.push(id.clone());
                    }
                }
                return Ok((out, None));
            }
            Targets::Query(text) => {
                let q = ThingQuery::parse(text)
                    .map_err(|e| OtaError::Invalid(format!("invalid query: {e}")))?;
                let mut out = Vec::new();
                for page in 0.. {
                    let (total, things) = self.store.query_things(&q, page, 1000).await?;
                    if total > MAX_JOB_THINGS as u64 {
                        return Err(OtaError::Invalid(format!(
                            "the query matches {total} things; at most {MAX_JOB_THINGS} per job"
                        )));
                    }
                    let n = things.len();
                    out.extend(things.into_iter().map(|t| t.thing_id));
                    if n < 1000 || out.len() as u64 >= total {
                        break;
                    }
                }
                // Rows may move between pages while things are created or deleted.
                let mut seen = HashSet::new();
                out.retain(|t| seen.insert(t.clone()));
                (out, Some(text.clone()))
            }
        };
        Ok(things)
    }

    /// Creates a job (S-9.6) and starts its rollout; returns it with its counts.
    pub async fn create(&self, req: CreateJob, now: u64) -> Result<OtaJobRecord, OtaError> {
        self.on_leader()?;
        validate_template(&req.template)?;
        let settings = settings(&req)?;
        let (things, target_query) = self.resolve(&req.targets).await?;
        if things.is_empty() {
            return Err(OtaError::Invalid("the job targets no thing".into()));
        }
        if things.len() > MAX_JOB_THINGS {
            return Err(OtaError::Invalid(format!(
                "at most {MAX_JOB_THINGS} things per job"
            )));
        }
        let job = NewOtaJob {
            job_id: new_job_id(),
            template: req.template,
            target_query,
            settings,
            things,
            created_at: now,
        };
        debug_assert!(task_id(&job.job_id, u32::MAX).len() <= MAX_ID_LEN);
        if let Err(missing) = self.ota_store()?.create_ota_job(&job).await? {
            let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
            return Err(OtaError::Invalid(format!(
                "{} unknown thing(s): {}",
                missing.len(),
                shown.join(", ")
            )));
        }
        let job_id = job.job_id;
        self.ask(|reply| Cmd::Start {
            job_id: job_id.clone(),
            reply,
        })
        .await?;
        self.job(&job_id).await
    }

    /// The job with its counts per state.
    pub async fn job(&self, job_id: &str) -> Result<OtaJobRecord, OtaError> {
        let job = self.stored_job(job_id).await?;
        let c = &job.counts;
        if job.status == OtaJobStatus::Running && c.ended() == c.total() {
            // Running with nothing open in the store: the things of its last open tasks were
            // deleted (a job's last change and its status are stored together otherwise).
            self.ask(|reply| Cmd::Sweep {
                job_id: job_id.to_owned(),
                reply,
            })
            .await?;
            return self.stored_job(job_id).await;
        }
        Ok(job)
    }

    async fn stored_job(&self, job_id: &str) -> Result<OtaJobRecord, OtaError> {
        if !is_job_id(job_id) {
            return Err(OtaError::NoSuchJob);
        }
        self.ota_store()?
            .ota_job(job_id)
            .await?
            .ok_or(OtaError::NoSuchJob)
    }

    /// One page of the job's tasks in rollout order, optionally only those in `status`.
    pub async fn tasks(
        &self,
        job_id: &str,
        status: Option<OtaTaskState>,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<OtaTaskRecord>), OtaError> {
        self.job(job_id).await?;
        Ok(self
            .ota_store()?
            .ota_tasks_page(job_id, status, page_index, page_size)
            .await?)
    }

    /// One task with every transition it went through.
    pub async fn task(
        &self,
        job_id: &str,
        thing_id: &str,
    ) -> Result<(OtaTaskRecord, Vec<OtaTransition>), OtaError> {
        self.job(job_id).await?;
        self.ota_store()?
            .ota_task(job_id, thing_id)
            .await?
            .ok_or(OtaError::NoSuchTask)
    }

    /// Cancels a running job: its open tasks become `canceled`. 409 when it has ended.
    pub async fn cancel(&self, job_id: &str) -> Result<OtaJobRecord, OtaError> {
        self.on_leader()?;
        self.job(job_id).await?;
        self.ask(|reply| Cmd::Cancel {
            job_id: job_id.to_owned(),
            thing: None,
            reply,
        })
        .await?;
        self.job(job_id).await
    }

    /// Cancels one thing's open task of a running job. 409 when it has ended.
    pub async fn cancel_task(
        &self,
        job_id: &str,
        thing_id: &str,
    ) -> Result<(OtaTaskRecord, Vec<OtaTransition>), OtaError> {
        self.on_leader()?;
        self.task(job_id, thing_id).await?;
        self.ask(|reply| Cmd::Cancel {
            job_id: job_id.to_owned(),
            thing: Some(thing_id.to_owned()),
            reply,
        })
        .await?;
        self.task(job_id, thing_id).await
    }

    /// A result (S-7.2) a thing published on its `T/ota/task/result` (from the router).
    pub async fn handle_result(&self, thing: &str, payload: Bytes) {
        let cmd = Cmd::Result {
            thing: thing.to_owned(),
            payload,
        };
        if self.tx.send(cmd).await.is_err() {
            tracing::debug!("ota engine gone (shutting down); result not handled");
        }
    }

    /// The thing subscribed to its `T/ota/task`: queued tasks may go, sent ones go again.
    pub async fn thing_ready(&self, thing: &str) {
        let cmd = Cmd::Ready {
            thing: thing.to_owned(),
        };
        if self.tx.send(cmd).await.is_err() {
            tracing::debug!("ota engine gone (shutting down)");
        }
    }

    /// Asks the engine to flush and stop; await [`OtaTask::join`] afterwards.
    pub async fn stop(&self) {
        let _ = self.tx.send(Cmd::Stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> OtaTemplate {
        OtaTemplate {
            task_type: "app".into(),
            version: "1.2.0".into(),
            md5: None,
            sha256: None,
            content_type: None,
            content_length: None,
            file_url: "http://example.com/fw.bin".into(),
        }
    }

    #[test]
    fn template_validation() {
        assert!(validate_template(&template()).is_ok());
        let mut t = template();
        t.file_url = "fw.bin".into();
        assert!(validate_template(&t).is_err());
        let mut t = template();
        t.md5 = Some("abc".into());
        assert!(validate_template(&t).is_err());
        t.md5 = Some("0123456789abcdef0123456789ABCDEF".into());
        assert!(validate_template(&t).is_ok());
        let mut t = template();
        t.task_type = String::new();
        assert!(validate_template(&t).is_err());
    }

    #[test]
    fn ids_fit_the_wire() {
        let job = new_job_id();
        assert!(is_job_id(&job));
        assert!(task_id(&job, u32::MAX).len() <= MAX_ID_LEN);
        assert!(client_token().len() <= MAX_ID_LEN);
        assert!(!is_job_id("../etc"));
    }
}
