//! Mattermost emoji names ⇄ Unicode emoji, for the reactions people use most. Reactions are
//! relayed as Unicode (what Matrix uses); a name not in the table travels as `:name:` and only
//! another Mattermost understands it.

/// (Mattermost name, Unicode). The first name of an emoji is the one sent; later rows with the
/// same emoji are aliases accepted on the way in.
const TABLE: &[(&str, &str)] = &[
    ("+1", "👍"),
    ("thumbsup", "👍"),
    ("-1", "👎"),
    ("thumbsdown", "👎"),
    ("smile", "😄"),
    ("smiley", "😃"),
    ("grinning", "😀"),
    ("grin", "😁"),
    ("laughing", "😆"),
    ("satisfied", "😆"),
    ("sweat_smile", "😅"),
    ("joy", "😂"),
    ("rofl", "🤣"),
    ("slightly_smiling_face", "🙂"),
    ("upside_down_face", "🙃"),
    ("wink", "😉"),
    ("blush", "😊"),
    ("heart_eyes", "😍"),
    ("sunglasses", "😎"),
    ("thinking_face", "🤔"),
    ("thinking", "🤔"),
    ("neutral_face", "😐"),
    ("confused", "😕"),
    ("open_mouth", "😮"),
    ("scream", "😱"),
    ("cry", "😢"),
    ("sob", "😭"),
    ("rage", "😡"),
    ("hugs", "🤗"),
    ("hugging_face", "🤗"),
    ("partying_face", "🥳"),
    ("see_no_evil", "🙈"),
    ("heart", "❤️"),
    ("broken_heart", "💔"),
    ("tada", "🎉"),
    ("white_check_mark", "✅"),
    ("heavy_check_mark", "✔️"),
    ("x", "❌"),
    ("eyes", "👀"),
    ("rocket", "🚀"),
    ("fire", "🔥"),
    ("pray", "🙏"),
    ("clap", "👏"),
    ("ok_hand", "👌"),
    ("wave", "👋"),
    ("raised_hands", "🙌"),
    ("muscle", "💪"),
    ("point_up", "☝️"),
    ("100", "💯"),
    ("star", "⭐"),
    ("warning", "⚠️"),
    ("question", "❓"),
    ("exclamation", "❗"),
    ("bulb", "💡"),
    ("coffee", "☕"),
    ("beer", "🍺"),
    ("bug", "🐛"),
];

/// Compare emoji without the variation selector (U+FE0F), which senders add or leave out.
fn bare(emoji: &str) -> String {
    emoji.chars().filter(|c| *c != '\u{fe0f}').collect()
}

/// The Unicode emoji for a Mattermost name, if known.
#[must_use]
pub fn to_unicode(name: &str) -> Option<&'static str> {
    TABLE.iter().find(|(n, _)| *n == name).map(|(_, e)| *e)
}

/// The Mattermost name for a reaction key: a known Unicode emoji, or `:name:` as relayed from
/// another Mattermost. `None` when there is no Mattermost equivalent.
#[must_use]
pub fn to_name(key: &str) -> Option<String> {
    if let Some(name) = key.strip_prefix(':').and_then(|k| k.strip_suffix(':'))
        && !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '_'))
    {
        return Some(name.to_owned());
    }
    let wanted = bare(key);
    TABLE
        .iter()
        .find(|(_, e)| bare(e) == wanted)
        .map(|(n, _)| (*n).to_owned())
}

/// The reaction key to relay for a Mattermost emoji name.
#[must_use]
pub fn key_of(name: &str) -> String {
    to_unicode(name).map_or_else(|| format!(":{name}:"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_aliases() {
        assert_eq!(key_of("thumbsup"), "👍");
        assert_eq!(to_name("👍").as_deref(), Some("+1"));
        assert_eq!(to_name("❤").as_deref(), Some("heart"));
        assert_eq!(to_name("❤️").as_deref(), Some("heart"));
        assert_eq!(key_of("parrot"), ":parrot:");
        assert_eq!(to_name(":parrot:").as_deref(), Some("parrot"));
        assert_eq!(to_name("🦜"), None);
        assert_eq!(to_name(":a b:"), None);
    }
}
