//! The IRC connector, on the `irc` crate's client (transport, TLS, parsing, PING handling).
//!
//! - [`config`]: the `type = "irc"` section, its validation, IRC's case mapping ([`irc_fold`])
//!   and its [`CAPABILITIES`].
//! - [`convert`]: IRC lines ⇄ model, pure and unit-tested; the one place text is read from or
//!   rendered to IRC. No line it renders holds CR, LF or NUL or exceeds the line limit, and of a
//!   CTCP only ACTION is conversation.
//! - `session`: one connection: its state, the connection loop, flood control, the outbound
//!   queue and acknowledgements. Lines are written in the order deliveries were queued.
//! - `history`: catch-up from the history the server plays back on join, the per-channel
//!   cursors, and our own lines found there acknowledging deliveries sent before a drop.
//! - `registration`: CAP, SASL PLAIN, `NickServ` identification that waits for the confirmation,
//!   joins and nick regain; `handlers`: inbound lines, membership and the events relayed; our
//!   own lines are never relayed.
//! - [`mentions`]: names ⇄ mentions of people relayed from elsewhere, replies as `nick: text`
//!   (with a short quote when the replied line is off screen) and `nick: text` as a reply.
//! - [`lines`] (sanitising and splitting to the line limit), [`charset`] (lines read and written
//!   in the network's charset), [`flood`] (the token bucket), [`wire`] (parameters and
//!   `server-time`).
//! - `puppets` (`puppets = true`): a session per person of another network, and the order of
//!   a channel's deliveries across the bot's connection and the puppets'.
//! - This file: the constants, the delivery handle ([`IrcHandle`]), [`build`] and the task that
//!   runs sessions under the supervisor (reconnects with backoff and jitter).
//!
//! Deliveries are acknowledged by the server's echo of our labelled line where the server offers
//! `labeled-response` and `echo-message`, by the echo order with `echo-message` alone, and when
//! written otherwise.

pub mod charset;
pub mod config;
pub mod convert;
pub mod flood;
mod handlers;
mod history;
pub mod lines;
mod link;
pub mod mentions;
mod puppets;
mod registration;
mod session;
pub mod wire;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::connector::supervisor::{self, SessionEnd, supervise};
use crate::connector::{AckFuture, BoxFuture, BuildContext, Deliver, DeliveryError};
use crate::model::{Delivery, DeliveryAck, EventBody, now_ms};
use crate::richtext::long_text;
pub use config::{CAPABILITIES, Irc, IrcConfig, irc_fold};
pub use convert::render_delivery;

/// Deliveries one destination may have outstanding on the connection: the session writes lines
/// in the order deliveries were queued and matches acknowledgements by label.
pub const PIPELINE_WINDOW: usize = 32;

/// Inbound events one connection may have queued for commit and not yet committed.
const COMMITS_IN_FLIGHT: usize = 256;

/// How long a delivery waits for the server's acknowledgement before the outbox retries it,
/// besides the time flood control needs to write its lines and those queued before it
/// ([`IrcHandle::ack_timeout`]).
const ACK_TIMEOUT: Duration = Duration::from_mins(2);
/// Lines the session queues at most before it takes another delivery.
const QUEUED_LINES: usize = 64;
/// How long a sent line may stay unconfirmed before the connection is presumed broken.
const ECHO_TIMEOUT: Duration = Duration::from_mins(1);
/// How long to wait for `NickServ`'s confirmation before joining anyway.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long joins may take before deliveries start anyway.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often to check whether the wanted nick is free again.
const REGAIN_INTERVAL: Duration = Duration::from_mins(1);
/// `IRCv3` capabilities the bridge uses when offered.
const WANTED_CAPS: &[&str] = &[
    "server-time",
    "message-tags",
    "echo-message",
    "labeled-response",
    "batch",
    "multi-prefix",
];

struct OutboundRequest {
    /// Boxed: a channel of requests allocates room for 32 of them at once, and every puppet
    /// has one (a `Delivery` inline made that about 25 KiB a puppet).
    delivery: Box<Delivery>,
    /// A link to the whole text, served by the media endpoint, for a text the gateway's
    /// long-text policy may cut.
    full_text_link: Option<String>,
    reply: oneshot::Sender<Result<DeliveryAck, DeliveryError>>,
}

