//! The HTTP endpoint of an api network (axum, on the network's `listen`), run under the
//! supervisor like every session:
//!
//! - `GET /api/health`: `OK` (no token: for monitors and load balancers).
//! - `POST /api/message` (`Authorization: Bearer <token>`): a matterbridge message, committed
//!   through the router before the `200`, which echoes it back with its id and time as
//!   matterbridge does. `401` for a missing or wrong token, `400` with the reason for a body
//!   that is not a message, `413` for a file over the bridge's limit, `503` when the store
//!   could not commit it (nothing was relayed: send it again).
//! - `GET /api/messages`: every unread message of the buffer, oldest first, then marked read.
//! - `GET /api/stream`: newline-delimited JSON, an `api_connected` event first, then the
//!   unread messages (with `?after=<id>`: every message after that one), then each message as
//!   it is buffered, to every connected stream.
//! - `POST /hooks/<name>`: a Slack/Mattermost incoming webhook (JSON, or a form with
//!   `payload=`), its secret in `Authorization: Bearer` or `?token=`; answered `ok`.
//!
//! Invariants: nothing is relayed before its request is authenticated; a request that is
//! answered `200` was committed; a client's id (`Idempotency-Key`, or `id` in the body) is the
//! message's id here, so a post repeated with it is answered `200` and relayed once; tokens and
//! secrets are compared in constant time and never logged.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::Digest as _;

use super::build::Shared;
use super::config::Webhook;
use super::convert::{
    ApiMessage, MessageExtra, PostedContent, Refused, WebhookPayload, read_posted, read_webhook,
    rfc3339,
};
use crate::connector::supervisor::{Session, SessionEnd, supervise};
use crate::model::{Attachment, Author, ChannelRef, EventBody, Inbound, TextStyle, now_ms};
use crate::richtext::FormattedText;

/// How many messages a stream reads from the buffer at a time.
const STREAM_PAGE: usize = 256;

/// The task of an api network: its HTTP endpoint, until shutdown.
pub struct ApiTask {
    shared: Arc<Shared>,
}

impl ApiTask {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Serve (listening again after a failure, under the supervisor) until shutdown.
    pub async fn run(self) {
        let context = &self.shared.context;
        // A section is validated without the gateways: a hook into no gateway is said at start.
        for hook in &self.shared.config.webhooks {
            if let Err(refused) = channel_of(&self.shared, &hook.gateway) {
                tracing::error!(network = %self.shared.network, hook = %hook.name, reason = %refused, "A webhook posts to a channel that is in no gateway; its messages will be refused.");
            }
        }
        supervise(
            &self.shared.network,
            context.reconnect,
            &context.shutdown,
            &context.status,
            Endpoint {
                shared: Arc::clone(&self.shared),
            },
        )
        .await;
    }
}

/// One run of the listener.
struct Endpoint {
    shared: Arc<Shared>,
}

impl Session for Endpoint {
    fn label(&self) -> &'static str {
        "API"
    }

    async fn connect(&mut self) -> SessionEnd {
        let shared = &self.shared;
        let shutdown = shared.context.shutdown.clone();
        let listener = match tokio::net::TcpListener::bind(shared.config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                return SessionEnd::Lost(format!(
                    "cannot listen on {}: {error}",
                    shared.config.listen
                ));
            }
        };
        tracing::info!(network = %shared.network, listen = %shared.config.listen, webhooks = shared.config.webhooks.len(), "Listening for API clients and webhooks.");
        // Its channels are the names clients post to: listening is being in all of them.
        shared.context.status.connected();
        // Its channels after each reload too: the listener takes them as they are.
        let mut channel_updates = shared.context.channel_updates.clone();
        shared
            .context
            .status
            .joined_only(channel_updates.borrow_and_update().iter());
        let body_limit = usize::try_from(shared.context.files.store.max_bytes())
            .unwrap_or(usize::MAX)
            .saturating_mul(4)
            / 3
            + 1024 * 1024;
        let app = axum::Router::new()
            .route("/api/health", axum::routing::get(health))
            .route("/api/message", axum::routing::post(post_message))
            .route("/api/messages", axum::routing::get(get_messages))
            .route("/api/stream", axum::routing::get(get_stream))
            .route("/hooks/{name}", axum::routing::post(post_webhook))
            .fallback(not_found)
            .layer(axum::extract::DefaultBodyLimit::max(body_limit))
            .with_state(Arc::clone(shared));
        let serving =
            axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let follow = async {
            while channel_updates.changed().await.is_ok() {
                let channels = channel_updates.borrow_and_update().clone();
                tracing::info!(network = %shared.network, gateways = %channels.join(", "), "The listener takes the gateway names of the reload.");
                shared.context.status.joined_only(channels.iter());
            }
            std::future::pending::<()>().await;
        };
        let served = tokio::select! {
            served = serving => served,
            () = follow => Ok(()),
        };
        match served {
            Ok(()) if shutdown.is_cancelled() => SessionEnd::Shutdown,
            Ok(()) => SessionEnd::Lost("the listener stopped".to_owned()),
            Err(error) => SessionEnd::Lost(format!("the listener failed: {error}")),
        }
    }
}

