//! A Matrix user for the tests: plain client-server API calls (reqwest), the way a person's
//! client sees a room: send, redact, react, and `/sync` to read what arrives, with deadlines.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Register `user` with Synapse's shared-secret admin API (works with registration closed).
pub async fn register(base: &str, user: &str, password: &str) {
    register_as(base, user, password, false).await;
}

/// [`register`], as a server admin when `admin` is set.
async fn register_as(base: &str, user: &str, password: &str, admin: bool) {
    use hmac::{Hmac, Mac as _};
    let http = reqwest::Client::new();
    let nonce: Value = http
        .get(format!("{base}/_synapse/admin/v1/register"))
        .send()
        .await
        .expect("nonce request")
        .json()
        .await
        .expect("nonce json");
    let nonce = nonce["nonce"].as_str().expect("nonce").to_owned();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"test-shared-secret").expect("hmac key");
    let kind = if admin { "admin" } else { "notadmin" };
    mac.update(format!("{nonce}\0{user}\0{password}\0{kind}").as_bytes());
    let digest = mac
        .finalize()
        .into_bytes()
        .iter()
        .fold(String::new(), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        });
    let response = http
        .post(format!("{base}/_synapse/admin/v1/register"))
        .json(
            &json!({"nonce": nonce, "username": user, "password": password,
                      "admin": admin, "mac": digest}),
        )
        .send()
        .await
        .expect("register request");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "register {user}: {status} {body}");
}

