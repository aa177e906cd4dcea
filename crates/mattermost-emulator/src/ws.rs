//! The `/api/v4/websocket` endpoint: upgrade (auth by header or by `authentication_challenge`),
//! resumption by `connection_id`/`sequence_number`, the action router (`ping`, `user_typing`,
//! `get_statuses`, …) with `seq_reply` answers, server pings, and the unauthenticated timeout.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::error::ApiError;
use crate::http::{query_map, token_from_headers};
use crate::hub::{Attached, Broadcast, Out};
use crate::ids::wall_ms;
use crate::state::{App, version_id};

/// Time allowed to authenticate.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Server ping frame interval.
const PING_INTERVAL: Duration = Duration::from_secs(60);

/// Upgrade; the upgrade always succeeds, authentication comes after.
pub async fn upgrade(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let token = token_from_headers(&headers).or_else(|| {
        headers
            .get("cookie")
            .and_then(|c| c.to_str().ok())
            .and_then(|c| {
                c.split(';')
                    .filter_map(|kv| kv.trim().split_once('='))
                    .find(|(k, _)| *k == "MMAUTHTOKEN")
                    .map(|(_, v)| v.to_owned())
            })
    });
    let q = query_map(q.as_deref());
    ws.max_message_size(8 * 1024)
        .on_upgrade(move |socket| run(app, socket, token, q))
}

struct Conn {
    user_id: String,
    attached: Attached,
}

async fn run(
    app: App,
    mut socket: WebSocket,
    token: Option<String>,
    q: std::collections::HashMap<String, String>,
) {
    let (tx, mut rx) = unbounded_channel::<Out>();
    let mut conn: Option<Conn> = None;
    if let Some(t) = token {
        let caller = app.lock().caller(&t);
        if let Some(c) = caller {
            let conn_id = q.get("connection_id").cloned().unwrap_or_default();
            let resume = if conn_id.is_empty() {
                None
            } else {
                match q.get("sequence_number").and_then(|s| s.parse::<i64>().ok()) {
                    Some(seq) => Some((conn_id, seq)),
                    // A connection id without a usable sequence number: the server closes.
                    None => return,
                }
            };
            let attached = app.lock().attach_socket(&c.user_id, resume, tx.clone());
            conn = Some(Conn {
                user_id: c.user_id,
                attached,
            });
        }
    }
    let auth_deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Text(s)) => {
                    if socket.send(Message::Text(s.into())).await.is_err() {
                        break;
                    }
                }
                Some(Out::Drop) | None => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if !handle(&app, t.as_str(), &mut conn, &tx) {
                        break;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            () = tokio::time::sleep_until(auth_deadline), if conn.is_none() => break,
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    if let Some(c) = conn {
        app.lock()
            .hub
            .detach(&c.attached.conn_id, c.attached.generation);
    }
}

fn reply_ok(tx: &UnboundedSender<Out>, seq: i64, data: Option<Value>) {
    let mut v = json!({"status": "OK", "seq_reply": seq});
    if let Some(d) = data {
        v["data"] = d;
    }
    let _ = tx.send(Out::Text(v.to_string()));
}

fn reply_fail(tx: &UnboundedSender<Out>, seq: i64, err: &ApiError) {
    let v = json!({"status": "FAIL", "seq_reply": seq, "error": err.body("")});
    let _ = tx.send(Out::Text(v.to_string()));
}

/// Handle one client frame; false closes the socket.
fn handle(app: &App, text: &str, conn: &mut Option<Conn>, tx: &UnboundedSender<Out>) -> bool {
    let Ok(req) = serde_json::from_str::<Value>(text) else {
        return true;
    };
    let seq = req.get("seq").and_then(Value::as_i64).unwrap_or(0);
    let action = req.get("action").and_then(Value::as_str).unwrap_or("");
    let data = req.get("data").cloned().unwrap_or(Value::Null);
    if action.is_empty() {
        reply_fail(
            tx,
            seq,
            &ApiError::bad_request(
                "api.web_socket_router.no_action.app_error",
                "No websocket action.",
            ),
        );
        return true;
    }
    if seq <= 0 {
        reply_fail(
            tx,
            seq,
            &ApiError::bad_request(
                "api.web_socket_router.bad_seq.app_error",
                "Invalid sequence for WebSocket message.",
            ),
        );
        return true;
    }
    if action == "authentication_challenge" {
        if conn.is_some() {
            return true;
        }
        let token = data.get("token").and_then(Value::as_str).unwrap_or("");
        let mut st = app.lock();
        let Some(c) = st.caller(token) else {
            return false;
        };
        let attached = st.attach_socket(&c.user_id, None, tx.clone());
        drop(st);
        *conn = Some(Conn {
            user_id: c.user_id,
            attached,
        });
        reply_ok(tx, seq, None);
        return true;
    }
    let Some(c) = conn.as_ref() else {
        reply_fail(
            tx,
            seq,
            &ApiError::new(
                StatusCode::UNAUTHORIZED,
                "api.web_socket_router.not_authenticated.app_error",
                "Connection is not authenticated. Please log in and try again.",
            ),
        );
        return true;
    };
    match action {
        "ping" => reply_ok(
            tx,
            seq,
            Some(
                json!({"text": "pong", "version": version_id(), "server_time": wall_ms(), "node_id": ""}),
            ),
        ),
        "user_typing" => {
            let channel_id = data
                .get("channel_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let parent_id = data
                .get("parent_id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let mut st = app.lock();
            if st.in_channel(&channel_id, &c.user_id) {
                let mut b = Broadcast::channel(&channel_id);
                b.omit_users = vec![c.user_id.clone()];
                st.publish(
                    "typing",
                    json!({"parent_id": parent_id, "user_id": c.user_id}),
                    b,
                );
            }
            drop(st);
            reply_ok(tx, seq, None);
        }
        "get_statuses" => {
            let s = app.lock().statuses(None);
            reply_ok(tx, seq, Some(s));
        }
        "get_statuses_by_ids" => {
            let ids: Vec<String> = data
                .get("user_ids")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let s = app.lock().statuses(Some(&ids));
            reply_ok(tx, seq, Some(s));
        }
        "presence" | "posted_notify_ack" => reply_ok(tx, seq, None),
        _ => reply_fail(
            tx,
            seq,
            &ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api.web_socket_router.bad_action.app_error",
                "We couldn't find the websocket action.",
            ),
        ),
    }
    true
}
