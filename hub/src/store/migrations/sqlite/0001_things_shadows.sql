-- Thing registry and shadows (SQLite).
--
-- PostgreSQL gets its own migration directory with the same tables and column names; only the
-- types differ: timestamps and versions BIGINT (ms since the Unix epoch, u64 stored as i64),
-- enabled/connected BOOLEAN, tags and body JSONB. The statements in sqlite.rs use $N placeholders,
-- TRUE/FALSE literals, ON CONFLICT and RETURNING, which both databases understand.
--
-- OTA jobs and tasks (S-7.3) will come in a later migration; their task rows should reference
-- things(thing_id) ON DELETE CASCADE like shadows do.

CREATE TABLE things (
    thing_id        TEXT PRIMARY KEY NOT NULL,
    password_hash   TEXT NOT NULL,          -- argon2id PHC string, never the secret
    enabled         INTEGER NOT NULL,       -- 0/1 (BOOLEAN on PostgreSQL)
    tags            TEXT NOT NULL,          -- JSON object (JSONB on PostgreSQL)
    tags_version    INTEGER NOT NULL,
    connected       INTEGER NOT NULL DEFAULT 0,
    connected_at    INTEGER,
    disconnected_at INTEGER,
    created_at      INTEGER NOT NULL
);

-- Pages filtered by enabled (GET /things?enabled=) walk this index in thing_id order.
CREATE INDEX things_enabled_id ON things (enabled, thing_id);

CREATE TABLE shadows (
    thing_id   TEXT NOT NULL REFERENCES things (thing_id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    body       TEXT NOT NULL,               -- {"state":{..},"metadata":{..}} (JSONB on PostgreSQL)
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (thing_id, name)
);
