//! `tribridge import-matterbridge FILE`: a matterbridge configuration (`matterbridge.toml`)
//! turned into a `bridges.toml` for its IRC, Mattermost, Matrix and API accounts and its
//! gateways.
//!
//! Every key of the file is either carried over (written as its counterpart, listed in
//! [`Imported::carried`]) or named in a comment at the top of the result with the reason it is
//! not ([`Imported::dropped`]): keys with no counterpart, accounts of protocols tribridge does
//! not bridge, gateways left with fewer than two channels. Keys are matched without regard to
//! case, as matterbridge reads them; `[general]` values are the accounts' defaults, as there.
//!
//! Invariants: pure (text in, text out; no file or network is touched); never panics on any
//! input; the result is meant to pass `tribridge check` (the tests run the real validator on
//! it), and a value that would not (an unknown charset, a webhook-only Mattermost account) is
//! dropped with its reason rather than written.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not TOML.
    #[error("not a TOML file: {0}")]
    Toml(String),
}

/// A key (or account, or gateway entry) not carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Where it was, dotted as in the file (`irc.libera.RunCommands`, `slack.work`,
    /// `gateway.dev.inout[2]`).
    pub key: String,
    /// Why, for the operator.
    pub reason: String,
}

/// A key carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// Where it was, dotted as in the file.
    pub from: String,
    /// Its counterpart, dotted (`network.libera.tls`, `general.remote_nick_format`).
    pub to: String,
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The `bridges.toml` text.
    pub toml: String,
    /// What was carried over.
    pub carried: Vec<Carried>,
    /// What was not, with why.
    pub dropped: Vec<Dropped>,
}

/// The protocols matterbridge knows that tribridge does not bridge.
const OTHER_PROTOCOLS: &[&str] = &[
    "discord",
    "gitter",
    "harmony",
    "keybase",
    "mastodon",
    "msteams",
    "mumble",
    "nctalk",
    "rocketchat",
    "slack",
    "slack-legacy",
    "sshchat",
    "steam",
    "telegram",
    "vk",
    "whatsapp",
    "xmpp",
    "zulip",
];

/// Keys tribridge has no counterpart for, with why (account keys and `[general]` keys alike).
const NO_COUNTERPART: &[(&str, &str)] = &[
    (
        "ColorNicks",
        "senders are shown by remote_nick_format, without colours",
    ),
    (
        "RunCommands",
        "raw IRC commands after connecting are not supported",
    ),
    ("PingDelay", "the connection's keep-alive is built in"),
    (
        "StripMarkdown",
        "formatting is converted to each network's own, never stripped",
    ),
    ("IgnoreNicks", "there are no sender filters"),
    ("IgnoreMessages", "there are no message filters"),
    ("ReplaceMessages", "messages are not rewritten"),
    ("ReplaceNicks", "names are not rewritten"),
    (
        "ExtractNicks",
        "names are not extracted from other bridges' lines; list other bridges' accounts in the network's parallel_bridges instead",
    ),
    (
        "VerboseJoinPart",
        "joins and parts are shown without ident@host",
    ),
    ("StripNick", "names are shown as they are"),
    (
        "ShowTopicChange",
        "topic changes are relayed with relay_membership",
    ),
    ("JoinDelay", "channels are joined as the server allows"),
    (
        "UseRelayMsg",
        "RELAYMSG is not used; puppets = true gives each person an IRC connection of their own",
    ),
    (
        "MessageQueue",
        "the outbox is durable and unbounded: nothing is dropped when a network is slow",
    ),
    (
        "MessageLength",
        "lines are cut at the server's line limit; long messages follow the gateway's long_text",
    ),
    (
        "MessageSplit",
        "long messages follow the gateway's long_text (truncate with a link, or split)",
    ),
    (
        "MessageClipped",
        "long messages follow the gateway's long_text (truncate with a link, or split)",
    ),
    (
        "NickServUsername",
        "QuakeNet's Q authentication is not supported",
    ),
    (
        "Label",
        "{LABEL} has no counterpart (see remote_nick_format)",
    ),
    ("NickFormatter", "there are no nick-list commands"),
    ("NicksPerRow", "there are no nick-list commands"),
    ("SkipVersionCheck", "the server's version is not checked"),
    (
        "EditDisable",
        "edits are always relayed; IRC shows them per the gateway's edit_policy",
    ),
    (
        "EditSuffix",
        "IRC shows edits per the gateway's edit_policy",
    ),
    (
        "PrefixMessagesWithNick",
        "senders are always shown by remote_nick_format (or, with sender_override = true, as the post's author)",
    ),
    (
        "WebhookURL",
        "webhook mode is not supported: the bridge posts with a token or a login",
    ),
    (
        "WebhookBindAddress",
        "webhook mode is not supported: the bridge reads with a token or a login",
    ),
    ("IconURL", "webhook mode is not supported"),
    (
        "NoHomeServerSuffix",
        "Matrix senders are shown by their display name",
    ),
    (
        "HTMLDisable",
        "Matrix messages always carry HTML formatting",
    ),
    ("KeepQuotedReply", "replies are relayed as replies"),
    ("UseUserName", "senders are shown by their display name"),
    ("UseFullName", "senders are shown by their display name"),
    ("UseFirstName", "senders are shown by their display name"),
    ("Debug", "logging is set with RUST_LOG"),
    ("DebugLevel", "logging is set with RUST_LOG"),
    ("MediaDownloadPath", "files are kept in state_dir/files"),
    (
        "MediaServerUpload",
        "files are served by the bridge itself: set [general] media_listen and media_public_url",
    ),
    (
        "MediaServerDownload",
        "files are served by the bridge itself: set [general] media_listen and media_public_url",
    ),
    ("MediaDownloadBlackList", "there are no file-name filters"),
    ("MediaConvertTgs", "Telegram is not bridged"),
    ("MediaConvertWebPToPNG", "files are relayed as they are"),
    (
        "IgnoreFailureOnStart",
        "a network that cannot connect is retried in the background; the others run",
    ),
    (
        "PreserveThreading",
        "threads and replies are always kept where the networks have them",
    ),
    (
        "LogFile",
        "logs go to standard error (the journal under systemd)",
    ),
    (
        "Charset",
        "not a charset tribridge knows (WHATWG labels, e.g. \"latin1\")",
    ),
    ("Buffer", "not a positive number"),
];

