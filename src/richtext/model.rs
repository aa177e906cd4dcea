//! The network-neutral tree of formatted text, and its normal form.
//!
//! Owns: the types [`FormattedText`], [`Block`], [`Inline`], [`Mention`], [`MentionTarget`],
//! [`Rgb`], and normalisation (the one canonical shape every parser returns, so that
//! equality after a round trip means "looks the same").
//! Must not: know any wire syntax (IRC codes, Markdown, HTML), do I/O, or panic on any input.

/// A whole message: a sequence of blocks.
///
/// Build it with [`FormattedText::new`] (which normalises) or [`FormattedText::plain`].
/// The fields are public so that callers can match on the tree; every renderer normalises a
/// copy first, so a hand-built, non-normal tree is still rendered safely. Parsers nest at
/// most a couple of dozen levels whatever the input; processing is recursive over the tree,
/// so a hand-built tree nested thousands of levels deep could exhaust the stack.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FormattedText {
    /// The blocks, in order.
    pub blocks: Vec<Block>,
}

/// A block-level element.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Block {
    /// A paragraph of inline content.
    Paragraph(Vec<Inline>),
    /// Preformatted code, shown verbatim.
    CodeBlock {
        /// Language tag (e.g. `rust`); only `[A-Za-z0-9+#._-]` survives normalisation.
        language: Option<String>,
        /// The code, lines separated by `\n` (parsers drop the newline that ends the block).
        code: String,
    },
    /// A quotation of other blocks.
    Quote(Vec<Block>),
}

/// An inline element.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Inline {
    /// Literal text. After normalisation it never contains a control character other than tab.
    Text(String),
    /// Bold.
    Bold(Vec<Inline>),
    /// Italic.
    Italic(Vec<Inline>),
    /// Underline.
    Underline(Vec<Inline>),
    /// Strikethrough.
    Strike(Vec<Inline>),
    /// Inline code (monospace), shown verbatim, on one line.
    Code(String),
    /// A hyperlink.
    Link {
        /// The target; only schemes in [`is_safe_url`] survive normalisation.
        url: String,
        /// The visible text.
        children: Vec<Inline>,
    },
    /// A mention of a user, a channel, or the whole room.
    Mention(Mention),
    /// Hidden until the reader reveals it.
    Spoiler(Vec<Inline>),
    /// Coloured text; `None` means the reader's default colour.
    Colour {
        /// Foreground colour.
        fg: Option<Rgb>,
        /// Background colour.
        bg: Option<Rgb>,
        /// The coloured content.
        children: Vec<Inline>,
    },
    /// A line break inside a paragraph.
    LineBreak,
}

impl Inline {
    /// The inline content this node wraps (bold, italic, underline, strike, spoiler, a link's
    /// text, coloured text); `None` for text, code, mentions and line breaks.
    #[must_use]
    pub fn children(&self) -> Option<&[Inline]> {
        match self {
            Inline::Bold(c)
            | Inline::Italic(c)
            | Inline::Underline(c)
            | Inline::Strike(c)
            | Inline::Spoiler(c)
            | Inline::Link { children: c, .. }
            | Inline::Colour { children: c, .. } => Some(c),
            Inline::Text(_) | Inline::Code(_) | Inline::Mention(_) | Inline::LineBreak => None,
        }
    }

    /// [`Inline::children`], to change them.
    pub fn children_mut(&mut self) -> Option<&mut Vec<Inline>> {
        match self {
            Inline::Bold(c)
            | Inline::Italic(c)
            | Inline::Underline(c)
            | Inline::Strike(c)
            | Inline::Spoiler(c)
            | Inline::Link { children: c, .. }
            | Inline::Colour { children: c, .. } => Some(c),
            Inline::Text(_) | Inline::Code(_) | Inline::Mention(_) | Inline::LineBreak => None,
        }
    }
}

/// A 24-bit colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// `#rrggbb`, lower case.
    #[must_use]
    pub fn to_hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }

    /// Parses `#rrggbb` or `rrggbb` (case-insensitive); anything else is `None`.
    #[must_use]
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.strip_prefix('#').unwrap_or(s);
        if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let v = u32::from_str_radix(s, 16).ok()?;
        Some(Rgb((v >> 16) as u8, (v >> 8) as u8, v as u8))
    }
}

