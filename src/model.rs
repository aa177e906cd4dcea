//! The normalised message model: what every connector produces from its wire types and consumes
//! when it delivers.
//!
//! Closed enums only: an event kind is a variant, never a string, and there is no map of "extras".
//! Nothing here knows a protocol; network-specific identifiers are opaque strings.

use serde::{Deserialize, Deserializer, Serialize};

use crate::richtext::FormattedText;

/// A channel on a network: the unit the router links and the outbox drains.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelRef {
    /// The configured network id.
    pub network: String,
    /// The channel's name or id on that network, as configured.
    pub channel: String,
}

impl ChannelRef {
    /// Build a channel reference.
    #[must_use]
    pub fn new(network: impl Into<String>, channel: impl Into<String>) -> Self {
        Self {
            network: network.into(),
            channel: channel.into(),
        }
    }
}

impl std::fmt::Display for ChannelRef {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.network, self.channel)
    }
}

/// Who said something, as its own network knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    /// A stable id on the origin network (IRC: the nick; others: the user id).
    pub id: String,
    /// The name to show.
    pub display_name: String,
}

/// How a text message was said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextStyle {
    /// An ordinary message.
    Normal,
    /// `/me` (IRC CTCP ACTION, Matrix `m.emote`, Mattermost `/me` post).
    Action,
    /// A notice (IRC NOTICE, Matrix `m.notice`).
    Notice,
}

/// A change of who is in a channel, or of the channel itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Membership {
    /// Someone joined.
    Joined,
    /// Someone left, with an optional reason.
    Left {
        /// The part or quit message.
        reason: Option<String>,
    },
    /// Someone changed their name.
    Renamed {
        /// The new name.
        new_name: String,
    },
    /// The topic changed.
    Topic {
        /// The new topic.
        topic: String,
    },
}

/// A file shared with a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The file's name, as its sender gave it.
    pub name: String,
    /// Its media type, e.g. `image/png` (`application/octet-stream` when not known).
    pub mime: String,
    /// Its size in bytes, when known.
    pub size: Option<u64>,
    /// Its SHA-256 in the bridge's file store ([`crate::files`]); `None` when it was not copied
    /// (larger than the limit, or the origin would not give it), in which case destinations
    /// announce it by name and size.
    pub stored: Option<String>,
}

impl Attachment {
    /// Is this an image (shown inline where the destination can)?
    #[must_use]
    pub fn is_image(&self) -> bool {
        self.mime.starts_with("image/")
    }

    /// "cat.png (4.0 KiB)": the name with its size when known.
    #[must_use]
    pub fn label(&self) -> String {
        match self.size {
            Some(size) => format!("{} ({})", self.name, human_size(size)),
            None => self.name.clone(),
        }
    }
}

/// A size for people: `512 B`, `4.0 KiB`, `1.5 MiB`.
#[must_use]
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// A text message.
    Text {
        /// Normal, action or notice.
        style: TextStyle,
        /// The formatted text.
        #[serde(deserialize_with = "formatted_or_plain")]
        text: FormattedText,
        /// The origin network's id of the message this one replies to, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
        /// Files shared with the message (the text is then their caption, possibly empty).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
        /// The origin network's id of the root of the thread this message is in, if any
        /// (Matrix `m.thread`, Mattermost `root_id`); independent of `reply_to`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_root: Option<String>,
    },
    /// A message was edited: its new text.
    Edit {
        /// The origin network's id of the edited message.
        target: String,
        /// Normal, action or notice.
        style: TextStyle,
        /// The new text.
        #[serde(deserialize_with = "formatted_or_plain")]
        text: FormattedText,
    },
    /// A message was deleted (redacted).
    Delete {
        /// The origin network's id of the deleted message.
        target: String,
    },
    /// A reaction was added to, or removed from, a message.
    Reaction {
        /// The origin network's id of the message reacted to.
        target: String,
        /// The reaction: an emoji, or a short text where the network allows it.
        key: String,
        /// True when the reaction was taken back.
        removed: bool,
    },
    /// A membership or channel change, relayed only where configured.
    Membership(Membership),
}

impl EventBody {
    /// A plain text message (no formatting, no reply).
    #[must_use]
    pub fn text(style: TextStyle, text: &str) -> Self {
        Self::formatted(style, FormattedText::plain(text))
    }

    /// A formatted text message (no reply).
    #[must_use]
    pub fn formatted(style: TextStyle, text: FormattedText) -> Self {
        EventBody::Text {
            style,
            text,
            reply_to: None,
            attachments: Vec::new(),
            thread_root: None,
        }
    }

    /// The origin network's id of the message this event acts on (edit, delete, reaction).
    #[must_use]
    pub fn target(&self) -> Option<&str> {
        match self {
            EventBody::Edit { target, .. }
            | EventBody::Delete { target }
            | EventBody::Reaction { target, .. } => Some(target),
            EventBody::Text { .. } | EventBody::Membership(_) => None,
        }
    }

    /// The origin network's id of the message this one replies to.
    #[must_use]
    pub fn reply_to(&self) -> Option<&str> {
        match self {
            EventBody::Text { reply_to, .. } => reply_to.as_deref(),
            _ => None,
        }
    }

