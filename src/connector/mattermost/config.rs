//! The `[network.X] type = "mattermost"` section: its raw serde type, its validation into
//! [`MattermostConfig`], and Mattermost's rules for user ids, usernames and channel names.
//!
//! Invariant: every key a Mattermost section accepts is a field of [`RawMattermost`]; a section
//! with any problem yields no settings.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::connector::{NetworkSettings, NetworkType, Validated};
use crate::vocab::section::field_names;
use crate::vocab::{Capabilities, CaseMapping, Secret, Section};

/// The Mattermost network type.
pub struct Mattermost;

/// What Mattermost can represent, and how the core treats it.
pub const CAPABILITIES: Capabilities = Capabilities {
    protocol: "mattermost",
    // Sends are HTTP requests that could overtake each other: one at a time.
    window: 1,
    // Channel URL names are lowercase; ids are compared as the server does.
    case_mapping: CaseMapping::Ascii,
    edits: true,
    deletes: true,
    threads: true,
    reactions: true,
    // MaxPostSize is 16383 runes on current servers; bytes are a safe bound under it.
    max_message_bytes: 16_000,
};

/// How the bridge logs in to Mattermost.
#[derive(Debug, Clone, PartialEq)]
pub enum MattermostAuth {
    /// A bot or personal access token.
    Token(Secret),
    /// A user's login (username or email) and password; the session token is renewed on expiry.
    Password {
        /// Username or email.
        login: String,
        /// The password.
        password: Secret,
    },
}

/// Settings of a Mattermost network.
#[derive(Debug, Clone, PartialEq)]
pub struct MattermostConfig {
    /// The server's base URL (`https://chat.example.org`), without `/api/v4`.
    pub url: String,
    /// The team's URL name.
    pub team: String,
    /// How to log in.
    pub auth: MattermostAuth,
    /// Show relayed senders through `override_username` (the server must allow username
    /// overrides); otherwise `remote_nick_format` prefixes the text.
    pub sender_override: bool,
    /// Relay joins, leaves and header changes from this network.
    pub relay_membership: bool,
    /// An extra PEM certificate (or CA) to trust for `https`/`wss`, e.g. a private CA.
    pub tls_ca_file: Option<PathBuf>,
    /// `parallel_bridges` given by username (lowercase, without `@`): the connector looks up
    /// their user ids when it logs in (those given by id are in
    /// `Validated::parallel_bridges`).
    pub parallel_bridge_usernames: Vec<String>,
    /// People of other networks as real Mattermost users (`remote_users = true`; the account
    /// must be a system admin's), `None` when off.
    pub remote_users: Option<RemoteUsersConfig>,
}

/// `remote_users = true` and its keys.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteUsersConfig {
    /// `remote_username_format`: `{NICK}` and `{NETWORK}` (default `{NICK}-{NETWORK}`), before
    /// lowercasing and sanitising to the username rules.
    pub username_format: String,
    /// `remote_email_domain`: the domain of their addresses, one that receives no mail
    /// (default `bridge.invalid`).
    pub email_domain: String,
}

/// The default `remote_username_format`.
pub const DEFAULT_REMOTE_USERNAME_FORMAT: &str = "{NICK}-{NETWORK}";
/// The default `remote_email_domain` (`.invalid` is reserved: it never receives mail).
pub const DEFAULT_REMOTE_EMAIL_DOMAIN: &str = "bridge.invalid";

/// A Mattermost section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMattermost {
    #[serde(rename = "type")]
    _type: Spanned<String>,
    url: Option<Spanned<String>>,
    team: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    login: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    sender_override: Option<Spanned<bool>>,
    tls_ca_file: Option<Spanned<String>>,
    relay_membership: Option<Spanned<bool>>,
    parallel_bridges: Option<Spanned<Vec<Spanned<String>>>>,
    remote_users: Option<Spanned<bool>>,
    remote_username_format: Option<Spanned<String>>,
    remote_email_domain: Option<Spanned<String>>,
}

