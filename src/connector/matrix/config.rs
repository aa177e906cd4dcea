//! The `[network.X] type = "matrix"` section: its raw serde type, its validation into
//! [`MatrixConfig`], and Matrix's rules for user ids and rooms.
//!
//! Invariant: every key a Matrix section accepts is a field of [`RawMatrix`]; a section with
//! any problem yields no settings. Compiled without the `matrix` feature too (the configuration
//! is checked by the fuzz targets), which only the connector's session needs.

use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::connector::{NetworkSettings, NetworkType, Validated};
use crate::vocab::section::field_names;
use crate::vocab::{Capabilities, CaseMapping, Secret, Section};

/// The Matrix network type.
pub struct Matrix;

/// What Matrix can represent, and how the core treats it.
pub const CAPABILITIES: Capabilities = Capabilities {
    protocol: "matrix",
    // Sends are HTTP requests that could overtake each other: one at a time.
    window: 1,
    // Room ids are case-sensitive but random: two never differ by case alone. Comparing ASCII
    // case-insensitively keeps an alias written in another case the same room.
    case_mapping: CaseMapping::Ascii,
    edits: true,
    deletes: true,
    threads: true,
    reactions: true,
    max_message_bytes: 32 * 1024,
};

/// Settings of a Matrix network: a bot account on a homeserver.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixConfig {
    /// The homeserver's client-server API base URL (`https://matrix.example.org`).
    pub homeserver: String,
    /// The bot's full user id (`@bridge:example.org`).
    pub user: String,
    /// Password, for the first login and whenever the stored session is refused.
    pub password: Option<Secret>,
    /// An access token to use instead of a password login.
    pub access_token: Option<Secret>,
    /// The device's display name, set at the first login.
    pub device_name: String,
    /// The bot's display name, set when given.
    pub display_name: Option<String>,
    /// Relay joins, leaves and topic changes from this network.
    pub relay_membership: bool,
    /// Bootstrap cross-signing for the account (and sign the bridge's device) when it has none.
    pub cross_signing: bool,
    /// When the account's cross-signing identity is not one this device holds the keys of
    /// (reset elsewhere, or the state lost without recovery): make a new one over it.
    pub reset_cross_signing: bool,
    /// Whom the bridge shares its room keys with and whose messages it decrypts.
    pub trust: Trust,
    /// `mode = "appservice"`: the bridge is an application service of the homeserver (ghost
    /// users, pushed transactions) instead of a bot account; `None` in bot mode.
    pub appservice: Option<AppserviceConfig>,
}

/// The keys of `mode = "appservice"`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppserviceConfig {
    /// The homeserver's `server_name` (the part after `:` in its user ids).
    pub server_name: String,
    /// Where the bridge listens for the homeserver's pushes.
    pub listen: std::net::SocketAddr,
    /// How the homeserver reaches `listen` (the registration's `url`).
    pub url: String,
    /// The bridge's token towards the homeserver; generated and stored by
    /// `tribridge appservice-registration` when not configured.
    pub as_token: Option<Secret>,
    /// The homeserver's token towards the bridge; likewise.
    pub hs_token: Option<Secret>,
    /// The bridge's own bot (`@<sender_localpart>:<server_name>`).
    pub sender_localpart: String,
    /// A ghost's localpart: `{NETWORK}` and `{NICK}` substituted, then sanitised.
    pub ghost_format: String,
    /// A ghost's display name: `{NICK}` and `{NETWORK}` substituted.
    pub ghost_displayname: String,
}

impl AppserviceConfig {
    /// The localpart of the user that relays encrypted rooms, `<sender_localpart>.e2ee`: a
    /// ghost cannot encrypt, and Synapse refuses `/sync` to the service's own user
    /// (`sender_localpart`), which an end-to-end client needs; this one is a user of the
    /// service's namespace (the registration names it) with a device of its own.
    #[must_use]
    pub fn encryption_localpart(&self) -> String {
        format!("{}.e2ee", self.sender_localpart)
    }

    /// `@<encryption_localpart>:<server_name>`.
    #[must_use]
    pub fn encryption_bot(&self) -> String {
        format!("@{}:{}", self.encryption_localpart(), self.server_name)
    }
}

/// The default `ghost_format`.
pub const DEFAULT_GHOST_FORMAT: &str = "{NETWORK}_{NICK}";
/// The default `ghost_displayname`.
pub const DEFAULT_GHOST_DISPLAYNAME: &str = "{NICK} ({NETWORK})";
/// The default `sender_localpart`.
pub const DEFAULT_SENDER_LOCALPART: &str = "tribridge";

/// `trust`: the devices the bridge shares its room keys with, and decrypts messages from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trust {
    /// `"all-devices"`: every device of the room's members, signed or not (the bridge verifies
    /// no one).
    #[default]
    AllDevices,
    /// `"cross-signed"`: only devices their owner cross-signed, as Element does since April 2026.
    CrossSigned,
}

