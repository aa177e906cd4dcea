//! What each network's connection is doing now, for an operator (`tribridge status` through the
//! admin socket): since when it is connected, which channels it has joined, and when its last
//! event came in. Connectors report their connection and joins; the router stamps every event
//! it is handed; the supervisor clears a network when its session ends.
//!
//! Invariants: it names no network type; reporting an event costs one read lock and one atomic
//! store; a network never reported is simply absent (never connected since start).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::model::now_ms;

/// One network's state. Times are ms since the Unix epoch; 0 means never / not now.
#[derive(Default)]
struct Entry {
    connected_since_ms: AtomicI64,
    last_event_ms: AtomicI64,
    joined: Mutex<BTreeSet<String>>,
}

/// One network as read now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkState {
    /// Since when the current connection is up (`None`: not connected).
    pub connected_since_ms: Option<i64>,
    /// The channels joined on the current connection, as configured.
    pub joined: Vec<String>,
    /// When the last event from this network was handed to the router (`None`: none yet).
    pub last_event_ms: Option<i64>,
}

/// Every network's connection state, shared by the connectors, the router and the admin socket.
#[derive(Default)]
pub struct NetworkStatus {
    networks: RwLock<BTreeMap<String, Arc<Entry>>>,
}

impl std::fmt::Debug for NetworkStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_map().entries(self.read()).finish()
    }
}

impl NetworkStatus {
    fn entry(&self, network: &str) -> Arc<Entry> {
        if let Some(entry) = self
            .networks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(network)
        {
            return Arc::clone(entry);
        }
        Arc::clone(
            self.networks
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(network.to_owned())
                .or_default(),
        )
    }

    /// `network`'s connection is up (logged in, registered) from now.
    pub fn connected(&self, network: &str) {
        let entry = self.entry(network);
        // A second report on the same connection keeps the first time.
        let _ = entry.connected_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// `network`'s connection ended: not connected, nothing joined.
    pub fn disconnected(&self, network: &str) {
        let entry = self.entry(network);
        entry.connected_since_ms.store(0, Ordering::Relaxed);
        entry
            .joined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// `network` joined `channel` (as configured) on its current connection.
    pub fn joined(&self, network: &str, channel: &str) {
        let entry = self.entry(network);
        let _ = entry.connected_since_ms.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        entry
            .joined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(channel.to_owned());
    }

    /// `network` is no longer in `channel` (kicked, parted).
    pub fn left(&self, network: &str, channel: &str) {
        self.entry(network)
            .joined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(channel);
    }

    /// An event from `network` was just handed to the router.
    pub fn event(&self, network: &str) {
        self.entry(network)
            .last_event_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// Every network reported so far, by id.
    #[must_use]
    pub fn read(&self) -> BTreeMap<String, NetworkState> {
        let networks = self.networks.read().unwrap_or_else(PoisonError::into_inner);
        networks
            .iter()
            .map(|(network, entry)| {
                let at = |value: &AtomicI64| Some(value.load(Ordering::Relaxed)).filter(|v| *v > 0);
                (
                    network.clone(),
                    NetworkState {
                        connected_since_ms: at(&entry.connected_since_ms),
                        joined: entry
                            .joined
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .iter()
                            .cloned()
                            .collect(),
                        last_event_ms: at(&entry.last_event_ms),
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_joins_and_is_cleared_when_it_ends() {
        let status = NetworkStatus::default();
        assert!(status.read().is_empty());
        status.connected("a");
        status.joined("a", "#x");
        status.joined("a", "#y");
        status.left("a", "#y");
        status.event("b");
        let read = status.read();
        assert!(read["a"].connected_since_ms.is_some());
        assert_eq!(read["a"].joined, vec!["#x".to_owned()]);
        assert_eq!(read["a"].last_event_ms, None);
        assert!(read["b"].last_event_ms.is_some());
        assert_eq!(read["b"].connected_since_ms, None);
        status.disconnected("a");
        let read = status.read();
        assert_eq!(read["a"].connected_since_ms, None);
        assert!(read["a"].joined.is_empty());
    }
}
