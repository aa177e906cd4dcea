//! The Mattermost connector: REST API v4 (reqwest) for everything it sends and for catching up,
//! the WebSocket (`/api/v4/websocket`, tokio-tungstenite) for what happens live.
//!
//! A session logs in (token, or login + password), resolves the team and channels (joining those
//! the account is not a member of), connects the WebSocket authenticated at upgrade (the only way
//! the server offers a resume), and on every `hello` (a fresh connection, so events may have been
//! missed) catches each channel up with `GET /channels/{id}/posts?since=<cursor>`. Events are
//! processed one at a time; a channel's cursor (the newest `update_at` handled) is stored only
//! after the router has committed everything before it, and at most once per
//! [`CURSOR_STORE_INTERVAL`] (the rest when the interval ends, and when the session ends): a
//! cursor behind costs only a refetch of posts that are then recognised (the bridge's own by
//! their author, the others as already committed), while a write per post cost a transaction
//! of its own on the store for every message relayed here. After a drop the socket is resumed with
//! `connection_id` + `sequence_number` where the server still has the events, and a `seq` gap
//! means a catch-up too.
//!
//! Echo: posts and reactions by the bridge's own account are never relayed (user id), nor posts
//! whose `pending_post_id` is a delivery in flight; the `posted` event may arrive before the
//! create call returns, which is why the id check alone is not enough. Deliveries use the
//! delivery id as `pending_post_id`, so a retried create within the server's window returns the
//! same post instead of a second one.

mod api;
pub mod config;
pub mod emoji;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::connector::supervisor::{Session, SessionEnd, supervise};
use crate::connector::{
    AckFuture, BoxFuture, BuildContext, Deliver, DeliveryError, late_prefix, prefixed,
    render_sender, send_whole, sleep_until_opt,
};
use crate::model::{
    Attachment, Author, ChannelRef, Delivery, DeliveryAck, EventBody, Inbound, Membership,
    TextStyle, now_ms,
};
use crate::richtext;
use crate::richtext::FormattedText;
use crate::richtext::model::{Block, Inline};
pub use config::{CAPABILITIES, Mattermost, MattermostAuth, MattermostConfig};

use api::{Api, ApiError, Post, PostList, Reaction};

/// How often the WebSocket `ping` action is sent.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Silence after which the socket is presumed dead.
const READ_TIMEOUT: Duration = Duration::from_secs(90);
/// How often, at most, a channel's cursor is written to the store.
const CURSOR_STORE_INTERVAL: Duration = Duration::from_secs(1);
/// The most rows one `since` query returns; more means some may be missing.
const SINCE_LIMIT: usize = 1000;

/// The Markdown of a post to the model's text (mentions named for `network`). A `/me` post's
/// message is emphasised as a whole (`*waves*`); that emphasis is the post type, not the text's.
fn markdown_to_text(network: &str, markdown: &str, action: bool) -> FormattedText {
    let mut text = richtext::markdown::parse_for_network(markdown, network);
    if action
        && let [Block::Paragraph(inlines)] = text.blocks.as_mut_slice()
        && let [Inline::Italic(inner)] = inlines.as_mut_slice()
    {
        let inner = std::mem::take(inner);
        text = FormattedText::new(vec![Block::Paragraph(inner)]);
    }
    text
}

/// The model's text to a post's Markdown, with `prefix` (the sender, literal text) in front and,
/// for a `/me` post, emphasised as the `/me` command does. Everything literal stays literal.
fn text_to_markdown(prefix: &str, text: &FormattedText, action: bool) -> String {
    let mut blocks = text.blocks.clone();
    if !prefix.is_empty() {
        if let Some(Block::Paragraph(inlines)) = blocks.first_mut() {
            inlines.insert(0, Inline::Text(prefix.to_owned()));
        } else {
            blocks.insert(
                0,
                Block::Paragraph(vec![Inline::Text(prefix.trim_end().to_owned())]),
            );
        }
    }
    if action && let [Block::Paragraph(inlines)] = blocks.as_mut_slice() {
        let inner = std::mem::take(inlines);
        *inlines = vec![Inline::Italic(inner)];
    }
    richtext::markdown::render(&FormattedText::new(blocks))
}

/// State the handle (deliveries) and the task (the connection) share.
struct Shared {
    network: String,
    config: MattermostConfig,
    api: Api,
    remote_nick_format: String,
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
    /// What the daemon says about each gateway (mass pings).
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

/// The outbox's handle on a Mattermost network.
#[derive(Clone)]
pub struct MattermostHandle {
    shared: Arc<Shared>,
}

/// The connection task of a Mattermost network.
pub struct MattermostTask {
    shared: Arc<Shared>,
    context: BuildContext,
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
    let shared = Arc::new(Shared {
        network: network.to_owned(),
        api: Api::new(&config.url, config.auth.clone(), extra_roots.as_deref()),
        websocket_tls: extra_roots.as_deref().map(websocket_tls),
        config,
        remote_nick_format: context.remote_nick_format.clone(),
        me: RwLock::new(None),
        channel_ids: RwLock::new(HashMap::new()),
        in_flight: Mutex::new(HashSet::new()),
        dropped_reactions: AtomicU64::new(0),
        context: context.clone(),
    });
    (
        MattermostHandle {
            shared: Arc::clone(&shared),
        },
        MattermostTask { shared, context },
    )
}

/// A TLS client configuration for the WebSocket: the Mozilla roots plus `extra_roots` (PEM).
fn websocket_tls(extra_roots: &[u8]) -> tokio_tungstenite::Connector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for certificate in CertificateDer::pem_slice_iter(extra_roots).flatten() {
        if let Err(error) = roots.add(certificate) {
            tracing::error!(error = %error, "A certificate in tls_ca_file is not usable.");
        }
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_tungstenite::Connector::Rustls(Arc::new(config))
}

fn delivery_error(error: &ApiError) -> DeliveryError {
    match error {
        ApiError::RateLimited { after } => DeliveryError::Retry {
            after: Some(*after),
            reason: error.to_string(),
        },
        ApiError::Status { status, .. } if *status >= 500 || *status == 401 => {
            DeliveryError::Retry {
                after: None,
                reason: error.to_string(),
            }
        }
        ApiError::Status { .. } => DeliveryError::Permanent(error.to_string()),
        ApiError::Transport(_) | ApiError::Decode(_) => DeliveryError::Retry {
            after: None,
            reason: error.to_string(),
        },
    }
}

impl Deliver for MattermostHandle {
    fn send(
        self: Arc<Self>,
        delivery: Delivery,
    ) -> BoxFuture<'static, Result<AckFuture, DeliveryError>> {
        send_whole(self, delivery, |handle, delivery| {
            Box::pin(handle.deliver(delivery))
        })
    }
}

