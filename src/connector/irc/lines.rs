//! Turning a relayed message into IRC lines that are safe and fit: no CR, LF or NUL can ever reach
//! the wire (each would end the command early and let the rest be read as a second command), and
//! every line stays within the 512-byte limit including the prefix the server adds when it
//! relays it and the tags we send.
//!
//! Pure functions, no I/O: property-tested in this module.

/// The IRC line limit, CR LF included (RFC 1459 §2.3; `IRCv3` keeps it for the non-tag part).
pub const MAX_LINE_BYTES: usize = 512;

/// The longest `nick!user@host ` prefix we assume a server adds when it relays our line: a
/// conservative bound (hosts may be cloaks of up to 63 bytes, users up to 10).
#[must_use]
pub fn relay_prefix_bytes(nick: &str) -> usize {
    // ":" nick "!" user(10) "@" host(63) " "
    1 + nick.len() + 1 + 10 + 1 + 63 + 1
}

/// The text budget of one PRIVMSG/NOTICE to `target` from `nick`, given the bytes our own tags
/// take (`@label=... ` including the trailing space), and `ctcp_overhead` (9 for ACTION).
#[must_use]
pub fn text_budget(
    nick: &str,
    command: &str,
    target: &str,
    tag_bytes: usize,
    ctcp_overhead: usize,
) -> usize {
    // "<command> <target> :" ... "\r\n"
    let fixed = command.len() + 1 + target.len() + 2 + 2 + ctcp_overhead;
    let prefix = relay_prefix_bytes(nick).max(tag_bytes);
    MAX_LINE_BYTES.saturating_sub(fixed + prefix).max(16)
}

/// Split text into its logical lines: `\r\n`, `\n` and a lone `\r` all end a line; NUL and other
/// C0 controls that would break framing (CTCP's `\x01`) are removed. Formatting codes (bold,
/// colour, ...) are kept. Empty lines are dropped (IRC cannot send them).
#[must_use]
pub fn logical_lines(text: &str) -> Vec<String> {
    text.split(['\n', '\r'])
        .map(|line| {
            line.chars()
                .filter(|c| !matches!(c, '\0' | '\x01'))
                .collect::<String>()
        })
        .filter(|line| !line.trim().is_empty())
        .collect()
}

/// Split one line (no CR/LF/NUL) into pieces of at most `budget` bytes each, never inside a
/// UTF-8 character, preferring to break after a space. The pieces concatenated give back the
/// input exactly (a breaking space stays at the end of its piece).
#[must_use]
pub fn split_to_budget(line: &str, budget: usize) -> Vec<String> {
    let budget = budget.max(4); // a char is at most 4 bytes: always progress
    let mut pieces = Vec::new();
    let mut rest = line;
    while rest.len() > budget {
        // The largest char boundary within the budget.
        let mut cut = budget;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        // Prefer the last space in the second half of the window, so pieces stay long.
        if let Some(space) = rest[..cut].rfind(' ')
            && space + 1 >= cut / 2
        {
            cut = space + 1;
        }
        pieces.push(rest[..cut].to_owned());
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        pieces.push(rest.to_owned());
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_at_spaces_and_rejoins() {
        let pieces = split_to_budget("hello world this is a test", 12);
        assert_eq!(pieces, vec!["hello world ", "this is a ", "test"]);
        assert_eq!(pieces.concat(), "hello world this is a test");
    }

    #[test]
    fn never_splits_inside_a_char() {
        let text = "ééééé"; // 2 bytes each
        let pieces = split_to_budget(text, 5);
        assert!(pieces.iter().all(|p| p.len() <= 5));
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn line_breaks_and_nul_never_survive() {
        assert_eq!(
            logical_lines("a\r\nQUIT :x\rb\0c\n\nd\x01"),
            vec!["a", "QUIT :x", "bc", "d"]
        );
    }

    proptest! {
        #[test]
        fn split_pieces_fit_are_utf8_and_rejoin(line in "[^\r\n\0]{0,2000}", budget in 4usize..600) {
            let pieces = split_to_budget(&line, budget);
            for piece in &pieces {
                prop_assert!(piece.len() <= budget);
                prop_assert!(!piece.is_empty());
            }
            prop_assert_eq!(pieces.concat(), line);
        }

        #[test]
        fn produced_lines_have_no_cr_lf_nul_and_fit(text in "\\PC{0,3000}|[a\r\n\0 é]{0,600}", nick in "[a-z]{1,30}") {
            let budget = text_budget(&nick, "PRIVMSG", "#channel", 60, 9);
            for line in logical_lines(&text) {
                for piece in split_to_budget(&line, budget) {
                    let wire = format!(":{nick}!user@host PRIVMSG #channel :\x01ACTION {piece}\x01\r\n");
                    prop_assert!(!piece.contains(['\r', '\n', '\0']));
                    prop_assert!(wire.len() <= MAX_LINE_BYTES, "{} bytes", wire.len());
                }
            }
        }
    }
}
