//! The configuration file: one TOML file of networks and gateways.
//!
//! Reading happens in two steps, as the style guide asks: the text is deserialised into raw serde
//! types (`deny_unknown_fields`, every value wrapped in [`toml::Spanned`] so errors can point at
//! it), then validated into the typed [`Config`] the rest of the daemon uses. Every error names the
//! file, line, column and key path, and says what would be valid.
//!
//! This module reads files (the config and `*_file` secrets) and environment variables; it opens no
//! sockets and knows nothing of a protocol beyond the keys its network types accept.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::richtext::edits::EditPolicy;
use crate::richtext::long_text::{LongTextMode, LongTextPolicy};

/// The default sender format for relayed lines.
pub const DEFAULT_REMOTE_NICK_FORMAT: &str = "<{NICK}> ";

/// Placeholders `remote_nick_format` understands.
pub const NICK_FORMAT_PLACEHOLDERS: &[&str] = &[
    "{NICK}",
    "{NOPINGNICK}",
    "{NETWORK}",
    "{PROTOCOL}",
    "{CHANNEL}",
    "{GATEWAY}",
];

/// One problem found in a configuration file, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the problem has a place in the file.
    pub column: Option<usize>,
    /// Dotted key path, e.g. `network.libera.tls` or `gateway[0].channels[1].network`.
    pub key: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

/// Errors from reading and validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{path}: cannot read the configuration file: {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration; every issue found is listed.
    #[error("{}", render_issues(path, issues))]
    Invalid {
        /// The path given.
        path: PathBuf,
        /// Every problem found, in file order where known.
        issues: Vec<ConfigIssue>,
    },
}

fn render_issues(path: &Path, issues: &[ConfigIssue]) -> String {
    let mut out = String::new();
    for (index, issue) in issues.iter().enumerate() {
        if index > 0 {
            out.push('\n');
        }
        out.push_str(&issue.display_with(path));
    }
    out
}

impl ConfigIssue {
    /// `file:line:column: key: message`, the form compilers use, so editors can jump to it.
    #[must_use]
    pub fn display_with(&self, path: &Path) -> String {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                format!(
                    "{}:{line}:{column}: {}: {}",
                    path.display(),
                    self.key,
                    self.message
                )
            }
            _ => format!("{}: {}: {}", path.display(), self.key, self.message),
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the `SQLite` store lives (absolute, or relative to the working directory when the
    /// config was parsed from a string).
    pub state_dir: PathBuf,
    /// How a relayed sender is shown, e.g. `<{NICK}> `.
    pub remote_nick_format: String,
    /// Files carried between networks.
    pub files: FilesConfig,
    /// Where the metrics endpoint (`/metrics`, for Prometheus) listens; off when `None`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Networks by id, in file order.
    pub networks: Vec<NetworkConfig>,
    /// Gateways in file order.
    pub gateways: Vec<GatewayConfig>,
}

/// How files are carried between networks (`[general]` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesConfig {
    /// Where the media endpoint listens (with `media_public_url`); off when `None`.
    pub media_listen: Option<std::net::SocketAddr>,
    /// The public base URL of the media endpoint, as IRC users reach it.
    pub media_public_url: Option<String>,
    /// Files larger than this are announced by name and size instead of copied (0: never copy).
    pub max_file_bytes: u64,
    /// Stored files are removed after this long.
    pub retention: std::time::Duration,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            media_listen: None,
            media_public_url: None,
            max_file_bytes: DEFAULT_MAX_FILE_MB * 1024 * 1024,
            retention: std::time::Duration::from_hours(24 * DEFAULT_FILE_RETENTION_DAYS),
        }
    }
}

/// Default `max_file_size_mb`: Synapse's default upload limit.
pub const DEFAULT_MAX_FILE_MB: u64 = 50;
/// Default `file_retention_days`.
pub const DEFAULT_FILE_RETENTION_DAYS: u64 = 30;

impl Config {
    /// The network with this id.
    #[must_use]
    pub fn network(&self, id: &str) -> Option<&NetworkConfig> {
        self.networks.iter().find(|network| network.id == id)
    }
}

/// One configured account on one server.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The id used in gateways and logs (`libera` in `[network.libera]`).
    pub id: String,
    /// Protocol-specific settings.
    pub kind: NetworkKind,
    /// `parallel_bridges`: the accounts on this network of other bridges that relay the same
    /// channels (see [`crate::parallel`]), as the connector reports senders: an IRC nick, a
    /// Matrix user id, a Mattermost user id. Known to be parallel bridges of every channel of
    /// this network from the start. (Mattermost accounts given by username are in
    /// [`MattermostConfig::parallel_bridge_usernames`] until the connector has their ids.)
    pub parallel_bridges: Vec<String>,
}

/// The closed set of network types.
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkKind {
    /// An IRC server.
    Irc(IrcConfig),
    /// A Matrix homeserver.
    Matrix(MatrixConfig),
    /// A Mattermost server (one team).
    Mattermost(MattermostConfig),
}

impl NetworkKind {
    /// The protocol name shown by `{PROTOCOL}`.
    #[must_use]
    pub fn protocol(&self) -> &'static str {
        match self {
            NetworkKind::Irc(_) => "irc",
            NetworkKind::Matrix(_) => "matrix",
            NetworkKind::Mattermost(_) => "mattermost",
        }
    }
}

/// Settings of an IRC network.
#[derive(Debug, Clone, PartialEq)]
pub struct IrcConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Connect with TLS.
    pub tls: bool,
    /// Verify the server's certificate (only ever off by explicit choice).
    pub tls_verify: bool,
    /// An extra PEM certificate (or CA) to trust, e.g. for a self-signed server.
    pub tls_ca_file: Option<PathBuf>,
    /// The nick the bridge wants.
    pub nick: String,
    /// The user name sent in USER.
    pub username: String,
    /// The real name sent in USER.
    pub realname: String,
    /// Server password (PASS).
    pub password: Option<Secret>,
    /// SASL PLAIN account name (defaults to the nick when only a password is given).
    pub sasl_username: Option<String>,
    /// SASL PLAIN password.
    pub sasl_password: Option<Secret>,
    /// Password for `NickServ IDENTIFY`, used when SASL is not configured or fails.
    pub nickserv_password: Option<Secret>,
    /// The services nick to identify to.
    pub nickserv_nick: String,
    /// Lines the bridge may send at once before flood control paces it.
    pub flood_burst: u32,
    /// Milliseconds between lines once the burst is used up.
    pub flood_interval_ms: u64,
    /// Relay joins, parts, quits, nick and topic changes from this network.
    pub relay_membership: bool,
    /// The text encoding: lines that are valid UTF-8 are always read as UTF-8; others, and
    /// everything we send, in this charset (UTF-8 by default, whose fallback is latin-1).
    pub charset: crate::connector::irc::charset::Charset,
}

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
}

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
    /// [`NetworkConfig::parallel_bridges`]).
    pub parallel_bridge_usernames: Vec<String>,
}

