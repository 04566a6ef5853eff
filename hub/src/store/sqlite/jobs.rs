//! [`JobStore`] on SQLite: the shared statements and helpers of `store/jobs.rs`, reads on the
//! read pool, writes in one `BEGIN IMMEDIATE` transaction each.

use iothub_spec::code::{JobStatus, JobThingState};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::store::StoreError;
use crate::store::fault::Writer;
use crate::store::jobs::{
    Db, JobRecord, JobStore, JobThingRecord, MAX_JOB_PAGE, Query, count_from_row, end_job,
    insert_job, insert_things, job_from_row, sql, thing_chunks, thing_from_row, things_page_sql,
    update_thing, with_args,
};

impl Db for sqlx::Sqlite {
    fn text<'q>(q: Query<'q, Self>, v: Option<String>) -> Query<'q, Self> {
        q.bind(v)
    }
    fn int<'q>(q: Query<'q, Self>, v: Option<i64>) -> Query<'q, Self> {
        q.bind(v)
    }
    fn get_text(row: &SqliteRow, i: usize) -> Result<Option<String>, StoreError> {
        Ok(row.try_get(i)?)
    }
    fn get_int(row: &SqliteRow, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(row.try_get(i)?)
    }
}

type S = sqlx::Sqlite;

#[async_trait::async_trait]
impl JobStore for SqliteStore {
    async fn create_job(&self, job: &JobRecord, things: &[String]) -> Result<(), StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Jobs).await?;
            let row = with_args::<S>(sql::EXISTS, &[&job.job_id], &[])
                .fetch_one(tx.conn()?)
                .await?;
            if S::get_int(&row, 0)?.unwrap_or(0) > 0 {
                tx.rollback().await?;
                return Err(StoreError::AlreadyExists);
            }
            insert_job::<S>(job)?.execute(tx.conn()?).await?;
            for (first, chunk) in thing_chunks(things) {
                let text = sql::insert_things(chunk.len());
                insert_things::<S>(&text, &job.job_id, first, chunk, job.created_at)
                    .execute(tx.conn()?)
                    .await?;
            }
            tx.commit().await
        })
        .await
    }

    async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let text = format!("SELECT {} FROM jobs WHERE job_id = $1", sql::JOB_COLS);
        let row = with_args::<S>(&text, &[job_id], &[])
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(job_from_row::<S>).transpose()
    }

    async fn jobs(&self, page: u64, page_size: u64) -> Result<(u64, Vec<JobRecord>), StoreError> {
        let size = page_size.min(MAX_JOB_PAGE);
        let total = with_args::<S>("SELECT COUNT(*) FROM jobs", &[], &[])
            .fetch_one(&self.reader)
            .await?;
        let text = format!(
            "SELECT {} FROM jobs ORDER BY created_at DESC, job_id LIMIT $1 OFFSET $2",
            sql::JOB_COLS
        );
        let rows = with_args::<S>(&text, &[], &[size, page.saturating_mul(size)])
            .fetch_all(&self.reader)
            .await?;
        let jobs = rows
            .iter()
            .map(job_from_row::<S>)
            .collect::<Result<_, _>>()?;
        Ok((
            crate::store::from_db(S::get_int(&total, 0)?.unwrap_or(0)),
            jobs,
        ))
    }

    async fn open_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let text = format!(
            "SELECT {} FROM jobs WHERE {} ORDER BY created_at, job_id",
            sql::JOB_COLS,
            sql::OPEN
        );
        let rows = sqlx::query(&text).fetch_all(&self.reader).await?;
        rows.iter().map(job_from_row::<S>).collect()
    }

    async fn job_counts(&self, job_id: &str) -> Result<Vec<(JobThingState, u64)>, StoreError> {
        let rows = with_args::<S>(sql::COUNTS, &[job_id], &[])
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(count_from_row::<S>).collect()
    }

    async fn job_things_page(
        &self,
        job_id: &str,
        status: Option<JobThingState>,
        page: u64,
        page_size: u64,
    ) -> Result<(u64, Vec<JobThingRecord>), StoreError> {
        let size = page_size.min(MAX_JOB_PAGE);
        let (count, select) = things_page_sql(status.is_some());
        let mut texts = vec![job_id];
        if let Some(s) = status {
            texts.push(s.as_str());
        }
        let total = with_args::<S>(&count, &texts, &[])
            .fetch_one(&self.reader)
            .await?;
        let rows = with_args::<S>(&select, &texts, &[size, page.saturating_mul(size)])
            .fetch_all(&self.reader)
            .await?;
        let things = rows
            .iter()
            .map(thing_from_row::<S>)
            .collect::<Result<_, _>>()?;
        Ok((
            crate::store::from_db(S::get_int(&total, 0)?.unwrap_or(0)),
            things,
        ))
    }

    async fn job_thing(
        &self,
        job_id: &str,
        thing_id: &str,
    ) -> Result<Option<JobThingRecord>, StoreError> {
        let text = format!(
            "SELECT {} FROM job_things WHERE job_id = $1 AND thing_id = $2",
            sql::THING_COLS
        );
        let row = with_args::<S>(&text, &[job_id, thing_id], &[])
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(thing_from_row::<S>).transpose()
    }

    async fn open_job_things(&self, job_id: &str) -> Result<Vec<JobThingRecord>, StoreError> {
        let text = format!(
            "SELECT {} FROM job_things WHERE job_id = $1 AND {} ORDER BY seq",
            sql::THING_COLS,
            sql::THING_OPEN
        );
        let rows = with_args::<S>(&text, &[job_id], &[])
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(thing_from_row::<S>).collect()
    }

    async fn write_job_things(
        &self,
        things: &[JobThingRecord],
        jobs: &[(String, JobStatus, Option<u64>)],
    ) -> Result<Vec<bool>, StoreError> {
        if things.is_empty() && jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.writing(async {
            let mut tx = self.begin_write(Writer::Jobs).await?;
            let mut written = Vec::with_capacity(things.len());
            for t in things {
                let done = update_thing::<S>(t).execute(tx.conn()?).await?;
                written.push(done.rows_affected() > 0);
            }
            for (job, status, at) in jobs {
                end_job::<S>(job, *status, *at).execute(tx.conn()?).await?;
            }
            tx.commit().await?;
            Ok(written)
        })
        .await
    }

    async fn cancel_job(&self, job_id: &str, at: u64) -> Result<bool, StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Jobs).await?;
            let done = end_job::<S>(job_id, JobStatus::Canceled, Some(at))
                .execute(tx.conn()?)
                .await?;
            if done.rows_affected() == 0 {
                let row = with_args::<S>(sql::EXISTS, &[job_id], &[])
                    .fetch_one(tx.conn()?)
                    .await?;
                let exists = S::get_int(&row, 0)?.unwrap_or(0) > 0;
                tx.rollback().await?;
                return if exists {
                    Ok(false)
                } else {
                    Err(StoreError::NotFound)
                };
            }
            with_args::<S>(sql::CANCEL_THINGS, &[job_id], &[at])
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn delete_jobs_ended_before(&self, t: u64) -> Result<u64, StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Jobs).await?;
            let done = with_args::<S>(sql::DELETE_ENDED, &[], &[t])
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
        .await
    }
}
