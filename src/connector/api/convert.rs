//! matterbridge's API messages and Slack/Mattermost incoming webhooks ⇄ the model, pure and
//! unit-tested.
//!
//! - [`Posted`]: the body of `POST /api/message` as matterbridge's clients send it (`text`,
//!   `username`, `gateway`, `event`, `avatar`, `Extra.file[]` with base64 `Data`); unknown
//!   fields are ignored, as matterbridge does.
//! - [`ApiMessage`]: one message as `GET /api/messages` and `/api/stream` give it, with
//!   matterbridge's field names (`Extra` capitalised, files' `Data` in base64).
//! - [`WebhookPayload`] and [`webhook_text`]: the Slack/Mattermost incoming-webhook JSON
//!   (`text` in Markdown with Slack's `<url|label>` links, `attachments` with `fallback`,
//!   `pretext`, `title`, `title_link`, `text` and `fields`) as formatted text.
//!
//! Owns: field names and their meaning. Must not: do I/O, know the store or a connection.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::richtext::FormattedText;
use crate::richtext::markdown;
use crate::richtext::model::{Block, Inline, is_safe_url};

/// matterbridge's `event` of an ordinary message.
pub const EVENT_NONE: &str = "";
/// matterbridge's `event` of `/me`.
pub const EVENT_USER_ACTION: &str = "user_action";
/// matterbridge's `event` of a join, leave or topic line.
pub const EVENT_JOIN_LEAVE: &str = "join_leave";
/// matterbridge's `event` of the first line of `/api/stream`.
pub const EVENT_API_CONNECTED: &str = "api_connected";

/// The body of `POST /api/message`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Posted {
    /// The text (Markdown).
    pub text: String,
    /// Who says it.
    pub username: String,
    /// Their id on the client's side, if it has one.
    pub userid: String,
    /// The picture of the sender (not carried: the model has no pictures of people).
    pub avatar: String,
    /// The channel of the api network it is said in (the name of a gateway, as configured).
    pub gateway: String,
    /// `""` or `user_action`.
    pub event: String,
    /// An id the client gives it; a second post with the same id is the same message.
    pub id: String,
    /// `Extra.file`: files sent with it.
    #[serde(rename = "Extra")]
    pub extra: Option<PostedExtra>,
}

/// `Extra` of a posted message.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PostedExtra {
    /// The files (Go clients send `null` for none).
    pub file: Option<Vec<PostedFile>>,
}

/// One file of `Extra.file`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PostedFile {
    /// Its name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Its content, base64 (standard alphabet, padded), as Go encodes a `[]byte`.
    #[serde(rename = "Data")]
    pub data: Option<String>,
    /// A caption.
    #[serde(rename = "Comment")]
    pub comment: String,
}

/// A posted file, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedFile {
    /// Its name.
    pub name: String,
    /// Its media type, guessed from the name.
    pub mime: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// What a posted message says, checked: the style, the text and the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedContent {
    /// Normal, or an action (`user_action`).
    pub style: crate::model::TextStyle,
    /// The text, parsed from Markdown.
    pub text: FormattedText,
    /// The files, decoded.
    pub files: Vec<DecodedFile>,
}

/// Why a posted message is refused (the client gets `400` with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The body is not the JSON of a message.
    #[error("the body is not a message: {0}")]
    NotJson(String),
    /// `gateway` is missing.
    #[error("`gateway` is missing: give the gateway to say this in, one of: {0}")]
    NoGateway(String),
    /// `gateway` names no channel of this network.
    #[error("`gateway` is `{given}`, which this API does not serve; give one of: {known}")]
    UnknownGateway {
        /// What the client gave.
        given: String,
        /// What it could give.
        known: String,
    },
    /// An `event` other than `""` and `user_action`.
    #[error("`event` is `{0}`; this API takes \"\" (a message) or \"user_action\" (/me)")]
    UnknownEvent(String),
    /// No text and no file.
    #[error("the message is empty: give `text` or a file in `Extra.file`")]
    Empty,
    /// A file whose `Data` is not base64.
    #[error("`Extra.file[{index}].Data` is not base64: {reason}")]
    BadFileData {
        /// Its place in the list.
        index: usize,
        /// What the decoder said.
        reason: String,
    },
    /// A file without a name or data.
    #[error("`Extra.file[{0}]` needs `Name` and `Data`")]
    IncompleteFile(usize),
}