/// A secret value; its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is sent to the server.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(..)")
    }
}

/// Which way messages flow for one channel of a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Messages said here go into the gateway; nothing is sent here.
    In,
    /// Messages from the gateway are sent here; nothing said here is relayed.
    Out,
    /// Both ways (the default).
    InOut,
}

impl Direction {
    /// Messages said in this channel are relayed.
    #[must_use]
    pub fn is_source(self) -> bool {
        matches!(self, Direction::In | Direction::InOut)
    }
    /// Messages are delivered to this channel.
    #[must_use]
    pub fn is_destination(self) -> bool {
        matches!(self, Direction::Out | Direction::InOut)
    }
}

/// A named set of linked channels.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// The gateway's name, unique in the file.
    pub name: String,
    /// Its channels, at least two.
    pub channels: Vec<GatewayChannel>,
    /// What IRC destinations do with messages longer than `max_lines` lines.
    pub long_text: LongTextPolicy,
    /// Let `@room`, `@channel`, `@all`, `@here` from one network ping everyone on another.
    pub allow_mass_pings: bool,
    /// How IRC destinations show an edit made elsewhere: not at all, the corrected text, or a
    /// short diff.
    pub edit_policy: EditPolicy,
    /// A message delivered more than this long after it was said shows when it was said;
    /// `None` (configured as 0): never.
    pub original_time_after: Option<std::time::Duration>,
}

/// One channel of a gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayChannel {
    /// The network id.
    pub network: String,
    /// The channel name on that network.
    pub channel: String,
    /// Which way messages flow.
    pub direction: Direction,
}

// ---------------------------------------------------------------------------------------------
// Raw serde types: the file's shape, nothing more.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    general: Option<Spanned<RawGeneral>>,
    #[serde(default)]
    network: BTreeMap<Spanned<String>, Spanned<RawNetwork>>,
    #[serde(default)]
    gateway: Vec<Spanned<RawGateway>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeneral {
    state_dir: Option<Spanned<String>>,
    remote_nick_format: Option<Spanned<String>>,
    media_listen: Option<Spanned<String>>,
    media_public_url: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    max_file_size_mb: Option<Spanned<i64>>,
    file_retention_days: Option<Spanned<i64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawNetworkType {
    Irc,
    Mattermost,
    Matrix,
}

/// Every key any network type accepts; validation checks which ones fit the `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(rename = "type")]
    kind: Spanned<RawNetworkType>,
    server: Option<Spanned<String>>,
    tls: Option<Spanned<bool>>,
    tls_verify: Option<Spanned<bool>>,
    tls_ca_file: Option<Spanned<String>>,
    nick: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    realname: Option<Spanned<String>>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    sasl_username: Option<Spanned<String>>,
    sasl_password: Option<Spanned<String>>,
    sasl_password_file: Option<Spanned<String>>,
    sasl_password_env: Option<Spanned<String>>,
    nickserv_password: Option<Spanned<String>>,
    nickserv_password_file: Option<Spanned<String>>,
    nickserv_password_env: Option<Spanned<String>>,
    nickserv_nick: Option<Spanned<String>>,
    flood_burst: Option<Spanned<i64>>,
    flood_interval_ms: Option<Spanned<i64>>,
    charset: Option<Spanned<String>>,
    relay_membership: Option<Spanned<bool>>,
    parallel_bridges: Option<Spanned<Vec<Spanned<String>>>>,
    homeserver: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    access_token: Option<Spanned<String>>,
    access_token_file: Option<Spanned<String>>,
    access_token_env: Option<Spanned<String>>,
    device_name: Option<Spanned<String>>,
    display_name: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    team: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    login: Option<Spanned<String>>,
    sender_override: Option<Spanned<bool>>,
}

impl RawNetworkType {
    fn name(self) -> &'static str {
        match self {
            RawNetworkType::Irc => "irc",
            RawNetworkType::Mattermost => "mattermost",
            RawNetworkType::Matrix => "matrix",
        }
    }
}

