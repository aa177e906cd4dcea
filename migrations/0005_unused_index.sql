-- 0005: no query reads acknowledged deliveries by message (a message's deliveries are found
-- through `mappings`), so the index on `deliveries(message_id)` only cost a B-tree insert per
-- acknowledgement.
DROP INDEX IF EXISTS deliveries_by_message;
