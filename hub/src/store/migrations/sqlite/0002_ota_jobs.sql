-- OTA jobs, their per-thing tasks and every status change of a task (S-7.3, S-9.6).
--
-- Same statements on PostgreSQL except the types: the INTEGER time and counter columns become
-- BIGINT (ms since the Unix epoch, u64 stored as i64). Statuses are the lowercase wire strings of
-- S-7.3 (`queued`, `sent`, `ongoing`, `done`, `failed`, `canceled`, `timed_out`); job statuses are
-- `running`, `canceled` and `completed`.

CREATE TABLE ota_jobs (
    job_id         TEXT PRIMARY KEY NOT NULL,
    task_type      TEXT NOT NULL,          -- S-7.1 `type`
    version        TEXT NOT NULL,          -- S-7.1 `meta.version`
    md5            TEXT,
    sha256         TEXT,
    content_type   TEXT,
    content_length INTEGER,
    file_url       TEXT NOT NULL,
    target_query   TEXT,                   -- the S-9.4 query the targets came from, if any
    max_per_minute INTEGER NOT NULL,
    timeout_ms     INTEGER NOT NULL,       -- per task, from the time it was sent
    retries        INTEGER NOT NULL,       -- extra attempts after failed or timed_out
    status         TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE ota_tasks (
    job_id       TEXT NOT NULL REFERENCES ota_jobs (job_id) ON DELETE CASCADE,
    thing_id     TEXT NOT NULL REFERENCES things (thing_id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,         -- rollout order inside the job
    attempt      INTEGER NOT NULL,         -- 1, then +1 per retry
    task_id      TEXT NOT NULL,            -- S-7.1 `taskId` of the current attempt
    client_token TEXT NOT NULL,            -- S-7.1 `clientToken` of the current attempt
    status       TEXT NOT NULL,
    progress     INTEGER,
    err_code     INTEGER,
    err_msg      TEXT,
    deadline     INTEGER,                  -- time out at (sent or ongoing only)
    transitions  INTEGER NOT NULL,         -- rows of this task in ota_transitions
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (job_id, thing_id)
);

-- Counts per status and pages in rollout order.
CREATE INDEX ota_tasks_job_status ON ota_tasks (job_id, status, seq);
CREATE INDEX ota_tasks_job_seq ON ota_tasks (job_id, seq);

CREATE TABLE ota_transitions (
    job_id      TEXT NOT NULL,
    thing_id    TEXT NOT NULL,
    n           INTEGER NOT NULL,          -- 0, 1, 2, .. per task
    attempt     INTEGER NOT NULL,
    from_status TEXT,                      -- NULL for the first (queued)
    to_status   TEXT NOT NULL,
    at          INTEGER NOT NULL,
    err_code    INTEGER,
    PRIMARY KEY (job_id, thing_id, n),
    FOREIGN KEY (job_id, thing_id) REFERENCES ota_tasks (job_id, thing_id) ON DELETE CASCADE
);
