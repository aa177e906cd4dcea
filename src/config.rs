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
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use std::sync::Arc;

use crate::connector::supervisor::DEFAULT_RECONNECT_MAX;
#[cfg(feature = "matrix")]
use crate::connector::{BuildContext, ConnectorHandle, ConnectorTask};
use crate::connector::{NETWORK_TYPES, NetworkSettings, NetworkType, network_type};
use crate::richtext::edits::EditPolicy;
use crate::richtext::long_text::{LongTextMode, LongTextPolicy};
use crate::router::Topology;
use crate::vocab::Section;
use crate::vocab::gateway::{HistoryPolicy, IrcReplies};
pub use crate::vocab::identities::Identity;
pub use crate::vocab::{
    Capabilities, DEFAULT_ORIGINAL_TIME_AFTER, Direction, GatewayChannel, GatewayConfig, Secret,
};

/// The default sender format for relayed lines.
pub const DEFAULT_REMOTE_NICK_FORMAT: &str = "<{NICK}> ";

/// The one key every network section accepts besides its type's own: the sender format on
/// that network, read by the configuration itself.
const NETWORK_NICK_FORMAT_KEY: &str = "remote_nick_format";

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
    /// The PostgreSQL store's URL (`store`, `store_file` or `store_env`), with its password;
    /// `None` for the `SQLite` store in `state_dir` (the default).
    pub store_url: Option<Secret>,
    /// How a relayed sender is shown, e.g. `<{NICK}> `.
    pub remote_nick_format: String,
    /// Files carried between networks.
    pub files: FilesConfig,
    /// Where the metrics endpoint (`/metrics`, for Prometheus) listens; off when `None`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The longest wait before a lost connection is made again (`reconnect_max_seconds`).
    pub reconnect_max: std::time::Duration,
    /// Failover between instances on one PostgreSQL store: how long the active instance's
    /// lease lasts without renewal, so how soon a standby takes over after its death
    /// (`failover_after`, default 10 s). Read only with the PostgreSQL store.
    pub failover_after: std::time::Duration,
    /// This instance's name in the lease and the status (`instance_name`); `None`: the host's
    /// name ([`Config::instance_name`]).
    pub instance_name: Option<String>,
    /// What one lease covers (`failover`): the whole instance (active/passive, the default)
    /// or one network each (several active instances split the networks).
    pub failover_mode: FailoverMode,
    /// Networks by id, in file order.
    pub networks: Vec<NetworkConfig>,
    /// Gateways in file order.
    pub gateways: Vec<GatewayConfig>,
    /// `[[identity]]`: one person's linked accounts on several networks, in file order.
    pub identities: Vec<Identity>,
    /// What is valid but probably not meant (TLS on IRC's plain-text port, `http://` to
    /// another machine, a deprecated key), located like errors; `check` prints them and the
    /// daemon logs them.
    pub warnings: Vec<ConfigIssue>,
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

/// What one lease covers when instances share a PostgreSQL store (`[general] failover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailoverMode {
    /// `"instance"`: one lease for the whole instance; one instance active, the others wait.
    #[default]
    Instance,
    /// `"network"`: one lease per network; every instance is active and they split the
    /// networks between them.
    Network,
}

/// Default `failover_after`.
pub const DEFAULT_FAILOVER_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// A duration as `"10s"`, `"2500ms"` or `"1m"`.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let number: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(std::time::Duration::from_millis(number)),
        "s" => Some(std::time::Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(std::time::Duration::from_secs),
        _ => None,
    }
}

/// Default `max_file_size_mb`: Synapse's default upload limit.
pub const DEFAULT_MAX_FILE_MB: u64 = 50;
/// Default `file_retention_days`.
pub const DEFAULT_FILE_RETENTION_DAYS: u64 = 30;

impl Config {
    /// This instance's name: `instance_name`, else the host's name (so that a run restarted on
    /// the same host takes its own lease back at once), else `tribridge`.
    #[must_use]
    pub fn instance_name(&self) -> String {
        if let Some(name) = &self.instance_name {
            return name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "tribridge".to_owned())
    }

