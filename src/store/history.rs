//! The history's queries ([`crate::archive`]: the archive's chain, the retention, `forget`, the
//! exports) as two small interfaces that both backends implement: [`HistoryWrite`] (one write
//! transaction of the chainer or the pruner) and [`HistoryRead`] (one consistent read of an
//! export or `--verify`). The archive decides what to chain and what to forget; the backends
//! only read and write rows, so the chain's bytes and the retention's outcome do not depend on
//! where the state is kept. This file holds the `SQLite` side; the PostgreSQL side is in
//! `postgres/history.rs`.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::{Store, StoreError};

/// A message row as it is hashed and exported: every column. The fields are declared in
/// alphabetical order, so the hashed form is the record's compact JSON with its keys sorted,
/// which any reader of an export can reproduce.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Record {
    /// The author's id on that network.
    pub author_id: String,
    /// The author's name as shown then.
    pub author_name: String,
    /// The event as the store keeps it (JSON).
    pub body: String,
    /// The channel it was said in.
    pub channel: String,
    /// When it was said (ms since the epoch).
    pub created_ms: i64,
    /// `text`, `edit`, `delete`, `reaction`, `membership`, ...
    pub kind: String,
    /// The canonical message id.
    pub message_id: i64,
    /// The network it was said on.
    pub network: String,
    /// A link to it on its origin platform.
    pub permalink: Option<String>,
    /// That network's protocol (`irc`, `matrix`, `mattermost`).
    pub protocol: String,
    /// When the bridge received it.
    pub received_ms: i64,
    /// The network's own id for it, if any.
    pub remote_id: Option<String>,
    /// The message it replies to.
    pub reply_to_message_id: Option<i64>,
    /// The message an edit, delete or reaction is about.
    pub target_message_id: Option<i64>,
}

impl Record {
    /// The SHA-256 of its canonical JSON, hex.
    #[must_use]
    pub fn hash(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(&json))
    }
}

/// Lower-case hex of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// One row of a gateway's chain, with its message when the message is still in the store.
#[derive(Debug, Clone)]
pub struct ChainRow {
    /// Its position in the chain.
    pub seq: i64,
    /// The message it archived.
    pub message_id: i64,
    /// The SHA-256 of the message's [`Record`] when it was chained.
    pub record_hash: String,
    /// The chain hash after it.
    pub chain_hash: String,
    /// Why its message was forgotten (`retention`, `forget`), for a tombstone.
    pub tombstone: Option<String>,
    /// A tombstone's seal.
    pub tombstone_hash: Option<String>,
    /// The message, when it is still in the store.
    pub record: Option<Record>,
}

/// A new row of the chain ([`HistoryWrite::append_chain`]).
#[derive(Debug, Clone)]
pub struct ChainLink {
    /// The gateway whose chain it extends.
    pub gateway: String,
    /// The message it archives.
    pub message_id: i64,
    /// The SHA-256 of the message's [`Record`].
    pub record_hash: String,
    /// The chain hash after it.
    pub chain_hash: String,
}

/// A message the retention looks at: where and when it was received.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The message id.
    pub id: i64,
    /// The network it was said on.
    pub network: String,
    /// The channel.
    pub channel: String,
    /// When the bridge received it.
    pub received_ms: i64,
}

/// What the retention needs to know of a message to forget it ([`HistoryWrite::inspect`]).
#[derive(Debug, Clone, Default)]
pub struct Inspected {
    /// Its body; `None` when it is no longer in the store.
    pub body: Option<String>,
    /// A queued delivery needs it ([`HistoryWrite::needed_by_outbox`]).
    pub needed: bool,
    /// Its edits, deletes and reactions: (id, body).
    pub dependents: Vec<(i64, String)>,
    /// A queued delivery needs one of them.
    pub dependents_needed: bool,
}

/// What [`HistoryWrite::forget`] removed besides the messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Archive chain rows turned into tombstones.
    pub tombstones: u64,
    /// Acknowledged deliveries removed.
    pub deliveries: u64,
}

