//! The chaos harness: a real `InspIRCd`, a real Synapse, the Mattermost emulator and the daemon in
//! one 3-way gateway. A writer on every side sends numbered messages while the harness kills the
//! daemon with SIGKILL at random moments (and starts it again), restarts `InspIRCd` and Synapse,
//! and drops the Mattermost WebSocket. At the end it reads every channel back and reports, per
//! direction: sent, delivered, lost, duplicated and out of order.
//!
//! CI runs a few cycles (`chaos_short_run_loses_doubles_and_reorders_nothing`). The long run is
//! the same test with more cycles: `TRIBRIDGE_CHAOS_CYCLES=100 cargo test --test it --
//! chaos_ --nocapture` (`TRIBRIDGE_CHAOS_SEED` replays a schedule).
//!
//! The IRC channel keeps its history (`+H`, `InspIRCd`'s `chanhistory`), so that the daemon
//! catches up on what it missed and finds its own unacknowledged lines there: both IRC windows
//! are then expected to stay empty. With `TRIBRIDGE_CHAOS_IRC_HISTORY=0` it does not, as on a
//! server without history, where two windows are protocol limits, classified rather than hidden:
//! a line the server handed to the daemon less than [`IRC_WINDOW`] before a SIGKILL may be lost
//! (it was read from the socket but not yet committed), and a line the daemon sent to IRC just
//! before a kill may be sent once more after the restart (the README's "window IRC leaves open
//! without history"). The harness counts both apart from real losses and duplicates, and prints
//! how far from the kill each one happened. IRC lines are only said while the bridge is in the
//! channel, on either kind of server, so that both runs count the same windows.
//!
//! With `TRIBRIDGE_CHAOS_FAILOVER=1` it runs the failover mode (issue 28): two instances of the
//! daemon, the same configuration, a PostgreSQL store of the harness's own, `failover_after =
//! "3s"`. A SIGKILL strikes the instance that holds the lease; the harness waits until the other
//! one took it over (measuring the time from the kill to the take-over, and to the bridge's JOIN
//! on IRC) and only then starts the killed one again, as the standby; every twelfth cycle
//! restarts PostgreSQL instead of Synapse. The report adds the take-over times (median, max).
//! Nothing may double on Matrix there either: the instance that takes over logs in as another
//! device, and finds what the killed one sent by reading the room back.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::net::{TcpListener, TcpStream};

use crate::support::bridge::with_store;
use crate::support::bridge::{Bridge, unique};
use crate::support::irc_client::{IrcClient, Line};
use crate::support::matrix_client::{MatrixUser, register};
use crate::support::mattermost::{MmServer, MmUser};
use crate::support::servers::{InspIrcd, Postgres, Synapse};

/// How long before a SIGKILL a line said on IRC may be lost: the server handed it to the daemon,
/// which had not committed it yet. Losses further from a kill are real losses.
const IRC_WINDOW: Duration = Duration::from_secs(1);

/// The three sides of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Side {
    Irc,
    Matrix,
    Mattermost,
}

const SIDES: [Side; 3] = [Side::Irc, Side::Matrix, Side::Mattermost];

impl Side {
    fn tag(self) -> &'static str {
        match self {
            Side::Irc => "irc",
            Side::Matrix => "mx",
            Side::Mattermost => "mm",
        }
    }
}

/// The (origin side, number) of the chaos token `c-<side>-<n>` in a text, if any.
fn token(text: &str) -> Option<(Side, u32)> {
    let start = text.find("c-")?;
    let rest = &text[start + 2..];
    let (tag, number) = rest.split_once('-')?;
    let side = SIDES.into_iter().find(|side| side.tag() == tag)?;
    let digits: String = number.chars().take_while(char::is_ascii_digit).collect();
    Some((side, digits.parse().ok()?))
}

/// What one fault is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillDaemon,
    DropMattermostWebSocket,
    RestartInspircd,
    RestartSynapse,
    RestartPostgres,
}

/// The schedule: mostly SIGKILLs, every sixth cycle a server restart of each kind in turn, and
/// WebSocket drops in between; the first six cycles cover every kind.
fn fault_for(cycle: u32, failover: bool) -> Fault {
    match cycle % 12 {
        1 | 7 => Fault::DropMattermostWebSocket,
        3 => Fault::RestartInspircd,
        5 if failover => Fault::RestartPostgres,
        5 | 11 if failover => Fault::RestartSynapse,
        5 => Fault::RestartSynapse,
        _ => Fault::KillDaemon,
    }
}

