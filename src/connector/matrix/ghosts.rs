//! Ghost users of `mode = "appservice"`: the Matrix localpart of a person of another network
//! (`ghost_format`, sanitised to the user-id grammar), the registration's user namespace that
//! matches every ghost, and recognising a ghost among senders. Pure, unit-tested; the choice
//! of a localpart among colliding ones (and its storage) is the appservice session's.

use std::fmt::Write as _;

use super::config::is_localpart_char;

/// `format` with `{NETWORK}` and `{NICK}` substituted, each value sanitised: lower case, and
/// every character outside the localpart grammar (`a-z 0-9 . _ - /`; `=` is the escape) written
/// as `=` and its UTF-8 bytes in hex, as the Matrix specification's mapping of other ids does.
#[must_use]
pub fn localpart(format: &str, network: &str, nick: &str) -> String {
    format
        .replace("{NETWORK}", &sanitise(network))
        .replace("{NICK}", &sanitise(nick))
}

/// A name in the localpart grammar (see [`localpart`]); never empty.
#[must_use]
pub fn sanitise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars().flat_map(char::to_lowercase) {
        if c != '=' && is_localpart_char(c) {
            out.push(c);
        } else {
            let mut bytes = [0u8; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                let _ = write!(out, "={byte:02x}");
            }
        }
    }
    if out.is_empty() {
        out.push('=');
    }
    out
}

/// The literal text before and after `{NICK}` of each network's ghosts.
fn shapes(format: &str, networks: &[String]) -> Vec<(String, String)> {
    networks
        .iter()
        .map(|network| {
            let with_network = format.replace("{NETWORK}", &sanitise(network));
            let (before, after) = with_network
                .split_once("{NICK}")
                .unwrap_or((with_network.as_str(), ""));
            (before.to_owned(), after.replace("{NICK}", ""))
        })
        .collect()
}

/// Is `localpart` the shape of a ghost of one of `networks`?
#[must_use]
pub fn is_ghost(format: &str, networks: &[String], localpart: &str) -> bool {
    shapes(format, networks).iter().any(|(before, after)| {
        localpart.len() > before.len() + after.len()
            && localpart.starts_with(before.as_str())
            && localpart.ends_with(after.as_str())
    })
}

/// A regular expression matching exactly the user `@localpart:server_name`.
#[must_use]
pub fn exact_user_regex(localpart: &str, server_name: &str) -> String {
    format!("@{}:{}", escape(localpart), escape(server_name))
}

/// The registration's exclusive user namespace: a regular expression matching the ghosts of
/// `networks` on `server_name` (and nothing else of the bridge's shape).
#[must_use]
pub fn namespace_regex(format: &str, networks: &[String], server_name: &str) -> String {
    let alternatives: Vec<String> = shapes(format, networks)
        .iter()
        .map(|(before, after)| format!("{}.+{}", escape(before), escape(after)))
        .collect();
    format!("@(?:{}):{}", alternatives.join("|"), escape(server_name))
}

/// `text` with every regular-expression metacharacter escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~/=".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `template` (`ghost_displayname`) with `{NICK}` and `{NETWORK}` substituted.
#[must_use]
pub fn display_name(template: &str, network: &str, nick: &str) -> String {
    template
        .replace("{NETWORK}", network)
        .replace("{NICK}", nick)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localparts_keep_the_user_id_grammar() {
        assert_eq!(localpart("{NETWORK}_{NICK}", "irc", "alice"), "irc_alice");
        assert_eq!(localpart("{NETWORK}_{NICK}", "irc", "Alice"), "irc_alice");
        assert_eq!(localpart("{NETWORK}_{NICK}", "irc", "a[b]"), "irc_a=5bb=5d");
        assert_eq!(localpart("{NETWORK}_{NICK}", "irc", "a=b"), "irc_a=3db");
        assert_eq!(localpart("{NETWORK}_{NICK}", "irc", "é"), "irc_=c3=a9");
        assert_eq!(localpart("{NETWORK}_{NICK}", "irc", ""), "irc_=");
        assert!(
            localpart("{NETWORK}_{NICK}", "irc", "x y:z@\u{0}")
                .chars()
                .all(is_localpart_char)
        );
    }

    #[test]
    fn ghosts_are_recognised_and_matched_by_the_namespace() {
        let networks = vec!["irc".to_owned(), "mm".to_owned()];
        assert!(is_ghost("{NETWORK}_{NICK}", &networks, "irc_alice"));
        assert!(is_ghost("{NETWORK}_{NICK}", &networks, "mm_bob"));
        assert!(!is_ghost("{NETWORK}_{NICK}", &networks, "irc_"));
        assert!(!is_ghost("{NETWORK}_{NICK}", &networks, "carol"));
        assert_eq!(
            namespace_regex("{NETWORK}_{NICK}", &networks, "example.org"),
            r"@(?:irc_.+|mm_.+):example\.org"
        );
        assert_eq!(
            namespace_regex("br.{NICK}.{NETWORK}", &["irc".to_owned()], "localhost"),
            r"@(?:br\..+\.irc):localhost"
        );
    }

    #[test]
    fn display_names_show_nick_and_network() {
        assert_eq!(
            display_name("{NICK} ({NETWORK})", "irc", "alice"),
            "alice (irc)"
        );
    }
}
