//! Parallel bridges: another bridge (a second instance of this one under other accounts, or
//! another program) relaying the same channels. Left alone, everyone would see each message
//! twice, and each bridge would relay the other's copy back (the loop that
//! [`crate::loop_breaker`] ends three prefixes later).
//!
//! **Recognising a copy.** A text said in a channel by someone else, whose first relay prefix
//! and rest (`<alice> hi`) are the author's name and text of a message this bridge committed
//! for that channel in the last [`RECENT_MAX_AGE`], is that bridge's copy of it. A copy is never
//! relayed: it is counted and dropped. Its account is from then on a parallel bridge *of that
//! channel*: a line of a longer message (split on IRC) counts as a copy when it is part of the
//! text, and its edits, deletes and reactions of messages both bridges carry are copies too.
//!
//! **Configured parallel bridges.** A network's `parallel_bridges` setting names the other
//! bridges' accounts there ([`Parallel::set_parallel_bridges`]), in the form its connector
//! reports senders and [`Parallel::set_account`] the bridge's own (opaque strings here,
//! compared lowercased). They are known parallel bridges of every channel of that network from
//! the start, before any copy: so a text of theirs that copies nothing committed here yet waits
//! for its original ([`ORIGINAL_WAIT`], [`ORIGINAL_WAIT_INLINE`]) in every channel of it, which
//! costs a delay only for texts they relay from channels this bridge does not carry.
//!
//! **One stage.** The router asks [`Parallel::judge`] once per inbound event (after the loop
//! breaker) and acts on one [`Verdict`]: relay it (with what [`Parallel::remember`] takes after
//! the commit), drop it as a copy, or hold a text from a known parallel bridge for the original
//! it may copy ([`Parallel::wait_for_original`], then [`Hold::relay`]). Recognition reads
//! nothing from the store or the config: when an event may be a copy, the answer is a
//! [`Judgement::Lookup`], and the router reads the [`StoreFacts`] (is the event's id, or its
//! target's, mapped here?) and hands them to [`Parallel::decide`]; a held text is judged again
//! with the same facts. While no parallel bridge is known, the answer costs one atomic load,
//! and only a relayed-looking text (`<alice> hi`) asks for the store.
//!
//! **Who steps back.** Of the bridges relaying a route (origin channel → destination channel),
//! the one whose account on the destination network sorts first (case-folded) keeps relaying:
//! it sends at once, always. Each other one *yields* the route: a delivery on it is not sent
//! but waits for a parallel bridge's copy, and is acknowledged with the copy's id (so replies,
//! edits and a catch-up that replays the copy find it). If no copy comes within
//! [`STAND_IN_AFTER`], the bridge stands in: it sends the delivery itself and takes the route
//! back (logged, counted). Yielded routes are kept in the store, so a restart does not show a
//! message twice.
//!
//! **The first message.** Without configured bridges, two bridges meet through the first
//! message on a route, which is therefore seen twice. Where a configured parallel bridge's
//! account sorts before ours on the destination, the first delivery on a route with nothing
//! recorded waits for that bridge's copy as a yielded route's deliveries do (and, like them,
//! alone in its queue): the copy yields the route; if none comes within [`FIRST_COPY_WAIT`]
//! (as long as the stand-in wait: paid once per route, and a later copy would be a double),
//! this bridge sends it and remembers that the route is its own, in the store as a
//! `parallel_routes` row with an empty account, so later deliveries (also after a restart)
//! go out at once. A route taken back by a stand-in is relayed at once from then on as well,
//! until a restart (its row is deleted, so the next first delivery waits again). Until the
//! bridge knows its own account on the destination (before its login) such a delivery is
//! retried shortly. So with each bridge configured with the other's accounts, every message
//! shows once, the first one included. Still doubled: a delivery whose copy comes later than
//! the wait, and the first one on a route this bridge relays after the bridge that sorts first
//! comes back (both send it; this bridge yields again on its copy).
//!
//! Owns: the recent texts, the known and configured parallel accounts, the yielded and
//! self-relayed routes and the deliveries waiting for a copy; the [`Standin`] endpoint that
//! holds them. Must not: name a network or a protocol (accounts and ids are opaque strings),
//! read the store while recognising an inbound event, or block on anything but its own locks
//! and rare store writes (a route left to another bridge, or taken back).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use std::hash::{Hash as _, Hasher as _};

use crate::model::{ChannelRef, Delivery, DeliveryAck, EventBody, Inbound};
use crate::store::{MappingRole, Store};
use crate::vocab::{AckFuture, CaseMapping, DeliveryError, Endpoint};

/// How long a yielded delivery waits for the parallel bridge's copy before this bridge sends it
/// itself and takes the route back.
pub const STAND_IN_AFTER: Duration = Duration::from_secs(15);

/// How long the first delivery on a route waits for the copy of a configured parallel bridge
/// whose account sorts first, before this bridge sends it itself and remembers that no
/// parallel bridge covers the route. As long as [`STAND_IN_AFTER`]: it is paid once per route
/// (the outcome is kept, across restarts), and a copy later than the wait is a message shown
/// twice, the very thing the wait is for; the other bridge's copy takes no less time to come
/// than on a yielded route.
pub const FIRST_COPY_WAIT: Duration = STAND_IN_AFTER;

/// The account recorded in the store for a route that no configured parallel bridge covered
/// when its first delivery waited (this bridge relays it; no wait again). Real accounts are
/// never empty.
const RELAYED_HERE: &str = "";

/// When a delivery whose sender is undecided ([`Held::Undecided`]) is tried again.
const UNDECIDED_RETRY: Duration = Duration::from_secs(1);

/// How long a committed text can be recognised in another bridge's copy.
pub const RECENT_MAX_AGE: Duration = Duration::from_mins(2);

/// How long a text from a known parallel bridge that matches nothing waits for this bridge's
/// own commit of the message it may copy (the other bridge can be faster than our connector),
/// when the wait holds up nothing else (a connector that queues its commits: IRC).
pub const ORIGINAL_WAIT: Duration = Duration::from_secs(5);

/// The same wait where it holds up the connector's later events (one that waits for each
/// commit: Matrix, Mattermost).
pub const ORIGINAL_WAIT_INLINE: Duration = Duration::from_secs(2);

/// The kind of a "copy" that is a message said in its own channel, relayed back to it.
const RETURNED: &str = "returned";

/// The most recent texts kept for recognising copies (older ones are forgotten first).
const RECENT_CAPACITY: usize = 2_048;

/// The most copies kept that arrived before the delivery they stand for was reached.
const SEEN_CAPACITY: usize = 4_096;

/// A text is compared on its first this many characters (after normalising).
const COMPARED_CHARS: usize = 2_000;

/// Counters; read them for logs and metrics.
#[derive(Debug, Default)]
pub struct ParallelStats {
    /// Copies of our messages said by a parallel bridge, dropped.
    pub copies: AtomicU64,
    /// Routes left to a parallel bridge.
    pub yielded: AtomicU64,
    /// Deliveries acknowledged by a parallel bridge's copy instead of being sent.
    pub covered: AtomicU64,
    /// Deliveries sent after all because no copy came in time (the route is taken back).
    pub stood_in: AtomicU64,
    /// First deliveries on a route that waited for a configured parallel bridge's copy in
    /// vain and were sent by this bridge (the route is this bridge's from then on).
    pub first_sent: AtomicU64,
}

/// A text committed lately, as a copy of it would read: digests, so that remembering one
/// costs no allocation (channels, author and text as [`channel_digest`] and [`text_digest`]).
struct Recent {
    message_id: i64,
    origin: u64,
    /// The first destinations; any more in `more_destinations`.
    destinations: [u64; 3],
    more_destinations: Vec<u64>,
    author: u64,
    /// Of author and text together.
    key: u64,
    /// The normalised text itself, kept only where a parallel bridge is known (a line of a
    /// longer text is recognised by being part of it).
    text: Option<Box<str>>,
    at: Instant,
    /// Destinations where a parallel bridge's copy of it was seen.
    copied: Vec<u64>,
}