    /// The gateways as a routing table, with what each network's connector declares.
    #[must_use]
    pub fn topology(&self) -> Topology {
        Topology::new(
            self.networks
                .iter()
                .map(|network| (network.id.as_str(), network.capabilities())),
            &self.gateways,
        )
    }

    /// The network with this id.
    #[must_use]
    pub fn network(&self, id: &str) -> Option<&NetworkConfig> {
        self.networks.iter().find(|network| network.id == id)
    }
}

/// One configured account on one server.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The id used in gateways and logs (`libera` in `[network.libera]`).
    pub id: String,
    /// The settings of its network type, validated by its connector.
    pub settings: Arc<dyn NetworkSettings>,
    /// How a relayed sender is shown on this network, over the `[general]` format (a
    /// gateway's own wins over both); `None`: the `[general]` one.
    pub remote_nick_format: Option<String>,
    /// `parallel_bridges`: the accounts on this network of other bridges that relay the same
    /// channels (see [`crate::parallel`]), as the connector reports senders: an IRC nick, a
    /// Matrix user id, a Mattermost user id. Known to be parallel bridges of every channel of
    /// this network from the start. (Mattermost accounts given by username are in its settings
    /// until the connector has their ids.)
    pub parallel_bridges: Vec<String>,
}

impl PartialEq for NetworkConfig {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.remote_nick_format == other.remote_nick_format
            && self.parallel_bridges == other.parallel_bridges
            && self.settings.same_as(other.settings.as_ref())
    }
}

impl NetworkConfig {
    /// What its connector declares about the network.
    #[must_use]
    pub fn capabilities(&self) -> Capabilities {
        self.settings.capabilities()
    }

