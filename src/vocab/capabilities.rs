//! What a connector declares about its network, as data: the router, store, outbox and
//! parallel-bridge logic read these instead of naming networks.
//!
//! Invariant: nothing outside `src/connector/` decides anything by a network's name; every
//! difference between networks that the core must honour is a field here.

/// How a network compares channel names and nicks (IRC's ISUPPORT `CASEMAPPING` names the
/// same rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CaseMapping {
    /// Names compare exactly (Matrix room ids and aliases).
    #[default]
    Exact,
    /// ASCII letters compare case-insensitively (Mattermost channel names).
    Ascii,
    /// RFC 1459: ASCII letters, and `[]\~` as the lowercase of `{}|^` (IRC servers).
    Rfc1459,
}

impl CaseMapping {
    /// `name` in its folded form: two names are the same when their folds are equal.
    #[must_use]
    pub fn fold(self, name: &str) -> String {
        match self {
            CaseMapping::Exact => name.to_owned(),
            _ => name.chars().map(|c| self.fold_char(c)).collect(),
        }
    }

    /// [`CaseMapping::fold`] of one character.
    #[must_use]
    pub fn fold_char(self, c: char) -> char {
        match (self, c) {
            (CaseMapping::Exact, c) => c,
            (CaseMapping::Rfc1459, '[') => '{',
            (CaseMapping::Rfc1459, ']') => '}',
            (CaseMapping::Rfc1459, '\\') => '|',
            (CaseMapping::Rfc1459, '~') => '^',
            (_, c) => c.to_ascii_lowercase(),
        }
    }
}

/// What a network can represent and how the core treats it: declared by its connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // independent facts, each read on its own
pub struct Capabilities {
    /// The protocol's name, stored with each message and shown by `{PROTOCOL}`.
    pub protocol: &'static str,
    /// How many deliveries to one channel may be outstanding at once: more than one only when
    /// the connection keeps the order it was handed them in and matches acknowledgements.
    pub window: usize,
    /// How channel names and nicks compare.
    pub case_mapping: CaseMapping,
    /// Messages can be edited after sending.
    pub edits: bool,
    /// Messages can be deleted.
    pub deletes: bool,
    /// Threads or replies exist.
    pub threads: bool,
    /// Reactions exist.
    pub reactions: bool,
    /// The largest message body the destination takes, in bytes (after which text is split).
    pub max_message_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::CaseMapping;

    #[test]
    fn each_mapping_folds_as_its_servers_do() {
        assert_eq!(CaseMapping::Rfc1459.fold("#Foo[Bar]~\\"), "#foo{bar}^|");
        assert_eq!(CaseMapping::Ascii.fold("Town-Square[1]"), "town-square[1]");
        assert_eq!(CaseMapping::Exact.fold("!AbC:x"), "!AbC:x");
    }
}