/// A mention: who is meant, and the text shown for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mention {
    /// What the reader sees (a nick, a display name, `@username`, `@room`).
    pub display: String,
    /// Who or what is mentioned.
    pub target: MentionTarget,
}

/// The thing a [`Mention`] refers to, independent of any syntax.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MentionTarget {
    /// One user on one network.
    User {
        /// The gateway's name for the network the user id belongs to.
        network: String,
        /// The user's id there: an IRC nick, a Matrix user id (`@alice:example.org`), or a
        /// Mattermost username (without `@`).
        user_id: String,
    },
    /// A channel reference such as Mattermost's `~town-square`.
    Channel {
        /// The gateway's name for the network.
        network: String,
        /// The channel's name on that network (without `~`).
        channel: String,
    },
    /// A mass ping: `@room`, `@channel`, `@all`, `@here`.
    Room,
}

/// Whether `url` may become a clickable link: its scheme is one that the Matrix spec allows
/// (`http`, `https`, `ftp`, `mailto`, `magnet`) and it has no whitespace or control character.
#[must_use]
pub fn is_safe_url(url: &str) -> bool {
    if url.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((scheme, rest)) = url.split_once(':') else {
        return false;
    };
    if rest.is_empty() {
        return false;
    }
    let scheme = scheme.to_ascii_lowercase();
    matches!(
        scheme.as_str(),
        "http" | "https" | "ftp" | "mailto" | "magnet"
    )
}

impl FormattedText {
    /// Builds a text from blocks and normalises it.
    #[must_use]
    pub fn new(blocks: Vec<Block>) -> Self {
        let mut t = FormattedText { blocks };
        t.normalize();
        t
    }

    /// Unformatted text: one paragraph, `\n` becoming line breaks.
    #[must_use]
    pub fn plain(text: &str) -> Self {
        Self::new(vec![Block::Paragraph(vec![Inline::Text(text.to_owned())])])
    }

    /// Whether there is nothing to show.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// A normalised copy.
    #[must_use]
    pub fn normalized(&self) -> Self {
        let mut t = self.clone();
        t.normalize();
        t
    }

    /// Puts the tree into normal form, in place:
    /// - text: NUL and control characters other than tab and line feed removed, CR LF and
    ///   lone CR turned into LF, and LF inside text split out as [`Inline::LineBreak`];
    /// - adjacent text merged, empty text and empty containers dropped, a container
    ///   directly inside one of its own kind flattened, adjacent equal containers merged;
    /// - a colour with neither foreground nor background replaced by its content;
    /// - a link with an unsafe URL (see [`is_safe_url`]) replaced by its content, a link
    ///   without text given its URL as text, links and mentions inside a link flattened
    ///   to their text;
    /// - a room mention written against a word (`x@room`, `@room0`) turned into text;
    /// - inline code on one line (LF becomes a space);
    /// - line breaks at the start or end of a paragraph dropped; a paragraph with nothing
    ///   visible (only whitespace) dropped; an empty quote or code block dropped;
    /// - a code block loses a language tag that is empty or has characters outside
    ///   `[A-Za-z0-9+#._-]`.
    ///
    /// Normalising twice changes nothing more.
    pub fn normalize(&mut self) {
        self.blocks = normalize_blocks(std::mem::take(&mut self.blocks));
    }

    /// The visible text, without formatting: paragraphs and blocks separated by a blank
    /// line, line breaks as `\n`, links as their text, mentions as their display text.
    #[must_use]
    pub fn to_plain_text(&self) -> String {
        let mut out = String::new();
        blocks_plain(&self.blocks, &mut out);
        out
    }
}

fn blocks_plain(blocks: &[Block], out: &mut String) {
    for (i, b) in blocks.iter().enumerate() {
        if i > 0 {
            out.push_str("\n\n");
        }
        match b {
            Block::Paragraph(inl) => inlines_plain(inl, out),
            Block::CodeBlock { code, .. } => out.push_str(code),
            Block::Quote(inner) => blocks_plain(inner, out),
        }
    }
}

