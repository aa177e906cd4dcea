//! The load harness: drives the release `tribridge` binary (or, in `core` mode, the router,
//! store and outbox in process) with writers on real servers on loopback (`InspIRCd`, the
//! Mattermost emulator, Synapse), and measures per-message latency from the writer's send to the
//! reader's receipt, throughput, losses, and the daemon's RSS and CPU from `/proc`. Each
//! bridged path is also measured without the bridge (a direct client to the destination server)
//! so that the bridge's share can be stated as a ratio. Prints a summary and writes JSON.
//!
//! `cargo run --release --example loadgen -- <scenario> [options]`; scenarios: `core`,
//! `irc-irc`, `irc-mm`, `matrix`, `idle`, `catchup`, `startup`, `puppets`, `retention`. See
//! BENCHMARKS.md.

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
    },
    /// IRC writer → bridge → IRC reader (two bridge accounts on one `InspIRCd`).
    IrcIrc(Drive),
    /// IRC writer → bridge → Mattermost (emulator) reader on the WebSocket.
    IrcMm(Drive),
    /// Matrix: a direct client's accepted rate vs the bridge as the room's only writer, in
    /// alternating rounds on one Synapse.
    Matrix {
        /// Messages per round and path.
        #[arg(long, default_value_t = 200)]
        messages: usize,
        /// Rounds; each runs the direct path and the bridged one, in alternating order
        /// (direct first in even rounds, bridged first in odd ones).
        #[arg(long, default_value_t = 4)]
        rounds: usize,
    },
    /// RSS with three networks (two IRC accounts, one Mattermost) and N gateways, idle.
    Idle {
        #[arg(long, default_value_t = 100)]
        gateways: usize,
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
    /// Start-up to all channels joined, N gateways (IRC ⇄ IRC).
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
    },
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
            } => ("core", core(gateways, messages, window, per_event).await),
            Scenario::IrcIrc(drive) => ("irc-irc", irc_irc(&daemon, drive).await),
            Scenario::IrcMm(drive) => ("irc-mm", irc_mm(&daemon, drive).await),
            Scenario::Matrix { messages, rounds } => {
                ("matrix", matrix(&daemon, messages, rounds).await)
            }
            Scenario::Idle { gateways, mapped } => ("idle", idle(&daemon, gateways, mapped).await),
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
            } => (
                "retention",
                tokio::task::spawn_blocking(move || {
                    retention(days, per_day, retention_days, files_per_day)
                })
                .await
                .expect("retention scenario"),
            ),
            Scenario::Puppets { people, rate } => ("puppets", puppets(&daemon, people, rate).await),
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
fn retention(days: i64, per_day: usize, retention_days: u32, files_per_day: usize) -> Value {
    use std::sync::atomic::AtomicBool;
    use tribridge::model::Attachment;
    use tribridge::store::{Completion, Queued, Route, StagedInbound};
    use tribridge::vocab::gateway::{Direction, GatewayChannel, GatewayConfig, HistoryPolicy};
    const DAY_MS: i64 = 86_400_000;
    const GROUP: usize = 64;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let store = Arc::new(Store::open(&state).expect("store"));
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
        let db = bytes_of(&state, "tribridge.sqlite3");
        let stored = bytes_of(&state.join("files"), "");
        let messages: i64 = store
            .read_with_public(|c| c.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0)))
            .expect("count");
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

