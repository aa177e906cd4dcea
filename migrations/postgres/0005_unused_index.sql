-- 0005 (PostgreSQL): no query reads acknowledged deliveries by message (see
-- ../0005_unused_index.sql).
DROP INDEX IF EXISTS deliveries_by_message;
