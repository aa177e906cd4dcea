//! Table tests of the rich-text conversions across networks, one table per direction, with
//! the tricky cases of the issue and Unicode (emoji, combining marks, RTL, CJK), plus the
//! irc-parser-tests vectors that contain formatting codes.
//!
//! Owns: expectations about what a reader on the destination network receives.
//! Must not: reach into private items; everything here goes through the public API.

use tribridge::richtext::irc::{self, CodeBlockStyle, IrcRenderOptions};
use tribridge::richtext::mention::{self, ANTI_PING, no_ping_nick};
use tribridge::richtext::model::{Mention, MentionTarget};
use tribridge::richtext::{FormattedText, html, markdown};
use tribridge::vocab::{CaseMapping, People};

const WJ: char = ANTI_PING;

fn irc_opts() -> IrcRenderOptions {
    IrcRenderOptions::default()
}

/// The people directory as the daemon learns it: alice and 李 said something on Matrix, carl
/// on Mattermost, dave on IRC.
fn directory() -> People {
    let people = People::new(
        [
            ("libera".to_owned(), CaseMapping::Rfc1459),
            ("matrix".to_owned(), CaseMapping::Exact),
            ("mattermost".to_owned(), CaseMapping::Ascii),
        ]
        .into(),
    );
    people.saw("matrix", "@alice:example.org", "Alice 🌸");
    people.saw("matrix", "@li:example.org", "李");
    people.saw("mattermost", "u-carl", "carl");
    people.saw("libera", "dave", "dave");
    people
}

/// Mentions as destination `network` shows them, with its own people as the connectors render
/// them (Matrix: the id, showing the display name; Mattermost: `@username`; IRC: the nick).
fn rewrite(text: &mut FormattedText, people: &People, network: &str) {
    mention::rewrite_mentions(
        text,
        network,
        &|user_id, display| {
            let (id, shown) = people
                .current(network, user_id)
                .unwrap_or_else(|| (user_id.to_owned(), display.to_owned()));
            let (user_id, display) = match network {
                "matrix" => (user_id.to_owned(), shown),
                "mattermost" => (shown.clone(), format!("@{shown}")),
                _ => (id.clone(), id),
            };
            Some(Mention {
                display,
                target: MentionTarget::User {
                    network: network.to_owned(),
                    user_id,
                },
            })
        },
        &|other, user_id| people.current(other, user_id).map(|(_, shown)| shown),
    );
}

#[test]
fn irc_to_mattermost() {
    let cases: Vec<(&str, String)> = vec![
        ("2*3*4", "2\\*3\\*4".into()),
        ("_init_", "\\_init\\_".into()),
        ("# not a heading", "\\# not a heading".into()),
        ("<b>", "\\<b>".into()),
        ("*italic*", "\\*italic\\*".into()),
        ("\x02bold\x02 \x1ditalic\x1d", "**bold** *italic*".into()),
        ("\x1estrike\x1e \x11code\x11", "~~strike~~ `code`".into()),
        ("\x02 spaced \x02x", "&#32;**spaced** x".into()),
        ("\x0304red\x03 text", "red text".into()),
        ("\x031,1spoiler\x03", "\\|\\|spoiler\\|\\|".into()),
        ("@here everyone", format!("@{WJ}here everyone")),
        ("see ~town-square", format!("see \\~{WJ}town-square")),
        (
            "👋🏽 \x02שלום\x02 漢字 e\u{301}",
            "👋🏽 **שלום** 漢字 e\u{301}".into(),
        ),
        ("> not a quote", "\\> not a quote".into()),
        ("[x](y)", "\\[x\\](y)".into()),
    ];
    for (input, want) in cases {
        let got = markdown::render(&irc::parse(input));
        assert_eq!(got, want, "IRC {input:?}");
        // And Mattermost shows the same visible text back (a spoiler gains its `||` marks).
        if input.contains("\x031,1") {
            continue;
        }
        let back = markdown::parse(&got).to_plain_text().replace(WJ, "");
        assert_eq!(back, irc::strip_formatting(input), "IRC {input:?}");
    }
}

