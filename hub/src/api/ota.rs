//! OTA jobs (S-9.6): `/api/v1/ota/jobs...`.
//!
//! The shapes, units and status codes are docs/spec.md D-24. Per-thing routes show a task's
//! transitions and cancel one task.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use iothub_spec::code::OtaTaskState;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, envelope, ok};
use super::schema::{Envelope, NullEnvelope, Page};
use super::things::DEFAULT_PAGE_SIZE;
use crate::ota::{CreateJob, OtaError, OtaService, Targets};
use crate::store::ota::{OtaCounts, OtaJobRecord, OtaTaskRecord, OtaTemplate, OtaTransition};

impl From<OtaError> for ApiError {
    fn from(e: OtaError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        ApiError::new(status, e.to_string())
    }
}

pub(crate) fn service(state: &AppState) -> Result<&OtaService, ApiError> {
    state.ota.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OTA jobs are not served by this hub",
        )
    })
}

/// Which things a job targets: exactly one of `thingIds` and `query`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetsBody {
    /// These things (each must exist; duplicates are dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thing_ids: Option<Vec<String>>,
    /// The things an S-9.4 query matches now, e.g. `SELECT * FROM things WHERE tags.site = 'b1'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// `meta` of an OTA task (S-7.1).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MetaBody {
    /// Version of the file's content.
    pub version: String,
    /// Hex MD5 of the file (32 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// Hex SHA-256 of the file (64 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// MIME type of the file.
    #[serde(
        rename = "content-type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<String>,
    /// Size of the file in bytes.
    #[serde(
        rename = "content-length",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub content_length: Option<u64>,
}

/// The task a job sends (S-7.1 without `taskId` and `clientToken`, which the hub assigns).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskBody {
    /// `app`, `appconfig`, `os`, or another device-defined kind.
    #[serde(rename = "type")]
    pub task_type: String,
    /// Version and checksums.
    pub meta: MetaBody,
    /// Where devices download the file (an absolute URL).
    pub file_url: String,
}

impl From<TaskBody> for OtaTemplate {
    fn from(t: TaskBody) -> Self {
        OtaTemplate {
            task_type: t.task_type,
            version: t.meta.version,
            md5: t.meta.md5,
            sha256: t.meta.sha256,
            content_type: t.meta.content_type,
            content_length: t.meta.content_length,
            file_url: t.file_url,
        }
    }
}

impl From<OtaTemplate> for TaskBody {
    fn from(t: OtaTemplate) -> Self {
        TaskBody {
            task_type: t.task_type,
            meta: MetaBody {
                version: t.version,
                md5: t.md5,
                sha256: t.sha256,
                content_type: t.content_type,
                content_length: t.content_length,
            },
            file_url: t.file_url,
        }
    }
}

/// `POST /ota/jobs` body (S-9.6).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateJobRequest {
    /// The things.
    pub targets: TargetsBody,
    /// The task.
    pub task: TaskBody,
    /// Most tasks sent per minute, 1 to 1,000,000 (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_minute: Option<u32>,
    /// Minutes a sent task may take before it times out (fractions allowed; default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_minutes: Option<f64>,
    /// Extra attempts after `failed` or `timed_out`, 0 to 10 (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// Tasks per state (S-7.3).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CountsView {
    /// Waiting for the rate or for the thing to connect.
    pub queued: u64,
    /// Sent, no result yet.
    pub sent: u64,
    /// The device reported `ongoing`.
    pub ongoing: u64,
    /// Installed.
    pub done: u64,
    /// Failed.
    pub failed: u64,
    /// Canceled.
    pub canceled: u64,
    /// No final result in time.
    pub timed_out: u64,
}

impl From<OtaCounts> for CountsView {
    fn from(c: OtaCounts) -> Self {
        CountsView {
            queued: c.queued,
            sent: c.sent,
            ongoing: c.ongoing,
            done: c.done,
            failed: c.failed,
            canceled: c.canceled,
            timed_out: c.timed_out,
        }
    }
}

/// A job with its counts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// The job's id.
    pub job_id: String,
    /// `running`, `canceled` or `completed`.
    pub status: String,
    /// The task.
    pub task: TaskBody,
    /// The S-9.4 query the targets came from, if any.
    pub query: Option<String>,
    /// Most tasks sent per minute.
    pub max_per_minute: u32,
    /// Per-task timeout in minutes.
    pub timeout_minutes: f64,
    /// Extra attempts after `failed` or `timed_out`.
    pub retries: u32,
    /// Number of tasks (one per thing).
    pub total: u64,
    /// Tasks per state.
    pub counts: CountsView,
    /// Percent of the tasks that have ended (0 to 100).
    pub progress: f64,
    /// Creation time, ms since the Unix epoch.
    pub created_at: u64,
    /// Last status change of the job, ms since the Unix epoch.
    pub updated_at: u64,
}

