//! Property tests of the rich-text conversions: round trips, the HTML allow-list, literal
//! Markdown, and IRC line safety, over generated models and strings.
//!
//! Owns: the generators of models and wire strings, and the properties the issue lists.
//! Must not: depend on private items, or weaken a property without saying why next to it.

use html5ever::tendril::TendrilSink;
use html5ever::{LocalName, Namespace, ParseOpts, QualName, parse_fragment};
use markup5ever_rcdom::{Handle, NodeData, RcDom};
use proptest::prelude::*;
use tribridge::richtext::html::{ALLOWED_TAGS, is_allowed_attribute};
use tribridge::richtext::irc::{self, CodeBlockStyle, IrcRenderOptions};
use tribridge::richtext::mention::ANTI_PING;
use tribridge::richtext::model::is_safe_url;
use tribridge::richtext::{
    Block, FormattedText, Inline, Mention, MentionTarget, Rgb, html, markdown,
};

// ---- generators ---------------------------------------------------------------------------

/// Text with the characters that matter to some syntax, plus Unicode. It cannot spell
/// `@room` (no r, o, m), which HTML parsing reads as a mass ping on purpose.
fn text() -> impl Strategy<Value = String> {
    "[a-c <>&\"'*_`~#\\[\\]|\\\\@:.\\-=+!\n\t0-9é漢👋\u{301}ש\u{2}\u{3}]{0,10}"
}

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        "https://[a-z]{1,5}\\.org/[a-z0-9_()&?=\"<>'-]{0,8}",
        "mailto:[a-z]{1,4}@x\\.org",
        // Unsafe ones: normalisation must drop the link, keeping its text.
        "(javascript|data|file):[a-z()]{0,5}",
    ]
}

fn matrix_user_id() -> impl Strategy<Value = String> {
    "@[a-z0-9._=/-]{1,8}:[a-z0-9.-]{1,8}"
}

fn leaf(matrix_mentions_only: bool) -> BoxedStrategy<Inline> {
    let mention = if matrix_mentions_only {
        prop_oneof![
            (text(), matrix_user_id()).prop_map(|(display, user_id)| {
                Inline::Mention(Mention {
                    display,
                    target: MentionTarget::User {
                        network: html::MATRIX_NETWORK.into(),
                        user_id,
                    },
                })
            }),
            Just(Inline::Mention(Mention {
                display: "@room".into(),
                target: MentionTarget::Room,
            })),
        ]
        .boxed()
    } else {
        (text(), any::<String>(), any::<String>())
            .prop_map(|(display, network, user_id)| {
                Inline::Mention(Mention {
                    display,
                    target: MentionTarget::User { network, user_id },
                })
            })
            .boxed()
    };
    prop_oneof![
        4 => text().prop_map(Inline::Text),
        1 => text().prop_map(Inline::Code),
        1 => Just(Inline::LineBreak),
        1 => mention,
    ]
    .boxed()
}

fn rgb() -> impl Strategy<Value = Option<Rgb>> {
    proptest::option::of(any::<(u8, u8, u8)>().prop_map(|(r, g, b)| Rgb(r, g, b)))
}

fn inlines(matrix_mentions_only: bool) -> impl Strategy<Value = Vec<Inline>> {
    let tree = leaf(matrix_mentions_only).prop_recursive(3, 24, 4, |inner| {
        let kids = prop::collection::vec(inner, 0..4);
        prop_oneof![
            kids.clone().prop_map(Inline::Bold),
            kids.clone().prop_map(Inline::Italic),
            kids.clone().prop_map(Inline::Underline),
            kids.clone().prop_map(Inline::Strike),
            kids.clone().prop_map(Inline::Spoiler),
            (rgb(), rgb(), kids.clone()).prop_map(|(fg, bg, children)| Inline::Colour {
                fg,
                bg,
                children
            }),
            (url(), kids).prop_map(|(url, children)| Inline::Link { url, children }),
        ]
    });
    prop::collection::vec(tree, 0..5)
}

fn blocks(matrix_mentions_only: bool) -> impl Strategy<Value = Vec<Block>> {
    let block = prop_oneof![
        3 => inlines(matrix_mentions_only).prop_map(Block::Paragraph),
        1 => (
            proptest::option::of("[a-z+#]{0,4}|bad lang|x`y"),
            text(),
        )
            .prop_map(|(language, code)| Block::CodeBlock { language, code }),
    ];
    let tree = block.prop_recursive(2, 8, 3, |inner| {
        prop::collection::vec(inner, 0..3).prop_map(Block::Quote)
    });
    prop::collection::vec(tree, 0..4)
}

