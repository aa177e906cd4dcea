//! The archive's tamper-evident chain: every message of a gateway with `archive = true` gets a
//! row in `archive_chain` whose `record_hash` is the SHA-256 of the message row's canonical
//! [`Record`] and whose `chain_hash` is the SHA-256 of the gateway's previous chain hash and that
//! record hash. [`verify`] recomputes both from the store and names the first record that does
//! not match. A forgotten message leaves a tombstone: the row keeps its hashes, so the chain still
//! verifies without the content.
//!
//! Messages are chained by a daemon task shortly after they are committed ([`chain_new`], every
//! second), not in the writer's transaction, so relaying pays nothing for it; the window in
//! which a committed message is not yet chained is that second. Each pass that chains anything
//! logs each gateway's latest chain hash (a checkpoint an auditor can compare with the store).

use std::collections::HashMap;
use std::fmt::Write as _;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::store::{Store, StoreError};

/// The chain hash before a gateway's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The cursor (in `cursors`) of the last message id the chainer looked at.
const CURSOR_NETWORK: &str = "tribridge.archive";

/// Messages chained per write transaction.
const BATCH: i64 = 256;

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

/// The columns of [`Record`], for `SELECT`.
pub const RECORD_COLUMNS: &str = "id, origin_network, origin_channel, origin_protocol, \
     origin_remote_id, author_id, author_name, kind, body, created_ms, received_ms, \
     target_message_id, reply_to_message_id, permalink";

