//! The `tribridge` command: `check` validates a configuration file, `run` runs the bridge,
//! `reload` makes the running bridge apply its changed configuration file,
//! `matrix-recover` gives a Matrix network's new device its account's cross-signing identity,
//! `appservice-registration` prints the registration of a Matrix network in appservice mode,
//! `export` writes a gateway's archive or verifies its chain, `forget` removes one person's
//! messages, `status` and `failed` ask the running daemon over its admin socket,
//! `import-matterbridge` turns a matterbridge configuration into ours.
//!
//! The only place that uses `anyhow`; everything below it has typed errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Mirror channels between IRC, Mattermost and Matrix.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Validate a configuration file without connecting anywhere; exit 0 when it is valid.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = "bridges.toml")]
        config: PathBuf,
    },
    /// Print a bridges.toml made from a matterbridge configuration (its IRC, Mattermost, Matrix
    /// and API accounts and its gateways); every key not carried over is listed at its top with
    /// the reason. Check the result with `tribridge check`.
    #[command(name = "import-matterbridge")]
    ImportMatterbridge {
        /// The matterbridge configuration (matterbridge.toml).
        file: PathBuf,
    },
    /// Ask the running daemon how each network and each destination's queue stands
    /// (connected since, channels joined, last event, outbox depth, failed deliveries).
    Status {
        /// The configuration file (its `state_dir` holds the daemon's admin socket).
        #[arg(long, short, default_value = "bridges.toml")]
        config: PathBuf,
        /// Print JSON for scripts instead of text for people.
        #[arg(long)]
        json: bool,
    },
    /// List, retry or drop the deliveries a destination refused for good (kept as failed).
    Failed {
        /// The configuration file (its `state_dir` holds the daemon's admin socket).
        #[arg(long, short, default_value = "bridges.toml", global = true)]
        config: PathBuf,
        /// Print JSON for scripts instead of text for people.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: FailedAction,
    },
    /// Run the bridge until SIGTERM or SIGINT; SIGHUP reloads the configuration file.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "bridges.toml")]
        config: PathBuf,
    },
    /// Ask the running bridge (found by the pid file in the configuration's `state_dir`) to
    /// read its configuration file again and apply the difference; print what changed, or the
    /// file's errors (then exit 1: the bridge keeps running on the configuration it had).
    Reload {
        /// The configuration file (the one the bridge runs on: its `state_dir` is looked in).
        #[arg(long, short, default_value = "bridges.toml")]
        config: PathBuf,
    },
    /// Take a Matrix network's cross-signing identity back from the homeserver's secret storage
    /// with its recovery key (after the network's state was lost, or on a new host), then exit.
    /// Run it while the bridge is stopped; the next `run` keeps the same identity.
    #[command(name = "matrix-recover")]
    MatrixRecover {
        /// The configuration file.
        #[arg(long, short, default_value = "bridges.toml")]
        config: PathBuf,
        /// The id of the Matrix network (`[network.<id>]`).
        #[arg(long)]
        network: String,
        /// The file holding the recovery key (the bridge wrote it to
        /// `state_dir/matrix-<id>.recovery-key` when it made the identity).
        #[arg(long)]
        recovery_key_file: PathBuf,
    },
    /// Write a gateway's archive (`archive = true`) as JSON Lines (one record per message
    /// version with its chain hashes), a Slack export ZIP or a ZIP of HTML transcripts; or, with `--verify`, recompute the gateway's chain and name
    /// the first record that does not match (exit 1). Runs while the daemon runs (read-only).
    Export {
        /// The configuration file.
        #[arg(long, short, default_value = "bridges.toml")]
        config: PathBuf,
        /// The gateway's name.
        #[arg(long)]
        gateway: String,
        /// Only one channel, as NETWORK:CHANNEL.
        #[arg(long)]
        channel: Option<String>,
        /// Only messages said on or after this day (YYYY-MM-DD, UTC).
        #[arg(long)]
        since: Option<String>,
        /// Only messages said before this day (YYYY-MM-DD, UTC).
        #[arg(long)]
        until: Option<String>,
        /// The format: `jsonl` (one record per message version, with the chain), `slack` (a
        /// Slack export ZIP) or `html` (a ZIP of self-contained transcripts, a page per day).
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Where to write it (standard output when not given).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Check the chain instead of exporting.
        #[arg(long)]
        verify: bool,
    },
    /// Remove one person's messages and files from the store and the archive (a data-protection
    /// request), leaving tombstones in the archive's chain; says how many were removed.
    Forget {
        /// The configuration file.
        #[arg(long, short, default_value = "bridges.toml")]
        config: PathBuf,
        /// The id of the network they spoke on (`[network.<id>]`).
        #[arg(long)]
        network: String,
        /// Their id on that network (an IRC nick, a Matrix user id, a Mattermost user id).
        #[arg(long)]
        user: String,
    },
    /// Print the application-service registration (YAML) of a Matrix network with
    /// `mode = "appservice"`, for the homeserver's `app_service_config_files`. Tokens the
    /// configuration does not give are generated once and kept in the state folder.
    #[command(name = "appservice-registration")]
    AppserviceRegistration {
        /// The configuration file.
        #[arg(long, short, default_value = "bridges.toml")]
        config: PathBuf,
        /// The id of the Matrix network (`[network.<id>]`).
        #[arg(long)]
        network: String,
    },
}

