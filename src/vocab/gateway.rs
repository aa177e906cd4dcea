//! Gateways as data: the channels a gateway links and which way messages flow
//! ([`GatewayConfig`], read from the file by [`crate::config`]), and what a gateway says about
//! how its messages are delivered ([`GatewaySettings`], handed to every connector).
//!
//! Invariant: a channel is named by its network id and its name as configured; how names
//! compare is the network's [`crate::vocab::CaseMapping`], never decided here.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::richtext::edits::EditPolicy;
use crate::richtext::long_text::LongTextPolicy;

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

/// What an IRC line `nick: text` becomes on networks with replies, when it is said soon after
/// the line of the person relayed as `nick` (a gateway's `irc_replies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IrcReplies {
    /// A plain message that mentions them (the default).
    #[default]
    Mention,
    /// A reply to their line (Matrix `m.in_reply_to`, a reply in its Mattermost thread), which
    /// mentions them too.
    Reply,
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
    pub original_time_after: Option<Duration>,
    /// Whether IRC's `nick: text` becomes a reply where the destination has replies.
    pub irc_replies: IrcReplies,
    /// How a relayed sender is shown in this gateway's channels, over the network's and the
    /// `[general]` format; `None`: theirs.
    pub remote_nick_format: Option<String>,
    /// What the bridge keeps of the gateway's messages, and for how long.
    pub history: HistoryPolicy,
}

/// What a gateway keeps of its history (`archive`, `retention_days`, `legal_hold`), enforced by
/// [`crate::archive`].
///
/// The defaults keep as little as the relaying needs: no archive, and every message forgotten
/// 30 days after the bridge received it (so an edit, delete or reaction can still find it for a
/// month). A bridge sees the plaintext of encrypted rooms and every network's messages; keeping
/// that for longer is a decision an organisation takes on purpose, per gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Keep the full record for export (`tribridge export`).
    pub archive: bool,
    /// Days a message is kept after it was received; `None` (configured as 0): forever.
    pub retention_days: Option<u32>,
    /// Nothing of the gateway is deleted, whatever `retention_days` says.
    pub legal_hold: bool,
}

/// The default of a gateway's `retention_days`.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;

impl Default for HistoryPolicy {
    fn default() -> Self {
        HistoryPolicy {
            archive: false,
            retention_days: Some(DEFAULT_RETENTION_DAYS),
            legal_hold: false,
        }
    }
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

/// What a gateway says about how its messages are delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Messages longer than `max_lines` IRC lines: split or truncate.
    pub long_text: LongTextPolicy,
    /// Mass pings (`@room`, `@channel`, `@all`, `@here`) from another network stay pings.
    pub allow_mass_pings: bool,
    /// How destinations without edits (IRC) show an edit made elsewhere.
    pub edit_policy: EditPolicy,
    /// A message delivered more than this long after it was said shows when it was said
    /// (with a prefix naming that time); `None`: never.
    pub original_time_after: Option<Duration>,
    /// Whether IRC's `nick: text` becomes a reply where the destination has replies.
    pub irc_replies: IrcReplies,
    /// The gateway's own `remote_nick_format`, which wins over the destination network's and
    /// the `[general]` one; `None`: theirs.
    pub remote_nick_format: Option<Arc<str>>,
}

impl GatewaySettings {
    /// The sender format for a delivery through this gateway: its own when it has one, else
    /// `network_format` (the destination network's, or the `[general]` one).
    #[must_use]
    pub fn nick_format<'a>(&'a self, network_format: &'a str) -> &'a str {
        self.remote_nick_format.as_deref().unwrap_or(network_format)
    }
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            long_text: LongTextPolicy::default(),
            allow_mass_pings: false,
            edit_policy: EditPolicy::default(),
            original_time_after: Some(DEFAULT_ORIGINAL_TIME_AFTER),
            irc_replies: IrcReplies::default(),
            remote_nick_format: None,
        }
    }
}

/// The default of a gateway's `original_time_after`.
pub const DEFAULT_ORIGINAL_TIME_AFTER: Duration = Duration::from_mins(1);

impl GatewayConfig {
    /// Its delivery settings, as connectors read them.
    #[must_use]
    pub fn settings(&self) -> GatewaySettings {
        GatewaySettings {
            long_text: self.long_text,
            allow_mass_pings: self.allow_mass_pings,
            edit_policy: self.edit_policy,
            original_time_after: self.original_time_after,
            irc_replies: self.irc_replies,
            remote_nick_format: self.remote_nick_format.as_deref().map(Arc::from),
        }
    }
}

/// Every gateway's delivery settings by gateway name, shared by the connectors and replaced
/// whole when the configuration is reloaded (a connector that was not rebuilt then reads the
/// settings of a gateway added since it started). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct GatewayBook {
    settings: Arc<std::sync::RwLock<Arc<std::collections::HashMap<String, GatewaySettings>>>>,
}

impl GatewayBook {
    /// A book of `settings`.
    #[must_use]
    pub fn new(settings: std::collections::HashMap<String, GatewaySettings>) -> Self {
        Self {
            settings: Arc::new(std::sync::RwLock::new(Arc::new(settings))),
        }
    }

    /// The settings of the gateway named `name`, if there is one.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<GatewaySettings> {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Replace every gateway's settings (a reload).
    pub fn replace(&self, settings: std::collections::HashMap<String, GatewaySettings>) {
        *self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(settings);
    }
}
