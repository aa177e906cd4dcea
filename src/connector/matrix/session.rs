//! The Matrix connector, on `matrix-sdk` (HTTP, login, the `SQLite` state store) as a plain bot
//! account on any homeserver.
//!
//! - **Session**: the first start logs in with the password (or uses the configured access
//!   token) and keeps the session in `state_dir/matrix-<network>/session.json`; later starts
//!   reuse it, so no new device appears per start. A refused token (`M_UNKNOWN_TOKEN`) leads to a
//!   new password login on the same device.
//! - **Sync**: the loop keeps its own position (the `next_batch` token) in the store's cursors
//!   and advances it only after every event of the response was committed by
//!   [`crate::router::Router::submit`]: a crash replays a response (the store drops the
//!   duplicates by event id), never skips one. A brand-new install takes the current position
//!   without relaying history, and a room joined later is relayed from the bot's join on. A
//!   `limited` timeline is completed with `/messages` back to the previous position. While
//!   the bot writes into its rooms the sync polls (every 200 ms) instead of long-polling: a
//!   waiting sync is woken, and computed again, by every event the bot sends.
//! - **Echo**: every event sent by the bot's own account is dropped here (that includes events
//!   that arrive through sync before the send call returned); the store's mapping layer and the
//!   transaction id (= the delivery id) are the other two layers.
//! - **Outbound**: text with `body`/`formatted_body`, edits as `m.replace`, deletes as
//!   redactions, replies as `m.in_reply_to`, thread messages as `m.thread` (with the
//!   `is_falling_back` reply for clients without threads), reactions as `m.annotation`, all with
//!   the delivery id as transaction id so that a retried send never doubles. `M_LIMIT_EXCEEDED` becomes
//!   [`DeliveryError::Retry`] with the server's delay, for this destination only.
//!
//! - **Files**: `m.image`/`m.file`/`m.video`/`m.audio` are downloaded (authenticated media)
//!   into the bridge's file store before the event is submitted; files from other networks are
//!   uploaded to the content repository and sent as the matching message type.
//!
//! - **Encryption**: the SDK is built with end-to-end encryption and keeps its crypto store
//!   (`SQLite`) next to the state store, so encrypted rooms are bridged like others: events are
//!   decrypted by the SDK during sync and `/messages`, and sends are encrypted. With the
//!   default `trust = "all-devices"` room keys are shared with every device of the room's
//!   members, verified or not, and messages from every device are accepted: the bot verifies no
//!   one. `trust = "cross-signed"` shares keys only with devices their owner cross-signed and
//!   decrypts only their messages. A message that cannot be decrypted stays
//!   `m.room.encrypted`; it is not relayed, and its drop is logged with the SDK's reason and
//!   counted. The account's cross-signing identity is `super::identity`'s, set up right after
//!   login and watched after each sync.
//! - **Homeserver**: the configured URL stays the one used; a login response's `well_known`
//!   is not adopted.
//! - **Scoped** ([`build_scoped`], `mode = "appservice"`'s encryption bot): the session reads and
//!   writes only the rooms of its [`RoomScope`] (joined for it), joins nothing itself, logs in
//!   with the application service's token, and leaves the network's account to the service.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::filter::{FilterDefinition, RoomEventFilter, RoomFilter};
use matrix_sdk::ruma::api::client::sync::sync_events::v3::Filter;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomOrAliasId, UInt, UserId};
use matrix_sdk::{Client, SqliteStoreConfig};
use serde_json::Value;
use tokio::time::Instant;

use matrix_sdk_crypto::{CollectStrategy, DecryptionSettings, TrustRequirement};

use super::config::{MatrixConfig, Trust};
use super::content;
use super::handle::MatrixHandle;
use super::identity::{Identity, IdentityMetrics};
use crate::connector::BuildContext;
use crate::connector::supervisor::{Session, SessionEnd, error_chain, supervise};
use crate::model::{ChannelRef, EventBody, Inbound, now_ms};

/// Log filter directives that keep the SDK's per-request chatter to warnings. The SDK's HTTP
/// client logs every failed request at ERROR, the 404s of its own expected probes included
/// (account data, key backup: several at each start with cross-signing); every failure that
/// matters reaches the bridge's code, which logs it with its meaning, so that target is off.
pub const QUIET_LOG_TARGETS: &str = "matrix_sdk=warn,matrix_sdk::http_client=off,matrix_sdk_base=warn,matrix_sdk_sqlite=warn,matrix_sdk_crypto=warn";

/// How long one `/sync` long-poll waits for news.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// While the bot is writing, how often the sync polls instead of long-polling.
const BUSY_POLL: Duration = Duration::from_millis(200);
/// How many timeline events one sync returns per room before it is `limited`.
const TIMELINE_LIMIT: u32 = 100;
/// How often rooms that could not be joined are tried again.
const JOIN_RETRY: Duration = Duration::from_mins(1);
/// The cursor key of the sync position (network-wide).
const SYNC_CURSOR: &str = "";

/// What the handle needs of a live session.
pub(super) struct Live {
    pub(super) client: Client,
    /// configured channel (as written) → room id
    pub(super) rooms: HashMap<String, OwnedRoomId>,
}

/// The connection task of a Matrix network.
pub struct MatrixTask {
    network: String,
    config: MatrixConfig,
    context: BuildContext,
    live: Arc<RwLock<Option<Live>>>,
    relogin: Arc<tokio::sync::Notify>,
    /// The handle's count of writes: while it moves, the sync polls (see [`SyncState::run`]).
    writes: Arc<AtomicU64>,
    /// user id → the picture (`mxc://`) last stored for them, for `override_icon_url` elsewhere.
    avatars: std::sync::Mutex<HashMap<String, String>>,
    /// The cross-signing identity's series in `/metrics` (kept over reconnections).
    identity_metrics: IdentityMetrics,
    /// The rooms this session reads and relays, when not all of its channels' (appservice
    /// mode: the encrypted ones); `None`: all.
    scope: Option<RoomScope>,
}

