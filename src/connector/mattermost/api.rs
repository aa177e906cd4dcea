//! The Mattermost REST API v4 as the connector uses it: authentication (token, or login with a
//! session renewed on expiry), JSON requests, the error body and rate-limit headers, and the wire
//! types the bridge reads (tolerant of fields it does not know, as the server's clients are).

use std::sync::RwLock;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::config::MattermostAuth;
pub use crate::connector::supervisor::error_chain;

/// What went wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 429: wait this long (`X-RateLimit-Reset`, else `Retry-After`, else 1 s).
    RateLimited {
        /// How long to wait.
        after: Duration,
    },
    /// The server answered with an error status; `id` is the `AppError` id.
    Status {
        /// The HTTP status.
        status: u16,
        /// The `AppError` id (empty when the body was not an `AppError`).
        id: String,
        /// The message.
        message: String,
    },
    /// No answer: connection refused, reset, timed out.
    Transport(String),
    /// The answer did not have the expected shape.
    Decode(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::RateLimited { after } => write!(formatter, "rate limited for {after:?}"),
            ApiError::Status {
                status,
                id,
                message,
            } => write!(formatter, "HTTP {status} {id}: {message}"),
            ApiError::Transport(reason) => write!(formatter, "request failed: {reason}"),
            ApiError::Decode(reason) => write!(formatter, "unexpected answer: {reason}"),
        }
    }
}

