-- Fleet jobs (S-12): one operation (method, desired patch, tags) sent to many things at a rate,
-- and per (job, thing) its outcome, so a restart resumes where it stopped and the history stays
-- queryable after the job ends.
CREATE TABLE jobs (
    job_id         TEXT PRIMARY KEY,
    operation      TEXT NOT NULL,
    target_query   TEXT,
    status         TEXT NOT NULL,
    things         INTEGER NOT NULL,
    start_at       INTEGER NOT NULL,
    end_at         INTEGER NOT NULL,
    max_per_minute INTEGER NOT NULL,
    retries        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    ended_at       INTEGER
);
CREATE INDEX jobs_by_status ON jobs (status);

-- No foreign key to things: a job's history outlives a deleted thing.
CREATE TABLE job_things (
    job_id     TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    thing_id   TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    status     TEXT NOT NULL,
    attempts   INTEGER NOT NULL,
    code       INTEGER,
    response   TEXT,
    error      TEXT,
    started_at INTEGER,
    updated_at INTEGER NOT NULL,
    ended_at   INTEGER,
    PRIMARY KEY (job_id, thing_id)
);
CREATE INDEX job_things_by_seq ON job_things (job_id, seq);
CREATE INDEX job_things_by_status ON job_things (job_id, status, seq);
