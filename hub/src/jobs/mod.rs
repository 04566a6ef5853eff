//! Fleet jobs (S-12): one operation (a direct method, a desired-state patch, a tags change)
//! applied to a fixed set of things at a bounded rate, with per-thing outcomes kept.
//!
//! - [`exec`]: runs the operation on one thing and classifies the outcome (D-53).
//! - [`engine`]: the loop that paces, retries, waits for offline things, ends jobs, recovers
//!   after a restart and applies retention (D-52, D-54..D-56).
//! - this file: the service behind `/api/v1/jobs` (validation, D-51).
//!
//! The store is the truth: a job and all its per-thing records are created in one transaction,
//! and the engine makes a record `in_progress` durably before it sends anything.

pub mod engine;
pub mod exec;

use std::collections::BTreeSet;
use std::sync::Arc;

use iothub_spec::code::{ErrorCode, JobStatus, JobThingState};
use iothub_spec::limits::{
    MAX_JOB_PAYLOAD, MAX_JOB_RETRIES, MAX_JOB_TARGETS, METHOD_TIMEOUT_MAX_S, METHOD_TIMEOUT_MIN_S,
};
use serde_json::Value;
use tokio::sync::Notify;

use crate::store::jobs::{JobRecord, JobStore, JobThingRecord, Operation};
use crate::store::{SharedStore, StoreError};

/// Default time between `startAt` and `endAt` (D-51).
pub const DEFAULT_DURATION_MS: u64 = 24 * 3600 * 1000;
/// Highest `maxPerMinute` (D-51).
pub const MAX_PER_MINUTE: u32 = 60_000;
/// Default `maxPerMinute` (D-51).
pub const DEFAULT_PER_MINUTE: u32 = 600;
/// Deepest payload, patch or tags accepted (S-3.9's default).
const MAX_DEPTH: usize = iothub_spec::limits::Limits::DEFAULT.max_json_depth;
/// Things per page when resolving a query target.
const PAGE: u64 = 1000;

/// Why a job request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// Bad body (400).
    #[error("{0}")]
    Invalid(String),
    /// No such job or record (404).
    #[error("no such job or thing record")]
    NotFound,
    /// The id is taken (409).
    #[error("a job with this id exists")]
    Exists,
    /// The job has ended (409, cancel).
    #[error("the job has ended")]
    Ended,
    /// Storage failed or keeps no jobs (503); nothing was stored.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl JobError {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            JobError::Invalid(_) => ErrorCode::BadRequest.as_u16(),
            JobError::NotFound => ErrorCode::NotFound.as_u16(),
            JobError::Exists | JobError::Ended => ErrorCode::Conflict.as_u16(),
            JobError::Unavailable(_) => ErrorCode::Unavailable.as_u16(),
        }
    }
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => JobError::NotFound,
            StoreError::AlreadyExists => JobError::Exists,
            other => JobError::Unavailable(other.to_string()),
        }
    }
}

/// The targets of a new job.
#[derive(Debug, Clone)]
pub enum Targets {
    /// These things, in this order.
    Things(Vec<String>),
    /// The things an S-9.4 condition matches now.
    Query(String),
}

/// A job as the API received it.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Its id; generated when `None`.
    pub job_id: Option<String>,
    /// Which things.
    pub targets: Targets,
    /// What to do.
    pub operation: Operation,
    /// ms; default now.
    pub start_at: Option<u64>,
    /// ms; default `start_at` + 24 h.
    pub end_at: Option<u64>,
    /// Default [`DEFAULT_PER_MINUTE`].
    pub max_per_minute: Option<u32>,
    /// Default 0.
    pub retries: Option<u32>,
}

/// A job with its counts per state (every state present, S-12.3).
pub type JobWithCounts = (JobRecord, Vec<(JobThingState, u64)>);

