//! Conversion between Mattermost's wire types (posts, reactions, WebSocket envelopes) and the
//! model, both ways, as pure functions: no I/O, unit-tested here.
//!
//! **Invariants:** a change has one derived remote id however it is seen, live or in a catch-up
//! (`<post>:edit:<edit_at>`, `<post>:delete`, `<post>:reaction:<user>:<emoji>:<+|->:<when>`),
//! so it is relayed once; Markdown is read and written only through
//! [`crate::richtext::markdown`]; nothing the server sends makes a function here panic.

use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{Post, PostList, Reaction};
use super::emoji;
use crate::connector::{GatewaySettings, late_prefix, prefixed};
use crate::model::{
    Attachment, Author, ChannelRef, Delivery, EventBody, Inbound, Membership, TextStyle,
};
use crate::richtext;
use crate::richtext::FormattedText;
use crate::richtext::model::{Block, Inline};

/// The longest message the bridge sends, in characters (`MaxPostSize` is 16383 runes on current
/// servers, 4000 on very old ones).
pub(super) const MAX_POST_CHARS: usize = 16_383;

/// The Markdown of a post to the model's text (mentions named for `network`). A `/me` post's
/// message is emphasised as a whole (`*waves*`); that emphasis is the post type, not the text's.
pub(super) fn markdown_to_text(network: &str, markdown: &str, action: bool) -> FormattedText {
    let mut text = richtext::markdown::parse_for_network(markdown, network);
    if action
        && let [Block::Paragraph(inlines)] = text.blocks.as_mut_slice()
        && let [Inline::Italic(inner)] = inlines.as_mut_slice()
    {
        let inner = std::mem::take(inner);
        text = FormattedText::new(vec![Block::Paragraph(inner)]);
    }
    text
}

/// The model's text to a post's Markdown, with `prefix` (the sender, literal text) in front and,
/// for a `/me` post, emphasised as the `/me` command does. Everything literal stays literal.
pub(super) fn text_to_markdown(prefix: &str, text: &FormattedText, action: bool) -> String {
    let mut blocks = text.blocks.clone();
    if !prefix.is_empty() {
        if let Some(Block::Paragraph(inlines)) = blocks.first_mut() {
            inlines.insert(0, Inline::Text(prefix.to_owned()));
        } else {
            blocks.insert(
                0,
                Block::Paragraph(vec![Inline::Text(prefix.trim_end().to_owned())]),
            );
        }
    }
    if action && let [Block::Paragraph(inlines)] = blocks.as_mut_slice() {
        let inner = std::mem::take(inlines);
        *inlines = vec![Inline::Italic(inner)];
    }
    richtext::markdown::render(&FormattedText::new(blocks))
}

/// A message that fits in one post: cut, and said so, when longer.
pub(super) fn fit(message: &str) -> std::borrow::Cow<'_, str> {
    const MARK: &str = "\n… (cut: too long for Mattermost)";
    if message.chars().count() <= MAX_POST_CHARS {
        return std::borrow::Cow::Borrowed(message);
    }
    let keep = MAX_POST_CHARS - MARK.chars().count();
    let mut cut: String = message.chars().take(keep).collect();
    // Never end on a lone backslash, which would escape the line break after it.
    while cut.ends_with('\\') {
        cut.pop();
    }
    cut.push_str(MARK);
    std::borrow::Cow::Owned(cut)
}

