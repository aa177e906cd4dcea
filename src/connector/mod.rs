//! Connectors: one folder per network type, and the only code that knows a protocol's wire
//! types.
//!
//! A network type is a plug-in ([`NetworkType`]): the configuration hands each `[network.X]`
//! section to the type its `type` names, which validates it into its own settings
//! ([`NetworkSettings`]), declares what the core must know of the network ([`Capabilities`]:
//! its delivery window, how names fold, what it can show) and *builds* a connector (vector's
//! `SourceConfig::build` pattern): a [`ConnectorHandle`] the outbox calls to deliver, and a
//! [`ConnectorTask`] that owns the connection, converts wire events to
//! [`crate::model::Inbound`] and submits them to the router. [`NETWORK_TYPES`] lists them: a
//! new network is one folder and one line there.
//!
//! Shared here: the build context, the [`supervisor`] every session runs under, and the
//! helpers of delivery that every connector applies alike (the sender's format, the late
//! prefix, files announced as text).

pub mod api;
pub mod irc;
pub mod matrix;
pub mod mattermost;
pub mod supervisor;

use std::any::Any;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::model::{Attachment, Delivery, DeliveryAck, EventBody};
use crate::richtext::FormattedText;
use crate::richtext::model::{Block, Inline};
use crate::router::Router;
use crate::store::Store;
pub use crate::vocab::{
    AckFuture, Capabilities, DEFAULT_ORIGINAL_TIME_AFTER, DeliveryError, GatewaySettings, Section,
};

/// Every network type, in the order their names are listed in messages. Adding a network adds
/// its folder and one line here.
pub const NETWORK_TYPES: &[&dyn NetworkType] = &[
    &irc::Irc,               // type = "irc"
    &mattermost::Mattermost, // type = "mattermost"
    &matrix::Matrix,         // type = "matrix"
    &api::Api,               // type = "api"
];

/// The network type named `name` (a section's `type`).
#[must_use]
pub fn network_type(name: &str) -> Option<&'static dyn NetworkType> {
    NETWORK_TYPES
        .iter()
        .copied()
        .find(|kind| kind.name() == name)
}

/// A network type: how its `[network.X]` sections are read.
pub trait NetworkType: Sync {
    /// The value of `type` that names it.
    fn name(&self) -> &'static str;

    /// Every key its sections accept (`type` included), in the order they are documented.
    fn keys(&self) -> &'static [&'static str];

    /// Validate a section; `None` when it has problems (each reported in `section`).
    fn validate(&self, section: &mut Section<'_>) -> Option<Validated>;
}

/// A validated `[network.X]` section.
pub struct Validated {
    /// The connector's own settings.
    pub settings: Arc<dyn NetworkSettings>,
    /// `parallel_bridges`, in the form the connector reports senders: known parallel bridges
    /// of every channel of the network from the start (see [`crate::parallel`]).
    pub parallel_bridges: Vec<String>,
}

/// One network's validated settings: what the core reads of it, and what builds its connector.
pub trait NetworkSettings: std::fmt::Debug + Send + Sync + SettingsAny {
    /// What the network can show, and how the core treats it.
    fn capabilities(&self) -> Capabilities;

    /// Build the connector for network `id` (see [`connector`]).
    #[cfg(feature = "matrix")]
    fn build(&self, id: &str, context: BuildContext) -> (ConnectorHandle, ConnectorTask);

    /// What is wrong with `channel` as the name of a channel on this network, if anything.
    fn channel_problem(&self, channel: &str) -> Option<String>;

    /// What is wrong with `account` as a person's account on this network in an
    /// `[[identity]]` entry (in the form the configuration names it), if anything. By
    /// default a network's accounts cannot be linked.
    fn account_problem(&self, account: &str) -> Option<String> {
        let _ = account;
        Some("accounts of this network type cannot be linked in `[[identity]]`".to_owned())
    }

    /// Whether an identity's `nickserv_password` is used on this network (its connector
    /// identifies a puppet that takes the person's own nick).
    fn identifies_accounts(&self) -> bool {
        false
    }

    /// Channels of this network that its own section names and that must be linked by a
    /// gateway (an api network's webhooks post into one): `check` reports each that no
    /// gateway lists on this network, where the section names it. None by default.
    fn named_channels(&self) -> Vec<NamedChannel> {
        Vec::new()
    }

