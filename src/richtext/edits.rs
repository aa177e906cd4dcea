//! How an edit is shown where a message cannot be edited (IRC): the gateway's [`EditPolicy`]
//! and the short diff of its `diff` form.
//!
//! Owns: the policy values and [`short_diff`], a pure function of two plain texts. Must not: do
//! I/O or know a protocol; the IRC connector frames what this returns.

use serde::{Deserialize, Serialize};

/// What destinations without edits (IRC) show when a message is edited elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EditPolicy {
    /// Nothing: the edit is dropped for those destinations (counted, logged at debug).
    Off,
    /// The whole corrected text again, marked `* corrected text`.
    #[default]
    Corrected,
    /// A short `* s/old/new/` of the changed words, or the corrected text when that is shorter
    /// or the change cannot be shown that way.
    Diff,
}

/// Words and the runs of whitespace between them, in order.
fn tokens(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut in_space = None;
    for (index, character) in text.char_indices() {
        let space = character.is_whitespace();
        if in_space.is_some_and(|previous| previous != space) {
            tokens.push(&text[start..index]);
            start = index;
        }
        in_space = Some(space);
    }
    if start < text.len() {
        tokens.push(&text[start..]);
    }
    tokens
}

/// `s/old/new/` for the change from `old` to `new`, at word granularity: the changed words, with
/// as many neighbouring words as it takes for `old` to name the first place it occurs. `None`
/// when the texts are equal, when the change spans lines or contains `/`, or when the diff would
/// not be shorter than `new` itself (the caller then shows the corrected text).
#[must_use]
pub fn short_diff(old: &str, new: &str) -> Option<String> {
    let old_tokens = tokens(old);
    let new_tokens = tokens(new);
    let common = old_tokens.len().min(new_tokens.len());
    let prefix = old_tokens
        .iter()
        .zip(&new_tokens)
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = old_tokens
        .iter()
        .rev()
        .zip(new_tokens.iter().rev())
        .take(common - prefix)
        .take_while(|(a, b)| a == b)
        .count();
    if prefix == old_tokens.len() && prefix == new_tokens.len() {
        return None;
    }
    // [start, old_end) of old and [start, new_end) of new are the changed tokens.
    let mut start = prefix;
    let mut old_end = old_tokens.len() - suffix;
    let mut new_end = new_tokens.len() - suffix;
    let byte_offset = |tokens: &[&str], index: usize| tokens[..index].iter().map(|t| t.len()).sum();
    loop {
        let pattern: String = old_tokens[start..old_end].concat();
        // A pattern must be a word or more (not empty, not only spaces) and must match first
        // where the change is, since `s///` reads as "the first occurrence".
        let names_the_place = !pattern.trim().is_empty()
            && old.find(&pattern) == Some(byte_offset(&old_tokens, start));
        if names_the_place {
            break;
        }
        let is_space = |token: &str| token.trim().is_empty();
        if start > 0 {
            // One more word before (with the space between).
            start -= 1;
            while start > 0 && is_space(old_tokens[start]) {
                start -= 1;
            }
        } else if old_end < old_tokens.len() {
            // One more word after.
            old_end += 1;
            new_end += 1;
            while old_end < old_tokens.len() && is_space(old_tokens[old_end - 1]) {
                old_end += 1;
                new_end += 1;
            }
        } else {
            return None;
        }
    }
    let pattern = old_tokens[start..old_end].concat();
    let replacement = new_tokens[start..new_end].concat();
    if [&pattern, &replacement]
        .iter()
        .any(|part| part.contains(['/', '\n', '\r']))
    {
        return None;
    }
    let diff = format!("s/{pattern}/{replacement}/");
    (diff.chars().count() < new.chars().count()).then_some(diff)
}

#[cfg(test)]
mod tests {
    use super::short_diff;

    #[test]
    fn diffs_name_the_changed_words_or_give_way_to_the_full_text() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "this is teh best message we had",
                "this is the best message we had",
                Some("s/teh/the/"),
            ),
            // Two changed words far apart: the pattern covers both.
            (
                "one two three four five six seven eight nine ten",
                "one 2 three four five six seven eight 9 ten",
                None,
            ),
            // Deleted word: the pattern is the word and a space.
            (
                "the quick brown fox jumps over the lazy dog",
                "the quick fox jumps over the lazy dog",
                Some("s/brown //"),
            ),
            // Inserted word: one neighbour is taken as the pattern.
            (
                "the quick fox jumps over the lazy dog",
                "the quick brown fox jumps over the lazy dog",
                Some("s/quick /quick brown /"),
            ),
            // `the` occurs earlier: context is added until the pattern names the place.
            (
                "the cat sat on the mat all day long",
                "the cat sat on a mat all day long",
                Some("s/on the/on a/"),
            ),
            ("same text", "same text", None),
            // Shorter to say again than to diff.
            ("hi", "ho", None),
            ("a path a/b here and more", "a path a/c here and more", None),
        ];
        for (old, new, expected) in cases {
            assert_eq!(
                short_diff(old, new).as_deref(),
                *expected,
                "{old:?} → {new:?}"
            );
        }
    }
}
