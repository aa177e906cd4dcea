//! Catch-up from the history an IRC server plays back when the bot joins a channel (`InspIRCd`'s
//! `chanhistory`, channel mode `+H`, in a `chathistory` batch with `server-time` and `msgid`),
//! and the per-channel cursors that say where the bridge stopped.
//!
//! - **Cursors**: per channel, the `server-time` and `msgid` of the last line committed, in the
//!   store's cursors (key `history:<folded channel>`), written after the line's commit. A fresh
//!   install takes the time of its own JOIN as its cursor, so it relays no history.
//! - **Playback**: lines inside a history batch are held until the batch ends; then the lines
//!   after the cursor (after the cursor's `msgid` where the batch holds it, else later than its
//!   time) are committed once, in order, with their original time; the rest are skipped. A line
//!   outside a batch dated before the cursor, or the cursor's own line again, is history too
//!   (live lines read together may share the cursor's millisecond). Lines committed twice all
//!   the same (a cursor written a moment after its line's commit, when the daemon is killed in
//!   between) are dropped by the store as duplicates where the server gives `msgid`s. On a server
//!   that gives neither `batch` nor `server-time`, the lines said in a channel between the bot's
//!   JOIN and the answer to a PING sent once every channel is joined (the fence) are playback:
//!   skipped, counted and logged.
//! - **Our own lines** in the playback (the bot's nick or one of its fallbacks) are kept, minus
//!   those the store already knows as acknowledged deliveries: a delivery whose lines are found
//!   there (same command, same text, said no earlier than the delivery's message) is
//!   acknowledged without being sent again ([`Session::said_before`]).
//!
//! **Invariants:** playback is never relayed as new, our own lines never relayed; a cursor moves
//! forward only (by the order lines were read), and only past a committed line; the session is
//! `Ready` (takes deliveries) only after the fence, so that the playback is read before any
//! delivery is matched against it.
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use irc::client::prelude::Message;

use crate::model::{ChannelRef, Inbound};
use crate::store::Store;

use super::config::HistoryMode;
use super::convert::tag;
use super::irc_fold;
use super::session::{Phase, Session};
use super::wire::{WireLine, parse_server_time};

/// The prefix of the store's cursor keys this module owns.
const CURSOR_PREFIX: &str = "history:";
/// The token of the PING that fences the playback after the joins.
const FENCE_TOKEN: &str = "tribridge-history-fence";
/// How much earlier than its message one of our own lines in the history may be dated and still
/// count as its delivery: history times may be whole seconds, and clocks differ a little.
const OWN_LINE_SLACK_MS: i64 = 2_000;

/// Where the bridge stopped in a channel: the last committed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cursor {
    /// Its `server-time` (else the time it was read), ms since the Unix epoch.
    pub(super) time_ms: i64,
    /// Its `msgid`, where the server gives one.
    pub(super) msgid: Option<String>,
}

impl Cursor {
    fn encode(&self) -> String {
        match &self.msgid {
            Some(msgid) => format!("{} {msgid}", self.time_ms),
            None => self.time_ms.to_string(),
        }
    }

    fn decode(value: &str) -> Option<Cursor> {
        let (time, msgid) = match value.split_once(' ') {
            Some((time, msgid)) => (time, Some(msgid.to_owned())),
            None => (value, None),
        };
        Some(Cursor {
            time_ms: time.parse().ok()?,
            msgid,
        })
    }
}

/// The cursors of one IRC network, shared by its connections (loaded once, kept in memory and
/// written to the store after each commit, coalesced).
#[derive(Default)]
pub(super) struct Cursors {
    book: Mutex<Book>,
    /// Held while a cursor is written to the store.
    writing: Mutex<()>,
    /// The order lines were read in, for "forward only".
    next_seq: AtomicU64,
    /// Whether "the server keeps no history" was logged (once per run).
    pub(super) no_history_logged: AtomicBool,
}

#[derive(Default)]
struct Book {
    loaded: bool,
    /// folded channel → (read order, cursor)
    latest: HashMap<String, (u64, Cursor)>,
    /// folded channel → the read order of the cursor last written to the store.
    written: HashMap<String, u64>,
}

