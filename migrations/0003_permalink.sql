-- 0003: a link to a message on its origin platform (Matrix event permalink, Mattermost post
-- permalink), given by the origin connector; the long-text policy links to the full text with it.
ALTER TABLE messages ADD COLUMN permalink TEXT;
