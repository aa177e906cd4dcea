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
    /// Every line is sent.
    #[default]
    Split,
    /// The first lines are sent, then a line pointing to the full text.
    Truncate,
}

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
            max_lines: 5,
            mode: LongTextMode::Split,
        }
    }
}

/// Applies `policy` to rendered lines.
///
/// [`LongTextMode::Split`] keeps every line. [`LongTextMode::Truncate`], when there are more
/// than `max_lines` lines, keeps `max_lines - 1` of them and ends with
/// `… (N more lines: <link>)`, or `… (N more lines not shown)` when the origin has no link
/// to the full text. The added line has no CR, LF or NUL (the link is cleaned).
#[must_use]
pub fn apply(
    lines: Vec<String>,
    policy: &LongTextPolicy,
    full_text_link: Option<&str>,
) -> Vec<String> {
    let max = policy.max_lines.max(1);
    if policy.mode == LongTextMode::Split || lines.len() <= max {
        return lines;
    }
    let keep = max - 1;
    let hidden = lines.len() - keep;
    let mut out: Vec<String> = lines.into_iter().take(keep).collect();
    let link = full_text_link
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() && !c.is_whitespace())
                .collect::<String>()
        })
        .filter(|l| !l.is_empty());
    out.push(match link {
        Some(l) => format!("… ({hidden} more lines: {l})"),
        None => format!("… ({hidden} more lines not shown)"),
    });
    out
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
        let cases: Vec<(usize, Option<&str>, Vec<String>)> = vec![
            (3, None, lines(3)),
            (
                5,
                Some(&link),
                vec![
                    "line 1".into(),
                    "line 2".into(),
                    format!("… (3 more lines: {link})"),
                ],
            ),
            (
                4,
                None,
                vec![
                    "line 1".into(),
                    "line 2".into(),
                    "… (2 more lines not shown)".into(),
                ],
            ),
            (
                4,
                Some("a\r\nb"),
                vec![
                    "line 1".into(),
                    "line 2".into(),
                    "… (2 more lines: ab)".into(),
                ],
            ),
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
            vec!["… (2 more lines not shown)".to_owned()]
        );
    }

    #[test]
    fn mattermost_link() {
        assert_eq!(
            mattermost_permalink("https://mm.example.org/", "team a", "abc123"),
            "https://mm.example.org/team%20a/pl/abc123"
        );
    }
}
