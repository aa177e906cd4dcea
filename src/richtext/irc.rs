//! IRC formatting: mIRC control codes to and from the model.
//!
//! Owns: parsing control codes (bold 0x02, italic 0x1D, underline 0x1F, strike 0x1E,
//! monospace 0x11, colour 0x03, hex colour 0x04, reverse 0x16, reset 0x0F) into
//! [`FormattedText`], rendering the model to IRC lines, and stripping codes.
//! Must not: split lines into byte budgets, add nick prefixes, know CTCP (`/me` is the
//! connector's), or ever emit CR, LF or NUL.
//!
//! Colours: IRC's 99-colour palette (indices 0–98, 99 = default) maps to exact RGB values;
//! rendering picks the nearest palette index, because the hex form 0x04 is understood by
//! few clients. Text coloured with the same foreground and background is the IRC
//! convention for a spoiler and parses as [`Inline::Spoiler`]; a spoiler renders as black
//! on black. Reverse video (0x16) has no counterpart elsewhere and is dropped.

use std::fmt::Write as _;

use super::model::{Block, FormattedText, Inline, Rgb, inlines_plain};

/// The mIRC palette, `0xRRGGBB` per index 0–98 (see modern.ircdocs.horse/formatting).
#[expect(
    clippy::unreadable_literal,
    reason = "colours read as RRGGBB, the way every palette table prints them"
)]
const PALETTE: [u32; 99] = [
    0xffffff, 0x000000, 0x00007f, 0x009300, 0xff0000, 0x7f0000, 0x9c009c, 0xfc7f00, 0xffff00,
    0x00fc00, 0x009393, 0x00ffff, 0x0000fc, 0xff00ff, 0x7f7f7f, 0xd2d2d2, 0x470000, 0x472100,
    0x474700, 0x324700, 0x004700, 0x00472c, 0x004747, 0x002747, 0x000047, 0x2e0047, 0x470047,
    0x47002a, 0x740000, 0x743a00, 0x747400, 0x517400, 0x007400, 0x007449, 0x007474, 0x004074,
    0x000074, 0x4b0074, 0x740074, 0x740045, 0xb50000, 0xb56300, 0xb5b500, 0x7db500, 0x00b500,
    0x00b571, 0x00b5b5, 0x0063b5, 0x0000b5, 0x7500b5, 0xb500b5, 0xb5006b, 0xff0000, 0xff8c00,
    0xffff00, 0xb2ff00, 0x00ff00, 0x00ffa0, 0x00ffff, 0x008cff, 0x0000ff, 0xa500ff, 0xff00ff,
    0xff0098, 0xff5959, 0xffb459, 0xffff71, 0xcfff60, 0x6fff6f, 0x65ffc9, 0x6dffff, 0x59b4ff,
    0x5959ff, 0xc459ff, 0xff66ff, 0xff59bc, 0xff9c9c, 0xffd39c, 0xffff9c, 0xe2ff9c, 0x9cff9c,
    0x9cffdb, 0x9cffff, 0x9cd3ff, 0x9c9cff, 0xdc9cff, 0xff9cff, 0xff94d3, 0x000000, 0x131313,
    0x282828, 0x363636, 0x4d4d4d, 0x656565, 0x818181, 0x9f9f9f, 0xbcbcbc, 0xe2e2e2, 0xffffff,
];

const BOLD: char = '\u{02}';
const COLOUR: char = '\u{03}';
const HEX_COLOUR: char = '\u{04}';
const RESET: char = '\u{0f}';
const MONOSPACE: char = '\u{11}';
const REVERSE: char = '\u{16}';
const ITALIC: char = '\u{1d}';
const STRIKE: char = '\u{1e}';
const UNDERLINE: char = '\u{1f}';

/// The RGB value of palette index `i` (0–98); `None` for 99 (default) and above.
#[must_use]
pub fn palette_rgb(i: u8) -> Option<Rgb> {
    PALETTE
        .get(usize::from(i))
        .map(|&v| Rgb((v >> 16) as u8, (v >> 8) as u8, v as u8))
}

