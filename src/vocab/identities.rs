//! Linked identities (`[[identity]]` in the configuration): one person's accounts on several
//! networks, so that someone who moves keeps their nick, is mentioned as themselves wherever a
//! mention of any of their accounts goes, and is shown under one name.
//!
//! Owns: [`Identity`] (one `[[identity]]` entry, validated) and [`Identities`] (the entries,
//! looked up by any of their accounts). An account is named as the configuration names it (an
//! IRC nick, a Mattermost username, a Matrix user id); a connector whose senders are known by
//! another id (Mattermost user ids) binds that id to the account once it has looked it up
//! ([`Identities::bind`]).
//! Must not: know any network's syntax or type (each connector reads what concerns it), or fold
//! names other than by each network's declared [`CaseMapping`].

use std::collections::HashMap;
use std::sync::RwLock;

use crate::vocab::{CaseMapping, Secret};

/// One person's linked accounts (one `[[identity]]` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The one name the other networks show for them (`name`); `None`: each account's own.
    pub name: Option<String>,
    /// (network id, account there), by network id.
    pub accounts: Vec<(String, String)>,
    /// `nickserv_password`: what a puppet taking their IRC nick identifies with.
    pub nickserv_password: Option<Secret>,
}

impl Identity {
    /// Their account on `network`, as configured.
    #[must_use]
    pub fn account_on(&self, network: &str) -> Option<&str> {
        self.accounts
            .iter()
            .find(|(of, _)| of == network)
            .map(|(_, account)| account.as_str())
    }
}

/// Every linked identity, found by any of its accounts (see the module documentation).
#[derive(Debug, Default)]
pub struct Identities {
    list: Vec<Identity>,
    case_mappings: HashMap<String, CaseMapping>,
    /// (network, folded account or bound id) → index in `list`.
    index: RwLock<HashMap<(String, String), usize>>,
    /// Every [`Identities::bind`] made, as (network, account, id): replayed on the identities
    /// a reload links ([`Identities::keep_bindings_of`]).
    bindings: RwLock<Vec<(String, String, String)>>,
}

impl Identities {
    /// The identities `list`, whose accounts compare as each network's `case_mappings` folds
    /// names (a network not listed compares exactly).
    #[must_use]
    pub fn new(list: Vec<Identity>, case_mappings: HashMap<String, CaseMapping>) -> Self {
        let mut index = HashMap::new();
        for (position, identity) in list.iter().enumerate() {
            for (network, account) in &identity.accounts {
                let folded = fold(&case_mappings, network, account);
                index.entry((network.clone(), folded)).or_insert(position);
            }
        }
        Self {
            list,
            case_mappings,
            index: RwLock::new(index),
            bindings: RwLock::default(),
        }
    }

    /// Bind here every id `old` had bound to an account that is still configured (a reload
    /// that links new identities keeps what the connectors looked up).
    pub fn keep_bindings_of(&self, old: &Identities) {
        let bindings = old
            .bindings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (network, account, id) in bindings {
            self.bind(&network, &account, &id);
        }
    }

    /// Whether no identity is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The accounts configured on `network`.
    #[must_use]
    pub fn accounts_on(&self, network: &str) -> Vec<String> {
        self.list
            .iter()
            .filter_map(|identity| identity.account_on(network))
            .map(str::to_owned)
            .collect()
    }

    /// The account `account` of `network` (as configured) is known there by `id` too (a
    /// Mattermost user id for a username).
    pub fn bind(&self, network: &str, account: &str, id: &str) {
        let key = (
            network.to_owned(),
            fold(&self.case_mappings, network, account),
        );
        let mut index = self
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(position) = index.get(&key).copied() {
            index.insert(
                (network.to_owned(), fold(&self.case_mappings, network, id)),
                position,
            );
            let binding = (network.to_owned(), account.to_owned(), id.to_owned());
            let mut bindings = self
                .bindings
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !bindings.contains(&binding) {
                bindings.push(binding);
            }
        }
    }

