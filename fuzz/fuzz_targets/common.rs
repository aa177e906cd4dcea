//! Checks shared by the fuzz targets: whatever a parser made of the input, every renderer
//! must accept it and keep its guarantees.
//!
//! Owns: the invariants checked on every parsed input.
//! Must not: do anything a parser or renderer is not supposed to need (no I/O).

use tribridge::richtext::html::{self, ALLOWED_TAGS};
use tribridge::richtext::irc::{self, CodeBlockStyle, IrcRenderOptions};
use tribridge::richtext::{FormattedText, markdown};

/// Renders `text` every way and checks the output guarantees. `html_round_trip`: whether
/// its mentions are Matrix ones (or none), so that the HTML must parse back to it.
pub fn check_all(text: &FormattedText, html_round_trip: bool) {
    assert_eq!(&text.normalized(), text, "parsers return normal form");
    for opts in [
        IrcRenderOptions::default(),
        IrcRenderOptions { code_block: CodeBlockStyle::Plain, colours: false },
    ] {
        for line in irc::render(text, &opts) {
            assert!(!line.contains(['\r', '\n', '\0']), "IRC line {line:?}");
            assert!(!line.is_empty());
        }
    }
    let _ = markdown::render(text);
    let body = html::render(text);
    if let Some(f) = body.formatted_body {
        // Cheap allow-list check on the text: every tag opener names an allowed tag.
        for (i, _) in f.match_indices('<') {
            let rest = &f[i + 1..];
            let rest = rest.strip_prefix('/').unwrap_or(rest);
            let name: String = rest.chars().take_while(char::is_ascii_alphanumeric).collect();
            assert!(ALLOWED_TAGS.contains(&name.as_str()), "tag {name:?} in {f:?}");
        }
        // What Matrix receives parses back to the same text.
        if html_round_trip {
            assert_eq!(&html::parse(&f), text, "HTML round trip of {f:?}");
        }
    }
}
