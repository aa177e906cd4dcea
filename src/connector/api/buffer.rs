//! The buffer of an api network: the messages relayed to it that no client has read yet,
//! kept durably in the network's own SQLite file (`state_dir/api-<network>.sqlite`), so that a
//! restart loses none of them.
//!
//! A delivery is acknowledged to the outbox only once its message is committed here
//! ([`Buffer::push`], keyed by the delivery id: a delivery tried again after a crash between
//! the two commits is not buffered twice). `GET /api/messages` takes every unread message and
//! marks them read ([`Buffer::take_unread`]); `/api/stream` reads by position
//! ([`Buffer::after`]) and marks what it wrote read; a stream resumed after a message's id
//! starts at its position ([`Buffer::position_of`]). Read messages are kept an hour (so that a
//! late retry of their delivery is still recognised), then deleted.
//!
//! When `capacity` messages are unread the buffer is full: [`Buffer::push`] says so and the
//! delivery waits in the outbox (counted and logged by the handle) until a client reads.
//! Nothing is overwritten, nothing is dropped.
//!
//! Invariant: every call is one SQLite transaction on the connection behind one lock; it does
//! blocking I/O, so callers run it off the async workers (`spawn_blocking`).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::{Connection, OptionalExtension as _, params};

/// How long a read message is kept (its delivery id recognised) before it is deleted.
const KEEP_READ_MS: i64 = 60 * 60 * 1000;

/// Errors of the buffer's file.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    /// SQLite failed.
    #[error("api buffer: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// What [`Buffer::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Buffered at this position.
    Stored(i64),
    /// This delivery was buffered before (a retry): nothing changed.
    Already,
    /// `capacity` messages are unread: not buffered.
    Full,
}

/// One buffered message: its position and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its position (ascending in the order messages were buffered).
    pub seq: i64,
    /// The message, as clients get it.
    pub json: String,
}

/// The durable buffer of one api network.
pub struct Buffer {
    connection: Mutex<Connection>,
    capacity: u64,
    /// Messages unread now (kept here so that a push needs no count).
    unread: AtomicI64,
    last_prune_ms: AtomicI64,
}

