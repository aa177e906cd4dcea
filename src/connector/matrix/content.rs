//! Conversion between Matrix event JSON and the model, both ways; pure functions.
//!
//! Events are read as JSON (`serde_json::Value`) rather than typed `ruma` enums so that unknown
//! or malformed fields never fail a whole sync batch: whatever cannot be understood is dropped
//! with a reason. Text conversion lives in [`text_from_matrix`] and [`text_to_matrix`], one
//! function per direction, both through [`crate::richtext::html`].

use matrix_sdk::ruma::{EventId, OwnedEventId};
use serde_json::{Value, json};

use crate::connector::prefixed;
use crate::model::{Attachment, Delivery, EventBody, Membership, TextStyle};
use crate::richtext::{FormattedText, html};

/// The text of a received message: its `formatted_body` when it is HTML (a reply's
/// `<mx-reply>` quote dropped), else its plain `body` (a reply fallback's `> ` quote lines
/// removed).
#[must_use]
pub fn text_from_matrix(content: &Value, is_reply: bool) -> FormattedText {
    if content["format"] == "org.matrix.custom.html"
        && let Some(formatted) = content["formatted_body"].as_str()
    {
        let text = html::parse(formatted);
        if !text.is_empty() {
            return text;
        }
    }
    let body = content["body"].as_str().unwrap_or_default();
    if is_reply {
        FormattedText::plain(&strip_reply_fallback(body))
    } else {
        FormattedText::plain(body)
    }
}

/// The `body` and optional `formatted_body` (HTML) to send for a relayed text, with the sender
/// shown first.
#[must_use]
pub fn text_to_matrix(sender: &str, text: &FormattedText) -> (String, Option<String>) {
    let rendered = html::render(&prefixed(sender, text));
    (rendered.body, rendered.formatted_body)
}

/// Remove the quoted lines a client puts before a reply's own text.
#[must_use]
pub fn strip_reply_fallback(body: &str) -> String {
    if !body.starts_with("> ") && !body.starts_with(">\n") {
        return body.to_owned();
    }
    let mut lines = body.split('\n').peekable();
    while lines.next_if(|line| line.starts_with('>')).is_some() {}
    if lines.peek().is_some_and(|line| line.is_empty()) {
        lines.next();
    }
    lines.collect::<Vec<_>>().join("\n")
}

fn style_of(msgtype: &str) -> TextStyle {
    match msgtype {
        "m.emote" => TextStyle::Action,
        "m.notice" => TextStyle::Notice,
        _ => TextStyle::Normal,
    }
}

fn msgtype_of(style: TextStyle) -> &'static str {
    match style {
        TextStyle::Normal => "m.text",
        TextStyle::Action => "m.emote",
        TextStyle::Notice => "m.notice",
    }
}

/// A file message's file: its name (`filename`, else `body`), type and size. Not yet copied.
fn attachment_of(content: &Value) -> Attachment {
    let name = content["filename"]
        .as_str()
        .or_else(|| content["body"].as_str())
        .filter(|name| !name.is_empty())
        .unwrap_or("file");
    let mime = content["info"]["mimetype"]
        .as_str()
        .unwrap_or(match content["msgtype"].as_str() {
            Some("m.image") => "image/*",
            Some("m.video") => "video/*",
            Some("m.audio") => "audio/*",
            _ => "application/octet-stream",
        });
    Attachment {
        name: name.to_owned(),
        mime: mime.to_owned(),
        size: content["info"]["size"].as_u64(),
        stored: None,
    }
}

/// A file message's caption: its `body` (or `formatted_body`) when `filename` is also given and
/// differs (Matrix 1.10 media captions); else none.
fn caption_of(content: &Value) -> FormattedText {
    match content["filename"].as_str() {
        Some(filename)
            if content["body"]
                .as_str()
                .is_some_and(|body| body != filename) =>
        {
            text_from_matrix(content, false)
        }
        _ => FormattedText::default(),
    }
}

fn is_file_message(msgtype: &str) -> bool {
    matches!(msgtype, "m.image" | "m.file" | "m.video" | "m.audio")
}