/// A JSON error answer `{"message": reason}`, counted as refused.
fn refuse(shared: &Shared, status: StatusCode, reason: &str) -> Response {
    shared.metrics.refused.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(network = %shared.network, status = status.as_u16(), reason, "API request refused.");
    (status, json_body(&json!({ "message": reason }))).into_response()
}

/// `value` as a JSON answer.
fn json_body(value: &impl serde::Serialize) -> Response {
    match serde_json::to_string(value) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Whether two secrets are equal, in time independent of where they differ.
fn same_secret(given: &str, expected: &str) -> bool {
    let given = sha2::Sha256::digest(given.as_bytes());
    let expected = sha2::Sha256::digest(expected.as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The `401` to answer when the request does not carry the API's token; `None` when it does.
fn unauthorised(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    match bearer(headers) {
        Some(token) if same_secret(token, shared.config.token.expose()) => None,
        Some(_) => {
            tracing::warn!(network = %shared.network, "An API request with a wrong token was refused.");
            Some(refuse(shared, StatusCode::UNAUTHORIZED, "invalid token"))
        }
        None => Some(refuse(
            shared,
            StatusCode::UNAUTHORIZED,
            "missing token: send `Authorization: Bearer <token>`",
        )),
    }
}

/// The client's idempotency key: the `Idempotency-Key` header, else `fallback` (an `id` in
/// the body).
fn idempotency_key(headers: &HeaderMap, fallback: &str) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .or_else(|| Some(fallback.trim()).filter(|id| !id.is_empty()))
        .map(ToOwned::to_owned)
}

async fn health() -> &'static str {
    "OK"
}

async fn not_found(State(shared): State<Arc<Shared>>) -> Response {
    refuse(
        &shared,
        StatusCode::NOT_FOUND,
        "unknown endpoint: this API has /api/health, /api/message, /api/messages, /api/stream \
         and /hooks/<name>",
    )
}

/// The channel of this network a client names as `gateway`, if messages from it are
/// relayed somewhere.
fn channel_of(shared: &Shared, gateway: &str) -> Result<String, Refused> {
    // The channels of the last reload: the running listener follows them.
    let channels = shared.context.channel_updates.borrow().clone();
    let known = || channels.join(", ");
    if gateway.trim().is_empty() {
        return Err(Refused::NoGateway(known()));
    }
    let channel = channels
        .iter()
        .find(|channel| *channel == gateway)
        .ok_or_else(|| Refused::UnknownGateway {
            given: gateway.to_owned(),
            known: known(),
        })?;
    let origin = ChannelRef::new(&shared.network, channel);
    if shared.context.router.topology().routes(&origin).is_empty() {
        return Err(Refused::UnknownGateway {
            given: format!("{gateway}` (its gateway takes nothing from this API: direction `out`)"),
            known: known(),
        });
    }
    Ok(channel.clone())
}

/// Who said a posted message, and what: committed through the router. `Ok` with the
/// message's id and time once it is in the store.
async fn commit(
    shared: &Shared,
    channel: &str,
    author: Author,
    content: PostedContent,
    key: Option<String>,
) -> Result<(String, i64), Response> {
    let files = &shared.context.files;
    let mut attachments = Vec::new();
    for file in content.files {
        let size = file.bytes.len() as u64;
        if !files.store.accepts(size) {
            return Err(refuse(
                shared,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "`{}` is {size} bytes; this bridge takes files up to {} bytes",
                    file.name,
                    files.store.max_bytes()
                ),
            ));
        }
        let hash = files.put(file.bytes).await.map_err(|error| {
            tracing::warn!(network = %shared.network, error = %error, "A posted file could not be stored; the post is refused for a retry.");
            refuse(shared, StatusCode::SERVICE_UNAVAILABLE, "the file could not be stored; send it again")
        })?;
        attachments.push(Attachment {
            name: file.name,
            mime: file.mime,
            size: Some(size),
            stored: Some(hash),
        });
    }
    let remote_id = key.map_or_else(
        || uuid::Uuid::now_v7().to_string(),
        |key| format!("key:{key}"),
    );
    let timestamp_ms = now_ms();
    let inbound = Inbound {
        origin: ChannelRef::new(&shared.network, channel),
        remote_id: Some(remote_id.clone()),
        author,
        timestamp_ms,
        body: EventBody::Text {
            style: content.style,
            text: content.text,
            reply_to: None,
            attachments,
            thread_root: None,
        },
        permalink: None,
    };
    match shared.context.router.submit(inbound).await {
        Ok(_) => {
            shared.metrics.accepted.fetch_add(1, Ordering::Relaxed);
            Ok((remote_id, timestamp_ms))
        }
        Err(error) => {
            tracing::warn!(network = %shared.network, error = %error, "A posted message could not be committed; the client is told to send it again.");
            Err(refuse(
                shared,
                StatusCode::SERVICE_UNAVAILABLE,
                "the message could not be stored; send it again",
            ))
        }
    }
}

