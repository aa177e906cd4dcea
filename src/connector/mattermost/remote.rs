//! Remote users (`remote_users = true`): each person of another network who speaks in a bridged
//! channel becomes a Mattermost user of their own, created once by the bridge's (system admin)
//! account, and everything that person does here is done with a personal access token of that
//! user, so posts are ordinary posts of the person.
//!
//! - Names: `remote_username_format` rendered, lowercased and sanitised to the username rules
//!   ([`username_base`]); a name taken by someone else gets `-2`, `-3`, ... in that order
//!   ([`candidates`]), so the same person always ends on the same name.
//! - Records: person → (user id, username) in the store's cursors of this network (key
//!   [`RECORD_PREFIX`]), written right after the account exists; the tokens in
//!   `state_dir/mattermost-<network>.remote-tokens.json` (mode 0600). An account the bridge
//!   created carries the user prop [`MARK_PROP`] naming the person, so a lost record is found
//!   again (adopted) instead of creating a second account, and admins can find them all.
//! - Refusals: a token that is not a system admin's, or personal access tokens disabled on the
//!   server, turn the feature off for the network with one clear error; deliveries then show the
//!   sender as without `remote_users` (`sender_override` or the prefix), nothing is lost.
//! - Deactivation by an admin (`user_updated` with `delete_at`): the bridge revokes its token and
//!   shows that person as without `remote_users` from then on.
//!
//! Must not: be reached for this network's own people, or store a password.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rand::Rng;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::api::{self, Api, ApiError};
use super::config::RemoteUsersConfig;

/// Key prefix of a person's record among the store's cursors of this network.
pub(super) const RECORD_PREFIX: &str = "remote-user:";
/// The user prop that marks an account the bridge created: `<origin network>/<author id>`.
pub(super) const MARK_PROP: &str = "tribridge_remote";
/// Mattermost's username length bounds as the bridge keeps them.
const MIN_LEN: usize = 3;
const MAX_LEN: usize = 22;
/// How many suffixed names are tried before giving up on a person.
const MAX_CANDIDATES: usize = 50;

/// The store key of a person's record.
fn record_key(origin: &str, author: &str) -> String {
    format!("{RECORD_PREFIX}{origin}/{author}")
}

/// `remote_username_format` for a person, lowercased and sanitised: only `a-z0-9.-_` kept
/// (other characters dropped), starting with a letter (`u` put in front otherwise), 3 to 22
/// characters (cut, or padded with `_`).
#[must_use]
pub fn username_base(format: &str, nick: &str, network: &str) -> String {
    let raw = format
        .replace("{NICK}", nick)
        .replace("{NETWORK}", network)
        .to_lowercase();
    let mut name: String = raw
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert(0, 'u');
    }
    name.truncate(MAX_LEN);
    while name.len() < MIN_LEN {
        name.push('_');
    }
    name
}

/// The names tried for a person, in order: the base, then `base-2`, `base-3`, ... (the base cut
/// so that each stays within 22 characters).
#[must_use]
pub fn candidates(base: &str) -> Vec<String> {
    let mut out = vec![base.to_owned()];
    for n in 2..=MAX_CANDIDATES {
        let suffix = format!("-{n}");
        let keep = MAX_LEN - suffix.len();
        let stem: String = base.chars().take(keep).collect();
        out.push(format!("{stem}{suffix}"));
    }
    out
}

/// A random password (never stored: the account is only used through its token).
fn random_password() -> String {
    const CHARS: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    let body: String = (0..40)
        .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
        .collect();
    // Satisfies any password policy (upper, lower, digit, symbol).
    format!("{body}aZ9!")
}

/// What the store remembers of a person's account.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    user_id: String,
    username: String,
}

/// A personal access token of a remote user, as kept in the tokens file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Token {
    token_id: String,
    token: String,
}

/// One person's account, as the handle uses it.
#[derive(Debug, Clone)]
pub(super) struct RemoteUser {
    /// The Mattermost user id.
    pub user_id: String,
    /// Their personal access token.
    pub token: String,
}

/// Why a person could not be given an account now.
pub(super) enum Unavailable {
    /// The feature is off (or was turned off by a refusal): show them as without it.
    Fallback,
    /// A passing failure: retry the delivery later.
    Retry(ApiError),
}