/// A Matrix section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    #[serde(rename = "type")]
    _type: Spanned<String>,
    homeserver: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    access_token: Option<Spanned<String>>,
    access_token_file: Option<Spanned<String>>,
    access_token_env: Option<Spanned<String>>,
    device_name: Option<Spanned<String>>,
    display_name: Option<Spanned<String>>,
    relay_membership: Option<Spanned<bool>>,
    trust: Option<Spanned<String>>,
    cross_signing: Option<Spanned<bool>>,
    reset_cross_signing: Option<Spanned<bool>>,
    parallel_bridges: Option<Spanned<Vec<Spanned<String>>>>,
    mode: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    as_token: Option<Spanned<String>>,
    as_token_file: Option<Spanned<String>>,
    as_token_env: Option<Spanned<String>>,
    hs_token: Option<Spanned<String>>,
    hs_token_file: Option<Spanned<String>>,
    hs_token_env: Option<Spanned<String>>,
    sender_localpart: Option<Spanned<String>>,
    ghost_format: Option<Spanned<String>>,
    ghost_displayname: Option<Spanned<String>>,
}

impl NetworkType for Matrix {
    fn name(&self) -> &'static str {
        "matrix"
    }

    fn keys(&self) -> &'static [&'static str] {
        field_names::<RawMatrix>()
    }

    fn validate(&self, section: &mut Section<'_>) -> Option<Validated> {
        let raw: RawMatrix = section.read()?;
        let homeserver = match &raw.homeserver {
            None => {
                section.missing(
                    "homeserver",
                    "missing key `homeserver`: a Matrix network needs \
                     `homeserver = \"https://matrix.example.org\"`",
                );
                String::new()
            }
            Some(url) => {
                let text = url.get_ref().trim_end_matches('/');
                let rest = text
                    .strip_prefix("https://")
                    .or_else(|| text.strip_prefix("http://"));
                if rest.is_none_or(|host| host.is_empty() || host.contains(char::is_whitespace)) {
                    section.report(
                        url.span().start,
                        "homeserver",
                        format!(
                            "`{}` is not a homeserver URL; expected `https://host[:port]`, \
                             e.g. \"https://matrix.example.org\"",
                            url.get_ref()
                        ),
                    );
                }
                section.warn_plain_http("homeserver", url);
                text.to_owned()
            }
        };
        let appservice = match raw
            .mode
            .as_ref()
            .map(|m| (m.span().start, m.get_ref().as_str()))
        {
            None | Some((_, "bot")) => {
                for (key, value) in appservice_only_keys(&raw) {
                    section.report(
                        value.span().start,
                        key,
                        format!(
                            "`{key}` is a key of `mode = \"appservice\"`; this network is a bot \
                             account (add `mode = \"appservice\"` or remove the key)"
                        ),
                    );
                }
                None
            }
            Some((_, "appservice")) => validate_appservice(section, &raw),
            Some((offset, other)) => {
                section.report(
                    offset,
                    "mode",
                    format!(
                        "`{other}` is not a mode; expected \"bot\" (a bot account, the default) or \
                         \"appservice\" (an application service with ghost users)"
                    ),
                );
                None
            }
        };
        let appservice_mode = raw
            .mode
            .as_ref()
            .is_some_and(|m| m.get_ref() == "appservice");
        let user = match &raw.user {
            _ if appservice_mode => {
                if let Some(user) = &raw.user {
                    section.report(
                        user.span().start,
                        "user",
                        "in `mode = \"appservice\"` the bridge's bot is \
                         `@<sender_localpart>:<server_name>`; remove `user`",
                    );
                }
                appservice.as_ref().map_or_else(String::new, |a| {
                    format!("@{}:{}", a.sender_localpart, a.server_name)
                })
            }
            None => {
                section.missing(
                    "user",
                    "missing key `user`: the bot's Matrix id, e.g. \"@bridge:example.org\"",
                );
                String::new()
            }
            Some(user) => {
                if !is_valid_matrix_user(user.get_ref()) {
                    section.report(
                        user.span().start,
                        "user",
                        format!(
                            "`{}` is not a Matrix user id; expected `@name:server`, e.g. \
                             \"@bridge:example.org\"",
                            user.get_ref()
                        ),
                    );
                }
                user.get_ref().clone()
            }
        };
        let password = section.secret(
            "password",
            raw.password.as_ref(),
            raw.password_file.as_ref(),
            raw.password_env.as_ref(),
        );
        let access_token = section.secret(
            "access_token",
            raw.access_token.as_ref(),
            raw.access_token_file.as_ref(),
            raw.access_token_env.as_ref(),
        );
        if appservice_mode {
            for (key, value) in [
                ("password", &raw.password),
                ("password_file", &raw.password_file),
                ("password_env", &raw.password_env),
                ("access_token", &raw.access_token),
                ("access_token_file", &raw.access_token_file),
                ("access_token_env", &raw.access_token_env),
            ] {
                if let Some(value) = value {
                    section.report(
                        value.span().start,
                        key,
                        format!(
                            "`{key}` is a key of the bot mode; in `mode = \"appservice\"` the \
                             bridge authenticates with `as_token`"
                        ),
                    );
                }
            }
        } else if password.is_none() && access_token.is_none() && !section.has_issues() {
            section.missing(
                "password",
                "a Matrix network needs `password` or `access_token` (or their `_file` / `_env` \
                 forms)",
            );
        }
        let trust = match &raw.trust {
            None => Trust::default(),
            Some(value) => match value.get_ref().as_str() {
                "all-devices" => Trust::AllDevices,
                "cross-signed" => Trust::CrossSigned,
                other => {
                    section.report(
                        value.span().start,
                        "trust",
                        format!(
                            "`{other}` is not a trust level; expected \"all-devices\" (share room \
                             keys with every device, the default) or \"cross-signed\" (only with \
                             devices their owner cross-signed)"
                        ),
                    );
                    Trust::default()
                }
            },
        };
        let parallel_bridges =
            section.parallel_bridges(raw.parallel_bridges.as_ref(), &user, |account| {
                (!is_valid_matrix_user(account)).then(|| {
                    format!(
                        "`{account}` is not a Matrix user id; list the other bridges' ids \
                         (`@name:server`), e.g. [\"@bridge2:example.org\"]"
                    )
                })
            });
        if section.has_issues() {
            return None;
        }
        Some(Validated {
            parallel_bridges,
            settings: Arc::new(MatrixConfig {
                homeserver,
                user,
                password,
                access_token,
                device_name: raw
                    .device_name
                    .as_ref()
                    .map_or_else(|| "tribridge".to_owned(), |v| v.get_ref().clone()),
                display_name: raw.display_name.as_ref().map(|v| v.get_ref().clone()),
                relay_membership: raw.relay_membership.as_ref().is_some_and(|v| *v.get_ref()),
                cross_signing: raw.cross_signing.as_ref().is_none_or(|v| *v.get_ref()),
                reset_cross_signing: raw
                    .reset_cross_signing
                    .as_ref()
                    .is_some_and(|v| *v.get_ref()),
                trust,
                appservice,
            }),
        })
    }
}

