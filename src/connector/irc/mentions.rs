//! Mentions and replies as IRC shows them: a name is a nick written in the line (clients
//! highlight it), and a reply is `nick: text`, with a short quote of the message it answers
//! when that is no longer on screen.
//!
//! Inbound, names of people relayed from other networks become mentions of them
//! ([`detect`]), and `nick: text` said soon after that person's last line here becomes a reply
//! to it where the gateway asks for it ([`Recent::implied_reply`]). Outbound, mentions become
//! current nicks or shown names and replies get their prefix ([`for_irc`]). A person linked in
//! `[[identity]]` is their nick here both ways: the nick is a mention of them, and a mention of
//! any of their accounts is the nick.
//! Must not: touch the connection, or guess a reply where the line does not address its nick.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::connector::prefixed;
use crate::model::{Delivery, EventBody, Replied};
use crate::richtext::FormattedText;
use crate::richtext::mention::{detect_mentions, rewrite_mentions};
use crate::richtext::model::{Block, Inline, Mention, MentionTarget};
use crate::vocab::People;

use super::irc_fold;

/// How many of a channel's last lines count as still on screen: a reply to one of them needs
/// no quote.
pub const RECENT_LINES: usize = 5;

/// How long after a relayed person's line `nick: text` is taken as a reply to it.
pub const REPLY_WINDOW: Duration = Duration::from_mins(5);

/// How many characters of the replied message the quote shows, at most.
const QUOTE_CHARS: usize = 40;

/// What the connection remembers of its channels' last lines.
#[derive(Debug, Default)]
pub struct Recent {
    channels: HashMap<String, ChannelLines>,
}

/// One message shown in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    /// Relayed here: its canonical id.
    Relayed(i64),
    /// Said here: the server's id for it (`None` without `msgid`).
    Said(Option<String>),
}

#[derive(Debug, Default)]
struct ChannelLines {
    /// The last messages shown.
    shown: VecDeque<Shown>,
    /// Per relayed person (network, user id): the server's id of their last line here and
    /// when it was acknowledged (ms since the Unix epoch).
    last_line: HashMap<(String, String), (String, i64)>,
}

impl Recent {
    fn channel(&mut self, channel: &str) -> &mut ChannelLines {
        self.channels.entry(irc_fold(channel)).or_default()
    }

    /// A message was shown in `channel`.
    pub fn shown(&mut self, channel: &str, shown: Shown) {
        let lines = &mut self.channel(channel).shown;
        if lines.len() == RECENT_LINES {
            lines.pop_front();
        }
        lines.push_back(shown);
    }

    /// Whether the message a reply answers is among the last lines of `channel`.
    #[must_use]
    pub fn on_screen(&self, channel: &str, network: &str, replied: &Replied) -> bool {
        let said_here = (replied.network == network)
            .then_some(replied.remote_id.as_ref())
            .flatten();
        self.channels.get(&irc_fold(channel)).is_some_and(|lines| {
            lines.shown.iter().any(|shown| match shown {
                Shown::Relayed(id) => *id == replied.message_id,
                Shown::Said(msgid) => msgid.is_some() && msgid.as_ref() == said_here,
            })
        })
    }

    /// The relayed person `(network, user_id)` had a line acknowledged in `channel` with the
    /// server's id `msgid` at `at_ms`.
    pub fn said(&mut self, channel: &str, person: (String, String), msgid: String, at_ms: i64) {
        self.channel(channel)
            .last_line
            .insert(person, (msgid, at_ms));
    }

    /// For a line of `channel` that addresses a relayed person (`text` starts with a mention
    /// of them followed by `:` or `,`): the server's id of that person's last line here, when
    /// it was said within [`REPLY_WINDOW`] of `now_ms`.
    #[must_use]
    pub fn implied_reply(
        &self,
        channel: &str,
        text: &FormattedText,
        now_ms: i64,
    ) -> Option<String> {
        let MentionTarget::User { network, user_id } = addressed(text)? else {
            return None;
        };
        let (msgid, at_ms) = self
            .channels
            .get(&irc_fold(channel))?
            .last_line
            .get(&(network.clone(), user_id.clone()))?;
        let window = i64::try_from(REPLY_WINDOW.as_millis()).unwrap_or(i64::MAX);
        (now_ms.saturating_sub(*at_ms) <= window).then(|| msgid.clone())
    }
}

/// The person a line addresses: its first element is a mention followed by `:` or `,`.
fn addressed(text: &FormattedText) -> Option<&MentionTarget> {
    let Some(Block::Paragraph(inlines)) = text.blocks.first() else {
        return None;
    };
    let mut inlines = inlines
        .iter()
        .skip_while(|inline| matches!(inline, Inline::Text(t) if t.trim().is_empty()));
    let Some(Inline::Mention(mention)) = inlines.next() else {
        return None;
    };
    matches!(inlines.next(), Some(Inline::Text(t)) if t.starts_with([':', ',']))
        .then_some(&mention.target)
}

