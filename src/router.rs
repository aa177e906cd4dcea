//! The router: decides where an inbound event goes and commits it with its outbox rows.
//!
//! It never opens a socket and never names a network or protocol: the gateways are data (a
//! [`Topology`]), and the only thing it does with an event is look up its destinations and hand
//! both to the store in one transaction, then wake the destinations' outbox workers.
//!
//! Before committing, each submit path ([`Router::submit`], [`Router::submit_queued`],
//! [`Router::submit_blocking`]) runs the loop breaker, then asks the parallel-bridge stage
//! ([`crate::parallel`]) once and acts on its one answer: relay, drop as a copy, or hold a text
//! for its original ([`crate::parallel::ORIGINAL_WAIT_INLINE`] inline,
//! [`crate::parallel::ORIGINAL_WAIT`] when queued; not at all on the calling thread). The
//! router reads the store for the stage only when the stage asks ([`Judgement::Lookup`]),
//! which never happens for an ordinary event while no parallel bridge is known.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::group_commit::{GroupCommit, GroupCommitError};
use crate::model::{ChannelRef, EventBody, Inbound};
use crate::parallel::{Judgement, Parallel, Prepared, StoreFacts, Verdict};
use crate::store::{CommitOutcome, Route, Store, StoreError};
use crate::vocab::Status;
pub use crate::vocab::Wake;
use crate::vocab::{Capabilities, CaseMapping, GatewayConfig, People};

/// The gateways as a lookup structure: which channels each channel relays to.
///
/// Invariant: two names of one channel (`#Civic` and `#civic` on IRC) are one key, folded by
/// the case mapping its network declares; a destination reachable through several gateways
/// gets each message once.
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// source channel (folded) → routes
    routes: HashMap<ChannelKey, Vec<Route>>,
    /// every destination channel, in a stable order
    destinations: Vec<ChannelRef>,
    /// network id → what its connector declared
    networks: HashMap<String, Capabilities>,
}

/// A channel as the routing table compares it: its network id and its folded name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ChannelKey {
    network: String,
    channel: String,
}

impl Topology {
    /// Build the routing table from the networks' capabilities (by network id) and the
    /// gateways.
    #[must_use]
    pub fn new<'a>(
        networks: impl IntoIterator<Item = (&'a str, Capabilities)>,
        gateways: &[GatewayConfig],
    ) -> Self {
        let mut topology = Topology {
            networks: networks
                .into_iter()
                .map(|(id, capabilities)| (id.to_owned(), capabilities))
                .collect(),
            ..Topology::default()
        };
        let mut destinations: BTreeMap<ChannelKey, ChannelRef> = BTreeMap::new();
        for gateway in gateways {
            for source in gateway.channels.iter().filter(|c| c.direction.is_source()) {
                let source_ref = ChannelRef::new(&source.network, &source.channel);
                let key = channel_key(&topology.networks, &source_ref);
                for destination in gateway
                    .channels
                    .iter()
                    .filter(|c| c.direction.is_destination())
                {
                    let destination_ref =
                        ChannelRef::new(&destination.network, &destination.channel);
                    let destination_key = channel_key(&topology.networks, &destination_ref);
                    if destination_key == key {
                        continue;
                    }
                    let routes = topology.routes.entry(key.clone()).or_default();
                    // A channel reachable through two gateways gets the message once.
                    if routes
                        .iter()
                        .any(|r| channel_key(&topology.networks, &r.destination) == destination_key)
                    {
                        continue;
                    }
                    routes.push(Route {
                        gateway: gateway.name.clone(),
                        destination: destination_ref.clone(),
                    });
                    destinations.insert(destination_key, destination_ref);
                }
            }
        }
        topology.destinations = destinations.into_values().collect();
        topology
    }

    /// Where an event said in `origin` goes.
    #[must_use]
    pub fn routes(&self, origin: &ChannelRef) -> &[Route] {
        self.routes
            .get(&channel_key(&self.networks, origin))
            .map_or(&[], Vec::as_slice)
    }

    /// Every channel something can be delivered to.
    #[must_use]
    pub fn destinations(&self) -> &[ChannelRef] {
        &self.destinations
    }

    /// The protocol name of a network.
    #[must_use]
    pub fn protocol(&self, network: &str) -> &'static str {
        self.networks
            .get(network)
            .map_or("unknown", |capabilities| capabilities.protocol)
    }

    /// How each network compares channel names and nicks, by network id.
    #[must_use]
    pub fn case_mappings(&self) -> HashMap<String, CaseMapping> {
        self.networks
            .iter()
            .map(|(id, capabilities)| (id.clone(), capabilities.case_mapping))
            .collect()
    }
}