impl MattermostHandle {
    /// Send one delivery over REST; acknowledged when the server answered.
    pub async fn deliver(&self, delivery: &Delivery) -> Result<DeliveryAck, DeliveryError> {
        let shared = &self.shared;
        let (Some(me), Some(channel_id)) = (
            shared.me(),
            shared.channel_id(&delivery.destination.channel),
        ) else {
            return Err(DeliveryError::Retry {
                after: Some(Duration::from_secs(1)),
                reason: "not connected to Mattermost yet".into(),
            });
        };
        match &delivery.body {
            EventBody::Text {
                style,
                text,
                attachments,
                ..
            } => {
                // In the thread the message is in; else a reply starts (or joins) the thread
                // of the post it answers.
                let in_thread = [&delivery.thread_root, &delivery.reply_to]
                    .into_iter()
                    .find_map(|r| r.as_ref().and_then(|r| r.remote_id.clone()));
                let root_id = match in_thread {
                    Some(id) => self.thread_root(&id).await?,
                    None => None,
                };
                let (file_ids, not_copied) = self.upload_files(&channel_id, attachments).await?;
                let text = crate::connector::with_file_lines(text, not_copied, |_| None);
                let (kind, message, props) = self.render(delivery, *style, &text);
                let post = self
                    .create_post(
                        delivery,
                        &channel_id,
                        (kind, &message, props),
                        root_id,
                        &file_ids,
                    )
                    .await?;
                Ok(DeliveryAck {
                    remote_id: Some(post.id),
                })
            }
            EventBody::Edit { style, text, .. } => {
                let Some(post_id) = delivery.target.as_ref().and_then(|t| t.remote_id.clone())
                else {
                    tracing::debug!(network = %shared.network, "Edit of a message never delivered here; skipped.");
                    return Ok(DeliveryAck::default());
                };
                let (_, message, _) = self.render(delivery, *style, text);
                shared
                    .api
                    .call::<Value>(
                        Method::PUT,
                        &format!("/posts/{post_id}/patch"),
                        Some(&json!({ "message": fit(&message) })),
                    )
                    .await
                    .map_err(|e| delivery_error(&e))?;
                Ok(DeliveryAck::default())
            }
            EventBody::Delete { .. } => {
                let Some(post_id) = delivery.target.as_ref().and_then(|t| t.remote_id.clone())
                else {
                    return Ok(DeliveryAck::default());
                };
                match shared
                    .api
                    .call::<Value>(Method::DELETE, &format!("/posts/{post_id}"), None)
                    .await
                {
                    // Already gone (deleted here too, or with its thread root).
                    Ok(_) => Ok(DeliveryAck::default()),
                    Err(error) if error.status() == Some(404) => Ok(DeliveryAck::default()),
                    Err(error) => Err(delivery_error(&error)),
                }
            }
            EventBody::Reaction { key, removed, .. } => {
                let Some(post_id) = delivery.target.as_ref().and_then(|t| t.remote_id.clone())
                else {
                    return Ok(DeliveryAck::default());
                };
                let Some(name) = emoji::to_name(key) else {
                    let count = shared.dropped_reactions.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(network = %shared.network, key = %key, dropped_so_far = count, "Reaction has no Mattermost emoji; not relayed.");
                    return Ok(DeliveryAck::default());
                };
                let result = if *removed {
                    shared
                        .api
                        .call::<Value>(
                            Method::DELETE,
                            &format!("/users/{me}/posts/{post_id}/reactions/{name}"),
                            None,
                        )
                        .await
                } else {
                    shared
                        .api
                        .call::<Value>(
                            Method::POST,
                            "/reactions",
                            Some(&json!({"user_id": me, "post_id": post_id, "emoji_name": name})),
                        )
                        .await
                };
                match result {
                    Ok(_) => Ok(DeliveryAck::default()),
                    Err(error) if *removed && error.status() == Some(404) => {
                        Ok(DeliveryAck::default())
                    }
                    Err(error) => Err(delivery_error(&error)),
                }
            }
            EventBody::Membership(change) => {
                let text = crate::connector::membership_text(delivery, change);
                let message = text_to_markdown(
                    &format!("[{}] ", delivery.origin.network),
                    &FormattedText::plain(&text),
                    false,
                );
                let post = self
                    .create_post(
                        delivery,
                        &channel_id,
                        ("", &message, serde_json::Map::new()),
                        None,
                        &[],
                    )
                    .await?;
                Ok(DeliveryAck {
                    remote_id: Some(post.id),
                })
            }
        }
    }

    /// The post type, message and props for a text: the sender as an override where the
    /// server allows it, else prefixed by `remote_nick_format`.
    fn render(
        &self,
        delivery: &Delivery,
        style: TextStyle,
        text: &FormattedText,
    ) -> (&'static str, String, serde_json::Map<String, Value>) {
        let settings = self.shared.context.gateway(&delivery.gateway);
        let mut text = match late_prefix(delivery, &settings, now_ms()) {
            Some(time) => prefixed(&time, text),
            None => text.clone(),
        };
        richtext::mention::neutralise_mass_pings(&mut text, settings.allow_mass_pings);
        let text = &text;
        let mut props = serde_json::Map::new();
        let prefix = if self.shared.config.sender_override {
            props.insert("from_webhook".into(), json!("true"));
            props.insert(
                "override_username".into(),
                json!(delivery.author.display_name),
            );
            if let Some(icon) = self
                .shared
                .context
                .files
                .avatar_link(&delivery.origin.network, &delivery.author.id)
            {
                props.insert("override_icon_url".into(), json!(icon));
            }
            String::new()
        } else {
            render_sender(&self.shared.remote_nick_format, delivery, str::to_owned)
        };
        match style {
            TextStyle::Action => ("me", text_to_markdown(&prefix, text, true), props),
            TextStyle::Normal | TextStyle::Notice => {
                ("", text_to_markdown(&prefix, text, false), props)
            }
        }
    }

