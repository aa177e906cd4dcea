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
//! Pruning walks the messages in id order in batches of [`BATCH`], each its own short write
//! transaction on the store's writer connection, so that the group commit waits at most one
//! batch for the lock. Files are removed after the transaction that forgot their messages
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
        hashes.extend(batch.hashes);
        between();
        match batch.next {
            Some(next) => after = next,
            None => break,
        }
    }
    pruned.deliveries += sweep_all_deliveries(store, horizon, || {
        pruned.batches += 1;
        between();
    })?;
    pruned.files += remove_unused_files(store, files, &hashes)?;
    Ok(pruned)
}

/// Sweep the acknowledged deliveries of forgotten messages (see [`sweep_deliveries`]) in
/// batches up to `horizon`, calling `between` after each; how many rows went.
fn sweep_all_deliveries(
    store: &Store,
    horizon: i64,
    mut between: impl FnMut(),
) -> Result<u64, StoreError> {
    let mut removed = 0;
    let mut after = 0;
    loop {
        let (batch, next) = store.write_with(|tx| sweep_deliveries(tx, horizon, after))?;
        removed += batch;
        between();
        match next {
            Some(next) => after = next,
            None => return Ok(removed),
        }
    }
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
        kept_pending: 0,
        hashes: Vec::new(),
        next: rows.last().map(|row| row.0),
    };
    if rows.len() < BATCH {
        batch.next = None;
    }
    let needed = needed_by_outbox(tx)?;
    for (id, network, channel, received_ms) in rows {
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
        if needed.contains(&id) {
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
        if dependents
            .iter()
            .any(|(dependent, _)| needed.contains(dependent))
        {
            batch.kept_pending += 1;
            continue;
        }
        for (message, body) in dependents.iter().chain(std::iter::once(&(id, body))) {
            forget_message(tx, *message, "retention")?;
            batch.hashes.extend(stored_files(body));
            batch.forgotten += 1;
        }
    }
    Ok(batch)
}

/// Remove one message and its mappings; replies to it lose their link; its archive chain rows
/// become tombstones (`why`: `retention` or `forget`).
pub(crate) fn forget_message(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    why: &str,
) -> Result<usize, StoreError> {
    let tombstones = chain::tombstone(tx, id, why)?;
    tx.prepare_cached(
        "UPDATE messages SET reply_to_message_id = NULL WHERE reply_to_message_id = ?1",
    )?
    .execute(params![id])?;
    tx.prepare_cached("DELETE FROM mappings WHERE message_id = ?1")?
        .execute(params![id])?;
    tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?
        .execute(params![id])?;
    Ok(tombstones)
}

/// Remove up to [`BATCH`] acknowledged deliveries after row `after` whose message is gone,
/// stopping at the first one acknowledged after `horizon`.
fn sweep_deliveries(
    tx: &rusqlite::Transaction<'_>,
    horizon: i64,
    after: i64,
) -> Result<(u64, Option<i64>), StoreError> {
    let rows: Vec<(i64, i64, bool)> = tx
        .prepare_cached(
            "SELECT d.id, d.done_ms, EXISTS (SELECT 1 FROM messages m WHERE m.id = d.message_id)
             FROM deliveries d WHERE d.id > ?1 ORDER BY d.id LIMIT ?2",
        )?
        .query_map(params![after, BATCH as i64], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut next = if rows.len() < BATCH {
        None
    } else {
        rows.last().map(|row| row.0)
    };
    let mut removed = 0;
    for (id, done_ms, exists) in rows {
        if done_ms >= horizon {
            next = None;
            break;
        }
        if !exists {
            removed += tx
                .prepare_cached("DELETE FROM deliveries WHERE id = ?1")?
                .execute(params![id])? as u64;
        }
    }
    Ok((removed, next))
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

/// Which of `hashes` a message still in the store carries.
fn still_used(
    connection: &rusqlite::Connection,
    hashes: &HashSet<String>,
) -> Result<HashSet<String>, StoreError> {
    let mut used = HashSet::new();
    let mut statement =
        connection.prepare("SELECT body FROM messages WHERE instr(body, '\"stored\":\"') > 0")?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        for hash in stored_files(&row.get::<_, String>(0)?) {
            if hashes.contains(&hash) {
                used.insert(hash);
            }
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
            let needed = needed_by_outbox(tx)?;
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
                if needed.contains(id) || dependents.iter().any(|(d, _)| needed.contains(d)) {
                    forgotten.kept_pending += 1;
                    continue;
                }
                for (message, body) in dependents
                    .iter()
                    .chain(std::iter::once(&(*id, body.clone())))
                {
                    forgotten.tombstones += forget_message(tx, *message, "forget")? as u64;
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
    // Their acknowledged deliveries: every row whose message is gone.
    sweep_all_deliveries(store, i64::MAX, || {})?;
    forgotten.files += remove_unused_files(store, files, &hashes)?;
    Ok(forgotten)
}

/// Every message a queued delivery needs: its own, and the ones it points at.
fn needed_by_outbox(tx: &rusqlite::Transaction<'_>) -> Result<HashSet<i64>, StoreError> {
    let mut needed = HashSet::new();
    let mut statement = tx.prepare_cached(
        "SELECT o.message_id, m.target_message_id, m.reply_to_message_id
         FROM outbox o JOIN messages m ON m.id = o.message_id",
    )?;
    let mut query = statement.query([])?;
    while let Some(row) = query.next()? {
        needed.insert(row.get::<_, i64>(0)?);
        needed.extend(row.get::<_, Option<i64>>(1)?);
        needed.extend(row.get::<_, Option<i64>>(2)?);
    }
    Ok(needed)
}