impl ApiError {
    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A REST client for one server and account.
pub struct Api {
    http: reqwest::Client,
    base: String,
    auth: MattermostAuth,
    session: RwLock<Option<String>>,
}

impl Api {
    /// A client for `base` (`https://host`, without `/api/v4`), trusting the usual roots and
    /// the certificates in `extra_roots` (PEM).
    pub fn new(base: &str, auth: MattermostAuth, extra_roots: Option<&[u8]>) -> Self {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("tribridge/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = extra_roots {
            match reqwest::Certificate::from_pem_bundle(pem) {
                Ok(certificates) => {
                    for certificate in certificates {
                        builder = builder.add_root_certificate(certificate);
                    }
                }
                Err(error) => {
                    tracing::error!(error = %error, "tls_ca_file holds no usable PEM certificate.");
                }
            }
        }
        let http = builder.build().unwrap_or_default();
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            auth,
            session: RwLock::new(None),
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The token to send: the configured one, or a session from logging in.
    pub async fn token(&self) -> Result<String, ApiError> {
        match &self.auth {
            MattermostAuth::Token(token) => Ok(token.expose().to_owned()),
            MattermostAuth::Password { login, password } => {
                if let Some(token) = self.cached_session() {
                    return Ok(token);
                }
                let response = self
                    .http
                    .post(format!("{}/api/v4/users/login", self.base))
                    .json(&serde_json::json!({"login_id": login, "password": password.expose()}))
                    .send()
                    .await
                    .map_err(|error| ApiError::Transport(error_chain(&error)))?;
                let response = check(response).await?;
                let token = response
                    .headers()
                    .get("token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::Decode("login answer has no Token header".into()))?;
                *self
                    .session
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(token.clone());
                Ok(token)
            }
        }
    }

    fn cached_session(&self) -> Option<String> {
        self.session
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn forget_session(&self) {
        *self
            .session
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// One JSON request to `/api/v4{path}`. A password session that expired is renewed once.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        self.call_as(None, method, path, body).await
    }

    /// [`Api::call`] with another account's token (`None`: the bridge's own account).
    pub async fn call_as<T: DeserializeOwned>(
        &self,
        as_token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        let bytes = self
            .exchange(as_token, method, path, |request| match body {
                Some(body) => request.json(body),
                None => request,
            })
            .await?;
        serde_json::from_slice(&bytes).map_err(|error| ApiError::Decode(format!("{path}: {error}")))
    }

    /// Set a user's profile image (`POST /api/v4/users/{id}/image`, multipart field `image`).
    pub async fn set_profile_image(&self, user_id: &str, content: &[u8]) -> Result<(), ApiError> {
        self.exchange(
            None,
            Method::POST,
            &format!("/users/{user_id}/image"),
            |request| {
                let part = reqwest::multipart::Part::bytes(content.to_vec()).file_name("avatar");
                request.multipart(reqwest::multipart::Form::new().part("image", part))
            },
        )
        .await
        .map(drop)
    }

    /// A file's content (`GET /api/v4/files/{id}`).
    pub async fn download(&self, file_id: &str) -> Result<Vec<u8>, ApiError> {
        self.download_path(&format!("/files/{file_id}")).await
    }

    /// Any binary resource under `/api/v4` (a file, a profile image).
    pub async fn download_path(&self, path: &str) -> Result<Vec<u8>, ApiError> {
        self.exchange(None, Method::GET, path, |request| request)
            .await
    }

    /// Upload one file to a channel (`POST /api/v4/files`, multipart, `channel_id` first):
    /// the new file's id, to attach to a post.
    pub async fn upload(
        &self,
        as_token: Option<&str>,
        channel_id: &str,
        name: &str,
        mime: &str,
        content: &[u8],
    ) -> Result<String, ApiError> {
        let bytes = self
            .exchange(as_token, Method::POST, "/files", |request| {
                let part =
                    || reqwest::multipart::Part::bytes(content.to_vec()).file_name(name.to_owned());
                let part = part().mime_str(mime).unwrap_or_else(|_| part());
                request.multipart(
                    reqwest::multipart::Form::new()
                        .text("channel_id", channel_id.to_owned())
                        .part("files", part),
                )
            })
            .await?;
        let answer: Value = serde_json::from_slice(&bytes)
            .map_err(|error| ApiError::Decode(format!("/files: {error}")))?;
        answer["file_infos"][0]["id"]
            .as_str()
            .map(ToOwned::to_owned)
            .ok_or_else(|| ApiError::Decode("/files: the answer names no file".into()))
    }

    /// One request to `/api/v4{path}`, its body read whole. `attach` adds the request body
    /// (it may be called again: a password session that expired is renewed once).
    async fn exchange(
        &self,
        as_token: Option<&str>,
        method: Method,
        path: &str,
        attach: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, ApiError> {
        let mut renewed = false;
        loop {
            let token = match as_token {
                Some(token) => token.to_owned(),
                None => self.token().await?,
            };
            let request = self
                .http
                .request(method.clone(), format!("{}/api/v4{path}", self.base))
                .bearer_auth(token);
            let response = attach(request)
                .send()
                .await
                .map_err(|error| ApiError::Transport(error_chain(&error)))?;
            match check(response).await {
                Ok(response) => {
                    return response
                        .bytes()
                        .await
                        .map(|bytes| bytes.to_vec())
                        .map_err(|error| ApiError::Transport(error_chain(&error)));
                }
                Err(error)
                    if error.status() == Some(401)
                        && !renewed
                        && as_token.is_none()
                        && matches!(self.auth, MattermostAuth::Password { .. }) =>
                {
                    tracing::info!("Mattermost session expired; logging in again.");
                    self.forget_session();
                    renewed = true;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl Api {
    /// [`Api::call`] for the connection's own reads (log in, channels, catch-up, users): a
    /// 429 is waited out (a few times) instead of returned, since nothing else is queued
    /// behind them.
    pub async fn fetch<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        let mut waits = 0;
        loop {
            match self.call(method.clone(), path, body).await {
                Err(ApiError::RateLimited { after }) if waits < 5 => {
                    waits += 1;
                    tracing::debug!(
                        path,
                        wait_ms = after.as_millis() as u64,
                        "Rate limited; waiting."
                    );
                    tokio::time::sleep(after).await;
                }
                other => return other,
            }
        }
    }
}

/// Turn an error status into an [`ApiError`].
async fn check(response: reqwest::Response) -> Result<reqwest::Response, ApiError> {
    #[derive(Deserialize)]
    struct AppError {
        #[serde(default)]
        id: String,
        #[serde(default)]
        message: String,
    }
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let seconds = header("x-ratelimit-reset")
            .or_else(|| header("retry-after"))
            .unwrap_or(1)
            .clamp(1, 3600);
        return Err(ApiError::RateLimited {
            after: Duration::from_secs(seconds),
        });
    }
    let text = response.text().await.unwrap_or_default();
    let (id, message) = match serde_json::from_str::<AppError>(&text) {
        Ok(error) => (error.id, error.message),
        Err(_) => (String::new(), text.chars().take(200).collect()),
    };
    Err(ApiError::Status {
        status: status.as_u16(),
        id,
        message,
    })
}

/// A post, as the server sends it (REST and inside WebSocket events).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Post {
    /// Its id.
    pub id: String,
    /// Created, ms.
    pub create_at: i64,
    /// Last changed, ms (edits, deletes, reactions, replies bump it).
    pub update_at: i64,
    /// Last edited, ms, or 0.
    pub edit_at: i64,
    /// Deleted, ms, or 0.
    pub delete_at: i64,
    /// The author.
    pub user_id: String,
    /// The channel.
    pub channel_id: String,
    /// The thread root, or empty.
    pub root_id: String,
    /// Set on edit-history rows: the id of the edited post.
    pub original_id: String,
    /// The text (Markdown).
    pub message: String,
    /// `""`, `me`, `system_*`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Free-form properties (`override_username`, `from_webhook`, system post details).
    pub props: serde_json::Map<String, Value>,
    /// The creating request's `pending_post_id` (only in the create answer and the `posted`
    /// event).
    pub pending_post_id: String,
    /// Attached files.
    pub file_ids: Vec<String>,
    /// Whether it has reactions.
    pub has_reactions: bool,
}

impl Post {
    /// A string property.
    pub fn prop(&self, name: &str) -> Option<&str> {
        self.props.get(name).and_then(Value::as_str)
    }
}

/// `GET /channels/{id}/posts`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PostList {
    /// Post ids, newest first.
    pub order: Vec<String>,
    /// The posts by id (may hold more than `order`).
    pub posts: std::collections::HashMap<String, Post>,
}

/// A user.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct User {
    /// Its id.
    pub id: String,
    /// Its username.
    pub username: String,
    /// Its roles, space-separated (`system_user system_admin`).
    pub roles: String,
    /// Deactivated, ms, or 0.
    pub delete_at: i64,
    /// Free-form properties (the bridge marks the accounts it created here).
    pub props: serde_json::Map<String, Value>,
}

/// A team.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Team {
    /// Its id.
    pub id: String,
}

/// A channel.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Channel {
    /// Its id.
    pub id: String,
    /// Its URL name.
    pub name: String,
    /// The newest post's `create_at`.
    pub last_post_at: i64,
}

/// A reaction.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Reaction {
    /// Who reacted.
    pub user_id: String,
    /// To what.
    pub post_id: String,
    /// The emoji's name, without colons.
    pub emoji_name: String,
    /// When, ms.
    pub create_at: i64,
    /// Last changed, ms.
    pub update_at: i64,
    /// Removed, ms, or 0.
    pub delete_at: i64,
}
