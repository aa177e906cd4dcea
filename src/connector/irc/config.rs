//! The `[network.X] type = "irc"` section: its raw serde type, its validation into
//! [`IrcConfig`], and IRC's rules for nicks, channel names and how they fold.
//!
//! Invariant: every key an IRC section accepts is a field of [`RawIrc`] (the configuration
//! reports any other key, naming the type it belongs to); a section with any problem yields no
//! settings.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::charset::Charset;
use crate::connector::{NetworkSettings, NetworkType, Validated};
use crate::vocab::section::field_names;
use crate::vocab::{Capabilities, CaseMapping, Secret, Section};

/// The IRC network type.
pub struct Irc;

/// What IRC can represent, and how the core treats it.
pub const CAPABILITIES: Capabilities = Capabilities {
    protocol: "irc",
    // The session writes lines in the order deliveries were queued and matches
    // acknowledgements by label, so one channel may have this many outstanding.
    window: super::PIPELINE_WINDOW,
    case_mapping: CaseMapping::Rfc1459,
    edits: false,
    deletes: false,
    threads: false,
    reactions: false,
    max_message_bytes: 400,
};

/// Settings of an IRC network.
#[derive(Debug, Clone, PartialEq)]
// Its bools are independent on/off keys of the file (tls, tls_verify, relay_membership,
// rejoin_after_kick), not states that an enum would name better.
#[allow(clippy::struct_excessive_bools)]
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
    /// The real name sent in USER, `{CONTACT}` already replaced by `contact`.
    pub realname: String,
    /// Server password (PASS): `server_password`, or its deprecated name `password`.
    pub server_password: Option<Secret>,
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
    /// Join a channel again after being kicked from it (off: stay out until restarted).
    pub rejoin_after_kick: bool,
    /// The text encoding: lines that are valid UTF-8 are always read as UTF-8; others, and
    /// everything we send, in this charset (UTF-8 by default, whose fallback is latin-1).
    pub charset: Charset,
    /// Per-person IRC connections (puppets) for people of other networks; `None`: off.
    pub puppets: Option<PuppetConfig>,
    /// Whether to catch up from the history the server plays back on join (`history`).
    pub history: HistoryMode,
}

/// The `history` key of an IRC network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HistoryMode {
    /// Use what the server offers: lines played back on join after the channel's cursor are
    /// relayed once with their original time, and our own lines there acknowledge deliveries.
    #[default]
    Auto,
    /// Ignore the server's history: played-back lines are skipped, nothing is caught up.
    Off,
}

/// The `puppets = true` settings of an IRC network.
#[derive(Debug, Clone, PartialEq)]
pub struct PuppetConfig {
    /// The nick format (`{NICK}`, `{NETWORK}`, `{PROTOCOL}`); `None`: `{NICK}[m]` for a Matrix
    /// person, `{NICK}[mm]` for a Mattermost one, `{NICK}[x]` otherwise.
    pub nick_format: Option<String>,
    /// The real name of a puppet (same placeholders).
    pub realname: String,
    /// `WEBIRC` password, when the server gives puppets a per-person host.
    pub webirc_password: Option<Secret>,
    /// An idle puppet quits after this long and comes back with the next message.
    pub idle_timeout: std::time::Duration,
    /// Puppets at most on this network; past it, the relay bot speaks for the person.
    pub max_puppets: usize,
    /// Puppet connections opened at most per second.
    pub connect_rate: u32,
}

/// The default real name of a puppet.
pub const DEFAULT_PUPPET_REALNAME: &str = "{NICK} on {NETWORK}, bridged by tribridge";

/// An IRC section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIrc {
    #[serde(rename = "type")]
    _type: Spanned<String>,
    server: Option<Spanned<String>>,
    tls: Option<Spanned<bool>>,
    tls_verify: Option<Spanned<bool>>,
    tls_ca_file: Option<Spanned<String>>,
    nick: Option<Spanned<String>>,
    username: Option<Spanned<String>>,
    realname: Option<Spanned<String>>,
    contact: Option<Spanned<String>>,
    server_password: Option<Spanned<String>>,
    server_password_file: Option<Spanned<String>>,
    server_password_env: Option<Spanned<String>>,
    /// Deprecated: `server_password`.
    password: Option<Spanned<String>>,
    /// Deprecated: `server_password_file`.
    password_file: Option<Spanned<String>>,
    /// Deprecated: `server_password_env`.
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
    rejoin_after_kick: Option<Spanned<bool>>,
    parallel_bridges: Option<Spanned<Vec<Spanned<String>>>>,
    puppets: Option<Spanned<bool>>,
    puppet_nick_format: Option<Spanned<String>>,
    puppet_realname: Option<Spanned<String>>,
    webirc_password: Option<Spanned<String>>,
    webirc_password_file: Option<Spanned<String>>,
    webirc_password_env: Option<Spanned<String>>,
    puppet_idle_timeout: Option<Spanned<i64>>,
    max_puppets: Option<Spanned<i64>>,
    puppet_connect_rate: Option<Spanned<i64>>,
    history: Option<Spanned<String>>,
}

