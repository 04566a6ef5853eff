//! Durable state of OTA jobs (S-7.3, S-9.6): jobs, one task per (job, thing), and every status
//! change of a task with its time.
//!
//! The OTA engine ([`crate::ota`]) is the only writer of tasks; the REST API reads counts and
//! pages straight from here, so what it shows is always what survives a restart. The SQLite
//! implementation is in `sqlite/ota.rs`; its statements are plain SQL with `$N` placeholders that
//! PostgreSQL accepts as they are.

use iothub_spec::code::OtaTaskState;
use serde::Serialize;

use super::StoreError;

/// Largest page of [`OtaStore::ota_tasks_page`].
pub const MAX_TASK_PAGE: u64 = 1000;

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OtaJobStatus {
    /// Tasks are being rolled out or are still open.
    Running,
    /// Canceled through the API; its open tasks were canceled.
    Canceled,
    /// Every task has ended.
    Completed,
}

impl OtaJobStatus {
    /// The stored (and REST) string.
    pub const fn as_str(self) -> &'static str {
        match self {
            OtaJobStatus::Running => "running",
            OtaJobStatus::Canceled => "canceled",
            OtaJobStatus::Completed => "completed",
        }
    }

    /// Parses a stored string.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Running, Self::Canceled, Self::Completed]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// What a job sends to each thing (S-7.1 without `taskId` and `clientToken`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaTemplate {
    /// `type`.
    pub task_type: String,
    /// `meta.version`.
    pub version: String,
    /// `meta.md5`.
    pub md5: Option<String>,
    /// `meta.sha256`.
    pub sha256: Option<String>,
    /// `meta.content-type`.
    pub content_type: Option<String>,
    /// `meta.content-length`.
    pub content_length: Option<u64>,
    /// `fileUrl`.
    pub file_url: String,
}

/// Settings of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaJobSettings {
    /// At most this many tasks are sent per minute (at least 1).
    pub max_per_minute: u32,
    /// A task that has not ended this long after it was sent times out.
    pub timeout_ms: u64,
    /// Extra attempts after `failed` or `timed_out`.
    pub retries: u32,
}

/// A job to create, with its targets already resolved to existing things.
#[derive(Debug, Clone)]
pub struct NewOtaJob {
    /// The new job's id.
    pub job_id: String,
    /// The task sent to every thing.
    pub template: OtaTemplate,
    /// The S-9.4 query the targets came from, kept for the record.
    pub target_query: Option<String>,
    /// Rate, timeout, retries.
    pub settings: OtaJobSettings,
    /// The things, in rollout order, without duplicates.
    pub things: Vec<String>,
    /// Creation time (ms); every task is queued at this time.
    pub created_at: u64,
}

/// Number of tasks in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub struct OtaCounts {
    /// Waiting for the rollout rate or for the thing to connect.
    pub queued: u64,
    /// Sent, no result yet.
    pub sent: u64,
    /// The device reported `ongoing`.
    pub ongoing: u64,
    /// Installed.
    pub done: u64,
    /// Failed (after the last attempt).
    pub failed: u64,
    /// Canceled by the API or by the device.
    pub canceled: u64,
    /// No final result in time (after the last attempt).
    pub timed_out: u64,
}

impl OtaCounts {
    /// The counter of `state`.
    pub fn get_mut(&mut self, state: OtaTaskState) -> &mut u64 {
        match state {
            OtaTaskState::Queued => &mut self.queued,
            OtaTaskState::Sent => &mut self.sent,
            OtaTaskState::Ongoing => &mut self.ongoing,
            OtaTaskState::Done => &mut self.done,
            OtaTaskState::Failed => &mut self.failed,
            OtaTaskState::Canceled => &mut self.canceled,
            OtaTaskState::TimedOut => &mut self.timed_out,
        }
    }

    /// All tasks.
    pub fn total(&self) -> u64 {
        self.queued
            + self.sent
            + self.ongoing
            + self.done
            + self.failed
            + self.canceled
            + self.timed_out
    }

    /// Tasks that have ended.
    pub fn ended(&self) -> u64 {
        self.done + self.failed + self.canceled + self.timed_out
    }
}