impl Cursors {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Read the network's cursors from the store, once per run.
    fn load(&self, store: &Store, network: &str) {
        let mut book = self.book();
        if book.loaded {
            return;
        }
        match store.cursors_with_prefix(network, CURSOR_PREFIX) {
            Ok(rows) => {
                for (key, value) in rows {
                    let (Some(channel), Some(cursor)) =
                        (key.strip_prefix(CURSOR_PREFIX), Cursor::decode(&value))
                    else {
                        tracing::warn!(network, key = %key, value = %value, "An IRC history cursor that cannot be read; ignored.");
                        continue;
                    };
                    book.latest.insert(channel.to_owned(), (0, cursor));
                    book.written.insert(channel.to_owned(), 0);
                }
                book.loaded = true;
            }
            Err(error) => {
                tracing::warn!(network, error = %error, "Cannot read the IRC history cursors; history is skipped on this connection.");
            }
        }
    }

    fn get(&self, channel: &str) -> Option<Cursor> {
        self.book()
            .latest
            .get(&irc_fold(channel))
            .map(|(_, cursor)| cursor.clone())
    }

    fn next_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A line read as `seq` was committed: its channel's cursor moves to it, unless a later line
    /// is already there.
    fn advance(&self, seq: u64, channel: &str, cursor: Cursor) {
        let mut book = self.book();
        let entry = book
            .latest
            .entry(irc_fold(channel))
            .or_insert((0, cursor.clone()));
        if seq >= entry.0 {
            *entry = (seq, cursor);
        }
    }

    /// Write `channel`'s cursor to the store if it moved since last written (blocking). Writes
    /// are one at a time, so that an older value never lands after a newer one; the book is
    /// locked only to read and note, never while the store is written.
    fn flush(&self, store: &Store, network: &str, channel: &str) {
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let folded = irc_fold(channel);
        let (seq, cursor) = {
            let book = self.book();
            let Some((seq, cursor)) = book.latest.get(&folded).cloned() else {
                return;
            };
            if book
                .written
                .get(&folded)
                .is_some_and(|written| *written >= seq)
            {
                return;
            }
            (seq, cursor)
        };
        match store.set_cursor(
            network,
            &format!("{CURSOR_PREFIX}{folded}"),
            &cursor.encode(),
        ) {
            Ok(()) => {
                self.book().written.insert(folded, seq);
            }
            Err(error) => {
                tracing::warn!(network, channel, error = %error, "Cannot store an IRC history cursor; after a restart, lines since the last stored one may be caught up again (skipped as duplicates where the server gives msgids).");
            }
        }
    }
}

/// A history batch being read.
pub(super) struct OpenBatch {
    /// The channel it plays back (as the server named it).
    channel: String,
    lines: Vec<Message>,
}

/// One of our own lines in a channel's playback.
struct OwnLine {
    command: String,
    text: String,
    time_ms: i64,
    msgid: Option<String>,
}

/// What one connection knows of the history: open batches, our own lines played back, the fence.
#[derive(Default)]
pub(super) struct SessionHistory {
    batches: HashMap<String, OpenBatch>,
    /// folded channel → our own lines in its playback, oldest first, not yet matched.
    own: HashMap<String, Vec<OwnLine>>,
    /// Channels (folded) joined and not yet past the fence (for servers without markers).
    unfenced: HashSet<String>,
    /// The fence PING was sent; its answer came.
    fence: (bool, bool),
    /// Unmarked playback lines skipped on this connection.
    unmarked_skipped: u64,
    /// Channels (folded) that had no cursor when this connection joined them (a fresh install).
    fresh: HashSet<String>,
}