/// The failover mode's second instance and its database.
struct Failover {
    postgres: Postgres,
    url: String,
    /// The lease as the harness reads it.
    store: Arc<tribridge::store::Store>,
    second: Bridge,
    _dir: tempfile::TempDir,
    /// Per kill: from the SIGKILL to the other instance holding the lease.
    takeovers: Vec<Duration>,
}

/// The lease's holder and token, waiting (with a deadline) until someone other than `not` holds
/// it unexpired.
async fn wait_lease_holder(
    store: &Arc<tribridge::store::Store>,
    not: Option<&str>,
) -> (String, i64) {
    let deadline = Instant::now() + Duration::from_mins(2);
    loop {
        let reading = Arc::clone(store);
        let holder = tokio::task::spawn_blocking(move || reading.lease_holder("*"))
            .await
            .expect("read the lease");
        if let Ok(Some((name, token, true))) = holder
            && Some(name.as_str()) != not
        {
            return (name, token);
        }
        assert!(
            Instant::now() < deadline,
            "no instance took the lease over within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback TCP relay in front of `InspIRCd` for the daemon, with a gate: while closed it
/// refuses the daemon, so after a server restart the harness's own IRC client is back in the
/// channel before the daemon can deliver anything there.
struct IrcGate {
    port: u16,
    open: Arc<AtomicBool>,
}

impl IrcGate {
    async fn start(target: Arc<AtomicU16>) -> IrcGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let port = listener.local_addr().expect("gate address").port();
        let open = Arc::new(AtomicBool::new(true));
        let gate_open = open.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !gate_open.load(Ordering::SeqCst) {
                    continue; // dropped: the daemon sees the connection closed and backs off
                }
                let target_port = target.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target_port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        IrcGate { port, open }
    }

    fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::SeqCst);
    }
}

/// One relayed message as the IRC side saw it arrive: its origin and number.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    from: Side,
    number: u32,
}

/// Everything the run did, for the report.
#[derive(Default)]
struct Ledger {
    /// Per origin side: (number, when it was said).
    sent: HashMap<Side, Vec<(u32, Instant)>>,
    /// When each SIGKILL happened.
    kills: Vec<Instant>,
    /// When the daemon's IRC connection was cut (a SIGKILL or an `InspIRCd` restart) and when
    /// its JOIN was seen again: the spans in which a line said on IRC cannot reach it.
    irc_cuts: Vec<Instant>,
    irc_rejoins: Vec<Instant>,
    /// Faults done, by kind.
    faults: HashMap<&'static str, u32>,
    /// Lines the IRC observer read (relayed by the bridge), in order.
    irc_arrivals: Vec<Arrival>,
}

/// The writers (each also the reader of its side) and what the harness needs to reach them.
struct Sides {
    irc: IrcClient,
    irc_channel: String,
    bridge_nick: String,
    /// The daemon is not in the IRC channel (killed, or the server restarted): the IRC writer
    /// waits for its JOIN before saying anything. Set by the harness when it strikes.
    irc_bridge_away: Arc<AtomicBool>,
    matrix: MatrixUser,
    room: String,
    mm_user: MmUser,
    mm_channel: String,
    next: HashMap<Side, u32>,
}

impl Sides {
    /// Take the IRC lines received so far: relayed texts into the ledger, and the bridge's
    /// JOIN (it is back).
    fn read_irc(&mut self, ledger: &mut Ledger) {
        for line in self.irc.drain() {
            self.note_irc_line(&line, ledger);
        }
    }

    fn note_irc_line(&mut self, line: &Line, ledger: &mut Ledger) {
        let from_bridge = line
            .source_nick
            .to_lowercase()
            .starts_with(&self.bridge_nick.to_lowercase());
        if !from_bridge {
            return;
        }
        if line.command == "JOIN" {
            self.irc_bridge_away.store(false, Ordering::SeqCst);
            ledger.irc_rejoins.push(Instant::now());
        }
        if let Some((_, text)) = line.text()
            && let Some((from, number)) = token(text)
        {
            ledger.irc_arrivals.push(Arrival { from, number });
        }
    }

