-- Configurations: named desired-state patches applied to the things a query matches (S-11), and
-- per (configuration, thing) what was applied, so a restart resumes where it stopped.
CREATE TABLE configurations (
    name              TEXT PRIMARY KEY,
    target            TEXT NOT NULL,
    priority          INTEGER NOT NULL,
    desired           TEXT NOT NULL,
    success           TEXT,
    remove_on_unmatch INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);

CREATE TABLE configuration_things (
    configuration TEXT NOT NULL REFERENCES configurations (name) ON DELETE CASCADE,
    thing_id      TEXT NOT NULL REFERENCES things (thing_id) ON DELETE CASCADE,
    status        TEXT NOT NULL,
    patch         TEXT NOT NULL,
    error         TEXT,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (configuration, thing_id)
);
CREATE INDEX configuration_things_by_thing ON configuration_things (thing_id);
