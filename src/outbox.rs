//! The outbox workers: one task per destination channel that drains that channel's queue in
//! order, so that a slow, rate-limited or dead network holds up only its own channels.
//!
//! A delivery leaves the outbox only when its connector reports the destination acknowledged it
//! (in the group-commit transaction that records the acknowledgement); failures are retried
//! with backoff (the head of a queue waits, keeping order) or, when the destination refused for
//! good, kept as `failed` and logged at ERROR.
//!
//! A worker keeps up to [`Endpoint::window`] deliveries outstanding (pipelining): they are
//! handed to the connection in queue order and their acknowledgements recorded in that order.
//! Connectors whose sends could overtake each other (HTTP requests) have a window of one. Edits,
//! deletes, reactions, replies and thread messages are sent only with nothing outstanding, so that the id of the
//! message they point at is known. When a delivery in the middle of a window fails, the ones
//! after it that the destination had already accepted stay delivered and the failed one is
//! retried after them: the only case in which pipelining can change the order. A delivery the
//! endpoint calls exclusive (one waiting for a parallel bridge's copy) is likewise sent alone.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::group_commit::{GroupCommit, GroupCommitError};
use crate::model::{ChannelRef, Delivery, DeliveryAck, now_ms};
use crate::store::{Completion, Store};
use crate::vocab::stages::{OutboxLatency, network_label, observe};
pub use crate::vocab::{AckFuture, Endpoint};
use crate::vocab::{DeliveryError, PendingDelivery, Wake};

/// Counters of the outbox; read them for logs and metrics.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Deliveries acknowledged by their destination.
    pub delivered: AtomicU64,
    /// Attempts that will be retried.
    pub retried: AtomicU64,
    /// Deliveries refused for good.
    pub failed: AtomicU64,
}

/// The most deliveries announced to one worker and not yet taken; beyond it the worker reads
/// its queue from the store instead (so a slow destination costs memory only up to here).
const MAX_ANNOUNCED: usize = 1_024;

/// The wake-up bells of every destination's worker.
#[derive(Default)]
pub struct Outbox {
    /// Destinations come and go with a reload ([`Outbox::spawn_worker`],
    /// [`Outbox::remove_destination`]); a row committed for one without a bell waits in the
    /// store for its worker.
    bells: std::sync::RwLock<HashMap<ChannelRef, Arc<Bell>>>,
    stats: Arc<OutboxStats>,
    latency: Arc<OutboxLatency>,
}

/// One destination's bell: the wake-up, and the deliveries committed since the worker last
/// looked (so that it need not read back what the writer just wrote).
#[derive(Default)]
struct Bell {
    notify: Notify,
    announced: std::sync::Mutex<Announced>,
}

#[derive(Default)]
struct Announced {
    /// Committed deliveries, in queue order, with when they were announced.
    deliveries: VecDeque<(Instant, PendingDelivery)>,
    /// Something was committed that is not in `deliveries`: read the store.
    read_store: bool,
    /// The worker takes announcements (it is in step with the store, or about to be); when
    /// not, it reads everything from the store and nothing is kept here.
    listening: bool,
}

