//! The `[network.X] type = "api"` section: its raw serde type, its validation into
//! [`ApiConfig`] (the listener, the API token, the buffer's size and the incoming webhooks),
//! and the rule for the names of its channels (the `gateway` its clients name).
//!
//! Invariant: every key an api section accepts is a field of [`RawApi`] or of a webhook's
//! [`RawWebhook`]; a section with any problem yields no settings; secrets never show.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use crate::connector::{NetworkSettings, NetworkType, Validated};
use crate::vocab::section::field_names;
use crate::vocab::{Capabilities, CaseMapping, Secret, Section};

/// The api network type.
pub struct Api;

/// What an api network can represent, and how the core treats it.
pub const CAPABILITIES: Capabilities = Capabilities {
    protocol: "api",
    // A delivery is acknowledged once it is in the buffer; one at a time keeps the buffer in
    // the order of the channel's queue.
    window: 1,
    // Clients name the channel in `gateway` exactly as configured.
    case_mapping: CaseMapping::Exact,
    // matterbridge's API carries texts only: an edit arrives as a corrected line (the
    // gateway's `edit_policy`), deletes and reactions are not shown.
    edits: false,
    deletes: false,
    threads: false,
    reactions: false,
    max_message_bytes: 64 * 1024,
};

/// The default of `buffer`: how many unread messages `GET /api/messages` keeps.
pub const DEFAULT_BUFFER: u64 = 1000;
/// The largest `buffer`.
pub const MAX_BUFFER: u64 = 1_000_000;

/// Settings of an api network.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// Where the HTTP API and the webhooks listen.
    pub listen: SocketAddr,
    /// The bearer token `/api/*` requests must carry.
    pub token: Secret,
    /// How many messages relayed to the API may wait unread; past it, deliveries wait in the
    /// outbox until a client reads.
    pub buffer: u64,
    /// The incoming webhooks, by name.
    pub webhooks: Vec<Webhook>,
}

/// One incoming webhook: `POST /hooks/<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// Its name in the URL.
    pub name: String,
    /// The channel of this network it posts into (the name clients use in `gateway`).
    pub gateway: String,
    /// Where the file names `gateway` (byte offset), for `check`'s located errors.
    pub gateway_at: usize,
    /// The secret a request must carry (`Authorization: Bearer`, or `?token=`).
    pub secret: Secret,
}

/// An api section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    #[serde(rename = "type")]
    _type: Spanned<String>,
    listen: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    buffer: Option<Spanned<i64>>,
    webhooks: Option<Vec<Spanned<RawWebhook>>>,
}

/// One entry of `webhooks` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: Option<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    secret: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
}

impl NetworkType for Api {
    fn name(&self) -> &'static str {
        "api"
    }

    fn keys(&self) -> &'static [&'static str] {
        field_names::<RawApi>()
    }

    fn validate(&self, section: &mut Section<'_>) -> Option<Validated> {
        let raw: RawApi = section.read()?;
        let listen = match &raw.listen {
            None => {
                section.missing(
                    "listen",
                    "missing key `listen`: where the API and the webhooks listen, e.g. \
                     `listen = \"127.0.0.1:4242\"`",
                );
                None
            }
            Some(value) => {
                let address = value.get_ref().parse::<SocketAddr>().ok();
                if address.is_none() {
                    section.report(
                        value.span().start,
                        "listen",
                        format!(
                            "`{}` is not an address to listen on; expected `ip:port`, e.g. \
                             \"127.0.0.1:4242\"",
                            value.get_ref()
                        ),
                    );
                }
                address
            }
        };
        let token = section.secret(
            "token",
            raw.token.as_ref(),
            raw.token_file.as_ref(),
            raw.token_env.as_ref(),
        );
        if raw.token.is_none() && raw.token_file.is_none() && raw.token_env.is_none() {
            section.missing(
                "token",
                "missing key `token`: the bearer token API clients send (or `token_file` / \
                 `token_env`)",
            );
        }
        if let (Some(token), Some(value)) = (&token, &raw.token)
            && token.expose().trim().is_empty()
        {
            section.report(
                value.span().start,
                "token",
                "`token` is empty: give API clients a secret to send",
            );
        }
        let buffer = section.positive("buffer", raw.buffer.as_ref(), DEFAULT_BUFFER, MAX_BUFFER);
        let webhooks = webhooks(section, raw.webhooks.as_deref().unwrap_or_default());
        if section.has_issues() {
            return None;
        }
        Some(Validated {
            parallel_bridges: Vec::new(),
            settings: Arc::new(ApiConfig {
                listen: listen?,
                token: token?,
                buffer,
                webhooks,
            }),
        })
    }
}