#[test]
fn irc_to_matrix() {
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("a < b && c > d", "a < b && c > d", None),
        (
            "\x02<b>\x02 & <script>",
            "<b> & <script>",
            Some("<strong>&lt;b&gt;</strong> &amp; &lt;script&gt;"),
        ),
        ("*italic* is not /me", "*italic* is not /me", None),
        (
            "\x0304,12colour\x0f",
            "colour",
            Some("<span data-mx-color=\"#ff0000\" data-mx-bg-color=\"#0000fc\">colour</span>"),
        ),
        (
            "\x031,1secret\x03",
            "secret",
            Some("<span data-mx-spoiler>secret</span>"),
        ),
        (
            "\x11mono\x11 \x1funder\x1f",
            "mono under",
            Some("<code>mono</code> <u>under</u>"),
        ),
        (
            "مرحبا \x02עולם\x02 😀",
            "مرحبا עולם 😀",
            Some("مرحبا <strong>עולם</strong> 😀"),
        ),
        (
            "漢字\u{301}\x1d斜\x1d",
            "漢字\u{301}斜",
            Some("漢字\u{301}<em>斜</em>"),
        ),
    ];
    for (input, body, formatted) in cases {
        let r = html::render(&irc::parse(input));
        assert_eq!(r.body, body, "IRC {input:?}");
        assert_eq!(r.formatted_body.as_deref(), formatted, "IRC {input:?}");
    }
}

#[test]
fn matrix_to_irc() {
    let o = irc_opts();
    let plain = IrcRenderOptions {
        code_block: CodeBlockStyle::Plain,
        colours: false,
    };
    let cases: Vec<(&str, IrcRenderOptions, Vec<&str>)> = vec![
        ("<strong>b</strong> <em>i</em>", o, vec!["\x02b\x02 \x1di"]),
        ("<del>s</del><u>u</u>", o, vec!["\x1es\x1f\x1eu"]),
        (
            "<mx-reply><blockquote><a href=\"https://matrix.to/#/!r:x/$e\">In reply to</a> old</blockquote></mx-reply>new",
            o,
            vec!["new"],
        ),
        (
            "<a href=\"https://example.org/a\">site</a> and <a href=\"https://example.org\">https://example.org</a>",
            o,
            vec!["site <https://example.org/a> and https://example.org"],
        ),
        (
            "<blockquote><p>quoted</p><p>two</p></blockquote><p>reply</p>",
            o,
            vec!["> quoted", "> two", "reply"],
        ),
        (
            "<pre><code class=\"language-rust\">fn main() {\n\n}\n</code></pre>",
            o,
            vec!["\x11fn main() {\x11", " ", "\x11}\x11"],
        ),
        ("<pre><code>a\nb</code></pre>", plain, vec!["a", "b"]),
        ("line1<br>line2\nsame", o, vec!["line1", "line2 same"]),
        ("<p>x\u{0}\u{2}y\r</p>", o, vec!["xy"]),
        (
            "<span data-mx-color=\"#00ff00\">green</span>",
            plain,
            vec!["green"],
        ),
        (
            "<span data-mx-spoiler>boo</span>",
            plain,
            vec!["\x0301,01boo"],
        ),
        (
            "🇫🇷 <b>ש</b>\u{5b8} 中文",
            o,
            vec!["🇫🇷 \x02ש\x02\u{5b8} 中文"],
        ),
    ];
    for (input, opts, want) in cases {
        assert_eq!(
            irc::render(&html::parse(input), &opts),
            want,
            "HTML {input:?}"
        );
    }
}

#[test]
fn matrix_to_mattermost() {
    let cases: Vec<(&str, &str)> = vec![
        (
            "<strong>b</strong> <em>i</em> <del>s</del>",
            "**b** *i* ~~s~~",
        ),
        ("<code>a*b</code> 2*3", "`a*b` 2\\*3"),
        (
            "<pre><code class=\"language-py\">x = 1\n</code></pre>",
            "```py\nx = 1\n```",
        ),
        ("<blockquote>q</blockquote>a", "> q\n\na"),
        (
            "<a href=\"https://x.org/?q=a_b\">x_y</a>",
            "[x\\_y](<https://x.org/?q=a_b>)",
        ),
        (
            "<h2>Title</h2><ul><li>one</li><li>two</li></ul>",
            "**Title**\n\n• one\n\n• two",
        ),
        ("<b>漢字</b> שלום 👍🏿", "**漢字** שלום 👍🏿"),
    ];
    for (input, want) in cases {
        assert_eq!(
            markdown::render(&html::parse(input)),
            want,
            "HTML {input:?}"
        );
    }
}