    /// Upload a message's stored files to the channel: the new file ids, and the files that
    /// stay announced by name (not copied by the bridge, or refused by the server as too large
    /// or not allowed).
    async fn upload_files<'a>(
        &self,
        channel_id: &str,
        attachments: &'a [Attachment],
    ) -> Result<(Vec<String>, Vec<&'a Attachment>), DeliveryError> {
        let shared = &self.shared;
        let mut file_ids = Vec::new();
        let mut not_copied = Vec::new();
        for attachment in attachments {
            // The server attaches at most 10 files to one post.
            let Some(hash) = attachment.stored.as_deref().filter(|_| file_ids.len() < 10) else {
                not_copied.push(attachment);
                continue;
            };
            let Some(content) = shared.context.files.read(hash).await else {
                tracing::warn!(network = %shared.network, file = %attachment.name, "A stored file is gone (past file_retention_days?); it is announced by name.");
                not_copied.push(attachment);
                continue;
            };
            match shared
                .api
                .upload(channel_id, &attachment.name, &attachment.mime, &content)
                .await
            {
                Ok(id) => file_ids.push(id),
                // 413 too large, 403 attachments disabled, 400 image too large: say it in text.
                Err(ApiError::Status { status, id, .. }) if matches!(status, 400 | 403 | 413) => {
                    tracing::info!(network = %shared.network, file = %attachment.name, status, reason = %id, "Mattermost refused a file; it is announced by name.");
                    not_copied.push(attachment);
                }
                Err(error) => return Err(delivery_error(&error)),
            }
        }
        Ok((file_ids, not_copied))
    }

    /// The thread root to reply under: the post itself, or its root when it is a reply.
    async fn thread_root(&self, post_id: &str) -> Result<Option<String>, DeliveryError> {
        match self
            .shared
            .api
            .call::<Post>(Method::GET, &format!("/posts/{post_id}"), None)
            .await
        {
            Ok(post) if post.root_id.is_empty() => Ok(Some(post.id)),
            Ok(post) => Ok(Some(post.root_id)),
            // Deleted or not visible: say it without a thread rather than not at all.
            Err(error @ ApiError::Status { status, .. }) if status < 500 && status != 429 => {
                tracing::debug!(network = %self.shared.network, error = %error, "Reply target is gone; posting outside the thread.");
                Ok(None)
            }
            Err(error) => Err(delivery_error(&error)),
        }
    }

    async fn create_post(
        &self,
        delivery: &Delivery,
        channel_id: &str,
        (kind, message, props): (&str, &str, serde_json::Map<String, Value>),
        root_id: Option<String>,
        file_ids: &[String],
    ) -> Result<Post, DeliveryError> {
        let shared = &self.shared;
        let message = fit(message);
        let body = json!({
            "channel_id": channel_id,
            "message": message,
            "type": kind,
            "root_id": root_id.unwrap_or_default(),
            "props": props,
            "pending_post_id": delivery.id,
            "file_ids": file_ids,
        });
        shared
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(delivery.id.clone());
        let result = shared
            .api
            .call::<Post>(Method::POST, "/posts", Some(&body))
            .await;
        shared
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&delivery.id);
        result.map_err(|error| match &error {
            // The same pending_post_id is still being created by an earlier attempt.
            ApiError::Status { id, .. } if id == "api.post.deduplicate_create_post.pending" => {
                DeliveryError::Retry {
                    after: Some(Duration::from_secs(1)),
                    reason: error.to_string(),
                }
            }
            // Not (or no longer) allowed to post there, e.g. removed from the channel: the
            // connection rejoins; keep the message until then.
            ApiError::Status { status: 403, .. } => DeliveryError::Retry {
                after: Some(Duration::from_secs(10)),
                reason: error.to_string(),
            },
            _ => delivery_error(&error),
        })
    }
}

/// What a catch-up row means.
#[derive(Debug, Clone, Copy)]
enum Change {
    New,
    Edited,
    Deleted,
}

/// Where the WebSocket can be resumed.
#[derive(Debug, Clone)]
struct Resume {
    connection_id: String,
    next_seq: i64,
    /// Asked the server to resume; not yet known whether it did.
    asked: bool,
}

/// A WebSocket envelope: an event or a reply.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    broadcast: Value,
    #[serde(default)]
    seq: Option<i64>,
}

