-- Registry sync (S-13): the durable tasks that carry the hub's registry changes to an external
-- registry (hub is master, S-13.4), and the sync events (S-13.5).
--
-- The tasks are written by triggers on `things`, so a thing's change and its task commit in ONE
-- transaction whatever path changed the thing (REST, batch, provisioning, a fleet job): there
-- is no window in which a crash keeps the one and loses the other. The triggers fire only while
-- `registry_sync_mode.push` is 1, which the hub sets at start-up from its configuration.
-- Times are ms since the Unix epoch (the database's clock in the triggers).
CREATE TABLE registry_sync_mode (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    push INTEGER NOT NULL
);
INSERT INTO registry_sync_mode (id, push) VALUES (1, 0);

-- op: 'create' or 'delete'; tags: JSON object (the thing's tags when the task was written).
-- A thing's tasks run in id order, one at a time.
CREATE TABLE registry_sync_tasks (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    thing_id   TEXT NOT NULL,
    op         TEXT NOT NULL,
    tags       TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    next_at    INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX registry_sync_tasks_thing ON registry_sync_tasks (thing_id, id);
CREATE INDEX registry_sync_tasks_next ON registry_sync_tasks (next_at);

-- The external registry holds the hub's ENABLED things (D-75): create and enable add one there,
-- delete (of an enabled thing) and disable remove it.
CREATE TRIGGER registry_sync_on_create AFTER INSERT ON things
WHEN NEW.enabled = 1 AND (SELECT push FROM registry_sync_mode WHERE id = 1) = 1
BEGIN
    INSERT INTO registry_sync_tasks (thing_id, op, tags, created_at, next_at)
    VALUES (NEW.thing_id, 'create', NEW.tags,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER registry_sync_on_delete AFTER DELETE ON things
WHEN OLD.enabled = 1 AND (SELECT push FROM registry_sync_mode WHERE id = 1) = 1
BEGIN
    INSERT INTO registry_sync_tasks (thing_id, op, tags, created_at, next_at)
    VALUES (OLD.thing_id, 'delete', OLD.tags,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

CREATE TRIGGER registry_sync_on_enabled AFTER UPDATE OF enabled ON things
WHEN OLD.enabled <> NEW.enabled AND (SELECT push FROM registry_sync_mode WHERE id = 1) = 1
BEGIN
    INSERT INTO registry_sync_tasks (thing_id, op, tags, created_at, next_at)
    VALUES (NEW.thing_id, CASE WHEN NEW.enabled = 1 THEN 'create' ELSE 'delete' END, NEW.tags,
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
            CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END;

-- kind: a SyncEventKind wire string (S-13.5). Bounded by count and age (the hub prunes).
CREATE TABLE registry_sync_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    thing_id TEXT,
    attempt  INTEGER,
    detail   TEXT
);
CREATE INDEX registry_sync_events_at ON registry_sync_events (at);
CREATE INDEX registry_sync_events_thing ON registry_sync_events (thing_id, id);
