//! Mattermost Markdown to and from the model.
//!
//! Owns: parsing Mattermost's CommonMark flavour with pulldown-cmark (fenced code,
//! `~~strike~~`, autolinks, tables, `@username` and mass-ping mentions, `~channel`
//! references), and rendering the model to Markdown in which every literal character stays
//! literal.
//! Must not: let text from another network become Markdown syntax, a ping or a channel
//! link, recurse over input nesting, or panic on any input.
//!
//! Escaping: `` \ ` * _ [ ] < ~ | `` are backslash-escaped everywhere, `&` where it would
//! start a character reference (`&amp;`), `# > + - =` and `1.`/`1)` at the start of a line,
//! and spaces or
//! tabs at the start or end of a line are written as character references so that they
//! survive. Mattermost finds mentions and channel links in the raw text whatever the
//! escaping (its server matches `@name` after any non-word character, backslash included),
//! so a literal `@name` or `~name` gets a U+2060 WORD JOINER after the sigil: invisible,
//! not a line-break opportunity, ignored by screen readers, and it stops the match.
//! Mattermost has no underline, colour or spoiler: underline renders as italic, colour as
//! plain text, a spoiler as `||text||`.
//!
//! Known limits: Mattermost's emoticon shortcodes (`:smile:`) are not Markdown, so no escape
//! stops them; and an inline code span that needs three or more backticks, rendered at the
//! very start of a line, reads as a code fence. Emphasis whose text begins or ends with
//! punctuation and touches a letter outside (`**(a)**b`, common in CJK: `**「引用」**です`)
//! cannot be written in CommonMark; those edge characters move outside the delimiters.

use std::fmt::Write as _;

use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

use super::build::{Builder, InlineKind};
use super::model::{Block, FormattedText, Inline, Mention, MentionTarget, inlines_plain};

/// The default network name that [`parse`] gives Mattermost mentions.
pub const MATTERMOST_NETWORK: &str = "mattermost";

/// U+2060 WORD JOINER, the same character as [`super::mention::ANTI_PING`]: see the module
/// documentation.
pub const WORD_JOINER: char = super::mention::ANTI_PING;

/// Parses a Mattermost message; mentions get the network [`MATTERMOST_NETWORK`].
#[must_use]
pub fn parse(input: &str) -> FormattedText {
    parse_for_network(input, MATTERMOST_NETWORK)
}

