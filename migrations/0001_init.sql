-- 0001: messages, mappings, outbox, deliveries, cursors.
-- A message is one inbound event with its canonical id. A mapping ties a network's own id for an
-- event (origin, or one of our deliveries) to the canonical id, forever. The outbox holds one row
-- per pending delivery; a row leaves it only when the destination acknowledged the send, and a
-- row in `deliveries` records that.

CREATE TABLE messages (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    origin_network   TEXT    NOT NULL,
    origin_channel   TEXT    NOT NULL,
    origin_protocol  TEXT    NOT NULL,
    origin_remote_id TEXT,
    author_id        TEXT    NOT NULL,
    author_name      TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    created_ms       INTEGER NOT NULL,
    received_ms      INTEGER NOT NULL
);

CREATE TABLE mappings (
    network     TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    remote_id   TEXT    NOT NULL,
    message_id  INTEGER NOT NULL REFERENCES messages(id),
    role        TEXT    NOT NULL CHECK (role IN ('origin', 'delivery')),
    delivery_id TEXT,
    PRIMARY KEY (network, channel, remote_id)
) WITHOUT ROWID;
CREATE INDEX mappings_by_message ON mappings(message_id);

CREATE TABLE outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  TEXT    NOT NULL UNIQUE,
    message_id   INTEGER NOT NULL REFERENCES messages(id),
    network      TEXT    NOT NULL,
    channel      TEXT    NOT NULL,
    gateway      TEXT    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('post')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_try_ms  INTEGER NOT NULL DEFAULT 0,
    state        TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    last_error   TEXT
);
CREATE INDEX outbox_by_destination ON outbox(network, channel, state, seq);

CREATE TABLE deliveries (
    delivery_id TEXT    PRIMARY KEY,
    message_id  INTEGER NOT NULL REFERENCES messages(id),
    network     TEXT    NOT NULL,
    channel     TEXT    NOT NULL,
    remote_id   TEXT,
    attempts    INTEGER NOT NULL,
    done_ms     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX deliveries_by_message ON deliveries(message_id);

CREATE TABLE cursors (
    network TEXT NOT NULL,
    channel TEXT NOT NULL DEFAULT '',
    value   TEXT NOT NULL,
    PRIMARY KEY (network, channel)
) WITHOUT ROWID;