impl Recent {
    fn goes_to(&self, destination: u64) -> bool {
        self.destinations.contains(&destination) || self.more_destinations.contains(&destination)
    }
}

/// A relayed-looking text from someone else that matched nothing: it may be a copy of a
/// message this bridge commits a moment later (the other bridge was faster).
struct Suspect {
    channel: ChannelRef,
    account: String,
    key: u64,
    /// What a delivery of the suspect itself (committed, since nothing recognised it) reads:
    /// [`text_digest`] of its sender's name and its whole text.
    relayed: u64,
    /// Its id on its network.
    remote_id: Option<String>,
    at: Instant,
}

/// The most suspects kept.
const SUSPECT_CAPACITY: usize = 256;

/// A text about to be committed, prepared by the stage ([`Verdict::Relay`], [`Hold::relay`])
/// before the inbound event is handed to the store.
pub struct Prepared {
    origin: u64,
    /// The folded origin, when it is not known yet.
    new_origin: Option<ChannelRef>,
    author: u64,
    key: u64,
    plain: String,
}

/// The stage's answer about one inbound event ([`Parallel::judge`], [`Parallel::decide`]).
pub enum Verdict {
    /// Not a copy: commit it. A text comes with what [`Parallel::remember`] takes once it is
    /// committed.
    Relay(Option<Prepared>),
    /// A parallel bridge's copy of a message this bridge carries: drop it (counted and logged
    /// here; a delivery waiting for it is acknowledged).
    Copy,
    /// A text from a known parallel bridge of its channel that copies nothing committed here
    /// yet: it may copy a message this bridge commits a moment later. Wait for that
    /// ([`Parallel::wait_for_original`]), then relay it ([`Hold::relay`]) unless it was.
    Hold(Hold),
}

/// The stage's first answer: a verdict, or the facts of the store it needs for one.
pub enum Judgement {
    /// The answer; nothing was needed from the store.
    Verdict(Verdict),
    /// The event may be a copy (a relayed-looking text, or an event by a known parallel
    /// bridge): the caller reads [`StoreFacts`] and hands them to [`Parallel::decide`].
    Lookup(Lookup),
}

/// What the store knows of an inbound event, read by the router when the stage asks for it
/// ([`Judgement::Lookup`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreFacts {
    /// The event's own remote id is mapped in its channel already (our own delivery seen
    /// coming back, or a replay): the store's to recognise, never a copy.
    pub known_here: bool,
    /// For an edit, delete or reaction: what its target's remote id is mapped to in the
    /// event's channel. Needed only when `known_here` is false.
    pub target: Option<(i64, MappingRole)>,
}

/// An event the stage needs [`StoreFacts`] for; hand it back to [`Parallel::decide`].
pub struct Lookup {
    seen: Seen,
}

/// A text held for the original it may copy: see [`Verdict::Hold`].
pub struct Hold {
    seen: Seen,
    /// `None` for a text said by this bridge's own account (no copy; nothing was read).
    facts: Option<StoreFacts>,
    prepared: Option<Prepared>,
}

impl Hold {
    /// Stop holding: relay the text (with what [`Parallel::remember`] takes once it is
    /// committed).
    #[must_use]
    pub fn relay(self) -> Option<Prepared> {
        self.prepared
    }
}

/// An inbound event as the stage reads it: its channel and sender's account folded, and the
/// plain text of a text.
struct Seen {
    destination: ChannelRef,
    other: String,
    plain: Option<String>,
}

/// One way of reading a text that may be a copy: the author its prefix names (any, for a
/// line without one) and the rest.
struct Reading {
    author: Option<u64>,
    /// [`text_digest`] of author and rest (with an author).
    key: u64,
    /// The normalised rest, to find it within a longer text (from a known parallel bridge).
    text: Option<String>,
}

/// One delivery's copy: the destination, the message it carries (for an edit, delete or
/// reaction: the message acted on) and the kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CopyKey {
    destination: ChannelRef,
    message_id: i64,
    kind: &'static str,
}

#[derive(Default)]
struct State {
    /// destination (folded) → accounts of parallel bridges seen there (folded)
    known: HashMap<ChannelRef, HashSet<String>>,
    /// the digests of the channels in `known`
    known_digests: HashSet<u64>,
    /// network → accounts of parallel bridges configured for it (folded): known parallel
    /// bridges of each of its channels
    configured: HashMap<String, HashSet<String>>,
    /// (origin, destination), folded → the account the route is left to
    yielded: HashMap<(ChannelRef, ChannelRef), String>,
    /// (origin, destination), folded: routes this bridge relays although a configured
    /// parallel bridge's account sorts first (its first delivery waited for a copy in vain, or
    /// this bridge stood in)
    relayed_here: HashSet<(ChannelRef, ChannelRef)>,
    /// deliveries waiting for their copy, oldest first per key
    waiting: HashMap<CopyKey, VecDeque<oneshot::Sender<Option<String>>>>,
    /// copies that came before their delivery was reached: their remote ids
    seen: HashMap<CopyKey, VecDeque<Option<String>>>,
    seen_order: VecDeque<CopyKey>,
    /// Copies committed before they were recognised, by (channel digest, [`text_digest`] of
    /// sender and text, when): their deliveries are acknowledged without a send.
    void: Vec<(u64, u64, Instant)>,
}

/// What this bridge knows about parallel bridges. Shared by the router (which asks about every
/// inbound event) and the outbox's [`Standin`] endpoints.
pub struct Parallel {
    store: Arc<Store>,
    /// network id → how it compares channel names (declared by its connector)
    case_mappings: HashMap<String, CaseMapping>,
    /// network → this bridge's own account there (folded), as its connector reports it
    accounts: RwLock<HashMap<String, String>>,
    recent: Mutex<VecDeque<Recent>>,
    /// channel digest → the folded channel, for every origin remembered
    origins: RwLock<HashMap<u64, ChannelRef>>,
    suspects: Mutex<VecDeque<Suspect>>,
    /// Whether any parallel bridge is known (most bridges never meet one).
    any_known: std::sync::atomic::AtomicBool,
    /// Rung after a text is remembered, while someone waits for an original.
    remembered: tokio::sync::Notify,
    waiting_for_originals: std::sync::atomic::AtomicUsize,
    state: Mutex<State>,
    stats: ParallelStats,
}

fn fold_account(account: &str) -> String {
    account.to_lowercase()
}

/// A name or text as a copy of it may show it: without invisible characters (anti-ping
/// marks), whitespace runs as one space, no space at either end, cut to [`COMPARED_CHARS`].
fn normalised(text: &str) -> impl Iterator<Item = char> + '_ {
    let mut space = false;
    let mut started = false;
    text.chars()
        .filter(|c| {
            !matches!(
                c,
                '\u{200b}'..='\u{200f}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{00ad}' | '\u{034f}'
            )
        })
        .take(COMPARED_CHARS)
        .flat_map(move |c| {
            if c.is_whitespace() {
                space = started;
                [None, None]
            } else {
                let before = (std::mem::take(&mut space) && started).then_some(' ');
                started = true;
                [before, Some(c)]
            }
        })
        .flatten()
}

fn normalise(text: &str) -> String {
    normalised(text).collect()
}

/// A channel's digest, its name folded by its network's case mapping.
fn channel_digest(case_mappings: &HashMap<String, CaseMapping>, channel: &ChannelRef) -> u64 {
    let mapping = case_mappings
        .get(&channel.network)
        .copied()
        .unwrap_or_default();
    let mut hasher = std::hash::DefaultHasher::new();
    channel.network.hash(&mut hasher);
    for c in channel.channel.chars() {
        mapping.fold_char(c).hash(&mut hasher);
    }
    hasher.finish()
}