/// The rooms a session reads and writes, when it is not every room of its channels: in
/// `mode = "appservice"` the encrypted rooms, which ghosts cannot write to and the bridge's
/// encryption bot relays (`super::appservice`), joined by the application service. Room id →
/// its configured channel; rooms are added (at start or by a reload) and removed (by a reload)
/// while the session runs. Such a session joins nothing itself; its account is in these rooms
/// only (and in rooms a reload unlinked, whose events it skips), so its sync asks for every
/// room: a room joined while a sync waits wakes it with the join, and is read from there.
pub(super) type RoomScope = Arc<RwLock<HashMap<String, String>>>;

/// Build the handle and the task of one Matrix network.
#[must_use]
pub fn build(
    network: &str,
    config: MatrixConfig,
    context: BuildContext,
) -> (MatrixHandle, MatrixTask) {
    build_scoped(network, config, context, None)
}

/// [`build`], reading and relaying only the rooms of `scope` when given.
pub(super) fn build_scoped(
    network: &str,
    config: MatrixConfig,
    context: BuildContext,
    scope: Option<RoomScope>,
) -> (MatrixHandle, MatrixTask) {
    let live = Arc::new(RwLock::new(None));
    let relogin = Arc::new(tokio::sync::Notify::new());
    let writes = Arc::new(AtomicU64::new(0));
    let identity_metrics = IdentityMetrics::new(&context.metrics, network);
    (
        MatrixHandle::new(
            network,
            &context,
            Arc::clone(&live),
            Arc::clone(&relogin),
            Arc::clone(&writes),
            scope.clone(),
        ),
        MatrixTask {
            network: network.to_owned(),
            config,
            context,
            live,
            relogin,
            writes,
            avatars: std::sync::Mutex::new(HashMap::new()),
            identity_metrics,
            scope,
        },
    )
}

impl Session for MatrixTask {
    fn label(&self) -> &'static str {
        "Matrix"
    }

    async fn connect(&mut self) -> SessionEnd {
        let end = self.session().await;
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        end
    }
}

impl MatrixTask {
    /// Log in, join, and sync (reconnecting under the supervisor) until shutdown.
    pub async fn run(mut self) {
        let network = self.network.clone();
        let shutdown = self.context.shutdown.clone();
        let status = self.status();
        supervise(
            &network,
            self.context.reconnect,
            &shutdown,
            &status,
            &mut self,
        )
        .await;
    }