    /// The protocol name shown by `{PROTOCOL}`.
    #[must_use]
    pub fn protocol(&self) -> &'static str {
        self.capabilities().protocol
    }

    /// The settings of its type, when they are `T` (e.g. `IrcConfig`).
    #[must_use]
    pub fn settings_as<T: 'static>(&self) -> Option<&T> {
        self.settings.as_any().downcast_ref::<T>()
    }

    /// Build the connector for this network.
    #[cfg(feature = "matrix")]
    #[must_use]
    pub fn build(&self, context: BuildContext) -> (ConnectorHandle, ConnectorTask) {
        self.settings.build(&self.id, context)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw serde types: the file's shape, nothing more.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    general: Option<Spanned<RawGeneral>>,
    #[serde(default)]
    network: BTreeMap<Spanned<String>, Spanned<RawNetworkHead>>,
    #[serde(default)]
    gateway: Vec<Spanned<RawGateway>>,
    /// `[[identity]]`: network ids (and `name`, `nickserv_password…`) as keys.
    #[serde(default)]
    identity: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeneral {
    state_dir: Option<Spanned<String>>,
    store: Option<Spanned<String>>,
    store_file: Option<Spanned<String>>,
    store_env: Option<Spanned<String>>,
    remote_nick_format: Option<Spanned<String>>,
    media_listen: Option<Spanned<String>>,
    media_public_url: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    reconnect_max_seconds: Option<Spanned<i64>>,
    failover_after: Option<Spanned<String>>,
    failover: Option<Spanned<String>>,
    instance_name: Option<Spanned<String>>,
    max_file_size_mb: Option<Spanned<i64>>,
    file_retention_days: Option<Spanned<i64>>,
}

/// What the configuration reads of a `[network.X]` section itself: its type. The rest is the
/// connector's ([`crate::connector::NetworkType::validate`]).
#[derive(Debug, Deserialize)]
struct RawNetworkHead {
    #[serde(rename = "type")]
    kind: Spanned<String>,
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
    irc_replies: Option<Spanned<IrcReplies>>,
    remote_nick_format: Option<Spanned<String>>,
    archive: Option<Spanned<bool>>,
    retention_days: Option<Spanned<i64>>,
    legal_hold: Option<Spanned<bool>>,
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

/// The keys of a network type whose value is a secret when given inline: those that also have
/// a `_file` form (and an `_env` one).
fn inline_secret_keys(kind: &dyn NetworkType) -> impl Iterator<Item = &'static str> {
    let keys = kind.keys();
    keys.iter()
        .copied()
        .filter(move |key| keys.contains(&format!("{key}_file").as_str()))
}

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
        let mut inline: Vec<String> = Vec::new();
        // The store's URL holds a secret when it names a password (`user:password@`).
        if let Some(url) = document
            .get("general")
            .and_then(|general| general.get("store"))
            .and_then(toml::Value::as_str)
            && url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('@'))
                .is_some_and(|(user, _)| user.contains(':'))
        {
            inline.push("general.store".to_owned());
        }
        let networks = document.get("network").and_then(toml::Value::as_table);
        for (id, network) in networks.into_iter().flatten() {
            let named = network
                .get("type")
                .and_then(toml::Value::as_str)
                .and_then(network_type);
            let kinds: Vec<&dyn NetworkType> =
                named.map_or_else(|| NETWORK_TYPES.to_vec(), |kind| vec![kind]);
            // A key several types accept (`password`) is named once.
            for key in kinds.into_iter().flat_map(inline_secret_keys) {
                if network.get(key).is_some() && !inline.contains(&format!("network.{id}.{key}")) {
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
        warnings: Vec::new(),
        fatal: None,
    };
    let mut config = validator.config(raw);
    if let Some(fatal) = validator.fatal {
        return Err(vec![fatal]);
    }
    if validator.issues.is_empty() {
        validator
            .warnings
            .sort_by_key(|issue| (issue.line, issue.column));
        config.warnings = validator.warnings;
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
        let message = improve_serde_message(&message);
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

/// What a key of an `[[identity]]` entry means, for an error about its value.
fn identity_key_meaning(key: &str) -> &'static str {
    match key {
        "name" => "the one name the other networks show",
        "nickserv_password" => "the password of the IRC nick",
        "nickserv_password_file" => "a file holding the password of the IRC nick",
        "nickserv_password_env" => "an environment variable holding the password of the IRC nick",
        _ => "the person's account on that network",
    }
}

fn sorted<'a>(names: &HashSet<&'a str>) -> Vec<&'a str> {
    let mut names: Vec<&str> = names.iter().copied().collect();
    names.sort_unstable();
    names
}

/// serde's messages name Rust types; say what the file should contain instead.
fn improve_serde_message(message: &str) -> String {
    message
        .replace("variant", "value")
        .replace("invalid type: ", "wrong type: found ")
}

