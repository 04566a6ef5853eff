-- OTA jobs, their per-thing tasks and every status change of a task (S-7.3, S-9.6); the tables of
-- ../sqlite/0002_ota_jobs.sql with BIGINT numbers and byte-ordered ids.

CREATE TABLE ota_jobs (
    job_id         TEXT COLLATE "C" PRIMARY KEY,
    task_type      TEXT NOT NULL,
    version        TEXT NOT NULL,
    md5            TEXT,
    sha256         TEXT,
    content_type   TEXT,
    content_length BIGINT,
    file_url       TEXT NOT NULL,
    target_query   TEXT,
    max_per_minute BIGINT NOT NULL,
    timeout_ms     BIGINT NOT NULL,
    retries        BIGINT NOT NULL,
    status         TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE ota_tasks (
    job_id       TEXT COLLATE "C" NOT NULL REFERENCES ota_jobs (job_id) ON DELETE CASCADE,
    thing_id     TEXT COLLATE "C" NOT NULL REFERENCES things (thing_id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    attempt      BIGINT NOT NULL,
    task_id      TEXT NOT NULL,
    client_token TEXT NOT NULL,
    status       TEXT NOT NULL,
    progress     BIGINT,
    err_code     BIGINT,
    err_msg      TEXT,
    deadline     BIGINT,
    transitions  BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (job_id, thing_id)
);

CREATE INDEX ota_tasks_job_status ON ota_tasks (job_id, status, seq);
CREATE INDEX ota_tasks_job_seq ON ota_tasks (job_id, seq);

CREATE TABLE ota_transitions (
    job_id      TEXT COLLATE "C" NOT NULL,
    thing_id    TEXT COLLATE "C" NOT NULL,
    n           BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    at          BIGINT NOT NULL,
    err_code    BIGINT,
    PRIMARY KEY (job_id, thing_id, n),
    FOREIGN KEY (job_id, thing_id) REFERENCES ota_tasks (job_id, thing_id) ON DELETE CASCADE
);
