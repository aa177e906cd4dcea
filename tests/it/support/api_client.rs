//! A client of an api network, speaking matterbridge's HTTP API as its known clients do
//! (`Content-Type: application/json`, `Authorization: Bearer <token>`, the message fields they
//! send), and reading `/api/stream` line by line as it arrives.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How long a client waits for something the bridge should give it.
pub const DEADLINE: Duration = Duration::from_mins(1);

/// A client of the API on `127.0.0.1:<port>`.
#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

/// A posted request's answer: its status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl ApiClient {
    pub fn new(port: u16, token: &str) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The message body matterbridge's API clients send (the Go and Python clients send every
    /// field of `config.Message`, most of them empty).
    pub fn message(gateway: &str, username: &str, text: &str) -> Value {
        json!({
            "text": text, "channel": "", "username": username, "userid": "", "avatar": "",
            "account": "", "event": "", "protocol": "", "gateway": gateway, "parent_id": "",
            "timestamp": "0001-01-01T00:00:00Z", "id": "", "Extra": null,
        })
    }

    /// `POST /api/message` with `body` (raw), the token given (`None`: no header).
    pub async fn post_raw(&self, body: &str, token: Option<&str>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}/api/message", self.base))
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.expect("POST /api/message");
        Answer {
            status: response.status().as_u16(),
            body: response.text().await.unwrap_or_default(),
        }
    }

    /// `POST /api/message` with the client's token; the answer.
    pub async fn post(&self, body: &Value) -> Answer {
        self.post_raw(&body.to_string(), Some(&self.token)).await
    }

    /// Say `text` as `username` in `gateway`; panics unless answered 200.
    pub async fn say(&self, gateway: &str, username: &str, text: &str) -> Value {
        let answer = self.post(&Self::message(gateway, username, text)).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json()
    }

    /// `GET /api/messages`.
    pub async fn messages(&self) -> Vec<Value> {
        let response = self
            .http
            .get(format!("{}/api/messages", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET /api/messages");
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.expect("a JSON list")
    }

    /// Poll `GET /api/messages` until the messages taken include one whose text contains each
    /// of `markers`; every message taken, in order.
    pub async fn messages_until(&self, markers: &[&str]) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        let mut taken: Vec<Value> = Vec::new();
        loop {
            taken.extend(self.messages().await);
            let texts: Vec<&str> = taken.iter().filter_map(|m| m["text"].as_str()).collect();
            if markers
                .iter()
                .all(|marker| texts.iter().any(|t| t.contains(marker)))
            {
                return taken;
            }
            assert!(
                Instant::now() < deadline,
                "not all of {markers:?} in /api/messages; took {taken:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether `GET /api/health` answers `OK`.
    pub async fn healthy(&self) -> bool {
        match self
            .http
            .get(format!("{}/api/health", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(response) => response.text().await.is_ok_and(|text| text == "OK"),
            Err(_) => false,
        }
    }

    /// Wait until the API answers (after a start or restart).
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + DEADLINE;
        while !self.healthy().await {
            assert!(
                Instant::now() < deadline,
                "the API never answered on {}",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the API does not answer any more (the daemon is gone).
    pub async fn wait_gone(&self) {
        let deadline = Instant::now() + DEADLINE;
        while self.healthy().await {
            assert!(
                Instant::now() < deadline,
                "the API still answers on {}",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /api/stream`: its lines as they arrive.
    pub async fn stream(&self) -> ApiStream {
        self.stream_at("/api/stream").await
    }

    /// `GET /api/stream?after=<id>`: resumed after message `id`.
    pub async fn stream_after(&self, id: &str) -> ApiStream {
        self.stream_at(&format!("/api/stream?after={id}")).await
    }

    async fn stream_at(&self, path: &str) -> ApiStream {
        let mut response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET /api/stream");
        assert_eq!(response.status().as_u16(), 200);
        let (lines, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut pending: Vec<u8> = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let value: Value = serde_json::from_slice(&line).expect("a JSON line");
                    if lines.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        ApiStream {
            receiver,
            task: task.abort_handle(),
        }
    }
}

/// An open `/api/stream`.
pub struct ApiStream {
    receiver: mpsc::UnboundedReceiver<Value>,
    task: tokio::task::AbortHandle,
}

impl ApiStream {
    /// The next line, within the deadline.
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(DEADLINE, self.receiver.recv())
            .await
            .expect("a line on /api/stream before the deadline")
            .expect("the stream is open")
    }

    /// Lines until one whose text contains `marker`, that one included.
    pub async fn until(&mut self, marker: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let line = self.next().await;
            let done = line["text"].as_str().is_some_and(|t| t.contains(marker));
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for ApiStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
