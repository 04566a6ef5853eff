//! Storage of registry sync (S-13): the durable task queue that carries the hub's registry
//! changes to an external registry (S-13.4), and the sync events (S-13.5).
//!
//! The tasks are written by the database itself: triggers on `things` (migration
//! `0008_registry_sync.sql`) insert one in the same transaction as the thing's insert, delete or
//! `enabled` change, while the push mode is on ([`SyncStore::set_push`]). So no path that
//! changes a thing (REST, batch, provisioning, a fleet job) can commit the change without its
//! task, or the task without the change. This trait only reads them and records what became of
//! them.
//!
//! The statements are shared by both backends (`sql`); the row decoding goes through the
//! jobs' `Db` helpers.

use iothub_spec::code::SyncEventKind;
use serde_json::{Map, Value};

use super::StoreError;
use super::jobs::Db;

/// Most tasks returned by one [`SyncStore::due_tasks`].
pub const MAX_DUE: u64 = 1000;
/// Most events returned by one [`SyncStore::events`].
pub const MAX_EVENTS_PAGE: u64 = 1000;

/// What a task asks of the external registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOp {
    /// Create the device (the thing was created or enabled).
    Create,
    /// Delete the device (the thing was deleted or disabled).
    Delete,
}

impl TaskOp {
    /// The stored string.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskOp::Create => "create",
            TaskOp::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<TaskOp> {
        match s {
            "create" => Some(TaskOp::Create),
            "delete" => Some(TaskOp::Delete),
            _ => None,
        }
    }
}

/// One pending task.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncTask {
    /// Its id: a thing's tasks run in id order.
    pub id: u64,
    /// The thing it is about.
    pub thing_id: String,
    /// What to do.
    pub op: TaskOp,
    /// The thing's tags when the task was written.
    pub tags: Map<String, Value>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the task was written (its total deadline counts from here), ms since the epoch.
    pub created_at: u64,
    /// Not attempted before this time.
    pub next_at: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// An event to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSyncEvent {
    /// What happened.
    pub kind: SyncEventKind,
    /// When, ms since the epoch.
    pub at: u64,
    /// The thing concerned.
    pub thing_id: Option<String>,
    /// The attempt number, for events of a task.
    pub attempt: Option<u32>,
    /// A short explanation (an error), bounded by the caller.
    pub detail: Option<String>,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncEvent {
    /// Increasing id (a cursor).
    pub id: u64,
    /// The event.
    pub event: NewSyncEvent,
}

/// Which events to list: each set field must match; ascending by id unless `newest_first`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Only events at or after this time (ms since the epoch).
    pub since: Option<u64>,
    /// Only events with an id above this one.
    pub after: Option<u64>,
    /// Only this thing's events.
    pub thing: Option<String>,
    /// Only events of this kind.
    pub kind: Option<SyncEventKind>,
    /// At most this many (capped at [`MAX_EVENTS_PAGE`]).
    pub limit: u64,
    /// The newest first (the console's view) instead of the oldest.
    pub newest_first: bool,
}

/// Durable registry sync state. Every write is one transaction.
#[async_trait::async_trait]
pub trait SyncStore: Send + Sync {
    /// Turns the writing of tasks by the registry's triggers on or off.
    async fn set_push(&self, on: bool) -> Result<(), StoreError>;

    /// Up to `limit` tasks due at `now`, in id order, each the oldest task of its thing (a
    /// thing's later tasks wait for its earlier ones).
    async fn due_tasks(&self, now: u64, limit: u64) -> Result<Vec<SyncTask>, StoreError>;

    /// How many tasks are pending, due or not.
    async fn pending_tasks(&self) -> Result<u64, StoreError>;

    /// Removes a task that is done (succeeded or given up) and records `event`, together.
    async fn finish_task(&self, id: u64, event: &NewSyncEvent) -> Result<(), StoreError>;