    /// Where this session reports readiness: the network's, unless it is scoped (the
    /// encryption bot of an application service, whose network reports for itself).
    fn status(&self) -> crate::vocab::NetworkStatus {
        if self.scope.is_some() {
            crate::vocab::NetworkStatus::detached(&self.network)
        } else {
            self.context.status.clone()
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.context
            .state_dir
            .join(format!("matrix-{}", self.network))
    }

    async fn session(&self) -> SessionEnd {
        let dir = self.state_dir();
        let client = tokio::select! {
            result = login(&self.network, &self.config, &dir) => match result {
                Ok(client) => client,
                Err(reason) => return SessionEnd::Lost(reason),
            },
            () = self.context.shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        let Some(own_user) = client.user_id().map(ToOwned::to_owned) else {
            return SessionEnd::Lost("the client has no user id after login".into());
        };
        if self.scope.is_none() {
            // (A scoped session's account is not the network's: the application service's
            // bot is, set by it.)
            self.context
                .router
                .set_account(&self.network, own_user.as_str());
        }
        if let Some(name) = &self.config.display_name {
            let account = client.account();
            if account.get_display_name().await.ok().flatten().as_deref() != Some(name.as_str())
                && let Err(error) = account.set_display_name(Some(name)).await
            {
                tracing::warn!(network = %self.network, error = %error_chain(&error), "Could not set the bot's display name.");
            }
        }
        let state_dir = &self.context.state_dir;
        let mut identity = Identity::new(
            &self.network,
            &self.config,
            state_dir,
            &self.context.store,
            self.identity_metrics.clone(),
        );
        tokio::select! {
            () = identity.ensure(&client) => {}
            () = self.context.shutdown.cancelled() => return SessionEnd::Shutdown,
        }
        let mut sync = SyncState {
            task: self,
            identity,
            client: client.clone(),
            own_user,
            rooms: HashMap::new(),
            // A scoped session joins nothing: its rooms are joined for it. The channels are
            // those of the last reload, which may differ from those at start.
            wanted: if self.scope.is_some() {
                Vec::new()
            } else {
                self.context.channel_updates.borrow().clone()
            },
            next_join_attempt: Instant::now(),
            awaiting_join: HashSet::new(),
            undecryptable: self.context.metrics.counter(
                "tribridge_matrix_undecryptable_events",
                "Encrypted Matrix events the bridge could not decrypt (no room key, or a sender its trust setting refuses), not relayed",
                &self.network,
            ),
            undecryptable_reasons: std::sync::Mutex::new(HashMap::new()),
        };
        // A brand-new install takes its position before it joins, so that what is said right
        // after the join is relayed (and nothing before it).
        if let Err(end) = sync.take_first_position().await {
            return end;
        }
        self.status().connected();
        sync.join_missing().await;
        *self
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Live {
            client: client.clone(),
            rooms: sync.rooms.clone(),
        });
        let end = tokio::select! {
            end = sync.run() => end,
            () = self.context.shutdown.cancelled() => SessionEnd::Shutdown,
            () = self.relogin.notified() => SessionEnd::Lost("the access token was refused".into()),
        };
        // A refused token keeps session.json: the next login finds the stored session refused
        // (whoami) and logs in again with the same device id, so no new device appears.
        end
    }
}

/// A client of the network's homeserver, its stores in `dir/sdk`, its room-key sharing and
/// decryption per the configured `trust`.
async fn new_client(config: &MatrixConfig, dir: &Path) -> Result<Client, String> {
    let (recipients, senders) = match config.trust {
        Trust::AllDevices => (CollectStrategy::AllDevices, TrustRequirement::Untrusted),
        Trust::CrossSigned => (
            CollectStrategy::IdentityBasedStrategy,
            TrustRequirement::CrossSigned,
        ),
    };
    Client::builder()
        .homeserver_url(&config.homeserver)
        // The configured homeserver stays the one used: a login response's `well_known`
        // (which a fresh password login would otherwise adopt) does not move the client.
        .respect_login_well_known(false)
        // The SDK's low-memory store settings: a connection pool of one per physical core
        // (not four: 128 connections per store on a 32-core host), a 500 kB page cache per
        // connection (not 2 MiB) and a 2 MB WAL limit. A bridge's bot reads little of its
        // state back; BENCHMARKS.md ("Memory and the release build") has the figures.
        .sqlite_store_with_config_and_cache_path(
            SqliteStoreConfig::with_low_memory_config(dir.join("sdk")),
            None::<&Path>,
        )
        .with_room_key_recipient_strategy(recipients)
        .with_decryption_settings(DecryptionSettings {
            sender_device_trust_requirement: senders,
        })
        // Retries are ours: the outbox retries deliveries, the sync loop reconnects.
        .request_config(
            RequestConfig::new()
                .disable_retry()
                .timeout(Duration::from_secs(30)),
        )
        .build()
        .await
        .map_err(|error| format!("cannot build the Matrix client: {}", error_chain(&error)))
}

/// A logged-in client of network `network`, its state in `dir`: the stored session if the
/// server still takes it, else a new login.
pub(super) async fn login(
    network: &str,
    config: &MatrixConfig,
    dir: &Path,
) -> Result<Client, String> {
    let session_file = dir.join("session.json");
    let configured_user = UserId::parse(&config.user)
        .map_err(|error| format!("bad user id {}: {error}", config.user))?;
    let stored: Option<MatrixSession> = std::fs::read_to_string(&session_file)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .filter(|session: &MatrixSession| session.meta.user_id == configured_user);
    let mut device_id = None;
    if let Some(session) = stored {
        device_id = Some(session.meta.device_id.clone());
        let client = new_client(config, dir).await?;
        client
            .restore_session(session)
            .await
            .map_err(|error| format!("cannot restore the session: {}", error_chain(&error)))?;
        match client.whoami().await {
            Ok(_) => {
                tracing::info!(network = %network, user = %config.user, "Matrix session restored.");
                return Ok(client);
            }
            Err(error)
                if matches!(
                    error.client_api_error_kind(),
                    Some(ErrorKind::UnknownToken(_))
                ) =>
            {
                tracing::warn!(network = %network, "The stored Matrix session was refused; logging in again.");
            }
            Err(error) => {
                return Err(format!(
                    "cannot reach the homeserver: {}",
                    error_chain(&error)
                ));
            }
        }
    }
    let client = new_client(config, dir).await?;
    if let Some(password) = &config.password {
        let mut login = client
            .matrix_auth()
            .login_username(&configured_user, password.expose())
            .initial_device_display_name(&config.device_name);
        if let Some(device_id) = &device_id {
            login = login.device_id(device_id.as_str());
        }
        login.send().await.map_err(|error| {
            format!(
                "Matrix login as {} failed: {}",
                config.user,
                error_chain(&error)
            )
        })?;
        tracing::info!(network = %network, user = %config.user, "Logged in to Matrix.");
    } else if let Some(token) = &config.access_token {
        // The token names its device; ask the server which one. The probe keeps nothing (no
        // store): a crypto store opened for a made-up device would refuse the real one after.
        let probe = Client::builder()
            .homeserver_url(&config.homeserver)
            .respect_login_well_known(false)
            .request_config(
                RequestConfig::new()
                    .disable_retry()
                    .timeout(Duration::from_secs(30)),
            )
            .build()
            .await
            .map_err(|error| format!("cannot build the Matrix client: {}", error_chain(&error)))?;
        probe
            .restore_session(MatrixSession {
                meta: matrix_sdk::SessionMeta {
                    user_id: configured_user.clone(),
                    device_id: "TRIBRIDGE".into(),
                },
                tokens: matrix_sdk::SessionTokens {
                    access_token: token.expose().to_owned(),
                    refresh_token: None,
                },
            })
            .await
            .map_err(|error| error_chain(&error))?;
        let whoami = probe.whoami().await.map_err(|error| {
            format!(
                "the configured access token was refused: {}",
                error_chain(&error)
            )
        })?;
        drop(probe);
        client
            .restore_session(MatrixSession {
                meta: matrix_sdk::SessionMeta {
                    user_id: whoami.user_id,
                    device_id: whoami.device_id.unwrap_or_else(|| "TRIBRIDGE".into()),
                },
                tokens: matrix_sdk::SessionTokens {
                    access_token: token.expose().to_owned(),
                    refresh_token: None,
                },
            })
            .await
            .map_err(|error| error_chain(&error))?;
    } else if let Some(as_token) = config.appservice.as_ref().and_then(|a| a.as_token.as_ref()) {
        let session = appservice_login(config, as_token, device_id.as_deref()).await?;
        client
            .restore_session(session)
            .await
            .map_err(|error| format!("cannot use the new session: {}", error_chain(&error)))?;
        tracing::info!(network = %network, user = %config.user, "Logged in to Matrix as a user of the application service (m.login.application_service, no password).");
    } else {
        return Err("no password or access token configured".into());
    }
    if let Some(session) = client.matrix_auth().session() {
        save_session(&session_file, &session);
    }
    Ok(client)
}

/// A session of a user of the application service (its encryption bot): the user registered in
/// the service's name, then a login of type `m.login.application_service`, both authorised by
/// the `as_token` (no password), on `device_id` when one was kept, so that a new login keeps the
/// device and its keys.
async fn appservice_login(
    config: &MatrixConfig,
    as_token: &crate::vocab::Secret,
    device_id: Option<&matrix_sdk::ruma::DeviceId>,
) -> Result<MatrixSession, String> {
    let mut body = serde_json::json!({
        "type": "m.login.application_service",
        "identifier": {"type": "m.id.user", "user": config.user},
        "initial_device_display_name": config.device_name,
    });
    if let Some(device_id) = device_id {
        body["device_id"] = device_id.as_str().into();
    }
    let failed = |reason: String| format!("Matrix login as {} failed: {reason}", config.user);
    let http = reqwest::Client::new();
    // Synapse (1.163) keeps no account row for a user of the service until it is registered
    // (not even for `sender_localpart`'s), and refuses the token of a login made before that
    // (M_UNKNOWN_TOKEN): register it first (`M_USER_IN_USE` once it exists).
    let localpart = config
        .user
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default();
    let registered = http
        .post(format!("{}/_matrix/client/v3/register", config.homeserver))
        .bearer_auth(as_token.expose())
        .timeout(Duration::from_secs(30))
        .json(&serde_json::json!({
            "type": "m.login.application_service",
            "username": localpart,
            "inhibit_login": true,
        }))
        .send()
        .await
        .map_err(|error| failed(error_chain(&error)))?;
    if !registered.status().is_success() {
        let status = registered.status();
        let answer: Value = registered.json().await.unwrap_or(Value::Null);
        if answer["errcode"] != "M_USER_IN_USE" {
            return Err(failed(format!(
                "registering the bot: HTTP {status} {}: {}",
                answer["errcode"].as_str().unwrap_or_default(),
                answer["error"].as_str().unwrap_or_default()
            )));
        }
    }
    let response = http
        .post(format!("{}/_matrix/client/v3/login", config.homeserver))
        .bearer_auth(as_token.expose())
        .timeout(Duration::from_secs(30))
        .json(&body)
        .send()
        .await
        .map_err(|error| failed(error_chain(&error)))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let (Some(user_id), Some(access_token), Some(device_id)) = (
        answer["user_id"].as_str(),
        answer["access_token"].as_str(),
        answer["device_id"].as_str(),
    ) else {
        return Err(failed(format!(
            "HTTP {status} {}: {}",
            answer["errcode"].as_str().unwrap_or_default(),
            answer["error"].as_str().unwrap_or_default()
        )));
    };
    Ok(MatrixSession {
        meta: matrix_sdk::SessionMeta {
            user_id: UserId::parse(user_id).map_err(|error| failed(error.to_string()))?,
            device_id: device_id.into(),
        },
        tokens: matrix_sdk::SessionTokens {
            access_token: access_token.to_owned(),
            refresh_token: None,
        },
    })
}

/// A filter that asks for no rooms and nothing else that can be left out: a sync with it only
/// does what end-to-end encryption needs (publishing the device's keys, to-device messages).
pub(super) fn nothing_filter() -> Filter {
    let mut room = RoomFilter::default();
    room.rooms = Some(Vec::new());
    let mut definition = FilterDefinition::default();
    definition.room = room;
    definition.presence = matrix_sdk::ruma::api::client::filter::Filter::ignore_all();
    definition.account_data = matrix_sdk::ruma::api::client::filter::Filter::ignore_all();
    Filter::FilterDefinition(definition)
}

/// Drop what the bot was not there for: every event before its own join in this batch, and
/// every event the homeserver marks as seen from outside the room (`unsigned.membership`,
/// Matrix 1.11, the requesting user's membership at the event). The second also holds when the
/// join itself is not in the batch, as when the sync leaves out the bot's own events.
fn after_own_join(own: &str, events: Vec<Value>) -> Vec<Value> {
    let join_at = events.iter().rposition(|event| {
        event["type"] == "m.room.member"
            && event["state_key"].as_str() == Some(own)
            && event["content"]["membership"] == "join"
            && event["unsigned"]["prev_content"]["membership"] != "join"
    });
    let after = match join_at {
        Some(index) => index + 1,
        None => 0,
    };
    events
        .into_iter()
        .skip(after)
        .filter(|event| {
            event["unsigned"]["membership"]
                .as_str()
                .is_none_or(|membership| membership == "join")
        })
        .collect()
}

fn save_session(path: &std::path::Path, session: &MatrixSession) {
    let Ok(text) = serde_json::to_string(session) else {
        return;
    };
    let result = crate::connector::write_state_file(path, text.as_bytes());
    if let Err(error) = result {
        tracing::warn!(path = %path.display(), error = %error, "Could not save the Matrix session; the next start logs in again.");
    }
}

/// Whether the bot is writing: its count of writes was seen to move less than [`BUSY_POLL`]
/// ago. The sync looks at the count once per sync, so a stream of writes keeps it busy, and a
/// whole interval without any ends it.
#[derive(Debug)]
struct Writing {
    seen: u64,
    moved_at: Option<Instant>,
}

impl Writing {
    fn new(count: u64) -> Self {
        Writing {
            seen: count,
            moved_at: None,
        }
    }

