//! The history a gateway keeps, and for how long: each gateway's [`HistoryPolicy`]
//! (`archive`, `retention_days`, `legal_hold`) enforced on the store.
//!
//! A message is forgotten when its channel's retention has passed since the bridge received it,
//! unless a gateway of the channel is under `legal_hold` or keeps it forever, and never while a
//! delivery of it (or of an edit, reaction or reply pointing at it) is still in the outbox.
//! Forgetting a message removes it, its mappings and its acknowledged deliveries, the edits,
//! deletes and reactions that point at it (they mean nothing without it), and its stored files
//! unless another kept message has the same file; replies to it stay, without their link to it.
//!
//! What arrives later for a forgotten message is handled as for one the bridge never saw: an
//! edit, delete or reaction is dropped and counted (`tribridge_events_unknown_targets`), a reply
//! is relayed as a plain message.
//!
//! Messages of a gateway with `archive = true` are chained ([`chain`]) before they can be
//! forgotten; forgetting one leaves its chain row as a tombstone.
//!
//! Pruning walks the messages in id order in batches of [`BATCH`] (or [`BATCH_TIME`], whichever
//! comes first), each its own short write
//! transaction on the store's writer connection, so that the group commit waits at most one
//! batch for the lock. What a batch needs to know it asks of indexes (migration 0009): whether
//! a delivery of a message is still queued (`outbox_by_message`, with `messages_by_target` and
//! `messages_by_reply` for what points at it), a message's acknowledged deliveries
//! (`deliveries_by_message`), and whether a kept message still carries a file (`message_files`,
//! kept by triggers on `messages`); `forget` finds a person's messages by `messages_by_author`. Files are removed after the transaction that forgot their messages
//! committed: a crash between the two leaves a file that `file_retention_days` removes later.

pub mod chain;
pub mod conversation;
pub mod export;
pub mod html;
pub mod slack;

use std::collections::{HashMap, HashSet};

use rusqlite::{OptionalExtension, params};

use crate::files::FileStore;
use crate::model::EventBody;
use crate::store::{Store, StoreError};
use crate::vocab::gateway::{GatewayConfig, HistoryPolicy};

/// Test-only clock seam: seconds added to the clock of the history's pruning. The integration
/// tests move the clock forward with it instead of waiting days; never set it in production.
pub const CLOCK_SKEW_ENV: &str = "TRIBRIDGE_TEST_CLOCK_SKEW_SECONDS";