fn model(matrix_mentions_only: bool) -> impl Strategy<Value = FormattedText> {
    blocks(matrix_mentions_only).prop_map(FormattedText::new)
}

/// IRC text with formatting codes, digits and commas (which colour codes read), CR, NUL.
fn irc_text() -> impl Strategy<Value = String> {
    "[\u{2}\u{3}\u{4}\u{f}\u{11}\u{16}\u{1d}\u{1e}\u{1f}0-9,a-fA-F xyz\n\r\u{0}\u{1}é👋\u{301}]{0,40}"
}

/// Tag soup, with tags and attributes outside the allow-list and hostile URLs.
fn html_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        text(),
        Just("<b>".to_owned()),
        Just("</b>".to_owned()),
        Just("<p>".to_owned()),
        Just("</p>".to_owned()),
        Just("<blockquote>".to_owned()),
        Just("<pre><code class=\"language-x\" onclick=\"y\">".to_owned()),
        Just("<script>alert(1)</script>".to_owned()),
        Just("<img src=x onerror=alert(1)>".to_owned()),
        Just("<a href=\"javascript:alert(1)\">".to_owned()),
        Just("<a href=\"https://x.org\" onclick=\"z\" style=\"a\">".to_owned()),
        Just("<a href=\"https://matrix.to/#/@u:x\">".to_owned()),
        Just("</a>".to_owned()),
        Just("<span data-mx-color=\"#ff0000\" style=\"x\">".to_owned()),
        Just("<span data-mx-spoiler>".to_owned()),
        Just("<iframe src=\"https://x\"></iframe>".to_owned()),
        Just("<mx-reply><b>r</b></mx-reply>".to_owned()),
        Just("<table><tr><td>c</td></tr></table>".to_owned()),
        Just("<ul><li>".to_owned()),
        Just("<svg><foreignObject><b>".to_owned()),
        Just("<!-- c -->".to_owned()),
        Just("<br>".to_owned()),
        Just("<font color=\"#00ff00\">".to_owned()),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

// ---- helpers ------------------------------------------------------------------------------

/// Every (tag, attributes) in an HTML fragment, walked without recursion.
fn elements(fragment: &str) -> Vec<(String, Vec<(String, String)>)> {
    let ctx = QualName::new(
        None,
        Namespace::from("http://www.w3.org/1999/xhtml"),
        LocalName::from("body"),
    );
    let dom =
        parse_fragment(RcDom::default(), ParseOpts::default(), ctx, vec![], false).one(fragment);
    let mut out = Vec::new();
    let mut stack: Vec<Handle> = dom.document.children.borrow().clone();
    let mut first = true;
    while let Some(n) = stack.pop() {
        if let NodeData::Element { name, attrs, .. } = &n.data {
            // The fragment parser's own <html> wrapper is not part of the output.
            if !(first && &*name.local == "html") {
                let attrs = attrs
                    .borrow()
                    .iter()
                    .map(|a| (a.name.local.to_string(), a.value.to_string()))
                    .collect();
                out.push((name.local.to_string(), attrs));
            }
        }
        first = false;
        stack.extend(n.children.borrow().iter().cloned());
    }
    out
}

fn assert_allowed(formatted: &str) -> Result<(), TestCaseError> {
    for (tag, attrs) in elements(formatted) {
        prop_assert!(
            ALLOWED_TAGS.contains(&tag.as_str()),
            "tag {tag} in {formatted:?}"
        );
        for (a, v) in attrs {
            prop_assert!(is_allowed_attribute(&tag, &a), "{tag} {a} in {formatted:?}");
            if a == "href" {
                prop_assert!(is_safe_url(&v), "href {v:?} in {formatted:?}");
            }
        }
    }
    Ok(())
}

/// What IRC shows: codes stripped, control characters (CR, NUL, ...) gone, blank lines gone
/// (IRC cannot send an empty line; a line of only spaces shows as nothing either).
fn irc_visible(s: &str) -> Vec<String> {
    irc::strip_formatting(s)
        .split('\n')
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        })
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// What a Markdown reader sees of plain text, as lines: the anti-ping U+2060 is invisible,
/// a line of only whitespace shows as a blank line, and Markdown shows any run of blank
/// lines (a paragraph gap) as one: it cannot express two.
fn md_visible(s: &str) -> String {
    let s = s.replace(ANTI_PING, "");
    let mut lines: Vec<&str> = Vec::new();
    for l in s.split('\n') {
        let blank = l.trim().is_empty();
        if blank && lines.last().is_none_or(|p| p.is_empty()) {
            continue;
        }
        lines.push(if blank { "" } else { l });
    }
    while lines.last() == Some(&"") {
        lines.pop();
    }
    lines.join("\n")
}