    fn busy(&mut self, count: u64, now: Instant) -> bool {
        if count != self.seen {
            self.seen = count;
            self.moved_at = Some(now);
        }
        self.moved_at
            .is_some_and(|at| now.saturating_duration_since(at) < BUSY_POLL)
    }
}

/// The state of one sync session.
struct SyncState<'a> {
    task: &'a MatrixTask,
    /// The account's cross-signing identity, looked at after each sync.
    identity: Identity<'a>,
    /// Encrypted events that could not be decrypted, counted as they are dropped.
    undecryptable: Arc<std::sync::atomic::AtomicI64>,
    /// event id → why the SDK could not decrypt it, for the log line of its drop.
    undecryptable_reasons: std::sync::Mutex<HashMap<String, String>>,
    client: Client,
    own_user: OwnedUserId,
    /// configured channel → room id, for joined rooms
    rooms: HashMap<String, OwnedRoomId>,
    /// configured channels
    wanted: Vec<String>,
    next_join_attempt: Instant,
    /// Rooms this session joined whose join no sync has shown yet. While there are any, the
    /// sync asks for the bot's own events too, so that its join marks where history ends.
    awaiting_join: HashSet<OwnedRoomId>,
}

impl SyncState<'_> {
    fn network(&self) -> &str {
        &self.task.network
    }

    /// Does this session read and relay `room_id`?
    fn in_scope(&self, room_id: &RoomId) -> bool {
        self.task.scope.as_ref().is_none_or(|scope| {
            scope
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(room_id.as_str())
        })
    }

    fn publish_rooms(&self) {
        self.task.status().joined_only(self.rooms.keys());
        if let Some(live) = self
            .task
            .live
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
        {
            live.rooms.clone_from(&self.rooms);
        }
    }

    /// The configured channel a room id belongs to: a room joined in this session, or one the
    /// bot is in already whose id or canonical alias is configured (so that a join call that
    /// failed this time does not make its events pass unseen while the position moves on).
    fn channel_of(&mut self, room_id: &RoomId) -> Option<String> {
        if let Some((channel, _)) = self
            .rooms
            .iter()
            .find(|(_, id)| id.as_str() == room_id.as_str())
        {
            return Some(channel.clone());
        }
        if let Some(scope) = &self.task.scope {
            let channel = scope
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(room_id.as_str())
                .cloned()?;
            self.rooms.insert(channel.clone(), room_id.to_owned());
            self.publish_rooms();
            return Some(channel);
        }
        let room = self.client.get_room(room_id)?;
        let alias = room.canonical_alias().map(|a| a.to_string());
        let channel = self
            .wanted
            .iter()
            .find(|c| c.as_str() == room_id.as_str() || alias.as_deref() == Some(c.as_str()))?
            .clone();
        self.rooms.insert(channel.clone(), room_id.to_owned());
        self.publish_rooms();
        Some(channel)
    }

    /// On a brand-new install (no stored position): sync once without waiting and store the
    /// position, relaying nothing of what came before.
    async fn take_first_position(&mut self) -> Result<(), SessionEnd> {
        let stored = self
            .cursor()
            .await
            .map_err(|reason| SessionEnd::Lost(format!("cannot read the sync cursor: {reason}")))?;
        if stored.is_some() {
            return Ok(());
        }
        tracing::info!(network = %self.network(), "First start on this network: taking the current position; earlier history is not relayed.");
        let settings = SyncSettings::default()
            .filter(Self::filter(None))
            .timeout(Duration::ZERO);
        let response =
            self.client.sync_once(settings).await.map_err(|error| {
                SessionEnd::Lost(format!("sync failed: {}", error_chain(&error)))
            })?;
        for room_id in response.rooms.invited.keys() {
            self.consider_invite(room_id).await;
        }
        self.set_cursor(response.next_batch)
            .await
            .map_err(|reason| SessionEnd::Lost(format!("cannot store the sync cursor: {reason}")))
    }

    /// Join every configured room not joined yet; say clearly which cannot be joined.
    async fn join_missing(&mut self) {
        let missing: Vec<String> = self
            .wanted
            .iter()
            .filter(|channel| !self.rooms.contains_key(*channel))
            .cloned()
            .collect();
        for channel in missing {
            let Ok(target) = RoomOrAliasId::parse(&channel) else {
                tracing::error!(network = %self.network(), room = %channel, "Not a room id or alias; it is never joined.");
                continue;
            };
            match self.client.join_room_by_id_or_alias(&target, &[]).await {
                Ok(room) => {
                    tracing::info!(network = %self.network(), room = %channel, room_id = %room.room_id(), "Joined Matrix room.");
                    if self.in_scope(room.room_id()) {
                        self.awaiting_join.insert(room.room_id().to_owned());
                    }
                    self.rooms.insert(channel, room.room_id().to_owned());
                }
                Err(error) => {
                    tracing::warn!(network = %self.network(), room = %channel, error = %error_chain(&error), retry_s = JOIN_RETRY.as_secs(), "Cannot join Matrix room (is it public, or is the bot invited?); trying again later and on invite.");
                }
            }
        }
        self.next_join_attempt = Instant::now() + JOIN_RETRY;
        self.publish_rooms();
    }

    /// Accept an invite when it is to a configured room (by id or by its canonical alias).
    /// Follow a reload's channels on this session: a room no gateway links any more is no
    /// longer relayed or written to, but the bot stays a member (a bridge does not leave rooms
    /// on a configuration change: people there keep their bridge, and linking the room again
    /// needs no new invite); a new room is joined as at start, and relayed from the join on.
    async fn follow_channels(&mut self, wanted: Vec<String>) {
        if wanted == self.wanted {
            return;
        }
        let removed: Vec<String> = self
            .rooms
            .keys()
            .filter(|channel| !wanted.contains(*channel))
            .cloned()
            .collect();
        for channel in removed {
            if let Some(room_id) = self.rooms.remove(&channel) {
                self.awaiting_join.remove(&room_id);
                tracing::info!(network = %self.network(), room = %channel, room_id = %room_id, "No gateway links this room any more: it is not relayed; the bot stays a member.");
            }
        }
        let added = wanted.iter().any(|channel| !self.wanted.contains(channel));
        self.wanted = wanted;
        self.publish_rooms();
        if added {
            self.join_missing().await;
        }
    }

    async fn consider_invite(&mut self, room_id: &RoomId) {
        if self.task.scope.is_some() {
            // The application service joins a scoped session's account where it is needed.
            return;
        }
        let Some(room) = self.client.get_room(room_id) else {
            return;
        };
        let alias = room.canonical_alias().map(|a| a.to_string());
        let alt_aliases: Vec<String> = room.alt_aliases().iter().map(ToString::to_string).collect();
        let channel = self.wanted.iter().find(|channel| {
            channel.as_str() == room_id.as_str()
                || alias.as_deref() == Some(channel.as_str())
                || alt_aliases.iter().any(|a| a == *channel)
        });
        let Some(channel) = channel.cloned() else {
            tracing::info!(network = %self.network(), room_id = %room_id, "Ignoring an invite to a room that is not configured.");
            return;
        };
        match room.join().await {
            Ok(()) => {
                tracing::info!(network = %self.network(), room = %channel, room_id = %room_id, "Accepted the invite to a configured room.");
                self.awaiting_join.insert(room_id.to_owned());
                self.rooms.insert(channel, room_id.to_owned());
                self.publish_rooms();
            }
            Err(error) => {
                tracing::warn!(network = %self.network(), room = %channel, error = %error_chain(&error), "Cannot accept the invite.");
            }
        }
    }

    /// What the bridge syncs: room timelines and state, and what end-to-end encryption needs
    /// (to-device messages and device lists, which no filter removes). Presence, typing, read
    /// receipts and account data are left out: the bridge relays none of them, and each would
    /// wake its sync and cost the homeserver a response (Synapse skips computing what a
    /// filter blocks entirely).
    ///
    /// With `quiet_as` the bot's own events are left out of the timelines too: the bridge
    /// never relays them, so the polls while it writes carry none of its messages (less for the
    /// homeserver to send and for the bridge to parse). Room state still carries the bot's own
    /// membership. The long-poll asks for the bot's own events: its first write must end it.
    fn filter(quiet_as: Option<&UserId>) -> Filter {
        let mut timeline = RoomEventFilter::default();
        timeline.limit = Some(UInt::from(TIMELINE_LIMIT));
        if let Some(own) = quiet_as {
            timeline.not_senders = vec![own.to_owned()];
        }
        let mut room = RoomFilter::default();
        room.timeline = timeline;
        room.ephemeral = RoomEventFilter::ignore_all();
        room.account_data = RoomEventFilter::ignore_all();
        let mut definition = FilterDefinition::default();
        definition.room = room;
        definition.presence = matrix_sdk::ruma::api::client::filter::Filter::ignore_all();
        definition.account_data = matrix_sdk::ruma::api::client::filter::Filter::ignore_all();
        Filter::FilterDefinition(definition)
    }

    async fn cursor(&self) -> Result<Option<String>, String> {
        let store = Arc::clone(&self.task.context.store);
        let network = self.network().to_owned();
        tokio::task::spawn_blocking(move || store.cursor(&network, SYNC_CURSOR))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())
    }

    async fn set_cursor(&self, value: String) -> Result<(), String> {
        let store = Arc::clone(&self.task.context.store);
        let network = self.network().to_owned();
        tokio::task::spawn_blocking(move || store.set_cursor(&network, SYNC_CURSOR, &value))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())
    }

    async fn run(&mut self) -> SessionEnd {
        let mut since = match self.cursor().await {
            Ok(since) => since,
            Err(reason) => {
                return SessionEnd::Lost(format!("cannot read the sync cursor: {reason}"));
            }
        };
        let writes = Arc::clone(&self.task.writes);
        let mut writing = Writing::new(writes.load(Ordering::Relaxed));
        // When the last sync began.
        let mut started = Instant::now();
        // The rooms a reload adds or removes are followed on this session (a scoped session's
        // rooms are the application service's to follow). A change made while the session
        // began is followed by difference, so seeing it again does nothing.
        let mut channel_updates = self.task.context.channel_updates.clone();
        if self.task.scope.is_none() {
            let wanted = channel_updates.borrow_and_update().clone();
            self.follow_channels(wanted).await;
        }
        loop {
            if Instant::now() >= self.next_join_attempt && self.rooms.len() < self.wanted.len() {
                self.join_missing().await;
            }
            // While the bot writes, no long-poll waits at the homeserver: every event wakes a
            // waiting sync, and the homeserver computes the answer again from its start, even
            // when the filter leaves nothing to answer. So the sync polls, every BUSY_POLL,
            // and long-polls again once a whole interval went by without writes. The long-poll
            // takes the bot's own events too, so that its first write ends it.
            let busy = writing.busy(writes.load(Ordering::Relaxed), Instant::now());
            if busy {
                tokio::time::sleep_until(started + BUSY_POLL).await;
            }
            // Quiet only once every join of this session has been seen in a sync.
            let quiet_as =
                (busy && self.awaiting_join.is_empty()).then_some(self.own_user.as_ref());
            let mut settings = SyncSettings::default()
                .filter(Self::filter(quiet_as))
                .timeout(if since.is_some() && !busy {
                    SYNC_TIMEOUT
                } else {
                    Duration::ZERO
                });
            started = Instant::now();
            if let Some(token) = &since {
                settings = settings.token(token.clone());
            }
            // A reload that adds a room joins it while the long-poll waits: the join wakes
            // the sync, whose answer carries the new room from the join on.
            let client = self.client.clone();
            let sync = client.sync_once(settings);
            tokio::pin!(sync);
            let answer = loop {
                tokio::select! {
                    answer = &mut sync => break answer,
                    Ok(()) = channel_updates.changed(), if self.task.scope.is_none() => {
                        let wanted = channel_updates.borrow_and_update().clone();
                        self.follow_channels(wanted).await;
                    }
                }
            };
            let response = match answer {
                Ok(response) => response,
                Err(error) => {
                    let reason = error_chain(&error);
                    if matches!(
                        error.client_api_error_kind(),
                        Some(ErrorKind::UnknownToken(_))
                    ) {
                        return SessionEnd::Lost(format!("M_UNKNOWN_TOKEN: {reason}"));
                    }
                    return SessionEnd::Lost(format!("sync failed: {reason}"));
                }
            };
            for room_id in response.rooms.joined.keys() {
                self.awaiting_join.remove(room_id);
            }
            for room_id in response.rooms.invited.keys() {
                self.consider_invite(room_id).await;
            }
            if let Some(previous) = &since {
                for (room_id, update) in &response.rooms.joined {
                    if !self.in_scope(room_id) {
                        continue;
                    }
                    let Some(channel) = self.channel_of(room_id) else {
                        continue;
                    };
                    let mut events: Vec<Value> = Vec::new();
                    if update.timeline.limited
                        && let Some(prev_batch) = &update.timeline.prev_batch
                    {
                        match self.backfill(room_id, prev_batch, previous).await {
                            Ok(mut older) => events.append(&mut older),
                            Err(reason) => return SessionEnd::Lost(reason),
                        }
                    }
                    events.extend(
                        update
                            .timeline
                            .events
                            .iter()
                            .filter_map(|event| self.event_json(event)),
                    );
                    let events = after_own_join(self.own_user.as_str(), events);
                    for event in events {
                        if let Err(reason) = self.relay(room_id, &channel, &event).await {
                            return SessionEnd::Lost(reason);
                        }
                    }
                }
            }
            // Reasons of undecryptable events left out (before the bot's join) are not needed.
            self.undecryptable_reasons
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            // The SDK read the account's keys during the sync: a changed identity shows now.
            let client = self.client.clone();
            self.identity.watch(&client).await;
            // Every event before `next_batch` is committed: only now may the position move.
            if let Err(reason) = self.set_cursor(response.next_batch.clone()).await {
                return SessionEnd::Lost(format!("cannot store the sync cursor: {reason}"));
            }
            since = Some(response.next_batch);
        }
    }

    /// The events of a limited timeline that the sync left out: `/messages` backwards from
    /// `prev_batch` down to the previous position, oldest first.
    async fn backfill(
        &self,
        room_id: &RoomId,
        prev_batch: &str,
        previous: &str,
    ) -> Result<Vec<Value>, String> {
        let Some(room) = self.client.get_room(room_id) else {
            return Ok(Vec::new());
        };
        let mut older: Vec<Value> = Vec::new();
        let mut from = prev_batch.to_owned();
        loop {
            let mut options = MessagesOptions::backward().from(from.as_str());
            options.to = Some(previous.to_owned());
            options.limit = UInt::from(100u32);
            let page = room.messages(options).await.map_err(|error| {
                format!("cannot fetch missed messages: {}", error_chain(&error))
            })?;
            let empty = page.chunk.is_empty();
            older.extend(page.chunk.iter().filter_map(|event| self.event_json(event)));
            match page.end {
                Some(end) if !empty && end != from => from = end,
                _ => break,
            }
        }
        older.reverse();
        tracing::info!(network = %self.network(), room_id = %room_id, missed = older.len(), "Fetched messages a limited sync left out.");
        Ok(older)
    }

    /// A timeline event as JSON (as it arrived when it could not be decrypted; then why is
    /// kept for the log line of its drop).
    fn event_json(
        &self,
        event: &matrix_sdk::deserialized_responses::TimelineEvent,
    ) -> Option<Value> {
        use matrix_sdk::deserialized_responses::TimelineEventKind;
        if let TimelineEventKind::UnableToDecrypt { utd_info, .. } = &event.kind
            && let Some(event_id) = event.event_id()
        {
            self.undecryptable_reasons
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(event_id.to_string(), format!("{:?}", utd_info.reason));
        }
        event.raw().deserialize_as::<Value>().ok()
    }

    /// Normalise one timeline event and commit it. `Err` only when the store failed.
    async fn relay(&self, room_id: &RoomId, channel: &str, event: &Value) -> Result<(), String> {
        let Some(sender) = event["sender"].as_str() else {
            return Ok(());
        };
        if sender == self.own_user.as_str() {
            // Layer one of echo suppression: nothing the bot's account says is relayed, even
            // when it arrives before the send call returned.
            return Ok(());
        }
        if event["type"] == "m.room.encrypted" {
            let event_id = event["event_id"].as_str().unwrap_or_default();
            let reason = self
                .undecryptable_reasons
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(event_id)
                .unwrap_or_else(|| "unknown".to_owned());
            self.undecryptable.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(network = %self.network(), room_id = %room_id, event_id, sender, reason = %reason, trust = ?self.task.config.trust, "An encrypted event could not be decrypted (no room key for the bridge's device, or a sender device the trust setting refuses); it is not relayed.");
            return Ok(());
        }
        let Some(mut body) = content::inbound(event, self.task.config.relay_membership) else {
            if content::was_redacted(event) {
                // Taken back before the bot's sync saw it: the redaction that follows names
                // an event no other network has.
                tracing::debug!(network = %self.network(), room_id = %room_id, event_id = ?event["event_id"].as_str(), "A message redacted before it was seen is not relayed.");
            }
            return Ok(());
        };
        if let EventBody::Text { attachments, .. } = &mut body
            && let Some(attachment) = attachments.first_mut()
        {
            use matrix_sdk::ruma::events::room::{EncryptedFile, MediaSource};
            // A plain file has `url`; a file in an encrypted room has `file` (the URL and key).
            let source = match event["content"]["url"].as_str() {
                Some(url) => Some(MediaSource::Plain(url.into())),
                None => serde_json::from_value::<EncryptedFile>(event["content"]["file"].clone())
                    .ok()
                    .map(|file| MediaSource::Encrypted(Box::new(file))),
            };
            if let Some(source) = source {
                self.fetch_file(source, attachment).await;
            }
        }
        if let EventBody::Text { text, .. } | EventBody::Edit { text, .. } = &mut body {
            super::mentions::inbound(
                text,
                self.task.context.router.people(),
                self.network(),
                self.own_user.as_str(),
            );
        }
        let display_name = self.display_name(room_id, sender, event).await;
        if self.task.context.files.serves_links() {
            self.store_avatar(room_id, sender).await;
        }
        let inbound = Inbound {
            origin: ChannelRef::new(self.network(), channel),
            remote_id: event["event_id"].as_str().map(ToOwned::to_owned),
            permalink: event["event_id"].as_str().map(|event_id| {
                crate::richtext::long_text::matrix_event_permalink(room_id.as_str(), event_id)
            }),
            author: crate::model::Author {
                id: sender.to_owned(),
                display_name,
            },
            timestamp_ms: event["origin_server_ts"].as_i64().unwrap_or_else(now_ms),
            body,
        };
        match self.task.context.router.submit(inbound).await {
            Ok(_) => Ok(()),
            Err(error) => Err(format!("cannot store an inbound event: {error}")),
        }
    }

    /// Copy a file into the bridge's file store (within the size limit); on failure it is
    /// announced by name and size, and the reason logged.
    async fn fetch_file(
        &self,
        source: matrix_sdk::ruma::events::room::MediaSource,
        attachment: &mut crate::model::Attachment,
    ) {
        use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
        let files = &self.task.context.files;
        if attachment
            .size
            .is_some_and(|size| !files.store.accepts(size))
        {
            tracing::info!(network = %self.network(), file = %attachment.name, size = attachment.size, "A file is over max_file_size_mb; it is announced, not copied.");
            return;
        }
        let mxc = match &source {
            matrix_sdk::ruma::events::room::MediaSource::Plain(uri) => uri.to_string(),
            matrix_sdk::ruma::events::room::MediaSource::Encrypted(file) => file.url.to_string(),
        };
        let mxc = mxc.as_str();
        let request = MediaRequestParameters {
            source,
            format: MediaFormat::File,
        };
        let bytes = match self.client.media().get_media_content(&request, false).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::warn!(network = %self.network(), mxc, error = %error, "Cannot download a Matrix file; it is announced, not copied.");
                return;
            }
        };
        attachment.size = Some(bytes.len() as u64);
        match files.put(bytes).await {
            Ok(hash) => attachment.stored = Some(hash),
            Err(error) => {
                tracing::warn!(network = %self.network(), mxc, error = %error, "A Matrix file was not copied; it is announced by name and size.");
            }
        }
    }

    /// Keep the sender's picture when it changed (within the file size limit), for destinations that
    /// show the sender's picture.
    async fn store_avatar(&self, room_id: &RoomId, sender: &str) {
        use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
        use matrix_sdk::ruma::events::room::MediaSource;
        let (Some(room), Ok(user)) = (self.client.get_room(room_id), UserId::parse(sender)) else {
            return;
        };
        let Ok(Some(member)) = room.get_member_no_sync(&user).await else {
            return;
        };
        let Some(mxc) = member.avatar_url().map(ToOwned::to_owned) else {
            return;
        };
        let known = self
            .task
            .avatars
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(sender)
            .is_some_and(|stored| stored.as_str() == mxc.as_str());
        if known {
            return;
        }
        let request = MediaRequestParameters {
            source: MediaSource::Plain(mxc.clone()),
            format: MediaFormat::File,
        };
        let picture = match self.client.media().get_media_content(&request, true).await {
            Ok(picture) => picture,
            Err(error) => {
                tracing::debug!(network = %self.network(), sender, error = %error, "Cannot fetch a profile picture.");
                return;
            }
        };
        match self
            .task
            .context
            .files
            .put_avatar(self.network(), sender, picture)
            .await
        {
            Ok(()) => {
                self.task
                    .avatars
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(sender.to_owned(), mxc.to_string());
            }
            Err(error) => {
                tracing::debug!(network = %self.network(), sender, error = %error, "A profile picture was not kept.");
            }
        }
    }

    async fn display_name(&self, room_id: &RoomId, sender: &str, event: &Value) -> String {
        let localpart = sender
            .trim_start_matches('@')
            .split(':')
            .next()
            .unwrap_or(sender)
            .to_owned();
        // A member event carries the new name itself.
        if event["type"] == "m.room.member"
            && let Some(name) = event["content"]["displayname"].as_str()
            && !name.is_empty()
        {
            return name.to_owned();
        }
        let (Some(room), Ok(user)) = (self.client.get_room(room_id), UserId::parse(sender)) else {
            return localpart;
        };
        match room.get_member_no_sync(&user).await {
            Ok(Some(member)) => member
                .display_name()
                .filter(|name| !name.is_empty())
                .map_or(localpart, ToOwned::to_owned),
            _ => localpart,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(id: &str, membership: Option<&str>) -> Value {
        let mut event = json!({
            "type": "m.room.message",
            "event_id": id,
            "sender": "@alice:localhost",
            "content": {"msgtype": "m.text", "body": id},
        });
        if let Some(membership) = membership {
            event["unsigned"] = json!({ "membership": membership });
        }
        event
    }

    fn ids(events: &[Value]) -> Vec<&str> {
        events
            .iter()
            .map(|event| event["event_id"].as_str().unwrap_or_default())
            .collect()
    }

    #[test]
    fn history_before_the_bots_join_in_the_batch_is_dropped() {
        let join = json!({
            "type": "m.room.member",
            "event_id": "$join",
            "sender": "@bot:localhost",
            "state_key": "@bot:localhost",
            "content": {"membership": "join"},
        });
        let events = vec![message("$before", None), join, message("$after", None)];
        assert_eq!(ids(&after_own_join("@bot:localhost", events)), ["$after"]);
    }

    #[test]
    fn a_profile_change_of_the_bot_is_not_taken_for_its_join() {
        let rename = json!({
            "type": "m.room.member",
            "event_id": "$rename",
            "sender": "@bot:localhost",
            "state_key": "@bot:localhost",
            "content": {"membership": "join", "displayname": "Bridge"},
            "unsigned": {"prev_content": {"membership": "join"}},
        });
        let events = vec![message("$one", None), rename, message("$two", None)];
        assert_eq!(
            ids(&after_own_join("@bot:localhost", events)),
            ["$one", "$rename", "$two"]
        );
    }

    #[test]
    fn without_the_join_in_the_batch_the_servers_membership_marks_history() {
        // The sync leaves out the bot's own events; the homeserver still says, per event,
        // whether the bot was in the room (Matrix 1.11 `unsigned.membership`).
        let events = vec![
            message("$left", Some("leave")),
            message("$invited", Some("invite")),
            message("$joined", Some("join")),
            message("$unmarked", None),
        ];
        assert_eq!(
            ids(&after_own_join("@bot:localhost", events)),
            ["$joined", "$unmarked"]
        );
    }

    #[test]
    fn writes_make_the_sync_poll_until_an_interval_passes_without_any() {
        let start = Instant::now();
        let mut writing = Writing::new(7);
        assert!(!writing.busy(7, start), "no write yet");
        assert!(writing.busy(8, start), "a write");
        // The poll right after it, and the next ones while writes go on.
        assert!(writing.busy(8, start + Duration::from_millis(5)));
        assert!(writing.busy(12, start + BUSY_POLL));
        assert!(writing.busy(12, start + BUSY_POLL * 3 / 2));
        // A whole interval since the count last moved: long-poll again.
        assert!(!writing.busy(12, start + BUSY_POLL * 2));
        assert!(!writing.busy(12, start + BUSY_POLL * 10));
        assert!(writing.busy(13, start + BUSY_POLL * 11));
    }

    #[test]
    fn the_filter_asks_for_every_room_so_that_a_room_joined_later_wakes_the_sync() {
        let Filter::FilterDefinition(all) = SyncState::filter(None) else {
            panic!("an inline filter");
        };
        assert_eq!(all.room.rooms, None);
    }

    #[test]
    fn the_quiet_filter_leaves_out_only_the_bots_own_timeline_events() {
        let own = UserId::parse("@bot:localhost").expect("user id");
        let Filter::FilterDefinition(quiet) = SyncState::filter(Some(&own)) else {
            panic!("an inline filter");
        };
        assert_eq!(quiet.room.timeline.not_senders, vec![own.clone()]);
        assert!(quiet.room.state.not_senders.is_empty());
        let Filter::FilterDefinition(full) = SyncState::filter(None) else {
            panic!("an inline filter");
        };
        assert!(full.room.timeline.not_senders.is_empty());
        assert_eq!(full.room.timeline.limit, quiet.room.timeline.limit);
    }
}