/// An author's name (normalised, lowercase) as a digest.
fn author_digest(name: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for c in normalised(name).flat_map(char::to_lowercase) {
        c.hash(&mut hasher);
    }
    hasher.finish()
}

/// The digest of an author's digest and a normalised text: what a copy and its original share.
fn text_digest(author: u64, text: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    author.hash(&mut hasher);
    for c in normalised(text) {
        c.hash(&mut hasher);
    }
    hasher.finish()
}

/// Leave `route` to `account`; false when it already was.
fn leave_route(state: &mut State, route: &(ChannelRef, ChannelRef), account: &str) -> bool {
    if state.yielded.contains_key(route) {
        return false;
    }
    state.relayed_here.remove(route);
    state.yielded.insert(route.clone(), account.to_owned());
    true
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// Is `account` (folded) a known parallel bridge of `channel` (folded): seen there, or
    /// configured for its network?
    fn knows(&self, channel: &ChannelRef, account: &str) -> bool {
        self.known
            .get(channel)
            .is_some_and(|accounts| accounts.contains(account))
            || self
                .configured
                .get(&channel.network)
                .is_some_and(|accounts| accounts.contains(account))
    }

    fn any_known(&self) -> bool {
        !self.known.is_empty() || !self.configured.is_empty()
    }
}

/// What the first delivery on a route does about configured parallel bridges.
enum First {
    /// Send it: nothing configured sorts before this bridge there, or the route is settled.
    Send,
    /// Wait for the copy of the configured bridge with this account (it sorts first).
    Wait(String),
    /// This bridge's account on the destination is not known yet (not logged in): try later.
    Undecided,
}

impl Parallel {
    /// The parallel-bridge state, with the routes yielded before a restart read from `store`.
    #[must_use]
    /// `case_mappings` says how each network (by id) compares channel names.
    pub fn load(store: Arc<Store>, case_mappings: HashMap<String, CaseMapping>) -> Self {
        let mut state = State::default();
        match store.parallel_routes() {
            Ok(routes) => {
                for (origin, destination, account) in routes {
                    if account == RELAYED_HERE {
                        state.relayed_here.insert((origin, destination));
                        continue;
                    }
                    state
                        .known_digests
                        .insert(channel_digest(&case_mappings, &destination));
                    state
                        .known
                        .entry(destination.clone())
                        .or_default()
                        .insert(account.clone());
                    state.yielded.insert((origin, destination), account);
                }
            }
            Err(error) => {
                tracing::error!(error = %error, "Cannot read the routes left to parallel bridges; they are recognised again.");
            }
        }
        Self {
            store,
            case_mappings,
            accounts: RwLock::default(),
            recent: Mutex::default(),
            origins: RwLock::default(),
            suspects: Mutex::default(),
            any_known: std::sync::atomic::AtomicBool::new(state.any_known()),
            remembered: tokio::sync::Notify::new(),
            waiting_for_originals: std::sync::atomic::AtomicUsize::new(0),
            state: Mutex::new(state),
            stats: ParallelStats::default(),
        }
    }

    /// `channel` with its name folded by its network's case mapping.
    fn fold(&self, channel: &ChannelRef) -> ChannelRef {
        let mapping = self
            .case_mappings
            .get(&channel.network)
            .copied()
            .unwrap_or_default();
        ChannelRef::new(channel.network.clone(), mapping.fold(&channel.channel))
    }

    /// [`channel_digest`] of `channel`.
    fn channel_digest(&self, channel: &ChannelRef) -> u64 {
        channel_digest(&self.case_mappings, channel)
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &ParallelStats {
        &self.stats
    }

    /// A connector tells which account the bridge uses on `network` (after each login or
    /// nick change): the order of accounts decides which bridge steps back.
    pub fn set_account(&self, network: &str, account: &str) {
        self.accounts
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(network.to_owned(), fold_account(account));
    }

    /// The accounts on `network` of other bridges known to relay the same channels (the
    /// `parallel_bridges` setting): parallel bridges of each of its channels from the start,
    /// so that even the first message on a route is shown once.
    pub fn set_parallel_bridges(&self, network: &str, accounts: &[String]) {
        if accounts.is_empty() {
            return;
        }
        let mut state = lock(&self.state);
        state
            .configured
            .entry(network.to_owned())
            .or_default()
            .extend(accounts.iter().map(|account| fold_account(account)));
        self.any_known.store(true, Ordering::Release);
    }

    fn account(&self, network: &str) -> Option<String> {
        self.accounts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(network)
            .cloned()
    }

    /// Before a text is committed: what a copy of it would read (`plain` is its plain text).
    /// `None` for a text of nothing but spaces and invisible marks.
    fn prepared(&self, inbound: &Inbound, plain: String) -> Option<Prepared> {
        normalised(&plain).next()?;
        let origin = self.channel_digest(&inbound.origin);
        let new_origin = (!self
            .origins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&origin))
        .then(|| self.fold(&inbound.origin));
        let author = author_digest(&inbound.author.display_name);
        Some(Prepared {
            origin,
            new_origin,
            author,
            key: text_digest(author, &plain),
            plain,
        })
    }

    /// After a prepared text was committed as `message_id` for `destinations`.
    pub fn remember(&self, prepared: &Prepared, message_id: i64, destinations: &[ChannelRef]) {
        if destinations.is_empty() {
            return;
        }
        if let Some(origin) = prepared.new_origin.clone() {
            self.origins
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(prepared.origin, origin);
        }
        let now = Instant::now();
        let mut digests = [0; 3];
        let mut more_destinations = Vec::new();
        for (index, destination) in destinations.iter().enumerate() {
            match digests.get_mut(index) {
                Some(slot) => *slot = self.channel_digest(destination),
                None => more_destinations.push(self.channel_digest(destination)),
            }
        }
        let all = || {
            digests
                .iter()
                .take(destinations.len())
                .chain(&more_destinations)
        };
        let mut text = None;
        if self.any_known.load(Ordering::Acquire) {
            let state = lock(&self.state);
            if all().any(|d| state.known_digests.contains(d))
                || destinations
                    .iter()
                    .any(|d| state.configured.contains_key(&d.network))
            {
                text = Some(normalise(&prepared.plain).into_boxed_str());
            }
            drop(state);
            self.check_suspects(
                prepared,
                message_id,
                &all().copied().collect::<Vec<_>>(),
                now,
            );
        }
        let mut recent = lock(&self.recent);
        while recent.len() >= RECENT_CAPACITY
            || recent
                .front()
                .is_some_and(|r| now.duration_since(r.at) > RECENT_MAX_AGE)
        {
            recent.pop_front();
        }
        recent.push_back(Recent {
            message_id,
            origin: prepared.origin,
            destinations: digests,
            more_destinations,
            author: prepared.author,
            key: prepared.key,
            text,
            at: now,
            copied: Vec::new(),
        });
        drop(recent);
        if self.waiting_for_originals.load(Ordering::Acquire) > 0 {
            self.remembered.notify_waiters();
        }
    }

