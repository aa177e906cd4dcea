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

use crate::config::{Config, NetworkConfig};
use crate::connector::supervisor::ReconnectPolicy;
use crate::connector::{BuildContext, ConnectorHandle};
use crate::files::{FileLinks, FileStore, Files};
use crate::model::ChannelRef;
use crate::outbox::Outbox;
use crate::parallel::Standin;
use crate::router::Router;
use crate::store::{LeaseTick, Store, StoreError};
use crate::vocab::lease::{Fenced, Lease, STANDBY_POLL, WHOLE_INSTANCE};

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

/// How long a connector gets to say goodbye to its server when it stops.
const CONNECTOR_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Reloading the configuration while the daemon runs (`SIGHUP`, `tribridge reload`).
pub struct Reloads {
    /// Each message asks for a reload.
    pub requests: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// Read and validate the configuration again: the new one, or its located errors.
    pub load: Box<dyn Fn() -> Result<Config, String> + Send + Sync>,
    /// Told when a reload starts and how it ended (systemd's `RELOADING=1` and `READY=1`).
    pub notify: Box<dyn FnMut(ReloadEvent<'_>) + Send>,
}

/// A step of a reload, for [`Reloads::notify`].
#[derive(Debug)]
pub enum ReloadEvent<'a> {
    /// A reload was asked for; the file is read now.
    Started,
    /// The file was valid and its difference is applied.
    Applied(&'a ReloadSummary),
    /// The file was not valid (its located errors); nothing changed.
    Refused(&'a str),
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Networks connected for the first time.
    pub networks_added: Vec<String>,
    /// Networks disconnected for good (removed, or in no gateway any more).
    pub networks_removed: Vec<String>,
    /// Networks whose section changed (or whose channels changed, on a network that cannot
    /// follow them): reconnected.
    pub networks_reconnected: Vec<String>,
    /// Networks that joined or left channels on their connection.
    pub networks_rejoined_channels: Vec<String>,
    /// Destination channels whose delivery started.
    pub destinations_added: usize,
    /// Destination channels whose delivery stopped (their queued deliveries stay in the store).
    pub destinations_removed: usize,
    /// Whether the linked identities (`[[identity]]`) changed, and were linked anew.
    pub identities_relinked: bool,
    /// Settings that changed but are read only at start (applied at the next restart).
    pub needs_restart: Vec<&'static str>,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "networks added [{}], removed [{}], reconnected [{}], following new channels [{}]; \
             {} destinations added, {} removed",
            self.networks_added.join(", "),
            self.networks_removed.join(", "),
            self.networks_reconnected.join(", "),
            self.networks_rejoined_channels.join(", "),
            self.destinations_added,
            self.destinations_removed,
        )?;
        if self.identities_relinked {
            write!(formatter, "; [[identity]] linked anew")?;
        }
        if !self.needs_restart.is_empty() {
            write!(
                formatter,
                "; changed but applied only at the next start: {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Run the bridge until `shutdown` is cancelled. `on_ready` is called once every connector and
/// worker has been started (the systemd notification hooks in here).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(),
) -> Result<(), DaemonError> {
    run_with_reloads(config, shutdown, on_ready, None).await
}

/// [`run`], applying a new configuration each time `reloads` asks.
///
/// On the PostgreSQL store the instance runs for failover ([`crate::vocab::lease`]): standby
/// until it takes the lease, then active (the start below, every cursor and pending delivery
/// resumed from the store) until it stops or loses the lease, then standby again.
pub async fn run_with_reloads(
    config: Config,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(),
    reloads: Option<Reloads>,
) -> Result<(), DaemonError> {
    let store = Arc::new(Store::open_configured(
        &config.state_dir,
        config.store_url.as_ref().map(crate::config::Secret::expose),
    )?);
    tracing::info!(backend = store.backend_name(), "Store opened.");
    // The history's test-only clock seam moves the stamp of received messages too.
    store.set_clock_skew_ms(crate::archive::clock_skew_ms());
    let mut on_ready = Some(on_ready);
    let mut reloads = reloads;
    if store.backend_name() != "postgres" {
        let always = CancellationToken::new();
        run_active(
            config,
            store,
            None,
            always,
            &shutdown,
            &mut on_ready,
            &mut reloads,
        )
        .await?;
        return Ok(());
    }
    if config.failover_mode == crate::config::FailoverMode::Network {
        let lease = Arc::new(Lease::per_network(
            config.instance_name(),
            config.failover_after,
        ));
        store.set_lease(Arc::clone(&lease))?;
        tracing::info!(
            instance = lease.instance(),
            failover_after_ms = u64::try_from(lease.ttl().as_millis()).unwrap_or(u64::MAX),
            "Failover per network: this instance runs the networks whose lease it holds, its share of them."
        );
        let always = CancellationToken::new();
        run_active(
            config,
            store,
            Some(lease),
            always,
            &shutdown,
            &mut on_ready,
            &mut reloads,
        )
        .await?;
        return Ok(());
    }
    let lease = Arc::new(Lease::new(config.instance_name(), config.failover_after));
    store.set_lease(Arc::clone(&lease))?;
    tracing::info!(
        instance = lease.instance(),
        failover_after_ms = u64::try_from(lease.ttl().as_millis()).unwrap_or(u64::MAX),
        "Failover: this instance is active only while it holds the store's lease."
    );
    let mut config = config;
    loop {
        let Some(term) = standby(
            &mut config,
            &store,
            &lease,
            &shutdown,
            &mut on_ready,
            &mut reloads,
        )
        .await?
        else {
            return Ok(());
        };
        let renewing = tokio::spawn(keep_lease(
            Arc::clone(&store),
            Arc::clone(&lease),
            term.clone(),
        ));
        let ended = run_active(
            config.clone(),
            Arc::clone(&store),
            Some(Arc::clone(&lease)),
            term,
            &shutdown,
            &mut on_ready,
            &mut reloads,
        )
        .await;
        renewing.abort();
        config = ended?;
        if shutdown.is_cancelled() {
            // Stopped cleanly: let the lease go, so that a standby takes over at once.
            if let Some(token) = lease.fence() {
                let (releasing, holder) = (Arc::clone(&store), lease.instance().to_owned());
                let released = tokio::task::spawn_blocking(move || {
                    releasing.release_lease(WHOLE_INSTANCE, &holder, token)
                })
                .await;
                if let Ok(Err(error)) = released {
                    tracing::warn!(error = %error, "Cannot release the lease; a standby takes over when it expires.");
                }
            }
            return Ok(());
        }
    }
}

/// Wait as standby: the store, `/metrics`, the health endpoints and the admin socket open, no
/// network connection; try to take the lease every [`STANDBY_POLL`]. Returns the active term's
/// token once this instance holds the lease, `None` when told to stop.
async fn standby<F: FnOnce()>(
    config: &mut Config,
    store: &Arc<Store>,
    lease: &Arc<Lease>,
    shutdown: &CancellationToken,
    on_ready: &mut Option<F>,
    reloads: &mut Option<Reloads>,
) -> Result<Option<CancellationToken>, DaemonError> {
    let services_shutdown = CancellationToken::new();
    let mut services = JoinSet::new();
    let status = Arc::new(crate::vocab::Status::default());
    if let Some(address) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::MetricsEndpoint { address, source })?;
        let mut registry = prometheus_client::registry::Registry::default();
        crate::metrics::register_role(&mut registry, Arc::clone(lease));
        let health = crate::metrics::Health {
            writer: crate::group_commit::Heartbeat::default(),
            status: Arc::clone(&status),
            lease: Some(Arc::clone(lease)),
        };
        spawn_metrics(
            &mut services,
            listener,
            registry,
            health,
            services_shutdown.clone(),
        );
    }
    if let Ok(admin_listener) = crate::admin::bind(&config.state_dir) {
        services.spawn(crate::admin::serve(
            admin_listener,
            crate::admin::socket_path(&config.state_dir),
            Arc::new(crate::admin::Admin {
                store: Arc::clone(store),
                wake: Arc::new(Outbox::new(&[])),
                status,
                lease: Some(Arc::clone(lease)),
            }),
            services_shutdown.clone(),
        ));
    }
    if let Some(ready) = on_ready.take() {
        ready();
    }
    let taken = loop {
        let sent_at = std::time::Instant::now();
        let (taking, instance, ttl) = (Arc::clone(store), lease.instance().to_owned(), lease.ttl());
        let attempt = tokio::task::spawn_blocking(move || {
            let token = taking.take_lease(WHOLE_INSTANCE, &instance, ttl)?;
            let holder = match token {
                Some(_) => None,
                None => taking.lease_holder(WHOLE_INSTANCE)?,
            };
            Ok::<_, StoreError>((token, holder))
        })
        .await;
        match attempt {
            Ok(Ok((Some(token), _))) => break Some(lease.became_active(token, sent_at)),
            Ok(Ok((None, holder))) => {
                let token = holder.as_ref().map_or(0, |(_, token, _)| *token);
                let active = holder
                    .as_ref()
                    .filter(|(_, _, unexpired)| *unexpired)
                    .map(|(name, _, _)| name.as_str());
                lease.saw_active(active, token);
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Standby: cannot reach the store to take the lease; trying again.");
            }
            Err(error) => tracing::warn!(error = %error, "Standby: the lease attempt stopped."),
        }
        let requested = async {
            match reloads.as_mut() {
                Some(reloads) => reloads.requests.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break None,
            () = tokio::time::sleep(STANDBY_POLL) => {}
            request = requested => {
                if let (Some(()), Some(reloads)) = (request, reloads.as_mut()) {
                    (reloads.notify)(ReloadEvent::Started);
                    match (reloads.load)() {
                        Ok(new) => {
                            *config = new;
                            tracing::info!("Configuration reloaded; standby, it applies when this instance becomes active.");
                            (reloads.notify)(ReloadEvent::Applied(&ReloadSummary::default()));
                        }
                        Err(errors) => {
                            tracing::error!(errors = %errors, "Reload refused: the configuration has errors; nothing changed.");
                            (reloads.notify)(ReloadEvent::Refused(&errors));
                        }
                    }
                } else if request.is_none() {
                    *reloads = None;
                }
            }
        }
    };
    services_shutdown.cancel();
    if tokio::time::timeout(CONNECTOR_STOP_TIMEOUT, async {
        while services.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        services.abort_all();
    }
    Ok(taken)
}

/// Renew the lease every [`Lease::renew_every`] while this instance is active; when another
/// instance holds it, or no renewal succeeded within the lease's time, step down
/// ([`Lease::lost`], which ends the active term).
async fn keep_lease(store: Arc<Store>, lease: Arc<Lease>, term: CancellationToken) {
    let mut ticks = tokio::time::interval(lease.renew_every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            () = term.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(token) = lease.fence() else {
            return;
        };
        let sent_at = std::time::Instant::now();
        let (renewing, instance, ttl) =
            (Arc::clone(&store), lease.instance().to_owned(), lease.ttl());
        let renewed = tokio::task::spawn_blocking(move || {
            renewing.renew_lease(WHOLE_INSTANCE, &instance, token, ttl)
        })
        .await;
        match renewed {
            Ok(Ok(true)) => lease.renewed(sent_at),
            Ok(Ok(false)) => {
                lease.lost("another instance holds the lease");
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Cannot renew the lease; nothing is sent until it is renewed.");
                if lease.renewal_age().is_none_or(|age| age >= lease.ttl()) {
                    lease.lost("no renewal within failover_after");
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// The active part: build everything, run until `shutdown` or the end of the `term` (the lease
/// lost), stop everything. Returns the configuration last applied.
async fn run_active<F: FnOnce()>(
    config: Config,
    store: Arc<Store>,
    lease: Option<Arc<Lease>>,
    term: CancellationToken,
    shutdown: &CancellationToken,
    on_ready: &mut Option<F>,
    reloads: &mut Option<Reloads>,
) -> Result<Config, DaemonError> {
    let started_with = config.clone();
    let topology = Arc::new(config.topology());
    let outbox = Arc::new(Outbox::new(&[]));
    let router = Router::new(Arc::clone(&topology), Arc::clone(&store), outbox.clone());
    router.people().link(config.identities.clone());
    let files = Arc::new(open_files(&config).await?);
    let network_metrics = Arc::new(crate::vocab::network_metrics::NetworkMetrics::default());
    let status = Arc::clone(router.status());
    let services_shutdown = CancellationToken::new();
    let mut services = JoinSet::new();
    services.spawn(prune_files(
        Arc::clone(&files),
        config.files.retention,
        services_shutdown.clone(),
    ));
    if let Some(address) = config.files.media_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::MediaEndpoint { address, source })?;
        tracing::info!(address = %address, public_url = config.files.media_public_url.as_deref().unwrap_or_default(), "Media endpoint listening.");
        let serving = crate::files::serve(listener, Arc::clone(&files), services_shutdown.clone());
        services.spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(error = %error, "The media endpoint stopped.");
            }
        });
    }
    if let Some(address) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| DaemonError::MetricsEndpoint { address, source })?;
        let mut registry = crate::metrics::registry(crate::metrics::Sources {
            router: router.shared_stats(),
            writer: router.writer().latency().clone(),
            outbox: outbox.stats(),
            outbox_latency: outbox.latency(),
            parallel: Arc::clone(router.parallel()),
            store: Arc::clone(&store),
            networks: config.networks.iter().map(|n| n.id.clone()).collect(),
            connectors: Arc::clone(&network_metrics),
        });
        if let Some(lease) = &lease {
            crate::metrics::register_role(&mut registry, Arc::clone(lease));
        }
        tracing::info!(address = %address, "Metrics endpoint listening (GET /metrics).");
        let health = crate::metrics::Health {
            writer: router.writer().heartbeat().clone(),
            status: Arc::clone(&status),
            lease: lease.clone(),
        };
        tracing::info!(address = %address, "Health endpoints listening (GET /healthz, GET /readyz).");
        spawn_metrics(
            &mut services,
            listener,
            registry,
            health,
            services_shutdown.clone(),
        );
    }
    // Without its socket (a state_dir path too long for one, say) the bridge still runs.
    match crate::admin::bind(&config.state_dir) {
        Err(error) => {
            tracing::error!(error = %error, "Cannot open the admin socket; `tribridge status` and `tribridge failed` will not reach this daemon.");
        }
        Ok(admin_listener) => {
            services.spawn(crate::admin::serve(
                admin_listener,
                crate::admin::socket_path(&config.state_dir),
                Arc::new(crate::admin::Admin {
                    store: Arc::clone(&store),
                    wake: outbox.clone(),
                    status: Arc::clone(&status),
                    lease: lease.clone(),
                }),
                services_shutdown.clone(),
            ));
        }
    }
    let mut daemon = Running {
        held: lease
            .as_ref()
            .filter(|lease| lease.is_per_network())
            .map(|_| std::collections::BTreeSet::new()),
        state_dir: config.state_dir.clone(),
        reconnect_max: config.reconnect_max,
        gateway_book: crate::vocab::GatewayBook::default(),
        connectors_shutdown: CancellationToken::new(),
        workers_shutdown: CancellationToken::new(),
        networks: HashMap::new(),
        workers: HashMap::new(),
        history: None,
        unrouted_networks: Vec::new(),
        config: None,
        store,
        router,
        outbox,
        files,
        status,
        network_metrics,
        lease,
    };
    daemon.apply(config).await;
    tracing::info!(
        networks = daemon.networks.len(),
        gateways = daemon.config.as_ref().map_or(0, |c| c.gateways.len()),
        destinations = daemon.workers.len(),
        "tribridge started."
    );
    if let Some(ready) = on_ready.take() {
        ready();
    }
    if let Some(interval) = sd_notify::watchdog_enabled() {
        tracing::info!(
            interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            "Watchdog on: pinging systemd while the store's writer makes progress."
        );
        services.spawn(watchdog(
            interval,
            daemon.router.writer().heartbeat().clone(),
            services_shutdown.clone(),
        ));
    }

    let per_network = daemon.lease.clone().filter(|lease| lease.is_per_network());
    let (latest_tick, mut lease_ticks) = tokio::sync::watch::channel(None);
    let renewal_shutdown = CancellationToken::new();
    let renewal = per_network.as_ref().map(|lease| {
        tokio::spawn(keep_network_leases(
            Arc::clone(&daemon.store),
            Arc::clone(lease),
            latest_tick,
            renewal_shutdown.clone(),
        ))
    });
    let listening = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = match &per_network {
        Some(_) => {
            let waking = Arc::clone(&daemon.outbox);
            match daemon.store.listen_outbox(
                Box::new(move |network| waking.wake_network(network)),
                Arc::clone(&listening),
            ) {
                Ok(thread) => Some(thread),
                Err(error) => {
                    tracing::warn!(error = %error, "Cannot listen for the other instances' deliveries; the workers poll instead.");
                    None
                }
            }
        }
        None => None,
    };
    let mut balance = Balance::default();
    loop {
        let requested = async {
            match reloads.as_mut() {
                Some(reloads) => reloads.requests.recv().await,
                None => std::future::pending().await,
            }
        };
        let lost = async {
            match &per_network {
                Some(lease) => lease.network_lost().await,
                None => std::future::pending().await,
            }
        };
        let tick = async {
            if per_network.is_some() && lease_ticks.changed().await.is_ok() {
                lease_ticks.borrow_and_update().clone()
            } else {
                std::future::pending::<Option<LeaseTick>>().await
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = term.cancelled() => break,
            tick = tick => {
                if let (Some(lease), Some(tick)) = (&per_network, tick) {
                    daemon.lease_tick(lease, tick, &mut balance).await;
                }
            }
            () = lost => daemon.follow_leases(None).await,
            request = requested => {
                let Some(()) = request else {
                    *reloads = None;
                    continue;
                };
                let Some(reloads) = reloads.as_mut() else {
                    continue;
                };
                (reloads.notify)(ReloadEvent::Started);
                match (reloads.load)() {
                    Ok(config) => {
                        let summary = daemon.apply(config).await;
                        tracing::info!(summary = %summary, "Configuration reloaded.");
                        (reloads.notify)(ReloadEvent::Applied(&summary));
                    }
                    Err(errors) => {
                        tracing::error!(errors = %errors, "Reload refused: the configuration has errors; nothing changed, the daemon keeps running on the configuration it has.");
                        (reloads.notify)(ReloadEvent::Refused(&errors));
                    }
                }
            }
        }
    }
    if shutdown.is_cancelled() {
        tracing::info!("Shutting down: finishing deliveries in hand.");
    } else {
        tracing::info!("Stepping down: dropping every network connection; standby.");
    }
    daemon.stop().await;
    // No renewal after this point: a release must not be extended again.
    renewal_shutdown.cancel();
    if let Some(renewal) = renewal {
        let _ = renewal.await;
    }
    listening.store(true, Ordering::Relaxed);
    if let Some(thread) = listener {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    if let Some(lease) = &per_network {
        // Stopped cleanly: every network's lease goes at once (its connection and workers
        // stopped above), and the others count this instance out.
        let (store, instance) = (Arc::clone(&daemon.store), lease.instance().to_owned());
        let mut held = lease.held_networks();
        if let Some(token) = lease.singletons_token() {
            held.push((WHOLE_INSTANCE.to_owned(), token));
        }
        lease.set_singletons(None);
        let released = tokio::task::spawn_blocking(move || {
            for (network, token) in &held {
                store.release_lease(network, &instance, *token)?;
            }
            store.forget_instance(&instance)
        })
        .await;
        if let Ok(Err(error)) = released {
            tracing::warn!(error = %error, "Cannot release the networks' leases; the others take them when they expire.");
        }
        for (network, _) in lease.held_networks() {
            lease.released_network(&network);
        }
    }
    services_shutdown.cancel();
    if tokio::time::timeout(CONNECTOR_STOP_TIMEOUT, async {
        while services.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        services.abort_all();
    }
    let router_stats = daemon.router.stats();
    let outbox_stats = daemon.outbox.stats();
    let parallel_stats = daemon.router.parallel().stats();
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
    Ok(daemon.config.take().unwrap_or(started_with))
}

/// The running daemon: every connector and outbox worker, and the configuration they follow.
struct Running {
    /// The configuration applied (`None` before the first).
    config: Option<Config>,
    /// The first configuration's `state_dir` and `reconnect_max_seconds`, kept until restart.
    state_dir: std::path::PathBuf,
    reconnect_max: Duration,
    store: Arc<Store>,
    router: Router,
    outbox: Arc<Outbox>,
    files: Arc<Files>,
    status: Arc<crate::vocab::Status>,
    network_metrics: Arc<crate::vocab::network_metrics::NetworkMetrics>,
    /// The lease when running for failover: nothing is handed to a network without it.
    lease: Option<Arc<Lease>>,
    gateway_book: crate::vocab::GatewayBook,
    /// The parent of every connector's own token.
    connectors_shutdown: CancellationToken,
    /// The parent of every worker's own token.
    workers_shutdown: CancellationToken,
    networks: HashMap<String, RunningNetwork>,
    workers: HashMap<ChannelRef, RunningWorker>,
    /// The tasks that follow the gateways' history policies (archive chain, retention).
    history: Option<(CancellationToken, Vec<tokio::task::JoinHandle<()>>)>,
    /// Networks whose unrouted-deliveries gauge was set above zero.
    unrouted_networks: Vec<String>,
    /// In the per-network failover mode, the networks this instance runs (those whose lease
    /// it holds); `None`: every network of the configuration.
    held: Option<std::collections::BTreeSet<String>>,
}

/// How many lease ticks in a row an instance must hold more than its share before it lets a
/// network go (so that networks do not flap while instances come and go).
const RELEASE_AFTER_TICKS: u32 = 3;

/// Every how many lease ticks the workers of the held networks read the store even without a
/// notification (one missed while the LISTEN connection was down).
const SAFETY_POLL_TICKS: u32 = 3;

/// The per-network balancing's memory between ticks.
#[derive(Default)]
struct Balance {
    /// Ticks in a row with more networks than the share.
    over_share: u32,
    /// Ticks since the last safety poll.
    since_poll: u32,
}

/// One network's connector.
struct RunningNetwork {
    /// Its section, and the sender format it was built with.
    config: NetworkConfig,
    nick_format: String,
    /// The channels of it that gateways link, as configured.
    channels: Vec<String>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    endpoint: Standin<Fenced<ConnectorHandle>>,
    /// Tells a connector that follows channel changes its channels after a reload.
    channel_updates: tokio::sync::watch::Sender<Vec<String>>,
}

/// One destination's outbox worker.
struct RunningWorker {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What a network is in the configuration: its section, its sender format, its channels.
struct Wanted {
    config: NetworkConfig,
    nick_format: String,
    channels: Vec<String>,
}

/// The per-network mode's renewal, apart from the daemon's loop (so that a network being
/// stopped never delays it): every [`Lease::renew_every`], stamp the heartbeat and renew every
/// lease this instance holds (its networks and `*`) in one statement, mark the ones it no
/// longer holds as lost, and publish what the tick read for the balancing.
async fn keep_network_leases(
    store: Arc<Store>,
    lease: Arc<Lease>,
    latest: tokio::sync::watch::Sender<Option<LeaseTick>>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(lease.renew_every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let held = lease.held_networks();
        let mut asked = held.clone();
        if let Some(token) = lease.singletons_token() {
            asked.push((WHOLE_INSTANCE.to_owned(), token));
        }
        let sent_at = std::time::Instant::now();
        let (renewing, instance, ttl) =
            (Arc::clone(&store), lease.instance().to_owned(), lease.ttl());
        let tick =
            tokio::task::spawn_blocking(move || renewing.lease_tick(&instance, &asked, ttl)).await;
        let tick = match tick {
            Ok(Ok(tick)) => tick,
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Cannot renew the networks' leases; nothing is sent to them until they are renewed.");
                for (network, _) in &held {
                    if lease.renewal_age_of(network).is_none_or(|age| age >= ttl) {
                        lease.lost_network(network, "no renewal within failover_after");
                    }
                }
                continue;
            }
            Err(_) => return,
        };
        lease.renewed_networks(&tick.renewed, sent_at);
        if let Some(token) = lease.singletons_token() {
            let renewed = tick.renewed.iter().any(|scope| scope == WHOLE_INSTANCE);
            lease.set_singletons(renewed.then_some((token, sent_at)));
        }
        for (network, _) in &held {
            if !tick.renewed.contains(network) {
                lease.lost_network(network, "another instance holds the network's lease");
            }
        }
        latest.send_replace(Some(tick));
    }
}

/// The ids of the networks of `config` that a gateway links (those a lease is taken for).
fn wanted_networks_quiet(config: &Config) -> Vec<String> {
    config
        .networks
        .iter()
        .filter(|network| {
            config
                .gateways
                .iter()
                .any(|gateway| gateway.channels.iter().any(|c| c.network == network.id))
        })
        .map(|network| network.id.clone())
        .collect()
}

/// Every network of `config` that a gateway links, with its channels in file order.
fn wanted_networks(config: &Config) -> Vec<Wanted> {
    let mut wanted = Vec::new();
    for network in &config.networks {
        let mut channels: Vec<String> = Vec::new();
        for gateway in &config.gateways {
            for channel in gateway.channels.iter().filter(|c| c.network == network.id) {
                if !channels.contains(&channel.channel) {
                    channels.push(channel.channel.clone());
                }
            }
        }
        if channels.is_empty() {
            tracing::warn!(network = %network.id, "Network is in no gateway; not connecting.");
            continue;
        }
        wanted.push(Wanted {
            config: network.clone(),
            nick_format: network
                .remote_nick_format
                .clone()
                .unwrap_or_else(|| config.remote_nick_format.clone()),
            channels,
        });
    }
    wanted
}

impl Running {
    /// Make the running connectors and workers those of `config`, touching only what changed:
    /// a network whose section, sender format and channels are the same keeps its connection
    /// (one that follows channel changes keeps it when only its channels changed); a changed
    /// one is stopped and built again; destinations no gateway links any more stop (their
    /// queued deliveries stay in the store) and new ones start from the store.
    async fn apply(&mut self, config: Config) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        if let Some(old) = &self.config {
            for (changed, key) in [
                (old.state_dir != config.state_dir, "state_dir"),
                (
                    old.metrics_listen != config.metrics_listen,
                    "metrics_listen",
                ),
                (old.files != config.files, "the [general] file keys"),
                (
                    old.reconnect_max != config.reconnect_max,
                    "reconnect_max_seconds",
                ),
                (
                    old.failover_after != config.failover_after
                        || old.instance_name != config.instance_name,
                    "failover_after and instance_name",
                ),
            ] {
                if changed {
                    summary.needs_restart.push(key);
                }
            }
        }
        let mut wanted = wanted_networks(&config);
        if let Some(held) = &self.held {
            wanted.retain(|w| held.contains(&w.config.id));
        }
        let topology = Arc::new(config.topology());
        let destinations: std::collections::BTreeSet<ChannelRef> =
            topology.destinations().iter().cloned().collect();

        // Which networks stop, start, or only follow new channels.
        let mut stopping = Vec::new();
        let mut starting = Vec::new();
        let mut following = Vec::new();
        for (id, running) in &self.networks {
            match wanted.iter().find(|w| &w.config.id == id) {
                None => {
                    summary.networks_removed.push(id.clone());
                    stopping.push(id.clone());
                }
                Some(w) if w.config != running.config || w.nick_format != running.nick_format => {
                    summary.networks_reconnected.push(id.clone());
                    stopping.push(id.clone());
                    starting.push(id.clone());
                }
                Some(w) if w.channels != running.channels => {
                    if running.config.settings.follows_channel_changes() {
                        summary.networks_rejoined_channels.push(id.clone());
                        following.push(id.clone());
                    } else {
                        summary.networks_reconnected.push(id.clone());
                        stopping.push(id.clone());
                        starting.push(id.clone());
                    }
                }
                Some(_) => {}
            }
        }
        for w in &wanted {
            if !self.networks.contains_key(&w.config.id) {
                if self.config.is_some() {
                    summary.networks_added.push(w.config.id.clone());
                }
                starting.push(w.config.id.clone());
            }
        }
        for list in [
            &mut summary.networks_added,
            &mut summary.networks_removed,
            &mut summary.networks_reconnected,
            &mut summary.networks_rejoined_channels,
        ] {
            list.sort();
        }

        // New routes and gateway settings first: nothing new is queued for a removed channel
        // from here on, and a new channel's rows wait in the store for its worker.
        self.gateway_book.replace(
            config
                .gateways
                .iter()
                .map(|gateway| (gateway.name.clone(), gateway.settings()))
                .collect(),
        );
        self.router.set_topology(Arc::clone(&topology));
        // Identities after the topology: a network the reload adds has its name folding.
        if self
            .config
            .as_ref()
            .is_some_and(|old| old.identities != config.identities)
        {
            self.router.people().link(config.identities.clone());
            summary.identities_relinked = true;
        }

        // Workers stop before their connectors (each finishes the delivery in hand).
        let stopping_workers: Vec<ChannelRef> = self
            .workers
            .keys()
            .filter(|d| !destinations.contains(*d) || stopping.contains(&d.network))
            .cloned()
            .collect();
        for destination in &stopping_workers {
            if !destinations.contains(destination) {
                summary.destinations_removed += 1;
            }
        }
        self.stop_workers(&stopping_workers).await;
        for destination in &stopping_workers {
            if !destinations.contains(destination) {
                self.outbox.remove_destination(destination);
            }
        }
        for id in &stopping {
            self.stop_network(id).await;
        }
        for id in &starting {
            if let Some(w) = wanted.iter().find(|w| &w.config.id == id) {
                self.start_network(w);
            }
        }
        for id in &following {
            if let (Some(running), Some(w)) = (
                self.networks.get_mut(id),
                wanted.iter().find(|w| &w.config.id == id),
            ) {
                running.channels.clone_from(&w.channels);
                self.status.expect(id, &w.channels);
                running.channel_updates.send_replace(w.channels.clone());
            }
        }
        let before: std::collections::BTreeSet<ChannelRef> = self
            .config
            .as_ref()
            .map(|old| old.topology().destinations().iter().cloned().collect())
            .unwrap_or_default();
        for destination in &destinations {
            if !self.workers.contains_key(destination)
                && self.networks.contains_key(&destination.network)
            {
                // A destination of a reconnected network is not new.
                if self.config.is_some() && !before.contains(destination) {
                    summary.destinations_added += 1;
                }
                self.start_worker(destination);
            }
        }
        let history_changed = self
            .config
            .as_ref()
            .is_none_or(|old| old.gateways != config.gateways);
        if history_changed {
            self.restart_history(&config).await;
        }
        self.count_unrouted(&destinations).await;
        self.config = Some(config);
        summary
    }

    /// Balance after a renewal ([`keep_network_leases`], which read `tick`): move towards this
    /// instance's fair share, ceil(networks / live instances): take free or expired leases
    /// while below it, let one go (its connection and workers stopped first) after
    /// [`RELEASE_AFTER_TICKS`] ticks above it; and take `*` when nobody holds it.
    async fn lease_tick(&mut self, lease: &Arc<Lease>, tick: LeaseTick, balance: &mut Balance) {
        let Some(config) = &self.config else {
            return;
        };
        let networks: Vec<String> = wanted_networks_quiet(config);
        let ttl = lease.ttl();
        let holders: HashMap<String, Option<String>> = tick.holders.into_iter().collect();
        // The jobs that run once per deployment: whoever holds `*` (not counted in the share).
        if lease.singletons_token().is_none()
            && holders.get(WHOLE_INSTANCE).is_none_or(Option::is_none)
        {
            let (store, instance) = (Arc::clone(&self.store), lease.instance().to_owned());
            let sent_at = std::time::Instant::now();
            if let Ok(Ok(Some(token))) = tokio::task::spawn_blocking(move || {
                store.take_lease(WHOLE_INSTANCE, &instance, ttl)
            })
            .await
            {
                lease.set_singletons(Some((token, sent_at)));
            }
        }
        lease.saw_holders(
            networks
                .iter()
                .map(|network| (network.clone(), holders.get(network).cloned().flatten())),
        );
        let share = networks.len().div_ceil(tick.live_instances);
        let holding = lease.held_networks().len();
        // A network a reload removed (or left in no gateway) is let go first.
        let mut releasing = lease
            .held_networks()
            .into_iter()
            .find(|(network, _)| !networks.contains(network));
        match holding.cmp(&share) {
            _ if releasing.is_some() => {}
            std::cmp::Ordering::Less => {
                balance.over_share = 0;
                let free: Vec<String> = networks
                    .iter()
                    .filter(|network| lease.network_fence(network).is_none())
                    .filter(|network| holders.get(*network).is_none_or(Option::is_none))
                    .take(share - holding)
                    .cloned()
                    .collect();
                for network in free {
                    self.take_network_lease(lease, network).await;
                }
            }
            std::cmp::Ordering::Greater => {
                balance.over_share += 1;
                if balance.over_share >= RELEASE_AFTER_TICKS {
                    balance.over_share = 0;
                    releasing = lease.held_networks().pop();
                }
            }
            std::cmp::Ordering::Equal => balance.over_share = 0,
        }
        self.follow_leases(releasing.as_ref().map(|(network, _)| network.as_str()))
            .await;
        if let Some((network, token)) = releasing {
            let (store, instance, scope) = (
                Arc::clone(&self.store),
                lease.instance().to_owned(),
                network.clone(),
            );
            let released =
                tokio::task::spawn_blocking(move || store.release_lease(&scope, &instance, token))
                    .await;
            if let Ok(Err(error)) = released {
                tracing::warn!(network = %network, error = %error, "Cannot release the network's lease; another instance takes it when it expires.");
            }
            lease.released_network(&network);
        }
        balance.since_poll += 1;
        if balance.since_poll >= SAFETY_POLL_TICKS {
            balance.since_poll = 0;
            // A notification missed while the LISTEN connection was down: read the store.
            for destination in self.workers.keys() {
                crate::vocab::Wake::wake(self.outbox.as_ref(), destination);
            }
        }
    }

    /// Try to take `network`'s lease (free, or expired).
    async fn take_network_lease(&self, lease: &Arc<Lease>, network: String) {
        let sent_at = std::time::Instant::now();
        let (store, instance, scope, ttl) = (
            Arc::clone(&self.store),
            lease.instance().to_owned(),
            network.clone(),
            lease.ttl(),
        );
        let attempt =
            tokio::task::spawn_blocking(move || store.take_lease(&scope, &instance, ttl)).await;
        match attempt {
            Ok(Ok(Some(token))) => lease.took_network(&network, token, sent_at),
            Ok(Err(error)) => {
                tracing::warn!(network = %network, error = %error, "Cannot take the network's lease; trying again.");
            }
            // Another instance took it first, or the attempt stopped with the runtime.
            Ok(Ok(None)) | Err(_) => {}
        }
    }

    /// Run exactly the networks whose lease this instance holds, but `releasing` (stopped
    /// before its lease goes): start the taken ones, stop the lost ones, through
    /// [`Running::apply`] (the one start and stop path).
    async fn follow_leases(&mut self, releasing: Option<&str>) {
        let (Some(lease), Some(running)) = (&self.lease, &self.held) else {
            return;
        };
        let wanted: std::collections::BTreeSet<String> = lease
            .held_networks()
            .into_iter()
            .map(|(network, _)| network)
            .filter(|network| Some(network.as_str()) != releasing)
            .collect();
        if &wanted == running {
            return;
        }
        let starting = wanted.iter().any(|network| !running.contains(network));
        self.held = Some(wanted);
        if starting {
            // What other instances learned while they ran the networks: the people directory
            // (mentions) from the store, before this instance relays on them.
            let store = Arc::clone(&self.store);
            match tokio::task::spawn_blocking(move || store.people()).await {
                Ok(Ok(known)) => self.router.people().absorb(known),
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "Cannot read the people directory again; mentions of people seen by other instances may not resolve.");
                }
                Err(_) => {}
            }
        }
        if let Some(config) = self.config.clone() {
            let summary = self.apply(config).await;
            tracing::info!(summary = %summary, "Networks follow the leases this instance holds.");
        }
    }

    /// Build and start the connector of `wanted`.
    fn start_network(&mut self, wanted: &Wanted) {
        let id = wanted.config.id.clone();
        self.status.expect(&id, &wanted.channels);
        let shutdown = self.connectors_shutdown.child_token();
        let (channel_updates, updates) = tokio::sync::watch::channel(wanted.channels.clone());
        let (handle, task) = wanted.config.build(BuildContext {
            router: self.router.clone(),
            remote_nick_format: wanted.nick_format.clone(),
            channels: wanted.channels.clone(),
            channel_updates: updates,
            gateways: self.gateway_book.clone(),
            status: self.status.network(&id),
            shutdown: shutdown.clone(),
            store: Arc::clone(&self.store),
            state_dir: self.state_dir.clone(),
            files: Arc::clone(&self.files),
            reconnect: ReconnectPolicy {
                max: self.reconnect_max,
                ..ReconnectPolicy::default()
            },
            metrics: Arc::clone(&self.network_metrics),
        });
        self.router
            .parallel()
            .set_parallel_bridges(&id, &wanted.config.parallel_bridges);
        // Deliveries on routes left to a parallel bridge wait for its copy (crate::parallel).
        let endpoint = Standin::new(
            Fenced::new(handle, self.lease.clone(), &id),
            Arc::clone(self.router.parallel()),
            self.workers_shutdown.clone(),
        );
        let task = tokio::spawn(task.run());
        self.networks.insert(
            id,
            RunningNetwork {
                config: wanted.config.clone(),
                nick_format: wanted.nick_format.clone(),
                channels: wanted.channels.clone(),
                shutdown,
                task,
                endpoint,
                channel_updates,
            },
        );
    }

    /// Stop network `id`'s connector (it says goodbye to its server) and forget its status.
    async fn stop_network(&mut self, id: &str) {
        let Some(running) = self.networks.remove(id) else {
            return;
        };
        running.shutdown.cancel();
        let mut task = running.task;
        if tokio::time::timeout(CONNECTOR_STOP_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        self.status.forget(id);
    }

    /// Start the outbox worker of `destination` (its network's connector is running).
    fn start_worker(&mut self, destination: &ChannelRef) {
        let Some(network) = self.networks.get(&destination.network) else {
            tracing::error!(destination = %destination, "No connector for this destination; its deliveries wait.");
            return;
        };
        let shutdown = self.workers_shutdown.child_token();
        let worker = self.outbox.spawn_worker(
            destination,
            self.router.writer(),
            &self.store,
            network.endpoint.clone(),
            &shutdown,
        );
        self.workers.insert(
            destination.clone(),
            RunningWorker {
                shutdown,
                task: tokio::spawn(worker),
            },
        );
    }

    /// Stop the workers of `destinations`, each finishing the delivery in hand (bounded).
    async fn stop_workers(&mut self, destinations: &[ChannelRef]) {
        let mut stopping = Vec::new();
        for destination in destinations {
            if let Some(worker) = self.workers.remove(destination) {
                worker.shutdown.cancel();
                stopping.push(worker.task);
            }
        }
        if stopping.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        for mut task in stopping {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(
                    "A delivery did not finish in time; it stays in the outbox and may be sent again."
                );
                task.abort();
            }
        }
    }

    /// (Re)start the tasks that follow the gateways' history policies.
    async fn restart_history(&mut self, config: &Config) {
        if let Some((shutdown, tasks)) = self.history.take() {
            shutdown.cancel();
            for task in tasks {
                let _ = task.await;
            }
        }
        // The history's archive and retention run on either store (in failover, on the active
        // instance only: this runs in the active part).
        let shutdown = CancellationToken::new();
        let policies = Arc::new(crate::archive::Retention::from_gateways(&config.gateways));
        let tasks = vec![
            tokio::spawn(chain_archive(
                Arc::clone(&self.store),
                Arc::clone(&policies),
                self.lease.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(prune_history(
                Arc::clone(&self.store),
                Arc::clone(&self.files),
                policies,
                self.lease.clone(),
                shutdown.clone(),
            )),
        ];
        self.history = Some((shutdown, tasks));
    }

    /// Count, per network, the deliveries pending for channels no gateway links (they stay in
    /// the store and are delivered if a gateway links the channel again), for `/metrics`.
    async fn count_unrouted(&mut self, destinations: &std::collections::BTreeSet<ChannelRef>) {
        let store = Arc::clone(&self.store);
        let linked = destinations.clone();
        let counted = tokio::task::spawn_blocking(move || {
            let mut counts: HashMap<String, i64> = HashMap::new();
            for destination in store.pending_destinations()? {
                if !linked.contains(&destination) {
                    let count = store.pending_count(&destination)?;
                    tracing::warn!(destination = %destination, pending = count, "Deliveries are pending for a channel that no gateway links; they stay in the store and are delivered if a gateway links it again.");
                    *counts.entry(destination.network).or_default() +=
                        i64::try_from(count).unwrap_or(i64::MAX);
                }
            }
            Ok::<_, StoreError>(counts)
        })
        .await;
        let counts = match counted {
            Ok(Ok(counts)) => counts,
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "Cannot count the deliveries pending for unlinked channels.");
                return;
            }
            Err(_) => return,
        };
        let networks: Vec<String> = self
            .unrouted_networks
            .iter()
            .chain(counts.keys())
            .cloned()
            .collect();
        for network in networks {
            self.network_metrics
                .gauge(
                    "tribridge_outbox_unlinked_deliveries",
                    "Deliveries pending for channels no gateway links any more, kept in the store and delivered if a gateway links the channel again",
                    &network,
                )
                .store(counts.get(&network).copied().unwrap_or(0), Ordering::Relaxed);
        }
        self.unrouted_networks = counts.into_keys().collect();
    }

    /// Stop everything: the workers first (each finishes its delivery in hand), then the
    /// connectors, then the history tasks.
    async fn stop(&mut self) {
        self.workers_shutdown.cancel();
        let destinations: Vec<ChannelRef> = self.workers.keys().cloned().collect();
        self.stop_workers(&destinations).await;
        self.connectors_shutdown.cancel();
        let ids: Vec<String> = self.networks.keys().cloned().collect();
        let mut tasks = Vec::new();
        for id in ids {
            if let Some(running) = self.networks.remove(&id) {
                tasks.push(running.task);
            }
        }
        let deadline = tokio::time::Instant::now() + CONNECTOR_STOP_TIMEOUT;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
        if let Some((shutdown, tasks)) = self.history.take() {
            shutdown.cancel();
            for task in tasks {
                let _ = task.await;
            }
        }
    }
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

/// Whether this instance runs the jobs that must run once per deployment: always without a
/// lease; with one, [`Lease::runs_singletons`] (in the per-network mode, the holder of `*`).
fn runs_singletons(lease: Option<&Arc<Lease>>) -> bool {
    lease.is_none_or(|lease| lease.runs_singletons())
}

/// How often new messages of archived gateways are chained ([`crate::archive::chain`]).
const ARCHIVE_CHAIN_EVERY: Duration = Duration::from_secs(1);

/// Chain the messages of gateways with `archive = true` every [`ARCHIVE_CHAIN_EVERY`], logging
/// each gateway's newest chain hash when it moved (the checkpoint an auditor compares).
async fn chain_archive(
    store: Arc<Store>,
    policies: Arc<crate::archive::Retention>,
    lease: Option<Arc<Lease>>,
    shutdown: CancellationToken,
) {
    loop {
        if !runs_singletons(lease.as_ref()) {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(STANDBY_POLL) => continue,
            }
        }
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
    lease: Option<Arc<Lease>>,
    shutdown: CancellationToken,
) {
    loop {
        if !runs_singletons(lease.as_ref()) {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(STANDBY_POLL) => continue,
            }
        }
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

/// How often the watchdog is pinged: half its interval, as systemd advises.
#[must_use]
pub fn watchdog_period(interval: Duration) -> Duration {
    (interval / 2).max(Duration::from_millis(10))
}

/// Ping the systemd watchdog (`WATCHDOG=1`) every half `interval` while the store's writer
/// makes progress (its heartbeat moved within [`crate::metrics::WRITER_STALLED_AFTER`]) and
/// the async runtime runs this task (the router and every connector run on it). A stalled
/// writer stops the pings, and systemd restarts the daemon once `interval` passes without one.
pub async fn watchdog(
    interval: Duration,
    writer: crate::group_commit::Heartbeat,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut ticks = tokio::time::interval(watchdog_period(interval));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let age = writer.age();
        if age < crate::metrics::WRITER_STALLED_AFTER {
            if stalled {
                tracing::info!("The store's writer makes progress again; pinging the watchdog.");
                stalled = false;
            }
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        } else if !stalled {
            stalled = true;
            tracing::error!(
                writer_heartbeat_age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                "The store's writer has made no progress; not pinging the watchdog (systemd restarts the daemon if this lasts)."
            );
        }
    }
}

/// Serve `/metrics` and the health endpoints on `listener` until `shutdown`, as a task of
/// `services` (the standby's and the active's listener alike).
fn spawn_metrics(
    services: &mut JoinSet<()>,
    listener: tokio::net::TcpListener,
    registry: prometheus_client::registry::Registry,
    health: crate::metrics::Health,
    shutdown: CancellationToken,
) {
    let serving = crate::metrics::serve(listener, Arc::new(registry), health, shutdown);
    services.spawn(async move {
        if let Err(error) = serving.await {
            tracing::error!(error = %error, "The metrics endpoint stopped.");
        }
    });
}
