//! What to do with a message longer than a gateway allows on IRC, and permalinks to the
//! full text.
//!
//! Owns: [`LongTextPolicy`], [`apply`], and building permalinks from ids the connectors
//! already have ([`matrix_event_permalink`], [`mattermost_permalink`]).
//! Must not: split lines into byte budgets (the IRC connector does), fetch or upload
//! anything, or lose content without saying so in the output.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How a long message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongTextMode {
    /// Every line is sent (a 200-line paste holds the channel for minutes at the flood rate).
    Split,
    /// The first `max_lines` lines are sent, then a line pointing to the full text (the
    /// default: what IRC people ask of bridges).
    #[default]
    Truncate,
}

/// The default `max_lines`.
pub const DEFAULT_MAX_LINES: usize = 3;

/// Fewer bytes of text than one IRC line carries for ordinary nicks, channel names and sender
/// formats: the IRC connector keeps at least half of a line's budget (about 200 bytes of a
/// 512-byte line) for the text.
const MIN_TEXT_BYTES_PER_LINE: usize = 100;

/// A gateway's policy for messages longer than `max_lines` IRC lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongTextPolicy {
    /// Most lines sent for one message (at least 1 is always sent).
    pub max_lines: usize,
    /// What to do above that.
    pub mode: LongTextMode,
}

impl Default for LongTextPolicy {
    fn default() -> Self {
        LongTextPolicy {
            max_lines: DEFAULT_MAX_LINES,
            mode: LongTextMode::Truncate,
        }
    }
}

/// Applies `policy` to rendered lines.
///
/// [`LongTextMode::Split`] keeps every line. [`LongTextMode::Truncate`], when there are more
/// than `max_lines` lines, keeps `max_lines` of them and adds `… (N more lines: <link>)`, or
/// `… (N more lines not shown)` when there is no link to the full text. The added line has no
/// CR, LF or NUL (the link is cleaned).
#[must_use]
pub fn apply(
    lines: Vec<String>,
    policy: &LongTextPolicy,
    full_text_link: Option<&str>,
) -> Vec<String> {
    let keep = policy.max_lines.max(1);
    if policy.mode == LongTextMode::Split || lines.len() <= keep {
        return lines;
    }
    let hidden = lines.len() - keep;
    let mut out: Vec<String> = lines.into_iter().take(keep).collect();
    let link = full_text_link
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() && !c.is_whitespace())
                .collect::<String>()
        })
        .filter(|l| !l.is_empty());
    let more = if hidden == 1 { "line" } else { "lines" };
    out.push(match link {
        Some(l) => format!("… ({hidden} more {more}: {l})"),
        None => format!("… ({hidden} more {more} not shown)"),
    });
    out
}

/// Whether a text of this plain form may be cut by `policy` on IRC, so that a link to its
/// full text is worth making: its lines, each split into pieces an IRC line carries, may be
/// more than `max_lines`. (A line of `n` bytes takes at most `1 + n / 100` pieces when a piece
/// carries 100 bytes or more, as it does for ordinary channel names and sender formats.)
#[must_use]
pub fn may_be_cut(plain_text: &str, policy: &LongTextPolicy) -> bool {
    let keep = policy.max_lines.max(1);
    policy.mode == LongTextMode::Truncate && most_pieces(plain_text) > keep
}

/// The most IRC lines a text of this plain form is split into (see [`may_be_cut`]).
#[must_use]
pub fn most_pieces(plain_text: &str) -> usize {
    plain_text.lines().count() + plain_text.len() / MIN_TEXT_BYTES_PER_LINE
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"!$:@.-_=+~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The matrix.to permalink of an event: `https://matrix.to/#/<room>/<event>`.
#[must_use]
pub fn matrix_event_permalink(room_id_or_alias: &str, event_id: &str) -> String {
    format!(
        "https://matrix.to/#/{}/{}",
        encode_component(room_id_or_alias),
        encode_component(event_id)
    )
}

/// The Mattermost permalink of a post: `<server>/<team>/pl/<post_id>`.
#[must_use]
pub fn mattermost_permalink(server_url: &str, team_name: &str, post_id: &str) -> String {
    format!(
        "{}/{}/pl/{}",
        server_url.trim_end_matches('/'),
        encode_component(team_name),
        encode_component(post_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("line {i}")).collect()
    }

    #[test]
    fn split_keeps_everything() {
        let p = LongTextPolicy {
            max_lines: 2,
            mode: LongTextMode::Split,
        };
        assert_eq!(apply(lines(5), &p, None), lines(5));
    }

    #[test]
    fn truncate_table() {
        let p = LongTextPolicy {
            max_lines: 3,
            mode: LongTextMode::Truncate,
        };
        let link = matrix_event_permalink("!room:example.org", "$ev/ent");
        assert_eq!(link, "https://matrix.to/#/!room:example.org/$ev%2Fent");
        let cut = |n: usize, tail: &str| {
            let mut out = lines(3);
            out.push(tail.to_owned());
            (n, out)
        };
        let cases: Vec<(usize, Option<&str>, Vec<String>)> = vec![
            (3, None, lines(3)),
            (1, Some(&link), lines(1)),
            {
                let (n, out) = cut(5, &format!("… (2 more lines: {link})"));
                (n, Some(&link), out)
            },
            {
                let (n, out) = cut(4, "… (1 more line not shown)");
                (n, None, out)
            },
            {
                let (n, out) = cut(40, "… (37 more lines: ab)");
                (n, Some("a\r\nb"), out)
            },
        ];
        for (n, l, want) in cases {
            assert_eq!(apply(lines(n), &p, l), want);
        }
        let zero = LongTextPolicy {
            max_lines: 0,
            mode: LongTextMode::Truncate,
        };
        assert_eq!(
            apply(lines(2), &zero, None),
            vec!["line 1".to_owned(), "… (1 more line not shown)".to_owned()]
        );
    }

    #[test]
    fn default_is_three_lines_and_a_link() {
        let policy = LongTextPolicy::default();
        assert_eq!(policy.max_lines, 3);
        assert_eq!(policy.mode, LongTextMode::Truncate);
        assert_eq!(apply(lines(40), &policy, Some("https://x/y")).len(), 4);
    }

    #[test]
    fn may_be_cut_whenever_apply_cuts() {
        let policy = LongTextPolicy::default();
        assert!(!may_be_cut("a\nb\nc", &policy));
        assert!(may_be_cut("a\nb\nc\nd", &policy));
        assert!(!may_be_cut(&"x".repeat(299), &policy));
        assert!(may_be_cut(&"x".repeat(300), &policy));
        let split = LongTextPolicy {
            mode: LongTextMode::Split,
            ..policy
        };
        assert!(!may_be_cut("a\nb\nc\nd", &split));
    }

    #[test]
    fn mattermost_link() {
        assert_eq!(
            mattermost_permalink("https://mm.example.org/", "team a", "abc123"),
            "https://mm.example.org/team%20a/pl/abc123"
        );
    }
}