    /// The folded origin channel of a digest.
    fn origin(&self, digest: u64) -> Option<ChannelRef> {
        self.origins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&digest)
            .cloned()
    }

    /// A text just committed here was said a moment earlier in one of its destinations by
    /// another account, with its author's prefix: that account is a parallel bridge that was
    /// faster than us. Its copy went through (it is the meeting message); later ones will not.
    fn check_suspects(
        &self,
        prepared: &Prepared,
        message_id: i64,
        destinations: &[u64],
        now: Instant,
    ) {
        let met: Vec<Suspect> = {
            let mut suspects = lock(&self.suspects);
            if suspects.is_empty() {
                return;
            }
            suspects.retain(|s| now.duration_since(s.at) <= RECENT_MAX_AGE);
            let (met, rest): (Vec<Suspect>, Vec<Suspect>) = suspects.drain(..).partition(|s| {
                let channel = self.channel_digest(&s.channel);
                destinations.contains(&channel)
                    && channel != prepared.origin
                    && s.key == prepared.key
            });
            suspects.extend(rest);
            met
        };
        let Some(origin) = self.origin(prepared.origin) else {
            return;
        };
        for suspect in met {
            self.met(&suspect.channel, &suspect.account, &origin);
            // The copy itself was committed as a message of its channel: it is not relayed.
            let channel = self.channel_digest(&suspect.channel);
            {
                let mut state = lock(&self.state);
                state
                    .void
                    .retain(|(_, _, at)| now.duration_since(*at) <= RECENT_MAX_AGE);
                state.void.push((channel, suspect.relayed, now));
            }
            // And it is the copy of this message there: our delivery of it waits for nothing.
            self.copy_seen(
                CopyKey {
                    destination: suspect.channel.clone(),
                    message_id,
                    kind: "text",
                },
                Some(&origin),
                suspect.remote_id,
            );
        }
    }

    /// Remember a relayed-looking text that matched nothing, in case its original is
    /// committed here a moment later.
    fn suspect(
        &self,
        channel: &ChannelRef,
        account: &str,
        key: u64,
        relayed: u64,
        remote_id: Option<String>,
    ) {
        let mut suspects = lock(&self.suspects);
        if suspects.len() >= SUSPECT_CAPACITY {
            suspects.pop_front();
        }
        suspects.push_back(Suspect {
            channel: channel.clone(),
            account: account.to_owned(),
            key,
            relayed,
            remote_id,
            at: Instant::now(),
        });
        self.any_known.store(true, Ordering::Release);
    }

    /// The stage: what to do with `inbound`, asked once per inbound event before it is
    /// committed. Cheap and pure while no parallel bridge is known (one atomic load) for all
    /// but a relayed-looking text; an event that may be a copy asks for [`StoreFacts`]
    /// ([`Judgement::Lookup`]): nothing is read from the store here.
    #[must_use]
    pub fn judge(&self, inbound: &Inbound) -> Judgement {
        let any_known = self.any_known.load(Ordering::Acquire);
        let plain = match &inbound.body {
            EventBody::Text { text, .. } => {
                let plain = text.to_plain_text();
                if !any_known && crate::loop_breaker::split_relay_prefix(&plain).is_none() {
                    return Judgement::Verdict(Verdict::Relay(self.prepared(inbound, plain)));
                }
                Some(plain)
            }
            EventBody::Edit { .. } | EventBody::Delete { .. } | EventBody::Reaction { .. } => {
                if !any_known {
                    return Judgement::Verdict(Verdict::Relay(None));
                }
                None
            }
            EventBody::Membership(_) => return Judgement::Verdict(Verdict::Relay(None)),
        };
        let seen = Seen {
            destination: self.fold(&inbound.origin),
            other: fold_account(&inbound.author.id),
            plain,
        };
        if self.is_own(&seen) {
            return Judgement::Verdict(self.not_a_copy(inbound, seen, None));
        }
        let known = lock(&self.state).knows(&seen.destination, &seen.other);
        let may_be_copy = known
            || seen
                .plain
                .as_deref()
                .is_some_and(|plain| crate::loop_breaker::split_relay_prefix(plain).is_some());
        if may_be_copy {
            Judgement::Lookup(Lookup { seen })
        } else {
            Judgement::Verdict(self.not_a_copy(inbound, seen, None))
        }
    }

    /// The stage's answer for an event it asked [`StoreFacts`] for ([`Judgement::Lookup`]):
    /// [`Verdict::Relay`], [`Verdict::Copy`] or [`Verdict::Hold`].
    #[must_use]
    pub fn decide(&self, inbound: &Inbound, lookup: Lookup, facts: StoreFacts) -> Verdict {
        if self.recognise(inbound, &lookup.seen, &facts) {
            Verdict::Copy
        } else {
            self.not_a_copy(inbound, lookup.seen, Some(facts))
        }
    }

    /// Is `seen` said by this bridge's own account? Its lines are never copies.
    fn is_own(&self, seen: &Seen) -> bool {
        self.accounts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&seen.destination.network)
            .is_some_and(|own| *own == seen.other)
    }

    /// An event that is no copy now: a text from a known parallel bridge of its channel is
    /// held (it may copy a message not committed here yet), anything else relayed.
    fn not_a_copy(&self, inbound: &Inbound, seen: Seen, facts: Option<StoreFacts>) -> Verdict {
        let held = seen.plain.is_some() && lock(&self.state).knows(&seen.destination, &seen.other);
        if !held {
            return Verdict::Relay(seen.plain.and_then(|plain| self.prepared(inbound, plain)));
        }
        let prepared = seen
            .plain
            .clone()
            .and_then(|plain| self.prepared(inbound, plain));
        Verdict::Hold(Hold {
            seen,
            facts,
            prepared,
        })
    }

    /// Wait up to `wait` ([`ORIGINAL_WAIT`], [`ORIGINAL_WAIT_INLINE`]) for the message a held
    /// text ([`Verdict::Hold`]) copies to be committed here; true when it was: `inbound` is a
    /// copy (counted), to be dropped. Else relay it ([`Hold::relay`]). The store is not read
    /// again: the facts handed in before the hold stand.
    pub async fn wait_for_original(&self, inbound: &Inbound, hold: &Hold, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        self.waiting_for_originals.fetch_add(1, Ordering::AcqRel);
        let copy = loop {
            let remembered = self.remembered.notified();
            tokio::pin!(remembered);
            remembered.as_mut().enable();
            if !self.is_own(&hold.seen)
                && hold
                    .facts
                    .as_ref()
                    .is_some_and(|facts| self.recognise(inbound, &hold.seen, facts))
            {
                break true;
            }
            tokio::select! {
                () = remembered => {}
                () = tokio::time::sleep_until(deadline) => break false,
            }
        };
        self.waiting_for_originals.fetch_sub(1, Ordering::AcqRel);
        copy
    }

    /// Is `inbound` (read as `seen`, with the store's `facts`) a parallel bridge's copy of
    /// something this bridge carries? Then it must not be relayed (it is counted here); a
    /// delivery waiting for it is acknowledged.
    fn recognise(&self, inbound: &Inbound, seen: &Seen, facts: &StoreFacts) -> bool {
        // An event already known here (our own delivery seen coming back, or a replay) is the
        // store's to recognise.
        if facts.known_here {
            return false;
        }
        let (destination, other) = (&seen.destination, seen.other.as_str());
        let copy = match (&inbound.body, &seen.plain) {
            (EventBody::Text { .. }, Some(plain)) => {
                self.text_copy(destination, other, inbound, plain)
            }
            (EventBody::Edit { .. } | EventBody::Delete { .. } | EventBody::Reaction { .. }, _) => {
                self.change_copy(destination, other, facts.target, inbound.body.kind_name())
            }
            _ => None,
        };
        let Some((key, origin)) = copy else {
            return false;
        };
        self.stats.copies.fetch_add(1, Ordering::Relaxed);
        if key.kind == RETURNED {
            tracing::debug!(channel = %inbound.origin, account = %inbound.author.id, message_id = key.message_id, "A message said here came back through other bridges; not relayed.");
            return true;
        }
        tracing::debug!(channel = %inbound.origin, account = %inbound.author.id, message_id = key.message_id, kind = key.kind, "A parallel bridge's copy of a message this bridge carries; not relayed.");
        self.copy_seen(key, origin.as_ref(), inbound.remote_id.clone());
        true
    }

    /// A text copy: the message it copies and its origin.
    fn text_copy(
        &self,
        destination: &ChannelRef,
        other: &str,
        inbound: &Inbound,
        plain: &str,
    ) -> Option<(CopyKey, Option<ChannelRef>)> {
        let known = lock(&self.state).knows(destination, other);
        // How the copy may read: `<alice> hi`, or with a format that shows more first,
        // `[irc] <alice> hi`; from a known parallel bridge also a line without the prefix (a
        // long text's continuation).
        let mut readings: Vec<Reading> = Vec::with_capacity(3);
        let mut rest = plain;
        for _ in 0..2 {
            let Some((nick, after)) = crate::loop_breaker::split_relay_prefix(rest) else {
                break;
            };
            if normalised(after).next().is_some() {
                let author = author_digest(nick);
                readings.push(Reading {
                    author: Some(author),
                    key: text_digest(author, after),
                    text: known.then(|| normalise(after)),
                });
            }
            rest = after;
        }
        if known && normalised(plain).next().is_some() {
            readings.push(Reading {
                author: None,
                key: 0,
                text: Some(normalise(plain)),
            });
        }
        let destination_digest = self.channel_digest(destination);
        let found = readings
            .iter()
            .find_map(|reading| self.find_original(destination_digest, reading));
        let Some((message_id, origin)) = found else {
            // `<b> <alice> hi` where alice said `hi`: bridges relayed it back here. (A person
            // quoting `<alice> hi` has one prefix; a known parallel bridge never relays back.)
            if let Some(message_id) = readings
                .iter()
                .enumerate()
                .filter(|(index, reading)| reading.author.is_some() && (known || *index > 0))
                .find_map(|(_, reading)| self.said_here(destination_digest, reading.key))
            {
                return Some((
                    CopyKey {
                        destination: destination.clone(),
                        message_id,
                        kind: RETURNED,
                    },
                    None,
                ));
            }
            if !known && let Some(first) = readings.first() {
                let relayed = text_digest(author_digest(&inbound.author.display_name), plain);
                self.suspect(
                    destination,
                    other,
                    first.key,
                    relayed,
                    inbound.remote_id.clone(),
                );
            }
            return None;
        };
        self.met(destination, other, &origin);
        Some((
            CopyKey {
                destination: destination.clone(),
                message_id,
                kind: "text",
            },
            Some(origin),
        ))
    }

    /// A message said in `channel` lately whose author and text digest is `key`.
    fn said_here(&self, channel: u64, key: u64) -> Option<i64> {
        let now = Instant::now();
        lock(&self.recent)
            .iter()
            .rev()
            .take_while(|r| now.duration_since(r.at) <= RECENT_MAX_AGE)
            .find(|r| r.origin == channel && r.key == key)
            .map(|r| r.message_id)
    }

    /// The message a copy that reads as `reading` in `destination` stands for: its id and
    /// origin.
    fn find_original(&self, destination: u64, reading: &Reading) -> Option<(i64, ChannelRef)> {
        let now = Instant::now();
        let mut recent = lock(&self.recent);
        let candidates = || {
            recent
                .iter()
                .enumerate()
                .filter(|(_, r)| now.duration_since(r.at) <= RECENT_MAX_AGE)
                .filter(|(_, r)| r.origin != destination && r.goes_to(destination))
                .filter(|(_, r)| reading.author.is_none_or(|a| a == r.author))
        };
        let exact = |r: &Recent| reading.author.is_some() && r.key == reading.key;
        // Copies come in the order of their originals: the oldest same text not copied here
        // yet; else a repeated copy of one that was (the newest); else, from a known parallel
        // bridge, one line of a longer text.
        let first = candidates()
            .filter(|(_, r)| exact(r))
            .find(|(_, r)| !r.copied.contains(&destination))
            .map(|(index, _)| index);
        let index = first.or_else(|| {
            candidates()
                .rfind(|(_, r)| {
                    exact(r)
                        || reading.text.as_deref().is_some_and(|text| {
                            r.text
                                .as_deref()
                                .is_some_and(|t| t.len() > text.len() && t.contains(text))
                        })
                })
                .map(|(index, _)| index)
        })?;
        let original = recent.get_mut(index)?;
        if first.is_some() {
            original.copied.push(destination);
        }
        let (message_id, origin) = (original.message_id, original.origin);
        drop(recent);
        Some((message_id, self.origin(origin)?))
    }

    /// An edit, delete or reaction by a known parallel bridge of a message this bridge
    /// delivered (or whose delivery a copy acknowledged) in `destination`; `target` is what
    /// the store maps the message acted on to.
    fn change_copy(
        &self,
        destination: &ChannelRef,
        other: &str,
        target: Option<(i64, MappingRole)>,
        kind: &'static str,
    ) -> Option<(CopyKey, Option<ChannelRef>)> {
        let known = lock(&self.state).knows(destination, other);
        if !known {
            return None;
        }
        let (message_id, _) = target.filter(|(_, role)| *role == MappingRole::Delivery)?;
        Some((
            CopyKey {
                destination: destination.clone(),
                message_id,
                kind,
            },
            None,
        ))
    }

    /// A parallel bridge `other` relays `origin` into `destination`: remember it, and step
    /// back from the route when its account sorts before ours.
    fn met(&self, destination: &ChannelRef, other: &str, origin: &ChannelRef) {
        let own = self.account(&destination.network);
        let step_back = own.as_deref().is_some_and(|own| own > other);
        let route = (origin.clone(), destination.clone());
        let (first, yielded) = {
            let mut state = lock(&self.state);
            let first = state
                .known
                .entry(destination.clone())
                .or_default()
                .insert(other.to_owned());
            state.known_digests.insert(self.channel_digest(destination));
            self.any_known.store(true, Ordering::Release);
            let yielded = step_back && leave_route(&mut state, &route, other);
            (first, yielded)
        };
        if first {
            tracing::warn!(channel = %destination, account = other, "Another bridge relays the same messages into this channel; its copies are not relayed back.");
        }
        if yielded {
            self.record_yield(origin, destination, other);
        }
    }

    /// A route was just left to the parallel bridge `other`: count, log and keep it.
    fn record_yield(&self, origin: &ChannelRef, destination: &ChannelRef, other: &str) {
        self.stats.yielded.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(origin = %origin, destination = %destination, account = other, stand_in_after_s = STAND_IN_AFTER.as_secs(), "Leaving this route to the other bridge (its account sorts first): messages wait for its copy, and are sent by this bridge only if none comes in time.");
        if let Err(error) = self
            .store
            .set_parallel_route(origin, destination, Some(other))
        {
            tracing::warn!(error = %error, "Cannot record the route left to the other bridge; after a restart the next message may show twice.");
        }
    }

    /// What the first delivery on `route` (folded, not yielded) does about the parallel
    /// bridges configured for its destination's network.
    fn first(&self, state: &State, route: &(ChannelRef, ChannelRef)) -> First {
        if state.relayed_here.contains(route) {
            return First::Send;
        }
        let Some(configured) = state.configured.get(&route.1.network) else {
            return First::Send;
        };
        let Some(own) = self.account(&route.1.network) else {
            return First::Undecided;
        };
        configured
            .iter()
            .filter(|account| account.as_str() < own.as_str())
            .min()
            .map_or(First::Send, |account| First::Wait(account.clone()))
    }

    /// Whether `delivery` waits for a parallel bridge's copy: its route is yielded, or it is
    /// the first on a route a configured parallel bridge may cover.
    #[must_use]
    pub fn waits_for_copy(&self, delivery: &Delivery) -> bool {
        let state = lock(&self.state);
        if state.yielded.is_empty() && state.configured.is_empty() {
            return false;
        }
        let route = (
            self.fold(&delivery.origin),
            self.fold(&delivery.destination),
        );
        state.yielded.contains_key(&route) || matches!(self.first(&state, &route), First::Wait(_))
    }

    /// The first delivery on a route was acknowledged by a configured parallel bridge's copy:
    /// the route is that bridge's (already, when the copy was a text: [`Parallel::met`]).
    fn first_covered(&self, delivery: &Delivery) {
        let route = (
            self.fold(&delivery.origin),
            self.fold(&delivery.destination),
        );
        let account = {
            let mut state = lock(&self.state);
            if state.yielded.contains_key(&route) {
                return;
            }
            let First::Wait(account) = self.first(&state, &route) else {
                return;
            };
            leave_route(&mut state, &route, &account);
            account
        };
        self.record_yield(&route.0, &route.1, &account);
    }

    /// No copy of the first delivery on a route came in time: no configured parallel bridge
    /// covers the route; this bridge sends it, and later ones without waiting (also after a
    /// restart).
    fn first_sent(&self, delivery: &Delivery) {
        let route = (
            self.fold(&delivery.origin),
            self.fold(&delivery.destination),
        );
        {
            let mut state = lock(&self.state);
            // The copy came just too late (this delivery shows twice): the route is left.
            if state.yielded.contains_key(&route) {
                return;
            }
            state.relayed_here.insert(route.clone());
        }
        self.stats.first_sent.fetch_add(1, Ordering::Relaxed);
        tracing::info!(origin = %delivery.origin, destination = %delivery.destination, message_id = delivery.message_id, waited_s = FIRST_COPY_WAIT.as_secs(), "No configured parallel bridge relayed the first message on this route; this bridge relays the route.");
        if let Err(error) = self
            .store
            .set_parallel_route(&route.0, &route.1, Some(RELAYED_HERE))
        {
            tracing::warn!(error = %error, "Cannot record that this bridge relays the route; after a restart its first message waits for a parallel bridge once more.");
        }
    }

    /// A copy arrived: hand its id to the delivery waiting for it, or keep it for that
    /// delivery when the route is yielded and the delivery was not reached yet.
    fn copy_seen(&self, key: CopyKey, origin: Option<&ChannelRef>, remote_id: Option<String>) {
        let mut state = lock(&self.state);
        let mut remote_id = remote_id;
        if let Some(waiters) = state.waiting.get_mut(&key) {
            while let Some(waiter) = waiters.pop_front() {
                match waiter.send(remote_id) {
                    Ok(()) => {
                        if waiters.is_empty() {
                            state.waiting.remove(&key);
                        }
                        return;
                    }
                    // That delivery stopped waiting (it stood in, or shut down).
                    Err(back) => remote_id = back,
                }
            }
            state.waiting.remove(&key);
        }
        let yielded = match origin {
            Some(origin) => state
                .yielded
                .contains_key(&(origin.clone(), key.destination.clone())),
            None => state
                .yielded
                .keys()
                .any(|(_, destination)| *destination == key.destination),
        };
        if !yielded {
            return;
        }
        while state.seen_order.len() >= SEEN_CAPACITY {
            if let Some(old) = state.seen_order.pop_front()
                && let Some(ids) = state.seen.get_mut(&old)
            {
                ids.pop_front();
                if ids.is_empty() {
                    state.seen.remove(&old);
                }
            }
        }
        state.seen_order.push_back(key.clone());
        state.seen.entry(key).or_default().push_back(remote_id);
    }

    /// Is the route of `delivery` left to a parallel bridge?
    #[must_use]
    pub fn is_yielded(&self, delivery: &Delivery) -> bool {
        let state = lock(&self.state);
        !state.yielded.is_empty()
            && state.yielded.contains_key(&(
                self.fold(&delivery.origin),
                self.fold(&delivery.destination),
            ))
    }

    /// The copy `delivery` waits for, when its route is yielded (or it is the first on a route
    /// a configured parallel bridge whose account sorts first may cover) and a copy of it can
    /// be recognised: a text with words, or an edit, delete or reaction of a message delivered
    /// there. `None`: send it.
    fn hold(&self, delivery: &Delivery) -> Option<Held> {
        {
            let state = lock(&self.state);
            if state.yielded.is_empty()
                && state.seen.is_empty()
                && state.void.is_empty()
                && state.configured.is_empty()
            {
                return None;
            }
            if !state.void.is_empty()
                && let EventBody::Text { text, .. } = &delivery.body
            {
                let channel = self.channel_digest(&delivery.origin);
                let relayed = text_digest(
                    author_digest(&delivery.author.display_name),
                    &text.to_plain_text(),
                );
                // Kept until it expires: the copy may have gone to several channels.
                if state
                    .void
                    .iter()
                    .any(|(c, r, _)| *c == channel && *r == relayed)
                {
                    tracing::debug!(destination = %delivery.destination, message_id = delivery.message_id, "A parallel bridge's copy relayed before the bridges met; not sent.");
                    return Some(Held::Copied(None));
                }
            }
        }
        let key = match &delivery.body {
            EventBody::Text { text, .. } if !normalise(&text.to_plain_text()).is_empty() => {
                CopyKey {
                    destination: self.fold(&delivery.destination),
                    message_id: delivery.message_id,
                    kind: "text",
                }
            }
            EventBody::Edit { .. } | EventBody::Delete { .. } | EventBody::Reaction { .. } => {
                let target = delivery.target.as_ref()?;
                target.remote_id.as_ref()?;
                CopyKey {
                    destination: self.fold(&delivery.destination),
                    message_id: target.message_id,
                    kind: delivery.body.kind_name(),
                }
            }
            _ => return None,
        };
        let mut state = lock(&self.state);
        // A copy already seen acknowledges the delivery, even if the route was taken back
        // meanwhile (a stand-in ahead of it in the queue).
        if let Some(ids) = state.seen.get_mut(&key)
            && let Some(remote_id) = ids.pop_front()
        {
            if ids.is_empty() {
                state.seen.remove(&key);
            }
            return Some(Held::Copied(remote_id));
        }
        let route = (self.fold(&delivery.origin), key.destination.clone());
        let first = if state.yielded.contains_key(&route) {
            false
        } else {
            match self.first(&state, &route) {
                First::Send => return None,
                First::Undecided => return Some(Held::Undecided),
                First::Wait(_) => true,
            }
        };
        let (sender, receiver) = oneshot::channel();
        state.waiting.entry(key).or_default().push_back(sender);
        Some(Held::Waiting { receiver, first })
    }

    /// No copy of `delivery` came in time: take its route back.
    fn stand_in(&self, delivery: &Delivery) {
        let route = (
            self.fold(&delivery.origin),
            self.fold(&delivery.destination),
        );
        let account = {
            let mut state = lock(&self.state);
            // Not waited for again, not even as a first delivery (until a restart).
            state.relayed_here.insert(route.clone());
            state.yielded.remove(&route)
        };
        self.stats.stood_in.fetch_add(1, Ordering::Relaxed);
        if let Some(account) = account {
            tracing::warn!(origin = %delivery.origin, destination = %delivery.destination, account, message_id = delivery.message_id, waited_s = STAND_IN_AFTER.as_secs(), "The other bridge did not relay this message in time; this bridge sends it and relays this route again.");
            if let Err(error) = self.store.set_parallel_route(&route.0, &route.1, None) {
                tracing::warn!(error = %error, "Cannot record the route taken back; after a restart messages wait for the other bridge once more.");
            }
        }
    }
}