async fn post_message(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(answer) = unauthorised(&shared, &headers) {
        return answer;
    }
    let bad = |refused: Refused| refuse(&shared, StatusCode::BAD_REQUEST, &refused.to_string());
    let (posted, content) = match read_posted(&body, &shared.network) {
        Ok(read) => read,
        Err(refused) => return bad(refused),
    };
    let channel = match channel_of(&shared, &posted.gateway) {
        Ok(channel) => channel,
        Err(refused) => return bad(refused),
    };
    let username = match posted.username.trim() {
        "" => "api".to_owned(),
        name => name.to_owned(),
    };
    let author = Author {
        id: match posted.userid.trim() {
            "" => username.clone(),
            id => id.to_owned(),
        },
        display_name: username.clone(),
    };
    let event = posted.event.clone();
    let key = idempotency_key(&headers, &posted.id);
    match commit(&shared, &channel, author.clone(), content, key).await {
        Ok((id, timestamp_ms)) => json_body(&ApiMessage {
            text: posted.text,
            channel: channel.clone(),
            username,
            userid: author.id,
            avatar: posted.avatar,
            account: format!("api.{}", shared.network),
            event,
            protocol: "api".to_owned(),
            gateway: channel,
            parent_id: String::new(),
            timestamp: rfc3339(timestamp_ms),
            id,
            extra: MessageExtra::default(),
        })
        .into_response(),
        Err(answer) => answer,
    }
}

