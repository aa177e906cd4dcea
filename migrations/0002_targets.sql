-- 0002: edits, deletes, reactions and replies point at another message. The canonical id of that
-- message is resolved once, when the event is committed, from the origin network's id for it.
-- The outbox loses its `kind` column: a delivery's kind is its message's kind.

ALTER TABLE messages ADD COLUMN target_message_id INTEGER REFERENCES messages(id);
ALTER TABLE messages ADD COLUMN reply_to_message_id INTEGER REFERENCES messages(id);
CREATE INDEX messages_by_target ON messages(target_message_id) WHERE target_message_id IS NOT NULL;

CREATE TABLE outbox_v2 (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  TEXT    NOT NULL UNIQUE,
    message_id   INTEGER NOT NULL REFERENCES messages(id),
    network      TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    gateway      TEXT    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_try_ms  INTEGER NOT NULL DEFAULT 0,
    state        TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    last_error   TEXT
);
INSERT INTO outbox_v2 (seq, delivery_id, message_id, network, channel, gateway, attempts,
                       next_try_ms, state, last_error)
    SELECT seq, delivery_id, message_id, network, channel, gateway, attempts, next_try_ms, state,
           last_error
    FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
CREATE INDEX outbox_by_destination ON outbox(network, channel, state, seq);