    /// Whether its connector joins and leaves channels a reload adds or removes without
    /// reconnecting (it watches [`BuildContext::channel_updates`]). When not, a reload that
    /// changes its channels reconnects it.
    fn follows_channel_changes(&self) -> bool {
        false
    }
}

/// A channel a network's section names (see [`NetworkSettings::named_channels`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedChannel {
    /// Where the section names it (byte offset in the file).
    pub at: usize,
    /// The key that names it, under the section (`webhooks.gateway`).
    pub key: String,
    /// The channel.
    pub channel: String,
}

/// Settings as `Any`, for comparing two networks' settings and for tests that read a type's
/// settings; every `NetworkSettings` that compares with `==` has it.
pub trait SettingsAny: Any {
    /// The settings as `Any`.
    fn as_any(&self) -> &dyn Any;

    /// Whether `other` holds the same settings.
    fn same_as(&self, other: &dyn NetworkSettings) -> bool;
}

impl<T: NetworkSettings + PartialEq> SettingsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn same_as(&self, other: &dyn NetworkSettings) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

/// A connector of a network with `capabilities`: `handle` for the outbox, `session` (its
/// supervised connection) for the daemon to run.
pub fn connector(
    handle: impl Deliver,
    capabilities: Capabilities,
    session: impl Future<Output = ()> + Send + 'static,
) -> (ConnectorHandle, ConnectorTask) {
    (
        ConnectorHandle::new(Arc::new(handle), capabilities),
        ConnectorTask::new(session),
    )
}

/// Log filter directives that quiet the connectors' libraries to warnings (the Matrix SDK logs
/// every sync, with its whole filter, and every send at info).
#[cfg(feature = "matrix")]
pub const QUIET_LOG_TARGETS: &str = matrix::QUIET_LOG_TARGETS;

/// `tribridge appservice-registration`: the registration YAML of a Matrix network in
/// appservice mode (see the Matrix connector's `appservice` module).
#[cfg(feature = "matrix")]
pub use matrix::appservice::{
    AppserviceError as MatrixAppserviceError, registration as matrix_appservice_registration,
};
/// `tribridge matrix-recover`: take a Matrix network's cross-signing identity back from secret
/// storage with its recovery key (see the Matrix connector's `identity` module).
#[cfg(feature = "matrix")]
pub use matrix::{RecoverError as MatrixRecoverError, recover as recover_matrix_identity};

/// What every connector needs from the daemon.
#[derive(Clone)]
pub struct BuildContext {
    /// Where inbound events go.
    pub router: Router,
    /// How a relayed sender is shown on this network: its own `remote_nick_format`, else the
    /// `[general]` one (a gateway's own wins over both: [`GatewaySettings::nick_format`]).
    pub remote_nick_format: String,
    /// The channels of this network that appear in gateways, as configured.
    pub channels: Vec<String>,
    /// The channels after each reload, for a connector that follows them without reconnecting
    /// ([`NetworkSettings::follows_channel_changes`]); the daemon rebuilds any other connector
    /// whose channels changed.
    pub channel_updates: tokio::sync::watch::Receiver<Vec<String>>,
    /// Each gateway's delivery settings, by gateway name (replaced on reload).
    pub gateways: crate::vocab::GatewayBook,
    /// Where the connector reports its connection and the channels it is in (`/readyz`).
    pub status: crate::vocab::NetworkStatus,
    /// Cancelled when the daemon shuts down.
    pub shutdown: CancellationToken,
    /// The store, for the connector's cursors (sync positions); events go through the router.
    pub store: Arc<Store>,
    /// The daemon's state folder; a connector may keep its own files in a subfolder.
    pub state_dir: PathBuf,
    /// Files carried between networks: where a connector stores what it receives, and reads
    /// (or links) what it delivers.
    pub files: Arc<crate::files::Files>,
    /// When its session reconnects after a loss ([`supervisor::supervise`]).
    pub reconnect: supervisor::ReconnectPolicy,
    /// Where a connector registers the series it keeps about its network, for `/metrics`.
    pub metrics: Arc<crate::vocab::network_metrics::NetworkMetrics>,
}

