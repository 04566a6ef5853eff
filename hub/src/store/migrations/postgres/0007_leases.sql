-- Several hub instances on one database (D-73): the instances alive, and which instance handles
-- the things of each of the 64 fixed partitions of thing ids. Times are the database's clock,
-- ms since the Unix epoch.
CREATE TABLE hub_instances (
    instance_id TEXT COLLATE "C" PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);

CREATE TABLE partition_leases (
    partition  INTEGER PRIMARY KEY,
    owner      TEXT COLLATE "C",
    expires_at BIGINT NOT NULL DEFAULT 0
);
INSERT INTO partition_leases (partition) SELECT generate_series(0, 63);
