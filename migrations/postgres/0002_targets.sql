-- 0002 (PostgreSQL): edits, deletes, reactions and replies point at another message (see
-- ../0002_targets.sql); the outbox loses its `kind` column.
ALTER TABLE messages ADD COLUMN target_message_id BIGINT REFERENCES messages(id);
ALTER TABLE messages ADD COLUMN reply_to_message_id BIGINT REFERENCES messages(id);
CREATE INDEX messages_by_target ON messages(target_message_id) WHERE target_message_id IS NOT NULL;
ALTER TABLE outbox DROP COLUMN kind;
