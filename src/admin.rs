//! The admin socket: a Unix socket in `state_dir` (`admin.sock`, mode 0600, so only the
//! daemon's own user may connect) on which the running daemon answers `tribridge status` and
//! `tribridge failed list|retry|drop`.
//!
//! One request per connection: a line of JSON ([`Request`]) in, a line of JSON ([`Response`])
//! out. The client side ([`ask`]) and the texts for people ([`render_status`],
//! [`render_failed`]) are here too, so that `main` only parses arguments.
//!
//! Invariants: a retried delivery goes back through the outbox as a pending row, durable, with
//! its idempotency key (the delivery id) unchanged, so that a destination that took it after
//! all does not show it twice; it is queued behind what is pending for its destination (its old
//! place was passed long ago), and its worker is woken. A drop removes only a failed row. The
//! socket never blocks the daemon: each connection is its own task, the store is read and
//! written off the runtime's workers.

use std::fmt::Write as _;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

use crate::model::EventBody;
use crate::store::{OutboxCount, Store, StoreError};
use crate::vocab::Status as NetworkStatus;
use crate::vocab::Wake;

/// The socket's file name in `state_dir`.
pub const SOCKET_NAME: &str = "admin.sock";

/// The socket's path for a state folder.
#[must_use]
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Errors of the admin socket, on either side.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be made or reached.
    #[error("admin socket {path}: {source}")]
    Socket {
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon's answer could not be read.
    #[error("unreadable answer from the daemon: {0}")]
    Answer(String),
    /// The daemon refused the request (the reason, for the operator).
    #[error("{0}")]
    Refused(String),
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Each network's connection and each destination's queue.
    Status,
    /// The deliveries kept as failed.
    FailedList,
    /// Queue failed deliveries again: one by its id, or every one (`id` absent).
    FailedRetry {
        /// The delivery's id as `failed list` shows it; `None` for all.
        id: Option<i64>,
    },
    /// Remove one failed delivery for good.
    FailedDrop {
        /// The delivery's id as `failed list` shows it.
        id: i64,
    },
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Response {
    /// To [`Request::Status`].
    Status(Status),
    /// To [`Request::FailedList`].
    Failed {
        /// Oldest first.
        deliveries: Vec<FailedDelivery>,
    },
    /// To [`Request::FailedRetry`]: the ids queued again.
    Retried {
        /// Queued again, each with its destination.
        ids: Vec<i64>,
    },
    /// To [`Request::FailedDrop`].
    Dropped {
        /// The id removed.
        id: i64,
    },
    /// The request could not be done.
    Error {
        /// Why, for the operator.
        reason: String,
    },
}

/// `tribridge status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Every configured network.
    pub networks: Vec<NetworkReport>,
    /// Every destination with something in the outbox, or configured.
    pub destinations: Vec<DestinationReport>,
    /// Deliveries kept as failed, in all.
    pub failed: u64,
    /// The instance's role when it runs for failover (the PostgreSQL store); `None` alone.
    #[serde(default)]
    pub role: Option<RoleReport>,
}

/// An instance's role in [`Status`] (failover between instances on one store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleReport {
    /// This instance's name.
    pub instance: String,
    /// `active` or `standby`.
    pub role: String,
    /// Since when (ms since the epoch).
    pub since_ms: i64,
    /// The lease's fencing token (this instance's while active, the last seen while standby).
    pub token: i64,
    /// The active instance as last seen.
    pub active: Option<String>,
    /// Per-network leases (`failover = "network"`): each network and the instance that holds
    /// it as last seen (`None`: nobody); empty in the instance mode.
    #[serde(default)]
    pub network_holders: Vec<(String, Option<String>)>,
}

/// One network in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkReport {
    /// `[network.<id>]`.
    pub network: String,
    /// Since when it is connected (ms since the epoch); `None`: not connected.
    pub connected_since_ms: Option<i64>,
    /// Its channels in gateways, as configured.
    pub channels: Vec<String>,
    /// Those of them joined on the current connection.
    pub joined: Vec<String>,
    /// When its last event came in (ms since the epoch).
    pub last_event_ms: Option<i64>,
}

/// One destination channel's queue in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationReport {
    /// Its network.
    pub network: String,
    /// The channel, as configured.
    pub channel: String,
    /// Deliveries waiting.
    pub pending: u64,
    /// When the oldest waiting delivery's message came in (ms since the epoch).
    pub oldest_pending_ms: Option<i64>,
    /// Deliveries kept as failed.
    pub failed: u64,
    /// Whether a gateway still sends to it (pending rows of a removed channel wait for it).
    pub configured: bool,
}

