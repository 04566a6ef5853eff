//! [`CertificateStore`] on SQLite, with the shared statements of `store/certs.rs`.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, from_db, to_db};
use crate::store::StoreError;
use crate::store::certs::{CERT_COLS, CertificateRecord, CertificateStore, sql};
use crate::store::fault::Writer;

fn cert_from_row(row: &SqliteRow) -> Result<CertificateRecord, StoreError> {
    Ok(CertificateRecord {
        fingerprint: row.try_get(0)?,
        thing_id: row.try_get(1)?,
        pem: row.try_get(2)?,
        common_name: row.try_get(3)?,
        not_after: from_db(row.try_get(4)?),
        created_at: from_db(row.try_get(5)?),
    })
}

#[async_trait::async_trait]
impl CertificateStore for SqliteStore {
    async fn add_certificate(&self, c: &CertificateRecord) -> Result<(), StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Things).await?;
            let thing: Option<i64> = sqlx::query_scalar(sql::THING)
                .bind(&c.thing_id)
                .fetch_optional(tx.conn()?)
                .await?;
            if thing.is_none() {
                tx.rollback().await?;
                return Err(StoreError::NotFound);
            }
            let done = sqlx::query(sql::INSERT)
                .bind(&c.fingerprint)
                .bind(&c.thing_id)
                .bind(&c.pem)
                .bind(&c.common_name)
                .bind(to_db(c.not_after))
                .bind(to_db(c.created_at))
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            match done.rows_affected() {
                0 => Err(StoreError::AlreadyExists),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn certificates(&self, thing: &str) -> Result<Vec<CertificateRecord>, StoreError> {
        let sql = format!(
            "SELECT {CERT_COLS} FROM thing_certificates WHERE thing_id = $1 \
             ORDER BY created_at, fingerprint"
        );
        let rows = sqlx::query(&sql)
            .bind(thing)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(cert_from_row).collect()
    }

    async fn delete_certificate(&self, thing: &str, fingerprint: &str) -> Result<(), StoreError> {
        self.writing(async {
            let mut tx = self.begin_write(Writer::Things).await?;
            let done = sqlx::query(sql::DELETE)
                .bind(thing)
                .bind(fingerprint)
                .execute(tx.conn()?)
                .await?;
            tx.commit().await?;
            match done.rows_affected() {
                0 => Err(StoreError::NotFound),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn certificate_thing(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(String, bool)>, StoreError> {
        let row = sqlx::query(sql::THING_OF)
            .bind(fingerprint)
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }
}
