//! The people directory: every account the bridge has seen say something (or join, or change
//! its nick) on each network, with the name it is shown under on the other networks, so that a
//! name written on one network can become a mention of that person on theirs.
//!
//! Owns: [`People`] (in memory, shared by the router, which learns from every event it commits,
//! and the connectors, which read it when they convert mentions), and [`KnownPerson`], a row of
//! the store's `people` table from which it starts.
//! Must not: know any network's mention syntax (each connector converts to and from its own),
//! write to the store (the store records people in the transaction of their message), or fold
//! names other than by each network's declared [`CaseMapping`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::model::{EventBody, Inbound, Membership};
use crate::richtext::model::MentionTarget;
use crate::vocab::CaseMapping;
use crate::vocab::identities::{Identities, Identity};

/// One person as the store keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPerson {
    /// The network id.
    pub network: String,
    /// Their id there (an IRC nick, a Matrix user id, a Mattermost user id).
    pub user_id: String,
    /// The name they are shown under elsewhere (`{NICK}` of the sender format).
    pub display_name: String,
    /// For an IRC nick that was changed: the nick it became.
    pub renamed_to: Option<String>,
}

/// How many nick changes are followed to find someone's current nick.
const MAX_RENAMES: usize = 16;

/// What the directory knows of one account.
#[derive(Debug, Clone)]
struct Account {
    user_id: String,
    display_name: String,
    renamed_to: Option<String>,
}

/// The index key of a shown name: its RFC 1459 fold, the coarsest of the case mappings (names
/// equal under any mapping share a bucket; a lookup then compares as the reading network folds).
fn bucket(name: &str) -> String {
    CaseMapping::Rfc1459.fold(name)
}

#[derive(Debug, Default)]
struct Directory {
    /// Per network: the folded user id → the account.
    accounts: HashMap<String, HashMap<String, Account>>,
    /// Per network: the display name in its coarsest fold ([`bucket`]) → the folded user ids
    /// shown under it.
    shown: HashMap<String, HashMap<String, Vec<String>>>,
}

/// The people directory (see the module documentation). Cheap to read; learning takes a write
/// lock only when something changed.
#[derive(Debug, Default)]
pub struct People {
    /// By network id; a network a reload adds is added ([`People::add_case_mappings`]).
    case_mappings: RwLock<HashMap<String, CaseMapping>>,
    directory: RwLock<Directory>,
    /// The linked identities (`[[identity]]`), set at start and replaced whole by a reload
    /// ([`People::link`]).
    identities: RwLock<Arc<Identities>>,
    /// Moved each time identities are linked, for connectors that look accounts up.
    linked: tokio::sync::watch::Sender<u64>,
}