/// The outbox's handle on an IRC network.
#[derive(Clone)]
pub struct IrcHandle {
    requests: mpsc::Sender<OutboundRequest>,
    recent: Arc<Mutex<mentions::Recent>>,
    /// Where the whole text of a long message is stored and linked from.
    files: Arc<crate::files::Files>,
    /// Each gateway's delivery settings (its long-text policy), by gateway name.
    gateways: Arc<std::collections::HashMap<String, crate::connector::GatewaySettings>>,
    /// The pace of flood control once its burst is used: one line per this.
    flood_interval: Duration,
    /// Per-person connections, with `puppets = true`.
    puppets: Option<Arc<puppets::Puppets>>,
}

/// The name a long text's link ends with: it makes the media endpoint serve it as
/// `text/plain; charset=utf-8`.
pub const FULL_TEXT_NAME: &str = "message.txt";

impl IrcHandle {
    /// How long `delivery` may wait for its acknowledgement: [`ACK_TIMEOUT`] after flood
    /// control could have written every line queued before it and every line it may take
    /// (a 200-line paste split at 1.3 s a line takes over four minutes, and a fixed timeout
    /// would fail it mid-way and send it again from the start, for ever).
    fn ack_timeout(&self, delivery: &Delivery) -> Duration {
        let most_lines = match &delivery.body {
            EventBody::Text { text, .. } | EventBody::Edit { text, .. } => {
                let policy = self
                    .gateways
                    .get(&delivery.gateway)
                    .map(|settings| settings.long_text)
                    .unwrap_or_default();
                let plain = text.to_plain_text();
                let pieces = long_text::most_pieces(&plain);
                match policy.mode {
                    long_text::LongTextMode::Split => pieces,
                    // The kept lines, the link line and its own pieces.
                    long_text::LongTextMode::Truncate => pieces.min(policy.max_lines + 3),
                }
            }
            _ => 1,
        };
        let lines = u32::try_from(QUEUED_LINES + most_lines).unwrap_or(u32::MAX);
        ACK_TIMEOUT + self.flood_interval.saturating_mul(lines)
    }

    /// For a text the gateway's long-text policy may cut, when the media endpoint is
    /// configured: store the whole text (durably, before any line of it is written) and link
    /// to it. `None` otherwise, or when it cannot be stored (then the message's permalink on its
    /// own platform is shown).
    async fn full_text_link(&self, delivery: &Delivery) -> Option<String> {
        if !self.files.serves_links() {
            return None;
        }
        let (EventBody::Text { text, .. } | EventBody::Edit { text, .. }) = &delivery.body else {
            return None;
        };
        let policy = self
            .gateways
            .get(&delivery.gateway)
            .map(|settings| settings.long_text)
            .unwrap_or_default();
        let plain = text.to_plain_text();
        if !long_text::may_be_cut(&plain, &policy) {
            return None;
        }
        match self.files.put(plain.into_bytes()).await {
            Ok(hash) => self.files.link(&hash, FULL_TEXT_NAME),
            Err(error @ crate::files::FileError::TooLarge { .. }) => {
                // `max_file_size_mb` (0: never copy files) applies to texts too.
                tracing::debug!(delivery = %delivery.id, error = %error, "A long text is not stored; its lines on IRC link to the message on its own platform instead.");
                None
            }
            Err(error) => {
                tracing::warn!(delivery = %delivery.id, error = %error, "Cannot store the whole of a long text; its lines on IRC link to the message on its own platform instead.");
                None
            }
        }
    }

    /// Queue a delivery on the connection (lines are written in the order deliveries are
    /// queued); the returned future resolves with the server's acknowledgement.
    pub async fn enqueue(
        &self,
        delivery: &Delivery,
    ) -> Result<
        impl std::future::Future<Output = Result<DeliveryAck, DeliveryError>> + Send + 'static,
        DeliveryError,
    > {
        let (reply, acknowledged) = oneshot::channel();
        let full_text_link = self.full_text_link(delivery).await;
        let ack_timeout = self.ack_timeout(delivery);
        let request = OutboundRequest {
            delivery: Box::new(delivery.clone()),
            full_text_link,
            reply,
        };
        let acknowledged = if let Some(puppets) = &self.puppets {
            puppets
                .send(delivery, &self.requests, request, acknowledged)
                .await?
        } else {
            self.requests
                .send(request)
                .await
                .map_err(|_| DeliveryError::Retry {
                    after: Some(Duration::from_secs(1)),
                    reason: "the IRC connection task has stopped".into(),
                })?;
            acknowledged
        };
        // A relayed person's acknowledged line: `nick: text` soon after may reply to it.
        let said = matches!(delivery.body, EventBody::Text { .. }).then(|| {
            (
                delivery.destination.channel.clone(),
                (delivery.origin.network.clone(), delivery.author.id.clone()),
                Arc::clone(&self.recent),
            )
        });
        let acknowledged = async move {
            let result = acknowledged.await;
            if let (
                Ok(Ok(DeliveryAck {
                    remote_id: Some(msgid),
                })),
                Some((channel, person, recent)),
            ) = (&result, said)
            {
                lock(&recent).said(&channel, person, msgid.clone(), now_ms());
            }
            result
        };
        Ok(async move {
            match tokio::time::timeout(ack_timeout, acknowledged).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(DeliveryError::Retry {
                    after: None,
                    reason: "the IRC connection closed before the line was confirmed".into(),
                }),
                Err(_) => Err(DeliveryError::Retry {
                    after: None,
                    reason: format!(
                        "no acknowledgement from the IRC server within {ack_timeout:?}"
                    ),
                }),
            }
        })
    }
}

