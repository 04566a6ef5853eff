-- Fleet jobs (S-12); the tables of ../sqlite/0006_jobs.sql with BIGINT numbers and byte-ordered
-- ids.
CREATE TABLE jobs (
    job_id         TEXT COLLATE "C" PRIMARY KEY,
    operation      TEXT NOT NULL,
    target_query   TEXT,
    status         TEXT NOT NULL,
    things         BIGINT NOT NULL,
    start_at       BIGINT NOT NULL,
    end_at         BIGINT NOT NULL,
    max_per_minute BIGINT NOT NULL,
    retries        BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    ended_at       BIGINT
);
CREATE INDEX jobs_by_status ON jobs (status);

CREATE TABLE job_things (
    job_id     TEXT COLLATE "C" NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    thing_id   TEXT COLLATE "C" NOT NULL,
    seq        BIGINT NOT NULL,
    status     TEXT NOT NULL,
    attempts   BIGINT NOT NULL,
    code       BIGINT,
    response   TEXT,
    error      TEXT,
    started_at BIGINT,
    updated_at BIGINT NOT NULL,
    ended_at   BIGINT,
    PRIMARY KEY (job_id, thing_id)
);
CREATE INDEX job_things_by_seq ON job_things (job_id, seq);
CREATE INDEX job_things_by_status ON job_things (job_id, status, seq);
