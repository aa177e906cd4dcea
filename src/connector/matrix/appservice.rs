//! `mode = "appservice"`: the bridge as an application service of its homeserver. People of
//! the other networks are ghost users (`ghosts`), events are pushed by the homeserver to the
//! transaction endpoint instead of polled with `/sync`.
//!
//! - **Registration**: [`registration`] gives the YAML the homeserver loads
//!   (`app_service_config_files`); tokens not in the configuration are generated once and kept
//!   in `state_dir/matrix-<network>.appservice-tokens` (mode 0600), read again at every start.
//! - **Inbound**: `PUT /_matrix/app/v1/transactions/{txnId}` with the `hs_token` (compared in
//!   constant time: 401 without one, 403 for a wrong one). Every event of a transaction is
//!   committed through the router before the 200; the transaction (id and a digest of its
//!   events) is then stored as the last one (when it relayed anything: one of only the bridge's
//!   own echoes would relay nothing again), and that transaction pushed again is answered 200
//!   without relaying it again. A crash between the commits and that record replays the
//!   transaction, and the store drops the events it has by event id. A transaction pushed while
//!   the bot still joins its rooms waits for the joins instead of being refused: a refusal puts
//!   Synapse into recovery, whose end can leave a transaction unsent.
//! - **Holes**: at the start the bridge pings the homeserver (`/_matrix/client/v1/appservice/
//!   {id}/ping`), so Synapse pushes what it held back at once rather than after its back-off.
//!   After the first transaction of a start, a refused transaction or a skipped transaction
//!   number, each room is read back (`/messages`) for events older than a pushed one that were
//!   never pushed (Synapse can leave one unsent when its recovery ends); those are committed
//!   late, once. `/_matrix/app/v1/users/{userId}` answers for ghosts, `/_matrix/app/v1/ping` pings.
//!   Events of the bridge's bot and of its ghosts are never relayed (echo layer one).
//! - **Outbound**: each delivery is sent by the ghost of its author (`user_id=` masquerading),
//!   with the delivery id as transaction id. A ghost is registered
//!   (`m.login.application_service`) the first time its person speaks, gets its display name
//!   (`ghost_displayname`, renamed when the person's name changes) and joins the room (invited
//!   by the bot when the room asks for it). A late delivery carries its original time as the
//!   event's timestamp (`ts=`), without a `[date]` prefix. Files are uploaded by the ghost.
//!   Joins and parts move the ghost's
//!   membership; they reach this network only with the origin's `relay_membership`.
//! - **Ghost names**: `ghost_format` sanitised ([`super::ghosts`]); a localpart another person
//!   has already is taken with `_2`, `_3`, …; the choice is kept in the store's cursors, so a
//!   person keeps their ghost across restarts and renames.
//! - **Encrypted rooms**: a ghost cannot encrypt (no device masquerading here), so an
//!   encrypted room is relayed by one bot as the bot mode does it: the sender shown by
//!   `remote_nick_format` and the per-message profile, on the bot mode's session (a matrix-sdk
//!   client with its `SQLite` crypto store in `state_dir/matrix-<network>/`, its device
//!   cross-signed by `super::identity`). That bot is not `sender_localpart`'s user, because
//!   Synapse refuses `/sync` to the service's own user (an end-to-end client needs it), but
//!   the **encryption bot** `<sender_localpart>.e2ee`, a user of the service's namespace
//!   (the registration names it), registered and logged in with the `as_token`
//!   (`m.login.application_service`, no password), and joined to each encrypted room here
//!   (invited by the bot where needed). It is in no other room (it stays in an encrypted room
//!   a reload unlinks, whose events it then skips), so a room it joins while its sync waits
//!   (a reload adds it) wakes the sync with the join; those rooms' events are read (decrypted)
//!   from it instead of the pushed transactions. It starts with the first encrypted room
//!   found (at the join, or when encryption is turned on): without encrypted rooms nothing
//!   syncs. Logged once per room.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::config::{AppserviceConfig, MatrixConfig};
use super::session::{MatrixTask, RoomScope};
use super::{MatrixHandle, content, ghosts};
use crate::connector::{
    BoxFuture, BuildContext, DeliverWhole, NetworkSettings, membership_text,
    supervisor::error_chain, with_file_lines,
};
use crate::model::{ChannelRef, Delivery, DeliveryAck, EventBody, Inbound, Membership, now_ms};
use crate::richtext::FormattedText;
use crate::richtext::html::MATRIX_NETWORK;
use crate::richtext::mention::map_mentions;
use crate::richtext::model::{Inline, Mention, MentionTarget};
use crate::vocab::{DeliveryError, Secret};

/// How often rooms the bot could not join are tried again.
const JOIN_RETRY: Duration = Duration::from_secs(10);

/// How long a transaction pushed while the bot still joins its rooms waits for the joins
/// before it is refused (the homeserver waits 60 s for an answer).
const HOLD_UNTIL_JOINED: Duration = Duration::from_secs(30);

/// The store cursor holding the last committed transaction (`<txn id>:<digest of its events>`).
const LAST_TXN: &str = "appservice-last-txn";

/// How long after a reason to look for holes (a start, a refused transaction, a gap in the
/// transaction numbers) the rooms are looked at: the homeserver's own retries come first.
const AUDIT_DELAY: Duration = Duration::from_secs(10);

/// The least time between two looks for holes.
const AUDIT_INTERVAL: Duration = Duration::from_mins(1);

/// Pages of 50 events read back per room and look.
const AUDIT_PAGES: usize = 4;

/// Errors of the registration command and of reading the tokens.
#[derive(Debug, thiserror::Error)]
pub enum AppserviceError {
    /// The network is not in the configuration, or is not a Matrix network in appservice mode.
    #[error("network `{0}` is not a Matrix network with `mode = \"appservice\"`")]
    NotAppservice(String),
    /// The stored tokens could not be read or written.
    #[error("cannot use the token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The file keeping the generated tokens of a network.
#[must_use]
pub fn tokens_path(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join(format!("matrix-{network}.appservice-tokens"))
}

/// The `as_token` and `hs_token`: the configured ones, else the stored ones, else (with
/// `create`) new ones, stored. `None` when neither is configured nor stored and not `create`.
pub fn tokens(
    network: &str,
    config: &AppserviceConfig,
    state_dir: &Path,
    create: bool,
) -> Result<Option<(Secret, Secret)>, AppserviceError> {
    let path = tokens_path(state_dir, network);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let value = |key: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(key))
                    .map(|v| Secret::new(v.trim()))
            };
            Some((value("as_token="), value("hs_token=")))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(AppserviceError::TokenFile { path, source }),
    };
    let (stored_bridge_token, stored_homeserver_token) = stored.unwrap_or((None, None));
    let as_token = config.as_token.clone().or(stored_bridge_token);
    let hs_token = config.hs_token.clone().or(stored_homeserver_token);
    if let (Some(as_token), Some(hs_token)) = (&as_token, &hs_token) {
        return Ok(Some((as_token.clone(), hs_token.clone())));
    }
    if !create {
        return Ok(None);
    }
    let as_token = as_token.unwrap_or_else(new_token);
    let hs_token = hs_token.unwrap_or_else(new_token);
    let text = format!(
        "as_token={}\nhs_token={}\n",
        as_token.expose(),
        hs_token.expose()
    );
    crate::connector::write_state_file(&path, text.as_bytes()).map_err(|source| {
        AppserviceError::TokenFile {
            path: path.clone(),
            source,
        }
    })?;
    Ok(Some((as_token, hs_token)))
}

fn new_token() -> Secret {
    let bytes: [u8; 32] = rand::random();
    Secret::new(bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    }))
}

