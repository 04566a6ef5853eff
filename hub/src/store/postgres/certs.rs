//! [`CertificateStore`] on PostgreSQL: the shared statements of `store/certs.rs`, run under the
//! operation deadline and the write retry of `write.rs`.

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::write::TxError;
use super::{PgStore, deadline, from_db, to_db};
use crate::store::StoreError;
use crate::store::certs::{CERT_COLS, CertificateRecord, CertificateStore, sql};
use crate::store::fault::Writer;

fn cert_from_row(row: &PgRow) -> Result<CertificateRecord, StoreError> {
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
impl CertificateStore for PgStore {
    async fn add_certificate(&self, c: &CertificateRecord) -> Result<(), StoreError> {
        let done = self
            .writing(|| async move {
                let mut tx = self.begin_write(Writer::Things).await?;
                let thing: Option<i32> = sqlx::query_scalar(sql::THING)
                    .bind(&c.thing_id)
                    .fetch_optional(tx.conn()?)
                    .await?;
                if thing.is_none() {
                    tx.rollback().await?;
                    return Err(TxError::Fail(StoreError::NotFound));
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
                Ok(done.rows_affected())
            })
            .await?;
        match done {
            0 => Err(StoreError::AlreadyExists),
            _ => Ok(()),
        }
    }

    async fn certificates(&self, thing: &str) -> Result<Vec<CertificateRecord>, StoreError> {
        deadline(async {
            let sql = format!(
                "SELECT {CERT_COLS} FROM thing_certificates WHERE thing_id = $1 \
                 ORDER BY created_at, fingerprint"
            );
            let rows = sqlx::query(&sql)
                .bind(thing)
                .fetch_all(&mut *self.conn().await?)
                .await?;
            rows.iter().map(cert_from_row).collect()
        })
        .await
    }

    async fn delete_certificate(&self, thing: &str, fingerprint: &str) -> Result<(), StoreError> {
        let done = self
            .writing(|| async move {
                let mut tx = self.begin_write(Writer::Things).await?;
                let done = sqlx::query(sql::DELETE)
                    .bind(thing)
                    .bind(fingerprint)
                    .execute(tx.conn()?)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            })
            .await?;
        match done {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    async fn certificate_thing(
        &self,
        fingerprint: &str,
    ) -> Result<Option<(String, bool)>, StoreError> {
        deadline(async {
            let row = sqlx::query(sql::THING_OF)
                .bind(fingerprint)
                .fetch_optional(&mut *self.conn().await?)
                .await?;
            row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
        })
        .await
    }
}
