-- 0008 (PostgreSQL): the history's reply index and the archive's chain (see ../0008_history.sql).
-- The history's retention and the archive run on both stores (src/store/postgres/history.rs); the tables are
-- kept in step so that the numbers mean the same on both.
CREATE INDEX messages_by_reply ON messages(reply_to_message_id)
    WHERE reply_to_message_id IS NOT NULL;

CREATE TABLE archive_chain (
    seq         BIGINT  PRIMARY KEY,
    gateway     TEXT    NOT NULL,
    message_id  BIGINT  NOT NULL,
    record_hash TEXT    NOT NULL,
    chain_hash  TEXT    NOT NULL,
    tombstone   TEXT    CHECK (tombstone IN ('retention', 'forget'))
);
CREATE INDEX archive_chain_by_gateway ON archive_chain(gateway, seq);
CREATE INDEX archive_chain_by_message ON archive_chain(message_id);
