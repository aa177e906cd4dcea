//! Mentions across networks: rewriting for a destination, finding people's names in text,
//! mass-ping neutralising, and the anti-ping form of relayed IRC nicks.
//!
//! Owns: finding the names of people in text ([`detect_mentions`], with a lookup the caller
//! supplies: the people directory is [`crate::vocab::People`]), rewriting the mentions of a
//! text for a destination network ([`rewrite_mentions`], with that network's own forms supplied
//! by its connector), and the invisible character used to stop pings ([`ANTI_PING`]).
//! Must not: look anything up by itself (no I/O, no network), ping anyone the author did
//! not mention, or change anything a reader can see other than turning an unmappable
//! mention into its plain text.
//!
//! The anti-ping character is U+2060 WORD JOINER. It is invisible, default-ignorable (so
//! fonts draw nothing and screen readers skip it, reading the nick as one word), it is not a
//! line-break opportunity, and unlike U+200D/U+200C it does not change how neighbouring
//! characters are shaped or joined. U+200B ZERO WIDTH SPACE, the usual choice, is a word
//! break: screen readers may read the nick as two words, and it lets lines wrap inside it.
//! It is only needed where no better form exists: IRC, where highlights match the nick as a
//! word in the text. On Matrix and Mattermost a relayed sender is shown by the connector as
//! the message's sender or in bold, which pings nobody, so nothing is inserted there.

use super::model::{Block, FormattedText, Inline, Mention, MentionTarget};

/// U+2060 WORD JOINER, inserted to stop a highlight or ping (see the module documentation).
pub const ANTI_PING: char = '\u{2060}';

/// Rewrites every mention for the network `dest_network`: a user of that network becomes
/// what `native` makes of them (their current id and the display its people expect), or plain
/// text when `native` does not know them; a user of another network becomes the name they are
/// shown under (`shown`, else the mention's own text), which pings nobody; a channel of another
/// network becomes its text. Room mentions are left alone (see [`neutralise_mass_pings`]).
pub fn rewrite_mentions(
    text: &mut FormattedText,
    dest_network: &str,
    native: &dyn Fn(&str, &str) -> Option<Mention>,
    shown: &dyn Fn(&str, &str) -> Option<String>,
) {
    map_mentions(text, &mut |m: Mention| -> Inline {
        match &m.target {
            MentionTarget::User { network, user_id } if network == dest_network => {
                match native(user_id, &m.display) {
                    Some(mention) => Inline::Mention(mention),
                    None => Inline::Text(m.display),
                }
            }
            MentionTarget::User { network, user_id } => {
                Inline::Text(shown(network, user_id).unwrap_or(m.display))
            }
            MentionTarget::Channel { network, .. } if network != dest_network => {
                Inline::Text(m.display)
            }
            _ => Inline::Mention(m),
        }
    });
}

/// Applies `f` to every mention of the text (outside code), then normalises it; a text without
/// mentions is left as it is.
pub fn map_mentions(text: &mut FormattedText, f: &mut dyn FnMut(Mention) -> Inline) {
    if !has_mentions(&text.blocks) {
        return;
    }
    map_blocks(&mut text.blocks, f);
    text.normalize();
}

/// Whether any block holds a mention (outside code).
fn has_mentions(blocks: &[Block]) -> bool {
    fn inlines(v: &[Inline]) -> bool {
        v.iter()
            .any(|node| matches!(node, Inline::Mention(_)) || node.children().is_some_and(inlines))
    }
    blocks.iter().any(|b| match b {
        Block::Paragraph(v) => inlines(v),
        Block::Quote(inner) => has_mentions(inner),
        Block::CodeBlock { .. } => false,
    })
}

/// The user ids of `network` that the text mentions, each once, in order.
#[must_use]
pub fn mentioned_users(text: &FormattedText, network: &str) -> Vec<String> {
    let mut users: Vec<String> = Vec::new();
    let mut copy = text.clone();
    map_blocks(&mut copy.blocks, &mut |m: Mention| {
        if let MentionTarget::User {
            network: of,
            user_id,
        } = &m.target
            && of == network
            && !users.contains(user_id)
        {
            users.push(user_id.clone());
        }
        Inline::Mention(m)
    });
    users
}

/// Turns mass pings into harmless text unless `allowed`. Call it after
/// [`rewrite_mentions`], which turns unmapped mentions into text that may itself read as a
/// mass ping on the destination (`@room` typed on Mattermost, sent to Matrix).
///
/// Room mentions become their display
/// text, and `@room`, `@channel`, `@all`, `@here` and `@everyone` typed as plain words get
/// [`ANTI_PING`] after the `@` (they look the same, but no platform matches them).
pub fn neutralise_mass_pings(text: &mut FormattedText, allowed: bool) {
    if allowed {
        return;
    }
    let f = &mut |m: Mention| -> Inline {
        if m.target == MentionTarget::Room {
            Inline::Text(defuse_mass_words(&m.display))
        } else {
            Inline::Mention(m)
        }
    };
    map_blocks(&mut text.blocks, f);
    map_text(&mut text.blocks, &mut |s| defuse_mass_words(s));
    text.normalize();
}