/// The content of a posted message: its style, its text parsed from Markdown (mentions as of
/// `network`), its files decoded; a file's `Comment` is the text when the text is empty.
pub fn posted_content(posted: &Posted, network: &str) -> Result<PostedContent, Refused> {
    let style = match posted.event.as_str() {
        EVENT_NONE => crate::model::TextStyle::Normal,
        EVENT_USER_ACTION => crate::model::TextStyle::Action,
        other => return Err(Refused::UnknownEvent(other.to_owned())),
    };
    let mut files = Vec::new();
    let mut comment = None;
    let posted_files = posted
        .extra
        .as_ref()
        .and_then(|extra| extra.file.as_deref())
        .unwrap_or_default();
    for (index, file) in posted_files.iter().enumerate() {
        let Some(data) = file.data.as_deref().filter(|_| !file.name.is_empty()) else {
            return Err(Refused::IncompleteFile(index));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|error| Refused::BadFileData {
                index,
                reason: error.to_string(),
            })?;
        if comment.is_none() && !file.comment.trim().is_empty() {
            comment = Some(file.comment.clone());
        }
        files.push(DecodedFile {
            mime: mime_of(&file.name).to_owned(),
            name: file.name.clone(),
            bytes,
        });
    }
    let source = if posted.text.trim().is_empty() {
        comment.unwrap_or_default()
    } else {
        posted.text.clone()
    };
    let text = markdown::parse_for_network(&source, network);
    if text.is_empty() && files.is_empty() {
        return Err(Refused::Empty);
    }
    Ok(PostedContent { style, text, files })
}

/// A body of `POST /api/message` read and checked: the message as posted and what it says.
pub fn read_posted(body: &[u8], network: &str) -> Result<(Posted, PostedContent), Refused> {
    let posted: Posted =
        serde_json::from_slice(body).map_err(|error| Refused::NotJson(error.to_string()))?;
    let content = posted_content(&posted, network)?;
    Ok((posted, content))
}

/// A webhook's JSON body read: the payload and its formatted text (empty when it says
/// nothing).
pub fn read_webhook(body: &[u8], network: &str) -> Result<(WebhookPayload, FormattedText), String> {
    let payload: WebhookPayload = serde_json::from_slice(body)
        .map_err(|error| format!("the body is not webhook JSON: {error}"))?;
    let text = webhook_text(&payload, network);
    Ok((payload, text))
}

/// The media type of a file, from its name's extension (`application/octet-stream` when not
/// known).
#[must_use]
pub fn mime_of(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "txt" | "log" => "text/plain",
        "pdf" => "application/pdf",
        "json" => "application/json",
        _ => "application/octet-stream",
    }
}

/// One message as `GET /api/messages` and `/api/stream` give it (matterbridge's
/// `config.Message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiMessage {
    /// The text (Markdown).
    pub text: String,
    /// The channel of the api network (the name clients use in `gateway`).
    pub channel: String,
    /// The sender, through the network's `remote_nick_format`.
    pub username: String,
    /// The sender's id on their own network.
    pub userid: String,
    /// Always empty: the model carries no pictures of people.
    pub avatar: String,
    /// The origin's account, `<protocol>.<network>` as matterbridge names accounts.
    pub account: String,
    /// `""`, `user_action`, `join_leave` or `api_connected`.
    pub event: String,
    /// The origin's protocol (`irc`, `matrix`, `mattermost`, `api`).
    pub protocol: String,
    /// The gateway, as clients name it in `gateway` (the api network's channel).
    pub gateway: String,
    /// Always empty: replies are shown as text.
    pub parent_id: String,
    /// When it was said, RFC 3339 in UTC.
    pub timestamp: String,
    /// Its id here (the delivery's id: unique and stable).
    pub id: String,
    /// `file`: its files, `Data` in base64.
    #[serde(rename = "Extra")]
    pub extra: MessageExtra,
}

/// `Extra` of a message given to clients.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageExtra {
    /// The files; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file: Vec<MessageFile>,
}

/// One file of a message given to clients (matterbridge's `config.FileInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFile {
    /// Its name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Its content in base64.
    #[serde(rename = "Data")]
    pub data: String,
    /// A caption (empty: the caption is the message's text).
    #[serde(rename = "Comment")]
    pub comment: String,
    /// Its size in bytes.
    #[serde(rename = "Size")]
    pub size: u64,
    /// Its SHA-256, hex.
    #[serde(rename = "SHA")]
    pub sha: String,
}

impl MessageFile {
    /// A file of `name` with `bytes`, stored under `sha`.
    #[must_use]
    pub fn new(name: &str, bytes: &[u8], sha: &str) -> Self {
        Self {
            name: name.to_owned(),
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
            comment: String::new(),
            size: bytes.len() as u64,
            sha: sha.to_owned(),
        }
    }
}

impl ApiMessage {
    /// The first line of `/api/stream`: `event = "api_connected"` at `now_ms`.
    #[must_use]
    pub fn connected(now_ms: i64) -> Self {
        Self {
            text: String::new(),
            channel: String::new(),
            username: String::new(),
            userid: String::new(),
            avatar: String::new(),
            account: String::new(),
            event: EVENT_API_CONNECTED.to_owned(),
            protocol: String::new(),
            gateway: String::new(),
            parent_id: String::new(),
            timestamp: rfc3339(now_ms),
            id: String::new(),
            extra: MessageExtra::default(),
        }
    }
}