/// `tribridge failed …`.
#[derive(Subcommand)]
enum FailedAction {
    /// The failed deliveries, oldest first, with their ids.
    List,
    /// Queue failed deliveries again (after fixing what the destination refused): one by id,
    /// or all with `--all`. They are sent once, with their original idempotency key.
    Retry {
        /// The id `failed list` shows.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every failed delivery.
        #[arg(long)]
        all: bool,
    },
    /// Remove a failed delivery for good (it is never sent).
    Drop {
        /// The id `failed list` shows.
        id: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Check { config } => match tribridge::config::load(&config) {
            Ok(parsed) => {
                for warning in &parsed.warnings {
                    eprintln!("warning: {}", warning.display_with(&config));
                }
                if let Some(warning) = tribridge::config::secret_exposure_warning(&config) {
                    eprintln!("warning: {warning}");
                }
                println!(
                    "{}: OK ({} networks, {} gateways)",
                    config.display(),
                    parsed.networks.len(),
                    parsed.gateways.len()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{error}");
                ExitCode::from(2)
            }
        },
        Commands::Export {
            config,
            gateway,
            channel,
            since,
            until,
            format,
            output,
            verify,
        } => {
            let parsed = match tribridge::config::load(&config) {
                Ok(parsed) => parsed,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(2);
                }
            };
            let request = ExportRequest {
                gateway,
                channel,
                since,
                until,
                format,
                output,
                verify,
            };
            match export(&parsed, &request) {
                Ok(code) => code,
                Err(error) => {
                    eprintln!("{error:#}");
                    ExitCode::from(2)
                }
            }
        }
        Commands::Forget {
            config,
            network,
            user,
        } => {
            let parsed = match tribridge::config::load(&config) {
                Ok(parsed) => parsed,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(2);
                }
            };
            match forget(&parsed, &network, &user) {
                Ok(forgotten) => {
                    println!(
                        "{network} {user}: {} messages removed ({} archive records left as \
                         tombstones), {} files removed; kept: {} with a delivery still queued, \
                         {} under legal hold",
                        forgotten.messages,
                        forgotten.tombstones,
                        forgotten.files,
                        forgotten.kept_pending,
                        forgotten.kept_held
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{error:#}");
                    ExitCode::from(1)
                }
            }
        }
        Commands::AppserviceRegistration { config, network } => {
            let parsed = match tribridge::config::load(&config) {
                Ok(parsed) => parsed,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(2);
                }
            };
            let Some(settings) = parsed.networks.iter().find(|n| n.id == network) else {
                eprintln!("no network `{network}` in {}", config.display());
                return ExitCode::from(2);
            };
            let others: Vec<String> = parsed
                .networks
                .iter()
                .filter(|n| n.id != network)
                .map(|n| n.id.clone())
                .collect();
            match tribridge::connector::matrix_appservice_registration(
                &network,
                settings.settings.as_ref(),
                &others,
                &parsed.state_dir,
            ) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{error}");
                    ExitCode::from(2)
                }
            }
        }
        Commands::MatrixRecover {
            config,
            network,
            recovery_key_file,
        } => {
            let parsed = match tribridge::config::load(&config) {
                Ok(parsed) => parsed,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(2);
                }
            };
            init_logging();
            match recover(&parsed, &network, &recovery_key_file) {
                Ok(master) => {
                    println!(
                        "{network}: the cross-signing identity is restored (master key {master}); \
                         this device is signed by it."
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{network}: {error:#}");
                    ExitCode::from(1)
                }
            }
        }
        Commands::Reload { config } => reload(&config),
        Commands::ImportMatterbridge { file } => {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(error) => {
                    eprintln!("{}: {error}", file.display());
                    return ExitCode::from(2);
                }
            };
            match tribridge::import_matterbridge::convert(&text) {
                Ok(imported) => {
                    print!("{}", imported.toml);
                    eprintln!(
                        "{}: {} keys carried over, {} not (listed at the top, with why)",
                        file.display(),
                        imported.carried.len(),
                        imported.dropped.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{}: {error}", file.display());
                    ExitCode::from(2)
                }
            }
        }
        Commands::Status { config, json } => {
            admin_command(&config, &tribridge::admin::Request::Status, json)
        }
        Commands::Failed {
            config,
            json,
            action,
        } => {
            let request = match action {
                FailedAction::List => tribridge::admin::Request::FailedList,
                FailedAction::Retry { id, .. } => tribridge::admin::Request::FailedRetry { id },
                FailedAction::Drop { id } => tribridge::admin::Request::FailedDrop { id },
            };
            admin_command(&config, &request, json)
        }
        Commands::Run { config } => {
            let parsed = match tribridge::config::load(&config) {
                Ok(parsed) => parsed,
                Err(error) => {
                    eprintln!("{error}");
                    return ExitCode::from(2);
                }
            };
            init_logging();
            for warning in &parsed.warnings {
                tracing::warn!("{}", warning.display_with(&config));
            }
            if let Some(warning) = tribridge::config::secret_exposure_warning(&config) {
                tracing::warn!("{warning}");
            }
            match run(parsed, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = %format!("{error:#}"), "tribridge failed.");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Send one request to the running daemon's admin socket and print its answer.
fn admin_command(
    config: &std::path::Path,
    request: &tribridge::admin::Request,
    json: bool,
) -> ExitCode {
    use tribridge::admin::{self, Response};
    let parsed = match tribridge::config::load(config) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let response = match admin::ask(&parsed.state_dir, request) {
        Ok(response) => response,
        Err(error) => {
            eprintln!("{error} (is the daemon running on this configuration?)");
            return ExitCode::from(1);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&response).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let now = tribridge::model::now_ms();
    match response {
        Response::Status(status) => print!("{}", admin::render_status(&status, now)),
        Response::Failed { deliveries } => print!("{}", admin::render_failed(&deliveries, now)),
        Response::Retried { ids } if ids.is_empty() => println!("no failed deliveries to retry"),
        Response::Retried { ids } => {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            println!("queued again: {}", ids.join(", "));
        }
        Response::Dropped { id } => println!("dropped {id}"),
        Response::Error { reason } => {
            eprintln!("{reason}");
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn init_logging() {
    // Our own events at info; libraries' per-request chatter only when it is a warning.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "info,{}",
            tribridge::connector::QUIET_LOG_TARGETS
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Threads for the store's and the file store's blocking calls. Reads share one SQLite reader
/// connection and writes one writer thread, so more threads only wait on them; tokio's default
/// (512) made a daemon with 100 gateways start about 110 threads, one per destination's first
/// read, and keep them (and their stacks) for ten seconds. Calls beyond these wait in a queue.
const BLOCKING_THREADS: usize = 8;

/// How long `tribridge reload` waits for the daemon's answer (a reload waits for the
/// deliveries in hand of the channels it stops).
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_mins(1);

/// `tribridge reload`: signal the daemon and print its answer.
fn reload(config: &std::path::Path) -> ExitCode {
    let parsed = match tribridge::config::load(config) {
        Ok(parsed) => parsed,
        Err(error) => {
            // The daemon would refuse it: say why without disturbing it.
            eprintln!("{error}");
            eprintln!("not reloaded: the running bridge keeps the configuration it has");
            return ExitCode::from(2);
        }
    };
    match tribridge::service::request_reload(&parsed.state_dir, RELOAD_WAIT) {
        Ok(report) if report.applied => {
            println!("reloaded (pid {}): {}", report.pid, report.text);
            ExitCode::SUCCESS
        }
        Ok(report) => {
            eprintln!("{}", report.text);
            eprintln!(
                "not reloaded: the running bridge (pid {}) keeps the configuration it has",
                report.pid
            );
            ExitCode::from(1)
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(1)
        }
    }
}

fn run(config: tribridge::config::Config, path: PathBuf) -> anyhow::Result<()> {
    tribridge::install_tls_provider();
    let _pid_file = tribridge::service::PidFile::write(&config.state_dir)?;
    let mut notifier = tribridge::service::ReloadNotifier::new(&config.state_dir);
    let runtime = tribridge::runtime_builder()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        let (reload_requests, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            wait_for_signal(&reload_requests).await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            signals.cancel();
        });
        let reloads = tribridge::daemon::Reloads {
            requests,
            load: Box::new(move || {
                let config = tribridge::config::load(&path).map_err(|error| error.to_string())?;
                for warning in &config.warnings {
                    tracing::warn!("{}", warning.display_with(&path));
                }
                Ok(config)
            }),
            notify: Box::new(move |event| notifier.notify(&event)),
        };
        tribridge::daemon::run_with_reloads(
            config,
            shutdown,
            || {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            },
            Some(reloads),
        )
        .await?;
        Ok(())
    })
}

fn forget(
    config: &tribridge::config::Config,
    network: &str,
    user: &str,
) -> anyhow::Result<tribridge::archive::Forgotten> {
    if config.network(network).is_none() {
        anyhow::bail!("no network `{network}` in the configuration");
    }
    let store = tribridge::store::Store::open_configured(
        &config.state_dir,
        config
            .store_url
            .as_ref()
            .map(tribridge::config::Secret::expose),
    )?;
    let files = tribridge::files::FileStore::open(&config.state_dir, config.files.max_file_bytes)?;
    let policies = tribridge::archive::Retention::from_gateways(&config.gateways);
    Ok(tribridge::archive::forget_person(
        &store,
        Some(&files),
        &policies,
        network,
        user,
    )?)
}

/// The options of `tribridge export`.
struct ExportRequest {
    gateway: String,
    channel: Option<String>,
    since: Option<String>,
    until: Option<String>,
    format: String,
    output: Option<PathBuf>,
    verify: bool,
}

fn export(config: &tribridge::config::Config, request: &ExportRequest) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    use tribridge::archive::{chain, export};
    let Some(gateway) = config.gateways.iter().find(|g| g.name == request.gateway) else {
        anyhow::bail!("no gateway `{}` in the configuration", request.gateway);
    };
    if !gateway.history.archive {
        anyhow::bail!(
            "gateway `{}` does not keep an archive (set `archive = true` in it)",
            gateway.name
        );
    }
    let source = tribridge::archive::open_read_only(
        &config.state_dir,
        config
            .store_url
            .as_ref()
            .map(tribridge::config::Secret::expose),
    )?;
    if request.verify {
        let verdict = source.read(|history| chain::verify(history, &gateway.name))?;
        return Ok(match verdict {
            chain::Verdict::Intact {
                records,
                tombstones,
                unsealed,
                head,
            } => {
                println!(
                    "gateway `{}`: the chain of {records} records ({tombstones} tombstones) \
                     verifies; its newest hash is {head}",
                    gateway.name
                );
                if unsealed > 0 {
                    println!(
                        "{unsealed} tombstones were made before their reasons were sealed: \
                         their hashes verify, their reasons cannot be checked"
                    );
                }
                ExitCode::SUCCESS
            }
            chain::Verdict::Broken {
                seq,
                message_id,
                reason,
            } => {
                println!(
                    "gateway `{}`: record {seq} (message {message_id}) does not match: {reason}",
                    gateway.name
                );
                ExitCode::from(1)
            }
        });
    }
    if !["jsonl", "slack", "html"].contains(&request.format.as_str()) {
        anyhow::bail!(
            "unknown format `{}` (known: jsonl, slack, html)",
            request.format
        );
    }
    let channel = match &request.channel {
        Some(text) => match text.split_once(':') {
            Some((network, channel)) => Some((network.to_owned(), channel.to_owned())),
            None => anyhow::bail!("--channel is NETWORK:CHANNEL, not `{text}`"),
        },
        None => None,
    };
    let selection = export::Selection {
        gateway: gateway.name.clone(),
        channel,
        since_ms: request.since.as_deref().map(export::date_ms).transpose()?,
        until_ms: request.until.as_deref().map(export::date_ms).transpose()?,
    };
    // A progress line only for a person watching a terminal.
    let show = std::io::stderr().is_terminal();
    let progress = |n: u64| {
        if show && n.is_multiple_of(1000) {
            eprint!("\r{n} records");
        }
    };
    if request.format != "jsonl" {
        let Some(path) = &request.output else {
            anyhow::bail!(
                "the {} format is a ZIP file: give it a name with --output",
                request.format
            );
        };
        let bridged: Vec<(String, String)> = gateway
            .channels
            .iter()
            .map(|c| (c.network.clone(), c.channel.clone()))
            .collect();
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let files_dir = config.state_dir.join("files");
        let written = source.read(|history| {
            if request.format == "slack" {
                tribridge::archive::slack::slack(
                    history, &selection, &bridged, &files_dir, file, progress,
                )
            } else {
                tribridge::archive::html::html(
                    history, &selection, &bridged, &files_dir, file, progress,
                )
            }
        })?;
        if show {
            eprintln!("\r{written} messages");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut out: Box<dyn std::io::Write> = match &request.output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let written = source.read(|history| export::jsonl(history, &selection, &mut out, progress))?;
    if show {
        eprintln!("\r{written} records");
    }
    Ok(ExitCode::SUCCESS)
}

fn recover(
    config: &tribridge::config::Config,
    network: &str,
    key_file: &std::path::Path,
) -> anyhow::Result<String> {
    tribridge::install_tls_provider();
    let settings = config
        .networks
        .iter()
        .find(|n| n.id == network)
        .map(|n| std::sync::Arc::clone(&n.settings))
        .ok_or_else(|| anyhow::anyhow!("no network `{network}` in the configuration"))?;
    let runtime = tribridge::runtime_builder().build()?;
    let master = runtime.block_on(tribridge::connector::recover_matrix_identity(
        network,
        settings.as_ref(),
        &config.state_dir,
        key_file,
    ))?;
    Ok(master)
}

/// Wait for SIGTERM or SIGINT. Each SIGHUP asks for a reload (`reload`); without a handler,
/// SIGHUP would end the daemon and systemd would see a clean exit.
async fn wait_for_signal(reload: &tokio::sync::mpsc::UnboundedSender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(mut term), Ok(mut int), Ok(mut hangup)) => loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM received.");
                    return;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT received.");
                    return;
                }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP received: reloading the configuration.");
                    let _ = reload.send(());
                }
            }
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
