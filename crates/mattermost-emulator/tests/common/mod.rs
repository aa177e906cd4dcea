//! Test helpers: start an emulator on loopback, a small JSON HTTP client, a world with a team,
//! users and a bot built through the API, and a WebSocket client that waits with deadlines.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mattermost_emulator::Emulator;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any wait may take.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub const ADMIN: &str = "sysadmin";
pub const ADMIN_PW: &str = "sysadmin-password";

/// Start an emulator on 127.0.0.1 with an OS-chosen port.
pub async fn start() -> Emulator {
    Emulator::start("127.0.0.1:0".parse().unwrap(), ADMIN, ADMIN_PW)
        .await
        .expect("emulator starts")
}

/// One response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    /// The AppError id.
    pub fn err_id(&self) -> &str {
        self.json["id"].as_str().unwrap_or("")
    }
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A JSON client for one identity.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    pub user_id: String,
}

impl Api {
    pub fn anonymous(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: format!("{base}/api/v4"),
            token: None,
            user_id: String::new(),
        }
    }

    pub fn with_token(&self, token: &str, user_id: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            user_id: user_id.to_owned(),
            ..self.clone()
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = tokio::time::timeout(DEADLINE, req.send())
            .await
            .expect("request within deadline")
            .expect("request sent");
        Self::read(resp).await
    }

    pub async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PUT, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }

    /// Log in by password.
    pub async fn login(base: &str, user: &str, password: &str) -> Api {
        let anon = Api::anonymous(base);
        let r = anon
            .post(
                "/users/login",
                json!({"login_id": user, "password": password}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "login {user}: {}", r.text);
        let token = r.header("token").to_owned();
        anon.with_token(&token, r.json["id"].as_str().unwrap())
    }

    /// Post a message, asserting 201.
    pub async fn create_post(&self, channel_id: &str, message: &str) -> Value {
        let r = self
            .post(
                "/posts",
                json!({"channel_id": channel_id, "message": message}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json
    }
}

/// A server with a team, two users and a bot, all made through the API.
pub struct World {
    pub emu: Emulator,
    pub admin: Api,
    pub team_id: String,
    pub town_square: String,
    /// A public channel `bridge` that alice, bob and the bot are in.
    pub channel_id: String,
    pub alice: Api,
    pub bob: Api,
    pub bot: Api,
}

pub async fn create_user(admin: &Api, base: &str, team_id: &str, name: &str) -> Api {
    let pw = format!("{name}-password");
    let r = admin
        .post(
            "/users",
            json!({"username": name, "email": format!("{name}@example.org"), "password": pw}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let r = admin
        .post(
            &format!("/teams/{team_id}/members"),
            json!({"team_id": team_id, "user_id": id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    Api::login(base, name, &pw).await
}

pub async fn world() -> World {
    let emu = start().await;
    let base = emu.base_url();
    let admin = Api::login(&base, ADMIN, ADMIN_PW).await;
    let r = admin
        .post(
            "/teams",
            json!({"name": "test", "display_name": "Test", "type": "O"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let team_id = r.json["id"].as_str().unwrap().to_owned();
    let r = admin
        .get(&format!("/teams/{team_id}/channels/name/town-square"))
        .await;
    let town_square = r.json["id"].as_str().unwrap().to_owned();
    let alice = create_user(&admin, &base, &team_id, "alice").await;
    let bob = create_user(&admin, &base, &team_id, "bob").await;
    let r = admin
        .post(
            "/bots",
            json!({"username": "bridgebot", "display_name": "Bridge", "description": "the bridge"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let bot_id = r.json["user_id"].as_str().unwrap().to_owned();
    let r = admin
        .post(
            &format!("/users/{bot_id}/tokens"),
            json!({"description": "bridge"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let bot = admin.with_token(r.json["token"].as_str().unwrap(), &bot_id);
    let r = admin
        .post(
            &format!("/teams/{team_id}/members"),
            json!({"team_id": team_id, "user_id": bot_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = alice
        .post(
            "/channels",
            json!({"team_id": team_id, "name": "bridge", "display_name": "Bridge", "type": "O"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let channel_id = r.json["id"].as_str().unwrap().to_owned();
    for who in [&bob, &bot] {
        let r = who
            .post(
                &format!("/channels/{channel_id}/members"),
                json!({"user_id": who.user_id}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    World {
        emu,
        admin,
        team_id,
        town_square,
        channel_id,
        alice,
        bob,
        bot,
    }
}

/// A WebSocket client that keeps every frame it read.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Events (frames with `event`) in arrival order.
    pub events: Vec<Value>,
    /// Replies (frames with `seq_reply`) in arrival order.
    pub replies: Vec<Value>,
    next_seq: i64,
}

impl Ws {
    /// Connect, authenticating at upgrade with the header when `token` is given.
    pub async fn connect(url: &str, token: Option<&str>) -> Ws {
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (stream, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
            .await
            .expect("ws connect within deadline")
            .expect("ws connects");
        Ws {
            stream,
            events: Vec::new(),
            replies: Vec::new(),
            next_seq: 1,
        }
    }

    /// Send an action; returns its seq.
    pub async fn send_action(&mut self, action: &str, data: Value) -> i64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send_raw(json!({"seq": seq, "action": action, "data": data}))
            .await;
        seq
    }

    pub async fn send_raw(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("ws send");
    }

    /// Read one JSON frame; `None` when the socket ended.
    pub async fn read(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.stream.next())
                .await
                .expect("ws frame within deadline");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("frame is JSON");
                    if v.get("event").is_some() {
                        self.events.push(v.clone());
                    } else {
                        self.replies.push(v.clone());
                    }
                    return Some(v);
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Wait for an event matching `pred` (already seen ones count).
    pub async fn wait_event(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(e) = self.events.iter().find(|e| pred(e)) {
            return e.clone();
        }
        loop {
            match self.read().await {
                Some(v) if v.get("event").is_some() && pred(&v) => return v,
                Some(_) => {}
                None => panic!(
                    "socket closed while waiting for {what}; saw {:?}",
                    self.events
                ),
            }
        }
    }

    /// Wait for an event by name whose embedded post (JSON string) matches.
    pub async fn wait_post_event(
        &mut self,
        event: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, Value) {
        let e = self
            .wait_event(event, |e| {
                e["event"] == event
                    && e["data"]["post"]
                        .as_str()
                        .and_then(|s| serde_json::from_str::<Value>(s).ok())
                        .is_some_and(|p| pred(&p))
            })
            .await;
        let post: Value = serde_json::from_str(e["data"]["post"].as_str().unwrap()).unwrap();
        (e, post)
    }

    /// Wait for the reply to `seq`.
    pub async fn wait_reply(&mut self, seq: i64) -> Value {
        if let Some(r) = self.replies.iter().find(|r| r["seq_reply"] == seq) {
            return r.clone();
        }
        loop {
            match self.read().await {
                Some(v) if v["seq_reply"] == seq => return v,
                Some(_) => {}
                None => panic!("socket closed while waiting for reply {seq}"),
            }
        }
    }

    /// Read until the socket ends (within the deadline).
    pub async fn wait_closed(&mut self) {
        while self.read().await.is_some() {}
    }
}

/// Connect with the header and wait for `hello`.
pub async fn ws_for(emu: &Emulator, api: &Api) -> Ws {
    let mut ws = Ws::connect(&emu.websocket_url(), api.token.as_deref()).await;
    ws.wait_event("hello", |e| e["event"] == "hello").await;
    ws
}
