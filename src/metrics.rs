//! The daemon's metrics, in the `OpenMetrics` text format that Prometheus scrapes: the counters
//! of the router, the outbox and the parallel-bridge logic, the outbox's depth, and the time a
//! message spends in each stage of the bridge.
//!
//! The stages, in the order a message passes them:
//! - `tribridge_store_commit_seconds`: an inbound event from being queued for the store's
//!   writer to the end of the transaction that made it durable (measured on the writer thread,
//!   before its deliveries are announced; a connector acknowledges its position on a network
//!   only after it);
//! - `tribridge_store_transaction_seconds` and `tribridge_store_group_size`: each transaction
//!   of the writer thread, and how many requests (events and acknowledgement batches) it held;
//! - `tribridge_outbox_handover_seconds{network}`: a delivery from its commit to being handed to
//!   the destination's connection (for deliveries handed over as they were committed; those
//!   read back from the store after a restart, a failure or a backlog are in the outbox depth);
//! - `tribridge_delivery_seconds{network}`: from the hand-over to the destination's
//!   acknowledgement.
//!
//! Histograms are `prometheus-client`'s; each outbox worker holds its network's histograms, so
//! an observation costs an uncontended lock and no lookup. Nothing here names a network: labels
//! are configured network ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::outbox::OutboxStats;
use crate::parallel::Parallel;
use crate::router::RouterStats;
use crate::store::Store;
use crate::vocab::network_metrics::{NetworkMetrics, SeriesKind};
pub use crate::vocab::stages::{
    ByNetwork, NetworkLabel, OutboxLatency, WriterLatency, latency_histogram, network_label,
    observe,
};

/// Everything the registry reads.
pub struct Sources {
    /// The router's counters.
    pub router: Arc<RouterStats>,
    /// The store writer's histograms.
    pub writer: WriterLatency,
    /// The outbox's counters.
    pub outbox: Arc<OutboxStats>,
    /// The outbox's histograms.
    pub outbox_latency: Arc<OutboxLatency>,
    /// The parallel-bridge logic (its counters).
    pub parallel: Arc<Parallel>,
    /// The store (the outbox's depth is counted at each scrape).
    pub store: Arc<Store>,
    /// The configured network ids (each shows an outbox depth, zero included).
    pub networks: Vec<String>,
    /// The series connectors keep about their own networks.
    pub connectors: Arc<NetworkMetrics>,
}

/// The registry of every metric of the daemon.
#[must_use]
pub fn registry(sources: Sources) -> Registry {
    let mut registry = Registry::default();
    registry.register_with_unit(
        "tribridge_store_commit",
        "Inbound events, from queued for the store's writer to the end of the transaction that made them durable",
        Unit::Seconds,
        sources.writer.commit.clone(),
    );
    registry.register_with_unit(
        "tribridge_store_transaction",
        "Transactions of the store's writer thread",
        Unit::Seconds,
        sources.writer.transaction.clone(),
    );
    registry.register(
        "tribridge_store_group_size",
        "Requests (inbound events and batches of acknowledgements) per transaction",
        sources.writer.group_size.clone(),
    );
    registry.register_with_unit(
        "tribridge_outbox_handover",
        "Deliveries, from their commit to being handed to the destination's connection (those taken as they were committed)",
        Unit::Seconds,
        sources.outbox_latency.handover.clone(),
    );
    registry.register_with_unit(
        "tribridge_delivery",
        "Deliveries, from the hand-over to the destination's acknowledgement",
        Unit::Seconds,
        sources.outbox_latency.delivery.clone(),
    );
    registry.register_collector(Box::new(Counters {
        router: sources.router,
        outbox: sources.outbox,
        parallel: sources.parallel,
        store: sources.store,
        networks: sources.networks,
        connectors: sources.connectors,
    }));
    registry
}

/// Register the role of an instance that runs for failover (`tribridge_role{role}`,
/// `tribridge_role_since_seconds`, `tribridge_lease_token` and
/// `tribridge_active_instance{instance}`): on the standby's registry alone, and on the active
/// one's with everything else.
pub fn register_role(registry: &mut Registry, lease: Arc<crate::vocab::Lease>) {
    registry.register_collector(Box::new(RoleSeries(lease)));
}

/// The series of [`register_role`].
#[derive(Debug)]
struct RoleSeries(Arc<crate::vocab::Lease>);

