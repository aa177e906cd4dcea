-- 0008: the history's retention (src/archive.rs). When a message past its gateway's retention is
-- forgotten, the replies to it lose their link to it (`reply_to_message_id` set to NULL): this
-- index finds them without reading every message. Partial, so a message that replies to nothing
-- costs the writer nothing more.
CREATE INDEX messages_by_reply ON messages(reply_to_message_id)
    WHERE reply_to_message_id IS NOT NULL;

-- The archive's tamper-evident chain (src/archive.rs): one row per archived message per gateway
-- with `archive = true`, in the order they were chained. `record_hash` is the SHA-256 of the
-- message row's canonical record, `chain_hash` the SHA-256 of the gateway's previous chain hash
-- and this record hash. A message forgotten by retention or `forget` leaves its row as a
-- tombstone (`tombstone` says why): the hashes stay, so the chain still verifies. No foreign key
-- to `messages`: the row outlives its message.
CREATE TABLE archive_chain (
    seq         INTEGER PRIMARY KEY,
    gateway     TEXT    NOT NULL,
    message_id  INTEGER NOT NULL,
    record_hash TEXT    NOT NULL,
    chain_hash  TEXT    NOT NULL,
    tombstone   TEXT    CHECK (tombstone IN ('retention', 'forget'))
);
CREATE INDEX archive_chain_by_gateway ON archive_chain(gateway, seq);
CREATE INDEX archive_chain_by_message ON archive_chain(message_id);