/// The palette index (0–98) nearest to `c`; exact matches give their lowest index.
#[must_use]
pub fn nearest_palette_index(c: Rgb) -> u8 {
    let mut best = (u32::MAX, 0u8);
    for (i, &v) in PALETTE.iter().enumerate() {
        let d = |a: u8, b: u32| {
            let diff = i32::from(a) - (b & 0xff) as i32;
            (diff * diff) as u32
        };
        let dist = d(c.0, v >> 16) + d(c.1, v >> 8) + d(c.2, v);
        if dist < best.0 {
            best = (dist, i as u8);
        }
    }
    best.1
}

/// How code blocks are sent to IRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodeBlockStyle {
    /// Each line wrapped in the monospace code 0x11 (modern clients show it fixed-width).
    #[default]
    Monospace,
    /// Each line as plain text.
    Plain,
}

/// Options for [`render`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrcRenderOptions {
    /// How code blocks are sent.
    pub code_block: CodeBlockStyle,
    /// Whether colours are sent (spoilers are always sent, as black on black).
    pub colours: bool,
}

impl Default for IrcRenderOptions {
    fn default() -> Self {
        IrcRenderOptions {
            code_block: CodeBlockStyle::Monospace,
            colours: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "one flag per IRC toggle code, as the protocol has them"
)]
struct Style {
    bold: bool,
    italic: bool,
    underline: bool,
    strike: bool,
    mono: bool,
    fg: Option<Rgb>,
    bg: Option<Rgb>,
    spoiler: bool,
}

/// Parses IRC text (one or more lines separated by `\n`) into the model.
///
/// Never fails: unknown or malformed codes are dropped, `\x03` without digits resets the
/// colour, a comma not followed by a digit is text, formatting resets at each line end.
#[must_use]
pub fn parse(input: &str) -> FormattedText {
    let mut inlines = Vec::new();
    for (n, line) in input.split('\n').enumerate() {
        if n > 0 {
            inlines.push(Inline::LineBreak);
        }
        parse_line(line, &mut inlines);
    }
    FormattedText::new(vec![Block::Paragraph(inlines)])
}

fn parse_line(line: &str, out: &mut Vec<Inline>) {
    let mut style = Style::default();
    let mut run = String::new();
    let mut chars = line.char_indices().peekable();
    let bytes = line.as_bytes();
    while let Some((i, c)) = chars.next() {
        let before = style;
        match c {
            BOLD => style.bold = !style.bold,
            ITALIC => style.italic = !style.italic,
            UNDERLINE => style.underline = !style.underline,
            STRIKE => style.strike = !style.strike,
            MONOSPACE => style.mono = !style.mono,
            RESET => style = Style::default(),
            COLOUR => {
                let (fg, bg, used) = parse_colour_digits(&bytes[i + 1..]);
                for _ in 0..used {
                    chars.next();
                }
                match fg {
                    None => {
                        style.fg = None;
                        style.bg = None;
                    }
                    Some(f) => {
                        style.fg = palette_rgb(f);
                        if let Some(b) = bg {
                            style.bg = palette_rgb(b);
                        }
                    }
                }
            }
            HEX_COLOUR => {
                let (fg, bg, used) = parse_hex_colour(&bytes[i + 1..]);
                for _ in 0..used {
                    chars.next();
                }
                match fg {
                    None => {
                        style.fg = None;
                        style.bg = None;
                    }
                    Some(f) => {
                        style.fg = Some(f);
                        if bg.is_some() {
                            style.bg = bg;
                        }
                    }
                }
            }
            REVERSE | '\r' => {}
            c => {
                run.push(c);
                continue;
            }
        }
        if style != before {
            flush_run(&mut run, before, out);
        }
    }
    flush_run(&mut run, style, out);
}

/// Reads `F[F][,B[B]]` after 0x03; returns (fg, bg, bytes consumed, all ASCII).
fn parse_colour_digits(b: &[u8]) -> (Option<u8>, Option<u8>, usize) {
    let digits = |s: &[u8]| -> (Option<u8>, usize) {
        let n = s.iter().take(2).take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return (None, 0);
        }
        let v = s[..n].iter().fold(0u8, |acc, d| acc * 10 + (d - b'0'));
        (Some(v), n)
    };
    let (fg, n) = digits(b);
    if fg.is_none() {
        return (None, None, 0);
    }
    if b.get(n) == Some(&b',') {
        let (bg, m) = digits(&b[n + 1..]);
        if bg.is_some() {
            return (fg, bg, n + 1 + m);
        }
    }
    (fg, None, n)
}

