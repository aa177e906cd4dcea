-- 0010 (PostgreSQL): leadership leases for active/passive failover (see ../0010_leases.sql).
-- `expires_at` is on the database's clock, so instances on hosts whose clocks differ agree.
CREATE TABLE leases (
    scope      TEXT        NOT NULL PRIMARY KEY,
    holder     TEXT        NOT NULL,
    token      BIGINT      NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
