//! The connection to a Mattermost server: log in, resolve the team and channels (joining where
//! needed), the WebSocket (`seq` tracking, resume, ping), catch-up over REST from each channel's
//! cursor, and the cursors themselves (in `context.store`).
//!
//! **Invariants:** a channel's cursor moves forward only, and only past what the router has
//! committed; after a store failure it stays where it was and the session ends without resuming,
//! so that the next one catches up from there; the account's own posts and reactions, and the
//! echoes of creates in flight, are never submitted; what an event means is decided in
//! [`super::convert`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::Shared;
use super::api::{self, ApiError, Post, PostList, Reaction};
use super::convert::{self, Change, Envelope};
use crate::connector::sleep_until_opt;
use crate::connector::supervisor::SessionEnd;
use crate::model::{Attachment, Author, ChannelRef, Inbound};
use crate::richtext;

/// How often the WebSocket `ping` action is sent.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Silence after which the socket is presumed dead.
const READ_TIMEOUT: Duration = Duration::from_secs(90);
/// How often, at most, a channel's cursor is written to the store.
const CURSOR_STORE_INTERVAL: Duration = Duration::from_secs(1);
/// The most rows one `since` query returns; more means some may be missing.
const SINCE_LIMIT: usize = 1000;

/// A TLS client configuration for the WebSocket: the Mozilla roots plus `extra_roots` (PEM).
pub(super) fn websocket_tls(extra_roots: &[u8]) -> tokio_tungstenite::Connector {
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

/// Where the WebSocket can be resumed.
#[derive(Debug, Clone)]
struct Resume {
    connection_id: String,
    next_seq: i64,
    /// Asked the server to resume; not yet known whether it did.
    asked: bool,
}

/// One network's connection state, kept across sessions (the supervisor reconnects it).
pub(super) struct TaskState {
    shared: Arc<Shared>,
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
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            resume: None,
            users: HashMap::new(),
            avatars: HashSet::new(),
            channels: HashMap::new(),
            cursors: HashMap::new(),
            unstored: HashSet::new(),
            stored_at: HashMap::new(),
            team_id: None,
            store_failed: false,
        }
    }

    fn network(&self) -> &str {
        &self.shared.network
    }

    /// One session, until it is lost or the daemon shuts down; every cursor handled is stored
    /// when it ends.
    pub(super) async fn session(&mut self) -> SessionEnd {
        let shutdown = self.shared.context.shutdown.clone();
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
        let shutdown = self.shared.context.shutdown.clone();
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
            self.shared
                .context
                .router
                .parallel()
                .set_parallel_bridges(&self.shared.network, &ids);
        }
        self.shared
            .context
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
        for configured in &self.shared.context.channels {
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
        let store = Arc::clone(&self.shared.context.store);
        let (network, channel) = (self.network().to_owned(), channel.to_owned());
        tokio::task::spawn_blocking(move || store.cursor(&network, &channel))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .and_then(|value| value.parse().ok())
    }

    async fn store_cursor(&self, channel: &str, value: i64) {
        let store = Arc::clone(&self.shared.context.store);
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
            let connection_id = envelope.connection_id();
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
            let paged = self.new_posts_by_page(channel_id, cursor).await?;
            convert::merge_posts(&mut list, paged);
        }
        let rows = convert::rows(&list);
        let newest = convert::newest_update(&rows, cursor);
        let mut relayed = 0usize;
        for (_, change, post) in convert::catch_up_changes(&rows, cursor) {
            let committed = match change {
                Change::New => self.on_posted(post, None).await,
                Change::Edited => self.on_edited(post).await,
                Change::Deleted => self.on_deleted(post).await,
            };
            relayed += usize::from(committed);
        }
        // Reactions added meanwhile (taking one back leaves no row to find).
        for post_id in convert::reacted_since(&rows, cursor) {
            let reactions: Vec<Reaction> = self
                .shared
                .api
                .fetch(Method::GET, &format!("/posts/{post_id}/reactions"), None)
                .await?;
            for reaction in convert::new_reactions(reactions, cursor) {
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
            let (new, older) = convert::created_after(&list, cursor);
            found.extend(new);
            if older || list.order.len() < PER_PAGE {
                break;
            }
        }
        Ok(found)
    }

    async fn on_event(&mut self, event: &str, envelope: &Envelope) -> Result<(), String> {
        match event {
            "posted" | "post_edited" | "post_deleted" => {
                let Some(post) = envelope.post() else {
                    tracing::debug!(network = %self.network(), event, "Event without a readable post; ignored.");
                    return Ok(());
                };
                if !self.channels.contains_key(&post.channel_id) {
                    return Ok(());
                }
                let sender = envelope.sender_name();
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
                let Some(reaction) = envelope.reaction() else {
                    return Ok(());
                };
                let channel_id = envelope.broadcast_channel_id();
                self.on_reaction(channel_id, &reaction, event == "reaction_removed")
                    .await;
            }
            "user_removed" => {
                let me = self.shared.me().unwrap_or_default();
                if envelope.removes(&me, |channel| self.channels.contains_key(channel)) {
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
        let display_name = if let Some(name) = convert::webhook_name(post) {
            name.to_owned()
        } else if let Some(name) = sender_name.and_then(|s| s.strip_prefix('@')) {
            self.users.insert(post.user_id.clone(), name.to_owned());
            name.to_owned()
        } else {
            self.username(&post.user_id).await
        };
        if self.shared.context.files.serves_links() && self.avatars.insert(post.user_id.clone()) {
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
            .shared
            .context
            .files
            .put_avatar(self.network(), user_id, picture)
            .await
        {
            tracing::debug!(network = %self.network(), user_id, error = %error, "A profile picture was not kept.");
        }
    }

    async fn submit(&mut self, inbound: Inbound) -> bool {
        match self.shared.context.router.submit(inbound).await {
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
        if let Some((name, change)) = convert::membership_change(self.network(), post) {
            if !self.shared.config.relay_membership {
                return false;
            }
            let name = match name {
                Some(name) => name,
                None => self.username(&post.user_id).await,
            };
            let permalink = self.permalink(&post.id);
            return self
                .submit(convert::membership_inbound(
                    origin, post, name, change, permalink,
                ))
                .await;
        }
        if post.kind.starts_with("system_") {
            return false;
        }
        let (style, text) = convert::post_text(self.network(), post);
        let attachments = self.fetch_files(post).await;
        if text.is_empty() && attachments.is_empty() {
            return false;
        }
        let author = self.author_of(post, sender_name).await;
        let permalink = self.permalink(&post.id);
        self.submit(convert::text_inbound(
            origin,
            post,
            author,
            permalink,
            (style, text),
            attachments,
        ))
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
            let mut attachment = convert::attachment_from_info(&info);
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
        let author = self.author_of(post, None).await;
        let origin = ChannelRef::new(self.network(), channel);
        let permalink = self.permalink(&post.id);
        self.submit(convert::edit_inbound(origin, post, author, permalink))
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
        let origin = ChannelRef::new(self.network(), channel);
        self.submit(convert::delete_inbound(origin, post, author))
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
        let origin = ChannelRef::new(self.network(), channel);
        self.submit(convert::reaction_inbound(
            origin,
            reaction,
            display_name,
            removed,
        ))
        .await
    }
}
