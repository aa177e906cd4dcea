-- 0008: the history's retention (src/archive.rs). When a message past its gateway's retention is
-- forgotten, the replies to it lose their link to it (`reply_to_message_id` set to NULL): this
-- index finds them without reading every message. Partial, so a message that replies to nothing
-- costs the writer nothing more.
CREATE INDEX messages_by_reply ON messages(reply_to_message_id)
    WHERE reply_to_message_id IS NOT NULL;