/// The keys only `mode = "appservice"` reads, those present.
fn appservice_only_keys(raw: &RawMatrix) -> Vec<(&'static str, &Spanned<String>)> {
    [
        ("server_name", &raw.server_name),
        ("listen", &raw.listen),
        ("url", &raw.url),
        ("as_token", &raw.as_token),
        ("as_token_file", &raw.as_token_file),
        ("as_token_env", &raw.as_token_env),
        ("hs_token", &raw.hs_token),
        ("hs_token_file", &raw.hs_token_file),
        ("hs_token_env", &raw.hs_token_env),
        ("sender_localpart", &raw.sender_localpart),
        ("ghost_format", &raw.ghost_format),
        ("ghost_displayname", &raw.ghost_displayname),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.as_ref().map(|value| (key, value)))
    .collect()
}

/// The keys of `mode = "appservice"`; `None` (with the problems reported) when one is wrong.
fn validate_appservice(section: &mut Section<'_>, raw: &RawMatrix) -> Option<AppserviceConfig> {
    let server_name = match &raw.server_name {
        None => {
            section.missing(
                "server_name",
                "missing key `server_name`: an application service needs its homeserver's \
                 server name, e.g. `server_name = \"example.org\"`",
            );
            None
        }
        Some(name) => {
            let text = name.get_ref();
            if text.is_empty()
                || text.contains(['/', '@', ' '])
                || text.starts_with("http") && text.contains("://")
            {
                section.report(
                    name.span().start,
                    "server_name",
                    format!(
                        "`{text}` is not a server name; expected the part after `:` in the \
                         homeserver's user ids, e.g. \"example.org\""
                    ),
                );
                None
            } else {
                Some(text.clone())
            }
        }
    };
    let listen = match &raw.listen {
        None => {
            section.missing(
                "listen",
                "missing key `listen`: where the bridge listens for the homeserver's \
                 transactions, e.g. `listen = \"127.0.0.1:9009\"`",
            );
            None
        }
        Some(value) => {
            let address = value.get_ref().parse::<std::net::SocketAddr>().ok();
            if address.is_none() {
                section.report(
                    value.span().start,
                    "listen",
                    format!(
                        "`{}` is not an address to listen on; expected `ip:port`, e.g. \
                         \"127.0.0.1:9009\"",
                        value.get_ref()
                    ),
                );
            }
            address
        }
    };
    let url = match &raw.url {
        None => {
            section.missing(
                "url",
                "missing key `url`: how the homeserver reaches `listen`, e.g. \
                 `url = \"http://127.0.0.1:9009\"`",
            );
            None
        }
        Some(value) => {
            let text = value.get_ref().trim_end_matches('/');
            let rest = text
                .strip_prefix("https://")
                .or_else(|| text.strip_prefix("http://"));
            if rest.is_none_or(|host| host.is_empty() || host.contains(char::is_whitespace)) {
                section.report(
                    value.span().start,
                    "url",
                    format!(
                        "`{}` is not a URL; expected `http://host:port`, e.g. \
                         \"http://127.0.0.1:9009\"",
                        value.get_ref()
                    ),
                );
                None
            } else {
                Some(text.to_owned())
            }
        }
    };
    let as_token = section.secret(
        "as_token",
        raw.as_token.as_ref(),
        raw.as_token_file.as_ref(),
        raw.as_token_env.as_ref(),
    );
    let hs_token = section.secret(
        "hs_token",
        raw.hs_token.as_ref(),
        raw.hs_token_file.as_ref(),
        raw.hs_token_env.as_ref(),
    );
    let sender_localpart = match &raw.sender_localpart {
        None => Some(DEFAULT_SENDER_LOCALPART.to_owned()),
        Some(value) => {
            let text = value.get_ref();
            if text.is_empty() || !text.chars().all(is_localpart_char) {
                section.report(
                    value.span().start,
                    "sender_localpart",
                    format!(
                        "`{text}` is not a Matrix localpart; expected lower-case letters, digits \
                         and `._=-/`, e.g. \"tribridge\""
                    ),
                );
                None
            } else {
                Some(text.clone())
            }
        }
    };
    let ghost_format = match &raw.ghost_format {
        None => Some(DEFAULT_GHOST_FORMAT.to_owned()),
        Some(value) if !value.get_ref().contains("{NICK}") => {
            section.report(
                value.span().start,
                "ghost_format",
                format!(
                    "`{}` does not contain `{{NICK}}`: every person would be the same ghost; \
                     e.g. \"{DEFAULT_GHOST_FORMAT}\"",
                    value.get_ref()
                ),
            );
            None
        }
        Some(value) => Some(value.get_ref().clone()),
    };
    let ghost_displayname = raw.ghost_displayname.as_ref().map_or_else(
        || DEFAULT_GHOST_DISPLAYNAME.to_owned(),
        |value| value.get_ref().clone(),
    );
    Some(AppserviceConfig {
        server_name: server_name?,
        listen: listen?,
        url: url?,
        as_token,
        hs_token,
        sender_localpart: sender_localpart?,
        ghost_format: ghost_format?,
        ghost_displayname,
    })
}

