//! tribridge mirrors channels between IRC, Mattermost and Matrix, both ways, so that every
//! person sees every message once, in order, in the native form of their own platform.
//!
//! Modules in reading order:
//! - [`config`]: the TOML file, parsed into raw serde types and validated into typed config.
//! - [`model`]: the normalised message model every connector converts to and from.
//! - [`vocab`]: what connectors and the core share (delivery, capabilities, gateways as data,
//!   the validation of a network's section); a leaf every module may import.
//! - [`richtext`]: formatted text, and exact, safe conversion to and from IRC, Markdown, HTML.
//! - [`store`]: `SQLite`: messages, mappings, outbox and cursors, with numbered migrations.
//! - [`group_commit`]: one writer thread; each transaction carries every event and ack waiting.
//! - [`router`]: decides the destinations of an inbound event; names no network.
//! - [`loop_breaker`]: recognises messages bridges pass around in a circle.
//! - [`parallel`]: recognises another bridge relaying the same channels; one of the two steps back.
//! - [`outbox`]: one worker per destination channel that drains its queue in order.
//! - [`archive`]: each gateway's history policy (retention, legal hold) applied to the store.
//! - [`files`]: files carried between networks (content-addressed store, signed links).
//! - [`connector`]: one folder per network type, as plug-ins; the only code that knows wire
//!   types.
//! - [`import_matterbridge`]: a matterbridge configuration turned into ours.
//! - [`metrics`]: counters, outbox depth and per-stage latencies, for Prometheus.
//! - [`daemon`]: wires it all together and runs until shutdown, applying reloads.
//! - [`service`]: the pid file, `tribridge reload`'s side of a reload, systemd's reload steps.
//! - [`admin`]: the admin socket (`tribridge status`, `tribridge failed …`).

pub mod admin;
pub mod archive;
pub mod config;
pub mod connector;
#[cfg(feature = "matrix")]
pub mod daemon;
pub mod files;
pub mod group_commit;
pub mod import_matterbridge;
pub mod loop_breaker;
pub mod metrics;
pub mod model;
pub mod outbox;
pub mod parallel;
pub mod richtext;
pub mod router;
#[cfg(feature = "matrix")]
pub mod service;
pub mod store;
pub mod vocab;

/// Choose the process-wide TLS crypto provider once, before any TLS connection is made.
pub fn install_tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The worker threads of the daemon's Tokio runtime: one fewer than the cores the process may
/// use (at least one). Every message passes through the store's writer thread
/// ([`group_commit`]), a thread of its own that is the bridge's throughput bound; with as many
/// workers as cores it had to share a core with one of them and waited for it (on two cores,
/// 16 % of its time runnable but not running). `None` when `TOKIO_WORKER_THREADS` is set: Tokio
/// then takes the administrator's number.
#[must_use]
pub fn runtime_worker_threads() -> Option<usize> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    Some(cores.saturating_sub(1).max(1))
}

/// A multi-threaded Tokio runtime builder sized by [`runtime_worker_threads`].
#[must_use]
pub fn runtime_builder() -> tokio::runtime::Builder {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = runtime_worker_threads() {
        builder.worker_threads(workers);
    }
    builder.enable_all();
    builder
}

#[cfg(test)]
mod tests {
    /// The runtime leaves a core to the store writer: one worker fewer than the cores, at
    /// least one (Tokio's own default is one per core).
    #[test]
    fn the_runtime_has_one_worker_fewer_than_the_cores() {
        let runtime = super::runtime_builder().build().expect("runtime");
        let workers = runtime.metrics().num_workers();
        if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
            assert_eq!(super::runtime_worker_threads(), None);
            return;
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(workers, cores.saturating_sub(1).max(1));
    }
}
