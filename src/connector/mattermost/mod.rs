//! The Mattermost connector: REST API v4 (reqwest) for everything it sends and for catching up,
//! the WebSocket (`/api/v4/websocket`, tokio-tungstenite) for what happens live.
//!
//! - [`config`]: the `type = "mattermost"` section, its validation and Mattermost's rules for
//!   names and ids.
//! - `api`: the REST client and the wire types (rate limits mapped to retries, sessions renewed).
//! - `convert`: posts, reactions and WebSocket events ⇄ the model, pure and unit-tested; the
//!   derived remote ids (`<post>:edit:<edit_at>`, ...) are made there only, so a change seen
//!   live and in a catch-up is one event.
//! - `session`: the connection: log in, resolve team and channels, the WebSocket with resume.
//! - `catchup`: the catch-up over REST (paging, ordering) and the per-channel cursors (in
//!   `context.store`, moved forward only past what the router committed, written at most once a
//!   second and when the session ends).
//! - `events`: live events (posts, edits, deletes, reactions, membership, removal from a
//!   channel) and their submission, echoes of the bridge's own account dropped.
//! - `handle`: [`MattermostHandle`], the deliveries over REST (the delivery id as
//!   `pending_post_id`).
//! - [`emoji`]: emoji names ⇄ reaction keys.
//! - [`mentions`]: `@username` ⇄ mentions, names of relayed people found in posts.
//! - [`remote`]: `remote_users`, people of other networks as Mattermost users of their own
//!   (created once, posting with their own token).
//! - Here: [`build`], the state the handle and the session share (the one copy of the
//!   [`BuildContext`]), and the task that runs the session under the supervisor.
//!
//! A session logs in (token, or login + password), resolves the team and channels (joining those
//! the account is not a member of), connects the WebSocket authenticated at upgrade (the only way
//! the server offers a resume), and on every `hello` (a fresh connection, so events may have been
//! missed) catches each channel up with `GET /channels/{id}/posts?since=<cursor>`. Events are
//! processed one at a time; a channel's cursor (the newest `update_at` handled) is stored only
//! after the router has committed everything before it, and at most once a second (the rest
//! when that interval ends, and when the session ends): a cursor behind costs only a refetch of
//! posts that are then recognised (the bridge's own by their author, the others as already
//! committed), while a write per post cost a transaction of its own on the store for every
//! message relayed here. After a drop the socket is resumed with `connection_id` +
//! `sequence_number` where the server still has the events, and a `seq` gap means a catch-up too.
//!
//! Echo: posts and reactions by the bridge's own account are never relayed (user id), nor posts
//! whose `pending_post_id` is a delivery in flight; the `posted` event may arrive before the
//! create call returns, which is why the id check alone is not enough. Deliveries use the
//! delivery id as `pending_post_id`, so a retried create within the server's window returns the
//! same post instead of a second one.

mod api;
mod catchup;
pub mod config;
mod convert;
pub mod emoji;
mod events;
mod handle;
pub mod mentions;
pub mod remote;
mod session;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use crate::connector::BuildContext;
use crate::connector::supervisor::{Session, SessionEnd, supervise};
pub use config::{CAPABILITIES, Mattermost, MattermostAuth, MattermostConfig};
pub use convert::read_websocket_text;
pub use handle::MattermostHandle;

use api::Api;
use session::TaskState;

/// State the handle (deliveries) and the task (the connection) share.
struct Shared {
    network: String,
    config: MattermostConfig,
    api: Api,
    /// The account's user id, once logged in.
    me: RwLock<Option<String>>,
    /// configured channel name → channel id
    channel_ids: RwLock<HashMap<String, String>>,
    /// `pending_post_id`s of creates in flight (their `posted` echo may come first).
    in_flight: Mutex<HashSet<String>>,
    /// Reactions that could not be expressed as a Mattermost emoji.
    dropped_reactions: AtomicU64,
    /// TLS for the WebSocket when extra roots are configured (else the library default).
    websocket_tls: Option<tokio_tungstenite::Connector>,
    /// People of other networks as Mattermost users of their own (`remote_users`).
    remote: remote::RemoteUsers,
    /// What the daemon gave this network (router, store, files, gateways, shutdown): the one
    /// copy, which the handle and the session both reach through here.
    context: BuildContext,
}

impl Shared {
    fn me(&self) -> Option<String> {
        self.me
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn channel_id(&self, channel: &str) -> Option<String> {
        self.channel_ids
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(channel)
            .cloned()
    }

    fn is_in_flight(&self, pending_post_id: &str) -> bool {
        !pending_post_id.is_empty()
            && self
                .in_flight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(pending_post_id)
    }
}

/// The connection task of a Mattermost network.
pub struct MattermostTask {
    shared: Arc<Shared>,
}

/// Build the handle and the task of one Mattermost network.
#[must_use]
pub fn build(
    network: &str,
    config: MattermostConfig,
    context: BuildContext,
) -> (MattermostHandle, MattermostTask) {
    let extra_roots = config
        .tls_ca_file
        .as_ref()
        .and_then(|path| match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(error) => {
                tracing::error!(network, path = %path.display(), error = %error, "Cannot read tls_ca_file.");
                None
            }
        });
    let remote = remote::RemoteUsers::load(
        network,
        config.remote_users.clone(),
        &context.store,
        &context.state_dir,
    );
    let shared = Arc::new(Shared {
        network: network.to_owned(),
        remote,
        api: Api::new(&config.url, config.auth.clone(), extra_roots.as_deref()),
        websocket_tls: extra_roots.as_deref().map(session::websocket_tls),
        config,
        me: RwLock::new(None),
        channel_ids: RwLock::new(HashMap::new()),
        in_flight: Mutex::new(HashSet::new()),
        dropped_reactions: AtomicU64::new(0),
        context,
    });
    (
        MattermostHandle::new(Arc::clone(&shared)),
        MattermostTask { shared },
    )
}

impl MattermostTask {
    /// Connect, and reconnect under the supervisor, until shutdown.
    pub async fn run(self) {
        let state = TaskState::new(Arc::clone(&self.shared));
        let context = &self.shared.context;
        supervise(
            &self.shared.network,
            context.reconnect,
            &context.shutdown,
            context.router.status(),
            state,
        )
        .await;
    }
}

impl Session for TaskState {
    fn label(&self) -> &'static str {
        "Mattermost"
    }

    async fn connect(&mut self) -> SessionEnd {
        self.session().await
    }
}
