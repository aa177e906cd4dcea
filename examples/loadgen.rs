//! The load harness: drives the release `tribridge` binary (or, in `core` mode, the router,
//! store and outbox in process) with writers on real servers on loopback (`InspIRCd`, the
//! Mattermost emulator, Synapse), and measures per-message latency from the writer's send to the
//! reader's receipt, throughput, losses, and the daemon's RSS and CPU from `/proc`. Each
//! bridged path is also measured without the bridge (a direct client to the destination server)
//! so that the bridge's share can be stated as a ratio. Prints a summary and writes JSON.
//!
//! `cargo run --release --example loadgen -- <scenario> [options]`; scenarios: `core`,
//! `irc-irc`, `irc-mm`, `api-irc`, `matrix` (`--mode bot|appservice`), `idle`, `catchup`, `startup`,
//! `puppets`, `retention`. See BENCHMARKS.md.

#[path = "../tests/it/support/irc_client.rs"]
#[allow(dead_code)]
mod irc_client;
#[path = "../tests/it/support/matrix_client.rs"]
#[allow(dead_code)]
mod matrix_client;
#[path = "../tests/it/support/mattermost.rs"]
#[allow(dead_code)]
mod mattermost;
#[path = "../tests/it/support/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tribridge::model::{Author, ChannelRef, Delivery, DeliveryAck, EventBody, Inbound, TextStyle};
use tribridge::outbox::{AckFuture, Endpoint, Outbox};
use tribridge::router::Router;
use tribridge::store::Store;

use irc_client::IrcClient;

#[derive(Parser)]
#[command(about = "Load harness for tribridge")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// Write the JSON result here (default: loadgen-<scenario>.json in the current folder).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// The daemon binary (default: `tribridge` next to this example's folder).
    #[arg(long, global = true)]
    daemon: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Scenario {
    /// Router + store + outbox in process, emulated endpoints.
    Core {
        #[arg(long, default_value_t = 1000)]
        gateways: usize,
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Outstanding deliveries per destination.
        #[arg(long, default_value_t = 32)]
        window: usize,
        /// One transaction per event on the calling task (the path before group commit).
        #[arg(long)]
        per_event: bool,
        /// The store: a `postgres://` URL (a fresh, empty database), else `SQLite` in a
        /// temporary folder.
        #[arg(long)]
        store: Option<String>,
        /// With a PostgreSQL store: hold the failover lease, so that every write transaction
        /// checks its fencing token as an active instance's do.
        #[arg(long)]
        fenced: bool,
    },
    /// IRC writer → bridge → IRC reader (two bridge accounts on one `InspIRCd`).
    IrcIrc(Drive),
    /// IRC writer → bridge → Mattermost (emulator) reader on the WebSocket.
    IrcMm(Drive),
    /// An HTTP client posting matterbridge API messages (`POST /api/message`, up to
    /// `--concurrency` requests in flight) → bridge → IRC reader.
    ApiIrc {
        #[command(flatten)]
        drive: Drive,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Matrix: a direct client's accepted rate vs the bridge as the room's only writer, in
    /// alternating rounds on one Synapse; then Matrix → IRC latency, idle and while the bridge
    /// writes a burst into the room; then (with `--ghosts`) RSS before and after N new people
    /// spoke.
    Matrix(MatrixDrive),
    /// RSS with four networks (two IRC accounts, one Mattermost, one Matrix) and N gateways,
    /// idle; `--no-matrix` leaves Matrix out.
    Idle {
        #[arg(long, default_value_t = 100)]
        gateways: usize,
        /// Leave the Matrix network out (three networks).
        #[arg(long)]
        no_matrix: bool,
        /// Relay this many messages afterwards and measure RSS again (0: skip).
        #[arg(long, default_value_t = 10_000)]
        mapped: usize,
    },
    /// Bridge down, N posts on Mattermost, bridge up: time until all reached IRC.
    Catchup {
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// How long the bridge stays down (the posts are made at its start).
        #[arg(long, default_value_t = 60)]
        outage_secs: u64,
    },
    /// IRC puppets: N Mattermost people say one line each (N puppets connect), RSS per idle
    /// puppet, connections per second; then a restart and the same again.
    Puppets {
        #[arg(long, default_value_t = 500)]
        people: usize,
        /// `puppet_connect_rate`.
        #[arg(long, default_value_t = 50)]
        rate: u32,
    },
    /// Several instances in the per-network failover mode (`failover = "network"`) on one
    /// PostgreSQL store (started here): `pairs` gateways, each linking two IRC networks of
    /// their own on one `InspIRCd` (a writer on one, a reader on the other), split over
    /// `instances` daemons; all pairs at once. Rate, latency, and CPU per instance.
    Spread {
        #[arg(long, default_value_t = 1)]
        instances: usize,
        #[arg(long, default_value_t = 3)]
        pairs: usize,
        #[command(flatten)]
        drive: Drive,
    },
    /// Start-up to the first line relayed and to all channels joined, N gateways (IRC ⇄ IRC).
    Startup {
        #[arg(long, default_value_t = 100)]
        gateways: usize,
    },
    /// A simulated month at a steady rate with a retention (the store's clock seam moves a day
    /// at a time): database and file-store size per day, and the writer's commit latency while
    /// the daily retention pass runs beside it.
    Retention {
        #[arg(long, default_value_t = 30)]
        days: i64,
        #[arg(long, default_value_t = 20_000)]
        per_day: usize,
        #[arg(long, default_value_t = 7)]
        retention_days: u32,
        #[arg(long, default_value_t = 200)]
        files_per_day: usize,
        /// Keep the state in this PostgreSQL database (`postgres://…`, an empty one) instead of
        /// a `SQLite` file in a temporary folder.
        #[arg(long)]
        store: Option<String>,
    },
}

/// The Matrix scenario's options.
#[derive(clap::Args, Clone, Copy)]
struct MatrixDrive {
    /// Messages per round and path (and the burst written during the latency run: twice this).
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Rounds; each runs the direct path and the bridged one, in alternating order
    /// (direct first in even rounds, bridged first in odd ones).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// The bridge's Matrix side: a bot account (`/sync`) or an application service (ghosts,
    /// pushed transactions; Synapse started with the registration the daemon prints).
    #[arg(long, value_enum, default_value_t = MatrixMode::Bot)]
    mode: MatrixMode,
    /// IRC people writing the bridged rounds and the burst, in turn (each its own connection;
    /// in appservice mode each its own ghost).
    #[arg(long, default_value_t = 1)]
    speakers: usize,
    /// Matrix → IRC latency samples per run (one every 300 ms).
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// After the latency runs: this many new IRC people say one line each; the daemon's RSS
    /// before and after (0: skip).
    #[arg(long, default_value_t = 0)]
    ghosts: usize,
    /// Extra Matrix members of the direct path's room (each event costs the homeserver more
    /// with more local members): with `--mode appservice` give the number of speakers, so the
    /// direct room has as many members as the bridged room has ghosts.
    #[arg(long, default_value_t = 0)]
    direct_members: usize,
}

/// `--mode` of the Matrix scenario.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum MatrixMode {
    Bot,
    Appservice,
}

#[derive(clap::Args, Clone, Copy)]
struct Drive {
    /// Messages per run.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Messages per second (0: as fast as possible).
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// IRC → IRC only: lines sent and read on each path before the measured run, unmeasured,
    /// so that every path is measured on connections in their steady state (a new TCP
    /// connection's first seconds have stalls of their own).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// IRC → Mattermost only: the bridge with `remote_users = true` (the system admin's
    /// token), so every line is posted by the writer's own Mattermost user.
    #[arg(long)]
    remote_users: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tribridge::install_tls_provider();
    // Sized as the daemon's runtime is: `core` runs the bridge's own router, store and outbox.
    let runtime = tribridge::runtime_builder().build()?;
    let daemon = args.daemon.clone().unwrap_or_else(default_daemon);
    let (name, result) = runtime.block_on(async {
        match args.scenario {
            Scenario::Core {
                gateways,
                messages,
                window,
                per_event,
                store,
                fenced,
            } => (
                "core",
                core(
                    gateways,
                    messages,
                    window,
                    per_event,
                    store.as_deref(),
                    fenced,
                )
                .await,
            ),
            Scenario::IrcIrc(drive) => ("irc-irc", irc_irc(&daemon, drive).await),
            Scenario::IrcMm(drive) => ("irc-mm", irc_mm(&daemon, drive).await),
            Scenario::ApiIrc { drive, concurrency } => {
                ("api-irc", api_irc(&daemon, drive, concurrency).await)
            }
            Scenario::Matrix(drive) => ("matrix", matrix(&daemon, drive).await),
            Scenario::Idle {
                gateways,
                mapped,
                no_matrix,
            } => ("idle", idle(&daemon, gateways, mapped, !no_matrix).await),
            Scenario::Catchup {
                messages,
                outage_secs,
            } => ("catchup", catchup(&daemon, messages, outage_secs).await),
            Scenario::Startup { gateways } => ("startup", startup(&daemon, gateways).await),
            Scenario::Retention {
                days,
                per_day,
                retention_days,
                files_per_day,
                store,
            } => (
                "retention",
                tokio::task::spawn_blocking(move || {
                    retention(
                        days,
                        per_day,
                        retention_days,
                        files_per_day,
                        store.as_deref(),
                    )
                })
                .await
                .expect("retention scenario"),
            ),
            Scenario::Puppets { people, rate } => ("puppets", puppets(&daemon, people, rate).await),
            Scenario::Spread {
                instances,
                pairs,
                drive,
            } => ("spread", spread(&daemon, instances, pairs, drive).await),
        }
    });
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("loadgen-{name}.json")));
    let mut result = result;
    result["scenario"] = json!(name);
    result["load_average"] = json!(load_average());
    std::fs::write(&out, serde_json::to_string_pretty(&result)?)?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    println!("written to {}", out.display());
    Ok(())
}