/// A held delivery's wait.
enum Held {
    /// The copy came first: its remote id.
    Copied(Option<String>),
    /// Waiting for the copy: on a yielded route, or (`first`) as the first delivery on a route
    /// a configured parallel bridge may cover.
    Waiting {
        receiver: oneshot::Receiver<Option<String>>,
        first: bool,
    },
    /// A parallel bridge is configured for the destination's network, and this bridge's own
    /// account there is not known yet (it is not logged in): who sends is not decided.
    Undecided,
}

/// An outbox endpoint that holds the deliveries of yielded routes until a parallel bridge's
/// copy acknowledges them, and sends everything else (and what no copy came for) through the
/// endpoint it wraps.
#[derive(Clone)]
pub struct Standin<E> {
    inner: E,
    parallel: Arc<Parallel>,
    shutdown: CancellationToken,
}

impl<E> Standin<E> {
    /// Wrap `inner`; a wait ends with a retry when `shutdown` is cancelled.
    pub fn new(inner: E, parallel: Arc<Parallel>, shutdown: CancellationToken) -> Self {
        Self {
            inner,
            parallel,
            shutdown,
        }
    }
}

impl<E: Endpoint> Endpoint for Standin<E> {
    fn window(&self) -> usize {
        self.inner.window()
    }