impl Record {
    /// Read from a row selected with [`RECORD_COLUMNS`] from `offset` on.
    pub fn from_row(row: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<Self> {
        Ok(Self {
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

    /// The SHA-256 of its canonical JSON, hex.
    #[must_use]
    pub fn hash(&self) -> String {
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex(&Sha256::digest(&json))
    }
}

/// The chain hash after `previous` for a record hashed `record_hash`.
#[must_use]
pub fn link(previous: &str, record_hash: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(record_hash.as_bytes());
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Which archived gateways a message said in a channel belongs to.
pub trait ArchivedGateways {
    /// The names of the gateways with `archive = true` that hold `channel` of `network`.
    fn archived(&self, network: &str, channel: &str) -> Vec<String>;
}

/// What one [`chain_new`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chained {
    /// Chain rows written.
    pub records: u64,
    /// Each gateway's newest chain hash after the pass, for those that got a record.
    pub heads: Vec<(String, i64, String)>,
}

/// Chain every message committed since the last pass (in batches of 256 or
/// [`super::BATCH_TIME`], whichever comes first, each a short write transaction). Returns the last message id looked at as well.
///
/// # Errors
/// The store's.
pub fn chain_new(store: &Store, gateways: &dyn ArchivedGateways) -> Result<Chained, StoreError> {
    let mut chained = Chained::default();
    let mut heads: HashMap<String, (i64, String)> = HashMap::new();
    loop {
        let (done, written) = store.write_with(|tx| chain_batch(tx, gateways, &mut heads))?;
        chained.records += written;
        if done {
            break;
        }
    }
    let mut heads: Vec<_> = heads
        .into_iter()
        .map(|(gateway, (seq, hash))| (gateway, seq, hash))
        .collect();
    heads.sort();
    chained.heads = heads;
    Ok(chained)
}

/// The last message id the chainer has looked at (0 before the first).
///
/// # Errors
/// The store's.
pub fn chained_upto(connection: &Connection) -> Result<i64, StoreError> {
    Ok(connection
        .query_row(
            "SELECT value FROM cursors WHERE network = ?1 AND channel = ''",
            params![CURSOR_NETWORK],
            |row| row.get::<_, String>(0),
        )
        .optional()?
        .and_then(|value| value.parse().ok())
        .unwrap_or(0))
}

fn chain_batch(
    tx: &rusqlite::Transaction<'_>,
    gateways: &dyn ArchivedGateways,
    heads: &mut HashMap<String, (i64, String)>,
) -> Result<(bool, u64), StoreError> {
    let after = chained_upto(tx)?;
    let records: Vec<Record> = tx
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?
        .query_map(params![after, BATCH], |row| Record::from_row(row, 0))?
        .collect::<Result<_, _>>()?;
    if records.is_empty() {
        return Ok((true, 0));
    }
    let mut written = 0;
    let started = std::time::Instant::now();
    let mut last = after;
    let mut cut = false;
    for record in &records {
        // Bounded in time as well as in rows, like the retention's batches.
        if last != after && started.elapsed() >= super::BATCH_TIME {
            cut = true;
            break;
        }
        last = record.message_id;
        let names = gateways.archived(&record.network, &record.channel);
        if names.is_empty() {
            continue;
        }
        let record_hash = record.hash();
        for gateway in names {
            let previous = match heads.get(&gateway) {
                Some((_, hash)) => hash.clone(),
                None => tx
                    .prepare_cached(
                        "SELECT chain_hash FROM archive_chain WHERE gateway = ?1
                         ORDER BY seq DESC LIMIT 1",
                    )?
                    .query_row(params![gateway], |row| row.get::<_, String>(0))
                    .optional()?
                    .unwrap_or_else(|| GENESIS.to_owned()),
            };
            let chain_hash = link(&previous, &record_hash);
            tx.prepare_cached(
                "INSERT INTO archive_chain (gateway, message_id, record_hash, chain_hash)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![gateway, record.message_id, record_hash, chain_hash])?;
            heads.insert(gateway, (tx.last_insert_rowid(), chain_hash));
            written += 1;
        }
    }
    tx.prepare_cached(
        "INSERT INTO cursors (network, channel, value) VALUES (?1, '', ?2)
         ON CONFLICT (network, channel) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![CURSOR_NETWORK, last.to_string()])?;
    Ok((!cut && records.len() < BATCH as usize, written))
}

/// The seal of a tombstone: SHA-256 (hex) of the row's chain hash, `:` and the reason, so that
/// the reason cannot be changed without [`verify`] seeing it.
#[must_use]
pub fn tombstone_seal(chain_hash: &str, why: &str) -> String {
    hex(&Sha256::digest(format!("{chain_hash}:{why}").as_bytes()))
}

/// Mark the chain rows of a forgotten message as tombstones (`why`: `retention` or `forget`),
/// each sealed with [`tombstone_seal`].
pub(crate) fn tombstone(
    tx: &rusqlite::Transaction<'_>,
    message_id: i64,
    why: &str,
) -> Result<usize, StoreError> {
    let rows: Vec<(i64, String)> = tx
        .prepare_cached("SELECT seq, chain_hash FROM archive_chain WHERE message_id = ?1")?
        .query_map(params![message_id], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (seq, chain_hash) in &rows {
        tx.prepare_cached(
            "UPDATE archive_chain SET tombstone = ?2, tombstone_hash = ?3 WHERE seq = ?1",
        )?
        .execute(params![seq, why, tombstone_seal(chain_hash, why)])?;
    }
    Ok(rows.len())
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record matches.
    Intact {
        /// Records in the chain.
        records: u64,
        /// Of which tombstones (content forgotten, hash kept).
        tombstones: u64,
        /// Of those, tombstones made before reasons were sealed (no `tombstone_hash`).
        unsealed: u64,
        /// The chain's newest hash (the genesis hash when empty).
        head: String,
    },
    /// The first record that does not match.
    Broken {
        /// Its position in the chain (`archive_chain.seq`).
        seq: i64,
        /// Its message id.
        message_id: i64,
        /// What is wrong.
        reason: String,
    },
}

/// Recompute a gateway's chain from the store.
///
/// # Errors
/// The store's.
pub fn verify(connection: &Connection, gateway: &str) -> Result<Verdict, StoreError> {
    let mut statement = connection.prepare(&format!(
        "SELECT c.seq, c.message_id, c.record_hash, c.chain_hash, c.tombstone, m.{},
                c.tombstone_hash
         FROM archive_chain c LEFT JOIN messages m ON m.id = c.message_id
         WHERE c.gateway = ?1 ORDER BY c.seq",
        RECORD_COLUMNS.replace(", ", ", m.")
    ))?;
    let seal_column = 5 + RECORD_COLUMNS.split(", ").count();
    let mut rows = statement.query(params![gateway])?;
    let mut previous = GENESIS.to_owned();
    let (mut records, mut tombstones, mut unsealed) = (0, 0, 0);
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let message_id: i64 = row.get(1)?;
        let record_hash: String = row.get(2)?;
        let chain_hash: String = row.get(3)?;
        let tombstone: Option<String> = row.get(4)?;
        let present: Option<i64> = row.get(5)?;
        let broken = |reason: &str| Verdict::Broken {
            seq,
            message_id,
            reason: reason.to_owned(),
        };
        records += 1;
        if let Some(why) = &tombstone {
            tombstones += 1;
            match row.get::<_, Option<String>>(seal_column)? {
                Some(seal) if seal == tombstone_seal(&chain_hash, why) => {}
                Some(_) => {
                    return Ok(broken(
                        "its tombstone's reason does not match the seal it was forgotten with",
                    ));
                }
                None => unsealed += 1,
            }
        } else if present.is_none() {
            return Ok(broken(
                "the message is gone from the store without a tombstone",
            ));
        } else if Record::from_row(row, 5)?.hash() != record_hash {
            return Ok(broken(
                "its content does not match the hash it was archived with",
            ));
        }
        if link(&previous, &record_hash) != chain_hash {
            return Ok(broken(
                "its chain hash does not follow from the record before it",
            ));
        }
        previous = chain_hash;
    }
    Ok(Verdict::Intact {
        records,
        tombstones,
        unsealed,
        head: previous,
    })
}
