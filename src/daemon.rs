//! The daemon: opens the store, builds the router and one connector per network, starts the
//! outbox workers, and runs until it is told to stop.
//!
//! Shutdown order matters: the outbox workers stop first (each finishes the delivery it has in
//! hand, so nothing acknowledged is sent again), then the connectors say goodbye to their
//! servers, then the store closes. Pending deliveries stay in the outbox for the next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::connector::BuildContext;
use crate::connector::supervisor::ReconnectPolicy;
use crate::files::{FileLinks, FileStore, Files};
use crate::outbox::Outbox;
use crate::parallel::Standin;
use crate::router::Router;
use crate::store::{Store, StoreError};

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be opened.
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    /// The file store (or the media link key) could not be opened.
    #[error("cannot open the file store: {0}")]
    Files(std::io::Error),
    /// The media endpoint could not listen.
    #[error("the media endpoint cannot listen on {address}: {source}")]
    MediaEndpoint {
        /// `media_listen`.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics endpoint could not listen.
    #[error("the metrics endpoint cannot listen on {address}: {source}")]
    MetricsEndpoint {
        /// `metrics_listen`.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// How long outbox workers get to finish their delivery in hand at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Run the bridge until `shutdown` is cancelled. `on_ready` is called once every connector and
/// worker has been started (the systemd notification hooks in here).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(),
) -> Result<(), DaemonError> {
    let store = Arc::new(Store::open(&config.state_dir)?);
    // The history's test-only clock seam moves the stamp of received messages too.
    store.set_clock_skew_ms(crate::archive::clock_skew_ms());
    let topology = Arc::new(config.topology());
    let mut destinations = topology.destinations().to_vec();
    for pending in store.pending_destinations()? {
        if !destinations.contains(&pending) {
            tracing::warn!(destination = %pending, "Deliveries are pending for a channel that is no longer in any gateway; they stay in the outbox.");
        }
    }
    destinations.sort();
    let outbox = Arc::new(Outbox::new(&destinations));
    let router = Router::new(Arc::clone(&topology), Arc::clone(&store), outbox.clone());
    router.people().link(config.identities.clone());
    for network in &config.networks {
        router
            .parallel()
            .set_parallel_bridges(&network.id, &network.parallel_bridges);
    }
    let files = Arc::new(open_files(&config).await?);

    let connectors_shutdown = CancellationToken::new();
    let workers_shutdown = CancellationToken::new();
    let mut connector_tasks = JoinSet::new();
    let mut handles = HashMap::new();
    let network_metrics = Arc::new(crate::vocab::network_metrics::NetworkMetrics::default());
    for network in &config.networks {
        let channels = network_channels(&config, &network.id);
        if channels.is_empty() {
            tracing::warn!(network = %network.id, "Network is in no gateway; not connecting.");
            continue;
        }
        let (handle, task) = network.build(BuildContext {
            router: router.clone(),
            remote_nick_format: network
                .remote_nick_format
                .clone()
                .unwrap_or_else(|| config.remote_nick_format.clone()),
            channels,
            gateways: config
                .gateways
                .iter()
                .map(|gateway| (gateway.name.clone(), gateway.settings()))
                .collect(),
            shutdown: connectors_shutdown.clone(),
            store: Arc::clone(&store),
            state_dir: config.state_dir.clone(),
            files: Arc::clone(&files),
            reconnect: ReconnectPolicy {
                max: config.reconnect_max,
                ..ReconnectPolicy::default()
            },
            metrics: Arc::clone(&network_metrics),
        });
        handles.insert(network.id.clone(), handle);
        connector_tasks.spawn(task.run());
    }
    connector_tasks.spawn(prune_files(
        Arc::clone(&files),
        config.files.retention,
        connectors_shutdown.clone(),
    ));
    let policies = Arc::new(crate::archive::Retention::from_gateways(&config.gateways));
    connector_tasks.spawn(chain_archive(
        Arc::clone(&store),
        Arc::clone(&policies),
        connectors_shutdown.clone(),
    ));
    connector_tasks.spawn(prune_history(
        Arc::clone(&store),
        Arc::clone(&files),
        policies,
        connectors_shutdown.clone(),
    ));
    if let Some(address) = config.files.media_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::MediaEndpoint { address, source })?;
        tracing::info!(address = %address, public_url = config.files.media_public_url.as_deref().unwrap_or_default(), "Media endpoint listening.");
        let serving =
            crate::files::serve(listener, Arc::clone(&files), connectors_shutdown.clone());
        connector_tasks.spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(error = %error, "The media endpoint stopped.");
            }
        });
    }
    if let Some(address) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::MetricsEndpoint { address, source })?;
        let registry = crate::metrics::registry(crate::metrics::Sources {
            router: router.shared_stats(),
            writer: router.writer().latency().clone(),
            outbox: outbox.stats(),
            outbox_latency: outbox.latency(),
            parallel: Arc::clone(router.parallel()),
            store: Arc::clone(&store),
            networks: config.networks.iter().map(|n| n.id.clone()).collect(),
            connectors: Arc::clone(&network_metrics),
        });
        tracing::info!(address = %address, "Metrics endpoint listening (GET /metrics).");
        let serving =
            crate::metrics::serve(listener, Arc::new(registry), connectors_shutdown.clone());
        connector_tasks.spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(error = %error, "The metrics endpoint stopped.");
            }
        });
    }
    // Without its socket (a state_dir path too long for one, say) the bridge still runs.
    match crate::admin::bind(&config.state_dir) {
        Err(error) => {
            tracing::error!(error = %error, "Cannot open the admin socket; `tribridge status` and `tribridge failed` will not reach this daemon.");
        }
        Ok(admin_listener) => {
            connector_tasks.spawn(crate::admin::serve(
                admin_listener,
                crate::admin::socket_path(&config.state_dir),
                Arc::new(crate::admin::Admin {
                    store: Arc::clone(&store),
                    wake: outbox.clone(),
                    status: Arc::clone(router.status()),
                    networks: config
                        .networks
                        .iter()
                        .map(|network| (network.id.clone(), network_channels(&config, &network.id)))
                        .collect(),
                    destinations: destinations.clone(),
                }),
                connectors_shutdown.clone(),
            ));
        }
    }
    let mut worker_tasks = JoinSet::new();
    // Deliveries on routes left to a parallel bridge wait for its copy (crate::parallel).
    let endpoints: HashMap<String, Standin<_>> = handles
        .iter()
        .map(|(network, handle)| {
            (
                network.clone(),
                Standin::new(
                    handle.clone(),
                    Arc::clone(router.parallel()),
                    workers_shutdown.clone(),
                ),
            )
        })
        .collect();
    outbox.spawn_workers(
        router.writer(),
        &store,
        &endpoints,
        &workers_shutdown,
        &mut worker_tasks,
    );
    tracing::info!(
        networks = handles.len(),
        gateways = config.gateways.len(),
        destinations = destinations.len(),
        "tribridge started."
    );
    on_ready();

    shutdown.cancelled().await;
    tracing::info!("Shutting down: finishing deliveries in hand.");
    workers_shutdown.cancel();
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while worker_tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            "Some deliveries did not finish in time; they stay in the outbox and may be sent again after restart."
        );
        worker_tasks.abort_all();
    }
    connectors_shutdown.cancel();
    if tokio::time::timeout(Duration::from_secs(5), async {
        while connector_tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        connector_tasks.abort_all();
    }
    let router_stats = router.stats();
    let outbox_stats = outbox.stats();
    let parallel_stats = router.parallel().stats();
    tracing::info!(
        committed = router_stats.committed.load(Ordering::Relaxed),
        echoes = router_stats.echoes.load(Ordering::Relaxed),
        duplicates = router_stats.duplicates.load(Ordering::Relaxed),
        unrouted = router_stats.unrouted.load(Ordering::Relaxed),
        loops_broken = router_stats.loops_broken.load(Ordering::Relaxed),
        parallel_copies = parallel_stats.copies.load(Ordering::Relaxed),
        covered_by_parallel = parallel_stats.covered.load(Ordering::Relaxed),
        stood_in = parallel_stats.stood_in.load(Ordering::Relaxed),
        first_sent_alone = parallel_stats.first_sent.load(Ordering::Relaxed),
        delivered = outbox_stats.delivered.load(Ordering::Relaxed),
        retried = outbox_stats.retried.load(Ordering::Relaxed),
        failed = outbox_stats.failed.load(Ordering::Relaxed),
        "tribridge stopped."
    );
    Ok(())
}

