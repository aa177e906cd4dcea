//! Matrix `org.matrix.custom.html`: `formatted_body` to and from the model.
//!
//! Owns: parsing `formatted_body` with html5ever (never regex), stripping `<mx-reply>`,
//! reading user pills (`https://matrix.to/#/@user:server`), rendering the model to
//! `formatted_body` plus the plain `body`, and the spec's allow-list of tags and attributes.
//! Must not: emit any tag or attribute outside [`ALLOWED_TAGS`] / [`is_allowed_attribute`],
//! leave any text unescaped, recurse over input nesting, or panic on any input.

use std::cell::Ref;
use std::fmt::Write as _;

use html5ever::tendril::TendrilSink;
use html5ever::{LocalName, Namespace, ParseOpts, QualName, parse_fragment};
use markup5ever_rcdom::{Handle, NodeData, RcDom};

use super::build::{Builder, InlineKind};
use super::model::{
    Block, FormattedText, Inline, Mention, MentionTarget, Rgb, glues_after, glues_before,
    is_safe_url,
};

/// The default network name that [`parse`] gives Matrix user mentions.
pub const MATRIX_NETWORK: &str = "matrix";

/// Tags the Matrix spec (client-server API, `m.room.message` `msgtype` formats) allows in
/// `formatted_body`. [`render`] emits only a subset: `p br strong em u del code pre
/// blockquote a span`.
pub const ALLOWED_TAGS: &[&str] = &[
    "font",
    "del",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "p",
    "a",
    "ul",
    "ol",
    "sup",
    "sub",
    "li",
    "b",
    "i",
    "u",
    "strong",
    "em",
    "s",
    "code",
    "hr",
    "br",
    "div",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "caption",
    "pre",
    "span",
    "img",
    "details",
    "summary",
];

/// Whether the Matrix spec allows attribute `attr` on tag `tag`.
#[must_use]
pub fn is_allowed_attribute(tag: &str, attr: &str) -> bool {
    matches!(
        (tag, attr),
        ("font", "data-mx-bg-color" | "data-mx-color" | "color")
            | (
                "span",
                "data-mx-bg-color" | "data-mx-color" | "data-mx-spoiler" | "data-mx-maths"
            )
            | ("a", "target" | "href")
            | ("img", "width" | "height" | "alt" | "title" | "src")
            | ("ol", "start")
            | ("code", "class")
            | ("div", "data-mx-maths")
    )
}

/// A Matrix message body: `body` is always there, `formatted_body` only when needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixBody {
    /// Plain-text fallback.
    pub body: String,
    /// `org.matrix.custom.html`; `None` when the text has no formatting at all.
    pub formatted_body: Option<String>,
}

/// Parses a `formatted_body`; user pills get the network [`MATRIX_NETWORK`].
#[must_use]
pub fn parse(formatted_body: &str) -> FormattedText {
    parse_for_network(formatted_body, MATRIX_NETWORK)
}

/// Parses a `formatted_body`; user pills get the network `network`.
///
/// Tags outside the allow-list are dropped but their text kept (except `script`, `style`
/// and the like, dropped whole); `<mx-reply>` is dropped whole; a link whose scheme is not
/// allowed keeps only its text. Headings become bold paragraphs, list items paragraphs
/// with a bullet or number, table rows paragraphs with cells separated by ` | `.
/// Whitespace: a run containing a newline becomes one space, or nothing next to a line or
/// block boundary; other whitespace is kept as is.
#[must_use]
pub fn parse_for_network(formatted_body: &str, network: &str) -> FormattedText {
    let html_ns = Namespace::from("http://www.w3.org/1999/xhtml");
    let context = QualName::new(None, html_ns, LocalName::from("body"));
    let dom = parse_fragment(
        RcDom::default(),
        ParseOpts::default(),
        context,
        vec![],
        false,
    )
    .one(formatted_body);
    let mut walker = Walker {
        b: Builder::new(),
        network,
        lists: Vec::new(),
        cells: Vec::new(),
    };
    // The fragment parser puts the content under an <html> element.
    let roots: Vec<Handle> = dom.document.children.borrow().clone();
    for r in roots {
        walker.walk(&r);
    }
    let mut text = walker.b.finish();
    // After merging, so that `@ro<span>om</span>` is found as the text it shows.
    for b in &mut text.blocks {
        room_mentions_in_block(b);
    }
    text.normalize();
    text
}