#[derive(Default)]
struct Registry {
    /// (origin network, author id) → record.
    records: HashMap<(String, String), Record>,
    /// user id → token.
    tokens: HashMap<String, Token>,
    /// user ids whose accounts were deactivated: their people are shown as without the feature.
    deactivated: HashSet<String>,
    /// (user id, channel id) memberships made.
    memberships: HashSet<(String, String)>,
    /// user ids in the team.
    in_team: HashSet<String>,
    /// user ids whose profile image was set.
    pictured: HashSet<String>,
    /// user id → person (the accounts' posts are the bridge's own).
    by_user: HashMap<String, (String, String)>,
    /// username → person (mentions).
    by_username: HashMap<String, (String, String)>,
}

impl Registry {
    fn insert(&mut self, person: (String, String), record: Record) {
        self.by_user.insert(record.user_id.clone(), person.clone());
        self.by_username
            .insert(record.username.clone(), person.clone());
        self.records.insert(person, record);
    }

    /// A person's account, token and membership of `channel_id`, when all are known and the
    /// account is in use: nothing to ask the server.
    fn ready(&self, person: &(String, String), channel_id: &str) -> Option<(Record, Token)> {
        let record = self.records.get(person)?;
        let token = self.tokens.get(&record.user_id)?;
        let member = self
            .memberships
            .contains(&(record.user_id.clone(), channel_id.to_owned()));
        (member && !self.deactivated.contains(&record.user_id))
            .then(|| (record.clone(), token.clone()))
    }
}

/// The remote users of one Mattermost network.
pub(super) struct RemoteUsers {
    network: String,
    config: Option<RemoteUsersConfig>,
    enabled: AtomicBool,
    tokens_path: PathBuf,
    registry: RwLock<Registry>,
    /// Accounts are created one at a time (several channels deliver at once).
    creating: tokio::sync::Mutex<()>,
    team_id: Mutex<Option<String>>,
    store: Arc<crate::store::Store>,
}

impl RemoteUsers {
    /// The remote users of `network`, their records read from the store and the tokens file.
    pub(super) fn load(
        network: &str,
        config: Option<RemoteUsersConfig>,
        store: &Arc<crate::store::Store>,
        state_dir: &std::path::Path,
    ) -> Self {
        let tokens_path = state_dir.join(format!("mattermost-{network}.remote-tokens.json"));
        let mut registry = Registry::default();
        if config.is_some() {
            match store.cursors_with_prefix(network, RECORD_PREFIX) {
                Ok(rows) => {
                    for (key, value) in rows {
                        let Some((origin, author)) = key[RECORD_PREFIX.len()..].split_once('/')
                        else {
                            continue;
                        };
                        match serde_json::from_str::<Record>(&value) {
                            Ok(record) => {
                                registry.insert((origin.to_owned(), author.to_owned()), record);
                            }
                            Err(error) => {
                                tracing::warn!(network, key = %key, error = %error, "Unreadable remote user record; ignored.");
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(network, error = %error, "Cannot read the remote users from the store.");
                }
            }
            match std::fs::read(&tokens_path) {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(tokens) => registry.tokens = tokens,
                    Err(error) => {
                        tracing::warn!(network, path = %tokens_path.display(), error = %error, "Unreadable remote user tokens; new tokens will be made.");
                    }
                },
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(network, path = %tokens_path.display(), error = %error, "Cannot read the remote user tokens; new tokens will be made.");
                }
            }
        }
        Self {
            network: network.to_owned(),
            config,
            enabled: AtomicBool::new(false),
            tokens_path,
            registry: RwLock::new(registry),
            creating: tokio::sync::Mutex::new(()),
            team_id: Mutex::new(None),
            store: Arc::clone(store),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `remote_users` is configured.
    pub(super) fn configured(&self) -> bool {
        self.config.is_some()
    }

    /// Whether remote users are in use now.
    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Whether `user_id` is one of the accounts the bridge made (their posts are its own).
    pub(super) fn is_remote(&self, user_id: &str) -> bool {
        self.configured() && self.read().by_user.contains_key(user_id)
    }

    /// The person a remote username stands for, as (origin network, author id).
    pub(super) fn person_of_username(&self, username: &str) -> Option<(String, String)> {
        if !self.configured() {
            return None;
        }
        let wanted = username.trim_start_matches('@').to_ascii_lowercase();
        let registry = self.read();
        let person = registry.by_username.get(&wanted)?;
        let record = registry.records.get(person)?;
        (!registry.deactivated.contains(&record.user_id)).then(|| person.clone())
    }

    /// The username of a person's account, when they have one in use.
    pub(super) fn username_of(&self, origin: &str, author: &str) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let registry = self.read();
        let record = registry
            .records
            .get(&(origin.to_owned(), author.to_owned()))?;
        (!registry.deactivated.contains(&record.user_id)).then(|| record.username.clone())
    }

    /// Decide at the start of a session whether the feature can work with this account:
    /// `me` must be a system admin and the server must allow personal access tokens. Says why
    /// not, once per session, as an error.
    pub(super) async fn check_at_start(&self, api: &Api, me: &api::User, team_id: &str) {
        *self
            .team_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(team_id.to_owned());
        if !self.configured() {
            return;
        }
        let network = &self.network;
        if !me.roles.split_whitespace().any(|r| r == "system_admin") {
            tracing::error!(network = %network, account = %me.username, "remote_users needs the token of a system admin, and this account is not one: people of other networks are shown as without remote_users (sender_override or the nick prefix) until it is.");
            self.enabled.store(false, Ordering::Relaxed);
            return;
        }
        match api
            .fetch::<HashMap<String, Value>>(Method::GET, "/config/client?format=old", None)
            .await
        {
            Ok(config)
                if config.get("EnableUserAccessTokens").and_then(Value::as_str)
                    == Some("false") =>
            {
                tracing::error!(network = %network, "remote_users needs personal access tokens, and this server has them disabled (System Console > Integrations > Enable Personal Access Tokens): people of other networks are shown as without remote_users until they are enabled.");
                self.enabled.store(false, Ordering::Relaxed);
                return;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(network = %network, error = %error, "Cannot read the server's client configuration; trying remote_users anyway.");
            }
        }
        tracing::info!(network = %network, people = self.read().records.len(), "Remote users on: people of other networks post as their own Mattermost users.");
        self.enabled.store(true, Ordering::Relaxed);
    }

    fn refuse(&self, why: &str, error: &ApiError) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            tracing::error!(network = %self.network, error = %error, "remote_users refused by the server ({why}): people of other networks are shown as without remote_users from now on; restart once it is fixed.");
        }
    }

