//! Storage of routes (S-14): definitions, the durable outbox of each route, its dead letters, and
//! the message history of `history` sinks.
//!
//! The outbox is what makes a route at-least-once (D-78): a message is in every matching
//! route's outbox, committed, before the device gets its PUBACK, and it leaves the outbox only
//! when the route's sink confirmed it (or it became a dead letter, or the full outbox's
//! `drop-oldest` policy dropped it, counted). Sequence numbers grow in commit order, so each
//! route reads its outbox in the order the messages were accepted.
//!
//! Both stores run the same statements (`sql`): `$n` placeholders read the same in SQLite and
//! PostgreSQL.

use super::StoreError;

/// Most rows one read of an outbox, dead-letter list or history returns.
pub const MAX_ROWS: u32 = 1000;

/// A route's definition as stored: its id, the JSON of its specification (validated by
/// [`crate::routes::config`] before it is stored), whether it is paused, and whether it came
/// from the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRoute {
    /// The route's id.
    pub route_id: String,
    /// The specification as JSON text.
    pub spec: String,
    /// A paused route keeps filling its outbox but delivers nothing.
    pub paused: bool,
    /// Declared in the config file's `[[routes]]` (written again at every start).
    pub from_file: bool,
    /// Last change, ms since the Unix epoch.
    pub updated_at: u64,
}

/// One message for one route's outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The thing the message is about.
    pub thing_id: String,
    /// Its source (`telemetry`, `messages`, `shadow`, `lifecycle`, `presence`, ...).
    pub source: String,
    /// The MQTT topic it was published on (or the hub would publish it on).
    pub topic: String,
    /// The payload, as received.
    pub payload: Vec<u8>,
    /// When the hub received it, ms since the Unix epoch.
    pub received_at: u64,
}

/// A message in an outbox, a dead-letter list or the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its sequence number: ascending in commit order.
    pub seq: u64,
    /// The message.
    pub message: NewMessage,
}

/// A dead letter: a message its sink failed to take [`DeadLetter::attempts`] times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message, with its dead-letter sequence number.
    pub stored: StoredMessage,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// When it became a dead letter, ms since the Unix epoch.
    pub failed_at: u64,
}

/// Appends for one route, in one [`RouteStore::enqueue`] transaction.
#[derive(Debug, Clone)]
pub struct Append {
    /// The route.
    pub route_id: String,
    /// Oldest messages of the route to delete after appending (the `drop-oldest` policy of a
    /// full outbox).
    pub drop_oldest: u64,
    /// The messages, in order.
    pub messages: Vec<NewMessage>,
}

/// Routes, outboxes, dead letters and history.
#[async_trait::async_trait]
pub trait RouteStore: Send + Sync {
    /// Every route, by id.
    async fn routes(&self) -> Result<Vec<StoredRoute>, StoreError>;
    /// Creates or replaces a route's definition (its outbox and dead letters stay).
    async fn put_route(&self, route: &StoredRoute) -> Result<(), StoreError>;
    /// Deletes a route with its outbox and dead letters. [`StoreError::NotFound`] if absent.
    async fn delete_route(&self, route_id: &str) -> Result<(), StoreError>;

