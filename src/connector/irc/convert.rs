//! Conversion between IRC lines and the model, both ways, without I/O.
//!
//! Inbound, [`text_message`] reads a PRIVMSG or NOTICE (CTCP ACTION included) into a style and
//! [`FormattedText`], and [`inbound`] makes the event with the server's `msgid` and `server-time`;
//! outbound, [`render_delivery`] turns a delivery into `(command, text)` lines. **Invariants:** no
//! rendered line holds CR, LF or NUL or exceeds 512 bytes with our label, only an ACTION is read
//! of a CTCP, and nothing here touches the connection (the one clock read is a file link's expiry).

use irc::client::prelude::Message;
use irc::proto::message::Tag;

use crate::connector::{GatewaySettings, render_sender};
use crate::model::{Author, ChannelRef, Delivery, EventBody, Inbound, TextStyle};
use crate::richtext;
use crate::richtext::FormattedText;
use crate::richtext::edits::{self, EditPolicy};
use crate::richtext::irc::{IrcRenderOptions, render as irc_render};
use crate::richtext::long_text::{self, LongTextPolicy};
use crate::richtext::mention::no_ping_nick;

use super::lines;
use super::wire::parse_server_time;

/// What a PRIVMSG or NOTICE (`command`) to a channel says: its style and text, or `None` when
/// it is not conversation (a CTCP other than ACTION, such as VERSION or PING) or shows nothing
/// (empty, or only formatting and spaces).
#[must_use]
pub fn text_message(command: &str, text: &str) -> Option<(TextStyle, FormattedText)> {
    let (style, body) = if let Some(ctcp) = text.strip_prefix('\x01') {
        let ctcp = ctcp.strip_suffix('\x01').unwrap_or(ctcp);
        match ctcp.split_once(' ') {
            Some((verb, rest)) if verb.eq_ignore_ascii_case("ACTION") => (TextStyle::Action, rest),
            None if ctcp.eq_ignore_ascii_case("ACTION") => (TextStyle::Action, ""),
            _ => return None, // VERSION, PING, ... are not conversation
        }
    } else if command == "NOTICE" {
        (TextStyle::Notice, text)
    } else {
        (TextStyle::Normal, text)
    };
    let text = richtext::irc::parse(body);
    if text.to_plain_text().trim().is_empty() {
        return None;
    }
    Some((style, text))
}

/// A channel's topic as plain text: IRC formatting removed.
#[must_use]
pub fn topic_text(topic: &str) -> String {
    richtext::irc::strip_formatting(topic)
}

/// The event `nick` caused in `channel` of `network` by `message`: its id is the server's
/// `msgid` tag and its time the `time` tag (`server-time`), else `received_ms`.
#[must_use]
pub fn inbound(
    network: &str,
    channel: &str,
    nick: &str,
    message: &Message,
    body: EventBody,
    received_ms: i64,
) -> Inbound {
    Inbound {
        origin: ChannelRef::new(network, channel),
        remote_id: tag(message, "msgid"),
        author: Author {
            id: nick.to_owned(),
            display_name: nick.to_owned(),
        },
        timestamp_ms: tag(message, "time")
            .and_then(|t| parse_server_time(&t))
            .unwrap_or(received_ms),
        body,
        permalink: None,
    }
}

/// The value of the tag `name` on `message` (`msgid`, `time`, `label`), if it has one.
pub(super) fn tag(message: &Message, name: &str) -> Option<String> {
    message
        .tags
        .as_ref()?
        .iter()
        .find(|Tag(key, _)| key == name)
        .and_then(|Tag(_, value)| value.clone())
}