    /// The account of the person `author` of `origin` (display name `display`), created on
    /// first use, in the team and in channel `channel_id`.
    pub(super) async fn ensure(
        &self,
        api: &Api,
        files: &Arc<crate::files::Files>,
        origin: &str,
        author: &str,
        display: &str,
        channel_id: &str,
    ) -> Result<RemoteUser, Unavailable> {
        let Some(config) = self.config.as_ref().filter(|_| self.enabled()) else {
            return Err(Unavailable::Fallback);
        };
        if origin == self.network {
            return Err(Unavailable::Fallback);
        }
        let person = (origin.to_owned(), author.to_owned());
        // Known, with a token, in this channel: the usual case, without waiting for anyone.
        let ready = self.read().ready(&person, channel_id);
        let (record, token) = if let Some(ready) = ready {
            ready
        } else {
            {
                let _creating = self.creating.lock().await;
                let existing = self.read().records.get(&person).cloned();
                let record = match existing {
                    Some(record) => record,
                    None => self.create(api, config, origin, author, display).await?,
                };
                if self.read().deactivated.contains(&record.user_id) {
                    return Err(Unavailable::Fallback);
                }
                let known = self.read().tokens.get(&record.user_id).cloned();
                let token = if let Some(token) = known {
                    token
                } else {
                    {
                        // A recorded account without a token (lost, or refused): it may have
                        // been deactivated meanwhile.
                        let user: api::User = api
                            .fetch(Method::GET, &format!("/users/{}", record.user_id), None)
                            .await
                            .map_err(|error| self.classify(error, "looking up a remote user"))?;
                        if user.delete_at > 0 {
                            tracing::info!(network = %self.network, user = %record.username, "This remote user was deactivated; the person is shown as without remote_users.");
                            self.write().deactivated.insert(record.user_id.clone());
                            return Err(Unavailable::Fallback);
                        }
                        self.new_token(api, &record.user_id).await?
                    }
                };
                self.join(api, &record.user_id, channel_id).await?;
                (record, token)
            }
        };
        // The picture, once the bridge has it (it may arrive after the person's first words).
        let pictured = self.read().pictured.contains(&record.user_id);
        if !pictured
            && let Some(picture) = files.avatar(origin, author).await
            && self.write().pictured.insert(record.user_id.clone())
            && let Err(error) = api.set_profile_image(&record.user_id, &picture).await
        {
            tracing::info!(network = %self.network, user = %record.username, error = %error, "Cannot set a remote user's profile image.");
        }
        Ok(RemoteUser {
            user_id: record.user_id,
            token: token.token,
        })
    }

