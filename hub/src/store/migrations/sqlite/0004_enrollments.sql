-- Enrollments for provisioning over MQTT (S-10, D-44, D-45), SQLite.
--
-- template and id_rule are JSON text (the hub's `ThingTemplate` and `IdRule`), read and written
-- whole. enrollment_serials remembers which serial got which thing, so a serial provisioned again
-- gets the same thing (D-44); it does not reference things: a deleted thing is provisioned anew.

CREATE TABLE enrollments (
    enrollment_id TEXT PRIMARY KEY NOT NULL,
    claim_hash    TEXT NOT NULL,            -- argon2id PHC string of the claim secret
    template      TEXT NOT NULL,            -- {"tags":{..},"desired"?:{..},"enabled":bool}
    id_rule       TEXT NOT NULL,            -- {"kind":"generated|prefix|pattern","value"?:".."}
    max_uses      INTEGER,                  -- NULL: unlimited
    uses          INTEGER NOT NULL,
    expires_at    INTEGER,                  -- ms since the Unix epoch; NULL: never
    enabled       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE enrollment_serials (
    enrollment_id  TEXT NOT NULL REFERENCES enrollments (enrollment_id) ON DELETE CASCADE,
    serial         TEXT NOT NULL,
    thing_id       TEXT NOT NULL,
    provisioned_at INTEGER NOT NULL,
    PRIMARY KEY (enrollment_id, serial)
);