impl MattermostTask {
    /// Connect, and reconnect under the supervisor, until shutdown.
    pub async fn run(self) {
        let state = TaskState {
            shared: Arc::clone(&self.shared),
            context: self.context.clone(),
            resume: None,
            users: HashMap::new(),
            avatars: HashSet::new(),
            channels: HashMap::new(),
            cursors: HashMap::new(),
            unstored: HashSet::new(),
            stored_at: HashMap::new(),
            team_id: None,
            store_failed: false,
        };
        let network = self.shared.network.clone();
        supervise(
            &network,
            self.context.reconnect,
            &self.context.shutdown,
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

struct TaskState {
    shared: Arc<Shared>,
    context: BuildContext,
    resume: Option<Resume>,
    /// user id → username
    users: HashMap<String, String>,
    /// People whose picture was stored this session (for `override_icon_url` elsewhere).
    avatars: HashSet<String>,
    /// channel id → configured name
    channels: HashMap<String, String>,
    /// channel id → the newest `update_at` handled
    cursors: HashMap<String, i64>,
    /// channel id → when its cursor was last stored
    stored_at: HashMap<String, Instant>,
    /// channel ids whose handled cursor is ahead of the stored one (stored once
    /// [`CURSOR_STORE_INTERVAL`] has passed since `stored_at`)
    unstored: HashSet<String>,
    team_id: Option<String>,
    /// An event could not be committed in this session.
    store_failed: bool,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl TaskState {
    fn network(&self) -> &str {
        &self.shared.network
    }

    async fn session(&mut self) -> SessionEnd {
        let shutdown = self.context.shutdown.clone();
        let end = tokio::select! {
            end = self.session_inner() => end,
            () = shutdown.cancelled() => SessionEnd::Shutdown,
        };
        // Everything handled is committed: its cursors may all be stored now.
        self.store_cursors(true).await;
        end
    }

    async fn session_inner(&mut self) -> SessionEnd {
        if let Err(error) = self.prepare().await {
            return SessionEnd::Lost(error.to_string());
        }
        let mut socket = match self.connect().await {
            Ok(socket) => socket,
            Err(reason) => return SessionEnd::Lost(reason),
        };
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.reset();
        let mut action_seq: i64 = 0;
        let shutdown = self.context.shutdown.clone();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let _ = socket.close(None).await;
                    return SessionEnd::Shutdown;
                }
                frame = tokio::time::timeout(READ_TIMEOUT, socket.next()) => {
                    let frame = match frame {
                        Err(_) => return SessionEnd::Lost(format!("nothing from the server in {READ_TIMEOUT:?}")),
                        Ok(None) => return SessionEnd::Lost("the server closed the WebSocket".into()),
                        Ok(Some(Err(error))) => return SessionEnd::Lost(format!("WebSocket: {error}")),
                        Ok(Some(Ok(frame))) => frame,
                    };
                    match frame {
                        tungstenite::Message::Text(text) => {
                            if let Err(reason) = self.on_text(text.as_str()).await {
                                return SessionEnd::Lost(reason);
                            }
                        }
                        tungstenite::Message::Close(_) => {
                            return SessionEnd::Lost("the server closed the WebSocket".into());
                        }
                        _ => {}
                    }
                }
                () = sleep_until_opt(self.next_cursor_store()) => {
                    self.store_cursors(false).await;
                }
                _ = ping.tick() => {
                    action_seq += 1;
                    let ping = json!({"seq": action_seq, "action": "ping"}).to_string();
                    if let Err(error) = socket.send(tungstenite::Message::text(ping)).await {
                        return SessionEnd::Lost(format!("WebSocket write: {error}"));
                    }
                }
            }
        }
    }

    /// Log in, find the team and channels, join where needed.
    async fn prepare(&mut self) -> Result<(), ApiError> {
        let api = &self.shared.api;
        let me: api::User = api.fetch(Method::GET, "/users/me", None).await?;
        *self
            .shared
            .me
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(me.id.clone());
        // Parallel bridges named by username are known by their ids before this bridge's own
        // account is (which lets deliveries here begin).
        let names = &self.shared.config.parallel_bridge_usernames;
        if !names.is_empty() {
            let users: Vec<api::User> = api
                .fetch(Method::POST, "/users/usernames", Some(&json!(names)))
                .await?;
            for name in names {
                if !users
                    .iter()
                    .any(|user| user.username.eq_ignore_ascii_case(name))
                {
                    tracing::warn!(network = %self.shared.network, username = %name, "No such user for parallel_bridges; messages it relays here are not recognised until it copies one.");
                }
            }
            let ids: Vec<String> = users.into_iter().map(|user| user.id).collect();
            self.context
                .router
                .parallel()
                .set_parallel_bridges(&self.shared.network, &ids);
        }
        self.context
            .router
            .set_account(&self.shared.network, &me.id);
        self.users.insert(me.id.clone(), me.username.clone());
        let team_id = if let Some(id) = &self.team_id {
            id.clone()
        } else {
            let team: api::Team = api
                .fetch(
                    Method::GET,
                    &format!("/teams/name/{}", self.shared.config.team),
                    None,
                )
                .await?;
            self.team_id = Some(team.id.clone());
            team.id
        };
        let mut ids = HashMap::new();
        for configured in &self.context.channels {
            let path = match configured.strip_prefix("id:") {
                Some(id) => format!("/channels/{id}"),
                None => format!("/teams/{team_id}/channels/name/{configured}"),
            };
            let channel: api::Channel = match api.fetch(Method::GET, &path, None).await {
                Ok(channel) => channel,
                Err(error @ (ApiError::Status { .. } | ApiError::Decode(_))) => {
                    tracing::error!(network = %self.network(), channel = %configured, error = %error, "Cannot find this channel; it is not bridged.");
                    continue;
                }
                Err(error) => return Err(error),
            };
            let member = api
                .fetch::<Value>(
                    Method::GET,
                    &format!("/channels/{}/members/{}", channel.id, me.id),
                    None,
                )
                .await;
            match member {
                Ok(_) => {}
                Err(error) if matches!(error.status(), Some(403 | 404)) => {
                    match api
                        .fetch::<Value>(
                            Method::POST,
                            &format!("/channels/{}/members", channel.id),
                            Some(&json!({"user_id": me.id})),
                        )
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(network = %self.network(), channel = %configured, "Joined.");
                        }
                        Err(error @ ApiError::Status { .. }) => {
                            tracing::error!(network = %self.network(), channel = %configured, error = %error, "Cannot join this channel (a private channel needs the bot added by a member); it is not bridged.");
                            continue;
                        }
                        Err(error) => return Err(error),
                    }
                }
                Err(error) => return Err(error),
            }
            if !self.cursors.contains_key(&channel.id) {
                let stored = self.load_cursor(configured).await;
                let cursor = if let Some(cursor) = stored {
                    cursor
                } else {
                    // First time: start from the channel's newest post, relay what follows.
                    let start = channel.last_post_at.max(1);
                    self.store_cursor(configured, start).await;
                    start
                };
                self.cursors.insert(channel.id.clone(), cursor);
            }
            ids.insert(configured.clone(), channel.id.clone());
            self.channels.insert(channel.id, configured.clone());
        }
        *self
            .shared
            .channel_ids
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ids;
        Ok(())
    }

    async fn load_cursor(&self, channel: &str) -> Option<i64> {
        let store = Arc::clone(self.context.router.store());
        let (network, channel) = (self.network().to_owned(), channel.to_owned());
        tokio::task::spawn_blocking(move || store.cursor(&network, &channel))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .and_then(|value| value.parse().ok())
    }

    async fn store_cursor(&self, channel: &str, value: i64) {
        let store = Arc::clone(self.context.router.store());
        let (network, channel) = (self.network().to_owned(), channel.to_owned());
        let result = tokio::task::spawn_blocking(move || {
            store.set_cursor(&network, &channel, &value.to_string())
        })
        .await;
        if !matches!(result, Ok(Ok(()))) {
            tracing::warn!(network = %self.network(), "Could not store the channel position; some messages may be fetched again after a restart.");
        }
    }

    /// Move a channel's cursor forward to `update_at` (never back), unless something before it
    /// could not be stored.
    async fn advance(&mut self, channel_id: &str, update_at: i64) {
        if self.store_failed {
            return;
        }
        let Some(current) = self.cursors.get(channel_id).copied() else {
            return;
        };
        if update_at <= current {
            return;
        }
        self.cursors.insert(channel_id.to_owned(), update_at);
        let now = Instant::now();
        if self.cursor_due(channel_id).is_some_and(|due| due > now) {
            self.unstored.insert(channel_id.to_owned());
        } else {
            self.store_channel_cursor(channel_id, now).await;
        }
    }

    /// When a channel's cursor may be stored again (`None`: it never was, so now).
    fn cursor_due(&self, channel_id: &str) -> Option<Instant> {
        self.stored_at
            .get(channel_id)
            .map(|&at| at + CURSOR_STORE_INTERVAL)
    }

    /// When the first cursor not stored yet is due.
    fn next_cursor_store(&self) -> Option<Instant> {
        self.unstored
            .iter()
            .map(|channel| self.cursor_due(channel).unwrap_or_else(Instant::now))
            .min()
    }

    /// Store the cursors that are due (or, with `all`, every one not stored yet).
    async fn store_cursors(&mut self, all: bool) {
        let now = Instant::now();
        let due: Vec<String> = self
            .unstored
            .iter()
            .filter(|channel| all || self.cursor_due(channel).is_none_or(|due| due <= now))
            .cloned()
            .collect();
        for channel_id in due {
            self.store_channel_cursor(&channel_id, now).await;
        }
    }

    async fn store_channel_cursor(&mut self, channel_id: &str, now: Instant) {
        self.unstored.remove(channel_id);
        if self.store_failed {
            return;
        }
        let (Some(&value), Some(configured)) = (
            self.cursors.get(channel_id),
            self.channels.get(channel_id).cloned(),
        ) else {
            return;
        };
        self.stored_at.insert(channel_id.to_owned(), now);
        self.store_cursor(&configured, value).await;
    }

    async fn connect(&mut self) -> Result<Socket, String> {
        let base = self.shared.api.base();
        let ws_base = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(format!("`{base}` is not an http(s) URL"));
        };
        let url = match &mut self.resume {
            Some(resume) => {
                resume.asked = true;
                format!(
                    "{ws_base}/api/v4/websocket?connection_id={}&sequence_number={}",
                    resume.connection_id, resume.next_seq
                )
            }
            None => format!("{ws_base}/api/v4/websocket"),
        };
        let token = self
            .shared
            .api
            .token()
            .await
            .map_err(|error| error.to_string())?;
        let mut request = url
            .into_client_request()
            .map_err(|error| format!("WebSocket request: {error}"))?;
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        request.headers_mut().insert("Authorization", header);
        let (socket, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::connect_async_tls_with_config(
                request,
                None,
                // TCP_NODELAY, as browsers and reqwest set it: a small frame written while
                // the previous one is unacknowledged would otherwise wait for the server's
                // delayed ACK (up to 40 ms on Linux).
                true,
                self.shared.websocket_tls.clone(),
            ),
        )
        .await
        .map_err(|_| "WebSocket connect timed out".to_owned())?
        .map_err(|error| format!("WebSocket connect: {}", api::error_chain(&error)))?;
        tracing::debug!(network = %self.network(), resume = self.resume.is_some(), "WebSocket connected.");
        Ok(socket)
    }

    async fn on_text(&mut self, text: &str) -> Result<(), String> {
        let envelope: Envelope = match serde_json::from_str(text) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::debug!(network = %self.network(), error = %error, "Unreadable WebSocket message; ignored.");
                return Ok(());
            }
        };
        let Some(event) = envelope.event.as_deref() else {
            return Ok(()); // a reply (pong)
        };
        let seq = envelope.seq.unwrap_or(0);
        if event == "hello" {
            let connection_id = envelope
                .data
                .get("connection_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            tracing::info!(network = %self.network(), "WebSocket session started; catching up.");
            self.resume = Some(Resume {
                connection_id,
                next_seq: seq + 1,
                asked: false,
            });
            self.catch_up_all().await?;
            return self.check_stored();
        }
        if let Some(resume) = self.resume.as_mut().filter(|r| r.asked) {
            resume.asked = false;
            tracing::info!(network = %self.shared.network, from = resume.next_seq, "WebSocket resumed; missed events are replayed.");
        }
        if let Some(expected) = self.resume.as_ref().map(|r| r.next_seq)
            && expected != seq
        {
            tracing::warn!(network = %self.network(), expected, got = seq, "WebSocket events were missed; catching up.");
            self.catch_up_all().await?;
        }
        // Counted before handling: an event that ends the session is not replayed on resume.
        if let Some(resume) = &mut self.resume {
            resume.next_seq = seq + 1;
        }
        self.on_event(event, &envelope).await?;
        self.check_stored()
    }

    /// After a store failure, end the session without resuming, so that the next one catches
    /// up from the stored cursors.
    fn check_stored(&mut self) -> Result<(), String> {
        if std::mem::take(&mut self.store_failed) {
            self.resume = None;
            return Err("an event could not be stored".into());
        }
        Ok(())
    }

    async fn catch_up_all(&mut self) -> Result<(), String> {
        let channel_ids: Vec<String> = self.channels.keys().cloned().collect();
        for channel_id in channel_ids {
            self.catch_up(&channel_id)
                .await
                .map_err(|error| format!("catch-up failed: {error}"))?;
        }
        Ok(())
    }

    /// Relay what changed in a channel since its cursor: new posts in order, then edits and
    /// deletes of older ones. Edit-history rows are skipped; whatever was already bridged comes
    /// back from the router as a duplicate.
    async fn catch_up(&mut self, channel_id: &str) -> Result<(), ApiError> {
        let Some(cursor) = self.cursors.get(channel_id).copied() else {
            return Ok(());
        };
        let list: PostList = self
            .shared
            .api
            .fetch(
                Method::GET,
                &format!("/channels/{channel_id}/posts?since={cursor}"),
                None,
            )
            .await?;
        let mut list = list;
        if list.order.len() >= SINCE_LIMIT {
            // `since` answers the newest rows only: page back through the channel so that no
            // new post is missed (edits and deletions older than the cap are).
            tracing::warn!(network = %self.network(), channel = %channel_id, "More than {SINCE_LIMIT} changes since the last position; paging back for new posts.");
            for post in self.new_posts_by_page(channel_id, cursor).await? {
                if !list.order.contains(&post.id) {
                    list.order.push(post.id.clone());
                    list.posts.insert(post.id.clone(), post);
                }
            }
        }
        let rows: Vec<&Post> = list
            .order
            .iter()
            .filter_map(|id| list.posts.get(id))
            .collect();
        let newest = rows.iter().map(|p| p.update_at).max().unwrap_or(cursor);
        // Each change at the time it happened, so that the destination sees them in the order
        // people did: a new post (with its latest text) when it was created, an edit of an
        // older post when it was edited, a deletion when it was deleted.
        let mut changes: Vec<(i64, Change, &Post)> = rows
            .iter()
            .copied()
            .filter(|p| p.original_id.is_empty())
            .filter_map(|p| {
                if p.delete_at > 0 {
                    Some((p.delete_at, Change::Deleted, p))
                } else if p.create_at > cursor {
                    Some((p.create_at, Change::New, p))
                } else if p.edit_at > cursor {
                    Some((p.edit_at, Change::Edited, p))
                } else {
                    None // a reaction, pin or reply bumped it: nothing to relay
                }
            })
            .collect();
        changes.sort_by(|a, b| (a.0, &a.2.id).cmp(&(b.0, &b.2.id)));
        let mut relayed = 0usize;
        for (_, change, post) in changes {
            let committed = match change {
                Change::New => self.on_posted(post, None).await,
                Change::Edited => self.on_edited(post).await,
                Change::Deleted => self.on_deleted(post).await,
            };
            relayed += usize::from(committed);
        }
        // Reactions added meanwhile (taking one back leaves no row to find).
        let reacted: Vec<String> = rows
            .iter()
            .filter(|p| {
                p.original_id.is_empty()
                    && p.delete_at == 0
                    && p.has_reactions
                    && p.update_at > cursor
            })
            .map(|p| p.id.clone())
            .collect();
        for post_id in reacted {
            let mut reactions: Vec<Reaction> = self
                .shared
                .api
                .fetch(Method::GET, &format!("/posts/{post_id}/reactions"), None)
                .await?;
            reactions.retain(|r| r.create_at > cursor && r.delete_at == 0);
            reactions.sort_by_key(|r| r.create_at);
            for reaction in reactions {
                relayed += usize::from(self.on_reaction(channel_id, &reaction, false).await);
            }
        }
        if relayed > 0 {
            tracing::info!(network = %self.network(), channel = %channel_id, relayed, "Caught up.");
        }
        self.advance(channel_id, newest).await;
        Ok(())
    }

    /// Every post created after `cursor` and not deleted, by plain paging (newest first).
    async fn new_posts_by_page(
        &self,
        channel_id: &str,
        cursor: i64,
    ) -> Result<Vec<Post>, ApiError> {
        const PER_PAGE: usize = 200;
        let mut found = Vec::new();
        for page in 0.. {
            let list: PostList = self
                .shared
                .api
                .fetch(
                    Method::GET,
                    &format!("/channels/{channel_id}/posts?page={page}&per_page={PER_PAGE}"),
                    None,
                )
                .await?;
            let mut older = false;
            for id in &list.order {
                match list.posts.get(id) {
                    Some(post) if post.create_at > cursor => found.push(post.clone()),
                    Some(_) => older = true,
                    None => {}
                }
            }
            if older || list.order.len() < PER_PAGE {
                break;
            }
        }
        Ok(found)
    }

    async fn on_event(&mut self, event: &str, envelope: &Envelope) -> Result<(), String> {
        let embedded = |name: &str| -> Option<String> {
            envelope
                .data
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match event {
            "posted" | "post_edited" | "post_deleted" => {
                let Some(post) =
                    embedded("post").and_then(|text| serde_json::from_str::<Post>(&text).ok())
                else {
                    tracing::debug!(network = %self.network(), event, "Event without a readable post; ignored.");
                    return Ok(());
                };
                if !self.channels.contains_key(&post.channel_id) {
                    return Ok(());
                }
                let sender = embedded("sender_name");
                match event {
                    "posted" => {
                        self.on_posted(&post, sender.as_deref()).await;
                    }
                    "post_edited" => {
                        self.on_edited(&post).await;
                    }
                    _ => {
                        self.on_deleted(&post).await;
                    }
                }
                self.advance(&post.channel_id, post.update_at).await;
                if event == "post_deleted" && post.root_id.is_empty() {
                    // Its replies went with it without an event each; the catch-up sees them.
                    self.catch_up(&post.channel_id)
                        .await
                        .map_err(|error| format!("catch-up failed: {error}"))?;
                }
            }
            "reaction_added" | "reaction_removed" => {
                let Some(reaction) = embedded("reaction")
                    .and_then(|text| serde_json::from_str::<Reaction>(&text).ok())
                else {
                    return Ok(());
                };
                let channel_id = envelope
                    .broadcast
                    .get("channel_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.on_reaction(channel_id, &reaction, event == "reaction_removed")
                    .await;
            }
            "user_removed" => {
                // Either form: to the channel (data.user_id) or to the removed user
                // (data.channel_id, broadcast.user_id).
                let me = self.shared.me().unwrap_or_default();
                let field = |value: &Value, name: &str| {
                    value
                        .get(name)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                let channel = [
                    field(&envelope.data, "channel_id"),
                    field(&envelope.broadcast, "channel_id"),
                ]
                .into_iter()
                .find(|c| self.channels.contains_key(c));
                let removed_me = field(&envelope.data, "user_id") == me
                    || field(&envelope.broadcast, "user_id") == me;
                if removed_me && channel.is_some() {
                    return Err("removed from a bridged channel; rejoining".into());
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn username(&mut self, user_id: &str) -> String {
        if let Some(name) = self.users.get(user_id) {
            return name.clone();
        }
        match self
            .shared
            .api
            .fetch::<api::User>(Method::GET, &format!("/users/{user_id}"), None)
            .await
        {
            Ok(user) => {
                self.users.insert(user.id, user.username.clone());
                user.username
            }
            Err(error) => {
                tracing::debug!(network = %self.network(), error = %error, "Cannot look up a user; showing the id.");
                user_id.to_owned()
            }
        }
    }

    fn is_own(&self, user_id: &str, pending_post_id: &str) -> bool {
        self.shared.me().as_deref() == Some(user_id) || self.shared.is_in_flight(pending_post_id)
    }

    async fn author_of(&mut self, post: &Post, sender_name: Option<&str>) -> Author {
        let display_name = if post.prop("from_webhook") == Some("true")
            && let Some(name) = post.prop("override_username")
        {
            name.to_owned()
        } else if let Some(name) = sender_name.and_then(|s| s.strip_prefix('@')) {
            self.users.insert(post.user_id.clone(), name.to_owned());
            name.to_owned()
        } else {
            self.username(&post.user_id).await
        };
        if self.context.files.serves_links() && self.avatars.insert(post.user_id.clone()) {
            self.store_avatar(&post.user_id).await;
        }
        Author {
            id: post.user_id.clone(),
            display_name,
        }
    }

    /// Keep a person's profile picture, for destinations that show the sender's picture.
    async fn store_avatar(&self, user_id: &str) {
        let picture = match self
            .shared
            .api
            .download_path(&format!("/users/{user_id}/image"))
            .await
        {
            Ok(picture) => picture,
            Err(error) => {
                tracing::debug!(network = %self.network(), user_id, error = %error, "No profile picture.");
                return;
            }
        };
        if let Err(error) = self
            .context
            .files
            .put_avatar(self.network(), user_id, picture)
            .await
        {
            tracing::debug!(network = %self.network(), user_id, error = %error, "A profile picture was not kept.");
        }
    }

    async fn submit(&mut self, inbound: Inbound) -> bool {
        match self.context.router.submit(inbound).await {
            Ok(crate::store::CommitOutcome::Committed { message_id, .. }) => message_id > 0,
            Ok(_) => false,
            Err(error) => {
                // The cursor stays where it is; the session restarts and catches up from there.
                tracing::error!(network = %self.network(), error = %error, "Could not store an event; reconnecting to fetch it again.");
                self.store_failed = true;
                false
            }
        }
    }

    /// A new post. Returns whether something was committed.
    async fn on_posted(&mut self, post: &Post, sender_name: Option<&str>) -> bool {
        if self.is_own(&post.user_id, &post.pending_post_id) {
            return false;
        }
        let Some(channel) = self.channels.get(&post.channel_id).cloned() else {
            return false;
        };
        let origin = ChannelRef::new(self.network(), channel);
        let props_name = |name: &str| post.prop(name).map(str::to_owned);
        let membership = match post.kind.as_str() {
            "system_join_channel" => Some((props_name("username"), Membership::Joined)),
            "system_add_to_channel" => Some((props_name("addedUsername"), Membership::Joined)),
            "system_leave_channel" => {
                Some((props_name("username"), Membership::Left { reason: None }))
            }
            "system_remove_from_channel" => Some((
                props_name("removedUsername"),
                Membership::Left { reason: None },
            )),
            "system_header_change" => Some((
                props_name("username"),
                Membership::Topic {
                    topic: markdown_to_text(
                        self.network(),
                        post.prop("new_header").unwrap_or_default(),
                        false,
                    )
                    .to_plain_text(),
                },
            )),
            _ => None,
        };
        if let Some((name, change)) = membership {
            if !self.shared.config.relay_membership {
                return false;
            }
            let name = match name {
                Some(name) => name,
                None => self.username(&post.user_id).await,
            };
            return self
                .submit(Inbound {
                    origin,
                    remote_id: Some(post.id.clone()),
                    author: Author {
                        id: post.user_id.clone(),
                        display_name: name,
                    },
                    permalink: Some(self.permalink(&post.id)),
                    timestamp_ms: post.create_at,
                    body: EventBody::Membership(change),
                })
                .await;
        }
        if post.kind.starts_with("system_") {
            return false;
        }
        let (style, text) = post_text(self.network(), post);
        let attachments = self.fetch_files(post).await;
        if text.is_empty() && attachments.is_empty() {
            return false;
        }
        let author = self.author_of(post, sender_name).await;
        self.submit(Inbound {
            origin,
            remote_id: Some(post.id.clone()),
            author,
            permalink: Some(self.permalink(&post.id)),
            timestamp_ms: post.create_at,
            body: EventBody::Text {
                style,
                text,
                reply_to: None,
                thread_root: (!post.root_id.is_empty()).then(|| post.root_id.clone()),
                attachments,
            },
        })
        .await
    }

    /// The post's permalink (for "read the full text" links elsewhere).
    fn permalink(&self, post_id: &str) -> String {
        richtext::long_text::mattermost_permalink(
            self.shared.api.base(),
            &self.shared.config.team,
            post_id,
        )
    }

    /// A post's files, copied into the bridge's file store (within the size limit). A file
    /// that cannot be read is still announced by name, and the reason logged.
    async fn fetch_files(&self, post: &Post) -> Vec<Attachment> {
        let shared = &self.shared;
        let mut attachments = Vec::new();
        for file_id in &post.file_ids {
            let info = shared
                .api
                .fetch::<Value>(Method::GET, &format!("/files/{file_id}/info"), None)
                .await;
            let info = match info {
                Ok(info) => info,
                Err(error) => {
                    tracing::warn!(network = %shared.network, file_id = %file_id, error = %error, "Cannot read a Mattermost file's details; it is announced as a file.");
                    Value::Null
                }
            };
            let mut attachment = Attachment {
                name: info["name"].as_str().unwrap_or("file").to_owned(),
                mime: info["mime_type"]
                    .as_str()
                    .filter(|mime| !mime.is_empty())
                    .unwrap_or("application/octet-stream")
                    .to_owned(),
                size: info["size"].as_u64(),
                stored: None,
            };
            let files = Arc::clone(&shared.context.files);
            if info.is_null()
                || attachment
                    .size
                    .is_some_and(|size| !files.store.accepts(size))
            {
                attachments.push(attachment);
                continue;
            }
            match shared.api.download(file_id).await {
                Ok(content) => {
                    attachment.size = Some(content.len() as u64);
                    match files.put(content).await {
                        Ok(hash) => attachment.stored = Some(hash),
                        Err(error) => {
                            tracing::warn!(network = %shared.network, file_id = %file_id, error = %error, "A Mattermost file was not copied; it is announced by name.");
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(network = %shared.network, file_id = %file_id, error = %error, "Cannot download a Mattermost file; it is announced by name.");
                }
            }
            attachments.push(attachment);
        }
        attachments
    }

    async fn on_edited(&mut self, post: &Post) -> bool {
        if post.edit_at == 0 || post.delete_at > 0 || self.is_own(&post.user_id, "") {
            return false;
        }
        let Some(channel) = self.channels.get(&post.channel_id).cloned() else {
            return false;
        };
        let (style, text) = post_text(self.network(), post);
        let author = self.author_of(post, None).await;
        self.submit(Inbound {
            origin: ChannelRef::new(self.network(), channel),
            // One id per version, so that the same edit seen live and in a catch-up is one.
            remote_id: Some(format!("{}:edit:{}", post.id, post.edit_at)),
            author,
            permalink: Some(self.permalink(&post.id)),
            timestamp_ms: post.edit_at,
            body: EventBody::Edit {
                target: post.id.clone(),
                style,
                text,
            },
        })
        .await
    }

    async fn on_deleted(&mut self, post: &Post) -> bool {
        if self.is_own(&post.user_id, "") {
            return false;
        }
        let Some(channel) = self.channels.get(&post.channel_id).cloned() else {
            return false;
        };
        let author = self.author_of(post, None).await;
        self.submit(Inbound {
            origin: ChannelRef::new(self.network(), channel),
            remote_id: Some(format!("{}:delete", post.id)),
            author,
            permalink: None,
            timestamp_ms: if post.delete_at > 0 {
                post.delete_at
            } else {
                post.update_at
            },
            body: EventBody::Delete {
                target: post.id.clone(),
            },
        })
        .await
    }

    async fn on_reaction(&mut self, channel_id: &str, reaction: &Reaction, removed: bool) -> bool {
        if self.is_own(&reaction.user_id, "") {
            return false;
        }
        let Some(channel) = self.channels.get(channel_id).cloned() else {
            tracing::debug!(network = %self.network(), channel_id, "A reaction in a channel that is not bridged; ignored.");
            return false;
        };
        let display_name = self.username(&reaction.user_id).await;
        let when = if removed {
            reaction.update_at.max(reaction.delete_at)
        } else {
            reaction.create_at
        };
        self.submit(Inbound {
            origin: ChannelRef::new(self.network(), channel),
            remote_id: Some(format!(
                "{}:reaction:{}:{}:{}:{when}",
                reaction.post_id,
                reaction.user_id,
                reaction.emoji_name,
                if removed { "-" } else { "+" }
            )),
            author: Author {
                id: reaction.user_id.clone(),
                display_name,
            },
            permalink: None,
            timestamp_ms: when,
            body: EventBody::Reaction {
                target: reaction.post_id.clone(),
                key: emoji::key_of(&reaction.emoji_name),
                removed,
            },
        })
        .await
    }
}

/// The longest message the bridge sends, in characters (`MaxPostSize` is 16383 runes on current
/// servers, 4000 on very old ones).
const MAX_POST_CHARS: usize = 16_383;

/// A message that fits in one post: cut, and said so, when longer.
fn fit(message: &str) -> std::borrow::Cow<'_, str> {
    const MARK: &str = "\n… (cut: too long for Mattermost)";
    if message.chars().count() <= MAX_POST_CHARS {
        return std::borrow::Cow::Borrowed(message);
    }
    let keep = MAX_POST_CHARS - MARK.chars().count();
    let mut cut: String = message.chars().take(keep).collect();
    // Never end on a lone backslash, which would escape the line break after it.
    while cut.ends_with('\\') {
        cut.pop();
    }
    cut.push_str(MARK);
    std::borrow::Cow::Owned(cut)
}

/// A post's style and text: `/me` posts are actions.
fn post_text(network: &str, post: &Post) -> (TextStyle, FormattedText) {
    if post.kind == "me" {
        (
            TextStyle::Action,
            markdown_to_text(network, &post.message, true),
        )
    } else {
        (
            TextStyle::Normal,
            markdown_to_text(network, &post.message, false),
        )
    }
}

/// Read one WebSocket text frame as the session does, without acting on it: the envelope, the
/// post or reaction embedded in it (as a JSON string, the way Mattermost sends them) and the
/// post's text. Returns how many of those parts were readable. For the fuzz target and the
/// hostile-input tests: any input must come back, never panic.
#[must_use]
pub fn read_websocket_text(network: &str, text: &str) -> usize {
    let Ok(envelope) = serde_json::from_str::<Envelope>(text) else {
        return 0;
    };
    let mut readable = 1;
    let embedded = |name: &str| envelope.data.get(name).and_then(Value::as_str);
    if let Some(post) = embedded("post").and_then(|text| serde_json::from_str::<Post>(text).ok()) {
        let _ = post_text(network, &post);
        readable += 1;
    }
    if embedded("reaction")
        .and_then(|text| serde_json::from_str::<Reaction>(text).ok())
        .is_some()
    {
        readable += 1;
    }
    readable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_both_ways_keeps_literals_and_actions() {
        let text = FormattedText::plain("2*3*4 <b> @here");
        let markdown = text_to_markdown("<alice> ", &text, false);
        assert_eq!(
            markdown_to_text("mm", &markdown, false).to_plain_text(),
            "<alice> 2*3*4 <b> @\u{2060}here"
        );
        let action = text_to_markdown("", &FormattedText::plain("waves"), true);
        assert_eq!(action, "*waves*");
        let back = markdown_to_text("mm", &action, true);
        assert_eq!(back, FormattedText::plain("waves"));
        // An action that is not emphasised as a whole keeps its formatting.
        let partial = markdown_to_text("mm", "*waves* back", true);
        assert_eq!(partial.to_plain_text(), "waves back");
    }

    #[test]
    fn long_messages_are_cut_and_say_so() {
        assert_eq!(fit("short"), "short");
        let long = "a".repeat(MAX_POST_CHARS + 10);
        let cut = fit(&long);
        assert_eq!(cut.chars().count(), MAX_POST_CHARS);
        assert!(cut.ends_with("(cut: too long for Mattermost)"));
        let backslashes = format!("{}\\\\x", "b".repeat(MAX_POST_CHARS));
        assert!(!fit(&backslashes).contains('\\'));
    }
}