/// A channel as the routing table compares it: its name folded by its network's case mapping
/// (exactly, for a network no connector declared).
fn channel_key(networks: &HashMap<String, Capabilities>, channel: &ChannelRef) -> ChannelKey {
    let mapping = networks
        .get(&channel.network)
        .map_or(CaseMapping::Exact, |capabilities| capabilities.case_mapping);
    ChannelKey {
        network: channel.network.clone(),
        channel: mapping.fold(&channel.channel),
    }
}

/// Counters the router keeps; read them for logs and metrics.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Events committed with their outbox rows.
    pub committed: AtomicU64,
    /// Events dropped as echoes of our own deliveries.
    pub echoes: AtomicU64,
    /// Events dropped because the same network id was already committed.
    pub duplicates: AtomicU64,
    /// Events from channels that route nowhere (not in a gateway, or `out` only).
    pub unrouted: AtomicU64,
    /// Edits, deletes and reactions of messages the bridge never saw.
    pub unknown_targets: AtomicU64,
    /// Outbox rows created.
    pub deliveries_queued: AtomicU64,
    /// Messages dropped because bridges were passing them around in a loop.
    pub loops_broken: AtomicU64,
}

/// Errors from submitting an event.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The store failed; the event was not committed and the caller must not acknowledge it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store writer stopped (shutdown); the event was not committed.
    #[error("store writer stopped")]
    Stopped,
}

impl From<GroupCommitError> for RouteError {
    fn from(error: GroupCommitError) -> Self {
        match error {
            GroupCommitError::Store(error) => RouteError::Store(error),
            GroupCommitError::Stopped => RouteError::Stopped,
        }
    }
}

/// The router handle connectors submit events to. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    /// Replaced whole by a reload ([`Router::set_topology`]); each event reads it once.
    topology: Arc<std::sync::RwLock<Arc<Topology>>>,
    store: Arc<Store>,
    writer: GroupCommit,
    wake: Arc<dyn Wake>,
    stats: Arc<RouterStats>,
    parallel: Arc<Parallel>,
    people: Arc<People>,
    status: Arc<Status>,
}

impl Router {
    /// A router over a topology and a store; `wake` is told about new outbox rows. Starts the
    /// store's writer thread ([`GroupCommit`]), which ends with the last clone of the router.
    #[must_use]
    pub fn new(topology: Arc<Topology>, store: Arc<Store>, wake: Arc<dyn Wake>) -> Self {
        let parallel = Arc::new(Parallel::load(Arc::clone(&store), topology.case_mappings()));
        let known = store.people().unwrap_or_else(|error| {
            tracing::warn!(error = %error, "Could not read the people directory; mentions start from nobody.");
            Vec::new()
        });
        let people = Arc::new(People::load(topology.case_mappings(), known));
        Self {
            topology: Arc::new(std::sync::RwLock::new(topology)),
            parallel,
            people,
            status: Arc::default(),
            writer: GroupCommit::start(Arc::clone(&store), Arc::clone(&wake)),
            store,
            wake,
            stats: Arc::new(RouterStats::default()),
        }
    }

    /// What the router knows about parallel bridges (shared with the outbox's endpoints).
    #[must_use]
    pub fn parallel(&self) -> &Arc<Parallel> {
        &self.parallel
    }

    /// The people directory: learnt from every event committed (its author, a nick change),
    /// read by connectors to turn names into mentions and mentions into names.
    #[must_use]
    pub fn people(&self) -> &Arc<People> {
        &self.people
    }

