//! Fleet jobs (S-12): `/api/v1/jobs...`.
//!
//! The shapes, bounds and codes are docs/spec.md S-12.1 and D-51; per-thing records S-12.3.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use iothub_spec::code::JobThingState;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, envelope, ok};
use super::schema::{Envelope, NullEnvelope, Page};
use super::things::DEFAULT_PAGE_SIZE;
use crate::jobs::{JobError, JobSpec, JobWithCounts, Jobs, Targets};
use crate::store::jobs::{JobThingRecord, MAX_JOB_PAGE, Operation};

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        ApiError::new(status, e.to_string())
    }
}

fn service(state: &AppState) -> Result<&Jobs, ApiError> {
    state.jobs.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "jobs are not served by this hub",
        )
    })
}

/// What a job does to each thing (S-12.1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum OperationBody {
    /// Invoke a direct method (S-5).
    #[serde(rename_all = "camelCase")]
    Method {
        /// The method name.
        name: String,
        /// The request's `data`.
        #[serde(default)]
        #[schema(value_type = Object)]
        payload: Value,
        /// Seconds to wait for the answer, 1 to 300 (default 30).
        #[serde(default)]
        timeout_s: Option<u32>,
    },
    /// Merge a patch into a shadow's desired state.
    #[serde(rename_all = "camelCase")]
    Desired {
        /// The shadow (default `default`).
        #[serde(default)]
        shadow: Option<String>,
        /// The desired patch.
        #[schema(value_type = Object)]
        patch: Map<String, Value>,
    },
    /// Replace the tags (`replace: true`) or merge-patch them (D-42).
    #[serde(rename_all = "camelCase")]
    Tags {
        /// Replace instead of merge-patch (default false).
        #[serde(default)]
        replace: bool,
        /// The tags or the patch.
        #[schema(value_type = Object)]
        tags: Map<String, Value>,
    },
}

impl From<OperationBody> for Operation {
    fn from(b: OperationBody) -> Self {
        match b {
            OperationBody::Method {
                name,
                payload,
                timeout_s,
            } => Operation::Method {
                name,
                payload,
                timeout_s: timeout_s.unwrap_or(iothub_spec::limits::METHOD_TIMEOUT_DEFAULT_S),
            },
            OperationBody::Desired { shadow, patch } => Operation::Desired {
                shadow: shadow.unwrap_or_else(|| iothub_spec::ids::DEFAULT_SHADOW.to_owned()),
                patch,
            },
            OperationBody::Tags { replace, tags } => Operation::Tags { replace, tags },
        }
    }
}

/// A job to create (S-12.1): exactly one of `things` and `query`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetJobBody {
    /// 1 to 64 characters of `[0-9A-Za-z_-]`; generated when absent.
    #[serde(default)]
    pub job_id: Option<String>,
    /// The things, in the order they are reached.
    #[serde(default)]
    pub things: Option<Vec<String>>,
    /// The `WHERE` part of an S-9.4 query, evaluated once at creation.
    #[serde(default)]
    pub query: Option<String>,
    /// What to do to each thing.
    pub operation: OperationBody,
    /// ms; default now.
    #[serde(default)]
    pub start_at: Option<u64>,
    /// ms; default `startAt` + 24 h. Things not reached by then end `timed_out`.
    #[serde(default)]
    pub end_at: Option<u64>,
    /// Sends per minute, 1 to 60000 (default 600).
    #[serde(default)]
    pub max_per_minute: Option<u32>,
    /// Attempts after the first per thing, 0 to 10 (default 0).
    #[serde(default)]
    pub retries: Option<u32>,
}

/// A job with its counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetJobView {
    /// Its id.
    pub job_id: String,
    /// `scheduled`, `running`, `completed` or `canceled`.
    pub status: String,
    /// The operation as stored.
    #[schema(value_type = Object)]
    pub operation: Value,
    /// The query the targets came from, if any.
    pub query: Option<String>,
    /// Number of targeted things.
    pub things: u64,
    /// Things per state; the numbers add up to `things`.
    #[schema(value_type = Object)]
    pub counts: BTreeMap<&'static str, u64>,
    /// ms.
    pub start_at: u64,
    /// ms.
    pub end_at: u64,
    /// Sends per minute.
    pub max_per_minute: u32,
    /// Attempts after the first per thing.
    pub retries: u32,
    /// ms.
    pub created_at: u64,
    /// ms, once ended.
    pub ended_at: Option<u64>,
}

impl From<JobWithCounts> for FleetJobView {
    fn from((j, counts): JobWithCounts) -> Self {
        FleetJobView {
            job_id: j.job_id,
            status: j.status.as_str().to_owned(),
            operation: serde_json::to_value(&j.operation).unwrap_or(Value::Null),
            query: j.target_query,
            things: j.things,
            counts: counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect(),
            start_at: j.start_at,
            end_at: j.end_at,
            max_per_minute: j.max_per_minute,
            retries: j.retries,
            created_at: j.created_at,
            ended_at: j.ended_at,
        }
    }
}

/// One thing's record in a job (S-12.3).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobThingView {
    /// The thing.
    pub thing_id: String,
    /// `queued`, `in_progress`, `succeeded`, `failed`, `timed_out` or `canceled`.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// The device's method code or the hub's refusal.
    pub code: Option<u16>,
    /// The method's `data`.
    #[schema(value_type = Object)]
    pub response: Option<Value>,
    /// Why it failed or timed out.
    pub error: Option<String>,
    /// First attempt, ms.
    pub started_at: Option<u64>,
    /// Last change, ms.
    pub updated_at: u64,
    /// Reached its final state, ms.
    pub ended_at: Option<u64>,
}

