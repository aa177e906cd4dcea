//! The connection to a Mattermost server: [`TaskState`] (kept across sessions), log in, resolve
//! the team and channels (joining where needed, a first cursor for a channel never seen), and the
//! WebSocket (`seq` tracking, resume, ping) whose events go to [`super::events`], with a
//! catch-up ([`super::catchup`]) on every `hello` and every `seq` gap.
//!
//! **Invariants:** an event's `seq` is counted before it is handled, so one that ends the session
//! is not replayed on resume; after a store failure the session ends without resuming, so that
//! the next one catches up from the stored cursors.

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
use super::api::{self, ApiError};
use super::convert::Envelope;
use crate::connector::sleep_until_opt;
use crate::connector::supervisor::SessionEnd;

/// How often the WebSocket `ping` action is sent.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// Silence after which the socket is presumed dead.
const READ_TIMEOUT: Duration = Duration::from_secs(90);

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
    pub(super) shared: Arc<Shared>,
    resume: Option<Resume>,
    /// user id → username
    pub(super) users: HashMap<String, String>,
    /// People whose picture was stored this session (for `override_icon_url` elsewhere).
    pub(super) avatars: HashSet<String>,
    /// channel id → configured name
    pub(super) channels: HashMap<String, String>,
    /// channel id → the newest `update_at` handled
    pub(super) cursors: HashMap<String, i64>,
    /// channel id → when its cursor was last stored
    pub(super) stored_at: HashMap<String, Instant>,
    /// channel ids whose handled cursor is ahead of the stored one (stored once
    /// `CURSOR_STORE_INTERVAL` in `catchup` has passed since `stored_at`)
    pub(super) unstored: HashSet<String>,
    team_id: Option<String>,
    /// An event could not be committed in this session.
    pub(super) store_failed: bool,
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

    pub(super) fn network(&self) -> &str {
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
        // The channels now: those of the last reload, which may differ from those at start;
        // later reloads are followed on this session's WebSocket.
        let mut channel_updates = self.shared.context.channel_updates.clone();
        let wanted = channel_updates.borrow_and_update().clone();
        let mut identities_linked = self.shared.context.router.people().identities_linked();
        identities_linked.mark_unchanged();
        if let Err(error) = self.prepare(&wanted).await {
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
                Ok(()) = identities_linked.changed() => {
                    identities_linked.mark_unchanged();
                    if let Err(error) = self.bind_identities().await {
                        return SessionEnd::Lost(format!("cannot look up the linked people: {error}"));
                    }
                }
                Ok(()) = channel_updates.changed() => {
                    let wanted = channel_updates.borrow_and_update().clone();
                    if let Err(reason) = self.follow_channels(&wanted).await {
                        return SessionEnd::Lost(reason);
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

    /// Log in, find the team and the channels of `wanted`, join where needed.
    async fn prepare(&mut self, wanted: &[String]) -> Result<(), ApiError> {
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
        self.bind_identities().await?;
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
        self.shared.remote.check_at_start(api, &me, &team_id).await;
        // Channels of an earlier session that no gateway links any more are not bridged.
        self.channels.clear();
        let mut ids = HashMap::new();
        for configured in wanted {
            if let Some(id) = self
                .resolve_channel(configured, &me.id, &team_id, false)
                .await?
            {
                ids.insert(configured.clone(), id);
            }
        }
        *self
            .shared
            .channel_ids
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ids;
        Ok(())
    }

    /// People linked in `[[identity]]` by username: their posts name them by user id, looked
    /// up here (at each session, and when a reload links new identities).
    async fn bind_identities(&self) -> Result<(), ApiError> {
        let api = &self.shared.api;
        let identities = self.shared.context.router.people().identities();
        let linked = identities.accounts_on(&self.shared.network);
        if !linked.is_empty() {
            let users: Vec<api::User> = api
                .fetch(Method::POST, "/users/usernames", Some(&json!(linked)))
                .await?;
            for name in &linked {
                match users
                    .iter()
                    .find(|user| user.username.eq_ignore_ascii_case(name))
                {
                    Some(user) => identities.bind(&self.shared.network, name, &user.id),
                    None => {
                        tracing::warn!(network = %self.shared.network, username = %name, "No such user for an [[identity]]; that person is not linked here.");
                    }
                }
            }
        }
        Ok(())
    }

    /// Find the channel `configured`, join it if needed, and give it a cursor (its stored one,
    /// else its newest post: a channel never seen is relayed from now on; with `linked_now`, a
    /// channel a reload links, its newest post too: what was said while no gateway linked it
    /// is not relayed): its id, or `None` when it cannot be bridged (logged).
    async fn resolve_channel(
        &mut self,
        configured: &str,
        me: &str,
        team_id: &str,
        linked_now: bool,
    ) -> Result<Option<String>, ApiError> {
        let api = &self.shared.api;
        let path = match configured.strip_prefix("id:") {
            Some(id) => format!("/channels/{id}"),
            None => format!("/teams/{team_id}/channels/name/{configured}"),
        };
        let channel: api::Channel = match api.fetch(Method::GET, &path, None).await {
            Ok(channel) => channel,
            Err(error @ (ApiError::Status { .. } | ApiError::Decode(_))) => {
                tracing::error!(network = %self.network(), channel = %configured, error = %error, "Cannot find this channel; it is not bridged.");
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let member = api
            .fetch::<Value>(
                Method::GET,
                &format!("/channels/{}/members/{}", channel.id, me),
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
                        Some(&json!({"user_id": me})),
                    )
                    .await
                {
                    Ok(_) => {
                        tracing::info!(network = %self.network(), channel = %configured, "Joined.");
                    }
                    Err(error @ ApiError::Status { .. }) => {
                        tracing::error!(network = %self.network(), channel = %configured, error = %error, "Cannot join this channel (a private channel needs the bot added by a member); it is not bridged.");
                        return Ok(None);
                    }
                    Err(error) => return Err(error),
                }
            }
            Err(error) => return Err(error),
        }
        if !self.cursors.contains_key(&channel.id) {
            let stored = if linked_now {
                None
            } else {
                self.load_cursor(configured).await
            };
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
        self.channels
            .insert(channel.id.clone(), configured.to_owned());
        Ok(Some(channel.id))
    }

    /// Follow a reload's channels on this session: a channel no gateway links any more stops
    /// being relayed (its cursor stored first; the bot stays a member), a new one is resolved,
    /// joined and given its cursor as a channel never seen at start (its newest post), and
    /// caught up, its events then taken from this WebSocket.
    async fn follow_channels(&mut self, wanted: &[String]) -> Result<(), String> {
        let removed: Vec<(String, String)> = self
            .channels
            .iter()
            .filter(|(_, name)| !wanted.contains(*name))
            .map(|(id, name)| (id.clone(), name.clone()))
            .collect();
        for (id, name) in removed {
            if self.unstored.contains(&id) {
                self.store_channel_cursor(&id, Instant::now()).await;
            }
            self.channels.remove(&id);
            self.cursors.remove(&id);
            self.stored_at.remove(&id);
            self.unstored.remove(&id);
            self.shared
                .channel_ids
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&name);
            self.shared.context.status.left(&name);
            tracing::info!(network = %self.network(), channel = %name, "No gateway links this channel any more: it is not relayed; the bot stays a member.");
        }
        let (Some(me), Some(team_id)) = (self.shared.me(), self.team_id.clone()) else {
            return Err("a reload's channels came before the login".to_owned());
        };
        for configured in wanted {
            if self.channels.values().any(|name| name == configured) {
                continue;
            }
            let id = match self.resolve_channel(configured, &me, &team_id, true).await {
                Ok(Some(id)) => id,
                Ok(None) => continue,
                Err(error) => return Err(format!("cannot resolve a new channel: {error}")),
            };
            tracing::info!(network = %self.network(), channel = %configured, "A gateway links this channel now; relaying it.");
            self.shared
                .channel_ids
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(configured.clone(), id.clone());
            self.catch_up(&id)
                .await
                .map_err(|error| format!("catch-up failed: {error}"))?;
        }
        self.shared
            .context
            .status
            .joined_only(self.channels.values());
        self.check_stored()
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
            let status = &self.shared.context.status;
            status.connected();
            status.joined_only(self.channels.values());
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
}