fn no_counterpart(key: &str) -> Option<&'static str> {
    NO_COUNTERPART
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
        .map(|(_, reason)| *reason)
}

/// One account's table, looked up without regard to case, with `[general]` as its defaults.
struct Account<'a> {
    protocol: &'static str,
    name: String,
    table: &'a toml::Table,
    /// The id of its `[network.<id>]`.
    id: String,
}

/// The lookup of a key in a table without regard to case: its spelling there and its value.
fn get<'a>(table: &'a toml::Table, key: &str) -> Option<(&'a str, &'a toml::Value)> {
    table
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key))
        .map(|(name, value)| (name.as_str(), value))
}

fn text_of(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bool_of(value: &toml::Value) -> Option<bool> {
    match value {
        toml::Value::Boolean(flag) => Some(*flag),
        toml::Value::String(text) => match text.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn int_of(value: &toml::Value) -> Option<i64> {
    match value {
        toml::Value::Integer(n) => Some(*n),
        toml::Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A comment line's text: one line, whatever the input.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The writer of the result and its two lists.
struct Writer {
    carried: Vec<Carried>,
    dropped: Vec<Dropped>,
}

impl Writer {
    fn carry(&mut self, from: &str, to: &str) {
        self.carried.push(Carried {
            from: from.to_owned(),
            to: to.to_owned(),
        });
    }

    fn drop_key(&mut self, key: &str, reason: &str) {
        self.dropped.push(Dropped {
            key: key.to_owned(),
            reason: reason.to_owned(),
        });
    }
}

/// matterbridge's `RemoteNickFormat` in ours: `{BRIDGE}` is the network's id here; the
/// placeholders with no counterpart are removed (and said).
fn nick_format(format: &str, key: &str, writer: &mut Writer) -> String {
    let mut out = String::new();
    let mut rest = format;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let Some(end) = after.find('}') else {
            out.push_str(after);
            rest = "";
            break;
        };
        let placeholder = &after[..=end];
        match placeholder {
            "{NICK}" | "{NOPINGNICK}" | "{PROTOCOL}" | "{GATEWAY}" | "{CHANNEL}" => {
                out.push_str(placeholder);
            }
            "{BRIDGE}" => out.push_str("{NETWORK}"),
            other => writer.drop_key(
                &format!("{key} {other}"),
                "this placeholder has no counterpart and is left out of remote_nick_format",
            ),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A network id from an account name: letters, digits, `-` and `_`.
fn network_id(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() { "net".to_owned() } else { id }
}

/// One gateway entry: account, channel, direction, where it was.
struct Entry {
    account: String,
    channel: String,
    direction: &'static str,
    key: String,
}

/// Convert a matterbridge configuration.
pub fn convert(text: &str) -> Result<Imported, ImportError> {
    let root: toml::Table = text
        .parse()
        .map_err(|error: toml::de::Error| ImportError::Toml(error.to_string()))?;
    let mut writer = Writer {
        carried: Vec::new(),
        dropped: Vec::new(),
    };
    let empty = toml::Table::new();
    let general = match get(&root, "general") {
        Some((_, toml::Value::Table(table))) => table,
        _ => &empty,
    };

    // Accounts of the protocols carried over; the others named.
    let mut accounts: Vec<Account<'_>> = Vec::new();
    let mut gateways_raw: Vec<&toml::Value> = Vec::new();
    let mut same_channel: Vec<&toml::Value> = Vec::new();
    for (section, value) in &root {
        let lower = section.to_ascii_lowercase();
        match (lower.as_str(), value) {
            ("general", _) => {}
            ("gateway", toml::Value::Array(items)) => gateways_raw.extend(items.iter()),
            ("samechannelgateway", toml::Value::Array(items)) => same_channel.extend(items.iter()),
            ("irc" | "mattermost" | "matrix" | "api", toml::Value::Table(table)) => {
                let protocol = match lower.as_str() {
                    "irc" => "irc",
                    "mattermost" => "mattermost",
                    "matrix" => "matrix",
                    _ => "api",
                };
                for (name, account) in table {
                    match account {
                        toml::Value::Table(account) => accounts.push(Account {
                            protocol,
                            name: name.clone(),
                            table: account,
                            id: String::new(),
                        }),
                        _ => writer.drop_key(
                            &format!("{section}.{name}"),
                            "a key outside any account: matterbridge reads accounts as [protocol.name]",
                        ),
                    }
                }
            }
            (other, toml::Value::Table(table)) if OTHER_PROTOCOLS.contains(&other) => {
                for name in table.keys() {
                    writer.drop_key(
                        &format!("{section}.{name}"),
                        &format!(
                            "the {other} protocol is not bridged by tribridge; this account and its channels in gateways are left out"
                        ),
                    );
                }
            }
            _ => writer.drop_key(section, "not a section tribridge knows"),
        }
    }
    // Ids: the account's name, or protocol-name where two protocols share a name.
    let names: Vec<String> = accounts.iter().map(|a| network_id(&a.name)).collect();
    for (index, account) in accounts.iter_mut().enumerate() {
        let id = &names[index];
        account.id = if names.iter().filter(|n| *n == id).count() > 1 {
            network_id(&format!("{}-{}", account.protocol, account.name))
        } else {
            id.clone()
        };
    }

    // Gateway entries, by gateway.
    let mut gateways: Vec<(String, String, Vec<Entry>)> = Vec::new();
    for (index, gateway) in gateways_raw.iter().enumerate() {
        let toml::Value::Table(gateway) = gateway else {
            continue;
        };
        let name = get(gateway, "name")
            .and_then(|(_, v)| text_of(v))
            .unwrap_or_else(|| format!("gateway{}", index + 1));
        let key = format!("gateway.{name}");
        if get(gateway, "enable").and_then(|(_, v)| bool_of(v)) == Some(false) {
            writer.drop_key(&key, "the gateway is disabled (enable = false)");
            continue;
        }
        let mut entries = Vec::new();
        for (field, value) in gateway {
            let direction = match field.to_ascii_lowercase().as_str() {
                "name" | "enable" => continue,
                "inout" => "inout",
                "in" => "in",
                "out" => "out",
                _ => {
                    writer.drop_key(
                        &format!("{key}.{field}"),
                        "not a gateway key tribridge knows",
                    );
                    continue;
                }
            };
            let toml::Value::Array(items) = value else {
                continue;
            };
            for (position, item) in items.iter().enumerate() {
                let entry_key = format!("{key}.{field}[{position}]");
                let toml::Value::Table(item) = item else {
                    continue;
                };
                let account = get(item, "account").and_then(|(_, v)| text_of(v));
                let channel = get(item, "channel").and_then(|(_, v)| text_of(v));
                if let Some((spelling, _)) = get(item, "options") {
                    writer.drop_key(
                        &format!("{entry_key}.{spelling}"),
                        "per-channel options (webhooks) are not supported",
                    );
                }
                match (account, channel) {
                    (Some(account), Some(channel)) => entries.push(Entry {
                        account,
                        channel,
                        direction,
                        key: entry_key,
                    }),
                    _ => writer.drop_key(&entry_key, "an entry needs both account and channel"),
                }
            }
        }
        gateways.push((name, key, entries));
    }
    for (index, gateway) in same_channel.iter().enumerate() {
        let toml::Value::Table(gateway) = gateway else {
            continue;
        };
        let name = get(gateway, "name")
            .and_then(|(_, v)| text_of(v))
            .unwrap_or_else(|| format!("samechannel{}", index + 1));
        let key = format!("samechannelgateway.{name}");
        if get(gateway, "enable").and_then(|(_, v)| bool_of(v)) == Some(false) {
            writer.drop_key(&key, "the gateway is disabled (enable = false)");
            continue;
        }
        let list = |field: &str| -> Vec<String> {
            match get(gateway, field) {
                Some((_, toml::Value::Array(items))) => items.iter().filter_map(text_of).collect(),
                _ => Vec::new(),
            }
        };
        let (account_names, channels) = (list("accounts"), list("channels"));
        // One gateway per channel, linking it on every account.
        for channel in &channels {
            let entries = account_names
                .iter()
                .map(|account| Entry {
                    account: account.clone(),
                    channel: channel.clone(),
                    direction: "inout",
                    key: format!("{key}.{account}.{channel}"),
                })
                .collect();
            gateways.push((format!("{name}-{channel}"), key.clone(), entries));
        }
    }

    // Which account's channels appear where, to decide each account's relay_membership.
    let account_of = |reference: &str| -> Option<usize> {
        let (protocol, name) = reference.split_once('.')?;
        accounts
            .iter()
            .position(|a| a.protocol.eq_ignore_ascii_case(protocol) && a.name == name)
    };
    let lookup = |account: &Account<'_>, key: &str| -> Option<(String, toml::Value)> {
        get(account.table, key)
            .map(|(k, v)| {
                (
                    format!("{}.{}.{k}", account.protocol, account.name),
                    v.clone(),
                )
            })
            .or_else(|| get(general, key).map(|(k, v)| (format!("general.{k}"), v.clone())))
    };

    let mut out = String::new();
    let mut body = String::new();
    // [general]
    let _ = writeln!(body, "[general]");
    let _ = writeln!(body, "state_dir = \"state\"");
    let mut general_used: Vec<String> = Vec::new();
    for (key, value) in general {
        let lower = key.to_ascii_lowercase();
        let from = format!("general.{key}");
        match lower.as_str() {
            "remotenickformat" => {
                if let Some(format) = text_of(value) {
                    let format = nick_format(&format, &from, &mut writer);
                    let _ = writeln!(body, "remote_nick_format = {}", quoted(&format));
                    writer.carry(&from, "general.remote_nick_format");
                }
            }
            "mediadownloadsize" => match int_of(value) {
                Some(bytes) if bytes >= 0 => {
                    let mb = (bytes + (1 << 20) - 1) >> 20;
                    let _ = writeln!(body, "max_file_size_mb = {}", mb.min(4096));
                    writer.carry(&from, "general.max_file_size_mb");
                }
                _ => writer.drop_key(&from, "not a size in bytes"),
            },
            // Defaults of the accounts' keys: carried with them (or named below).
            "showjoinpart" | "nosendjoinpart" | "skiptlsverify" | "messagedelay" => {
                general_used.push(key.clone());
            }
            _ => {
                let reason = no_counterpart(key).unwrap_or("not a key tribridge knows");
                writer.drop_key(&from, reason);
            }
        }
    }
    let _ = writeln!(body);

    // Networks.
    let mut written: Vec<bool> = vec![false; accounts.len()];
    for (index, account) in accounts.iter().enumerate() {
        let section = format!("{}.{}", account.protocol, account.name);
        let target = format!("network.{}", account.id);
        let mut lines: Vec<String> = Vec::new();
        let mut keys_done: Vec<String> = Vec::new();
        let mut local = Writer {
            carried: Vec::new(),
            dropped: Vec::new(),
        };
        let mut usable = true;
        // relay_membership: this account's joins shown where another account of its gateways
        // has ShowJoinPart, unless NoSendJoinPart.
        let no_send = lookup(account, "NoSendJoinPart")
            .and_then(|(_, v)| bool_of(&v))
            .unwrap_or(false);
        let shown_elsewhere = gateways.iter().any(|(_, _, entries)| {
            entries
                .iter()
                .any(|e| e.direction != "out" && account_of(&e.account) == Some(index))
                && entries.iter().any(|e| {
                    e.direction != "in"
                        && account_of(&e.account).is_some_and(|other| {
                            other != index
                                && lookup(&accounts[other], "ShowJoinPart")
                                    .and_then(|(_, v)| bool_of(&v))
                                    .unwrap_or(false)
                        })
                })
        });
        match account.protocol {
            "irc" => irc(
                account,
                &lookup,
                &mut lines,
                &mut keys_done,
                &mut local,
                &mut usable,
            ),
            "mattermost" => {
                mattermost(account, &mut lines, &mut keys_done, &mut local, &mut usable);
            }
            "matrix" => matrix(account, &mut lines, &mut keys_done, &mut local, &mut usable),
            _ => api(account, &mut lines, &mut keys_done, &mut local, &mut usable),
        }
        if account.protocol != "api" && shown_elsewhere && !no_send {
            lines.push("relay_membership = true".to_owned());
        }
        for key in ["ShowJoinPart", "NoSendJoinPart"] {
            if let Some((spelling, _)) = get(account.table, key) {
                local.carry(
                    &format!("{section}.{spelling}"),
                    &format!("{target}.relay_membership"),
                );
                keys_done.push(spelling.to_owned());
            }
        }
        if let Some((spelling, value)) = get(account.table, "RemoteNickFormat")
            && let Some(format) = text_of(value)
        {
            let from = format!("{section}.{spelling}");
            let format = nick_format(&format, &from, &mut local);
            lines.push(format!("remote_nick_format = {}", quoted(&format)));
            local.carry(&from, &format!("{target}.remote_nick_format"));
            keys_done.push(spelling.to_owned());
        }
        for key in account.table.keys() {
            if keys_done.iter().any(|done| done == key) {
                continue;
            }
            let reason = no_counterpart(key).unwrap_or("not a key tribridge knows");
            local.drop_key(&format!("{section}.{key}"), reason);
        }
        if !usable {
            writer.dropped.extend(local.dropped);
            continue;
        }
        written[index] = true;
        for carried in &local.carried {
            writer.carry(&carried.from, &carried.to);
        }
        writer.dropped.extend(local.dropped);
        let _ = writeln!(body, "# from [{section}]");
        let _ = writeln!(body, "[{target}]");
        let _ = writeln!(body, "type = \"{}\"", account.protocol);
        for line in lines {
            let _ = writeln!(body, "{line}");
        }
        let _ = writeln!(body);
    }
    for key in &general_used {
        let used = accounts
            .iter()
            .enumerate()
            .any(|(index, account)| written[index] && get(account.table, key).is_none());
        if used {
            writer.carry(
                &format!("general.{key}"),
                "the networks' counterparts (as defaults)",
            );
        } else {
            writer.drop_key(
                &format!("general.{key}"),
                "every account sets its own, or no account of a bridged protocol uses it",
            );
        }
    }

    // Gateways.
    for (name, key, entries) in &gateways {
        let mut channels: Vec<String> = Vec::new();
        let mut entry_keys: Vec<String> = Vec::new();
        for entry in entries {
            let Some(index) = account_of(&entry.account) else {
                writer.drop_key(
                    &entry.key,
                    &format!(
                        "account `{}` is not carried over (not an IRC, Mattermost, Matrix or API account of this file)",
                        entry.account
                    ),
                );
                continue;
            };
            if !written[index] {
                writer.drop_key(
                    &entry.key,
                    &format!("account `{}` is not carried over", entry.account),
                );
                continue;
            }
            let account = &accounts[index];
            // An API account's channel is the gateway's name, which its clients give.
            let channel = if account.protocol == "api" {
                name.clone()
            } else {
                entry.channel.clone()
            };
            let direction = if entry.direction == "inout" {
                String::new()
            } else {
                format!(", direction = \"{}\"", entry.direction)
            };
            channels.push(format!(
                "  {{ network = {}, channel = {}{direction} }},",
                quoted(&account.id),
                quoted(&channel)
            ));
            entry_keys.push(entry.key.clone());
        }
        if channels.len() < 2 {
            for entry_key in entry_keys {
                writer.drop_key(&entry_key, "its gateway is left out (below)");
            }
            writer.drop_key(
                key,
                "fewer than two of its channels are on networks carried over; a gateway links at least two",
            );
            continue;
        }
        for entry_key in entry_keys {
            writer.carry(&entry_key, &format!("gateway.{name}.channels"));
        }
        let _ = writeln!(body, "[[gateway]]");
        let _ = writeln!(body, "name = {}", quoted(name));
        let _ = writeln!(body, "channels = [");
        for line in channels {
            let _ = writeln!(body, "{line}");
        }
        let _ = writeln!(body, "]");
        let _ = writeln!(body);
    }

    let _ = writeln!(
        out,
        "# tribridge configuration, imported from a matterbridge configuration by\n\
         # `tribridge import-matterbridge`. Check it with: tribridge check --config bridges.toml"
    );
    if writer.dropped.is_empty() {
        let _ = writeln!(out, "# Every key was carried over.");
    } else {
        let _ = writeln!(out, "#\n# Not carried over:");
        for dropped in &writer.dropped {
            let _ = writeln!(
                out,
                "#   {}: {}",
                comment_text(&dropped.key),
                comment_text(&dropped.reason)
            );
        }
    }
    let _ = writeln!(out);
    out.push_str(&body);
    Ok(Imported {
        toml: out,
        carried: writer.carried,
        dropped: writer.dropped,
    })
}

/// A key's value from the account, else from `[general]`: where it came from, and the value.
type Lookup<'l> = dyn Fn(&Account<'_>, &str) -> Option<(String, toml::Value)> + 'l;

fn irc(
    account: &Account<'_>,
    lookup: &Lookup<'_>,
    lines: &mut Vec<String>,
    done: &mut Vec<String>,
    writer: &mut Writer,
    usable: &mut bool,
) {
    let section = format!("irc.{}", account.name);
    let target = format!("network.{}", account.id);
    let mut take = |key: &str| -> Option<(String, toml::Value)> {
        let (spelling, value) = get(account.table, key)?;
        done.push(spelling.to_owned());
        Some((format!("{section}.{spelling}"), value.clone()))
    };
    let tls = match take("UseTLS") {
        Some((from, value)) => {
            writer.carry(&from, &format!("{target}.tls"));
            bool_of(&value).unwrap_or(false)
        }
        None => false,
    };
    if let Some((from, Some(server))) = take("Server").map(|(from, v)| (from, text_of(&v))) {
        let server = if server
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        {
            server
        } else {
            format!("{server}:{}", if tls { 6697 } else { 6667 })
        };
        lines.push(format!("server = {}", quoted(&server)));
        writer.carry(&from, &format!("{target}.server"));
    } else {
        writer.drop_key(&section, "no Server: the account cannot be carried over");
        *usable = false;
    }
    // matterbridge's default is plain text; ours is TLS: always said.
    lines.push(format!("tls = {tls}"));
    let skip_verify = take("SkipTLSVerify");
    if let Some((from, value)) = skip_verify
        .clone()
        .or_else(|| lookup(account, "SkipTLSVerify"))
    {
        if bool_of(&value) == Some(true) && tls {
            lines.push("tls_verify = false".to_owned());
            writer.carry(&from, &format!("{target}.tls_verify"));
        } else if bool_of(&value) == Some(true) && skip_verify.is_some() {
            writer.drop_key(&from, "has no effect without TLS (UseTLS = false)");
        } else if skip_verify.is_some() {
            writer.carry(&from, &format!("{target}.tls_verify"));
        }
    }
    if let Some((from, Some(nick))) = take("Nick").map(|(from, v)| (from, text_of(&v))) {
        lines.push(format!("nick = {}", quoted(&nick)));
        writer.carry(&from, &format!("{target}.nick"));
    } else {
        writer.drop_key(&section, "no Nick: the account cannot be carried over");
        *usable = false;
    }
    if let Some((from, value)) = take("Password")
        && let Some(password) = text_of(&value)
    {
        if password.is_empty() {
            writer.carry(&from, &format!("{target}.server_password (empty: none)"));
        } else {
            lines.push(format!("server_password = {}", quoted(&password)));
            writer.carry(&from, &format!("{target}.server_password"));
        }
    }
    let sasl = take("UseSASL").map(|(from, v)| (from, bool_of(&v).unwrap_or(false)));
    let service = take("NickServNick").and_then(|(from, v)| Some((from, text_of(&v)?)));
    let service_password =
        take("NickServPassword").and_then(|(from, v)| Some((from, text_of(&v)?)));
    match (sasl, service, service_password) {
        (Some((sasl_from, true)), Some((nick_from, login)), Some((password_from, password))) => {
            lines.push(format!("sasl_username = {}", quoted(&login)));
            lines.push(format!("sasl_password = {}", quoted(&password)));
            writer.carry(&sasl_from, &format!("{target}.sasl_username"));
            writer.carry(&nick_from, &format!("{target}.sasl_username"));
            writer.carry(&password_from, &format!("{target}.sasl_password"));
        }
        (sasl, Some((nick_from, service)), Some((password_from, password)))
            if !service.eq_ignore_ascii_case("Q@CServe.quakenet.org") =>
        {
            if let Some((from, _)) = sasl {
                writer.carry(&from, &format!("{target}.nickserv_password (SASL off)"));
            }
            lines.push(format!("nickserv_nick = {}", quoted(&service)));
            lines.push(format!("nickserv_password = {}", quoted(&password)));
            writer.carry(&nick_from, &format!("{target}.nickserv_nick"));
            writer.carry(&password_from, &format!("{target}.nickserv_password"));
        }
        (sasl, service, password) => {
            for from in [
                sasl.map(|(from, _)| from),
                service.map(|(from, _)| from),
                password.map(|(from, _)| from),
            ]
            .into_iter()
            .flatten()
            {
                writer.drop_key(
                    &from,
                    "NickServ and SASL need NickServNick and NickServPassword (QuakeNet's Q is not supported)",
                );
            }
        }
    }
    if let Some((from, value)) = take("MessageDelay").or_else(|| lookup(account, "MessageDelay")) {
        match int_of(&value) {
            Some(ms) => {
                lines.push(format!("flood_interval_ms = {}", ms.clamp(1, 600_000)));
                writer.carry(&from, &format!("{target}.flood_interval_ms"));
            }
            None => writer.drop_key(&from, "not a number of milliseconds"),
        }
    }
    if let Some((from, value)) = take("Charset")
        && let Some(label) = text_of(&value)
    {
        if label.is_empty() {
            writer.carry(&from, &format!("{target}.charset (empty: the default)"));
        } else if encoding_rs::Encoding::for_label(label.trim().as_bytes()).is_some() {
            lines.push(format!("charset = {}", quoted(label.trim())));
            writer.carry(&from, &format!("{target}.charset"));
        } else {
            writer.drop_key(
                &from,
                "not a charset tribridge knows (WHATWG labels, e.g. \"latin1\")",
            );
        }
    }
    // matterbridge joins again after a kick (after RejoinDelay seconds).
    lines.push("rejoin_after_kick = true".to_owned());
    if let Some((from, _)) = take("RejoinDelay") {
        writer.carry(&from, &format!("{target}.rejoin_after_kick (at once)"));
    }
}

fn mattermost(
    account: &Account<'_>,
    lines: &mut Vec<String>,
    done: &mut Vec<String>,
    writer: &mut Writer,
    usable: &mut bool,
) {
    let section = format!("mattermost.{}", account.name);
    let target = format!("network.{}", account.id);
    let mut take = |key: &str| -> Option<(String, toml::Value)> {
        let (spelling, value) = get(account.table, key)?;
        done.push(spelling.to_owned());
        Some((format!("{section}.{spelling}"), value.clone()))
    };
    let no_tls = take("NoTLS").map(|(from, v)| (from, bool_of(&v).unwrap_or(false)));
    if let Some((from, Some(server))) = take("Server").map(|(from, v)| (from, text_of(&v))) {
        let host = server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let scheme = if no_tls.as_ref().is_some_and(|(_, off)| *off) {
            "http"
        } else {
            "https"
        };
        lines.push(format!("url = {}", quoted(&format!("{scheme}://{host}"))));
        writer.carry(&from, &format!("{target}.url"));
        if let Some((from, _)) = &no_tls {
            writer.carry(from, &format!("{target}.url"));
        }
    } else {
        writer.drop_key(
            &section,
            "no Server (a webhook-only account): the account cannot be carried over",
        );
        *usable = false;
    }
    if let Some((from, Some(team))) = take("Team").map(|(from, v)| (from, text_of(&v))) {
        lines.push(format!("team = {}", quoted(&team)));
        writer.carry(&from, &format!("{target}.team"));
    } else {
        writer.drop_key(&section, "no Team: the account cannot be carried over");
        *usable = false;
    }
    let token = take("Token").and_then(|(from, v)| Some((from, text_of(&v)?)));
    let login = take("Login").and_then(|(from, v)| Some((from, text_of(&v)?)));
    let password = take("Password").and_then(|(from, v)| Some((from, text_of(&v)?)));
    match (token, login, password) {
        (Some((from, token)), login, password) if !token.is_empty() => {
            lines.push(format!("token = {}", quoted(&token)));
            writer.carry(&from, &format!("{target}.token"));
            for (from, _) in [login, password].into_iter().flatten() {
                writer.drop_key(&from, "the Token is used instead");
            }
        }
        (_, Some((login_from, login)), Some((password_from, password))) => {
            lines.push(format!("login = {}", quoted(&login)));
            lines.push(format!("password = {}", quoted(&password)));
            writer.carry(&login_from, &format!("{target}.login"));
            writer.carry(&password_from, &format!("{target}.password"));
        }
        _ => {
            writer.drop_key(
                &section,
                "no Token nor Login and Password (webhook mode): the account cannot be carried over",
            );
            *usable = false;
        }
    }
    if let Some((from, value)) = take("SkipTLSVerify") {
        if bool_of(&value) == Some(true) {
            writer.drop_key(
                &from,
                "https is always verified: give the server's certificate or CA as tls_ca_file",
            );
        } else {
            writer.carry(&from, &format!("{target}.url (verified)"));
        }
    }
}

fn matrix(
    account: &Account<'_>,
    lines: &mut Vec<String>,
    done: &mut Vec<String>,
    writer: &mut Writer,
    usable: &mut bool,
) {
    let section = format!("matrix.{}", account.name);
    let target = format!("network.{}", account.id);
    let mut take = |key: &str| -> Option<(String, toml::Value)> {
        let (spelling, value) = get(account.table, key)?;
        done.push(spelling.to_owned());
        Some((format!("{section}.{spelling}"), value.clone()))
    };
    let homeserver =
        if let Some((from, Some(server))) = take("Server").map(|(from, v)| (from, text_of(&v))) {
            lines.push(format!("homeserver = {}", quoted(&server)));
            writer.carry(&from, &format!("{target}.homeserver"));
            server
        } else {
            writer.drop_key(&section, "no Server: the account cannot be carried over");
            *usable = false;
            String::new()
        };
    let mxid = take("MxID").and_then(|(from, v)| Some((from, text_of(&v)?)));
    let login = take("Login").and_then(|(from, v)| Some((from, text_of(&v)?)));
    let server_name = homeserver
        .split("://")
        .nth(1)
        .unwrap_or(&homeserver)
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .to_owned();
    let user = match (&mxid, &login) {
        (Some((_, id)), _) if id.starts_with('@') => Some(id.clone()),
        (_, Some((_, login))) if login.starts_with('@') => Some(login.clone()),
        (_, Some((_, login))) => Some(format!("@{login}:{server_name}")),
        _ => None,
    };
    if let Some(user) = user {
        lines.push(format!("user = {}", quoted(&user)));
        for (from, _) in [mxid, login].into_iter().flatten() {
            writer.carry(&from, &format!("{target}.user"));
        }
    } else {
        writer.drop_key(
            &section,
            "no Login or MxID: the account cannot be carried over",
        );
        *usable = false;
    }
    let token = take("Token").and_then(|(from, v)| Some((from, text_of(&v)?)));
    let password = take("Password").and_then(|(from, v)| Some((from, text_of(&v)?)));
    match (token, password) {
        (Some((from, token)), password) if !token.is_empty() => {
            lines.push(format!("access_token = {}", quoted(&token)));
            writer.carry(&from, &format!("{target}.access_token"));
            // Kept too: the bridge logs in with it again if the token is refused.
            if let Some((from, password)) = password {
                lines.push(format!("password = {}", quoted(&password)));
                writer.carry(&from, &format!("{target}.password"));
            }
        }
        (_, Some((from, password))) => {
            lines.push(format!("password = {}", quoted(&password)));
            writer.carry(&from, &format!("{target}.password"));
        }
        _ => {
            writer.drop_key(
                &section,
                "no Password or Token: the account cannot be carried over",
            );
            *usable = false;
        }
    }
}

fn api(
    account: &Account<'_>,
    lines: &mut Vec<String>,
    done: &mut Vec<String>,
    writer: &mut Writer,
    usable: &mut bool,
) {
    let section = format!("api.{}", account.name);
    let target = format!("network.{}", account.id);
    let mut take = |key: &str| -> Option<(String, toml::Value)> {
        let (spelling, value) = get(account.table, key)?;
        done.push(spelling.to_owned());
        Some((format!("{section}.{spelling}"), value.clone()))
    };
    if let Some((from, Some(address))) = take("BindAddress").map(|(from, v)| (from, text_of(&v))) {
        lines.push(format!("listen = {}", quoted(&address)));
        writer.carry(&from, &format!("{target}.listen"));
    } else {
        writer.drop_key(
            &section,
            "no BindAddress: the account cannot be carried over",
        );
        *usable = false;
    }
    if let Some((from, Some(token))) = take("Token").map(|(from, v)| (from, text_of(&v)))
        && !token.is_empty()
    {
        lines.push(format!("token = {}", quoted(&token)));
        writer.carry(&from, &format!("{target}.token"));
    } else {
        writer.drop_key(
            &section,
            "no Token: tribridge's API always asks for one; the account cannot be carried over",
        );
        *usable = false;
    }
    if let Some((from, value)) = take("Buffer") {
        match int_of(&value) {
            Some(buffer) if buffer > 0 => {
                lines.push(format!("buffer = {buffer}"));
                writer.carry(&from, &format!("{target}.buffer"));
            }
            _ => writer.drop_key(&from, "not a positive number"),
        }
    }
}

/// A map from each dropped key to its reason (for tests and tools).
#[must_use]
pub fn dropped_by_key(imported: &Imported) -> BTreeMap<String, String> {
    imported
        .dropped
        .iter()
        .map(|d| (d.key.clone(), d.reason.clone()))
        .collect()
}