/// A post's style and text: `/me` posts are actions.
pub(super) fn post_text(network: &str, post: &Post) -> (TextStyle, FormattedText) {
    if post.kind == "me" {
        (
            TextStyle::Action,
            markdown_to_text(network, &post.message, true),
        )
    } else {
        (
            TextStyle::Normal,
            markdown_to_text(network, &post.message, false),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket envelopes

/// A WebSocket envelope: an event or a reply.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope {
    #[serde(default)]
    pub(super) event: Option<String>,
    #[serde(default)]
    pub(super) data: Value,
    #[serde(default)]
    pub(super) broadcast: Value,
    #[serde(default)]
    pub(super) seq: Option<i64>,
}

impl Envelope {
    /// A string field of `data` (posts and reactions are embedded as JSON strings).
    fn embedded(&self, name: &str) -> Option<&str> {
        self.data.get(name).and_then(Value::as_str)
    }

    /// The post embedded in a `posted`, `post_edited` or `post_deleted` event, if readable.
    pub(super) fn post(&self) -> Option<Post> {
        self.embedded("post")
            .and_then(|text| serde_json::from_str::<Post>(text).ok())
    }

    /// The reaction embedded in a `reaction_added` or `reaction_removed` event, if readable.
    pub(super) fn reaction(&self) -> Option<Reaction> {
        self.embedded("reaction")
            .and_then(|text| serde_json::from_str::<Reaction>(text).ok())
    }

    /// The user of a `user_updated` event (an object there, not a JSON string).
    pub(super) fn updated_user(&self) -> Option<super::api::User> {
        self.data
            .get("user")
            .and_then(|user| serde_json::from_value(user.clone()).ok())
    }

    /// The `@username` of a `posted` event's sender.
    pub(super) fn sender_name(&self) -> Option<String> {
        self.embedded("sender_name").map(str::to_owned)
    }

    /// The channel a broadcast went to (empty when not said).
    pub(super) fn broadcast_channel_id(&self) -> &str {
        self.broadcast
            .get("channel_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// A `hello`'s connection id, for resuming (empty when not said).
    pub(super) fn connection_id(&self) -> String {
        self.embedded("connection_id")
            .unwrap_or_default()
            .to_owned()
    }

    /// Whether a `user_removed` event removes the account `me` from a channel for which
    /// `bridged` holds. Either form counts: to the channel (`data.user_id`) or to the removed
    /// user (`data.channel_id`, `broadcast.user_id`).
    pub(super) fn removes(&self, me: &str, bridged: impl Fn(&str) -> bool) -> bool {
        let field = |value: &Value, name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let channel = [
            field(&self.data, "channel_id"),
            field(&self.broadcast, "channel_id"),
        ]
        .into_iter()
        .find(|c| bridged(c));
        let removed_me =
            field(&self.data, "user_id") == me || field(&self.broadcast, "user_id") == me;
        removed_me && channel.is_some()
    }
}

/// Read one WebSocket text frame as the session does, without acting on it: the envelope, the
/// post or reaction embedded in it (as a JSON string, the way Mattermost sends them) and the
/// post's text. Returns how many of those parts were readable. For the fuzz target and the
/// hostile-input tests: any input must come back, never panic.
#[must_use]
pub fn read_websocket_text(network: &str, text: &str) -> usize {
    let Ok(envelope) = serde_json::from_str::<Envelope>(text) else {
        return 0;
    };
    let mut readable = 1;
    if let Some(post) = envelope.post() {
        let _ = post_text(network, &post);
        readable += 1;
    }
    if envelope.reaction().is_some() {
        readable += 1;
    }
    readable
}

// ---------------------------------------------------------------------------------------------
// Posts and reactions to inbound events

/// The remote id of one version of an edited post: the same edit seen live and in a catch-up
/// is one event.
pub(super) fn edit_id(post: &Post) -> String {
    format!("{}:edit:{}", post.id, post.edit_at)
}

/// The remote id of a post's deletion.
pub(super) fn delete_id(post: &Post) -> String {
    format!("{}:delete", post.id)
}

/// When a reaction was added, or (`removed`) taken back.
pub(super) fn reaction_time(reaction: &Reaction, removed: bool) -> i64 {
    if removed {
        reaction.update_at.max(reaction.delete_at)
    } else {
        reaction.create_at
    }
}

/// The remote id of a reaction added or taken back at `when`.
pub(super) fn reaction_id(reaction: &Reaction, removed: bool, when: i64) -> String {
    format!(
        "{}:reaction:{}:{}:{}:{when}",
        reaction.post_id,
        reaction.user_id,
        reaction.emoji_name,
        if removed { "-" } else { "+" }
    )
}

/// The membership change a system post records, with the username it names when it names one
/// (`None` for any other post).
pub(super) fn membership_change(
    network: &str,
    post: &Post,
) -> Option<(Option<String>, Membership)> {
    let props_name = |name: &str| post.prop(name).map(str::to_owned);
    match post.kind.as_str() {
        "system_join_channel" => Some((props_name("username"), Membership::Joined)),
        "system_add_to_channel" => Some((props_name("addedUsername"), Membership::Joined)),
        "system_leave_channel" => Some((props_name("username"), Membership::Left { reason: None })),
        "system_remove_from_channel" => Some((
            props_name("removedUsername"),
            Membership::Left { reason: None },
        )),
        "system_header_change" => Some((
            props_name("username"),
            Membership::Topic {
                topic: markdown_to_text(
                    network,
                    post.prop("new_header").unwrap_or_default(),
                    false,
                )
                .to_plain_text(),
            },
        )),
        _ => None,
    }
}

/// The name a webhook post shows instead of its author's (`override_username`).
pub(super) fn webhook_name(post: &Post) -> Option<&str> {
    if post.prop("from_webhook") == Some("true") {
        post.prop("override_username")
    } else {
        None
    }
}

/// A membership system post, said by `name`.
pub(super) fn membership_inbound(
    origin: ChannelRef,
    post: &Post,
    name: String,
    change: Membership,
    permalink: String,
) -> Inbound {
    Inbound {
        origin,
        remote_id: Some(post.id.clone()),
        author: Author {
            id: post.user_id.clone(),
            display_name: name,
        },
        permalink: Some(permalink),
        timestamp_ms: post.create_at,
        body: EventBody::Membership(change),
    }
}

/// A new post (its text from [`post_text`]) with its files.
pub(super) fn text_inbound(
    origin: ChannelRef,
    post: &Post,
    author: Author,
    permalink: String,
    (style, text): (TextStyle, FormattedText),
    attachments: Vec<Attachment>,
) -> Inbound {
    Inbound {
        origin,
        remote_id: Some(post.id.clone()),
        author,
        permalink: Some(permalink),
        timestamp_ms: post.create_at,
        body: EventBody::Text {
            style,
            text,
            reply_to: None,
            thread_root: (!post.root_id.is_empty()).then(|| post.root_id.clone()),
            attachments,
        },
    }
}

/// An edited post: one event per version ([`edit_id`]), at the time of the edit.
pub(super) fn edit_inbound(
    origin: ChannelRef,
    post: &Post,
    author: Author,
    permalink: String,
) -> Inbound {
    let (style, text) = post_text(&origin.network, post);
    Inbound {
        origin,
        remote_id: Some(edit_id(post)),
        author,
        permalink: Some(permalink),
        timestamp_ms: post.edit_at,
        body: EventBody::Edit {
            target: post.id.clone(),
            style,
            text,
        },
    }
}

/// A deleted post, at the time of the deletion (its last change when that is not said).
pub(super) fn delete_inbound(origin: ChannelRef, post: &Post, author: Author) -> Inbound {
    Inbound {
        origin,
        remote_id: Some(delete_id(post)),
        author,
        permalink: None,
        timestamp_ms: if post.delete_at > 0 {
            post.delete_at
        } else {
            post.update_at
        },
        body: EventBody::Delete {
            target: post.id.clone(),
        },
    }
}

/// A reaction added or (`removed`) taken back by someone called `display_name`.
pub(super) fn reaction_inbound(
    origin: ChannelRef,
    reaction: &Reaction,
    display_name: String,
    removed: bool,
) -> Inbound {
    let when = reaction_time(reaction, removed);
    Inbound {
        origin,
        remote_id: Some(reaction_id(reaction, removed, when)),
        author: Author {
            id: reaction.user_id.clone(),
            display_name,
        },
        permalink: None,
        timestamp_ms: when,
        body: EventBody::Reaction {
            target: reaction.post_id.clone(),
            key: emoji::key_of(&reaction.emoji_name),
            removed,
        },
    }
}

/// A file as its details (`GET /files/{id}/info`) describe it, not stored yet; unreadable
/// details (`null`) give a generic file.
pub(super) fn attachment_from_info(info: &Value) -> Attachment {
    Attachment {
        name: info["name"].as_str().unwrap_or("file").to_owned(),
        mime: info["mime_type"]
            .as_str()
            .filter(|mime| !mime.is_empty())
            .unwrap_or("application/octet-stream")
            .to_owned(),
        size: info["size"].as_u64(),
        stored: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Catch-up

/// What a catch-up row means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    New,
    Edited,
    Deleted,
}

/// The rows of a post list, in its order (ids without a post skipped).
pub(super) fn rows(list: &PostList) -> Vec<&Post> {
    list.order
        .iter()
        .filter_map(|id| list.posts.get(id))
        .collect()
}

/// Add `posts` that `list` does not hold yet, at the end of its order.
pub(super) fn merge_posts(list: &mut PostList, posts: Vec<Post>) {
    for post in posts {
        if !list.order.contains(&post.id) {
            list.order.push(post.id.clone());
            list.posts.insert(post.id.clone(), post);
        }
    }
}

/// The newest change among `rows` (`cursor` when there is none).
pub(super) fn newest_update(rows: &[&Post], cursor: i64) -> i64 {
    rows.iter().map(|p| p.update_at).max().unwrap_or(cursor)
}

/// What a catch-up from `cursor` relays, each change at the time it happened, so that the
/// destination sees them in the order people made them: a new post (with its latest text) when
/// it was created, an edit of an older post when it was edited, a deletion when it was deleted.
/// Edit-history rows are skipped, and so are rows only bumped by a reaction, pin or reply.
pub(super) fn catch_up_changes<'a>(rows: &[&'a Post], cursor: i64) -> Vec<(i64, Change, &'a Post)> {
    let mut changes: Vec<(i64, Change, &Post)> = rows
        .iter()
        .copied()
        .filter(|p| p.original_id.is_empty())
        .filter_map(|p| {
            if p.delete_at > 0 {
                Some((p.delete_at, Change::Deleted, p))
            } else if p.create_at > cursor {
                Some((p.create_at, Change::New, p))
            } else if p.edit_at > cursor {
                Some((p.edit_at, Change::Edited, p))
            } else {
                None // a reaction, pin or reply bumped it: nothing to relay
            }
        })
        .collect();
    changes.sort_by(|a, b| (a.0, &a.2.id).cmp(&(b.0, &b.2.id)));
    changes
}

/// The posts among `rows` that may have had reactions added since `cursor`.
pub(super) fn reacted_since(rows: &[&Post], cursor: i64) -> Vec<String> {
    rows.iter()
        .filter(|p| {
            p.original_id.is_empty() && p.delete_at == 0 && p.has_reactions && p.update_at > cursor
        })
        .map(|p| p.id.clone())
        .collect()
}

/// Of a post's reactions, those added since `cursor` and still there, oldest first (taking one
/// back leaves no row to find).
pub(super) fn new_reactions(mut reactions: Vec<Reaction>, cursor: i64) -> Vec<Reaction> {
    reactions.retain(|r| r.create_at > cursor && r.delete_at == 0);
    reactions.sort_by_key(|r| r.create_at);
    reactions
}

/// One page of a channel's posts (newest first): those created after `cursor`, and whether the
/// page reached a post that is not (so that older pages need not be read).
pub(super) fn created_after(list: &PostList, cursor: i64) -> (Vec<Post>, bool) {
    let mut found = Vec::new();
    let mut older = false;
    for id in &list.order {
        match list.posts.get(id) {
            Some(post) if post.create_at > cursor => found.push(post.clone()),
            Some(_) => older = true,
            None => {}
        }
    }
    (found, older)
}

// ---------------------------------------------------------------------------------------------
// Deliveries to posts

/// How the sender of a relayed message is shown.
pub(super) enum SenderShown {
    /// As the post's author (`override_username`), with their picture when it is linked.
    Override {
        /// The `override_icon_url`.
        icon_url: Option<String>,
    },
    /// As a prefix of the text (the rendered `remote_nick_format`).
    Prefix(String),
}

/// What a post says: its type, Markdown message and props.
#[derive(Debug, PartialEq)]
pub(super) struct PostContent {
    /// `""`, or `me` for an action.
    pub(super) kind: &'static str,
    /// The Markdown message (not cut to [`MAX_POST_CHARS`] yet: see [`fit`]).
    pub(super) message: String,
    /// `from_webhook`, `override_username`, `override_icon_url` when the sender is overridden.
    pub(super) props: serde_json::Map<String, Value>,
}

/// The post for a text: the sender as an override where the server allows it, else prefixed;
/// late messages say when they were said (`now_ms`); mass pings neutralised unless the gateway
/// allows them.
pub(super) fn post_content(
    delivery: &Delivery,
    style: TextStyle,
    text: &FormattedText,
    settings: &GatewaySettings,
    now_ms: i64,
    sender: SenderShown,
) -> PostContent {
    let mut text = match late_prefix(delivery, settings, now_ms) {
        Some(time) => prefixed(&time, text),
        None => text.clone(),
    };
    richtext::mention::neutralise_mass_pings(&mut text, settings.allow_mass_pings);
    let text = &text;
    let mut props = serde_json::Map::new();
    let prefix = match sender {
        SenderShown::Override { icon_url } => {
            props.insert("from_webhook".into(), json!("true"));
            props.insert(
                "override_username".into(),
                json!(delivery.author.display_name),
            );
            if let Some(icon) = icon_url {
                props.insert("override_icon_url".into(), json!(icon));
            }
            String::new()
        }
        SenderShown::Prefix(prefix) => prefix,
    };
    match style {
        TextStyle::Action => PostContent {
            kind: "me",
            message: text_to_markdown(&prefix, text, true),
            props,
        },
        TextStyle::Normal | TextStyle::Notice => PostContent {
            kind: "",
            message: text_to_markdown(&prefix, text, false),
            props,
        },
    }
}

/// The post for a membership change: a plain line prefixed with the origin network.
pub(super) fn membership_content(delivery: &Delivery, change: &Membership) -> PostContent {
    let text = crate::connector::membership_text(delivery, change);
    PostContent {
        kind: "",
        message: text_to_markdown(
            &format!("[{}] ", delivery.origin.network),
            &FormattedText::plain(&text),
            false,
        ),
        props: serde_json::Map::new(),
    }
}

/// The id of the post a delivery's message belongs under: in the thread it is in; else a reply
/// starts (or joins) the thread of the post it answers.
pub(super) fn thread_anchor(delivery: &Delivery) -> Option<String> {
    [&delivery.thread_root, &delivery.reply_to]
        .into_iter()
        .find_map(|r| r.as_ref().and_then(|r| r.remote_id.clone()))
}

/// The thread root to reply under: the post itself, or its root when it is a reply.
pub(super) fn thread_root_of(post: Post) -> String {
    if post.root_id.is_empty() {
        post.id
    } else {
        post.root_id
    }
}

/// The body of `POST /posts`: the delivery id as `pending_post_id`, so that a retried create
/// returns the same post; the message cut to fit.
pub(super) fn create_body(
    channel_id: &str,
    content: &PostContent,
    root_id: Option<String>,
    pending_post_id: &str,
    file_ids: &[String],
) -> Value {
    json!({
        "channel_id": channel_id,
        "message": fit(&content.message),
        "type": content.kind,
        "root_id": root_id.unwrap_or_default(),
        "props": content.props,
        "pending_post_id": pending_post_id,
        "file_ids": file_ids,
    })
}

/// The body of `PUT /posts/{id}/patch` for an edit: the message cut to fit.
pub(super) fn patch_body(message: &str) -> Value {
    json!({ "message": fit(message) })
}

/// The body of `POST /reactions`.
pub(super) fn reaction_body(me: &str, post_id: &str, emoji_name: &str) -> Value {
    json!({"user_id": me, "post_id": post_id, "emoji_name": emoji_name})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TargetRef;

    fn post(id: &str) -> Post {
        Post {
            id: id.into(),
            user_id: "u1".into(),
            channel_id: "c1".into(),
            ..Post::default()
        }
    }

    fn reaction(create_at: i64, update_at: i64, delete_at: i64) -> Reaction {
        Reaction {
            user_id: "u1".into(),
            post_id: "p1".into(),
            emoji_name: "thumbsup".into(),
            create_at,
            update_at,
            delete_at,
        }
    }

    fn author() -> Author {
        Author {
            id: "u1".into(),
            display_name: "alice".into(),
        }
    }

    fn origin() -> ChannelRef {
        ChannelRef::new("mm", "town-square")
    }

    fn delivery() -> Delivery {
        Delivery::sample(
            1,
            ChannelRef::new("irc", "#a"),
            ChannelRef::new("mm", "town-square"),
            "hi",
        )
    }

    #[test]
    fn markdown_both_ways_keeps_literals_and_actions() {
        let text = FormattedText::plain("2*3*4 <b> @here");
        let markdown = text_to_markdown("<alice> ", &text, false);
        assert_eq!(
            markdown_to_text("mm", &markdown, false).to_plain_text(),
            "<alice> 2*3*4 <b> @\u{2060}here"
        );
        let action = text_to_markdown("", &FormattedText::plain("waves"), true);
        assert_eq!(action, "*waves*");
        let back = markdown_to_text("mm", &action, true);
        assert_eq!(back, FormattedText::plain("waves"));
        // An action that is not emphasised as a whole keeps its formatting.
        let partial = markdown_to_text("mm", "*waves* back", true);
        assert_eq!(partial.to_plain_text(), "waves back");
    }

    #[test]
    fn long_messages_are_cut_and_say_so() {
        assert_eq!(fit("short"), "short");
        let long = "a".repeat(MAX_POST_CHARS + 10);
        let cut = fit(&long);
        assert_eq!(cut.chars().count(), MAX_POST_CHARS);
        assert!(cut.ends_with("(cut: too long for Mattermost)"));
        let backslashes = format!("{}\\\\x", "b".repeat(MAX_POST_CHARS));
        assert!(!fit(&backslashes).contains('\\'));
    }

    #[test]
    fn me_posts_are_actions() {
        let mut p = post("p1");
        p.message = "*waves*".into();
        p.kind = "me".into();
        assert_eq!(
            post_text("mm", &p),
            (TextStyle::Action, FormattedText::plain("waves"))
        );
        p.kind = String::new();
        assert_eq!(post_text("mm", &p).0, TextStyle::Normal);
    }

    #[test]
    fn derived_ids_name_the_post_and_the_version() {
        let mut p = post("p1");
        p.edit_at = 1234;
        assert_eq!(edit_id(&p), "p1:edit:1234");
        assert_eq!(delete_id(&p), "p1:delete");
        let added = reaction(10, 20, 0);
        assert_eq!(reaction_time(&added, false), 10);
        assert_eq!(
            reaction_id(&added, false, 10),
            "p1:reaction:u1:thumbsup:+:10"
        );
        let taken_back = reaction(10, 20, 30);
        assert_eq!(reaction_time(&taken_back, true), 30);
        assert_eq!(reaction_time(&reaction(10, 40, 30), true), 40);
        assert_eq!(
            reaction_id(&taken_back, true, 30),
            "p1:reaction:u1:thumbsup:-:30"
        );
    }

    #[test]
    fn system_posts_are_membership_changes() {
        let system = |kind: &str, props: Value| {
            let mut p = post("p1");
            p.kind = kind.into();
            p.props = props.as_object().cloned().unwrap_or_default();
            membership_change("mm", &p)
        };
        assert_eq!(
            system("system_join_channel", json!({"username": "bob"})),
            Some((Some("bob".into()), Membership::Joined))
        );
        assert_eq!(
            system("system_add_to_channel", json!({"addedUsername": "carol"})),
            Some((Some("carol".into()), Membership::Joined))
        );
        assert_eq!(
            system("system_leave_channel", json!({})),
            Some((None, Membership::Left { reason: None }))
        );
        assert_eq!(
            system(
                "system_remove_from_channel",
                json!({"removedUsername": "dan"})
            ),
            Some((Some("dan".into()), Membership::Left { reason: None }))
        );
        assert_eq!(
            system(
                "system_header_change",
                json!({"username": "bob", "new_header": "**Release** day"})
            ),
            Some((
                Some("bob".into()),
                Membership::Topic {
                    topic: "Release day".into()
                }
            ))
        );
        assert_eq!(system("system_purpose_change", json!({})), None);
        assert_eq!(system("", json!({})), None);
    }

    #[test]
    fn webhook_posts_show_their_override_name() {
        let mut p = post("p1");
        p.props = json!({"override_username": "ci"})
            .as_object()
            .cloned()
            .unwrap();
        assert_eq!(webhook_name(&p), None);
        p.props.insert("from_webhook".into(), json!("true"));
        assert_eq!(webhook_name(&p), Some("ci"));
    }

    #[test]
    fn posts_become_inbound_events() {
        let mut p = post("p1");
        p.create_at = 100;
        p.root_id = "root".into();
        p.message = "hello".into();
        let text = post_text("mm", &p);
        let inbound = text_inbound(origin(), &p, author(), "link".into(), text, vec![]);
        assert_eq!(inbound.remote_id.as_deref(), Some("p1"));
        assert_eq!(inbound.timestamp_ms, 100);
        assert_eq!(inbound.permalink.as_deref(), Some("link"));
        assert!(matches!(
            &inbound.body,
            EventBody::Text { thread_root: Some(root), style: TextStyle::Normal, .. } if root == "root"
        ));

        p.edit_at = 200;
        p.message = "hello again".into();
        let edit = edit_inbound(origin(), &p, author(), "link".into());
        assert_eq!(edit.remote_id.as_deref(), Some("p1:edit:200"));
        assert_eq!(edit.timestamp_ms, 200);
        assert_eq!(
            edit.body,
            EventBody::Edit {
                target: "p1".into(),
                style: TextStyle::Normal,
                text: FormattedText::plain("hello again"),
            }
        );

        p.update_at = 300;
        let delete = delete_inbound(origin(), &p, author());
        assert_eq!(delete.timestamp_ms, 300, "no delete_at: its last change");
        p.delete_at = 250;
        let delete = delete_inbound(origin(), &p, author());
        assert_eq!(delete.remote_id.as_deref(), Some("p1:delete"));
        assert_eq!(delete.timestamp_ms, 250);
        assert_eq!(delete.permalink, None);

        let joined = membership_inbound(
            origin(),
            &p,
            "bob".into(),
            Membership::Joined,
            "link".into(),
        );
        assert_eq!(joined.author.display_name, "bob");
        assert_eq!(joined.author.id, "u1");
        assert_eq!(joined.body, EventBody::Membership(Membership::Joined));
        assert_eq!(joined.timestamp_ms, 100);
    }

    #[test]
    fn reactions_become_inbound_events() {
        let added = reaction_inbound(origin(), &reaction(10, 10, 0), "alice".into(), false);
        assert_eq!(
            added.remote_id.as_deref(),
            Some("p1:reaction:u1:thumbsup:+:10")
        );
        assert_eq!(added.timestamp_ms, 10);
        assert_eq!(
            added.body,
            EventBody::Reaction {
                target: "p1".into(),
                key: emoji::key_of("thumbsup"),
                removed: false,
            }
        );
        let removed = reaction_inbound(origin(), &reaction(10, 20, 20), "alice".into(), true);
        assert_eq!(
            removed.remote_id.as_deref(),
            Some("p1:reaction:u1:thumbsup:-:20")
        );
    }

    #[test]
    fn file_details_become_attachments() {
        let info = json!({"name": "a.png", "mime_type": "image/png", "size": 42});
        assert_eq!(
            attachment_from_info(&info),
            Attachment {
                name: "a.png".into(),
                mime: "image/png".into(),
                size: Some(42),
                stored: None,
            }
        );
        let unknown = attachment_from_info(&Value::Null);
        assert_eq!(
            (unknown.name.as_str(), unknown.mime.as_str(), unknown.size),
            ("file", "application/octet-stream", None)
        );
        let empty_mime = attachment_from_info(&json!({"mime_type": ""}));
        assert_eq!(empty_mime.mime, "application/octet-stream");
    }

    #[test]
    fn catch_up_relays_each_change_when_it_happened() {
        let cursor = 100;
        let at = |id: &str, create: i64, edit: i64, delete: i64, update: i64| Post {
            create_at: create,
            edit_at: edit,
            delete_at: delete,
            update_at: update,
            ..post(id)
        };
        let new = at("new", 150, 0, 0, 150);
        let edited_new = at("edited-new", 120, 160, 0, 160);
        let edited_old = at("edited-old", 50, 140, 0, 140);
        let deleted = at("deleted", 50, 0, 130, 130);
        let bumped = at("bumped", 50, 0, 0, 170);
        let history = Post {
            original_id: "edited-old".into(),
            ..at("history", 50, 0, 0, 140)
        };
        let rows = vec![&new, &edited_new, &edited_old, &deleted, &bumped, &history];
        let changes: Vec<(i64, Change, &str)> = catch_up_changes(&rows, cursor)
            .into_iter()
            .map(|(at, change, post)| (at, change, post.id.as_str()))
            .collect();
        assert_eq!(
            changes,
            vec![
                (120, Change::New, "edited-new"),
                (130, Change::Deleted, "deleted"),
                (140, Change::Edited, "edited-old"),
                (150, Change::New, "new"),
            ]
        );
        assert_eq!(newest_update(&rows, cursor), 170);
        assert_eq!(newest_update(&[], cursor), cursor);
    }

    #[test]
    fn catch_up_orders_simultaneous_changes_by_id() {
        let b = Post {
            create_at: 150,
            ..post("b")
        };
        let a = Post {
            create_at: 150,
            ..post("a")
        };
        let changes = catch_up_changes(&[&b, &a], 100);
        let ids: Vec<&str> = changes.iter().map(|c| c.2.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn catch_up_looks_for_reactions_on_live_changed_posts() {
        let reacted = Post {
            has_reactions: true,
            update_at: 150,
            ..post("reacted")
        };
        let older = Post {
            has_reactions: true,
            update_at: 50,
            ..post("older")
        };
        let deleted = Post {
            has_reactions: true,
            update_at: 150,
            delete_at: 150,
            ..post("deleted")
        };
        let plain = Post {
            update_at: 150,
            ..post("plain")
        };
        assert_eq!(
            reacted_since(&[&reacted, &older, &deleted, &plain], 100),
            ["reacted"]
        );
        let kept = new_reactions(
            vec![
                reaction(180, 180, 0),
                reaction(50, 50, 0),
                reaction(120, 130, 130),
                reaction(150, 150, 0),
            ],
            100,
        );
        let times: Vec<i64> = kept.iter().map(|r| r.create_at).collect();
        assert_eq!(times, [150, 180]);
    }

    #[test]
    fn paging_back_finds_new_posts_and_stops_at_older_ones() {
        let list = |posts: Vec<Post>| PostList {
            order: posts
                .iter()
                .map(|p| p.id.clone())
                .chain(["missing".into()])
                .collect(),
            posts: posts.into_iter().map(|p| (p.id.clone(), p)).collect(),
        };
        let newer = Post {
            create_at: 150,
            ..post("newer")
        };
        let older = Post {
            create_at: 50,
            ..post("older")
        };
        let (found, reached_older) = created_after(&list(vec![newer.clone()]), 100);
        assert_eq!(found.len(), 1);
        assert!(!reached_older);
        let (found, reached_older) = created_after(&list(vec![newer.clone(), older]), 100);
        assert_eq!(
            found.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["newer"]
        );
        assert!(reached_older);

        let mut since = list(vec![newer.clone()]);
        let extra = Post {
            create_at: 160,
            ..post("extra")
        };
        merge_posts(&mut since, vec![newer, extra]);
        assert_eq!(since.order, ["newer", "missing", "extra"]);
        let ids: Vec<&str> = rows(&since).iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["newer", "extra"]);
    }

    #[test]
    fn envelopes_yield_their_embedded_parts() {
        let post_json = json!({"id": "p1", "channel_id": "c1", "message": "hi"}).to_string();
        let envelope: Envelope = serde_json::from_value(json!({
            "event": "posted",
            "seq": 3,
            "data": {"post": post_json, "sender_name": "@alice", "connection_id": "conn"},
            "broadcast": {"channel_id": "c1"},
        }))
        .unwrap();
        assert_eq!(envelope.post().map(|p| p.id), Some("p1".into()));
        assert!(envelope.reaction().is_none());
        assert_eq!(envelope.sender_name().as_deref(), Some("@alice"));
        assert_eq!(envelope.broadcast_channel_id(), "c1");
        assert_eq!(envelope.connection_id(), "conn");
        assert_eq!(envelope.seq, Some(3));

        let reply: Envelope = serde_json::from_str(r#"{"status": "OK", "seq_reply": 1}"#).unwrap();
        assert_eq!(reply.event, None);
        assert_eq!(reply.broadcast_channel_id(), "");
        assert_eq!(reply.connection_id(), "");
        // A post given as an object, not as a JSON string, is not read.
        let object: Envelope =
            serde_json::from_value(json!({"event": "posted", "data": {"post": {"id": "p1"}}}))
                .unwrap();
        assert!(object.post().is_none());
    }

    #[test]
    fn user_removed_counts_only_the_account_from_a_bridged_channel() {
        let bridged = |channel: &str| channel == "c1";
        let to_channel: Envelope = serde_json::from_value(json!({
            "event": "user_removed",
            "data": {"user_id": "me"},
            "broadcast": {"channel_id": "c1"},
        }))
        .unwrap();
        assert!(to_channel.removes("me", bridged));
        assert!(!to_channel.removes("someone-else", bridged));
        let to_user: Envelope = serde_json::from_value(json!({
            "event": "user_removed",
            "data": {"channel_id": "c1"},
            "broadcast": {"user_id": "me"},
        }))
        .unwrap();
        assert!(to_user.removes("me", bridged));
        let elsewhere: Envelope = serde_json::from_value(json!({
            "event": "user_removed",
            "data": {"channel_id": "c2"},
            "broadcast": {"user_id": "me"},
        }))
        .unwrap();
        assert!(!elsewhere.removes("me", bridged));
    }

    #[test]
    fn websocket_text_is_read_part_by_part() {
        assert_eq!(read_websocket_text("mm", "not json"), 0);
        assert_eq!(read_websocket_text("mm", r#"{"event": "hello"}"#), 1);
        let posted = json!({"event": "posted", "data": {"post": "{\"id\": \"p1\"}"}}).to_string();
        assert_eq!(read_websocket_text("mm", &posted), 2);
        let reacted =
            json!({"event": "reaction_added", "data": {"reaction": "{\"post_id\": \"p1\"}"}})
                .to_string();
        assert_eq!(read_websocket_text("mm", &reacted), 2);
    }

    #[test]
    fn texts_become_posts_with_the_sender_shown() {
        let settings = GatewaySettings {
            original_time_after: None,
            ..GatewaySettings::default()
        };
        let text = FormattedText::plain("hi @channel");
        let prefixed = post_content(
            &delivery(),
            TextStyle::Normal,
            &text,
            &settings,
            0,
            SenderShown::Prefix("<a> ".into()),
        );
        assert_eq!(prefixed.kind, "");
        assert!(prefixed.props.is_empty());
        assert_eq!(
            markdown_to_text("mm", &prefixed.message, false).to_plain_text(),
            "<a> hi @\u{2060}channel",
            "sender in front, mass ping neutralised"
        );

        let allowing = GatewaySettings {
            allow_mass_pings: true,
            ..settings
        };
        let overridden = post_content(
            &delivery(),
            TextStyle::Action,
            &FormattedText::plain("waves"),
            &allowing,
            0,
            SenderShown::Override {
                icon_url: Some("https://files/a.png".into()),
            },
        );
        assert_eq!(overridden.kind, "me");
        assert_eq!(overridden.message, "*waves*");
        assert_eq!(
            Value::Object(overridden.props),
            json!({
                "from_webhook": "true",
                "override_username": "a",
                "override_icon_url": "https://files/a.png",
            })
        );
        let no_icon = post_content(
            &delivery(),
            TextStyle::Notice,
            &FormattedText::plain("note"),
            &allowing,
            0,
            SenderShown::Override { icon_url: None },
        );
        assert_eq!(no_icon.kind, "");
        assert!(!no_icon.props.contains_key("override_icon_url"));
    }

    #[test]
    fn late_texts_say_when_they_were_said() {
        let settings = GatewaySettings {
            original_time_after: Some(std::time::Duration::from_mins(1)),
            ..GatewaySettings::default()
        };
        let late = post_content(
            &delivery(),
            TextStyle::Normal,
            &FormattedText::plain("hi"),
            &settings,
            3_600_000,
            SenderShown::Prefix(String::new()),
        );
        // The time in front, literal (its brackets escaped, so it is no link).
        assert_eq!(late.message, r"\[1970-01-01 00:00 UTC\] hi");
        let prompt = post_content(
            &delivery(),
            TextStyle::Normal,
            &FormattedText::plain("hi"),
            &settings,
            1000,
            SenderShown::Prefix(String::new()),
        );
        assert_eq!(prompt.message, "hi");
    }

    #[test]
    fn membership_changes_become_plain_posts() {
        let content = membership_content(&delivery(), &Membership::Joined);
        assert_eq!(content.kind, "");
        assert!(content.props.is_empty());
        assert_eq!(
            markdown_to_text("mm", &content.message, false).to_plain_text(),
            "[irc] a joined #a"
        );
    }

    #[test]
    fn threads_follow_the_thread_then_the_reply() {
        let target = |remote: Option<&str>| {
            Some(TargetRef {
                message_id: 1,
                remote_id: remote.map(str::to_owned),
            })
        };
        let mut d = delivery();
        assert_eq!(thread_anchor(&d), None);
        d.reply_to = target(Some("replied"));
        assert_eq!(thread_anchor(&d).as_deref(), Some("replied"));
        d.thread_root = target(Some("root"));
        assert_eq!(thread_anchor(&d).as_deref(), Some("root"));
        d.thread_root = target(None);
        assert_eq!(thread_anchor(&d).as_deref(), Some("replied"));

        assert_eq!(thread_root_of(post("p1")), "p1");
        let reply = Post {
            root_id: "root".into(),
            ..post("p2")
        };
        assert_eq!(thread_root_of(reply), "root");
    }

    #[test]
    fn request_bodies_carry_the_idempotency_key_and_fit() {
        let content = PostContent {
            kind: "me",
            message: "a".repeat(MAX_POST_CHARS + 1),
            props: serde_json::Map::new(),
        };
        let body = create_body("c1", &content, None, "d1", &["f1".into()]);
        assert_eq!(body["pending_post_id"], "d1");
        assert_eq!(body["root_id"], "");
        assert_eq!(body["type"], "me");
        assert_eq!(body["file_ids"], json!(["f1"]));
        assert_eq!(body["props"], json!({}));
        assert_eq!(
            body["message"].as_str().map(|m| m.chars().count()),
            Some(MAX_POST_CHARS)
        );
        let content = PostContent {
            kind: "",
            message: "hi".into(),
            props: serde_json::Map::new(),
        };
        let reply = create_body("c1", &content, Some("root".into()), "d2", &[]);
        assert_eq!(reply["root_id"], "root");
        assert_eq!(reply["message"], "hi");

        assert_eq!(patch_body("new text"), json!({"message": "new text"}));
        assert_eq!(
            reaction_body("me", "p1", "smile"),
            json!({"user_id": "me", "post_id": "p1", "emoji_name": "smile"})
        );
    }
}