    /// In ONE transaction: for each entry, appends its messages, then deletes the route's
    /// `drop_oldest` oldest outbox messages (which may be some just appended, when one batch
    /// alone overflows the outbox). Returns how many messages each entry's drop deleted.
    async fn enqueue(&self, appends: &[Append]) -> Result<Vec<u64>, StoreError>;
    /// The oldest `limit` messages of a route's outbox, in order.
    async fn outbox(&self, route_id: &str, limit: u32) -> Result<Vec<StoredMessage>, StoreError>;
    /// Messages in each route's outbox: (route, count).
    async fn outbox_depths(&self) -> Result<Vec<(String, u64)>, StoreError>;
    /// Removes a route's messages with `seq <= up_to` (its sink confirmed them); returns how
    /// many were still there (the `drop-oldest` policy may have removed some meanwhile).
    async fn delivered(&self, route_id: &str, up_to: u64) -> Result<u64, StoreError>;
    /// Moves a route's messages with `seq <= up_to` to its dead letters, in one transaction.
    async fn dead_letter(
        &self,
        route_id: &str,
        up_to: u64,
        attempts: u32,
        error: &str,
        now: u64,
    ) -> Result<u64, StoreError>;
    /// The oldest `limit` dead letters of a route with `seq > after`, in order, and their total.
    async fn dead_letters(
        &self,
        route_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<(u64, Vec<DeadLetter>), StoreError>;
    /// Moves up to `limit` of a route's oldest dead letters back to the end of its outbox, in
    /// one transaction; returns how many moved.
    async fn replay_dead_letters(&self, route_id: &str, limit: u32) -> Result<u64, StoreError>;
    /// Deletes a route's dead letters that failed before `failed_before` (ms) and the oldest
    /// beyond the newest `keep`, in one transaction; returns how many were deleted (D-88).
    async fn trim_dead_letters(
        &self,
        route_id: &str,
        keep: u64,
        failed_before: u64,
    ) -> Result<u64, StoreError>;

    /// Appends messages to the history (`history` sinks).
    async fn append_history(&self, messages: &[NewMessage]) -> Result<(), StoreError>;
    /// A thing's history with `from <= received_at < to`, oldest first, at most `limit`.
    async fn history(
        &self,
        thing_id: &str,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// Deletes history older than `before` and, per thing, all but the newest `keep` messages
    /// (`None`: no count limit). Returns how many went.
    async fn prune_history(&self, before: u64, keep: Option<u64>) -> Result<u64, StoreError>;
}

/// The statements, the same text for SQLite and PostgreSQL.
pub(crate) mod sql {
    pub const ROUTES: &str =
        "SELECT route_id, spec, paused, from_file, updated_at FROM routes ORDER BY route_id";
    pub const PUT_ROUTE: &str = "INSERT INTO routes (route_id, spec, paused, from_file, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (route_id) DO UPDATE SET spec = excluded.spec, \
         paused = excluded.paused, from_file = excluded.from_file, updated_at = excluded.updated_at";
    pub const DELETE_ROUTE: &str = "DELETE FROM routes WHERE route_id = $1";
    pub const DROP_OLDEST: &str = "DELETE FROM route_outbox WHERE seq IN (SELECT seq FROM \
         route_outbox WHERE route_id = $1 ORDER BY seq LIMIT $2)";
    pub const APPEND: &str = "INSERT INTO route_outbox (route_id, thing_id, source, topic, \
         payload, received_at) VALUES ($1, $2, $3, $4, $5, $6)";
    pub const OUTBOX: &str = "SELECT seq, thing_id, source, topic, payload, received_at FROM \
         route_outbox WHERE route_id = $1 ORDER BY seq LIMIT $2";
    pub const DEPTHS: &str = "SELECT route_id, COUNT(*) FROM route_outbox GROUP BY route_id";
    pub const DELIVERED: &str = "DELETE FROM route_outbox WHERE route_id = $1 AND seq <= $2";
    pub const TO_DEAD: &str = "INSERT INTO route_dead_letters (route_id, thing_id, source, \
         topic, payload, received_at, attempts, error, failed_at) SELECT route_id, thing_id, \
         source, topic, payload, received_at, $3, $4, $5 FROM route_outbox WHERE route_id = $1 \
         AND seq <= $2 ORDER BY seq";
    pub const DEAD: &str = "SELECT seq, thing_id, source, topic, payload, received_at, attempts, \
         error, failed_at FROM route_dead_letters WHERE route_id = $1 AND seq > $2 ORDER BY seq \
         LIMIT $3";
    pub const DEAD_COUNT: &str = "SELECT COUNT(*) FROM route_dead_letters WHERE route_id = $1";
    pub const REPLAY_LAST: &str = "SELECT MAX(seq) FROM (SELECT seq FROM route_dead_letters \
         WHERE route_id = $1 ORDER BY seq LIMIT $2) AS oldest";
    pub const REPLAY_MOVE: &str = "INSERT INTO route_outbox (route_id, thing_id, source, topic, \
         payload, received_at) SELECT route_id, thing_id, source, topic, payload, received_at \
         FROM route_dead_letters WHERE route_id = $1 AND seq <= $2 ORDER BY seq";
    pub const DEAD_TRIM_AGE: &str =
        "DELETE FROM route_dead_letters WHERE route_id = $1 AND failed_at < $2";
    /// A route's dead letters older than its newest `$3` (none when it has fewer).
    pub const DEAD_TRIM_COUNT: &str = "DELETE FROM route_dead_letters WHERE route_id = $1 AND \
         seq < (SELECT MIN(seq) FROM (SELECT seq FROM route_dead_letters WHERE route_id = $2 \
         ORDER BY seq DESC LIMIT $3) AS newest)";
    pub const REPLAY_DELETE: &str =
        "DELETE FROM route_dead_letters WHERE route_id = $1 AND seq <= $2";
    pub const HISTORY_APPEND: &str = "INSERT INTO thing_messages (thing_id, source, topic, \
         payload, received_at) VALUES ($1, $2, $3, $4, $5)";
    pub const HISTORY: &str = "SELECT seq, thing_id, source, topic, payload, received_at FROM \
         thing_messages WHERE thing_id = $1 AND received_at >= $2 AND received_at < $3 ORDER BY \
         received_at, seq LIMIT $4";
    pub const PRUNE_AGE: &str = "DELETE FROM thing_messages WHERE received_at < $1";
    /// Every message beyond the newest `$1` of its thing.
    pub const PRUNE_COUNT: &str = "DELETE FROM thing_messages WHERE seq IN (SELECT seq FROM \
         (SELECT seq, ROW_NUMBER() OVER (PARTITION BY thing_id ORDER BY received_at DESC, seq \
         DESC) AS n FROM thing_messages) AS ranked WHERE n > $1)";
}

/// Clamps a row count for SQL `LIMIT`.
pub(crate) fn limit(n: u32) -> i64 {
    i64::from(n.clamp(1, MAX_ROWS))
}
