-- Registry sync (S-13): the durable tasks that carry the hub's registry changes to an external
-- registry (hub is master, S-13.4), and the sync events (S-13.5). Same tables as ../sqlite.
--
-- The tasks are written by a trigger on `things`, so a thing's change and its task commit in ONE
-- transaction whatever path changed the thing. It fires only while `registry_sync_mode.push`
-- is 1, which the hub sets at start-up from its configuration. Times are ms since the Unix
-- epoch (the database's clock in the trigger).
CREATE TABLE registry_sync_mode (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    push BIGINT NOT NULL             -- 0 or 1, as on SQLite
);
INSERT INTO registry_sync_mode (id, push) VALUES (1, 0);

CREATE TABLE registry_sync_tasks (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    thing_id   TEXT COLLATE "C" NOT NULL,
    op         TEXT NOT NULL,
    tags       TEXT NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    next_at    BIGINT NOT NULL,
    last_error TEXT
);
CREATE INDEX registry_sync_tasks_thing ON registry_sync_tasks (thing_id, id);
CREATE INDEX registry_sync_tasks_next ON registry_sync_tasks (next_at);

-- The external registry holds the hub's ENABLED things (D-75).
CREATE FUNCTION registry_sync_task() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
    op TEXT;
    row_id TEXT;
    row_tags TEXT;
BEGIN
    IF (SELECT push FROM registry_sync_mode WHERE id = 1) <> 1 THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NOT NEW.enabled THEN RETURN NULL; END IF;
        op := 'create'; row_id := NEW.thing_id; row_tags := NEW.tags;
    ELSIF TG_OP = 'DELETE' THEN
        IF NOT OLD.enabled THEN RETURN NULL; END IF;
        op := 'delete'; row_id := OLD.thing_id; row_tags := OLD.tags;
    ELSE
        IF OLD.enabled = NEW.enabled THEN RETURN NULL; END IF;
        op := CASE WHEN NEW.enabled THEN 'create' ELSE 'delete' END;
        row_id := NEW.thing_id; row_tags := NEW.tags;
    END IF;
    INSERT INTO registry_sync_tasks (thing_id, op, tags, created_at, next_at)
    VALUES (row_id, op, row_tags, now_ms, now_ms);
    RETURN NULL;
END;
$$;

CREATE TRIGGER registry_sync_on_change AFTER INSERT OR DELETE OR UPDATE OF enabled ON things
FOR EACH ROW EXECUTE FUNCTION registry_sync_task();

CREATE TABLE registry_sync_events (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    thing_id TEXT COLLATE "C",
    attempt  BIGINT,
    detail   TEXT
);
CREATE INDEX registry_sync_events_at ON registry_sync_events (at);
CREATE INDEX registry_sync_events_thing ON registry_sync_events (thing_id, id);