impl Buffer {
    /// Open (or create) the buffer in the file `path`, keeping at most `capacity` unread.
    pub fn open(path: &Path, capacity: u64) -> Result<Self, BufferError> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // A delivery is acknowledged once its message is here: a commit must survive a crash.
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS buffered (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 delivery_id TEXT NOT NULL UNIQUE,
                 message TEXT NOT NULL,
                 read_at INTEGER
             );
             CREATE INDEX IF NOT EXISTS buffered_unread ON buffered (seq) WHERE read_at IS NULL;
             CREATE INDEX IF NOT EXISTS buffered_read ON buffered (read_at) WHERE read_at IS NOT NULL;",
        )?;
        let unread: i64 = connection.query_row(
            "SELECT COUNT(*) FROM buffered WHERE read_at IS NULL",
            [],
            |row| row.get(0),
        )?;
        Ok(Self {
            connection: Mutex::new(connection),
            capacity,
            unread: AtomicI64::new(unread),
            last_prune_ms: AtomicI64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many messages are unread.
    #[must_use]
    pub fn unread(&self) -> i64 {
        self.unread.load(Ordering::Relaxed)
    }

    /// Buffer `message` for delivery `delivery_id` (at `now_ms`, which also prunes what was
    /// read long ago, at most once a minute).
    pub fn push(
        &self,
        delivery_id: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<Pushed, BufferError> {
        let connection = self.lock();
        let known: Option<i64> = connection
            .query_row(
                "SELECT seq FROM buffered WHERE delivery_id = ?1",
                [delivery_id],
                |row| row.get(0),
            )
            .optional()?;
        if known.is_some() {
            return Ok(Pushed::Already);
        }
        if self.unread.load(Ordering::Relaxed) >= self.capacity as i64 {
            return Ok(Pushed::Full);
        }
        connection.execute(
            "INSERT INTO buffered (delivery_id, message) VALUES (?1, ?2)",
            params![delivery_id, message],
        )?;
        let seq = connection.last_insert_rowid();
        self.unread.fetch_add(1, Ordering::Relaxed);
        if now_ms - self.last_prune_ms.load(Ordering::Relaxed) > 60_000 {
            self.last_prune_ms.store(now_ms, Ordering::Relaxed);
            connection.execute(
                "DELETE FROM buffered WHERE read_at IS NOT NULL AND read_at < ?1",
                [now_ms - KEEP_READ_MS],
            )?;
        }
        Ok(Pushed::Stored(seq))
    }

    /// Every unread message, oldest first, marked read (at `now_ms`) in the same transaction.
    pub fn take_unread(&self, now_ms: i64) -> Result<Vec<Entry>, BufferError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let entries = read_entries(
            &transaction,
            "SELECT seq, message FROM buffered WHERE read_at IS NULL ORDER BY seq",
            [],
        )?;
        transaction.execute(
            "UPDATE buffered SET read_at = ?1 WHERE read_at IS NULL",
            [now_ms],
        )?;
        transaction.commit()?;
        self.unread.store(0, Ordering::Relaxed);
        Ok(entries)
    }

    /// The messages buffered after position `seq` (read or not), oldest first, at most
    /// `limit`; and the newest position now.
    pub fn after(&self, seq: i64, limit: usize) -> Result<(Vec<Entry>, i64), BufferError> {
        let connection = self.lock();
        let entries = read_entries(
            &connection,
            "SELECT seq, message FROM buffered WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            params![seq, limit as i64],
        )?;
        let newest = newest(&connection)?;
        Ok((entries, newest))
    }

    /// The unread messages, oldest first, at most `limit` (what a stream sends first); and the
    /// newest position now.
    pub fn unread_entries(&self, limit: usize) -> Result<(Vec<Entry>, i64), BufferError> {
        let connection = self.lock();
        let entries = read_entries(
            &connection,
            "SELECT seq, message FROM buffered WHERE read_at IS NULL ORDER BY seq LIMIT ?1",
            [limit as i64],
        )?;
        let newest = newest(&connection)?;
        Ok((entries, newest))
    }

    /// The position of the message of delivery `delivery_id` (its `id`), while it is kept.
    pub fn position_of(&self, delivery_id: &str) -> Result<Option<i64>, BufferError> {
        let connection = self.lock();
        Ok(connection
            .query_row(
                "SELECT seq FROM buffered WHERE delivery_id = ?1",
                [delivery_id],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Mark the messages up to position `seq` read (a stream wrote them).
    pub fn mark_read_through(&self, seq: i64, now_ms: i64) -> Result<(), BufferError> {
        let connection = self.lock();
        let changed = connection.execute(
            "UPDATE buffered SET read_at = ?1 WHERE read_at IS NULL AND seq <= ?2",
            params![now_ms, seq],
        )?;
        self.unread.fetch_sub(changed as i64, Ordering::Relaxed);
        Ok(())
    }
}

fn newest(connection: &Connection) -> Result<i64, rusqlite::Error> {
    connection.query_row("SELECT COALESCE(MAX(seq), 0) FROM buffered", [], |row| {
        row.get(0)
    })
}

fn read_entries(
    connection: &Connection,
    sql: &str,
    parameters: impl rusqlite::Params,
) -> Result<Vec<Entry>, rusqlite::Error> {
    let mut statement = connection.prepare_cached(sql)?;
    let rows = statement.query_map(parameters, |row| {
        Ok(Entry {
            seq: row.get(0)?,
            json: row.get(1)?,
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_read_once_kept_across_a_reopen_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sqlite");
        let buffer = Buffer::open(&path, 2).unwrap();
        assert_eq!(buffer.push("d1", "one", 0).unwrap(), Pushed::Stored(1));
        assert_eq!(buffer.push("d1", "one", 0).unwrap(), Pushed::Already);
        assert_eq!(buffer.push("d2", "two", 0).unwrap(), Pushed::Stored(2));
        assert_eq!(buffer.push("d3", "three", 0).unwrap(), Pushed::Full);
        drop(buffer);
        let buffer = Buffer::open(&path, 2).unwrap();
        assert_eq!(buffer.unread(), 2);
        let taken: Vec<String> = buffer
            .take_unread(10)
            .unwrap()
            .into_iter()
            .map(|e| e.json)
            .collect();
        assert_eq!(taken, ["one", "two"]);
        assert!(buffer.take_unread(10).unwrap().is_empty());
        // A retried delivery already read is still recognised.
        assert_eq!(buffer.push("d2", "two", 20).unwrap(), Pushed::Already);
        assert_eq!(buffer.push("d3", "three", 20).unwrap(), Pushed::Stored(3));
        let (unread, newest) = buffer.unread_entries(10).unwrap();
        assert_eq!((unread.len(), newest), (1, 3));
        buffer.mark_read_through(3, 30).unwrap();
        assert_eq!(buffer.unread(), 0);
        let (after, _) = buffer.after(1, 10).unwrap();
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(buffer.position_of("d2").unwrap(), Some(2));
        assert_eq!(buffer.position_of("nope").unwrap(), None);
    }
}
