-- 0009 (PostgreSQL): the history's pruning indexes and sealed tombstones (see
-- ../0009_history_indexes.sql). Retention and the archive run on the SQLite store only so far;
-- the tables, indexes and the trigger are kept in step so that the numbers mean the same on both.
CREATE INDEX outbox_by_message ON outbox(message_id);

CREATE INDEX messages_by_author ON messages(origin_network, author_id);

CREATE TABLE message_files (
    hash       TEXT   NOT NULL,
    message_id BIGINT NOT NULL,
    PRIMARY KEY (hash, message_id)
);
CREATE INDEX message_files_by_message ON message_files(message_id);

CREATE FUNCTION message_files_on_insert() RETURNS trigger AS $$
BEGIN
    IF position('"stored":"' in NEW.body) > 0 THEN
        INSERT INTO message_files (hash, message_id)
        SELECT a->>'stored', NEW.id
        FROM jsonb_array_elements(NEW.body::jsonb -> 'Text' -> 'attachments') AS a
        WHERE a->>'stored' IS NOT NULL
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER message_files_on_insert AFTER INSERT ON messages
    FOR EACH ROW EXECUTE FUNCTION message_files_on_insert();

CREATE FUNCTION message_files_on_delete() RETURNS trigger AS $$
BEGIN
    DELETE FROM message_files WHERE message_id = OLD.id;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER message_files_on_delete AFTER DELETE ON messages
    FOR EACH ROW EXECUTE FUNCTION message_files_on_delete();

INSERT INTO message_files (hash, message_id)
SELECT a->>'stored', m.id
FROM messages AS m, jsonb_array_elements(m.body::jsonb -> 'Text' -> 'attachments') AS a
WHERE position('"stored":"' in m.body) > 0 AND a->>'stored' IS NOT NULL
ON CONFLICT DO NOTHING;

ALTER TABLE archive_chain ADD COLUMN tombstone_hash TEXT;

CREATE INDEX deliveries_by_message ON deliveries(message_id);
DELETE FROM deliveries WHERE message_id NOT IN (SELECT id FROM messages);
