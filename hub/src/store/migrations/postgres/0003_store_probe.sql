-- One row the hub rewrites while storage writes fail, to find out without a client's write that
-- they work again (store/postgres/write.rs).
CREATE TABLE store_probe (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    at BIGINT NOT NULL
);
INSERT INTO store_probe (id, at) VALUES (1, 0);