struct Validator<'a> {
    locator: &'a Locator<'a>,
    base: &'a Path,
    env: &'a [(String, String)],
    issues: Vec<ConfigIssue>,
    /// What is valid but probably not meant.
    warnings: Vec<ConfigIssue>,
    /// The earliest error of the file's shape (an unknown key, a wrong type), reported alone.
    fatal: Option<ConfigIssue>,
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
        let reconnect_max = raw
            .general
            .as_ref()
            .and_then(|general| general.get_ref().reconnect_max_seconds.as_ref())
            .map_or(DEFAULT_RECONNECT_MAX, |seconds| {
                match u64::try_from(*seconds.get_ref()) {
                    Ok(seconds) if (1..=3600).contains(&seconds) => {
                        std::time::Duration::from_secs(seconds)
                    }
                    _ => {
                        self.report(
                            seconds.span().start,
                            "general.reconnect_max_seconds",
                            "`reconnect_max_seconds` must be between 1 and 3600",
                        );
                        DEFAULT_RECONNECT_MAX
                    }
                }
            });
        let store_url = self.store_url(raw.general.as_ref().map(Spanned::get_ref));
        let (failover_after, instance_name, failover_mode) = self.failover(
            raw.general.as_ref().map(Spanned::get_ref),
            store_url.is_some(),
        );
        let (state_dir, remote_nick_format) = self.general(raw.general);
        let declared: Vec<String> = raw.network.keys().map(|k| k.get_ref().clone()).collect();
        let mut networks = Vec::new();
        for (id, network) in &raw.network {
            if let Some(network) = self.network(id, network) {
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
            let history = self.history(&key, &gateway);
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
                irc_replies: gateway
                    .irc_replies
                    .as_ref()
                    .map_or_else(IrcReplies::default, |v| *v.get_ref()),
                remote_nick_format: gateway.remote_nick_format.as_ref().map(|format| {
                    self.check_nick_format(&format!("{key}.remote_nick_format"), format);
                    format.get_ref().clone()
                }),
                history,
            });
        }
        let identities = self.identities(raw.identity, &known, &networks);
        self.named_channels(&networks, &gateways);
        let store_url = store_url.map(|(_, url)| url);
        Config {
            state_dir,
            store_url,
            remote_nick_format,
            files,
            metrics_listen,
            reconnect_max,
            failover_after,
            instance_name,
            failover_mode,
            networks,
            gateways,
            identities,
            warnings: Vec::new(),
        }
    }

    /// The channels networks' sections name (an api network's webhooks) that no gateway
    /// links on that network.
    fn named_channels(&mut self, networks: &[NetworkConfig], gateways: &[GatewayConfig]) {
        for network in networks {
            for named in network.settings.named_channels() {
                let linked = gateways.iter().any(|gateway| {
                    gateway
                        .channels
                        .iter()
                        .any(|c| c.network == network.id && c.channel == named.channel)
                });
                if !linked {
                    self.report(
                        named.at,
                        format!("network.{}.{}", network.id, named.key),
                        format!(
                            "`{channel}` is not a channel of `{id}` in any gateway: add \
                             `{{ network = \"{id}\", channel = \"{channel}\" }}` to a gateway's \
                             channels",
                            channel = named.channel,
                            id = network.id,
                        ),
                    );
                }
            }
        }
    }

    /// `[[identity]]` entries: each key a configured network (the person's account there, as
    /// its type checks it) or `name` / `nickserv_password…`; an account in one identity only.
    fn identities(
        &mut self,
        raw: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
        known: &HashSet<&str>,
        networks: &[NetworkConfig],
    ) -> Vec<Identity> {
        let mut identities = Vec::new();
        // (network, folded account) → the identity that has it.
        let mut taken: std::collections::HashMap<(String, String), usize> =
            std::collections::HashMap::new();
        for (index, entry) in raw.into_iter().enumerate() {
            let key = format!("identity[{index}]");
            let start = entry.span().start;
            let mut identity = Identity {
                name: None,
                accounts: Vec::new(),
                nickserv_password: None,
            };
            let mut secrets: [Option<Spanned<String>>; 3] = [None, None, None];
            let mut problems = false;
            for (field, value) in entry.into_inner() {
                let offset = value.span().start;
                let name = field.get_ref().clone();
                let field_key = format!("{key}.{name}");
                let Some(text) = value.get_ref().as_str().map(str::to_owned) else {
                    self.report(
                        offset,
                        field_key,
                        format!(
                            "wrong type: `{name}` is a string ({})",
                            identity_key_meaning(&name)
                        ),
                    );
                    problems = true;
                    continue;
                };
                match name.as_str() {
                    "name" => {
                        if text.trim().is_empty() || text.chars().any(char::is_control) {
                            self.report(
                                offset,
                                field_key,
                                "`name` is the name the other networks show: not empty, no \
                                 control characters",
                            );
                            problems = true;
                        } else {
                            identity.name = Some(text.trim().to_owned());
                        }
                    }
                    "nickserv_password" | "nickserv_password_file" | "nickserv_password_env" => {
                        let slot = match name.as_str() {
                            "nickserv_password" => 0,
                            "nickserv_password_file" => 1,
                            _ => 2,
                        };
                        secrets[slot] = Some(Spanned::new(value.span(), text));
                    }
                    network => {
                        if !known.contains(network) {
                            self.report(
                                field.span().start,
                                field_key,
                                format!(
                                    "unknown network `{network}`: the keys of an identity are \
                                     configured network ids ({}) and `name`, \
                                     `nickserv_password`, `nickserv_password_file`, \
                                     `nickserv_password_env`",
                                    sorted(known).join(", ")
                                ),
                            );
                            problems = true;
                            continue;
                        }
                        let account = text.trim().to_owned();
                        let Some(config) = networks.iter().find(|n| n.id == network) else {
                            // Its section has problems of its own, reported there.
                            problems = true;
                            continue;
                        };
                        if let Some(problem) = config.settings.account_problem(&account) {
                            self.report(offset, field_key, problem);
                            problems = true;
                            continue;
                        }
                        let folded = config.capabilities().case_mapping.fold(&account);
                        if let Some(other) = taken.get(&(network.to_owned(), folded.clone())) {
                            self.report(
                                offset,
                                field_key,
                                format!(
                                    "`{account}` of `{network}` is already in identity[{other}]: \
                                     an account belongs to one person"
                                ),
                            );
                            problems = true;
                            continue;
                        }
                        taken.insert((network.to_owned(), folded), index);
                        identity.accounts.push((network.to_owned(), account));
                    }
                }
            }
            identity.nickserv_password = self.secret(&key, "nickserv_password", &secrets);
            if identity.nickserv_password.is_some()
                && !identity.accounts.iter().any(|(network, _)| {
                    networks
                        .iter()
                        .any(|n| n.id == *network && n.settings.identifies_accounts())
                })
            {
                let offset = secrets.iter().flatten().map(|s| s.span().start).max();
                self.report(
                    offset.unwrap_or(start),
                    format!("{key}.nickserv_password"),
                    "`nickserv_password` is for the person's nick on a network that identifies \
                     to NickServ; this identity has no account on one",
                );
                problems = true;
            }
            if identity.accounts.len() < 2 && !problems {
                self.report(
                    start,
                    key,
                    "an identity links one person's accounts on at least two networks: give \
                     `<network id> = \"<account there>\"` for each",
                );
                continue;
            }
            if !problems {
                identities.push(identity);
            }
        }
        identities
    }

    /// A secret `NAME` of section `key` (an identity's `nickserv_password`, the store's URL),
    /// given one way at most (inline, `_file`, `_env`).
    fn secret(
        &mut self,
        key: &str,
        name: &str,
        given: &[Option<Spanned<String>>; 3],
    ) -> Option<Secret> {
        let count = given.iter().flatten().count();
        if count > 1 {
            let offset = given.iter().flatten().map(|v| v.span().start).max();
            self.report(
                offset.unwrap_or(0),
                format!("{key}.{name}"),
                format!("give `{name}` one way only: `{name}`, `{name}_file` or `{name}_env`"),
            );
            return None;
        }
        match given {
            [Some(inline), _, _] => Some(Secret::new(inline.get_ref().clone())),
            [_, Some(file), _] => {
                let path = self.base.join(file.get_ref());
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some(Secret::new(text.trim_end_matches(['\r', '\n']).to_owned())),
                    Err(error) => {
                        self.report(
                            file.span().start,
                            format!("{key}.{name}_file"),
                            format!("cannot read secret file `{}`: {error}", path.display()),
                        );
                        None
                    }
                }
            }
            [_, _, Some(variable)] => {
                if let Some((_, value)) = self.env.iter().find(|(k, _)| k == variable.get_ref()) {
                    Some(Secret::new(value.clone()))
                } else {
                    self.report(
                        variable.span().start,
                        format!("{key}.{name}_env"),
                        format!("environment variable `{}` is not set", variable.get_ref()),
                    );
                    None
                }
            }
            _ => None,
        }
    }

    fn history(&mut self, key: &str, gateway: &RawGateway) -> HistoryPolicy {
        let mut policy = HistoryPolicy {
            archive: gateway.archive.as_ref().is_some_and(|v| *v.get_ref()),
            legal_hold: gateway.legal_hold.as_ref().is_some_and(|v| *v.get_ref()),
            ..HistoryPolicy::default()
        };
        if let Some(raw) = &gateway.retention_days {
            match u32::try_from(*raw.get_ref()) {
                Ok(0) => policy.retention_days = None,
                Ok(days) if days <= 36_500 => policy.retention_days = Some(days),
                _ => self.report(
                    raw.span().start,
                    format!("{key}.retention_days"),
                    "`retention_days` is a number of days between 1 and 36500, or 0 to keep \
                     the history forever",
                ),
            }
        }
        policy
    }

    fn original_time_after(
        &mut self,
        key: &str,
        raw: Option<&Spanned<i64>>,
    ) -> Option<std::time::Duration> {
        const DEFAULT: Option<std::time::Duration> = Some(DEFAULT_ORIGINAL_TIME_AFTER);
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

    /// `failover_after`, `instance_name` and `failover`: failover between instances needs the PostgreSQL
    /// store (with `SQLite` they are an error, so that nobody believes a standby waits).
    fn failover(
        &mut self,
        general: Option<&RawGeneral>,
        on_postgres: bool,
    ) -> (std::time::Duration, Option<String>, FailoverMode) {
        let Some(general) = general else {
            return (DEFAULT_FAILOVER_AFTER, None, FailoverMode::Instance);
        };
        if !on_postgres {
            for (value, key) in [
                (&general.failover_after, "failover_after"),
                (&general.failover, "failover"),
                (&general.instance_name, "instance_name"),
            ] {
                if let Some(value) = value {
                    self.report(
                        value.span().start,
                        format!("general.{key}"),
                        format!(
                            "`{key}` is for failover between instances on one PostgreSQL store; \
                             set `store = \"postgres://…\"` or remove it (the SQLite store \
                             serves one instance)"
                        ),
                    );
                }
            }
        }
        let failover_after =
            general
                .failover_after
                .as_ref()
                .map_or(DEFAULT_FAILOVER_AFTER, |value| {
                    match parse_duration(value.get_ref()) {
                        Some(duration)
                            if (std::time::Duration::from_secs(1)
                                ..=std::time::Duration::from_mins(5))
                                .contains(&duration) =>
                        {
                            duration
                        }
                        _ => {
                            self.report(
                                value.span().start,
                                "general.failover_after",
                                format!(
                                    "`{}` is not a duration between 1s and 300s, e.g. \"10s\", \
                             \"2500ms\" or \"1m\"",
                                    value.get_ref()
                                ),
                            );
                            DEFAULT_FAILOVER_AFTER
                        }
                    }
                });
        let instance_name = general.instance_name.as_ref().map(|name| {
            let text = name.get_ref();
            let valid = !text.is_empty()
                && text.len() <= 64
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._:-@".contains(c));
            if !valid {
                self.report(
                    name.span().start,
                    "general.instance_name",
                    format!(
                        "`{text}` is not an instance name: 1 to 64 of the letters a-z, A-Z, \
                         digits and . _ : - @, unique among the instances on one store"
                    ),
                );
            }
            text.clone()
        });
        let mode = general
            .failover
            .as_ref()
            .map_or(FailoverMode::Instance, |value| {
                match value.get_ref().as_str() {
                    "instance" => FailoverMode::Instance,
                    "network" => FailoverMode::Network,
                    other => {
                        self.report(
                            value.span().start,
                            "general.failover",
                            format!(
                                "`{other}` is not a failover mode: \"instance\" (one lease, one \
                             active instance) or \"network\" (a lease per network, the \
                             instances split the networks)"
                            ),
                        );
                        FailoverMode::Instance
                    }
                }
            });
        (failover_after, instance_name, mode)
    }

    /// The PostgreSQL store's URL, with the offset of the key that gave it; `None` for the
    /// `SQLite` store.
    fn store_url(&mut self, general: Option<&RawGeneral>) -> Option<(usize, Secret)> {
        let general = general?;
        let given = [
            general.store.clone(),
            general.store_file.clone(),
            general.store_env.clone(),
        ];
        let offset = given.iter().flatten().map(|v| v.span().start).max()?;
        let url = self.secret("general", "store", &given)?;
        if let Err(problem) = crate::store::check_url(url.expose()) {
            self.report(offset, "general.store", problem);
            return None;
        }
        Some((offset, url))
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
            self.check_nick_format("general.remote_nick_format", spanned);
        }
        (self.base.join(state_dir), format)
    }

    /// Report what is wrong with a `remote_nick_format` (in `[general]`, a network or a
    /// gateway) at `key`.
    fn check_nick_format(&mut self, key: &str, format: &Spanned<String>) {
        if let Some(unknown) = unknown_placeholder(format.get_ref()) {
            self.report(
                format.span().start,
                key,
                format!(
                    "unknown placeholder `{unknown}`; valid: {}",
                    NICK_FORMAT_PLACEHOLDERS.join(" ")
                ),
            );
        }
        if format.get_ref().contains(['\r', '\n', '\0']) {
            self.report(
                format.span().start,
                key,
                "remote_nick_format cannot contain CR, LF or NUL",
            );
        }
    }

    /// A network's own `remote_nick_format` (a key of every network type, read here): taken
    /// out of the section's `value` before its type reads it.
    fn network_nick_format(
        &mut self,
        key: &str,
        item: &toml_edit::Item,
        value: &mut toml_edit::Value,
    ) -> Option<String> {
        let raw = item.as_table_like()?.get(NETWORK_NICK_FORMAT_KEY)?;
        if let Some(table) = value.as_inline_table_mut() {
            table.remove(NETWORK_NICK_FORMAT_KEY);
        }
        let offset = raw.span().map_or(0, |span| span.start);
        let Some(text) = raw.as_str() else {
            self.report(
                offset,
                format!("{key}.remote_nick_format"),
                "wrong type: `remote_nick_format` is a string, e.g. \"<{NICK}> \"",
            );
            return None;
        };
        let format = Spanned::new(offset..offset, text.to_owned());
        self.check_nick_format(&format!("{key}.remote_nick_format"), &format);
        Some(text.to_owned())
    }

    fn network(
        &mut self,
        id: &Spanned<String>,
        network: &Spanned<RawNetworkHead>,
    ) -> Option<NetworkConfig> {
        let key = format!("network.{}", id.get_ref());
        if !is_valid_id(id.get_ref()) {
            self.report(
                id.span().start,
                key.clone(),
                "network ids use letters, digits, `-` and `_` only",
            );
        }
        let kind_name = network.get_ref().kind.get_ref();
        let type_offset = network.get_ref().kind.span().start;
        let Some(kind) = network_type(kind_name) else {
            let names: Vec<&str> = NETWORK_TYPES.iter().map(|kind| kind.name()).collect();
            let message = format!(
                "unknown value `{kind_name}`, expected one of `{}` (valid network types: {})",
                names.join("`, `"),
                names.join(", ")
            );
            self.fatal(
                self.locator
                    .issue(type_offset, format!("{key}.type"), message),
            );
            return None;
        };
        // The table as the document holds it, with its spans (toml and toml_edit parse the same
        // text, so it is there whenever the raw config was read; if not, say so).
        let Some((item, mut value)) = self
            .locator
            .document
            .as_ref()
            .and_then(|document| document.as_table().get("network")?.get(id.get_ref()))
            .and_then(|item| Some((item.clone(), item.clone().into_value().ok()?)))
        else {
            self.report(
                id.span().start,
                key,
                "this network section cannot be read as a table",
            );
            return None;
        };
        let foreign = Self::foreign_keys(kind, &item);
        let remote_nick_format = self.network_nick_format(&key, &item, &mut value);
        if let Some(table) = value.as_inline_table_mut() {
            for (name, _) in &foreign {
                table.remove(name);
            }
        }
        let mut section = Section::new(id.get_ref(), type_offset, self.base, self.env, value);
        for (name, offset) in foreign {
            let owners: Vec<&str> = NETWORK_TYPES
                .iter()
                .filter(|other| other.keys().contains(&name.as_str()))
                .map(|other| other.name())
                .collect();
            if owners.is_empty() {
                let message = format!(
                    "unknown field `{name}`, expected one of `{}`, `{NETWORK_NICK_FORMAT_KEY}`",
                    kind.keys().join("`, `")
                );
                self.fatal(self.locator.issue(offset, format!("{key}.{name}"), message));
            } else {
                section.report(
                    offset,
                    &name,
                    format!(
                        "`{name}` is not a key of `{}` networks (it belongs to `{}`); remove it",
                        kind.name(),
                        owners.join("`, `")
                    ),
                );
            }
        }
        let validated = kind.validate(&mut section);
        for warning in section.take_warnings() {
            let key = warning.key.unwrap_or_else(|| key.clone());
            let located = self.locator.issue(warning.offset, key, warning.message);
            self.warnings.push(located);
        }
        for issue in section.into_issues() {
            let located = if let Some(key) = issue.key {
                self.locator.issue(issue.offset, key, issue.message)
            } else {
                let key = self
                    .locator
                    .key_path_at(issue.offset)
                    .unwrap_or_else(|| key.clone());
                let message = improve_serde_message(&issue.message);
                self.locator.issue(issue.offset, key, message)
            };
            if issue.fatal {
                self.fatal(located);
            } else {
                self.issues.push(located);
            }
        }
        let validated = validated?;
        Some(NetworkConfig {
            id: id.get_ref().clone(),
            remote_nick_format,
            settings: validated.settings,
            parallel_bridges: validated.parallel_bridges,
        })
    }

    /// The keys of a section that its type does not accept, with where each is reported: the
    /// value of a key another type accepts, the key itself otherwise.
    fn foreign_keys(kind: &dyn NetworkType, item: &toml_edit::Item) -> Vec<(String, usize)> {
        let Some(table) = item.as_table_like() else {
            return Vec::new();
        };
        table
            .iter()
            .filter(|(name, _)| !kind.keys().contains(name) && *name != NETWORK_NICK_FORMAT_KEY)
            .map(|(name, value)| {
                let key_span = table.key(name).and_then(toml_edit::Key::span);
                let known = NETWORK_TYPES
                    .iter()
                    .any(|other| other.keys().contains(&name));
                let span = if known {
                    value.span().or(key_span)
                } else {
                    key_span.or_else(|| value.span())
                };
                (name.to_owned(), span.map_or(0, |span| span.start))
            })
            .collect()
    }

    /// An error of the file's shape: the earliest one is reported alone, as a TOML error is.
    fn fatal(&mut self, issue: ConfigIssue) {
        let earlier = self
            .fatal
            .as_ref()
            .is_some_and(|fatal| (fatal.line, fatal.column) <= (issue.line, issue.column));
        if !earlier {
            self.fatal = Some(issue);
        }
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
            let Some(settings) = networks
                .iter()
                .find(|n| &n.id == network)
                .map(|n| &n.settings)
            else {
                continue;
            };
            if let Some(problem) = settings.channel_problem(channel) {
                self.report(
                    entry.channel.span().start,
                    format!("{entry_key}.channel"),
                    problem,
                );
                continue;
            }
            let folded = settings.capabilities().case_mapping.fold(channel);
            if !seen.insert((network.clone(), folded)) {
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

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert_eq!(unknown_placeholder("<{NICK}> "), None);
        assert_eq!(unknown_placeholder("[{NETWORK}] <{NOPINGNICK}> "), None);
        assert_eq!(unknown_placeholder("<{USER}> "), Some("{USER}".into()));
    }
}
