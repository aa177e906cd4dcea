//! The durable state: messages, mappings, the outbox, completed deliveries and cursors, in one
//! `SQLite` file (WAL) with numbered migrations embedded from `migrations/`, or in a PostgreSQL
//! database ([`postgres`], migrations from `migrations/postgres/`, the same numbers). Callers
//! see one [`Store`] ([`backend`]) whichever holds the state.
//!
//! Every method is synchronous and short; async callers run them with
//! [`tokio::task::spawn_blocking`] so that no network task blocks on the disk. The store decides
//! nothing about routing: it records what the router decided, atomically.

use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc as std_mpsc;

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::{
    Author, ChannelRef, Delivery, EventBody, Inbound, Membership, Replied, TargetRef, now_ms,
};
use crate::richtext::FormattedText;
pub use crate::vocab::PendingDelivery;

mod backend;
pub mod history;
mod postgres;

pub use backend::{Store, check_url};

/// Numbered migrations, applied in order; `PRAGMA user_version` records the last one applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_targets.sql"),
    include_str!("../migrations/0003_permalink.sql"),
    include_str!("../migrations/0004_parallel_routes.sql"),
    include_str!("../migrations/0005_unused_index.sql"),
    include_str!("../migrations/0006_integer_keys.sql"),
    include_str!("../migrations/0007_people.sql"),
    include_str!("../migrations/0008_history.sql"),
    include_str!("../migrations/0009_history_indexes.sql"),
    include_str!("../migrations/0010_leases.sql"),
    include_str!("../migrations/0011_instances.sql"),
];

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `SQLite` refused an operation.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The state folder could not be created.
    #[error("cannot create state folder {path}: {source}")]
    CreateDir {
        /// The folder.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A stored row could not be decoded (written by a newer version, or damaged).
    #[error("stored message {message_id} cannot be decoded: {reason}")]
    Corrupt {
        /// The message id.
        message_id: i64,
        /// What failed.
        reason: String,
    },
    /// The group transaction this write was part of failed (the error is the transaction's).
    #[error("group commit failed: {0}")]
    Group(String),
    /// PostgreSQL refused an operation, or the connection to it failed.
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The PostgreSQL store's URL cannot be used (the reason names the part, never the password).
    #[error("the store's URL: {0}")]
    Url(String),
    /// What the store's backend cannot do (an operation only the `SQLite` store has).
    #[error("{0} needs the SQLite store")]
    Unsupported(&'static str),
    /// A reader of the history stopped the read on an error of its own, which it keeps
    /// ([`history::HistoryRead::each_post`]).
    #[error("the history's read was stopped by its reader")]
    Stopped,
    /// What only the PostgreSQL store does (the lease of failover between instances).
    #[error("{0} needs the PostgreSQL store")]
    NeedsPostgres(&'static str),
    /// The database was written by a newer tribridge.
    #[error("the database has schema version {found}; this tribridge knows up to {known}")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// This instance does not hold the lease (standby, or another instance took it over): the
    /// transaction was rolled back and nothing in it was recorded.
    #[error("this instance does not hold the lease (fencing token {token}); nothing recorded")]
    Fenced {
        /// The token this instance held or last saw.
        token: i64,
    },
}

/// Whose id a mapping records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingRole {
    /// The network's id for the event where it was first said.
    Origin,
    /// The id a destination gave to one of our deliveries.
    Delivery,
}

/// What committing an inbound event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Stored, with one outbox row per destination.
    Committed {
        /// The canonical id.
        message_id: i64,
        /// Destinations that got an outbox row.
        destinations: Vec<ChannelRef>,
    },
    /// The event is one of our own deliveries coming back: dropped.
    Echo {
        /// The canonical id of the message we delivered.
        message_id: i64,
    },
    /// The same event (same network id) was already committed: dropped.
    Duplicate {
        /// The canonical id it has.
        message_id: i64,
    },
    /// An edit, delete or reaction of a message the bridge never saw: dropped.
    UnknownTarget,
}

/// One destination of an inbound event: the gateway through which it is reached and the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The gateway name.
    pub gateway: String,
    /// The destination channel.
    pub destination: ChannelRef,
}

/// The `SQLite` store: the default backend of [`Store`].
///
/// A file-backed store has three connections: the writer (every write), a reader (the outbox's
/// queue reads and the connectors' lookups, which WAL lets run while the writer commits), and a
/// checkpointer thread that copies the WAL back into the database in the background, so that no
/// commit ever waits for a checkpoint's `fsync`.
pub struct SqliteStore {
    connection: Mutex<Connection>,
    reader: Option<Mutex<Connection>>,
    /// Dropped with the store: the checkpointer thread sees the channel close and ends.
    _checkpointer: Option<std_mpsc::Sender<()>>,
    /// Added to the clock that stamps `received_ms` (see [`Store::set_clock_skew_ms`]).
    clock_skew_ms: std::sync::atomic::AtomicI64,
}

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// A WAL file larger than this is checkpointed even if the writer has to wait, and reused from
/// its start at this size (`journal_size_limit`): the disk space the WAL keeps.
const WAL_RESTART_BYTES: u64 = 32 << 20;

/// `SQLite`'s page size for a new database (the default is 4,096). A commit writes every page
/// it touched whole, and a chat message touches about ten pages in as many indexes: half-size
/// pages halve a message's share of the WAL (1 KiB pages cost more CPU in deeper trees). An
/// existing database keeps the page size it was created with.
const NEW_PAGE_SIZE: i64 = 2_048;

/// `SQLite`'s page cache of the writer, KiB (`SQLite`'s default): its indexes (mappings,
/// outbox) stay in memory a while longer. The cost is memory only as it is used.
const WRITER_CACHE_KIB: i64 = 2_000;

/// The page cache of the reader and the checkpointer, KiB (the checkpointer copies frames
/// without it).
const READER_CACHE_KIB: i64 = 512;