/// Parses a Mattermost message; mentions get the network `network`.
///
/// Soft and hard line breaks both become line breaks (Mattermost shows every newline).
/// Raw HTML is shown as text, as Mattermost does. Headings become bold paragraphs, list
/// items paragraphs with a bullet or number, table rows paragraphs with cells separated by
/// ` | `, images links to the image.
#[must_use]
pub fn parse_for_network(input: &str, network: &str) -> FormattedText {
    let opts = Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TABLES;
    let mut b = Builder::new();
    let mut lists: Vec<Option<u64>> = Vec::new();
    let mut code: Option<(Option<String>, String)> = None;
    let mut cells: usize = 0;
    // pulldown-cmark splits text at possible delimiters (`~town-square` comes as `~` and
    // `town-square`), so consecutive text is joined before looking for mentions.
    let mut pending = String::new();
    for ev in Parser::new_ext(input, opts) {
        if let Event::Text(t) = &ev
            && code.is_none()
        {
            pending.push_str(t);
            continue;
        }
        if !pending.is_empty() {
            text_with_mentions(&mut b, &pending, network);
            pending.clear();
        }
        if let Some((_, buf)) = code.as_mut() {
            match ev {
                Event::Text(t) => buf.push_str(&t),
                Event::End(TagEnd::CodeBlock) => {
                    if let Some((lang, mut text)) = code.take() {
                        if text.ends_with('\n') {
                            text.pop();
                        }
                        b.code_block(lang, text);
                    }
                }
                _ => {}
            }
            continue;
        }
        match ev {
            Event::Start(tag) => match tag {
                Tag::Heading { .. } => {
                    b.block_boundary();
                    b.start_inline(InlineKind::Bold);
                }
                Tag::BlockQuote(_) => b.start_quote(),
                Tag::CodeBlock(kind) => {
                    let lang = match kind {
                        CodeBlockKind::Fenced(info) => {
                            info.split_whitespace().next().map(str::to_owned)
                        }
                        CodeBlockKind::Indented => None,
                    };
                    code = Some((lang, String::new()));
                }
                Tag::List(start) => {
                    b.block_boundary();
                    lists.push(start);
                }
                Tag::Item => {
                    b.block_boundary();
                    let depth = lists.len().saturating_sub(1).min(8);
                    let bullet = match lists.last_mut() {
                        Some(Some(n)) => {
                            let s = format!("{n}. ");
                            *n = n.saturating_add(1);
                            s
                        }
                        _ => "• ".to_owned(),
                    };
                    b.set_prefix(format!("{}{bullet}", "  ".repeat(depth)));
                }
                Tag::TableHead | Tag::TableRow => {
                    b.block_boundary();
                    cells = 0;
                }
                Tag::TableCell => {
                    if cells > 0 {
                        b.text(" | ");
                    }
                    cells += 1;
                }
                Tag::Emphasis => b.start_inline(InlineKind::Italic),
                Tag::Strong => b.start_inline(InlineKind::Bold),
                Tag::Strikethrough => b.start_inline(InlineKind::Strike),
                Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. } => {
                    b.start_inline(InlineKind::Link(dest_url.to_string()));
                }
                _ => b.block_boundary(),
            },
            Event::End(end) => match end {
                TagEnd::Heading(_) => {
                    b.end_inline();
                    b.block_boundary();
                }
                TagEnd::BlockQuote(_) => b.end_quote(),
                TagEnd::List(_) => {
                    lists.pop();
                    b.block_boundary();
                }
                TagEnd::Emphasis
                | TagEnd::Strong
                | TagEnd::Strikethrough
                | TagEnd::Link
                | TagEnd::Image => b.end_inline(),
                TagEnd::TableCell => {}
                _ => b.block_boundary(),
            },
            Event::Text(t) => text_with_mentions(&mut b, &t, network),
            Event::Code(c) | Event::InlineMath(c) | Event::DisplayMath(c) => {
                b.push(Inline::Code(c.to_string()));
            }
            Event::Html(h) | Event::InlineHtml(h) => b.text(&h),
            Event::FootnoteReference(f) => b.text(&format!("[^{f}]")),
            Event::SoftBreak | Event::HardBreak => b.line_break(),
            Event::Rule => {
                b.block_boundary();
                b.text("---");
                b.block_boundary();
            }
            Event::TaskListMarker(done) => b.text(if done { "[x] " } else { "[ ] " }),
        }
    }
    if !pending.is_empty() {
        text_with_mentions(&mut b, &pending, network);
    }
    b.finish()
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

/// Pushes text, turning `@name`, `@channel`/`@all`/`@here` and `~channel` into mentions.
fn text_with_mentions(b: &mut Builder, text: &str, network: &str) {
    if b.in_literal() {
        b.text(text);
        return;
    }
    let mut plain_start = 0;
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        let sigil = bytes[i];
        // `i` is a char boundary here: the sigils are ASCII.
        let prev_ok = || {
            text[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || is_name_char(c) || c == '@' || c == '~'))
        };
        if (sigil == b'@' || sigil == b'~') && prev_ok() {
            let rest = &text[i + 1..];
            let mut len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
            // A trailing dot or dash ends the sentence, not the name.
            while len > 0 && matches!(rest.as_bytes()[len - 1], b'.' | b'-' | b'_') {
                len -= 1;
            }
            let name = &rest[..len];
            if name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
                b.text(&text[plain_start..i]);
                let display = text[i..=i + len].to_owned();
                let lower = name.to_ascii_lowercase();
                let target = if sigil == b'~' {
                    MentionTarget::Channel {
                        network: network.to_owned(),
                        channel: lower,
                    }
                } else if matches!(lower.as_str(), "channel" | "all" | "here") {
                    MentionTarget::Room
                } else {
                    MentionTarget::User {
                        network: network.to_owned(),
                        user_id: lower,
                    }
                };
                b.push(Inline::Mention(Mention { display, target }));
                i += 1 + len;
                plain_start = i;
                continue;
            }
        }
        i += 1;
    }
    b.text(&text[plain_start..]);
}

