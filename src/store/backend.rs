//! The one store every caller uses, over its two backends: the `SQLite` file (the default) and
//! a PostgreSQL database (`[general] store = "postgres://…"`).
//!
//! Both keep the same invariants: an inbound event and its outbox rows commit in one
//! transaction before anything is sent, a delivery leaves the outbox only in the transaction that
//! records its acknowledgement, and a group commit is one transaction. Each operation's query
//! text lives once per backend: in `store.rs` for `SQLite`, in [`super::postgres`] for
//! PostgreSQL. This type only chooses.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::history::{HistoryRead, HistoryWrite, SqliteHistory};
use super::postgres::PostgresStore;
use super::{
    CommitOutcome, Completion, FailedRow, GroupOutcome, LeaseTick, MappingRole, OutboxCount,
    PendingDelivery, Route, SqliteStore, StagedInbound, StoreError,
};
use crate::model::{ChannelRef, Inbound};
use crate::vocab::Lease;

/// The durable state, in `SQLite` or in PostgreSQL. Cheap to share behind an `Arc`.
pub struct Store {
    backend: Backend,
}

// One per process, made once and never moved: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// Whether `url` is a PostgreSQL URL the store can use (scheme, options, TLS settings); the
/// reason when not, without the password. Connects to nothing.
pub fn check_url(url: &str) -> Result<(), String> {
    super::postgres::parse_url(url)
        .map(|_| ())
        .map_err(|error| match error {
            StoreError::Url(reason) => reason,
            other => other.to_string(),
        })
}

/// Call `$method` with the same arguments on whichever backend holds the state.
macro_rules! both {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match &$self.backend {
            Backend::Sqlite(store) => store.$method($($arg),*),
            Backend::Postgres(store) => store.$method($($arg),*),
        }
    };
}

