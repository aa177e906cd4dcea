//! Group commit: one thread writes to the store for everyone, and every transaction carries
//! all the inbound events and delivery acknowledgements that arrived while the previous one
//! was being written.
//!
//! The durability contract is the store's, unchanged: a caller's future resolves only after the
//! transaction holding its event (or acknowledgement) committed, so a connector still
//! acknowledges its position on a network only after its event is durable, and a delivery still
//! leaves the outbox only in the transaction that records its acknowledgement. What changes is
//! the cost: under load, one transaction (and one set of WAL frames) serves many events. With
//! one event at a time it is the same single transaction as before.
//!
//! This module decides nothing about routing and does no I/O but the store's.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::model::Inbound;
use crate::store::{CommitOutcome, Completion, Queued, Route, StagedInbound, Store, StoreError};
use crate::vocab::Wake;
use crate::vocab::stages::{WriterLatency, observe};

/// The most requests one transaction carries (bounds the time a request waits behind others).
const MAX_GROUP: usize = 512;

/// One unit of work for the writer thread.
// Requests are moved once through a channel; boxing the event would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Request {
    /// An inbound event to commit with its outbox rows. The reply hands the event back, so
    /// that it is freed on its caller's thread, not on the writer's.
    Inbound {
        staged: StagedInbound,
        /// When it was queued (for the commit latency).
        queued_at: Instant,
        reply: oneshot::Sender<(Result<CommitOutcome, StoreError>, StagedInbound)>,
    },
    /// Deliveries acknowledged by their destination.
    Acks {
        acknowledged: Vec<Completion>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Errors of a group-commit call.
#[derive(Debug, thiserror::Error)]
pub enum GroupCommitError {
    /// The store refused the write; nothing of this request was committed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer thread is gone (the process is shutting down).
    #[error("the store writer has stopped")]
    Stopped,
}

/// The handle to the writer thread. Cheap to clone; the thread ends when every handle is gone.
#[derive(Clone)]
pub struct GroupCommit {
    requests: std_mpsc::Sender<Request>,
    latency: WriterLatency,
    heartbeat: Heartbeat,
}

/// How often an idle writer thread shows it is alive ([`Heartbeat`]).
pub const IDLE_BEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// The writer thread's sign of life: advanced after every transaction, and every
/// [`IDLE_BEAT`] while it waits for work. A heartbeat that stopped moving is a writer stuck in
/// a transaction (or gone), which `/healthz` and the systemd watchdog report. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    since: Instant,
    /// Milliseconds from `since` to the last beat.
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            since: Instant::now(),
            last_ms: Arc::default(),
        }
    }
}

impl Heartbeat {
    fn beat(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long ago the writer last showed it was alive.
    #[must_use]
    pub fn age(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(
            self.last_ms.load(std::sync::atomic::Ordering::Relaxed),
        );
        self.since.elapsed().saturating_sub(last)
    }
}

impl GroupCommit {
    /// Start the writer thread over `store`. Right after each commit, `wake` is handed the
    /// outbox rows it created, before any caller hears of it.
    #[must_use]
    pub fn start(store: Arc<Store>, wake: Arc<dyn Wake>) -> Self {
        let (requests, receiver) = std_mpsc::channel();
        let latency = WriterLatency::default();
        let measured = latency.clone();
        let heartbeat = Heartbeat::default();
        let beating = heartbeat.clone();
        std::thread::Builder::new()
            .name("tribridge-store-writer".into())
            .spawn(move || write_loop(&store, wake.as_ref(), &receiver, &measured, &beating))
            .expect("spawn the store writer thread");
        Self {
            requests,
            latency,
            heartbeat,
        }
    }

    /// The writer thread's sign of life.
    #[must_use]
    pub fn heartbeat(&self) -> &Heartbeat {
        &self.heartbeat
    }

    /// What the writer measures (for [`crate::metrics`]).
    #[must_use]
    pub fn latency(&self) -> &WriterLatency {
        &self.latency
    }

    /// Commit an inbound event with one outbox row per route; resolves once it is durable.
    pub async fn commit_inbound(
        &self,
        inbound: Inbound,
        protocol: &'static str,
        routes: Vec<Route>,
    ) -> Result<CommitOutcome, GroupCommitError> {
        self.enqueue_inbound(inbound, protocol, routes).await
    }