    fn exclusive(&self, delivery: &Delivery) -> bool {
        self.parallel.waits_for_copy(delivery) || self.inner.exclusive(delivery)
    }

    async fn send(&self, delivery: Delivery) -> Result<AckFuture, DeliveryError> {
        let (receiver, first) = match self.parallel.hold(&delivery) {
            None => return self.inner.send(delivery).await,
            Some(Held::Undecided) => {
                return Err(DeliveryError::Retry {
                    after: Some(UNDECIDED_RETRY),
                    reason: "a parallel bridge is configured there and this bridge's own \
                             account is not known yet (not logged in)"
                        .into(),
                });
            }
            Some(Held::Copied(remote_id)) => {
                self.parallel.stats.covered.fetch_add(1, Ordering::Relaxed);
                return Ok(Box::pin(async move { Ok(DeliveryAck { remote_id }) }));
            }
            Some(Held::Waiting { receiver, first }) => (receiver, first),
        };
        let wait = if first {
            FIRST_COPY_WAIT
        } else {
            STAND_IN_AFTER
        };
        let deadline = tokio::time::Instant::now() + wait;
        let this = self.clone();
        Ok(Box::pin(async move {
            let copied = tokio::select! {
                copy = receiver => copy.ok(),
                () = tokio::time::sleep_until(deadline) => None,
                () = this.shutdown.cancelled() => {
                    return Err(DeliveryError::Retry {
                        after: Some(Duration::ZERO),
                        reason: "stopped while waiting for a parallel bridge's copy".into(),
                    });
                }
            };
            if let Some(remote_id) = copied {
                this.parallel.stats.covered.fetch_add(1, Ordering::Relaxed);
                if first {
                    this.parallel.first_covered(&delivery);
                }
                return Ok(DeliveryAck { remote_id });
            }
            if first {
                this.parallel.first_sent(&delivery);
            } else {
                this.parallel.stand_in(&delivery);
            }
            this.inner.send(delivery).await?.await
        }))
    }
}

