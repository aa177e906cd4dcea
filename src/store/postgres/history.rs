//! The PostgreSQL side of the history's interfaces ([`super::super::history`]): the archive's
//! chain, the retention's and `forget`'s batches, the exports' reads. The same rows as the
//! `SQLite` side, so that a chain computed on either backend has the same bytes. A batch writes
//! one statement per table (arrays with `= ANY`, `UNNEST`), in one write transaction on the
//! writer's session that carries the fence like every other; the exports read in one
//! `REPEATABLE READ` transaction on the reader's session, page by page.

use std::collections::{HashMap, HashSet};

use postgres::GenericClient;
use postgres::IsolationLevel;

use super::{On, PostgresStore, Session, nul_replaced};
use crate::store::StoreError;
use crate::store::history::{
    Brief, Candidate, ChainLink, ChainRow, Follower, HistoryRead, HistoryWrite, Inspected, PostRow,
    Record, Removed, Selection, tombstone_seal,
};

const CHAINED_UPTO: &str = "SELECT value FROM cursors WHERE network = $1 AND channel = ''";
const SET_CHAINED_UPTO: &str = "INSERT INTO cursors (network, channel, value) VALUES ($1, '', $2)
     ON CONFLICT (network, channel) DO UPDATE SET value = excluded.value";
const RECORDS_AFTER: &str = "SELECT id, origin_network, origin_channel, origin_protocol,
     origin_remote_id, author_id, author_name, kind, body, created_ms, received_ms,
     target_message_id, reply_to_message_id, permalink
     FROM messages WHERE id > $1 ORDER BY id LIMIT $2";
const CHAIN_HEAD: &str = "SELECT chain_hash FROM archive_chain WHERE gateway = $1
     ORDER BY seq DESC LIMIT 1";
const CHAIN_END: &str = "SELECT COALESCE(MAX(seq), 0) FROM archive_chain";
const APPEND_CHAIN: &str =
    "INSERT INTO archive_chain (seq, gateway, message_id, record_hash, chain_hash)
     SELECT $1 + t.n, t.gateway, t.message_id, t.record_hash, t.chain_hash
     FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[])
          WITH ORDINALITY AS t(gateway, message_id, record_hash, chain_hash, n)";
const CANDIDATES: &str = "SELECT id, origin_network, origin_channel, received_ms FROM messages
     WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3";
const NEEDED_BY_OUTBOX: &str = "SELECT EXISTS (SELECT 1 FROM outbox WHERE message_id = $1)
     OR EXISTS (SELECT 1 FROM messages m JOIN outbox o ON o.message_id = m.id
                WHERE m.target_message_id = $1)
     OR EXISTS (SELECT 1 FROM messages m JOIN outbox o ON o.message_id = m.id
                WHERE m.reply_to_message_id = $1)";