impl Store {
    /// Open (or create) `state_dir/tribridge.sqlite3` and apply pending migrations.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite(SqliteStore::open(state_dir)?),
        })
    }

    /// Open the configured store: the PostgreSQL database at `url` when there is one (applying
    /// its pending migrations), else the `SQLite` file in `state_dir`.
    pub fn open_configured(state_dir: &Path, url: Option<&str>) -> Result<Self, StoreError> {
        match url {
            Some(url) => Self::open_postgres(url),
            None => Self::open(state_dir),
        }
    }

    /// Connect to the PostgreSQL database at `url` and apply its pending migrations.
    pub fn open_postgres(url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Postgres(PostgresStore::open(url)?),
        })
    }

    /// A `SQLite` store in memory, for tests and benchmarks.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite(SqliteStore::open_in_memory()?),
        })
    }

    /// The backend's name, for the log and the metrics: `sqlite` or `postgres`.
    #[must_use]
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    fn postgres(&self) -> Result<&PostgresStore, StoreError> {
        match &self.backend {
            Backend::Postgres(store) => Ok(store),
            Backend::Sqlite(_) => Err(StoreError::NeedsPostgres(
                "failover between instances (a lease)",
            )),
        }
    }

    /// Run for failover: from now on every write transaction that completes, defers or fails a
    /// delivery, commits an inbound event or moves a cursor checks `lease`'s fencing token
    /// (one statement per transaction), and rolls back when this instance does not hold it.
    /// PostgreSQL only (the `SQLite` store serves one instance).
    pub fn set_lease(&self, lease: Arc<Lease>) -> Result<(), StoreError> {
        self.postgres()?.set_lease(lease);
        Ok(())
    }

    /// Take the lease of `scope` for `holder` for `ttl` (when it expired, or `holder` held
    /// it): the new fencing token, or `None` while another instance holds it.
    pub fn take_lease(
        &self,
        scope: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError> {
        self.postgres()?.take_lease(scope, holder, ttl)
    }

    /// Extend the lease of `scope` by `ttl`: `false` when `holder` no longer holds it with
    /// `token`.
    pub fn renew_lease(
        &self,
        scope: &str,
        holder: &str,
        token: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.postgres()?.renew_lease(scope, holder, token, ttl)
    }

    /// Let the lease of `scope` expire now, if `holder` holds it with `token` (a clean stop,
    /// so that a standby takes over without waiting).
    pub fn release_lease(&self, scope: &str, holder: &str, token: i64) -> Result<(), StoreError> {
        self.postgres()?.release_lease(scope, holder, token)
    }

    /// The per-network mode's tick: stamp `instance`'s heartbeat, renew every lease in `held`
    /// (scope and token) by `ttl` in one statement, and read the live instances and who holds
    /// which lease.
    pub fn lease_tick(
        &self,
        instance: &str,
        held: &[(String, i64)],
        ttl: Duration,
    ) -> Result<LeaseTick, StoreError> {
        self.postgres()?.lease_tick(instance, held, ttl)
    }

    /// Call `on_network` with the network of each delivery queued by another instance (a
    /// PostgreSQL notification), on a thread of its own, until `stop` is set.
    pub fn listen_outbox(
        &self,
        on_network: Box<dyn Fn(&str) + Send>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<std::thread::JoinHandle<()>, StoreError> {
        self.postgres()?.listen_outbox(on_network, stop)
    }

    /// `instance` stops cleanly: the others count it out of the live instances at once.
    pub fn forget_instance(&self, instance: &str) -> Result<(), StoreError> {
        self.postgres()?.forget_instance(instance)
    }

    /// Who holds the lease of `scope`: name, token, and whether it is unexpired.
    pub fn lease_holder(&self, scope: &str) -> Result<Option<(String, i64, bool)>, StoreError> {
        self.postgres()?.lease_holder(scope)
    }

    fn sqlite(&self, what: &'static str) -> Result<&SqliteStore, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => Ok(store),
            Backend::Postgres(_) => Err(StoreError::Unsupported(what)),
        }
    }

    /// Move the clock that stamps a message's `received_ms` by `skew_ms` (the history's
    /// test-only seam, [`crate::archive::CLOCK_SKEW_ENV`]). Zero in production.
    pub fn set_clock_skew_ms(&self, skew_ms: i64) {
        both!(self.set_clock_skew_ms(skew_ms));
    }

    /// Run `work` in one write transaction of the history (the archive's chaining, the
    /// retention's and `forget`'s batches), fenced on PostgreSQL like every other write. On
    /// PostgreSQL `work` may run again on a new connection when the first broke, so it keeps
    /// no state of its own between runs.
    ///
    /// # Errors
    /// The store's, or `work`'s; nothing of the transaction is kept then.
    pub fn write_history<R: Send>(
        &self,
        mut work: impl FnMut(&mut dyn HistoryWrite) -> Result<R, StoreError> + Send,
    ) -> Result<R, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                store.write_with(|transaction| work(&mut SqliteHistory(transaction)))
            }
            Backend::Postgres(store) => store.write_history(work),
        }
    }

    /// Run `work` on one consistent snapshot of the history (see [`HistorySource`] for the
    /// read-only way an export opens it). Not on a thread of an async runtime: it blocks.
    ///
    /// # Errors
    /// The store's, or `work`'s.
    pub fn read_history<R, E: From<StoreError>>(
        &self,
        work: impl FnOnce(&mut dyn HistoryRead) -> Result<R, E>,
    ) -> Result<R, E> {
        match &self.backend {
            Backend::Sqlite(store) => store.read_with(|connection| {
                let transaction = connection
                    .unchecked_transaction()
                    .map_err(|e| E::from(e.into()))?;
                let result = work(&mut SqliteHistory(&transaction))?;
                transaction.commit().map_err(|e| E::from(e.into()))?;
                Ok(result)
            }),
            Backend::Postgres(store) => store.read_history(work),
        }
    }

    /// Which of the stored files `hashes` a message still in the store carries (the index
    /// `message_files`, kept by triggers on both backends).
    ///
    /// # Errors
    /// The store's.
    pub fn files_in_use(&self, hashes: &HashSet<String>) -> Result<HashSet<String>, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                store.read_with(|connection| super::history::files_in_use(connection, hashes))
            }
            Backend::Postgres(store) => store.files_in_use(hashes),
        }
    }

    /// Messages in the store and the bytes the database takes (the `SQLite` file with its WAL,
    /// or the PostgreSQL database's size): the load harness's figures.
    ///
    /// # Errors
    /// The store's.
    pub fn footprint(&self) -> Result<(i64, u64), StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                store.read_with(|connection| {
                    let messages =
                        connection
                            .query_row("SELECT COUNT(*) FROM messages", [], |row| row.get(0))?;
                    // The file with its WAL and shared-memory index, as `du` would count them.
                    let bytes = connection.path().map_or(0, |path| {
                        ["", "-wal", "-shm"]
                            .iter()
                            .filter_map(|end| std::fs::metadata(format!("{path}{end}")).ok())
                            .map(|meta| meta.len())
                            .sum()
                    });
                    Ok::<_, StoreError>((messages, bytes))
                })
            }
            Backend::Postgres(store) => store.footprint(),
        }
    }

    /// Run `work` on the `SQLite` reader (for the load harness and tools that read what the
    /// store has no method for).
    pub fn read_with_public<T, E: Into<StoreError>>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, StoreError> {
        self.sqlite("reading the database directly")?
            .read_with_public(work)
            .map_err(Into::into)
    }

    /// Record an inbound event and one outbox row per route, in one transaction; or recognise
    /// it as an echo of our own delivery or as a duplicate, and record nothing.
    pub fn commit_inbound(
        &self,
        inbound: &Inbound,
        origin_protocol: &'static str,
        routes: &[Route],
    ) -> Result<CommitOutcome, StoreError> {
        both!(self.commit_inbound(inbound, origin_protocol, routes))
    }

    /// Group commit: acknowledgements and inbound events in one transaction (see
    /// [`SqliteStore::commit_group`]; PostgreSQL keeps the same contract).
    pub fn commit_group(
        &self,
        acknowledged: &[Completion],
        events: &mut [StagedInbound],
    ) -> GroupOutcome {
        both!(self.commit_group(acknowledged, events))
    }

    /// The oldest delivery still pending for a destination, due or not.
    pub fn next_pending(
        &self,
        destination: &ChannelRef,
    ) -> Result<Option<PendingDelivery>, StoreError> {
        Ok(self.pending_batch(destination, 0, 1)?.into_iter().next())
    }

    /// Up to `limit` pending deliveries for a destination queued after position `after_seq`,
    /// oldest first (see [`SqliteStore::pending_batch`]).
    pub fn pending_batch(
        &self,
        destination: &ChannelRef,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        both!(self.pending_batch(destination, after_seq, limit))
    }

    /// The destination acknowledged the delivery at queue position `seq`. Idempotent.
    pub fn complete_delivery(&self, seq: i64, remote_id: Option<&str>) -> Result<(), StoreError> {
        both!(self.complete_delivery(seq, remote_id))
    }

    /// The delivery at `seq` failed in a way worth retrying: try again at `next_try_ms`.
    pub fn defer_delivery(
        &self,
        seq: i64,
        next_try_ms: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        both!(self.defer_delivery(seq, next_try_ms, error))
    }

    /// The delivery at `seq` can never succeed: it stays in the outbox as `failed`.
    pub fn fail_delivery(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        both!(self.fail_delivery(seq, error))
    }

    /// Every row that points at a message that does not exist, and any damage the database
    /// reports. Empty when all is well. Reads the whole database.
    pub fn integrity_problems(&self) -> Result<Vec<String>, StoreError> {
        both!(self.integrity_problems())
    }

    /// Destinations that have pending deliveries.
    pub fn pending_destinations(&self) -> Result<Vec<ChannelRef>, StoreError> {
        both!(self.pending_destinations())
    }

    /// How many deliveries the outbox holds, by destination network and state.
    pub fn outbox_depth(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        both!(self.outbox_depth())
    }

    /// Number of pending deliveries for a destination.
    pub fn pending_count(&self, destination: &ChannelRef) -> Result<u64, StoreError> {
        both!(self.pending_count(destination))
    }

    /// Number of acknowledged deliveries to a destination.
    pub fn delivered_count(&self, destination: &ChannelRef) -> Result<u64, StoreError> {
        both!(self.delivered_count(destination))
    }

    /// The canonical id and role mapped to a network's id for an event, if any.
    pub fn lookup(
        &self,
        channel: &ChannelRef,
        remote_id: &str,
    ) -> Result<Option<(i64, MappingRole)>, StoreError> {
        both!(self.lookup(channel, remote_id))
    }

    /// Every (channel, remote id, role) known for a message.
    pub fn mappings_of(
        &self,
        message_id: i64,
    ) -> Result<Vec<(ChannelRef, String, MappingRole)>, StoreError> {
        both!(self.mappings_of(message_id))
    }

    /// Read a cursor of a network or one of its channels (`""` for the whole network).
    pub fn cursor(&self, network: &str, channel: &str) -> Result<Option<String>, StoreError> {
        both!(self.cursor(network, channel))
    }

    /// Every cursor of `network` whose channel key starts with `prefix`, in key order.
    pub fn cursors_with_prefix(
        &self,
        network: &str,
        prefix: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        both!(self.cursors_with_prefix(network, prefix))
    }

    /// The routes left to a parallel bridge ([`crate::parallel`]).
    pub fn parallel_routes(&self) -> Result<Vec<(ChannelRef, ChannelRef, String)>, StoreError> {
        both!(self.parallel_routes())
    }

    /// Record that a route is left to the parallel bridge `account`, or (`None`) taken back.
    pub fn set_parallel_route(
        &self,
        origin: &ChannelRef,
        destination: &ChannelRef,
        account: Option<&str>,
    ) -> Result<(), StoreError> {
        both!(self.set_parallel_route(origin, destination, account))
    }

    /// Every person the bridge has seen.
    pub fn people(&self) -> Result<Vec<crate::vocab::KnownPerson>, StoreError> {
        both!(self.people())
    }

    /// Record that the nick `old` of `network` is now `new` in the people directory.
    pub fn record_rename(&self, network: &str, old: &str, new: &str) -> Result<(), StoreError> {
        both!(self.record_rename(network, old, new))
    }

    /// Write a cursor.
    pub fn set_cursor(&self, network: &str, channel: &str, value: &str) -> Result<(), StoreError> {
        both!(self.set_cursor(network, channel, value))
    }

    /// The outbox by destination and state, with the oldest message's arrival time (for
    /// `tribridge status`).
    pub fn outbox_by_destination(&self) -> Result<Vec<OutboxCount>, StoreError> {
        both!(self.outbox_by_destination())
    }

    /// Every failed delivery with its message, in queue order (`tribridge failed list`).
    pub fn failed_deliveries(&self) -> Result<Vec<FailedRow>, StoreError> {
        both!(self.failed_deliveries())
    }

    /// Queue the failed delivery at position `seq` again, at the end of its destination's
    /// queue, as pending with the same delivery id (`tribridge failed retry`): its destination
    /// and new position, or `None` when no failed delivery is at `seq`.
    pub fn requeue_failed(&self, seq: i64) -> Result<Option<(ChannelRef, i64)>, StoreError> {
        both!(self.requeue_failed(seq))
    }

    /// Remove the failed delivery at position `seq` (`tribridge failed drop`): whether there
    /// was one.
    pub fn drop_failed(&self, seq: i64) -> Result<bool, StoreError> {
        both!(self.drop_failed(seq))
    }
}