/// The registration YAML of network `network` (`settings` its section), whose ghosts stand for
/// people of `others` (the ids of the other networks); generates and stores the tokens when
/// neither the configuration nor the state folder has them.
pub fn registration(
    network: &str,
    settings: &dyn NetworkSettings,
    others: &[String],
    state_dir: &Path,
) -> Result<String, AppserviceError> {
    let Some(config) = settings
        .as_any()
        .downcast_ref::<MatrixConfig>()
        .and_then(|c| c.appservice.as_ref())
    else {
        return Err(AppserviceError::NotAppservice(network.to_owned()));
    };
    let (as_token, hs_token) = tokens(network, config, state_dir, true)?
        .ok_or_else(|| AppserviceError::NotAppservice(network.to_owned()))?;
    let quoted = |text: &str| serde_json::Value::String(text.to_owned()).to_string();
    Ok(format!(
        "# The application-service registration of tribridge's network `{network}`: add this \
         file to the homeserver's\n# `app_service_config_files` and restart it.\n\
         id: {id}\nurl: {url}\nas_token: {as_token}\nhs_token: {hs_token}\n\
         sender_localpart: {sender}\nrate_limited: false\nnamespaces:\n  users:\n    \
         - exclusive: true\n      regex: {regex}\n    \
         - exclusive: true\n      regex: {encryption_bot}\n  aliases: []\n  rooms: []\n",
        id = quoted(&format!("tribridge-{network}")),
        url = quoted(&config.url),
        as_token = quoted(as_token.expose()),
        hs_token = quoted(hs_token.expose()),
        sender = quoted(&config.sender_localpart),
        regex = quoted(&ghosts::namespace_regex(
            &config.ghost_format,
            others,
            &config.server_name
        )),
        encryption_bot = quoted(&ghosts::exact_user_regex(
            &config.encryption_localpart(),
            &config.server_name
        )),
    ))
}