#[cfg(test)]
mod tests {
    /// The state over `store`, with IRC's folding on `net` and ASCII folding on `mm`.
    fn load(store: Arc<Store>) -> Parallel {
        Parallel::load(
            store,
            HashMap::from([
                ("net".to_owned(), CaseMapping::Rfc1459),
                ("mm".to_owned(), CaseMapping::Ascii),
            ]),
        )
    }

    use super::*;
    use crate::model::{Author, TextStyle};

    fn said(channel: &ChannelRef, author: &str, text: &str, remote_id: &str) -> Inbound {
        Inbound {
            origin: channel.clone(),
            remote_id: Some(remote_id.to_owned()),
            author: Author {
                id: author.to_owned(),
                display_name: author.to_owned(),
            },
            timestamp_ms: 0,
            body: EventBody::text(TextStyle::Normal, text),
            permalink: None,
        }
    }

    /// What a copy of a text would read, as the stage prepares it for [`Parallel::remember`].
    fn prepare(parallel: &Parallel, inbound: &Inbound) -> Option<Prepared> {
        let EventBody::Text { text, .. } = &inbound.body else {
            return None;
        };
        parallel.prepared(inbound, text.to_plain_text())
    }

    /// The stage's answer as the router gets it (with the store's facts when asked).
    fn verdict(parallel: &Parallel, inbound: &Inbound) -> Verdict {
        crate::router::judge(parallel, &parallel.store, inbound)
    }

    /// Is `inbound` recognised as a copy (without waiting)?
    fn is_copy(parallel: &Parallel, inbound: &Inbound) -> bool {
        matches!(verdict(parallel, inbound), Verdict::Copy)
    }

    /// Is `inbound` held for an original it may copy?
    fn is_held(parallel: &Parallel, inbound: &Inbound) -> bool {
        matches!(verdict(parallel, inbound), Verdict::Hold(_))
    }

    fn delivery(message_id: i64, origin: &ChannelRef, destination: &ChannelRef) -> Delivery {
        Delivery::sample(message_id, origin.clone(), destination.clone(), "x")
    }

    fn waiting(held: Option<Held>) -> oneshot::Receiver<Option<String>> {
        match held {
            Some(Held::Waiting { receiver, .. }) => receiver,
            _ => panic!("not waiting"),
        }
    }

