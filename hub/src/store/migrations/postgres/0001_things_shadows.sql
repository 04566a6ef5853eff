-- Thing registry and shadows (PostgreSQL). Same tables and columns as ../sqlite; the types differ.
--
-- - Times and versions are BIGINT: ms since the Unix epoch and u64 counters, stored as i64.
-- - Ids and names are TEXT COLLATE "C": ordering is byte order whatever the database's locale,
--   as in SQLite, so pages (`ORDER BY thing_id`) and sorted shadow names are the same on both.
-- - tags and body are TEXT holding JSON, not JSONB: the store hands back exactly the text the hub
--   wrote (JSONB would reorder keys and respace it). Queries cast them (`tags::jsonb`).

CREATE TABLE things (
    thing_id        TEXT COLLATE "C" PRIMARY KEY,
    password_hash   TEXT NOT NULL,          -- argon2id PHC string, never the secret
    enabled         BOOLEAN NOT NULL,
    tags            TEXT NOT NULL,          -- JSON object
    tags_version    BIGINT NOT NULL,
    connected       BOOLEAN NOT NULL DEFAULT FALSE,
    connected_at    BIGINT,
    disconnected_at BIGINT,
    created_at      BIGINT NOT NULL
);

-- Pages filtered by enabled (GET /things?enabled=) walk this index in thing_id order.
CREATE INDEX things_enabled_id ON things (enabled, thing_id);

CREATE TABLE shadows (
    thing_id   TEXT COLLATE "C" NOT NULL REFERENCES things (thing_id) ON DELETE CASCADE,
    name       TEXT COLLATE "C" NOT NULL,
    version    BIGINT NOT NULL,
    body       TEXT NOT NULL,               -- {"state":{..},"metadata":{..}}
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (thing_id, name)
);