impl Deliver for IrcHandle {
    fn send(
        self: Arc<Self>,
        delivery: Delivery,
    ) -> BoxFuture<'static, Result<AckFuture, DeliveryError>> {
        Box::pin(async move {
            let ack: AckFuture = Box::pin(self.enqueue(&delivery).await?);
            Ok(ack)
        })
    }
}

/// The lock of what the connection remembers of its channels' last lines.
fn lock(recent: &Mutex<mentions::Recent>) -> std::sync::MutexGuard<'_, mentions::Recent> {
    recent
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The connection task of an IRC network.
pub struct IrcTask {
    info: TaskInfo,
    requests: mpsc::Receiver<OutboundRequest>,
}

/// What a session reads of its task.
struct TaskInfo {
    network: String,
    config: IrcConfig,
    /// Shared by the bot's session and every puppet's (one copy of the gateways' settings).
    context: Arc<BuildContext>,
    /// Edits not shown because their gateway's `edit_policy` is `off`.
    edits_dropped: AtomicU64,
    /// `config.charset`, for every line read and written.
    charset: charset::Charset,
    /// Lines that were not UTF-8 (read in the fallback charset), counted in the logs.
    not_utf8_lines: AtomicU64,
    /// The channels' last lines, for replies (shared with the handle).
    recent: Arc<Mutex<mentions::Recent>>,
    /// Shared by the bot's connection and the puppets': the puppets' nicks, `NICKLEN`.
    shared: Arc<puppets::Shared>,
    /// Set when this connection is a person's puppet.
    puppet: Option<puppets::PuppetRole>,
    /// The channels' history cursors (the bot's connections; a puppet's are unused).
    cursors: Arc<history::Cursors>,
}

/// Build the handle and the task of one IRC network.
#[must_use]
pub fn build(network: &str, config: IrcConfig, context: BuildContext) -> (IrcHandle, IrcTask) {
    let (sender, receiver) = mpsc::channel(256);
    let recent = Arc::new(Mutex::new(mentions::Recent::default()));
    let shared = Arc::new(puppets::Shared::default());
    let puppets = config.puppets.clone().map(|settings| {
        Arc::new(puppets::Puppets::new(
            network, &config, settings, &context, &recent, &shared,
        ))
    });
    (
        IrcHandle {
            requests: sender,
            recent: Arc::clone(&recent),
            files: Arc::clone(&context.files),
            gateways: Arc::new(context.gateways.clone()),
            flood_interval: Duration::from_millis(config.flood_interval_ms),
            puppets,
        },
        IrcTask {
            info: TaskInfo {
                network: network.to_owned(),
                charset: config.charset,
                config,
                context: Arc::new(context),
                edits_dropped: AtomicU64::new(0),
                not_utf8_lines: AtomicU64::new(0),
                recent,
                shared,
                puppet: None,
                cursors: Arc::default(),
            },
            requests: receiver,
        },
    )
}

/// One connection of an IRC network (the supervisor reconnects).
struct IrcSession {
    info: TaskInfo,
    requests: mpsc::Receiver<OutboundRequest>,
}

impl supervisor::Session for IrcSession {
    fn label(&self) -> &'static str {
        "IRC"
    }

    async fn connect(&mut self) -> SessionEnd {
        self.info.session(&mut self.requests).await
    }
}

impl IrcTask {
    /// Connect, and reconnect under the supervisor, until shutdown.
    pub async fn run(self) {
        let IrcTask { info, requests } = self;
        let network = info.network.clone();
        let shutdown = info.context.shutdown.clone();
        let policy = info.context.reconnect;
        let status = Arc::clone(info.context.router.status());
        supervise(
            &network,
            policy,
            &shutdown,
            &status,
            IrcSession { info, requests },
        )
        .await;
    }
}