/// Appends the visible text of inline content to `out` (see [`FormattedText::to_plain_text`]).
pub fn inlines_plain(inlines: &[Inline], out: &mut String) {
    for i in inlines {
        match i {
            Inline::Text(t) | Inline::Code(t) => out.push_str(t),
            Inline::Bold(c)
            | Inline::Italic(c)
            | Inline::Underline(c)
            | Inline::Strike(c)
            | Inline::Spoiler(c)
            | Inline::Link { children: c, .. }
            | Inline::Colour { children: c, .. } => inlines_plain(c, out),
            Inline::Mention(m) => out.push_str(&m.display),
            Inline::LineBreak => out.push('\n'),
        }
    }
}

/// Removes control characters other than tab and LF; CR LF and lone CR become LF.
fn clean_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push('\n');
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_ascii_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn clean_language(lang: Option<String>) -> Option<String> {
    let l = lang?;
    let l = l.trim();
    let ok = !l.is_empty()
        && l.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '#' | '.' | '_' | '-'));
    ok.then(|| l.to_owned())
}

fn normalize_blocks(blocks: Vec<Block>) -> Vec<Block> {
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        match b {
            Block::Paragraph(inl) => {
                let mut inl = normalize_inlines(inl, Ctx::default());
                while matches!(inl.first(), Some(Inline::LineBreak)) {
                    inl.remove(0);
                }
                while matches!(inl.last(), Some(Inline::LineBreak)) {
                    inl.pop();
                }
                if !inlines_blank(&inl) {
                    out.push(Block::Paragraph(inl));
                }
            }
            Block::CodeBlock { language, code } => {
                let code = clean_text(&code);
                if !code.is_empty() {
                    out.push(Block::CodeBlock {
                        language: clean_language(language),
                        code,
                    });
                }
            }
            Block::Quote(inner) => {
                let inner = normalize_blocks(inner);
                if !inner.is_empty() {
                    out.push(Block::Quote(inner));
                }
            }
        }
    }
    out
}

/// Whether inline content shows nothing but whitespace.
fn inlines_blank(inl: &[Inline]) -> bool {
    inl.iter().all(|i| match i {
        Inline::Text(t) => t.trim().is_empty(),
        Inline::LineBreak => true,
        Inline::Bold(c)
        | Inline::Italic(c)
        | Inline::Underline(c)
        | Inline::Strike(c)
        | Inline::Spoiler(c)
        | Inline::Colour { children: c, .. } => inlines_blank(c),
        Inline::Code(_) | Inline::Link { .. } | Inline::Mention(_) => false,
    })
}

#[derive(Default, Clone, Copy)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one flag per enclosing container kind"
)]
struct Ctx {
    bold: bool,
    italic: bool,
    underline: bool,
    strike: bool,
    spoiler: bool,
    link: bool,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Kind {
    Bold,
    Italic,
    Underline,
    Strike,
    Spoiler,
}

fn normalize_inlines(inlines: Vec<Inline>, ctx: Ctx) -> Vec<Inline> {
    let mut out: Vec<Inline> = Vec::with_capacity(inlines.len());
    for i in inlines {
        match i {
            Inline::Text(t) => {
                let t = clean_text(&t);
                for (n, part) in t.split('\n').enumerate() {
                    if n > 0 {
                        out.push(Inline::LineBreak);
                    }
                    push_text(&mut out, part);
                }
            }
            Inline::LineBreak => out.push(Inline::LineBreak),
            Inline::Code(c) => {
                let c = clean_text(&c).replace('\n', " ");
                if !c.is_empty() {
                    out.push(Inline::Code(c));
                }
            }
            Inline::Mention(m) => {
                let display = clean_text(&m.display).replace('\n', " ");
                if ctx.link {
                    push_text(&mut out, &display);
                } else if !display.is_empty() {
                    out.push(Inline::Mention(Mention {
                        display,
                        target: m.target,
                    }));
                }
            }
            Inline::Link { url, children } => {
                let url = url.trim().to_owned();
                if ctx.link || !is_safe_url(&url) {
                    let inner = normalize_inlines(children, ctx);
                    append_all(&mut out, inner);
                } else {
                    let inner_ctx = Ctx { link: true, ..ctx };
                    let mut inner = normalize_inlines(children, inner_ctx);
                    if inlines_plain_is_empty(&inner) {
                        inner = vec![Inline::Text(url.clone())];
                    }
                    push_merge(
                        &mut out,
                        Inline::Link {
                            url,
                            children: inner,
                        },
                    );
                }
            }
            Inline::Colour { fg, bg, children } => {
                let inner = normalize_inlines(children, ctx);
                if fg.is_none() && bg.is_none() {
                    append_all(&mut out, inner);
                } else if !inner.is_empty() {
                    push_merge(
                        &mut out,
                        Inline::Colour {
                            fg,
                            bg,
                            children: inner,
                        },
                    );
                }
            }
            Inline::Bold(c) => container(&mut out, Kind::Bold, c, ctx),
            Inline::Italic(c) => container(&mut out, Kind::Italic, c, ctx),
            Inline::Underline(c) => container(&mut out, Kind::Underline, c, ctx),
            Inline::Strike(c) => container(&mut out, Kind::Strike, c, ctx),
            Inline::Spoiler(c) => container(&mut out, Kind::Spoiler, c, ctx),
        }
    }
    unglue_room_mentions(out)
}

/// Whether `c` just before a mass-ping word (`@room`) makes it part of a longer word.
pub(crate) fn glues_before(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '@' | '.')
}