impl People {
    /// An empty directory for networks that fold names as `case_mappings` says (a network not
    /// listed compares names exactly).
    #[must_use]
    pub fn new(case_mappings: HashMap<String, CaseMapping>) -> Self {
        Self {
            case_mappings: RwLock::new(case_mappings),
            directory: RwLock::default(),
            identities: RwLock::default(),
            linked: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Link the configured identities (`[[identity]]`): at start, before connectors start, and
    /// again at each reload that changes them. The new set replaces the old one at once (a
    /// reader has either), keeping the ids connectors bound to accounts still configured.
    pub fn link(&self, identities: Vec<Identity>) {
        let linked = Identities::new(identities, self.mappings().clone());
        linked.keep_bindings_of(&self.identities());
        *self
            .identities
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(linked);
        self.linked.send_modify(|generation| *generation += 1);
    }

    /// The linked identities now (none until [`People::link`]).
    #[must_use]
    pub fn identities(&self) -> Arc<Identities> {
        Arc::clone(
            &self
                .identities
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Changes each time identities are linked (a connector that binds ids to accounts looks
    /// the new ones up).
    #[must_use]
    pub fn identities_linked(&self) -> tokio::sync::watch::Receiver<u64> {
        self.linked.subscribe()
    }

    /// A directory that starts with `known` (the store's rows).
    #[must_use]
    pub fn load(
        case_mappings: HashMap<String, CaseMapping>,
        known: impl IntoIterator<Item = KnownPerson>,
    ) -> Self {
        let people = Self::new(case_mappings);
        {
            let mut directory = people.write();
            for person in known {
                people.insert(
                    &mut directory,
                    &person.network,
                    Account {
                        user_id: person.user_id,
                        display_name: person.display_name,
                        renamed_to: person.renamed_to,
                    },
                );
            }
        }
        people
    }

    /// Take in `known` (the store's rows, as [`People::load`]): people another instance
    /// learned on the networks it runs (the per-network failover mode), read again when this
    /// instance starts a network. A row replaces what this directory knew of that account.
    pub fn absorb(&self, known: impl IntoIterator<Item = KnownPerson>) {
        let mut directory = self.write();
        for person in known {
            self.insert(
                &mut directory,
                &person.network,
                Account {
                    user_id: person.user_id,
                    display_name: person.display_name,
                    renamed_to: person.renamed_to,
                },
            );
        }
    }

    /// How names of networks a reload added fold (those already known keep theirs: the
    /// directory's keys were folded by them).
    pub fn add_case_mappings(&self, case_mappings: HashMap<String, CaseMapping>) {
        let mut known = self
            .case_mappings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (network, mapping) in case_mappings {
            known.entry(network).or_insert(mapping);
        }
    }

    fn mappings(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, CaseMapping>> {
        self.case_mappings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fold(&self, network: &str, name: &str) -> String {
        self.mappings()
            .get(network)
            .copied()
            .unwrap_or_default()
            .fold(name)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Directory> {
        self.directory
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Directory> {
        self.directory
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn insert(&self, directory: &mut Directory, network: &str, account: Account) {
        let key = self.fold(network, &account.user_id);
        let shown_key = bucket(&account.display_name);
        let previous = directory
            .accounts
            .entry(network.to_owned())
            .or_default()
            .insert(key.clone(), account);
        let shown = directory.shown.entry(network.to_owned()).or_default();
        if let Some(previous) = previous {
            let old_key = bucket(&previous.display_name);
            if let Some(ids) = shown.get_mut(&old_key) {
                ids.retain(|id| *id != key);
                if ids.is_empty() {
                    shown.remove(&old_key);
                }
            }
        }
        let ids = shown.entry(shown_key).or_default();
        if !ids.contains(&key) {
            ids.push(key);
        }
    }

    /// Learn the author of an event (and, for a nick change, the new nick).
    pub fn learn(&self, inbound: &Inbound) {
        let network = &inbound.origin.network;
        let author = &inbound.author;
        if let EventBody::Membership(Membership::Renamed { new_name }) = &inbound.body {
            self.renamed(network, &author.id, new_name);
        } else {
            self.saw(network, &author.id, &author.display_name);
        }
    }

    /// `user_id` of `network` said something as `display_name`.
    pub fn saw(&self, network: &str, user_id: &str, display_name: &str) {
        let key = self.fold(network, user_id);
        let unchanged = self
            .read()
            .accounts
            .get(network)
            .and_then(|accounts| accounts.get(&key))
            .is_some_and(|account| {
                account.user_id == user_id
                    && account.display_name == display_name
                    && account.renamed_to.is_none()
            });
        if !unchanged {
            let mut directory = self.write();
            self.insert(
                &mut directory,
                network,
                Account {
                    user_id: user_id.to_owned(),
                    display_name: display_name.to_owned(),
                    renamed_to: None,
                },
            );
        }
    }

    /// The nick `old` of `network` is now `new`.
    pub fn renamed(&self, network: &str, old: &str, new: &str) {
        let mut directory = self.write();
        self.insert(
            &mut directory,
            network,
            Account {
                user_id: new.to_owned(),
                display_name: new.to_owned(),
                renamed_to: None,
            },
        );
        if self.fold(network, old) != self.fold(network, new) {
            self.insert(
                &mut directory,
                network,
                Account {
                    user_id: old.to_owned(),
                    display_name: old.to_owned(),
                    renamed_to: Some(new.to_owned()),
                },
            );
        }
    }

    /// How many accounts are known (renamed ones included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().accounts.values().map(HashMap::len).sum()
    }

    /// Whether nobody is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The account `user_id` of `network` is now known as (its nick after every change), as
    /// `(user id, display name)`; `None` when it is not known.
    #[must_use]
    pub fn current(&self, network: &str, user_id: &str) -> Option<(String, String)> {
        let directory = self.read();
        let accounts = directory.accounts.get(network)?;
        let mut account = accounts.get(&self.fold(network, user_id))?;
        for _ in 0..MAX_RENAMES {
            let Some(next) = account
                .renamed_to
                .as_deref()
                .and_then(|new| accounts.get(&self.fold(network, new)))
            else {
                break;
            };
            account = next;
        }
        Some((account.user_id.clone(), account.display_name.clone()))
    }

    /// Whether someone of `network` itself has the id or the name `name` there.
    #[must_use]
    pub fn is_native(&self, network: &str, name: &str) -> bool {
        self.is_native_in(&self.read(), network, name)
    }

    fn is_native_in(&self, directory: &Directory, network: &str, name: &str) -> bool {
        let Some(accounts) = directory.accounts.get(network) else {
            return false;
        };
        let key = self.fold(network, name);
        accounts.contains_key(&key)
            || directory
                .shown
                .get(network)
                .and_then(|shown| shown.get(&bucket(name)))
                .into_iter()
                .flatten()
                .filter_map(|id| accounts.get(id))
                .any(|account| self.fold(network, &account.display_name) == key)
    }

    /// The person of another network shown on `here` as `name` (compared as `here` folds
    /// names), as a mention target; `None` when nobody or several people are, or when someone
    /// of `here` itself has that name (they are the one a reader there means).
    #[must_use]
    pub fn shown_as(&self, here: &str, name: &str) -> Option<MentionTarget> {
        if name.is_empty() {
            return None;
        }
        let key = bucket(name);
        let directory = self.read();
        let here_mapping = self.mappings().get(here).copied().unwrap_or_default();
        let mut wanted: Option<String> = None;
        let mut found: Option<MentionTarget> = None;
        for (network, shown) in &directory.shown {
            if network == here {
                continue;
            }
            let Some(ids) = shown.get(&key) else {
                continue;
            };
            let wanted = wanted.get_or_insert_with(|| here_mapping.fold(name));
            let accounts = directory.accounts.get(network);
            for account in ids.iter().filter_map(|id| accounts?.get(id)) {
                if account.renamed_to.is_some()
                    || here_mapping.fold(&account.display_name) != *wanted
                {
                    continue;
                }
                if found.is_some() {
                    return None;
                }
                found = Some(MentionTarget::User {
                    network: network.clone(),
                    user_id: account.user_id.clone(),
                });
            }
        }
        if found.is_some() && self.is_native_in(&directory, here, name) {
            return None;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn people() -> People {
        People::new(HashMap::from([
            ("irc".to_owned(), CaseMapping::Rfc1459),
            ("mm".to_owned(), CaseMapping::Ascii),
            ("mx".to_owned(), CaseMapping::Exact),
        ]))
    }

    fn user(network: &str, user_id: &str) -> MentionTarget {
        MentionTarget::User {
            network: network.into(),
            user_id: user_id.into(),
        }
    }

    #[test]
    fn a_name_shown_elsewhere_is_found_as_the_reading_network_folds_it() {
        let people = people();
        people.saw("mx", "@dave:hs", "Dave[m]");
        people.saw("mm", "u1", "erin");
        assert_eq!(
            people.shown_as("irc", "dave{M}"),
            Some(user("mx", "@dave:hs"))
        );
        assert_eq!(people.shown_as("irc", "ERIN"), Some(user("mm", "u1")));
        // Matrix compares exactly: a Mattermost name in another case is nobody there.
        assert_eq!(people.shown_as("mx", "ERIN"), None);
        assert_eq!(people.shown_as("mx", "erin"), Some(user("mm", "u1")));
        // Nobody is a mention of themselves on their own network.
        assert_eq!(people.shown_as("mx", "Dave[m]"), None);
    }

    #[test]
    fn a_native_name_or_two_people_with_one_name_are_not_mapped() {
        let people = people();
        people.saw("mx", "@bob:hs", "bob");
        people.saw("irc", "Bob", "Bob");
        assert_eq!(people.shown_as("irc", "bob"), None);
        people.saw("mm", "u2", "carol");
        people.saw("mx", "@carol:hs", "carol");
        assert_eq!(people.shown_as("irc", "carol"), None);
    }

    #[test]
    fn nick_changes_are_followed_and_a_new_name_replaces_the_old() {
        let people = people();
        people.saw("irc", "dave", "dave");
        people.renamed("irc", "dave", "dave_away");
        people.renamed("irc", "dave_away", "Dave2");
        assert_eq!(
            people.current("irc", "DAVE"),
            Some(("Dave2".into(), "Dave2".into()))
        );
        assert_eq!(people.shown_as("mx", "dave"), None);
        assert_eq!(people.shown_as("mx", "Dave2"), Some(user("irc", "Dave2")));
        people.saw("mx", "@e:hs", "old");
        people.saw("mx", "@e:hs", "new");
        assert_eq!(people.shown_as("irc", "old"), None);
        assert_eq!(people.shown_as("irc", "new"), Some(user("mx", "@e:hs")));
    }

    #[test]
    fn a_network_added_by_a_reload_folds_names_by_its_own_mapping() {
        let people = people();
        people.saw("mx", "@dave:hs", "Dave[m]");
        // Unknown until the reload: compared exactly.
        assert_eq!(people.shown_as("irc2", "dave{M}"), None);
        people.add_case_mappings(HashMap::from([
            ("irc2".to_owned(), CaseMapping::Rfc1459),
            // A known network keeps its mapping.
            ("mx".to_owned(), CaseMapping::Ascii),
        ]));
        assert_eq!(
            people.shown_as("irc2", "dave{M}"),
            Some(user("mx", "@dave:hs"))
        );
        assert_eq!(people.mappings()["mx"], CaseMapping::Exact);
    }

    #[test]
    fn a_loaded_directory_knows_what_was_stored() {
        let people = People::load(
            people().mappings().clone(),
            [
                KnownPerson {
                    network: "irc".into(),
                    user_id: "a".into(),
                    display_name: "a".into(),
                    renamed_to: Some("b".into()),
                },
                KnownPerson {
                    network: "irc".into(),
                    user_id: "b".into(),
                    display_name: "b".into(),
                    renamed_to: None,
                },
            ],
        );
        assert_eq!(people.current("irc", "a"), Some(("b".into(), "b".into())));
        assert_eq!(people.len(), 2);
    }

    #[test]
    fn identities_linked_again_replace_the_old_set_whole_and_say_so() {
        let people = people();
        let identity = |name: &str| Identity {
            name: Some(name.into()),
            accounts: vec![("irc".into(), "ann".into()), ("mm".into(), "ann".into())],
            nickserv_password: None,
        };
        let mut linked = people.identities_linked();
        people.link(vec![identity("Ann")]);
        let before = people.identities();
        people.identities().bind("mm", "ann", "u7");
        people.link(vec![identity("Ann Example")]);
        assert!(linked.has_changed().unwrap());
        // A reader holding the old set keeps it whole; new readers have the new one.
        assert_eq!(before.name("irc", "ANN"), Some("Ann"));
        assert_eq!(people.identities().name("irc", "ANN"), Some("Ann Example"));
        assert_eq!(people.identities().name("mm", "u7"), Some("Ann Example"));
        linked.mark_unchanged();
        people.link(Vec::new());
        assert!(linked.has_changed().unwrap());
        assert_eq!(people.identities().name("irc", "ann"), None);
    }
}