impl NetworkType for Mattermost {
    fn name(&self) -> &'static str {
        "mattermost"
    }

    fn keys(&self) -> &'static [&'static str] {
        field_names::<RawMattermost>()
    }

    fn validate(&self, section: &mut Section<'_>) -> Option<Validated> {
        let raw: RawMattermost = section.read()?;
        let url = match &raw.url {
            None => {
                section.missing(
                    "url",
                    "missing key `url`: a Mattermost network needs `url = \"https://chat.example.org\"`",
                );
                String::new()
            }
            Some(url) => {
                let text = url.get_ref().trim().trim_end_matches('/');
                let rest = text
                    .strip_prefix("https://")
                    .or_else(|| text.strip_prefix("http://"));
                match rest {
                    Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {}
                    _ => section.report(
                        url.span().start,
                        "url",
                        format!(
                            "`{}` is not a server URL; expected `https://host[:port][/path]`, \
                             e.g. \"https://chat.example.org\"",
                            url.get_ref()
                        ),
                    ),
                }
                section.warn_plain_http("url", url);
                text.trim_end_matches("/api/v4").to_owned()
            }
        };
        let team = match &raw.team {
            None => {
                section.missing(
                    "team",
                    "missing key `team`: the team's URL name, e.g. `team = \"civicrm\"`",
                );
                String::new()
            }
            Some(team) => {
                let name = team.get_ref().trim();
                if name.is_empty() || name.contains(['/', ' ']) {
                    section.report(
                        team.span().start,
                        "team",
                        "`team` is the team's URL name, e.g. \"civicrm\" (no spaces or slashes)",
                    );
                }
                name.to_lowercase()
            }
        };
        let token = section.secret(
            "token",
            raw.token.as_ref(),
            raw.token_file.as_ref(),
            raw.token_env.as_ref(),
        );
        let password = section.secret(
            "password",
            raw.password.as_ref(),
            raw.password_file.as_ref(),
            raw.password_env.as_ref(),
        );
        let auth = match (token, &raw.login, password) {
            (Some(token), None, None) => Some(MattermostAuth::Token(token)),
            (None, Some(login), Some(password)) => Some(MattermostAuth::Password {
                login: login.get_ref().clone(),
                password,
            }),
            (Some(_), Some(login), _) => {
                section.report(
                    login.span().start,
                    "login",
                    "give either `token` or `login` + `password`, not both",
                );
                None
            }
            (None, Some(login), None) => {
                section.report(
                    login.span().start,
                    "password",
                    "`login` needs `password` (or `password_file` / `password_env`)",
                );
                None
            }
            (_, None, Some(_)) => {
                let offset = [&raw.password, &raw.password_file, &raw.password_env]
                    .iter()
                    .find_map(|v| v.as_ref().map(|v| v.span().start))
                    .unwrap_or(0);
                section.report(
                    offset,
                    "login",
                    "`password` needs `login` (the username or email to log in with)",
                );
                None
            }
            (None, None, None) => {
                if !section.has_issues() {
                    section.missing(
                        "token",
                        "missing credentials: give `token` (or `token_file` / `token_env`) or \
                         `login` + `password`",
                    );
                }
                None
            }
        };
        let tls_ca_file = raw
            .tls_ca_file
            .as_ref()
            .map(|file| section.existing_file("tls_ca_file", file));
        // Mattermost ids are known at once; usernames become ids when the connector logs in.
        let (parallel_bridges, parallel_bridge_usernames): (Vec<String>, Vec<String>) = section
            .parallel_bridges(raw.parallel_bridges.as_ref(), "", |account| {
                (!is_valid_mattermost_user_id(account) && !is_valid_mattermost_username(account))
                    .then(|| {
                        format!(
                            "`{account}` is neither a Mattermost username (3 to 22 letters, \
                             digits, `.`, `-` or `_`, starting with a letter) nor a user id (26 \
                             letters and digits)"
                        )
                    })
            })
            .into_iter()
            .partition(|account| is_valid_mattermost_user_id(account));
        let parallel_bridge_usernames = parallel_bridge_usernames
            .into_iter()
            .map(|name| name.trim_start_matches('@').to_lowercase())
            .collect();
        let remote_users = remote_users_config(section, &raw);
        if section.has_issues() {
            return None;
        }
        Some(Validated {
            parallel_bridges,
            settings: Arc::new(MattermostConfig {
                url,
                team,
                auth: auth?,
                sender_override: raw.sender_override.as_ref().is_some_and(|v| *v.get_ref()),
                relay_membership: raw.relay_membership.as_ref().is_some_and(|v| *v.get_ref()),
                tls_ca_file,
                parallel_bridge_usernames,
                remote_users,
            }),
        })
    }
}