/// Open the store of `state_dir` read-only, for `tribridge export` while the daemon runs (WAL
/// lets it read a consistent snapshot while the daemon writes).
///
/// # Errors
/// The store's, when the file is missing or not readable.
pub fn open_read_only(state_dir: &std::path::Path) -> Result<rusqlite::Connection, StoreError> {
    let connection = rusqlite::Connection::open_with_flags(
        state_dir.join("tribridge.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(connection)
}

/// Messages looked at per write transaction.
pub const BATCH: usize = 256;

/// The longest a pruning batch holds the write lock before it commits what it did and lets the
/// writer in (it goes on with the next message in the next batch).
pub const BATCH_TIME: std::time::Duration = std::time::Duration::from_millis(5);

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The time the retention is measured against, in milliseconds since the epoch: the system
/// clock, moved by [`CLOCK_SKEW_ENV`] when it is set.
#[must_use]
pub fn now_ms() -> i64 {
    crate::model::now_ms().saturating_add(clock_skew_ms())
}

/// [`CLOCK_SKEW_ENV`] in milliseconds (0 when unset or not a number).
#[must_use]
pub fn clock_skew_ms() -> i64 {
    std::env::var(CLOCK_SKEW_ENV)
        .ok()
        .and_then(|value| value.trim().parse::<i64>().ok())
        .unwrap_or(0)
        .saturating_mul(1000)
}

/// How long each channel's messages are kept, from the gateways' policies.
#[derive(Debug, Clone)]
pub struct Retention {
    /// By (network, channel folded to lower case): milliseconds kept, `None` forever.
    channels: HashMap<(String, String), Option<i64>>,
    /// For a channel in no gateway (one removed from the file): the default policy's.
    other: Option<i64>,
    /// By (network, channel folded): the gateways with `archive = true` that hold it.
    archived: HashMap<(String, String), Vec<String>>,
    /// Channels (network, channel folded) of a gateway under `legal_hold`.
    held: HashSet<(String, String)>,
}

impl chain::ArchivedGateways for Retention {
    fn archived(&self, network: &str, channel: &str) -> Vec<String> {
        self.archived
            .get(&(network.to_owned(), channel.to_lowercase()))
            .cloned()
            .unwrap_or_default()
    }
}

fn keep_ms(policy: &HistoryPolicy) -> Option<i64> {
    if policy.legal_hold {
        return None;
    }
    policy.retention_days.map(|days| i64::from(days) * DAY_MS)
}

impl Retention {
    /// The retention of every gateway's channels. A channel in several gateways keeps its
    /// messages as long as the longest of them says (forever if one is under legal hold).
    #[must_use]
    pub fn from_gateways(gateways: &[GatewayConfig]) -> Self {
        let mut channels: HashMap<(String, String), Option<i64>> = HashMap::new();
        let mut archived: HashMap<(String, String), Vec<String>> = HashMap::new();
        let mut held = HashSet::new();
        for gateway in gateways {
            let keep = keep_ms(&gateway.history);
            for channel in &gateway.channels {
                let key = (channel.network.clone(), channel.channel.to_lowercase());
                if gateway.history.legal_hold {
                    held.insert(key.clone());
                }
                if gateway.history.archive {
                    let names = archived.entry(key.clone()).or_default();
                    if !names.contains(&gateway.name) {
                        names.push(gateway.name.clone());
                    }
                }
                let merged = match (channels.get(&key), keep) {
                    (None, keep) => keep,
                    (Some(None), _) | (_, None) => None,
                    (Some(Some(a)), Some(b)) => Some((*a).max(b)),
                };
                channels.insert(key, merged);
            }
        }
        Self {
            channels,
            other: keep_ms(&HistoryPolicy::default()),
            archived,
            held,
        }
    }

    /// How long a message said in `channel` of `network` is kept; `None`: forever.
    fn keep(&self, network: &str, channel: &str) -> Option<i64> {
        self.channels
            .get(&(network.to_owned(), channel.to_lowercase()))
            .copied()
            .unwrap_or(self.other)
    }

    /// Is a gateway of `channel` of `network` under legal hold?
    fn held(&self, network: &str, channel: &str) -> bool {
        self.held
            .contains(&(network.to_owned(), channel.to_lowercase()))
    }

    /// The shortest retention of any channel: no message received after `now` minus it is
    /// forgotten, so a pass stops there. `None` when nothing is ever forgotten.
    fn shortest(&self) -> Option<i64> {
        self.channels
            .values()
            .copied()
            .chain(std::iter::once(self.other))
            .flatten()
            .min()
    }
}

/// What one pass of [`prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Messages forgotten (with the edits, deletes and reactions pointing at them).
    pub messages: u64,
    /// Messages past retention kept because a delivery of them is still in the outbox.
    pub kept_pending: u64,
    /// Acknowledged deliveries of forgotten messages removed.
    pub deliveries: u64,
    /// Stored files removed.
    pub files: u64,
    /// Write transactions taken.
    pub batches: u64,
}

/// One pass: forget every message past its channel's retention at `now_ms`, in batches of
/// [`BATCH`]. `between` runs after each batch (the daemon yields to the runtime there).
///
/// # Errors
/// The store's, as they happen; what earlier batches did stays done.
pub fn prune(
    store: &Store,
    files: Option<&FileStore>,
    retention: &Retention,
    now_ms: i64,
    mut between: impl FnMut(),
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    let Some(shortest) = retention.shortest() else {
        return Ok(pruned);
    };
    let horizon = now_ms.saturating_sub(shortest);
    let mut hashes = HashSet::new();
    let mut after = 0;
    loop {
        let batch = store.write_with(|tx| {
            // A message is chained (when its gateway archives) before it can be forgotten.
            let upto = chain::chained_upto(tx)?;
            forget_batch(tx, retention, now_ms, horizon, after, upto)
        })?;
        pruned.batches += 1;
        pruned.messages += batch.forgotten;
        pruned.kept_pending += batch.kept_pending;
        pruned.deliveries += batch.deliveries;
        hashes.extend(batch.hashes);
        between();
        match batch.next {
            Some(next) => after = next,
            None => break,
        }
    }
    pruned.files += remove_unused_files(store, files, &hashes)?;
    Ok(pruned)
}

/// Remove the stored files among `hashes` that no message left in the store carries; how many
/// went (a file that cannot be removed is logged and left).
fn remove_unused_files(
    store: &Store,
    files: Option<&FileStore>,
    hashes: &HashSet<String>,
) -> Result<u64, StoreError> {
    let Some(files) = files else { return Ok(0) };
    if hashes.is_empty() {
        return Ok(0);
    }
    let kept = store.read_with(|connection| still_used(connection, hashes))?;
    let mut removed = 0;
    for hash in hashes.difference(&kept) {
        match files.remove(hash) {
            Ok(true) => removed += 1,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(error = %error, file = %hash, "Cannot remove a forgotten message's file.");
            }
        }
    }
    Ok(removed)
}

