-- 0006: the writer's per-delivery rows are keyed by integers, not by text.
--
-- The outbox is addressed by queue position (`seq`, its rowid) alone. Its `delivery_id` (the
-- idempotency key the destination sees) is no longer indexed: nothing looks a row up by it, and
-- the unique index cost two B-tree writes per delivery (insert and delete), each comparing
-- 32-character keys. The ids stay unique by construction (UUID v7, one per row). SQLite cannot
-- drop a column's UNIQUE constraint, so the table is rebuilt; its AUTOINCREMENT high-water mark
-- is carried over, so that no position is ever used twice.
--
-- A delivery's record is a rowid table appended to in order. Keyed by `delivery_id`, every
-- acknowledgement compared text keys down the tree; recording one twice is prevented where it
-- starts, by the outbox row's removal (a second acknowledgement finds no row and records nothing).

CREATE TABLE outbox_v3 (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  TEXT    NOT NULL,
    message_id   INTEGER NOT NULL REFERENCES messages(id),
    network      TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    gateway      TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_try_ms  INTEGER NOT NULL DEFAULT 0,
    state        TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    last_error   TEXT
);
INSERT INTO outbox_v3 (seq, delivery_id, message_id, network, channel, gateway, attempts,
                       next_try_ms, state, last_error)
    SELECT seq, delivery_id, message_id, network, channel, gateway, attempts, next_try_ms, state,
           last_error
    FROM outbox;
DELETE FROM sqlite_sequence WHERE name = 'outbox_v3';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'outbox_v3', seq FROM sqlite_sequence WHERE name = 'outbox';
DROP TABLE outbox;
ALTER TABLE outbox_v3 RENAME TO outbox;
CREATE INDEX outbox_by_destination ON outbox(network, channel, state, seq);

CREATE TABLE deliveries_v2 (
    id          INTEGER PRIMARY KEY,
    delivery_id TEXT    NOT NULL,
    message_id  INTEGER NOT NULL REFERENCES messages(id),
    network     TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    remote_id   TEXT,
    attempts    INTEGER NOT NULL,
    done_ms     INTEGER NOT NULL
);
INSERT INTO deliveries_v2 (delivery_id, message_id, network, channel, remote_id, attempts, done_ms)
    SELECT delivery_id, message_id, network, channel, remote_id, attempts, done_ms
    FROM deliveries ORDER BY done_ms, delivery_id;
DROP TABLE deliveries;
ALTER TABLE deliveries_v2 RENAME TO deliveries;