impl From<OtaJobRecord> for JobView {
    fn from(j: OtaJobRecord) -> Self {
        let total = j.counts.total();
        let progress = if total == 0 {
            100.0
        } else {
            (j.counts.ended() as f64 * 10_000.0 / total as f64).round() / 100.0
        };
        JobView {
            job_id: j.job_id,
            status: j.status.as_str().to_owned(),
            task: j.template.into(),
            query: j.target_query,
            max_per_minute: j.settings.max_per_minute,
            timeout_minutes: j.settings.timeout_ms as f64 / 60_000.0,
            retries: j.settings.retries,
            total,
            counts: j.counts.into(),
            progress,
            created_at: j.created_at,
            updated_at: j.updated_at,
        }
    }
}

/// One thing's task.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    /// The thing.
    pub thing_id: String,
    /// `taskId` of the current attempt.
    pub task_id: String,
    /// `queued`, `sent`, `ongoing`, `done`, `failed`, `canceled` or `timed_out`.
    pub status: String,
    /// 1, +1 per retry.
    pub attempt: u32,
    /// Last progress reported (0 to 100).
    pub progress: Option<u8>,
    /// The device's `errCode`, when failed.
    pub err_code: Option<u16>,
    /// The device's `errMsg`, when failed.
    pub err_msg: Option<String>,
    /// When it times out, ms since the Unix epoch (sent or ongoing).
    pub deadline: Option<u64>,
    /// Last change, ms since the Unix epoch.
    pub updated_at: u64,
}

impl From<OtaTaskRecord> for TaskView {
    fn from(t: OtaTaskRecord) -> Self {
        TaskView {
            thing_id: t.thing_id,
            task_id: t.task_id,
            status: t.status.as_str().to_owned(),
            attempt: t.attempt,
            progress: t.progress,
            err_code: t.err_code,
            err_msg: t.err_msg,
            deadline: t.deadline,
            updated_at: t.updated_at,
        }
    }
}

/// One status change of a task.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionView {
    /// The attempt.
    pub attempt: u32,
    /// The state before (`null` for the first, `queued`).
    pub from: Option<String>,
    /// The state after.
    pub to: String,
    /// When, ms since the Unix epoch.
    pub at: u64,
    /// The device's `errCode`, into `failed`.
    pub err_code: Option<u16>,
}

impl From<OtaTransition> for TransitionView {
    fn from(t: OtaTransition) -> Self {
        TransitionView {
            attempt: t.attempt,
            from: t.from.map(|s| s.as_str().to_owned()),
            to: t.to.as_str().to_owned(),
            at: t.at,
            err_code: t.err_code,
        }
    }
}

/// A task with every transition it went through.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskDetail {
    /// The task.
    #[serde(flatten)]
    pub task: TaskView,
    /// Its status changes, oldest first.
    pub transitions: Vec<TransitionView>,
}

fn detail((task, transitions): (OtaTaskRecord, Vec<OtaTransition>)) -> TaskDetail {
    TaskDetail {
        task: task.into(),
        transitions: transitions.into_iter().map(Into::into).collect(),
    }
}

/// `GET /ota/jobs/{id}/tasks` query string.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct TaskListParams {
    /// 0-based page number (default 0).
    pub page_index: Option<u64>,
    /// Page size, 1 to 1000 (default 20).
    pub page_size: Option<u64>,
    /// Only tasks in this state.
    pub status: Option<String>,
}

fn targets(t: TargetsBody) -> Result<Targets, ApiError> {
    match (t.thing_ids, t.query) {
        (Some(ids), None) => Ok(Targets::Things(ids)),
        (None, Some(q)) => Ok(Targets::Query(q)),
        _ => Err(ApiError::bad_request(
            "targets must have exactly one of thingIds and query",
        )),
    }
}

pub(crate) fn timeout_ms(minutes: Option<f64>) -> Result<Option<u64>, ApiError> {
    match minutes {
        None => Ok(None),
        Some(m) if m.is_finite() && m > 0.0 && m <= 1e7 => Ok(Some((m * 60_000.0).round() as u64)),
        Some(_) => Err(ApiError::bad_request(
            "timeoutMinutes must be a positive number",
        )),
    }
}