/// Reads `RRGGBB[,RRGGBB]` after 0x04; returns (fg, bg, bytes consumed, all ASCII).
fn parse_hex_colour(b: &[u8]) -> (Option<Rgb>, Option<Rgb>, usize) {
    let hex = |s: &[u8]| -> Option<Rgb> {
        let s = s.get(..6)?;
        Rgb::from_hex(std::str::from_utf8(s).ok()?)
    };
    let Some(fg) = hex(b) else {
        return (None, None, 0);
    };
    if b.get(6) == Some(&b',')
        && let Some(bg) = b.get(7..).and_then(hex)
    {
        return (Some(fg), Some(bg), 13);
    }
    (Some(fg), None, 6)
}

fn flush_run(run: &mut String, style: Style, out: &mut Vec<Inline>) {
    if run.is_empty() {
        return;
    }
    let text = std::mem::take(run);
    let mut node = if style.mono {
        Inline::Code(text)
    } else {
        Inline::Text(text)
    };
    if style.strike {
        node = Inline::Strike(vec![node]);
    }
    if style.underline {
        node = Inline::Underline(vec![node]);
    }
    if style.italic {
        node = Inline::Italic(vec![node]);
    }
    if style.bold {
        node = Inline::Bold(vec![node]);
    }
    if style.fg.is_some() && style.fg == style.bg {
        node = Inline::Spoiler(vec![node]);
    } else if style.fg.is_some() || style.bg.is_some() {
        node = Inline::Colour {
            fg: style.fg,
            bg: style.bg,
            children: vec![node],
        };
    }
    out.push(node);
}