/// Bytes of the files in `dir` whose name starts with `prefix`.
fn bytes_of(dir: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The `retention` scenario: see [`Scenario::Retention`].
fn retention(
    days: i64,
    per_day: usize,
    retention_days: u32,
    files_per_day: usize,
    url: Option<&str>,
) -> Value {
    use std::sync::atomic::AtomicBool;
    use tribridge::model::Attachment;
    use tribridge::store::{Completion, Queued, Route, StagedInbound};
    use tribridge::vocab::gateway::{Direction, GatewayChannel, GatewayConfig, HistoryPolicy};
    const DAY_MS: i64 = 86_400_000;
    const GROUP: usize = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let store = Arc::new(Store::open_configured(&state, url).expect("store"));
    let files = tribridge::files::FileStore::open(&state, 1 << 20).expect("file store");
    let channel = |network: &str, name: &str| GatewayChannel {
        network: network.into(),
        channel: name.into(),
        direction: Direction::InOut,
    };
    let gateway = GatewayConfig {
        name: "g".into(),
        channels: vec![channel("irc", "#a"), channel("mm", "town")],
        long_text: tribridge::richtext::long_text::LongTextPolicy::default(),
        allow_mass_pings: false,
        edit_policy: tribridge::richtext::edits::EditPolicy::default(),
        original_time_after: None,
        irc_replies: tribridge::vocab::gateway::IrcReplies::default(),
        remote_nick_format: None,
        history: HistoryPolicy {
            archive: true,
            retention_days: Some(retention_days),
            legal_hold: false,
        },
    };
    let policies = Arc::new(tribridge::archive::Retention::from_gateways(&[gateway]));
    let route = Route {
        gateway: "g".into(),
        destination: ChannelRef::new("mm", "town"),
    };
    let file_every = per_day
        .checked_div(files_per_day)
        .unwrap_or(usize::MAX)
        .max(1);
    let mut sequence = 0_u64;
    let mut acks: Vec<Completion> = Vec::new();
    let mut per_day_rows = Vec::new();
    let (mut quiet, mut pruning_latencies) = (Vec::new(), Vec::new());
    for day in 0..days {
        let skew = day * DAY_MS;
        store.set_clock_skew_ms(skew);
        // The day's retention pass runs beside the day's traffic, as the daemon's task does.
        let running = Arc::new(AtomicBool::new(true));
        let pass = {
            let (store, policies, running) = (
                Arc::clone(&store),
                Arc::clone(&policies),
                Arc::clone(&running),
            );
            let files = tribridge::files::FileStore::open(&state, 1 << 20).expect("file store");
            std::thread::spawn(move || {
                let started = Instant::now();
                tribridge::archive::chain::chain_new(&store, policies.as_ref()).expect("chain");
                let pruned = tribridge::archive::prune(
                    &store,
                    Some(&files),
                    &policies,
                    tribridge::model::now_ms() + skew,
                    std::thread::yield_now,
                )
                .expect("prune");
                running.store(false, Ordering::Relaxed);
                (pruned, started.elapsed())
            })
        };
        let mut sent = 0;
        while sent < per_day {
            let mut group = Vec::with_capacity(GROUP);
            for _ in 0..GROUP.min(per_day - sent) {
                sequence += 1;
                let attachments = if sent % file_every == 0 {
                    let content = format!("file {sequence} ").repeat(256).into_bytes();
                    let hash = files.put(&content).expect("put file");
                    vec![Attachment {
                        name: format!("f{sequence}.txt"),
                        mime: "text/plain".into(),
                        size: Some(content.len() as u64),
                        stored: Some(hash),
                    }]
                } else {
                    Vec::new()
                };
                let mut body = EventBody::text(
                    TextStyle::Normal,
                    &format!("message {sequence} of a steady day of chat in the channel"),
                );
                if let EventBody::Text {
                    attachments: slot, ..
                } = &mut body
                {
                    *slot = attachments;
                }
                let inbound = Inbound {
                    origin: ChannelRef::new("irc", "#a"),
                    remote_id: Some(format!("m{sequence}")),
                    author: Author {
                        id: format!("user{}", sequence % 50),
                        display_name: format!("user{}", sequence % 50),
                    },
                    timestamp_ms: tribridge::model::now_ms() + skew,
                    body,
                    permalink: None,
                };
                group.push(StagedInbound::new(inbound, "irc", vec![route.clone()]).expect("stage"));
                sent += 1;
            }
            let during = running.load(Ordering::Relaxed);
            let started = Instant::now();
            let outcome = store.commit_group(&std::mem::take(&mut acks), &mut group);
            let micros = started.elapsed().as_secs_f64() * 1e6;
            if during {
                pruning_latencies.push(micros);
            } else {
                quiet.push(micros);
            }
            outcome.acks.expect("acks");
            for queued in outcome.queued {
                if let Queued::Announced(pending) = queued {
                    let remote = format!("p{}", pending.seq);
                    acks.push(Completion::of(&pending.delivery, pending.seq, Some(remote)));
                }
            }
        }
        let (pruned, took) = pass.join().expect("pass");
        if let Some(url) = url {
            // A simulated day passes in seconds, too fast for autovacuum (which wakes every
            // minute): vacuum once a day, as autovacuum would have many times in a real one.
            let mut client = postgres::Client::connect(url, postgres::NoTls).expect("connect");
            client.batch_execute("VACUUM ANALYZE").expect("vacuum");
        }
        let (messages, db) = store.footprint().expect("footprint");
        let stored = bytes_of(&state.join("files"), "");
        println!(
            "day {day:>2}: {messages:>7} messages, db {:>6.1} MiB, files {:>5.1} MiB; pass forgot \
             {} in {:.0} ms ({} batches)",
            db as f64 / 1_048_576.0,
            stored as f64 / 1_048_576.0,
            pruned.messages,
            took.as_secs_f64() * 1000.0,
            pruned.batches
        );
        per_day_rows.push(json!({
            "day": day,
            "messages": messages,
            "db_bytes": db,
            "files_bytes": stored,
            "pass_forgot": pruned.messages,
            "pass_files": pruned.files,
            "pass_ms": took.as_secs_f64() * 1000.0,
            "pass_batches": pruned.batches,
        }));
    }
    quiet.sort_by(f64::total_cmp);
    pruning_latencies.sort_by(f64::total_cmp);
    let summary = |v: &[f64]| {
        json!({
            "groups": v.len(),
            "p50_us": percentile(v, 0.5),
            "p99_us": percentile(v, 0.99),
            "max_us": v.last().copied().unwrap_or(0.0),
        })
    };
    json!({
        "store": store.backend_name(),
        "days": days,
        "per_day": per_day,
        "retention_days": retention_days,
        "files_per_day": files_per_day,
        "group": GROUP,
        "per_day_rows": per_day_rows,
        "commit_latency_quiet": summary(&quiet),
        "commit_latency_while_pruning": summary(&pruning_latencies),
    })
}

fn default_daemon() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("tribridge")))
        .unwrap_or_else(|| PathBuf::from("tribridge"))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split(' ')
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Measurements

/// Latency percentiles in milliseconds.
fn percentiles(latencies: &mut [Duration]) -> Value {
    if latencies.is_empty() {
        return json!(null);
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[index].as_secs_f64() * 1000.0
    };
    json!({
        "p50_ms": at(0.50),
        "p95_ms": at(0.95),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
    })
}

/// Sends and receipts of one run, by sequence number.
#[derive(Default)]
struct Run {
    sent: Vec<Option<Instant>>,
    received: Vec<Option<Instant>>,
    out_of_order: u64,
    duplicates: u64,
    last_received: Option<usize>,
}

impl Run {
    fn new(messages: usize) -> Self {
        Self {
            sent: vec![None; messages],
            received: vec![None; messages],
            ..Self::default()
        }
    }

    fn receive(&mut self, seq: usize, at: Instant) {
        let Some(slot) = self.received.get_mut(seq) else {
            return;
        };
        if slot.is_some() {
            self.duplicates += 1;
            return;
        }
        *slot = Some(at);
        if self.last_received.is_some_and(|last| seq < last) {
            self.out_of_order += 1;
        }
        self.last_received = Some(seq);
    }

    fn complete(&self) -> bool {
        self.received.iter().all(Option::is_some)
    }