fn message_text(content: &Value, is_reply: bool) -> Option<(TextStyle, FormattedText)> {
    let msgtype = content["msgtype"].as_str()?;
    if is_file_message(msgtype) {
        let caption = caption_of(content);
        let text = if caption.is_empty() {
            FormattedText::plain(&attachment_of(content).name)
        } else {
            caption
        };
        return Some((TextStyle::Normal, text));
    }
    let text = text_from_matrix(content, is_reply);
    (!text.is_empty()).then(|| (style_of(msgtype), text))
}

/// Whether the server stripped this event because it was redacted (a sync after the redaction
/// serves the event with its content gone and the redaction in `unsigned`).
#[must_use]
pub fn was_redacted(event: &Value) -> bool {
    event["unsigned"]["redacted_because"].is_object()
}

/// The model event for a Matrix timeline event, or `None` when it is not relayed.
#[must_use]
pub fn inbound(event: &Value, relay_membership: bool) -> Option<EventBody> {
    // A message-like event redacted before it was seen has nothing left to relay. A state
    // event keeps what matters through redaction (a redacted join is still a join).
    if was_redacted(event) && event.get("state_key").is_none() {
        return None;
    }
    let content = &event["content"];
    let relates = &content["m.relates_to"];
    match event["type"].as_str()? {
        "m.room.message" => {
            if relates["rel_type"] == "m.replace" {
                let target = relates["event_id"].as_str()?.to_owned();
                let new_content = if content["m.new_content"].is_object() {
                    &content["m.new_content"]
                } else {
                    content
                };
                let (style, text) = message_text(new_content, false)?;
                return Some(EventBody::Edit {
                    target,
                    style,
                    text,
                });
            }
            // A thread (`m.thread`) is carried apart from a reply: `m.in_reply_to` inside a
            // thread is a real reply only when it is not marked `is_falling_back` (the fallback
            // for clients without threads points at the thread's latest event).
            let in_thread = relates["rel_type"] == "m.thread";
            let thread_root = in_thread
                .then(|| relates["event_id"].as_str().map(ToOwned::to_owned))
                .flatten();
            let quoted = relates["m.in_reply_to"]["event_id"]
                .as_str()
                .map(ToOwned::to_owned);
            let falling_back = in_thread && relates["is_falling_back"] == true;
            let reply_to = quoted.clone().filter(|_| !falling_back);
            if content["msgtype"].as_str().is_some_and(is_file_message) {
                return Some(EventBody::Text {
                    style: TextStyle::Normal,
                    text: caption_of(content),
                    reply_to,
                    thread_root,
                    attachments: vec![attachment_of(content)],
                });
            }
            // Clients that add a quote fallback add it to any `m.in_reply_to`, fallback or not.
            let (style, text) = message_text(content, quoted.is_some())?;
            Some(EventBody::Text {
                style,
                text,
                reply_to,
                thread_root,
                attachments: Vec::new(),
            })
        }
        "m.sticker" => Some(EventBody::text(
            TextStyle::Normal,
            &format!(
                "sent a sticker: {}",
                content["body"].as_str().unwrap_or("sticker")
            ),
        )),
        "m.room.redaction" => {
            let target = content["redacts"]
                .as_str()
                .or_else(|| event["redacts"].as_str())?;
            Some(EventBody::Delete {
                target: target.to_owned(),
            })
        }
        "m.reaction" if relates["rel_type"] == "m.annotation" => Some(EventBody::Reaction {
            target: relates["event_id"].as_str()?.to_owned(),
            key: relates["key"].as_str()?.to_owned(),
            removed: false,
        }),
        "m.room.member" if relay_membership => {
            let now = content["membership"].as_str()?;
            let before = event["unsigned"]["prev_content"]["membership"].as_str();
            match (before, now) {
                (Some("join"), "join") => {
                    let old = event["unsigned"]["prev_content"]["displayname"].as_str();
                    let new = content["displayname"].as_str()?;
                    (old != Some(new)).then(|| {
                        EventBody::Membership(Membership::Renamed {
                            new_name: new.to_owned(),
                        })
                    })
                }
                (_, "join") => Some(EventBody::Membership(Membership::Joined)),
                (Some("join"), "leave" | "ban") => Some(EventBody::Membership(Membership::Left {
                    reason: content["reason"].as_str().map(ToOwned::to_owned),
                })),
                _ => None,
            }
        }
        "m.room.topic" if relay_membership => Some(EventBody::Membership(Membership::Topic {
            topic: content["topic"].as_str().unwrap_or_default().to_owned(),
        })),
        _ => None,
    }
}

