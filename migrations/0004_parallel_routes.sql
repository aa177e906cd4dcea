-- 0004: routes this bridge leaves to another bridge that relays the same channels (a parallel
-- bridge, see src/parallel.rs): deliveries on them wait for that bridge's copy instead of being
-- sent. Kept so that a restart does not show the next message twice before the other bridge is
-- recognised again. Channel names are folded (as the router compares them).
CREATE TABLE parallel_routes (
    origin_network      TEXT    NOT NULL,
    origin_channel      TEXT    NOT NULL,
    destination_network TEXT    NOT NULL,
    destination_channel TEXT    NOT NULL,
    account             TEXT    NOT NULL,
    since_ms            INTEGER NOT NULL,
    PRIMARY KEY (origin_network, origin_channel, destination_network, destination_channel)
) WITHOUT ROWID;
