//! The loop breaker: recognises a message that bridges have been passing around in a circle
//! (two bridges, or two instances of this one, linking the same pair of channels the other way
//! round) by the relay prefixes piled up at its start, `<bridge> <other-bridge> <alice> hi`.
//!
//! Each pass through a bridge adds a `<nick> ` (or `[nick] `) prefix; a person, or one other
//! bridge in front of us, accounts for one or two. A message arriving with [`LOOP_DEPTH`] or
//! more is dropped by the router, counted and logged. Our own echoes never get this far: the
//! connectors and the store stop them first.
//!
//! Owns: the pure prefix counting. Must not: know networks, or keep state.

/// Nested relay prefixes from which a message is treated as looping.
pub const LOOP_DEPTH: usize = 3;

/// The longest nick a relay prefix is taken to hold.
const MAX_PREFIX_NICK: usize = 64;

/// How many relay prefixes (`<nick> ` or `[nick] `, nick without spaces or brackets) start
/// `text`, one after the other.
#[must_use]
pub fn relay_depth(text: &str) -> usize {
    let mut rest = text;
    let mut depth = 0;
    while let Some((_, after)) = split_relay_prefix(rest) {
        depth += 1;
        rest = after;
    }
    depth
}

/// The first relay prefix of `text` and what follows it: `<alice> hi` → `("alice", "hi")`.
/// `None` when `text` does not start with one (leading spaces aside).
#[must_use]
pub fn split_relay_prefix(text: &str) -> Option<(&str, &str)> {
    let rest = text.trim_start();
    let close = match rest.chars().next() {
        Some('<') => '>',
        Some('[') => ']',
        _ => return None,
    };
    let inner = &rest[1..];
    let end = inner.find(close)?;
    let nick = &inner[..end];
    if nick.is_empty()
        || nick.chars().count() > MAX_PREFIX_NICK
        || nick.contains(|c: char| c.is_whitespace() || "<>[]".contains(c))
    {
        return None;
    }
    let after = inner[end + close.len_utf8()..].strip_prefix(' ')?;
    Some((nick, after.trim_start()))
}

/// Whether `text` carries so many relay prefixes that bridges are passing it around.
#[must_use]
pub fn is_looping(text: &str) -> bool {
    relay_depth(text) >= LOOP_DEPTH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_prefixes_are_counted_at_the_start_only() {
        for (text, depth) in [
            ("hello", 0),
            ("<alice> hello", 1),
            ("<bridge> <alice> hello", 2),
            ("[bridge] <alice> hello", 2),
            ("<b2> [b1] <alice> hello", 3),
            ("<b2>   <b1> <alice> <x> hi", 4),
            ("a <b> <c> <d> e", 0),
            ("<a b> <c> <d> hi", 0),
            ("<> <c> <d> hi", 0),
            ("<a><b> hi", 0),
            ("<a> <b> <c>", 2),
            ("<\u{e9}l\u{e8}ve> <b> <c> d", 3),
            ("<", 0),
            ("", 0),
        ] {
            assert_eq!(relay_depth(text), depth, "{text:?}");
        }
        assert!(is_looping("<b2> <b1> <alice> hello"));
        assert!(!is_looping("<b1> <alice> hello"));
    }

    #[test]
    fn the_first_prefix_splits_off() {
        assert_eq!(split_relay_prefix("<alice> hi"), Some(("alice", "hi")));
        assert_eq!(
            split_relay_prefix("  [b1]   <alice> hi"),
            Some(("b1", "<alice> hi"))
        );
        assert_eq!(split_relay_prefix("<alice>hi"), None);
        assert_eq!(split_relay_prefix("alice: hi"), None);
        assert_eq!(split_relay_prefix("<a b> hi"), None);
    }
}