impl RawNetwork {
    /// Every type-specific key given: its name, where it is, and which types accept it.
    fn given_keys(&self) -> Vec<(&'static str, usize, &'static [RawNetworkType])> {
        use RawNetworkType::{Irc, Matrix, Mattermost};
        fn at<T>(value: Option<&Spanned<T>>) -> Option<usize> {
            value.map(|v| v.span().start)
        }
        let keys: Vec<(&'static str, Option<usize>, &'static [RawNetworkType])> = vec![
            ("server", at(self.server.as_ref()), &[Irc]),
            ("tls", at(self.tls.as_ref()), &[Irc]),
            ("tls_verify", at(self.tls_verify.as_ref()), &[Irc]),
            (
                "tls_ca_file",
                at(self.tls_ca_file.as_ref()),
                &[Irc, Mattermost],
            ),
            ("nick", at(self.nick.as_ref()), &[Irc]),
            ("username", at(self.username.as_ref()), &[Irc]),
            ("realname", at(self.realname.as_ref()), &[Irc]),
            ("sasl_username", at(self.sasl_username.as_ref()), &[Irc]),
            ("sasl_password", at(self.sasl_password.as_ref()), &[Irc]),
            (
                "sasl_password_file",
                at(self.sasl_password_file.as_ref()),
                &[Irc],
            ),
            (
                "sasl_password_env",
                at(self.sasl_password_env.as_ref()),
                &[Irc],
            ),
            (
                "nickserv_password",
                at(self.nickserv_password.as_ref()),
                &[Irc],
            ),
            (
                "nickserv_password_file",
                at(self.nickserv_password_file.as_ref()),
                &[Irc],
            ),
            (
                "nickserv_password_env",
                at(self.nickserv_password_env.as_ref()),
                &[Irc],
            ),
            ("nickserv_nick", at(self.nickserv_nick.as_ref()), &[Irc]),
            ("flood_burst", at(self.flood_burst.as_ref()), &[Irc]),
            (
                "flood_interval_ms",
                at(self.flood_interval_ms.as_ref()),
                &[Irc],
            ),
            ("charset", at(self.charset.as_ref()), &[Irc]),
            ("homeserver", at(self.homeserver.as_ref()), &[Matrix]),
            ("user", at(self.user.as_ref()), &[Matrix]),
            ("access_token", at(self.access_token.as_ref()), &[Matrix]),
            (
                "access_token_file",
                at(self.access_token_file.as_ref()),
                &[Matrix],
            ),
            (
                "access_token_env",
                at(self.access_token_env.as_ref()),
                &[Matrix],
            ),
            ("device_name", at(self.device_name.as_ref()), &[Matrix]),
            ("display_name", at(self.display_name.as_ref()), &[Matrix]),
            ("url", at(self.url.as_ref()), &[Mattermost]),
            ("team", at(self.team.as_ref()), &[Mattermost]),
            ("token", at(self.token.as_ref()), &[Mattermost]),
            ("login", at(self.login.as_ref()), &[Mattermost]),
            ("token_file", at(self.token_file.as_ref()), &[Mattermost]),
            ("token_env", at(self.token_env.as_ref()), &[Mattermost]),
            (
                "sender_override",
                at(self.sender_override.as_ref()),
                &[Mattermost],
            ),
        ];
        keys.into_iter()
            .filter_map(|(name, offset, accepted)| offset.map(|o| (name, o, accepted)))
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    name: Spanned<String>,
    #[serde(default)]
    channels: Vec<Spanned<RawGatewayChannel>>,
    long_text: Option<Spanned<RawLongText>>,
    allow_mass_pings: Option<Spanned<bool>>,
    edit_policy: Option<Spanned<EditPolicy>>,
    original_time_after: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLongText {
    max_lines: Option<Spanned<i64>>,
    mode: Option<Spanned<LongTextMode>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGatewayChannel {
    network: Spanned<String>,
    channel: Spanned<String>,
    direction: Option<Spanned<Direction>>,
}

// ---------------------------------------------------------------------------------------------

/// The keys whose value is a secret when given inline (each also has `_file` and `_env` forms).
const INLINE_SECRET_KEYS: [&str; 5] = [
    "password",
    "sasl_password",
    "nickserv_password",
    "access_token",
    "token",
];

/// The warning to give when the file at `path` holds a secret inline and users other than its
/// owner may read it (group or others have read permission); `None` when it is private, holds
/// no inline secret, or cannot be read (loading reports that).
#[must_use]
pub fn secret_exposure_warning(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        if mode & 0o044 == 0 {
            return None;
        }
        let text = std::fs::read_to_string(path).ok()?;
        let document: toml::Table = toml::from_str(&text).ok()?;
        let networks = document.get("network")?.as_table()?;
        let mut inline: Vec<String> = Vec::new();
        for (id, network) in networks {
            for key in INLINE_SECRET_KEYS {
                if network.get(key).is_some() {
                    inline.push(format!("network.{id}.{key}"));
                }
            }
        }
        if inline.is_empty() {
            return None;
        }
        Some(format!(
            "{} holds secrets inline ({}) and is readable by other users (mode {mode:04o}); \
             make it private (chmod 600) or move the secrets to `*_file` or `*_env`",
            path.display(),
            inline.join(", ")
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Read and validate a configuration file. Relative paths in it are relative to its folder.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let base = parent
        .canonicalize()
        .unwrap_or_else(|_| parent.to_path_buf());
    parse(&text, &base, &std::env::vars().collect::<Vec<_>>()).map_err(|issues| {
        ConfigError::Invalid {
            path: path.to_owned(),
            issues,
        }
    })
}

/// Parse and validate configuration text. `base` anchors relative paths; `env` is the process
/// environment (passed in so that tests can hand in their own).
pub fn parse(
    text: &str,
    base: &Path,
    env: &[(String, String)],
) -> Result<Config, Vec<ConfigIssue>> {
    let locator = Locator::new(text);
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => return Err(vec![locator.issue_from_toml_error(&error)]),
    };
    let mut validator = Validator {
        locator: &locator,
        base,
        env,
        issues: Vec::new(),
    };
    let config = validator.config(raw);
    if validator.issues.is_empty() {
        Ok(config)
    } else {
        validator
            .issues
            .sort_by_key(|issue| (issue.line, issue.column));
        Err(validator.issues)
    }
}

/// Turns byte offsets into line/column and finds the key path at an offset.
struct Locator<'a> {
    text: &'a str,
    document: Option<toml_edit::ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            document: toml_edit::ImDocument::parse(text).ok(),
        }
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |index| index + 1);
        let column = self
            .text
            .get(line_start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }

    fn issue(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigIssue {
        let (line, column) = self.line_column(offset);
        ConfigIssue {
            line: Some(line),
            column: Some(column),
            key: key.into(),
            message: message.into(),
        }
    }

    fn issue_from_toml_error(&self, error: &toml::de::Error) -> ConfigIssue {
        let message = error.message().trim().to_owned();
        let Some(span) = error.span() else {
            return ConfigIssue {
                line: None,
                column: None,
                key: "(file)".into(),
                message,
            };
        };
        let key = self
            .key_path_at(span.start)
            .unwrap_or_else(|| "(file)".to_owned());
        let message = improve_serde_message(&key, &message);
        self.issue(span.start, key, message)
    }

    /// The dotted path of the innermost key or value whose span contains `offset`.
    fn key_path_at(&self, offset: usize) -> Option<String> {
        let document = self.document.as_ref()?;
        let mut path = String::new();
        if walk_table(document.as_table(), offset, &mut path) {
            Some(path)
        } else {
            None
        }
    }
}

fn push_key(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

fn span_contains(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|span| span.start <= offset && offset < span.end.max(span.start + 1))
}

fn walk_table(table: &toml_edit::Table, offset: usize, path: &mut String) -> bool {
    for (key, item) in table {
        let key_span = table.key(key).and_then(toml_edit::Key::span);
        let mark = path.len();
        push_key(path, key);
        if span_contains(key_span, offset) {
            return true;
        }
        if walk_item(item, offset, path) {
            return true;
        }
        path.truncate(mark);
    }
    false
}

fn walk_inline_table(table: &toml_edit::InlineTable, offset: usize, path: &mut String) -> bool {
    for (key, value) in table {
        let key_span = table.key(key).and_then(toml_edit::Key::span);
        let mark = path.len();
        push_key(path, key);
        if span_contains(key_span, offset) || walk_value(value, offset, path) {
            return true;
        }
        path.truncate(mark);
    }
    span_contains(table.span(), offset)
}

fn walk_value(value: &toml_edit::Value, offset: usize, path: &mut String) -> bool {
    match value {
        toml_edit::Value::InlineTable(table) => walk_inline_table(table, offset, path),
        toml_edit::Value::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                let mark = path.len();
                let _ = write!(path, "[{index}]");
                if walk_value(element, offset, path) {
                    return true;
                }
                path.truncate(mark);
            }
            span_contains(array.span(), offset)
        }
        other => span_contains(other.span(), offset),
    }
}