/// For a text message delivered late (more than the gateway's `original_time_after` after
/// `timestamp_ms`, as after an outage or a restart): the prefix that shows when it was said,
/// `[2026-11-22 06:40 UTC] `. `None` for a prompt delivery and for other kinds of event (an
/// edit or reaction acts on a message whose own time is known).
#[must_use]
pub fn late_prefix(delivery: &Delivery, settings: &GatewaySettings, now_ms: i64) -> Option<String> {
    let after = settings.original_time_after?;
    let late = now_ms.saturating_sub(delivery.timestamp_ms) > after.as_millis() as i64;
    (late && matches!(delivery.body, EventBody::Text { .. }))
        .then(|| format!("[{}] ", utc_minute(delivery.timestamp_ms)))
}

/// `ms` (since the Unix epoch) as `YYYY-MM-DD HH:MM UTC`.
#[must_use]
pub fn utc_minute(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms since 1970"),
        |time| time.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

/// `text` with `prefix` (plain text) put before its first line.
#[must_use]
pub fn prefixed(prefix: &str, text: &FormattedText) -> FormattedText {
    let mut blocks = text.blocks.clone();
    if prefix.is_empty() {
        return FormattedText::new(blocks);
    }
    match blocks.first_mut() {
        Some(Block::Paragraph(inlines)) => inlines.insert(0, Inline::Text(prefix.to_owned())),
        _ => blocks.insert(0, Block::Paragraph(vec![Inline::Text(prefix.to_owned())])),
    }
    FormattedText::new(blocks)
}

/// A delivery marked with when it was said, when it is late ([`late_prefix`]); `None` when it
/// is not.
#[must_use]
pub fn with_original_time(
    delivery: &Delivery,
    settings: &GatewaySettings,
    now_ms: i64,
) -> Option<Delivery> {
    let prefix = late_prefix(delivery, settings, now_ms)?;
    let mut late = delivery.clone();
    if let EventBody::Text { text, .. } = &mut late.body {
        *text = prefixed(&prefix, text);
    }
    Some(late)
}

impl BuildContext {
    /// The settings of the gateway a delivery goes through (defaults for an unknown name).
    #[must_use]
    pub fn gateway(&self, name: &str) -> GatewaySettings {
        self.gateways.get(name).unwrap_or_default()
    }
}

/// A future a connector returns through a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a connector's handle does for the outbox: hand one delivery to its connection.
pub trait Deliver: Send + Sync + 'static {
    /// Hand `delivery` to the connection. Resolves once it is queued there in order, with the
    /// future of its acknowledgement by the destination.
    fn send(
        self: Arc<Self>,
        delivery: Delivery,
    ) -> BoxFuture<'static, Result<AckFuture, DeliveryError>>;
}

/// A connection that sends one delivery at a time and learns its acknowledgement from the
/// send's answer (HTTP): the whole send is the acknowledgement. Such a handle is a [`Deliver`].
pub trait DeliverWhole: Send + Sync + 'static {
    /// Send `delivery` and wait for the destination's answer.
    fn deliver_whole<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<DeliveryAck, DeliveryError>>;
}

impl<H: DeliverWhole> Deliver for H {
    fn send(
        self: Arc<Self>,
        delivery: Delivery,
    ) -> BoxFuture<'static, Result<AckFuture, DeliveryError>> {
        send_whole(self, delivery, |handle, delivery| {
            handle.deliver_whole(delivery)
        })
    }
}

/// [`Deliver::send`] for a connection whose whole send is the acknowledgement.
fn send_whole<H, F>(
    handle: Arc<H>,
    delivery: Delivery,
    deliver: F,
) -> BoxFuture<'static, Result<AckFuture, DeliveryError>>
where
    H: Send + Sync + 'static,
    F: for<'a> FnOnce(&'a H, &'a Delivery) -> BoxFuture<'a, Result<DeliveryAck, DeliveryError>>
        + Send
        + 'static,
{
    Box::pin(async move {
        let ack: AckFuture = Box::pin(async move { deliver(&handle, &delivery).await });
        Ok(ack)
    })
}

