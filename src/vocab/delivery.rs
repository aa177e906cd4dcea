//! Handing a delivery to a connection, and what comes back: the contract between the outbox
//! (which drains each destination's queue) and whatever it sends to (a connector's handle in
//! the daemon, an in-process sink in the load harness).
//!
//! Invariants: a delivery is acknowledged with the destination's id for it, or refused with a
//! [`DeliveryError`] that says whether to try again; an [`Endpoint`] with a window above one
//! keeps the order in which deliveries were handed to it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::model::{ChannelRef, Delivery, DeliveryAck};

/// Why a delivery did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later (not connected, rate limited, connection lost before confirmation).
    #[error("{reason} (retry in {after:?})")]
    Retry {
        /// The earliest sensible retry; `None` lets the outbox back off by attempts.
        after: Option<Duration>,
        /// What happened.
        reason: String,
    },
    /// The destination refused it for good (it will be kept as failed, not retried).
    #[error("{0}")]
    Permanent(String),
}

/// The acknowledgement of one delivery handed to a connection, still to come.
pub type AckFuture = Pin<Box<dyn Future<Output = Result<DeliveryAck, DeliveryError>> + Send>>;

/// What an outbox worker sends to: a connector's handle in the daemon, an in-process endpoint
/// in benchmarks (the worker takes its I/O as an argument).
pub trait Endpoint: Clone + Send + Sync + 'static {
    /// How many deliveries to one destination may be outstanding at once. More than one only
    /// when the connection keeps the order in which deliveries were handed to it.
    fn window(&self) -> usize;

    /// Whether `delivery` must be the only one outstanding: sent after everything before it
    /// is acknowledged, and nothing sent after it until it is.
    fn exclusive(&self, delivery: &Delivery) -> bool {
        let _ = delivery;
        false
    }

    /// Hand `delivery` to the connection. Resolves once it is queued there in order, with the
    /// future of its acknowledgement.
    fn send(
        &self,
        delivery: Delivery,
    ) -> impl Future<Output = Result<AckFuture, DeliveryError>> + Send;
}

/// A pending delivery as read from the outbox.
#[derive(Debug, Clone)]
pub struct PendingDelivery {
    /// The delivery.
    pub delivery: Delivery,
    /// Not to be sent before this time (ms since the epoch).
    pub next_try_ms: i64,
    /// Its position in the outbox (ascending in queue order).
    pub seq: i64,
}

/// Something that wants to know when a destination has new work.
pub trait Wake: Send + Sync {
    /// Deliveries for `destination` were committed; read them from the store.
    fn wake(&self, destination: &ChannelRef);

    /// This delivery was just committed, exactly as the store would return it. Called in
    /// queue order; by default the same as [`Wake::wake`] for its destination.
    fn queued(&self, pending: PendingDelivery) {
        self.wake(&pending.delivery.destination);
    }
}