/// Renders the model as Mattermost Markdown (see the module documentation for escaping).
///
/// User mentions render as `@user_id` when `user_id` is a Mattermost username, channel
/// references as `~channel`, room mentions as `@here`, `@all` or `@channel`; any other
/// mention renders as its (escaped) display text. Call
/// [`super::mention::rewrite_mentions`] first so that mentions are Mattermost ones.
#[must_use]
pub fn render(text: &FormattedText) -> String {
    let text = text.normalized();
    let mut lines = Vec::new();
    render_blocks(&text.blocks, &mut lines);
    lines.join("\n")
}

fn render_blocks(blocks: &[Block], lines: &mut Vec<String>) {
    for (n, b) in blocks.iter().enumerate() {
        if n > 0 {
            lines.push(String::new());
        }
        match b {
            Block::Paragraph(inl) => {
                let mut s = String::new();
                render_inlines(inl, &mut s);
                for l in s.split('\n') {
                    lines.push(fix_line(l));
                }
            }
            Block::CodeBlock { language, code } => {
                let fence = "`".repeat(longest_run(code, '`').max(2) + 1);
                lines.push(format!("{fence}{}", language.as_deref().unwrap_or("")));
                lines.extend(code.split('\n').map(str::to_owned));
                lines.push(fence);
            }
            Block::Quote(inner) => {
                let mut sub = Vec::new();
                render_blocks(inner, &mut sub);
                for l in sub {
                    if l.is_empty() {
                        lines.push(">".to_owned());
                    } else {
                        lines.push(format!("> {l}"));
                    }
                }
            }
        }
    }
}

fn longest_run(s: &str, ch: char) -> usize {
    let mut best = 0;
    let mut cur = 0;
    for c in s.chars() {
        if c == ch {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 0;
        }
    }
    best
}

/// Line-level escaping of one rendered paragraph line: block syntax at its start, and
/// leading or trailing whitespace (which Markdown would strip).
fn fix_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let mut body = line;
    if let Some(c) = body.chars().next().filter(|c| *c == ' ' || *c == '\t') {
        out.push_str(if c == ' ' { "&#32;" } else { "&#9;" });
        body = &body[1..];
    } else if body.starts_with(['#', '>', '+', '-', '=']) {
        out.push('\\');
    } else {
        // `1.` or `1)` would start an ordered list.
        let digits = body.bytes().take_while(u8::is_ascii_digit).count();
        if (1..=9).contains(&digits) && matches!(body.as_bytes().get(digits), Some(b'.' | b')')) {
            out.push_str(&body[..digits]);
            out.push('\\');
            body = &body[digits..];
        }
    }
    match body.chars().next_back().filter(|c| *c == ' ' || *c == '\t') {
        Some(c) if !body.is_empty() => {
            out.push_str(&body[..body.len() - 1]);
            out.push_str(if c == ' ' { "&#32;" } else { "&#9;" });
        }
        _ => out.push_str(body),
    }
    out
}

