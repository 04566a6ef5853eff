//! Durable state of fleet jobs (S-12): the jobs and, per (job, thing), its outcome.
//!
//! The jobs engine ([`crate::jobs`]) is the only writer of per-thing outcomes; the REST API reads
//! counts and pages straight from here, so what it shows is what survives a restart. Both
//! backends run the statements of its `sql` module unchanged (standard SQL, `$N` placeholders) through
//! the generic helpers at the end of this file; `sqlite/jobs.rs` and `postgres/jobs.rs` only
//! open their transactions and connections around them.

use iothub_spec::code::{JobStatus, JobThingState};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::StoreError;

/// Largest page of [`JobStore::job_things_page`] and [`JobStore::jobs`].
pub const MAX_JOB_PAGE: u64 = 1000;

/// What a job does to each thing (S-12.1), stored as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Operation {
    /// Invoke a direct method (S-5) and wait for its answer.
    #[serde(rename_all = "camelCase")]
    Method {
        /// The method name.
        name: String,
        /// The request `data`.
        #[serde(default)]
        payload: Value,
        /// How long to wait for the answer, seconds.
        timeout_s: u32,
    },
    /// Merge a patch into a shadow's desired state (S-3.4), as a REST shadow write.
    #[serde(rename_all = "camelCase")]
    Desired {
        /// The shadow (`default` when absent).
        shadow: String,
        /// The desired patch.
        patch: Map<String, Value>,
    },
    /// Replace the thing's tags, or merge-patch them (D-42).
    #[serde(rename_all = "camelCase")]
    Tags {
        /// `true`: replace the tags; `false`: RFC 7386 merge-patch.
        replace: bool,
        /// The tags or the patch.
        tags: Map<String, Value>,
    },
}

/// A job as stored (S-12.1, S-12.2).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// Its id (an S-1.1 id), unique.
    pub job_id: String,
    /// What it does to each thing.
    pub operation: Operation,
    /// The query the targets came from (`None`: an explicit list).
    pub target_query: Option<String>,
    /// Lifecycle.
    pub status: JobStatus,
    /// Number of targeted things.
    pub things: u64,
    /// No thing is reached before, ms.
    pub start_at: u64,
    /// Things not reached by then end `timed_out`, ms.
    pub end_at: u64,
    /// Sends per minute, at most.
    pub max_per_minute: u32,
    /// Attempts after the first, per thing.
    pub retries: u32,
    /// Creation time, ms.
    pub created_at: u64,
    /// When it completed or was canceled, ms.
    pub ended_at: Option<u64>,
}

/// One thing's outcome in a job (S-12.3).
#[derive(Debug, Clone, PartialEq)]
pub struct JobThingRecord {
    /// The job.
    pub job_id: String,
    /// The thing.
    pub thing_id: String,
    /// Position in the job's order (0-based).
    pub seq: u64,
    /// Where it is.
    pub status: JobThingState,
    /// Attempts made so far.
    pub attempts: u32,
    /// The device's method code, or the hub's refusal code.
    pub code: Option<u16>,
    /// The device's method `data`.
    pub response: Option<Value>,
    /// Why it failed or timed out.
    pub error: Option<String>,
    /// First attempt, ms.
    pub started_at: Option<u64>,
    /// Last change, ms.
    pub updated_at: u64,
    /// When it reached a final state, ms.
    pub ended_at: Option<u64>,
}