async fn get_messages(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(answer) = unauthorised(&shared, &headers) {
        return answer;
    }
    let reader = Arc::clone(&shared);
    let taken = tokio::task::spawn_blocking(move || {
        let buffer = reader.buffer.as_ref()?;
        let taken = buffer.take_unread(now_ms());
        reader
            .metrics
            .buffered
            .store(buffer.unread(), Ordering::Relaxed);
        Some(taken)
    })
    .await;
    match taken {
        Ok(Some(Ok(entries))) => {
            let mut body = String::from("[");
            for (index, entry) in entries.iter().enumerate() {
                if index > 0 {
                    body.push(',');
                }
                body.push_str(&entry.json);
            }
            body.push(']');
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Ok(Some(Err(error))) => {
            tracing::warn!(network = %shared.network, error = %error, "The API's buffer could not be read.");
            refuse(
                &shared,
                StatusCode::SERVICE_UNAVAILABLE,
                "the buffer could not be read; ask again",
            )
        }
        Ok(None) | Err(_) => refuse(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "the buffer is not available (see the bridge's log)",
        ),
    }
}

async fn get_stream(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    if let Some(answer) = unauthorised(&shared, &headers) {
        return answer;
    }
    // `?after=<id>`: resume after the last message the client read (kept an hour after it
    // was read), whether or not a broken stream marked later ones read.
    let after = uri.query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("after="))
            .and_then(percent_decode)
    });
    let (lines, receiver) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(stream_lines(Arc::clone(&shared), lines, after));
    let body = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|line| (Ok::<_, std::io::Error>(line), receiver))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// Counts a connected stream while it lives.
struct StreamCount(Arc<std::sync::atomic::AtomicI64>);

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Feed one stream: `api_connected`, the unread messages, then each message as it is
/// buffered; each written message is marked read. Ends when the client goes or at shutdown.
async fn stream_lines(
    shared: Arc<Shared>,
    lines: tokio::sync::mpsc::Sender<Bytes>,
    after: Option<String>,
) {
    shared.metrics.streams.fetch_add(1, Ordering::Relaxed);
    let _count = StreamCount(Arc::clone(&shared.metrics.streams));
    // Watch first: whatever is buffered after the backlog is read wakes the loop below.
    let mut newest = shared.newest.subscribe();
    let Ok(connected) = serde_json::to_string(&ApiMessage::connected(now_ms())) else {
        return;
    };
    if lines.send(Bytes::from(connected + "\n")).await.is_err() {
        return;
    }
    if shared.buffer.is_none() {
        return;
    }
    let mut last = 0;
    let mut backlog = true;
    if let Some(after) = after {
        let reader = Arc::clone(&shared);
        let position = tokio::task::spawn_blocking(move || {
            reader.buffer.as_ref()?.position_of(&after).ok().flatten()
        })
        .await
        .ok()
        .flatten();
        if let Some(position) = position {
            (last, backlog) = (position, false);
        }
    }
    loop {
        // Read a page: the unread ones while the backlog lasts, then what came after `last`.
        let reader = Arc::clone(&shared);
        let page = tokio::task::spawn_blocking(move || {
            let buffer = reader.buffer.as_ref()?;
            Some(if backlog {
                buffer.unread_entries(STREAM_PAGE)
            } else {
                buffer.after(last, STREAM_PAGE)
            })
        })
        .await;
        let (entries, newest_now) = match page {
            Ok(Some(Ok(page))) => page,
            Ok(Some(Err(error))) => {
                tracing::warn!(network = %shared.network, error = %error, "The API's buffer could not be read; the stream ends.");
                return;
            }
            Ok(None) | Err(_) => return,
        };
        if entries.is_empty() {
            if backlog {
                backlog = false;
                last = last.max(newest_now);
                continue;
            }
            tokio::select! {
                changed = newest.changed() => if changed.is_err() { return },
                () = lines.closed() => return,
                () = shared.context.shutdown.cancelled() => return,
            }
            continue;
        }
        for entry in &entries {
            let mut line = entry.json.clone();
            line.push('\n');
            if lines.send(Bytes::from(line)).await.is_err() {
                return;
            }
            last = last.max(entry.seq);
        }
        let writer = Arc::clone(&shared);
        let through = last;
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(buffer) = writer.buffer.as_ref() {
                if let Err(error) = buffer.mark_read_through(through, now_ms()) {
                    tracing::warn!(network = %writer.network, error = %error, "Could not mark streamed messages read; a poll may give them again.");
                }
                writer
                    .metrics
                    .buffered
                    .store(buffer.unread(), Ordering::Relaxed);
            }
        })
        .await;
    }
}