/// One failed delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedDelivery {
    /// Its id for `retry` and `drop` (its queue position).
    pub id: i64,
    /// The idempotency key the destination sees.
    pub delivery_id: String,
    /// Destination network.
    pub network: String,
    /// Destination channel.
    pub channel: String,
    /// Its gateway.
    pub gateway: String,
    /// Attempts made.
    pub attempts: i64,
    /// What the destination answered.
    pub error: Option<String>,
    /// Where the message came from, `network:channel`.
    pub origin: String,
    /// Who said it.
    pub author: String,
    /// What it was: the text, or the kind of event.
    pub summary: String,
    /// When it came in (ms since the epoch).
    pub received_ms: i64,
}

/// What the daemon's socket serves from.
pub struct Admin {
    /// The store.
    pub store: Arc<Store>,
    /// Woken for a destination whose delivery is queued again.
    pub wake: Arc<dyn Wake>,
    /// Each configured network's connection and the channels gateways link on it (kept
    /// current by the daemon across reloads).
    pub status: Arc<NetworkStatus>,
    /// The instance's lease when it runs for failover (its role in `status`).
    pub lease: Option<Arc<crate::vocab::Lease>>,
}

/// Bind the admin socket in `state_dir`, owner-only (0600) before it has its name, so that no
/// other user can ever connect to it. A socket left by a daemon that did not stop cleanly is
/// replaced.
pub fn bind(state_dir: &Path) -> Result<tokio::net::UnixListener, AdminError> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = socket_path(state_dir);
    let error = |source| AdminError::Socket {
        path: path.clone(),
        source,
    };
    let staging = state_dir.join(format!("{SOCKET_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = tokio::net::UnixListener::bind(&staging).map_err(error)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
    std::fs::rename(&staging, &path).map_err(error)?;
    Ok(listener)
}

/// Answer requests on `listener` until `shutdown`; the socket file is removed then.
pub async fn serve(
    listener: tokio::net::UnixListener,
    path: PathBuf,
    admin: Arc<Admin>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, Arc::clone(&admin)));
            }
            Err(error) => {
                tracing::warn!(error = %error, "Admin socket: cannot accept a connection.");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                }
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

/// The longest request line read.
const MAX_REQUEST: u64 = 4096;

async fn answer(stream: tokio::net::UnixStream, admin: Arc<Admin>) {
    let (reading, mut writing) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(reading, MAX_REQUEST));
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reader.read_line(&mut line),
    )
    .await;
    let response = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => {
                tracing::info!(request = ?request, "Admin request.");
                let admin = Arc::clone(&admin);
                match tokio::task::spawn_blocking(move || handle(&admin, &request)).await {
                    Ok(response) => response,
                    Err(error) => Response::Error {
                        reason: error.to_string(),
                    },
                }
            }
            Err(error) => Response::Error {
                reason: format!("not a request: {error}"),
            },
        },
        Ok(Err(error)) => Response::Error {
            reason: error.to_string(),
        },
        Err(_) => return,
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    let _ = writing.write_all(text.as_bytes()).await;
    let _ = writing.shutdown().await;
}

/// One request, on a blocking thread.
fn handle(admin: &Admin, request: &Request) -> Response {
    let result = match request {
        Request::Status => status(admin).map(Response::Status),
        Request::FailedList => {
            failed(&admin.store).map(|deliveries| Response::Failed { deliveries })
        }
        Request::FailedRetry { id } => retry(admin, *id),
        Request::FailedDrop { id } => drop_failed(&admin.store, *id),
    };
    result.unwrap_or_else(|error| Response::Error {
        reason: error.to_string(),
    })
}

fn status(admin: &Admin) -> Result<Status, StoreError> {
    let now = admin.status.read();
    let mut destinations: Vec<DestinationReport> = now
        .iter()
        .flat_map(|(network, state)| {
            state.expected.iter().map(|channel| DestinationReport {
                network: network.clone(),
                channel: channel.clone(),
                pending: 0,
                oldest_pending_ms: None,
                failed: 0,
                configured: true,
            })
        })
        .collect();
    let networks = now
        .into_iter()
        .map(|(network, state)| NetworkReport {
            network,
            connected_since_ms: state.connected_since_ms,
            channels: state.expected,
            joined: state.joined,
            last_event_ms: state.last_event_ms,
        })
        .collect();
    let rows = admin.store.outbox_by_destination()?;
    let mut failed_total = 0;
    for OutboxCount {
        network,
        channel,
        state,
        count,
        oldest_received_ms: oldest,
    } in rows
    {
        let known = destinations
            .iter()
            .position(|d| d.network == network && d.channel == channel);
        let index = if let Some(index) = known {
            index
        } else {
            destinations.push(DestinationReport {
                network,
                channel,
                pending: 0,
                oldest_pending_ms: None,
                failed: 0,
                configured: false,
            });
            destinations.len() - 1
        };
        let destination = &mut destinations[index];
        if state == "failed" {
            destination.failed = count.unsigned_abs();
            failed_total += count.unsigned_abs();
        } else {
            destination.pending = count.unsigned_abs();
            destination.oldest_pending_ms = oldest;
        }
    }
    let role = admin.lease.as_ref().map(|lease| {
        let view = lease.view();
        RoleReport {
            instance: view.instance,
            role: view.role.name().to_owned(),
            since_ms: view.since_ms,
            token: view.token,
            active: view.active_instance,
            network_holders: lease
                .network_holders()
                .into_iter()
                .map(|holder| (holder.network, holder.holder))
                .collect(),
        }
    });
    Ok(Status {
        networks,
        destinations,
        failed: failed_total,
        role,
    })
}

