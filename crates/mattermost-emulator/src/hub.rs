//! The WebSocket hub: registered connections, per-connection `seq` numbering, the queue of
//! recently sent events kept for resumption ("reliable websockets"), and fan-out of events.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;

use crate::ids::new_id;

/// How many sent events a connection keeps for replay (the server's dead queue).
const DEAD_QUEUE: usize = 128;
/// How long a dropped connection can still be resumed.
const INACTIVE_TTL: Duration = Duration::from_secs(300);

/// What a socket task is told to do.
#[derive(Debug)]
pub enum Out {
    /// Send this text frame.
    Text(String),
    /// Drop the socket now (no close handshake, like a lost network).
    Drop,
}

/// Who an event goes to (`broadcast` in the envelope).
#[derive(Debug, Default, Clone)]
pub struct Broadcast {
    pub user_id: String,
    pub channel_id: String,
    pub team_id: String,
    pub omit_users: Vec<String>,
}

impl Broadcast {
    /// To the members of a channel.
    pub fn channel(id: &str) -> Self {
        Self {
            channel_id: id.to_owned(),
            ..Self::default()
        }
    }
    /// To every connection of one user.
    pub fn user(id: &str) -> Self {
        Self {
            user_id: id.to_owned(),
            ..Self::default()
        }
    }
    /// The envelope's `broadcast` object.
    pub fn to_json(&self) -> Value {
        let omit = if self.omit_users.is_empty() {
            Value::Null
        } else {
            Value::Object(
                self.omit_users
                    .iter()
                    .map(|u| (u.clone(), Value::Bool(true)))
                    .collect(),
            )
        };
        json!({
            "omit_users": omit, "user_id": self.user_id, "channel_id": self.channel_id,
            "team_id": self.team_id, "connection_id": "", "omit_connection_id": "",
        })
    }
}

struct Conn {
    user_id: String,
    next_seq: i64,
    sent: VecDeque<(i64, String)>,
    /// The live socket task, with its attach generation; `None` while dropped.
    tx: Option<(u64, UnboundedSender<Out>)>,
    inactive_since: Option<Instant>,
}

/// How an authenticated socket was attached.
#[derive(Debug, Clone)]
pub struct Attached {
    pub conn_id: String,
    pub generation: u64,
    pub resumed: bool,
}

/// All connections, live and recently dropped.
#[derive(Default)]
pub struct Hub {
    conns: HashMap<String, Conn>,
    generation: u64,
    /// The `server_version` sent in `hello`.
    pub version: String,
}

impl Hub {
    fn push(conn: &mut Conn, prefix: &str) {
        let seq = conn.next_seq;
        conn.next_seq += 1;
        let text = format!("{prefix},\"seq\":{seq}}}");
        conn.sent.push_back((seq, text.clone()));
        while conn.sent.len() > DEAD_QUEUE {
            conn.sent.pop_front();
        }
        if let Some((_, tx)) = &conn.tx {
            let _ = tx.send(Out::Text(text));
        }
    }

    /// Register an authenticated socket: resume `resume = (connection_id, next seq)` if that
    /// connection is known and the seq is still replayable, else start a fresh connection with
    /// `hello` at seq 0.
    pub fn attach(
        &mut self,
        user_id: &str,
        resume: Option<(String, i64)>,
        tx: UnboundedSender<Out>,
    ) -> Attached {
        let now = Instant::now();
        self.conns.retain(|_, c| {
            c.inactive_since
                .is_none_or(|t| now.duration_since(t) < INACTIVE_TTL)
        });
        self.generation += 1;
        let generation = self.generation;
        if let Some((id, seq)) = resume
            && let Some(conn) = self.conns.get_mut(&id)
            && conn.user_id == user_id
        {
            let first = conn.sent.front().map_or(conn.next_seq, |(s, _)| *s);
            if seq >= first && seq <= conn.next_seq {
                if let Some((_, old)) = conn.tx.take() {
                    let _ = old.send(Out::Drop);
                }
                for (s, text) in &conn.sent {
                    if *s >= seq {
                        let _ = tx.send(Out::Text(text.clone()));
                    }
                }
                conn.tx = Some((generation, tx));
                conn.inactive_since = None;
                return Attached {
                    conn_id: id,
                    generation,
                    resumed: true,
                };
            }
        }
        let conn_id = new_id();
        let mut conn = Conn {
            user_id: user_id.to_owned(),
            next_seq: 0,
            sent: VecDeque::new(),
            tx: Some((generation, tx)),
            inactive_since: None,
        };
        let data = json!({
            "connection_id": conn_id, "server_version": self.version,
            "server_hostname": "mattermost-emulator",
        });
        let prefix = envelope_prefix("hello", &data, &Broadcast::user(user_id));
        Self::push(&mut conn, &prefix);
        self.conns.insert(conn_id.clone(), conn);
        Attached {
            conn_id,
            generation,
            resumed: false,
        }
    }

    /// The socket task of `conn_id` (generation `generation`) ended: keep the connection for resumption.
    pub fn detach(&mut self, conn_id: &str, generation: u64) {
        if let Some(conn) = self.conns.get_mut(conn_id)
            && conn.tx.as_ref().is_some_and(|(g, _)| *g == generation)
        {
            conn.tx = None;
            conn.inactive_since = Some(Instant::now());
        }
    }

    /// Drop every live socket now; the connections stay resumable.
    pub fn drop_all(&mut self) {
        let now = Instant::now();
        for conn in self.conns.values_mut() {
            if let Some((_, tx)) = conn.tx.take() {
                let _ = tx.send(Out::Drop);
                conn.inactive_since = Some(now);
            }
        }
    }

    /// Forget all dropped connections, so that a reconnect can only start fresh.
    pub fn forget_inactive(&mut self) {
        self.conns.retain(|_, c| c.tx.is_some());
    }

    /// Users with at least one live socket.
    pub fn online_users(&self) -> HashSet<String> {
        self.conns
            .values()
            .filter(|c| c.tx.is_some())
            .map(|c| c.user_id.clone())
            .collect()
    }

    /// Number of live sockets.
    pub fn live_count(&self) -> usize {
        self.conns.values().filter(|c| c.tx.is_some()).count()
    }

    /// Send an event to every connection (live or resumable) of the given users; `data_for`
    /// may specialise the data per recipient.
    pub fn send(
        &mut self,
        event: &str,
        data: &Value,
        broadcast: &Broadcast,
        recipients: &HashSet<String>,
        data_for: Option<&dyn Fn(&str) -> Value>,
    ) {
        let shared = envelope_prefix(event, data, broadcast);
        let mut ids: Vec<&String> = self.conns.keys().collect();
        ids.sort();
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        for id in ids {
            let conn = self.conns.get_mut(&id).expect("id just listed");
            if !recipients.contains(&conn.user_id) {
                continue;
            }
            if let Some(f) = data_for {
                let prefix = envelope_prefix(event, &f(&conn.user_id), broadcast);
                Self::push(conn, &prefix);
            } else {
                Self::push(conn, &shared);
            }
        }
    }
}

/// The event envelope without its closing `,"seq":N}`.
fn envelope_prefix(event: &str, data: &Value, broadcast: &Broadcast) -> String {
    format!(
        "{{\"event\":{},\"data\":{},\"broadcast\":{}",
        Value::String(event.to_owned()),
        data,
        broadcast.to_json()
    )
}
