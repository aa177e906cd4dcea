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
//! retried after them: the only case in which pipelining can change the order.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connector::DeliveryError;
use crate::group_commit::GroupCommit;
use crate::model::{ChannelRef, Delivery, DeliveryAck, now_ms};
use crate::router::Wake;
use crate::store::{PendingDelivery, Store};

/// The acknowledgement of one delivery handed to a connection, still to come.
pub type AckFuture = Pin<Box<dyn Future<Output = Result<DeliveryAck, DeliveryError>> + Send>>;

/// What an outbox worker sends to: a connector's handle in the daemon, an in-process endpoint
/// in benchmarks (the worker takes its I/O as an argument).
pub trait Endpoint: Clone + Send + Sync + 'static {
    /// How many deliveries to one destination may be outstanding at once. More than one only
    /// when the connection keeps the order in which deliveries were handed to it.
    fn window(&self) -> usize;

    /// Hand `delivery` to the connection. Resolves once it is queued there in order, with the
    /// future of its acknowledgement.
    fn send(
        &self,
        delivery: Delivery,
    ) -> impl Future<Output = Result<AckFuture, DeliveryError>> + Send;
}

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

/// The wake-up bells of every destination's worker.
#[derive(Default)]
pub struct Outbox {
    bells: HashMap<ChannelRef, Arc<Notify>>,
    stats: Arc<OutboxStats>,
}