    /// Each network's connection now: connectors report theirs, every submitted event stamps
    /// its network's last event (read by the admin socket's `status`).
    #[must_use]
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// A connector tells which account the bridge uses on `network` (after each login or
    /// nick change), so that copies said by it are told apart from other bridges' copies.
    pub fn set_account(&self, network: &str, account: &str) {
        self.parallel.set_account(network, account);
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    /// The counters, shared (for [`crate::metrics`]).
    #[must_use]
    pub fn shared_stats(&self) -> Arc<RouterStats> {
        Arc::clone(&self.stats)
    }

    /// The topology now.
    #[must_use]
    pub fn topology(&self) -> Arc<Topology> {
        Arc::clone(
            &self
                .topology
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Route by `topology` from now on (a reload): every clone of this router sees it. An event
    /// routed before keeps the routes it was committed with.
    pub fn set_topology(&self, topology: Arc<Topology>) {
        self.people.add_case_mappings(topology.case_mappings());
        *self
            .topology
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = topology;
    }

    /// The group-commit writer, shared with the outbox for acknowledgements.
    #[must_use]
    pub fn writer(&self) -> &GroupCommit {
        &self.writer
    }

    /// Commit an inbound event with one outbox row per destination, then wake those
    /// destinations. When this returns `Ok`, the event is durable and the connector may
    /// acknowledge its position on the network. Events submitted concurrently (from several
    /// connectors) share transactions ([`GroupCommit`]).
    pub async fn submit(&self, inbound: Inbound) -> Result<CommitOutcome, RouteError> {
        self.status.event(&inbound.origin.network);
        let topology = self.topology();
        let routes = topology.routes(&inbound.origin).to_vec();
        if routes.is_empty() {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(origin = %inbound.origin, "Event from a channel that routes nowhere; dropped.");
            return Ok(CommitOutcome::Committed {
                message_id: 0,
                destinations: Vec::new(),
            });
        }
        let dropped = Ok(CommitOutcome::Committed {
            message_id: 0,
            destinations: Vec::new(),
        });
        if self.breaks_loop(&inbound) {
            return dropped;
        }
        let prepared = match self.judge(&inbound) {
            Verdict::Relay(prepared) => prepared,
            Verdict::Copy => return dropped,
            Verdict::Hold(hold) => {
                if self
                    .parallel
                    .wait_for_original(&inbound, &hold, crate::parallel::ORIGINAL_WAIT_INLINE)
                    .await
                {
                    return dropped;
                }
                hold.relay()
            }
        };
        let protocol = topology.protocol(&inbound.origin.network);
        let mut inbound = inbound;
        self.introduce(&mut inbound);
        let outcome = self
            .writer
            .commit_inbound(inbound, protocol, routes)
            .await?;
        self.account(&outcome, prepared);
        Ok(outcome)
    }

    /// Queue an event for commit now, in the order of calls, without waiting for it: for a
    /// connector that has no position to acknowledge (IRC). The commit's outcome is counted
    /// and its destinations woken as with [`Router::submit`]; an error is logged (the event is
    /// lost, as it would be if the caller had waited). The returned future resolves when the
    /// commit is done; dropping it does not cancel the commit. Needs a Tokio runtime.
    ///
    /// One exception to the order: a text from a parallel bridge that may copy a message not
    /// committed here yet waits for it first ([`Parallel::wait_for_original`]), so later
    /// events of its channel may overtake it.
    pub fn submit_queued(&self, inbound: Inbound) -> impl Future<Output = ()> + Send + 'static {
        self.status.event(&inbound.origin.network);
        let topology = self.topology();
        let routes = topology.routes(&inbound.origin).to_vec();
        let done = if routes.is_empty() {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            None
        } else if self.breaks_loop(&inbound) {
            None
        } else {
            match self.judge(&inbound) {
                Verdict::Relay(prepared) => Some(self.enqueue(inbound, routes, prepared)),
                Verdict::Copy => None,
                Verdict::Hold(hold) => {
                    let this = self.clone();
                    Some(tokio::spawn(async move {
                        if !this
                            .parallel
                            .wait_for_original(&inbound, &hold, crate::parallel::ORIGINAL_WAIT)
                            .await
                        {
                            let _ = this.enqueue(inbound, routes, hold.relay()).await;
                        }
                    }))
                }
            }
        };
        async move {
            if let Some(done) = done {
                let _ = done.await;
            }
        }
    }

    /// Show a linked person (`[[identity]]`) under their one name everywhere, and let the
    /// people directory learn the author.
    fn introduce(&self, inbound: &mut Inbound) {
        if let Some(name) = self
            .people
            .identities()
            .name(&inbound.origin.network, &inbound.author.id)
        {
            name.clone_into(&mut inbound.author.display_name);
        }
        self.people.learn(inbound);
    }

    /// Queue a commit; the task ends once it is done and accounted for.
    fn enqueue(
        &self,
        inbound: Inbound,
        routes: Vec<Route>,
        prepared: Option<Prepared>,
    ) -> tokio::task::JoinHandle<()> {
        let origin = inbound.origin.clone();
        let protocol = self.topology().protocol(&inbound.origin.network);
        let mut inbound = inbound;
        self.introduce(&mut inbound);
        let committed = self.writer.enqueue_inbound(inbound, protocol, routes);
        let this = self.clone();
        tokio::spawn(async move {
            match committed.await {
                Ok(outcome) => this.account(&outcome, prepared),
                Err(error) => {
                    tracing::error!(origin = %origin, error = %error, "Could not store a message; it is lost.");
                }
            }
        })
    }

    /// Like [`Router::submit`], on the calling thread (for benchmarks and pure tests).
    pub fn submit_blocking(&self, inbound: &Inbound) -> Result<CommitOutcome, RouteError> {
        self.status.event(&inbound.origin.network);
        let topology = self.topology();
        let routes = topology.routes(&inbound.origin);
        if routes.is_empty() {
            self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
            return Ok(CommitOutcome::Committed {
                message_id: 0,
                destinations: Vec::new(),
            });
        }
        let dropped = Ok(CommitOutcome::Committed {
            message_id: 0,
            destinations: Vec::new(),
        });
        if self.breaks_loop(inbound) {
            return dropped;
        }
        let prepared = match self.judge(inbound) {
            Verdict::Relay(prepared) => prepared,
            Verdict::Copy => return dropped,
            // No waiting on the calling thread: a held text is relayed at once.
            Verdict::Hold(hold) => hold.relay(),
        };
        let protocol = topology.protocol(&inbound.origin.network);
        self.people.learn(inbound);
        let outcome = self.store.commit_inbound(inbound, protocol, routes)?;
        self.account(&outcome, prepared);
        if let CommitOutcome::Committed { destinations, .. } = &outcome {
            for destination in destinations {
                self.wake.wake(destination);
            }
        }
        Ok(outcome)
    }

    /// The parallel-bridge stage's one answer about `inbound` (see [`judge`]).
    fn judge(&self, inbound: &Inbound) -> Verdict {
        judge(&self.parallel, &self.store, inbound)
    }

    /// A text (or edit) whose relay prefixes show bridges passing it around: counted, logged,
    /// and not committed.
    fn breaks_loop(&self, inbound: &Inbound) -> bool {
        let (EventBody::Text { text, .. } | EventBody::Edit { text, .. }) = &inbound.body else {
            return false;
        };
        let plain = text.to_plain_text();
        if !crate::loop_breaker::is_looping(&plain) {
            return false;
        }
        let count = self.stats.loops_broken.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            origin = %inbound.origin,
            depth = crate::loop_breaker::relay_depth(&plain),
            count,
            "Message relayed by bridges in a loop (nested relay prefixes); dropped."
        );
        true
    }

    /// Count what a commit did (the store writer has already woken the destinations), and
    /// remember a committed text for recognising parallel bridges' copies of it.
    fn account(&self, outcome: &CommitOutcome, prepared: Option<Prepared>) {
        match outcome {
            CommitOutcome::Committed {
                message_id,
                destinations,
            } => {
                if let Some(prepared) = prepared {
                    self.parallel.remember(&prepared, *message_id, destinations);
                }
                self.stats.committed.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .deliveries_queued
                    .fetch_add(destinations.len() as u64, Ordering::Relaxed);
            }
            CommitOutcome::Echo { message_id } => {
                self.stats.echoes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(message_id, "Echo of our own delivery; dropped.");
            }
            CommitOutcome::UnknownTarget => {
                self.stats.unknown_targets.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "Edit, delete or reaction of a message never bridged or already forgotten; dropped."
                );
            }
            CommitOutcome::Duplicate { message_id } => {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(message_id, "Event already committed; dropped.");
            }
        }
    }
}

/// Ask the parallel-bridge stage about `inbound`: its answer, with the store read only when
/// the stage asks for [`StoreFacts`] (an event that may be a copy; never while no parallel
/// bridge is known, except for a relayed-looking text).
pub(crate) fn judge(parallel: &Parallel, store: &Store, inbound: &Inbound) -> Verdict {
    match parallel.judge(inbound) {
        Judgement::Verdict(verdict) => verdict,
        Judgement::Lookup(lookup) => parallel.decide(inbound, lookup, store_facts(store, inbound)),
    }
}

/// What the store knows of `inbound`: whether its own id is mapped in its channel, and else
/// what the target of an edit, delete or reaction is mapped to. A failed read counts as
/// unmapped.
fn store_facts(store: &Store, inbound: &Inbound) -> StoreFacts {
    let lookup = |remote_id: &str| store.lookup(&inbound.origin, remote_id).ok().flatten();
    let known_here = inbound.remote_id.as_deref().and_then(lookup).is_some();
    let target = match &inbound.body {
        EventBody::Edit { target, .. }
        | EventBody::Delete { target }
        | EventBody::Reaction { target, .. }
            if !known_here =>
        {
            lookup(target)
        }
        _ => None,
    };
    StoreFacts { known_here, target }
}