    /// Queue an inbound event for commit now (events are committed in the order they are
    /// queued); the returned future resolves once it is durable.
    pub fn enqueue_inbound(
        &self,
        inbound: Inbound,
        protocol: &'static str,
        routes: Vec<Route>,
    ) -> impl std::future::Future<Output = Result<CommitOutcome, GroupCommitError>> + Send + 'static
    {
        // Staged here, on the caller's thread: the writer thread only writes.
        let staged = StagedInbound::new(inbound, protocol, routes);
        let (reply, outcome) = oneshot::channel();
        let queued = staged.map(|staged| {
            self.requests
                .send(Request::Inbound {
                    staged,
                    queued_at: Instant::now(),
                    reply,
                })
                .map_err(|_| GroupCommitError::Stopped)
        });
        async move {
            queued??;
            let (result, staged) = outcome.await.map_err(|_| GroupCommitError::Stopped)?;
            drop(staged);
            Ok(result?)
        }
    }

    /// Record acknowledged deliveries (they leave the outbox); resolves once that is durable.
    pub async fn complete_deliveries(
        &self,
        acknowledged: Vec<Completion>,
    ) -> Result<(), GroupCommitError> {
        self.enqueue_completions(acknowledged).await
    }

    /// Queue acknowledged deliveries for recording now; the returned future resolves once that
    /// is durable (dropping it does not cancel the write).
    pub fn enqueue_completions(
        &self,
        acknowledged: Vec<Completion>,
    ) -> impl std::future::Future<Output = Result<(), GroupCommitError>> + Send + 'static {
        let (reply, outcome) = oneshot::channel();
        let queued = self
            .requests
            .send(Request::Acks {
                acknowledged,
                reply,
            })
            .map_err(|_| GroupCommitError::Stopped);
        async move {
            queued?;
            Ok(outcome.await.map_err(|_| GroupCommitError::Stopped)??)
        }
    }
}

fn write_loop(
    store: &Store,
    wake: &dyn Wake,
    receiver: &std_mpsc::Receiver<Request>,
    latency: &WriterLatency,
    heartbeat: &Heartbeat,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    loop {
        heartbeat.beat();
        let first = match receiver.recv_timeout(IDLE_BEAT) {
            Ok(first) => first,
            Err(std_mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        group.push(first);
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        latency.group_size.observe(group.len() as f64);
        write_group(store, wake, group.drain(..), latency);
    }
}

fn write_group(
    store: &Store,
    wake: &dyn Wake,
    group: impl Iterator<Item = Request>,
    latency: &WriterLatency,
) {
    let mut events = Vec::new();
    let mut event_replies = Vec::new();
    let mut queued = Vec::new();
    let mut acks = Vec::new();
    let mut ack_replies = Vec::new();
    for request in group {
        match request {
            Request::Inbound {
                staged,
                queued_at,
                reply,
            } => {
                events.push(staged);
                queued.push(queued_at);
                event_replies.push(reply);
            }
            Request::Acks {
                acknowledged,
                reply,
            } => {
                let networks: Vec<String> = acknowledged
                    .iter()
                    .map(|completion| completion.destination.network.clone())
                    .collect();
                acks.extend(acknowledged);
                ack_replies.push((reply, networks));
            }
        }
    }
    let started = Instant::now();
    let outcome = store.commit_group(&acks, &mut events);
    let committed = Instant::now();
    observe(&latency.transaction, committed - started);
    for queued_at in queued {
        observe(&latency.commit, committed - queued_at);
    }
    for queued in outcome.queued {
        match queued {
            Queued::Announced(pending) => wake.queued(pending),
            Queued::Stored(destination) => wake.wake(&destination),
        }
    }
    for ((reply, result), staged) in event_replies.into_iter().zip(outcome.events).zip(events) {
        let _ = reply.send((result, staged));
    }
    match outcome.acks {
        Ok(()) => {
            for (reply, networks) in ack_replies {
                // A network this instance lost (per-network leases): not recorded.
                let refused = networks
                    .iter()
                    .any(|network| outcome.refused.contains(network));
                let _ = reply.send(if refused {
                    Err(StoreError::Fenced { token: 0 })
                } else {
                    Ok(())
                });
            }
        }
        Err(error) => {
            let message = error.to_string();
            for (reply, _) in ack_replies {
                let _ = reply.send(Err(StoreError::Group(message.clone())));
            }
        }
    }
}