/// Storage of fleet jobs. Every write method is durable when it returns `Ok`.
#[async_trait::async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a job and one `queued` record per thing (in `things` order) in ONE transaction.
    /// [`StoreError::AlreadyExists`] if the id is taken.
    async fn create_job(&self, job: &JobRecord, things: &[String]) -> Result<(), StoreError>;

    /// One job, if it exists.
    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError>;

    /// One page of every job, newest first, and the number of jobs.
    async fn jobs(&self, page: u64, page_size: u64) -> Result<(u64, Vec<JobRecord>), StoreError>;

    /// The jobs that have not ended, oldest first (loaded by the engine).
    async fn open_jobs(&self) -> Result<Vec<JobRecord>, StoreError>;

    /// Number of the job's things per state (states with none left out).
    async fn job_counts(&self, job_id: &str) -> Result<Vec<(JobThingState, u64)>, StoreError>;

    /// One page of the job's things in job order (optionally only those in `status`), and the
    /// number of such things. `page_size` is capped at [`MAX_JOB_PAGE`].
    async fn job_things_page(
        &self,
        job_id: &str,
        status: Option<JobThingState>,
        page: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<JobThingRecord>), StoreError>;

    /// One thing's record in a job.
    async fn job_thing(
        &self,
        job_id: &str,
        thing_id: &str,
    ) -> Result<Option<JobThingRecord>, StoreError>;

    /// The job's things that are `queued` or `in_progress`, in job order.
    async fn open_job_things(&self, job_id: &str) -> Result<Vec<JobThingRecord>, StoreError>;

    /// Updates thing records and job statuses (`(job, status, ended_at)`: a start or an end) in
    /// ONE transaction. A record already final (e.g. canceled meanwhile) is left as it is: the
    /// answer says, per record, whether it was written. A job already ended is left as it is.
    async fn write_job_things(
        &self,
        things: &[JobThingRecord],
        jobs: &[(String, JobStatus, Option<u64>)],
    ) -> Result<Vec<bool>, StoreError>;

    /// Cancels a job that has not ended and its `queued` things, in ONE transaction; `false`
    /// when it had ended already. [`StoreError::NotFound`] if absent.
    async fn cancel_job(&self, job_id: &str, at: u64) -> Result<bool, StoreError>;

    /// Deletes the jobs (and their records) that ended before `t`; how many.
    async fn delete_jobs_ended_before(&self, t: u64) -> Result<u64, StoreError>;
}

/// The statements, shared by both backends.
pub(crate) mod sql {
    pub const JOB_COLS: &str = "job_id, operation, target_query, status, things, start_at, \
        end_at, max_per_minute, retries, created_at, ended_at";
    pub const THING_COLS: &str = "job_id, thing_id, seq, status, attempts, code, response, \
        error, started_at, updated_at, ended_at";
    pub const EXISTS: &str = "SELECT COUNT(*) FROM jobs WHERE job_id = $1";
    pub const INSERT_JOB: &str = "INSERT INTO jobs (job_id, operation, target_query, status, \
        things, start_at, end_at, max_per_minute, retries, created_at, ended_at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    /// Columns of one inserted thing, and how many rows one `INSERT` carries.
    pub const INSERT_THING_COLS: usize = 5;
    pub const INSERT_THINGS_ROWS: usize = 500;
    pub const OPEN: &str = "status IN ('scheduled', 'running')";
    pub const THING_OPEN: &str = "status IN ('queued', 'in_progress')";
    pub const COUNTS: &str = "SELECT status, COUNT(*) FROM job_things WHERE job_id = $1 \
        GROUP BY status";
    pub const UPDATE_THING: &str = "UPDATE job_things SET status = $3, attempts = $4, code = $5, \
        response = $6, error = $7, started_at = $8, updated_at = $9, ended_at = $10 \
        WHERE job_id = $1 AND thing_id = $2 AND status IN ('queued', 'in_progress')";
    pub const END_JOB: &str = "UPDATE jobs SET status = $2, ended_at = $3 \
        WHERE job_id = $1 AND status IN ('scheduled', 'running')";
    pub const CANCEL_THINGS: &str = "UPDATE job_things SET status = 'canceled', updated_at = $2, \
        ended_at = $2 WHERE job_id = $1 AND status = 'queued'";
    pub const DELETE_ENDED: &str = "DELETE FROM jobs WHERE ended_at IS NOT NULL AND ended_at < $1";

    /// `INSERT` of `rows` things (`job_id, thing_id, seq, status, attempts, updated_at`; the
    /// status, attempts and time are literals bound once per row).
    pub fn insert_things(rows: usize) -> String {
        let mut s = String::from(
            "INSERT INTO job_things (job_id, thing_id, seq, status, attempts, updated_at) VALUES ",
        );
        for r in 0..rows {
            let b = r * super::sql::INSERT_THING_COLS;
            if r > 0 {
                s.push_str(", ");
            }
            s.push_str(&format!(
                "(${}, ${}, ${}, ${}, 0, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            ));
        }
        s
    }
}

/// A query of backend `DB` with its arguments.
pub(crate) type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>;

/// What the shared helpers need of a backend: binding and reading the two column types the
/// job tables use (text and 64-bit integers, both nullable).
pub(crate) trait Db: sqlx::Database {
    /// Binds a text value (`None` binds NULL).
    fn text<'q>(q: Query<'q, Self>, v: Option<String>) -> Query<'q, Self>;
    /// Binds an integer (`None` binds NULL).
    fn int<'q>(q: Query<'q, Self>, v: Option<i64>) -> Query<'q, Self>;
    /// Reads column `i` as text.
    fn get_text(row: &Self::Row, i: usize) -> Result<Option<String>, StoreError>;
    /// Reads column `i` as an integer.
    fn get_int(row: &Self::Row, i: usize) -> Result<Option<i64>, StoreError>;
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Unavailable(format!("corrupt job {what}: {value:?}"))
}