/// What one batch of [`forget_batch`] did.
struct Batch {
    forgotten: u64,
    deliveries: u64,
    kept_pending: u64,
    hashes: Vec<String>,
    /// The id to go on after; `None` when the pass is done.
    next: Option<i64>,
}

/// Look at up to [`BATCH`] messages after id `after` and forget those past retention.
fn forget_batch(
    tx: &rusqlite::Transaction<'_>,
    retention: &Retention,
    now_ms: i64,
    horizon: i64,
    after: i64,
    upto: i64,
) -> Result<Batch, StoreError> {
    let rows: Vec<(i64, String, String, i64)> = tx
        .prepare_cached(
            "SELECT id, origin_network, origin_channel, received_ms FROM messages
             WHERE id > ?1 AND id <= ?3 ORDER BY id LIMIT ?2",
        )?
        .query_map(params![after, BATCH as i64, upto], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut batch = Batch {
        forgotten: 0,
        deliveries: 0,
        kept_pending: 0,
        hashes: Vec::new(),
        next: rows.last().map(|row| row.0),
    };
    if rows.len() < BATCH {
        batch.next = None;
    }
    let started = std::time::Instant::now();
    let mut last = after;
    for (id, network, channel, received_ms) in rows {
        // Bounded in time as well as in rows: the writer waits for at most one batch.
        if last != after && started.elapsed() >= BATCH_TIME {
            batch.next = Some(last);
            break;
        }
        last = id;
        if received_ms >= horizon {
            // Newer than the shortest retention: so is (nearly) everything after it.
            batch.next = None;
            break;
        }
        let Some(keep) = retention.keep(&network, &channel) else {
            continue;
        };
        if received_ms >= now_ms.saturating_sub(keep) {
            continue;
        }
        if needed_by_outbox(tx, id)? {
            batch.kept_pending += 1;
            continue;
        }
        // Gone already when it was an edit or reaction of a message forgotten in this batch.
        let Some(body) = tx
            .prepare_cached("SELECT body FROM messages WHERE id = ?1")?
            .query_row(params![id], |row| row.get::<_, String>(0))
            .optional()?
        else {
            continue;
        };
        let dependents: Vec<(i64, String)> = tx
            .prepare_cached("SELECT id, body FROM messages WHERE target_message_id = ?1")?
            .query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?;
        if any_needed(tx, &dependents)? {
            batch.kept_pending += 1;
            continue;
        }
        for (message, body) in dependents.iter().chain(std::iter::once(&(id, body))) {
            batch.deliveries += forget_message(tx, *message, "retention")?.deliveries;
            batch.hashes.extend(stored_files(body));
            batch.forgotten += 1;
        }
    }
    Ok(batch)
}

/// What [`forget_message`] removed besides the message.
pub(crate) struct Removed {
    /// Archive chain rows turned into tombstones.
    pub tombstones: u64,
    /// Acknowledged deliveries removed.
    pub deliveries: u64,
}

/// Remove one message, its mappings and its acknowledged deliveries (`deliveries_by_message`);
/// replies to it lose their link; its archive chain rows become tombstones (`why`: `retention`
/// or `forget`). A forgotten message never had a queued delivery, so no delivery of it can be
/// acknowledged later.
pub(crate) fn forget_message(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    why: &str,
) -> Result<Removed, StoreError> {
    let tombstones = chain::tombstone(tx, id, why)? as u64;
    tx.prepare_cached(
        "UPDATE messages SET reply_to_message_id = NULL WHERE reply_to_message_id = ?1",
    )?
    .execute(params![id])?;
    tx.prepare_cached("DELETE FROM mappings WHERE message_id = ?1")?
        .execute(params![id])?;
    let deliveries = tx
        .prepare_cached("DELETE FROM deliveries WHERE message_id = ?1")?
        .execute(params![id])? as u64;
    tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?
        .execute(params![id])?;
    Ok(Removed {
        tombstones,
        deliveries,
    })
}

/// The stored files (content hashes) a message's body carries.
pub(crate) fn stored_files(body: &str) -> Vec<String> {
    match serde_json::from_str::<EventBody>(body) {
        Ok(EventBody::Text { attachments, .. }) => {
            attachments.into_iter().filter_map(|a| a.stored).collect()
        }
        _ => Vec::new(),
    }
}

/// Which of `hashes` a message still in the store carries: one lookup per file in
/// `message_files` (kept by triggers, see `migrations/0009_history_indexes.sql`).
fn still_used(
    connection: &rusqlite::Connection,
    hashes: &HashSet<String>,
) -> Result<HashSet<String>, StoreError> {
    let mut used = HashSet::new();
    let mut statement =
        connection.prepare_cached("SELECT EXISTS (SELECT 1 FROM message_files WHERE hash = ?1)")?;
    for hash in hashes {
        if statement.query_row(params![hash], |row| row.get::<_, bool>(0))? {
            used.insert(hash.clone());
        }
    }
    Ok(used)
}

/// What [`forget_person`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Messages removed: the person's, and the edits, deletes and reactions of them.
    pub messages: u64,
    /// Archive chain rows left as tombstones.
    pub tombstones: u64,
    /// Stored files removed.
    pub files: u64,
    /// The person's messages kept because a delivery of them is still queued.
    pub kept_pending: u64,
    /// The person's messages kept because a gateway of their channel is under legal hold.
    pub kept_held: u64,
}