/// Checks one JSON value against the size and depth bounds.
fn check_json(what: &str, v: &Value) -> Result<(), JobError> {
    let text = v.to_string();
    if text.len() > MAX_JOB_PAYLOAD {
        return Err(JobError::Invalid(format!(
            "{what} is over {MAX_JOB_PAYLOAD} bytes"
        )));
    }
    if iothub_spec::limits::json_depth_exceeds(text.as_bytes(), MAX_DEPTH) {
        return Err(JobError::Invalid(format!(
            "{what} is deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(())
}

/// Checks the operation (D-51).
fn check_operation(op: &Operation) -> Result<(), JobError> {
    match op {
        Operation::Method {
            name,
            payload,
            timeout_s,
        } => {
            if !iothub_spec::ids::is_valid_method_name(name) {
                return Err(JobError::Invalid("method name: 1 to 64 characters".into()));
            }
            if !(METHOD_TIMEOUT_MIN_S..=METHOD_TIMEOUT_MAX_S).contains(timeout_s) {
                return Err(JobError::Invalid(format!(
                    "timeoutS must be {METHOD_TIMEOUT_MIN_S} to {METHOD_TIMEOUT_MAX_S}"
                )));
            }
            check_json("payload", payload)
        }
        Operation::Desired { shadow, patch } => {
            if !iothub_spec::ids::is_valid_shadow_name(shadow) {
                return Err(JobError::Invalid("shadow: 1 to 64 characters".into()));
            }
            if patch.is_empty() {
                return Err(JobError::Invalid("patch must not be empty".into()));
            }
            check_json("patch", &Value::Object(patch.clone()))
        }
        Operation::Tags { tags, .. } => check_json("tags", &Value::Object(tags.clone())),
    }
}

/// The service behind the REST routes. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    store: SharedStore,
    /// Wakes the engine: a job was created or canceled.
    wake: Arc<Notify>,
}

impl Jobs {
    /// The service over `store`.
    pub fn new(store: SharedStore) -> Jobs {
        Jobs {
            store,
            wake: Arc::new(Notify::new()),
        }
    }

    fn db(&self) -> Result<&dyn JobStore, JobError> {
        self.store
            .jobs()
            .ok_or_else(|| JobError::Unavailable("this store keeps no jobs".into()))
    }

    /// Resolves the targets: a list deduplicated in order, or a query's matches by id.
    async fn resolve(&self, targets: Targets) -> Result<(Vec<String>, Option<String>), JobError> {
        match targets {
            Targets::Things(list) => {
                let mut seen = BTreeSet::new();
                let mut out = Vec::with_capacity(list.len());
                for id in list {
                    if !iothub_spec::ids::is_valid_thing_id(&id) {
                        return Err(JobError::Invalid(format!("invalid thing id {id:?}")));
                    }
                    if seen.insert(id.clone()) {
                        out.push(id);
                    }
                }
                Ok((out, None))
            }
            Targets::Query(text) => {
                let filter = crate::configurations::condition(&text, "query")
                    .map_err(|e| JobError::Invalid(e.to_string()))?;
                let q = crate::query::ThingQuery {
                    filter: Some(filter),
                    order: Vec::new(),
                };
                let mut out = Vec::new();
                for page in 0.. {
                    let (total, things) = self.store.query_things(&q, page, PAGE).await?;
                    if total > MAX_JOB_TARGETS as u64 {
                        return Err(JobError::Invalid(format!(
                            "the query matches {total} things, over {MAX_JOB_TARGETS}"
                        )));
                    }
                    let got = things.len() as u64;
                    out.extend(things.into_iter().map(|t| t.thing_id));
                    if got < PAGE || (page + 1) * PAGE >= total {
                        break;
                    }
                }
                Ok((out, Some(text)))
            }
        }
    }

    /// Creates a job and its per-thing records in one transaction; the engine starts it at
    /// `startAt`.
    pub async fn create(&self, spec: JobSpec, now: u64) -> Result<JobWithCounts, JobError> {
        let job_id = spec.job_id.unwrap_or_else(crate::ota::client_token);
        if !iothub_spec::ids::is_valid_thing_id(&job_id) {
            return Err(JobError::Invalid(
                "jobId must be 1 to 64 characters of [0-9A-Za-z_-]".into(),
            ));
        }
        check_operation(&spec.operation)?;
        if let Targets::Things(list) = &spec.targets
            && list.len() > MAX_JOB_TARGETS
        {
            return Err(JobError::Invalid(format!(
                "at most {MAX_JOB_TARGETS} things"
            )));
        }
        let start_at = spec.start_at.unwrap_or(now);
        let end_at = spec
            .end_at
            .unwrap_or(start_at.saturating_add(DEFAULT_DURATION_MS));
        if end_at <= start_at {
            return Err(JobError::Invalid("endAt must be after startAt".into()));
        }
        let max_per_minute = spec.max_per_minute.unwrap_or(DEFAULT_PER_MINUTE);
        if !(1..=MAX_PER_MINUTE).contains(&max_per_minute) {
            return Err(JobError::Invalid(format!(
                "maxPerMinute must be 1 to {MAX_PER_MINUTE}"
            )));
        }
        let retries = spec.retries.unwrap_or(0);
        if retries > MAX_JOB_RETRIES {
            return Err(JobError::Invalid(format!(
                "retries must be 0 to {MAX_JOB_RETRIES}"
            )));
        }
        let db = self.db()?;
        let (things, target_query) = self.resolve(spec.targets).await?;
        if things.is_empty() {
            return Err(JobError::Invalid("the job targets no thing".into()));
        }
        let job = JobRecord {
            job_id,
            operation: spec.operation,
            target_query,
            status: JobStatus::Scheduled,
            things: things.len() as u64,
            start_at,
            end_at,
            max_per_minute,
            retries,
            created_at: now,
            ended_at: None,
        };
        db.create_job(&job, &things).await?;
        tracing::info!(job = %job.job_id, things = job.things, "job created");
        self.wake.notify_one();
        let counts = full_counts(&[(JobThingState::Queued, job.things)]);
        Ok((job, counts))
    }

    /// One job with its counts.
    pub async fn get(&self, job_id: &str) -> Result<JobWithCounts, JobError> {
        let db = self.db()?;
        let job = db.job(job_id).await?.ok_or(JobError::NotFound)?;
        let counts = full_counts(&db.job_counts(job_id).await?);
        Ok((job, counts))
    }

    /// One page of jobs, newest first, with their counts, and the number of jobs.
    pub async fn list(
        &self,
        page: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<JobWithCounts>), JobError> {
        let db = self.db()?;
        let (total, jobs) = db.jobs(page, page_size).await?;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let counts = full_counts(&db.job_counts(&job.job_id).await?);
            out.push((job, counts));
        }
        Ok((total, out))
    }

    /// Cancels a job (D-55): its queued things end `canceled`.
    pub async fn cancel(&self, job_id: &str, now: u64) -> Result<JobWithCounts, JobError> {
        if !self.db()?.cancel_job(job_id, now).await? {
            return Err(JobError::Ended);
        }
        tracing::info!(job = %job_id, "job canceled");
        self.wake.notify_one();
        self.get(job_id).await
    }

    /// One page of a job's per-thing records.
    pub async fn things(
        &self,
        job_id: &str,
        status: Option<JobThingState>,
        page: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<JobThingRecord>), JobError> {
        let db = self.db()?;
        db.job(job_id).await?.ok_or(JobError::NotFound)?;
        Ok(db.job_things_page(job_id, status, page, page_size).await?)
    }

    /// One thing's record in a job.
    pub async fn thing(&self, job_id: &str, thing_id: &str) -> Result<JobThingRecord, JobError> {
        self.db()?
            .job_thing(job_id, thing_id)
            .await?
            .ok_or(JobError::NotFound)
    }
}

/// Every state with its count (0 for those absent), in [`JobThingState::ALL`] order.
pub fn full_counts(counts: &[(JobThingState, u64)]) -> Vec<(JobThingState, u64)> {
    JobThingState::ALL
        .into_iter()
        .map(|s| {
            (
                s,
                counts.iter().filter(|(c, _)| *c == s).map(|(_, n)| n).sum(),
            )
        })
        .collect()
}