/// Turns `@room` written as a word in text (not in links or code) into a room mention.
fn room_mentions_in_block(b: &mut Block) {
    match b {
        Block::Paragraph(inl) => room_mentions_in_inlines(inl),
        Block::Quote(inner) => inner.iter_mut().for_each(room_mentions_in_block),
        Block::CodeBlock { .. } => {}
    }
}

fn room_mentions_in_inlines(inl: &mut Vec<Inline>) {
    let old = std::mem::take(inl);
    for node in old {
        match node {
            Inline::Text(t) => {
                let mut rest = t.as_str();
                while let Some(pos) = find_word(rest, "@room") {
                    inl.push(Inline::Text(rest[..pos].to_owned()));
                    inl.push(Inline::Mention(Mention {
                        display: "@room".to_owned(),
                        target: MentionTarget::Room,
                    }));
                    rest = &rest[pos + 5..];
                }
                inl.push(Inline::Text(rest.to_owned()));
            }
            Inline::Bold(mut c) => {
                room_mentions_in_inlines(&mut c);
                inl.push(Inline::Bold(c));
            }
            Inline::Italic(mut c) => {
                room_mentions_in_inlines(&mut c);
                inl.push(Inline::Italic(c));
            }
            Inline::Underline(mut c) => {
                room_mentions_in_inlines(&mut c);
                inl.push(Inline::Underline(c));
            }
            Inline::Strike(mut c) => {
                room_mentions_in_inlines(&mut c);
                inl.push(Inline::Strike(c));
            }
            Inline::Spoiler(mut c) => {
                room_mentions_in_inlines(&mut c);
                inl.push(Inline::Spoiler(c));
            }
            Inline::Colour {
                fg,
                bg,
                mut children,
            } => {
                room_mentions_in_inlines(&mut children);
                inl.push(Inline::Colour { fg, bg, children });
            }
            other => inl.push(other),
        }
    }
}

/// What to do when leaving an element.
#[derive(Clone, Copy)]
enum Exit {
    Nothing,
    Inline,
    Block,
    Heading,
    Quote,
    List,
    Row,
}

enum Step {
    Enter {
        node: Handle,
        prev_break: bool,
        next_break: bool,
    },
    Exit(Exit),
}

struct Walker<'a> {
    b: Builder,
    network: &'a str,
    /// Open lists: `None` for bullets, `Some(next number)` for ordered lists.
    lists: Vec<Option<u64>>,
    /// Cells seen in each open table row.
    cells: Vec<usize>,
}

fn element_name(node: &Handle) -> Option<String> {
    match &node.data {
        NodeData::Element { name, .. } => Some(name.local.to_string()),
        _ => None,
    }
}

fn attr(node: &Handle, key: &str) -> Option<String> {
    match &node.data {
        NodeData::Element { attrs, .. } => {
            let attrs: Ref<'_, _> = attrs.borrow();
            attrs
                .iter()
                .find(|a| &*a.name.local == key)
                .map(|a| a.value.to_string())
        }
        _ => None,
    }
}

fn is_block_name(n: &str) -> bool {
    matches!(
        n,
        "p" | "div"
            | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
            | "blockquote"
            | "pre"
            | "ul"
            | "ol"
            | "li"
            | "table"
            | "thead"
            | "tbody"
            | "tr"
            | "th"
            | "td"
            | "caption"
            | "details"
            | "summary"
            | "hr"
            | "br"
            | "mx-reply"
    )
}

fn is_break(node: Option<&Handle>) -> bool {
    node.is_none_or(|n| element_name(n).is_some_and(|name| is_block_name(&name)))
}