impl NetworkType for Irc {
    fn name(&self) -> &'static str {
        "irc"
    }

    fn keys(&self) -> &'static [&'static str] {
        field_names::<RawIrc>()
    }

    fn validate(&self, section: &mut Section<'_>) -> Option<Validated> {
        let raw: RawIrc = section.read()?;
        let (host, port) = match &raw.server {
            None => {
                section.missing(
                    "server",
                    "missing key `server`: an IRC network needs `server = \"host:port\"`",
                );
                (String::new(), 0)
            }
            Some(server) => match parse_host_port(server.get_ref()) {
                Ok(pair) => pair,
                Err(message) => {
                    section.report(server.span().start, "server", message);
                    (String::new(), 0)
                }
            },
        };
        let tls = raw.tls.as_ref().is_none_or(|v| *v.get_ref());
        if tls
            && port == 6667
            && let Some(server) = &raw.server
        {
            section.warn(
                server.span().start,
                "server",
                format!(
                    "port 6667 is IRC's plain-text port, but TLS is on{}: set `tls = false` for \
                     a plain-text server, or use the server's TLS port (usually 6697)",
                    if raw.tls.is_none() {
                        " (`tls` defaults to true)"
                    } else {
                        ""
                    }
                ),
            );
        }
        let nick = match &raw.nick {
            None => {
                section.missing(
                    "nick",
                    "missing key `nick`: the nick the bridge uses on this network",
                );
                String::new()
            }
            Some(nick) => {
                if !is_valid_nick(nick.get_ref()) {
                    section.report(
                        nick.span().start,
                        "nick",
                        "an IRC nick starts with a letter or one of []\\`_^{|} and contains no \
                         spaces, commas or control characters",
                    );
                }
                nick.get_ref().clone()
            }
        };
        let server_password = server_password(section, &raw);
        let sasl_password = section.secret(
            "sasl_password",
            raw.sasl_password.as_ref(),
            raw.sasl_password_file.as_ref(),
            raw.sasl_password_env.as_ref(),
        );
        let nickserv_password = section.secret(
            "nickserv_password",
            raw.nickserv_password.as_ref(),
            raw.nickserv_password_file.as_ref(),
            raw.nickserv_password_env.as_ref(),
        );
        if let Some(user) = &raw.sasl_username
            && sasl_password.is_none()
            && !section.has_issues()
        {
            section.report(
                user.span().start,
                "sasl_username",
                "sasl_username needs sasl_password (or sasl_password_file / sasl_password_env)",
            );
        }
        let flood_burst = section.positive("flood_burst", raw.flood_burst.as_ref(), 5, 1000);
        let flood_interval_ms = section.positive(
            "flood_interval_ms",
            raw.flood_interval_ms.as_ref(),
            1300,
            600_000,
        );
        let tls_ca_file = raw
            .tls_ca_file
            .as_ref()
            .map(|file| section.existing_file("tls_ca_file", file));
        if !tls {
            for (name, value) in [
                ("tls_verify", raw.tls_verify.is_some()),
                ("tls_ca_file", raw.tls_ca_file.is_some()),
            ] {
                if value {
                    let offset = raw.tls.as_ref().map_or(0, |t| t.span().start);
                    section.report(
                        offset,
                        name,
                        format!(
                            "`{name}` has no effect with `tls = false`; remove it or turn TLS on"
                        ),
                    );
                }
            }
        }
        let charset = match &raw.charset {
            None => Charset::default(),
            Some(label) => Charset::for_label(label.get_ref()).unwrap_or_else(|error| {
                section.report(label.span().start, "charset", error.to_string());
                Charset::default()
            }),
        };
        let history = match raw
            .history
            .as_ref()
            .map(|v| (v.span().start, v.get_ref().as_str()))
        {
            None | Some((_, "auto")) => HistoryMode::Auto,
            Some((_, "off")) => HistoryMode::Off,
            Some((at, other)) => {
                section.report(
                    at,
                    "history",
                    format!("`history = \"{other}\"`: expected \"auto\" or \"off\""),
                );
                HistoryMode::Auto
            }
        };
        let string_or = |value: &Option<Spanned<String>>, default: &str| {
            value
                .as_ref()
                .map_or_else(|| default.to_owned(), |v| v.get_ref().clone())
        };
        let parallel_bridges =
            section.parallel_bridges(raw.parallel_bridges.as_ref(), &nick, |account| {
                (!is_valid_nick(account)).then(|| {
                    format!(
                        "`{account}` is not an IRC nick; list the other bridges' nicks, e.g. \
                         [\"tribridge2\"]"
                    )
                })
            });
        let realname = realname(section, &raw);
        let puppets = puppets(section, &raw);
        if section.has_issues() {
            return None;
        }
        Some(Validated {
            parallel_bridges,
            settings: Arc::new(IrcConfig {
                host,
                port,
                tls,
                tls_verify: raw.tls_verify.as_ref().is_none_or(|v| *v.get_ref()),
                tls_ca_file,
                username: string_or(&raw.username, "tribridge"),
                realname,
                nick,
                server_password,
                sasl_username: raw.sasl_username.as_ref().map(|v| v.get_ref().clone()),
                sasl_password,
                nickserv_password,
                nickserv_nick: string_or(&raw.nickserv_nick, "NickServ"),
                flood_burst: flood_burst as u32,
                flood_interval_ms,
                relay_membership: raw.relay_membership.as_ref().is_some_and(|v| *v.get_ref()),
                rejoin_after_kick: raw.rejoin_after_kick.as_ref().is_some_and(|v| *v.get_ref()),
                charset,
                puppets,
                history,
            }),
        })
    }
}

