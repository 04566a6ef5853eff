-- Routes (S-14): each route's definition, its durable outbox (what its sink has not yet
-- confirmed), its dead letters, and the message history of the `history` sink.
CREATE TABLE routes (
    route_id   TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    paused     INTEGER NOT NULL,
    from_file  INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- seq: one sequence for all routes, in commit order, so a route reads its outbox in the order
-- messages were accepted (a thing's messages are accepted one after the other).
CREATE TABLE route_outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    route_id    TEXT NOT NULL REFERENCES routes (route_id) ON DELETE CASCADE,
    thing_id    TEXT NOT NULL,
    source      TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX route_outbox_by_route ON route_outbox (route_id, seq);

CREATE TABLE route_dead_letters (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    route_id    TEXT NOT NULL REFERENCES routes (route_id) ON DELETE CASCADE,
    thing_id    TEXT NOT NULL,
    source      TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT NOT NULL,
    failed_at   INTEGER NOT NULL
);
CREATE INDEX route_dead_letters_by_route ON route_dead_letters (route_id, seq);

-- No foreign key to things: history is pruned by age and count, not by deleting a thing.
CREATE TABLE thing_messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    thing_id    TEXT NOT NULL,
    source      TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX thing_messages_by_thing ON thing_messages (thing_id, received_at, seq);
CREATE INDEX thing_messages_by_time ON thing_messages (received_at);