/// Removes every formatting code (and the digits of colour codes), keeping the text.
#[must_use]
pub fn strip_formatting(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut chars = input.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            BOLD | ITALIC | UNDERLINE | STRIKE | MONOSPACE | RESET | REVERSE => {}
            COLOUR => {
                let (_, _, used) = parse_colour_digits(&bytes[i + 1..]);
                for _ in 0..used {
                    chars.next();
                }
            }
            HEX_COLOUR => {
                let (_, _, used) = parse_hex_colour(&bytes[i + 1..]);
                for _ in 0..used {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Renders the model as IRC lines: one `String` per line, never containing CR, LF or NUL,
/// and never an empty line (IRC cannot send one; a blank line inside a code block becomes a
/// single space). Formatting restarts on every line.
///
/// Links render as `text <url>` (just `url` when the text is the URL), quotes as `> `
/// prefixes, mentions as their display text (after [`super::mention::rewrite_mentions`]
/// that is the nick), inline code in monospace.
#[must_use]
pub fn render(text: &FormattedText, opts: &IrcRenderOptions) -> Vec<String> {
    let text = text.normalized();
    let mut lines = Vec::new();
    render_blocks(&text.blocks, "", *opts, &mut lines);
    lines
}

fn render_blocks(blocks: &[Block], prefix: &str, opts: IrcRenderOptions, out: &mut Vec<String>) {
    for b in blocks {
        match b {
            Block::Paragraph(inl) => {
                let mut segs = vec![Vec::new()];
                flatten(inl, Style::default(), opts, &mut segs);
                for line in segs {
                    let body = serialise(&line);
                    if !body.is_empty() {
                        out.push(format!("{prefix}{body}"));
                    }
                }
            }
            Block::CodeBlock { code, .. } => {
                for l in code.split('\n') {
                    let l = sanitise(l);
                    let line = if l.is_empty() {
                        " ".to_owned()
                    } else if opts.code_block == CodeBlockStyle::Monospace {
                        format!("{MONOSPACE}{l}{MONOSPACE}")
                    } else {
                        l
                    };
                    out.push(format!("{prefix}{line}"));
                }
            }
            Block::Quote(inner) => {
                let p = format!("{prefix}> ");
                render_blocks(inner, &p, opts, out);
            }
        }
    }
}

/// Text with every control character removed (normalised text has none but tab).
fn sanitise(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .collect()
}

fn flatten(
    inl: &[Inline],
    style: Style,
    opts: IrcRenderOptions,
    lines: &mut Vec<Vec<(Style, String)>>,
) {
    for i in inl {
        match i {
            Inline::Text(t) => push_seg(lines, style, t),
            Inline::Code(t) => push_seg(
                lines,
                Style {
                    mono: true,
                    ..style
                },
                t,
            ),
            Inline::Mention(m) => push_seg(lines, style, &m.display),
            Inline::LineBreak => lines.push(Vec::new()),
            Inline::Bold(c) => flatten(
                c,
                Style {
                    bold: true,
                    ..style
                },
                opts,
                lines,
            ),
            Inline::Italic(c) => flatten(
                c,
                Style {
                    italic: true,
                    ..style
                },
                opts,
                lines,
            ),
            Inline::Underline(c) => flatten(
                c,
                Style {
                    underline: true,
                    ..style
                },
                opts,
                lines,
            ),
            Inline::Strike(c) => flatten(
                c,
                Style {
                    strike: true,
                    ..style
                },
                opts,
                lines,
            ),
            Inline::Spoiler(c) => flatten(
                c,
                Style {
                    spoiler: true,
                    ..style
                },
                opts,
                lines,
            ),
            Inline::Colour { fg, bg, children } => {
                let s = if opts.colours {
                    Style {
                        fg: fg.or(style.fg),
                        bg: bg.or(style.bg),
                        ..style
                    }
                } else {
                    style
                };
                flatten(children, s, opts, lines);
            }
            Inline::Link { url, children } => {
                flatten(children, style, opts, lines);
                let mut shown = String::new();
                inlines_plain(children, &mut shown);
                if shown.trim() != url {
                    push_seg(lines, style, &format!(" <{url}>"));
                }
            }
        }
    }
}

fn push_seg(lines: &mut Vec<Vec<(Style, String)>>, style: Style, text: &str) {
    let text = sanitise(text);
    if text.is_empty() {
        return;
    }
    if lines.is_empty() {
        lines.push(Vec::new());
    }
    if let Some(line) = lines.last_mut() {
        match line.last_mut() {
            Some((s, t)) if *s == style => t.push_str(&text),
            _ => line.push((style, text)),
        }
    }
}

/// The colour pair a style is drawn with, as palette indices (99 = default).
fn colour_pair(s: Style) -> (u8, u8) {
    if s.spoiler {
        return (1, 1);
    }
    let idx = |c: Option<Rgb>| c.map_or(99, nearest_palette_index);
    let (fg, bg) = (idx(s.fg), idx(s.bg));
    if fg == bg && fg != 99 {
        // Same colour on same colour reads back as a spoiler: drop the background instead.
        return (fg, 99);
    }
    (fg, bg)
}

fn serialise(line: &[(Style, String)]) -> String {
    let mut out = String::new();
    let mut cur = Style::default();
    let mut cur_colour = (99u8, 99u8);
    for (style, text) in line {
        let s = *style;
        if s.bold != cur.bold {
            out.push(BOLD);
        }
        if s.italic != cur.italic {
            out.push(ITALIC);
        }
        if s.underline != cur.underline {
            out.push(UNDERLINE);
        }
        if s.strike != cur.strike {
            out.push(STRIKE);
        }
        if s.mono != cur.mono {
            out.push(MONOSPACE);
        }
        let colour = colour_pair(s);
        if colour != cur_colour {
            let starts_with_digit = text.starts_with(|c: char| c.is_ascii_digit());
            if colour == (99, 99) && !starts_with_digit {
                out.push(COLOUR);
            } else {
                let _ = write!(out, "{COLOUR}{:02},{:02}", colour.0, colour.1);
            }
        }
        out.push_str(text);
        cur = s;
        cur_colour = colour;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::richtext::model::{Mention, MentionTarget};

    fn t(s: &str) -> Inline {
        Inline::Text(s.to_owned())
    }
    fn para(v: Vec<Inline>) -> FormattedText {
        FormattedText::new(vec![Block::Paragraph(v)])
    }
    fn red() -> Option<Rgb> {
        palette_rgb(4)
    }

    #[test]
    fn parse_table() {
        let cases: Vec<(&str, FormattedText)> = vec![
            ("plain", para(vec![t("plain")])),
            (
                "\x02b\x02 n",
                para(vec![Inline::Bold(vec![t("b")]), t(" n")]),
            ),
            ("\x1di\x1d", para(vec![Inline::Italic(vec![t("i")])])),
            ("\x1fu", para(vec![Inline::Underline(vec![t("u")])])),
            ("\x1es\x1e", para(vec![Inline::Strike(vec![t("s")])])),
            ("\x11m\x11", para(vec![Inline::Code("m".into())])),
            (
                "\x02b\x1dbi\x0fn",
                para(vec![
                    Inline::Bold(vec![t("b"), Inline::Italic(vec![t("bi")])]),
                    t("n"),
                ]),
            ),
            (
                "\x034red\x03 x",
                para(vec![
                    Inline::Colour {
                        fg: red(),
                        bg: None,
                        children: vec![t("red")],
                    },
                    t(" x"),
                ]),
            ),
            (
                "\x0304,2x",
                para(vec![Inline::Colour {
                    fg: red(),
                    bg: palette_rgb(2),
                    children: vec![t("x")],
                }]),
            ),
            // A comma not followed by a digit is text.
            (
                "\x034,x",
                para(vec![Inline::Colour {
                    fg: red(),
                    bg: None,
                    children: vec![t(",x")],
                }]),
            ),
            // Three digits: only two belong to the code.
            (
                "\x03045",
                para(vec![Inline::Colour {
                    fg: red(),
                    bg: None,
                    children: vec![t("5")],
                }]),
            ),
            (
                "\x031,1secret\x03",
                para(vec![Inline::Spoiler(vec![t("secret")])]),
            ),
            (
                "\x04FF8800x\x04",
                para(vec![Inline::Colour {
                    fg: Some(Rgb(255, 136, 0)),
                    bg: None,
                    children: vec![t("x")],
                }]),
            ),
            ("\x04zz", para(vec![t("zz")])),
            ("\x16rev\x16", para(vec![t("rev")])),
            ("*italic*", para(vec![t("*italic*")])),
            ("\x03\x02\x02", FormattedText::default()),
            ("a\nb", para(vec![t("a"), Inline::LineBreak, t("b")])),
            (
                "\x02bold\ncarry",
                para(vec![
                    Inline::Bold(vec![t("bold")]),
                    Inline::LineBreak,
                    t("carry"),
                ]),
            ),
            (
                "👋🏽 שלום 漢字 e\u{301}",
                para(vec![t("👋🏽 שלום 漢字 e\u{301}")]),
            ),
            (
                "\x02👋\x02\u{301}",
                para(vec![Inline::Bold(vec![t("👋")]), t("\u{301}")]),
            ),
            ("\x03", FormattedText::default()),
            ("\x04", FormattedText::default()),
            ("\x0399,99x", para(vec![t("x")])),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), want, "input {input:?}");
        }
    }

    #[test]
    fn render_table() {
        let o = IrcRenderOptions::default();
        let plain = IrcRenderOptions {
            code_block: CodeBlockStyle::Plain,
            colours: false,
        };
        let cases: Vec<(FormattedText, IrcRenderOptions, Vec<&str>)> = vec![
            (
                para(vec![Inline::Bold(vec![t("b")]), t(" n")]),
                o,
                vec!["\x02b\x02 n"],
            ),
            (
                para(vec![
                    Inline::Bold(vec![t("b"), Inline::Italic(vec![t("i")])]),
                    t("n"),
                ]),
                o,
                vec!["\x02b\x1di\x02\x1dn"],
            ),
            (
                para(vec![Inline::Link {
                    url: "https://x.org".into(),
                    children: vec![t("site")],
                }]),
                o,
                vec!["site <https://x.org>"],
            ),
            (
                para(vec![Inline::Link {
                    url: "https://x.org".into(),
                    children: vec![t("https://x.org")],
                }]),
                o,
                vec!["https://x.org"],
            ),
            (
                FormattedText::new(vec![Block::Quote(vec![Block::Paragraph(vec![
                    t("q1"),
                    Inline::LineBreak,
                    t("q2"),
                ])])]),
                o,
                vec!["> q1", "> q2"],
            ),
            (
                FormattedText::new(vec![Block::CodeBlock {
                    language: Some("rust".into()),
                    code: "fn a() {}\n\n}".into(),
                }]),
                o,
                vec!["\x11fn a() {}\x11", " ", "\x11}\x11"],
            ),
            (
                FormattedText::new(vec![Block::CodeBlock {
                    language: None,
                    code: "x".into(),
                }]),
                plain,
                vec!["x"],
            ),
            (
                para(vec![Inline::Mention(Mention {
                    display: "alice".into(),
                    target: MentionTarget::User {
                        network: "irc".into(),
                        user_id: "alice".into(),
                    },
                })]),
                o,
                vec!["alice"],
            ),
            (
                para(vec![
                    Inline::Colour {
                        fg: red(),
                        bg: None,
                        children: vec![t("r")],
                    },
                    t("5 apples"),
                ]),
                o,
                vec!["\x0304,99r\x0399,995 apples"],
            ),
            (
                para(vec![
                    Inline::Colour {
                        fg: red(),
                        bg: None,
                        children: vec![t("r")],
                    },
                    t("x"),
                ]),
                plain,
                vec!["rx"],
            ),
            (
                para(vec![Inline::Spoiler(vec![t("s")])]),
                plain,
                vec!["\x0301,01s"],
            ),
            // Control codes inside text never leak as formatting.
            (
                FormattedText {
                    blocks: vec![Block::Paragraph(vec![t("a\x02b\r\n\0c")])],
                },
                o,
                vec!["ab", "c"],
            ),
        ];
        for (model, opts, want) in cases {
            assert_eq!(render(&model, &opts), want, "model {model:?}");
        }
    }

    #[test]
    fn round_trips_styles() {
        for s in [
            "\x02b\x1dbi\x02i\x0f",
            "\x0304,02x\x03y",
            "\x031,1spoiler\x03 visible",
            "\x11mono\x11 \x1fu\x1f",
        ] {
            let once = parse(s);
            let again = parse(&render(&once, &IrcRenderOptions::default()).join("\n"));
            assert_eq!(once, again, "{s:?}");
        }
    }

    #[test]
    fn strip_matches_visible_text() {
        assert_eq!(
            strip_formatting("\x02a\x0304,05b\x03c\x04ff0000d\x0f"),
            "abcd"
        );
    }

    #[test]
    fn nearest_palette() {
        assert_eq!(nearest_palette_index(Rgb(250, 0, 0)), 4);
        assert_eq!(nearest_palette_index(Rgb(255, 255, 255)), 0);
    }
}