    /// Wait (with a deadline) until the bridge joined the IRC channel again.
    async fn wait_irc_bridge_back(&mut self, ledger: &mut Ledger) {
        let deadline = Instant::now() + Duration::from_mins(2);
        while self.irc_bridge_away.load(Ordering::SeqCst) {
            self.read_irc(ledger);
            assert!(
                Instant::now() < deadline,
                "the bridge did not rejoin IRC within 2 minutes"
            );
            if self.irc_bridge_away.load(Ordering::SeqCst)
                && let Some(line) = self
                    .irc
                    .wait_for(|_| true, Duration::from_millis(200))
                    .await
            {
                self.note_irc_line(&line, ledger);
            }
        }
    }

    /// Say the next numbered message on `side`.
    async fn say(&mut self, side: Side, ledger: &mut Ledger) {
        let number = {
            let next = self.next.entry(side).or_insert(0);
            *next += 1;
            *next
        };
        let text = format!("chaos c-{}-{number} said", side.tag());
        match side {
            Side::Irc => {
                self.read_irc(ledger);
                if self.irc_bridge_away.load(Ordering::SeqCst) {
                    self.wait_irc_bridge_back(ledger).await;
                }
                self.irc.say(&self.irc_channel, &text);
            }
            Side::Matrix => {
                self.matrix.say(&self.room, &text).await;
            }
            Side::Mattermost => {
                self.mm_user.say(&self.mm_channel, &text).await;
            }
        }
        ledger
            .sent
            .entry(side)
            .or_default()
            .push((number, Instant::now()));
    }

    /// A burst: `rounds` times one message from each side, paced a little (the pace spreads
    /// the burst over time so a fault lands in the middle; nothing waits on it).
    async fn burst(&mut self, rounds: u32, pace: Duration, ledger: &mut Ledger) {
        for _ in 0..rounds {
            for side in SIDES {
                self.say(side, ledger).await;
            }
            tokio::time::sleep(pace).await;
        }
    }
}

/// Counts for one direction.
#[derive(Debug, Default, Clone)]
struct DirectionReport {
    sent: usize,
    delivered: usize,
    lost: usize,
    lost_in_irc_window: usize,
    duplicated: usize,
    duplicated_in_irc_window: usize,
    reordered: usize,
}

/// Compare what `from` said with what `to` received (in the order received).
fn compare(
    from: Side,
    to: Side,
    sent: &[(u32, Instant)],
    arrived: &[u32],
    irc_blind: &[(Instant, Instant)],
    window_notes: &mut Vec<String>,
) -> DirectionReport {
    let mut report = DirectionReport {
        sent: sent.len(),
        ..DirectionReport::default()
    };
    let mut seen = HashSet::new();
    let mut highest = 0;
    for &number in arrived {
        if !seen.insert(number) {
            if to == Side::Irc {
                report.duplicated_in_irc_window += 1;
                window_notes.push(format!(
                    "c-{}-{number} was sent to IRC again after a cut (its echo was not recorded)",
                    from.tag()
                ));
            } else {
                report.duplicated += 1;
            }
            continue;
        }
        if number < highest {
            report.reordered += 1;
        }
        highest = highest.max(number);
    }
    report.delivered = seen.len();
    for &(number, said_at) in sent {
        if seen.contains(&number) {
            continue;
        }
        let blind = irc_blind
            .iter()
            .find(|(cut, back)| said_at + IRC_WINDOW >= *cut && said_at <= *back);
        match blind {
            Some((cut, _)) if from == Side::Irc => {
                report.lost_in_irc_window += 1;
                let (distance, relation) = if said_at <= *cut {
                    (*cut - said_at, "before")
                } else {
                    (said_at - *cut, "after")
                };
                window_notes.push(format!(
                    "c-{}-{number}, said on IRC {} ms {relation} the daemon's IRC link was cut, never reached {}",
                    from.tag(),
                    distance.as_millis(),
                    to.tag()
                ));
            }
            _ => report.lost += 1,
        }
    }
    report
}