/// Escapes literal text (see the module documentation).
fn escape_into(s: &str, out: &mut String) {
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '|' => {
                out.push('\\');
                out.push(c);
            }
            '~' | '@' => {
                if c == '~' {
                    out.push('\\');
                }
                out.push(c);
                if chars.peek().is_some_and(char::is_ascii_alphanumeric) {
                    out.push(WORD_JOINER);
                }
            }
            '&' => {
                // Only `&name;` / `&#123;` would be read as a character reference.
                let rest: String = chars.clone().take(33).collect();
                let name_len = rest
                    .find(|n: char| !(n.is_ascii_alphanumeric() || n == '#'))
                    .unwrap_or(rest.len());
                if name_len > 0 && rest[name_len..].starts_with(';') {
                    out.push('\\');
                }
                out.push('&');
            }
            c => out.push(c),
        }
    }
}

fn is_username(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(is_name_char)
}

/// Renders emphasis with its delimiters hugging the content (CommonMark does not open
/// emphasis before whitespace), moving outer whitespace outside the delimiters.
fn delimited(delim: &str, children: &[Inline], out: &mut String) {
    let mut inner = String::new();
    render_inlines(children, &mut inner);
    let trimmed_start = inner.trim_start_matches([' ', '\t']);
    let lead = &inner[..inner.len() - trimmed_start.len()];
    let core = trimmed_start.trim_end_matches([' ', '\t']);
    let trail = &trimmed_start[core.len()..];
    out.push_str(lead);
    if !core.is_empty() {
        out.push_str(delim);
        out.push_str(core);
        out.push_str(delim);
    }
    out.push_str(trail);
}

/// CommonMark's "punctuation" for flanking: anything neither alphanumeric nor whitespace
/// (Unicode punctuation and symbols, emoji included).
fn is_punct(c: char) -> bool {
    !c.is_alphanumeric() && !c.is_whitespace()
}

fn emphasis_children(i: &mut Inline) -> Option<&mut Vec<Inline>> {
    match i {
        Inline::Bold(c)
        | Inline::Italic(c)
        | Inline::Underline(c)
        | Inline::Strike(c)
        | Inline::Colour { children: c, .. } => Some(c),
        _ => None,
    }
}

/// Removes and returns the punctuation character at the front or back of the text at that
/// edge of an emphasis, when the edge is text (not code, a link or a mention).
fn take_punct_edge(node: &mut Inline, front: bool) -> Option<char> {
    if let Inline::Text(t) = node {
        let c = if front {
            t.chars().next()?
        } else {
            t.chars().next_back()?
        };
        if !is_punct(c) {
            return None;
        }
        if front {
            t.remove(0);
        } else {
            t.pop();
        }
        return Some(c);
    }
    let children = emphasis_children(node)?;
    let edge = if front {
        children.first_mut()?
    } else {
        children.last_mut()?
    };
    take_punct_edge(edge, front)
}

fn is_emphasis(i: &Inline) -> bool {
    matches!(
        i,
        Inline::Bold(_) | Inline::Italic(_) | Inline::Underline(_) | Inline::Strike(_)
    )
}

/// Emphasis whose text ends with punctuation cannot close before a letter (`**(a)**b`), nor
/// open after one when it starts with punctuation: such edge characters move outside the
/// delimiters, where they look the same (only their own emphasis is lost).
fn fix_flanking(inl: &[Inline]) -> Vec<Inline> {
    let mut v = inl.to_vec();
    for k in 0..v.len() {
        if !is_emphasis(&v[k]) {
            continue;
        }
        let next_alnum =
            matches!(v.get(k + 1), Some(Inline::Text(t)) if t.starts_with(char::is_alphanumeric));
        if next_alnum {
            let mut moved = String::new();
            while let Some(c) = take_punct_edge(&mut v[k], false) {
                moved.insert(0, c);
            }
            if let Some(Inline::Text(t)) = v.get_mut(k + 1) {
                t.insert_str(0, &moved);
            }
        }
        let prev_alnum = k > 0
            && matches!(v.get(k - 1), Some(Inline::Text(t)) if t.ends_with(char::is_alphanumeric));
        if prev_alnum {
            let mut moved = String::new();
            while let Some(c) = take_punct_edge(&mut v[k], true) {
                moved.push(c);
            }
            if let Some(Inline::Text(t)) = v.get_mut(k - 1) {
                t.push_str(&moved);
            }
        }
    }
    v
}