/// Do two tokens match? Compared as SHA-256 digests with a constant-time fold, so the time
/// taken says nothing about how much of the token was right.
fn same_token(given: &str, expected: &str) -> bool {
    let given = sha2::Sha256::digest(given.as_bytes());
    let expected = sha2::Sha256::digest(expected.as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// What the server, the handle and the room joiner share.
struct Shared {
    network: String,
    config: AppserviceConfig,
    relay_membership: bool,
    homeserver: String,
    http: reqwest::Client,
    as_token: Secret,
    hs_token: Secret,
    /// `@sender_localpart:server_name`.
    bot: String,
    /// The user that relays encrypted rooms with end-to-end encryption
    /// ([`AppserviceConfig::encryption_bot`]).
    encryption_bot: String,
    /// The ghosts known to this process (user ids); others are looked up in the store.
    known_ghosts: Mutex<HashSet<String>>,
    context: BuildContext,
    /// configured channel → room id, for rooms the bot is in.
    rooms: RwLock<HashMap<String, String>>,
    /// Set once every configured room was tried: until then a pushed transaction waits (up to
    /// [`HOLD_UNTIL_JOINED`]), so nothing of a room not joined yet is dropped as unbridged.
    rooms_tried: tokio::sync::watch::Sender<bool>,
    /// Joined rooms whose encryption was checked: deliveries wait for it.
    checked: Mutex<HashSet<String>>,
    /// Rooms with encryption on: relayed by the bot's end-to-end client, not by ghosts.
    encrypted: RoomScope,
    /// The delivery handle of the bot's end-to-end client (encrypted rooms).
    via_bot: MatrixHandle,
    /// Woken at the first encrypted room: the bot's end-to-end client starts.
    start_via_bot: tokio::sync::Notify,
    /// Woken when the homeserver may have left a transaction unsent (see [`Shared::audit`]).
    audit_wanted: tokio::sync::Notify,
    /// The highest numeric transaction id pushed since this process started.
    last_txn_number: Mutex<Option<u64>>,
    /// Set by the first transaction that relayed something since this process started.
    pushed_since_start: std::sync::atomic::AtomicBool,
    /// (origin network, author id) → the ghost, as far as this process set it up.
    ghosts: tokio::sync::Mutex<HashMap<(String, String), Ghost>>,
    /// (room id, user id) → display name, for inbound senders.
    names: Mutex<HashMap<(String, String), String>>,
}

/// A ghost as this process knows it.
#[derive(Default, Clone)]
struct Ghost {
    user_id: String,
    registered: bool,
    display_name: Option<String>,
    /// The SHA-256 of the picture last set as its avatar.
    avatar: Option<Vec<u8>>,
    /// When the stored picture looked at last was stored.
    avatar_stamp: Option<std::time::SystemTime>,
    /// Rooms it is a member of.
    joined: HashSet<String>,
}

/// The handle of an appservice network: deliveries sent by ghosts.
pub struct AppserviceHandle {
    shared: Arc<Shared>,
}

/// The task of an appservice network: the transaction endpoint and the bot's joins.
pub struct AppserviceTask {
    shared: Arc<Shared>,
    /// The bot's end-to-end session for encrypted rooms, run once the first one is found.
    via_bot: MatrixTask,
}

/// Build the handle and the task of a Matrix network in appservice mode. The tokens are read
/// here (configured or stored by `tribridge appservice-registration`); without them the task
/// logs an error and does nothing.
#[must_use]
pub fn build(
    network: &str,
    config: &MatrixConfig,
    appservice: &AppserviceConfig,
    context: BuildContext,
) -> (AppserviceHandle, AppserviceTask) {
    let tokens = match tokens(network, appservice, &context.state_dir, false) {
        Ok(Some(tokens)) => tokens,
        Ok(None) => {
            tracing::error!(
                network,
                "No as_token/hs_token configured or stored: run `tribridge appservice-registration` for this network and give its output to the homeserver."
            );
            (Secret::new(String::new()), Secret::new(String::new()))
        }
        Err(error) => {
            tracing::error!(network, error = %error, "Cannot read the application service's tokens.");
            (Secret::new(String::new()), Secret::new(String::new()))
        }
    };
    // Encrypted rooms: the bridge's bot with the bot mode's session, logged in with the
    // `as_token`, reading only the rooms in `encrypted`.
    let encrypted = RoomScope::default();
    let mut bot_config = config.clone();
    bot_config.user = appservice.encryption_bot();
    if let Some(bot) = bot_config.appservice.as_mut() {
        bot.as_token = Some(tokens.0.clone());
    }
    let (via_bot, via_bot_task) = super::session::build_scoped(
        network,
        bot_config,
        context.clone(),
        Some(Arc::clone(&encrypted)),
    );
    let shared = Arc::new(Shared {
        network: network.to_owned(),
        config: appservice.clone(),
        relay_membership: config.relay_membership,
        homeserver: config.homeserver.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_mins(1))
            .build()
            .unwrap_or_default(),
        as_token: tokens.0,
        hs_token: tokens.1,
        bot: format!(
            "@{}:{}",
            appservice.sender_localpart, appservice.server_name
        ),
        encryption_bot: appservice.encryption_bot(),
        known_ghosts: Mutex::new(HashSet::new()),
        context,
        rooms: RwLock::new(HashMap::new()),
        rooms_tried: tokio::sync::watch::Sender::new(false),
        checked: Mutex::new(HashSet::new()),
        encrypted,
        via_bot,
        start_via_bot: tokio::sync::Notify::new(),
        audit_wanted: tokio::sync::Notify::new(),
        last_txn_number: Mutex::new(None),
        pushed_since_start: std::sync::atomic::AtomicBool::new(false),
        ghosts: tokio::sync::Mutex::new(HashMap::new()),
        names: Mutex::new(HashMap::new()),
    });
    (
        AppserviceHandle {
            shared: Arc::clone(&shared),
        },
        AppserviceTask {
            shared,
            via_bot: via_bot_task,
        },
    )
}

/// A failed client-server request.
#[derive(Debug)]
struct HsError {
    status: Option<u16>,
    errcode: String,
    message: String,
    retry_after: Option<Duration>,
}

impl std::fmt::Display for HsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "HTTP {status} {}: {}", self.errcode, self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl HsError {
    fn into_delivery_error(self) -> DeliveryError {
        match self.status {
            Some(429) => DeliveryError::Retry {
                after: self.retry_after.or(Some(Duration::from_secs(1))),
                reason: self.to_string(),
            },
            Some(400..=499) if self.errcode != "M_UNKNOWN_TOKEN" => {
                DeliveryError::Permanent(self.to_string())
            }
            _ => DeliveryError::Retry {
                after: None,
                reason: self.to_string(),
            },
        }
    }
}

/// How a protocol is called in `m.bridge`.
fn protocol_name(protocol: &str) -> &str {
    match protocol {
        "irc" => "IRC",
        "mattermost" => "Mattermost",
        "matrix" => "Matrix",
        other => other,
    }
}

/// Percent-encode one path segment.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

impl Shared {
    /// Register the ghost `user_id` in the application service's namespace
    /// (`m.login.application_service`, no login); `M_USER_IN_USE` when it exists already.
    async fn register(&self, user_id: &str) -> Result<(), HsError> {
        let localpart = user_id
            .trim_start_matches('@')
            .split(':')
            .next()
            .unwrap_or_default();
        self.request(
            reqwest::Method::POST,
            "/_matrix/client/v3/register",
            None,
            None,
            Some(&json!({
                "type": "m.login.application_service",
                "username": localpart,
                "inhibit_login": true,
            })),
        )
        .await
        .map(drop)
    }

    /// A client-server request as the bot (`as_user` `None`) or as a ghost.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        as_user: Option<&str>,
        ts: Option<i64>,
        body: Option<&Value>,
    ) -> Result<Value, HsError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(user) = as_user {
            query.push(("user_id", user.to_owned()));
        }
        if let Some(ts) = ts {
            query.push(("ts", ts.to_string()));
        }
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.homeserver))
            .bearer_auth(self.as_token.expose())
            .query(&query);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|error| HsError {
            status: None,
            errcode: String::new(),
            message: error_chain(&error),
            retry_after: None,
        })?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        Err(HsError {
            status: Some(status.as_u16()),
            errcode: value["errcode"].as_str().unwrap_or_default().to_owned(),
            message: value["error"].as_str().unwrap_or_default().to_owned(),
            retry_after: value["retry_after_ms"].as_u64().map(Duration::from_millis),
        })
    }

    fn room_of(&self, channel: &str) -> Option<String> {
        self.rooms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(channel)
            .cloned()
    }

    fn channel_of(&self, room_id: &str) -> Option<String> {
        self.rooms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(_, id)| id.as_str() == room_id)
            .map(|(channel, _)| channel.clone())
    }

    /// Is `user` the bot or one of this bridge's ghosts (a localpart it chose, as stored)?
    async fn is_ours(&self, user: &str) -> Result<bool, String> {
        if user == self.bot
            || user == self.encryption_bot
            || self
                .known_ghosts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(user)
        {
            return Ok(true);
        }
        let Some((localpart, server)) = user.trim_start_matches('@').split_once(':') else {
            return Ok(false);
        };
        if server != self.config.server_name {
            return Ok(false);
        }
        let ours = self
            .cursor(format!("appservice-ghost-owner:{localpart}"))
            .await?
            .is_some();
        if ours {
            self.known_ghosts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(user.to_owned());
        }
        Ok(ours)
    }

    /// An encrypted room (of `channel`): from now on relayed by the encryption bot's
    /// end-to-end client (started with the first one), which joins it here (invited by the
    /// bot when the room asks for it); logged once per room.
    async fn note_encrypted(&self, room_id: &str, channel: &str) {
        let new = self
            .encrypted
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(room_id.to_owned(), channel.to_owned())
            .is_none();
        if !new {
            return;
        }
        tracing::info!(network = %self.network, room_id, encryption_bot = %self.encryption_bot, "This room is encrypted: ghosts cannot encrypt, so it is relayed by the bridge's encryption bot with end-to-end encryption (senders shown by remote_nick_format and the per-message profile), its events read from that bot's client instead of the pushed transactions.");
        match self.register(&self.encryption_bot).await {
            Ok(()) => {}
            Err(error) if error.errcode == "M_USER_IN_USE" => {}
            Err(error) => {
                tracing::error!(network = %self.network, encryption_bot = %self.encryption_bot, error = %error, "Cannot register the encryption bot; encrypted rooms are not relayed. A registration made before encrypted rooms were relayed does not name it: run `tribridge appservice-registration` again and give the homeserver its output.");
                return;
            }
        }
        if let Err(error) = self.join_as(&self.encryption_bot, room_id).await {
            tracing::error!(network = %self.network, room_id, encryption_bot = %self.encryption_bot, error = ?error, "The encryption bot cannot join the room (the bridge's bot needs the power to invite it); the room is not relayed until the next start.");
        }
        self.start_via_bot.notify_one();
    }

    /// Is `room_id` encrypted (relayed by the bot's end-to-end client)?
    fn is_via_bot(&self, room_id: &str) -> bool {
        self.encrypted
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(room_id)
    }

    async fn cursor(&self, key: String) -> Result<Option<String>, String> {
        let store = Arc::clone(&self.context.store);
        let network = self.network.clone();
        tokio::task::spawn_blocking(move || store.cursor(&network, &key))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())
    }

    async fn set_cursor(&self, key: String, value: String) -> Result<(), String> {
        let store = Arc::clone(&self.context.store);
        let network = self.network.clone();
        tokio::task::spawn_blocking(move || store.set_cursor(&network, &key, &value))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())
    }

    /// Follow the configured rooms until shutdown: join each as the bot (trying again those
    /// that could not be joined), and after a reload join the rooms it adds, as at start, and
    /// stop relaying those it removes.
    async fn follow_rooms(&self) {
        let mut channel_updates = self.context.channel_updates.clone();
        loop {
            let wanted = channel_updates.borrow_and_update().clone();
            self.forget_rooms(&wanted);
            let missing = self.join_rooms(&wanted).await;
            tokio::select! {
                Ok(()) = channel_updates.changed() => {}
                () = tokio::time::sleep(JOIN_RETRY), if missing > 0 => {}
                else => std::future::pending::<()>().await,
            }
        }
    }

    /// Stop relaying the rooms no gateway links any more (after a reload). The bot stays a
    /// member, as do the ghosts: a bridge does not leave rooms on a configuration change, and
    /// linking the room again needs no new invite.
    fn forget_rooms(&self, wanted: &[String]) {
        let removed: Vec<(String, String)> = self
            .rooms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(channel, _)| !wanted.contains(*channel))
            .map(|(channel, room_id)| (channel.clone(), room_id.clone()))
            .collect();
        for (channel, room_id) in removed {
            self.rooms
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&channel);
            // The encryption bot's session reads only the rooms of this scope.
            self.encrypted
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&room_id);
            self.context.status.left(&channel);
            tracing::info!(network = %self.network, channel, room_id, "No gateway links this room any more: it is not relayed; the bot and its ghosts stay members.");
        }
    }

    /// Join the rooms of `wanted` the bot is not in yet: how many could not be joined.
    async fn join_rooms(&self, wanted: &[String]) -> usize {
        let mut missing = 0;
        for channel in wanted {
            if self.room_of(channel).is_some() {
                self.context.status.joined(channel);
                continue;
            }
            match self
                .request(
                    reqwest::Method::POST,
                    &format!("/_matrix/client/v3/join/{}", segment(channel)),
                    None,
                    None,
                    Some(&json!({})),
                )
                .await
            {
                Ok(answer) => {
                    let Some(room_id) = answer["room_id"].as_str() else {
                        missing += 1;
                        continue;
                    };
                    // Known at once, so that nothing pushed from now on is dropped as
                    // from an unbridged room; deliveries wait until it is `checked`.
                    self.rooms
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(channel.clone(), room_id.to_owned());
                    if self.is_encrypted(room_id).await {
                        self.note_encrypted(room_id, channel).await;
                    }
                    self.checked
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(room_id.to_owned());
                    self.start_audit_floor(room_id).await;
                    tracing::info!(network = %self.network, channel, room_id, "The bot joined the room.");
                    self.context.status.joined(channel);
                    self.announce_bridge(channel, room_id).await;
                }
                Err(error) => {
                    missing += 1;
                    tracing::warn!(network = %self.network, channel, error = %error, "Cannot join the room; will try again.");
                }
            }
        }
        if !self.rooms_tried.send_replace(true) {
            tracing::info!(network = %self.network, missing, "Every configured room was tried; taking the homeserver's transactions.");
        }
        missing
    }

    /// Say in the room what it is bridged to: one `m.bridge` state event (MSC2346, and the
    /// same under `uk.half-shot.bridge`, which clients read today) per linked channel. Needs
    /// the bot's power to send state; without it the room stays unmarked (logged).
    async fn announce_bridge(&self, channel: &str, room_id: &str) {
        let topology = self.context.router.topology();
        let origin = ChannelRef::new(&self.network, channel);
        for route in topology.routes(&origin) {
            let destination = &route.destination;
            let protocol = topology.protocol(&destination.network);
            let state_key = format!(
                "tribridge://{protocol}/{}/{}",
                destination.network, destination.channel
            );
            let content = json!({
                "bridgebot": self.bot,
                "protocol": {"id": protocol, "displayname": protocol_name(protocol)},
                "network": {"id": destination.network, "displayname": destination.network},
                "channel": {"id": destination.channel, "displayname": destination.channel},
            });
            for event_type in ["m.bridge", "uk.half-shot.bridge"] {
                if let Err(error) = self
                    .request(
                        reqwest::Method::PUT,
                        &format!(
                            "/_matrix/client/v3/rooms/{}/state/{event_type}/{}",
                            segment(room_id),
                            segment(&state_key)
                        ),
                        None,
                        None,
                        Some(&content),
                    )
                    .await
                {
                    tracing::info!(network = %self.network, room_id, event_type, error = %error, "Cannot mark the room as bridged (the bot needs the power to send state events).");
                    return;
                }
            }
        }
    }

    async fn is_encrypted(&self, room_id: &str) -> bool {
        self.request(
            reqwest::Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.encryption/",
                segment(room_id)
            ),
            None,
            None,
            None,
        )
        .await
        .is_ok()
    }

    /// The display name of `sender` in `room_id` (its localpart when it has none).
    async fn display_name(&self, room_id: &str, sender: &str, event: &Value) -> String {
        let key = (room_id.to_owned(), sender.to_owned());
        if event["type"] == "m.room.member"
            && event["state_key"] == sender
            && let Some(name) = event["content"]["displayname"].as_str()
            && !name.is_empty()
        {
            self.names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, name.to_owned());
            return name.to_owned();
        }
        if let Some(name) = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return name.clone();
        }
        let localpart = sender
            .trim_start_matches('@')
            .split(':')
            .next()
            .unwrap_or(sender)
            .to_owned();
        let name = match self
            .request(
                reqwest::Method::GET,
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                    segment(room_id),
                    segment(sender)
                ),
                None,
                None,
                None,
            )
            .await
        {
            Ok(member) => member["displayname"]
                .as_str()
                .filter(|name| !name.is_empty())
                .map_or(localpart, ToOwned::to_owned),
            Err(_) => localpart,
        };
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, name.clone());
        name
    }

    /// Normalise one pushed event and commit it: whether it was submitted (`false`: not one
    /// to relay). `Err` only when the store failed.
    async fn relay(&self, event: &Value) -> Result<bool, String> {
        let (Some(room_id), Some(sender)) = (event["room_id"].as_str(), event["sender"].as_str())
        else {
            return Ok(false);
        };
        if self.is_ours(sender).await? {
            // Echo layer one: nothing the bot or a ghost says is relayed.
            return Ok(false);
        }
        let Some(channel) = self.channel_of(room_id) else {
            tracing::debug!(network = %self.network, room_id, "An event of a room no gateway bridges; ignored.");
            return Ok(false);
        };
        if event["type"] == "m.room.encrypted" || event["type"] == "m.room.encryption" {
            // Encrypted, or encryption turned on after the bot joined.
            self.note_encrypted(room_id, &channel).await;
            return Ok(false);
        }
        if self.is_via_bot(room_id) {
            // An encrypted room's events are read (decrypted) from the encryption bot's client.
            return Ok(false);
        }
        let Some(mut body) = content::inbound(event, self.relay_membership) else {
            return Ok(false);
        };
        if let EventBody::Text { attachments, .. } = &mut body
            && let Some(attachment) = attachments.first_mut()
        {
            attachment.stored = None;
            if let Some(mxc) = event["content"]["url"].as_str() {
                self.fetch_file(mxc, attachment).await;
            }
        }
        if let EventBody::Text { text, .. } | EventBody::Edit { text, .. } = &mut body {
            super::mentions::inbound(text, self.context.router.people(), &self.network, &self.bot);
            self.people_of_ghosts(text).await?;
        }
        let display_name = self.display_name(room_id, sender, event).await;
        let inbound = Inbound {
            origin: ChannelRef::new(&self.network, &channel),
            remote_id: event["event_id"].as_str().map(ToOwned::to_owned),
            permalink: event["event_id"].as_str().map(|event_id| {
                crate::richtext::long_text::matrix_event_permalink(room_id, event_id)
            }),
            author: crate::model::Author {
                id: sender.to_owned(),
                display_name,
            },
            timestamp_ms: event["origin_server_ts"].as_i64().unwrap_or_else(now_ms),
            body,
        };
        match self.context.router.submit(inbound).await {
            Ok(_) => Ok(true),
            Err(error) => Err(format!("cannot store an inbound event: {error}")),
        }
    }

    /// The mentions of `text` (said here) of this network's users, as `(user id, display)`.
    fn mentions_in(text: &FormattedText) -> Vec<(String, String)> {
        let mut found = Vec::new();
        map_mentions(&mut text.clone(), &mut |mention: Mention| {
            if let MentionTarget::User { network, user_id } = &mention.target {
                found.push((network.clone(), user_id.clone()));
            }
            Inline::Mention(mention)
        });
        found
    }

    /// Inbound: a pill of a ghost is a mention of its person on their own network.
    async fn people_of_ghosts(&self, text: &mut FormattedText) -> Result<(), String> {
        let mut people: HashMap<String, (String, String)> = HashMap::new();
        for (network, user_id) in Self::mentions_in(text) {
            if network != self.network {
                continue;
            }
            let Some((localpart, server)) = user_id.trim_start_matches('@').split_once(':') else {
                continue;
            };
            if server != self.config.server_name {
                continue;
            }
            let Some(owner) = self
                .cursor(format!("appservice-ghost-owner:{localpart}"))
                .await?
            else {
                continue;
            };
            if let Some((origin, author)) = owner
                .strip_prefix("appservice-ghost:")
                .and_then(|rest| rest.split_once('\u{1f}'))
            {
                people.insert(user_id, (origin.to_owned(), author.to_owned()));
            }
        }
        if people.is_empty() {
            return Ok(());
        }
        let directory = self.context.router.people();
        map_mentions(text, &mut |mention: Mention| {
            if let MentionTarget::User { network, user_id } = &mention.target
                && *network == self.network
                && let Some((origin, author)) = people.get(user_id)
            {
                let display = directory
                    .current(origin, author)
                    .map_or_else(|| author.clone(), |(_, shown)| shown);
                return Inline::Mention(Mention {
                    display,
                    target: MentionTarget::User {
                        network: origin.clone(),
                        user_id: author.clone(),
                    },
                });
            }
            Inline::Mention(mention)
        });
        Ok(())
    }

    /// Outbound: a mention of a person of another network who has a ghost here is a mention
    /// of the ghost (a pill that notifies, and opens the ghost's profile).
    async fn ghosts_of_people(&self, text: &mut FormattedText) -> Result<(), String> {
        let mut ghost_of: HashMap<(String, String), String> = HashMap::new();
        for (network, user_id) in Self::mentions_in(text) {
            if network == self.network || network == MATRIX_NETWORK {
                continue;
            }
            if let Some(localpart) = self
                .cursor(format!("appservice-ghost:{network}\u{1f}{user_id}"))
                .await?
            {
                ghost_of.insert(
                    (network, user_id),
                    format!("@{localpart}:{}", self.config.server_name),
                );
            }
        }
        if ghost_of.is_empty() {
            return Ok(());
        }
        map_mentions(text, &mut |mention: Mention| {
            if let MentionTarget::User { network, user_id } = &mention.target
                && let Some(ghost) = ghost_of.get(&(network.clone(), user_id.clone()))
            {
                return Inline::Mention(Mention {
                    display: mention.display.clone(),
                    target: MentionTarget::User {
                        network: self.network.clone(),
                        user_id: ghost.clone(),
                    },
                });
            }
            Inline::Mention(mention)
        });
        Ok(())
    }

    /// Copy a Matrix file (authenticated media, as the bot) into the bridge's file store,
    /// within the size limit; on failure it is announced by name and size, and why is logged.
    async fn fetch_file(&self, mxc: &str, attachment: &mut crate::model::Attachment) {
        let files = &self.context.files;
        if attachment
            .size
            .is_some_and(|size| !files.store.accepts(size))
        {
            tracing::info!(network = %self.network, file = %attachment.name, size = attachment.size, "A file is over max_file_size_mb; it is announced, not copied.");
            return;
        }
        let Some(path) = mxc.strip_prefix("mxc://") else {
            return;
        };
        let response = self
            .http
            .get(format!(
                "{}/_matrix/client/v1/media/download/{path}",
                self.homeserver
            ))
            .bearer_auth(self.as_token.expose())
            .send()
            .await;
        let bytes = match response {
            Ok(response) if response.status().is_success() => response.bytes().await.ok(),
            Ok(response) => {
                tracing::warn!(network = %self.network, mxc, status = %response.status(), "Cannot download a Matrix file; it is announced, not copied.");
                None
            }
            Err(error) => {
                tracing::warn!(network = %self.network, mxc, error = %error_chain(&error), "Cannot download a Matrix file; it is announced, not copied.");
                None
            }
        };
        let Some(bytes) = bytes else {
            return;
        };
        attachment.size = Some(bytes.len() as u64);
        match files.put(bytes.to_vec()).await {
            Ok(hash) => attachment.stored = Some(hash),
            Err(error) => {
                tracing::warn!(network = %self.network, mxc, error = %error, "A Matrix file was not copied; it is announced by name and size.");
            }
        }
    }

    /// A room looked at for holes for the first time is looked at from now on: nothing said
    /// before the bridge was there is relayed.
    async fn start_audit_floor(&self, room_id: &str) {
        let key = format!("appservice-audit:{room_id}");
        let stored = match self.cursor(key.clone()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => self.set_cursor(key, now_ms().to_string()).await,
            Err(error) => Err(error),
        };
        if let Err(error) = stored {
            tracing::warn!(network = %self.network, room_id, error = %error, "Cannot store where looking for unpushed events starts.");
        }
    }

    /// Ask the homeserver to push now what it holds for the bridge (`POST
    /// /_matrix/client/v1/appservice/{id}/ping`): Synapse then retries at once instead of
    /// after its back-off (up to 8.5 minutes after a long outage of the bridge).
    async fn ping_homeserver(&self) {
        let path = format!(
            "/_matrix/client/v1/appservice/{}/ping",
            segment(&format!("tribridge-{}", self.network))
        );
        let body = json!({ "transaction_id": format!("tribridge-start-{}", now_ms()) });
        match self
            .request(reqwest::Method::POST, &path, None, None, Some(&body))
            .await
        {
            Ok(_) => {
                tracing::info!(network = %self.network, "The homeserver reached the bridge (ping); it pushes what it held back now.");
            }
            Err(error) => {
                tracing::info!(network = %self.network, error = %error, "The homeserver's ping failed or is not offered; it pushes what it held back after its own back-off.");
            }
        }
    }

    /// Look for holes: events of a bridged room older than an event the homeserver pushed,
    /// yet never pushed themselves. The homeserver pushes a room's events in order, so such an
    /// event was left behind: Synapse 1.163 can leave a transaction unsent when its recovery
    /// from a failed push ends (it sends it at the next failure, if ever). Each room is read
    /// back (`/messages`, up to [`AUDIT_PAGES`] pages) to where the previous look stopped;
    /// the holes are committed oldest first (the store drops an event it already has), so
    /// they arrive late but once. Events newer than every pushed one may still be on their
    /// way and are left to the homeserver.
    async fn audit(&self) {
        let rooms: Vec<(String, String)> = self
            .rooms
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(channel, room_id)| (channel.clone(), room_id.clone()))
            .collect();
        for (channel, room_id) in rooms {
            if self.is_via_bot(&room_id) {
                continue;
            }
            match self.audit_room(&channel, &room_id).await {
                Ok(0) => {}
                Ok(found) => {
                    tracing::warn!(network = %self.network, channel, room_id, found, "Events the homeserver never pushed were found in the room and relayed late.");
                }
                Err(error) => {
                    tracing::warn!(network = %self.network, channel, room_id, error = %error, "Cannot look for events the homeserver did not push; looked at again later.");
                    self.audit_wanted.notify_one();
                }
            }
        }
    }

    /// [`Self::audit`] for one room: how many holes were relayed.
    async fn audit_room(&self, channel: &str, room_id: &str) -> Result<usize, String> {
        let key = format!("appservice-audit:{room_id}");
        let Some(floor) = self.cursor(key.clone()).await? else {
            self.set_cursor(key, now_ms().to_string()).await?;
            return Ok(0);
        };
        let floor: i64 = floor.parse().unwrap_or(i64::MAX);
        let origin = ChannelRef::new(&self.network, channel);
        // Newest first: once a pushed event was passed, every unknown older event is a hole.
        let mut newest_pushed: Option<i64> = None;
        let mut holes: Vec<Value> = Vec::new();
        let mut from: Option<String> = None;
        'pages: for _ in 0..AUDIT_PAGES {
            let mut path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                segment(room_id)
            );
            if let Some(from) = &from {
                let _ = write!(path, "&from={}", segment(from));
            }
            let page = self
                .request(reqwest::Method::GET, &path, None, None, None)
                .await
                .map_err(|error| error.to_string())?;
            let chunk = page["chunk"].as_array().map_or(&[][..], Vec::as_slice);
            for event in chunk {
                let ts = event["origin_server_ts"].as_i64().unwrap_or(0);
                if ts < floor {
                    break 'pages;
                }
                let (Some(sender), Some(event_id)) =
                    (event["sender"].as_str(), event["event_id"].as_str())
                else {
                    continue;
                };
                if self.is_ours(sender).await? {
                    continue;
                }
                if self.committed(&origin, event_id).await? {
                    newest_pushed.get_or_insert(ts);
                } else if newest_pushed.is_some() {
                    holes.push(event.clone());
                }
            }
            match page["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                _ => break,
            }
        }
        let mut found = 0;
        for event in holes.iter().rev() {
            if self.relay(event).await? {
                found += 1;
            }
        }
        // Everything below the newest pushed event was looked at.
        if let Some(newest) = newest_pushed {
            self.set_cursor(key, newest.to_string()).await?;
        }
        Ok(found)
    }

    /// Is the event of `origin` (this network's id) in the store?
    async fn committed(&self, origin: &ChannelRef, event_id: &str) -> Result<bool, String> {
        let store = Arc::clone(&self.context.store);
        let origin = origin.clone();
        let event_id = event_id.to_owned();
        tokio::task::spawn_blocking(move || store.lookup(&origin, &event_id))
            .await
            .map_err(|error| error.to_string())?
            .map(|found| found.is_some())
            .map_err(|error| error.to_string())
    }

    /// Ping the homeserver once the rooms were tried, then look for holes whenever asked (the
    /// first transaction after the start, a refused one, a skipped number), [`AUDIT_DELAY`]
    /// after the reason and at most every [`AUDIT_INTERVAL`].
    async fn watch_for_holes(&self) {
        let mut tried = self.rooms_tried.subscribe();
        if tried.wait_for(|tried| *tried).await.is_err() {
            return;
        }
        self.ping_homeserver().await;
        let mut next_allowed = tokio::time::Instant::now();
        loop {
            self.audit_wanted.notified().await;
            tokio::time::sleep_until(next_allowed.max(tokio::time::Instant::now() + AUDIT_DELAY))
                .await;
            self.audit().await;
            next_allowed = tokio::time::Instant::now() + AUDIT_INTERVAL;
        }
    }

    /// One transaction: every event committed, then the transaction recorded as the last one.
    ///
    /// While the bot still joins its rooms (at start) the transaction waits rather than being
    /// refused: a refusal sends Synapse into its recovery mode, and a transaction it creates
    /// just as that recovery ends is left unsent (Synapse 1.163) until the next failure, so
    /// that message would arrive much later or never. The homeserver pushes one transaction at
    /// a time and pushes a failed one again before the next, so the last committed one is the
    /// only one that can come again: it is the one recorded, by id and by its events (Synapse
    /// on `SQLite` numbers transactions from 1 again after a restart).
    async fn transaction(&self, txn_id: &str, body: &Value) -> Result<(), String> {
        if !*self.rooms_tried.borrow() {
            let mut tried = self.rooms_tried.subscribe();
            let joined = tokio::time::timeout(HOLD_UNTIL_JOINED, tried.wait_for(|tried| *tried));
            if !matches!(joined.await, Ok(Ok(_))) {
                return Err("the bot is still joining its rooms".to_owned());
            }
        }
        if let Ok(number) = txn_id.parse::<u64>() {
            let mut last = self
                .last_txn_number
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|last| number > last + 1) {
                // A number skipped: the homeserver may hold that transaction unsent (or gave
                // the number to another application service).
                self.audit_wanted.notify_one();
            }
            if last.is_none_or(|last| number > last) {
                *last = Some(number);
            }
        }
        let events = body["events"].as_array().map_or(&[][..], Vec::as_slice);
        let mut digest = sha2::Sha256::new();
        for event in events {
            digest.update(event["event_id"].as_str().unwrap_or("").as_bytes());
            digest.update(b"\n");
        }
        let digest = digest.finalize();
        let mut record = format!("{txn_id}:");
        for byte in &digest[..16] {
            let _ = write!(record, "{byte:02x}");
        }
        if self.cursor(LAST_TXN.to_owned()).await?.as_deref() == Some(record.as_str()) {
            tracing::debug!(network = %self.network, txn_id, "A transaction already committed was pushed again; answered without relaying it.");
            return Ok(());
        }
        let mut submitted = false;
        for event in events {
            submitted |= self.relay(event).await?;
        }
        // A transaction that relayed nothing (the bridge's own echoes, while it writes) would
        // relay nothing pushed again either: not recorded, which keeps the store's writer for
        // the deliveries and answers the homeserver sooner.
        if !submitted {
            return Ok(());
        }
        self.set_cursor(LAST_TXN.to_owned(), record).await?;
        // The homeserver pushes again: what it held back while the bridge was away came first,
        // so a hole left behind (see `audit`) would now be below a pushed event.
        if !self
            .pushed_since_start
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.audit_wanted.notify_one();
        }
        Ok(())
    }

    /// The ghost of a delivery's author, its localpart chosen (and stored) the first time.
    async fn ghost_id(&self, origin: &str, author: &str, nick: &str) -> Result<String, String> {
        let key = format!("appservice-ghost:{origin}\u{1f}{author}");
        if let Some(localpart) = self.cursor(key.clone()).await? {
            let user_id = format!("@{localpart}:{}", self.config.server_name);
            self.known_ghosts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(user_id.clone());
            return Ok(user_id);
        }
        let base = ghosts::localpart(&self.config.ghost_format, origin, nick);
        let mut candidate = base.clone();
        for n in 2.. {
            let owner_key = format!("appservice-ghost-owner:{candidate}");
            match self.cursor(owner_key.clone()).await? {
                Some(owner) if owner != key => candidate = format!("{base}_{n}"),
                _ => {
                    self.set_cursor(owner_key, key.clone()).await?;
                    break;
                }
            }
        }
        self.set_cursor(key, candidate.clone()).await?;
        let user_id = format!("@{candidate}:{}", self.config.server_name);
        self.known_ghosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(user_id.clone());
        Ok(user_id)
    }

    /// The delivery's ghost, registered, named and in `room_id`.
    async fn ready_ghost(
        &self,
        delivery: &Delivery,
        room_id: &str,
    ) -> Result<String, DeliveryError> {
        let origin = delivery.origin.network.clone();
        let author = delivery.author.id.clone();
        let nick = delivery.author.display_name.clone();
        let mut ghosts = self.ghosts.lock().await;
        let ghost = ghosts.entry((origin.clone(), author.clone())).or_default();
        if ghost.user_id.is_empty() {
            ghost.user_id = self
                .ghost_id(&origin, &author, &nick)
                .await
                .map_err(|reason| DeliveryError::Retry {
                    after: None,
                    reason,
                })?;
        }
        let user_id = ghost.user_id.clone();
        if !ghost.registered {
            match self.register(&user_id).await {
                Ok(()) => {}
                Err(error) if error.errcode == "M_USER_IN_USE" => {}
                Err(error) => return Err(error.into_delivery_error()),
            }
            ghost.registered = true;
        }
        let wanted_name = ghosts::display_name(&self.config.ghost_displayname, &origin, &nick);
        if ghost.display_name.as_deref() != Some(wanted_name.as_str()) {
            self.request(
                reqwest::Method::PUT,
                &format!(
                    "/_matrix/client/v3/profile/{}/displayname",
                    segment(&user_id)
                ),
                Some(&user_id),
                None,
                Some(&json!({ "displayname": wanted_name })),
            )
            .await
            .map_err(HsError::into_delivery_error)?;
            ghost.display_name = Some(wanted_name);
        }
        // The stored picture is read only when it was stored again since it was last looked at
        // (its time stamp), not with every message.
        let files = &self.context.files;
        if let Some(stamp) = files.avatar_stamp(&origin, &author).await
            && ghost.avatar_stamp != Some(stamp)
            && let Some(picture) = files.avatar(&origin, &author).await
        {
            let digest = sha2::Sha256::digest(&picture).to_vec();
            if ghost.avatar.as_ref() == Some(&digest) {
                ghost.avatar_stamp = Some(stamp);
            } else {
                match self.set_avatar(&user_id, picture).await {
                    Ok(()) => {
                        ghost.avatar = Some(digest);
                        ghost.avatar_stamp = Some(stamp);
                    }
                    // A picture is not worth holding the message back.
                    Err(error) => {
                        tracing::info!(network = %self.network, ghost = %user_id, error = %error, "Cannot set a ghost's picture.");
                    }
                }
            }
        }
        if !ghost.joined.contains(room_id) {
            self.join_as(&user_id, room_id).await?;
            ghost.joined.insert(room_id.to_owned());
        }
        Ok(user_id)
    }

    /// Upload `bytes` to the content repository as `ghost`; its `mxc://` URI.
    async fn upload(
        &self,
        ghost: &str,
        bytes: Vec<u8>,
        mime: &str,
        filename: &str,
    ) -> Result<String, HsError> {
        let response = self
            .http
            .post(format!("{}/_matrix/media/v3/upload", self.homeserver))
            .bearer_auth(self.as_token.expose())
            .query(&[("user_id", ghost), ("filename", filename)])
            .header(reqwest::header::CONTENT_TYPE, mime)
            .body(bytes)
            .send()
            .await
            .map_err(|error| HsError {
                status: None,
                errcode: String::new(),
                message: error_chain(&error),
                retry_after: None,
            })?;
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        match value["content_uri"].as_str() {
            Some(uri) if status.is_success() => Ok(uri.to_owned()),
            _ => Err(HsError {
                status: Some(status.as_u16()),
                errcode: value["errcode"].as_str().unwrap_or_default().to_owned(),
                message: value["error"].as_str().unwrap_or_default().to_owned(),
                retry_after: value["retry_after_ms"].as_u64().map(Duration::from_millis),
            }),
        }
    }

    /// Upload `picture` as `ghost` and make it the ghost's avatar.
    async fn set_avatar(&self, ghost: &str, picture: Vec<u8>) -> Result<(), HsError> {
        let mime = content::image_type(&picture);
        let uri = self.upload(ghost, picture, mime, "avatar").await?;
        self.request(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/profile/{}/avatar_url", segment(ghost)),
            Some(ghost),
            None,
            Some(&json!({ "avatar_url": uri })),
        )
        .await
        .map(|_| ())
    }

    /// A message with files, sent by `ghost`: each stored file uploaded and sent as its own
    /// file event (the first with the caption and the relation, its transaction id the
    /// delivery id; the others the delivery id and their index); files not copied are
    /// announced in the caption. Acknowledged with the first event's id.
    async fn send_files(
        &self,
        delivery: &Delivery,
        ghost: &str,
        room_id: &str,
        ts: Option<i64>,
        related: content::Related<'_>,
    ) -> Result<DeliveryAck, DeliveryError> {
        let EventBody::Text {
            text, attachments, ..
        } = &delivery.body
        else {
            return Ok(DeliveryAck::default());
        };
        let mut uploaded = Vec::new();
        let mut not_copied = Vec::new();
        for attachment in attachments {
            let bytes = match &attachment.stored {
                Some(hash) => self.context.files.read(hash).await,
                None => None,
            };
            let Some(bytes) = bytes else {
                not_copied.push(attachment);
                continue;
            };
            let uri = self
                .upload(ghost, bytes, &attachment.mime, &attachment.name)
                .await
                .map_err(HsError::into_delivery_error)?;
            uploaded.push((attachment, uri));
        }
        let caption = with_file_lines(text, not_copied, |_| None);
        let room = segment(room_id);
        let mut contents = Vec::new();
        if uploaded.is_empty() {
            contents.push(content::file_caption("", &caption));
        }
        for (index, (attachment, uri)) in uploaded.iter().enumerate() {
            let empty = FormattedText::default();
            contents.push(content::file_content(
                attachment,
                uri,
                "",
                if index == 0 { &caption } else { &empty },
            ));
        }
        let mut first_event = None;
        for (index, mut content) in contents.into_iter().enumerate() {
            if index == 0
                && let Some(relation) = content::message_relation(related)
            {
                content["m.relates_to"] = relation;
            }
            let txn = if index == 0 {
                segment(&delivery.id)
            } else {
                segment(&format!("{}.{index}", delivery.id))
            };
            let answer = self
                .request(
                    reqwest::Method::PUT,
                    &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
                    Some(ghost),
                    ts,
                    Some(&content),
                )
                .await
                .map_err(HsError::into_delivery_error)?;
            if first_event.is_none() {
                first_event = answer["event_id"].as_str().map(ToOwned::to_owned);
            }
        }
        Ok(DeliveryAck {
            remote_id: first_event,
        })
    }

    /// Join `room_id` as `user_id`, invited by the bot when the room asks for it.
    async fn join_as(&self, user_id: &str, room_id: &str) -> Result<(), DeliveryError> {
        let path = format!("/_matrix/client/v3/join/{}", segment(room_id));
        let first = self
            .request(
                reqwest::Method::POST,
                &path,
                Some(user_id),
                None,
                Some(&json!({})),
            )
            .await;
        match first {
            Ok(_) => Ok(()),
            Err(error) if error.status == Some(403) => {
                self.request(
                    reqwest::Method::POST,
                    &format!("/_matrix/client/v3/rooms/{}/invite", segment(room_id)),
                    None,
                    None,
                    Some(&json!({ "user_id": user_id })),
                )
                .await
                .map_err(HsError::into_delivery_error)?;
                self.request(
                    reqwest::Method::POST,
                    &path,
                    Some(user_id),
                    None,
                    Some(&json!({})),
                )
                .await
                .map(|_| ())
                .map_err(HsError::into_delivery_error)
            }
            Err(error) => Err(error.into_delivery_error()),
        }
    }

    async fn deliver(&self, delivery: &Delivery) -> Result<DeliveryAck, DeliveryError> {
        let Some(room_id) = self.room_of(&delivery.destination.channel) else {
            return Err(DeliveryError::Retry {
                after: Some(Duration::from_secs(2)),
                reason: format!("room {} is not joined yet", delivery.destination.channel),
            });
        };
        if !self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&room_id)
        {
            return Err(DeliveryError::Retry {
                after: Some(Duration::from_millis(200)),
                reason: format!("room {room_id} is being joined"),
            });
        }
        if self.is_via_bot(&room_id) {
            return self.via_bot.deliver(delivery).await;
        }
        let settings = self
            .context
            .gateways
            .get(&delivery.gateway)
            .unwrap_or_default();
        // Late: the event carries when it was said (`ts=`), no `[date]` prefix.
        let late = crate::connector::late_prefix(delivery, &settings, now_ms()).is_some();
        let ts = late.then_some(delivery.timestamp_ms);
        if let EventBody::Membership(change) = &delivery.body {
            return self.membership(delivery, change.clone(), &room_id).await;
        }
        let ghost = self.ready_ghost(delivery, &room_id).await?;
        let mut delivery = delivery.clone();
        if let EventBody::Text { text, .. } | EventBody::Edit { text, .. } = &mut delivery.body {
            self.ghosts_of_people(text)
                .await
                .map_err(|reason| DeliveryError::Retry {
                    after: None,
                    reason,
                })?;
        }
        super::mentions::outbound(&mut delivery, self.context.router.people(), &self.network);
        let notified = super::mentions::mentioned(&delivery, &self.network);
        let mut notifies_room = false;
        let mut has_files = false;
        if let EventBody::Text {
            text, attachments, ..
        } = &mut delivery.body
        {
            crate::richtext::mention::neutralise_mass_pings(text, settings.allow_mass_pings);
            notifies_room = super::mentions::mentions_room(text);
            has_files = !attachments.is_empty();
        }
        let parse = |target: Option<&crate::model::TargetRef>| {
            target
                .and_then(|t| t.remote_id.as_deref())
                .and_then(|id| matrix_sdk::ruma::EventId::parse(id).ok())
        };
        let target = parse(delivery.target.as_ref());
        let reply_to = parse(delivery.reply_to.as_ref());
        let thread_root = parse(delivery.thread_root.as_ref());
        let related = content::Related {
            target: target.as_deref(),
            reply_to: reply_to.as_deref(),
            thread_root: thread_root.as_deref(),
        };
        if has_files {
            return self
                .send_files(&delivery, &ghost, &room_id, ts, related)
                .await;
        }
        let txn = segment(&delivery.id);
        let room = segment(&room_id);
        match content::outbound(&delivery, "", related) {
            content::Outbound::Send {
                event_type,
                mut content,
            } => {
                if event_type == "m.room.message" {
                    content::set_mentions(&mut content, &notified, notifies_room);
                }
                let answer = self
                    .request(
                        reqwest::Method::PUT,
                        &format!("/_matrix/client/v3/rooms/{room}/send/{event_type}/{txn}"),
                        Some(&ghost),
                        ts,
                        Some(&content),
                    )
                    .await;
                match answer {
                    Ok(answer) => Ok(DeliveryAck {
                        remote_id: answer["event_id"].as_str().map(ToOwned::to_owned),
                    }),
                    Err(error) if error.errcode == "M_DUPLICATE_ANNOTATION" => {
                        Ok(DeliveryAck::default())
                    }
                    Err(error) => Err(error.into_delivery_error()),
                }
            }
            content::Outbound::Redact(event_id) => self
                .request(
                    reqwest::Method::PUT,
                    &format!(
                        "/_matrix/client/v3/rooms/{room}/redact/{}/{txn}",
                        segment(event_id.as_str())
                    ),
                    Some(&ghost),
                    None,
                    Some(&json!({})),
                )
                .await
                .map(|answer| DeliveryAck {
                    remote_id: answer["event_id"].as_str().map(ToOwned::to_owned),
                })
                .map_err(HsError::into_delivery_error),
            content::Outbound::RemoveReaction { target, key } => {
                self.remove_reaction(&ghost, &room_id, target.as_str(), &key, &txn)
                    .await
            }
            content::Outbound::Nothing => Ok(DeliveryAck::default()),
        }
    }

    /// Take back the ghost's reaction `key` to `target`: its annotation found among the
    /// target's relations and redacted (nothing to do when there is none).
    async fn remove_reaction(
        &self,
        ghost: &str,
        room_id: &str,
        target: &str,
        key: &str,
        txn: &str,
    ) -> Result<DeliveryAck, DeliveryError> {
        let relations = self
            .request(
                reqwest::Method::GET,
                &format!(
                    "/_matrix/client/v1/rooms/{}/relations/{}/m.annotation/m.reaction?limit=1000",
                    segment(room_id),
                    segment(target)
                ),
                Some(ghost),
                None,
                None,
            )
            .await
            .map_err(HsError::into_delivery_error)?;
        let Some(reaction) = relations["chunk"].as_array().and_then(|chunk| {
            chunk.iter().find(|event| {
                event["sender"] == ghost && event["content"]["m.relates_to"]["key"] == key
            })
        }) else {
            return Ok(DeliveryAck::default());
        };
        let event_id = reaction["event_id"].as_str().unwrap_or_default();
        self.request(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/{txn}",
                segment(room_id),
                segment(event_id)
            ),
            Some(ghost),
            None,
            Some(&json!({})),
        )
        .await
        .map(|answer| DeliveryAck {
            remote_id: answer["event_id"].as_str().map(ToOwned::to_owned),
        })
        .map_err(HsError::into_delivery_error)
    }

    /// A join, part or rename of a person (relayed with the origin's `relay_membership`):
    /// a join makes their ghost join, a part makes it leave, a rename renames it (and the new
    /// nick keeps the ghost). Nothing is written in the room; a person without a ghost yet
    /// gets one only by joining.
    async fn membership(
        &self,
        delivery: &Delivery,
        change: Membership,
        room_id: &str,
    ) -> Result<DeliveryAck, DeliveryError> {
        let retry = |reason: String| DeliveryError::Retry {
            after: None,
            reason,
        };
        let origin = delivery.origin.network.clone();
        let author = delivery.author.id.clone();
        let key = format!("appservice-ghost:{origin}\u{1f}{author}");
        match change {
            Membership::Joined => {
                self.ready_ghost(delivery, room_id).await?;
            }
            Membership::Left { reason } => {
                let Some(localpart) = self.cursor(key).await.map_err(retry)? else {
                    return Ok(DeliveryAck::default());
                };
                let ghost = format!("@{localpart}:{}", self.config.server_name);
                match self
                    .request(
                        reqwest::Method::POST,
                        &format!("/_matrix/client/v3/rooms/{}/leave", segment(room_id)),
                        Some(&ghost),
                        None,
                        Some(&json!({ "reason": reason.unwrap_or_default() })),
                    )
                    .await
                {
                    Ok(_) => {}
                    // Not in the room (never joined, or left already).
                    Err(error) if error.status == Some(403) => {}
                    Err(error) => return Err(error.into_delivery_error()),
                }
                if let Some(known) = self.ghosts.lock().await.get_mut(&(origin, author)) {
                    known.joined.remove(room_id);
                }
            }
            Membership::Renamed { new_name } => {
                let Some(localpart) = self.cursor(key).await.map_err(retry)? else {
                    return Ok(DeliveryAck::default());
                };
                let ghost = format!("@{localpart}:{}", self.config.server_name);
                // The new nick is the same person: the same ghost.
                self.set_cursor(
                    format!("appservice-ghost:{origin}\u{1f}{new_name}"),
                    localpart.clone(),
                )
                .await
                .map_err(retry)?;
                let name = ghosts::display_name(&self.config.ghost_displayname, &origin, &new_name);
                self.request(
                    reqwest::Method::PUT,
                    &format!("/_matrix/client/v3/profile/{}/displayname", segment(&ghost)),
                    Some(&ghost),
                    None,
                    Some(&json!({ "displayname": name })),
                )
                .await
                .map_err(HsError::into_delivery_error)?;
                let mut ghosts = self.ghosts.lock().await;
                let mut known = ghosts.remove(&(origin.clone(), author)).unwrap_or_default();
                known.display_name = Some(name);
                ghosts.insert((origin, new_name), known);
            }
            other @ Membership::Topic { .. } => {
                tracing::debug!(network = %self.network, delivery = %delivery.id, change = %membership_text(delivery, &other), "A membership change without a ghost counterpart; not shown.");
            }
        }
        Ok(DeliveryAck::default())
    }
}