impl NetworkSettings for IrcConfig {
    fn follows_channel_changes(&self) -> bool {
        true
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
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
        (!is_valid_irc_channel(channel)).then(|| {
            format!(
                "`{channel}` is not an IRC channel name: it starts with # or & and has no \
                 spaces, commas or control characters"
            )
        })
    }

    fn account_problem(&self, account: &str) -> Option<String> {
        (!is_valid_nick(account)).then(|| {
            format!(
                "`{account}` is not an IRC nick: letters, digits and `[]\\`_^{{|}}-`, not \
                 starting with a digit or `-`"
            )
        })
    }

    fn identifies_accounts(&self) -> bool {
        true
    }
}

/// The server password: `server_password` (or its `_file` / `_env` forms), or the deprecated
/// `password` forms with a warning; both names at once is an error.
fn server_password(section: &mut Section<'_>, raw: &RawIrc) -> Option<Secret> {
    let old = [&raw.password, &raw.password_file, &raw.password_env];
    let new = [
        &raw.server_password,
        &raw.server_password_file,
        &raw.server_password_env,
    ];
    let old_given = old.iter().find_map(|value| value.as_ref());
    let new_given = new.iter().any(|value| value.is_some());
    match old_given {
        None => section.secret(
            "server_password",
            raw.server_password.as_ref(),
            raw.server_password_file.as_ref(),
            raw.server_password_env.as_ref(),
        ),
        Some(value) if new_given => {
            section.report(
                value.span().start,
                "password",
                "`password` is the old name of `server_password`; give only `server_password`",
            );
            None
        }
        Some(value) => {
            let name = ["password", "password_file", "password_env"]
                .into_iter()
                .zip(old)
                .find_map(|(name, value)| value.is_some().then_some(name))
                .unwrap_or("password");
            section.warn(
                value.span().start,
                name,
                format!(
                    "`{name}` is deprecated on IRC networks (it is the server password, PASS, \
                     not an account's); rename it `server_{name}`"
                ),
            );
            section.secret(
                "password",
                raw.password.as_ref(),
                raw.password_file.as_ref(),
                raw.password_env.as_ref(),
            )
        }
    }
}

