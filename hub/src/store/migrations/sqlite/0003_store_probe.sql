-- One row the hub rewrites while storage writes fail, to find out without a client's write that
-- they work again (store/sqlite/write.rs, issue 14).
CREATE TABLE store_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);
INSERT INTO store_probe (id, at) VALUES (1, 0);
