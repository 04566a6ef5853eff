-- Routes (S-14); the tables of ../sqlite/0009_routes.sql with BIGINT numbers, identity
-- sequences, BYTEA payloads and byte-ordered ids.
CREATE TABLE routes (
    route_id   TEXT COLLATE "C" PRIMARY KEY,
    spec       TEXT NOT NULL,
    paused     BIGINT NOT NULL,
    from_file  BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE route_outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    route_id    TEXT COLLATE "C" NOT NULL REFERENCES routes (route_id) ON DELETE CASCADE,
    thing_id    TEXT COLLATE "C" NOT NULL,
    source      TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX route_outbox_by_route ON route_outbox (route_id, seq);

CREATE TABLE route_dead_letters (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    route_id    TEXT COLLATE "C" NOT NULL REFERENCES routes (route_id) ON DELETE CASCADE,
    thing_id    TEXT COLLATE "C" NOT NULL,
    source      TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    received_at BIGINT NOT NULL,
    attempts    BIGINT NOT NULL,
    error       TEXT NOT NULL,
    failed_at   BIGINT NOT NULL
);
CREATE INDEX route_dead_letters_by_route ON route_dead_letters (route_id, seq);

CREATE TABLE thing_messages (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    thing_id    TEXT COLLATE "C" NOT NULL,
    source      TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX thing_messages_by_thing ON thing_messages (thing_id, received_at, seq);
CREATE INDEX thing_messages_by_time ON thing_messages (received_at);