/// IRC has no files: a message's files become lines after its text, with a link to the file
/// when the media endpoint is configured, else to the message on its own platform.
pub(super) fn files_as_lines(delivery: &Delivery, files: &crate::files::Files) -> Delivery {
    let mut delivery = delivery.clone();
    let permalink = delivery.permalink.clone();
    if let EventBody::Text {
        text, attachments, ..
    } = &mut delivery.body
        && !attachments.is_empty()
    {
        *text = crate::connector::with_file_lines(text, attachments.iter(), |attachment| {
            attachment
                .stored
                .as_deref()
                .and_then(|hash| files.link(hash, &attachment.name))
                .or_else(|| permalink.clone())
        });
        attachments.clear();
    }
    delivery
}

/// The label of line `index` of a delivery: `<delivery id>.<index>`.
pub(super) fn label(delivery_id: &str, index: usize) -> String {
    format!("{delivery_id}.{index}")
}

/// The IRC lines for one delivery: `(command, text)` pairs, each safe and within the line limit,
/// per the gateway's long-text and edit policies.
#[must_use]
pub fn render_delivery(
    delivery: &Delivery,
    nick_format: &str,
    own_nick: &str,
    labelled: bool,
    settings: &GatewaySettings,
) -> Vec<(&'static str, String)> {
    let long_text = &settings.long_text;
    let sender = lines::logical_lines(&render_sender(nick_format, delivery, no_ping_nick)).concat();
    let render = |text: &FormattedText| irc_render(text, &IrcRenderOptions::default());
    let (command, ctcp, text_lines) = match &delivery.body {
        EventBody::Text { style, text, .. } => match style {
            TextStyle::Normal => ("PRIVMSG", false, render(text)),
            TextStyle::Action => ("PRIVMSG", true, render(text)),
            TextStyle::Notice => ("NOTICE", false, render(text)),
        },
        // IRC cannot edit: per the gateway's policy, the corrected text is said again, marked
        // as a correction, or a short diff of it, or nothing.
        EventBody::Edit { style, text, .. } => {
            let diff = match settings.edit_policy {
                EditPolicy::Off => return Vec::new(),
                EditPolicy::Corrected => None,
                EditPolicy::Diff => delivery.previous_text.as_ref().and_then(|previous| {
                    edits::short_diff(&previous.to_plain_text(), &text.to_plain_text())
                }),
            };
            let mut corrected = match diff {
                Some(diff) => vec![lines::logical_lines(&diff).concat()],
                None => render(text),
            };
            if let Some(first) = corrected.first_mut() {
                first.insert_str(0, "* ");
            }
            match style {
                TextStyle::Notice => ("NOTICE", false, corrected),
                TextStyle::Action => ("PRIVMSG", true, corrected),
                TextStyle::Normal => ("PRIVMSG", false, corrected),
            }
        }
        // IRC cannot delete or react; saying so in the channel would only add noise.
        EventBody::Delete { .. } | EventBody::Reaction { .. } => return Vec::new(),
        EventBody::Membership(change) => {
            let text = crate::connector::membership_text(delivery, change);
            return render_text_lines(
                &LineFrame {
                    command: "NOTICE",
                    ctcp: false,
                    sender: &format!("[{}] ", delivery.origin.network),
                    target: &delivery.destination.channel,
                    own_nick,
                    labelled,
                    delivery_id: &delivery.id,
                },
                &[text],
                long_text,
                None,
            );
        }
    };
    render_text_lines(
        &LineFrame {
            command,
            ctcp,
            sender: &sender,
            target: &delivery.destination.channel,
            own_nick,
            labelled,
            delivery_id: &delivery.id,
        },
        &text_lines,
        long_text,
        delivery.permalink.as_deref(),
    )
}

/// How the lines of one delivery are framed on the wire.
struct LineFrame<'a> {
    command: &'static str,
    ctcp: bool,
    sender: &'a str,
    target: &'a str,
    own_nick: &'a str,
    labelled: bool,
    delivery_id: &'a str,
}

