-- 0007 (PostgreSQL): the people the bridge has seen, for mentions across networks (see
-- ../0007_people.sql).
CREATE TABLE people (
    network      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    display_name TEXT NOT NULL,
    renamed_to   TEXT,
    PRIMARY KEY (network, user_id)
);