fn all_irc_options() -> [IrcRenderOptions; 2] {
    [
        IrcRenderOptions::default(),
        IrcRenderOptions {
            code_block: CodeBlockStyle::Plain,
            colours: false,
        },
    ]
}

// ---- properties ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// IRC → model → IRC keeps the visible text.
    #[test]
    fn irc_round_trip_keeps_visible_text(s in irc_text()) {
        for o in all_irc_options() {
            let lines = irc::render(&irc::parse(&s), &o);
            prop_assert_eq!(irc_visible(&lines.join("\n")), irc_visible(&s));
        }
    }

    /// IRC rendering is a fixed point after one round: formatting survives, not just text.
    /// (The first round may drop empty lines, which IRC cannot send.)
    #[test]
    fn irc_rendering_is_stable(s in irc_text()) {
        let o = IrcRenderOptions::default();
        let first = irc::render(&irc::parse(&s), &o);
        let model = irc::parse(&first.join("\n"));
        let second = irc::render(&model, &o);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(irc::parse(&second.join("\n")), model);
    }

    /// Any model (with Matrix mentions, as after mapping for Matrix) renders to HTML that
    /// parses back to the same model.
    #[test]
    fn html_round_trip(m in model(true)) {
        let formatted = html::render_html(&m);
        prop_assert_eq!(html::parse(&formatted), m, "html {:?}", formatted);
    }

    /// Rendered HTML never has a tag or attribute outside the allow-list: from any model,
    /// with any mention ids and URLs.
    #[test]
    fn html_render_respects_allow_list(m in model(false)) {
        if let Some(f) = html::render(&m).formatted_body {
            assert_allowed(&f)?;
        }
        assert_allowed(&html::render_html(&m))?;
    }

    /// ... and from any HTML input, hostile or broken, passed through.
    #[test]
    fn html_pass_through_respects_allow_list(soup in html_soup()) {
        assert_allowed(&html::render_html(&html::parse(&soup)))?;
    }

    /// Any string rendered as Markdown displays as that string.
    #[test]
    fn markdown_plain_text_is_literal(s in any::<String>()) {
        let m = FormattedText::plain(&s);
        let md = markdown::render(&m);
        let back = markdown::parse(&md).to_plain_text();
        prop_assert_eq!(md_visible(&back), md_visible(&m.to_plain_text()), "markdown {:?}", md);
    }

    /// The same with the characters Markdown cares about, densely.
    #[test]
    fn markdown_syntax_text_is_literal(s in "[ \t\n*_`~#>+=\\-|\\[\\]()<>!&;@:\\\\0-9a-c.]{0,30}") {
        let m = FormattedText::plain(&s);
        let md = markdown::render(&m);
        let back = markdown::parse(&md).to_plain_text();
        prop_assert_eq!(md_visible(&back), md_visible(&m.to_plain_text()), "markdown {:?}", md);
    }

    /// No IRC line ever contains CR, LF or NUL, or is empty, whatever the model.
    #[test]
    fn irc_lines_are_clean(m in model(false), s in irc_text()) {
        for o in all_irc_options() {
            for t in [&m, &irc::parse(&s), &markdown::parse(&s), &html::parse(&s)] {
                for line in irc::render(t, &o) {
                    prop_assert!(!line.contains(['\r', '\n', '\0']), "{:?}", line);
                    prop_assert!(!line.is_empty());
                }
            }
        }
    }

    /// Hand-built, non-normal trees (control characters anywhere) render cleanly too.
    #[test]
    fn irc_lines_are_clean_for_raw_trees(a in any::<String>(), b in any::<String>(), c in any::<String>()) {
        let raw = FormattedText { blocks: vec![
            Block::Paragraph(vec![
                Inline::Text(a.clone()),
                Inline::Code(b.clone()),
                Inline::Link { url: c.clone(), children: vec![Inline::Text(b.clone())] },
                Inline::Mention(Mention { display: c.clone(), target: MentionTarget::Room }),
            ]),
            Block::CodeBlock { language: Some(c), code: a },
        ]};
        for line in irc::render(&raw, &IrcRenderOptions::default()) {
            prop_assert!(!line.contains(['\r', '\n', '\0']), "{:?}", line);
        }
    }

    /// Normal form is a fixed point.
    #[test]
    fn normalising_twice_changes_nothing(m in model(false)) {
        prop_assert_eq!(m.normalized(), m);
    }

    /// Parsers accept anything.
    #[test]
    fn parsers_never_panic(s in any::<String>()) {
        let _ = irc::parse(&s);
        let _ = markdown::parse(&s);
        let _ = html::parse(&s);
    }
}