/// Split rendered lines to the byte budget, apply the gateway's long-text policy, and frame
/// each piece with the sender and, for actions, CTCP.
fn render_text_lines(
    frame: &LineFrame<'_>,
    text_lines: &[String],
    long_text: &LongTextPolicy,
    permalink: Option<&str>,
) -> Vec<(&'static str, String)> {
    let LineFrame {
        command,
        ctcp,
        sender,
        target,
        own_nick,
        labelled,
        delivery_id,
    } = *frame;
    // "@label=<id>.<n> " is our only tag.
    let tag_bytes = if labelled {
        1 + 6 + delivery_id.len() + 1 + 4 + 1
    } else {
        0
    };
    let budget = lines::text_budget(
        own_nick,
        command,
        target,
        tag_bytes,
        if ctcp { 9 } else { 0 },
    );
    // A very long display name must not push the text out of the line: keep at most half.
    let mut sender_cut = sender.len().min(budget / 2);
    while !sender.is_char_boundary(sender_cut) {
        sender_cut -= 1;
    }
    let sender = &sender[..sender_cut];
    let budget = budget - sender.len();
    // The renderer's lines never hold CR, LF or NUL; `logical_lines` makes sure of it again,
    // because a second IRC command smuggled in a line is the one thing that must never happen.
    let pieces: Vec<String> = text_lines
        .iter()
        .flat_map(|line| lines::logical_lines(line))
        .flat_map(|line| lines::split_to_budget(&line, budget))
        .collect();
    // The gateway's policy: all pieces, or the first ones and a pointer to the full text (which
    // may itself need splitting when the link is long).
    let pieces: Vec<String> = long_text::apply(pieces, long_text, permalink)
        .into_iter()
        .flat_map(|piece| lines::split_to_budget(&piece, budget))
        .collect();
    let mut out = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let body = format!("{sender}{piece}");
        let body = if ctcp {
            format!("\x01ACTION {body}\x01")
        } else {
            body
        };
        out.push((command, body));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Membership;
    use crate::richtext::long_text::LongTextMode;
    use proptest::prelude::*;

    fn delivery(body: EventBody, author: &str, permalink: Option<&str>) -> Delivery {
        Delivery {
            id: "0123456789abcdef0123456789abcdef".into(),
            message_id: 1,
            destination: ChannelRef::new("irc", "#dest"),
            gateway: "g".into(),
            origin: ChannelRef::new("mx", "!room"),
            origin_protocol: "matrix".into(),
            author: Author {
                id: author.into(),
                display_name: author.into(),
            },
            timestamp_ms: 0,
            body,
            target: None,
            reply_to: None,
            thread_root: None,
            previous_text: None,
            replied: None,
            permalink: permalink.map(str::to_owned),
            attempts: 0,
        }
    }

    fn texts(lines: &[(&str, String)]) -> Vec<String> {
        lines.iter().map(|(_, text)| text.clone()).collect()
    }

    #[test]
    fn long_messages_are_split_or_truncated_with_a_link_per_gateway_policy() {
        let text = (1..=8)
            .map(|n| format!("line {n}"))
            .collect::<Vec<_>>()
            .join("\n");
        let message = delivery(
            EventBody::text(TextStyle::Normal, &text),
            "alice",
            Some("https://matrix.to/#/!room/$event"),
        );
        let split_policy = GatewaySettings {
            long_text: LongTextPolicy {
                max_lines: 3,
                mode: LongTextMode::Split,
            },
            ..GatewaySettings::default()
        };
        let split = render_delivery(&message, "<{NICK}> ", "bridge", true, &split_policy);
        assert_eq!(split.len(), 8);
        assert_eq!(split[7].1, "<alice> line 8");
        // The default: three lines and a link to the whole text.
        let truncated = render_delivery(
            &message,
            "<{NICK}> ",
            "bridge",
            true,
            &GatewaySettings::default(),
        );
        assert_eq!(
            texts(&truncated),
            vec![
                "<alice> line 1",
                "<alice> line 2",
                "<alice> line 3",
                "<alice> … (5 more lines: https://matrix.to/#/!room/$event)",
            ]
        );
        // Code blocks keep their lines: each is a line of its own, counted like any other.
        let code = FormattedText::new(vec![crate::richtext::model::Block::CodeBlock {
            language: None,
            code: "fn main() {\n    println!(\"hi\");\n}\n// four\n// five".into(),
        }]);
        let mut body = EventBody::text(TextStyle::Normal, "");
        if let EventBody::Text { text, .. } = &mut body {
            *text = code;
        }
        let paste = delivery(body, "alice", Some("https://x.example/full"));
        let lines = texts(&render_delivery(
            &paste,
            "<{NICK}> ",
            "bridge",
            true,
            &GatewaySettings::default(),
        ));
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[1], "<alice> \u{11}    println!(\"hi\");\u{11}");
        assert!(
            lines[3].ends_with("… (2 more lines: https://x.example/full)"),
            "{lines:?}"
        );
    }

    #[test]
    fn edits_are_marked_and_deletes_and_reactions_send_nothing() {
        let edit = delivery(
            EventBody::Edit {
                target: "$e".into(),
                style: TextStyle::Normal,
                text: FormattedText::plain("corrected"),
            },
            "alice",
            None,
        );
        let policy = GatewaySettings::default();
        assert_eq!(
            render_delivery(&edit, "<{NICK}> ", "bridge", false, &policy),
            vec![("PRIVMSG", "<alice> * corrected".to_owned())]
        );
        let delete = delivery(
            EventBody::Delete {
                target: "$e".into(),
            },
            "alice",
            None,
        );
        assert!(render_delivery(&delete, "<{NICK}> ", "bridge", false, &policy).is_empty());
    }

    #[test]
    fn the_edit_policy_decides_what_irc_sees_of_an_edit() {
        let mut edit = delivery(
            EventBody::Edit {
                target: "$e".into(),
                style: TextStyle::Normal,
                text: FormattedText::plain("this is the best message we had"),
            },
            "alice",
            None,
        );
        edit.previous_text = Some(FormattedText::plain("this is teh best message we had"));
        let with = |edit_policy| GatewaySettings {
            edit_policy,
            ..GatewaySettings::default()
        };
        let seen = |edit: &Delivery, policy| {
            texts(&render_delivery(
                edit,
                "<{NICK}> ",
                "bridge",
                false,
                &with(policy),
            ))
        };
        assert_eq!(
            seen(&edit, EditPolicy::Corrected),
            vec!["<alice> * this is the best message we had"]
        );
        assert_eq!(seen(&edit, EditPolicy::Diff), vec!["<alice> * s/teh/the/"]);
        assert!(seen(&edit, EditPolicy::Off).is_empty());
        // Without the text it replaces, a diff cannot be made: the corrected text.
        edit.previous_text = None;
        assert_eq!(
            seen(&edit, EditPolicy::Diff),
            vec!["<alice> * this is the best message we had"]
        );
    }

    fn message(line: &str) -> Message {
        line.parse().expect("a valid IRC line")
    }

    fn said(command: &str, text: &str) -> Option<(TextStyle, String)> {
        text_message(command, text).map(|(style, text)| (style, text.to_plain_text()))
    }

    #[test]
    fn privmsg_notice_and_action_become_a_style_and_text() {
        assert_eq!(
            said("PRIVMSG", "hello"),
            Some((TextStyle::Normal, "hello".into()))
        );
        assert_eq!(
            said("NOTICE", "the build is green"),
            Some((TextStyle::Notice, "the build is green".into()))
        );
        assert_eq!(
            said("PRIVMSG", "\x01ACTION waves\x01"),
            Some((TextStyle::Action, "waves".into()))
        );
        // A client that leaves off the closing \x01, and a verb in lower case.
        assert_eq!(
            said("PRIVMSG", "\x01action waves"),
            Some((TextStyle::Action, "waves".into()))
        );
        // Formatting is read, not relayed as control characters.
        assert_eq!(
            said("PRIVMSG", "\x02bold\x02 move"),
            Some((TextStyle::Normal, "bold move".into()))
        );
    }

    #[test]
    fn a_topic_is_read_as_plain_text() {
        assert_eq!(
            topic_text("\x02Welcome\x02 to \x0304#rust"),
            "Welcome to #rust"
        );
    }

    #[test]
    fn ctcp_queries_and_empty_lines_are_not_conversation() {
        assert_eq!(said("PRIVMSG", "\x01VERSION\x01"), None);
        assert_eq!(said("PRIVMSG", "\x01PING 12345\x01"), None);
        assert_eq!(said("NOTICE", "\x01VERSION irssi\x01"), None);
        assert_eq!(said("PRIVMSG", ""), None);
        assert_eq!(said("PRIVMSG", "   "), None);
        assert_eq!(said("PRIVMSG", "\x02\x0304\x0f"), None);
        assert_eq!(said("PRIVMSG", "\x01ACTION\x01"), None);
        assert_eq!(said("PRIVMSG", "\x01ACTION \x01"), None);
    }

    #[test]
    fn an_inbound_event_takes_the_servers_msgid_and_time() {
        let tagged =
            message("@msgid=abc123;time=2026-11-22T04:00:00.500Z :alice!a@host PRIVMSG #chan :hi");
        let body = EventBody::text(TextStyle::Normal, "hi");
        assert_eq!(
            inbound("libera", "#Chan", "alice", &tagged, body.clone(), 42),
            Inbound {
                origin: ChannelRef::new("libera", "#Chan"),
                remote_id: Some("abc123".into()),
                author: Author {
                    id: "alice".into(),
                    display_name: "alice".into(),
                },
                timestamp_ms: 1_795_320_000_500,
                body: body.clone(),
                permalink: None,
            }
        );
        // Without tags (or with a time that does not parse): no id, the time it was read.
        let untagged = message(":alice!a@host PRIVMSG #chan :hi");
        let event = inbound("libera", "#Chan", "alice", &untagged, body.clone(), 42);
        assert_eq!((event.remote_id, event.timestamp_ms), (None, 42));
        let bad_time = message("@time=yesterday :alice!a@host PRIVMSG #chan :hi");
        assert_eq!(
            inbound("libera", "#Chan", "alice", &bad_time, body, 42).timestamp_ms,
            42
        );
    }

    #[test]
    fn a_membership_event_is_built_the_same_way() {
        let join = message("@msgid=j1 :bob!b@host JOIN #chan");
        let event = inbound(
            "libera",
            "#chan",
            "bob",
            &join,
            EventBody::Membership(Membership::Joined),
            7,
        );
        assert_eq!(event.remote_id.as_deref(), Some("j1"));
        assert_eq!(event.author.id, "bob");
        assert_eq!(event.timestamp_ms, 7);
        assert_eq!(event.body, EventBody::Membership(Membership::Joined));
    }

    proptest! {
        #[test]
        fn every_line_fits_and_is_clean(
            text in "\\PC{0,2000}|[a\r\n\0\x01 é]{0,900}",
            author in "\\PC{0,300}",
            action in any::<bool>(),
        ) {
            let style = if action { TextStyle::Action } else { TextStyle::Normal };
            let message = delivery(EventBody::text(style, &text), &author, None);
            let nick = "tribridge-bot-with-a-long-nick";
            for (command, body) in render_delivery(&message, "[{NETWORK}] <{NOPINGNICK}> ", nick, true, &GatewaySettings::default()) {
                let tags = format!("@label={}.{} ", message.id, 999);
                let ours = format!("{tags}{command} #dest :{body}\r\n");
                let relayed = format!(":{nick}!{}@{} {command} #dest :{body}\r\n", "u".repeat(10), "h".repeat(63));
                prop_assert!(!body.contains(['\r', '\n', '\0']));
                prop_assert!(ours.len() <= 512, "{} bytes", ours.len());
                prop_assert!(relayed.len() <= 512, "{} bytes", relayed.len());
            }
        }
    }
}
