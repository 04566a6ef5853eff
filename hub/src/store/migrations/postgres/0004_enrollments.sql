-- Enrollments for provisioning over MQTT (S-10, D-44, D-45), PostgreSQL. Same tables and
-- columns as ../sqlite/0004_enrollments.sql; times BIGINT, flags BOOLEAN, JSON as TEXT.

CREATE TABLE enrollments (
    enrollment_id TEXT COLLATE "C" PRIMARY KEY,
    claim_hash    TEXT NOT NULL,
    template      TEXT NOT NULL,
    id_rule       TEXT NOT NULL,
    max_uses      BIGINT,
    uses          BIGINT NOT NULL,
    expires_at    BIGINT,
    enabled       BOOLEAN NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE enrollment_serials (
    enrollment_id  TEXT COLLATE "C" NOT NULL REFERENCES enrollments (enrollment_id) ON DELETE CASCADE,
    serial         TEXT COLLATE "C" NOT NULL,
    thing_id       TEXT COLLATE "C" NOT NULL,
    provisioned_at BIGINT NOT NULL,
    PRIMARY KEY (enrollment_id, serial)
);