/// A character of the Matrix user-id localpart grammar (`a-z 0-9 . _ = - /`).
#[must_use]
pub fn is_localpart_char(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/')
}

impl NetworkSettings for MatrixConfig {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    /// Both modes join a room a reload adds on the running session (the bot's sync, or the
    /// application service's bot), and stop relaying a room it removes (staying a member).
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
        if let Some(appservice) = &self.appservice {
            let (handle, task) = super::appservice::build(id, self, appservice, context);
            return crate::connector::connector(handle, CAPABILITIES, task.run());
        }
        let (handle, task) = super::build(id, self.clone(), context);
        crate::connector::connector(handle, CAPABILITIES, task.run())
    }

    fn channel_problem(&self, channel: &str) -> Option<String> {
        (!is_valid_matrix_room(channel)).then(|| {
            format!(
                "`{channel}` is not a Matrix room: give an alias (`#room:server`) or a room id \
                 (`!id` or `!id:server`)"
            )
        })
    }

    fn account_problem(&self, account: &str) -> Option<String> {
        (!is_valid_matrix_user(account))
            .then(|| format!("`{account}` is not a Matrix user id: give it as `@name:server`"))
    }
}

/// Is this a Matrix user id (`@name:server`)?
#[must_use]
pub fn is_valid_matrix_user(user: &str) -> bool {
    user.strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(name, server)| {
            !name.is_empty()
                && !server.is_empty()
                && !user.chars().any(|c| c.is_whitespace() || c.is_control())
        })
}

/// Is this a Matrix room alias (`#room:server`) or room id (`!id`, `!id:server`; room version
/// 12 ids have no server part)?
#[must_use]
pub fn is_valid_matrix_room(room: &str) -> bool {
    if room.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if let Some(alias) = room.strip_prefix('#') {
        return alias
            .split_once(':')
            .is_some_and(|(name, server)| !name.is_empty() && !server.is_empty());
    }
    room.strip_prefix('!')
        .is_some_and(|id| !id.is_empty() && !id.starts_with(':') && !id.ends_with(':'))
}