    /// Records a failed attempt of a task (its new attempt count, when to try again, why) and
    /// `event`, together.
    async fn retry_task(
        &self,
        id: u64,
        attempts: u32,
        next_at: u64,
        error: &str,
        event: &NewSyncEvent,
    ) -> Result<(), StoreError>;

    /// Records events (the scheduled sync's), in one transaction.
    async fn add_events(&self, events: &[NewSyncEvent]) -> Result<(), StoreError>;

    /// The events matching `filter`, ascending by id.
    async fn events(&self, filter: &EventFilter) -> Result<Vec<SyncEvent>, StoreError>;

    /// Deletes events older than `before` and all but the newest `keep`; returns how many.
    async fn prune_events(&self, keep: u64, before: u64) -> Result<u64, StoreError>;
}

/// The statements, in the `$N` syntax both databases accept. Text arguments come first, then
/// integers (the order [`super::jobs::with_args`] binds them in).
pub(crate) mod sql {
    /// `$1` 0/1.
    pub const SET_PUSH: &str = "UPDATE registry_sync_mode SET push = $1 WHERE id = 1";
    /// `$1` now, `$2` limit.
    pub const DUE: &str = "SELECT t.id, t.thing_id, t.op, t.tags, t.attempts, t.created_at, \
        t.next_at, t.last_error FROM registry_sync_tasks t WHERE t.next_at <= $1 AND NOT EXISTS \
        (SELECT 1 FROM registry_sync_tasks e WHERE e.thing_id = t.thing_id AND e.id < t.id) \
        ORDER BY t.id LIMIT $2";
    /// The number of pending tasks.
    pub const COUNT: &str = "SELECT COUNT(*) FROM registry_sync_tasks";
    /// `$1` id.
    pub const FINISH: &str = "DELETE FROM registry_sync_tasks WHERE id = $1";
    /// `$1` error, `$2` attempts, `$3` next_at, `$4` id.
    pub const RETRY: &str = "UPDATE registry_sync_tasks SET last_error = $1, attempts = $2, \
        next_at = $3 WHERE id = $4";
    /// `$1` kind, `$2` thing, `$3` detail, `$4` at, `$5` attempt.
    pub const INSERT_EVENT: &str = "INSERT INTO registry_sync_events \
        (kind, thing_id, detail, at, attempt) VALUES ($1, $2, $3, $4, $5)";
    /// `$1` before.
    pub const PRUNE_AGE: &str = "DELETE FROM registry_sync_events WHERE at < $1";
    /// `$1` keep.
    pub const PRUNE_COUNT: &str = "DELETE FROM registry_sync_events WHERE id <= \
        (SELECT MAX(id) FROM registry_sync_events) - $1";
    /// `$1` thing id; returns it when it existed.
    pub const DELETE_THING: &str = "DELETE FROM things WHERE thing_id = $1 RETURNING thing_id";
    /// `$1` thing id; returns it when it was enabled.
    pub const DISABLE_THING: &str = "UPDATE things SET enabled = FALSE \
        WHERE thing_id = $1 AND enabled = TRUE RETURNING thing_id";
    /// The columns of an event row.
    pub const EVENT_COLS: &str = "id, at, kind, thing_id, attempt, detail";
}

/// The `SELECT` of [`SyncStore::events`] and its arguments: texts (thing, kind) then integers.
pub(crate) fn events_sql(f: &EventFilter) -> (String, Vec<String>, Vec<u64>) {
    let mut texts = Vec::new();
    let mut ints = Vec::new();
    let mut conds = Vec::new();
    if let Some(thing) = &f.thing {
        texts.push(thing.clone());
        conds.push(format!("thing_id = ${}", texts.len()));
    }
    if let Some(kind) = f.kind {
        texts.push(kind.as_str().to_owned());
        conds.push(format!("kind = ${}", texts.len()));
    }
    let base = texts.len();
    if let Some(since) = f.since {
        ints.push(since);
        conds.push(format!("at >= ${}", base + ints.len()));
    }
    if let Some(after) = f.after {
        ints.push(after);
        conds.push(format!("id > ${}", base + ints.len()));
    }
    ints.push(f.limit.clamp(1, MAX_EVENTS_PAGE));
    let limit = base + ints.len();
    let filter = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    (
        format!(
            "SELECT {} FROM registry_sync_events{filter} ORDER BY id{} LIMIT ${limit}",
            sql::EVENT_COLS,
            if f.newest_first { " DESC" } else { "" }
        ),
        texts,
        ints,
    )
}