/// The text of a line said on IRC network `network`, with the names of people relayed from
/// other networks turned into mentions of them.
pub fn detect(text: &mut FormattedText, people: &People, network: &str) {
    let identities = people.identities();
    if people.is_empty() && identities.is_empty() {
        return;
    }
    detect_mentions(text, &|word| {
        people.shown_as(network, word).or_else(|| {
            // The nick of a person linked to accounts elsewhere (`[[identity]]`): a mention
            // of them, which reaches their other accounts.
            identities
                .of(network, word)
                .filter(|identity| identity.accounts.len() > 1)
                .map(|_| MentionTarget::User {
                    network: network.to_owned(),
                    user_id: word.to_owned(),
                })
        })
    });
}

/// A delivery as IRC network `network` shows it: mentions of its own people by their current
/// nick, of others by the name they are shown under here; a reply (or a message in a thread)
/// starts with the nick of the one it answers, and with a short quote of what it answers when
/// that is no longer among the channel's last lines.
#[must_use]
pub fn for_irc(delivery: &Delivery, people: &People, network: &str, recent: &Recent) -> Delivery {
    let mut delivery = delivery.clone();
    let replied = delivery.replied.clone();
    let destination = delivery.destination.channel.clone();
    if let EventBody::Text { text, .. } | EventBody::Edit { text, .. } = &mut delivery.body {
        rewrite_mentions(
            text,
            network,
            &|user_id, _| {
                let nick = people
                    .current(network, user_id)
                    .map_or_else(|| user_id.to_owned(), |(nick, _)| nick);
                Some(Mention {
                    display: nick.clone(),
                    target: MentionTarget::User {
                        network: network.to_owned(),
                        user_id: nick,
                    },
                })
            },
            &|other, user_id| {
                // A person linked to a nick here (`[[identity]]`) is named by it.
                people
                    .identities()
                    .account_on(other, user_id, network)
                    .map(str::to_owned)
                    .or_else(|| people.current(other, user_id).map(|(_, shown)| shown))
            },
        );
    }
    if let (EventBody::Text { text, .. }, Some(replied)) = (&mut delivery.body, replied) {
        let nick = if replied.network == network {
            people
                .current(network, &replied.author.id)
                .map_or_else(|| replied.author.id.clone(), |(nick, _)| nick)
        } else {
            replied.author.display_name.clone()
        };
        let quote = (!recent.on_screen(&destination, network, &replied))
            .then(|| quote_of(&replied.text))
            .flatten();
        let already = text
            .to_plain_text()
            .strip_prefix(nick.as_str())
            .is_some_and(|rest| rest.starts_with([':', ',']));
        match (quote, already) {
            (Some(quote), _) => {
                if already {
                    *text = strip_address(text, &nick);
                }
                *text = prefixed(&format!("{nick}: \"{quote}\" <- "), text);
            }
            (None, false) => *text = prefixed(&format!("{nick}: "), text),
            (None, true) => {}
        }
    }
    delivery
}

/// `text` without its leading `nick:` (or `nick,`) and the spaces after it.
fn strip_address(text: &FormattedText, nick: &str) -> FormattedText {
    let mut blocks = text.blocks.clone();
    if let Some(Block::Paragraph(inlines)) = blocks.first_mut() {
        // The address is the first text or mention; what follows it keeps its formatting.
        let mut consumed = 0;
        let target = nick.len() + 1;
        while consumed < target && !inlines.is_empty() {
            match inlines.first_mut() {
                Some(Inline::Text(t)) => {
                    let take = (target - consumed).min(t.len());
                    if !t.is_char_boundary(take) {
                        break;
                    }
                    consumed += take;
                    t.drain(..take);
                    if t.is_empty() {
                        inlines.remove(0);
                    }
                }
                Some(Inline::Mention(m)) => {
                    consumed += m.display.len();
                    inlines.remove(0);
                }
                _ => break,
            }
        }
        if let Some(Inline::Text(t)) = inlines.first_mut() {
            *t = t.trim_start().to_owned();
        }
    }
    FormattedText::new(blocks)
}

