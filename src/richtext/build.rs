//! A stack-based builder that turns a stream of start/end/text events into the model.
//!
//! Owns: the shared event-to-tree logic of the Markdown and HTML parsers, including the
//! nesting cap that keeps the tree shallow whatever the input.
//! Must not: know any syntax, recurse (input nesting is unbounded), or panic on unbalanced
//! events (an unmatched end is ignored, open frames are closed at the end).

use super::model::{Block, FormattedText, Inline, Mention, MentionTarget, Rgb, inlines_plain};

/// Deepest nesting of inline containers or quotes kept; deeper ones are flattened.
pub(crate) const MAX_DEPTH: usize = 24;

/// The kind of an open inline container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InlineKind {
    /// The paragraph itself (bottom of the stack).
    Paragraph,
    Bold,
    Italic,
    Underline,
    Strike,
    Spoiler,
    Link(String),
    Colour(Option<Rgb>, Option<Rgb>),
    /// Children become the display text of a mention.
    Mention(MentionTarget),
    /// Children become the text of inline code.
    Code,
    /// Children go to the parent unchanged.
    Transparent,
}

/// Builds a [`FormattedText`] from events.
pub(crate) struct Builder {
    /// Open block containers: root, then quotes (`true` = real quote, `false` = flattened).
    blocks: Vec<(bool, Vec<Block>)>,
    /// Open inline containers of the current paragraph, if one is open.
    inlines: Vec<(InlineKind, Vec<Inline>)>,
    /// Text to put at the start of the next paragraph (list bullets).
    pending_prefix: Option<String>,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Builder {
            blocks: vec![(true, Vec::new())],
            inlines: Vec::new(),
            pending_prefix: None,
        }
    }

    /// Whether an inline container (other than the paragraph) is open.
    pub(crate) fn inline_open(&self) -> bool {
        self.inlines.len() > 1
    }

    /// Whether text goes verbatim (inside code, a link, or a mention).
    pub(crate) fn in_literal(&self) -> bool {
        self.inlines.iter().any(|(k, _)| {
            matches!(
                k,
                InlineKind::Code | InlineKind::Link(_) | InlineKind::Mention(_)
            )
        })
    }

    /// Whether the current paragraph is empty or ends with a line break.
    pub(crate) fn at_line_start(&self) -> bool {
        match self.inlines.last() {
            None => true,
            Some((_, v)) => {
                self.inlines.len() == 1 && matches!(v.last(), None | Some(Inline::LineBreak))
            }
        }
    }

    fn ensure_paragraph(&mut self) {
        if self.inlines.is_empty() {
            let mut first = Vec::new();
            if let Some(p) = self.pending_prefix.take() {
                first.push(Inline::Text(p));
            }
            self.inlines.push((InlineKind::Paragraph, first));
        }
    }

    /// Sets text that starts the next paragraph (a list bullet).
    pub(crate) fn set_prefix(&mut self, prefix: String) {
        self.pending_prefix = Some(prefix);
    }

    pub(crate) fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        self.push(Inline::Text(s.to_owned()));
    }

    pub(crate) fn push(&mut self, node: Inline) {
        self.ensure_paragraph();
        if let Some((_, v)) = self.inlines.last_mut() {
            v.push(node);
        }
    }

    pub(crate) fn line_break(&mut self) {
        self.push(Inline::LineBreak);
    }

    pub(crate) fn start_inline(&mut self, kind: InlineKind) {
        self.ensure_paragraph();
        let kind = if self.inlines.len() > MAX_DEPTH {
            InlineKind::Transparent
        } else {
            kind
        };
        self.inlines.push((kind, Vec::new()));
    }

    /// Closes the innermost inline container; ignored when none is open.
    pub(crate) fn end_inline(&mut self) {
        if self.inlines.len() < 2 {
            return;
        }
        let Some((kind, children)) = self.inlines.pop() else {
            return;
        };
        let nodes = wrap(kind, children);
        if let Some((_, parent)) = self.inlines.last_mut() {
            parent.extend(nodes);
        }
    }

    /// Ends the current paragraph (closing any open inline containers).
    pub(crate) fn end_paragraph(&mut self) {
        while self.inline_open() {
            self.end_inline();
        }
        if let Some((_, children)) = self.inlines.pop()
            && let Some((_, blocks)) = self.blocks.last_mut()
        {
            blocks.push(Block::Paragraph(children));
        }
        self.inlines.clear();
    }

    /// A block boundary: ends the paragraph, or inside an inline container a line break.
    pub(crate) fn block_boundary(&mut self) {
        if self.inline_open() {
            if !self.at_line_start() {
                self.line_break();
            }
        } else {
            self.end_paragraph();
        }
    }

    pub(crate) fn start_quote(&mut self) {
        self.end_paragraph();
        let real = self.blocks.iter().filter(|(r, _)| *r).count() <= MAX_DEPTH;
        self.blocks.push((real, Vec::new()));
    }

    pub(crate) fn end_quote(&mut self) {
        self.end_paragraph();
        if self.blocks.len() < 2 {
            return;
        }
        let Some((real, inner)) = self.blocks.pop() else {
            return;
        };
        if let Some((_, parent)) = self.blocks.last_mut() {
            if real {
                parent.push(Block::Quote(inner));
            } else {
                parent.extend(inner);
            }
        }
    }

    pub(crate) fn code_block(&mut self, language: Option<String>, code: String) {
        if self.inline_open() {
            if !self.at_line_start() {
                self.line_break();
            }
            self.push(Inline::Code(code));
            self.line_break();
            return;
        }
        self.end_paragraph();
        if let Some((_, blocks)) = self.blocks.last_mut() {
            blocks.push(Block::CodeBlock { language, code });
        }
    }

    pub(crate) fn finish(mut self) -> FormattedText {
        self.end_paragraph();
        while self.blocks.len() > 1 {
            self.end_quote();
        }
        let blocks = self.blocks.pop().map(|(_, b)| b).unwrap_or_default();
        FormattedText::new(blocks)
    }
}

fn wrap(kind: InlineKind, children: Vec<Inline>) -> Vec<Inline> {
    let one = match kind {
        InlineKind::Paragraph | InlineKind::Transparent => return children,
        InlineKind::Bold => Inline::Bold(children),
        InlineKind::Italic => Inline::Italic(children),
        InlineKind::Underline => Inline::Underline(children),
        InlineKind::Strike => Inline::Strike(children),
        InlineKind::Spoiler => Inline::Spoiler(children),
        InlineKind::Link(url) => Inline::Link { url, children },
        InlineKind::Colour(fg, bg) => Inline::Colour { fg, bg, children },
        InlineKind::Mention(target) => {
            let mut display = String::new();
            inlines_plain(&children, &mut display);
            Inline::Mention(Mention { display, target })
        }
        InlineKind::Code => {
            let mut code = String::new();
            inlines_plain(&children, &mut code);
            Inline::Code(code)
        }
    };
    vec![one]
}