/// The content key of a late delivery (one that shows when it was said) that carries the
/// original time, ms since the Unix epoch; Matrix's own `origin_server_ts` is the time of the send.
pub const ORIGINAL_TIME_KEY: &str = "tribridge.original_ts";

/// The content key of every event the bridge sends for a delivery, with the delivery id (the
/// request's transaction id): a start that may follow a send it never saw answered reads its
/// recent events back and finds the delivery already in the room (clients ignore the key; in
/// an encrypted room it is inside the ciphertext).
pub const DELIVERY_KEY: &str = "tribridge.delivery";

/// What to do on Matrix for one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// Send a message-like event.
    Send {
        /// `m.room.message` or `m.reaction`.
        event_type: &'static str,
        /// Its content.
        content: Value,
    },
    /// Redact this event.
    Redact(OwnedEventId),
    /// Take back the bot's reaction with this key on this event.
    RemoveReaction {
        /// The event reacted to.
        target: OwnedEventId,
        /// The reaction key.
        key: String,
    },
    /// Nothing to do (the message acted on never reached this room).
    Nothing,
}

fn message_content(msgtype: &str, body: &str, formatted: Option<&str>) -> Value {
    let mut content = json!({ "msgtype": msgtype, "body": body });
    if let Some(html) = formatted {
        content["format"] = json!("org.matrix.custom.html");
        content["formatted_body"] = json!(html);
    }
    content
}

/// The `msgtype` a file is sent as.
fn file_msgtype(attachment: &Attachment) -> &'static str {
    match attachment.mime.split('/').next() {
        Some("image") => "m.image",
        Some("video") => "m.video",
        Some("audio") => "m.audio",
        _ => "m.file",
    }
}

/// The content of a text message announcing files that could not be sent as files.
#[must_use]
pub fn file_caption(sender: &str, caption: &FormattedText) -> Value {
    let (body, formatted) = text_to_matrix(sender, caption);
    message_content("m.text", &body, formatted.as_deref())
}

/// The content of a file message for an uploaded file: `filename` is the name and `body` the
/// caption (`sender` + `caption`, or `sender` + the name when there is no caption).
#[must_use]
pub fn file_content(
    attachment: &Attachment,
    mxc: &str,
    sender: &str,
    caption: &FormattedText,
) -> Value {
    let caption = if caption.is_empty() {
        FormattedText::plain(&attachment.name)
    } else {
        caption.clone()
    };
    let (body, formatted) = text_to_matrix(sender, &caption);
    let mut content = message_content(file_msgtype(attachment), &body, formatted.as_deref());
    content["filename"] = json!(attachment.name);
    content["url"] = json!(mxc);
    content["info"] = json!({ "mimetype": attachment.mime });
    if let Some(size) = attachment.size {
        content["info"]["size"] = json!(size);
    }
    content
}

/// This room's event ids of the messages a delivery refers to, when they reached this room.
#[derive(Debug, Clone, Copy, Default)]
pub struct Related<'a> {
    /// The message edited, deleted or reacted to.
    pub target: Option<&'a EventId>,
    /// The message replied to.
    pub reply_to: Option<&'a EventId>,
    /// The root of the thread the message is in.
    pub thread_root: Option<&'a EventId>,
}

/// `m.relates_to` for a new message: a thread (with a reply, or the reply fallback to the root
/// for clients without threads), a plain reply, or nothing.
#[must_use]
pub fn message_relation(related: Related<'_>) -> Option<Value> {
    match (related.thread_root, related.reply_to) {
        (Some(root), reply_to) => Some(json!({
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": reply_to.is_none(),
            "m.in_reply_to": { "event_id": reply_to.unwrap_or(root) },
        })),
        (None, Some(reply_to)) => Some(json!({ "m.in_reply_to": { "event_id": reply_to } })),
        (None, None) => None,
    }
}

/// The key of a per-message profile (MSC4144, under its unstable prefix).
pub const PER_MESSAGE_PROFILE_KEY: &str = "com.beeper.per_message_profile";