impl DeliverWhole for AppserviceHandle {
    fn deliver_whole<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<DeliveryAck, DeliveryError>> {
        Box::pin(self.shared.deliver(delivery))
    }
}

/// The bearer token of a request: the `Authorization` header, else the legacy `access_token`
/// query parameter.
fn bearer(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get(axum::http::header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("access_token=").map(ToOwned::to_owned))
}

/// A JSON body with its content type.
fn json_body(value: &Value) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
}

fn matrix_error(status: StatusCode, errcode: &str, error: &str) -> Response {
    (
        status,
        json_body(&json!({ "errcode": errcode, "error": error })),
    )
        .into_response()
}

/// `Err` with the answer when the request's token is missing (401) or wrong (403).
fn check_token(
    shared: &Shared,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<(), Box<Response>> {
    match bearer(headers, uri.query()) {
        None => Err(Box::new(matrix_error(
            StatusCode::UNAUTHORIZED,
            "M_MISSING_TOKEN",
            "missing hs_token",
        ))),
        Some(token) if same_token(&token, shared.hs_token.expose()) => Ok(()),
        Some(_) => {
            tracing::warn!(network = %shared.network, "A request to the application-service endpoint with a wrong hs_token was refused.");
            Err(Box::new(matrix_error(
                StatusCode::FORBIDDEN,
                "M_FORBIDDEN",
                "wrong hs_token",
            )))
        }
    }
}

async fn put_transaction(
    State(shared): State<Arc<Shared>>,
    UrlPath(txn_id): UrlPath<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> Response {
    if let Err(answer) = check_token(&shared, &headers, &uri) {
        return *answer;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return matrix_error(
            StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            "the body is not JSON",
        );
    };
    match shared.transaction(&txn_id, &body).await {
        Ok(()) => (StatusCode::OK, json_body(&json!({}))).into_response(),
        Err(error) => {
            shared.audit_wanted.notify_one();
            tracing::warn!(network = %shared.network, txn_id, error = %error, "A pushed transaction was not committed; the homeserver will push it again.");
            matrix_error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", &error)
        }
    }
}

async fn get_user(
    State(shared): State<Arc<Shared>>,
    UrlPath(user_id): UrlPath<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    if let Err(answer) = check_token(&shared, &headers, &uri) {
        return *answer;
    }
    if shared.is_ours(&user_id).await.unwrap_or(false) {
        // Ghosts are registered when their person first speaks; the homeserver may ask
        // about one before that (someone invites it): it exists in our namespace.
        let _ = shared.register(&user_id).await;
        (StatusCode::OK, json_body(&json!({}))).into_response()
    } else {
        matrix_error(
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "not a user of this bridge",
        )
    }
}

async fn post_ping(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    if let Err(answer) = check_token(&shared, &headers, &uri) {
        return *answer;
    }
    (StatusCode::OK, json_body(&json!({}))).into_response()
}

async fn not_found() -> Response {
    matrix_error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "unknown endpoint")
}

impl AppserviceTask {
    /// Serve the transaction endpoint and join the rooms until shutdown.
    pub async fn run(self) {
        let shared = self.shared;
        let via_bot = self.via_bot;
        let shutdown = shared.context.shutdown.clone();
        shared
            .context
            .router
            .set_account(&shared.network, &shared.bot);
        let listener = match tokio::net::TcpListener::bind(shared.config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(network = %shared.network, listen = %shared.config.listen, error = %error, "Cannot listen for the homeserver's transactions; this network is not bridged.");
                return;
            }
        };
        tracing::info!(network = %shared.network, listen = %shared.config.listen, bot = %shared.bot, "Listening for the homeserver's transactions (application service).");
        shared.context.status.connected();
        let app = axum::Router::new()
            .route(
                "/_matrix/app/v1/transactions/{txn}",
                axum::routing::put(put_transaction),
            )
            .route("/_matrix/app/v1/users/{user}", axum::routing::get(get_user))
            .route("/_matrix/app/v1/ping", axum::routing::post(post_ping))
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let joiner = Arc::clone(&shared);
        tokio::select! {
            result = serve => {
                if let Err(error) = result {
                    tracing::error!(network = %shared.network, error = %error, "The transaction endpoint stopped.");
                }
            }
            () = async move {
                joiner.follow_rooms().await;
            } => {}
            () = async {
                shared.start_via_bot.notified().await;
                via_bot.run().await;
            } => {}
            () = async {
                shared.watch_for_holes().await;
                std::future::pending::<()>().await;
            } => {}
            () = shutdown.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("", "abc"));
        assert!(!same_token("abcd", "abc"));
    }

    #[test]
    fn the_bearer_comes_from_the_header_or_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers, Some("access_token=x")), Some("x".into()));
        assert_eq!(bearer(&headers, None), None);
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer y".parse().unwrap(),
        );
        assert_eq!(bearer(&headers, Some("access_token=x")), Some("y".into()));
    }
}
