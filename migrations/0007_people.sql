-- 0007: the people the bridge has seen, for mentions across networks.
--
-- One row per account on a network (an IRC nick, a Matrix user id, a Mattermost user id) with
-- the name it was last shown under. An IRC nick change keeps the old row and points it at the
-- new nick (`renamed_to`), so that a mention of the old nick still reaches its owner. Written in
-- the transaction that records the message the account said (or its nick change), so it is as
-- durable as the messages; read once at start into the in-memory directory.

CREATE TABLE people (
    network      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    display_name TEXT NOT NULL,
    renamed_to   TEXT,
    PRIMARY KEY (network, user_id)
) WITHOUT ROWID;