fn failed(store: &Store) -> Result<Vec<FailedDelivery>, StoreError> {
    Ok(store
        .failed_deliveries()?
        .into_iter()
        .map(|row| FailedDelivery {
            id: row.seq,
            delivery_id: row.delivery_id,
            network: row.network,
            channel: row.channel,
            gateway: row.gateway,
            attempts: row.attempts,
            error: row.last_error,
            origin: format!("{}:{}", row.origin_network, row.origin_channel),
            author: row.author_name,
            summary: summary(&row.body),
            received_ms: row.received_ms,
        })
        .collect())
}

/// The most characters of a message `failed list` shows.
const LONGEST: usize = 120;

/// A stored body in a few words for a person.
fn summary(body: &str) -> String {
    let text = match serde_json::from_str::<EventBody>(body) {
        Ok(EventBody::Text {
            text, attachments, ..
        }) => {
            let mut plain = text.to_plain_text();
            if !attachments.is_empty() {
                let _ = write!(plain, " [{} files]", attachments.len());
            }
            plain
        }
        Ok(EventBody::Edit { text, .. }) => format!("(edit) {}", text.to_plain_text()),
        Ok(EventBody::Delete { .. }) => "(deletion)".to_owned(),
        Ok(EventBody::Reaction { key, removed, .. }) => {
            format!(
                "(reaction {key}{})",
                if removed { ", taken back" } else { "" }
            )
        }
        Ok(other) => format!("({})", kind_name(&other)),
        Err(error) => format!("(unreadable: {error})"),
    };
    match text.char_indices().nth(LONGEST) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

fn kind_name(body: &EventBody) -> &'static str {
    match body {
        EventBody::Text { .. } => "text",
        EventBody::Edit { .. } => "edit",
        EventBody::Delete { .. } => "deletion",
        EventBody::Reaction { .. } => "reaction",
        EventBody::Membership(_) => "membership change",
    }
}

/// Queue failed deliveries again (one, or all), each in its own transaction: the row is
/// written again at the end of the queue as pending, keeping its delivery id, and the old row
/// removed; then its destination's worker is woken.
fn retry(admin: &Admin, id: Option<i64>) -> Result<Response, StoreError> {
    let ids: Vec<i64> = match id {
        Some(id) => vec![id],
        None => admin
            .store
            .failed_deliveries()?
            .into_iter()
            .map(|row| row.seq)
            .collect(),
    };
    let mut retried = Vec::new();
    for id in ids {
        let requeued = admin.store.requeue_failed(id)?;
        // None: retried or dropped meanwhile (or, for one id, not a failed delivery).
        if let Some((destination, new_seq)) = requeued {
            let linked = admin
                .status
                .read()
                .get(&destination.network)
                .is_some_and(|state| state.expected.contains(&destination.channel));
            if linked {
                tracing::info!(destination = %destination, id, new_id = new_seq, "A failed delivery is queued again (admin request).");
            } else {
                tracing::warn!(destination = %destination, id, new_id = new_seq, "A failed delivery is queued again for a channel no gateway sends to now; it waits until one does.");
            }
            admin.wake.wake(&destination);
            retried.push(id);
        }
    }
    if let (Some(id), true) = (id, retried.is_empty()) {
        return Ok(Response::Error {
            reason: format!("no failed delivery with id {id} (see `tribridge failed list`)"),
        });
    }
    Ok(Response::Retried { ids: retried })
}

fn drop_failed(store: &Store, id: i64) -> Result<Response, StoreError> {
    if !store.drop_failed(id)? {
        return Ok(Response::Error {
            reason: format!("no failed delivery with id {id} (see `tribridge failed list`)"),
        });
    }
    tracing::warn!(
        id,
        "A failed delivery was dropped (admin request); it will not be sent."
    );
    Ok(Response::Dropped { id })
}