/// Mark a message the bot relays with its author's profile (MSC4144: `id`, `displayname`,
/// `avatar_url` when known), so that clients that read it show the person instead of the bot;
/// the plain-text prefix stays for the others. Also in an edit's new content.
pub fn set_per_message_profile(content: &mut Value, delivery: &Delivery, avatar_url: Option<&str>) {
    let mut profile = json!({
        "id": format!("{}/{}", delivery.origin.network, delivery.author.id),
        "displayname": delivery.author.display_name,
    });
    if let Some(avatar_url) = avatar_url {
        profile["avatar_url"] = avatar_url.into();
    }
    if content.get("m.new_content").is_some() {
        content["m.new_content"][PER_MESSAGE_PROFILE_KEY] = profile.clone();
    }
    content[PER_MESSAGE_PROFILE_KEY] = profile;
}

/// The media type of a picture, from its first bytes.
#[must_use]
pub fn image_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else if bytes.starts_with(b"\xff\xd8") {
        "image/jpeg"
    } else if bytes.starts_with(b"GIF8") {
        "image/gif"
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "image/webp"
    } else {
        "application/octet-stream"
    }
}

/// `m.mentions` of a message (and of its new content, for an edit): the users it notifies, and
/// whether it notifies the whole room. Without either it is left out, as before intentional
/// mentions (an empty one would silence the name matching of older clients' push rules).
pub fn set_mentions(content: &mut Value, user_ids: &[String], room: bool) {
    if user_ids.is_empty() && !room {
        return;
    }
    let mut mentions = json!({ "user_ids": user_ids });
    if room {
        mentions["room"] = true.into();
    }
    if content["m.new_content"].is_object() {
        content["m.new_content"]["m.mentions"] = mentions.clone();
    }
    content["m.mentions"] = mentions;
}