/// A hook's secret: `Authorization: Bearer`, else `?token=` in the query.
fn hook_secret<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<String> {
    bearer(headers).map(ToOwned::to_owned).or_else(|| {
        query?.split('&').find_map(|pair| {
            pair.strip_prefix("token=")
                .map(|value| percent_decode(value).unwrap_or_default())
        })
    })
}

/// `%XX` and `+` decoded (form and query encoding); `None` when it is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..=index + 2]).ok();
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        index += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).ok()
}

/// The webhook JSON of a request, read: the body, or its `payload` form field.
fn webhook_body(
    headers: &HeaderMap,
    body: &[u8],
    network: &str,
) -> Result<(WebhookPayload, FormattedText), String> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    let json = if form {
        let text = std::str::from_utf8(body).map_err(|_| "the form is not UTF-8".to_owned())?;
        text.split('&')
            .find_map(|pair| pair.strip_prefix("payload="))
            .and_then(percent_decode)
            .ok_or_else(|| "the form has no `payload` field".to_owned())?
            .into_bytes()
    } else {
        body.to_vec()
    };
    read_webhook(&json, network)
}

async fn post_webhook(
    State(shared): State<Arc<Shared>>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let Some(hook): Option<&Webhook> = shared.config.webhooks.iter().find(|h| h.name == name)
    else {
        return refuse(&shared, StatusCode::NOT_FOUND, "no such webhook");
    };
    match hook_secret(&headers, uri.query()) {
        Some(secret) if same_secret(&secret, hook.secret.expose()) => {}
        given => {
            if given.is_some() {
                tracing::warn!(network = %shared.network, hook = %hook.name, "A webhook request with a wrong secret was refused.");
            }
            return refuse(
                &shared,
                StatusCode::UNAUTHORIZED,
                "missing or wrong secret: send `?token=<secret>` or `Authorization: Bearer <secret>`",
            );
        }
    }
    let (payload, text) = match webhook_body(&headers, &body, &shared.network) {
        Ok(read) => read,
        Err(reason) => return refuse(&shared, StatusCode::BAD_REQUEST, &reason),
    };
    let channel = match channel_of(&shared, &hook.gateway) {
        Ok(channel) => channel,
        Err(refused) => {
            tracing::error!(network = %shared.network, hook = %hook.name, reason = %refused, "A webhook posts to a channel that is in no gateway; its messages are refused.");
            return refuse(&shared, StatusCode::NOT_FOUND, &refused.to_string());
        }
    };
    if text.is_empty() {
        return refuse(
            &shared,
            StatusCode::BAD_REQUEST,
            "the webhook is empty: give `text` or `attachments`",
        );
    }
    let username = match payload.username.trim() {
        "" => hook.name.clone(),
        name => name.to_owned(),
    };
    let author = Author {
        id: format!("hook:{}", hook.name),
        display_name: username,
    };
    let content = PostedContent {
        style: TextStyle::Normal,
        text,
        files: Vec::new(),
    };
    let key = idempotency_key(&headers, "");
    match commit(&shared, &channel, author, content, key).await {
        Ok(_) => {
            shared.metrics.webhooks.fetch_add(1, Ordering::Relaxed);
            ([(header::CONTENT_TYPE, "text/plain")], "ok").into_response()
        }
        Err(answer) => answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_themselves() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("", "abc"));
        assert!(!same_secret("abcd", "abc"));
    }

    #[test]
    fn forms_and_queries_are_decoded() {
        assert_eq!(percent_decode("a%20b+c%7B").as_deref(), Some("a b c{"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        let mut headers = HeaderMap::new();
        assert_eq!(
            hook_secret(&headers, Some("a=1&token=s%2Bx")),
            Some("s+x".into())
        );
        headers.insert(header::AUTHORIZATION, "Bearer h".parse().unwrap());
        assert_eq!(hook_secret(&headers, Some("token=q")), Some("h".into()));
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let (payload, text) =
            webhook_body(&headers, b"payload=%7B%22text%22%3A%22hi%22%7D", "api").unwrap();
        assert_eq!(
            (payload.text.as_str(), text.to_plain_text().as_str()),
            ("hi", "hi")
        );
    }
}