fn irc_network(id: &str, port: u16, nick: &str) -> String {
    format!(
        "[network.{id}]\ntype = \"irc\"\nserver = \"127.0.0.1:{port}\"\ntls = false\nnick = \"{nick}\"\n\
         flood_burst = 1000\nflood_interval_ms = 1\n\n"
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

async fn core(gateways: usize, messages: usize, window: usize, per_event: bool) -> Value {
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
    let store = Arc::new(Store::open(dir.path()).expect("store"));
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
            for n in 0..per_gateway {
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
            }
        });
    }
    while writers.join_next().await.is_some() {}
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
        "rss_kib": own_rss_kib(),
    });
    println!(
        "core: {total} messages over {gateways} gateways in {:.2} s = {:.0} msg/s, writer CPU {:.1} µs/msg, lost {}, order errors {}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        writer_cpu.as_secs_f64() * 1e6 / total as f64,
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

async fn matrix(daemon: &Path, messages: usize, rounds: usize) -> Value {
    let synapse = servers::Synapse::start();
    let base = synapse.url();
    let server = servers::InspIrcd::start();
    let mut alice = matrix_client::MatrixUser::new(&base, "lgalice").await;
    let bridged_room = alice.create_room("lgroom").await;
    let direct_room = alice.create_room("lgdirect").await;
    let quiet_room = alice.create_room("lgquiet").await;
    let _bot = matrix_client::MatrixUser::new(&base, "lgbot").await;
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
    let mut sender = Some(sender);
    let mut senders_sync =
        Some(matrix_client::MatrixUser::login(&base, "lgdirect", "password").await);
    let mut writer = IrcClient::connect(server.port, "lgwriter").await;
    writer.join("#lga").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let networks = irc_network("one", server.port, "lgbrone")
        + format!(
            "[network.mx]\ntype = \"matrix\"\nhomeserver = \"{base}\"\nuser = \"@lgbot:localhost\"\npassword = \"password\"\n\n"
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
                &gateway("lg", &[("one", "#lga"), ("mx", "#lgroom:localhost")]),
            ),
            metrics_port,
        ),
    );
    writer.wait_join("lgbrone", "#lga").await;
    bridge.wait_log("Joined Matrix room.", 1).await;
    let lines = writer.clone_writer();
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
                // The writer is not paced: the bridge is Synapse's only writer in its room and
                // goes as fast as it can.
                let tag = format!("brg{round}");
                alice.mark().await;
                let started = Instant::now();
                for seq in 0..messages {
                    let _ = lines
                        .send(format!("PRIVMSG #lga :{}\r\n", payload(&tag, seq)).into_bytes());
                }
                let events = alice
                    .messages_until(&bridged_room, &payload(&tag, messages - 1))
                    .await;
                let seconds = started.elapsed().as_secs_f64();
                let arrived = events
                    .iter()
                    .filter(|e| parse_payload(&tag, e.body()).is_some())
                    .count();
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
    // Matrix → IRC, a message every 300 ms: with the bot idle, then while it writes a burst of
    // IRC lines into the room (its sync polls then instead of long-polling).
    let (idle_latency, alice) = matrix_to_irc(alice, &bridged_room, &mut writer, "lati").await;
    for seq in 0..(messages * 2) {
        let _ = lines.send(format!("PRIVMSG #lga :{}\r\n", payload("burst", seq)).into_bytes());
    }
    let (writing_latency, mut alice) =
        matrix_to_irc(alice, &bridged_room, &mut writer, "latw").await;
    println!("matrix → irc: idle {idle_latency}, while the bot writes {writing_latency}");
    let burst = alice
        .messages_until(&bridged_room, &payload("burst", messages * 2 - 1))
        .await
        .iter()
        .filter(|e| parse_payload("burst", e.body()).is_some())
        .count();
    bridge.terminate();
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
        "matrix_to_irc_while_writing": writing_latency,
        "burst_arrived": burst,
    })
}

/// Matrix → IRC latency: `alice` says 20 messages tagged `tag`, 300 ms apart, and `reader` (on
/// IRC) notes when each arrives, in a [`Run`]. Measured from just before the send request.
async fn matrix_to_irc(
    mut alice: matrix_client::MatrixUser,
    room: &str,
    reader: &mut IrcClient,
    tag: &str,
) -> (Value, matrix_client::MatrixUser) {
    const COUNT: usize = 20;
    let run = Arc::new(Mutex::new(Run::new(COUNT)));
    let sending = {
        let run = Arc::clone(&run);
        let room = room.to_owned();
        let tag = tag.to_owned();
        tokio::spawn(async move {
            let started = Instant::now();
            for seq in 0..COUNT {
                tokio::time::sleep_until(
                    (started + Duration::from_millis(300) * seq as u32).into(),
                )
                .await;
                run.lock().expect("run").sent[seq] = Some(Instant::now());
                alice.say(&room, &payload(&tag, seq)).await;
            }
            alice
        })
    };
    let deadline = Instant::now() + Duration::from_mins(2);
    while !run.lock().expect("run").complete() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(line) = reader
            .wait_for(
                |l| {
                    l.text().is_some_and(|(target, text)| {
                        target == "#lga" && parse_payload(tag, text).is_some()
                    })
                },
                left,
            )
            .await
        else {
            break;
        };
        if let Some(seq) = line.text().and_then(|(_, text)| parse_payload(tag, text)) {
            run.lock().expect("run").receive(seq, Instant::now());
        }
    }
    let alice = sending.await.expect("the Matrix sender");
    let summary = run.lock().expect("run").summary();
    (summary, alice)
}

/// Config for `gateways` gateways over two IRC accounts and a Mattermost network.
async fn three_networks(
    server: &servers::InspIrcd,
    mm: &mattermost::MmServer,
    state: &Path,
    gateways: usize,
) -> String {
    let mut text = String::new();
    for g in 0..gateways {
        mm.channel(&format!("lgm{gateways}x{g}")).await;
        text.push_str(&gateway(
            &format!("g{g}"),
            &[
                ("one", &format!("#lga{g}")),
                ("two", &format!("#lgb{g}")),
                ("mm", &format!("lgm{gateways}x{g}")),
            ],
        ));
    }
    let networks = irc_network("one", server.port, "lgbrone")
        + irc_network("two", server.port, "lgbrtwo").as_str()
        + mm.network("mm", "").as_str();
    config(state, &networks, &text)
}