fn walk_item(item: &toml_edit::Item, offset: usize, path: &mut String) -> bool {
    match item {
        toml_edit::Item::None => false,
        toml_edit::Item::Value(value) => walk_value(value, offset, path),
        toml_edit::Item::Table(table) => {
            walk_table(table, offset, path) || span_contains(table.span(), offset)
        }
        toml_edit::Item::ArrayOfTables(array) => {
            for (index, table) in array.iter().enumerate() {
                let mark = path.len();
                let _ = write!(path, "[{index}]");
                if walk_table(table, offset, path) || span_contains(table.span(), offset) {
                    return true;
                }
                path.truncate(mark);
            }
            false
        }
    }
}

/// serde's messages name Rust types; say what the file should contain instead.
fn improve_serde_message(key: &str, message: &str) -> String {
    let message = message
        .replace("variant", "value")
        .replace("invalid type: ", "wrong type: found ");
    if key.rsplit('.').next() == Some("type") && message.contains("unknown value") {
        return format!("{message} (valid network types: irc, mattermost, matrix)");
    }
    message
}

struct Validator<'a> {
    locator: &'a Locator<'a>,
    base: &'a Path,
    env: &'a [(String, String)],
    issues: Vec<ConfigIssue>,
}

impl Validator<'_> {
    fn report(&mut self, offset: usize, key: impl Into<String>, message: impl Into<String>) {
        let issue = self.locator.issue(offset, key, message);
        self.issues.push(issue);
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let files = raw
            .general
            .as_ref()
            .map(|general| self.files(general.get_ref()))
            .unwrap_or_default();
        let metrics_listen = raw
            .general
            .as_ref()
            .and_then(|general| self.metrics_listen(general.get_ref()));
        let (state_dir, remote_nick_format) = self.general(raw.general);
        let declared: Vec<String> = raw.network.keys().map(|k| k.get_ref().clone()).collect();
        let mut networks = Vec::new();
        for (id, network) in raw.network {
            if let Some(network) = self.network(&id, network) {
                networks.push(network);
            }
        }
        let known: HashSet<&str> = declared.iter().map(String::as_str).collect();
        let mut gateways = Vec::new();
        let mut gateway_names: HashSet<String> = HashSet::new();
        for (index, gateway) in raw.gateway.into_iter().enumerate() {
            let span_start = gateway.span().start;
            let gateway = gateway.into_inner();
            let key = format!("gateway[{index}]");
            let name = gateway.name.get_ref().trim().to_owned();
            if name.is_empty() {
                self.report(
                    gateway.name.span().start,
                    format!("{key}.name"),
                    "a gateway needs a non-empty name",
                );
            } else if !gateway_names.insert(name.clone()) {
                self.report(
                    gateway.name.span().start,
                    format!("{key}.name"),
                    format!("duplicate gateway name `{name}`: every gateway needs its own name"),
                );
            }
            let channels = self.gateway_channels(&key, &gateway.channels, &known, &networks);
            if gateway.channels.len() < 2 {
                self.report(
                    span_start,
                    format!("{key}.channels"),
                    format!(
                        "gateway `{name}` has {} channel(s); a gateway links at least two channels",
                        gateway.channels.len()
                    ),
                );
            } else if channels.len() == gateway.channels.len() && !gateway_has_flow(&channels) {
                self.report(
                    span_start,
                    format!("{key}.channels"),
                    format!(
                        "gateway `{name}` relays nothing: it needs one channel with direction in or \
                         inout and another with out or inout"
                    ),
                );
            }
            let long_text = self.long_text(&key, gateway.long_text.as_ref());
            let original_time_after =
                self.original_time_after(&key, gateway.original_time_after.as_ref());
            gateways.push(GatewayConfig {
                name,
                channels,
                long_text,
                allow_mass_pings: gateway.allow_mass_pings.is_some_and(|v| *v.get_ref()),
                edit_policy: gateway
                    .edit_policy
                    .as_ref()
                    .map_or_else(EditPolicy::default, |v| *v.get_ref()),
                original_time_after,
            });
        }
        Config {
            state_dir,
            remote_nick_format,
            files,
            metrics_listen,
            networks,
            gateways,
        }
    }

    fn original_time_after(
        &mut self,
        key: &str,
        raw: Option<&Spanned<i64>>,
    ) -> Option<std::time::Duration> {
        const DEFAULT: Option<std::time::Duration> =
            Some(crate::connector::DEFAULT_ORIGINAL_TIME_AFTER);
        let Some(raw) = raw else {
            return DEFAULT;
        };
        match u64::try_from(*raw.get_ref()) {
            Ok(0) => None,
            Ok(seconds) if seconds <= 31_536_000 => Some(std::time::Duration::from_secs(seconds)),
            _ => {
                self.report(
                    raw.span().start,
                    format!("{key}.original_time_after"),
                    "`original_time_after` is a number of seconds between 1 and 31536000 (a \
                     year), or 0 to never show the original time",
                );
                DEFAULT
            }
        }
    }

    fn long_text(&mut self, key: &str, raw: Option<&Spanned<RawLongText>>) -> LongTextPolicy {
        let mut policy = LongTextPolicy::default();
        let Some(raw) = raw.map(Spanned::get_ref) else {
            return policy;
        };
        if let Some(max_lines) = &raw.max_lines {
            match usize::try_from(*max_lines.get_ref()) {
                Ok(lines) if (1..=1000).contains(&lines) => policy.max_lines = lines,
                _ => self.report(
                    max_lines.span().start,
                    format!("{key}.long_text.max_lines"),
                    "`max_lines` must be between 1 and 1000",
                ),
            }
        }
        if let Some(mode) = &raw.mode {
            policy.mode = *mode.get_ref();
        }
        policy
    }

    fn files(&mut self, raw: &RawGeneral) -> FilesConfig {
        let mut files = FilesConfig::default();
        (files.media_listen, files.media_public_url) = self.media_endpoint("general", raw);
        if let Some(size) = &raw.max_file_size_mb {
            match u64::try_from(*size.get_ref()) {
                Ok(mb) if mb <= 4096 => files.max_file_bytes = mb * 1024 * 1024,
                _ => self.report(
                    size.span().start,
                    "general.max_file_size_mb",
                    "`max_file_size_mb` must be between 0 (never copy files) and 4096",
                ),
            }
        }
        if let Some(days) = &raw.file_retention_days {
            match u64::try_from(*days.get_ref()) {
                Ok(days) if (1..=3650).contains(&days) => {
                    files.retention = std::time::Duration::from_hours(24 * days);
                }
                _ => self.report(
                    days.span().start,
                    "general.file_retention_days",
                    "`file_retention_days` must be between 1 and 3650",
                ),
            }
        }
        files
    }

    fn general(&mut self, general: Option<Spanned<RawGeneral>>) -> (PathBuf, String) {
        let general = general.map(Spanned::into_inner);
        let state_dir = general
            .as_ref()
            .and_then(|g| g.state_dir.as_ref())
            .map_or_else(|| "state".to_owned(), |s| s.get_ref().clone());
        if let Some(dir) = general.as_ref().and_then(|g| g.state_dir.as_ref())
            && dir.get_ref().trim().is_empty()
        {
            self.report(
                dir.span().start,
                "general.state_dir",
                "state_dir must name a folder, e.g. \"state\" or \"/var/lib/tribridge\"",
            );
        }
        let format = general
            .as_ref()
            .and_then(|g| g.remote_nick_format.as_ref())
            .map_or_else(
                || DEFAULT_REMOTE_NICK_FORMAT.to_owned(),
                |s| s.get_ref().clone(),
            );
        if let Some(spanned) = general.as_ref().and_then(|g| g.remote_nick_format.as_ref()) {
            if let Some(unknown) = unknown_placeholder(spanned.get_ref()) {
                self.report(
                    spanned.span().start,
                    "general.remote_nick_format",
                    format!(
                        "unknown placeholder `{unknown}`; valid: {}",
                        NICK_FORMAT_PLACEHOLDERS.join(" ")
                    ),
                );
            }
            if spanned.get_ref().contains(['\r', '\n', '\0']) {
                self.report(
                    spanned.span().start,
                    "general.remote_nick_format",
                    "remote_nick_format cannot contain CR, LF or NUL",
                );
            }
        }
        (self.base.join(state_dir), format)
    }

    fn network(
        &mut self,
        id: &Spanned<String>,
        network: Spanned<RawNetwork>,
    ) -> Option<NetworkConfig> {
        let key = format!("network.{}", id.get_ref());
        if !is_valid_id(id.get_ref()) {
            self.report(
                id.span().start,
                key.clone(),
                "network ids use letters, digits, `-` and `_` only",
            );
        }
        let network = network.into_inner();
        match *network.kind.get_ref() {
            RawNetworkType::Irc => self.irc_network(&key, id.get_ref(), &network),
            RawNetworkType::Matrix => self.matrix_network(&key, id.get_ref(), &network),
            RawNetworkType::Mattermost => self.mattermost_network(&key, id.get_ref(), &network),
        }
    }

    /// Report every key given that does not belong to this network type.
    /// Report every key given that belongs to another network type.
    fn reject_foreign_keys(&mut self, key: &str, kind: RawNetworkType, raw: &RawNetwork) {
        for (name, offset, accepted_by) in raw.given_keys() {
            if !accepted_by.contains(&kind) {
                let owners: Vec<&str> = accepted_by.iter().map(|t| t.name()).collect();
                self.report(
                    offset,
                    format!("{key}.{name}"),
                    format!(
                        "`{name}` is not a key of `{}` networks (it belongs to `{}`); remove it",
                        kind.name(),
                        owners.join("`, `")
                    ),
                );
            }
        }
    }

    fn matrix_network(&mut self, key: &str, id: &str, raw: &RawNetwork) -> Option<NetworkConfig> {
        let before = self.issues.len();
        self.reject_foreign_keys(key, RawNetworkType::Matrix, raw);
        let homeserver = match &raw.homeserver {
            None => {
                self.report(
                    raw.kind.span().start,
                    format!("{key}.homeserver"),
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
                    self.report(
                        url.span().start,
                        format!("{key}.homeserver"),
                        format!(
                            "`{}` is not a homeserver URL; expected `https://host[:port]`, \
                             e.g. \"https://matrix.example.org\"",
                            url.get_ref()
                        ),
                    );
                }
                text.to_owned()
            }
        };
        let user = match &raw.user {
            None => {
                self.report(
                    raw.kind.span().start,
                    format!("{key}.user"),
                    "missing key `user`: the bot's Matrix id, e.g. \"@bridge:example.org\"",
                );
                String::new()
            }
            Some(user) => {
                if !is_valid_matrix_user(user.get_ref()) {
                    self.report(
                        user.span().start,
                        format!("{key}.user"),
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
        let password = self.secret(
            key,
            "password",
            raw.password.as_ref(),
            raw.password_file.as_ref(),
            raw.password_env.as_ref(),
        );
        let access_token = self.secret(
            key,
            "access_token",
            raw.access_token.as_ref(),
            raw.access_token_file.as_ref(),
            raw.access_token_env.as_ref(),
        );
        if password.is_none() && access_token.is_none() && self.issues.len() == before {
            self.report(
                raw.kind.span().start,
                format!("{key}.password"),
                "a Matrix network needs `password` or `access_token` (or their `_file` / `_env` \
                 forms)",
            );
        }
        let parallel_bridges = self.parallel_bridges(key, RawNetworkType::Matrix, raw, &user);
        if self.issues.len() > before {
            return None;
        }
        Some(NetworkConfig {
            id: id.to_owned(),
            parallel_bridges,
            kind: NetworkKind::Matrix(MatrixConfig {
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
            }),
        })
    }

    /// `metrics_listen`: an address and port.
    fn metrics_listen(&mut self, raw: &RawGeneral) -> Option<std::net::SocketAddr> {
        let listen = raw.metrics_listen.as_ref()?;
        let address = listen.get_ref().parse::<std::net::SocketAddr>().ok();
        if address.is_none() {
            self.report(
                listen.span().start,
                "general.metrics_listen",
                format!(
                    "`{}` is not an address and port, e.g. \"127.0.0.1:9184\"",
                    listen.get_ref()
                ),
            );
        }
        address
    }

    /// The media endpoint: `media_listen` and `media_public_url`, both or neither.
    fn media_endpoint(
        &mut self,
        key: &str,
        raw: &RawGeneral,
    ) -> (Option<std::net::SocketAddr>, Option<String>) {
        match (&raw.media_listen, &raw.media_public_url) {
            (None, None) => (None, None),
            (Some(listen), Some(url)) => {
                let address = listen.get_ref().parse::<std::net::SocketAddr>().ok();
                if address.is_none() {
                    self.report(
                        listen.span().start,
                        format!("{key}.media_listen"),
                        format!(
                            "`{}` is not an address and port, e.g. \"127.0.0.1:8090\"",
                            listen.get_ref()
                        ),
                    );
                }
                let text = url.get_ref();
                if !(text.starts_with("https://") || text.starts_with("http://"))
                    || text.contains(char::is_whitespace)
                {
                    self.report(
                        url.span().start,
                        format!("{key}.media_public_url"),
                        format!(
                            "`{text}` is not a URL; expected e.g. \"https://bridge.example.org/media\""
                        ),
                    );
                }
                (address, Some(text.clone()))
            }
            (Some(listen), None) => {
                self.report(
                    listen.span().start,
                    format!("{key}.media_listen"),
                    "`media_listen` needs `media_public_url` (the URL IRC users reach it by)",
                );
                (None, None)
            }
            (None, Some(url)) => {
                self.report(
                    url.span().start,
                    format!("{key}.media_public_url"),
                    "`media_public_url` needs `media_listen` (the address the endpoint listens on)",
                );
                (None, None)
            }
        }
    }

    fn irc_network(&mut self, key: &str, id: &str, raw: &RawNetwork) -> Option<NetworkConfig> {
        let before = self.issues.len();
        self.reject_foreign_keys(key, RawNetworkType::Irc, raw);
        let (host, port) = match &raw.server {
            None => {
                self.report(
                    raw.kind.span().start,
                    format!("{key}.server"),
                    "missing key `server`: an IRC network needs `server = \"host:port\"`",
                );
                (String::new(), 0)
            }
            Some(server) => match parse_host_port(server.get_ref()) {
                Ok(pair) => pair,
                Err(message) => {
                    self.report(server.span().start, format!("{key}.server"), message);
                    (String::new(), 0)
                }
            },
        };
        let tls = raw.tls.as_ref().is_none_or(|v| *v.get_ref());
        let nick = match &raw.nick {
            None => {
                self.report(
                    raw.kind.span().start,
                    format!("{key}.nick"),
                    "missing key `nick`: the nick the bridge uses on this network",
                );
                String::new()
            }
            Some(nick) => {
                if !is_valid_nick(nick.get_ref()) {
                    self.report(
                        nick.span().start,
                        format!("{key}.nick"),
                        "an IRC nick starts with a letter or one of []\\`_^{|} and contains no \
                         spaces, commas or control characters",
                    );
                }
                nick.get_ref().clone()
            }
        };
        let password = self.secret(
            key,
            "password",
            raw.password.as_ref(),
            raw.password_file.as_ref(),
            raw.password_env.as_ref(),
        );
        let sasl_password = self.secret(
            key,
            "sasl_password",
            raw.sasl_password.as_ref(),
            raw.sasl_password_file.as_ref(),
            raw.sasl_password_env.as_ref(),
        );
        let nickserv_password = self.secret(
            key,
            "nickserv_password",
            raw.nickserv_password.as_ref(),
            raw.nickserv_password_file.as_ref(),
            raw.nickserv_password_env.as_ref(),
        );
        if let Some(user) = &raw.sasl_username
            && sasl_password.is_none()
            && self.issues.len() == before
        {
            self.report(
                user.span().start,
                format!("{key}.sasl_username"),
                "sasl_username needs sasl_password (or sasl_password_file / sasl_password_env)",
            );
        }
        let flood_burst = self.positive(key, "flood_burst", raw.flood_burst.as_ref(), 5, 1000);
        let flood_interval_ms = self.positive(
            key,
            "flood_interval_ms",
            raw.flood_interval_ms.as_ref(),
            1300,
            600_000,
        );
        let tls_ca_file = raw.tls_ca_file.as_ref().map(|file| {
            let path = self.base.join(file.get_ref());
            if let Err(error) = std::fs::metadata(&path) {
                self.report(
                    file.span().start,
                    format!("{key}.tls_ca_file"),
                    format!("cannot read `{}`: {error}", path.display()),
                );
            }
            path
        });
        if !tls {
            for (name, value) in [
                ("tls_verify", raw.tls_verify.is_some()),
                ("tls_ca_file", raw.tls_ca_file.is_some()),
            ] {
                if value {
                    let offset = raw.tls.as_ref().map_or(0, |t| t.span().start);
                    self.report(
                        offset,
                        format!("{key}.{name}"),
                        format!(
                            "`{name}` has no effect with `tls = false`; remove it or turn TLS on"
                        ),
                    );
                }
            }
        }
        let charset = match &raw.charset {
            None => crate::connector::irc::charset::Charset::default(),
            Some(label) => crate::connector::irc::charset::Charset::for_label(label.get_ref())
                .unwrap_or_else(|error| {
                    self.report(
                        label.span().start,
                        format!("{key}.charset"),
                        error.to_string(),
                    );
                    crate::connector::irc::charset::Charset::default()
                }),
        };
        let string_or = |value: &Option<Spanned<String>>, default: &str| {
            value
                .as_ref()
                .map_or_else(|| default.to_owned(), |v| v.get_ref().clone())
        };
        let parallel_bridges = self.parallel_bridges(key, RawNetworkType::Irc, raw, &nick);
        if self.issues.len() > before {
            return None;
        }
        Some(NetworkConfig {
            id: id.to_owned(),
            parallel_bridges,
            kind: NetworkKind::Irc(IrcConfig {
                host,
                port,
                tls,
                tls_verify: raw.tls_verify.as_ref().is_none_or(|v| *v.get_ref()),
                tls_ca_file,
                username: string_or(&raw.username, "tribridge"),
                realname: string_or(&raw.realname, "tribridge relay bot"),
                nick,
                password,
                sasl_username: raw.sasl_username.as_ref().map(|v| v.get_ref().clone()),
                sasl_password,
                nickserv_password,
                nickserv_nick: string_or(&raw.nickserv_nick, "NickServ"),
                flood_burst: flood_burst as u32,
                flood_interval_ms,
                relay_membership: raw.relay_membership.as_ref().is_some_and(|v| *v.get_ref()),
                charset,
            }),
        })
    }

    /// Report keys that exist for another network type.
    fn mattermost_network(
        &mut self,
        key: &str,
        id: &str,
        raw: &RawNetwork,
    ) -> Option<NetworkConfig> {
        let before = self.issues.len();
        self.reject_foreign_keys(key, RawNetworkType::Mattermost, raw);
        let url = match &raw.url {
            None => {
                self.report(
                    raw.kind.span().start,
                    format!("{key}.url"),
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
                    _ => self.report(
                        url.span().start,
                        format!("{key}.url"),
                        format!(
                            "`{}` is not a server URL; expected `https://host[:port][/path]`, \
                             e.g. \"https://chat.example.org\"",
                            url.get_ref()
                        ),
                    ),
                }
                text.trim_end_matches("/api/v4").to_owned()
            }
        };
        let team = match &raw.team {
            None => {
                self.report(
                    raw.kind.span().start,
                    format!("{key}.team"),
                    "missing key `team`: the team's URL name, e.g. `team = \"civicrm\"`",
                );
                String::new()
            }
            Some(team) => {
                let name = team.get_ref().trim();
                if name.is_empty() || name.contains(['/', ' ']) {
                    self.report(
                        team.span().start,
                        format!("{key}.team"),
                        "`team` is the team's URL name, e.g. \"civicrm\" (no spaces or slashes)",
                    );
                }
                name.to_lowercase()
            }
        };
        let token = self.secret(
            key,
            "token",
            raw.token.as_ref(),
            raw.token_file.as_ref(),
            raw.token_env.as_ref(),
        );
        let password = self.secret(
            key,
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
                self.report(
                    login.span().start,
                    format!("{key}.login"),
                    "give either `token` or `login` + `password`, not both",
                );
                None
            }
            (None, Some(login), None) => {
                self.report(
                    login.span().start,
                    format!("{key}.password"),
                    "`login` needs `password` (or `password_file` / `password_env`)",
                );
                None
            }
            (_, None, Some(_)) => {
                let offset = [&raw.password, &raw.password_file, &raw.password_env]
                    .iter()
                    .find_map(|v| v.as_ref().map(|v| v.span().start))
                    .unwrap_or(0);
                self.report(
                    offset,
                    format!("{key}.login"),
                    "`password` needs `login` (the username or email to log in with)",
                );
                None
            }
            (None, None, None) => {
                if self.issues.len() == before {
                    self.report(
                        raw.kind.span().start,
                        format!("{key}.token"),
                        "missing credentials: give `token` (or `token_file` / `token_env`) or \
                         `login` + `password`",
                    );
                }
                None
            }
        };
        let tls_ca_file = raw.tls_ca_file.as_ref().map(|file| {
            let path = self.base.join(file.get_ref());
            if let Err(error) = std::fs::metadata(&path) {
                self.report(
                    file.span().start,
                    format!("{key}.tls_ca_file"),
                    format!("cannot read `{}`: {error}", path.display()),
                );
            }
            path
        });
        // Mattermost ids are known at once; usernames become ids when the connector logs in.
        let (parallel_bridges, parallel_bridge_usernames): (Vec<String>, Vec<String>) = self
            .parallel_bridges(key, RawNetworkType::Mattermost, raw, "")
            .into_iter()
            .partition(|account| is_valid_mattermost_user_id(account));
        let parallel_bridge_usernames = parallel_bridge_usernames
            .into_iter()
            .map(|name| name.trim_start_matches('@').to_lowercase())
            .collect();
        if self.issues.len() > before {
            return None;
        }
        Some(NetworkConfig {
            id: id.to_owned(),
            parallel_bridges,
            kind: NetworkKind::Mattermost(MattermostConfig {
                url,
                team,
                auth: auth?,
                sender_override: raw.sender_override.as_ref().is_some_and(|v| *v.get_ref()),
                relay_membership: raw.relay_membership.as_ref().is_some_and(|v| *v.get_ref()),
                tls_ca_file,
                parallel_bridge_usernames,
            }),
        })
    }

    /// `parallel_bridges`: other bridges' accounts in the form the network's connector reports
    /// senders (`own`: this bridge's account where the file names it, which cannot be listed).
    fn parallel_bridges(
        &mut self,
        key: &str,
        kind: RawNetworkType,
        raw: &RawNetwork,
        own: &str,
    ) -> Vec<String> {
        let Some(list) = &raw.parallel_bridges else {
            return Vec::new();
        };
        let name = format!("{key}.parallel_bridges");
        let mut accounts: Vec<String> = Vec::new();
        for entry in list.get_ref() {
            let account = entry.get_ref();
            let at = entry.span().start;
            let problem = match kind {
                _ if account.trim().is_empty() => Some(
                    "an empty account; list the other bridges' accounts on this network".to_owned(),
                ),
                RawNetworkType::Irc if !is_valid_nick(account) => Some(format!(
                    "`{account}` is not an IRC nick; list the other bridges' nicks, e.g. \
                     [\"tribridge2\"]"
                )),
                RawNetworkType::Matrix if !is_valid_matrix_user(account) => Some(format!(
                    "`{account}` is not a Matrix user id; list the other bridges' ids \
                     (`@name:server`), e.g. [\"@bridge2:example.org\"]"
                )),
                RawNetworkType::Mattermost
                    if !is_valid_mattermost_user_id(account)
                        && !is_valid_mattermost_username(account) =>
                {
                    Some(format!(
                        "`{account}` is neither a Mattermost username (3 to 22 letters, digits, \
                         `.`, `-` or `_`, starting with a letter) nor a user id (26 letters \
                         and digits)"
                    ))
                }
                _ if !own.is_empty() && account.to_lowercase() == own.to_lowercase() => Some(
                    format!("`{account}` is this bridge's own account; list the other bridges'"),
                ),
                _ if accounts
                    .iter()
                    .any(|a| a.to_lowercase() == account.to_lowercase()) =>
                {
                    Some(format!("`{account}` is listed twice"))
                }
                _ => None,
            };
            match problem {
                Some(message) => self.report(at, name.clone(), message),
                None => accounts.push(account.clone()),
            }
        }
        accounts
    }

    fn positive(
        &mut self,
        key: &str,
        name: &str,
        value: Option<&Spanned<i64>>,
        default: u64,
        max: u64,
    ) -> u64 {
        let Some(value) = value else { return default };
        match u64::try_from(*value.get_ref()) {
            Ok(number) if (1..=max).contains(&number) => number,
            _ => {
                self.report(
                    value.span().start,
                    format!("{key}.{name}"),
                    format!("`{name}` must be between 1 and {max}"),
                );
                default
            }
        }
    }

    /// A secret given inline, as `NAME_file` or as `NAME_env`: at most one of the three.
    fn secret(
        &mut self,
        key: &str,
        name: &str,
        inline: Option<&Spanned<String>>,
        file: Option<&Spanned<String>>,
        env: Option<&Spanned<String>>,
    ) -> Option<Secret> {
        let given = [inline, file, env].iter().filter(|v| v.is_some()).count();
        if given > 1 {
            let offset = [inline, file, env]
                .iter()
                .flatten()
                .map(|v| v.span().start)
                .max()
                .unwrap_or(0);
            self.report(
                offset,
                format!("{key}.{name}"),
                format!("give `{name}` one way only: `{name}`, `{name}_file` or `{name}_env`"),
            );
            return None;
        }
        if let Some(value) = inline {
            return Some(Secret::new(value.get_ref().clone()));
        }
        if let Some(file) = file {
            let path = self.base.join(file.get_ref());
            return match std::fs::read_to_string(&path) {
                Ok(text) => Some(Secret::new(text.trim_end_matches(['\r', '\n']).to_owned())),
                Err(error) => {
                    self.report(
                        file.span().start,
                        format!("{key}.{name}_file"),
                        format!("cannot read secret file `{}`: {error}", path.display()),
                    );
                    None
                }
            };
        }
        if let Some(variable) = env {
            return if let Some((_, value)) = self.env.iter().find(|(k, _)| k == variable.get_ref())
            {
                Some(Secret::new(value.clone()))
            } else {
                self.report(
                    variable.span().start,
                    format!("{key}.{name}_env"),
                    format!("environment variable `{}` is not set", variable.get_ref()),
                );
                None
            };
        }
        None
    }

    fn gateway_channels(
        &mut self,
        key: &str,
        raw: &[Spanned<RawGatewayChannel>],
        known: &HashSet<&str>,
        networks: &[NetworkConfig],
    ) -> Vec<GatewayChannel> {
        let mut channels = Vec::new();
        let mut seen: HashSet<(String, String)> = HashSet::new();
        for (index, entry) in raw.iter().enumerate() {
            let entry = entry.get_ref();
            let entry_key = format!("{key}.channels[{index}]");
            let network = entry.network.get_ref();
            if !known.contains(network.as_str()) {
                {
                    let mut names: Vec<&str> = known.iter().copied().collect();
                    names.sort_unstable();
                    let valid = if names.is_empty() {
                        "no [network.*] is defined".to_owned()
                    } else {
                        format!("defined networks: {}", names.join(", "))
                    };
                    self.report(
                        entry.network.span().start,
                        format!("{entry_key}.network"),
                        format!("unknown network `{network}`; {valid}"),
                    );
                }
                continue;
            }
            let channel = entry.channel.get_ref();
            if networks.iter().all(|n| &n.id != network) {
                // Declared but invalid: already reported at the network.
                continue;
            }
            if let Some(kind) = networks.iter().find(|n| &n.id == network).map(|n| &n.kind) {
                match kind {
                    NetworkKind::Irc(_) => {
                        if !is_valid_irc_channel(channel) {
                            self.report(
                                entry.channel.span().start,
                                format!("{entry_key}.channel"),
                                format!(
                                    "`{channel}` is not an IRC channel name: it starts with # or & \
                                     and has no spaces, commas or control characters"
                                ),
                            );
                            continue;
                        }
                    }
                    NetworkKind::Matrix(_) => {
                        if !is_valid_matrix_room(channel) {
                            self.report(
                                entry.channel.span().start,
                                format!("{entry_key}.channel"),
                                format!(
                                    "`{channel}` is not a Matrix room: give an alias \
                                     (`#room:server`) or a room id (`!id` or `!id:server`)"
                                ),
                            );
                            continue;
                        }
                    }
                    NetworkKind::Mattermost(_) => {
                        if !is_valid_mattermost_channel(channel) {
                            self.report(
                                entry.channel.span().start,
                                format!("{entry_key}.channel"),
                                format!(
                                    "`{channel}` is not a Mattermost channel: give its URL name \
                                     (lowercase letters, digits, `-`, `_`, e.g. \"town-square\") \
                                     or `id:` and its 26-character id"
                                ),
                            );
                            continue;
                        }
                    }
                }
            }
            if !seen.insert((network.clone(), irc_fold(channel))) {
                self.report(
                    entry.channel.span().start,
                    format!("{entry_key}.channel"),
                    format!("`{channel}` on `{network}` is listed twice in this gateway"),
                );
                continue;
            }
            channels.push(GatewayChannel {
                network: network.clone(),
                channel: channel.clone(),
                direction: entry
                    .direction
                    .as_ref()
                    .map_or(Direction::InOut, |d| *d.get_ref()),
            });
        }
        channels
    }
}

fn gateway_has_flow(channels: &[GatewayChannel]) -> bool {
    channels.iter().enumerate().any(|(i, source)| {
        source.direction.is_source()
            && channels
                .iter()
                .enumerate()
                .any(|(j, destination)| i != j && destination.direction.is_destination())
    })
}

fn unknown_placeholder(format: &str) -> Option<String> {
    let mut rest = format;
    while let Some(start) = rest.find('{') {
        let tail = &rest[start..];
        let end = tail.find('}').map_or(tail.len(), |e| e + 1);
        let placeholder = &tail[..end];
        if !NICK_FORMAT_PLACEHOLDERS.contains(&placeholder) {
            return Some(placeholder.to_owned());
        }
        rest = &tail[end..];
    }
    None
}

fn parse_host_port(server: &str) -> Result<(String, u16), String> {
    let hint = "expected `host:port`, e.g. \"irc.libera.chat:6697\" or \"[::1]:6667\"";
    let (host, port) = if let Some(rest) = server.strip_prefix('[') {
        let Some((host, port)) = rest.split_once("]:") else {
            return Err(format!("`{server}` is not a server address; {hint}"));
        };
        (host, port)
    } else {
        match server.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, port),
            _ => return Err(format!("`{server}` has no port; {hint}")),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("`{server}` has no valid host; {hint}"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((host.to_owned(), port)),
        _ => Err(format!("`{port}` is not a port number (1-65535); {hint}")),
    }
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn is_valid_nick(nick: &str) -> bool {
    let mut chars = nick.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let special = |c: char| "[]\\`_^{|}".contains(c);
    (first.is_ascii_alphabetic() || special(first))
        && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
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

/// IRC channel names start with `#` or `&` (also `+`/`!` on some servers) and contain no space,
/// comma, BEL or control characters.
#[must_use]
pub fn is_valid_irc_channel(channel: &str) -> bool {
    channel.len() > 1
        && channel.len() <= 200
        && channel.starts_with(['#', '&', '+', '!'])
        && !channel
            .chars()
            .any(|c| c == ' ' || c == ',' || c.is_control())
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

/// RFC 1459 case folding, which IRC servers use to compare channel names and nicks.
#[must_use]
pub fn irc_fold(name: &str) -> String {
    name.chars().map(irc_fold_char).collect()
}

/// [`irc_fold`] of one character.
#[must_use]
pub fn irc_fold_char(c: char) -> char {
    match c {
        '[' => '{',
        ']' => '}',
        '\\' => '|',
        '~' => '^',
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("irc.libera.chat:6697"),
            Ok(("irc.libera.chat".into(), 6697))
        );
        assert_eq!(parse_host_port("[::1]:6667"), Ok(("::1".into(), 6667)));
        assert!(parse_host_port("irc.libera.chat").is_err());
        assert!(parse_host_port("host:0").is_err());
        assert!(parse_host_port("host:99999").is_err());
    }

    #[test]
    fn placeholders() {
        assert_eq!(unknown_placeholder("<{NICK}> "), None);
        assert_eq!(unknown_placeholder("[{NETWORK}] <{NOPINGNICK}> "), None);
        assert_eq!(unknown_placeholder("<{USER}> "), Some("{USER}".into()));
    }

    #[test]
    fn folding() {
        assert_eq!(irc_fold("#Foo[Bar]"), "#foo{bar}");
    }
}