#[test]
fn mattermost_to_irc_and_matrix() {
    let o = irc_opts();
    let cases: Vec<(&str, Vec<&str>, Option<&str>)> = vec![
        (
            "**bold** _it_ ~~s~~",
            vec!["\x02bold\x02 \x1dit\x1d \x1es"],
            Some("<strong>bold</strong> <em>it</em> <del>s</del>"),
        ),
        ("`<b>`", vec!["\x11<b>"], Some("<code>&lt;b&gt;</code>")),
        ("<b>raw</b>", vec!["<b>raw</b>"], None),
        (
            "```\nline1\nline2\n```",
            vec!["\x11line1\x11", "\x11line2\x11"],
            Some("<pre><code>line1\nline2\n</code></pre>"),
        ),
        (
            "[docs](https://d.org)",
            vec!["docs <https://d.org>"],
            Some("<a href=\"https://d.org\">docs</a>"),
        ),
        (
            "> quote\n\nreply",
            vec!["> quote", "reply"],
            Some("<blockquote><p>quote</p></blockquote><p>reply</p>"),
        ),
        ("first\nsecond", vec!["first", "second"], None),
        (
            "こんにちは **世界** 🎉",
            vec!["こんにちは \x02世界\x02 🎉"],
            Some("こんにちは <strong>世界</strong> 🎉"),
        ),
    ];
    for (input, irc_want, html_want) in cases {
        let t = markdown::parse(input);
        assert_eq!(irc::render(&t, &o), irc_want, "MD {input:?}");
        assert_eq!(
            html::render(&t).formatted_body.as_deref(),
            html_want,
            "MD {input:?}"
        );
    }
}

#[test]
fn mentions_across_networks() {
    let people = directory();
    let o = irc_opts();

    // A Matrix pill → IRC and Mattermost: the name the person is shown under there.
    let t = html::parse("<a href=\"https://matrix.to/#/@alice:example.org\">Alice</a>: hi");
    let mut irc_t = t.clone();
    rewrite(&mut irc_t, &people, "libera");
    assert_eq!(irc::render(&irc_t, &o), vec!["Alice 🌸: hi"]);
    let mut mm_t = t;
    rewrite(&mut mm_t, &people, "mattermost");
    assert_eq!(markdown::render(&mm_t), "Alice 🌸: hi");

    // An IRC line naming a Matrix person (CJK) → their pill; an unknown name stays text.
    let mut t = irc::parse("李: and bob: look");
    mention::detect_mentions(&mut t, &|word| people.shown_as("libera", word));
    rewrite(&mut t, &people, "matrix");
    assert_eq!(
        html::render(&t).formatted_body.as_deref(),
        Some("<a href=\"https://matrix.to/#/@li:example.org\">李</a>: and bob: look")
    );

    // IRC naming a Mattermost person → `@username` there; a Matrix line naming an IRC person
    // → the nick on IRC.
    let mut t = irc::parse("thanks CARL!");
    mention::detect_mentions(&mut t, &|word| people.shown_as("libera", word));
    rewrite(&mut t, &people, "mattermost");
    assert_eq!(markdown::render(&t), "thanks @carl!");
    let mut t = html::parse("dave, <em>look</em>");
    mention::detect_mentions(&mut t, &|word| people.shown_as("matrix", word));
    rewrite(&mut t, &people, "libera");
    assert_eq!(irc::render(&t, &o), vec!["dave, \x1dlook"]);

    // An unknown Mattermost user → IRC plain text, and back to Mattermost it pings nobody.
    let mut t = markdown::parse("@carol ok");
    rewrite(&mut t, &people, "libera");
    assert_eq!(irc::render(&t, &o), vec!["@carol ok"]);
    assert_eq!(markdown::render(&t), format!("@{WJ}carol ok"));
}

#[test]
fn mass_pings_across_networks() {
    let cases: Vec<(&str, bool, String)> = vec![
        ("@room look", false, format!("@{WJ}room look")),
        ("@room look", true, "@channel look".into()),
        ("<b>@here</b> x", false, format!("**@{WJ}here** x")),
    ];
    for (input, allowed, want) in cases {
        let mut t = html::parse(input);
        rewrite(&mut t, &directory(), "mattermost");
        mention::neutralise_mass_pings(&mut t, allowed);
        assert_eq!(markdown::render(&t), want, "{input:?} allowed={allowed}");
    }
    // Mattermost @channel → Matrix: neutralised in body and formatted body.
    let mut t = markdown::parse("@channel now");
    mention::neutralise_mass_pings(&mut t, false);
    let r = html::render(&t);
    assert_eq!(r.body, format!("@{WJ}channel now"));
    assert!(!r.body.contains("@room"));
    // IRC text "@everyone" → defused too.
    let mut t = irc::parse("hey @everyone");
    mention::neutralise_mass_pings(&mut t, false);
    assert_eq!(t.to_plain_text(), format!("hey @{WJ}everyone"));
}

