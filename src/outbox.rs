//! The outbox workers: one task per destination channel that drains that channel's queue in
//! order, so that a slow, rate-limited or dead network holds up only its own channels.
//!
//! A delivery leaves the outbox only when its connector reports the destination acknowledged it;
//! failures are retried with backoff (the head of a queue waits, keeping order) or, when the
//! destination refused for good, kept as `failed` and logged at ERROR.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connector::{ConnectorHandle, DeliveryError};
use crate::model::{ChannelRef, now_ms};
use crate::router::Wake;
use crate::store::Store;

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

    /// Start one worker per destination. `connector` finds the handle of a network.
    pub fn spawn_workers(
        &self,
        store: &Arc<Store>,
        connectors: &HashMap<String, ConnectorHandle>,
        shutdown: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) {
        for (destination, bell) in &self.bells {
            let Some(connector) = connectors.get(&destination.network) else {
                tracing::error!(destination = %destination, "No connector for this destination; its deliveries wait.");
                continue;
            };
            let worker = Worker {
                destination: destination.clone(),
                bell: Arc::clone(bell),
                store: Arc::clone(store),
                connector: connector.clone(),
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

struct Worker {
    destination: ChannelRef,
    bell: Arc<Notify>,
    store: Arc<Store>,
    connector: ConnectorHandle,
    shutdown: CancellationToken,
    stats: Arc<OutboxStats>,
}

impl Worker {
    async fn run(self) {
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let store = Arc::clone(&self.store);
            let destination = self.destination.clone();
            let next = tokio::task::spawn_blocking(move || store.next_pending(&destination)).await;
            let (delivery, next_try_ms) = match next {
                Ok(Ok(Some(next))) => next,
                Ok(Ok(None)) => {
                    tokio::select! {
                        () = self.bell.notified() => continue,
                        () = self.shutdown.cancelled() => return,
                    }
                }
                Ok(Err(error @ crate::store::StoreError::Corrupt { .. })) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(destination = %self.destination, error = %error, "A queued delivery cannot be read; kept as failed, the queue goes on.");
                    continue;
                }
                Ok(Err(error)) => {
                    tracing::error!(destination = %self.destination, error = %error, "Cannot read the outbox; retrying in 5 s.");
                    if self.pause(Duration::from_secs(5)).await {
                        return;
                    }
                    continue;
                }
                Err(_) => return,
            };
            let wait = next_try_ms - now_ms();
            if wait > 0 && self.pause(Duration::from_millis(wait as u64)).await {
                return;
            }
            // A delivery in progress is finished even during shutdown (bounded by the
            // connector's own acknowledgement timeout), so that it is not sent twice.
            let result = self.connector.deliver(&delivery).await;
            let store = Arc::clone(&self.store);
            let delivery_id = delivery.id.clone();
            let outcome = match result {
                Ok(ack) => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    tokio::task::spawn_blocking(move || {
                        store.complete_delivery(&delivery_id, ack.remote_id.as_deref())
                    })
                    .await
                }
                Err(DeliveryError::Retry { after, reason }) => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    let delay = after.unwrap_or_else(|| retry_delay(delivery.attempts));
                    tracing::warn!(destination = %self.destination, delivery = %delivery.id, attempts = delivery.attempts + 1, delay_ms = delay.as_millis() as u64, reason = %reason, "Delivery failed; will retry.");
                    let next = now_ms() + delay.as_millis() as i64;
                    tokio::task::spawn_blocking(move || {
                        store.defer_delivery(&delivery_id, next, &reason)
                    })
                    .await
                }
                Err(DeliveryError::Permanent(reason)) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(destination = %self.destination, delivery = %delivery.id, message_id = delivery.message_id, reason = %reason, "Delivery refused by the destination; kept as failed, not retried.");
                    tokio::task::spawn_blocking(move || store.fail_delivery(&delivery_id, &reason))
                        .await
                }
            };
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(destination = %self.destination, error = %error, "Cannot record a delivery outcome; it may be sent again.");
                    if self.pause(Duration::from_secs(5)).await {
                        return;
                    }
                }
                Err(_) => return,
            }
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

/// Backoff for retries without a server-given delay: 1 s doubling up to 5 minutes.
fn retry_delay(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(8)).min(Duration::from_mins(5))
}