/// The insert of one event.
pub(crate) fn insert_event<'q, DB: Db>(e: &NewSyncEvent) -> super::jobs::Query<'q, DB> {
    let q = sqlx::query(sql::INSERT_EVENT);
    let q = DB::text(q, Some(e.kind.as_str().to_owned()));
    let q = DB::text(q, e.thing_id.clone());
    let q = DB::text(q, e.detail.clone());
    let q = DB::int(q, Some(super::to_db(e.at)));
    DB::int(q, e.attempt.map(i64::from))
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Unavailable(format!("corrupt registry sync {what}: {value:?}"))
}

fn need<T>(v: Option<T>, what: &str) -> Result<T, StoreError> {
    v.ok_or_else(|| corrupt(what, "NULL"))
}

/// A task row (the columns of [`sql::DUE`]).
pub(crate) fn task_from_row<DB: Db>(row: &DB::Row) -> Result<SyncTask, StoreError> {
    let op = need(DB::get_text(row, 2)?, "op")?;
    let tags = need(DB::get_text(row, 3)?, "tags")?;
    let int = |i: usize, what: &str| -> Result<u64, StoreError> {
        Ok(super::from_db(need(DB::get_int(row, i)?, what)?))
    };
    Ok(SyncTask {
        id: int(0, "id")?,
        thing_id: need(DB::get_text(row, 1)?, "thing_id")?,
        op: TaskOp::parse(&op).ok_or_else(|| corrupt("op", &op))?,
        tags: serde_json::from_str(&tags).map_err(|_| corrupt("tags", &tags))?,
        attempts: u32::try_from(int(4, "attempts")?).unwrap_or(u32::MAX),
        created_at: int(5, "created_at")?,
        next_at: int(6, "next_at")?,
        last_error: DB::get_text(row, 7)?,
    })
}

/// An event row (the columns [`sql::EVENT_COLS`]).
pub(crate) fn event_from_row<DB: Db>(row: &DB::Row) -> Result<SyncEvent, StoreError> {
    let kind = need(DB::get_text(row, 2)?, "kind")?;
    Ok(SyncEvent {
        id: super::from_db(need(DB::get_int(row, 0)?, "id")?),
        event: NewSyncEvent {
            kind: SyncEventKind::parse(&kind).ok_or_else(|| corrupt("kind", &kind))?,
            at: super::from_db(need(DB::get_int(row, 1)?, "at")?),
            thing_id: DB::get_text(row, 3)?,
            attempt: DB::get_int(row, 4)?.map(|a| u32::try_from(a.max(0)).unwrap_or(u32::MAX)),
            detail: DB::get_text(row, 5)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_filters_number_their_arguments_in_binding_order() {
        let (text, texts, ints) = events_sql(&EventFilter {
            since: Some(5),
            after: Some(7),
            thing: Some("t1".into()),
            kind: Some(SyncEventKind::HubCreated),
            limit: 5000,
            newest_first: false,
        });
        assert_eq!(
            text,
            "SELECT id, at, kind, thing_id, attempt, detail FROM registry_sync_events WHERE \
             thing_id = $1 AND kind = $2 AND at >= $3 AND id > $4 ORDER BY id LIMIT $5"
        );
        assert_eq!(texts, ["t1", "hub-created"]);
        assert_eq!(ints, [5, 7, MAX_EVENTS_PAGE]);
        let (text, _, ints) = events_sql(&EventFilter::default());
        assert!(
            text.ends_with("registry_sync_events ORDER BY id LIMIT $1"),
            "{text}"
        );
        assert_eq!(ints, [1]);
    }
}