/// The local part of a Matrix user id (what the bridge's `{NICK}` shows).
pub fn local_part(user_id: &str) -> String {
    user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A logged-in Matrix user.
pub struct MatrixUser {
    pub user_id: String,
    base: String,
    token: String,
    http: reqwest::Client,
    since: Option<String>,
    txn: u64,
}

/// One `m.room.message` (or other event) as a person sees it.
#[derive(Debug, Clone)]
#[allow(clippy::struct_field_names)] // `event_id` is the Matrix name
pub struct Event {
    pub event_id: String,
    pub sender: String,
    pub kind: String,
    pub content: Value,
}

impl Event {
    pub fn body(&self) -> &str {
        self.content["body"].as_str().unwrap_or_default()
    }
    pub fn msgtype(&self) -> &str {
        self.content["msgtype"].as_str().unwrap_or_default()
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

impl MatrixUser {
    /// Register a new user and log in.
    pub async fn new(base: &str, name: &str) -> MatrixUser {
        register(base, name, "password").await;
        Self::login(base, name, "password").await
    }

    /// A new server admin of this Synapse.
    pub async fn new_admin(base: &str, name: &str) -> MatrixUser {
        register_as(base, name, "password", true).await;
        Self::login(base, name, "password").await
    }

    pub async fn login(base: &str, name: &str, password: &str) -> MatrixUser {
        let http = reqwest::Client::new();
        let reply: Value = http
            .post(format!("{base}/_matrix/client/v3/login"))
            .json(&json!({"type": "m.login.password",
                          "identifier": {"type": "m.id.user", "user": name},
                          "password": password}))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("login json");
        MatrixUser {
            user_id: reply["user_id"].as_str().expect("user_id").to_owned(),
            base: base.to_owned(),
            token: reply["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            http,
            since: None,
            txn: 0,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: &Value) -> Value {
        let response = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|error| panic!("{method} {path}: {error}"));
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value
    }

    /// Create a public room with this alias (local part) and return its id.
    pub async fn create_room(&self, alias: &str) -> String {
        let reply = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                &json!({"preset": "public_chat", "room_alias_name": alias}),
            )
            .await;
        reply["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Create an invite-only room with this alias (local part) and return its id.
    pub async fn create_private_room(&self, alias: &str) -> String {
        let reply = self
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/createRoom",
                &json!({"preset": "private_chat", "room_alias_name": alias}),
            )
            .await;
        reply["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Put a user in a public room as the server admin does (Synapse's admin join API): the
    /// user's own client does not ask for it.
    pub async fn force_join(&self, room: &str, user_id: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/_synapse/admin/v1/join/{}", encode(room)),
            &json!({"user_id": user_id}),
        )
        .await;
    }

    /// Invite a user to a room.
    pub async fn invite(&self, room: &str, user_id: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", encode(room)),
            &json!({"user_id": user_id}),
        )
        .await;
    }

    /// Upload bytes to the content repository; returns the `mxc://` URI.
    pub async fn upload(&self, name: &str, content_type: &str, bytes: Vec<u8>) -> String {
        let response = self
            .http
            .post(format!(
                "{}/_matrix/media/v3/upload?filename={}",
                self.base,
                encode(name)
            ))
            .bearer_auth(&self.token)
            .header("Content-Type", content_type)
            .body(bytes)
            .send()
            .await
            .expect("upload");
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "upload: {status} {value}");
        value["content_uri"]
            .as_str()
            .expect("content_uri")
            .to_owned()
    }

    /// Download a file from the content repository (authenticated media).
    pub async fn download(&self, mxc: &str) -> Vec<u8> {
        let path = mxc.strip_prefix("mxc://").expect("an mxc:// URI");
        let response = self
            .http
            .get(format!(
                "{}/_matrix/client/v1/media/download/{path}",
                self.base
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("download");
        assert!(
            response.status().is_success(),
            "download {mxc}: {}",
            response.status()
        );
        response.bytes().await.expect("file body").to_vec()
    }

    /// Set this user's display name.
    pub async fn set_display_name(&self, name: &str) {
        self.call(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/profile/{}/displayname",
                encode(&self.user_id)
            ),
            &json!({"displayname": name}),
        )
        .await;
    }

    /// Set this user's picture (an `mxc://` URI).
    pub async fn set_avatar(&self, mxc: &str) {
        self.call(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/profile/{}/avatar_url",
                encode(&self.user_id)
            ),
            &json!({"avatar_url": mxc}),
        )
        .await;
    }

    /// Join a room by id or alias.
    pub async fn join(&self, room: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/join/{}", encode(room)),
            &json!({}),
        )
        .await;
    }

    /// Leave a room.
    pub async fn leave(&self, room: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", encode(room)),
            &json!({}),
        )
        .await;
    }

    /// Set a room's topic.
    pub async fn set_topic(&self, room: &str, topic: &str) {
        self.call(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.topic/",
                encode(room)
            ),
            &json!({"topic": topic}),
        )
        .await;
    }

    /// Set a state event (`kind`, empty state key), e.g. a room's power levels.
    pub async fn set_state(&self, room: &str, kind: &str, content: &Value) {
        self.call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/rooms/{}/state/{kind}/", encode(room)),
            content,
        )
        .await;
    }

    /// Send any message-like event; returns its event id.
    pub async fn send_event(&mut self, room: &str, kind: &str, content: Value) -> String {
        self.txn += 1;
        let reply = self
            .call(
                reqwest::Method::PUT,
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/{kind}/t{}x{}",
                    encode(room),
                    std::process::id(),
                    self.txn
                ),
                &content,
            )
            .await;
        reply["event_id"].as_str().expect("event_id").to_owned()
    }

    pub async fn say(&mut self, room: &str, text: &str) -> String {
        self.send_event(
            room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": text}),
        )
        .await
    }

    pub async fn send_message(&mut self, room: &str, msgtype: &str, text: &str) -> String {
        self.send_event(
            room,
            "m.room.message",
            json!({"msgtype": msgtype, "body": text}),
        )
        .await
    }

    pub async fn redact(&mut self, room: &str, event_id: &str) {
        self.txn += 1;
        self.call(
            reqwest::Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/redact/{}/r{}x{}",
                encode(room),
                encode(event_id),
                std::process::id(),
                self.txn
            ),
            &json!({}),
        )
        .await;
    }

    /// Take the current sync position: later reads see only what happens from now on.
    pub async fn mark(&mut self) {
        let reply = self
            .call(
                reqwest::Method::GET,
                "/_matrix/client/v3/sync?timeout=0",
                &Value::Null,
            )
            .await;
        self.since = reply["next_batch"].as_str().map(ToOwned::to_owned);
    }

    /// Read the room's timeline events from the last position on, until `done` says so or the
    /// deadline passes (then panic with what was seen).
    pub async fn events_until(
        &mut self,
        room: &str,
        timeout: Duration,
        done: impl Fn(&[Event]) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut seen: Vec<Event> = Vec::new();
        loop {
            // A person's client shows every message: ask for more than Synapse's default of
            // ten timeline events per room and sync.
            let mut path = format!(
                "/_matrix/client/v3/sync?timeout=2000&filter={}",
                encode(r#"{"room":{"timeline":{"limit":1000}}}"#)
            );
            if let Some(since) = &self.since {
                path.push_str("&since=");
                path.push_str(&encode(since));
            }
            let reply = self.call(reqwest::Method::GET, &path, &Value::Null).await;
            self.since = reply["next_batch"].as_str().map(ToOwned::to_owned);
            if let Some(events) = reply["rooms"]["join"][room]["timeline"]["events"].as_array() {
                for event in events {
                    seen.push(Event {
                        event_id: event["event_id"].as_str().unwrap_or_default().to_owned(),
                        sender: event["sender"].as_str().unwrap_or_default().to_owned(),
                        kind: event["type"].as_str().unwrap_or_default().to_owned(),
                        content: event["content"].clone(),
                    });
                }
            }
            if done(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out in {room}; saw {:#?}",
                seen.iter()
                    .map(|e| (&e.sender, &e.kind, &e.content))
                    .collect::<Vec<_>>()
            );
        }
    }

    /// The `m.room.message` events from the last position until one whose body contains
    /// `marker`.
    pub async fn messages_until(&mut self, room: &str, marker: &str) -> Vec<Event> {
        let events = self
            .events_until(room, Duration::from_mins(1), |events| {
                events
                    .iter()
                    .any(|e| e.kind == "m.room.message" && e.body().contains(marker))
            })
            .await;
        events
            .into_iter()
            .filter(|e| e.kind == "m.room.message")
            .collect()
    }

    /// Every `m.room.message` event of the room, oldest first, read back over `/messages`
    /// (paged, so a long history is complete).
    pub async fn history(&self, room: &str) -> Vec<Event> {
        self.history_events(room)
            .await
            .into_iter()
            .filter(|event| event.kind == "m.room.message")
            .collect()
    }

    /// Every event of the room's timeline (messages, memberships, state), oldest first, read
    /// back over `/messages`.
    pub async fn history_events(&self, room: &str) -> Vec<Event> {
        let mut all = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut path = format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
                encode(room)
            );
            if let Some(from) = &from {
                path.push_str("&from=");
                path.push_str(&encode(from));
            }
            let reply = self.call(reqwest::Method::GET, &path, &Value::Null).await;
            let chunk = reply["chunk"].as_array().cloned().unwrap_or_default();
            for event in &chunk {
                all.push(Event {
                    event_id: event["event_id"].as_str().unwrap_or_default().to_owned(),
                    sender: event["sender"].as_str().unwrap_or_default().to_owned(),
                    kind: event["type"].as_str().unwrap_or_default().to_owned(),
                    content: event["content"].clone(),
                });
            }
            match reply["end"].as_str() {
                Some(end) if !chunk.is_empty() => from = Some(end.to_owned()),
                _ => break,
            }
        }
        all.reverse();
        all
    }
}

/// Sync the SDK `client` until `user` has joined `room` (a minute at most, else the test
/// fails); returns the sync settings to go on from.
pub async fn sync_until_joined(
    client: &matrix_sdk::Client,
    room: &matrix_sdk::Room,
    user: &matrix_sdk::ruma::UserId,
    mut settings: matrix_sdk::config::SyncSettings,
) -> matrix_sdk::config::SyncSettings {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let response = client.sync_once(settings.clone()).await.unwrap();
        settings = settings.token(response.next_batch);
        let member = room.get_member_no_sync(user).await.unwrap();
        if member.is_some_and(|m| {
            *m.membership() == matrix_sdk::ruma::events::room::member::MembershipState::Join
        }) {
            return settings;
        }
        assert!(Instant::now() < deadline, "{user} never joined");
    }
}
