-- 0004 (PostgreSQL): routes left to a parallel bridge (see ../0004_parallel_routes.sql).
CREATE TABLE parallel_routes (
    origin_network      TEXT    NOT NULL,
    origin_channel      TEXT    NOT NULL,
    destination_network TEXT    NOT NULL,
    destination_channel TEXT    NOT NULL,
    account             TEXT    NOT NULL,
    since_ms            BIGINT  NOT NULL,
    PRIMARY KEY (origin_network, origin_channel, destination_network, destination_channel)
);