impl SqliteStore {
    /// Open (or create) `state_dir/tribridge.sqlite3` and apply pending migrations.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|source| StoreError::CreateDir {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join("tribridge.sqlite3");
        let mut connection = Connection::open(&path)?;
        // Only takes effect while the file is still empty (before WAL mode and the tables).
        connection.pragma_update(None, "page_size", NEW_PAGE_SIZE)?;
        configure(&connection)?;
        connection.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        // Checkpoints run on their own connection (below), never inside a commit. After a
        // burst, the WAL file is cut back to this size when it starts over.
        connection.pragma_update(None, "wal_autocheckpoint", 0)?;
        connection.pragma_update(None, "journal_size_limit", WAL_RESTART_BYTES as i64)?;
        migrate(&mut connection)?;
        writer_settings(&connection)?;
        let reader = Connection::open(&path)?;
        configure(&reader)?;
        reader.pragma_update(None, "query_only", true)?;
        let checkpointer = Connection::open(&path)?;
        configure(&checkpointer)?;
        let (stop, stopped) = std_mpsc::channel::<()>();
        let wal = state_dir.join("tribridge.sqlite3-wal");
        std::thread::Builder::new()
            .name("tribridge-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &wal, &stopped))
            .map_err(|source| StoreError::CreateDir {
                path: "checkpointer thread".into(),
                source,
            })?;
        Ok(Self {
            connection: Mutex::new(connection),
            reader: Some(Mutex::new(reader)),
            _checkpointer: Some(stop),
            clock_skew_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// A store in memory, for tests and benchmarks (one connection; nothing to checkpoint).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let mut connection = Connection::open_in_memory()?;
        configure(&connection)?;
        migrate(&mut connection)?;
        writer_settings(&connection)?;
        Ok(Self {
            connection: Mutex::new(connection),
            reader: None,
            _checkpointer: None,
            clock_skew_ms: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Move the clock that stamps a message's `received_ms` by `skew_ms`: the test-only seam
    /// of the history's retention ([`crate::archive::CLOCK_SKEW_ENV`]; the load harness
    /// simulates a month with it). Zero in production.
    pub fn set_clock_skew_ms(&self, skew_ms: i64) {
        self.clock_skew_ms
            .store(skew_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The time a message committed now is stamped as received.
    fn received_now(&self) -> i64 {
        now_ms()
            + self
                .clock_skew_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is still safe to use.
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run `work` in one write transaction (`BEGIN IMMEDIATE`) on the writer's connection,
    /// committed when it returns `Ok`. For the history's pruning ([`crate::archive`]), which
    /// keeps each call short so that the group commit never waits long for the lock.
    pub(crate) fn write_with<R>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut connection = self.lock();
        let transaction = write_transaction(&mut connection)?;
        let result = work(&transaction)?;
        transaction.commit()?;
        Ok(result)
    }

    /// Run `work` on the reader's connection (for the load harness and tools that read what
    /// the store has no method for).
    pub fn read_with_public<R>(&self, work: impl FnOnce(&Connection) -> R) -> R {
        work(&self.read())
    }

    /// Run `work` on the reader's connection (the writer's for a store in memory).
    pub(crate) fn read_with<R>(&self, work: impl FnOnce(&Connection) -> R) -> R {
        work(&self.read())
    }

    /// The connection for reads: the reader of a file-backed store, else the only one. It sees
    /// every transaction committed before the read began.
    fn read(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.as_ref().map_or_else(
            || self.lock(),
            |reader| {
                reader
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            },
        )
    }

    /// Record an inbound event and one outbox row per route, in one transaction; or recognise it
    /// as an echo of our own delivery or as a duplicate, and record nothing.
    pub fn commit_inbound(
        &self,
        inbound: &Inbound,
        origin_protocol: &'static str,
        routes: &[Route],
    ) -> Result<CommitOutcome, StoreError> {
        let mut staged = StagedInbound::new(inbound.clone(), origin_protocol, routes.to_vec())?;
        let mut connection = self.lock();
        let transaction = write_transaction(&mut connection)?;
        let recorded = record_inbound(
            &transaction,
            &mut Writes::prepare(&transaction)?,
            &staged,
            self.received_now(),
        )?;
        transaction.commit()?;
        Ok(settle(&mut staged, recorded, &mut Vec::new()))
    }

    /// Group commit: acknowledgements (as [`Store::complete_delivery`]) and inbound events
    /// (as [`Store::commit_inbound`]) in one transaction. The acknowledgements are recorded
    /// first (so an echo in the same group is recognised). Every `Ok` is durable when this
    /// returns; if the transaction cannot commit, everything gets the error.
    ///
    /// The group is first written plainly, which is the common case and the cheap one. If any
    /// statement fails, that transaction is rolled back and the group written again with the
    /// acknowledgements in one savepoint and each event in its own, so that one event's error
    /// leaves the others committed.
    pub fn commit_group(
        &self,
        acknowledged: &[Completion],
        events: &mut [StagedInbound],
    ) -> GroupOutcome {
        let mut connection = self.lock();
        let received_ms = self.received_now();
        match group_plain(&mut connection, acknowledged, events, received_ms) {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::debug!(error = %error, "A group commit failed; writing it again event by event.");
                group_with_savepoints(&mut connection, acknowledged, events, received_ms)
            }
        }
    }

    /// The oldest delivery still pending for a destination, whether or not it is due yet (the
    /// caller waits for `next_try_ms` so that order is kept), with its retry time and queue
    /// position.
    pub fn next_pending(
        &self,
        destination: &ChannelRef,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        Ok(self.pending_batch(destination, 0, 1)?.into_iter().next())
    }

    /// Up to `limit` pending deliveries for a destination queued after position `after_seq`
    /// (0 for the head), oldest first. An outbox worker with several deliveries in flight asks
    /// for the ones behind those it already sent. A row that cannot be decoded is set aside as
    /// `failed` and reported as [`StoreError::Corrupt`] (only when it is the first row).
    pub fn pending_batch(
        &self,
        destination: &ChannelRef,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        let connection = self.read();
        let mut statement = connection.prepare_cached(
            "SELECT o.delivery_id, o.message_id, o.gateway, o.attempts, o.next_try_ms,
                    m.origin_network, m.origin_channel, m.origin_protocol, m.author_id,
                    m.author_name, m.body, m.created_ms, m.target_message_id,
                    m.reply_to_message_id, m.permalink, o.seq
             FROM outbox o JOIN messages m ON m.id = o.message_id
             WHERE o.network = ?1 AND o.channel = ?2 AND o.state = 'pending' AND o.seq > ?3
             ORDER BY o.seq LIMIT ?4",
        )?;
        let rows = statement
            .query_map(
                params![
                    destination.network,
                    destination.channel,
                    after_seq,
                    limit as i64
                ],
                |row| {
                    Ok(PendingRow {
                        id: row.get(0)?,
                        message_id: row.get(1)?,
                        gateway: row.get(2)?,
                        attempts: row.get(3)?,
                        next_try_ms: row.get(4)?,
                        origin_network: row.get(5)?,
                        origin_channel: row.get(6)?,
                        origin_protocol: row.get(7)?,
                        author_id: row.get(8)?,
                        author_name: row.get(9)?,
                        body: row.get(10)?,
                        created_ms: row.get(11)?,
                        target_message_id: row.get(12)?,
                        reply_to_message_id: row.get(13)?,
                        permalink: row.get(14)?,
                        seq: row.get(15)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        drop(statement);
        let mut batch = Vec::with_capacity(rows.len());
        for row in rows {
            let body: EventBody = match serde_json::from_str(&row.body) {
                Ok(body) => body,
                Err(error) => {
                    if !batch.is_empty() {
                        // Reported when it reaches the head of the queue.
                        break;
                    }
                    // A row this build cannot read must not hold up the queue behind it
                    // forever: it is kept as `failed` (for an operator) and reported once.
                    let reason = format!("stored message cannot be decoded: {error}");
                    drop(connection);
                    self.lock().execute(
                        "UPDATE outbox SET state = 'failed', last_error = ?2 WHERE seq = ?1",
                        params![row.seq, reason],
                    )?;
                    return Err(StoreError::Corrupt {
                        message_id: row.message_id,
                        reason: error.to_string(),
                    });
                }
            };
            batch.push(complete_row(
                &mut SqliteReads(&connection),
                row,
                body,
                destination,
            )?);
        }
        Ok(batch)
    }

    /// The destination acknowledged the delivery at queue position `seq`: it leaves the outbox,
    /// and the id the destination gave it (if any) is mapped to the message, in one
    /// transaction. Idempotent.
    pub fn complete_delivery(&self, seq: i64, remote_id: Option<&str>) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let transaction = write_transaction(&mut connection)?;
        record_completion(
            &transaction,
            &mut Writes::prepare(&transaction)?,
            seq,
            remote_id,
        )?;
        transaction.commit()?;
        Ok(())
    }

    /// The delivery at queue position `seq` failed in a way worth retrying: try again at
    /// `next_try_ms`.
    pub fn defer_delivery(
        &self,
        seq: i64,
        next_try_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE outbox SET attempts = attempts + 1, next_try_ms = ?2, last_error = ?3
             WHERE seq = ?1",
            params![seq, next_try_ms, error],
        )?;
        Ok(())
    }

    /// The delivery at queue position `seq` can never succeed (the destination refused it for
    /// good): it stays in the outbox as `failed`, for an operator to inspect, and no longer
    /// blocks its queue.
    pub fn fail_delivery(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "UPDATE outbox SET attempts = attempts + 1, state = 'failed', last_error = ?2
             WHERE seq = ?1",
            params![seq, error],
        )?;
        Ok(())
    }

    /// What `SQLite`'s own checks find wrong with the file: every row that points at a message
    /// that does not exist (`PRAGMA foreign_key_check`), and any damage to its structure
    /// (`PRAGMA quick_check`). Empty when all is well. Reads the whole database: for tests and
    /// for an operator's check, not for the hot path.
    pub fn integrity_problems(&self) -> Result<Vec<String>, StoreError> {
        let connection = self.read();
        let mut problems = Vec::new();
        let mut statement = connection.prepare("PRAGMA foreign_key_check")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let table: String = row.get(0)?;
            let rowid: Option<i64> = row.get(1)?;
            let parent: String = row.get(2)?;
            problems.push(format!(
                "{table} row {} points at a missing {parent} row",
                rowid.map_or_else(|| "(no rowid)".to_owned(), |id| id.to_string())
            ));
        }
        drop(rows);
        drop(statement);
        let mut statement = connection.prepare("PRAGMA quick_check")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let line: String = row.get(0)?;
            if line != "ok" {
                problems.push(line);
            }
        }
        Ok(problems)
    }

    /// Destinations that have pending deliveries.
    pub fn pending_destinations(&self) -> Result<Vec<ChannelRef>, StoreError> {
        let connection = self.read();
        let mut statement = connection.prepare(
            "SELECT DISTINCT network, channel FROM outbox WHERE state = 'pending' ORDER BY 1, 2",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(ChannelRef::new(
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many deliveries the outbox holds, by destination network and state (`pending`,
    /// `failed`).
    pub fn outbox_depth(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let connection = self.read();
        let mut statement = connection
            .prepare("SELECT network, state, COUNT(*) FROM outbox GROUP BY network, state")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?.unsigned_abs(),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Number of pending deliveries for a destination.
    pub fn pending_count(&self, destination: &ChannelRef) -> Result<u64, StoreError> {
        let count: i64 = self.read().query_row(
            "SELECT COUNT(*) FROM outbox WHERE network = ?1 AND channel = ?2 AND state = 'pending'",
            params![destination.network, destination.channel],
            |row| row.get(0),
        )?;
        Ok(count as u64)
    }

    /// Number of acknowledged deliveries to a destination.
    pub fn delivered_count(&self, destination: &ChannelRef) -> Result<u64, StoreError> {
        let count: i64 = self.read().query_row(
            "SELECT COUNT(*) FROM deliveries WHERE network = ?1 AND channel = ?2",
            params![destination.network, destination.channel],
            |row| row.get(0),
        )?;
        Ok(count as u64)
    }

    /// The canonical id and role mapped to a network's id for an event, if any.
    pub fn lookup(
        &self,
        channel: &ChannelRef,
        remote_id: &str,
    ) -> Result<Option<(i64, MappingRole)>, StoreError> {
        lookup_mapping(&self.read(), channel, remote_id)
    }

    /// Every (channel, remote id, role) known for a message: where it came from and everywhere
    /// it was delivered. Edits, deletes and replies use this.
    pub fn mappings_of(
        &self,
        message_id: i64,
    ) -> Result<Vec<(ChannelRef, String, MappingRole)>, StoreError> {
        let connection = self.read();
        let mut statement = connection.prepare_cached(
            "SELECT network, channel, remote_id, role FROM mappings WHERE message_id = ?1
             ORDER BY role DESC, network, channel",
        )?;
        let rows = statement.query_map(params![message_id], |row| {
            Ok((
                ChannelRef::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                row.get::<_, String>(2)?,
                role_from_sql(&row.get::<_, String>(3)?),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Read a cursor (a sync token, a `since` timestamp, ...) of a network or one of its
    /// channels (`""` for the whole network).
    pub fn cursor(&self, network: &str, channel: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .read()
            .query_row(
                "SELECT value FROM cursors WHERE network = ?1 AND channel = ?2",
                params![network, channel],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Every cursor of `network` whose channel key starts with `prefix`, as (key, value), in
    /// key order (a connector's own records kept as cursors, e.g. accounts it created).
    pub fn cursors_with_prefix(
        &self,
        network: &str,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let connection = self.read();
        let mut statement = connection.prepare(
            "SELECT channel, value FROM cursors WHERE network = ?1 AND substr(channel, 1, ?3) = ?2
             ORDER BY channel",
        )?;
        let rows = statement.query_map(params![network, prefix, prefix.len() as i64], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The routes left to a parallel bridge ([`crate::parallel`]): (origin, destination,
    /// the other bridge's account).
    pub fn parallel_routes(&self) -> Result<Vec<(ChannelRef, ChannelRef, String)>, StoreError> {
        let connection = self.read();
        let mut statement = connection.prepare(
            "SELECT origin_network, origin_channel, destination_network, destination_channel,
                    account FROM parallel_routes",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                ChannelRef::new(row.get::<_, String>(0)?, row.get::<_, String>(1)?),
                ChannelRef::new(row.get::<_, String>(2)?, row.get::<_, String>(3)?),
                row.get::<_, String>(4)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Record that a route is left to the parallel bridge `account`, or (`None`) taken back.
    pub fn set_parallel_route(
        &self,
        origin: &ChannelRef,
        destination: &ChannelRef,
        account: Option<&str>,
    ) -> Result<(), StoreError> {
        let connection = self.lock();
        match account {
            Some(account) => connection.execute(
                "INSERT INTO parallel_routes (origin_network, origin_channel, destination_network,
                                              destination_channel, account, since_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT DO UPDATE SET account = excluded.account, since_ms = excluded.since_ms",
                params![
                    origin.network,
                    origin.channel,
                    destination.network,
                    destination.channel,
                    account,
                    crate::model::now_ms()
                ],
            )?,
            None => connection.execute(
                "DELETE FROM parallel_routes WHERE origin_network = ?1 AND origin_channel = ?2
                   AND destination_network = ?3 AND destination_channel = ?4",
                params![
                    origin.network,
                    origin.channel,
                    destination.network,
                    destination.channel
                ],
            )?,
        };
        Ok(())
    }

    /// Every person the bridge has seen, as [`crate::vocab::People::load`] reads them.
    pub fn people(&self) -> Result<Vec<crate::vocab::KnownPerson>, StoreError> {
        let connection = self.read();
        let mut statement =
            connection.prepare("SELECT network, user_id, display_name, renamed_to FROM people")?;
        let rows = statement.query_map([], |row| {
            Ok(crate::vocab::KnownPerson {
                network: row.get(0)?,
                user_id: row.get(1)?,
                display_name: row.get(2)?,
                renamed_to: row.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Record that the nick `old` of `network` is now `new` in the people directory (as the
    /// commit of a relayed nick change does; idempotent).
    pub fn record_rename(&self, network: &str, old: &str, new: &str) -> Result<(), StoreError> {
        let mut connection = self.lock();
        let transaction = write_transaction(&mut connection)?;
        {
            let mut writes = Writes::prepare(&transaction)?;
            writes.upsert_person.execute(params![network, new, new])?;
            if old != new {
                writes.rename_person.execute(params![network, old, new])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Write a cursor.
    pub fn set_cursor(&self, network: &str, channel: &str, value: &str) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO cursors (network, channel, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (network, channel) DO UPDATE SET value = excluded.value",
            params![network, channel, value],
        )?;
        Ok(())
    }

    /// The outbox by destination and state, with the oldest message's arrival time.
    pub fn outbox_by_destination(&self) -> Result<Vec<OutboxCount>, StoreError> {
        let connection = self.read();
        let mut statement = connection.prepare_cached(OUTBOX_BY_DESTINATION)?;
        let rows = statement.query_map([], |row| {
            Ok(OutboxCount {
                network: row.get(0)?,
                channel: row.get(1)?,
                state: row.get(2)?,
                count: row.get(3)?,
                oldest_received_ms: row.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Every failed delivery with its message, in queue order.
    pub fn failed_deliveries(&self) -> Result<Vec<FailedRow>, StoreError> {
        let connection = self.read();
        let mut statement = connection.prepare_cached(FAILED_DELIVERIES)?;
        let rows = statement.query_map([], |row| {
            Ok(FailedRow {
                seq: row.get(0)?,
                delivery_id: row.get(1)?,
                network: row.get(2)?,
                channel: row.get(3)?,
                gateway: row.get(4)?,
                attempts: row.get(5)?,
                last_error: row.get(6)?,
                origin_network: row.get(7)?,
                origin_channel: row.get(8)?,
                author_name: row.get(9)?,
                body: row.get(10)?,
                received_ms: row.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The failed delivery at queue position `seq` queued again, at the end of its
    /// destination's queue, as pending with its delivery id, in one transaction: its
    /// destination and new position; `None` if no failed delivery is at `seq`.
    pub fn requeue_failed(&self, seq: i64) -> Result<Option<(ChannelRef, i64)>, StoreError> {
        self.write_with(|transaction| {
            let row: Option<(String, String)> = transaction
                .query_row(
                    "SELECT network, channel FROM outbox WHERE seq = ?1 AND state = 'failed'",
                    params![seq],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let Some((network, channel)) = row else {
                return Ok(None);
            };
            transaction.execute(
                "INSERT INTO outbox (delivery_id, message_id, network, channel, gateway,
                                     attempts, next_try_ms, state, last_error)
                 SELECT delivery_id, message_id, network, channel, gateway, 0, 0, 'pending',
                        last_error
                 FROM outbox WHERE seq = ?1",
                params![seq],
            )?;
            let new_seq = transaction.last_insert_rowid();
            transaction.execute("DELETE FROM outbox WHERE seq = ?1", params![seq])?;
            Ok(Some((ChannelRef::new(network, channel), new_seq)))
        })
    }

    /// The failed delivery at queue position `seq` removed: whether there was one.
    pub fn drop_failed(&self, seq: i64) -> Result<bool, StoreError> {
        let removed = self.lock().execute(
            "DELETE FROM outbox WHERE seq = ?1 AND state = 'failed'",
            params![seq],
        )?;
        Ok(removed > 0)
    }
}

/// The outbox by destination and state (both backends' SQL).
const OUTBOX_BY_DESTINATION: &str =
    "SELECT o.network, o.channel, o.state, COUNT(*), MIN(m.received_ms)
     FROM outbox o JOIN messages m ON m.id = o.message_id
     GROUP BY o.network, o.channel, o.state";
/// Every failed delivery with its message (both backends' SQL).
const FAILED_DELIVERIES: &str =
    "SELECT o.seq, o.delivery_id, o.network, o.channel, o.gateway, o.attempts, o.last_error,
            m.origin_network, m.origin_channel, m.author_name, m.body, m.received_ms
     FROM outbox o JOIN messages m ON m.id = o.message_id
     WHERE o.state = 'failed' ORDER BY o.seq";

/// How many deliveries of one state the outbox holds for one destination
/// ([`Store::outbox_by_destination`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxCount {
    /// Destination network.
    pub network: String,
    /// Destination channel.
    pub channel: String,
    /// `pending` or `failed`.
    pub state: String,
    /// How many.
    pub count: i64,
    /// When the oldest of their messages came in (ms since the epoch).
    pub oldest_received_ms: Option<i64>,
}

/// A failed delivery with its message ([`Store::failed_deliveries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow {
    /// Its queue position.
    pub seq: i64,
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
    /// What the destination answered last.
    pub last_error: Option<String>,
    /// Where the message came from: network.
    pub origin_network: String,
    /// Where the message came from: channel.
    pub origin_channel: String,
    /// Who said it.
    pub author_name: String,
    /// The stored body (JSON).
    pub body: String,
    /// When it came in (ms since the epoch).
    pub received_ms: i64,
}

/// One outbox row joined with its message, before decoding.
struct PendingRow {
    id: String,
    message_id: i64,
    gateway: String,
    attempts: i64,
    next_try_ms: i64,
    origin_network: String,
    origin_channel: String,
    origin_protocol: String,
    author_id: String,
    author_name: String,
    body: String,
    created_ms: i64,
    target_message_id: Option<i64>,
    reply_to_message_id: Option<i64>,
    permalink: Option<String>,
    seq: i64,
}

/// The reads that complete a pending outbox row into the delivery its worker sends, each
/// backend's own queries.
trait DeliveryReads {
    /// The destination's own id for a message ([`resolve_target`]).
    fn resolve_target(
        &mut self,
        message_id: i64,
        destination: &ChannelRef,
    ) -> Result<TargetRef, StoreError>;
    /// The canonical id and role mapped to a network's id ([`lookup_mapping`]).
    fn lookup_mapping(
        &mut self,
        channel: &ChannelRef,
        remote_id: &str,
    ) -> Result<Option<(i64, MappingRole)>, StoreError>;
    /// Who said message `id`, where, and its text ([`replied_message`]).
    fn replied_message(&mut self, id: i64) -> Result<Option<Replied>, StoreError>;
    /// The text an edit replaces ([`previous_text`]).
    fn previous_text(
        &mut self,
        target_id: i64,
        edit_id: i64,
    ) -> Result<Option<FormattedText>, StoreError>;
}

/// The `SQLite` reads of [`DeliveryReads`], on one connection.
struct SqliteReads<'c>(&'c Connection);

impl DeliveryReads for SqliteReads<'_> {
    fn resolve_target(
        &mut self,
        message_id: i64,
        destination: &ChannelRef,
    ) -> Result<TargetRef, StoreError> {
        resolve_target(self.0, message_id, destination)
    }
    fn lookup_mapping(
        &mut self,
        channel: &ChannelRef,
        remote_id: &str,
    ) -> Result<Option<(i64, MappingRole)>, StoreError> {
        lookup_mapping(self.0, channel, remote_id)
    }
    fn replied_message(&mut self, id: i64) -> Result<Option<Replied>, StoreError> {
        replied_message(self.0, id)
    }
    fn previous_text(
        &mut self,
        target_id: i64,
        edit_id: i64,
    ) -> Result<Option<FormattedText>, StoreError> {
        previous_text(self.0, target_id, edit_id)
    }
}

/// A pending outbox row (its body decoded) completed into the delivery its worker sends:
/// the destination's ids of what it points at, what it replies to, what an edit replaces.
fn complete_row(
    reads: &mut impl DeliveryReads,
    row: PendingRow,
    body: EventBody,
    destination: &ChannelRef,
) -> Result<PendingDelivery, StoreError> {
    let target = row
        .target_message_id
        .map(|id| reads.resolve_target(id, destination))
        .transpose()?;
    let reply_to = row
        .reply_to_message_id
        .map(|id| reads.resolve_target(id, destination))
        .transpose()?;
    let origin = ChannelRef::new(row.origin_network, row.origin_channel);
    // The thread root is resolved here, from the origin's id for it, rather than stored
    // as a column: a message's thread is as durable as its body.
    let thread_root = match body.thread_root() {
        Some(root) => reads
            .lookup_mapping(&origin, root)?
            .map(|(root_id, _)| reads.resolve_target(root_id, destination))
            .transpose()?,
        None => None,
    };
    // What a reply (or a message in a thread) answers, for destinations that show it as
    // text: the replied message, else the thread's root.
    let replied_id = row
        .reply_to_message_id
        .or_else(|| thread_root.as_ref().map(|root| root.message_id));
    let replied = match replied_id {
        Some(id) => reads.replied_message(id)?,
        None => None,
    };
    let previous_text = match (&body, row.target_message_id) {
        (EventBody::Edit { .. }, Some(target_id)) => {
            reads.previous_text(target_id, row.message_id)?
        }
        _ => None,
    };
    Ok(PendingDelivery {
        delivery: Delivery {
            id: row.id,
            message_id: row.message_id,
            destination: destination.clone(),
            gateway: row.gateway,
            origin,
            origin_protocol: row.origin_protocol,
            author: Author {
                id: row.author_id,
                display_name: row.author_name,
            },
            timestamp_ms: row.created_ms,
            body,
            target,
            reply_to,
            thread_root,
            previous_text,
            replied,
            permalink: row.permalink,
            attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
        },
        next_try_ms: row.next_try_ms,
        seq: row.seq,
    })
}

/// A delivery its destination acknowledged, with what the outbox row says about it (the
/// worker has it from the row it read), so that recording it needs no read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Its queue position (the outbox row).
    pub seq: i64,
    /// The delivery id.
    pub delivery_id: String,
    /// The canonical message id.
    pub message_id: i64,
    /// Where it was delivered.
    pub destination: ChannelRef,
    /// Attempts before this one.
    pub attempts: u32,
    /// The id the destination gave it, if any.
    pub remote_id: Option<String>,
}

impl Completion {
    /// The completion of `delivery`, queued at position `seq`, acknowledged with `remote_id`.
    #[must_use]
    pub fn of(delivery: &Delivery, seq: i64, remote_id: Option<String>) -> Self {
        Self {
            seq,
            delivery_id: delivery.id.clone(),
            message_id: delivery.message_id,
            destination: delivery.destination.clone(),
            attempts: delivery.attempts,
            remote_id,
        }
    }
}

/// The body of [`Store::complete_delivery`], inside the caller's transaction.
fn record_completion(
    connection: &Connection,
    writes: &mut Writes<'_>,
    seq: i64,
    remote_id: Option<&str>,
) -> Result<(), StoreError> {
    let row: Option<(String, i64, String, String, i64)> = connection
        .prepare_cached(
            "SELECT delivery_id, message_id, network, channel, attempts FROM outbox
             WHERE seq = ?1",
        )?
        .query_row(params![seq], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()?;
    let Some((delivery_id, message_id, network, channel, attempts)) = row else {
        return Ok(());
    };
    record_known_completion(
        writes,
        &Completion {
            seq,
            delivery_id,
            message_id,
            destination: ChannelRef::new(network, channel),
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            remote_id: remote_id.map(str::to_owned),
        },
    )
}

/// Record a completion: a `deliveries` row, the mapping of the destination's id, and the outbox
/// row gone. Idempotent: a second call changes nothing.
fn record_known_completion(
    writes: &mut Writes<'_>,
    completion: &Completion,
) -> Result<(), StoreError> {
    let Completion {
        seq,
        delivery_id,
        message_id,
        destination,
        attempts,
        remote_id,
    } = completion;
    let removed = writes.delete_outbox.execute(params![seq])?;
    if removed == 0 {
        // Already recorded (or never queued): nothing to add.
        return Ok(());
    }
    writes.insert_delivered.execute(params![
        delivery_id,
        message_id,
        destination.network,
        destination.channel,
        remote_id,
        i64::from(*attempts) + 1,
        now_ms()
    ])?;
    if let Some(remote_id) = remote_id {
        writes.insert_delivery_mapping.execute(params![
            destination.network,
            destination.channel,
            remote_id,
            message_id,
            delivery_id
        ])?;
    }
    Ok(())
}

/// What one tick of the per-network leases found ([`Store::lease_tick`]).
#[derive(Debug, Clone, Default)]
pub struct LeaseTick {
    /// The scopes whose lease this instance renewed (those it held and still holds).
    pub renewed: Vec<String>,
    /// How many instances stamped their heartbeat within the lease's time (at least 1).
    pub live_instances: usize,
    /// Every lease's scope and holder (`None`: nobody, or expired).
    pub holders: Vec<(String, Option<String>)>,
}

/// What [`Store::commit_group`] did.
#[derive(Debug)]
pub struct GroupOutcome {
    /// Whether the acknowledgements were recorded.
    pub acks: Result<(), StoreError>,
    /// One outcome per event, in order.
    pub events: Vec<Result<CommitOutcome, StoreError>>,
    /// The outbox rows the committed events created, in queue order.
    pub queued: Vec<Queued>,
    /// Networks whose items were refused because this instance no longer holds their lease
    /// (the per-network failover mode): their acknowledgements were not recorded, whatever
    /// [`GroupOutcome::acks`] says of the others.
    pub refused: Vec<String>,
}

impl GroupOutcome {
    fn all_failed(error: &rusqlite::Error, events: usize) -> Self {
        Self {
            acks: Err(error_copy(error)),
            events: (0..events).map(|_| Err(error_copy(error))).collect(),
            queued: Vec::new(),
            refused: Vec::new(),
        }
    }
}

/// [`Store::commit_group`]'s first try: every write in one transaction; any error undoes all.
fn group_plain(
    connection: &mut Connection,
    acknowledged: &[Completion],
    events: &mut [StagedInbound],
    received_ms: i64,
) -> Result<GroupOutcome, StoreError> {
    let transaction = write_transaction(connection)?;
    let mut recorded = Vec::with_capacity(events.len());
    {
        let mut writes = Writes::prepare(&transaction)?;
        for completion in acknowledged {
            record_known_completion(&mut writes, completion)?;
        }
        for event in events.iter() {
            recorded.push(record_inbound(
                &transaction,
                &mut writes,
                event,
                received_ms,
            )?);
        }
    }
    transaction.commit()?;
    let mut queued = Vec::new();
    let outcomes = events
        .iter_mut()
        .zip(recorded)
        .map(|(event, recorded)| Ok(settle(event, recorded, &mut queued)))
        .collect();
    Ok(GroupOutcome {
        acks: Ok(()),
        events: outcomes,
        queued,
        refused: Vec::new(),
    })
}

/// [`Store::commit_group`] after a failure: one savepoint for the acknowledgements and one per
/// event, so that each failure stays its own.
fn group_with_savepoints(
    connection: &mut Connection,
    acknowledged: &[Completion],
    events: &mut [StagedInbound],
    received_ms: i64,
) -> GroupOutcome {
    let mut transaction = match write_transaction(connection) {
        Ok(transaction) => transaction,
        Err(error) => return GroupOutcome::all_failed(&error, events.len()),
    };
    let acks = if acknowledged.is_empty() {
        Ok(())
    } else {
        transaction
            .savepoint()
            .map_err(StoreError::from)
            .and_then(|savepoint| {
                {
                    let mut writes = Writes::prepare(&savepoint)?;
                    for completion in acknowledged {
                        record_known_completion(&mut writes, completion)?;
                    }
                }
                savepoint.commit()?;
                Ok(())
            })
    };
    let recorded: Vec<Result<Recorded, StoreError>> = events
        .iter()
        .map(|event| {
            transaction
                .savepoint()
                .map_err(StoreError::from)
                .and_then(|savepoint| {
                    let recorded = record_inbound(
                        &savepoint,
                        &mut Writes::prepare(&savepoint)?,
                        event,
                        received_ms,
                    )?;
                    savepoint.commit()?;
                    Ok(recorded)
                })
        })
        .collect();
    if let Err(error) = transaction.commit() {
        return GroupOutcome::all_failed(&error, events.len());
    }
    let mut queued = Vec::new();
    let outcomes = events
        .iter_mut()
        .zip(recorded)
        .map(|(event, recorded)| recorded.map(|recorded| settle(event, recorded, &mut queued)))
        .collect();
    GroupOutcome {
        acks,
        events: outcomes,
        queued,
        refused: Vec::new(),
    }
}

/// A delivery just committed to the outbox, to be announced to its destination's worker.
// Moved once, from the writer to the worker: boxing the delivery would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Queued {
    /// The delivery as the worker would read it from the store (nothing in it is resolved at
    /// send time), so that it need not read it back.
    Announced(PendingDelivery),
    /// An edit, delete, reaction, reply or thread message for this destination: the worker
    /// reads it from the store when its turn comes.
    Stored(ChannelRef),
}

/// An inbound event made ready for [`Store::commit_group`]. What its commit needs that no
/// database does (the body as JSON, each delivery's id and, for a delivery complete without the
/// store, the delivery itself) is computed when it is staged, on the caller's thread, so that
/// the one writer thread, which bounds the bridge's throughput, only writes and moves.
#[derive(Debug)]
pub struct StagedInbound {
    inbound: Inbound,
    protocol: &'static str,
    routes: Vec<Route>,
    body: String,
    deliveries: Vec<StagedDelivery>,
}

/// One route's delivery of a [`StagedInbound`].
#[derive(Debug)]
struct StagedDelivery {
    /// Its id, the idempotency key the destination sees (UUID v7).
    id: String,
    /// The delivery as its worker gets it (message id filled in at commit), when nothing in it
    /// is resolved at send time; `None` otherwise, and once it was handed over.
    announced: Option<Delivery>,
}

impl StagedInbound {
    /// Stage an event from a network whose protocol is `protocol`, with its routes.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if the body cannot be written as JSON.
    pub fn new(
        inbound: Inbound,
        protocol: &'static str,
        routes: Vec<Route>,
    ) -> Result<Self, StoreError> {
        let body = serde_json::to_string(&inbound.body).map_err(|error| StoreError::Corrupt {
            message_id: 0,
            reason: error.to_string(),
        })?;
        // Only a delivery that points at no other message is complete without the store.
        let self_contained = inbound.body.target().is_none()
            && inbound.body.reply_to().is_none()
            && inbound.body.thread_root().is_none();
        let deliveries = routes
            .iter()
            .map(|route| {
                let id = uuid::Uuid::now_v7().simple().to_string();
                let announced = self_contained.then(|| Delivery {
                    id: id.clone(),
                    message_id: 0,
                    destination: route.destination.clone(),
                    gateway: route.gateway.clone(),
                    origin: inbound.origin.clone(),
                    origin_protocol: protocol.to_owned(),
                    author: inbound.author.clone(),
                    timestamp_ms: inbound.timestamp_ms,
                    body: inbound.body.clone(),
                    target: None,
                    reply_to: None,
                    thread_root: None,
                    previous_text: None,
                    replied: None,
                    permalink: inbound.permalink.clone(),
                    attempts: 0,
                });
                StagedDelivery { id, announced }
            })
            .collect();
        Ok(Self {
            inbound,
            protocol,
            routes,
            body,
            deliveries,
        })
    }
}

/// A copy of an error for each event of a failed batch (`rusqlite::Error` is not `Clone`).
fn error_copy(error: &rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::SqliteFailure(code, message) => {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(*code, message.clone()))
        }
        other => StoreError::Group(other.to_string()),
    }
}

/// The writer's statements, prepared once per transaction (a group of events and
/// acknowledgements) instead of being looked up in the connection's statement cache for every
/// row: that lookup (hashing the statement's text, and putting it back afterwards) cost the
/// writer about a tenth of its instructions under load.
struct Writes<'c> {
    lookup: rusqlite::CachedStatement<'c>,
    insert_message: rusqlite::CachedStatement<'c>,
    insert_origin: rusqlite::CachedStatement<'c>,
    insert_outbox: rusqlite::CachedStatement<'c>,
    delete_outbox: rusqlite::CachedStatement<'c>,
    insert_delivered: rusqlite::CachedStatement<'c>,
    insert_delivery_mapping: rusqlite::CachedStatement<'c>,
    upsert_person: rusqlite::CachedStatement<'c>,
    rename_person: rusqlite::CachedStatement<'c>,
}

impl<'c> Writes<'c> {
    fn prepare(connection: &'c Connection) -> Result<Self, rusqlite::Error> {
        Ok(Self {
            lookup: connection.prepare_cached(LOOKUP_MAPPING)?,
            insert_message: connection.prepare_cached(
                "INSERT INTO messages (origin_network, origin_channel, origin_protocol,
                 origin_remote_id, author_id, author_name, kind, body, created_ms, received_ms,
                 target_message_id, reply_to_message_id, permalink)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )?,
            insert_origin: connection.prepare_cached(
                "INSERT INTO mappings (network, channel, remote_id, message_id, role)
                 VALUES (?1, ?2, ?3, ?4, 'origin')",
            )?,
            insert_outbox: connection.prepare_cached(
                "INSERT INTO outbox (delivery_id, message_id, network, channel, gateway)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?,
            delete_outbox: connection.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?,
            insert_delivered: connection.prepare_cached(
                "INSERT INTO deliveries
                     (delivery_id, message_id, network, channel, remote_id, attempts, done_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            insert_delivery_mapping: connection.prepare_cached(
                "INSERT OR IGNORE INTO mappings (network, channel, remote_id, message_id, role,
                     delivery_id)
                 VALUES (?1, ?2, ?3, ?4, 'delivery', ?5)",
            )?,
            // A lookup only, no write, while the name stays the same (nearly every message).
            upsert_person: connection.prepare_cached(
                "INSERT INTO people (network, user_id, display_name) VALUES (?1, ?2, ?3)
                 ON CONFLICT (network, user_id) DO UPDATE
                 SET display_name = excluded.display_name, renamed_to = NULL
                 WHERE display_name IS NOT excluded.display_name OR renamed_to IS NOT NULL",
            )?,
            rename_person: connection.prepare_cached(
                "INSERT INTO people (network, user_id, display_name, renamed_to)
                 VALUES (?1, ?2, ?2, ?3)
                 ON CONFLICT (network, user_id) DO UPDATE SET renamed_to = excluded.renamed_to",
            )?,
        })
    }
}

/// What [`record_inbound`] wrote, before its transaction commits.
enum Recorded {
    /// A new message, with one outbox row per route: their queue positions, in route order.
    Message { message_id: i64, seqs: Vec<i64> },
    /// Nothing (an echo, a duplicate, an unknown target): the outcome as it stands.
    Nothing(CommitOutcome),
}

/// The body of [`Store::commit_inbound`], inside the caller's transaction or savepoint. Only
/// writes: what it needs besides the database was staged ([`StagedInbound::new`]).
fn record_inbound(
    connection: &Connection,
    writes: &mut Writes<'_>,
    staged: &StagedInbound,
    received_ms: i64,
) -> Result<Recorded, StoreError> {
    let inbound = &staged.inbound;
    if let Some(remote_id) = &inbound.remote_id
        && let Some((message_id, role)) =
            lookup_with(&mut writes.lookup, &inbound.origin, remote_id)?
    {
        return Ok(Recorded::Nothing(match role {
            MappingRole::Delivery => CommitOutcome::Echo { message_id },
            MappingRole::Origin => CommitOutcome::Duplicate { message_id },
        }));
    }
    let target_message_id = match inbound.body.target() {
        Some(target) => match lookup_with(&mut writes.lookup, &inbound.origin, target)? {
            Some((message_id, _)) => Some(message_id),
            None => return Ok(Recorded::Nothing(CommitOutcome::UnknownTarget)),
        },
        None => None,
    };
    let reply_to_message_id = match inbound.body.reply_to() {
        Some(reply_to) => {
            lookup_with(&mut writes.lookup, &inbound.origin, reply_to)?.map(|(id, _)| id)
        }
        None => None,
    };
    writes.insert_message.execute(params![
        inbound.origin.network,
        inbound.origin.channel,
        staged.protocol,
        inbound.remote_id,
        inbound.author.id,
        inbound.author.display_name,
        inbound.body.kind_name(),
        staged.body,
        inbound.timestamp_ms,
        received_ms,
        target_message_id,
        reply_to_message_id,
        inbound.permalink,
    ])?;
    let message_id = connection.last_insert_rowid();
    record_person(writes, inbound)?;
    if let Some(remote_id) = &inbound.remote_id {
        writes.insert_origin.execute(params![
            inbound.origin.network,
            inbound.origin.channel,
            remote_id,
            message_id
        ])?;
    }
    let mut seqs = Vec::with_capacity(staged.routes.len());
    for (route, delivery) in staged.routes.iter().zip(&staged.deliveries) {
        writes.insert_outbox.execute(params![
            delivery.id,
            message_id,
            route.destination.network,
            route.destination.channel,
            route.gateway,
        ])?;
        seqs.push(connection.last_insert_rowid());
    }
    Ok(Recorded::Message { message_id, seqs })
}

/// The people directory's row of the event's author (see `migrations/0007_people.sql`): their
/// name, or for a nick change the old nick pointing at the new one.
fn record_person(writes: &mut Writes<'_>, inbound: &Inbound) -> Result<(), StoreError> {
    let network = &inbound.origin.network;
    let author = &inbound.author;
    if let EventBody::Membership(Membership::Renamed { new_name }) = &inbound.body {
        writes
            .upsert_person
            .execute(params![network, new_name, new_name])?;
        if author.id != *new_name {
            writes
                .rename_person
                .execute(params![network, author.id, new_name])?;
        }
    } else {
        writes
            .upsert_person
            .execute(params![network, author.id, author.display_name])?;
    }
    Ok(())
}

/// After the transaction holding `recorded` committed: the event's outcome, with its outbox
/// rows queued for announcement (the staged deliveries and the routes are moved out of it).
fn settle(
    staged: &mut StagedInbound,
    recorded: Recorded,
    queued: &mut Vec<Queued>,
) -> CommitOutcome {
    let (message_id, seqs) = match recorded {
        Recorded::Nothing(outcome) => return outcome,
        Recorded::Message { message_id, seqs } => (message_id, seqs),
    };
    for ((route, staged_delivery), seq) in
        staged.routes.iter().zip(&mut staged.deliveries).zip(seqs)
    {
        queued.push(match staged_delivery.announced.take() {
            Some(mut delivery) => {
                delivery.message_id = message_id;
                Queued::Announced(PendingDelivery {
                    delivery,
                    next_try_ms: 0,
                    seq,
                })
            }
            None => Queued::Stored(route.destination.clone()),
        });
    }
    CommitOutcome::Committed {
        message_id,
        destinations: std::mem::take(&mut staged.routes)
            .into_iter()
            .map(|route| route.destination)
            .collect(),
    }
}

/// The destination's own id for a message: the id of our delivery there, or its origin id when
/// it was said there.
fn resolve_target(
    connection: &Connection,
    message_id: i64,
    destination: &ChannelRef,
) -> Result<TargetRef, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT remote_id FROM mappings
         WHERE message_id = ?1 AND network = ?2 AND channel = ?3
         ORDER BY role = 'delivery' DESC LIMIT 1",
    )?;
    let remote_id = statement
        .query_row(
            params![message_id, destination.network, destination.channel],
            |row| row.get::<_, String>(0),
        )
        .optional()?;
    Ok(TargetRef {
        message_id,
        remote_id,
    })
}

/// Who said message `id`, where, and its text (`None` for a message that is not a text).
fn replied_message(connection: &Connection, id: i64) -> Result<Option<Replied>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT origin_network, author_id, author_name, body, origin_remote_id FROM messages
         WHERE id = ?1",
    )?;
    let row = statement
        .query_row(params![id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, Option<String>>(4)?,
            ))
        })
        .optional()?;
    Ok(
        row.and_then(|(network, author_id, author_name, body, remote_id)| {
            replied_of(id, network, author_id, author_name, &body, remote_id)
        }),
    )
}

/// A replied message from its row (its body as stored); `None` when it is not a text.
fn replied_of(
    id: i64,
    network: String,
    author_id: String,
    author_name: String,
    body: &str,
    remote_id: Option<String>,
) -> Option<Replied> {
    match serde_json::from_str::<EventBody>(body).ok()? {
        EventBody::Text { text, .. } => Some(Replied {
            message_id: id,
            network,
            remote_id,
            author: Author {
                id: author_id,
                display_name: author_name,
            },
            text,
        }),
        _ => None,
    }
}

/// The text an edit replaces: the latest earlier edit of `target_id` before `edit_id`, else the
/// original message's. `None` when it cannot be read.
fn previous_text(
    connection: &Connection,
    target_id: i64,
    edit_id: i64,
) -> Result<Option<FormattedText>, StoreError> {
    let mut statement = connection.prepare_cached(
        "SELECT body FROM messages
         WHERE target_message_id = ?1 AND kind = 'edit' AND id < ?2
         ORDER BY id DESC LIMIT 1",
    )?;
    let mut body: Option<String> = statement
        .query_row(params![target_id, edit_id], |row| row.get(0))
        .optional()?;
    if body.is_none() {
        let mut statement = connection.prepare_cached("SELECT body FROM messages WHERE id = ?1")?;
        body = statement
            .query_row(params![target_id], |row| row.get(0))
            .optional()?;
    }
    Ok(body.as_deref().and_then(text_of))
}

/// The text of a text or an edit, from its body as stored.
fn text_of(body: &str) -> Option<FormattedText> {
    match serde_json::from_str::<EventBody>(body).ok()? {
        EventBody::Text { text, .. } | EventBody::Edit { text, .. } => Some(text),
        _ => None,
    }
}

fn role_from_sql(role: &str) -> MappingRole {
    if role == "delivery" {
        MappingRole::Delivery
    } else {
        MappingRole::Origin
    }
}

fn lookup_mapping(
    connection: &Connection,
    channel: &ChannelRef,
    remote_id: &str,
) -> Result<Option<(i64, MappingRole)>, StoreError> {
    let mut statement = connection.prepare_cached(LOOKUP_MAPPING)?;
    lookup_with(&mut statement, channel, remote_id)
}

const LOOKUP_MAPPING: &str = "SELECT message_id, role FROM mappings
     WHERE network = ?1 AND channel = ?2 AND remote_id = ?3";

/// [`lookup_mapping`] with the statement in hand.
fn lookup_with(
    statement: &mut rusqlite::Statement<'_>,
    channel: &ChannelRef,
    remote_id: &str,
) -> Result<Option<(i64, MappingRole)>, StoreError> {
    Ok(statement
        .query_row(
            params![channel.network, channel.channel, remote_id],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    role_from_sql(&row.get::<_, String>(1)?),
                ))
            },
        )
        .optional()?)
}

/// A write transaction that takes the write lock at once (`BEGIN IMMEDIATE`), waiting for it
/// under the busy timeout. A deferred one that read first could instead fail at once with
/// "database is locked" when the checkpointer restarted the WAL meanwhile.
fn write_transaction(
    connection: &mut Connection,
) -> Result<rusqlite::Transaction<'_>, rusqlite::Error> {
    connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// The settings every connection of the store shares.
fn configure(connection: &Connection) -> Result<(), StoreError> {
    // WAL + NORMAL: a committed transaction survives a process crash (SIGKILL); only an OS
    // crash or power loss can take the last few, which is the usual SQLite trade-off.
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Savepoints and sorts in memory rather than in temporary files.
    connection.pragma_update(None, "temp_store", "MEMORY")?;
    connection.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
    // Wait for a lock (the checkpointer's brief `RESTART`) in 100 µs steps, up to 10 s:
    // SQLite's own busy timeout sleeps in steps of up to 100 ms, far longer than the lock is
    // held.
    connection.busy_handler(Some(busy_wait))?;
    Ok(())
}

/// The writer's own settings, once the schema is migrated.
///
/// Foreign keys are not enforced on the writer's connection (the migrations ran with them on,
/// and the reader and checkpointer keep them on). Every row it writes that points at a message
/// takes that id from the message it inserted in the same transaction, from a mapping or outbox
/// row that points at it already, or from the outbox row the worker read; and a message is
/// deleted only by the history's retention ([`crate::archive`]), which removes or unlinks every
/// row pointing at it in the same transaction and never deletes one an outbox row needs. Enforcing them cost a parent lookup per row (four per relayed message, 7 % of
/// the writer's instructions). [`Store::integrity_problems`] checks what enforcement would have:
/// the tests run it after every kind of write, the chaos harness after its crashes.
fn writer_settings(connection: &Connection) -> Result<(), StoreError> {
    connection.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(())
}

/// The busy handler: true to try again.
fn busy_wait(attempt: i32) -> bool {
    const STEP: std::time::Duration = std::time::Duration::from_micros(100);
    const MAX_ATTEMPTS: i32 = 100_000; // 10 s
    if attempt >= MAX_ATTEMPTS {
        return false;
    }
    std::thread::sleep(STEP);
    true
}

/// Copy the WAL into the database every [`CHECKPOINT_EVERY`] until the store is dropped.
///
/// `PASSIVE` never waits for the writer or readers, so commits go on during it; but the WAL
/// can only start over from its beginning once every frame was copied at a moment the writer
/// is not appending, which a steady stream of commits never leaves. So once the file is larger
/// than [`WAL_RESTART_BYTES`], a `RESTART` checkpoint makes the writer wait for the last copy
/// (a few milliseconds, once per that many bytes) and the file is reused from the start.
fn checkpoint_loop(connection: &Connection, wal: &Path, stop: &std_mpsc::Receiver<()>) {
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(error) = checkpoint(connection, "PASSIVE") {
            tracing::warn!(error = %error, "WAL checkpoint failed; retrying later.");
            continue;
        }
        // The file is cut back to this size when the WAL starts over (`journal_size_limit`),
        // so it is larger only when it grew since.
        if std::fs::metadata(wal).is_ok_and(|m| m.len() > WAL_RESTART_BYTES)
            && let Err(error) = checkpoint(connection, "RESTART")
        {
            tracing::warn!(error = %error, "WAL checkpoint (restart) failed; retrying later.");
        }
    }
}

/// One checkpoint in `mode`.
fn checkpoint(connection: &Connection, mode: &str) -> Result<(), rusqlite::Error> {
    connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
}

fn migrate(connection: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew {
            found: current,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let transaction = write_transaction(connection)?;
        transaction.execute_batch(sql)?;
        transaction.pragma_update(None, "user_version", index as i64 + 1)?;
        transaction.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check the tests rely on in place of enforced foreign keys does find a dangling row.
    #[test]
    fn integrity_problems_names_a_row_that_points_at_no_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
        store
            .lock()
            .execute(
                "INSERT INTO outbox (delivery_id, message_id, network, channel, gateway)
                 VALUES ('d1', 42, 'two', '#b', 'g')",
                [],
            )
            .unwrap();
        assert_eq!(
            store.integrity_problems().unwrap(),
            vec!["outbox row 1 points at a missing messages row".to_owned()]
        );
    }
}