/// Send `request` to the daemon whose state folder is `state_dir` and wait for its answer.
/// An [`Response::Error`] comes back as [`AdminError::Refused`].
pub fn ask(state_dir: &Path, request: &Request) -> Result<Response, AdminError> {
    let path = socket_path(state_dir);
    let socket_error = |source| AdminError::Socket {
        path: path.clone(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(socket_error)?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_mins(1)))
        .map_err(socket_error)?;
    let mut line = serde_json::to_string(request).map_err(|e| AdminError::Answer(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(socket_error)?;
    let mut answer = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(socket_error)?;
    match serde_json::from_str::<Response>(&answer) {
        Ok(Response::Error { reason }) => Err(AdminError::Refused(reason)),
        Ok(response) => Ok(response),
        Err(error) => Err(AdminError::Answer(error.to_string())),
    }
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SS UTC (N ago)`.
fn when(ms: i64, now_ms: i64) -> String {
    let at = chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    );
    let ago = (now_ms - ms).max(0) / 1000;
    let ago = match ago {
        0..60 => format!("{ago}s"),
        60..3600 => format!("{}m", ago / 60),
        3600..86_400 => format!("{}h{:02}m", ago / 3600, ago % 3600 / 60),
        _ => format!("{}d", ago / 86_400),
    };
    format!("{at} ({ago} ago)")
}

/// [`Status`] for people.
#[must_use]
pub fn render_status(status: &Status, now_ms: i64) -> String {
    let mut out = String::new();
    if let Some(role) = &status.role {
        let _ = writeln!(
            out,
            "instance {}: {} since {}, token {}; active is {}",
            role.instance,
            role.role,
            when(role.since_ms, now_ms),
            role.token,
            role.active.as_deref().unwrap_or("nobody")
        );
        if !role.network_holders.is_empty() {
            let holders: Vec<String> = role
                .network_holders
                .iter()
                .map(|(network, holder)| {
                    format!(
                        "{network} held by {}",
                        holder.as_deref().unwrap_or("nobody")
                    )
                })
                .collect();
            let _ = writeln!(out, "network leases: {}", holders.join(", "));
        }
    }
    for network in &status.networks {
        let _ = writeln!(out, "network {}", network.network);
        let _ = writeln!(
            out,
            "  connected: {}",
            network.connected_since_ms.map_or_else(
                || "no".to_owned(),
                |ms| format!("since {}", when(ms, now_ms))
            )
        );
        let missing: Vec<&str> = network
            .channels
            .iter()
            .filter(|c| !network.joined.contains(c))
            .map(String::as_str)
            .collect();
        let _ = writeln!(
            out,
            "  channels joined: {}/{}{}",
            network.channels.len() - missing.len(),
            network.channels.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(" (not joined: {})", missing.join(", "))
            }
        );
        let _ = writeln!(
            out,
            "  last event: {}",
            network
                .last_event_ms
                .map_or_else(|| "none since start".to_owned(), |ms| when(ms, now_ms))
        );
    }
    let _ = writeln!(out, "outbox");
    for destination in &status.destinations {
        let _ = writeln!(
            out,
            "  {}:{}  pending {}{}  failed {}{}",
            destination.network,
            destination.channel,
            destination.pending,
            destination
                .oldest_pending_ms
                .map_or_else(String::new, |ms| format!(" (oldest {})", when(ms, now_ms))),
            destination.failed,
            if destination.configured {
                ""
            } else {
                "  (in no gateway now)"
            }
        );
    }
    let _ = writeln!(out, "failed deliveries: {}", status.failed);
    out
}

/// `failed list` for people.
#[must_use]
pub fn render_failed(deliveries: &[FailedDelivery], now_ms: i64) -> String {
    if deliveries.is_empty() {
        return "no failed deliveries\n".to_owned();
    }
    let mut out = String::new();
    for delivery in deliveries {
        let _ = writeln!(
            out,
            "{}  to {}:{}  (gateway {}, {} attempts, {})",
            delivery.id,
            delivery.network,
            delivery.channel,
            delivery.gateway,
            delivery.attempts,
            when(delivery.received_ms, now_ms)
        );
        let _ = writeln!(
            out,
            "    from {} <{}> {}",
            delivery.origin, delivery.author, delivery.summary
        );
        if let Some(error) = &delivery.error {
            let _ = writeln!(out, "    refused: {error}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_are_one_json_line_each() {
        let request = Request::FailedRetry { id: Some(7) };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"command":"failed_retry","id":7}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let all: Request = serde_json::from_str(r#"{"command":"failed_retry"}"#).unwrap();
        assert_eq!(all, Request::FailedRetry { id: None });
        let answer = Response::Dropped { id: 3 };
        let text = serde_json::to_string(&answer).unwrap();
        assert_eq!(text, r#"{"answer":"dropped","id":3}"#);
    }

    #[test]
    fn times_are_shown_with_how_long_ago() {
        let at = 1_780_000_000_000;
        assert!(
            when(at, at + 90_000).ends_with("(1m ago)"),
            "{}",
            when(at, at + 90_000)
        );
        assert!(when(at, at).ends_with("(0s ago)"));
    }
}