/// All text below `node`, iteratively.
fn text_content(node: &Handle) -> String {
    let mut out = String::new();
    let mut stack = vec![node.clone()];
    while let Some(n) = stack.pop() {
        if let NodeData::Text { contents } = &n.data {
            out.push_str(&contents.borrow());
        }
        let children = n.children.borrow();
        for c in children.iter().rev() {
            stack.push(c.clone());
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = bytes.get(i + 1..i + 3)
            && let Ok(h) = std::str::from_utf8(h)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The Matrix user id a pill URL points to, if it is one.
#[must_use]
pub fn pill_user_id(href: &str) -> Option<String> {
    // The first path segment only; a `/` inside the id itself arrives as `%2F`.
    let id = if let Some(rest) = href.strip_prefix("https://matrix.to/#/") {
        let rest = rest.split(['?', '/']).next().unwrap_or(rest);
        percent_decode(rest)
    } else if let Some(rest) = href.strip_prefix("matrix:u/") {
        let rest = rest.split(['?', '#', '/']).next().unwrap_or(rest);
        format!("@{}", percent_decode(rest))
    } else {
        return None;
    };
    let valid = id.len() > 3
        && id.starts_with('@')
        && id.contains(':')
        && !id.chars().any(|c| c.is_control() || c.is_whitespace());
    valid.then_some(id)
}

/// Whitespace handling of a text node (see [`parse_for_network`]).
fn clean_html_text(s: &str, prev_break: bool, next_break: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String, at_end: bool| {
        if run.contains('\n') {
            let at_start = out.is_empty();
            if !((at_start && prev_break) || (at_end && next_break)) {
                out.push(' ');
            }
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in s.chars() {
        if c.is_whitespace() && (c == '\n' || c == '\r' || c == ' ' || c == '\t') {
            run.push(c);
        } else {
            if !run.is_empty() {
                flush(&mut run, &mut out, false);
            }
            out.push(c);
        }
    }
    if !run.is_empty() {
        flush(&mut run, &mut out, true);
    }
    // A whitespace-only node with a newline at both edges vanishes; one that became a single
    // space between two breaks too.
    if out == " " && prev_break && next_break && s.contains('\n') {
        out.clear();
    }
    out
}

impl Walker<'_> {
    fn walk(&mut self, root: &Handle) {
        let mut stack = vec![Step::Enter {
            node: root.clone(),
            prev_break: true,
            next_break: true,
        }];
        while let Some(step) = stack.pop() {
            match step {
                Step::Exit(e) => self.exit(e),
                Step::Enter {
                    node,
                    prev_break,
                    next_break,
                } => {
                    let descend = match &node.data {
                        NodeData::Text { contents } => {
                            let s = clean_html_text(&contents.borrow(), prev_break, next_break);
                            self.text(&s);
                            None
                        }
                        NodeData::Element { .. } => Some(self.enter(&node)),
                        NodeData::Document => Some(Exit::Nothing),
                        _ => None,
                    };
                    if let Some(exit) = descend {
                        stack.push(Step::Exit(exit));
                        let children = node.children.borrow();
                        let n = children.len();
                        for i in (0..n).rev() {
                            let prev = if i == 0 { None } else { children.get(i - 1) };
                            stack.push(Step::Enter {
                                node: children[i].clone(),
                                prev_break: is_break(prev),
                                next_break: is_break(children.get(i + 1)),
                            });
                        }
                    }
                }
            }
        }
    }

    fn text(&mut self, s: &str) {
        self.b.text(s);
    }

    /// Enters an element; returns what to do on leaving it. Elements whose content is
    /// handled here (or dropped) get their children removed by returning early with a
    /// marker: they are handled by the caller not descending (see `walk`).
    fn enter(&mut self, node: &Handle) -> Exit {
        let Some(name) = element_name(node) else {
            return Exit::Nothing;
        };
        match name.as_str() {
            "b" | "strong" => self.inline(InlineKind::Bold),
            "i" | "em" => self.inline(InlineKind::Italic),
            "u" => self.inline(InlineKind::Underline),
            "s" | "del" | "strike" => self.inline(InlineKind::Strike),
            "code" => self.inline(InlineKind::Code),
            "a" => {
                // Surrounding whitespace is not part of a URL (browsers drop it too): a pill
                // is recognised after it is gone, as a link keeps the URL without it.
                let href = attr(node, "href").unwrap_or_default();
                let href = href.trim();
                if let Some(user_id) = pill_user_id(href) {
                    self.inline(InlineKind::Mention(MentionTarget::User {
                        network: self.network.to_owned(),
                        user_id,
                    }))
                } else if is_safe_url(href) {
                    self.inline(InlineKind::Link(href.to_owned()))
                } else {
                    Exit::Nothing
                }
            }
            "span" | "font" => {
                if attr(node, "data-mx-spoiler").is_some() {
                    return self.inline(InlineKind::Spoiler);
                }
                let fg = attr(node, "data-mx-color")
                    .or_else(|| attr(node, "color"))
                    .and_then(|c| Rgb::from_hex(c.trim()));
                let bg = attr(node, "data-mx-bg-color").and_then(|c| Rgb::from_hex(c.trim()));
                if fg.is_some() || bg.is_some() {
                    self.inline(InlineKind::Colour(fg, bg))
                } else {
                    Exit::Nothing
                }
            }
            "br" => {
                self.b.line_break();
                Exit::Nothing
            }
            "p" | "div" | "details" | "summary" | "caption" | "table" | "thead" | "tbody" => {
                self.b.block_boundary();
                Exit::Block
            }
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.b.block_boundary();
                self.b.start_inline(InlineKind::Bold);
                Exit::Heading
            }
            "hr" => {
                self.b.block_boundary();
                self.b.text("---");
                self.b.block_boundary();
                Exit::Nothing
            }
            "blockquote" => {
                if self.b.inline_open() {
                    self.b.block_boundary();
                    Exit::Block
                } else {
                    self.b.start_quote();
                    Exit::Quote
                }
            }
            "ul" => {
                self.b.block_boundary();
                self.lists.push(None);
                Exit::List
            }
            "ol" => {
                self.b.block_boundary();
                let start = attr(node, "start")
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                self.lists.push(Some(start));
                Exit::List
            }
            "li" => {
                self.b.block_boundary();
                let depth = self.lists.len().saturating_sub(1).min(8);
                let bullet = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        let s = format!("{n}. ");
                        *n = n.saturating_add(1);
                        s
                    }
                    _ => "• ".to_owned(),
                };
                let prefix = format!("{}{bullet}", "  ".repeat(depth));
                if self.b.inline_open() {
                    self.b.text(&prefix);
                } else {
                    self.b.set_prefix(prefix);
                }
                Exit::Block
            }
            "tr" => {
                self.b.block_boundary();
                self.cells.push(0);
                Exit::Row
            }
            "td" | "th" => {
                if let Some(n) = self.cells.last_mut() {
                    if *n > 0 {
                        self.b.text(" | ");
                    }
                    *n += 1;
                }
                Exit::Nothing
            }
            "pre" => {
                let language = first_code_language(node);
                let mut code = text_content(node);
                if code.ends_with('\n') {
                    code.pop();
                }
                self.b.code_block(language, code);
                Self::skip_children(node);
                Exit::Nothing
            }
            "img" => {
                let alt = attr(node, "alt")
                    .or_else(|| attr(node, "title"))
                    .filter(|a| !a.trim().is_empty())
                    .unwrap_or_else(|| "image".to_owned());
                let src = attr(node, "src").unwrap_or_default();
                if is_safe_url(&src) {
                    self.b.push(Inline::Link {
                        url: src,
                        children: vec![Inline::Text(alt)],
                    });
                } else {
                    self.b.text(&alt);
                }
                Exit::Nothing
            }
            "mx-reply" | "script" | "style" | "head" | "title" | "template" | "noscript"
            | "iframe" | "object" | "svg" | "math" | "textarea" | "select" => {
                Self::skip_children(node);
                Exit::Nothing
            }
            _ => Exit::Nothing,
        }
    }

    /// Drops an element's children so that `walk` does not descend into them.
    fn skip_children(node: &Handle) {
        // The DOM is ours alone; emptying a handled subtree is cheaper than tracking a skip.
        node.children.borrow_mut().clear();
    }

    fn inline(&mut self, kind: InlineKind) -> Exit {
        self.b.start_inline(kind);
        Exit::Inline
    }

    fn exit(&mut self, e: Exit) {
        match e {
            Exit::Nothing => {}
            Exit::Inline => self.b.end_inline(),
            Exit::Block => self.b.block_boundary(),
            Exit::Heading => {
                self.b.end_inline();
                self.b.block_boundary();
            }
            Exit::Quote => self.b.end_quote(),
            Exit::List => {
                self.lists.pop();
                self.b.block_boundary();
            }
            Exit::Row => {
                self.cells.pop();
                self.b.block_boundary();
            }
        }
    }
}

/// The `language-xxx` class of the first `<code>` inside a `<pre>`.
fn first_code_language(pre: &Handle) -> Option<String> {
    let children = pre.children.borrow();
    let code = children
        .iter()
        .find(|c| element_name(c).as_deref() == Some("code"))?;
    let class = attr(code, "class")?;
    class
        .split_whitespace()
        .find_map(|c| c.strip_prefix("language-"))
        .map(str::to_owned)
}

/// Byte offset of `word` in `s` where it stands as a word (not inside a longer word).
pub(crate) fn find_word(s: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(off) = s.get(from..)?.find(word) {
        let pos = from + off;
        let before_ok = s[..pos]
            .chars()
            .next_back()
            .is_none_or(|c| !glues_before(c));
        let after_ok = s[pos + word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !glues_after(c));
        if before_ok && after_ok {
            return Some(pos);
        }
        from = pos + word.len();
    }
    None
}

/// Renders the model for Matrix: `formatted_body` (only tags and attributes of the spec's
/// allow-list, every text escaped) and the plain `body`.
///
/// User mentions whose `user_id` is a Matrix id become pills; other mentions render as
/// their display text. A single paragraph renders without `<p>`.
#[must_use]
pub fn render(text: &FormattedText) -> MatrixBody {
    let text = text.normalized();
    let body = plain_body(&text);
    if !has_formatting(&text) {
        return MatrixBody {
            body,
            formatted_body: None,
        };
    }
    MatrixBody {
        body,
        formatted_body: Some(render_normal(&text)),
    }
}

/// The `formatted_body` HTML of a text, even when it has no formatting (see [`render`]).
#[must_use]
pub fn render_html(text: &FormattedText) -> String {
    render_normal(&text.normalized())
}

fn render_normal(text: &FormattedText) -> String {
    let mut out = String::new();
    if let [Block::Paragraph(inl)] = text.blocks.as_slice() {
        render_inlines(inl, &mut out);
    } else {
        render_blocks(&text.blocks, &mut out);
    }
    out
}

fn has_formatting(text: &FormattedText) -> bool {
    text.blocks.iter().any(|b| match b {
        Block::Paragraph(inl) => inl.iter().any(|i| {
            !matches!(
                i,
                Inline::Text(_)
                    | Inline::LineBreak
                    | Inline::Mention(Mention {
                        target: MentionTarget::Room,
                        ..
                    })
            )
        }),
        _ => true,
    })
}

/// The plain `body`: paragraphs separated by a blank line, quotes as `> ` lines, links as
/// `text <url>` when the text is not the URL, mentions as their display text.
#[must_use]
pub fn plain_body(text: &FormattedText) -> String {
    let mut lines: Vec<String> = Vec::new();
    plain_blocks(&text.blocks, "", &mut lines);
    lines.join("\n")
}

fn plain_blocks(blocks: &[Block], prefix: &str, lines: &mut Vec<String>) {
    for (n, b) in blocks.iter().enumerate() {
        if n > 0 {
            lines.push(prefix.trim_end().to_owned());
        }
        match b {
            Block::Paragraph(inl) => {
                let mut s = String::new();
                plain_inlines(inl, &mut s);
                for l in s.split('\n') {
                    lines.push(format!("{prefix}{l}"));
                }
            }
            Block::CodeBlock { code, .. } => {
                for l in code.split('\n') {
                    lines.push(format!("{prefix}{l}"));
                }
            }
            Block::Quote(inner) => plain_blocks(inner, &format!("{prefix}> "), lines),
        }
    }
}

fn plain_inlines(inl: &[Inline], out: &mut String) {
    for i in inl {
        match i {
            Inline::Text(t) | Inline::Code(t) => out.push_str(t),
            Inline::Mention(Mention {
                target: MentionTarget::Room,
                ..
            }) => out.push_str("@room"),
            Inline::Mention(m) => out.push_str(&m.display),
            Inline::LineBreak => out.push('\n'),
            Inline::Link { url, children } => {
                let mut shown = String::new();
                plain_inlines(children, &mut shown);
                out.push_str(&shown);
                if shown.trim() != url {
                    let _ = write!(out, " <{url}>");
                }
            }
            Inline::Bold(c)
            | Inline::Italic(c)
            | Inline::Underline(c)
            | Inline::Strike(c)
            | Inline::Spoiler(c)
            | Inline::Colour { children: c, .. } => plain_inlines(c, out),
        }
    }
}

/// Append `s` to `out` escaped for HTML text and attribute values (`&`, `<`, `>`, `"`, `'`).
pub fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

fn render_blocks(blocks: &[Block], out: &mut String) {
    for b in blocks {
        match b {
            Block::Paragraph(inl) => {
                out.push_str("<p>");
                render_inlines(inl, out);
                out.push_str("</p>");
            }
            Block::CodeBlock { language, code } => {
                out.push_str("<pre><code");
                if let Some(l) = language {
                    out.push_str(" class=\"language-");
                    escape_into(l, out);
                    out.push('"');
                }
                out.push('>');
                escape_into(code, out);
                out.push_str("\n</code></pre>");
            }
            Block::Quote(inner) => {
                out.push_str("<blockquote>");
                render_blocks(inner, out);
                out.push_str("</blockquote>");
            }
        }
    }
}

/// Percent-encodes what may not stand raw in a matrix.to fragment.
fn encode_user_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"@:.-_=+!~*'$,;".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn render_inlines(inl: &[Inline], out: &mut String) {
    for i in inl {
        match i {
            Inline::Text(t) => escape_into(t, out),
            Inline::LineBreak => out.push_str("<br>"),
            Inline::Code(c) => {
                out.push_str("<code>");
                escape_into(c, out);
                out.push_str("</code>");
            }
            Inline::Bold(c) => wrap_tag("strong", c, out),
            Inline::Italic(c) => wrap_tag("em", c, out),
            Inline::Underline(c) => wrap_tag("u", c, out),
            Inline::Strike(c) => wrap_tag("del", c, out),
            Inline::Spoiler(c) => {
                out.push_str("<span data-mx-spoiler>");
                render_inlines(c, out);
                out.push_str("</span>");
            }
            Inline::Colour { fg, bg, children } => {
                out.push_str("<span");
                if let Some(fg) = fg {
                    let _ = write!(out, " data-mx-color=\"{}\"", fg.to_hex());
                }
                if let Some(bg) = bg {
                    let _ = write!(out, " data-mx-bg-color=\"{}\"", bg.to_hex());
                }
                out.push('>');
                render_inlines(children, out);
                out.push_str("</span>");
            }
            Inline::Link { url, children } => {
                out.push_str("<a href=\"");
                escape_into(url, out);
                out.push_str("\">");
                render_inlines(children, out);
                out.push_str("</a>");
            }
            Inline::Mention(m) => match &m.target {
                MentionTarget::User { user_id, .. }
                    if pill_user_id(&pill_url(user_id)).is_some() =>
                {
                    out.push_str("<a href=\"");
                    escape_into(&pill_url(user_id), out);
                    out.push_str("\">");
                    escape_into(&m.display, out);
                    out.push_str("</a>");
                }
                MentionTarget::Room => out.push_str("@room"),
                _ => escape_into(&m.display, out),
            },
        }
    }
}

/// The matrix.to URL of a user id.
#[must_use]
pub fn pill_url(user_id: &str) -> String {
    format!("https://matrix.to/#/{}", encode_user_id(user_id))
}

fn wrap_tag(tag: &str, children: &[Inline], out: &mut String) {
    let _ = write!(out, "<{tag}>");
    render_inlines(children, out);
    let _ = write!(out, "</{tag}>");
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
    fn alice() -> Inline {
        Inline::Mention(Mention {
            display: "Alice".into(),
            target: MentionTarget::User {
                network: MATRIX_NETWORK.into(),
                user_id: "@alice:example.org".into(),
            },
        })
    }

    #[test]
    fn parse_table() {
        let cases: Vec<(&str, FormattedText)> = vec![
            ("plain &amp; &lt;b&gt;", para(vec![t("plain & <b>")])),
            (
                "<b>b</b><strong>s</strong>",
                para(vec![Inline::Bold(vec![t("bs")])]),
            ),
            (
                "<em>i</em> <u>u</u> <del>d</del>",
                para(vec![
                    Inline::Italic(vec![t("i")]),
                    t(" "),
                    Inline::Underline(vec![t("u")]),
                    t(" "),
                    Inline::Strike(vec![t("d")]),
                ]),
            ),
            (
                "<mx-reply><blockquote>quoted <a href=\"https://matrix.to/#/@bob:x\">bob</a></blockquote></mx-reply>reply",
                para(vec![t("reply")]),
            ),
            (
                "hi <a href=\"https://matrix.to/#/@alice:example.org\">Alice</a>!",
                para(vec![t("hi "), alice(), t("!")]),
            ),
            (
                "<a href=\"https://matrix.to/#/%40alice%3Aexample.org?via=x\">Alice</a>",
                para(vec![alice()]),
            ),
            (
                // Found by the html fuzz target: whitespace around a pill's URL made it a plain
                // link whose rendering (without the whitespace) parsed back as a pill.
                "<a href=\" https://matrix.to/#/@alice:example.org\u{c}\">Alice</a>",
                para(vec![alice()]),
            ),
            (
                "<a href=\"javascript:alert(1)\">x</a><script>alert(2)</script>",
                para(vec![t("x")]),
            ),
            (
                "<pre><code class=\"language-rust\">fn main() {\n  &lt;x&gt;\n}\n</code></pre>",
                FormattedText::new(vec![Block::CodeBlock {
                    language: Some("rust".into()),
                    code: "fn main() {\n  <x>\n}".into(),
                }]),
            ),
            (
                "<p>one</p>\n<p>two<br />\nthree</p>",
                FormattedText::new(vec![
                    Block::Paragraph(vec![t("one")]),
                    Block::Paragraph(vec![t("two"), Inline::LineBreak, t("three")]),
                ]),
            ),
            (
                "<blockquote>\n<p>q</p>\n</blockquote>\n<p>a</p>",
                FormattedText::new(vec![
                    Block::Quote(vec![Block::Paragraph(vec![t("q")])]),
                    Block::Paragraph(vec![t("a")]),
                ]),
            ),
            (
                "<span data-mx-spoiler=\"why\">s</span><font color=\"#ff0000\">r</font>",
                para(vec![
                    Inline::Spoiler(vec![t("s")]),
                    Inline::Colour {
                        fg: Some(Rgb(255, 0, 0)),
                        bg: None,
                        children: vec![t("r")],
                    },
                ]),
            ),
            (
                "<ul><li>a</li><li>b</li></ul><ol start=\"3\"><li>c</li></ol>",
                FormattedText::new(vec![
                    Block::Paragraph(vec![t("• a")]),
                    Block::Paragraph(vec![t("• b")]),
                    Block::Paragraph(vec![t("3. c")]),
                ]),
            ),
            ("<h1>Title</h1>", para(vec![Inline::Bold(vec![t("Title")])])),
            (
                "@room hi",
                para(vec![
                    Inline::Mention(Mention {
                        display: "@room".into(),
                        target: MentionTarget::Room,
                    }),
                    t(" hi"),
                ]),
            ),
            ("mail@room.org", para(vec![t("mail@room.org")])),
            // Found by fuzzing: the mention is found in the text as shown, across elements.
            (
                "x @ro<span>om</span>",
                para(vec![
                    t("x "),
                    Inline::Mention(Mention {
                        display: "@room".into(),
                        target: MentionTarget::Room,
                    }),
                ]),
            ),
            (
                "<a href=\"https://x.org\">@room</a>",
                para(vec![Inline::Link {
                    url: "https://x.org".into(),
                    children: vec![t("@room")],
                }]),
            ),
            (
                "<b>unclosed <i>both",
                para(vec![Inline::Bold(vec![
                    t("unclosed "),
                    Inline::Italic(vec![t("both")]),
                ])]),
            ),
            (
                "👋🏽 <b>שלום</b> 漢字 e\u{301}",
                para(vec![
                    t("👋🏽 "),
                    Inline::Bold(vec![t("שלום")]),
                    t(" 漢字 e\u{301}"),
                ]),
            ),
            (
                "<code>a  <b>b</b></code>",
                para(vec![Inline::Code("a  b".into())]),
            ),
            (
                "<table><tr><th>h1</th><th>h2</th></tr><tr><td>1</td><td>2</td></tr></table>",
                FormattedText::new(vec![
                    Block::Paragraph(vec![t("h1 | h2")]),
                    Block::Paragraph(vec![t("1 | 2")]),
                ]),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), want, "input {input:?}");
        }
    }

    #[test]
    fn render_table() {
        let cases: Vec<(FormattedText, &str, Option<&str>)> = vec![
            (para(vec![t("a < b & c")]), "a < b & c", None),
            (
                para(vec![Inline::Bold(vec![t("<b>")]), t(" x")]),
                "<b> x",
                Some("<strong>&lt;b&gt;</strong> x"),
            ),
            (
                para(vec![t("hi "), alice()]),
                "hi Alice",
                Some("hi <a href=\"https://matrix.to/#/@alice:example.org\">Alice</a>"),
            ),
            (
                FormattedText::new(vec![
                    Block::Quote(vec![Block::Paragraph(vec![t("q")])]),
                    Block::Paragraph(vec![t("a"), Inline::LineBreak, t("b")]),
                ]),
                "> q\n\na\nb",
                Some("<blockquote><p>q</p></blockquote><p>a<br>b</p>"),
            ),
            (
                FormattedText::new(vec![Block::CodeBlock {
                    language: Some("c++".into()),
                    code: "a<b".into(),
                }]),
                "a<b",
                Some("<pre><code class=\"language-c++\">a&lt;b\n</code></pre>"),
            ),
            (
                para(vec![Inline::Link {
                    url: "https://x.org/?a=1&b=\"".into(),
                    children: vec![t("x")],
                }]),
                "x <https://x.org/?a=1&b=\">",
                Some("<a href=\"https://x.org/?a=1&amp;b=&quot;\">x</a>"),
            ),
        ];
        for (model, body, formatted) in cases {
            let r = render(&model);
            assert_eq!(r.body, body, "{model:?}");
            assert_eq!(r.formatted_body.as_deref(), formatted, "{model:?}");
        }
    }

    #[test]
    fn round_trip_examples() {
        for html in [
            "<strong>a</strong> <em>b <code>c</code></em>",
            "<p>x</p><blockquote><p>y</p><pre><code>z</code></pre></blockquote>",
            "<span data-mx-color=\"#123456\" data-mx-bg-color=\"#abcdef\">c</span>",
        ] {
            let once = parse(html);
            let formatted = render(&once).formatted_body.unwrap_or_default();
            assert_eq!(parse(&formatted), once, "{html}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let html = "<b><i>".repeat(50_000) + "x";
        let parsed = parse(&html);
        assert_eq!(parsed.to_plain_text(), "x");
        let quotes = "<blockquote>".repeat(10_000) + "q";
        assert_eq!(parse(&quotes).to_plain_text(), "q");
    }
}
