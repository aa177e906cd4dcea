//! Series a connector keeps about its own network (a gauge of its state, a counter of what it
//! saw happen), which `/metrics` shows next to the core's. A connector registers a series by
//! name for its network and updates the atomic it gets back; the metrics endpoint reads them
//! all at each scrape. Nothing here knows a network type: the names are the connector's.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Whether a series only grows (a counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesKind {
    /// Counts events; shown with the `_total` suffix.
    Counter,
    /// A current state.
    Gauge,
}

/// One series as read at a scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesValue {
    /// The metric's name (for a counter, without `_total`).
    pub name: &'static str,
    /// What it measures, one sentence without the final period.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: SeriesKind,
    /// The configured network id (the `network` label).
    pub network: String,
    /// Its value now.
    pub value: i64,
}

struct Series {
    name: &'static str,
    help: &'static str,
    kind: SeriesKind,
    network: String,
    value: Arc<AtomicI64>,
}

/// Every connector's series, in the order they were registered.
#[derive(Default)]
pub struct NetworkMetrics {
    series: Mutex<Vec<Series>>,
}

impl std::fmt::Debug for NetworkMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_list()
            .entries(self.read().iter().map(|s| (s.name, &s.network, s.value)))
            .finish()
    }
}

impl NetworkMetrics {
    /// The counter `name` of `network`, registered on first use (a later call with the same
    /// name and network gets the same atomic, so a reconnecting session keeps counting).
    pub fn counter(&self, name: &'static str, help: &'static str, network: &str) -> Arc<AtomicI64> {
        self.series(name, help, SeriesKind::Counter, network)
    }

    /// The gauge `name` of `network`, registered on first use (see [`Self::counter`]).
    pub fn gauge(&self, name: &'static str, help: &'static str, network: &str) -> Arc<AtomicI64> {
        self.series(name, help, SeriesKind::Gauge, network)
    }

    fn series(
        &self,
        name: &'static str,
        help: &'static str,
        kind: SeriesKind,
        network: &str,
    ) -> Arc<AtomicI64> {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = series
            .iter()
            .find(|s| s.name == name && s.network == network && s.kind == kind)
        {
            return Arc::clone(&known.value);
        }
        let value = Arc::new(AtomicI64::new(0));
        series.push(Series {
            name,
            help,
            kind,
            network: network.to_owned(),
            value: Arc::clone(&value),
        });
        value
    }

    /// Every series now, grouped by name (in the order the names were first registered).
    #[must_use]
    pub fn read(&self) -> Vec<SeriesValue> {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut names: Vec<&'static str> = Vec::new();
        for s in series.iter() {
            if !names.contains(&s.name) {
                names.push(s.name);
            }
        }
        names
            .iter()
            .flat_map(|name| series.iter().filter(move |s| s.name == *name))
            .map(|s| SeriesValue {
                name: s.name,
                help: s.help,
                kind: s.kind,
                network: s.network.clone(),
                value: s.value.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_is_registered_once_per_network_and_read_grouped_by_name() {
        let metrics = NetworkMetrics::default();
        let a = metrics.counter("x_changes", "Changes", "a");
        metrics
            .gauge("x_state", "State", "a")
            .store(1, Ordering::Relaxed);
        let b = metrics.counter("x_changes", "Changes", "b");
        a.fetch_add(2, Ordering::Relaxed);
        // The same series again: the same atomic.
        metrics
            .counter("x_changes", "Changes", "a")
            .fetch_add(1, Ordering::Relaxed);
        b.fetch_add(5, Ordering::Relaxed);
        let read: Vec<(&str, String, i64)> = metrics
            .read()
            .into_iter()
            .map(|s| (s.name, s.network, s.value))
            .collect();
        assert_eq!(
            read,
            vec![
                ("x_changes", "a".to_owned(), 3),
                ("x_changes", "b".to_owned(), 5),
                ("x_state", "a".to_owned(), 1),
            ]
        );
    }
}
