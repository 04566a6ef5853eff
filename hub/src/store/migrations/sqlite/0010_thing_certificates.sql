-- Client certificates registered on things (D-82): the SHA-256 fingerprint of a certificate's
-- DER encoding (64 lowercase hex digits) authenticates the thing it is registered on. A
-- fingerprint belongs to one thing; deleting the thing deletes its certificates.

CREATE TABLE thing_certificates (
    fingerprint TEXT PRIMARY KEY NOT NULL,
    thing_id    TEXT NOT NULL REFERENCES things (thing_id) ON DELETE CASCADE,
    pem         TEXT NOT NULL,
    common_name TEXT,
    not_after   BIGINT NOT NULL,            -- ms since the Unix epoch
    created_at  BIGINT NOT NULL
);

CREATE INDEX thing_certificates_thing ON thing_certificates (thing_id);