    #[test]
    fn copies_match_their_originals_in_order_and_the_later_account_steps_back() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let parallel = load(Arc::clone(&store));
        parallel.set_account("mm", "Zed");
        let irc = ChannelRef::new("net", "#Chan");
        let mm = ChannelRef::new("mm", "town");
        for (id, text) in [(1, "ok"), (2, "ok"), (3, "mm says 12"), (4, "mm says 1")] {
            let prepared = prepare(&parallel, &said(&irc, "alice", text, "x")).unwrap();
            parallel.remember(&prepared, id, std::slice::from_ref(&mm));
        }
        // Nothing is held before the other bridge is known.
        assert!(parallel.hold(&delivery(2, &irc, &mm)).is_none());
        // Its copy of message 1 (it relays #chan too: "abe" sorts before "zed").
        assert!(is_copy(&parallel, &said(&mm, "abe", "<alice> ok", "p1")));
        assert_eq!(parallel.stats().yielded.load(Ordering::Relaxed), 1);
        assert_eq!(store.parallel_routes().unwrap().len(), 1);
        // Message 2 now waits for its copy, which is told from message 1's.
        let mut two = waiting(parallel.hold(&delivery(2, &irc, &mm)));
        let mut three = waiting(parallel.hold(&delivery(3, &irc, &mm)));
        let mut four = waiting(parallel.hold(&delivery(4, &irc, &mm)));
        assert!(is_copy(&parallel, &said(&mm, "abe", "<alice> ok", "p2")));
        assert_eq!(two.try_recv().unwrap(), Some("p2".to_owned()));
        // "mm says 1" is message 4's copy, not a part of message 3.
        assert!(is_copy(
            &parallel,
            &said(&mm, "abe", "<alice> mm says 1", "p4")
        ));
        assert_eq!(four.try_recv().unwrap(), Some("p4".to_owned()));
        assert!(three.try_recv().is_err());
        // A copy that came before its delivery was reached is kept for it.
        assert!(is_copy(
            &parallel,
            &said(&mm, "abe", "<alice> mm says 12", "p3")
        ));
        assert_eq!(three.try_recv().unwrap(), Some("p3".to_owned()));
        // Texts of no message here, and people, are not copies.
        assert!(!is_copy(
            &parallel,
            &said(&mm, "abe", "<alice> something else", "q")
        ));
        assert!(!is_copy(&parallel, &said(&mm, "carol", "ok", "r")));
        // Our own account's lines never are.
        assert!(!is_copy(&parallel, &said(&mm, "zed", "<alice> ok", "s")));
        // Standing in takes the route back, also in the store.
        parallel.stand_in(&delivery(5, &irc, &mm));
        assert!(parallel.hold(&delivery(5, &irc, &mm)).is_none());
        assert!(store.parallel_routes().unwrap().is_empty());
    }

    #[test]
    fn the_account_that_sorts_first_keeps_the_route_and_a_restart_keeps_a_yield() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let parallel = load(Arc::clone(&store));
        parallel.set_account("mm", "abe");
        let irc = ChannelRef::new("net", "#chan");
        let mm = ChannelRef::new("mm", "town");
        let prepared = prepare(&parallel, &said(&irc, "alice", "hi", "x")).unwrap();
        parallel.remember(&prepared, 1, std::slice::from_ref(&mm));
        assert!(is_copy(&parallel, &said(&mm, "zed", "<alice> hi", "p1")));
        assert_eq!(parallel.stats().yielded.load(Ordering::Relaxed), 0);
        assert!(parallel.hold(&delivery(2, &irc, &mm)).is_none());

        store.set_parallel_route(&irc, &mm, Some("zed")).unwrap();
        let restarted = load(Arc::clone(&store));
        assert!(restarted.is_yielded(&delivery(2, &irc, &mm)));
        let _waiting = waiting(restarted.hold(&delivery(2, &irc, &mm)));
    }

    #[test]
    fn a_configured_bridge_is_known_from_the_start_and_the_first_delivery_waits_for_its_copy() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let parallel = load(Arc::clone(&store));
        parallel.set_parallel_bridges("mm", &["Abe".to_owned()]);
        parallel.set_parallel_bridges("net", &["zoe".to_owned()]);
        let irc = ChannelRef::new("net", "#Chan");
        let other = ChannelRef::new("net", "#other");
        let mm = ChannelRef::new("mm", "town");
        for (id, origin, text) in [(1, &irc, "hi"), (2, &other, "yo"), (3, &other, "again")] {
            let prepared = prepare(&parallel, &said(origin, "alice", text, "x")).unwrap();
            parallel.remember(&prepared, id, std::slice::from_ref(&mm));
        }
        // Not logged in to the destination yet: undecided.
        assert!(matches!(
            parallel.hold(&delivery(1, &irc, &mm)),
            Some(Held::Undecided)
        ));
        parallel.set_account("mm", "zed");
        parallel.set_account("net", "brl");
        // Its texts may be copies before any copy was seen.
        assert!(is_held(&parallel, &said(&mm, "ABE", "<alice> soon", "p0")));
        assert!(!is_held(
            &parallel,
            &said(&mm, "carol", "<alice> soon", "p0")
        ));
        // The first delivery waits ("abe" sorts before "zed"), and its copy yields the route.
        assert!(parallel.waits_for_copy(&delivery(1, &irc, &mm)));
        let mut one = match parallel.hold(&delivery(1, &irc, &mm)) {
            Some(Held::Waiting { receiver, first }) => {
                assert!(first);
                receiver
            }
            _ => panic!("not waiting"),
        };
        assert!(is_copy(&parallel, &said(&mm, "abe", "<alice> hi", "p1")));
        assert_eq!(one.try_recv().unwrap(), Some("p1".to_owned()));
        assert!(parallel.is_yielded(&delivery(4, &irc, &mm)));
        assert_eq!(
            store.parallel_routes().unwrap(),
            vec![(parallel.fold(&irc), parallel.fold(&mm), "abe".to_owned())]
        );
        // Where this bridge's account sorts first ("brl" before "zoe"), nothing waits.
        assert!(parallel.hold(&delivery(5, &mm, &irc)).is_none());
        assert!(!parallel.waits_for_copy(&delivery(5, &mm, &irc)));
        // No copy came for the first delivery from #other: this bridge relays that route, and
        // nothing on it waits again, not even after a restart.
        let _two = waiting(parallel.hold(&delivery(2, &other, &mm)));
        parallel.first_sent(&delivery(2, &other, &mm));
        assert!(parallel.hold(&delivery(3, &other, &mm)).is_none());
        assert_eq!(parallel.stats().first_sent.load(Ordering::Relaxed), 1);
        let restarted = load(Arc::clone(&store));
        restarted.set_parallel_bridges("mm", &["abe".to_owned()]);
        restarted.set_account("mm", "zed");
        assert!(!restarted.waits_for_copy(&delivery(3, &other, &mm)));
        assert!(restarted.is_yielded(&delivery(4, &irc, &mm)));
        // A route never tried waits on its first delivery.
        let third = ChannelRef::new("net", "#third");
        assert!(restarted.waits_for_copy(&delivery(6, &third, &mm)));
        // The copy of a route relayed here, coming after all, yields it.
        let prepared = prepare(&restarted, &said(&other, "alice", "late", "x")).unwrap();
        restarted.remember(&prepared, 7, std::slice::from_ref(&mm));
        assert!(is_copy(&restarted, &said(&mm, "abe", "<alice> late", "p7")));
        assert!(restarted.is_yielded(&delivery(8, &other, &mm)));
    }

    #[test]
    fn without_configured_bridges_the_first_delivery_is_sent_at_once() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let parallel = load(store);
        let irc = ChannelRef::new("net", "#chan");
        let mm = ChannelRef::new("mm", "town");
        let prepared = prepare(&parallel, &said(&irc, "alice", "hi", "x")).unwrap();
        parallel.remember(&prepared, 1, std::slice::from_ref(&mm));
        assert!(parallel.hold(&delivery(1, &irc, &mm)).is_none());
        assert!(!parallel.waits_for_copy(&delivery(1, &irc, &mm)));
        // Not even before this bridge knows its own account.
        parallel.set_account("mm", "zed");
        assert!(parallel.hold(&delivery(1, &irc, &mm)).is_none());
    }

    #[test]
    fn a_format_that_shows_more_before_the_nick_is_read_too() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let parallel = load(store);
        let irc = ChannelRef::new("net", "#chan");
        let mm = ChannelRef::new("mm", "town");
        let prepared = prepare(&parallel, &said(&irc, "Alice", "hi  there", "x")).unwrap();
        parallel.remember(&prepared, 1, std::slice::from_ref(&mm));
        assert!(!is_copy(
            &parallel,
            &said(&mm, "abe", "[irc] <bob> hi there", "p0")
        ));
        assert!(is_copy(
            &parallel,
            &said(&mm, "abe", "[irc] <al\u{200b}ice> hi there", "p1")
        ));
    }

    #[test]
    fn a_message_relayed_back_into_its_own_channel_is_recognised() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let parallel = load(store);
        let irc = ChannelRef::new("net", "#chan");
        let mm = ChannelRef::new("mm", "town");
        let prepared = prepare(&parallel, &said(&mm, "mia", "hi", "x")).unwrap();
        parallel.remember(&prepared, 1, std::slice::from_ref(&irc));
        // Someone quoting her is a person.
        assert!(!is_copy(&parallel, &said(&mm, "abe", "<mia> hi", "q")));
        // Two bridges' prefixes: it went round.
        assert!(is_copy(
            &parallel,
            &said(&mm, "abe", "<brlb> <mia> hi", "p")
        ));
    }

    #[test]
    fn a_copy_faster_than_our_own_reading_of_the_original_still_introduces_the_bridges() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let parallel = load(Arc::clone(&store));
        parallel.set_account("mm", "zed");
        let irc = ChannelRef::new("net", "#chan");
        let mm = ChannelRef::new("mm", "town");
        // The copy first: not recognised (relayed as it is), but remembered.
        assert!(!is_copy(&parallel, &said(&mm, "abe", "<alice> hi", "p1")));
        let prepared = prepare(&parallel, &said(&irc, "alice", "hi", "x")).unwrap();
        parallel.remember(&prepared, 1, std::slice::from_ref(&mm));
        assert_eq!(parallel.stats().yielded.load(Ordering::Relaxed), 1);
        // From now on a text from that bridge may be a copy of something not read here yet.
        assert!(is_held(&parallel, &said(&mm, "abe", "<alice> next", "p2")));
        assert!(!is_held(
            &parallel,
            &said(&mm, "carol", "<alice> next", "p3")
        ));
    }

    #[test]
    fn normalising_drops_invisible_marks_and_folds_spaces() {
        assert_eq!(normalise("  a\u{200b}lice \n said   hi "), "alice said hi");
        assert_eq!(normalise("\u{feff}"), "");
        assert_eq!(normalise(&"x".repeat(5_000)).len(), COMPARED_CHARS);
    }
}