    /// The origin network's id of the root of the thread this message is in.
    #[must_use]
    pub fn thread_root(&self) -> Option<&str> {
        match self {
            EventBody::Text { thread_root, .. } => thread_root.as_deref(),
            _ => None,
        }
    }

    /// A short name of the kind, as stored.
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match self {
            EventBody::Text { .. } => "text",
            EventBody::Edit { .. } => "edit",
            EventBody::Delete { .. } => "delete",
            EventBody::Reaction { .. } => "reaction",
            EventBody::Membership(_) => "membership",
        }
    }
}

/// Stores written before rich text kept the text as a plain string: read both forms.
fn formatted_or_plain<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<FormattedText, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Plain(String),
        Formatted(FormattedText),
    }
    Ok(match Stored::deserialize(deserializer)? {
        Stored::Plain(text) => FormattedText::plain(&text),
        Stored::Formatted(text) => text,
    })
}

/// Another message a delivery refers to (the message edited, deleted, reacted to or replied to),
/// as the destination knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRef {
    /// Its canonical id.
    pub message_id: i64,
    /// The destination's own id for it, when it was delivered there or said there; `None` when
    /// the destination never got it (the connector then decides what to show).
    pub remote_id: Option<String>,
}

/// The message a reply answers, as its origin said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replied {
    /// Its canonical id.
    pub message_id: i64,
    /// The network it was said on.
    pub network: String,
    /// That network's id for it, if it has one.
    pub remote_id: Option<String>,
    /// Who said it.
    pub author: Author,
    /// Its text (as first said; an edit is not applied).
    pub text: FormattedText,
}

/// One event a connector saw on a network, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Where it was said.
    pub origin: ChannelRef,
    /// The network's own id for it (IRC `msgid`, Matrix event id, Mattermost post id), if any.
    /// Without one the event cannot be deduplicated by id.
    pub remote_id: Option<String>,
    /// Who said it.
    pub author: Author,
    /// When it was said (server time where the network tells it), ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// What was said.
    pub body: EventBody,
    /// A link to it on its own platform, where it has one (for "read the full text" links).
    pub permalink: Option<String>,
}

/// One delivery the outbox hands to a connector: a message to send to one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Unique, stable across retries and restarts: the idempotency key (IRC label, Matrix txn
    /// id, Mattermost `pending_post_id`).
    pub id: String,
    /// The canonical message id.
    pub message_id: i64,
    /// Where to send it.
    pub destination: ChannelRef,
    /// The gateway that links origin and destination.
    pub gateway: String,
    /// Where it was said.
    pub origin: ChannelRef,
    /// The origin network's protocol name (`irc`, `matrix`, `mattermost`).
    pub origin_protocol: String,
    /// Who said it.
    pub author: Author,
    /// When it was said, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// What to send.
    pub body: EventBody,
    /// For an edit, delete or reaction: the message it acts on.
    pub target: Option<TargetRef>,
    /// For a reply: the message it replies to.
    pub reply_to: Option<TargetRef>,
    /// For a message in a thread: the thread's root message.
    pub thread_root: Option<TargetRef>,
    /// For an edit: the text it replaces (the original's, or the previous edit's), when known.
    pub previous_text: Option<FormattedText>,
    /// For a reply (or a message in a thread): the message it answers (the replied one, else
    /// the thread's root), for destinations that show a reply as text.
    pub replied: Option<Replied>,
    /// A link to the message on its origin platform, if it has one.
    pub permalink: Option<String>,
    /// How many times a send was tried before.
    pub attempts: u32,
}

#[cfg(test)]
impl Delivery {
    /// A plain text from `origin` to `destination`, said by "a" at time 0, for unit tests.
    pub(crate) fn sample(
        message_id: i64,
        origin: ChannelRef,
        destination: ChannelRef,
        text: &str,
    ) -> Self {
        Delivery {
            id: format!("d{message_id}"),
            message_id,
            destination,
            gateway: "g".into(),
            origin,
            origin_protocol: "test".into(),
            author: Author {
                id: "a".into(),
                display_name: "a".into(),
            },
            timestamp_ms: 0,
            body: EventBody::text(TextStyle::Normal, text),
            target: None,
            reply_to: None,
            thread_root: None,
            previous_text: None,
            replied: None,
            permalink: None,
            attempts: 0,
        }
    }
}

/// What a destination said when it accepted a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliveryAck {
    /// The destination's own id for what we sent, if it told us.
    pub remote_id: Option<String>,
}

/// What a network can represent; the router and outbox read these instead of naming networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // capabilities are independent yes/no facts
pub struct Capabilities {
    /// Messages can be edited after sending.
    pub edits: bool,
    /// Messages can be deleted.
    pub deletes: bool,
    /// Threads or replies exist.
    pub threads: bool,
    /// Reactions exist.
    pub reactions: bool,
    /// The largest message body the destination takes, in bytes (after which text is split).
    pub max_message_bytes: usize,
}

/// Milliseconds since the Unix epoch, now.
#[must_use]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