impl Session<'_> {
    fn history_on(&self) -> bool {
        self.task.puppet.is_none() && self.task.config.history == HistoryMode::Auto
    }

    /// Whether the server marks history (in a batch, or with `server-time`).
    fn marks_history(&self) -> bool {
        self.caps.contains("batch") || self.caps.contains("server-time")
    }

    /// After registration: load the cursors, and say once when the server keeps no history
    /// the bridge can use.
    pub(super) async fn history_registered(&mut self) {
        if self.task.puppet.is_some() {
            return;
        }
        let (store, network) = (
            std::sync::Arc::clone(&self.task.context.store),
            self.network().to_owned(),
        );
        let cursors = std::sync::Arc::clone(&self.task.cursors);
        let _ = tokio::task::spawn_blocking(move || cursors.load(&store, &network)).await;
        if self.task.config.history == HistoryMode::Off {
            return;
        }
        let chathistory = self
            .offered_caps
            .iter()
            .any(|cap| cap == "draft/chathistory" || cap == "chathistory");
        if !self.marks_history()
            && !chathistory
            && !self
                .task
                .cursors
                .no_history_logged
                .swap(true, Ordering::Relaxed)
        {
            tracing::info!(network = %self.network(), "The IRC server keeps no history the bridge can use (no batch, server-time or chathistory): lines said while the bridge is away are lost, and a line written just before a connection drop may be sent again.");
        }
    }

    /// Our own JOIN of `channel`: a channel without a cursor (a fresh install) starts at the
    /// JOIN's time, so that nothing older is relayed.
    pub(super) async fn history_joined(&mut self, channel: &str, message: &Message) {
        if self.task.puppet.is_some() {
            return;
        }
        if !self.history.fence.1 {
            self.history.unfenced.insert(irc_fold(channel));
        }
        let Some(time_ms) = tag(message, "time").and_then(|t| parse_server_time(&t)) else {
            return;
        };
        if self.task.cursors.get(channel).is_some() {
            return;
        }
        self.history.fresh.insert(irc_fold(channel));
        let seq = self.task.cursors.next_seq();
        self.task.cursors.advance(
            seq,
            channel,
            Cursor {
                time_ms: time_ms - 1,
                msgid: None,
            },
        );
        self.flush_cursor(channel).await;
    }

    async fn flush_cursor(&self, channel: &str) {
        let (store, network, channel) = (
            std::sync::Arc::clone(&self.task.context.store),
            self.network().to_owned(),
            channel.to_owned(),
        );
        let cursors = std::sync::Arc::clone(&self.task.cursors);
        let _ =
            tokio::task::spawn_blocking(move || cursors.flush(&store, &network, &channel)).await;
    }

    /// Every channel is joined: fence the playback with a PING (the session becomes `Ready` on
    /// its answer). `true` while the fence's answer is awaited.
    pub(super) fn history_fence(&mut self) -> bool {
        match self.history.fence {
            (_, true) => false,
            (true, false) => true,
            (false, false) => {
                if self.task.puppet.is_some() || self.send_raw("PING", &[FENCE_TOKEN]).is_err() {
                    return false;
                }
                self.history.fence.0 = true;
                true
            }
        }
    }

    /// `PONG`: the fence's answer ends every channel's playback; the session is ready.
    pub(super) fn history_pong(&mut self, line: &WireLine) {
        if self.history.fence != (true, false) || line.last() != Some(FENCE_TOKEN) {
            return;
        }
        self.history.fence.1 = true;
        self.history.unfenced.clear();
        if self.history.unmarked_skipped > 0 {
            tracing::info!(network = %self.network(), skipped = self.history.unmarked_skipped, "Lines played back on join without any marker (no batch, no server-time) were skipped as history.");
        }
        if matches!(self.phase, Phase::Joining { .. }) {
            tracing::info!(network = %self.network(), joined = self.joined.len(), failed = self.failed_joins.len(), "Channels joined; ready.");
            self.phase = Phase::Ready;
        }
    }

    /// `BATCH +id chathistory #channel` and `BATCH -id`. `true` when it was a history batch.
    pub(super) async fn history_batch(&mut self, line: &WireLine) -> bool {
        let Some(reference) = line.param(0) else {
            return false;
        };
        if let Some(id) = reference.strip_prefix('+') {
            // The `irc` crate upper-cases a batch type it does not know.
            let kind = line.param(1).unwrap_or("").to_ascii_lowercase();
            if matches!(kind.as_str(), "chathistory" | "draft/chathistory")
                && let Some(channel) = line.param(2)
            {
                self.history.batches.insert(
                    id.to_owned(),
                    OpenBatch {
                        channel: channel.to_owned(),
                        lines: Vec::new(),
                    },
                );
                return true;
            }
            return false;
        }
        let Some(id) = reference.strip_prefix('-') else {
            return false;
        };
        let Some(batch) = self.history.batches.remove(id) else {
            return false;
        };
        self.play_back(batch).await;
        true
    }

    /// A PRIVMSG or NOTICE: `true` when it is history (held in its batch, or skipped), not a
    /// live line.
    pub(super) fn history_holds(&mut self, message: &Message, line: &WireLine) -> bool {
        if let Some(id) = tag(message, "batch")
            && let Some(batch) = self.history.batches.get_mut(&id)
        {
            batch.lines.push(message.clone());
            return true;
        }
        if self.task.puppet.is_some() {
            return false;
        }
        let Some(target) = line.param(0) else {
            return false;
        };
        let folded = irc_fold(target);
        if !self.channels.contains_key(&folded) {
            return false;
        }
        // Dated before the cursor, or the cursor's own line: history. (Live lines read together
        // may share one millisecond: a line dated as the cursor is history only by its msgid.)
        // Never our own echo, which confirms a delivery.
        if !message
            .source_nickname()
            .is_some_and(|nick| self.is_me(nick))
            && let Some(time_ms) = tag(message, "time").and_then(|t| parse_server_time(&t))
            && let Some(cursor) = self.task.cursors.get(target)
            && (time_ms < cursor.time_ms
                || (time_ms == cursor.time_ms
                    && cursor.msgid.is_some()
                    && tag(message, "msgid") == cursor.msgid))
        {
            tracing::debug!(network = %self.network(), channel = target, "A line dated at or before the channel's cursor: history, skipped.");
            return true;
        }
        if !self.marks_history() && self.history.unfenced.contains(&folded) {
            self.history.unmarked_skipped += 1;
            return true;
        }
        false
    }

    /// Our nick, or one of the fallbacks the connection may have had before
    /// (`TaskInfo::alt_nicks`): its lines in the history are ours.
    fn is_own_nick(&self, nick: &str) -> bool {
        self.is_me(nick)
            || irc_fold(nick) == irc_fold(&self.task.config.nick)
            || self
                .task
                .alt_nicks()
                .iter()
                .any(|alt| irc_fold(alt) == irc_fold(nick))
    }

    /// A history batch ended: commit the lines after the cursor, keep our own lines.
    async fn play_back(&mut self, batch: OpenBatch) {
        let Some(channel) = self.configured(&batch.channel) else {
            return;
        };
        if self.task.puppet.is_some() {
            // A puppet relays nothing; the bot's connection catches up.
            return;
        }
        if !self.history_on() {
            tracing::debug!(network = %self.network(), channel = %channel, lines = batch.lines.len(), "History played back on join; skipped (history = \"off\").");
            return;
        }
        let fresh = self.history.fresh.remove(&irc_fold(&channel));
        let cursor = self.task.cursors.get(&channel).filter(|_| !fresh);
        let after_msgid = cursor.as_ref().and_then(|cursor| {
            let msgid = cursor.msgid.as_deref()?;
            batch
                .lines
                .iter()
                .position(|line| tag(line, "msgid").as_deref() == Some(msgid))
        });
        let time_of = |message: &Message| tag(message, "time").and_then(|t| parse_server_time(&t));
        let mut own = Vec::new();
        let mut new = Vec::new();
        let mut skipped = 0usize;
        for (index, message) in batch.lines.iter().enumerate() {
            let nick = message.source_nickname().unwrap_or("");
            let line = WireLine::of(message);
            if self.is_own_nick(nick) {
                if let Some(text) = line.param(1) {
                    own.push(OwnLine {
                        command: line.command.clone(),
                        text: text.to_owned(),
                        time_ms: time_of(message).unwrap_or(i64::MAX),
                        msgid: tag(message, "msgid"),
                    });
                }
                continue;
            }
            let is_new = match (&cursor, after_msgid) {
                // A fresh install: nothing of the history.
                (None, _) => false,
                (Some(_), Some(position)) => index > position,
                // The cursor's line is no longer in the history: it holds only later lines,
                // but a line dated before the cursor's second is older all the same.
                (Some(cursor), None) if cursor.msgid.is_some() => {
                    time_of(message).is_some_and(|t| t >= cursor.time_ms - cursor.time_ms % 1000)
                }
                (Some(cursor), None) => time_of(message).is_some_and(|t| t > cursor.time_ms),
            };
            if is_new {
                new.push(message.clone());
            } else {
                skipped += 1;
            }
        }
        let own = self.unacknowledged(&channel, own).await;
        tracing::info!(network = %self.network(), channel = %channel, played_back = batch.lines.len(), relayed = new.len(), skipped, own_lines = own.len(), fresh = cursor.is_none(), "History played back on join: the lines after the channel's cursor are relayed once, with their original time.");
        if !own.is_empty() {
            self.history.own.insert(irc_fold(&channel), own);
        }
        for message in new {
            let line = WireLine::of(&message);
            if let Err(error) = self.handle_text(&message, &line, None).await {
                tracing::warn!(network = %self.network(), channel = %channel, error = %error, "A history line could not be handled.");
            }
        }
        if self.task.cursors.get(&channel).is_none()
            && let Some(last) = batch.lines.last()
            && let Some(time_ms) = time_of(last)
        {
            let seq = self.task.cursors.next_seq();
            self.task.cursors.advance(
                seq,
                &channel,
                Cursor {
                    time_ms,
                    msgid: tag(last, "msgid"),
                },
            );
            self.flush_cursor(&channel).await;
        }
    }

    /// Our own played-back lines that no acknowledged delivery accounts for (their `msgid` is
    /// not in the store).
    async fn unacknowledged(&self, channel: &str, own: Vec<OwnLine>) -> Vec<OwnLine> {
        if own.is_empty() {
            return own;
        }
        let store = std::sync::Arc::clone(&self.task.context.store);
        let origin = ChannelRef::new(self.network(), channel);
        tokio::task::spawn_blocking(move || {
            own.into_iter()
                .filter(|line| {
                    line.msgid
                        .as_deref()
                        .is_none_or(|msgid| !matches!(store.lookup(&origin, msgid), Ok(Some(_))))
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Whether the played-back history of `channel` holds lines of ours not matched yet.
    pub(super) fn has_own_history(&self, channel: &str) -> bool {
        self.history
            .own
            .get(&irc_fold(channel))
            .is_some_and(|own| !own.is_empty())
    }

    /// How many of a delivery's first `lines` the played-back history already holds as our own
    /// (said no earlier than `said_ms`), taken out of the history so that nothing matches twice,
    /// and the `msgid` of the first. With `whole`, all of them or none.
    pub(super) fn said_before(
        &mut self,
        channel: &str,
        lines: &[(&str, String)],
        said_ms: i64,
        whole: bool,
    ) -> (usize, Option<String>) {
        let Some(own) = self.history.own.get_mut(&irc_fold(channel)) else {
            return (0, None);
        };
        let mut found = 0;
        let mut first_msgid = None;
        let mut cursor = 0;
        let mut taken = Vec::new();
        for (command, text) in lines {
            let Some(offset) = own[cursor..].iter().position(|line| {
                line.command.eq_ignore_ascii_case(command)
                    && &line.text == text
                    && line.time_ms >= said_ms - OWN_LINE_SLACK_MS
            }) else {
                break;
            };
            let index = cursor + offset;
            if found == 0 {
                first_msgid.clone_from(&own[index].msgid);
            }
            taken.push(index);
            cursor = index + 1;
            found += 1;
        }
        if whole && found < lines.len() {
            return (0, None);
        }
        for index in taken.into_iter().rev() {
            own.remove(index);
        }
        (found, first_msgid)
    }

    /// Submit a text line read live or from the history, and move its channel's cursor to it
    /// once committed.
    pub(super) async fn submit_line(&self, inbound: Inbound) {
        let channel = inbound.origin.channel.clone();
        let cursor = Cursor {
            time_ms: inbound.timestamp_ms,
            msgid: inbound.remote_id.clone(),
        };
        if !self.history_on() {
            self.submit(inbound).await;
            return;
        }
        let Ok(permit) = std::sync::Arc::clone(&self.commits).acquire_owned().await else {
            return;
        };
        let seq = self.task.cursors.next_seq();
        let committed = self.task.context.router.submit_queued(inbound);
        let cursors = std::sync::Arc::clone(&self.task.cursors);
        let (store, network) = (
            std::sync::Arc::clone(&self.task.context.store),
            self.network().to_owned(),
        );
        tokio::spawn(async move {
            committed.await;
            drop(permit);
            cursors.advance(seq, &channel, cursor);
            let _ = tokio::task::spawn_blocking(move || cursors.flush(&store, &network, &channel))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn cursors_read_back_as_written() {
        let with = Cursor {
            time_ms: 1_795_320_000_500,
            msgid: Some("179~1796546588~5".into()),
        };
        assert_eq!(Cursor::decode(&with.encode()), Some(with));
        let without = Cursor {
            time_ms: 12,
            msgid: None,
        };
        assert_eq!(Cursor::decode(&without.encode()), Some(without));
        assert_eq!(Cursor::decode("yesterday"), None);
    }
}