    fn summary(&self) -> Value {
        let mut latencies: Vec<Duration> = self
            .sent
            .iter()
            .zip(&self.received)
            .filter_map(|(sent, received)| Some(received.as_ref()?.duration_since(*sent.as_ref()?)))
            .collect();
        let received = latencies.len();
        let first = self.sent.iter().flatten().min().copied();
        let last = self.received.iter().flatten().max().copied();
        let seconds = match (first, last) {
            (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        let missing: Vec<usize> = self
            .received
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_none())
            .map(|(seq, _)| seq)
            .take(20)
            .collect();
        json!({
            "messages": self.sent.len(),
            "received": received,
            "lost": self.sent.len() - received,
            "first_missing": missing,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "seconds": seconds,
            "msgs_per_s": if seconds > 0.0 { received as f64 / seconds } else { 0.0 },
            "latency": percentiles(&mut latencies),
        })
    }
}

/// The text of message `seq` of a run: `lg<run>-<seq>`.
fn payload(run: &str, seq: usize) -> String {
    format!("{run}-{seq}")
}

/// The sequence number in a received text carrying `run`'s payload.
fn parse_payload(run: &str, text: &str) -> Option<usize> {
    let at = text.find(run)?;
    let rest = text[at + run.len()..].strip_prefix('-')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Pace `messages` sends at `rate` per second (0: no pacing), calling `send(seq)`.
async fn pace(messages: usize, rate: u64, run: &Mutex<Run>, mut send: impl FnMut(usize)) {
    let started = Instant::now();
    for seq in 0..messages {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(seq as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        run.lock().expect("run").sent[seq] = Some(Instant::now());
        send(seq);
    }
}

/// The daemon as a child process, with `/proc` readings.
struct Daemon {
    child: Child,
    dir: PathBuf,
    started: Instant,
}

impl Daemon {
    fn start(binary: &Path, dir: &Path, config: &str) -> Daemon {
        std::fs::write(dir.join("bridges.toml"), config).expect("write config");
        let log = std::fs::File::create(dir.join("bridge.log")).expect("log");
        let started = Instant::now();
        let mut command = Command::new(binary);
        // The daemon's own log filter (its events at info, the libraries' at warn), as it
        // runs when installed; `LOADGEN_RUST_LOG` replaces it. (`RUST_LOG=info` would also log
        // every request the Matrix SDK makes.)
        match std::env::var("LOADGEN_RUST_LOG") {
            Ok(filter) => command.env("RUST_LOG", filter),
            Err(_) => command.env_remove("RUST_LOG"),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(dir.join("bridges.toml"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", binary.display()));
        Daemon {
            child,
            dir: dir.to_path_buf(),
            started,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bridge.log")).unwrap_or_default()
    }

    /// Wait until the log holds `needle` `count` times; the time since start.
    async fn wait_log(&mut self, needle: &str, count: usize) -> Duration {
        let deadline = Instant::now() + Duration::from_mins(2);
        loop {
            if self.log().matches(needle).count() >= count {
                return self.started.elapsed();
            }
            let exited = self.child.try_wait().ok().flatten();
            assert!(
                Instant::now() < deadline && exited.is_none(),
                "daemon never logged {needle:?} x{count} (exit: {exited:?}): {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Resident set size in KiB.
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The resident set by kind (KiB): anonymous (heap, stacks), file-backed (the binary's
    /// and libraries' pages), shared memory; from `/proc/<pid>/status`.
    fn rss_parts(&self) -> Value {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        json!({
            "anon": field("RssAnon:"),
            "file": field("RssFile:"),
            "shmem": field("RssShmem:"),
            "threads": field("Threads:"),
            "by_mapping": self.rss_by_mapping(),
        })
    }

    /// The resident set by what is mapped (KiB), from `/proc/<pid>/smaps`: the daemon's own
    /// binary (its code and read-only data, and the relocated data written at start), the
    /// shared libraries, other files (the stores' mapped files), the main thread's stack, and
    /// the rest: anonymous memory (the heap, the allocator's arenas, the other threads' stacks).
    fn rss_by_mapping(&self) -> Value {
        let smaps =
            std::fs::read_to_string(format!("/proc/{}/smaps", self.child.id())).unwrap_or_default();
        let binary = std::fs::read_link(format!("/proc/{}/exe", self.child.id()))
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut kinds: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        let mut current = "anon";
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
                // A mapping's header: address range, permissions, offset, device, inode, path.
                let path = line.split_whitespace().nth(5).unwrap_or("");
                current = if path == binary {
                    "binary"
                } else if path.contains(".so") {
                    "libraries"
                } else if path.starts_with('/') {
                    "other_files"
                } else if path.starts_with("[stack") {
                    "stacks"
                } else {
                    "anon"
                };
            } else if first == "Rss:" {
                let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                *kinds.entry(current).or_default() += kib;
            }
        }
        json!(kinds)
    }

    /// User + system CPU time used so far.
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is field 3; utime and
        // stime are fields 14 and 15.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
            .sum();
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // LOADGEN_KEEP_LOG=FILE keeps the daemon's log of the run.
        if let Some(keep) = std::env::var_os("LOADGEN_KEEP_LOG") {
            let mut keep = keep;
            if std::env::var_os("LOADGEN_KEEP_LOG_PER_PID").is_some() {
                keep.push(format!(".{}", self.child.id()));
            }
            let _ = std::fs::copy(self.dir.join("bridge.log"), keep);
        }
    }
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// An IRC network; `LOADGEN_IRC_HISTORY` (`auto` or `off`) sets its `history` key, to measure
/// the per-line cursor write of the history catch-up against none.
fn irc_network(id: &str, port: u16, nick: &str) -> String {
    let history = std::env::var("LOADGEN_IRC_HISTORY")
        .map(|mode| format!("history = \"{mode}\"\n"))
        .unwrap_or_default();
    format!(
        "[network.{id}]\ntype = \"irc\"\nserver = \"127.0.0.1:{port}\"\ntls = false\nnick = \"{nick}\"\n\
         flood_burst = 1000\nflood_interval_ms = 1\n{history}\n"
    )
}

fn config(state: &Path, networks: &str, gateways: &str) -> String {
    format!(
        "[general]\nstate_dir = \"{}\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{networks}{gateways}",
        state.display()
    )
}

/// `config` with the daemon's metrics endpoint on `port`.
fn with_metrics(config: &str, port: u16) -> String {
    config.replacen(
        "[general]\n",
        &format!("[general]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
        1,
    )
}

/// The cumulative bucket counts of every histogram series the daemon exports, by series (its
/// name and labels but `le`), in bucket order: `(upper bound, count)`.
type Histograms = HashMap<String, Vec<(f64, f64)>>;

/// Read the daemon's `/metrics`.
async fn scrape(port: u16) -> Histograms {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let mut histograms = Histograms::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once("_bucket{") else {
            continue;
        };
        let mut bound = None;
        let mut others = Vec::new();
        for label in labels.trim_end_matches('}').split(',') {
            match label.strip_prefix("le=") {
                Some(le) => {
                    bound = Some(le.trim_matches('"').parse::<f64>().unwrap_or(f64::INFINITY));
                }
                None => others.push(label),
            }
        }
        if let (Some(bound), Ok(count)) = (bound, value.parse::<f64>()) {
            let key = if others.is_empty() {
                name.to_owned()
            } else {
                format!("{name}{{{}}}", others.join(","))
            };
            histograms.entry(key).or_default().push((bound, count));
        }
    }
    histograms
}

/// The `q` quantile of a histogram's buckets, interpolated inside its bucket as Prometheus's
/// `histogram_quantile` does; the bound below `+Inf` when it falls there.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let share = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * share);
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

/// What happened in each of the daemon's stages between two scrapes: per series, the count and
/// the p50/p99 (ms for the `_seconds` histograms), from the buckets' differences.
fn stages(before: &Histograms, after: &Histograms) -> Value {
    let mut out = serde_json::Map::new();
    let mut names: Vec<&String> = after.keys().collect();
    names.sort();
    for name in names {
        let buckets: Vec<(f64, f64)> = after[name]
            .iter()
            .enumerate()
            .map(|(i, &(bound, count))| {
                let earlier = before.get(name).and_then(|b| b.get(i)).map_or(0.0, |b| b.1);
                (bound, count - earlier)
            })
            .collect();
        let count = buckets.last().map_or(0.0, |b| b.1);
        if count <= 0.0 {
            continue;
        }
        let scale = if name.contains("_seconds") {
            1000.0
        } else {
            1.0
        };
        let unit = if scale > 1.0 { "_ms" } else { "" };
        // A count (the group size) is an integer: its bucket's bound, not an interpolation.
        let at = |q| {
            bucket_quantile(&buckets, q).map(|v| {
                if scale > 1.0 {
                    v * scale
                } else {
                    buckets
                        .iter()
                        .find(|&&(bound, _)| bound >= v)
                        .map_or(v, |&(bound, _)| bound)
                }
            })
        };
        out.insert(
            name.replace("tribridge_", ""),
            json!({
                "count": count,
                format!("p50{unit}"): at(0.50),
                format!("p99{unit}"): at(0.99),
                format!("p999{unit}"): at(0.999),
            }),
        );
    }
    Value::Object(out)
}

fn gateway(name: &str, channels: &[(&str, &str)]) -> String {
    let mut text = format!("[[gateway]]\nname = \"{name}\"\nchannels = [\n");
    for (network, channel) in channels {
        let _ = writeln!(
            text,
            "  {{ network = \"{network}\", channel = \"{channel}\" }},"
        );
    }
    text.push_str("]\n\n");
    text
}

/// Read IRC lines of `channel` into `run` until complete or `within` passed.
async fn read_irc(
    reader: &mut IrcClient,
    channel: &str,
    run_id: &str,
    run: &Mutex<Run>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let channel = channel.to_lowercase();
    while !run.lock().expect("run").complete() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = reader
            .wait_for(
                |l| {
                    l.text()
                        .is_some_and(|(target, _)| target.to_lowercase() == channel)
                },
                left,
            )
            .await
        else {
            break;
        };
        let at = Instant::now();
        if let Some(seq) = line
            .text()
            .and_then(|(_, text)| parse_payload(run_id, text))
        {
            run.lock().expect("run").receive(seq, at);
        }
    }
}

/// One IRC run: `writer` says each payload in `from`, `reader` reads them in `to`.
async fn irc_run(
    writer: &IrcClient,
    reader: &mut IrcClient,
    from: &str,
    to: &str,
    run_id: &str,
    drive: Drive,
) -> Value {
    if drive.warmup > 0 {
        let warmup = Drive {
            messages: drive.warmup,
            warmup: 0,
            ..drive
        };
        Box::pin(irc_run(
            writer,
            reader,
            from,
            to,
            &format!("w{run_id}"),
            warmup,
        ))
        .await;
    }
    let run = Arc::new(Mutex::new(Run::new(drive.messages)));
    let sending = {
        let run = Arc::clone(&run);
        let writer_lines = writer.clone_writer();
        let from = from.to_owned();
        let run_id = run_id.to_owned();
        tokio::spawn(async move {
            pace(drive.messages, drive.rate, &run, |seq| {
                let _ = writer_lines
                    .send(format!("PRIVMSG {from} :{}\r\n", payload(&run_id, seq)).into_bytes());
            })
            .await;
        })
    };
    read_irc(
        reader,
        to,
        run_id,
        &run,
        Duration::from_secs(60 + drive.messages as u64 / 50),
    )
    .await;
    let _ = sending.await;
    run.lock().expect("run").summary()
}

fn ratio(bridged: &Value, direct: &Value, key: &str) -> Value {
    match (bridged[key].as_f64(), direct[key].as_f64()) {
        (Some(b), Some(d)) if d > 0.0 => json!(b / d),
        _ => json!(null),
    }
}

fn added(bridged: &Value, direct: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in ["p50_ms", "p95_ms", "p99_ms", "max_ms"] {
        if let (Some(b), Some(d)) = (
            bridged["latency"][key].as_f64(),
            direct["latency"][key].as_f64(),
        ) {
            out.insert(key.to_owned(), json!(b - d));
        }
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// The core scenario's emulated endpoint, shared by every destination: records each delivery's
/// arrival and acknowledges it at once. Its bookkeeping is one
/// slot per message and per source, without locks, so that the harness takes as little of the
/// machine as it can from the bridge it measures (a locked map of every message cost the
/// harness about as much CPU as the router and outbox it drives).
#[derive(Clone)]
struct Sink {
    window: usize,
    arrivals: Arc<AtomicU64>,
    /// The clock every slot counts from.
    epoch: Instant,
    per_gateway: usize,
    /// Per message (`gateway * per_gateway + n`): ns after `epoch` when it was submitted.
    sent_ns: Arc<Vec<AtomicU64>>,
    /// Per message: ns from submission to arrival here, plus one (0: not arrived).
    latency_ns: Arc<Vec<AtomicU64>>,
    order_errors: Arc<AtomicU64>,
    /// Per source gateway: the number of the last message that arrived, plus one.
    last_seen: Arc<Vec<AtomicU64>>,
}

impl Sink {
    fn new(window: usize, gateways: usize, per_gateway: usize) -> Self {
        let slots = |n: usize| Arc::new((0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        Self {
            window,
            arrivals: Arc::default(),
            epoch: Instant::now(),
            per_gateway,
            sent_ns: slots(gateways * per_gateway),
            latency_ns: slots(gateways * per_gateway),
            order_errors: Arc::default(),
            last_seen: slots(gateways),
        }
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn latencies(&self) -> Vec<Duration> {
        self.latency_ns
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&ns| ns > 0)
            .map(|ns| Duration::from_nanos(ns - 1))
            .collect()
    }
}

impl Endpoint for Sink {
    fn window(&self) -> usize {
        self.window
    }

    async fn send(
        &self,
        delivery: Delivery,
    ) -> Result<AckFuture, tribridge::connector::DeliveryError> {
        let now = self.now_ns();
        // The writer puts each message's key in its author id: "m<gateway>-<n>".
        if let Some((source, n)) = delivery.author.id.split_once('-')
            && let Some(Ok(source)) = source.strip_prefix('m').map(str::parse::<usize>)
            && let Ok(n) = n.parse::<usize>()
        {
            let slot = source * self.per_gateway + n;
            if let (Some(sent), Some(latency)) = (self.sent_ns.get(slot), self.latency_ns.get(slot))
            {
                let sent = sent.load(Ordering::Relaxed);
                latency.store(now.saturating_sub(sent) + 1, Ordering::Relaxed);
            }
            // Per-source order: each source's messages arrive in the order it said them.
            if let Some(last) = self.last_seen.get(source) {
                let previous = last.swap(n as u64 + 1, Ordering::Relaxed);
                if previous > n as u64 {
                    self.order_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.arrivals.fetch_add(1, Ordering::Relaxed);
        let remote_id = format!("r-{}", delivery.id);
        Ok(Box::pin(async move {
            Ok(DeliveryAck {
                remote_id: Some(remote_id),
            })
        }))
    }
}

async fn core(
    gateways: usize,
    messages: usize,
    window: usize,
    per_event: bool,
    store_url: Option<&str>,
    fenced: bool,
) -> Value {
    let mut text = String::from(
        "[network.one]\ntype = \"irc\"\nserver = \"127.0.0.1:1\"\nnick = \"a\"\n\n[network.two]\ntype = \"irc\"\nserver = \"127.0.0.1:1\"\nnick = \"b\"\n\n",
    );
    for g in 0..gateways {
        text.push_str(&gateway(
            &format!("g{g}"),
            &[("one", &format!("#s{g}")), ("two", &format!("#d{g}"))],
        ));
    }
    let config = tribridge::config::parse(&text, Path::new("."), &[]).expect("core config");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open_configured(dir.path(), store_url).expect("store"));
    if fenced {
        // A lease longer than the run: the fence checks the holder and the token, not the expiry.
        let ttl = Duration::from_hours(1);
        let lease = Arc::new(tribridge::vocab::Lease::new("loadgen", ttl));
        let sent_at = std::time::Instant::now();
        let token = store
            .take_lease(tribridge::vocab::lease::WHOLE_INSTANCE, "loadgen", ttl)
            .expect("take the lease")
            .expect("the lease is free");
        lease.became_active(token, sent_at);
        store.set_lease(lease).expect("a PostgreSQL store");
    }
    let topology = Arc::new(config.topology());
    let destinations = topology.destinations().to_vec();
    let outbox = Arc::new(Outbox::new(&destinations));
    let router = Router::new(Arc::clone(&topology), Arc::clone(&store), outbox.clone());
    let per_gateway = messages / gateways;
    let sink = Sink::new(window, gateways, per_gateway);
    let endpoints: HashMap<String, Sink> = [
        ("one".to_owned(), sink.clone()),
        ("two".to_owned(), sink.clone()),
    ]
    .into();
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    outbox.spawn_workers(router.writer(), &store, &endpoints, &shutdown, &mut tasks);
    // One writer task per gateway, each submitting its share in order, as a connector does.
    let total = per_gateway * gateways;
    let started = Instant::now();
    let cpu_started = process_cpu();
    let mut writers = tokio::task::JoinSet::new();
    for g in 0..gateways {
        let router = router.clone();
        let sink = sink.clone();
        writers.spawn(async move {
            // Each submission's time until it is durable (the commit latency).
            let mut commits = Vec::with_capacity(per_gateway);
            for n in 0..per_gateway {
                let submitted = Instant::now();
                let text = format!("m{g}-{n}");
                sink.sent_ns[g * per_gateway + n].store(sink.now_ns(), Ordering::Relaxed);
                let inbound = Inbound {
                    origin: ChannelRef::new("one", format!("#s{g}")),
                    remote_id: Some(format!("id-{g}-{n}")),
                    author: Author {
                        id: text.clone(),
                        display_name: "alice".into(),
                    },
                    timestamp_ms: 1_700_000_000_000,
                    body: EventBody::text(TextStyle::Normal, &text),
                    permalink: None,
                };
                if per_event {
                    let router = router.clone();
                    tokio::task::spawn_blocking(move || router.submit_blocking(&inbound))
                        .await
                        .expect("join")
                        .expect("commit");
                } else {
                    router.submit(inbound).await.expect("commit");
                }
                commits.push(submitted.elapsed());
            }
            commits
        });
    }
    let mut commit_latencies = Vec::with_capacity(messages);
    while let Some(commits) = writers.join_next().await {
        commit_latencies.extend(commits.expect("writer"));
    }
    let committed_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_mins(10);
    while outbox.stats().delivered.load(Ordering::Relaxed) < total as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_started);
    // The store's writer thread is the core's bound: its CPU per message is the figure that
    // load on the machine disturbs least.
    let writer_cpu = thread_cpu("tribridge-store");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    let pending: u64 = destinations
        .iter()
        .map(|d| store.pending_count(d).expect("count"))
        .sum();
    let delivered = outbox.stats().delivered.load(Ordering::Relaxed);
    let mut latencies = sink.latencies();
    let result = json!({
        "gateways": gateways,
        "messages": total,
        "window": window,
        "group_commit": !per_event,
        "arrivals": sink.arrivals.load(Ordering::Relaxed),
        "delivered_and_recorded": delivered,
        "still_pending": pending,
        "lost": total as u64 - delivered.min(total as u64),
        "order_errors": sink.order_errors.load(Ordering::Relaxed),
        "commit_seconds": committed_in.as_secs_f64(),
        "seconds": elapsed.as_secs_f64(),
        "msgs_per_s": total as f64 / elapsed.as_secs_f64(),
        "cpu_seconds": cpu.as_secs_f64(),
        "writer_cpu_seconds": writer_cpu.as_secs_f64(),
        "writer_cpu_us_per_message": writer_cpu.as_secs_f64() * 1e6 / total as f64,
        "latency_submit_to_endpoint": percentiles(&mut latencies),
        "commit_latency": percentiles(&mut commit_latencies),
        "store": store.backend_name(),
        "rss_kib": own_rss_kib(),
    });
    println!(
        "core ({}): {total} messages over {gateways} gateways in {:.2} s = {:.0} msg/s, writer CPU {:.1} µs/msg, commit p50 {:.2} ms p99 {:.2} ms, lost {}, order errors {}",
        store.backend_name(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        writer_cpu.as_secs_f64() * 1e6 / total as f64,
        result["commit_latency"]["p50_ms"]
            .as_f64()
            .unwrap_or_default(),
        result["commit_latency"]["p99_ms"]
            .as_f64()
            .unwrap_or_default(),
        result["lost"],
        result["order_errors"]
    );
    result
}

fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

/// CPU time of this process's threads named `name` (from `/proc/self/task/*/stat`).
fn thread_cpu(name: &str) -> Duration {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if head.split_once('(').is_none_or(|(_, comm)| comm != name) {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn own_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn irc_irc(daemon: &Path, drive: Drive) -> Value {
    let server = servers::InspIrcd::start();
    let mut writer = IrcClient::connect(server.port, "lgwriter").await;
    let mut reader = IrcClient::connect(server.port, "lgreader").await;
    // Direct: writer and reader in one channel.
    writer.join("#lgdirect").await;
    reader.join("#lgdirect").await;
    let direct = irc_run(&writer, &mut reader, "#lgdirect", "#lgdirect", "dir", drive).await;
    println!("irc direct: {direct}");
    // The server's own path for a relay, both hops: a minimal forwarder (a plain client that
    // says each line it reads in one channel in the other at once, with no store) between the
    // writer's channel and the reader's. What the bridge adds over this is its own cost.
    let chain = {
        let mut forwarder = IrcClient::connect(server.port, "lgforward").await;
        writer.join("#lgchaina").await;
        forwarder.join("#lgchaina").await;
        forwarder.join("#lgchainb").await;
        reader.join("#lgchainb").await;
        writer.wait_member("lgforward", "#lgchaina").await;
        reader.wait_member("lgforward", "#lgchainb").await;
        // Every line irc_run says: the warm-up's and the measured run's.
        let messages = drive.warmup + drive.messages;
        let within = Duration::from_secs(60 + messages as u64 / 50);
        let forwarding = tokio::spawn(async move {
            let lines = forwarder.clone_writer();
            let deadline = Instant::now() + within;
            let mut carried = 0;
            while carried < messages {
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(line) = forwarder
                    .wait_for(
                        |l| {
                            l.text()
                                .is_some_and(|(target, _)| target.eq_ignore_ascii_case("#lgchaina"))
                        },
                        left,
                    )
                    .await
                else {
                    break;
                };
                if let Some((_, text)) = line.text() {
                    let _ = lines.send(format!("PRIVMSG #lgchainb :{text}\r\n").into_bytes());
                    carried += 1;
                }
            }
        });
        let chain = irc_run(&writer, &mut reader, "#lgchaina", "#lgchainb", "chn", drive).await;
        let _ = forwarding.await;
        chain
    };
    println!("irc → forwarder → irc direct: {chain}");
    writer.join("#lga").await;
    reader.join("#lgb").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let networks = irc_network("one", server.port, "lgbrone")
        + irc_network("two", server.port, "lgbrtwo").as_str();
    let metrics_port = servers::free_port();
    let mut bridge = Daemon::start(
        daemon,
        dir.path(),
        &with_metrics(
            &config(
                &dir.path().join("state"),
                &networks,
                &gateway("lg", &[("one", "#lga"), ("two", "#lgb")]),
            ),
            metrics_port,
        ),
    );
    bridge.wait_log("Channels joined; ready.", 2).await;
    reader.wait_member("lgbrtwo", "#lgb").await;
    writer.wait_member("lgbrone", "#lga").await;
    // The warm-up first (as irc_run does), so that the stages below are the measured run's.
    let warmup = Drive {
        messages: drive.warmup,
        warmup: 0,
        ..drive
    };
    if warmup.messages > 0 {
        irc_run(&writer, &mut reader, "#lga", "#lgb", "wbrg", warmup).await;
    }
    let measured = Drive { warmup: 0, ..drive };
    let stages_before = scrape(metrics_port).await;
    let cpu_before = bridge.cpu();
    let bridged = irc_run(&writer, &mut reader, "#lga", "#lgb", "brg", measured).await;
    let cpu = bridge.cpu().saturating_sub(cpu_before);
    let bridge_stages = stages(&stages_before, &scrape(metrics_port).await);
    println!("bridge stages: {bridge_stages}");
    let rss = bridge.rss_kib();
    bridge.terminate();
    json!({
        "rate": drive.rate,
        "direct": direct,
        "direct_forwarder": chain,
        "bridged": bridged,
        "added_latency_ms": added(&bridged, &direct),
        "added_latency_over_both_hops_ms": added(&bridged, &chain),
        "bridge_stages": bridge_stages,
        "throughput_ratio": ratio(&bridged, &direct, "msgs_per_s"),
        "daemon_cpu_seconds": cpu.as_secs_f64(),
        "daemon_rss_kib": rss,
    })
}

/// The `spread` scenario: see [`Scenario::Spread`].
async fn spread(daemon: &Path, instances: usize, pairs: usize, drive: Drive) -> Value {
    let server = servers::InspIrcd::start();
    // The test servers' PostgreSQL set-up uses a blocking client: off the runtime.
    let (_postgres, url) = tokio::task::spawn_blocking(|| {
        let postgres = servers::Postgres::start();
        let url = postgres.fresh_database();
        (postgres, url)
    })
    .await
    .expect("start PostgreSQL");
    let mut networks = String::new();
    let mut gateways = String::new();
    let mut clients = Vec::new();
    for pair in 0..pairs {
        networks.push_str(&irc_network(
            &format!("w{pair}"),
            server.port,
            &format!("lgbw{pair}"),
        ));
        networks.push_str(&irc_network(
            &format!("r{pair}"),
            server.port,
            &format!("lgbr{pair}"),
        ));
        let _ = write!(
            gateways,
            "[[gateway]]\nname = \"p{pair}\"\nretention_days = 0\nchannels = [\n  \
             {{ network = \"w{pair}\", channel = \"#lgw{pair}\" }},\n  \
             {{ network = \"r{pair}\", channel = \"#lgr{pair}\" }},\n]\n\n"
        );
        let mut writer = IrcClient::connect(server.port, &format!("lgwriter{pair}")).await;
        let mut reader = IrcClient::connect(server.port, &format!("lgreader{pair}")).await;
        writer.join(&format!("#lgw{pair}")).await;
        reader.join(&format!("#lgr{pair}")).await;
        clients.push((writer, reader));
    }
    let mut dirs = Vec::new();
    let mut daemons = Vec::new();
    for instance in 0..instances {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(&dir.path().join("state"), &networks, &gateways).replacen(
            "[general]\n",
            &format!(
                "[general]\nstore = \"{url}\"\nfailover = \"network\"\nfailover_after = \"3s\"\n\
                 instance_name = \"lg{instance}\"\n"
            ),
            1,
        );
        daemons.push(Daemon::start(daemon, dir.path(), &config));
        dirs.push(dir);
    }
    // The split: every network held, no instance above its share.
    let total = 2 * pairs;
    let share = total.div_ceil(instances);
    let deadline = Instant::now() + Duration::from_mins(2);
    let held = loop {
        let held: Vec<usize> = daemons
            .iter()
            .map(|d| {
                let log = d.log();
                log.matches("; connecting it.").count()
                    - log.matches("; another instance takes it.").count()
            })
            .collect();
        if held.iter().sum::<usize>() == total && held.iter().all(|&h| h <= share) {
            break held;
        }
        if Instant::now() >= deadline {
            let idle: Vec<String> = daemons
                .iter()
                .zip(&held)
                .filter(|(_, held)| **held == 0)
                .map(|(d, _)| d.log())
                .collect();
            panic!("the networks never split: {held:?}; the log of each holding none: {idle:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (pair, (writer, reader)) in clients.iter_mut().enumerate() {
        // The JOINs of a connection that moved to another instance are old news: NAMES says
        // who is in the channel now.
        writer.drain();
        reader.drain();
        writer
            .wait_member(&format!("lgbw{pair}"), &format!("#lgw{pair}"))
            .await;
        reader
            .wait_member(&format!("lgbr{pair}"), &format!("#lgr{pair}"))
            .await;
    }
    let cpu_before: Vec<Duration> = daemons.iter().map(Daemon::cpu).collect();
    let started = Instant::now();
    let mut runs = tokio::task::JoinSet::new();
    for (pair, (writer, mut reader)) in clients.into_iter().enumerate() {
        runs.spawn(async move {
            let result = irc_run(
                &writer,
                &mut reader,
                &format!("#lgw{pair}"),
                &format!("#lgr{pair}"),
                &format!("sp{pair}"),
                drive,
            )
            .await;
            (pair, result)
        });
    }
    let mut results = vec![Value::Null; pairs];
    while let Some(Ok((pair, result))) = runs.join_next().await {
        results[pair] = result;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu: Vec<f64> = daemons
        .iter()
        .zip(&cpu_before)
        .map(|(d, before)| d.cpu().saturating_sub(*before).as_secs_f64())
        .collect();
    let arrived: u64 = results.iter().filter_map(|r| r["received"].as_u64()).sum();
    for daemon in &mut daemons {
        daemon.terminate();
    }
    json!({
        "instances": instances,
        "networks": total,
        "held_per_instance": held,
        "pairs": results,
        "messages": pairs * drive.messages,
        "arrived": arrived,
        "seconds": seconds,
        "msgs_per_s_all_pairs": arrived as f64 / seconds,
        "cpu_seconds_per_instance": cpu,
        "cpu_ms_per_message_all_instances": cpu.iter().sum::<f64>() * 1000.0 / arrived.max(1) as f64,
    })
}

/// `POST /api/message` → bridge → IRC: messages per second through the API and the latency from
/// the request to the line on IRC, and the API's answer time (the commit before the 200).
async fn api_irc(daemon: &Path, drive: Drive, concurrency: usize) -> Value {
    let server = servers::InspIrcd::start();
    let mut reader = IrcClient::connect(server.port, "lgreader").await;
    reader.join("#lgapi").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let api_port = servers::free_port();
    let token = "loadgen-api-token";
    let networks = irc_network("irc", server.port, "lgbrirc")
        + format!(
            "[network.api]\ntype = \"api\"\nlisten = \"127.0.0.1:{api_port}\"\n\
             token = \"{token}\"\nbuffer = 100000\n\n"
        )
        .as_str();
    let metrics_port = servers::free_port();
    let mut bridge = Daemon::start(
        daemon,
        dir.path(),
        &with_metrics(
            &config(
                &dir.path().join("state"),
                &networks,
                &gateway("lg", &[("api", "lg"), ("irc", "#lgapi")]),
            ),
            metrics_port,
        ),
    );
    bridge.wait_log("Channels joined; ready.", 1).await;
    reader.wait_member("lgbrirc", "#lgapi").await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{api_port}/api/message");
    let deadline = Instant::now() + Duration::from_mins(1);
    while http
        .get(format!("http://127.0.0.1:{api_port}/api/health"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the API never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stages_before = scrape(metrics_port).await;
    let cpu_before = bridge.cpu();
    let run = Arc::new(Mutex::new(Run::new(drive.messages)));
    let answers: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let sending = {
        let (run, answers, refused) =
            (Arc::clone(&run), Arc::clone(&answers), Arc::clone(&refused));
        tokio::spawn(async move {
            let mut posts = Vec::with_capacity(drive.messages);
            let started = Instant::now();
            for seq in 0..drive.messages {
                if drive.rate > 0 {
                    let due = started + Duration::from_secs_f64(seq as f64 / drive.rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let permit = Arc::clone(&permits).acquire_owned().await.expect("permits");
                let body = json!({"text": payload("api", seq), "username": "lgclient",
                                  "gateway": "lg", "event": ""});
                let (http, url) = (http.clone(), url.clone());
                let (answers, refused) = (Arc::clone(&answers), Arc::clone(&refused));
                let at = Instant::now();
                run.lock().expect("run").sent[seq] = Some(at);
                posts.push(tokio::spawn(async move {
                    let answer = http.post(url).bearer_auth(token).json(&body).send().await;
                    if answer.is_ok_and(|a| a.status().is_success()) {
                        answers.lock().expect("answers").push(at.elapsed());
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                }));
            }
            for post in posts {
                let _ = post.await;
            }
        })
    };
    read_irc(
        &mut reader,
        "#lgapi",
        "api",
        &run,
        Duration::from_secs(60 + drive.messages as u64 / 50),
    )
    .await;
    let _ = sending.await;
    let cpu = bridge.cpu().saturating_sub(cpu_before);
    let bridge_stages = stages(&stages_before, &scrape(metrics_port).await);
    let rss = bridge.rss_kib();
    bridge.terminate();
    let bridged = run.lock().expect("run").summary();
    let mut answer_times = answers.lock().expect("answers").clone();
    json!({
        "rate": drive.rate,
        "concurrency": concurrency,
        "bridged": bridged,
        "api_answer": percentiles(&mut answer_times),
        "api_refused": refused.load(Ordering::Relaxed),
        "bridge_stages": bridge_stages,
        "daemon_cpu_seconds": cpu.as_secs_f64(),
        "daemon_rss_kib": rss,
    })
}

/// A Mattermost WebSocket reader: posts in `channel_id` whose message carries `run_id`.
async fn read_mm(
    url: &str,
    token: &str,
    channel_id: &str,
    run_id: &str,
    run: &Mutex<Run>,
    ready: tokio::sync::oneshot::Sender<()>,
    within: Duration,
) {
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            json!({"seq": 1, "action": "authentication_challenge", "data": {"token": token}})
                .to_string()
                .into(),
        ))
        .await
        .expect("auth");
    let _ = ready.send(());
    let deadline = Instant::now() + within;
    while !run.lock().expect("run").complete() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(message))) = tokio::time::timeout(left, socket.next()).await else {
            break;
        };
        let at = Instant::now();
        let tokio_tungstenite::tungstenite::Message::Text(text) = message else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if event["event"] != "posted" {
            continue;
        }
        let Some(post) = event["data"]["post"]
            .as_str()
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
        else {
            continue;
        };
        if post["channel_id"] != channel_id {
            continue;
        }
        if let Some(seq) = post["message"]
            .as_str()
            .and_then(|m| parse_payload(run_id, m))
        {
            run.lock().expect("run").receive(seq, at);
        }
    }
}

/// A [`read_mm`] task for `watcher` on `channel`, started once it has authenticated (and given
/// the emulator a moment to register the socket).
async fn start_mm_reader(
    mm: &mattermost::MmServer,
    watcher: &mattermost::MmUser,
    channel: &str,
    run_id: &'static str,
    run: &Arc<Mutex<Run>>,
    within: Duration,
) -> tokio::task::JoinHandle<()> {
    let (ready, is_ready) = tokio::sync::oneshot::channel();
    let (url, token, channel, run) = (
        mm.emu.websocket_url(),
        watcher.token().to_owned(),
        channel.to_owned(),
        Arc::clone(run),
    );
    let reading = tokio::spawn(async move {
        read_mm(&url, &token, &channel, run_id, &run, ready, within).await;
    });
    let _ = is_ready.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    reading
}

/// A Mattermost emulator on a runtime and threads of its own (two workers, as the standalone
/// `mattermost-emulator` runs), set up as the tests' [`mattermost::MmServer`]. A real server is
/// another process: in the harness's own runtime the emulator would answer its in-process
/// clients (the direct paths) on the thread that had just written the request, a shortcut no
/// client of a real server, and not the bridge, gets. The thread lives as long as the process.
async fn mm_server_apart(team: &str) -> mattermost::MmServer {
    let (started, emulator) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mm-emulator".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("mm-emulator")
                .enable_all()
                .build()
                .expect("emulator runtime");
            runtime.block_on(async move {
                let emu = mattermost_emulator::Emulator::start(
                    "127.0.0.1:0".parse().expect("address"),
                    "sysadmin",
                    "sysadmin-pw",
                )
                .await
                .expect("emulator starts");
                let _ = started.send(emu);
                std::future::pending::<()>().await;
            });
        })
        .expect("emulator thread");
    let emu = emulator.await.expect("emulator started");
    mattermost::MmServer::set_up(emu, team).await
}

async fn irc_mm(daemon: &Path, drive: Drive) -> Value {
    let server = servers::InspIrcd::start();
    let mm = mm_server_apart("lg").await;
    let channel = mm.channel("lgc").await;
    let poster = mm.user("lgposter", &channel).await;
    let watcher = mm.user("lgwatcher", &channel).await;
    let within = Duration::from_secs(60 + drive.messages as u64 / 20);
    // Direct: a Mattermost client posts over REST, the reader sees it on the WebSocket.
    let direct = {
        let run = Arc::new(Mutex::new(Run::new(drive.messages)));
        let reading = start_mm_reader(&mm, &watcher, &channel, "dir", &run, within).await;
        // Posts are sent one after another (each a REST round trip), paced like the IRC writer.
        let started = Instant::now();
        for seq in 0..drive.messages {
            if drive.rate > 0 {
                let due = started + Duration::from_secs_f64(seq as f64 / drive.rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            run.lock().expect("run").sent[seq] = Some(Instant::now());
            poster.say(&channel, &payload("dir", seq)).await;
        }
        let _ = reading.await;
        run.lock().expect("run").summary()
    };
    println!("mm direct: {direct}");
    let mut writer = IrcClient::connect(server.port, "lgwriter").await;
    // The servers' own path, both hops: the writer says each line on IRC; a minimal forwarder
    // (a plain IRC client that posts each line it reads over REST at once, one after another as
    // the bridge does, with no store) carries it to Mattermost; the reader sees it on the
    // WebSocket. What the bridge adds over this is its own cost.
    let chain = {
        let mut forwarder = IrcClient::connect(server.port, "lgforward").await;
        writer.join("#lgchain").await;
        forwarder.join("#lgchain").await;
        writer.wait_member("lgforward", "#lgchain").await;
        let run = Arc::new(Mutex::new(Run::new(drive.messages)));
        let reading = start_mm_reader(&mm, &watcher, &channel, "chn", &run, within).await;
        let sending = {
            let run = Arc::clone(&run);
            let lines = writer.clone_writer();
            tokio::spawn(async move {
                pace(drive.messages, drive.rate, &run, |seq| {
                    let _ = lines.send(
                        format!("PRIVMSG #lgchain :{}\r\n", payload("chn", seq)).into_bytes(),
                    );
                })
                .await;
            })
        };
        let deadline = Instant::now() + within;
        let mut carried = 0;
        while carried < drive.messages {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = forwarder
                .wait_for(
                    |l| {
                        l.text()
                            .is_some_and(|(target, _)| target.eq_ignore_ascii_case("#lgchain"))
                    },
                    left,
                )
                .await
            else {
                break;
            };
            if let Some((_, text)) = line.text() {
                poster.say(&channel, text).await;
                carried += 1;
            }
        }
        let _ = sending.await;
        let _ = reading.await;
        run.lock().expect("run").summary()
    };
    println!("irc → forwarder → mm direct: {chain}");
    writer.join("#lga").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mm_network = if drive.remote_users {
        let token = mm
            .admin
            .ok(
                reqwest::Method::POST,
                &format!("/users/{}/tokens", mm.admin.id),
                Some(json!({"description": "loadgen"})),
            )
            .await;
        format!(
            "[network.mm]\ntype = \"mattermost\"\nurl = \"{}\"\nteam = \"{}\"\n\
             token = \"{}\"\nremote_users = true\n\n",
            mm.emu.base_url(),
            mm.team,
            token["token"].as_str().expect("token")
        )
    } else {
        mm.network("mm", "")
    };
    let networks = irc_network("one", server.port, "lgbrone") + mm_network.as_str();
    let metrics_port = servers::free_port();
    let mut bridge = Daemon::start(
        daemon,
        dir.path(),
        &with_metrics(
            &config(
                &dir.path().join("state"),
                &networks,
                &gateway("lg", &[("one", "#lga"), ("mm", "lgc")]),
            ),
            metrics_port,
        ),
    );
    writer.wait_join("lgbrone", "#lga").await;
    if drive.remote_users {
        mm.wait_member(&channel, &mm.admin.id).await;
    } else {
        mm.wait_bot_member(&channel).await;
    }
    bridge.wait_log("Channels joined; ready.", 1).await;
    let stages_before = scrape(metrics_port).await;
    let cpu_before = bridge.cpu();
    let run = Arc::new(Mutex::new(Run::new(drive.messages)));
    let reading = start_mm_reader(&mm, &watcher, &channel, "brg", &run, within).await;
    let lines = writer.clone_writer();
    pace(drive.messages, drive.rate, &run, |seq| {
        let _ = lines.send(format!("PRIVMSG #lga :{}\r\n", payload("brg", seq)).into_bytes());
    })
    .await;
    let _ = reading.await;
    let bridged = run.lock().expect("run").summary();
    let cpu = bridge.cpu().saturating_sub(cpu_before);
    let bridge_stages = stages(&stages_before, &scrape(metrics_port).await);
    println!("bridge stages: {bridge_stages}");
    let rss = bridge.rss_kib();
    bridge.terminate();
    json!({
        "rate": drive.rate,
        "remote_users": drive.remote_users,
        "direct_mattermost": direct,
        "direct_irc_forwarder_mattermost": chain,
        "bridged_irc_to_mattermost": bridged,
        "added_latency_ms": added(&bridged, &direct),
        "added_latency_over_both_servers_ms": added(&bridged, &chain),
        "bridge_stages": bridge_stages,
        "throughput_ratio": ratio(&bridged, &direct, "msgs_per_s"),
        "daemon_cpu_seconds": cpu.as_secs_f64(),
        "daemon_rss_kib": rss,
    })
}

/// One timed round of a Matrix path: `messages` sent, how many arrived, and in what time.
fn matrix_round(messages: usize, arrived: usize, seconds: f64) -> Value {
    json!({
        "messages": messages,
        "arrived": arrived,
        "seconds": seconds,
        "msgs_per_s": arrived as f64 / seconds,
    })
}

/// Rounds of one path summed: all that arrived over all the time taken.
fn matrix_total(rounds: &[Value]) -> Value {
    let sum = |key: &str| rounds.iter().filter_map(|r| r[key].as_f64()).sum::<f64>();
    json!({
        "messages": sum("messages"),
        "arrived": sum("arrived"),
        "seconds": sum("seconds"),
        "msgs_per_s": sum("arrived") / sum("seconds"),
    })
}

/// The bridge's Matrix network in `mode`: a bot account `@lgbot:localhost` (password login),
/// or an application service whose bot is `@lgbot:localhost`, listening on `listen`.
fn matrix_network(mode: MatrixMode, homeserver: &str, listen: u16) -> String {
    match mode {
        MatrixMode::Bot => format!(
            "[network.mx]\ntype = \"matrix\"\nhomeserver = \"{homeserver}\"\nuser = \"@lgbot:localhost\"\npassword = \"password\"\n\n"
        ),
        MatrixMode::Appservice => format!(
            "[network.mx]\ntype = \"matrix\"\nmode = \"appservice\"\nhomeserver = \"{homeserver}\"\n\
             server_name = \"localhost\"\nlisten = \"127.0.0.1:{listen}\"\n\
             url = \"http://127.0.0.1:{listen}\"\nsender_localpart = \"lgbot\"\n\n"
        ),
    }
}

/// A Synapse for the Matrix scenario: in appservice mode started with the registration that
/// `daemon appservice-registration` prints for `config` (written to `dir/bridges.toml` first;
/// the tokens it generates stay in the state folder for the daemon).
fn matrix_synapse(daemon: &Path, mode: MatrixMode, dir: &Path, config: &str) -> servers::Synapse {
    if mode == MatrixMode::Bot {
        return servers::Synapse::start();
    }
    std::fs::write(dir.join("bridges.toml"), config).expect("write config");
    let output = Command::new(daemon)
        .arg("appservice-registration")
        .arg("--config")
        .arg(dir.join("bridges.toml"))
        .arg("--network")
        .arg("mx")
        .output()
        .expect("run appservice-registration");
    assert!(
        output.status.success(),
        "appservice-registration: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let registration = dir.join("registration.yaml");
    std::fs::write(&registration, &output.stdout).expect("write the registration");
    servers::Synapse::start_with(&format!(
        "\napp_service_config_files: [\"{}\"]\n",
        registration.display()
    ))
}

/// Read `room` until `count` distinct messages tagged `tag` arrived or `within` passed: how
/// many arrived.
async fn matrix_arrivals(
    reader: &mut matrix_client::MatrixUser,
    room: &str,
    tag: &str,
    count: usize,
    within: Duration,
) -> usize {
    let deadline = Instant::now() + within;
    let distinct = |events: &[matrix_client::Event]| {
        events
            .iter()
            .filter_map(|e| parse_payload(tag, e.body()))
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let events = reader
        .events_until(room, within + Duration::from_mins(1), |events| {
            Instant::now() > deadline || distinct(events) >= count
        })
        .await;
    distinct(&events)
}

/// Connect `count` IRC people `<prefix><k>` to `port`, 50 at a time, each in `channel`.
async fn irc_people(port: u16, prefix: &str, count: usize, channel: &str) -> Vec<IrcClient> {
    let mut people = Vec::new();
    for batch in (0..count).collect::<Vec<_>>().chunks(50) {
        let joined = futures::future::join_all(batch.iter().map(|k| {
            let nick = format!("{prefix}{k}");
            let channel = channel.to_owned();
            async move {
                let mut client = IrcClient::connect(port, &nick).await;
                client.join(&channel).await;
                client
            }
        }))
        .await;
        people.extend(joined);
    }
    people
}

async fn matrix(daemon: &Path, drive: MatrixDrive) -> Value {
    let MatrixDrive {
        messages,
        rounds,
        mode,
        speakers,
        samples,
        ghosts,
        direct_members,
    } = drive;
    let server = servers::InspIrcd::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = servers::free_port();
    let metrics_port = servers::free_port();
    let bridge_config = |homeserver: &str| {
        with_metrics(
            &config(
                &dir.path().join("state"),
                &(irc_network("one", server.port, "lgbrone")
                    + matrix_network(mode, homeserver, listen).as_str()),
                &gateway("lg", &[("one", "#lga"), ("mx", "#lgroom:localhost")]),
            ),
            metrics_port,
        )
    };
    let synapse = matrix_synapse(
        daemon,
        mode,
        dir.path(),
        &bridge_config("http://127.0.0.1:1"),
    );
    let base = synapse.url();
    let mut alice = matrix_client::MatrixUser::new(&base, "lgalice").await;
    let bridged_room = alice.create_room("lgroom").await;
    let direct_room = alice.create_room("lgdirect").await;
    let quiet_room = alice.create_room("lgquiet").await;
    if mode == MatrixMode::Bot {
        let _bot = matrix_client::MatrixUser::new(&base, "lgbot").await;
    }
    // Unobserved: one client sends as fast as Synapse accepts (each send waits for its
    // answer), with nobody syncing: the server's rate with no one to tell.
    let started = Instant::now();
    let mut send_latencies = Vec::new();
    for seq in 0..messages {
        let sent = Instant::now();
        alice.say(&quiet_room, &payload("dir", seq)).await;
        send_latencies.push(sent.elapsed());
    }
    let unobserved_seconds = started.elapsed().as_secs_f64();
    let unobserved = json!({
        "messages": messages,
        "seconds": unobserved_seconds,
        "msgs_per_s": messages as f64 / unobserved_seconds,
        "send_latency": percentiles(&mut send_latencies),
    });
    println!("matrix direct, nobody syncing: {unobserved}");
    // Direct, as the bridge is measured: another member sends as fast as Synapse accepts while
    // its own client syncs (every client, and the bridge, does) and the reader syncs, until the
    // reader has seen the last message. It has a room of its own, which grows round by round as
    // the bridge's does; the bridge, not in it, is not woken by it.
    let sender = matrix_client::MatrixUser::new(&base, "lgdirect").await;
    sender.join(&direct_room).await;
    for k in 0..direct_members {
        matrix_client::MatrixUser::new(&base, &format!("lgmember{k}"))
            .await
            .join(&direct_room)
            .await;
    }
    let mut sender = Some(sender);
    let mut senders_sync =
        Some(matrix_client::MatrixUser::login(&base, "lgdirect", "password").await);
    let mut writer = IrcClient::connect(server.port, "lgwriter").await;
    writer.join("#lga").await;
    // The IRC hop without the bridge, measured beside each Matrix → IRC run: one person says a
    // line in a channel no gateway links, another reads it.
    let hop_sender = IrcClient::connect(server.port, "lghops").await;
    let mut hop_reader = IrcClient::connect(server.port, "lghopr").await;
    hop_reader.join("#lghop").await;
    let mut hop_sender = hop_sender;
    hop_sender.join("#lghop").await;
    let mut bridge = Daemon::start(daemon, dir.path(), &bridge_config(&base));
    writer.wait_join("lgbrone", "#lga").await;
    bridge
        .wait_log(
            match mode {
                MatrixMode::Bot => "Joined Matrix room.",
                MatrixMode::Appservice => "The bot joined the room.",
            },
            1,
        )
        .await;
    // The IRC people who write into the bridged room, in turn (the writer alone by default).
    let speaking = if speakers > 1 {
        irc_people(server.port, "lgs", speakers, "#lga").await
    } else {
        Vec::new()
    };
    let lines: Vec<_> = if speaking.is_empty() {
        vec![writer.clone_writer()]
    } else {
        speaking.iter().map(IrcClient::clone_writer).collect()
    };
    let say = |tag: &str, seq: usize| {
        let _ = lines[seq % lines.len()]
            .send(format!("PRIVMSG #lga :{}\r\n", payload(tag, seq)).into_bytes());
    };
    // Each speaker's first line (in appservice mode: its ghost registered, named and joined).
    alice.mark().await;
    let started = Instant::now();
    for seq in 0..lines.len() {
        say("first", seq);
    }
    let first_arrived = matrix_arrivals(
        &mut alice,
        &bridged_room,
        "first",
        lines.len(),
        Duration::from_mins(5),
    )
    .await;
    let first_lines = json!({
        "speakers": lines.len(),
        "arrived": first_arrived,
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("matrix: each speaker's first line: {first_lines}");
    // The bridge is idle in the direct rounds (it is not in their room): its stages between
    // these scrapes are the bridged rounds'.
    let stages_before = scrape(metrics_port).await;
    let mut direct_rounds = Vec::new();
    let mut bridged_rounds = Vec::new();
    let mut pairs = Vec::new();
    for round in 0..rounds {
        let mut direct = Value::Null;
        let mut bridged = Value::Null;
        for path in if round % 2 == 0 {
            ["direct", "bridged"]
        } else {
            ["bridged", "direct"]
        } {
            if path == "direct" {
                let tag = format!("obs{round}");
                let last = payload(&tag, messages - 1);
                alice.mark().await;
                let mut own = senders_sync.take().expect("the sender's sync client");
                own.mark().await;
                let mut writing = sender.take().expect("the direct sender");
                let started = Instant::now();
                let sending = {
                    let room = direct_room.clone();
                    let tag = tag.clone();
                    tokio::spawn(async move {
                        for seq in 0..messages {
                            writing.say(&room, &payload(&tag, seq)).await;
                        }
                        writing
                    })
                };
                let own_sync = {
                    let room = direct_room.clone();
                    let last = last.clone();
                    tokio::spawn(async move {
                        own.events_until(&room, Duration::from_mins(5), |events| {
                            events.iter().any(|e| e.body() == last)
                        })
                        .await;
                        own
                    })
                };
                let events = alice.messages_until(&direct_room, &last).await;
                let seconds = started.elapsed().as_secs_f64();
                sender = Some(sending.await.expect("sender"));
                senders_sync = Some(own_sync.await.expect("the sender's sync"));
                let arrived = events
                    .iter()
                    .filter(|e| parse_payload(&tag, e.body()).is_some())
                    .count();
                direct = matrix_round(messages, arrived, seconds);
            } else {
                // The writers are not paced: the bridge is Synapse's only writer in its room
                // and goes as fast as it can.
                let tag = format!("brg{round}");
                alice.mark().await;
                let started = Instant::now();
                for seq in 0..messages {
                    say(&tag, seq);
                }
                let arrived = matrix_arrivals(
                    &mut alice,
                    &bridged_room,
                    &tag,
                    messages,
                    Duration::from_mins(5),
                )
                .await;
                let seconds = started.elapsed().as_secs_f64();
                bridged = matrix_round(messages, arrived, seconds);
            }
        }
        let share = ratio(&bridged, &direct, "msgs_per_s");
        println!("matrix round {round}: direct {direct}, bridged {bridged}, share {share}");
        pairs.push(share);
        direct_rounds.push(direct);
        bridged_rounds.push(bridged);
    }
    let bridge_stages = stages(&stages_before, &scrape(metrics_port).await);
    println!("bridge stages: {bridge_stages}");
    let rss = bridge.rss_kib();
    let cpu = bridge.cpu();
    // Matrix → IRC, a message every 300 ms: with the bridge idle, then while it writes a burst
    // of IRC lines into the room (in bot mode its sync polls then instead of long-polling).
    let mut hop = (hop_sender, hop_reader);
    let before_idle = scrape(metrics_port).await;
    let (idle_latency, alice, back) =
        matrix_to_irc(alice, &bridged_room, &mut writer, hop, "lati", samples).await;
    let idle_stages = stages(&before_idle, &scrape(metrics_port).await);
    hop = back;
    // A second view of the room watches the burst arrive, to show the latency run was inside it.
    let mut watcher = matrix_client::MatrixUser::login(&base, "lgalice", "password").await;
    watcher.mark().await;
    let burst_started = Instant::now();
    let watching = {
        let room = bridged_room.clone();
        tokio::spawn(async move {
            let arrived = matrix_arrivals(
                &mut watcher,
                &room,
                "burst",
                messages * 2,
                Duration::from_mins(5),
            )
            .await;
            (arrived, burst_started.elapsed().as_secs_f64())
        })
    };
    let before_writing = scrape(metrics_port).await;
    for seq in 0..(messages * 2) {
        say("burst", seq);
    }
    let (writing_latency, mut alice, _hop) =
        matrix_to_irc(alice, &bridged_room, &mut writer, hop, "latw", samples).await;
    let writing_stages = stages(&before_writing, &scrape(metrics_port).await);
    let latency_window = burst_started.elapsed().as_secs_f64();
    println!("matrix → irc: idle {idle_latency}, while the bridge writes {writing_latency}");
    let (burst_arrived, burst_seconds) = watching.await.expect("the burst's watcher");
    let burst = json!({
        "lines": messages * 2,
        "arrived": burst_arrived,
        "seconds": burst_seconds,
        "latency_samples_done_after_s": latency_window,
    });
    println!("burst: {burst}");
    // Memory per new person: N more IRC people join (their connections and the channel's
    // members grow the IRC side alike in both modes), then each says one line (in appservice
    // mode, N new ghosts).
    let mut memory = Value::Null;
    if ghosts > 0 {
        let before_joins = bridge.rss_kib();
        let people = irc_people(server.port, "lgg", ghosts, "#lga").await;
        alice.mark().await;
        let before = bridge.rss_kib();
        let started = Instant::now();
        for (seq, person) in people.iter().enumerate() {
            person.say("#lga", &payload("ghost", seq));
        }
        let arrived = matrix_arrivals(
            &mut alice,
            &bridged_room,
            "ghost",
            ghosts,
            Duration::from_mins(10),
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let after = bridge.rss_kib();
        memory = json!({
            "people": ghosts,
            "arrived": arrived,
            "seconds": seconds,
            "rss_kib_before_joins": before_joins,
            "rss_kib_before": before,
            "rss_kib_after": after,
            "kib_per_person": (after as f64 - before as f64) / ghosts as f64,
        });
        println!("memory: {memory}");
        drop(people);
    }
    bridge.terminate();
    drop(speaking);
    let direct = matrix_total(&direct_rounds);
    let bridged = matrix_total(&bridged_rounds);
    let mut shares: Vec<f64> = pairs.iter().filter_map(Value::as_f64).collect();
    shares.sort_by(f64::total_cmp);
    let median = match shares.len() {
        0 => Value::Null,
        n if n % 2 == 1 => json!(shares[n / 2]),
        n => json!(f64::midpoint(shares[n / 2 - 1], shares[n / 2])),
    };
    json!({
        "mode": match mode {
            MatrixMode::Bot => "bot",
            MatrixMode::Appservice => "appservice",
        },
        "speakers": lines.len(),
        "direct_room_extra_members": direct_members,
        "first_lines": first_lines,
        "direct_unobserved": unobserved,
        "direct": direct,
        "bridged": bridged,
        "direct_rounds": direct_rounds,
        "bridged_rounds": bridged_rounds,
        "share_of_direct_rate": ratio(&bridged, &direct, "msgs_per_s"),
        "share_per_round": pairs,
        "share_per_round_median": median,
        "share_of_unobserved_rate": ratio(&bridged, &unobserved, "msgs_per_s"),
        "bridge_stages": bridge_stages,
        "daemon_cpu_seconds": cpu.as_secs_f64(),
        "daemon_rss_kib": rss,
        "matrix_to_irc_idle": idle_latency,
        "matrix_to_irc_idle_stages": idle_stages,
        "matrix_to_irc_while_writing": writing_latency,
        "matrix_to_irc_while_writing_stages": writing_stages,
        "burst": burst,
        "memory_per_person": memory,
    })
}

/// Percentiles of millisecond values (which may be below zero).
fn percentiles_ms(values: &mut [f64]) -> Value {
    if values.is_empty() {
        return json!(null);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() as f64 - 1.0) * q).round() as usize];
    json!({"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": at(1.0)})
}

/// Matrix → IRC latency: `alice` says `samples` messages tagged `tag`, 300 ms apart, and
/// `reader` (on IRC) notes when each arrives. Measured from just before the send request
/// (`end_to_end`) and from its answer (`after_answer`: Synapse has the event). Meanwhile, 150 ms
/// after each, the IRC hop alone: `hop.0` says a line in an unbridged channel, `hop.1` reads it.
/// `added_over_irc_hop`: `after_answer` minus the hop, percentile by percentile.
async fn matrix_to_irc(
    mut alice: matrix_client::MatrixUser,
    room: &str,
    reader: &mut IrcClient,
    hop: (IrcClient, IrcClient),
    tag: &str,
    samples: usize,
) -> (Value, matrix_client::MatrixUser, (IrcClient, IrcClient)) {
    let run = Arc::new(Mutex::new(Run::new(samples)));
    let answered = Arc::new(Mutex::new(vec![None::<Instant>; samples]));
    let (hop_sender, mut hop_reader) = hop;
    let hop_run = Arc::new(Mutex::new(Run::new(samples)));
    let started = Instant::now();
    let sending = {
        let run = Arc::clone(&run);
        let answered = Arc::clone(&answered);
        let room = room.to_owned();
        let tag = tag.to_owned();
        tokio::spawn(async move {
            for seq in 0..samples {
                tokio::time::sleep_until(
                    (started + Duration::from_millis(300) * seq as u32).into(),
                )
                .await;
                run.lock().expect("run").sent[seq] = Some(Instant::now());
                alice.say(&room, &payload(&tag, seq)).await;
                answered.lock().expect("answers")[seq] = Some(Instant::now());
            }
            alice
        })
    };
    let hop_sending = {
        let hop_run = Arc::clone(&hop_run);
        let lines = hop_sender.clone_writer();
        let tag = format!("hop{tag}");
        tokio::spawn(async move {
            for seq in 0..samples {
                tokio::time::sleep_until(
                    (started
                        + Duration::from_millis(150)
                        + Duration::from_millis(300) * seq as u32)
                        .into(),
                )
                .await;
                hop_run.lock().expect("run").sent[seq] = Some(Instant::now());
                let _ =
                    lines.send(format!("PRIVMSG #lghop :{}\r\n", payload(&tag, seq)).into_bytes());
            }
        })
    };
    let within = Duration::from_mins(2);
    let hop_tag = format!("hop{tag}");
    let hop_reading = async {
        read_irc(&mut hop_reader, "#lghop", &hop_tag, &hop_run, within).await;
    };
    let reading = read_irc(reader, "#lga", tag, &run, within);
    tokio::join!(reading, hop_reading);
    let alice = sending.await.expect("the Matrix sender");
    let _ = hop_sending.await;
    let summary = run.lock().expect("run").summary();
    let mut after_answer: Vec<f64> = {
        let run = run.lock().expect("run");
        let answered = answered.lock().expect("answers");
        run.received
            .iter()
            .zip(answered.iter())
            .filter_map(|(received, answered)| {
                let (received, answered) = ((*received)?, (*answered)?);
                Some(if received >= answered {
                    received.duration_since(answered).as_secs_f64() * 1000.0
                } else {
                    -(answered.duration_since(received).as_secs_f64() * 1000.0)
                })
            })
            .collect()
    };
    let after_answer = percentiles_ms(&mut after_answer);
    let hop_summary = hop_run.lock().expect("run").summary();
    let mut added = serde_json::Map::new();
    for key in ["p50_ms", "p95_ms", "p99_ms", "max_ms"] {
        if let (Some(bridged), Some(hop)) = (
            after_answer[key].as_f64(),
            hop_summary["latency"][key].as_f64(),
        ) {
            added.insert(key.to_owned(), json!(bridged - hop));
        }
    }
    let result = json!({
        "samples": samples,
        "received": summary["received"],
        "end_to_end": summary["latency"],
        "after_answer": after_answer,
        "irc_hop": hop_summary["latency"],
        "added_over_irc_hop": Value::Object(added),
    });
    (result, alice, (hop_sender, hop_reader))
}

/// Config for `gateways` gateways over two IRC accounts and a Mattermost network.
/// The Matrix side of the `idle` scenario: a Synapse, the bridge's account and a person who
/// makes the rooms.
struct IdleMatrix {
    synapse: servers::Synapse,
    bot: String,
    creator: matrix_client::MatrixUser,
}

async fn three_networks(
    server: &servers::InspIrcd,
    mm: &mattermost::MmServer,
    matrix: Option<&IdleMatrix>,
    state: &Path,
    gateways: usize,
) -> String {
    let mut text = String::new();
    for g in 0..gateways {
        mm.channel(&format!("lgm{gateways}x{g}")).await;
        let mm_channel = format!("lgm{gateways}x{g}");
        let (one, two) = (format!("#lga{g}"), format!("#lgb{g}"));
        let mut channels = vec![
            ("one", one.as_str()),
            ("two", two.as_str()),
            ("mm", mm_channel.as_str()),
        ];
        let alias = format!("lgr{gateways}x{g}");
        let room = format!("#{alias}:localhost");
        if let Some(matrix) = matrix {
            matrix.creator.create_room(&alias).await;
            channels.push(("mx", room.as_str()));
        }
        text.push_str(&gateway(&format!("g{g}"), &channels));
    }
    let mut networks = irc_network("one", server.port, "lgbrone")
        + irc_network("two", server.port, "lgbrtwo").as_str()
        + mm.network("mm", "").as_str();
    if let Some(matrix) = matrix {
        let _ = write!(
            networks,
            "[network.mx]\ntype = \"matrix\"\nhomeserver = \"{}\"\nuser = \"@{}:localhost\"\npassword = \"password\"\n\n",
            matrix.synapse.url(),
            matrix.bot
        );
    }
    config(state, &networks, &text)
}

async fn idle(daemon: &Path, gateways: usize, mapped: usize, with_matrix: bool) -> Value {
    let server = servers::InspIrcd::start();
    let mm = mm_server_apart("lg").await;
    let matrix = if with_matrix {
        let synapse = servers::Synapse::start();
        let base = synapse.url();
        matrix_client::register(&base, "lgbot", "password").await;
        let creator = matrix_client::MatrixUser::new(&base, "lgcreator").await;
        Some(IdleMatrix {
            synapse,
            bot: "lgbot".to_owned(),
            creator,
        })
    } else {
        None
    };
    let mut points = Vec::new();
    let mut after_messages = json!(null);
    for count in [1, gateways / 10, gateways] {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = three_networks(
            &server,
            &mm,
            matrix.as_ref(),
            &dir.path().join("state"),
            count,
        )
        .await;
        let mut bridge = Daemon::start(daemon, dir.path(), &text);
        bridge.wait_log("Channels joined; ready.", 2).await;
        bridge.wait_log("Joined.", 3 * count).await;
        if matrix.is_some() {
            bridge.wait_log("Joined Matrix room.", count).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let parts = bridge.rss_parts();
        println!("idle: {count} gateways, RSS parts {parts}");
        points
            .push(json!({"gateways": count, "rss_kib": bridge.rss_kib(), "rss_parts_kib": parts}));
        let rss = bridge.rss_kib();
        println!("idle: {count} gateways, RSS {rss} KiB");
        if count == gateways && mapped > 0 {
            let mut writer = IrcClient::connect(server.port, "lgwriter").await;
            let mut reader = IrcClient::connect(server.port, "lgreader").await;
            writer.join("#lga0").await;
            reader.join("#lgb0").await;
            let run = irc_run(
                &writer,
                &mut reader,
                "#lga0",
                "#lgb0",
                "map",
                Drive {
                    messages: mapped,
                    rate: 0,
                    warmup: 0,
                    remote_users: false,
                },
            )
            .await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let rss_after = bridge.rss_kib();
            println!("after {mapped} messages: RSS {rss_after} KiB");
            after_messages = json!({
                "messages": mapped,
                "rss_kib": rss_after,
                "rss_growth_kib": rss_after.saturating_sub(rss),
                "relay": run,
                "store_bytes": dir_size(&dir.path().join("state")),
            });
        }
        bridge.terminate();
    }
    let per_gateway = match (points.first(), points.last()) {
        (Some(first), Some(last)) => {
            let (g0, r0) = (
                first["gateways"].as_f64().unwrap_or(0.0),
                first["rss_kib"].as_f64().unwrap_or(0.0),
            );
            let (g1, r1) = (
                last["gateways"].as_f64().unwrap_or(0.0),
                last["rss_kib"].as_f64().unwrap_or(0.0),
            );
            if g1 > g0 {
                json!((r1 - r0) / (g1 - g0))
            } else {
                json!(null)
            }
        }
        _ => json!(null),
    };
    json!({
        "networks": if with_matrix { 4 } else { 3 },
        "points": points,
        "rss_kib_per_gateway": per_gateway,
        "after_mapped_messages": after_messages,
    })
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

async fn catchup(daemon: &Path, messages: usize, outage_secs: u64) -> Value {
    let server = servers::InspIrcd::start();
    let mm = mm_server_apart("lg").await;
    let channel = mm.channel("lgc").await;
    let poster = mm.user("lgposter", &channel).await;
    let mut reader = IrcClient::connect(server.port, "lgreader").await;
    reader.join("#lgb").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let networks = irc_network("one", server.port, "lgbrone") + mm.network("mm", "").as_str();
    let text = config(
        &dir.path().join("state"),
        &networks,
        &gateway("lg", &[("one", "#lgb"), ("mm", "lgc")]),
    );
    let mut bridge = Daemon::start(daemon, dir.path(), &text);
    reader.wait_join("lgbrone", "#lgb").await;
    mm.wait_bot_member(&channel).await;
    // One message through, so that the channel's position is stored.
    poster.say(&channel, "before-outage").await;
    reader
        .wait_for(
            |l| l.text().is_some_and(|(_, t)| t.contains("before-outage")),
            Duration::from_mins(1),
        )
        .await
        .expect("first message relayed");
    bridge.terminate();
    let outage_started = Instant::now();
    let run = Arc::new(Mutex::new(Run::new(messages)));
    for seq in 0..messages {
        run.lock().expect("run").sent[seq] = Some(Instant::now());
        poster.say(&channel, &payload("cu", seq)).await;
    }
    let posted_in = outage_started.elapsed();
    let rest = Duration::from_secs(outage_secs).saturating_sub(outage_started.elapsed());
    tokio::time::sleep(rest).await;
    let mut bridge = Daemon::start(daemon, dir.path(), &text);
    let restarted = bridge.started;
    reader.wait_join("lgbrone", "#lgb").await;
    let joined = restarted.elapsed();
    read_irc(&mut reader, "#lgb", "cu", &run, Duration::from_mins(5)).await;
    let done = restarted.elapsed();
    let summary = run.lock().expect("run").summary();
    let rss = bridge.rss_kib();
    let cpu = bridge.cpu();
    bridge.terminate();
    json!({
        "messages": messages,
        "outage_seconds": outage_started.elapsed().as_secs_f64().min(done.as_secs_f64() + outage_secs as f64),
        "posting_seconds": posted_in.as_secs_f64(),
        "restart_to_irc_join_s": joined.as_secs_f64(),
        "restart_to_all_relayed_s": done.as_secs_f64(),
        "join_to_all_relayed_s": done.saturating_sub(joined).as_secs_f64(),
        "received": summary["received"],
        "lost": summary["lost"],
        "duplicates": summary["duplicates"],
        "out_of_order": summary["out_of_order"],
        "daemon_cpu_seconds": cpu.as_secs_f64(),
        "daemon_rss_kib": rss,
    })
}

async fn startup(daemon: &Path, gateways: usize) -> Value {
    let server = servers::InspIrcd::start();
    // The server's own delays: one client registering and joining as many channels.
    let started = Instant::now();
    let mut probe = IrcClient::connect(server.port, "lgprobe").await;
    let registered = started.elapsed();
    for g in 0..gateways {
        probe.raw(&format!("JOIN #lgp{g}"));
    }
    let last = format!("#lgp{}", gateways - 1);
    probe
        .wait_for(
            |l| {
                l.command == "366"
                    && l.params
                        .get(1)
                        .is_some_and(|c| c.eq_ignore_ascii_case(&last))
            },
            Duration::from_mins(1),
        )
        .await
        .expect("probe joined");
    let direct = started.elapsed();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = String::new();
    for g in 0..gateways {
        text.push_str(&gateway(
            &format!("g{g}"),
            &[("one", &format!("#lga{g}")), ("two", &format!("#lgb{g}"))],
        ));
    }
    let networks = irc_network("one", server.port, "lgbrone")
        + irc_network("two", server.port, "lgbrtwo").as_str();
    // A person on each side of the first gateway, there before the bridge: the writer speaks
    // as soon as the bridge has joined its channel, and the reader's receipt of that line is
    // the start-up to relaying.
    let mut writer = IrcClient::connect(server.port, "lgwriter").await;
    let mut reader = IrcClient::connect(server.port, "lgreader").await;
    writer.join("#lga0").await;
    reader.join("#lgb0").await;
    let mut bridge = Daemon::start(
        daemon,
        dir.path(),
        &config(&dir.path().join("state"), &networks, &text),
    );
    writer.wait_join("lgbrone", "#lga0").await;
    let first_joined = bridge.started.elapsed();
    writer.say("#lga0", "first relayed line");
    reader
        .wait_for(
            |l| {
                l.command == "PRIVMSG"
                    && l.text()
                        .is_some_and(|(_, t)| t.contains("first relayed line"))
            },
            Duration::from_mins(2),
        )
        .await
        .expect("first line relayed");
    let first_relayed = bridge.started.elapsed();
    let ready = bridge.wait_log("Channels joined; ready.", 2).await;
    let rss = bridge.rss_kib();
    let cpu = bridge.cpu();
    bridge.terminate();
    json!({
        "gateways": gateways,
        "channels": 2 * gateways,
        "start_to_first_channel_joined_s": first_joined.as_secs_f64(),
        "start_to_first_line_relayed_s": first_relayed.as_secs_f64(),
        "start_to_all_joined_s": ready.as_secs_f64(),
        "direct_client_register_s": registered.as_secs_f64(),
        "direct_client_register_and_join_s": direct.as_secs_f64(),
        "bridge_minus_server_s": ready.as_secs_f64() - direct.as_secs_f64(),
        "daemon_cpu_seconds": cpu.as_secs_f64(),
        "daemon_rss_kib": rss,
    })
}

/// What one round of `puppets` saw on IRC.
struct PuppetsRound {
    /// From the first send to the last line.
    seconds: f64,
    /// From the first send to the first line.
    first_line: f64,
    /// Most puppet JOINs seen in any one second.
    most_joins: usize,
    /// Distinct senders of the lines.
    senders: usize,
    /// Lines from the bot.
    from_bot: usize,
}

/// Every person says one line on Mattermost (sent while the reader reads); the reader waits
/// for all `people` lines on IRC.
async fn puppets_round(
    users: &[mattermost::MmUser],
    channel_id: &str,
    reader: &mut IrcClient,
    word: &str,
) -> PuppetsRound {
    let start = Instant::now();
    let sending = {
        let (users, channel_id, word) = (users.to_vec(), channel_id.to_owned(), word.to_owned());
        tokio::spawn(async move {
            for (i, user) in users.iter().enumerate() {
                user.say(&channel_id, &format!("{word} {i}")).await;
            }
        })
    };
    let mut joins: Vec<Instant> = Vec::new();
    let mut senders = std::collections::HashSet::new();
    let mut from_bot = 0;
    let mut lines = 0;
    let mut first_line = None;
    while lines < users.len() {
        let Some(line) = reader
            .wait_for(
                |l| l.command == "JOIN" || l.command == "PRIVMSG",
                Duration::from_mins(5),
            )
            .await
        else {
            println!("puppets: only {lines} of {} lines arrived", users.len());
            break;
        };
        if line.command == "JOIN" {
            joins.push(Instant::now());
        } else if line.text().is_some_and(|(_, t)| t.contains(word)) {
            lines += 1;
            first_line.get_or_insert_with(|| start.elapsed().as_secs_f64());
            if line.source_nick == "lgbrpup" {
                from_bot += 1;
            }
            senders.insert(line.source_nick.clone());
        }
    }
    let _ = sending.await;
    let most_joins = joins
        .iter()
        .enumerate()
        .map(|(i, at)| {
            joins[i..]
                .iter()
                .take_while(|later| later.duration_since(*at) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    PuppetsRound {
        seconds: start.elapsed().as_secs_f64(),
        first_line: first_line.unwrap_or(f64::NAN),
        most_joins,
        senders: senders.len(),
        from_bot,
    }
}

/// Seconds since midnight (UTC) of a daemon log line (`2026-12-06T08:58:18.123456Z  INFO …`).
fn log_seconds(line: &str) -> Option<f64> {
    let time = line.get(11..)?.split('Z').next()?;
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// The most log lines holding `needle` after the first `skip` such lines that fall in any one
/// second (a sliding window), and how many there were.
fn most_per_second(log: &str, needle: &str, skip: usize) -> (usize, usize) {
    let times: Vec<f64> = log
        .lines()
        .filter(|line| line.contains(needle))
        .skip(skip)
        .filter_map(log_seconds)
        .collect();
    let most = (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| **t - times[i] < 1.0)
                .count()
        })
        .max()
        .unwrap_or(0);
    (most, times.len())
}

async fn puppets(daemon: &Path, people: usize, rate: u32) -> Value {
    let server = servers::InspIrcd::start();
    let mm = mm_server_apart("lgp").await;
    let channel_id = mm.channel("lgpup").await;
    let solo_id = mm.channel("lgsolo").await;
    let mut users = Vec::with_capacity(people);
    for i in 0..people {
        let user = mm.user(&format!("lgp{i}"), &channel_id).await;
        user.ok(
            reqwest::Method::POST,
            &format!("/channels/{solo_id}/members"),
            Some(json!({"user_id": user.id})),
        )
        .await;
        users.push(user);
    }
    let mut reader = IrcClient::connect(server.port, "lgpreader").await;
    reader.join("#lgpup").await;
    reader.join("#lgsolo").await;

    // The same round relayed by the bot alone (puppets off), in channels of its own: what the
    // round itself costs the daemon, without any puppet.
    let solo_dir = tempfile::tempdir().expect("tempdir");
    let solo_text = config(
        &solo_dir.path().join("state"),
        &(irc_network("irc", server.port, "lgbrpup") + mm.network("mm", "").as_str()),
        &gateway("g", &[("irc", "#lgsolo"), ("mm", "lgsolo")]),
    );
    let mut bridge = Daemon::start(daemon, solo_dir.path(), &solo_text);
    bridge.wait_log("Channels joined; ready.", 1).await;
    mm.wait_bot_member(&solo_id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let solo_before = bridge.rss_kib();
    let solo = puppets_round(&users, &solo_id, &mut reader, "solo").await;
    let (solo_seconds, solo_from_bot) = (solo.seconds, solo.from_bot);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let solo_after = bridge.rss_kib();
    println!(
        "puppets off: {people} lines ({solo_from_bot} from the bot) in {solo_seconds:.1} s; RSS {solo_before} → {solo_after} KiB"
    );
    bridge.terminate();

    let dir = tempfile::tempdir().expect("tempdir");
    let networks = irc_network("irc", server.port, "lgbrpup")
        + format!(
            "puppets = true\npuppet_connect_rate = {rate}\nmax_puppets = {}\n\n",
            people + 1
        )
        .as_str()
        + mm.network("mm", "").as_str();
    let text = config(
        &dir.path().join("state"),
        &networks,
        &gateway("g", &[("irc", "#lgpup"), ("mm", "lgpup")]),
    );
    let mut bridge = Daemon::start(daemon, dir.path(), &text);
    bridge.wait_log("Channels joined; ready.", 1).await;
    mm.wait_bot_member(&channel_id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = bridge.rss_kib();
    let round = puppets_round(&users, &channel_id, &mut reader, "hello").await;
    let (seconds, most_joins, senders, from_bot) = (
        round.seconds,
        round.most_joins,
        round.senders,
        round.from_bot,
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = bridge.rss_kib();
    let per_puppet = rss_after.saturating_sub(rss_before) as f64 / people.max(1) as f64;
    // Against the same round with puppets off: the puppets' own cost.
    let per_puppet_vs_solo = rss_after.saturating_sub(solo_after) as f64 / people.max(1) as f64;
    let (most_connects, connects) = most_per_second(&bridge.log(), "Puppet connecting.", 0);
    println!(
        "puppets: {people} people, {senders} senders ({from_bot} lines from the bot) in {seconds:.1} s; \
         most JOINs in one second {most_joins}, most connections in one second {most_connects} of {connects} (rate {rate}); \
         RSS {rss_before} → {rss_after} KiB, {per_puppet:.1} KiB per idle puppet \
         ({per_puppet_vs_solo:.1} KiB against the same round with puppets off)"
    );
    bridge.terminate();

    // A restart: every person speaks again at once. Puppets connect again only now (they have
    // something to say), paced by `puppet_connect_rate`; the first line is measured against the
    // server's own registration time (a plain client connecting at that moment).
    let mut bridge = Daemon::start(daemon, dir.path(), &text);
    bridge.wait_log("Channels joined; ready.", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let registration = {
        let started = Instant::now();
        let probe = IrcClient::connect(server.port, "lgpprobe").await;
        let registered = started.elapsed().as_secs_f64();
        probe.raw("QUIT :probe");
        registered
    };
    let again = puppets_round(&users, &channel_id, &mut reader, "again").await;
    let (first_line, seconds2, most_joins2, senders2, from_bot2) = (
        again.first_line,
        again.seconds,
        again.most_joins,
        again.senders,
        again.from_bot,
    );
    // The log is this run's only (`Daemon::start` starts it afresh).
    let (most_connects2, connects2) = most_per_second(&bridge.log(), "Puppet connecting.", 0);
    println!(
        "after a restart, all {people} at once: first line in {first_line:.2} s (a plain client registers in \
         {registration:.2} s: {:.2} s more); {senders2} senders ({from_bot2} from the bot) in {seconds2:.1} s; \
         most connections in one second {most_connects2} of {connects2}, most JOINs in one second {most_joins2} (rate {rate})",
        first_line - registration
    );
    bridge.terminate();
    json!({
        "people": people,
        "rate": rate,
        "puppets_off": {"seconds": solo_seconds, "from_bot": solo_from_bot, "rss_before_kib": solo_before, "rss_after_kib": solo_after},
        "first": {"seconds": seconds, "most_joins_per_second": most_joins, "most_connections_per_second": most_connects, "connections": connects, "senders": senders, "from_bot": from_bot},
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_idle_puppet_kib": per_puppet,
        "rss_per_idle_puppet_vs_puppets_off_kib": per_puppet_vs_solo,
        "after_restart": {
            "first_line_seconds": first_line,
            "plain_client_registration_seconds": registration,
            "first_line_minus_registration_seconds": first_line - registration,
            "seconds": seconds2,
            "most_connections_per_second": most_connects2,
            "connections": connects2,
            "most_joins_per_second": most_joins2,
            "senders": senders2,
            "from_bot": from_bot2,
        },
    })
}
