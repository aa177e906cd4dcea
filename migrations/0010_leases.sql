-- 0010: leadership leases for active/passive failover between instances on one PostgreSQL
-- database (see src/vocab/lease.rs). The SQLite store keeps its single-instance behaviour and
-- never writes this table; it exists here so that both migration sets stay in step.
--
-- One row per scope: "*" is the whole instance (its every network connection and delivery).
-- `token` grows by one each time the lease is taken and is never reused: a transaction that
-- completes deliveries checks it, so an instance that lost the lease cannot complete anything.
CREATE TABLE leases (
    scope      TEXT    NOT NULL PRIMARY KEY,
    holder     TEXT    NOT NULL,
    token      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
