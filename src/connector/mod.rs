//! Connectors: the closed set of network types, and the only code that knows a protocol's wire
//! types.
//!
//! Each network config *builds* a connector (vector's `SourceConfig::build` pattern): a
//! [`ConnectorHandle`] the outbox calls to deliver, and a [`ConnectorTask`] that owns the
//! connection, converts wire events to [`crate::model::Inbound`] and submits them to the router.
//! All connectors have the same shape; adding a network type adds a variant, not a registry.

pub mod irc;
pub mod matrix;
pub mod mattermost;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{NetworkConfig, NetworkKind};
use crate::model::{Capabilities, Delivery, DeliveryAck};
use crate::richtext::long_text::LongTextPolicy;
use crate::router::Router;
use crate::store::Store;

/// Why a delivery did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later (not connected, rate limited, connection lost before confirmation).
    #[error("{reason} (retry in {after:?})")]
    Retry {
        /// The earliest sensible retry; `None` lets the outbox back off by attempts.
        after: Option<Duration>,
        /// What happened.
        reason: String,
    },
    /// The destination refused it for good (it will be kept as failed, not retried).
    #[error("{0}")]
    Permanent(String),
}

/// What every connector needs from the daemon.
#[derive(Clone)]
pub struct BuildContext {
    /// Where inbound events go.
    pub router: Router,
    /// How a relayed sender is shown.
    pub remote_nick_format: String,
    /// The channels of this network that appear in gateways, as configured.
    pub channels: Vec<String>,
    /// Each gateway's delivery settings, by gateway name.
    pub gateways: std::collections::HashMap<String, GatewaySettings>,
    /// Cancelled when the daemon shuts down.
    pub shutdown: CancellationToken,
    /// The store, for the connector's cursors (sync positions); events go through the router.
    pub store: Arc<Store>,
    /// The daemon's state folder; a connector may keep its own files in a subfolder.
    pub state_dir: PathBuf,
}

/// What a gateway says about how its messages are delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewaySettings {
    /// Messages longer than `max_lines` IRC lines: split or truncate.
    pub long_text: LongTextPolicy,
    /// Mass pings (`@room`, `@channel`, `@all`, `@here`) from another network stay pings.
    pub allow_mass_pings: bool,
}

impl BuildContext {
    /// The settings of the gateway a delivery goes through (defaults for an unknown name).
    #[must_use]
    pub fn gateway(&self, name: &str) -> GatewaySettings {
        self.gateways.get(name).copied().unwrap_or_default()
    }
}

/// The outbox's side of a connector: deliver one message.
#[derive(Clone)]
pub enum ConnectorHandle {
    /// IRC.
    Irc(irc::IrcHandle),
    /// Matrix.
    Matrix(matrix::MatrixHandle),
    /// Mattermost.
    Mattermost(mattermost::MattermostHandle),
}

impl ConnectorHandle {
    /// Send one delivery and wait for the destination's acknowledgement.
    pub async fn deliver(&self, delivery: &Delivery) -> Result<DeliveryAck, DeliveryError> {
        match self {
            ConnectorHandle::Irc(handle) => handle.deliver(delivery).await,
            ConnectorHandle::Matrix(handle) => handle.deliver(delivery).await,
            ConnectorHandle::Mattermost(handle) => handle.deliver(delivery).await,
        }
    }

    /// What the network can represent.
    #[must_use]
    pub fn capabilities(&self) -> Capabilities {
        match self {
            ConnectorHandle::Irc(_) => irc::CAPABILITIES,
            ConnectorHandle::Matrix(_) => matrix::CAPABILITIES,
            ConnectorHandle::Mattermost(_) => mattermost::CAPABILITIES,
        }
    }
}

impl crate::outbox::Endpoint for ConnectorHandle {
    fn window(&self) -> usize {
        match self {
            // The session keeps the order of queued deliveries and matches acknowledgements by
            // label; HTTP sends could overtake each other, so Matrix and Mattermost send one at
            // a time.
            ConnectorHandle::Irc(_) => irc::PIPELINE_WINDOW,
            ConnectorHandle::Matrix(_) | ConnectorHandle::Mattermost(_) => 1,
        }
    }

    async fn send(&self, delivery: Delivery) -> Result<crate::outbox::AckFuture, DeliveryError> {
        match self {
            ConnectorHandle::Irc(handle) => Ok(Box::pin(handle.enqueue(&delivery).await?)),
            other => {
                let handle = other.clone();
                Ok(Box::pin(async move { handle.deliver(&delivery).await }))
            }
        }
    }
}

/// The connection side of a connector: runs until shutdown.
#[allow(clippy::large_enum_variant)] // one per network, built once and moved into its task
pub enum ConnectorTask {
    /// IRC.
    Irc(irc::IrcTask),
    /// Matrix.
    Matrix(matrix::MatrixTask),
    /// Mattermost.
    Mattermost(mattermost::MattermostTask),
}

impl ConnectorTask {
    /// Run the connection (with reconnects) until the shutdown token is cancelled.
    pub async fn run(self) {
        match self {
            ConnectorTask::Irc(task) => task.run().await,
            ConnectorTask::Matrix(task) => task.run().await,
            ConnectorTask::Mattermost(task) => task.run().await,
        }
    }
}

impl NetworkConfig {
    /// Build the connector for this network.
    #[must_use]
    pub fn build(&self, context: BuildContext) -> (ConnectorHandle, ConnectorTask) {
        match &self.kind {
            NetworkKind::Irc(config) => {
                let (handle, task) = irc::build(&self.id, config.clone(), context);
                (ConnectorHandle::Irc(handle), ConnectorTask::Irc(task))
            }
            NetworkKind::Matrix(config) => {
                let (handle, task) = matrix::build(&self.id, config.clone(), context);
                (ConnectorHandle::Matrix(handle), ConnectorTask::Matrix(task))
            }
            NetworkKind::Mattermost(config) => {
                let (handle, task) = mattermost::build(&self.id, config.clone(), context);
                (
                    ConnectorHandle::Mattermost(handle),
                    ConnectorTask::Mattermost(task),
                )
            }
        }
    }
}

/// Render `remote_nick_format` for a delivery. `no_ping` makes the `{NOPINGNICK}` form.
#[must_use]
pub fn render_sender(
    format: &str,
    delivery: &Delivery,
    no_ping: impl Fn(&str) -> String,
) -> String {
    let nick = &delivery.author.display_name;
    format
        .replace("{NOPINGNICK}", &no_ping(nick))
        .replace("{NICK}", nick)
        .replace("{NETWORK}", &delivery.origin.network)
        .replace("{PROTOCOL}", &delivery.origin_protocol)
        .replace("{CHANNEL}", &delivery.origin.channel)
        .replace("{GATEWAY}", &delivery.gateway)
}

/// Exponential backoff with full jitter, for reconnects and retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Start at `base`, never wait more than `max`.
    #[must_use]
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniformly random in [ceiling/2, ceiling], the ceiling doubling each time.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let low = ceiling / 2;
        low + ceiling.saturating_sub(low).mul_f64(rand::random::<f64>())
    }

    /// Forget earlier failures (after a connection that worked for a while).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}
