-- Configurations (S-11); the tables of ../sqlite/0005_configurations.sql with BIGINT numbers and
-- byte-ordered ids.
CREATE TABLE configurations (
    name              TEXT COLLATE "C" PRIMARY KEY,
    target            TEXT NOT NULL,
    priority          BIGINT NOT NULL,
    desired           TEXT NOT NULL,
    success           TEXT,
    remove_on_unmatch BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE configuration_things (
    configuration TEXT COLLATE "C" NOT NULL REFERENCES configurations (name) ON DELETE CASCADE,
    thing_id      TEXT COLLATE "C" NOT NULL REFERENCES things (thing_id) ON DELETE CASCADE,
    status        TEXT NOT NULL,
    patch         TEXT NOT NULL,
    error         TEXT,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (configuration, thing_id)
);
CREATE INDEX configuration_things_by_thing ON configuration_things (thing_id);
