//! Mentions across networks: mapping, detection in plain IRC text, mass-ping neutralising,
//! and the anti-ping form of relayed IRC nicks.
//!
//! Owns: [`MentionDirectory`] (the gateway's known users, supplied as data), rewriting the
//! mentions of a text for a destination network, and the invisible character used to stop
//! pings ([`ANTI_PING`]).
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

/// The kind of platform a network is; it decides how user ids compare and display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// IRC: user ids are nicks, compared with RFC 1459 case mapping.
    Irc,
    /// Matrix: user ids are `@localpart:server`, compared exactly.
    Matrix,
    /// Mattermost: user ids are usernames, compared ASCII case-insensitively.
    Mattermost,
}

impl Platform {
    /// Whether `a` and `b` name the same user on this platform.
    #[must_use]
    pub fn same_user(self, a: &str, b: &str) -> bool {
        match self {
            Platform::Irc => {
                a.len() == b.len() && a.chars().map(irc_fold).eq(b.chars().map(irc_fold))
            }
            Platform::Matrix => a == b,
            Platform::Mattermost => a
                .trim_start_matches('@')
                .eq_ignore_ascii_case(b.trim_start_matches('@')),
        }
    }
}

/// RFC 1459 case folding: ASCII letters, and `[]\~` as the upper case of `{}|^`.
fn irc_fold(c: char) -> char {
    match c {
        '[' => '{',
        ']' => '}',
        '\\' => '|',
        '~' => '^',
        c => c.to_ascii_lowercase(),
    }
}

/// One account of a person on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The gateway's name for the network.
    pub network: String,
    /// The kind of network.
    pub platform: Platform,
    /// The user id there: nick, Matrix user id or Mattermost username.
    pub user_id: String,
    /// The display name there, if it has one (Matrix).
    pub display_name: Option<String>,
}

impl Identity {
    /// An identity without display name.
    #[must_use]
    pub fn new(network: &str, platform: Platform, user_id: &str) -> Self {
        Identity {
            network: network.to_owned(),
            platform,
            user_id: user_id.to_owned(),
            display_name: None,
        }
    }

    /// The text a mention of this identity shows on its own platform.
    #[must_use]
    pub fn mention_display(&self) -> String {
        match self.platform {
            Platform::Irc => self.user_id.clone(),
            Platform::Matrix => self
                .display_name
                .clone()
                .filter(|d| !d.trim().is_empty())
                .unwrap_or_else(|| self.user_id.clone()),
            Platform::Mattermost => format!("@{}", self.user_id.trim_start_matches('@')),
        }
    }
}

/// The gateway's known users: each person is a list of identities on several networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MentionDirectory {
    people: Vec<Vec<Identity>>,
}

impl MentionDirectory {
    /// An empty directory.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one person with their identities.
    pub fn add_person(&mut self, identities: Vec<Identity>) {
        if !identities.is_empty() {
            self.people.push(identities);
        }
    }

    /// The identities of the person who is `user_id` on `network`.
    #[must_use]
    pub fn person(&self, network: &str, user_id: &str) -> Option<&[Identity]> {
        self.people
            .iter()
            .find(|p| {
                p.iter()
                    .any(|i| i.network == network && i.platform.same_user(&i.user_id, user_id))
            })
            .map(Vec::as_slice)
    }

    /// The identity on `dest_network` of the person who is `user_id` on `network`.
    #[must_use]
    pub fn identity_on(
        &self,
        network: &str,
        user_id: &str,
        dest_network: &str,
    ) -> Option<&Identity> {
        self.person(network, user_id)?
            .iter()
            .find(|i| i.network == dest_network)
    }

    /// The identity on `network` whose user id is `user_id`.
    #[must_use]
    pub fn identity(&self, network: &str, user_id: &str) -> Option<&Identity> {
        self.person(network, user_id)?
            .iter()
            .find(|i| i.network == network && i.platform.same_user(&i.user_id, user_id))
    }
}