impl From<JobThingRecord> for JobThingView {
    fn from(t: JobThingRecord) -> Self {
        JobThingView {
            thing_id: t.thing_id,
            status: t.status.as_str().to_owned(),
            attempts: t.attempts,
            code: t.code,
            response: t.response,
            error: t.error,
            started_at: t.started_at,
            updated_at: t.updated_at,
            ended_at: t.ended_at,
        }
    }
}

/// `GET /jobs` and `GET /jobs/{id}/things` query string.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct JobPageParams {
    /// 0-based page number (default 0).
    pub page_index: Option<u64>,
    /// Page size, 1 to 1000 (default 20).
    pub page_size: Option<u64>,
    /// Only things in this state (`GET /jobs/{id}/things`).
    pub status: Option<String>,
}

fn page_size(p: &JobPageParams) -> Result<u64, ApiError> {
    let size = p.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_JOB_PAGE).contains(&size) {
        return Err(ApiError::bad_request("pageSize must be 1 to 1000"));
    }
    Ok(size)
}

/// Creates a job; it starts at `startAt`.
#[utoipa::path(post, path = "/api/v1/jobs", operation_id = "createJob", tag = "jobs",
    request_body = FleetJobBody,
    responses(
        (status = 201, description = "Created, with its things queued", body = Envelope<FleetJobView>),
        (status = 400, description = "Invalid targets, operation, times, rate or retries", body = NullEnvelope),
        (status = 409, description = "The id is taken", body = NullEnvelope),
        (status = 503, description = "Storage unavailable; nothing was stored", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<FleetJobBody>,
) -> Result<Response, ApiError> {
    let targets = match (body.things, body.query) {
        (Some(things), None) => Targets::Things(things),
        (None, Some(query)) => Targets::Query(query),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of things and query",
            ));
        }
    };
    let spec = JobSpec {
        job_id: body.job_id,
        targets,
        operation: body.operation.into(),
        start_at: body.start_at,
        end_at: body.end_at,
        max_per_minute: body.max_per_minute,
        retries: body.retries,
    };
    let created = service(&state)?
        .create(spec, crate::clock::now_ms())
        .await?;
    Ok(envelope(
        StatusCode::CREATED,
        "created",
        FleetJobView::from(created),
    ))
}

/// One page of jobs, newest first, with their counts.
#[utoipa::path(get, path = "/api/v1/jobs", operation_id = "listJobs", tag = "jobs",
    params(JobPageParams),
    responses(
        (status = 200, description = "One page of jobs", body = Envelope<Page<FleetJobView>>),
        (status = 400, description = "Bad paging", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<JobPageParams>,
) -> Result<Response, ApiError> {
    let size = page_size(&p)?;
    let (total, jobs) = service(&state)?
        .list(p.page_index.unwrap_or(0), size)
        .await?;
    Ok(ok(iothub_spec::payload::Page {
        total,
        content: jobs.into_iter().map(FleetJobView::from).collect::<Vec<_>>(),
    }))
}

/// One job with its counts.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", operation_id = "getJob", tag = "jobs",
    params(("id" = String, Path, description = "jobId")),
    responses(
        (status = 200, description = "The job", body = Envelope<FleetJobView>),
        (status = 404, description = "No such job", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn get_job(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    Ok(ok(FleetJobView::from(service(&state)?.get(&id).await?)))
}

/// Cancels a job: its queued things end `canceled` (D-55).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", operation_id = "cancelJob", tag = "jobs",
    params(("id" = String, Path, description = "jobId")),
    responses(
        (status = 200, description = "Canceled; the job with its counts", body = Envelope<FleetJobView>),
        (status = 404, description = "No such job", body = NullEnvelope),
        (status = 409, description = "The job has ended", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let job = service(&state)?.cancel(&id, crate::clock::now_ms()).await?;
    Ok(ok(FleetJobView::from(job)))
}

/// The job's per-thing records in job order, one page.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/things", operation_id = "listJobThings", tag = "jobs",
    params(("id" = String, Path, description = "jobId"), JobPageParams),
    responses(
        (status = 200, description = "One page of records", body = Envelope<Page<JobThingView>>),
        (status = 400, description = "Bad paging or status", body = NullEnvelope),
        (status = 404, description = "No such job", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_things(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<JobPageParams>,
) -> Result<Response, ApiError> {
    let size = page_size(&p)?;
    let status = match p.status.as_deref() {
        None => None,
        Some(s) => Some(
            JobThingState::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("unknown status {s:?}")))?,
        ),
    };
    let (total, things) = service(&state)?
        .things(&id, status, p.page_index.unwrap_or(0), size)
        .await?;
    Ok(ok(iothub_spec::payload::Page {
        total,
        content: things
            .into_iter()
            .map(JobThingView::from)
            .collect::<Vec<_>>(),
    }))
}

/// One thing's record in a job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/things/{thing}", operation_id = "getJobThing", tag = "jobs",
    params(("id" = String, Path, description = "jobId"), ("thing" = String, Path, description = "thingId")),
    responses(
        (status = 200, description = "The record", body = Envelope<JobThingView>),
        (status = 404, description = "No such job or thing in it", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn get_thing(
    State(state): State<AppState>,
    ApiPath((id, thing)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(ok(JobThingView::from(
        service(&state)?.thing(&id, &thing).await?,
    )))
}