impl Collector for RoleSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::vocab::Role;
        let view = self.0.view();
        let mut family = encoder.encode_descriptor(
            "tribridge_role",
            "This instance's role between instances on one store: 1 for the role it has.",
            None,
            MetricType::Gauge,
        )?;
        for role in [Role::Active, Role::Standby] {
            ConstGauge::new(i64::from(view.role == role))
                .encode(family.encode_family(&[("role", role.name())])?)?;
        }
        ConstGauge::new(view.since_ms / 1000).encode(encoder.encode_descriptor(
            "tribridge_role_since_seconds",
            "Since when this instance has its role (seconds since the epoch).",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(view.token).encode(encoder.encode_descriptor(
            "tribridge_lease_token",
            "The lease's fencing token: this instance's while active, the last one seen while standby.",
            None,
            MetricType::Gauge,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "tribridge_active_instance",
            "The instance that holds the lease, as this instance last saw it.",
            None,
            MetricType::Gauge,
        )?;
        if let Some(active) = view.active_instance {
            ConstGauge::new(1).encode(family.encode_family(&[("instance", active)])?)?;
        }
        if self.0.is_per_network() {
            let mut family = encoder.encode_descriptor(
                "tribridge_network_lease",
                "Per-network leases: 1 for each network and the instance that holds its lease, as this instance last saw it (its own are current).",
                None,
                MetricType::Gauge,
            )?;
            for holder in self.0.network_holders() {
                if let Some(instance) = holder.holder {
                    ConstGauge::new(1).encode(family.encode_family(&[
                        ("network", holder.network.as_str()),
                        ("instance", instance.as_str()),
                    ])?)?;
                }
            }
        }
        Ok(())
    }
}

/// Render the registry (it reads the store: call it off the async threads).
fn render(registry: &Registry) -> String {
    let mut text = String::with_capacity(8 * 1024);
    // Writing into a String does not fail; a collector's error ends the text early.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!(error = %error, "A metric could not be encoded.");
    }
    text
}