/// The `webhooks` entries, validated (problems reported on `section`).
fn webhooks(section: &mut Section<'_>, raw: &[Spanned<RawWebhook>]) -> Vec<Webhook> {
    let mut hooks: Vec<Webhook> = Vec::new();
    for entry in raw {
        let at = entry.span().start;
        let hook = entry.get_ref();
        let name = match &hook.name {
            None => {
                section.report(
                    at,
                    "webhooks",
                    "a webhook needs `name` (its URL is `/hooks/<name>`), e.g. \
                     `{ name = \"grafana\", gateway = \"ops\", secret_env = \"GRAFANA_HOOK\" }`",
                );
                None
            }
            Some(name) => {
                let text = name.get_ref();
                if !is_hook_name(text) {
                    section.report(
                        name.span().start,
                        "webhooks.name",
                        format!(
                            "`{text}` is not a webhook name: 1 to 64 letters, digits, `-` or \
                             `_`, e.g. \"grafana\""
                        ),
                    );
                    None
                } else if hooks.iter().any(|h| h.name == *text) {
                    section.report(
                        name.span().start,
                        "webhooks.name",
                        format!("webhook `{text}` is named twice; give each its own name"),
                    );
                    None
                } else {
                    Some(text.clone())
                }
            }
        };
        let gateway = match &hook.gateway {
            None => {
                section.report(
                    at,
                    "webhooks.gateway",
                    "a webhook needs `gateway`: the channel of this network it posts into, as \
                     a gateway names it, e.g. `gateway = \"ops\"`",
                );
                None
            }
            Some(gateway) => match channel_problem(gateway.get_ref()) {
                Some(problem) => {
                    section.report(gateway.span().start, "webhooks.gateway", problem);
                    None
                }
                None => Some((gateway.get_ref().clone(), gateway.span().start)),
            },
        };
        let secret = section.secret(
            "webhooks.secret",
            hook.secret.as_ref(),
            hook.secret_file.as_ref(),
            hook.secret_env.as_ref(),
        );
        if secret.is_none() && hook.secret_file.is_none() && hook.secret_env.is_none() {
            section.report(
                at,
                "webhooks.secret",
                "a webhook needs `secret` (or `secret_file` / `secret_env`): what its sender \
                 puts in `?token=` or `Authorization: Bearer`",
            );
        }
        if let (Some(name), Some(gateway), Some(secret)) = (name, gateway, secret) {
            let (gateway, gateway_at) = gateway;
            hooks.push(Webhook {
                name,
                gateway,
                gateway_at,
                secret,
            });
        }
    }
    hooks
}

/// A webhook's name: 1 to 64 ASCII letters, digits, `-` and `_` (one URL path segment).
#[must_use]
pub fn is_hook_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// What is wrong with `channel` as the name of an api channel (the `gateway` clients send).
fn channel_problem(channel: &str) -> Option<String> {
    let fine = !channel.is_empty()
        && channel.len() <= 128
        && !channel.chars().any(|c| c.is_whitespace() || c.is_control());
    (!fine).then(|| {
        format!(
            "`{channel}` is not an api channel: the name clients send as `gateway` (1 to 128 \
             characters, no spaces), e.g. \"ops\""
        )
    })
}

impl NetworkSettings for ApiConfig {
    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    /// Its channels are the gateway names clients post to: the running listener takes a name a
    /// reload adds and refuses one it removes (400, unknown gateway).
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
        channel_problem(channel)
    }

    fn named_channels(&self) -> Vec<crate::connector::NamedChannel> {
        self.webhooks
            .iter()
            .map(|hook| crate::connector::NamedChannel {
                at: hook.gateway_at,
                key: "webhooks.gateway".to_owned(),
                channel: hook.gateway.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(keys: &str) -> Result<ApiConfig, Vec<crate::config::ConfigIssue>> {
        let text = format!(
            "[network.api]\ntype = \"api\"\nlisten = \"127.0.0.1:4242\"\n{keys}\n\
             [[gateway]]\nname = \"ops\"\nchannels = [{{ network = \"api\", channel = \"ops\" }}, \
             {{ network = \"api\", channel = \"dev\" }}]\n"
        );
        crate::config::parse(&text, std::path::Path::new("."), &[]).map(|config| {
            config.networks[0]
                .settings_as::<ApiConfig>()
                .unwrap()
                .clone()
        })
    }

    #[test]
    fn a_section_takes_its_defaults_and_its_webhooks() {
        let config = parse(
            "token = \"t0k3n\"\nwebhooks = [{ name = \"grafana\", gateway = \"ops\", secret = \"s\" }]",
        )
        .unwrap();
        assert_eq!(config.buffer, DEFAULT_BUFFER);
        assert_eq!(config.token.expose(), "t0k3n");
        assert_eq!(config.webhooks.len(), 1);
        assert_eq!(config.webhooks[0].name, "grafana");
        assert_eq!(config.webhooks[0].gateway, "ops");
    }

    #[test]
    fn problems_are_located_with_what_would_be_valid() {
        let issues = parse("").unwrap_err();
        assert_eq!(issues[0].key, "network.api.token", "{issues:?}");
        let issues = parse("token = \"t\"\nbuffer = 0").unwrap_err();
        assert_eq!(issues[0].key, "network.api.buffer");
        assert_eq!(issues[0].line, Some(5));
        let issues = parse(
            "token = \"t\"\nwebhooks = [{ name = \"a b\", gateway = \"ops\", secret = \"s\" }]",
        )
        .unwrap_err();
        assert_eq!(issues[0].key, "network.api.webhooks.name");
        assert!(
            issues[0].message.contains("not a webhook name"),
            "{issues:?}"
        );
        let issues = parse(
            "token = \"t\"\nwebhooks = [{ name = \"a\", gateway = \"ops\", secret = \"s\" }, \
             { name = \"a\", gateway = \"ops\" }]",
        )
        .unwrap_err();
        let said = |what: &str| issues.iter().any(|issue| issue.message.contains(what));
        assert!(said("named twice") && said("needs `secret`"), "{issues:?}");
        let issues =
            parse("token = \"t\"\nwebhooks = [{ name = \"a\", gateway = \"ops\", secret = \"s\", colour = 1 }]")
                .unwrap_err();
        assert!(issues[0].message.contains("colour"), "{issues:?}");
    }
}