fn render_inlines(inl: &[Inline], out: &mut String) {
    let fixed;
    let inl = if inl.iter().any(is_emphasis) {
        fixed = fix_flanking(inl);
        fixed.as_slice()
    } else {
        inl
    };
    let mut k = 0;
    while k < inl.len() {
        match &inl[k] {
            Inline::Text(t) => escape_into(t, out),
            Inline::LineBreak => {
                // A run of breaks is a paragraph gap: Markdown cannot show more than one.
                let mut run = 1;
                while matches!(inl.get(k + run), Some(Inline::LineBreak)) {
                    run += 1;
                }
                out.push_str(if run > 1 { "\n\n" } else { "\n" });
                k += run;
                continue;
            }
            Inline::Code(c) => {
                let ticks = "`".repeat(longest_run(c, '`') + 1);
                let pad = c.starts_with('`') || c.ends_with('`') || c.trim().is_empty();
                let pad = if pad { " " } else { "" };
                let _ = write!(out, "{ticks}{pad}{c}{pad}{ticks}");
            }
            Inline::Bold(c) => delimited("**", c, out),
            Inline::Italic(c) | Inline::Underline(c) => delimited("*", c, out),
            Inline::Strike(c) => delimited("~~", c, out),
            Inline::Spoiler(c) => {
                out.push_str("\\|\\|");
                render_inlines(c, out);
                out.push_str("\\|\\|");
            }
            Inline::Colour { children, .. } => render_inlines(children, out),
            Inline::Link { url, children } => {
                let mut shown = String::new();
                inlines_plain(children, &mut shown);
                let simple_url = !url.contains(['<', '>', '\\']);
                if shown == *url && simple_url {
                    let _ = write!(out, "<{url}>");
                } else {
                    out.push('[');
                    render_inlines(children, out);
                    out.push_str("](<");
                    for ch in url.chars() {
                        if matches!(ch, '<' | '>' | '\\') {
                            out.push('\\');
                        }
                        out.push(ch);
                    }
                    out.push_str(">)");
                }
            }
            Inline::Mention(m) => match &m.target {
                MentionTarget::User { user_id, .. } if is_username(user_id) => {
                    out.push('@');
                    out.push_str(user_id);
                }
                MentionTarget::Channel { channel, .. } if is_username(channel) => {
                    out.push('~');
                    out.push_str(channel);
                }
                MentionTarget::Room => {
                    let d = m.display.to_ascii_lowercase();
                    out.push_str(match d.as_str() {
                        "@here" => "@here",
                        "@all" => "@all",
                        _ => "@channel",
                    });
                }
                _ => escape_into(&m.display, out),
            },
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Inline {
        Inline::Text(s.to_owned())
    }
    fn para(v: Vec<Inline>) -> FormattedText {
        FormattedText::new(vec![Block::Paragraph(v)])
    }
    fn user(display: &str, id: &str) -> Inline {
        Inline::Mention(Mention {
            display: display.into(),
            target: MentionTarget::User {
                network: MATTERMOST_NETWORK.into(),
                user_id: id.into(),
            },
        })
    }

    #[test]
    fn parse_table() {
        let cases: Vec<(&str, FormattedText)> = vec![
            (
                "**b** *i* _i_ ~~s~~",
                para(vec![
                    Inline::Bold(vec![t("b")]),
                    t(" "),
                    Inline::Italic(vec![t("i")]),
                    t(" "),
                    Inline::Italic(vec![t("i")]),
                    t(" "),
                    Inline::Strike(vec![t("s")]),
                ]),
            ),
            ("`a<b>`", para(vec![Inline::Code("a<b>".into())])),
            (
                "```rust\nfn a() {}\n```",
                FormattedText::new(vec![Block::CodeBlock {
                    language: Some("rust".into()),
                    code: "fn a() {}".into(),
                }]),
            ),
            (
                "[x](https://x.org) <https://y.org>",
                para(vec![
                    Inline::Link {
                        url: "https://x.org".into(),
                        children: vec![t("x")],
                    },
                    t(" "),
                    Inline::Link {
                        url: "https://y.org".into(),
                        children: vec![t("https://y.org")],
                    },
                ]),
            ),
            (
                "hi @Bob.Smith. and ~town-square",
                para(vec![
                    t("hi "),
                    user("@Bob.Smith", "bob.smith"),
                    t(". and "),
                    Inline::Mention(Mention {
                        display: "~town-square".into(),
                        target: MentionTarget::Channel {
                            network: MATTERMOST_NETWORK.into(),
                            channel: "town-square".into(),
                        },
                    }),
                ]),
            ),
            (
                "@here now",
                para(vec![
                    Inline::Mention(Mention {
                        display: "@here".into(),
                        target: MentionTarget::Room,
                    }),
                    t(" now"),
                ]),
            ),
            (
                "mail bob@example.com",
                para(vec![t("mail bob@example.com")]),
            ),
            ("`@bob`", para(vec![Inline::Code("@bob".into())])),
            ("<b>not html</b>", para(vec![t("<b>not html</b>")])),
            (
                "> quoted\n\nafter",
                FormattedText::new(vec![
                    Block::Quote(vec![Block::Paragraph(vec![t("quoted")])]),
                    Block::Paragraph(vec![t("after")]),
                ]),
            ),
            ("a\nb", para(vec![t("a"), Inline::LineBreak, t("b")])),
            ("# Head", para(vec![Inline::Bold(vec![t("Head")])])),
            (
                "- a\n- b",
                FormattedText::new(vec![
                    Block::Paragraph(vec![t("• a")]),
                    Block::Paragraph(vec![t("• b")]),
                ]),
            ),
            ("[x](javascript:alert(1))", para(vec![t("x")])),
            (
                "👋🏽 **שלום** 漢字 e\u{301}",
                para(vec![
                    t("👋🏽 "),
                    Inline::Bold(vec![t("שלום")]),
                    t(" 漢字 e\u{301}"),
                ]),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), want, "input {input:?}");
        }
    }

    #[test]
    fn render_literal_text_table() {
        let wj = WORD_JOINER;
        let cases: Vec<(&str, String)> = vec![
            ("2*3*4", "2\\*3\\*4".into()),
            ("_init_", "\\_init\\_".into()),
            ("# not a heading", "\\# not a heading".into()),
            ("<b>", "\\<b>".into()),
            ("1. not a list", "1\\. not a list".into()),
            ("- not a list", "\\- not a list".into()),
            ("~~no~~", format!("\\~\\~{wj}no\\~\\~")),
            ("AT&T &amp;", "AT&T \\&amp;".into()),
            ("  indented", "&#32; indented".into()),
            ("trailing ", "trailing&#32;".into()),
            ("hi @bob", format!("hi @{wj}bob")),
            ("a | b", "a \\| b".into()),
            ("C:\\path", "C:\\\\path".into()),
            ("👋🏽 שלום 漢字 e\u{301}", "👋🏽 שלום 漢字 e\u{301}".into()),
        ];
        for (input, want) in cases {
            let md = render(&FormattedText::plain(input));
            assert_eq!(md, want, "input {input:?}");
            let back = parse(&md).to_plain_text().replace(wj, "");
            assert_eq!(back, input, "re-parse of {md:?}");
        }
    }

    #[test]
    fn render_formatting_table() {
        let cases: Vec<(FormattedText, &str)> = vec![
            (
                para(vec![Inline::Bold(vec![t(" b ")]), t("x")]),
                "&#32;**b** x",
            ),
            (
                para(vec![
                    Inline::Italic(vec![t("i")]),
                    Inline::Strike(vec![t("s")]),
                ]),
                "*i*~~s~~",
            ),
            // Punctuation at an edge that touches a letter moves outside the delimiters.
            (para(vec![Inline::Bold(vec![t("(a)")]), t("b")]), "**(a**)b"),
            (
                para(vec![
                    t("x"),
                    Inline::Bold(vec![Inline::Italic(vec![t("(a)")])]),
                    t("b"),
                ]),
                "x(***a***)b",
            ),
            (
                para(vec![Inline::Bold(vec![t("「引用」")]), t("です")]),
                "**「引用**」です",
            ),
            (para(vec![Inline::Bold(vec![t("!!")]), t("b")]), "!!b"),
            (
                para(vec![Inline::Bold(vec![t("ok👍")]), t(" fine")]),
                "**ok👍** fine",
            ),
            (para(vec![Inline::Code("a`b".into())]), "``a`b``"),
            (
                para(vec![Inline::Link {
                    url: "https://x.org/a_(b)".into(),
                    children: vec![t("x*")],
                }]),
                "[x\\*](<https://x.org/a_(b)>)",
            ),
            (
                para(vec![Inline::Link {
                    url: "https://x.org".into(),
                    children: vec![t("https://x.org")],
                }]),
                "<https://x.org>",
            ),
            (
                para(vec![
                    user("@bob", "bob"),
                    t(" "),
                    user("Alice", "@alice:matrix.org"),
                ]),
                "@bob Alice",
            ),
            (
                FormattedText::new(vec![Block::CodeBlock {
                    language: Some("rust".into()),
                    code: "```\nx".into(),
                }]),
                "````rust\n```\nx\n````",
            ),
            (
                FormattedText::new(vec![Block::Quote(vec![
                    Block::Paragraph(vec![t("q")]),
                    Block::Paragraph(vec![t("r")]),
                ])]),
                "> q\n>\n> r",
            ),
            (
                para(vec![Inline::Mention(Mention {
                    display: "@room".into(),
                    target: MentionTarget::Room,
                })]),
                "@channel",
            ),
        ];
        for (model, want) in cases {
            assert_eq!(render(&model), want, "{model:?}");
        }
    }

    #[test]
    fn punctuation_edges_still_format() {
        for (model, plain) in [
            (para(vec![Inline::Bold(vec![t("(a)")]), t("b")]), "(a)b"),
            (
                para(vec![t("x"), Inline::Italic(vec![t("(a)")]), t("b")]),
                "x(a)b",
            ),
            (
                para(vec![Inline::Bold(vec![t("「引用」")]), t("です")]),
                "「引用」です",
            ),
            (para(vec![Inline::Strike(vec![t(".x.")]), t("y")]), ".x.y"),
        ] {
            let md = render(&model);
            let back = parse(&md);
            assert_eq!(back.to_plain_text(), plain, "{md}");
            assert!(
                matches!(&back.blocks[..], [Block::Paragraph(v)] if v.iter().any(|i| matches!(i, Inline::Bold(_) | Inline::Italic(_) | Inline::Strike(_)))),
                "{md} lost its formatting"
            );
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let quotes = ">".repeat(20_000) + " q";
        assert_eq!(parse(&quotes).to_plain_text(), "q");
        let emphasis = "*_".repeat(5_000) + "x" + "_*".repeat(5_000).as_str();
        // pulldown-cmark caps emphasis nesting itself; what matters is no overflow.
        assert!(parse(&emphasis).to_plain_text().contains('x'));
        let lists = "- ".repeat(5_000) + "x";
        assert!(parse(&lists).to_plain_text().ends_with('x'));
        let links = "[".repeat(5_000) + "x" + "](https://a.org)".repeat(5_000).as_str();
        assert!(parse(&links).to_plain_text().contains('x'));
    }

    #[test]
    fn formatting_round_trips() {
        for md in [
            "**b** *i* ~~s~~ `c`",
            "> q\n\n```rust\nx\n```",
            "[x](<https://x.org>) @bob",
        ] {
            let once = parse(md);
            assert_eq!(parse(&render(&once)), once, "{md}");
        }
    }
}