/// The counters kept as atomics elsewhere, and the outbox's depth, read at each scrape.
struct Counters {
    router: Arc<RouterStats>,
    outbox: Arc<OutboxStats>,
    parallel: Arc<Parallel>,
    store: Arc<Store>,
    networks: Vec<String>,
    connectors: Arc<NetworkMetrics>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Counters")
            .field("router", &self.router)
            .field("outbox", &self.outbox)
            .field("networks", &self.networks)
            .finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: &AtomicU64,
) -> Result<(), std::fmt::Error> {
    let value = ConstCounter::new(value.load(Ordering::Relaxed));
    // As the registry does for the metrics registered with it.
    let help = format!("{help}.");
    let metric = encoder.encode_descriptor(name, &help, None, MetricType::Counter)?;
    value.encode(metric)
}

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let router = &self.router;
        let outbox = &self.outbox;
        let parallel = self.parallel.stats();
        for (name, help, value) in [
            (
                "tribridge_events_committed",
                "Inbound events committed with their deliveries",
                &router.committed,
            ),
            (
                "tribridge_events_echoes",
                "Inbound events dropped as echoes of the bridge's own deliveries",
                &router.echoes,
            ),
            (
                "tribridge_events_duplicates",
                "Inbound events dropped because their network id was already committed",
                &router.duplicates,
            ),
            (
                "tribridge_events_unrouted",
                "Inbound events from channels that route nowhere",
                &router.unrouted,
            ),
            (
                "tribridge_events_unknown_targets",
                "Edits, deletes and reactions of messages the bridge never saw",
                &router.unknown_targets,
            ),
            (
                "tribridge_events_loops_broken",
                "Messages dropped because bridges passed them around in a loop",
                &router.loops_broken,
            ),
            (
                "tribridge_deliveries_queued",
                "Deliveries queued in the outbox",
                &router.deliveries_queued,
            ),
            (
                "tribridge_deliveries_delivered",
                "Deliveries acknowledged by their destination",
                &outbox.delivered,
            ),
            (
                "tribridge_deliveries_retried",
                "Delivery attempts that failed and will be retried",
                &outbox.retried,
            ),
            (
                "tribridge_deliveries_failed",
                "Deliveries refused for good (kept as failed)",
                &outbox.failed,
            ),
            (
                "tribridge_parallel_copies",
                "Copies of the bridge's messages said by a parallel bridge, dropped",
                &parallel.copies,
            ),
            (
                "tribridge_parallel_covered",
                "Deliveries acknowledged by a parallel bridge's copy instead of being sent",
                &parallel.covered,
            ),
            (
                "tribridge_parallel_stood_in",
                "Deliveries sent after all because a parallel bridge's copy did not come",
                &parallel.stood_in,
            ),
        ] {
            counter(&mut encoder, name, help, value)?;
        }
        match self.store.outbox_depth() {
            Ok(mut depth) => {
                for network in &self.networks {
                    for state in ["pending", "failed"] {
                        if !depth.iter().any(|(n, s, _)| n == network && s == state) {
                            depth.push((network.clone(), state.to_owned(), 0));
                        }
                    }
                }
                depth.sort();
                let mut family = encoder.encode_descriptor(
                    "tribridge_outbox_deliveries",
                    "Deliveries in the outbox, by destination network and state (pending or failed).",
                    None,
                    MetricType::Gauge,
                )?;
                for (network, state, count) in depth {
                    let labels = [("network", network), ("state", state)];
                    ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "Cannot count the outbox for the metrics.");
            }
        }
        let series = self.connectors.read();
        let mut start = 0;
        while start < series.len() {
            let first = &series[start];
            let end = series[start..]
                .iter()
                .position(|s| s.name != first.name)
                .map_or(series.len(), |offset| start + offset);
            let kind = match first.kind {
                SeriesKind::Counter => MetricType::Counter,
                SeriesKind::Gauge => MetricType::Gauge,
            };
            let help = format!("{}.", first.help);
            let mut family = encoder.encode_descriptor(first.name, &help, None, kind)?;
            for one in &series[start..end] {
                let labels = [("network", one.network.clone())];
                match one.kind {
                    SeriesKind::Counter => ConstCounter::new(u64::try_from(one.value).unwrap_or(0))
                        .encode(family.encode_family(&labels)?)?,
                    SeriesKind::Gauge => {
                        ConstGauge::new(one.value).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
            start = end;
        }
        Ok(())
    }
}

/// The media type of the `OpenMetrics` text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A writer whose heartbeat is older than this is stalled: `/healthz` answers 503 and the
/// systemd watchdog is not pinged. (An idle writer beats every
/// [`crate::group_commit::IDLE_BEAT`]; a transaction waits at most 10 s for a lock.)
pub const WRITER_STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// What the health endpoints read.
#[derive(Clone)]
pub struct Health {
    /// The store writer's sign of life.
    pub writer: crate::group_commit::Heartbeat,
    /// What the connectors report of their networks.
    pub status: Arc<crate::vocab::Status>,
    /// The instance's lease when it runs for failover: a standby is alive without a writer,
    /// and never ready (a load balancer sends nothing to it).
    pub lease: Option<Arc<crate::vocab::Lease>>,
}

impl Health {
    /// The role when this instance is standby.
    fn standby(&self) -> Option<crate::vocab::RoleView> {
        let view = self.lease.as_ref()?.view();
        (view.role == crate::vocab::Role::Standby).then_some(view)
    }
}

impl Health {
    /// `/healthz`: the process answers and the store's writer thread is alive (its heartbeat
    /// moved within [`WRITER_STALLED_AFTER`]); the body says which.
    #[must_use]
    pub fn live(&self) -> (bool, serde_json::Value) {
        if let Some(view) = self.standby() {
            return (
                true,
                serde_json::json!({"status": "ok", "role": "standby", "active": view.active_instance}),
            );
        }
        let age = self.writer.age();
        let alive = age < WRITER_STALLED_AFTER;
        (
            alive,
            serde_json::json!({
                "status": if alive { "ok" } else { "stalled" },
                "writer_heartbeat_age_ms": u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            }),
        )
    }

    /// `/readyz`: every configured network connected and in every channel its gateways name;
    /// the body names each network that is not, with the channels it is missing.
    #[must_use]
    pub fn ready(&self) -> (bool, serde_json::Value) {
        if let Some(view) = self.standby() {
            return (
                false,
                serde_json::json!({
                    "status": "not ready",
                    "role": "standby",
                    "active": view.active_instance,
                }),
            );
        }
        let not_ready = self.status.not_ready();
        let ready = not_ready.is_empty();
        let mut body = serde_json::json!({
            "status": if ready { "ready" } else { "not ready" },
            "not_ready": not_ready,
        });
        // Per-network leases: ready when every network this instance holds is connected.
        if let Some(lease) = self.lease.as_ref().filter(|lease| lease.is_per_network()) {
            let held: Vec<String> = lease
                .held_networks()
                .into_iter()
                .map(|(network, _)| network)
                .collect();
            body["held"] = serde_json::json!(held);
        }
        (ready, body)
    }
}

/// Serve `GET /metrics`, `GET /healthz` and `GET /readyz` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: Health,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};

    type Shared = (Arc<Registry>, Health);

    async fn answer(State((registry, _)): State<Shared>) -> Response {
        // The outbox's depth is a store read: off the async threads.
        match tokio::task::spawn_blocking(move || render(&registry)).await {
            Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }

    fn judged((good, body): (bool, serde_json::Value)) -> Response {
        let status = if good {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }

    async fn healthz(State((_, health)): State<Shared>) -> Response {
        judged(health.live())
    }

    async fn readyz(State((_, health)): State<Shared>) -> Response {
        judged(health.ready())
    }

    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(answer))
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .with_state((registry, health));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