/// The first words of a message, for a quote: its first line, cut at a word to at most
/// [`QUOTE_CHARS`] characters, with `…` when something was left out; `None` when it shows
/// nothing (a file without caption).
fn quote_of(text: &FormattedText) -> Option<String> {
    let plain = text.to_plain_text();
    let mut lines = plain.lines().map(str::trim).filter(|line| !line.is_empty());
    let first = lines.next()?;
    let more = lines.next().is_some();
    if first.chars().count() <= QUOTE_CHARS {
        return Some(if more {
            format!("{first}…")
        } else {
            first.to_owned()
        });
    }
    let cut: String = first.chars().take(QUOTE_CHARS).collect();
    let cut = match cut.rfind(char::is_whitespace) {
        Some(space) if space > QUOTE_CHARS / 2 => cut[..space].trim_end().to_owned(),
        _ => cut,
    };
    Some(format!("{cut}…"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Author, ChannelRef};
    use std::collections::HashMap as Map;

    fn people() -> People {
        let people = People::new(Map::from([
            ("irc".to_owned(), crate::vocab::CaseMapping::Rfc1459),
            ("mx".to_owned(), crate::vocab::CaseMapping::Exact),
        ]));
        people.saw("irc", "dave", "dave");
        people.saw("mx", "@carol:hs", "carol");
        people
    }

    fn reply(text: &str, replied_text: &str, message_id: i64) -> Delivery {
        let mut delivery = Delivery::sample(
            2,
            ChannelRef::new("mx", "!r"),
            ChannelRef::new("irc", "#a"),
            text,
        );
        delivery.replied = Some(Replied {
            message_id,
            network: "irc".into(),
            remote_id: Some(format!("m{message_id}")),
            author: Author {
                id: "dave".into(),
                display_name: "dave".into(),
            },
            text: FormattedText::plain(replied_text),
        });
        delivery
    }

    fn shown(delivery: &Delivery) -> String {
        match &delivery.body {
            EventBody::Text { text, .. } => text.to_plain_text(),
            _ => String::new(),
        }
    }

    #[test]
    fn a_reply_names_its_nick_and_quotes_what_is_off_screen() {
        let people = people();
        let mut recent = Recent::default();
        recent.shown("#A", Shown::Said(Some("m1".into())));
        let on_screen = for_irc(&reply("yes", "shall we ship?", 1), &people, "irc", &recent);
        assert_eq!(shown(&on_screen), "dave: yes");
        let long = "the release notes for version two are in the wiki now, please read them";
        let off = for_irc(&reply("yes", long, 7), &people, "irc", &recent);
        assert_eq!(
            shown(&off),
            "dave: \"the release notes for version two are…\" <- yes"
        );
        people.renamed("irc", "dave", "dave_");
        let renamed = for_irc(&reply("dave: yes", "ok", 7), &people, "irc", &recent);
        assert_eq!(shown(&renamed), "dave_: \"ok\" <- dave: yes");
        let addressed = for_irc(&reply("dave_: yes", "ok", 1), &people, "irc", &recent);
        assert_eq!(shown(&addressed), "dave_: yes");
        let quoted = for_irc(&reply("dave_, yes", "ok", 9), &people, "irc", &recent);
        assert_eq!(shown(&quoted), "dave_: \"ok\" <- yes");
    }

    #[test]
    fn only_the_last_lines_are_on_screen() {
        let mut recent = Recent::default();
        let replied = reply("", "", 1).replied.unwrap();
        recent.shown("#a", Shown::Relayed(1));
        for _ in 0..RECENT_LINES - 1 {
            recent.shown("#a", Shown::Said(None));
        }
        assert!(recent.on_screen("#a", "irc", &replied));
        recent.shown("#a", Shown::Said(None));
        assert!(!recent.on_screen("#a", "irc", &replied));
    }

    #[test]
    fn a_line_addressing_a_relayed_person_soon_after_their_line_replies_to_it() {
        let people = people();
        let mut recent = Recent::default();
        recent.said(
            "#a",
            ("mx".into(), "@carol:hs".into()),
            "msg1".into(),
            1_000,
        );
        let line = |s: &str| {
            let mut text = crate::richtext::irc::parse(s);
            detect(&mut text, &people, "irc");
            text
        };
        assert_eq!(
            recent
                .implied_reply("#A", &line("Carol: agreed"), 2_000)
                .as_deref(),
            Some("msg1")
        );
        assert_eq!(
            recent.implied_reply("#a", &line("agreed carol"), 2_000),
            None
        );
        let late = 1_000 + i64::try_from(REPLY_WINDOW.as_millis()).unwrap() + 1;
        assert_eq!(
            recent.implied_reply("#a", &line("carol: agreed"), late),
            None
        );
    }

    #[test]
    fn a_linked_persons_nick_and_their_other_accounts_are_one_person() {
        let people = people();
        people.link(vec![crate::vocab::Identity {
            name: None,
            accounts: vec![
                ("irc".into(), "alice".into()),
                ("mx".into(), "@alice:hs".into()),
            ],
            nickserv_password: None,
        }]);
        // Her nick said on IRC is a mention of her (it reaches her Matrix account).
        let mut text = crate::richtext::irc::parse("Alice: hi, and bob");
        detect(&mut text, &people, "irc");
        assert_eq!(
            crate::richtext::mention::mentioned_users(&text, "irc"),
            vec!["Alice".to_owned()]
        );
        // A mention of her Matrix account is her nick on IRC.
        let mut delivery = reply("", "", 1);
        delivery.replied = None;
        if let EventBody::Text { text, .. } = &mut delivery.body {
            *text = FormattedText {
                blocks: vec![Block::Paragraph(vec![
                    Inline::Mention(Mention {
                        display: "Alice M".into(),
                        target: MentionTarget::User {
                            network: "mx".into(),
                            user_id: "@alice:hs".into(),
                        },
                    }),
                    Inline::Text(" see".into()),
                ])],
            };
        }
        let shown_here = for_irc(&delivery, &people, "irc", &Recent::default());
        assert_eq!(shown(&shown_here), "alice see");
    }
}