/// `remote_users` and its two keys, validated (problems reported on `section`).
fn remote_users_config(
    section: &mut Section<'_>,
    raw: &RawMattermost,
) -> Option<RemoteUsersConfig> {
    let on = raw.remote_users.as_ref().is_some_and(|v| *v.get_ref());
    let mut config = RemoteUsersConfig {
        username_format: DEFAULT_REMOTE_USERNAME_FORMAT.to_owned(),
        email_domain: DEFAULT_REMOTE_EMAIL_DOMAIN.to_owned(),
    };
    if let Some(format) = &raw.remote_username_format {
        let text = format.get_ref();
        let rest = text.replace("{NICK}", "").replace("{NETWORK}", "");
        if !text.contains("{NICK}") {
            section.report(
                format.span().start,
                "remote_username_format",
                "`remote_username_format` must contain `{NICK}` (and may contain `{NETWORK}`), \
                 e.g. \"{NICK}-{NETWORK}\"",
            );
        } else if rest.contains(['{', '}']) {
            section.report(
                format.span().start,
                "remote_username_format",
                format!(
                    "`{text}`: the only placeholders are `{{NICK}}` and `{{NETWORK}}`, \
                     e.g. \"{{NICK}}-{{NETWORK}}\""
                ),
            );
        }
        config.username_format.clone_from(text);
    }
    if let Some(domain) = &raw.remote_email_domain {
        let text = domain
            .get_ref()
            .trim()
            .trim_start_matches('@')
            .to_lowercase();
        let valid = text.contains('.')
            && !text.starts_with(['.', '-'])
            && !text.ends_with(['.', '-'])
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        if !valid {
            section.report(
                domain.span().start,
                "remote_email_domain",
                format!(
                    "`{}` is not a mail domain; give one that receives no mail, e.g. \
                     \"bridge.invalid\"",
                    domain.get_ref()
                ),
            );
        }
        config.email_domain = text;
    }
    if !on {
        for (key, value) in [
            (
                "remote_username_format",
                raw.remote_username_format.as_ref().map(|v| v.span().start),
            ),
            (
                "remote_email_domain",
                raw.remote_email_domain.as_ref().map(|v| v.span().start),
            ),
        ] {
            if let Some(offset) = value {
                section.report(
                    offset,
                    key,
                    format!("`{key}` applies only with `remote_users = true`"),
                );
            }
        }
        return None;
    }
    Some(config)
}

impl NetworkSettings for MattermostConfig {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    /// A channel a reload adds is resolved, joined and caught up on the running session (its
    /// events come on the same WebSocket); one it removes stops being relayed.
    fn follows_channel_changes(&self) -> bool {
        true
    }

    #[cfg(feature = "matrix")]
    fn build(
        &self,
        id: &str,
        context: crate::connector::BuildContext,
    ) -> (
        crate::connector::ConnectorHandle,
        crate::connector::ConnectorTask,
    ) {
        let (handle, task) = super::build(id, self.clone(), context);
        crate::connector::connector(handle, CAPABILITIES, task.run())
    }

    fn channel_problem(&self, channel: &str) -> Option<String> {
        (!is_valid_mattermost_channel(channel)).then(|| {
            format!(
                "`{channel}` is not a Mattermost channel: give its URL name (lowercase letters, \
                 digits, `-`, `_`, e.g. \"town-square\") or `id:` and its 26-character id"
            )
        })
    }