/// `ms` since the Unix epoch as RFC 3339 in UTC, to the millisecond:
/// `2026-11-22T06:40:59.999Z`.
#[must_use]
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms since 1970"),
        |time| time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    )
}

/// The body of a Slack- or Mattermost-style incoming webhook.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WebhookPayload {
    /// The text, Markdown (Slack's `<url|label>` links too).
    pub text: String,
    /// Who it is shown as (the hook's name when empty).
    pub username: String,
    /// A picture for the sender (not carried).
    pub icon_url: String,
    /// Slack's secondary attachments.
    pub attachments: Vec<WebhookAttachment>,
}

/// One attachment of a webhook.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WebhookAttachment {
    /// Plain text for clients that show no attachments.
    pub fallback: String,
    /// A line above the attachment (Markdown).
    pub pretext: String,
    /// Its title (plain text).
    pub title: String,
    /// Where its title links to.
    pub title_link: String,
    /// Its text (Markdown).
    pub text: String,
    /// Short name/value pairs.
    pub fields: Vec<WebhookField>,
}

/// One field of an attachment.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct WebhookField {
    /// Its name.
    pub title: String,
    /// Its value (plain text, Markdown allowed).
    pub value: serde_json::Value,
}

/// A webhook's text and attachments as one formatted text: the text, then per attachment its
/// pretext, its title in bold (a link when it has one), its text and one line per field
/// (`**name**: value`), or its `fallback` when it has none of these. Markdown is read as
/// Mattermost reads it; mentions are of `network`.
#[must_use]
pub fn webhook_text(payload: &WebhookPayload, network: &str) -> FormattedText {
    let mut blocks: Vec<Block> = Vec::new();
    let markdown_blocks = |source: &str, blocks: &mut Vec<Block>| {
        if !source.trim().is_empty() {
            let text = markdown::parse_for_network(&slack_links_to_markdown(source), network);
            blocks.extend(text.blocks);
        }
    };
    markdown_blocks(&payload.text, &mut blocks);
    for attachment in &payload.attachments {
        let before = blocks.len();
        markdown_blocks(&attachment.pretext, &mut blocks);
        if !attachment.title.trim().is_empty() {
            let title = Inline::Text(attachment.title.trim().to_owned());
            let title = if is_safe_url(&attachment.title_link) {
                Inline::Link {
                    children: vec![title],
                    url: attachment.title_link.clone(),
                }
            } else {
                title
            };
            blocks.push(Block::Paragraph(vec![Inline::Bold(vec![title])]));
        }
        markdown_blocks(&attachment.text, &mut blocks);
        for field in &attachment.fields {
            let value = match &field.value {
                serde_json::Value::String(value) => value.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            if field.title.trim().is_empty() && value.trim().is_empty() {
                continue;
            }
            let mut line = Vec::new();
            if !field.title.trim().is_empty() {
                line.push(Inline::Bold(vec![Inline::Text(
                    field.title.trim().to_owned(),
                )]));
                line.push(Inline::Text(": ".to_owned()));
            }
            line.push(Inline::Text(value.trim().to_owned()));
            blocks.push(Block::Paragraph(line));
        }
        if blocks.len() == before && !attachment.fallback.trim().is_empty() {
            blocks.push(Block::Paragraph(vec![Inline::Text(
                attachment.fallback.trim().to_owned(),
            )]));
        }
    }
    FormattedText::new(blocks).normalized()
}

/// Slack's link syntax as Markdown: `<https://x|label>` → `[label](https://x)`,
/// `<https://x>` → `https://x`, `<!here>` / `<!channel>` → `@here` / `@channel` (then
/// neutralised like any mass ping), `<@U123>` → `@U123`. Anything else in angle brackets is
/// left as it is.
#[must_use]
pub fn slack_links_to_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let candidate = &rest[start + 1..];
        let Some(end) = candidate
            .find('>')
            .filter(|end| !candidate[..*end].contains('\n'))
        else {
            out.push('<');
            rest = candidate;
            continue;
        };
        let inner = &candidate[..end];
        let (target, label) = inner.split_once('|').unwrap_or((inner, ""));
        if let Some(special) = target.strip_prefix('!') {
            let word = special.split('^').next().unwrap_or(special);
            out.push('@');
            out.push_str(if label.is_empty() { word } else { label });
        } else if let Some(user) = target.strip_prefix('@') {
            out.push('@');
            out.push_str(if label.is_empty() { user } else { label });
        } else if target.contains("://") || target.starts_with("mailto:") {
            if label.is_empty() {
                out.push_str(target);
            } else {
                out.push('[');
                out.push_str(&label.replace(['[', ']'], ""));
                out.push_str("](");
                out.push_str(&target.replace(')', "%29"));
                out.push(')');
            }
        } else {
            out.push('<');
            out.push_str(inner);
            out.push('>');
        }
        rest = &candidate[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TextStyle;

    #[test]
    fn a_post_as_matterbridge_clients_send_it_is_read() {
        let body = r#"{"text":"deploy **done**","username":"ci","gateway":"ops","event":"",
            "avatar":"","channel":"api","protocol":"api","account":"api.x",
            "Extra":{"file":[{"Name":"log.txt","Data":"aGVsbG8=","Comment":"the log"}]}}"#;
        let posted: Posted = serde_json::from_str(body).unwrap();
        assert_eq!(posted.gateway, "ops");
        let content = posted_content(&posted, "api").unwrap();
        assert_eq!(content.style, TextStyle::Normal);
        assert_eq!(content.text.to_plain_text(), "deploy done");
        assert_eq!(content.files[0].bytes, b"hello");
        assert_eq!(content.files[0].mime, "text/plain");
        let action: Posted =
            serde_json::from_str(r#"{"text":"waves","event":"user_action"}"#).unwrap();
        assert_eq!(
            posted_content(&action, "api").unwrap().style,
            TextStyle::Action
        );
    }

    #[test]
    fn bad_posts_are_refused_with_a_reason() {
        let read = |body: &str| posted_content(&serde_json::from_str(body).unwrap(), "api");
        assert_eq!(read(r#"{"text":"  "}"#), Err(Refused::Empty));
        assert_eq!(
            read(r#"{"text":"x","event":"msg_delete"}"#),
            Err(Refused::UnknownEvent("msg_delete".into()))
        );
        assert!(matches!(
            read(r#"{"text":"x","Extra":{"file":[{"Name":"a","Data":"!!"}]}}"#),
            Err(Refused::BadFileData { index: 0, .. })
        ));
        // Go's encoding of an empty `Extra`.
        assert!(read(r#"{"text":"x","Extra":{"file":null}}"#).is_ok());
        assert_eq!(
            read(r#"{"text":"x","Extra":{"file":[{"Data":"aGk="}]}}"#),
            Err(Refused::IncompleteFile(0))
        );
        // A caption stands for an empty text.
        let content =
            read(r#"{"Extra":{"file":[{"Name":"a.png","Data":"aGk=","Comment":"look"}]}}"#)
                .unwrap();
        assert_eq!(content.text.to_plain_text(), "look");
        assert_eq!(content.files[0].mime, "image/png");
    }

    #[test]
    fn messages_have_matterbridge_field_names() {
        let mut message = ApiMessage::connected(0);
        message
            .extra
            .file
            .push(MessageFile::new("a.txt", b"hi", "ab"));
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["event"], "api_connected");
        assert_eq!(json["timestamp"], "1970-01-01T00:00:00.000Z");
        assert_eq!(json["Extra"]["file"][0]["Name"], "a.txt");
        assert_eq!(json["Extra"]["file"][0]["Data"], "aGk=");
        let empty = serde_json::to_value(ApiMessage::connected(0)).unwrap();
        assert_eq!(empty["Extra"], serde_json::json!({}));
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(1_795_329_659_999), "2026-11-22T06:40:59.999Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn slack_links_become_markdown() {
        assert_eq!(
            slack_links_to_markdown("see <https://x.org/a|the alert> and <https://y.org>"),
            "see [the alert](https://x.org/a) and https://y.org"
        );
        assert_eq!(slack_links_to_markdown("<!channel> hi"), "@channel hi");
        assert_eq!(slack_links_to_markdown("a < b > c"), "a < b > c");
        assert_eq!(slack_links_to_markdown("1 < 2\n> q"), "1 < 2\n> q");
    }

    #[test]
    fn a_webhook_with_attachments_reads_as_paragraphs() {
        let payload: WebhookPayload = serde_json::from_str(
            r#"{"text":"**Firing**: <https://g.example/d/1|CPU high>","username":"grafana",
                "attachments":[{"fallback":"CPU high on db1","pretext":"Alert",
                  "title":"db1","title_link":"https://g.example/d/1","text":"load _12_",
                  "fields":[{"title":"host","value":"db1","short":true},{"title":"load","value":12}]},
                  {"fallback":"only a fallback"}]}"#,
        )
        .unwrap();
        let text = webhook_text(&payload, "api");
        assert_eq!(
            text.to_plain_text(),
            "Firing: CPU high\n\nAlert\n\ndb1\n\nload 12\n\nhost: db1\n\nload: 12\n\nonly a fallback"
        );
        assert!(matches!(
            &text.blocks[0],
            Block::Paragraph(inlines) if matches!(inlines[0], Inline::Bold(_))
        ));
    }
}