#[test]
fn no_ping_nick_table() {
    for (nick, want) in [
        ("alice", format!("a{WJ}lice")),
        ("[m]bot", format!("[{WJ}m]bot")),
        ("ñandú", format!("ñ{WJ}andú")),
        ("n\u{303}andu", format!("n\u{303}{WJ}andu")),
        ("ab", format!("a{WJ}b")),
        ("a", "a".to_owned()),
    ] {
        assert_eq!(no_ping_nick(nick), want, "{nick:?}");
    }
}

// ---- irc-parser-tests vectors -------------------------------------------------------------

/// Every double-quoted YAML scalar in `file`, with YAML escapes decoded.
fn quoted_strings(file: &str) -> Vec<String> {
    let path = format!(
        "{}/tests/data/irc-parser-tests/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '"' {
                continue;
            }
            let mut s = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('r') => s.push('\r'),
                        Some('t') => s.push('\t'),
                        Some('0') => s.push('\0'),
                        Some('x') => {
                            let h: String = chars.by_ref().take(2).collect();
                            let v = u32::from_str_radix(&h, 16).expect("hex escape");
                            s.push(char::from_u32(v).expect("char"));
                        }
                        Some('u') => {
                            let h: String = chars.by_ref().take(4).collect();
                            let v = u32::from_str_radix(&h, 16).expect("unicode escape");
                            s.push(char::from_u32(v).expect("char"));
                        }
                        Some(other) => s.push(other),
                        None => {}
                    },
                    c => s.push(c),
                }
            }
            out.push(s);
        }
    }
    out
}

#[test]
fn irc_parser_tests_formatting_vectors() {
    // The hosts with formatting codes in them: their visible text is `network.admin`.
    let hosts: Vec<String> = quoted_strings("userhost-split.yaml")
        .into_iter()
        .filter(|s| s.contains(['\x02', '\x03', '\x0f']) && !s.contains('!'))
        .collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    for h in &hosts {
        assert_eq!(irc::strip_formatting(h), "network.admin");
        assert_eq!(irc::parse(h).to_plain_text(), "network.admin");
        let rendered = irc::render(&irc::parse(h), &irc_opts()).join("");
        assert_eq!(irc::strip_formatting(&rendered), "network.admin");
    }
    // `net\x035w\x03ork` is red `w`: colour 5 (maroon) on `w` only.
    let t = irc::parse("net\x035w\x03ork");
    assert_eq!(
        html::render(&t).formatted_body.as_deref(),
        Some("net<span data-mx-color=\"#7f0000\">w</span>ork")
    );
}

#[test]
fn irc_parser_tests_strings_are_safe_and_keep_their_text() {
    let mut n = 0;
    for file in ["msg-split.yaml", "userhost-split.yaml"] {
        for s in quoted_strings(file) {
            n += 1;
            let lines = irc::render(&irc::parse(&s), &irc_opts());
            for l in &lines {
                assert!(!l.contains(['\r', '\n', '\0']), "{s:?} -> {l:?}");
            }
            let visible = |x: &str| -> String {
                irc::strip_formatting(x)
                    .split('\n')
                    .map(|l| {
                        l.chars()
                            .filter(|c| !c.is_control() || *c == '\t')
                            .collect::<String>()
                    })
                    .filter(|l| !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(visible(&lines.join("\n")), visible(&s), "{s:?}");
            // The same strings through the other parsers must not panic either.
            let _ = markdown::render(&markdown::parse(&s));
            let _ = html::render(&html::parse(&s));
        }
    }
    assert!(n > 100, "only {n} vectors read");
}

#[test]
fn plain_helpers() {
    let t = FormattedText::plain("a\nb");
    assert_eq!(t.to_plain_text(), "a\nb");
    assert!(FormattedText::plain(" \n ").is_empty());
}