const MASS_WORDS: [&str; 5] = ["room", "channel", "all", "here", "everyone"];

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Inserts [`ANTI_PING`] after the `@` of every mass-ping word.
fn defuse_mass_words(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (pos, _) in s.match_indices('@') {
        let before_ok = s[..pos]
            .chars()
            .next_back()
            .is_none_or(|c| !is_word_char(c));
        let rest = &s[pos + 1..];
        let hit = MASS_WORDS.iter().any(|w| {
            rest.get(..w.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(w))
                && rest[w.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !is_word_char(c))
        });
        if before_ok && hit {
            out.push_str(&s[last..=pos]);
            out.push(ANTI_PING);
            last = pos + 1;
        }
    }
    out.push_str(&s[last..]);
    out
}

/// The nick with [`ANTI_PING`] after its first character (and any combining marks on it),
/// for `{NOPINGNICK}`: it looks the same but does not highlight its owner on IRC.
#[must_use]
pub fn no_ping_nick(nick: &str) -> String {
    let mut chars = nick.char_indices();
    let Some(_) = chars.next() else {
        return String::new();
    };
    let split = chars
        .find(|(_, c)| !is_combining(*c))
        .map_or(nick.len(), |(i, _)| i);
    if split == nick.len() {
        return nick.to_owned();
    }
    let mut out = String::with_capacity(nick.len() + 3);
    out.push_str(&nick[..split]);
    out.push(ANTI_PING);
    out.push_str(&nick[split..]);
    out
}

/// Combining marks, variation selectors and joiners that belong to the previous character.
fn is_combining(c: char) -> bool {
    matches!(c as u32,
        0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF
        | 0xFE00..=0xFE0F | 0xFE20..=0xFE2F | 0x200D | 0x1F3FB..=0x1F3FF | 0xE0100..=0xE01EF)
}

/// Words that are never taken for a name unless the line addresses them (`the: …`): a person
/// called `the` or `so` is not pinged by every sentence.
const COMMON_WORDS: &[&str] = &[
    "a", "about", "after", "again", "all", "also", "an", "and", "any", "are", "as", "at", "back",
    "be", "because", "been", "but", "by", "can", "come", "could", "day", "did", "do", "does",
    "done", "even", "first", "fix", "for", "from", "get", "give", "go", "good", "got", "had",
    "has", "have", "he", "help", "her", "here", "him", "his", "how", "i", "if", "in", "into", "is",
    "it", "its", "just", "know", "like", "look", "make", "me", "more", "most", "my", "new", "no",
    "not", "now", "of", "ok", "okay", "on", "one", "only", "or", "other", "our", "out", "over",
    "people", "please", "say", "see", "she", "so", "some", "take", "test", "than", "thanks",
    "that", "the", "their", "them", "then", "there", "these", "they", "thing", "think", "this",
    "time", "to", "two", "up", "us", "use", "want", "was", "way", "we", "well", "were", "what",
    "when", "which", "who", "will", "with", "work", "would", "yes", "you", "your",
];

/// Whether `word` may be taken for a name anywhere in a line (not only where the line
/// addresses it): at least three characters and not a common word.
fn may_be_name_anywhere(word: &str) -> bool {
    word.chars().count() >= 3 && !COMMON_WORDS.contains(&word.to_lowercase().as_str())
}

/// Finds names of people written as words in plain text (outside code and links) and turns
/// those that `lookup` knows into mentions of them. A name is taken where the line addresses
/// it (at its start, followed by `:` or `,`), after `@`, or anywhere as a whole word when it
/// is at least three characters long and not a common word (see [`COMMON_WORDS`]).
pub fn detect_mentions(text: &mut FormattedText, lookup: &dyn Fn(&str) -> Option<MentionTarget>) {
    detect_in_blocks(&mut text.blocks, lookup);
    text.normalize();
}

