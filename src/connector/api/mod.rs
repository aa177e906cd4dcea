//! The api connector: a network that is an HTTP endpoint instead of a connection. Programs
//! speak matterbridge's API to it (`POST /api/message`, `GET /api/messages`, `GET
//! /api/stream`, `GET /api/health`, with `Authorization: Bearer <token>`), and chatops tools
//! post Slack/Mattermost incoming webhooks to it (`POST /hooks/<name>`, a secret per hook).
//! Each channel of the network is a name clients give as `gateway`.
//!
//! - [`config`]: the `type = "api"` section (`listen`, `token`, `buffer`, `webhooks`).
//! - [`convert`]: matterbridge's messages and the webhook JSON ⇄ the model, pure.
//! - `buffer`: the messages relayed to the network that no client has read, durable in
//!   `state_dir/api-<network>.sqlite`.
//! - `handle`: deliveries into the buffer (acknowledged once committed there).
//! - `server`: the HTTP endpoint (axum), run under the supervisor.
//!
//! Inbound: a posted message or webhook is committed through the router before the answer:
//! `200` means it is in the store (a restart loses nothing that got one); a store failure is a
//! `503` to retry. A client may give an id (`Idempotency-Key` header, or `id` in the body):
//! it is the message's id on this network, so a second post with it is answered `200` and not
//! relayed again. Outbound: a delivery is acknowledged once its message is in the buffer;
//! `GET /api/messages` takes every unread message, a stream sends the unread ones first and
//! then each as it is buffered (to every stream connected), marking them read. A full buffer
//! holds deliveries in the outbox (counted, logged) instead of dropping anything; unread
//! messages survive a restart and are read after it.

pub mod config;
pub mod convert;

#[cfg(feature = "matrix")]
mod buffer;
#[cfg(feature = "matrix")]
mod handle;
#[cfg(feature = "matrix")]
mod server;

pub use config::{Api, ApiConfig, CAPABILITIES, Webhook};

#[cfg(feature = "matrix")]
pub use build::build;

#[cfg(feature = "matrix")]
mod build {
    use std::sync::Arc;
    use std::sync::atomic::AtomicI64;

    use super::ApiConfig;
    use super::buffer::Buffer;
    use super::handle::ApiHandle;
    use super::server::ApiTask;
    use crate::connector::BuildContext;

    /// What the handle (deliveries into the buffer) and the server share.
    pub(super) struct Shared {
        pub(super) network: String,
        pub(super) config: ApiConfig,
        /// `None` when the buffer's file cannot be opened (logged; deliveries then wait).
        pub(super) buffer: Option<Buffer>,
        /// The newest buffered position, watched by the streams.
        pub(super) newest: tokio::sync::watch::Sender<i64>,
        pub(super) metrics: Metrics,
        /// What the daemon gave this network: the one copy.
        pub(super) context: BuildContext,
    }

    /// The series this network keeps for `/metrics`.
    pub(super) struct Metrics {
        pub(super) accepted: Arc<AtomicI64>,
        pub(super) refused: Arc<AtomicI64>,
        pub(super) webhooks: Arc<AtomicI64>,
        pub(super) buffered: Arc<AtomicI64>,
        pub(super) held: Arc<AtomicI64>,
        pub(super) streams: Arc<AtomicI64>,
    }

    impl Metrics {
        fn new(context: &BuildContext, network: &str) -> Self {
            let metrics = &context.metrics;
            Self {
                accepted: metrics.counter(
                    "tribridge_api_messages_accepted",
                    "Messages posted to the API or a webhook and committed (answered 200)",
                    network,
                ),
                refused: metrics.counter(
                    "tribridge_api_requests_refused",
                    "Requests to the API or a webhook refused (401, 400, 404, 413)",
                    network,
                ),
                webhooks: metrics.counter(
                    "tribridge_api_webhook_messages",
                    "Messages posted through incoming webhooks and committed",
                    network,
                ),
                buffered: metrics.gauge(
                    "tribridge_api_buffer_unread",
                    "Messages relayed to the API that no client has read yet",
                    network,
                ),
                held: metrics.counter(
                    "tribridge_api_buffer_full",
                    "Deliveries to the API held in the outbox because the buffer was full",
                    network,
                ),
                streams: metrics.gauge(
                    "tribridge_api_streams",
                    "Clients connected to /api/stream",
                    network,
                ),
            }
        }
    }

    /// Build the handle and the task of one api network.
    #[must_use]
    pub fn build(network: &str, config: ApiConfig, context: BuildContext) -> (ApiHandle, ApiTask) {
        let path = context.state_dir.join(format!("api-{network}.sqlite"));
        let buffer = match Buffer::open(&path, config.buffer) {
            Ok(buffer) => Some(buffer),
            Err(error) => {
                tracing::error!(network, path = %path.display(), error = %error, "Cannot open the API's buffer; messages for this network wait in the outbox.");
                None
            }
        };
        let metrics = Metrics::new(&context, network);
        if let Some(buffer) = &buffer {
            metrics
                .buffered
                .store(buffer.unread(), std::sync::atomic::Ordering::Relaxed);
        }
        let (newest, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            network: network.to_owned(),
            config,
            buffer,
            newest,
            metrics,
            context,
        });
        (ApiHandle::new(Arc::clone(&shared)), ApiTask::new(shared))
    }
}