/// Whether `c` just after a mass-ping word makes it part of a longer word.
pub(crate) fn glues_after(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | ':')
}

/// A room mention written against a word (`x@room`, `@room0`, `@room@room`) reads as text
/// in every format, so it is text. Left to right, so that a mention turned into text counts
/// as text for the next one.
fn unglue_room_mentions(v: Vec<Inline>) -> Vec<Inline> {
    fn is_room(i: &Inline) -> bool {
        matches!(i, Inline::Mention(m) if m.target == MentionTarget::Room)
    }
    /// The text a node shows at its edge, for nodes that render as bare text.
    fn edge(i: Option<&Inline>, last: bool) -> Option<char> {
        let s = match i? {
            Inline::Text(t) => t.as_str(),
            Inline::Mention(m) if m.target == MentionTarget::Room => m.display.as_str(),
            _ => return None,
        };
        if last {
            s.chars().next_back()
        } else {
            s.chars().next()
        }
    }
    if !v.iter().any(is_room) {
        return v;
    }
    let mut out: Vec<Inline> = Vec::with_capacity(v.len());
    let mut it = v.into_iter().peekable();
    while let Some(node) = it.next() {
        if is_room(&node) {
            let before = edge(out.last(), true).is_some_and(glues_before);
            let after = edge(it.peek(), false).is_some_and(glues_after);
            if (before || after)
                && let Inline::Mention(m) = node
            {
                push_text(&mut out, &m.display);
                continue;
            }
        }
        match node {
            Inline::Text(t) => push_text(&mut out, &t),
            other => out.push(other),
        }
    }
    out
}

fn inlines_plain_is_empty(inl: &[Inline]) -> bool {
    let mut s = String::new();
    inlines_plain(inl, &mut s);
    s.trim().is_empty()
}

fn container(out: &mut Vec<Inline>, kind: Kind, children: Vec<Inline>, ctx: Ctx) {
    let already = match kind {
        Kind::Bold => ctx.bold,
        Kind::Italic => ctx.italic,
        Kind::Underline => ctx.underline,
        Kind::Strike => ctx.strike,
        Kind::Spoiler => ctx.spoiler,
    };
    let mut inner_ctx = ctx;
    match kind {
        Kind::Bold => inner_ctx.bold = true,
        Kind::Italic => inner_ctx.italic = true,
        Kind::Underline => inner_ctx.underline = true,
        Kind::Strike => inner_ctx.strike = true,
        Kind::Spoiler => inner_ctx.spoiler = true,
    }
    let inner = normalize_inlines(children, inner_ctx);
    if already {
        append_all(out, inner);
        return;
    }
    if inner.is_empty() {
        return;
    }
    let node = match kind {
        Kind::Bold => Inline::Bold(inner),
        Kind::Italic => Inline::Italic(inner),
        Kind::Underline => Inline::Underline(inner),
        Kind::Strike => Inline::Strike(inner),
        Kind::Spoiler => Inline::Spoiler(inner),
    };
    push_merge(out, node);
}

fn push_text(out: &mut Vec<Inline>, s: &str) {
    if s.is_empty() {
        return;
    }
    if let Some(Inline::Text(prev)) = out.last_mut() {
        prev.push_str(s);
    } else {
        out.push(Inline::Text(s.to_owned()));
    }
}