    /// Find (a lost record: the account carries the mark) or create the person's account and
    /// record it in the store.
    async fn create(
        &self,
        api: &Api,
        config: &RemoteUsersConfig,
        origin: &str,
        author: &str,
        display: &str,
    ) -> Result<Record, Unavailable> {
        let mark = format!("{origin}/{author}");
        let base = username_base(&config.username_format, display, origin);
        // Nickname and first name hold 64 characters.
        let display: String = display.chars().take(64).collect();
        let display = display.as_str();
        let mut found = None;
        for candidate in candidates(&base) {
            match api
                .fetch::<api::User>(Method::GET, &format!("/users/username/{candidate}"), None)
                .await
            {
                Ok(user) => {
                    if user.props.get(MARK_PROP).and_then(Value::as_str) == Some(mark.as_str())
                        && user.delete_at == 0
                    {
                        tracing::info!(network = %self.network, user = %user.username, "Found the remote user of a person again.");
                        found = Some(Record {
                            user_id: user.id,
                            username: user.username,
                        });
                        break;
                    }
                    continue;
                }
                Err(ApiError::Status { status: 404, .. }) => {}
                Err(error) => return Err(self.classify(error, "looking up a username")),
            }
            let body = json!({
                "username": candidate,
                "email": format!("{candidate}@{}", config.email_domain),
                "password": random_password(),
                "nickname": display,
                "first_name": display,
                "props": {MARK_PROP: mark},
            });
            match api
                .fetch::<api::User>(Method::POST, "/users", Some(&body))
                .await
            {
                Ok(user) => {
                    found = Some(Record {
                        user_id: user.id,
                        username: user.username,
                    });
                    break;
                }
                // Taken meanwhile, or a name the server will not have (reserved): the next.
                Err(ApiError::Status {
                    status: 400, id, ..
                }) if id.starts_with("app.user.save.")
                    || id == "model.user.is_valid.username.app_error" => {}
                Err(error) => return Err(self.classify(error, "creating a user")),
            }
        }
        let Some(record) = found else {
            tracing::warn!(network = %self.network, person = %mark, "No free username for this person; shown as without remote_users.");
            return Err(Unavailable::Fallback);
        };
        let value = serde_json::to_string(&record).unwrap_or_default();
        let store_result = {
            // The record is written before anything else is done as this user.
            let key = record_key(origin, author);
            self.store_record(&key, &value)
        };
        if let Err(error) = store_result {
            tracing::error!(network = %self.network, error = %error, "Cannot record a remote user; retrying.");
            return Err(Unavailable::Retry(ApiError::Transport(error)));
        }
        let patch = json!({"props": {MARK_PROP: mark}, "nickname": display, "first_name": display});
        if let Err(error) = api
            .fetch::<Value>(
                Method::PUT,
                &format!("/users/{}/patch", record.user_id),
                Some(&patch),
            )
            .await
        {
            tracing::info!(network = %self.network, user = %record.username, error = %error, "Cannot mark a remote user with its prop.");
        }
        tracing::info!(network = %self.network, user = %record.username, person = %mark, "Created a remote user.");
        self.write()
            .insert((origin.to_owned(), author.to_owned()), record.clone());
        Ok(record)
    }

    fn store_record(&self, key: &str, value: &str) -> Result<(), String> {
        self.store
            .set_cursor(&self.network, key, value)
            .map_err(|error| error.to_string())
    }

    /// A new personal access token for `user_id`, written to the tokens file.
    async fn new_token(&self, api: &Api, user_id: &str) -> Result<Token, Unavailable> {
        #[derive(Deserialize)]
        struct Created {
            id: String,
            token: String,
        }
        let created: Created = api
            .fetch(
                Method::POST,
                &format!("/users/{user_id}/tokens"),
                Some(&json!({"description": "tribridge remote user"})),
            )
            .await
            .map_err(|error| self.classify(error, "creating a personal access token"))?;
        let token = Token {
            token_id: created.id,
            token: created.token,
        };
        self.write()
            .tokens
            .insert(user_id.to_owned(), token.clone());
        self.save_tokens()
            .map_err(|error| Unavailable::Retry(ApiError::Transport(error)))?;
        Ok(token)
    }

