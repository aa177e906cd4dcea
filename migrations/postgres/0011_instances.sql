-- 0011 (PostgreSQL): the instances on one store, for the per-network leases (see
-- ../0011_instances.sql). `heartbeat_at` is on the database's clock, as the leases' expiry.
CREATE TABLE instances (
    name         TEXT        NOT NULL PRIMARY KEY,
    heartbeat_at TIMESTAMPTZ NOT NULL
);
