//! The latency histograms each stage of the bridge observes where the stage ends (the store's
//! writer thread, each outbox worker); [`crate::metrics`] only reads them. Labels are configured
//! network ids, never a protocol's name.

use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds of the latency buckets, in seconds: 50 µs to 30 s.
const LATENCY_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram with the buckets above.
#[must_use]
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Record `elapsed` in `histogram`, in seconds.
pub fn observe(histogram: &Histogram, elapsed: Duration) {
    histogram.observe(elapsed.as_secs_f64());
}

/// A label set of one configured network id.
pub type NetworkLabel = [(&'static str, String); 1];

/// Histograms by network.
pub type ByNetwork = Family<NetworkLabel, Histogram, fn() -> Histogram>;

fn by_network() -> ByNetwork {
    Family::new_with_constructor(latency_histogram)
}

/// The label of `network`.
#[must_use]
pub fn network_label(network: &str) -> NetworkLabel {
    [("network", network.to_owned())]
}

/// What the store's writer measures.
#[derive(Debug, Clone)]
pub struct WriterLatency {
    /// An inbound event, from queued to the end of its transaction.
    pub commit: Histogram,
    /// One transaction of the writer thread.
    pub transaction: Histogram,
    /// Requests per transaction.
    pub group_size: Histogram,
}

impl Default for WriterLatency {
    fn default() -> Self {
        WriterLatency {
            commit: latency_histogram(),
            transaction: latency_histogram(),
            group_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
        }
    }
}

/// What the outbox workers measure, by destination network.
#[derive(Debug)]
pub struct OutboxLatency {
    /// From commit to hand-over to the connection.
    pub handover: ByNetwork,
    /// From hand-over to the destination's acknowledgement.
    pub delivery: ByNetwork,
}

impl Default for OutboxLatency {
    fn default() -> Self {
        OutboxLatency {
            handover: by_network(),
            delivery: by_network(),
        }
    }
}
