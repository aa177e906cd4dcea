-- 0009: the history's pruning made incremental (src/archive/mod.rs), and tombstones sealed.

-- "Is a delivery of this message still queued?" answered from an index, instead of reading the
-- whole outbox in every pruning batch.
CREATE INDEX outbox_by_message ON outbox(message_id);

-- `tribridge forget --network N --user U`: a person's messages without reading every message.
CREATE INDEX messages_by_author ON messages(origin_network, author_id);

-- The stored files (content hashes in the file store) each message carries, kept by the two
-- triggers below, so that "does a kept message still carry this file?" is an index lookup
-- instead of a scan of every message with a file. Message bodies are never updated in place.
CREATE TABLE message_files (
    hash       TEXT    NOT NULL,
    message_id INTEGER NOT NULL,
    PRIMARY KEY (hash, message_id)
) WITHOUT ROWID;
CREATE INDEX message_files_by_message ON message_files(message_id);

CREATE TRIGGER message_files_on_insert AFTER INSERT ON messages
WHEN instr(NEW.body, '"stored":"') > 0
BEGIN
    INSERT OR IGNORE INTO message_files (hash, message_id)
    SELECT json_extract(a.value, '$.stored'), NEW.id
    FROM json_each(NEW.body, '$.Text.attachments') AS a
    WHERE json_extract(a.value, '$.stored') IS NOT NULL;
END;

CREATE TRIGGER message_files_on_delete AFTER DELETE ON messages
BEGIN
    DELETE FROM message_files WHERE message_id = OLD.id;
END;

INSERT OR IGNORE INTO message_files (hash, message_id)
SELECT json_extract(a.value, '$.stored'), m.id
FROM messages AS m, json_each(m.body, '$.Text.attachments') AS a
WHERE instr(m.body, '"stored":"') > 0 AND json_valid(m.body)
  AND json_extract(a.value, '$.stored') IS NOT NULL;

-- A tombstone's reason is sealed: SHA-256 of the row's chain_hash, ':' and the reason (hex),
-- written with the tombstone; `export --verify` recomputes it. NULL on a row that is no
-- tombstone, and on tombstones made before this migration (verify counts those as unsealed).
ALTER TABLE archive_chain ADD COLUMN tombstone_hash TEXT;

-- A forgotten message's acknowledged deliveries are removed with it, by this index, instead of
-- a sweep of every delivery in each retention pass (0005 dropped the index when nothing read
-- deliveries by message). Those left by earlier passes go now.
CREATE INDEX deliveries_by_message ON deliveries(message_id);
DELETE FROM deliveries WHERE message_id NOT IN (SELECT id FROM messages);