/// Appends already-normal nodes, merging at the seam.
fn append_all(out: &mut Vec<Inline>, items: Vec<Inline>) {
    for i in items {
        match i {
            Inline::Text(t) => push_text(out, &t),
            other => push_merge(out, other),
        }
    }
}

/// Appends `b` to `a` (both normal), keeping the result normal.
fn merge_children(a: &mut Vec<Inline>, b: Vec<Inline>) {
    append_all(a, b);
    *a = unglue_room_mentions(std::mem::take(a));
}

/// Pushes an already-normal node, merging it into the previous one when they are the same
/// kind of container with the same attributes.
fn push_merge(out: &mut Vec<Inline>, node: Inline) {
    let Some(prev) = out.last_mut() else {
        out.push(node);
        return;
    };
    match (prev, node) {
        (Inline::Bold(a), Inline::Bold(b))
        | (Inline::Italic(a), Inline::Italic(b))
        | (Inline::Underline(a), Inline::Underline(b))
        | (Inline::Strike(a), Inline::Strike(b))
        | (Inline::Spoiler(a), Inline::Spoiler(b)) => merge_children(a, b),
        (
            Inline::Link {
                url: ua,
                children: a,
            },
            Inline::Link {
                url: ub,
                children: b,
            },
        ) if *ua == ub => merge_children(a, b),
        (
            Inline::Colour {
                fg: fa,
                bg: ba,
                children: a,
            },
            Inline::Colour {
                fg: fb,
                bg: bb,
                children: b,
            },
        ) if *fa == fb && *ba == bb => merge_children(a, b),
        (_, node) => out.push(node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Inline {
        Inline::Text(s.to_owned())
    }

    #[test]
    fn merges_text_and_drops_empty() {
        let f = FormattedText::new(vec![Block::Paragraph(vec![
            t("a"),
            t(""),
            Inline::Bold(vec![]),
            t("b"),
        ])]);
        assert_eq!(f.blocks, vec![Block::Paragraph(vec![t("ab")])]);
    }

    #[test]
    fn flattens_nested_same_kind_and_merges_neighbours() {
        let f = FormattedText::new(vec![Block::Paragraph(vec![
            Inline::Bold(vec![Inline::Bold(vec![t("a")])]),
            Inline::Bold(vec![t("b")]),
        ])]);
        assert_eq!(
            f.blocks,
            vec![Block::Paragraph(vec![Inline::Bold(vec![t("ab")])])]
        );
    }

    #[test]
    fn newline_becomes_line_break_and_controls_go() {
        let f = FormattedText::plain("a\r\nb\u{0}\u{2}c\rd\n");
        assert_eq!(
            f.blocks,
            vec![Block::Paragraph(vec![
                t("a"),
                Inline::LineBreak,
                t("bc"),
                Inline::LineBreak,
                t("d"),
            ])]
        );
    }

    #[test]
    fn unsafe_links_lose_their_url() {
        let f = FormattedText::new(vec![Block::Paragraph(vec![Inline::Link {
            url: "javascript:alert(1)".into(),
            children: vec![t("x")],
        }])]);
        assert_eq!(f.blocks, vec![Block::Paragraph(vec![t("x")])]);
    }

    #[test]
    fn blank_paragraphs_and_empty_code_go() {
        let f = FormattedText::new(vec![
            Block::Paragraph(vec![t("  "), Inline::LineBreak]),
            Block::CodeBlock {
                language: Some("bad lang".into()),
                code: String::new(),
            },
            Block::Quote(vec![]),
        ]);
        assert!(f.is_empty());
    }

    #[test]
    fn rgb_hex() {
        assert_eq!(Rgb::from_hex("#FF0080"), Some(Rgb(255, 0, 128)));
        assert_eq!(Rgb(1, 2, 3).to_hex(), "#010203");
        assert_eq!(Rgb::from_hex("#fff"), None);
        assert_eq!(Rgb::from_hex("+12345"), None);
    }

    #[test]
    fn plain_text_of_unicode() {
        let s = "héllo 👋🏽 שלום 漢字 e\u{301}";
        assert_eq!(FormattedText::plain(s).to_plain_text(), s);
    }
}