/// A job as stored, with its task counts.
#[derive(Debug, Clone)]
pub struct OtaJobRecord {
    /// The id.
    pub job_id: String,
    /// The task.
    pub template: OtaTemplate,
    /// The query of the targets, if any.
    pub target_query: Option<String>,
    /// Rate, timeout, retries.
    pub settings: OtaJobSettings,
    /// Running, canceled or completed.
    pub status: OtaJobStatus,
    /// Creation time, ms.
    pub created_at: u64,
    /// Last status change of the job, ms.
    pub updated_at: u64,
    /// Tasks per state.
    pub counts: OtaCounts,
}

/// One thing's task inside a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaTaskRecord {
    /// The job.
    pub job_id: String,
    /// The thing.
    pub thing_id: String,
    /// Rollout order inside the job.
    pub seq: u64,
    /// 1, +1 per retry.
    pub attempt: u32,
    /// `taskId` of the current attempt (S-7.1).
    pub task_id: String,
    /// `clientToken` of the current attempt.
    pub client_token: String,
    /// The state.
    pub status: OtaTaskState,
    /// Last `progress` reported.
    pub progress: Option<u8>,
    /// `errCode` of a failure.
    pub err_code: Option<u16>,
    /// `errMsg` of a failure.
    pub err_msg: Option<String>,
    /// When it times out (sent or ongoing), ms.
    pub deadline: Option<u64>,
    /// Transitions recorded so far.
    pub transitions: u32,
    /// Last change, ms.
    pub updated_at: u64,
}

/// One recorded status change of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtaTransition {
    /// The attempt it belongs to.
    pub attempt: u32,
    /// The state before (`None` for the initial `queued`).
    pub from: Option<OtaTaskState>,
    /// The state after.
    pub to: OtaTaskState,
    /// When, ms.
    pub at: u64,
    /// The device's `errCode`, with `failed`.
    pub err_code: Option<u16>,
}

/// A write of a task's current row, optionally with one new transition (numbered
/// `record.transitions - 1`).
#[derive(Debug, Clone)]
pub struct OtaTaskWrite {
    /// The new row (`record.transitions` already counts `transition`).
    pub record: OtaTaskRecord,
    /// The transition to append, if the state changed.
    pub transition: Option<OtaTransition>,
}

/// Storage of OTA jobs. Every write method is durable when it returns `Ok`.
#[async_trait::async_trait]
pub trait OtaStore: Send + Sync {
    /// Creates the job and one `queued` task per thing (with its first transition) in ONE
    /// transaction. `Ok(Err(missing))` when some things do not exist: nothing is stored.
    async fn create_ota_job(&self, job: &NewOtaJob) -> Result<Result<(), Vec<String>>, StoreError>;

    /// The job with its counts, if it exists.
    async fn ota_job(&self, job_id: &str) -> Result<Option<OtaJobRecord>, StoreError>;

    /// Ids of the jobs still running (resumed at start-up), oldest first.
    async fn ota_running_jobs(&self) -> Result<Vec<String>, StoreError>;

    /// The job's tasks that have not ended, in rollout order.
    async fn ota_open_tasks(&self, job_id: &str) -> Result<Vec<OtaTaskRecord>, StoreError>;

    /// One page of the job's tasks in rollout order (optionally only those in `status`) and the
    /// number of such tasks. `page_size` is capped at [`MAX_TASK_PAGE`].
    async fn ota_tasks_page(
        &self,
        job_id: &str,
        status: Option<OtaTaskState>,
        page_index: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<OtaTaskRecord>), StoreError>;

    /// One task with its transitions in order, if it exists.
    async fn ota_task(
        &self,
        job_id: &str,
        thing_id: &str,
    ) -> Result<Option<(OtaTaskRecord, Vec<OtaTransition>)>, StoreError>;

    /// Writes task rows (and their new transitions) and job statuses in ONE transaction. A task
    /// whose row is gone (its thing was deleted) is skipped.
    async fn ota_write(
        &self,
        tasks: &[OtaTaskWrite],
        jobs: &[(String, OtaJobStatus, u64)],
    ) -> Result<(), StoreError>;
}