impl Outbox {
    /// One bell per destination.
    #[must_use]
    pub fn new(destinations: &[ChannelRef]) -> Self {
        Self {
            bells: destinations
                .iter()
                .map(|d| (d.clone(), Arc::new(Notify::new())))
                .collect(),
            stats: Arc::default(),
        }
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> Arc<OutboxStats> {
        Arc::clone(&self.stats)
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
        for (destination, bell) in &self.bells {
            let Some(endpoint) = endpoints.get(&destination.network) else {
                tracing::error!(destination = %destination, "No connector for this destination; its deliveries wait.");
                continue;
            };
            let worker = Worker {
                destination: destination.clone(),
                bell: Arc::clone(bell),
                writer: writer.clone(),
                store: Arc::clone(store),
                endpoint: endpoint.clone(),
                shutdown: shutdown.clone(),
                stats: Arc::clone(&self.stats),
            };
            tasks.spawn(worker.run());
        }
    }
}

impl Wake for Outbox {
    fn wake(&self, destination: &ChannelRef) {
        if let Some(bell) = self.bells.get(destination) {
            // notify_one stores a permit when the worker is busy: no wake-up is ever lost.
            bell.notify_one();
        }
    }
}

/// A delivery handed to the connection, waiting for its acknowledgement.
struct Outstanding {
    delivery: Delivery,
    seq: i64,
    ack: AckFuture,
}

struct Worker<E> {
    destination: ChannelRef,
    bell: Arc<Notify>,
    writer: GroupCommit,
    store: Arc<Store>,
    endpoint: E,
    shutdown: CancellationToken,
    stats: Arc<OutboxStats>,
}

impl<E: Endpoint> Worker<E> {
    async fn run(self) {
        let window = self.endpoint.window().max(1);
        let mut outstanding: VecDeque<Outstanding> = VecDeque::with_capacity(window);
        // The queue may hold more than was read last time (or a bell rang meanwhile).
        let mut more = true;
        loop {
            if self.shutdown.is_cancelled() && outstanding.is_empty() {
                return;
            }
            more |= self.bell.notified().now_or_never().is_some();
            if more && outstanding.len() < window && !self.shutdown.is_cancelled() {
                match self.fill(&mut outstanding, window).await {
                    Fill::Read { more: again } => more = again,
                    // Outstanding deliveries are still finished below.
                    Fill::Shutdown => more = false,
                }
            }
            let Some(head) = outstanding.pop_front() else {
                tokio::select! {
                    () = self.bell.notified() => more = true,
                    () = self.shutdown.cancelled() => return,
                }
                continue;
            };
            // A delivery in progress is finished even during shutdown (bounded by the
            // connector's own acknowledgement timeout), so that it is not sent twice.
            let mut acknowledged = Vec::new();
            let mut failure = None;
            match head.ack.await {
                Ok(ack) => acknowledged.push((head.delivery.id, ack.remote_id)),
                Err(error) => failure = Some((head.delivery, error)),
            }
            // Every acknowledgement already in hand behind the head goes in the same record.
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
                    Ok(ack) => acknowledged.push((next.delivery.id, ack.remote_id)),
                    Err(error) => failure = Some((next.delivery, error)),
                }
            }
            if !acknowledged.is_empty() {
                let count = acknowledged.len() as u64;
                if let Err(error) = self.writer.complete_deliveries(acknowledged).await {
                    tracing::error!(destination = %self.destination, error = %error, "Cannot record a delivery outcome; it may be sent again.");
                    if self.pause(Duration::from_secs(5)).await && outstanding.is_empty() {
                        return;
                    }
                } else {
                    self.stats.delivered.fetch_add(count, Ordering::Relaxed);
                }
            }
            if let Some((delivery, error)) = failure {
                self.record_failure(&delivery, error).await;
                more = true;
            }
        }
    }

    /// Read the deliveries queued behind the outstanding ones and hand them to the connection,
    /// up to the window.
    async fn fill(&self, outstanding: &mut VecDeque<Outstanding>, window: usize) -> Fill {
        let store = Arc::clone(&self.store);
        let destination = self.destination.clone();
        let after = outstanding.back().map_or(0, |o| o.seq);
        let wanted = window - outstanding.len();
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
            if !outstanding.is_empty() && (points_elsewhere || next_try_ms > now_ms()) {
                // Sent once everything before it is acknowledged (read again then).
                return Fill::Read { more: true };
            }
            let wait = next_try_ms - now_ms();
            if wait > 0 && self.pause(Duration::from_millis(wait as u64)).await {
                return Fill::Shutdown;
            }
            match self.endpoint.send(delivery.clone()).await {
                Ok(ack) => outstanding.push_back(Outstanding { delivery, seq, ack }),
                Err(error) => {
                    // Not handed over: nothing behind it may overtake it.
                    self.record_failure_after(outstanding, &delivery, error)
                        .await;
                    return Fill::Read { more: true };
                }
            }
        }
        Fill::Read { more: full }
    }

    /// A delivery could not be handed over while others are outstanding: their outcomes are
    /// awaited first, so that its retry keeps its place in the order.
    async fn record_failure_after(
        &self,
        outstanding: &mut VecDeque<Outstanding>,
        delivery: &Delivery,
        error: DeliveryError,
    ) {
        while let Some(previous) = outstanding.pop_front() {
            match previous.ack.await {
                Ok(ack) => {
                    if let Err(error) = self
                        .writer
                        .complete_deliveries(vec![(previous.delivery.id, ack.remote_id)])
                        .await
                    {
                        tracing::error!(destination = %self.destination, error = %error, "Cannot record a delivery outcome; it may be sent again.");
                    } else {
                        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(error) => self.record_failure(&previous.delivery, error).await,
            }
        }
        self.record_failure(delivery, error).await;
    }

    /// Record a failed attempt: retry later, or failed for good.
    async fn record_failure(&self, delivery: &Delivery, error: DeliveryError) {
        let store = Arc::clone(&self.store);
        let delivery_id = delivery.id.clone();
        let outcome = match error {
            DeliveryError::Retry { after, reason } => {
                self.stats.retried.fetch_add(1, Ordering::Relaxed);
                let delay = after.unwrap_or_else(|| retry_delay(delivery.attempts));
                tracing::warn!(destination = %self.destination, delivery = %delivery.id, attempts = delivery.attempts + 1, delay_ms = delay.as_millis() as u64, reason = %reason, "Delivery failed; will retry.");
                let next = now_ms() + delay.as_millis() as i64;
                tokio::task::spawn_blocking(move || {
                    store.defer_delivery(&delivery_id, next, &reason)
                })
                .await
            }
            DeliveryError::Permanent(reason) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(destination = %self.destination, delivery = %delivery.id, message_id = delivery.message_id, reason = %reason, "Delivery refused by the destination; kept as failed, not retried.");
                tokio::task::spawn_blocking(move || store.fail_delivery(&delivery_id, &reason))
                    .await
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
