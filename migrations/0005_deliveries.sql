-- 0005: one row per delivery for its whole life. The outbox and the table of acknowledged
-- deliveries become one `deliveries` table whose `state` says where a delivery is: `pending`
-- (queued, FIFO by `seq` per destination), `failed` (refused for good, kept for an operator) or
-- `done` (acknowledged; `remote_id` is the destination's id for it). Recording an
-- acknowledgement updates the row in place instead of deleting it from one table (and three
-- indexes) and inserting it into another (and two): a message's bookkeeping touches three
-- fewer B-trees. The queue is a partial index over the pending rows only, so the history
-- never slows a queue read. `seq` keeps growing (AUTOINCREMENT): a worker skips rows by it.

CREATE TABLE deliveries_v2 (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  TEXT    NOT NULL UNIQUE,
    message_id   INTEGER NOT NULL REFERENCES messages(id),
    network      TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    gateway      TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_try_ms  INTEGER NOT NULL DEFAULT 0,
    state        TEXT    NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'failed', 'done')),
    last_error   TEXT,
    remote_id    TEXT,
    done_ms      INTEGER
);

-- Queued deliveries keep their positions; acknowledged ones (which had no gateway column)
-- follow them, in the order they were acknowledged.
INSERT INTO deliveries_v2 (seq, delivery_id, message_id, network, channel, gateway, attempts,
                           next_try_ms, state, last_error)
    SELECT seq, delivery_id, message_id, network, channel, gateway, attempts, next_try_ms,
           state, last_error
    FROM outbox ORDER BY seq;
INSERT INTO deliveries_v2 (delivery_id, message_id, network, channel, gateway, attempts, state,
                           remote_id, done_ms)
    SELECT delivery_id, message_id, network, channel, '', attempts, 'done', remote_id, done_ms
    FROM deliveries
    WHERE delivery_id NOT IN (SELECT delivery_id FROM outbox)
    ORDER BY done_ms, delivery_id;

DROP TABLE outbox;
DROP TABLE deliveries;
ALTER TABLE deliveries_v2 RENAME TO deliveries;
CREATE INDEX deliveries_pending ON deliveries(network, channel, seq) WHERE state = 'pending';