/// Does a queued delivery need message `m`: one of it, or of what edits, deletes, reacts or
/// replies to it (the expression of [`NEEDED_BY_OUTBOX`] for a row `m`).
macro_rules! needed {
    ($m:literal) => {
        concat!(
            "(EXISTS (SELECT 1 FROM outbox WHERE message_id = ",
            $m,
            ".id)
              OR EXISTS (SELECT 1 FROM messages d JOIN outbox o ON o.message_id = d.id
                         WHERE d.target_message_id = ",
            $m,
            ".id)
              OR EXISTS (SELECT 1 FROM messages d JOIN outbox o ON o.message_id = d.id
                         WHERE d.reply_to_message_id = ",
            $m,
            ".id))"
        )
    };
}
const INSPECT: &str = concat!(
    "SELECT m.id, m.body, ",
    needed!("m"),
    " FROM messages m WHERE m.id = ANY($1)"
);
const INSPECT_DEPENDENTS: &str = concat!(
    "SELECT m.target_message_id, m.id, m.body, ",
    needed!("m"),
    " FROM messages m WHERE m.target_message_id = ANY($1) ORDER BY m.id"
);
const BODY: &str = "SELECT body FROM messages WHERE id = $1";
const DEPENDENTS: &str = "SELECT id, body FROM messages WHERE target_message_id = $1";
const AUTHORED: &str = "SELECT id, origin_channel, body FROM messages
     WHERE id > $1 AND origin_network = $2 AND author_id = $3 ORDER BY id LIMIT $4";
const CHAIN_ROWS_OF: &str = "SELECT seq, chain_hash FROM archive_chain WHERE message_id = ANY($1)";
const SEAL: &str = "UPDATE archive_chain AS c SET tombstone = $3, tombstone_hash = t.seal
     FROM UNNEST($1::bigint[], $2::text[]) AS t(seq, seal) WHERE c.seq = t.seq";
const UNLINK_REPLIES: &str =
    "UPDATE messages SET reply_to_message_id = NULL WHERE reply_to_message_id = ANY($1)";
const DELETE_MAPPINGS: &str = "DELETE FROM mappings WHERE message_id = ANY($1)";
const DELETE_DELIVERIES: &str = "DELETE FROM deliveries WHERE message_id = ANY($1)";
const DELETE_MESSAGES: &str = "DELETE FROM messages WHERE id = ANY($1)";
const FORGET_PERSON: &str = "DELETE FROM people WHERE network = $1 AND user_id = $2";
const FILES_IN_USE: &str = "SELECT DISTINCT hash FROM message_files WHERE hash = ANY($1)";

const CHAIN_PAGE: &str = "SELECT c.seq, c.message_id, c.record_hash, c.chain_hash, c.tombstone,
     c.tombstone_hash, m.id, m.origin_network, m.origin_channel, m.origin_protocol,
     m.origin_remote_id, m.author_id, m.author_name, m.kind, m.body, m.created_ms,
     m.received_ms, m.target_message_id, m.reply_to_message_id, m.permalink
     FROM archive_chain c LEFT JOIN messages m ON m.id = c.message_id
     WHERE c.gateway = $1 AND c.seq > $2 ORDER BY c.seq LIMIT $3";
const RELAYED: &str = "SELECT network, channel, remote_id, role FROM mappings WHERE message_id = $1
     ORDER BY role DESC, network, channel";
/// The selection's filter, `$1`..`$5` (a channel compared without case, as `SQLite`'s
/// `COLLATE NOCASE` does for ASCII).
const PEOPLE: &str = "SELECT DISTINCT ON (m.origin_network, m.author_id)
     m.origin_network, m.author_id, m.author_name
     FROM archive_chain c JOIN messages m ON m.id = c.message_id
     WHERE c.gateway = $1 AND c.tombstone IS NULL
       AND ($2::text IS NULL OR (m.origin_network = $2 AND lower(m.origin_channel) = lower($3::text)))
       AND ($4::bigint IS NULL OR m.created_ms >= $4) AND ($5::bigint IS NULL OR m.created_ms < $5)
     ORDER BY m.origin_network, m.author_id, m.id DESC";
const POSTS: &str = "SELECT m.id, m.origin_network, m.origin_channel, m.origin_protocol,
     m.origin_remote_id, m.author_id, m.author_name, m.body, m.created_ms,
     m.reply_to_message_id, c.chain_hash
     FROM archive_chain c JOIN messages m ON m.id = c.message_id
     WHERE c.gateway = $1 AND c.tombstone IS NULL AND m.kind = 'text'
       AND ($2::text IS NULL OR (m.origin_network = $2 AND lower(m.origin_channel) = lower($3::text)))
       AND ($4::bigint IS NULL OR m.created_ms >= $4) AND ($5::bigint IS NULL OR m.created_ms < $5)
       AND (NOT $6 OR m.reply_to_message_id IS NOT NULL OR strpos(m.body, '\"thread_root\"') > 0)
     ORDER BY m.created_ms, m.id";
/// Rows fetched from the posts' portal at a time.
const POSTS_PAGE: i32 = 512;
const FOLLOWERS: &str = "SELECT body, origin_network, author_id, created_ms FROM messages
     WHERE target_message_id = $1 ORDER BY id";
const BRIEF: &str = "SELECT created_ms, body, origin_network, origin_channel, reply_to_message_id
     FROM messages WHERE id = $1";
const MAPPED: &str = "SELECT message_id FROM mappings WHERE network = $1 AND channel = $2
     AND remote_id = $3 LIMIT 1";
/// An export may write for a while between two pages: the session's idle-in-transaction limit
/// (set for failover's sake) does not apply to this read-only transaction.
const NO_IDLE_LIMIT: &str = "SET LOCAL idle_in_transaction_session_timeout = 0";

/// The history's rows on a PostgreSQL transaction.
struct PgHistory<'o, 's, C: GenericClient>(&'o mut On<'s, C>);

fn record_of(row: &postgres::Row, offset: usize) -> Result<Record, postgres::Error> {
    Ok(Record {
        message_id: row.try_get(offset)?,
        network: row.try_get(offset + 1)?,
        channel: row.try_get(offset + 2)?,
        protocol: row.try_get(offset + 3)?,
        remote_id: row.try_get(offset + 4)?,
        author_id: row.try_get(offset + 5)?,
        author_name: row.try_get(offset + 6)?,
        kind: row.try_get(offset + 7)?,
        body: row.try_get(offset + 8)?,
        created_ms: row.try_get(offset + 9)?,
        received_ms: row.try_get(offset + 10)?,
        target_message_id: row.try_get(offset + 11)?,
        reply_to_message_id: row.try_get(offset + 12)?,
        permalink: row.try_get(offset + 13)?,
    })
}

impl<C: GenericClient> HistoryWrite for PgHistory<'_, '_, C> {
    fn chained_upto(&mut self) -> Result<i64, StoreError> {
        let row = self
            .0
            .query_opt(CHAINED_UPTO, &[&crate::store::history::CHAIN_CURSOR])?;
        Ok(match row {
            Some(row) => row.try_get::<_, String>(0)?.parse().unwrap_or(0),
            None => 0,
        })
    }

    fn set_chained_upto(&mut self, id: i64) -> Result<(), StoreError> {
        self.0.execute(
            SET_CHAINED_UPTO,
            &[&crate::store::history::CHAIN_CURSOR, &id.to_string()],
        )?;
        Ok(())
    }

    fn records_after(&mut self, after: i64, limit: i64) -> Result<Vec<Record>, StoreError> {
        self.0
            .query(RECORDS_AFTER, &[&after, &limit])?
            .iter()
            .map(|row| record_of(row, 0).map_err(StoreError::from))
            .collect()
    }

    fn chain_head(&mut self, gateway: &str) -> Result<Option<String>, StoreError> {
        let gateway = nul_replaced(gateway);
        Ok(match self.0.query_opt(CHAIN_HEAD, &[&gateway.as_ref()])? {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }

    fn append_chain(&mut self, links: &[ChainLink]) -> Result<Vec<i64>, StoreError> {
        if links.is_empty() {
            return Ok(Vec::new());
        }
        let end: i64 = self.0.query_one(CHAIN_END, &[])?.try_get(0)?;
        let gateways: Vec<String> = links
            .iter()
            .map(|l| nul_replaced(&l.gateway).into_owned())
            .collect();
        let messages: Vec<i64> = links.iter().map(|l| l.message_id).collect();
        let records: Vec<&str> = links.iter().map(|l| l.record_hash.as_str()).collect();
        let chains: Vec<&str> = links.iter().map(|l| l.chain_hash.as_str()).collect();
        self.0.execute(
            APPEND_CHAIN,
            &[&end, &gateways, &messages, &records, &chains],
        )?;
        Ok((1..=links.len() as i64).map(|n| end + n).collect())
    }

    fn candidates(
        &mut self,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<Candidate>, StoreError> {
        self.0
            .query(CANDIDATES, &[&after, &upto, &limit])?
            .iter()
            .map(|row| {
                Ok(Candidate {
                    id: row.try_get(0)?,
                    network: row.try_get(1)?,
                    channel: row.try_get(2)?,
                    received_ms: row.try_get(3)?,
                })
            })
            .collect()
    }

    fn needed_by_outbox(&mut self, id: i64) -> Result<bool, StoreError> {
        Ok(self.0.query_one(NEEDED_BY_OUTBOX, &[&id])?.try_get(0)?)
    }

    fn body(&mut self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(match self.0.query_opt(BODY, &[&id])? {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }

    fn dependents(&mut self, id: i64) -> Result<Vec<(i64, String)>, StoreError> {
        self.0
            .query(DEPENDENTS, &[&id])?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    fn authored(
        &mut self,
        network: &str,
        user: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        let (network, user) = (nul_replaced(network), nul_replaced(user));
        self.0
            .query(
                AUTHORED,
                &[&after, &network.as_ref(), &user.as_ref(), &limit],
            )?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect()
    }

    fn forgets_in_bulk(&self) -> bool {
        true
    }

    fn inspect(&mut self, ids: &[i64]) -> Result<HashMap<i64, Inspected>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(found);
        }
        let ids = ids.to_vec();
        for row in self.0.query(INSPECT, &[&ids])? {
            found.insert(
                row.try_get::<_, i64>(0)?,
                Inspected {
                    body: Some(row.try_get(1)?),
                    needed: row.try_get(2)?,
                    ..Inspected::default()
                },
            );
        }
        for row in self.0.query(INSPECT_DEPENDENTS, &[&ids])? {
            let target: i64 = row.try_get(0)?;
            let facts = found.entry(target).or_default();
            facts.dependents.push((row.try_get(1)?, row.try_get(2)?));
            facts.dependents_needed |= row.try_get::<_, bool>(3)?;
        }
        Ok(found)
    }

    fn forget(&mut self, ids: &[i64], why: &str) -> Result<Removed, StoreError> {
        if ids.is_empty() {
            return Ok(Removed::default());
        }
        let ids = ids.to_vec();
        let rows = self.0.query(CHAIN_ROWS_OF, &[&ids])?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut seals = Vec::with_capacity(rows.len());
        for row in &rows {
            seqs.push(row.try_get::<_, i64>(0)?);
            seals.push(tombstone_seal(row.try_get(1)?, why));
        }
        if !seqs.is_empty() {
            self.0.execute(SEAL, &[&seqs, &seals, &why])?;
        }
        self.0.execute(UNLINK_REPLIES, &[&ids])?;
        self.0.execute(DELETE_MAPPINGS, &[&ids])?;
        let deliveries = self.0.execute(DELETE_DELIVERIES, &[&ids])?;
        self.0.execute(DELETE_MESSAGES, &[&ids])?;
        Ok(Removed {
            tombstones: seqs.len() as u64,
            deliveries,
        })
    }

    fn forget_person(&mut self, network: &str, user: &str) -> Result<(), StoreError> {
        let (network, user) = (nul_replaced(network), nul_replaced(user));
        self.0
            .execute(FORGET_PERSON, &[&network.as_ref(), &user.as_ref()])?;
        Ok(())
    }
}

/// The selection's filter as `$1`..`$5`.
struct Filter {
    gateway: String,
    network: Option<String>,
    channel: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
}

impl Filter {
    fn of(selection: &Selection) -> Self {
        let (network, channel) = match &selection.channel {
            Some((network, channel)) => (
                Some(nul_replaced(network).into_owned()),
                Some(nul_replaced(channel).into_owned()),
            ),
            None => (None, None),
        };
        Self {
            gateway: nul_replaced(&selection.gateway).into_owned(),
            network,
            channel,
            since_ms: selection.since_ms,
            until_ms: selection.until_ms,
        }
    }
}

impl HistoryRead for PgHistory<'_, '_, postgres::Transaction<'_>> {
    fn chain_page(
        &mut self,
        gateway: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ChainRow>, StoreError> {
        let gateway = nul_replaced(gateway);
        self.0
            .query(CHAIN_PAGE, &[&gateway.as_ref(), &after, &limit])?
            .iter()
            .map(|row| {
                let present: Option<i64> = row.try_get(6)?;
                Ok(ChainRow {
                    seq: row.try_get(0)?,
                    message_id: row.try_get(1)?,
                    record_hash: row.try_get(2)?,
                    chain_hash: row.try_get(3)?,
                    tombstone: row.try_get(4)?,
                    tombstone_hash: row.try_get(5)?,
                    record: present.map(|_| record_of(row, 6)).transpose()?,
                })
            })
            .collect()
    }

    fn relayed(&mut self, id: i64) -> Result<Vec<(String, String, String, String)>, StoreError> {
        self.0
            .query(RELAYED, &[&id])?
            .iter()
            .map(four_columns)
            .collect()
    }

    fn people(
        &mut self,
        selection: &Selection,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let f = Filter::of(selection);
        self.0
            .query(
                PEOPLE,
                &[&f.gateway, &f.network, &f.channel, &f.since_ms, &f.until_ms],
            )?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect()
    }

    fn each_post(
        &mut self,
        selection: &Selection,
        threaded: bool,
        each: &mut dyn FnMut(&mut dyn HistoryRead, PostRow) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let f = Filter::of(selection);
        let statement = super::statement(self.0.cache, self.0.client, POSTS)?;
        // A portal of the transaction: sorted once, fetched a page at a time, while other
        // statements run between the fetches.
        let portal = self.0.client.bind(
            &statement,
            &[
                &f.gateway,
                &f.network,
                &f.channel,
                &f.since_ms,
                &f.until_ms,
                &threaded,
            ],
        )?;
        loop {
            let rows = self.0.client.query_portal(&portal, POSTS_PAGE)?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in &rows {
                let post = PostRow {
                    message_id: row.try_get(0)?,
                    network: row.try_get(1)?,
                    channel: row.try_get(2)?,
                    protocol: row.try_get(3)?,
                    remote_id: row.try_get(4)?,
                    author_id: row.try_get(5)?,
                    author_name: row.try_get(6)?,
                    body: row.try_get(7)?,
                    created_ms: row.try_get(8)?,
                    reply_to_message_id: row.try_get(9)?,
                    chain_hash: row.try_get(10)?,
                };
                each(self, post)?;
            }
        }
    }

    fn followers(&mut self, id: i64) -> Result<Vec<Follower>, StoreError> {
        self.0
            .query(FOLLOWERS, &[&id])?
            .iter()
            .map(four_columns)
            .collect()
    }

    fn brief(&mut self, id: i64) -> Result<Option<Brief>, StoreError> {
        Ok(match self.0.query_opt(BRIEF, &[&id])? {
            Some(row) => Some((
                row.try_get(0)?,
                row.try_get(1)?,
                row.try_get(2)?,
                row.try_get(3)?,
                row.try_get(4)?,
            )),
            None => None,
        })
    }

    fn mapped(
        &mut self,
        network: &str,
        channel: &str,
        remote_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        let (network, channel, remote_id) = (
            nul_replaced(network),
            nul_replaced(channel),
            nul_replaced(remote_id),
        );
        Ok(
            match self.0.query_opt(
                MAPPED,
                &[&network.as_ref(), &channel.as_ref(), &remote_id.as_ref()],
            )? {
                Some(row) => Some(row.try_get(0)?),
                None => None,
            },
        )
    }
}

impl PostgresStore {
    /// Run `work` in one write transaction on the writer's session, fenced by the lease of
    /// the jobs that run once per deployment: it commits only while this instance holds it. `work` may run again on a
    /// new connection when the first was lost (see [`PostgresStore::with`]): it keeps no state
    /// of its own between runs.
    pub(in crate::store) fn write_history<R: Send>(
        &self,
        mut work: impl FnMut(&mut dyn HistoryWrite) -> Result<R, StoreError> + Send,
    ) -> Result<R, StoreError> {
        self.with(true, |client, cache| {
            let mut transaction = client.transaction()?;
            let mut on = On {
                client: &mut transaction,
                cache,
            };
            self.fence_singletons(&mut on)?;
            let result = work(&mut PgHistory(&mut on))?;
            transaction.commit()?;
            Ok(result)
        })
    }

    /// Run `work` on one `REPEATABLE READ` snapshot on the reader's session (an export). Not
    /// run again when the connection breaks: what `work` wrote is the caller's.
    pub(in crate::store) fn read_history<R, E: From<StoreError>>(
        &self,
        work: impl FnOnce(&mut dyn HistoryRead) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut session = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Session { client, statements } = &mut *session;
        if client.as_ref().is_none_or(postgres::Client::is_closed) {
            statements.clear();
            *client = Some(Session::connect(&self.target)?);
        }
        let Some(connected) = client.as_mut() else {
            unreachable!("connected just above")
        };
        let mut transaction = connected
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(|e| E::from(e.into()))?;
        transaction
            .batch_execute(NO_IDLE_LIMIT)
            .map_err(|e| E::from(e.into()))?;
        let mut on = On {
            client: &mut transaction,
            cache: statements,
        };
        let result = work(&mut PgHistory(&mut on))?;
        transaction.commit().map_err(|e| E::from(e.into()))?;
        Ok(result)
    }

    /// Which of `hashes` a message still in the store carries (one statement).
    pub(in crate::store) fn files_in_use(
        &self,
        hashes: &HashSet<String>,
    ) -> Result<HashSet<String>, StoreError> {
        let hashes: Vec<String> = hashes
            .iter()
            .map(|h| nul_replaced(h).into_owned())
            .collect();
        self.run(false, |on| {
            on.query(FILES_IN_USE, &[&hashes])?
                .iter()
                .map(|row| Ok(row.try_get::<_, String>(0)?))
                .collect()
        })
    }

    /// Messages in the store and the database's size in bytes (the load harness's figures).
    pub(in crate::store) fn footprint(&self) -> Result<(i64, u64), StoreError> {
        self.run(false, |on| {
            let row = on.query_one(
                "SELECT (SELECT COUNT(*) FROM messages), pg_database_size(current_database())",
                &[],
            )?;
            Ok((row.try_get(0)?, row.try_get::<_, i64>(1)?.unsigned_abs()))
        })
    }
}

/// A row of four columns as a tuple (the `relayed` and `followers` readers).
fn four_columns<A, B, C, D>(row: &postgres::Row) -> Result<(A, B, C, D), StoreError>
where
    A: for<'a> postgres::types::FromSql<'a>,
    B: for<'a> postgres::types::FromSql<'a>,
    C: for<'a> postgres::types::FromSql<'a>,
    D: for<'a> postgres::types::FromSql<'a>,
{
    Ok((
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    ))
}