/// The outbox's side of a connector: deliver one message. Cheap to clone.
#[derive(Clone)]
pub struct ConnectorHandle {
    inner: Arc<dyn Deliver>,
    capabilities: Capabilities,
}

impl ConnectorHandle {
    /// A handle delivering through `inner`, for a network with these capabilities.
    pub fn new(inner: Arc<dyn Deliver>, capabilities: Capabilities) -> Self {
        Self {
            inner,
            capabilities,
        }
    }
}

impl crate::vocab::Endpoint for ConnectorHandle {
    fn window(&self) -> usize {
        self.capabilities.window
    }

    async fn send(&self, delivery: Delivery) -> Result<AckFuture, DeliveryError> {
        Arc::clone(&self.inner).send(delivery).await
    }
}

/// The connection side of a connector: runs until shutdown.
pub struct ConnectorTask(BoxFuture<'static, ()>);

impl ConnectorTask {
    /// The task that runs `session` until it ends (at shutdown).
    pub fn new(session: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Box::pin(session))
    }

    /// Run the connection (with reconnects) until the shutdown token is cancelled.
    pub async fn run(self) {
        self.0.await;
    }
}

/// Sleep until `deadline`, or for ever without one (a `select!` branch that may be off).
pub async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Render `remote_nick_format` for a delivery. `no_ping` makes the `{NOPINGNICK}` form.
///
/// Placeholders are substituted in one pass over the format: what a value holds (a display name
/// `{CHANNEL}`) is shown literally, never expanded again.
#[must_use]
pub fn render_sender(
    format: &str,
    delivery: &Delivery,
    no_ping: impl Fn(&str) -> String,
) -> String {
    let nick = &delivery.author.display_name;
    let mut out = String::with_capacity(format.len() + nick.len());
    let mut rest = format;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let candidate = &rest[start..];
        let value = candidate.find('}').and_then(|end| {
            let value = match &candidate[..=end] {
                "{NOPINGNICK}" => no_ping(nick),
                "{NICK}" => nick.clone(),
                "{NETWORK}" => delivery.origin.network.clone(),
                "{PROTOCOL}" => delivery.origin_protocol.clone(),
                "{CHANNEL}" => delivery.origin.channel.clone(),
                "{GATEWAY}" => delivery.gateway.clone(),
                _ => return None,
            };
            Some((value, end + 1))
        });
        if let Some((value, length)) = value {
            out.push_str(&value);
            rest = &candidate[length..];
        } else {
            out.push('{');
            rest = &candidate[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The sentence that tells a membership or channel change, e.g. `ann joined #civicrm`; every
/// connector shows it the same way (with its network as a prefix).
#[must_use]
pub fn membership_text(delivery: &Delivery, change: &crate::model::Membership) -> String {
    use crate::model::Membership;
    let who = &delivery.author.display_name;
    let channel = &delivery.origin.channel;
    match change {
        Membership::Joined => format!("{who} joined {channel}"),
        Membership::Left {
            reason: Some(reason),
        } if !reason.is_empty() => format!("{who} left {channel} ({reason})"),
        Membership::Left { .. } => format!("{who} left {channel}"),
        Membership::Renamed { new_name } => format!("{who} is now known as {new_name}"),
        Membership::Topic { topic } => format!("{who} changed the topic to: {topic}"),
    }
}

/// What a file is, for a sentence: "an image", "a video", "an audio file", "a file".
#[must_use]
pub fn file_kind(attachment: &Attachment) -> &'static str {
    match attachment.mime.split('/').next() {
        Some("image") => "an image",
        Some("video") => "a video",
        Some("audio") => "an audio file",
        _ => "a file",
    }
}

/// `text` followed by one paragraph per file for destinations that do not receive these files
/// as files: `shared an image: cat.png (4.0 KiB)`, and the link `link` gives for it, if any.
#[must_use]
pub fn with_file_lines<'a>(
    text: &FormattedText,
    attachments: impl IntoIterator<Item = &'a Attachment>,
    link_to: impl Fn(&Attachment) -> Option<String>,
) -> FormattedText {
    let mut blocks = text.blocks.clone();
    for attachment in attachments {
        let mut line = vec![Inline::Text(format!(
            "shared {}: {}",
            file_kind(attachment),
            attachment.label()
        ))];
        if let Some(url) = link_to(attachment) {
            line.push(Inline::Text(" ".to_owned()));
            line.push(Inline::Link {
                children: vec![Inline::Text(url.clone())],
                url,
            });
        }
        blocks.push(Block::Paragraph(line));
    }
    FormattedText::new(blocks)
}

/// Replace the state file `path` with `bytes`, readable by its owner only, so that a crash
/// leaves the old file or the new one whole: the folder is created if needed, a temporary file
/// (mode 0600) is written and synced, renamed over `path`, and the folder synced. For the
/// connectors' own files in `state_dir` (sessions, keys, tokens, names).
pub fn write_state_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let folder = path
        .parent()
        .filter(|folder| !folder.as_os_str().is_empty());
    if let Some(folder) = folder {
        std::fs::create_dir_all(folder)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".partial");
    let temporary = std::path::PathBuf::from(temporary);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)?;
    if let Some(folder) = folder {
        std::fs::File::open(folder)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{GatewaySettings, late_prefix, render_sender, utc_minute};
    use crate::model::{ChannelRef, Delivery, EventBody, TextStyle};

    #[test]
    fn only_late_text_shows_its_original_time() {
        let said_at = 1_795_329_600_000; // 2026-11-22 06:40 UTC
        let delivery = |body| Delivery {
            origin_protocol: "matrix".into(),
            timestamp_ms: said_at,
            body,
            ..Delivery::sample(
                1,
                ChannelRef::new("mx", "!r"),
                ChannelRef::new("irc", "#a"),
                "",
            )
        };
        let text = delivery(EventBody::text(TextStyle::Normal, "hi"));
        let settings = GatewaySettings::default();
        assert_eq!(late_prefix(&text, &settings, said_at + 60_000), None);
        assert_eq!(
            late_prefix(&text, &settings, said_at + 60_001).as_deref(),
            Some("[2026-11-22 06:40 UTC] ")
        );
        let never = GatewaySettings {
            original_time_after: None,
            ..settings.clone()
        };
        assert_eq!(late_prefix(&text, &never, said_at + 86_400_000), None);
        let delete = delivery(EventBody::Delete { target: "x".into() });
        assert_eq!(late_prefix(&delete, &settings, said_at + 86_400_000), None);
    }

    #[test]
    fn sender_placeholders_are_substituted_once_and_names_shown_literally() {
        let mut delivery = Delivery {
            origin_protocol: "matrix".into(),
            gateway: "gw".into(),
            ..Delivery::sample(
                1,
                ChannelRef::new("mx", "!r"),
                ChannelRef::new("irc", "#a"),
                "",
            )
        };
        let shout = |nick: &str| nick.to_uppercase();
        let cases = [
            ("ann", "<{NICK}> ", "<ann> "),
            ("{CHANNEL}", "<{NICK}@{CHANNEL}> ", "<{CHANNEL}@!r> "),
            (
                "{GATEWAY}{NICK}",
                "[{PROTOCOL}/{NETWORK}] {NICK}: ",
                "[matrix/mx] {GATEWAY}{NICK}: ",
            ),
            (
                "ann",
                "{NOPINGNICK} {GATEWAY} {unknown} {",
                "ANN gw {unknown} {",
            ),
            (
                "{NOPINGNICK}",
                "{NOPINGNICK}|{NICK}",
                "{NOPINGNICK}|{NOPINGNICK}",
            ),
            ("ann", "{{NICK}}", "{ann}"),
        ];
        for (name, format, want) in cases {
            delivery.author.display_name = name.into();
            assert_eq!(
                render_sender(format, &delivery, shout),
                want,
                "{name} in {format}"
            );
        }
    }

    #[test]
    fn times_are_shown_in_utc_to_the_minute() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00 UTC");
        // 2026-11-22 06:40:59.999 UTC
        assert_eq!(utc_minute(1_795_329_659_999), "2026-11-22 06:40 UTC");
        // A leap day, and the day after.
        assert_eq!(utc_minute(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(utc_minute(951_868_799_000), "2000-02-29 23:59 UTC");
        assert_eq!(utc_minute(-60_000), "1969-12-31 23:59 UTC");
    }
}