/// The Matrix action for a delivery. `sender` is the rendered sender prefix; `related` holds
/// this room's event ids of the messages acted on, replied to or threaded under, when known.
#[must_use]
pub fn outbound(delivery: &Delivery, sender: &str, related: Related<'_>) -> Outbound {
    let target = related.target;
    match &delivery.body {
        EventBody::Text { style, text, .. } => {
            let (body, formatted) = text_to_matrix(sender, text);
            let mut content = message_content(msgtype_of(*style), &body, formatted.as_deref());
            if let Some(relation) = message_relation(related) {
                content["m.relates_to"] = relation;
            }
            Outbound::Send {
                event_type: "m.room.message",
                content,
            }
        }
        EventBody::Edit { style, text, .. } => {
            let (body, formatted) = text_to_matrix(sender, text);
            let Some(target) = target else {
                // The original never reached this room: show the correction as a new message.
                let (body, formatted) = text_to_matrix(&format!("{sender}* "), text);
                return Outbound::Send {
                    event_type: "m.room.message",
                    content: message_content(msgtype_of(*style), &body, formatted.as_deref()),
                };
            };
            let new_content = message_content(msgtype_of(*style), &body, formatted.as_deref());
            let mut content = message_content(
                msgtype_of(*style),
                &format!("* {body}"),
                formatted.map(|html| format!("* {html}")).as_deref(),
            );
            content["m.new_content"] = new_content;
            content["m.relates_to"] = json!({ "rel_type": "m.replace", "event_id": target });
            Outbound::Send {
                event_type: "m.room.message",
                content,
            }
        }
        EventBody::Delete { .. } => {
            target.map_or(Outbound::Nothing, |t| Outbound::Redact(t.to_owned()))
        }
        EventBody::Reaction { key, removed, .. } => match (target, removed) {
            (None, _) => Outbound::Nothing,
            (Some(target), true) => Outbound::RemoveReaction {
                target: target.to_owned(),
                key: key.clone(),
            },
            (Some(target), false) => Outbound::Send {
                event_type: "m.reaction",
                content: json!({
                    "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": key }
                }),
            },
        },
        EventBody::Membership(change) => {
            let text = crate::connector::membership_text(delivery, change);
            let (body, formatted) = text_to_matrix(
                &format!("[{}] ", delivery.origin.network),
                &FormattedText::plain(&text),
            );
            Outbound::Send {
                event_type: "m.room.message",
                content: message_content("m.notice", &body, formatted.as_deref()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_fallback_is_stripped() {
        assert_eq!(
            strip_reply_fallback("> <@a:x> hello\n> more\n\nmy answer"),
            "my answer"
        );
        assert_eq!(strip_reply_fallback("no quote"), "no quote");
        assert_eq!(strip_reply_fallback("> quote only"), "");
    }

    #[test]
    fn an_event_served_after_its_redaction_is_known_as_redacted() {
        // As Synapse serves a message redacted before the sync: content gone, the redaction
        // in `unsigned`. A membership keeps its `membership` key through redaction.
        let gone = json!({"type": "m.room.member", "event_id": "$m",
            "content": {"membership": "join"},
            "unsigned": {"redacted_because": {"type": "m.room.redaction", "redacts": "$m"}}});
        assert!(was_redacted(&gone));
        let kept = json!({"type": "m.room.message", "event_id": "$k",
            "content": {"msgtype": "m.text", "body": "kept"}, "unsigned": {"age": 5}});
        assert!(!was_redacted(&kept));
    }

    #[test]
    fn a_redacted_message_is_not_relayed_but_a_redacted_join_still_is() {
        let taken_back = json!({"type": "m.room.redaction", "redacts": "$x"});
        // Whatever content a server leaves on a redacted message-like event, it is not read.
        let message = json!({"type": "m.room.message", "event_id": "$x",
            "content": {"msgtype": "m.file"}, "unsigned": {"redacted_because": taken_back}});
        assert_eq!(inbound(&message, true), None);
        let reaction = json!({"type": "m.reaction", "event_id": "$x",
            "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$a",
                                         "key": "👍"}},
            "unsigned": {"redacted_because": taken_back}});
        assert_eq!(inbound(&reaction, true), None);
        let join = json!({"type": "m.room.member", "event_id": "$x", "state_key": "@b:x",
            "content": {"membership": "join"}, "unsigned": {"redacted_because": taken_back}});
        assert_eq!(
            inbound(&join, true),
            Some(EventBody::Membership(Membership::Joined))
        );
    }

    #[test]
    fn edits_reactions_redactions_and_replies_are_read() {
        let edit = json!({"type": "m.room.message", "content": {
            "msgtype": "m.text", "body": "* fixed",
            "m.new_content": {"msgtype": "m.text", "body": "fixed"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$a"}}});
        assert_eq!(
            inbound(&edit, false),
            Some(EventBody::Edit {
                target: "$a".into(),
                style: TextStyle::Normal,
                text: FormattedText::plain("fixed")
            })
        );
        let reaction = json!({"type": "m.reaction", "content": {
            "m.relates_to": {"rel_type": "m.annotation", "event_id": "$a", "key": "👍"}}});
        assert_eq!(
            inbound(&reaction, false),
            Some(EventBody::Reaction {
                target: "$a".into(),
                key: "👍".into(),
                removed: false
            })
        );
        let redact = json!({"type": "m.room.redaction", "content": {"redacts": "$a"}});
        assert_eq!(
            inbound(&redact, false),
            Some(EventBody::Delete {
                target: "$a".into()
            })
        );
        let reply = json!({"type": "m.room.message", "content": {
            "msgtype": "m.emote", "body": "> <@b:x> hi\n\nwaves back",
            "m.relates_to": {"m.in_reply_to": {"event_id": "$a"}}}});
        assert_eq!(
            inbound(&reply, false),
            Some(EventBody::Text {
                style: TextStyle::Action,
                text: FormattedText::plain("waves back"),
                reply_to: Some("$a".into()),
                thread_root: None,
                attachments: Vec::new(),
            })
        );
        // A thread message whose `m.in_reply_to` is only the fallback: in the thread, no reply.
        let threaded = json!({"type": "m.room.message", "content": {
            "msgtype": "m.text", "body": "in the thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": "$root",
                "is_falling_back": true, "m.in_reply_to": {"event_id": "$latest"}}}});
        assert_eq!(
            inbound(&threaded, false),
            Some(EventBody::Text {
                style: TextStyle::Normal,
                text: FormattedText::plain("in the thread"),
                reply_to: None,
                thread_root: Some("$root".into()),
                attachments: Vec::new(),
            })
        );
        // A real reply inside a thread: both.
        let threaded_reply = json!({"type": "m.room.message", "content": {
            "msgtype": "m.text", "body": "answer",
            "m.relates_to": {"rel_type": "m.thread", "event_id": "$root",
                "m.in_reply_to": {"event_id": "$b"}}}});
        assert_eq!(
            inbound(&threaded_reply, false),
            Some(EventBody::Text {
                style: TextStyle::Normal,
                text: FormattedText::plain("answer"),
                reply_to: Some("$b".into()),
                thread_root: Some("$root".into()),
                attachments: Vec::new(),
            })
        );
        let image = json!({"type": "m.room.message", "content": {
            "msgtype": "m.image", "body": "cat.png", "info": {"size": 2048}}});
        let cat = Attachment {
            name: "cat.png".into(),
            mime: "image/*".into(),
            size: Some(2048),
            stored: None,
        };
        assert_eq!(
            inbound(&image, false),
            Some(EventBody::Text {
                style: TextStyle::Normal,
                text: FormattedText::default(),
                reply_to: None,
                thread_root: None,
                attachments: vec![cat.clone()],
            })
        );
        let captioned = json!({"type": "m.room.message", "content": {
            "msgtype": "m.image", "body": "look at *this*", "filename": "cat.png",
            "info": {"size": 2048}}});
        assert_eq!(
            inbound(&captioned, false),
            Some(EventBody::Text {
                style: TextStyle::Normal,
                text: FormattedText::plain("look at *this*"),
                reply_to: None,
                thread_root: None,
                attachments: vec![cat.clone()],
            })
        );
        let sent = file_content(&cat, "mxc://x/y", "<bob> ", &FormattedText::default());
        assert_eq!(sent["msgtype"], "m.image");
        assert_eq!(sent["body"], "<bob> cat.png");
        assert_eq!(sent["filename"], "cat.png");
        assert_eq!(sent["info"]["size"], 2048);
        let member = json!({"type": "m.room.member", "state_key": "@a:x",
            "content": {"membership": "join"}});
        assert_eq!(inbound(&member, false), None);
        assert_eq!(
            inbound(&member, true),
            Some(EventBody::Membership(Membership::Joined))
        );
    }

    #[test]
    fn threads_are_sent_with_the_reply_fallback() {
        let root = EventId::parse("$root:x").unwrap();
        let answered = EventId::parse("$b:x").unwrap();
        let relation = |related| match outbound(&text_delivery(), "<a> ", related) {
            Outbound::Send { content, .. } => content["m.relates_to"].clone(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(
            relation(Related {
                thread_root: Some(&root),
                ..Related::default()
            }),
            json!({"rel_type": "m.thread", "event_id": "$root:x", "is_falling_back": true,
                   "m.in_reply_to": {"event_id": "$root:x"}})
        );
        assert_eq!(
            relation(Related {
                thread_root: Some(&root),
                reply_to: Some(&answered),
                ..Related::default()
            }),
            json!({"rel_type": "m.thread", "event_id": "$root:x", "is_falling_back": false,
                   "m.in_reply_to": {"event_id": "$b:x"}})
        );
        assert_eq!(
            relation(Related {
                reply_to: Some(&answered),
                ..Related::default()
            }),
            json!({"m.in_reply_to": {"event_id": "$b:x"}})
        );
        assert_eq!(relation(Related::default()), Value::Null);
    }

    #[test]
    fn relayed_messages_carry_their_authors_profile() {
        let delivery = text_delivery();
        let mut content = json!({"msgtype": "m.text", "body": "<a> hi"});
        set_per_message_profile(&mut content, &delivery, None);
        assert_eq!(
            content[PER_MESSAGE_PROFILE_KEY],
            json!({"id": format!("{}/{}", delivery.origin.network, delivery.author.id),
                   "displayname": delivery.author.display_name})
        );
        let mut edit = json!({"body": "* x", "m.new_content": {"body": "x"}});
        set_per_message_profile(&mut edit, &delivery, Some("mxc://s/p"));
        assert_eq!(
            edit["m.new_content"][PER_MESSAGE_PROFILE_KEY]["avatar_url"],
            "mxc://s/p"
        );
    }

    fn text_delivery() -> Delivery {
        use crate::model::ChannelRef;
        Delivery::sample(
            1,
            ChannelRef::new("irc", "#a"),
            ChannelRef::new("mx", "!r"),
            "hi",
        )
    }
}
