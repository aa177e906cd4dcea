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

use crate::files::FileStore;
use crate::model::EventBody;
use crate::store::history::{HistoryWrite, Inspected};
use crate::store::{Store, StoreError};
use crate::vocab::gateway::{GatewayConfig, HistoryPolicy};

/// Test-only clock seam: seconds added to the clock of the history's pruning. The integration
/// tests move the clock forward with it instead of waiting days; never set it in production.
pub const CLOCK_SKEW_ENV: &str = "TRIBRIDGE_TEST_CLOCK_SKEW_SECONDS";

/// Open the configured store for `tribridge export` while the daemon runs: the `SQLite` file
/// read-only (WAL lets it read a consistent snapshot while the daemon writes), or the
/// PostgreSQL database at `url`.
///
/// # Errors
/// The store's, when the file is missing or not readable, or the database unreachable.
pub fn open_read_only(
    state_dir: &std::path::Path,
    url: Option<&str>,
) -> Result<crate::store::history::HistorySource, StoreError> {
    crate::store::history::HistorySource::open(state_dir, url)
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
        let batch = store.write_history(|tx| {
            // A message is chained (when its gateway archives) before it can be forgotten.
            let upto = tx.chained_upto()?;
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
    let kept = store.files_in_use(hashes)?;
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

/// The messages a batch forgets, with what points at them, in the order decided: removed as
/// each is decided on `SQLite`, at the end of the batch on PostgreSQL (one statement per table,
/// [`HistoryWrite::forgets_in_bulk`]). Remembers every id of the batch, so that a message
/// forgotten with another is not looked at again.
#[derive(Default)]
struct Doomed {
    ids: Vec<i64>,
    set: HashSet<i64>,
}

impl Doomed {
    /// The ids not yet removed, in order; they stay known to [`Doomed::contains`].
    fn take(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.ids)
    }

    fn add(&mut self, id: i64) {
        if self.set.insert(id) {
            self.ids.push(id);
        }
    }

    fn contains(&self, id: i64) -> bool {
        self.set.contains(&id)
    }
}

/// Look at up to [`BATCH`] messages after id `after` and forget those past retention.
fn forget_batch(
    tx: &mut dyn HistoryWrite,
    retention: &Retention,
    now_ms: i64,
    horizon: i64,
    after: i64,
    upto: i64,
) -> Result<Batch, StoreError> {
    let rows = tx.candidates(after, upto, BATCH as i64)?;
    let mut batch = Batch {
        forgotten: 0,
        deliveries: 0,
        kept_pending: 0,
        hashes: Vec::new(),
        next: rows.last().map(|row| row.id),
    };
    if rows.len() < BATCH {
        batch.next = None;
    }
    // A backend that asks in bulk learns what the decisions need in one go (PostgreSQL: two
    // statements for the batch instead of three or more per message).
    let mut known = if tx.forgets_in_bulk() {
        let mut due = Vec::new();
        for row in &rows {
            if row.received_ms >= horizon {
                break;
            }
            if retention
                .keep(&row.network, &row.channel)
                .is_some_and(|keep| row.received_ms < now_ms.saturating_sub(keep))
            {
                due.push(row.id);
            }
        }
        tx.inspect(&due)?
    } else {
        HashMap::new()
    };
    let started = std::time::Instant::now();
    let mut last = after;
    let mut doomed = Doomed::default();
    for row in rows {
        // Bounded in time as well as in rows: the writer waits for at most one batch.
        if last != after && started.elapsed() >= BATCH_TIME {
            batch.next = Some(last);
            break;
        }
        last = row.id;
        if row.received_ms >= horizon {
            // Newer than the shortest retention: so is (nearly) everything after it.
            batch.next = None;
            break;
        }
        let Some(keep) = retention.keep(&row.network, &row.channel) else {
            continue;
        };
        if row.received_ms >= now_ms.saturating_sub(keep) {
            continue;
        }
        // Gone already when it was an edit or reaction of a message forgotten in this batch.
        if doomed.contains(row.id) {
            continue;
        }
        let facts = if let Some(facts) = known.remove(&row.id) {
            facts
        } else {
            // Row by row, asking only what each decision needs.
            if tx.needed_by_outbox(row.id)? {
                batch.kept_pending += 1;
                continue;
            }
            let Some(body) = tx.body(row.id)? else {
                continue;
            };
            let dependents = tx.dependents(row.id)?;
            let dependents_needed = any_needed(tx, &dependents)?;
            Inspected {
                body: Some(body),
                needed: false,
                dependents,
                dependents_needed,
            }
        };
        if facts.needed {
            batch.kept_pending += 1;
            continue;
        }
        let Some(body) = facts.body else {
            continue;
        };
        if facts.dependents_needed {
            batch.kept_pending += 1;
            continue;
        }
        let dependents = facts.dependents;
        for (message, body) in dependents.iter().chain(std::iter::once(&(row.id, body))) {
            doomed.add(*message);
            batch.hashes.extend(stored_files(body));
            batch.forgotten += 1;
        }
        if !tx.forgets_in_bulk() {
            batch.deliveries += tx.forget(&doomed.take(), "retention")?.deliveries;
        }
    }
    batch.deliveries += tx.forget(&doomed.take(), "retention")?.deliveries;
    Ok(batch)
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
        let (batch, batch_hashes, next) = store.write_history(|tx| {
            let mut batch = Forgotten::default();
            let mut batch_hashes = Vec::new();
            let mut doomed = Doomed::default();
            let rows = tx.authored(network, user, after, BATCH as i64)?;
            for (id, channel, body) in &rows {
                // Gone already when it was an edit or reaction of a message forgotten above.
                if doomed.contains(*id) {
                    continue;
                }
                if retention.held(network, channel) {
                    batch.kept_held += 1;
                    continue;
                }
                let dependents = tx.dependents(*id)?;
                if tx.needed_by_outbox(*id)? || any_needed(tx, &dependents)? {
                    batch.kept_pending += 1;
                    continue;
                }
                for (message, body) in dependents
                    .iter()
                    .chain(std::iter::once(&(*id, body.clone())))
                {
                    doomed.add(*message);
                    batch_hashes.extend(stored_files(body));
                    batch.messages += 1;
                }
                if !tx.forgets_in_bulk() {
                    batch.tombstones += tx.forget(&doomed.take(), "forget")?.tombstones;
                }
            }
            batch.tombstones += tx.forget(&doomed.take(), "forget")?.tombstones;
            tx.forget_person(network, user)?;
            let next = (rows.len() == BATCH)
                .then(|| rows.last().map(|r| r.0))
                .flatten();
            Ok((batch, batch_hashes, next))
        })?;
        forgotten.messages += batch.messages;
        forgotten.tombstones += batch.tombstones;
        forgotten.kept_pending += batch.kept_pending;
        forgotten.kept_held += batch.kept_held;
        hashes.extend(batch_hashes);
        match next {
            Some(next) => after = next,
            None => break,
        }
    }
    forgotten.files += remove_unused_files(store, files, &hashes)?;
    Ok(forgotten)
}

/// Does a queued delivery need any of `messages` (see [`HistoryWrite::needed_by_outbox`])?
fn any_needed(tx: &mut dyn HistoryWrite, messages: &[(i64, String)]) -> Result<bool, StoreError> {
    for (id, _) in messages {
        if tx.needed_by_outbox(*id)? {
            return Ok(true);
        }
    }
    Ok(false)
}