async fn idle(daemon: &Path, gateways: usize, mapped: usize) -> Value {
    let server = servers::InspIrcd::start();
    let mm = mm_server_apart("lg").await;
    let mut points = Vec::new();
    let mut after_messages = json!(null);
    for count in [1, gateways / 10, gateways] {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = three_networks(&server, &mm, &dir.path().join("state"), count).await;
        let mut bridge = Daemon::start(daemon, dir.path(), &text);
        bridge.wait_log("Channels joined; ready.", 2).await;
        bridge.wait_log("Joined.", 3 * count).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rss = bridge.rss_kib();
        println!("idle: {count} gateways, RSS {rss} KiB");
        points.push(json!({"gateways": count, "rss_kib": rss}));
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
        "networks": 3,
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
    let mut bridge = Daemon::start(
        daemon,
        dir.path(),
        &config(&dir.path().join("state"), &networks, &text),
    );
    let ready = bridge.wait_log("Channels joined; ready.", 2).await;
    let rss = bridge.rss_kib();
    let cpu = bridge.cpu();
    bridge.terminate();
    json!({
        "gateways": gateways,
        "channels": 2 * gateways,
        "start_to_all_joined_s": ready.as_secs_f64(),
        "direct_client_register_s": registered.as_secs_f64(),
        "direct_client_register_and_join_s": direct.as_secs_f64(),
        "bridge_minus_server_s": ready.as_secs_f64() - direct.as_secs_f64(),
        "daemon_cpu_seconds": cpu.as_secs_f64(),
        "daemon_rss_kib": rss,
    })
}

/// Every person says one line on Mattermost; the reader waits for all `people` lines on IRC.
/// Returns (seconds from the first send to the last line, most puppet JOINs seen in any one
/// second, distinct senders, lines from the bot).
async fn puppets_round(
    users: &[mattermost::MmUser],
    channel_id: &str,
    reader: &mut IrcClient,
    word: &str,
) -> (f64, usize, usize, usize) {
    let start = Instant::now();
    for (i, user) in users.iter().enumerate() {
        user.say(channel_id, &format!("{word} {i}")).await;
    }
    let mut joins: Vec<Instant> = Vec::new();
    let mut senders = std::collections::HashSet::new();
    let mut from_bot = 0;
    let mut lines = 0;
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
            if line.source_nick == "lgbrpup" {
                from_bot += 1;
            }
            senders.insert(line.source_nick.clone());
        }
    }
    let most_per_second = joins
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
    (
        start.elapsed().as_secs_f64(),
        most_per_second,
        senders.len(),
        from_bot,
    )
}

async fn puppets(daemon: &Path, people: usize, rate: u32) -> Value {
    let server = servers::InspIrcd::start();
    let mm = mm_server_apart("lgp").await;
    let channel_id = mm.channel("lgpup").await;
    let mut users = Vec::with_capacity(people);
    for i in 0..people {
        users.push(mm.user(&format!("lgp{i}"), &channel_id).await);
    }
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
    let mut reader = IrcClient::connect(server.port, "lgpreader").await;
    reader.join("#lgpup").await;
    let mut bridge = Daemon::start(daemon, dir.path(), &text);
    bridge.wait_log("Channels joined; ready.", 1).await;
    mm.wait_bot_member(&channel_id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = bridge.rss_kib();
    let (seconds, most_per_second, senders, from_bot) =
        puppets_round(&users, &channel_id, &mut reader, "hello").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = bridge.rss_kib();
    let per_puppet = rss_after.saturating_sub(rss_before) as f64 / people.max(1) as f64;
    println!(
        "puppets: {people} people, {senders} senders ({from_bot} lines from the bot) in {seconds:.1} s; \
         most JOINs in one second {most_per_second} (rate {rate}); RSS {rss_before} → {rss_after} KiB, \
         {per_puppet:.1} KiB per idle puppet"
    );
    bridge.terminate();
    let mut bridge = Daemon::start(daemon, dir.path(), &text);
    bridge.wait_log("Channels joined; ready.", 1).await;
    let first = Instant::now();
    users[0].say(&channel_id, "first after restart").await;
    reader
        .wait_for(
            |l| {
                l.text()
                    .is_some_and(|(_, t)| t.contains("first after restart"))
            },
            Duration::from_mins(1),
        )
        .await;
    let first_after_restart = first.elapsed().as_secs_f64();
    let (seconds2, most_per_second2, senders2, from_bot2) =
        puppets_round(&users, &channel_id, &mut reader, "again").await;
    println!(
        "after a restart: first line in {first_after_restart:.2} s; {senders2} senders ({from_bot2} from the bot) in \
         {seconds2:.1} s; most JOINs in one second {most_per_second2} (rate {rate})"
    );
    bridge.terminate();
    json!({
        "people": people,
        "rate": rate,
        "first": {"seconds": seconds, "most_joins_per_second": most_per_second, "senders": senders, "from_bot": from_bot},
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_per_idle_puppet_kib": per_puppet,
        "after_restart": {"first_line_seconds": first_after_restart, "seconds": seconds2, "most_joins_per_second": most_per_second2, "senders": senders2, "from_bot": from_bot2},
    })
}