/// Which records an export holds.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// The gateway.
    pub gateway: String,
    /// Only this channel (network, channel), when given.
    pub channel: Option<(String, String)>,
    /// Only messages said at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only messages said before this time (ms since the epoch).
    pub until_ms: Option<i64>,
}

/// A text message of a selection as stored, with its chain hash.
#[derive(Debug, Clone)]
pub struct PostRow {
    /// The canonical message id.
    pub message_id: i64,
    /// The network it was said on.
    pub network: String,
    /// The channel.
    pub channel: String,
    /// That network's protocol.
    pub protocol: String,
    /// The network's own id of it.
    pub remote_id: Option<String>,
    /// The author's id.
    pub author_id: String,
    /// The author's name then.
    pub author_name: String,
    /// The event (JSON).
    pub body: String,
    /// When it was said.
    pub created_ms: i64,
    /// The message it replies to.
    pub reply_to_message_id: Option<i64>,
    /// Its chain hash in the gateway's chain.
    pub chain_hash: String,
}

/// An edit, delete or reaction of a message: (body, network, author id, time).
pub type Follower = (String, String, String, i64);

/// What the exports need of a message to find its thread: (time, body, network, channel,
/// the message it replies to).
pub type Brief = (i64, String, String, String, Option<i64>);

/// One write transaction of the history (chaining, retention, `forget`). Every method reads or
/// writes rows and decides nothing.
pub trait HistoryWrite {
    /// The last message id the chainer has looked at (0 before the first).
    fn chained_upto(&mut self) -> Result<i64, StoreError>;
    /// Record that the chainer looked at every message up to `id`.
    fn set_chained_upto(&mut self, id: i64) -> Result<(), StoreError>;
    /// Up to `limit` messages after id `after`, in id order.
    fn records_after(&mut self, after: i64, limit: i64) -> Result<Vec<Record>, StoreError>;
    /// The newest chain hash of `gateway`, if it has a chain.
    fn chain_head(&mut self, gateway: &str) -> Result<Option<String>, StoreError>;
    /// Append `links` to the chain, in order: the position (`seq`) of each.
    fn append_chain(&mut self, links: &[ChainLink]) -> Result<Vec<i64>, StoreError>;
    /// Up to `limit` messages with an id in (`after`, `upto`], in id order.
    fn candidates(
        &mut self,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<Candidate>, StoreError>;
    /// Does a queued delivery need message `id`: one of it, or of a message that edits,
    /// deletes, reacts or replies to it?
    fn needed_by_outbox(&mut self, id: i64) -> Result<bool, StoreError>;
    /// The body of message `id`, when it is in the store.
    fn body(&mut self, id: i64) -> Result<Option<String>, StoreError>;
    /// The edits, deletes and reactions of message `id`: (id, body).
    fn dependents(&mut self, id: i64) -> Result<Vec<(i64, String)>, StoreError>;
    /// Up to `limit` messages of `user` on `network` after id `after`: (id, channel, body).
    fn authored(
        &mut self,
        network: &str,
        user: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>, StoreError>;
    /// What the retention needs to know of each of `ids`, by id, in as few statements as the
    /// backend can (PostgreSQL: two); empty when the backend asks row by row (`SQLite`, whose
    /// lookups cost no round trip: the pass then asks only what each decision needs).
    fn inspect(
        &mut self,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, Inspected>, StoreError> {
        let _ = ids;
        Ok(std::collections::HashMap::new())
    }
    /// Whether [`HistoryWrite::forget`] is best called once per batch (PostgreSQL: one
    /// statement per table whatever the count) rather than once per message as it is decided
    /// (`SQLite`: the removal then counts in the batch's time bound, as it always has).
    fn forgets_in_bulk(&self) -> bool {
        false
    }
    /// Remove the messages `ids` (each with what points at it already among them), their
    /// mappings and acknowledged deliveries; replies to them lose their link; their chain
    /// rows become tombstones sealed with [`tombstone_seal`] (`why`: `retention`, `forget`).
    fn forget(&mut self, ids: &[i64], why: &str) -> Result<Removed, StoreError>;
    /// Remove `user` of `network` from the people directory.
    fn forget_person(&mut self, network: &str, user: &str) -> Result<(), StoreError>;
}

/// One consistent read of the history (an export, `--verify`).
pub trait HistoryRead {
    /// Up to `limit` rows of `gateway`'s chain after position `after`, in chain order.
    fn chain_page(
        &mut self,
        gateway: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ChainRow>, StoreError>;
    /// Where message `id` was relayed: (network, channel, remote id, role), origin first.
    fn relayed(&mut self, id: i64) -> Result<Vec<(String, String, String, String)>, StoreError>;
    /// Everyone who said something in the selection: (network, id, latest name).
    fn people(
        &mut self,
        selection: &Selection,
    ) -> Result<Vec<(String, String, String)>, StoreError>;
    /// Call `each` with every text message of the selection (only replies and thread replies
    /// when `threaded`), in the order said, read by one statement as it goes (so a large
    /// archive is sorted once and never held whole); `each` may read more through the reader
    /// it is given. An error of `each` ends the read with it; [`StoreError::Stopped`] tells the
    /// caller that `each` stopped it with an error of its own.
    fn each_post(
        &mut self,
        selection: &Selection,
        threaded: bool,
        each: &mut dyn FnMut(&mut dyn HistoryRead, PostRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    /// The edits, deletes and reactions of message `id`, in the order they came.
    fn followers(&mut self, id: i64) -> Result<Vec<Follower>, StoreError>;
    /// What the exports need of message `id` to place it in a thread.
    fn brief(&mut self, id: i64) -> Result<Option<Brief>, StoreError>;
    /// The message mapped to `remote_id` in `channel` of `network`.
    fn mapped(
        &mut self,
        network: &str,
        channel: &str,
        remote_id: &str,
    ) -> Result<Option<i64>, StoreError>;
}

/// The seal of a tombstone: SHA-256 (hex) of the row's chain hash, `:` and the reason, so that
/// the reason cannot be changed without a verification seeing it.
#[must_use]
pub fn tombstone_seal(chain_hash: &str, why: &str) -> String {
    hex(&Sha256::digest(format!("{chain_hash}:{why}").as_bytes()))
}

/// Where the history is read from for an export: the `SQLite` file opened read-only (so that it
/// runs while the daemon writes), or the PostgreSQL store.
pub enum HistorySource {
    /// The state folder's `SQLite` file, read-only.
    Sqlite(Connection),
    /// The PostgreSQL database.
    Postgres(Box<Store>),
}

impl HistorySource {
    /// Open the configured store for reading the history: the PostgreSQL database at `url`,
    /// else `state_dir/tribridge.sqlite3` read-only.
    ///
    /// # Errors
    /// The store's, when the file is missing or the database unreachable.
    pub fn open(state_dir: &Path, url: Option<&str>) -> Result<Self, StoreError> {
        if let Some(url) = url {
            return Ok(Self::Postgres(Box::new(Store::open_postgres(url)?)));
        }
        let connection = Connection::open_with_flags(
            state_dir.join("tribridge.sqlite3"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Self::Sqlite(connection))
    }

    /// Run `work` on one consistent snapshot of the history.
    ///
    /// # Errors
    /// The store's, or `work`'s.
    pub fn read<R, E: From<StoreError>>(
        &self,
        work: impl FnOnce(&mut dyn HistoryRead) -> Result<R, E>,
    ) -> Result<R, E> {
        match self {
            Self::Sqlite(connection) => {
                // A read transaction: every page of the export sees the same snapshot (WAL).
                let transaction = connection
                    .unchecked_transaction()
                    .map_err(|e| E::from(e.into()))?;
                let result = work(&mut SqliteHistory(&transaction))?;
                transaction.commit().map_err(|e| E::from(e.into()))?;
                Ok(result)
            }
            Self::Postgres(store) => store.read_history(work),
        }
    }
}

/// The `SQLite` side of the history's interfaces, on a connection (in a transaction).
pub(super) struct SqliteHistory<'c>(pub(super) &'c Connection);

/// The columns of [`Record`], for `SELECT` (the same names on both backends).
const RECORD_COLUMNS: &str = "id, origin_network, origin_channel, origin_protocol, \
     origin_remote_id, author_id, author_name, kind, body, created_ms, received_ms, \
     target_message_id, reply_to_message_id, permalink";

/// A [`Record`] from a row selected with [`RECORD_COLUMNS`] from `offset` on.
fn record_of(row: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<Record> {
    Ok(Record {
        message_id: row.get(offset)?,
        network: row.get(offset + 1)?,
        channel: row.get(offset + 2)?,
        protocol: row.get(offset + 3)?,
        remote_id: row.get(offset + 4)?,
        author_id: row.get(offset + 5)?,
        author_name: row.get(offset + 6)?,
        kind: row.get(offset + 7)?,
        body: row.get(offset + 8)?,
        created_ms: row.get(offset + 9)?,
        received_ms: row.get(offset + 10)?,
        target_message_id: row.get(offset + 11)?,
        reply_to_message_id: row.get(offset + 12)?,
        permalink: row.get(offset + 13)?,
    })
}

/// The cursor (in `cursors`) of the last message id the chainer looked at.
pub(super) const CHAIN_CURSOR: &str = "tribridge.archive";

impl HistoryWrite for SqliteHistory<'_> {
    fn chained_upto(&mut self) -> Result<i64, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT value FROM cursors WHERE network = ?1 AND channel = ''")?
            .query_row(params![CHAIN_CURSOR], |row| row.get::<_, String>(0))
            .optional()?
            .and_then(|value| value.parse().ok())
            .unwrap_or(0))
    }

    fn set_chained_upto(&mut self, id: i64) -> Result<(), StoreError> {
        self.0
            .prepare_cached(
                "INSERT INTO cursors (network, channel, value) VALUES (?1, '', ?2)
                 ON CONFLICT (network, channel) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![CHAIN_CURSOR, id.to_string()])?;
        Ok(())
    }

    fn records_after(&mut self, after: i64, limit: i64) -> Result<Vec<Record>, StoreError> {
        Ok(self
            .0
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?
            .query_map(params![after, limit], |row| record_of(row, 0))?
            .collect::<Result<_, _>>()?)
    }

    fn chain_head(&mut self, gateway: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT chain_hash FROM archive_chain WHERE gateway = ?1
                 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![gateway], |row| row.get::<_, String>(0))
            .optional()?)
    }

    fn append_chain(&mut self, links: &[ChainLink]) -> Result<Vec<i64>, StoreError> {
        let mut statement = self.0.prepare_cached(
            "INSERT INTO archive_chain (gateway, message_id, record_hash, chain_hash)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut seqs = Vec::with_capacity(links.len());
        for link in links {
            statement.execute(params![
                link.gateway,
                link.message_id,
                link.record_hash,
                link.chain_hash
            ])?;
            seqs.push(self.0.last_insert_rowid());
        }
        Ok(seqs)
    }

    fn candidates(
        &mut self,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<Candidate>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT id, origin_network, origin_channel, received_ms FROM messages
                 WHERE id > ?1 AND id <= ?3 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after, limit, upto], |row| {
                Ok(Candidate {
                    id: row.get(0)?,
                    network: row.get(1)?,
                    channel: row.get(2)?,
                    received_ms: row.get(3)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn needed_by_outbox(&mut self, id: i64) -> Result<bool, StoreError> {
        // Index lookups (`outbox_by_message`, `messages_by_target`, `messages_by_reply`), not a
        // read of the outbox.
        Ok(self
            .0
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE message_id = ?1)
                     OR EXISTS (SELECT 1 FROM messages m JOIN outbox o ON o.message_id = m.id
                                WHERE m.target_message_id = ?1)
                     OR EXISTS (SELECT 1 FROM messages m JOIN outbox o ON o.message_id = m.id
                                WHERE m.reply_to_message_id = ?1)",
            )?
            .query_row(params![id], |row| row.get(0))?)
    }

    fn body(&mut self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT body FROM messages WHERE id = ?1")?
            .query_row(params![id], |row| row.get::<_, String>(0))
            .optional()?)
    }

    fn dependents(&mut self, id: i64) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(self
            .0
            .prepare_cached("SELECT id, body FROM messages WHERE target_message_id = ?1")?
            .query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<_, _>>()?)
    }

    fn authored(
        &mut self,
        network: &str,
        user: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT id, origin_channel, body FROM messages
                 WHERE id > ?1 AND origin_network = ?2 AND author_id = ?3
                 ORDER BY id LIMIT ?4",
            )?
            .query_map(params![after, network, user, limit], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<_, _>>()?)
    }

    fn forget(&mut self, ids: &[i64], why: &str) -> Result<Removed, StoreError> {
        let mut removed = Removed::default();
        for &id in ids {
            let rows: Vec<(i64, String)> = self
                .0
                .prepare_cached("SELECT seq, chain_hash FROM archive_chain WHERE message_id = ?1")?
                .query_map(params![id], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (seq, chain_hash) in &rows {
                self.0
                    .prepare_cached(
                        "UPDATE archive_chain SET tombstone = ?2, tombstone_hash = ?3
                         WHERE seq = ?1",
                    )?
                    .execute(params![seq, why, tombstone_seal(chain_hash, why)])?;
            }
            removed.tombstones += rows.len() as u64;
            self.0
                .prepare_cached(
                    "UPDATE messages SET reply_to_message_id = NULL
                     WHERE reply_to_message_id = ?1",
                )?
                .execute(params![id])?;
            self.0
                .prepare_cached("DELETE FROM mappings WHERE message_id = ?1")?
                .execute(params![id])?;
            removed.deliveries += self
                .0
                .prepare_cached("DELETE FROM deliveries WHERE message_id = ?1")?
                .execute(params![id])? as u64;
            self.0
                .prepare_cached("DELETE FROM messages WHERE id = ?1")?
                .execute(params![id])?;
        }
        Ok(removed)
    }

    fn forget_person(&mut self, network: &str, user: &str) -> Result<(), StoreError> {
        self.0
            .prepare_cached("DELETE FROM people WHERE network = ?1 AND user_id = ?2")?
            .execute(params![network, user])?;
        Ok(())
    }
}

/// The selection's filter as `SQLite` parameters ?1..?5.
fn selection_params(selection: &Selection) -> [rusqlite::types::Value; 5] {
    use rusqlite::types::Value;
    let (network, channel) = match &selection.channel {
        Some((network, channel)) => (Value::from(network.clone()), Value::from(channel.clone())),
        None => (Value::Null, Value::Null),
    };
    [
        Value::from(selection.gateway.clone()),
        network,
        channel,
        selection.since_ms.map_or(Value::Null, Value::from),
        selection.until_ms.map_or(Value::Null, Value::from),
    ]
}

impl HistoryRead for SqliteHistory<'_> {
    fn chain_page(
        &mut self,
        gateway: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ChainRow>, StoreError> {
        let sql = format!(
            "SELECT c.seq, c.message_id, c.record_hash, c.chain_hash, c.tombstone,
                    c.tombstone_hash, m.{}
             FROM archive_chain c LEFT JOIN messages m ON m.id = c.message_id
             WHERE c.gateway = ?1 AND c.seq > ?2 ORDER BY c.seq LIMIT ?3",
            RECORD_COLUMNS.replace(", ", ", m.")
        );
        Ok(self
            .0
            .prepare_cached(&sql)?
            .query_map(params![gateway, after, limit], |row| {
                let present: Option<i64> = row.get(6)?;
                Ok(ChainRow {
                    seq: row.get(0)?,
                    message_id: row.get(1)?,
                    record_hash: row.get(2)?,
                    chain_hash: row.get(3)?,
                    tombstone: row.get(4)?,
                    tombstone_hash: row.get(5)?,
                    record: present.map(|_| record_of(row, 6)).transpose()?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn relayed(&mut self, id: i64) -> Result<Vec<(String, String, String, String)>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT network, channel, remote_id, role FROM mappings WHERE message_id = ?1
                 ORDER BY role DESC, network, channel",
            )?
            .query_map(params![id], |m| {
                Ok((m.get(0)?, m.get(1)?, m.get(2)?, m.get(3)?))
            })?
            .collect::<Result<_, _>>()?)
    }

    fn people(
        &mut self,
        selection: &Selection,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT m.origin_network, m.author_id, m.author_name, MAX(m.id)
                 FROM archive_chain c JOIN messages m ON m.id = c.message_id
                 WHERE c.gateway = ?1 AND c.tombstone IS NULL
                   AND (?2 IS NULL OR (m.origin_network = ?2
                                       AND m.origin_channel = ?3 COLLATE NOCASE))
                   AND (?4 IS NULL OR m.created_ms >= ?4) AND (?5 IS NULL OR m.created_ms < ?5)
                 GROUP BY m.origin_network, m.author_id ORDER BY m.origin_network, m.author_id",
            )?
            .query_map(
                rusqlite::params_from_iter(selection_params(selection)),
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?
            .collect::<Result<_, _>>()?)
    }

    fn each_post(
        &mut self,
        selection: &Selection,
        threaded: bool,
        each: &mut dyn FnMut(&mut dyn HistoryRead, PostRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let extra = if threaded {
            "AND (m.reply_to_message_id IS NOT NULL OR instr(m.body, '\"thread_root\"') > 0)"
        } else {
            ""
        };
        let connection = self.0;
        let mut statement = connection.prepare(&format!(
            "SELECT m.id, m.origin_network, m.origin_channel, m.origin_protocol,
                    m.origin_remote_id, m.author_id, m.author_name, m.body, m.created_ms,
                    m.reply_to_message_id, c.chain_hash
             FROM archive_chain c JOIN messages m ON m.id = c.message_id
             WHERE c.gateway = ?1 AND c.tombstone IS NULL AND m.kind = 'text'
               AND (?2 IS NULL OR (m.origin_network = ?2 AND m.origin_channel = ?3 COLLATE NOCASE))
               AND (?4 IS NULL OR m.created_ms >= ?4) AND (?5 IS NULL OR m.created_ms < ?5)
               {extra}
             ORDER BY m.created_ms, m.id"
        ))?;
        let mut rows = statement.query(rusqlite::params_from_iter(selection_params(selection)))?;
        while let Some(row) = rows.next()? {
            let post = PostRow {
                message_id: row.get(0)?,
                network: row.get(1)?,
                channel: row.get(2)?,
                protocol: row.get(3)?,
                remote_id: row.get(4)?,
                author_id: row.get(5)?,
                author_name: row.get(6)?,
                body: row.get(7)?,
                created_ms: row.get(8)?,
                reply_to_message_id: row.get(9)?,
                chain_hash: row.get(10)?,
            };
            // SQLite reads other statements on the connection while this one steps.
            each(&mut SqliteHistory(connection), post)?;
        }
        Ok(())
    }

    fn followers(&mut self, id: i64) -> Result<Vec<Follower>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT body, origin_network, author_id, created_ms FROM messages
                 WHERE target_message_id = ?1 ORDER BY id",
            )?
            .query_map(params![id], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<Result<_, _>>()?)
    }

    fn brief(&mut self, id: i64) -> Result<Option<Brief>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT created_ms, body, origin_network, origin_channel, reply_to_message_id
                 FROM messages WHERE id = ?1",
            )?
            .query_row(params![id], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .optional()?)
    }

    fn mapped(
        &mut self,
        network: &str,
        channel: &str,
        remote_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT message_id FROM mappings WHERE network = ?1 AND channel = ?2
                 AND remote_id = ?3 LIMIT 1",
            )?
            .query_row(params![network, channel, remote_id], |row| row.get(0))
            .optional()?)
    }
}

/// Which of `hashes` a message still in the `SQLite` store carries: one lookup per file in
/// `message_files` (kept by triggers, see `migrations/0009_history_indexes.sql`).
pub(super) fn files_in_use(
    connection: &Connection,
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