/// Creates an OTA job and starts its rollout.
#[utoipa::path(post, path = "/api/v1/ota/jobs", operation_id = "createOtaJob", tag = "ota",
    request_body = CreateJobRequest,
    responses(
        (status = 201, description = "Created; the rollout has started", body = Envelope<JobView>),
        (status = 400, description = "Invalid task, targets, query, unknown things or settings", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateJobRequest>,
) -> Result<Response, ApiError> {
    let ota = service(&state)?;
    let job = CreateJob {
        targets: targets(req.targets)?,
        template: req.task.into(),
        max_per_minute: req.max_per_minute,
        timeout_ms: timeout_ms(req.timeout_minutes)?,
        retries: req.retries,
    };
    let job = ota.create(job, crate::clock::now_ms()).await?;
    Ok(envelope(StatusCode::CREATED, "created", JobView::from(job)))
}

/// A job with its counts per state and progress.
#[utoipa::path(get, path = "/api/v1/ota/jobs/{id}", operation_id = "getOtaJob", tag = "ota",
    params(("id" = String, Path, description = "jobId")),
    responses(
        (status = 200, description = "The job", body = Envelope<JobView>),
        (status = 404, description = "No such job", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn get_job(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let job = service(&state)?.job(&id).await?;
    Ok(ok(JobView::from(job)))
}

/// Cancels a running job: every task not ended becomes `canceled`.
#[utoipa::path(post, path = "/api/v1/ota/jobs/{id}/cancel", operation_id = "cancelOtaJob", tag = "ota",
    params(("id" = String, Path, description = "jobId")),
    responses(
        (status = 200, description = "Canceled; the job with its counts", body = Envelope<JobView>),
        (status = 404, description = "No such job", body = NullEnvelope),
        (status = 409, description = "The job has ended", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let job = service(&state)?.cancel(&id).await?;
    Ok(ok(JobView::from(job)))
}

/// The job's tasks in rollout order, one page.
#[utoipa::path(get, path = "/api/v1/ota/jobs/{id}/tasks", operation_id = "listOtaTasks", tag = "ota",
    params(("id" = String, Path, description = "jobId"), TaskListParams),
    responses(
        (status = 200, description = "One page of tasks", body = Envelope<Page<TaskView>>),
        (status = 400, description = "Bad paging or status", body = NullEnvelope),
        (status = 404, description = "No such job", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_tasks(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<TaskListParams>,
) -> Result<Response, ApiError> {
    let page_size = p.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=crate::store::ota::MAX_TASK_PAGE).contains(&page_size) {
        return Err(ApiError::bad_request("pageSize must be 1 to 1000"));
    }
    let status: Option<OtaTaskState> = match p.status.as_deref() {
        None => None,
        Some(s) => Some(
            OtaTaskState::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("unknown task status {s:?}")))?,
        ),
    };
    let (total, tasks) = service(&state)?
        .tasks(&id, status, p.page_index.unwrap_or(0), page_size)
        .await?;
    Ok(ok(iothub_spec::payload::Page {
        total,
        content: tasks.into_iter().map(TaskView::from).collect::<Vec<_>>(),
    }))
}

/// One thing's task with its transitions.
#[utoipa::path(get, path = "/api/v1/ota/jobs/{id}/tasks/{thing}", operation_id = "getOtaTask", tag = "ota",
    params(("id" = String, Path, description = "jobId"), ("thing" = String, Path, description = "thingId")),
    responses(
        (status = 200, description = "The task", body = Envelope<TaskDetail>),
        (status = 404, description = "No such job or task", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn get_task(
    State(state): State<AppState>,
    ApiPath((id, thing)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let task = service(&state)?.task(&id, &thing).await?;
    Ok(ok(detail(task)))
}

/// Cancels one thing's task of a running job.
#[utoipa::path(post, path = "/api/v1/ota/jobs/{id}/tasks/{thing}/cancel", operation_id = "cancelOtaTask", tag = "ota",
    params(("id" = String, Path, description = "jobId"), ("thing" = String, Path, description = "thingId")),
    responses(
        (status = 200, description = "Canceled; the task", body = Envelope<TaskDetail>),
        (status = 404, description = "No such job or task", body = NullEnvelope),
        (status = 409, description = "The task or its job has ended", body = NullEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn cancel_task(
    State(state): State<AppState>,
    ApiPath((id, thing)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let task = service(&state)?.cancel_task(&id, &thing).await?;
    Ok(ok(detail(task)))
}
