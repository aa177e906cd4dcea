-- 0011: the instances on one store, for the per-network leases (`[general] failover = "network"`,
-- see src/vocab/lease.rs). Each instance stamps its row on every lease tick; the live ones share
-- the networks (each takes up to ceil(networks / live instances)). The SQLite store serves one
-- instance and never writes this table; it exists here so that both migration sets stay in step.
CREATE TABLE instances (
    name         TEXT    NOT NULL PRIMARY KEY,
    heartbeat_at INTEGER NOT NULL
);