impl Bell {
    fn announced(&self) -> std::sync::MutexGuard<'_, Announced> {
        self.announced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Outbox {
    /// One bell per destination.
    #[must_use]
    pub fn new(destinations: &[ChannelRef]) -> Self {
        Self {
            bells: std::sync::RwLock::new(
                destinations
                    .iter()
                    .map(|d| (d.clone(), Arc::new(Bell::default())))
                    .collect(),
            ),
            stats: Arc::default(),
            latency: Arc::default(),
        }
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> Arc<OutboxStats> {
        Arc::clone(&self.stats)
    }

    /// The histograms of the workers (for [`crate::metrics`]).
    #[must_use]
    pub fn latency(&self) -> Arc<OutboxLatency> {
        Arc::clone(&self.latency)
    }

    /// Start one worker per destination. `endpoints` holds the endpoint of each network;
    /// acknowledgements are recorded through `writer`, other outcomes directly in `store`.
    pub fn spawn_workers<E: Endpoint>(
        &self,
        writer: &GroupCommit,
        store: &Arc<Store>,
        endpoints: &HashMap<String, E>,
        shutdown: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) {
        let destinations: Vec<ChannelRef> = self.bells().keys().cloned().collect();
        for destination in destinations {
            let Some(endpoint) = endpoints.get(&destination.network) else {
                tracing::error!(destination = %destination, "No connector for this destination; its deliveries wait.");
                continue;
            };
            let worker = self.spawn_worker(&destination, writer, store, endpoint.clone(), shutdown);
            tasks.spawn(worker);
        }
    }

    /// The worker of `destination` (given a bell if it has none), delivering through
    /// `endpoint` until `shutdown`; the caller spawns it. It starts from the store, so rows
    /// committed while the destination had no worker are delivered first.
    pub fn spawn_worker<E: Endpoint>(
        &self,
        destination: &ChannelRef,
        writer: &GroupCommit,
        store: &Arc<Store>,
        endpoint: E,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let bell = {
            let mut bells = self
                .bells
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(bells.entry(destination.clone()).or_default())
        };
        let label = network_label(&destination.network);
        let worker = Worker {
            handover_latency: self.latency.handover.get_or_create_owned(&label),
            delivery_latency: self.latency.delivery.get_or_create_owned(&label),
            destination: destination.clone(),
            bell,
            writer: writer.clone(),
            store: Arc::clone(store),
            endpoint,
            shutdown: shutdown.clone(),
            stats: Arc::clone(&self.stats),
        };
        worker.run()
    }

    /// Wake the workers of every destination on `network`: deliveries to it were queued
    /// elsewhere (another instance), so they read the store.
    pub fn wake_network(&self, network: &str) {
        let bells: Vec<ChannelRef> = self
            .bells()
            .keys()
            .filter(|destination| destination.network == network)
            .cloned()
            .collect();
        for destination in bells {
            self.wake(&destination);
        }
    }

    /// Forget `destination`'s bell once its worker stopped (a reload removed it): rows
    /// committed for it from now on wait in the store.
    pub fn remove_destination(&self, destination: &ChannelRef) {
        self.bells
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(destination);
    }

    fn bells(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ChannelRef, Arc<Bell>>> {
        self.bells
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bell(&self, destination: &ChannelRef) -> Option<Arc<Bell>> {
        self.bells().get(destination).cloned()
    }
}

impl Wake for Outbox {
    fn wake(&self, destination: &ChannelRef) {
        if let Some(bell) = self.bell(destination) {
            bell.announced().read_store = true;
            // notify_one stores a permit when the worker is busy: no wake-up is ever lost.
            bell.notify.notify_one();
        }
    }

    fn queued(&self, pending: PendingDelivery) {
        if let Some(bell) = self.bell(&pending.delivery.destination) {
            {
                let mut announced = bell.announced();
                if !announced.listening {
                    // The worker reads its queue from the store; this row is there.
                } else if announced.deliveries.len() < MAX_ANNOUNCED {
                    announced.deliveries.push_back((Instant::now(), pending));
                } else {
                    announced.read_store = true;
                }
            }
            bell.notify.notify_one();
        }
    }
}

/// Where a worker stands in its queue.
#[derive(Default)]
struct Position {
    /// Every pending row of the queue that is not outstanding is among the announced
    /// deliveries (or will be announced): the worker need not read the store. False at start,
    /// after any failure and whenever something was committed without being announced.
    in_step: bool,
    /// The highest queue position handed to the connection so far.
    last_seq: i64,
}

/// A delivery handed to the connection, waiting for its acknowledgement.
struct Outstanding {
    delivery: Delivery,
    seq: i64,
    ack: AckFuture,
    /// Nothing else may be outstanding with it ([`Endpoint::exclusive`]).
    exclusive: bool,
    /// When it was handed over.
    handed: Instant,
}

/// Whether nothing more may be handed over before an acknowledgement comes in.
fn full(outstanding: &VecDeque<Outstanding>, window: usize) -> bool {
    outstanding.len() >= window || outstanding.front().is_some_and(|o| o.exclusive)
}

struct Worker<E> {
    destination: ChannelRef,
    bell: Arc<Bell>,
    writer: GroupCommit,
    store: Arc<Store>,
    endpoint: E,
    shutdown: CancellationToken,
    stats: Arc<OutboxStats>,
    /// This destination's network's share of [`OutboxLatency`].
    handover_latency: Histogram,
    delivery_latency: Histogram,
}

/// Acknowledgements on their way into the store: how many, and the commit's future.
type Recording = VecDeque<(
    u64,
    Pin<Box<dyn Future<Output = Result<(), GroupCommitError>> + Send>>,
)>;

/// What woke a worker up.
enum Woke {
    /// The oldest outstanding delivery's outcome.
    Ack(Result<DeliveryAck, DeliveryError>),
    /// The oldest recording of acknowledgements finished.
    Recorded(Result<(), GroupCommitError>),
    /// New work was committed (or announced).
    Bell,
    /// Shutdown began.
    Shutdown,
}

impl<E: Endpoint> Worker<E> {
    /// The worker's loop. It hands deliveries over while earlier ones await their
    /// acknowledgement, and records acknowledgements without waiting for the commit before
    /// sending on (the destination has them; if the record is lost to a crash, they are sent
    /// again with the same idempotency key). It waits for those records only before reading the
    /// store, whose rows they remove.
    async fn run(self) {
        let window = self.endpoint.window().max(1);
        // Grown on demand and given back when the worker goes idle: a whole window reserved by
        // every idle destination (32 deliveries for IRC) was 1.1 MB of an idle daemon with 100
        // gateways (BENCHMARKS.md, "Memory and the release build").
        let mut outstanding: VecDeque<Outstanding> = VecDeque::new();
        let mut recording: Recording = VecDeque::new();
        let mut position = Position::default();
        // The queue may hold more than was read last time (or a bell rang meanwhile).
        let mut more = true;
        loop {
            let stopping = self.shutdown.is_cancelled();
            if stopping && outstanding.is_empty() {
                self.finish_recording(&mut recording, &mut position).await;
                return;
            }
            more |= self.bell.notify.notified().now_or_never().is_some();
            if more && !full(&outstanding, window) && !stopping {
                // Boxed: the fill's state lives only while it runs, not in every idle worker.
                match Box::pin(self.fill(&mut outstanding, &mut recording, window, &mut position))
                    .await
                {
                    Fill::Read { more: again } => more = again,
                    // Outstanding deliveries are still finished below.
                    Fill::Shutdown => more = false,
                }
            }
            let room = !full(&outstanding, window) && !more;
            let idle = outstanding.is_empty();
            if idle && !more && recording.is_empty() {
                outstanding.shrink_to_fit();
                recording.shrink_to_fit();
            }
            // A delivery in progress is finished even during shutdown (bounded by the
            // connector's own acknowledgement timeout), so that it is not sent twice.
            let woke = {
                let ack = async {
                    match outstanding.front_mut() {
                        Some(head) => (&mut head.ack).await,
                        None => std::future::pending().await,
                    }
                };
                let recorded = async {
                    match recording.front_mut() {
                        Some((_, commit)) => commit.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    result = ack => Woke::Ack(result),
                    result = recorded => Woke::Recorded(result),
                    () = self.bell.notify.notified(), if room => Woke::Bell,
                    () = self.shutdown.cancelled(), if !stopping => Woke::Shutdown,
                    // More to read and nothing to wait for: read again now. (With deliveries
                    // outstanding, their acknowledgements are what lets the queue move.)
                    () = std::future::ready(()), if more && idle && !stopping => Woke::Bell,
                }
            };
            match woke {
                Woke::Bell => more = true,
                Woke::Shutdown => {}
                Woke::Recorded(result) => {
                    if let Some((count, _)) = recording.pop_front() {
                        self.recorded(count, result, &mut position).await;
                    }
                }
                Woke::Ack(result) => {
                    let Some(head) = outstanding.pop_front() else {
                        continue;
                    };
                    let failed = self
                        .acknowledged(head, result, &mut outstanding, &mut recording)
                        .await;
                    if failed {
                        position.in_step = false;
                        more = true;
                    }
                }
            }
        }
    }

    /// The head's outcome is in: queue the record of it and of every acknowledgement already in
    /// hand behind it; record a failure. True when something failed.
    async fn acknowledged(
        &self,
        head: Outstanding,
        result: Result<DeliveryAck, DeliveryError>,
        outstanding: &mut VecDeque<Outstanding>,
        recording: &mut Recording,
    ) -> bool {
        let mut acknowledged = Vec::new();
        let mut failure = None;
        match result {
            Ok(ack) => {
                observe(&self.delivery_latency, head.handed.elapsed());
                acknowledged.push(Completion::of(&head.delivery, head.seq, ack.remote_id));
            }
            Err(error) => failure = Some((head.delivery, head.seq, error)),
        }
        while failure.is_none()
            && let Some(next) = outstanding.front_mut()
        {
            let Some(result) = (&mut next.ack).now_or_never() else {
                break;
            };
            let Some(next) = outstanding.pop_front() else {
                break;
            };
            match result {
                Ok(ack) => {
                    observe(&self.delivery_latency, next.handed.elapsed());
                    acknowledged.push(Completion::of(&next.delivery, next.seq, ack.remote_id));
                }
                Err(error) => failure = Some((next.delivery, next.seq, error)),
            }
        }
        if !acknowledged.is_empty() {
            let count = acknowledged.len() as u64;
            recording.push_back((
                count,
                Box::pin(self.writer.enqueue_completions(acknowledged)),
            ));
        }
        match failure {
            Some((delivery, seq, error)) => {
                self.record_failure(&delivery, seq, error).await;
                true
            }
            None => false,
        }
    }

    /// A recording of acknowledgements finished.
    async fn recorded(
        &self,
        count: u64,
        result: Result<(), GroupCommitError>,
        position: &mut Position,
    ) {
        match result {
            Ok(()) => {
                self.stats.delivered.fetch_add(count, Ordering::Relaxed);
            }
            Err(error) => {
                // The rows stay in the store and are read (and sent) again.
                position.in_step = false;
                tracing::error!(destination = %self.destination, error = %error, "Cannot record a delivery outcome; it may be sent again.");
                let _ = self.pause(Duration::from_secs(5)).await;
            }
        }
    }

    /// Wait for every recording in progress.
    async fn finish_recording(&self, recording: &mut Recording, position: &mut Position) {
        while let Some((count, commit)) = recording.pop_front() {
            let result = commit.await;
            self.recorded(count, result, position).await;
        }
    }

    /// Hand the deliveries queued behind the outstanding ones to the connection, up to the
    /// window: the announced ones while the worker is in step with the store, else read from
    /// the store.
    async fn fill(
        &self,
        outstanding: &mut VecDeque<Outstanding>,
        recording: &mut Recording,
        window: usize,
        position: &mut Position,
    ) -> Fill {
        {
            let mut announced = self.bell.announced();
            if std::mem::take(&mut announced.read_store) {
                // Everything announced so far is in the store too, and read from there.
                announced.deliveries.clear();
                position.in_step = false;
            }
        }
        if position.in_step {
            return self.fill_announced(outstanding, window, position).await;
        }
        // The store still holds rows whose acknowledgement is being recorded.
        self.finish_recording(recording, position).await;
        let fill = self.fill_from_store(outstanding, window, position).await;
        if !position.in_step {
            // Still reading from the store: keep nothing announced meanwhile.
            let mut announced = self.bell.announced();
            announced.listening = false;
            announced.deliveries.clear();
        }
        fill
    }

    /// [`Worker::fill`] from the announced deliveries.
    async fn fill_announced(
        &self,
        outstanding: &mut VecDeque<Outstanding>,
        window: usize,
        position: &mut Position,
    ) -> Fill {
        while !full(outstanding, window) {
            let next = {
                let mut announced = self.bell.announced();
                if announced.read_store {
                    return Fill::Read { more: true };
                }
                // Rows already handed over (read from the store before the worker was in
                // step) are announced too: skipped by their position.
                loop {
                    match announced.deliveries.pop_front() {
                        Some((_, pending)) if pending.seq <= position.last_seq => {}
                        other => break other,
                    }
                }
            };
            let Some((announced_at, PendingDelivery { delivery, seq, .. })) = next else {
                return Fill::Read { more: false };
            };
            let exclusive = self.endpoint.exclusive(&delivery);
            if exclusive && !outstanding.is_empty() {
                // Sent once everything before it is acknowledged, read from the store then.
                position.in_step = false;
                return Fill::Read { more: true };
            }
            match self.endpoint.send(delivery.clone()).await {
                Ok(ack) => {
                    let handed = Instant::now();
                    observe(&self.handover_latency, handed - announced_at);
                    position.last_seq = seq;
                    outstanding.push_back(Outstanding {
                        delivery,
                        seq,
                        ack,
                        exclusive,
                        handed,
                    });
                }
                Err(error) => {
                    position.in_step = false;
                    self.record_failure_after(outstanding, &delivery, seq, error)
                        .await;
                    return Fill::Read { more: true };
                }
            }
        }
        Fill::Read { more: true }
    }

    /// [`Worker::fill`] from the store. A read that finds fewer rows than it asked for, all
    /// handed over, puts the worker in step: every later row is announced.
    async fn fill_from_store(
        &self,
        outstanding: &mut VecDeque<Outstanding>,
        window: usize,
        position: &mut Position,
    ) -> Fill {
        let store = Arc::clone(&self.store);
        let destination = self.destination.clone();
        let after = outstanding.back().map_or(0, |o| o.seq);
        let wanted = window - outstanding.len();
        // Rows committed from now on are announced; any also found by this read are skipped by
        // their position. Rows committed before are found by the read.
        self.bell.announced().listening = true;
        let read =
            tokio::task::spawn_blocking(move || store.pending_batch(&destination, after, wanted))
                .await;
        let batch = match read {
            Ok(Ok(batch)) => batch,
            Ok(Err(error @ crate::store::StoreError::Corrupt { .. })) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(destination = %self.destination, error = %error, "A queued delivery cannot be read; kept as failed, the queue goes on.");
                return Fill::Read { more: true };
            }
            Ok(Err(error)) => {
                tracing::error!(destination = %self.destination, error = %error, "Cannot read the outbox; retrying in 5 s.");
                if outstanding.is_empty() && self.pause(Duration::from_secs(5)).await {
                    return Fill::Shutdown;
                }
                return Fill::Read { more: true };
            }
            Err(_) => return Fill::Shutdown,
        };
        let full = batch.len() == wanted;
        for PendingDelivery {
            delivery,
            next_try_ms,
            seq,
        } in batch
        {
            let points_elsewhere = delivery.target.is_some()
                || delivery.reply_to.is_some()
                || delivery.thread_root.is_some();
            let exclusive = self.endpoint.exclusive(&delivery);
            if !outstanding.is_empty() && (points_elsewhere || exclusive || next_try_ms > now_ms())
            {
                // Sent once everything before it is acknowledged (read again then).
                return Fill::Read { more: true };
            }
            let wait = next_try_ms - now_ms();
            if wait > 0 && self.pause(Duration::from_millis(wait as u64)).await {
                return Fill::Shutdown;
            }
            match self.endpoint.send(delivery.clone()).await {
                Ok(ack) => {
                    position.last_seq = position.last_seq.max(seq);
                    outstanding.push_back(Outstanding {
                        delivery,
                        seq,
                        ack,
                        exclusive,
                        handed: Instant::now(),
                    });
                    if exclusive {
                        // Nothing goes out behind it until it is acknowledged.
                        return Fill::Read { more: true };
                    }
                }
                Err(error) => {
                    // Not handed over: nothing behind it may overtake it.
                    self.record_failure_after(outstanding, &delivery, seq, error)
                        .await;
                    return Fill::Read { more: true };
                }
            }
        }
        // Everything pending was read and handed over: from now on, what is committed is
        // announced (rows committed after the read have higher positions than any handed).
        position.in_step = !full;
        Fill::Read { more: full }
    }

    /// A delivery could not be handed over while others are outstanding: their outcomes are
    /// awaited first, so that its retry keeps its place in the order.
    async fn record_failure_after(
        &self,
        outstanding: &mut VecDeque<Outstanding>,
        delivery: &Delivery,
        seq: i64,
        error: DeliveryError,
    ) {
        while let Some(previous) = outstanding.pop_front() {
            match previous.ack.await {
                Ok(ack) => {
                    observe(&self.delivery_latency, previous.handed.elapsed());
                    if let Err(error) = self
                        .writer
                        .complete_deliveries(vec![Completion::of(
                            &previous.delivery,
                            previous.seq,
                            ack.remote_id,
                        )])
                        .await
                    {
                        tracing::error!(destination = %self.destination, error = %error, "Cannot record a delivery outcome; it may be sent again.");
                    } else {
                        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(error) => {
                    self.record_failure(&previous.delivery, previous.seq, error)
                        .await;
                }
            }
        }
        self.record_failure(delivery, seq, error).await;
    }

    /// Record a failed attempt: retry later, or failed for good.
    async fn record_failure(&self, delivery: &Delivery, seq: i64, error: DeliveryError) {
        let store = Arc::clone(&self.store);
        let outcome = match error {
            DeliveryError::Retry { after, reason } => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                let delay = after.unwrap_or_else(|| retry_delay(delivery.attempts));
                tracing::warn!(destination = %self.destination, delivery = %delivery.id, attempts = delivery.attempts + 1, delay_ms = delay.as_millis() as u64, reason = %reason, "Delivery failed; will retry.");
                let next = now_ms() + delay.as_millis() as i64;
                tokio::task::spawn_blocking(move || store.defer_delivery(seq, next, &reason)).await
            }
            DeliveryError::Permanent(reason) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(destination = %self.destination, delivery = %delivery.id, message_id = delivery.message_id, reason = %reason, "Delivery refused by the destination; kept as failed, not retried.");
                tokio::task::spawn_blocking(move || store.fail_delivery(seq, &reason)).await
            }
        };
        if let Ok(Err(error)) = outcome {
            tracing::error!(destination = %self.destination, error = %error, "Cannot record a delivery outcome; it may be sent again.");
            let _ = self.pause(Duration::from_secs(5)).await;
        }
    }

    /// Sleep, or return true at shutdown.
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => false,
            () = self.shutdown.cancelled() => true,
        }
    }
}

/// What filling the window did.
enum Fill {
    /// Read the queue; `more` when it may hold more than was taken.
    Read { more: bool },
    /// Shutdown began while waiting.
    Shutdown,
}

/// Backoff for retries without a server-given delay: 1 s doubling up to 5 minutes.
fn retry_delay(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(8)).min(Duration::from_mins(5))
}
