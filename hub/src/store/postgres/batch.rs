//! The shadow writes of one group commit on PostgreSQL: compare-and-swap on `version`, many
//! writes per statement (arrays expanded with `unnest`), per-write answers from `RETURNING`.

use std::collections::HashSet;

use sqlx::Row;
use sqlx::postgres::PgRow;

use super::to_db;
use super::write::{TxError, WriteTx};
use crate::store::{ShadowWrite, StoreError};

/// Shadow writes as columns, for `unnest`.
#[derive(Default)]
struct Columns<'a> {
    thing: Vec<&'a str>,
    name: Vec<&'a str>,
    new_version: Vec<i64>,
    body: Vec<&'a str>,
    updated_at: Vec<i64>,
    expected: Vec<i64>,
    expected_body: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(writes: &'a [ShadowWrite], rows: &[usize]) -> Self {
        let mut c = Columns::default();
        for &i in rows {
            let w = &writes[i];
            c.thing.push(&w.thing_id);
            c.name.push(&w.name);
            c.new_version.push(to_db(w.new_version));
            c.body.push(&w.body);
            c.updated_at.push(to_db(w.updated_at));
            c.expected.push(to_db(w.expected_version));
            c.expected_body.push(w.expected_body.as_deref());
        }
        c
    }
}

type Keys = HashSet<(String, String)>;

fn written_keys(rows: Vec<PgRow>) -> Result<Keys, StoreError> {
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Applies `writes` inside `tx`: in rounds in which each shadow appears at most once (a batch
/// may hold v1→v2 and v2→v3 of one shadow), each round one INSERT for first versions and one
/// UPDATE for the others. Per-write failures are read from the `RETURNING` rows, never from
/// SQL errors, so they leave the transaction usable.
pub(super) async fn apply_writes(
    tx: &mut WriteTx<'_>,
    writes: &[ShadowWrite],
) -> Result<Vec<Result<(), StoreError>>, TxError> {
    // Lock the existing rows of the batch in key order before changing any, so that two
    // instances writing overlapping batches queue instead of deadlocking.
    let all = Columns::of(writes, &(0..writes.len()).collect::<Vec<_>>());
    sqlx::query(
        "SELECT 1 FROM shadows s \
           JOIN unnest($1::text[], $2::text[]) AS k(thing_id, name) \
             ON s.thing_id = k.thing_id AND s.name = k.name \
          ORDER BY s.thing_id, s.name FOR UPDATE OF s",
    )
    .bind(&all.thing)
    .bind(&all.name)
    .fetch_all(tx.conn()?)
    .await?;

    let mut out: Vec<Option<Result<(), StoreError>>> = vec![None; writes.len()];
    let mut pending: Vec<usize> = (0..writes.len()).collect();
    while !pending.is_empty() {
        let mut seen = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) = pending
            .iter()
            .partition(|&&i| seen.insert((&writes[i].thing_id, &writes[i].name)));
        pending = later;
        let (creates, updates): (Vec<usize>, Vec<usize>) = round
            .iter()
            .partition(|&&i| writes[i].expected_version == 0);
        let mut written = insert_shadows(tx, writes, &creates).await?;
        written.extend(update_shadows(tx, writes, &updates).await?);
        let missed: Vec<&str> = round
            .iter()
            .map(|&i| &writes[i])
            .filter(|w| !written.contains(&(w.thing_id.clone(), w.name.clone())))
            .map(|w| w.thing_id.as_str())
            .collect();
        let existing: HashSet<String> = if missed.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar("SELECT thing_id FROM things WHERE thing_id = ANY($1::text[])")
                .bind(&missed)
                .fetch_all(tx.conn()?)
                .await?
                .into_iter()
                .collect()
        };
        for &i in &round {
            let w = &writes[i];
            out[i] = Some(if written.contains(&(w.thing_id.clone(), w.name.clone())) {
                Ok(())
            } else if existing.contains(&w.thing_id) {
                Err(StoreError::VersionConflict)
            } else {
                Err(StoreError::NotFound)
            });
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or(Err(StoreError::Unavailable("write not attempted".into()))))
        .collect())
}

/// Creates the shadows at `rows` (expected version 0); returns the keys written. The EXISTS
/// guard avoids a foreign-key error for a thing that does not exist.
async fn insert_shadows(
    tx: &mut WriteTx<'_>,
    writes: &[ShadowWrite],
    rows: &[usize],
) -> Result<Keys, TxError> {
    if rows.is_empty() {
        return Ok(Keys::default());
    }
    let c = Columns::of(writes, rows);
    let rows = sqlx::query(
        "INSERT INTO shadows (thing_id, name, version, body, updated_at) \
         SELECT v.thing_id, v.name, v.version, v.body, v.updated_at \
           FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[]) \
                AS v(thing_id, name, version, body, updated_at) \
          WHERE EXISTS (SELECT 1 FROM things t WHERE t.thing_id = v.thing_id) \
          ORDER BY v.thing_id, v.name \
         ON CONFLICT (thing_id, name) DO NOTHING RETURNING thing_id, name",
    )
    .bind(&c.thing)
    .bind(&c.name)
    .bind(&c.new_version)
    .bind(&c.body)
    .bind(&c.updated_at)
    .fetch_all(tx.conn()?)
    .await?;
    Ok(written_keys(rows)?)
}

/// Moves the shadows at `rows` from their expected version (and body, when the write names one,
/// D-85) to the new one (CAS); returns the keys written.
async fn update_shadows(
    tx: &mut WriteTx<'_>,
    writes: &[ShadowWrite],
    rows: &[usize],
) -> Result<Keys, TxError> {
    if rows.is_empty() {
        return Ok(Keys::default());
    }
    let c = Columns::of(writes, rows);
    let rows = sqlx::query(
        "UPDATE shadows s SET version = v.version, body = v.body, updated_at = v.updated_at \
           FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], \
                       $6::int8[], $7::text[]) \
                AS v(thing_id, name, version, body, updated_at, expected, expected_body) \
          WHERE s.thing_id = v.thing_id AND s.name = v.name AND s.version = v.expected \
            AND (v.expected_body IS NULL OR s.body = v.expected_body) \
         RETURNING s.thing_id, s.name",
    )
    .bind(&c.thing)
    .bind(&c.name)
    .bind(&c.new_version)
    .bind(&c.body)
    .bind(&c.updated_at)
    .bind(&c.expected)
    .bind(&c.expected_body)
    .fetch_all(tx.conn()?)
    .await?;
    Ok(written_keys(rows)?)
}