/// Rewrites every mention for `dest_network`: a user known there becomes a mention of their
/// identity there (with that platform's display); a user not known there, or a channel of
/// another network, becomes its plain display text, which pings nobody. Mentions of
/// `dest_network` itself and room mentions are left alone (see [`neutralise_mass_pings`]).
pub fn rewrite_mentions(
    text: &mut FormattedText,
    directory: &MentionDirectory,
    dest_network: &str,
) {
    let f = &mut |m: Mention| -> Inline {
        match &m.target {
            MentionTarget::User { network, user_id } if network != dest_network => {
                match directory.identity_on(network, user_id, dest_network) {
                    Some(id) => Inline::Mention(Mention {
                        display: id.mention_display(),
                        target: MentionTarget::User {
                            network: id.network.clone(),
                            user_id: id.user_id.clone(),
                        },
                    }),
                    None => Inline::Text(m.display),
                }
            }
            MentionTarget::Channel { network, .. } if network != dest_network => {
                Inline::Text(m.display)
            }
            _ => Inline::Mention(m),
        }
    };
    map_blocks(&mut text.blocks, f);
    text.normalize();
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

/// Finds known IRC nicks of `network` written as words in plain text (outside code and
/// links) and turns them into mentions, so that they can be mapped to other networks.
/// Nicks shorter than two characters are ignored (they would match ordinary words).
pub fn detect_irc_mentions(text: &mut FormattedText, network: &str, directory: &MentionDirectory) {
    detect_in_blocks(&mut text.blocks, network, directory);
    text.normalize();
}

/// Nick characters: RFC 2812's, plus any letter or digit (networks with UTF-8 nicks).
fn is_nick_char(c: char) -> bool {
    c.is_alphanumeric() || "[]\\`_^{|}-".contains(c)
}

fn detect_in_blocks(blocks: &mut [Block], network: &str, dir: &MentionDirectory) {
    for b in blocks {
        match b {
            Block::Paragraph(inl) => detect_in_inlines(inl, network, dir),
            Block::Quote(inner) => detect_in_blocks(inner, network, dir),
            Block::CodeBlock { .. } => {}
        }
    }
}

fn detect_in_inlines(inl: &mut Vec<Inline>, network: &str, dir: &MentionDirectory) {
    let old = std::mem::take(inl);
    for node in old {
        match node {
            Inline::Text(t) => split_nicks(&t, network, dir, inl),
            Inline::Bold(mut c) => {
                detect_in_inlines(&mut c, network, dir);
                inl.push(Inline::Bold(c));
            }
            Inline::Italic(mut c) => {
                detect_in_inlines(&mut c, network, dir);
                inl.push(Inline::Italic(c));
            }
            Inline::Underline(mut c) => {
                detect_in_inlines(&mut c, network, dir);
                inl.push(Inline::Underline(c));
            }
            Inline::Strike(mut c) => {
                detect_in_inlines(&mut c, network, dir);
                inl.push(Inline::Strike(c));
            }
            Inline::Spoiler(mut c) => {
                detect_in_inlines(&mut c, network, dir);
                inl.push(Inline::Spoiler(c));
            }
            Inline::Colour {
                fg,
                bg,
                mut children,
            } => {
                detect_in_inlines(&mut children, network, dir);
                inl.push(Inline::Colour { fg, bg, children });
            }
            other => inl.push(other),
        }
    }
}

fn split_nicks(t: &str, network: &str, dir: &MentionDirectory, out: &mut Vec<Inline>) {
    let mut plain_from = 0;
    let mut iter = t.char_indices().peekable();
    while let Some((start, c)) = iter.next() {
        if !is_nick_char(c) {
            continue;
        }
        let before_ok = t[..start]
            .chars()
            .next_back()
            .is_none_or(|p| p.is_whitespace() || "@,.:;!?(<'\"".contains(p));
        let mut end = start + c.len_utf8();
        while let Some(&(i, n)) = iter.peek() {
            if !is_nick_char(n) {
                break;
            }
            end = i + n.len_utf8();
            iter.next();
        }
        let word = &t[start..end];
        if !before_ok || word.len() < 2 {
            continue;
        }
        if let Some(id) = dir
            .identity(network, word)
            .filter(|i| i.platform == Platform::Irc)
        {
            out.push(Inline::Text(t[plain_from..start].to_owned()));
            out.push(Inline::Mention(Mention {
                display: word.to_owned(),
                target: MentionTarget::User {
                    network: network.to_owned(),
                    user_id: id.user_id.clone(),
                },
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
            Inline::Bold(c)
            | Inline::Italic(c)
            | Inline::Underline(c)
            | Inline::Strike(c)
            | Inline::Spoiler(c)
            | Inline::Link { children: c, .. }
            | Inline::Colour { children: c, .. } => map_inlines(c, f),
            Inline::Text(_) | Inline::Code(_) | Inline::LineBreak => {}
        }
    }
}

/// Applies `f` to every text node (not code).
fn map_text(blocks: &mut [Block], f: &mut dyn FnMut(&str) -> String) {
    fn inl(v: &mut [Inline], f: &mut dyn FnMut(&str) -> String) {
        for node in v {
            match node {
                Inline::Text(t) => *t = f(t),
                Inline::Bold(c)
                | Inline::Italic(c)
                | Inline::Underline(c)
                | Inline::Strike(c)
                | Inline::Spoiler(c)
                | Inline::Link { children: c, .. }
                | Inline::Colour { children: c, .. } => inl(c, f),
                Inline::Code(_) | Inline::LineBreak | Inline::Mention(_) => {}
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

    fn directory() -> MentionDirectory {
        let mut d = MentionDirectory::new();
        d.add_person(vec![
            Identity::new("libera", Platform::Irc, "alice"),
            Identity {
                display_name: Some("Alice A.".into()),
                ..Identity::new("matrix", Platform::Matrix, "@alice:example.org")
            },
            Identity::new("mattermost", Platform::Mattermost, "alice.a"),
        ]);
        d.add_person(vec![Identity::new("libera", Platform::Irc, "Bob[m]")]);
        d
    }

    #[test]
    fn maps_a_matrix_pill_to_irc_and_mattermost() {
        let dir = directory();
        let from =
            html::parse("hi <a href=\"https://matrix.to/#/@alice:example.org\">Alice A.</a>");
        let mut to_irc = from.clone();
        rewrite_mentions(&mut to_irc, &dir, "libera");
        assert_eq!(
            irc::render(&to_irc, &irc::IrcRenderOptions::default()),
            vec!["hi alice"]
        );
        let mut to_mm = from;
        rewrite_mentions(&mut to_mm, &dir, "mattermost");
        assert_eq!(markdown::render(&to_mm), "hi @alice.a");
    }

    #[test]
    fn unknown_mentions_become_text_that_pings_nobody() {
        let dir = directory();
        let mut t = markdown::parse("ping @carol");
        rewrite_mentions(&mut t, &dir, "matrix");
        assert_eq!(t, FormattedText::plain("ping @carol"));
        let r = html::render(&t);
        assert_eq!(r.body, "ping @carol");
        assert_eq!(r.formatted_body, None);
        // Rendered back to Mattermost, the text still does not ping.
        assert_eq!(markdown::render(&t), format!("ping @{ANTI_PING}carol"));
    }

    #[test]
    fn detects_irc_nicks_with_case_mapping() {
        let dir = directory();
        let mut t = irc::parse("ALICE: see bob{m}'s note, malice");
        detect_irc_mentions(&mut t, "libera", &dir);
        rewrite_mentions(&mut t, &dir, "matrix");
        let r = html::render(&t);
        assert_eq!(
            r.formatted_body.as_deref(),
            Some(
                "<a href=\"https://matrix.to/#/@alice:example.org\">Alice A.</a>: see bob{m}&#39;s note, malice"
            )
        );
    }

    #[test]
    fn mass_pings() {
        let mut t = markdown::parse("@channel and @here and @Room, not @rooms or a@all");
        // On Mattermost `@Room` is a user; mapped to Matrix it is unknown, so text, and the
        // neutralising that follows the mapping defuses it.
        rewrite_mentions(&mut t, &MentionDirectory::new(), "matrix");
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