/// The channels of `network` that appear in gateways, as configured, each once.
fn network_channels(config: &Config, network: &str) -> Vec<String> {
    let mut channels: Vec<String> = Vec::new();
    for gateway in &config.gateways {
        for channel in gateway.channels.iter().filter(|c| c.network == network) {
            if !channels.contains(&channel.channel) {
                channels.push(channel.channel.clone());
            }
        }
    }
    channels
}

/// The file store, and signed links when the media endpoint is configured.
async fn open_files(config: &Config) -> Result<Files, DaemonError> {
    let state_dir = config.state_dir.clone();
    let max = config.files.max_file_bytes;
    let public_url = config.files.media_public_url.clone();
    tokio::task::spawn_blocking(move || {
        let store = FileStore::open(&state_dir, max)?;
        let links = match public_url {
            Some(url) => Some(FileLinks::load_or_create(&state_dir, &url)?),
            None => None,
        };
        Ok(Files { store, links })
    })
    .await
    .map_err(|error| DaemonError::Files(std::io::Error::other(error)))?
    .map_err(DaemonError::Files)
}

/// How often new messages of archived gateways are chained ([`crate::archive::chain`]).
const ARCHIVE_CHAIN_EVERY: Duration = Duration::from_secs(1);

/// Chain the messages of gateways with `archive = true` every [`ARCHIVE_CHAIN_EVERY`], logging
/// each gateway's newest chain hash when it moved (the checkpoint an auditor compares).
async fn chain_archive(
    store: Arc<Store>,
    policies: Arc<crate::archive::Retention>,
    shutdown: CancellationToken,
) {
    loop {
        let (chaining, policies_now) = (Arc::clone(&store), Arc::clone(&policies));
        match tokio::task::spawn_blocking(move || {
            crate::archive::chain::chain_new(&chaining, policies_now.as_ref())
        })
        .await
        {
            Ok(Ok(chained)) => {
                for (gateway, seq, hash) in &chained.heads {
                    tracing::info!(gateway = %gateway, seq, chain_hash = %hash, records = chained.records, "Archive checkpoint.");
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Cannot chain the archive; retrying later.");
            }
            Err(error) => tracing::warn!(error = %error, "The archive's chaining stopped."),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(ARCHIVE_CHAIN_EVERY) => {}
        }
    }
}

/// How often the history's retention is applied (and once at start).
const HISTORY_PRUNE_EVERY: Duration = Duration::from_hours(1);

/// Forget messages past their gateway's `retention_days` ([`crate::archive`]), at start and
/// then every [`HISTORY_PRUNE_EVERY`]. Each batch is its own blocking call, so the runtime and
/// the writer get their turn between batches.
async fn prune_history(
    store: Arc<Store>,
    files: Arc<Files>,
    retention: Arc<crate::archive::Retention>,
    shutdown: CancellationToken,
) {
    loop {
        let (store, files, retention) = (
            Arc::clone(&store),
            Arc::clone(&files),
            Arc::clone(&retention),
        );
        let pass = tokio::task::spawn_blocking(move || {
            // Chain first: a message is chained before it can be forgotten.
            crate::archive::chain::chain_new(&store, retention.as_ref())?;
            crate::archive::prune(
                &store,
                Some(&files.store),
                &retention,
                crate::archive::now_ms(),
                std::thread::yield_now,
            )
        })
        .await;
        match pass {
            Ok(Ok(pruned)) if pruned.messages > 0 || pruned.deliveries > 0 || pruned.files > 0 => {
                tracing::info!(
                    messages = pruned.messages,
                    deliveries = pruned.deliveries,
                    files = pruned.files,
                    kept_pending = pruned.kept_pending,
                    batches = pruned.batches,
                    "History retention pass done: messages past retention_days forgotten."
                );
            }
            Ok(Ok(pruned)) => tracing::debug!(
                kept_pending = pruned.kept_pending,
                batches = pruned.batches,
                "History retention pass done: nothing to forget."
            ),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Cannot apply the history's retention; retrying later.");
            }
            Err(error) => tracing::warn!(error = %error, "The history's retention pass stopped."),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(HISTORY_PRUNE_EVERY) => {}
        }
    }
}

/// Remove stored files older than the retention, at start and then daily.
async fn prune_files(files: Arc<Files>, retention: Duration, shutdown: CancellationToken) {
    loop {
        let pruning = Arc::clone(&files);
        match tokio::task::spawn_blocking(move || pruning.store.prune(retention)).await {
            Ok(Ok(removed)) if removed > 0 => {
                tracing::info!(removed, "Removed stored files past file_retention_days.");
            }
            Ok(Err(error)) => tracing::warn!(error = %error, "Cannot prune the file store."),
            _ => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_hours(24)) => {}
        }
    }
}
