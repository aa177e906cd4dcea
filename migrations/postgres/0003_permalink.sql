-- 0003 (PostgreSQL): a link to a message on its origin platform (see ../0003_permalink.sql).
ALTER TABLE messages ADD COLUMN permalink TEXT;