/// `tribridge forget`: remove every message `user` said on `network` (a data-protection
/// request), with what [`prune`] removes with a message, leaving tombstones in the archive's
/// chain, and their entry in the people directory. Messages under legal hold, or that a queued
/// delivery needs, are kept and counted.
///
/// # Errors
/// The store's; what earlier batches did stays done.
pub fn forget_person(
    store: &Store,
    files: Option<&FileStore>,
    retention: &Retention,
    network: &str,
    user: &str,
) -> Result<Forgotten, StoreError> {
    let mut forgotten = Forgotten::default();
    let mut hashes = HashSet::new();
    let mut after = 0;
    loop {
        let next = store.write_with(|tx| {
            let rows: Vec<(i64, String, String)> = tx
                .prepare_cached(
                    "SELECT id, origin_channel, body FROM messages
                     WHERE id > ?1 AND origin_network = ?2 AND author_id = ?3
                     ORDER BY id LIMIT ?4",
                )?
                .query_map(params![after, network, user, BATCH as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            for (id, channel, body) in &rows {
                // Gone already when it was an edit or reaction of a message forgotten above.
                let present = tx
                    .prepare_cached("SELECT 1 FROM messages WHERE id = ?1")?
                    .query_row(params![id], |_| Ok(()))
                    .optional()?
                    .is_some();
                if !present {
                    continue;
                }
                if retention.held(network, channel) {
                    forgotten.kept_held += 1;
                    continue;
                }
                let dependents: Vec<(i64, String)> = tx
                    .prepare_cached("SELECT id, body FROM messages WHERE target_message_id = ?1")?
                    .query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                if needed_by_outbox(tx, *id)? || any_needed(tx, &dependents)? {
                    forgotten.kept_pending += 1;
                    continue;
                }
                for (message, body) in dependents
                    .iter()
                    .chain(std::iter::once(&(*id, body.clone())))
                {
                    forgotten.tombstones += forget_message(tx, *message, "forget")?.tombstones;
                    hashes.extend(stored_files(body));
                    forgotten.messages += 1;
                }
            }
            tx.prepare_cached("DELETE FROM people WHERE network = ?1 AND user_id = ?2")?
                .execute(params![network, user])?;
            Ok((rows.len() == BATCH)
                .then(|| rows.last().map(|r| r.0))
                .flatten())
        })?;
        match next {
            Some(next) => after = next,
            None => break,
        }
    }
    forgotten.files += remove_unused_files(store, files, &hashes)?;
    Ok(forgotten)
}

/// Does a queued delivery need message `id`: one of it, or of a message that edits, deletes,
/// reacts or replies to it? Index lookups (`outbox_by_message`, `messages_by_target`,
/// `messages_by_reply`), not a read of the outbox.
fn needed_by_outbox(tx: &rusqlite::Transaction<'_>, id: i64) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE message_id = ?1)
                 OR EXISTS (SELECT 1 FROM messages m JOIN outbox o ON o.message_id = m.id
                            WHERE m.target_message_id = ?1)
                 OR EXISTS (SELECT 1 FROM messages m JOIN outbox o ON o.message_id = m.id
                            WHERE m.reply_to_message_id = ?1)",
        )?
        .query_row(params![id], |row| row.get(0))?)
}

/// Does a queued delivery need any of `messages` (see [`needed_by_outbox`])?
fn any_needed(
    tx: &rusqlite::Transaction<'_>,
    messages: &[(i64, String)],
) -> Result<bool, StoreError> {
    for (id, _) in messages {
        if needed_by_outbox(tx, *id)? {
            return Ok(true);
        }
    }
    Ok(false)
}