    fn account_problem(&self, account: &str) -> Option<String> {
        (account.starts_with('@') || !is_valid_mattermost_username(account)).then(|| {
            format!(
                "`{account}` is not a Mattermost username: give it without `@`, 3 to 22 \
                 letters, digits, `.`, `-` or `_`, starting with a letter"
            )
        })
    }
}

/// Is this a Mattermost user id (26 ASCII letters and digits, as Mattermost's `IsValidId`)?
#[must_use]
pub fn is_valid_mattermost_user_id(id: &str) -> bool {
    id.len() == 26 && id.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Is this a Mattermost username (with or without a leading `@`)? The server's rule: 3 to 22
/// characters, letters, digits, `.`, `-` and `_`, starting with a letter (any case here: the
/// server folds usernames to lowercase). Never 26 characters long, so never taken for an id.
#[must_use]
pub fn is_valid_mattermost_username(name: &str) -> bool {
    let name = name.strip_prefix('@').unwrap_or(name);
    (3..=22).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// A Mattermost channel as configured: its URL name within the team, or `id:<26-char id>`.
#[must_use]
pub fn is_valid_mattermost_channel(channel: &str) -> bool {
    if let Some(id) = channel.strip_prefix("id:") {
        return id.len() == 26 && id.chars().all(|c| c.is_ascii_alphanumeric());
    }
    !channel.is_empty()
        && channel.len() <= 64
        && channel
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(keys: &str) -> Result<MattermostConfig, Vec<crate::config::ConfigIssue>> {
        let text = format!(
            "[network.mm]\ntype = \"mattermost\"\nurl = \"https://chat.example.org\"\n\
             team = \"t\"\ntoken = \"x\"\n{keys}\n\
             [[gateway]]\nname = \"g\"\nchannels = [{{ network = \"mm\", channel = \"town\" }}, \
             {{ network = \"mm\", channel = \"hall\" }}]\n"
        );
        crate::config::parse(&text, std::path::Path::new("."), &[]).map(|config| {
            config.networks[0]
                .settings_as::<MattermostConfig>()
                .unwrap()
                .clone()
        })
    }

    #[test]
    fn remote_users_are_off_by_default_and_take_their_defaults() {
        assert_eq!(parse("").unwrap().remote_users, None);
        let on = parse("remote_users = true").unwrap().remote_users.unwrap();
        assert_eq!(on.username_format, "{NICK}-{NETWORK}");
        assert_eq!(on.email_domain, "bridge.invalid");
        let set = parse(
            "remote_users = true\nremote_username_format = \"{NETWORK}.{NICK}\"\n\
             remote_email_domain = \"@Nowhere.Invalid\"",
        )
        .unwrap()
        .remote_users
        .unwrap();
        assert_eq!(set.username_format, "{NETWORK}.{NICK}");
        assert_eq!(set.email_domain, "nowhere.invalid");
    }

    #[test]
    fn bad_remote_user_keys_are_located() {
        let issues =
            parse("remote_users = true\nremote_username_format = \"{NETWORK}\"").unwrap_err();
        assert_eq!(issues[0].key, "network.mm.remote_username_format");
        assert_eq!(issues[0].line, Some(7));
        assert!(
            issues[0].message.contains("must contain `{NICK}`"),
            "{issues:?}"
        );
        let issues =
            parse("remote_users = true\nremote_username_format = \"{NICK}{USER}\"").unwrap_err();
        assert!(
            issues[0].message.contains("only placeholders"),
            "{issues:?}"
        );
        let issues = parse("remote_users = true\nremote_email_domain = \"no domain\"").unwrap_err();
        assert_eq!(issues[0].key, "network.mm.remote_email_domain");
        assert!(
            issues[0].message.contains("not a mail domain"),
            "{issues:?}"
        );
        let issues = parse("remote_email_domain = \"bridge.invalid\"").unwrap_err();
        assert!(
            issues[0]
                .message
                .contains("applies only with `remote_users = true`"),
            "{issues:?}"
        );
    }
}