/// The puppet settings: `None` unless `puppets = true` (a puppet key without it is a warning).
fn puppets(section: &mut Section<'_>, raw: &RawIrc) -> Option<PuppetConfig> {
    let on = raw.puppets.as_ref().is_some_and(|v| *v.get_ref());
    let webirc_password = section.secret(
        "webirc_password",
        raw.webirc_password.as_ref(),
        raw.webirc_password_file.as_ref(),
        raw.webirc_password_env.as_ref(),
    );
    let idle = section.positive(
        "puppet_idle_timeout",
        raw.puppet_idle_timeout.as_ref(),
        86_400,
        31_536_000,
    );
    let max_puppets = section.positive("max_puppets", raw.max_puppets.as_ref(), 100, 100_000);
    let connect_rate = section.positive(
        "puppet_connect_rate",
        raw.puppet_connect_rate.as_ref(),
        5,
        1000,
    );
    let text_keys = [
        ("puppet_nick_format", raw.puppet_nick_format.as_ref()),
        ("puppet_realname", raw.puppet_realname.as_ref()),
    ];
    for (name, value) in text_keys {
        if let Some(value) = value
            && (value.get_ref().trim().is_empty() || value.get_ref().contains(char::is_control))
        {
            section.report(
                value.span().start,
                name,
                format!("`{name}` cannot be empty or contain control characters"),
            );
        }
    }
    if let Some(format) = &raw.puppet_nick_format
        && !format.get_ref().contains("{NICK}")
    {
        section.report(
            format.span().start,
            "puppet_nick_format",
            "`puppet_nick_format` must contain {NICK} (e.g. \"{NICK}[m]\"), or every person \
             would ask for the same nick",
        );
    }
    if !on {
        let given = [
            (
                "puppet_nick_format",
                raw.puppet_nick_format.as_ref().map(|v| v.span().start),
            ),
            (
                "puppet_realname",
                raw.puppet_realname.as_ref().map(|v| v.span().start),
            ),
            (
                "webirc_password",
                raw.webirc_password.as_ref().map(|v| v.span().start),
            ),
            (
                "puppet_idle_timeout",
                raw.puppet_idle_timeout.as_ref().map(|v| v.span().start),
            ),
            (
                "max_puppets",
                raw.max_puppets.as_ref().map(|v| v.span().start),
            ),
            (
                "puppet_connect_rate",
                raw.puppet_connect_rate.as_ref().map(|v| v.span().start),
            ),
        ];
        for (name, offset) in given {
            if let Some(offset) = offset {
                section.warn(
                    offset,
                    name,
                    format!(
                        "`{name}` has no effect without `puppets = true`; remove it or turn \
                         puppets on"
                    ),
                );
            }
        }
        return None;
    }
    Some(PuppetConfig {
        nick_format: raw.puppet_nick_format.as_ref().map(|v| v.get_ref().clone()),
        realname: raw.puppet_realname.as_ref().map_or_else(
            || DEFAULT_PUPPET_REALNAME.to_owned(),
            |v| v.get_ref().clone(),
        ),
        webirc_password,
        idle_timeout: std::time::Duration::from_secs(idle),
        max_puppets: usize::try_from(max_puppets).unwrap_or(usize::MAX),
        connect_rate: u32::try_from(connect_rate).unwrap_or(u32::MAX),
    })
}

/// The placeholder of `realname` that names the bot's admin (`contact`).
pub const CONTACT_PLACEHOLDER: &str = "{CONTACT}";

/// The real name sent in USER: `realname` with `{CONTACT}` replaced by `contact`; by default
/// `tribridge relay bot`, followed by `(admin: <contact>)` when a contact is given, as networks
/// such as Libera ask of bots.
fn realname(section: &mut Section<'_>, raw: &RawIrc) -> String {
    let contact = raw.contact.as_ref().map(|c| c.get_ref().trim().to_owned());
    if let (Some(spanned), Some(text)) = (&raw.contact, &contact)
        && (text.is_empty() || text.contains(char::is_control))
    {
        section.report(
            spanned.span().start,
            "contact",
            "`contact` names who runs the bot (e.g. \"ops@example.org\" or \"alice on \
             #help\"): not empty, no control characters",
        );
    }
    let Some(realname) = &raw.realname else {
        return match contact {
            Some(contact) => format!("tribridge relay bot (admin: {contact})"),
            None => "tribridge relay bot".to_owned(),
        };
    };
    if realname.get_ref().contains(char::is_control) {
        section.report(
            realname.span().start,
            "realname",
            "`realname` cannot contain control characters",
        );
    }
    match contact {
        Some(contact) => realname.get_ref().replace(CONTACT_PLACEHOLDER, &contact),
        None if realname.get_ref().contains(CONTACT_PLACEHOLDER) => {
            section.report(
                realname.span().start,
                "realname",
                "`realname` uses {CONTACT} but `contact` is not set; add `contact = \"...\"` \
                 (who runs the bot) or remove the placeholder",
            );
            String::new()
        }
        None => realname.get_ref().clone(),
    }
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

/// Is this an IRC nick (a letter or one of ``[]\\`_^{|}`` first, no spaces or controls)?
#[must_use]
pub fn is_valid_nick(nick: &str) -> bool {
    let mut chars = nick.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let special = |c: char| "[]\\`_^{|}".contains(c);
    (first.is_ascii_alphabetic() || special(first))
        && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
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

/// RFC 1459 case folding, which IRC servers use to compare channel names and nicks.
#[must_use]
pub fn irc_fold(name: &str) -> String {
    CaseMapping::Rfc1459.fold(name)
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
    fn folding() {
        assert_eq!(irc_fold("#Foo[Bar]"), "#foo{bar}");
    }
}