    /// The identity the account `id` (configured name or bound id) of `network` belongs to.
    #[must_use]
    pub fn of(&self, network: &str, id: &str) -> Option<&Identity> {
        if self.list.is_empty() {
            return None;
        }
        let key = (network.to_owned(), fold(&self.case_mappings, network, id));
        let position = *self
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)?;
        self.list.get(position)
    }

    /// The account on `here` of the person who is `id` on `network` (another of their
    /// accounts), as configured; `None` when they are not linked to one there.
    #[must_use]
    pub fn account_on(&self, network: &str, id: &str, here: &str) -> Option<&str> {
        if network == here {
            return None;
        }
        self.of(network, id)?.account_on(here)
    }

    /// The one name the person who is `id` on `network` is shown under, when they have one.
    #[must_use]
    pub fn name(&self, network: &str, id: &str) -> Option<&str> {
        self.of(network, id)?.name.as_deref()
    }
}

fn fold(case_mappings: &HashMap<String, CaseMapping>, network: &str, name: &str) -> String {
    case_mappings
        .get(network)
        .copied()
        .unwrap_or_default()
        .fold(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities() -> Identities {
        Identities::new(
            vec![Identity {
                name: Some("Alice".into()),
                accounts: vec![
                    ("irc".into(), "alice".into()),
                    ("mm".into(), "alice".into()),
                    ("mx".into(), "@alice:hs".into()),
                ],
                nickserv_password: None,
            }],
            HashMap::from([
                ("irc".to_owned(), CaseMapping::Rfc1459),
                ("mm".to_owned(), CaseMapping::Ascii),
                ("mx".to_owned(), CaseMapping::Exact),
            ]),
        )
    }

    #[test]
    fn any_account_finds_the_others_as_each_network_folds_names() {
        let identities = identities();
        assert_eq!(identities.account_on("irc", "ALICE", "mm"), Some("alice"));
        assert_eq!(
            identities.account_on("mx", "@alice:hs", "irc"),
            Some("alice")
        );
        assert_eq!(identities.account_on("mx", "@Alice:hs", "irc"), None);
        assert_eq!(identities.account_on("irc", "alice", "irc"), None);
        assert_eq!(identities.name("mm", "Alice"), Some("Alice"));
        assert_eq!(identities.of("irc", "bob"), None);
    }

    #[test]
    fn a_bound_id_is_the_account() {
        let identities = identities();
        assert_eq!(identities.of("mm", "u1"), None);
        identities.bind("mm", "alice", "u1");
        identities.bind("mm", "nobody", "u2");
        assert_eq!(identities.account_on("mm", "u1", "irc"), Some("alice"));
        assert_eq!(identities.of("mm", "u2"), None);
        assert_eq!(identities.accounts_on("mm"), vec!["alice".to_owned()]);
    }

    #[test]
    fn identities_linked_anew_keep_the_ids_bound_to_accounts_still_configured() {
        let old = identities();
        old.bind("mm", "alice", "u1");
        let renamed = Identities::new(
            vec![
                Identity {
                    name: Some("Alice Example".into()),
                    accounts: vec![
                        ("irc".into(), "alice".into()),
                        ("mm".into(), "alice".into()),
                    ],
                    nickserv_password: None,
                },
                Identity {
                    name: None,
                    accounts: vec![("irc".into(), "bob".into()), ("mm".into(), "bob".into())],
                    nickserv_password: None,
                },
            ],
            HashMap::from([("mm".to_owned(), CaseMapping::Ascii)]),
        );
        renamed.keep_bindings_of(&old);
        assert_eq!(renamed.name("mm", "u1"), Some("Alice Example"));
        assert_eq!(renamed.account_on("mm", "u1", "irc"), Some("alice"));
        // An account the old set had and the new one does not binds nothing.
        let without = Identities::new(Vec::new(), HashMap::new());
        without.keep_bindings_of(&old);
        assert_eq!(without.of("mm", "u1"), None);
    }
}