    /// Write the tokens file (mode 0600, replaced whole).
    fn save_tokens(&self) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(&self.read().tokens).unwrap_or_default();
        crate::connector::write_state_file(&self.tokens_path, &text).map_err(|error| {
            tracing::error!(network = %self.network, path = %self.tokens_path.display(), error = %error, "Cannot write the remote user tokens.");
            error.to_string()
        })
    }

    /// Team and channel membership of `user_id` (each added once per run; adding a member is
    /// idempotent on the server).
    async fn join(&self, api: &Api, user_id: &str, channel_id: &str) -> Result<(), Unavailable> {
        let team_id = self
            .team_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let in_team = self.read().in_team.contains(user_id);
        if let Some(team_id) = team_id
            && !in_team
        {
            api.fetch::<Value>(
                Method::POST,
                &format!("/teams/{team_id}/members"),
                Some(&json!({"team_id": team_id, "user_id": user_id})),
            )
            .await
            .map_err(|error| self.classify(error, "adding a user to the team"))?;
            self.write().in_team.insert(user_id.to_owned());
        }
        let membership = (user_id.to_owned(), channel_id.to_owned());
        if !self.read().memberships.contains(&membership) {
            api.fetch::<Value>(
                Method::POST,
                &format!("/channels/{channel_id}/members"),
                Some(&json!({"user_id": user_id})),
            )
            .await
            .map_err(|error| self.classify(error, "adding a user to a channel"))?;
            self.write().memberships.insert(membership);
        }
        Ok(())
    }

    /// A failed call: a refusal (403, or tokens disabled) turns the feature off; the rest is
    /// retried.
    fn classify(&self, error: ApiError, doing: &str) -> Unavailable {
        match &error {
            ApiError::Status { status: 403, .. } => {
                self.refuse(&format!("{doing}: not allowed"), &error);
                Unavailable::Fallback
            }
            ApiError::Status { id, .. } if id == "app.user_access_token.disabled" => {
                self.refuse("personal access tokens are disabled", &error);
                Unavailable::Fallback
            }
            ApiError::Status { status, .. } if *status < 500 && *status != 401 => {
                tracing::warn!(network = %self.network, error = %error, "{doing} failed; this person is shown as without remote_users.");
                Unavailable::Fallback
            }
            _ => Unavailable::Retry(error),
        }
    }

    /// The server refused the token of `user_id` (401): forget it, so that the next attempt
    /// finds out why (deactivated) or makes a new one.
    pub(super) fn token_refused(&self, user_id: &str) {
        if self.write().tokens.remove(user_id).is_some() {
            tracing::info!(network = %self.network, user_id, "A remote user's token was refused; it will be replaced.");
            let _ = self.save_tokens();
        }
    }

    /// `user_id` may not post in `channel_id` (removed from it): add it again on the next try.
    pub(super) fn membership_refused(&self, user_id: &str, channel_id: &str) {
        self.write()
            .memberships
            .remove(&(user_id.to_owned(), channel_id.to_owned()));
    }

    /// An admin deactivated `user_id`: if it is a remote user, revoke its token and show that
    /// person as without remote users from now on.
    pub(super) async fn deactivated(&self, api: &Api, user_id: &str) {
        if !self.is_remote(user_id) || self.read().deactivated.contains(user_id) {
            return;
        }
        self.write().deactivated.insert(user_id.to_owned());
        let token = self.write().tokens.remove(user_id);
        let _ = self.save_tokens();
        if let Some(token) = token {
            match api
                .fetch::<Value>(
                    Method::POST,
                    "/users/tokens/revoke",
                    Some(&json!({"token_id": token.token_id})),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(network = %self.network, user_id, "A remote user was deactivated; its token is revoked.");
                }
                Err(error) => {
                    tracing::warn!(network = %self.network, user_id, error = %error, "A remote user was deactivated; revoking its token failed.");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_rules() {
        assert_eq!(
            username_base("{NICK}-{NETWORK}", "Alice", "irc"),
            "alice-irc"
        );
        assert_eq!(
            username_base("{NICK}-{NETWORK}", "[m]bob^", "irc"),
            "mbob-irc"
        );
        assert_eq!(
            username_base("{NICK}-{NETWORK}", "9lives", "irc"),
            "u9lives-irc"
        );
        assert_eq!(username_base("{NICK}", "é", "irc"), "u__");
        let long = username_base("{NICK}-{NETWORK}", "averyveryverylongnickname", "irc");
        assert_eq!(long, "averyveryverylongnickn");
        assert_eq!(long.len(), 22);
        let all = candidates("averyveryverylongnickn");
        assert_eq!(all[1], "averyveryverylongnic-2");
        assert!(all.iter().all(|c| c.len() <= 22));
        assert_eq!(candidates("alice-irc")[2], "alice-irc-3");
    }
}