fn need<T>(v: Option<T>, what: &str) -> Result<T, StoreError> {
    v.ok_or_else(|| corrupt(what, "NULL"))
}

fn ms(v: Option<i64>) -> Option<u64> {
    v.map(super::from_db)
}

fn db(v: u64) -> Option<i64> {
    Some(super::to_db(v))
}

/// The `INSERT` of a job.
pub(crate) fn insert_job<'q, DB: Db>(job: &JobRecord) -> Result<Query<'q, DB>, StoreError> {
    let op =
        serde_json::to_string(&job.operation).map_err(|e| corrupt("operation", &e.to_string()))?;
    let mut q = sqlx::query(sql::INSERT_JOB);
    q = DB::text(q, Some(job.job_id.clone()));
    q = DB::text(q, Some(op));
    q = DB::text(q, job.target_query.clone());
    q = DB::text(q, Some(job.status.as_str().to_owned()));
    q = DB::int(q, db(job.things));
    q = DB::int(q, db(job.start_at));
    q = DB::int(q, db(job.end_at));
    q = DB::int(q, Some(i64::from(job.max_per_minute)));
    q = DB::int(q, Some(i64::from(job.retries)));
    q = DB::int(q, db(job.created_at));
    q = DB::int(q, job.ended_at.and_then(db));
    Ok(q)
}

/// The `INSERT`s of a job's things, [`sql::INSERT_THINGS_ROWS`] per statement: the SQL of each
/// chunk and the chunk's first position.
pub(crate) fn thing_chunks(things: &[String]) -> impl Iterator<Item = (usize, &[String])> {
    things
        .chunks(sql::INSERT_THINGS_ROWS)
        .enumerate()
        .map(|(i, c)| (i * sql::INSERT_THINGS_ROWS, c))
}

/// Binds one chunk of [`thing_chunks`] to `text` (from [`sql::insert_things`]).
pub(crate) fn insert_things<'q, DB: Db>(
    text: &'q str,
    job_id: &str,
    first: usize,
    chunk: &[String],
    now: u64,
) -> Query<'q, DB> {
    let mut q = sqlx::query(text);
    for (i, thing) in chunk.iter().enumerate() {
        q = DB::text(q, Some(job_id.to_owned()));
        q = DB::text(q, Some(thing.clone()));
        q = DB::int(q, Some(super::to_db((first + i) as u64)));
        q = DB::text(q, Some(JobThingState::Queued.as_str().to_owned()));
        q = DB::int(q, db(now));
    }
    q
}

/// The `UPDATE` of one thing's record.
pub(crate) fn update_thing<'q, DB: Db>(t: &JobThingRecord) -> Query<'q, DB> {
    let mut q = sqlx::query(sql::UPDATE_THING);
    q = DB::text(q, Some(t.job_id.clone()));
    q = DB::text(q, Some(t.thing_id.clone()));
    q = DB::text(q, Some(t.status.as_str().to_owned()));
    q = DB::int(q, Some(i64::from(t.attempts)));
    q = DB::int(q, t.code.map(i64::from));
    q = DB::text(q, t.response.as_ref().map(Value::to_string));
    q = DB::text(q, t.error.clone());
    q = DB::int(q, t.started_at.and_then(db));
    q = DB::int(q, db(t.updated_at));
    q = DB::int(q, t.ended_at.and_then(db));
    q
}

/// The `UPDATE` of a job's status (a start, or an end at `at`).
pub(crate) fn end_job<'q, DB: Db>(
    job_id: &str,
    status: JobStatus,
    at: Option<u64>,
) -> Query<'q, DB> {
    let q = DB::text(sqlx::query(sql::END_JOB), Some(job_id.to_owned()));
    let q = DB::text(q, Some(status.as_str().to_owned()));
    DB::int(q, at.and_then(db))
}

