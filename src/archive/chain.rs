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

use sha2::{Digest as _, Sha256};

use crate::store::history::{ChainLink, HistoryRead, HistoryWrite, hex};
pub use crate::store::history::{Record, tombstone_seal};
use crate::store::{Store, StoreError};

/// The chain hash before a gateway's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Messages chained per write transaction.
const BATCH: i64 = 256;

/// Chain rows read per page by [`verify`].
const PAGE: i64 = 512;

/// The chain hash after `previous` for a record hashed `record_hash`.
#[must_use]
pub fn link(previous: &str, record_hash: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(record_hash.as_bytes());
    hex(&hasher.finalize())
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
/// [`super::BATCH_TIME`], whichever comes first, each a short write transaction).
///
/// # Errors
/// The store's.
pub fn chain_new(
    store: &Store,
    gateways: &(dyn ArchivedGateways + Sync),
) -> Result<Chained, StoreError> {
    let mut chained = Chained::default();
    let mut heads: HashMap<String, (i64, String)> = HashMap::new();
    loop {
        let batch = store.write_history(|tx| chain_batch(tx, gateways))?;
        chained.records += batch.written;
        heads.extend(batch.heads);
        if batch.done {
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

/// What one [`chain_batch`] did.
struct Batch {
    /// Nothing is left to chain.
    done: bool,
    written: u64,
    /// Each gateway's newest (seq, chain hash) after the batch.
    heads: HashMap<String, (i64, String)>,
}

/// Chain the next messages. Reads every head it needs from the store, so that running it
/// again after a lost commit chains from what the store holds.
fn chain_batch(
    tx: &mut dyn HistoryWrite,
    gateways: &(dyn ArchivedGateways + Sync),
) -> Result<Batch, StoreError> {
    let after = tx.chained_upto()?;
    let records = tx.records_after(after, BATCH)?;
    if records.is_empty() {
        return Ok(Batch {
            done: true,
            written: 0,
            heads: HashMap::new(),
        });
    }
    let mut previous: HashMap<String, String> = HashMap::new();
    let mut links = Vec::new();
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
            let before = match previous.get(&gateway) {
                Some(hash) => hash.clone(),
                None => tx
                    .chain_head(&gateway)?
                    .unwrap_or_else(|| GENESIS.to_owned()),
            };
            let chain_hash = link(&before, &record_hash);
            previous.insert(gateway.clone(), chain_hash.clone());
            links.push(ChainLink {
                gateway,
                message_id: record.message_id,
                record_hash: record_hash.clone(),
                chain_hash,
            });
        }
    }
    let written = links.len() as u64;
    let seqs = tx.append_chain(&links)?;
    tx.set_chained_upto(last)?;
    let heads = links
        .into_iter()
        .zip(seqs)
        .map(|(link, seq)| (link.gateway, (seq, link.chain_hash)))
        .collect();
    Ok(Batch {
        done: !cut && records.len() < BATCH as usize,
        written,
        heads,
    })
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

/// Recompute a gateway's chain from the store (read page by page in one snapshot).
///
/// # Errors
/// The store's.
pub fn verify(history: &mut dyn HistoryRead, gateway: &str) -> Result<Verdict, StoreError> {
    let mut previous = GENESIS.to_owned();
    let (mut records, mut tombstones, mut unsealed) = (0, 0, 0);
    let mut after = 0;
    loop {
        let page = history.chain_page(gateway, after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for row in page {
            let broken = |reason: &str| Verdict::Broken {
                seq: row.seq,
                message_id: row.message_id,
                reason: reason.to_owned(),
            };
            records += 1;
            if let Some(why) = &row.tombstone {
                tombstones += 1;
                match &row.tombstone_hash {
                    Some(seal) if *seal == tombstone_seal(&row.chain_hash, why) => {}
                    Some(_) => {
                        return Ok(broken(
                            "its tombstone's reason does not match the seal it was forgotten with",
                        ));
                    }
                    None => unsealed += 1,
                }
            } else {
                match &row.record {
                    None => {
                        return Ok(broken(
                            "the message is gone from the store without a tombstone",
                        ));
                    }
                    Some(record) if record.hash() != row.record_hash => {
                        return Ok(broken(
                            "its content does not match the hash it was archived with",
                        ));
                    }
                    Some(_) => {}
                }
            }
            if link(&previous, &row.record_hash) != row.chain_hash {
                return Ok(broken(
                    "its chain hash does not follow from the record before it",
                ));
            }
            previous = row.chain_hash;
        }
    }
    Ok(Verdict::Intact {
        records,
        tombstones,
        unsealed,
        head: previous,
    })
}