/// Nick characters: RFC 2812's, plus any letter or digit (networks with UTF-8 nicks).
fn is_nick_char(c: char) -> bool {
    c.is_alphanumeric() || "[]\\`_^{|}-".contains(c)
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<MentionTarget>;

fn detect_in_blocks(blocks: &mut [Block], lookup: Lookup<'_>) {
    for b in blocks {
        match b {
            Block::Paragraph(inl) => detect_in_inlines(inl, lookup, &mut true),
            Block::Quote(inner) => detect_in_blocks(inner, lookup),
            Block::CodeBlock { .. } => {}
        }
    }
}

fn detect_in_inlines(inl: &mut Vec<Inline>, lookup: Lookup<'_>, line_start: &mut bool) {
    let old = std::mem::take(inl);
    for node in old {
        match node {
            Inline::Text(t) => split_names(&t, lookup, line_start, inl),
            Inline::LineBreak => {
                *line_start = true;
                inl.push(Inline::LineBreak);
            }
            Inline::Bold(mut c) => {
                detect_in_inlines(&mut c, lookup, line_start);
                inl.push(Inline::Bold(c));
            }
            Inline::Italic(mut c) => {
                detect_in_inlines(&mut c, lookup, line_start);
                inl.push(Inline::Italic(c));
            }
            Inline::Underline(mut c) => {
                detect_in_inlines(&mut c, lookup, line_start);
                inl.push(Inline::Underline(c));
            }
            Inline::Strike(mut c) => {
                detect_in_inlines(&mut c, lookup, line_start);
                inl.push(Inline::Strike(c));
            }
            Inline::Spoiler(mut c) => {
                detect_in_inlines(&mut c, lookup, line_start);
                inl.push(Inline::Spoiler(c));
            }
            Inline::Colour {
                fg,
                bg,
                mut children,
            } => {
                detect_in_inlines(&mut children, lookup, line_start);
                inl.push(Inline::Colour { fg, bg, children });
            }
            other => {
                *line_start = false;
                inl.push(other);
            }
        }
    }
}

fn split_names(t: &str, lookup: Lookup<'_>, line_start: &mut bool, out: &mut Vec<Inline>) {
    let mut plain_from = 0;
    let mut iter = t.char_indices().peekable();
    while let Some((start, c)) = iter.next() {
        if !is_nick_char(c) {
            if !c.is_whitespace() && c != '@' {
                *line_start = false;
            }
            continue;
        }
        let previous = t[..start].chars().next_back();
        let before_ok = previous.is_none_or(|p| p.is_whitespace() || "@,.:;!?(<'\"".contains(p));
        let at = previous == Some('@');
        let addressing = *line_start && !at;
        *line_start = false;
        let mut end = start + c.len_utf8();
        while let Some(&(i, n)) = iter.peek() {
            if !is_nick_char(n) {
                break;
            }
            end = i + n.len_utf8();
            iter.next();
        }
        let word = &t[start..end];
        let addressed = addressing && t[end..].starts_with([':', ',']);
        if !before_ok || !(addressed || at || may_be_name_anywhere(word)) {
            continue;
        }
        if let Some(target) = lookup(word) {
            let from = if at { start - 1 } else { start };
            out.push(Inline::Text(t[plain_from..from].to_owned()));
            out.push(Inline::Mention(Mention {
                display: t[from..end].to_owned(),
                target,
            }));
            plain_from = end;
        }
    }
    out.push(Inline::Text(t[plain_from..].to_owned()));
}

/// Applies `f` to every mention.
fn map_blocks(blocks: &mut [Block], f: &mut dyn FnMut(Mention) -> Inline) {
    for b in blocks {
        match b {
            Block::Paragraph(inl) => map_inlines(inl, f),
            Block::Quote(inner) => map_blocks(inner, f),
            Block::CodeBlock { .. } => {}
        }
    }
}

fn map_inlines(inl: &mut [Inline], f: &mut dyn FnMut(Mention) -> Inline) {
    for node in inl.iter_mut() {
        match node {
            Inline::Mention(m) => {
                let m = std::mem::replace(
                    m,
                    Mention {
                        display: String::new(),
                        target: MentionTarget::Room,
                    },
                );
                *node = f(m);
            }
            other => {
                if let Some(c) = other.children_mut() {
                    map_inlines(c, f);
                }
            }
        }
    }
}

/// Applies `f` to every text node (not code).
fn map_text(blocks: &mut [Block], f: &mut dyn FnMut(&str) -> String) {
    fn inl(v: &mut [Inline], f: &mut dyn FnMut(&str) -> String) {
        for node in v {
            match node {
                Inline::Text(t) => *t = f(t),
                other => {
                    if let Some(c) = other.children_mut() {
                        inl(c, f);
                    }
                }
            }
        }
    }
    for b in blocks {
        match b {
            Block::Paragraph(v) => inl(v, f),
            Block::Quote(inner) => map_text(inner, f),
            Block::CodeBlock { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::richtext::{html, irc, markdown};

    /// alice is on Matrix (shown as "Alice A.") and known on Mattermost as `alice.a`; Bob[m]
    /// is an IRC nick.
    fn lookup(word: &str) -> Option<MentionTarget> {
        let folded = word.to_lowercase().replace('{', "[").replace('}', "]");
        match folded.as_str() {
            "alice" | "the" | "a" => Some(MentionTarget::User {
                network: "matrix".into(),
                user_id: "@alice:example.org".into(),
            }),
            "bob[m]" => Some(MentionTarget::User {
                network: "libera".into(),
                user_id: "Bob[m]".into(),
            }),
            _ => None,
        }
    }

    fn to_irc(text: &mut FormattedText) {
        rewrite_mentions(
            text,
            "libera",
            &|id, _| {
                Some(Mention {
                    display: id.to_owned(),
                    target: MentionTarget::Room,
                })
            },
            &|_, id| (id == "@alice:example.org").then(|| "alice".to_owned()),
        );
    }

    #[test]
    fn a_matrix_pill_becomes_the_name_irc_shows_and_a_native_mention_its_form() {
        let from =
            html::parse("hi <a href=\"https://matrix.to/#/@alice:example.org\">Alice A.</a>");
        let mut on_irc = from.clone();
        to_irc(&mut on_irc);
        assert_eq!(
            irc::render(&on_irc, &irc::IrcRenderOptions::default()),
            vec!["hi alice"]
        );
        let mut on_matrix = from;
        rewrite_mentions(
            &mut on_matrix,
            "matrix",
            &|id, display| {
                Some(Mention {
                    display: display.to_owned(),
                    target: MentionTarget::User {
                        network: "matrix".into(),
                        user_id: id.to_owned(),
                    },
                })
            },
            &|_, _| None,
        );
        assert_eq!(
            mentioned_users(&on_matrix, "matrix"),
            ["@alice:example.org"]
        );
    }

    #[test]
    fn unknown_mentions_become_text_that_pings_nobody() {
        let mut t = markdown::parse("ping @carol");
        rewrite_mentions(&mut t, "matrix", &|_, _| None, &|_, _| None);
        assert_eq!(t, FormattedText::plain("ping @carol"));
        let r = html::render(&t);
        assert_eq!(r.body, "ping @carol");
        assert_eq!(r.formatted_body, None);
        // Rendered back to Mattermost, the text still does not ping.
        assert_eq!(markdown::render(&t), format!("ping @{ANTI_PING}carol"));
    }

    #[test]
    fn names_are_found_as_whole_words_outside_code() {
        let mut t = irc::parse("ALICE: see bob{m}'s note, malice, and \x11alice\x11");
        detect_mentions(&mut t, &lookup);
        let r = html::render(&t);
        assert_eq!(
            r.formatted_body.as_deref(),
            Some(
                "<a href=\"https://matrix.to/#/@alice:example.org\">ALICE</a>: see bob{m}&#39;s note, malice, and <code>alice</code>"
            )
        );
        assert_eq!(mentioned_users(&t, "libera"), ["Bob[m]"]);
    }

    #[test]
    fn a_common_word_is_a_name_only_where_the_line_addresses_it() {
        let found = |line: &str| {
            let mut t = irc::parse(line);
            detect_mentions(&mut t, &lookup);
            mentioned_users(&t, "matrix").len()
        };
        assert_eq!(found("the: look"), 1);
        assert_eq!(found("a, look"), 1);
        assert_eq!(found("  the: look"), 1);
        assert_eq!(found("the docs say so"), 0);
        assert_eq!(found("see the: docs"), 0);
        assert_eq!(found("take a look"), 0);
        assert_eq!(found("ok @the look"), 1);
        assert_eq!(found("thanks alice"), 1);
        assert_eq!(found("first line\nthe, second"), 1);
    }

    #[test]
    fn mass_pings() {
        let mut t = markdown::parse("@channel and @here and @Room, not @rooms or a@all");
        // On Mattermost `@Room` is a user; mapped to Matrix it is unknown, so text, and the
        // neutralising that follows the mapping defuses it.
        rewrite_mentions(&mut t, "matrix", &|_, _| None, &|_, _| None);
        neutralise_mass_pings(&mut t, false);
        let want = format!(
            "@{ANTI_PING}channel and @{ANTI_PING}here and @{ANTI_PING}Room, not @rooms or a@all"
        );
        assert_eq!(t.to_plain_text(), want);
        let mut allowed = markdown::parse("@channel");
        neutralise_mass_pings(&mut allowed, true);
        assert_eq!(html::render(&allowed).body, "@room");
        assert_eq!(markdown::render(&allowed), "@channel");
    }

    #[test]
    fn no_ping_nick_forms() {
        assert_eq!(no_ping_nick("alice"), format!("a{ANTI_PING}lice"));
        assert_eq!(
            no_ping_nick("e\u{301}ric"),
            format!("e\u{301}{ANTI_PING}ric")
        );
        assert_eq!(no_ping_nick("x"), "x");
        assert_eq!(no_ping_nick(""), "");
        assert_eq!(no_ping_nick("漢字"), format!("漢{ANTI_PING}字"));
    }
}
