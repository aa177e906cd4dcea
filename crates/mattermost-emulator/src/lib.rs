//! An in-memory emulator of the Mattermost server's REST API v4 and WebSocket, faithful to the
//! behaviours a chat bridge depends on (see `shared/mattermost-api.md`), for tribridge's tests.
//!
//! Start one with [`Emulator::start`]; it has one system admin and nothing else, and everything
//! else is created through the real endpoints. Test hooks: [`Emulator::drop_websockets`],
//! [`Emulator::forget_websocket_sessions`], [`Emulator::set_rate_limit`],
//! [`Emulator::set_config`], [`Emulator::expire_sessions`].
//!
//! Modules: `ids` (ids and clock), `error` (AppError bodies), `model` (records and their JSON),
//! `state` (all data, permissions, event publishing), `hub` (WebSocket connections and `seq`),
//! `ws` (the socket endpoint), `ratelimit`, `http` (router and middleware), `api` (handlers).

mod api;
mod error;
mod http;
mod hub;
mod ids;
mod model;
mod ratelimit;
mod state;
mod ws;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::ratelimit::RateLimiter;
use crate::state::App;

/// Server settings that change behaviour. The defaults are those of a server an admin has set up
/// for a bridge: bot accounts and personal access tokens on; the display overrides off, as on a
/// fresh server.
#[derive(Debug, Clone)]
pub struct Config {
    /// `ServiceSettings.EnableUserAccessTokens`: PATs of human users work (bot tokens always do).
    pub enable_user_access_tokens: bool,
    /// `ServiceSettings.EnableBotAccountCreation`.
    pub enable_bot_account_creation: bool,
    /// `ServiceSettings.EnablePostUsernameOverride` (affects `sender_name` and the client config).
    pub enable_post_username_override: bool,
    /// `ServiceSettings.EnablePostIconOverride` (client config only).
    pub enable_post_icon_override: bool,
    /// `TeamSettings.EnableOpenServer`: anonymous `POST /users`.
    pub enable_open_server: bool,
    /// `MaxPostSize` in runes.
    pub max_post_size: usize,
    /// Hold every `POST /posts` response this long after its `posted` event went out (the
    /// `pending_post_id` stays "in flight" meanwhile), to exercise the event-before-response race.
    pub post_response_delay: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enable_user_access_tokens: true,
            enable_bot_account_creation: true,
            enable_post_username_override: false,
            enable_post_icon_override: false,
            enable_open_server: false,
            max_post_size: 16383,
            post_response_delay: None,
        }
    }
}

/// A running emulator.
pub struct Emulator {
    app: App,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Emulator {
    /// Bind `listen`, start serving, and return. The server has one system admin.
    pub async fn start(
        listen: SocketAddr,
        admin_user: &str,
        admin_password: &str,
    ) -> io::Result<Emulator> {
        Self::start_with_config(listen, admin_user, admin_password, Config::default()).await
    }

    /// [`Emulator::start`] with explicit settings.
    pub async fn start_with_config(
        listen: SocketAddr,
        admin_user: &str,
        admin_password: &str,
        config: Config,
    ) -> io::Result<Emulator> {
        let app = App::new(admin_user, admin_password, config);
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        // The server is written in Go, whose every TCP connection has `TCP_NODELAY` set: a
        // WebSocket event written while the previous one is unacknowledged goes out at once,
        // not after the client's delayed ACK (up to 40 ms on Linux) as with Nagle's algorithm.
        // It fails only for a connection already gone, which the server then drops anyway.
        let listener = listener.tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
        let router = http::router(app.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        });
        Ok(Emulator {
            app,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT` (the API is under `/api/v4`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/api/v4/websocket`.
    pub fn websocket_url(&self) -> String {
        format!("ws://{}/api/v4/websocket", self.addr)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drop every WebSocket now, without a close handshake (as a lost network would). The
    /// connections stay resumable by `connection_id` + `sequence_number` for 5 minutes.
    pub fn drop_websockets(&self) {
        self.app.lock().hub.drop_all();
    }

    /// Forget dropped connections, so the next reconnect gets a fresh `hello` (events lost).
    pub fn forget_websocket_sessions(&self) {
        self.app.lock().hub.forget_inactive();
    }

    /// Expire every password-login session (as a session timeout or revocation would): later
    /// calls with those tokens get 401 `api.context.session_expired.app_error`. Personal access
    /// and bot tokens keep working.
    pub fn expire_sessions(&self) {
        self.app
            .lock()
            .sessions
            .retain(|_, s| !s.token_id.is_empty());
    }

    /// Number of live WebSocket connections (authenticated ones).
    pub fn websocket_count(&self) -> usize {
        self.app.lock().hub.live_count()
    }

    /// Rate limit `/api/v4` per remote address: `Some(n)` allows `n` requests a second with
    /// bursts of `n`; `None` turns limiting off (the default).
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        *self
            .app
            .0
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = per_second.map(RateLimiter::new);
    }

    /// Replace the server settings.
    pub fn set_config(&self, config: Config) {
        self.app.lock().config = config;
    }

    /// The current settings.
    pub fn config(&self) -> Config {
        self.app.lock().config.clone()
    }

    /// Stop serving: drop all WebSockets and wait for the server task.
    pub async fn shutdown(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        self.drop_websockets();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(mut t) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
        {
            // Connections still open after the grace period: stop serving them.
            t.abort();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.app.lock().hub.drop_all();
    }
}