/// The configuration: three networks, one gateway.
#[allow(clippy::too_many_arguments)] // one value per network and channel, all named at the call
fn config(
    gate_port: u16,
    bridge_nick: &str,
    synapse_url: &str,
    bot: &str,
    mm: &MmServer,
    irc_channel: &str,
    alias: &str,
    mm_channel: &str,
) -> String {
    format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n\
         [network.irc]\ntype = \"irc\"\nserver = \"127.0.0.1:{gate_port}\"\ntls = false\n\
         nick = \"{bridge_nick}\"\nflood_burst = 1000\nflood_interval_ms = 1\n\n\
         [network.mx]\ntype = \"matrix\"\nhomeserver = \"{synapse_url}\"\nuser = \"@{bot}:localhost\"\n\
         password = \"password\"\n\n{}\n\
         [[gateway]]\nname = \"chaos\"\nchannels = [\n\
         {{ network = \"irc\", channel = \"{irc_channel}\" }},\n\
         {{ network = \"mx\", channel = \"{alias}\" }},\n\
         {{ network = \"mm\", channel = \"{mm_channel}\" }},\n]\n",
        mm.network("mm", "")
    )
}

/// Wait until no delivery is pending for any of `channels` (network, channel), with a deadline
/// longer than the outbox's longest retry backoff; on failure, say what is still queued.
async fn wait_drained(bridge: &Bridge, channels: &[(&str, &str)]) {
    let store = bridge.open_store();
    let deadline = Instant::now() + Duration::from_mins(6);
    loop {
        let pending: Vec<(String, u64)> = channels
            .iter()
            .map(|(network, channel)| {
                let destination = tribridge::model::ChannelRef::new(*network, *channel);
                let count = store.pending_count(&destination).expect("count");
                (destination.to_string(), count)
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        if pending.is_empty() {
            // After all the crashes: nothing points at a message that is not there, and the file
            // is sound (the writer does not enforce foreign keys; this is what they would).
            assert_eq!(
                store.integrity_problems().expect("integrity check"),
                Vec::<String>::new()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still queued 6 minutes after the last fault: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The IRC writer, operator of the channel, has the server keep its history (`+H`): lines the
/// daemon missed around a cut are played back to it when it joins again.
async fn keep_history(irc: &mut IrcClient, channel: &str) {
    irc.raw(&format!("MODE {channel} +H 100:1d"));
    irc.wait_for(
        |line| line.command == "MODE" && line.params.get(1).is_some_and(|m| m.starts_with("+H")),
        Duration::from_mins(1),
    )
    .await
    .expect("the server keeps the channel's history");
}

/// The median and the maximum of `times`, for the report.
fn spread(times: &[Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    match (sorted.get(sorted.len() / 2), sorted.last()) {
        (Some(median), Some(max)) => format!(
            "median {} ms, max {} ms",
            median.as_millis(),
            max.as_millis()
        ),
        _ => "none".to_owned(),
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Run the harness: `cycles` faults, `rounds` messages per side between two faults.
#[allow(clippy::too_many_lines)]
async fn run_chaos(cycles: u32, rounds: u32, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut inspircd = InspIrcd::start();
    let mut synapse = Synapse::start();
    let mm = MmServer::start("chaos").await;
    let irc_target = Arc::new(AtomicU16::new(inspircd.port));
    let gate = IrcGate::start(irc_target.clone()).await;

    let url = synapse.url();
    let bot = unique("chaosbot");
    register(&url, &bot, "password").await;
    let matrix = MatrixUser::new(&url, &unique("mxw")).await;
    let alias_name = unique("chaos");
    let room = matrix.create_room(&alias_name).await;
    let alias = format!("#{alias_name}:localhost");
    let mm_channel_name = unique("chaos");
    let mm_channel = mm.channel(&mm_channel_name).await;
    let mm_user = mm.user(&unique("mmw"), &mm_channel).await;
    let irc_channel = unique("#chaos");
    let bridge_nick = unique("chbr");
    let irc_nick = unique("ircw");
    let history = env_number("TRIBRIDGE_CHAOS_IRC_HISTORY", 1) != 0;
    let mut irc = IrcClient::connect(inspircd.port, &irc_nick).await;
    irc.join(&irc_channel).await;
    if history {
        keep_history(&mut irc, &irc_channel).await;
    }

    let mut dir = tempfile::Builder::new()
        .prefix("tribridge-chaos-")
        .tempdir()
        .unwrap();
    if std::env::var_os("TRIBRIDGE_CHAOS_KEEP").is_some() {
        dir.disable_cleanup(true);
        println!(
            "chaos: the daemon's state and logs stay in {}",
            dir.path().display()
        );
    }
    let text = config(
        gate.port,
        &bridge_nick,
        &url,
        &bot,
        &mm,
        &irc_channel,
        &alias,
        &mm_channel_name,
    );
    let failover_mode = env_number("TRIBRIDGE_CHAOS_FAILOVER", 0) != 0;
    let mut failover = None;
    let mut bridge = if failover_mode {
        let postgres = tokio::task::block_in_place(Postgres::start);
        let store_url = postgres.fresh_database();
        let instance = |name: &str| {
            with_store(
                &text.replace(
                    "[general]\n",
                    &format!("[general]\nfailover_after = \"3s\"\ninstance_name = \"{name}\"\n"),
                ),
                &store_url,
            )
            .replace("[[gateway]]\n", "[[gateway]]\nretention_days = 0\n")
        };
        let mut first = Bridge::start(dir.path(), &instance("a"));
        first.store_url = Some(store_url.clone());
        let store =
            Arc::new(tribridge::store::Store::open_postgres(&store_url).expect("open the store"));
        wait_lease_holder(&store, None).await;
        let second_dir = tempfile::Builder::new()
            .prefix("tribridge-chaos-b-")
            .tempdir()
            .unwrap();
        let mut second = Bridge::start(second_dir.path(), &instance("b"));
        second.store_url = Some(store_url.clone());
        failover = Some(Failover {
            postgres,
            url: store_url,
            store,
            second,
            _dir: second_dir,
            takeovers: Vec::new(),
        });
        first
    } else {
        Bridge::start(dir.path(), &text)
    };
    let mut ledger = Ledger::default();
    let mut sides = Sides {
        irc,
        irc_channel: irc_channel.clone(),
        bridge_nick: bridge_nick.clone(),
        irc_bridge_away: Arc::new(AtomicBool::new(true)),
        matrix,
        room: room.clone(),
        mm_user,
        mm_channel: mm_channel.clone(),
        next: HashMap::new(),
    };
    sides.wait_irc_bridge_back(&mut ledger).await;
    mm.wait_bot_member(&mm_channel).await;
    mm.wait_websocket(1).await;
    let bot_id = format!("@{bot}:localhost");
    sides
        .matrix
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member" && e.content["membership"] == "join" && e.sender == bot_id
            })
        })
        .await;

    let started = Instant::now();
    let pace = Duration::from_millis(20);
    for cycle in 0..cycles {
        let fault = fault_for(cycle, failover.is_some());
        let name = match fault {
            Fault::KillDaemon if failover.is_some() => "SIGKILL of the active instance",
            Fault::KillDaemon => "daemon SIGKILL",
            Fault::DropMattermostWebSocket => "Mattermost WebSocket drop",
            Fault::RestartInspircd => "InspIRCd restart",
            Fault::RestartSynapse => "Synapse restart",
            Fault::RestartPostgres => "PostgreSQL restart",
        };
        *ledger.faults.entry(name).or_default() += 1;
        match fault {
            Fault::KillDaemon | Fault::DropMattermostWebSocket => {
                // The fault lands at a random moment inside the burst.
                let burst_time = pace * rounds + Duration::from_millis(30) * rounds;
                let delay = rng.gen_range(Duration::ZERO..burst_time);
                let away = sides.irc_bridge_away.clone();
                let writes = sides.burst(rounds, pace, &mut ledger);
                let strike = async {
                    tokio::time::sleep(delay).await;
                    if fault == Fault::KillDaemon
                        && let Some(failover) = failover.as_mut()
                    {
                        // Kill the instance that holds the lease; start it again (as the
                        // standby) once the other one took over.
                        let (active, _) = wait_lease_holder(&failover.store, None).await;
                        let victim = if active == "a" {
                            &mut bridge
                        } else {
                            &mut failover.second
                        };
                        away.store(true, Ordering::SeqCst);
                        victim.kill9();
                        let at = Instant::now();
                        wait_lease_holder(&failover.store, Some(&active)).await;
                        failover.takeovers.push(at.elapsed());
                        victim.restart();
                        Some(at)
                    } else if fault == Fault::KillDaemon {
                        away.store(true, Ordering::SeqCst);
                        bridge.kill9();
                        let at = Instant::now();
                        bridge.restart();
                        Some(at)
                    } else {
                        mm.emu.drop_websockets();
                        None
                    }
                };
                let ((), kill) = tokio::join!(writes, strike);
                if let Some(at) = kill {
                    ledger.kills.push(at);
                    ledger.irc_cuts.push(at);
                }
            }
            Fault::RestartInspircd => {
                sides.burst(rounds, pace, &mut ledger).await;
                gate.set_open(false);
                sides.irc_bridge_away.store(true, Ordering::SeqCst);
                ledger.irc_cuts.push(Instant::now());
                tokio::task::block_in_place(|| inspircd.restart());
                sides.read_irc(&mut ledger);
                sides.irc = IrcClient::connect(inspircd.port, &irc_nick).await;
                sides.irc.join(&irc_channel).await;
                if history {
                    keep_history(&mut sides.irc, &irc_channel).await;
                }
                gate.set_open(true);
            }
            Fault::RestartSynapse => {
                sides.burst(rounds, pace, &mut ledger).await;
                tokio::task::block_in_place(|| synapse.restart());
            }
            Fault::RestartPostgres => {
                let failover = failover.as_mut().expect("failover mode");
                sides.burst(rounds, pace, &mut ledger).await;
                tokio::task::block_in_place(|| {
                    failover.postgres.stop();
                    failover.postgres.start_again();
                });
            }
        }
    }

    // Settle: every destination's queue empty, then a last marker seen everywhere.
    sides.wait_irc_bridge_back(&mut ledger).await;
    let settle_started = Instant::now();
    wait_drained(
        &bridge,
        &[
            ("irc", &irc_channel),
            ("mx", &alias),
            ("mm", &mm_channel_name),
        ],
    )
    .await;
    let settle_time = settle_started.elapsed();
    sides.mm_user.say(&mm_channel, "chaos-final").await;
    let deadline = Instant::now() + Duration::from_mins(2);
    let mut final_seen = false;
    while !final_seen {
        for line in sides.irc.drain() {
            final_seen |= line.text().is_some_and(|(_, t)| t.contains("chaos-final"));
            sides.note_irc_line(&line, &mut ledger);
        }
        assert!(
            Instant::now() < deadline,
            "the final marker never reached IRC"
        );
        if !final_seen
            && let Some(line) = sides
                .irc
                .wait_for(|_| true, Duration::from_millis(200))
                .await
        {
            final_seen |= line.text().is_some_and(|(_, t)| t.contains("chaos-final"));
            sides.note_irc_line(&line, &mut ledger);
        }
    }
    let mut matrix_history = sides.matrix.history(&room).await;
    while !matrix_history
        .iter()
        .any(|e| e.body().contains("chaos-final"))
    {
        assert!(
            Instant::now() < deadline,
            "the final marker never reached Matrix"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        matrix_history = sides.matrix.history(&room).await;
    }
    let elapsed = started.elapsed();

    // Read every side back.
    let mut arrived: HashMap<(Side, Side), Vec<u32>> = HashMap::new();
    for arrival in &ledger.irc_arrivals {
        arrived
            .entry((arrival.from, Side::Irc))
            .or_default()
            .push(arrival.number);
    }
    for event in &matrix_history {
        if event.sender != bot_id {
            continue;
        }
        if let Some((from, number)) = token(event.body()) {
            arrived
                .entry((from, Side::Matrix))
                .or_default()
                .push(number);
        }
    }
    for post in mm.admin.posts(&mm_channel).await {
        if post["user_id"] != mm.bot_id.as_str() {
            continue;
        }
        if let Some((from, number)) = post["message"].as_str().and_then(token) {
            arrived
                .entry((from, Side::Mattermost))
                .or_default()
                .push(number);
        }
    }

    let far = Instant::now() + Duration::from_hours(1);
    let irc_blind: Vec<(Instant, Instant)> = ledger
        .irc_cuts
        .iter()
        .map(|&cut| {
            let back = ledger
                .irc_rejoins
                .iter()
                .copied()
                .find(|&rejoin| rejoin > cut)
                .unwrap_or(far);
            (cut, back)
        })
        .collect();
    let mut out = String::new();
    let mut notes = Vec::new();
    let mut totals = DirectionReport::default();
    let _ = writeln!(
        out,
        "chaos: seed {seed}, {cycles} cycles in {:.0} s; IRC history (+H) {}; faults: {}; {rounds} messages per side per cycle",
        elapsed.as_secs_f64(),
        if history { "on" } else { "off" },
        {
            let mut faults: Vec<_> = ledger.faults.iter().collect();
            faults.sort();
            faults
                .iter()
                .map(|(name, count)| format!("{count} × {name}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let _ = writeln!(
        out,
        "{:<10} {:>6} {:>9} {:>5} {:>12} {:>10} {:>13} {:>9}",
        "direction",
        "sent",
        "delivered",
        "lost",
        "lost(window)",
        "duplicated",
        "dup.(window)",
        "reordered"
    );
    for from in SIDES {
        for to in SIDES {
            if from == to {
                continue;
            }
            let sent = ledger.sent.get(&from).cloned().unwrap_or_default();
            let got = arrived.get(&(from, to)).cloned().unwrap_or_default();
            let report = compare(from, to, &sent, &got, &irc_blind, &mut notes);
            let _ = writeln!(
                out,
                "{:<10} {:>6} {:>9} {:>5} {:>12} {:>10} {:>13} {:>9}",
                format!("{}→{}", from.tag(), to.tag()),
                report.sent,
                report.delivered,
                report.lost,
                report.lost_in_irc_window,
                report.duplicated,
                report.duplicated_in_irc_window,
                report.reordered
            );
            totals.sent += report.sent;
            totals.delivered += report.delivered;
            totals.lost += report.lost;
            totals.lost_in_irc_window += report.lost_in_irc_window;
            totals.duplicated += report.duplicated;
            totals.duplicated_in_irc_window += report.duplicated_in_irc_window;
            totals.reordered += report.reordered;
        }
    }
    let _ = writeln!(
        out,
        "{:<10} {:>6} {:>9} {:>5} {:>12} {:>10} {:>13} {:>9}",
        "total",
        totals.sent,
        totals.delivered,
        totals.lost,
        totals.lost_in_irc_window,
        totals.duplicated,
        totals.duplicated_in_irc_window,
        totals.reordered
    );
    let _ = writeln!(
        out,
        "after the last fault every queue was empty within {:.1} s",
        settle_time.as_secs_f64()
    );
    if let Some(failover) = &failover {
        let rejoins: Vec<Duration> = ledger
            .kills
            .iter()
            .filter_map(|&kill| {
                let back = ledger.irc_rejoins.iter().copied().find(|&r| r > kill)?;
                Some(back - kill)
            })
            .collect();
        let _ = writeln!(
            out,
            "failover (failover_after = 3s): {} take-overs, kill → the other instance holds the \
             lease: {}; kill → the bridge back in the IRC channel: {}",
            failover.takeovers.len(),
            spread(&failover.takeovers),
            spread(&rejoins)
        );
        let store = tribridge::store::Store::open_postgres(&failover.url).expect("open the store");
        assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    }
    for note in &notes {
        let _ = writeln!(out, "  window: {note}");
    }
    println!("{out}");
    let irc_cuts = ledger.irc_cuts.len();
    assert_eq!(totals.lost, 0, "messages lost:\n{out}\n{}", bridge.logs());
    assert_eq!(totals.duplicated, 0, "messages doubled:\n{out}");
    assert_eq!(totals.reordered, 0, "messages out of order:\n{out}");
    assert!(
        totals.duplicated_in_irc_window <= irc_cuts,
        "more IRC resends than the window allows (one per IRC destination per cut):\n{out}"
    );
    out
}

/// A short run of the harness: a few cycles covering every kind of fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_short_run_loses_doubles_and_reorders_nothing() {
    let cycles = u32::try_from(env_number("TRIBRIDGE_CHAOS_CYCLES", 6)).unwrap_or(6);
    let rounds = u32::try_from(env_number("TRIBRIDGE_CHAOS_ROUNDS", 3)).unwrap_or(3);
    let seed = env_number("TRIBRIDGE_CHAOS_SEED", rand::random::<u16>().into());
    run_chaos(cycles, rounds, seed).await;
}

#[test]
fn chaos_tokens_are_read_back_from_relayed_texts() {
    assert_eq!(token("<mxw1> chaos c-mx-17 said"), Some((Side::Matrix, 17)));
    assert_eq!(token("chaos c-irc-3 said"), Some((Side::Irc, 3)));
    assert_eq!(token("chaos-final"), None);
    assert_eq!(token("c-xx-3"), None);
}