/// A query of `text` with text arguments, then integer arguments.
pub(crate) fn with_args<'q, DB: Db>(text: &'q str, texts: &[&str], ints: &[u64]) -> Query<'q, DB> {
    let mut q = sqlx::query(text);
    for t in texts {
        q = DB::text(q, Some((*t).to_owned()));
    }
    for i in ints {
        q = DB::int(q, db(*i));
    }
    q
}

/// A job row (columns [`sql::JOB_COLS`]).
pub(crate) fn job_from_row<DB: Db>(row: &DB::Row) -> Result<JobRecord, StoreError> {
    let op = need(DB::get_text(row, 1)?, "operation")?;
    let status = need(DB::get_text(row, 3)?, "status")?;
    let int =
        |i: usize, what: &str| -> Result<i64, StoreError> { need(DB::get_int(row, i)?, what) };
    Ok(JobRecord {
        job_id: need(DB::get_text(row, 0)?, "job_id")?,
        operation: serde_json::from_str(&op).map_err(|_| corrupt("operation", &op))?,
        target_query: DB::get_text(row, 2)?,
        status: JobStatus::parse(&status).ok_or_else(|| corrupt("status", &status))?,
        things: super::from_db(int(4, "things")?),
        start_at: super::from_db(int(5, "start_at")?),
        end_at: super::from_db(int(6, "end_at")?),
        max_per_minute: u32::try_from(int(7, "max_per_minute")?).unwrap_or(u32::MAX),
        retries: u32::try_from(int(8, "retries")?).unwrap_or(u32::MAX),
        created_at: super::from_db(int(9, "created_at")?),
        ended_at: ms(DB::get_int(row, 10)?),
    })
}

/// A thing row (columns [`sql::THING_COLS`]).
pub(crate) fn thing_from_row<DB: Db>(row: &DB::Row) -> Result<JobThingRecord, StoreError> {
    let status = need(DB::get_text(row, 3)?, "thing status")?;
    let response = match DB::get_text(row, 6)? {
        Some(text) => Some(serde_json::from_str(&text).map_err(|_| corrupt("response", &text))?),
        None => None,
    };
    Ok(JobThingRecord {
        job_id: need(DB::get_text(row, 0)?, "job_id")?,
        thing_id: need(DB::get_text(row, 1)?, "thing_id")?,
        seq: super::from_db(need(DB::get_int(row, 2)?, "seq")?),
        status: JobThingState::parse(&status).ok_or_else(|| corrupt("thing status", &status))?,
        attempts: u32::try_from(need(DB::get_int(row, 4)?, "attempts")?).unwrap_or(u32::MAX),
        code: DB::get_int(row, 5)?.map(|c| u16::try_from(c).unwrap_or(u16::MAX)),
        response,
        error: DB::get_text(row, 7)?,
        started_at: ms(DB::get_int(row, 8)?),
        updated_at: super::from_db(need(DB::get_int(row, 9)?, "updated_at")?),
        ended_at: ms(DB::get_int(row, 10)?),
    })
}

/// A `(status, count)` row of [`sql::COUNTS`].
pub(crate) fn count_from_row<DB: Db>(row: &DB::Row) -> Result<(JobThingState, u64), StoreError> {
    let status = need(DB::get_text(row, 0)?, "thing status")?;
    let n = need(DB::get_int(row, 1)?, "count")?;
    Ok((
        JobThingState::parse(&status).ok_or_else(|| corrupt("thing status", &status))?,
        super::from_db(n),
    ))
}

/// The SELECT of one page of things: `WHERE job_id = $1 [AND status = $2]`, then `LIMIT` and
/// `OFFSET` as integers.
pub(crate) fn things_page_sql(with_status: bool) -> (String, String) {
    let filter = if with_status {
        "WHERE job_id = $1 AND status = $2"
    } else {
        "WHERE job_id = $1"
    };
    let n = if with_status { 3 } else { 2 };
    (
        format!("SELECT COUNT(*) FROM job_things {filter}"),
        format!(
            "SELECT {} FROM job_things {filter} ORDER BY seq LIMIT ${n} OFFSET ${}",
            sql::THING_COLS,
            n + 1
        ),
    )
}
