//! Several active instances on one PostgreSQL store with a lease per network (issue 28 item 3,
//! `failover = "network"`): the instances split the networks (each runs the connections whose
//! lease it holds), messages cross between networks held by different instances exactly once and
//! in order, a third instance takes its share from another (released cleanly: nothing lost or
//! doubled meanwhile), and a killed instance's networks move to the others. Two IRC networks
//! (one `InspIRCd`, two nicks and channels) and the Mattermost emulator carry the traffic; the IRC
//! window a crash leaves open is counted apart, as tests/it/failover.rs does.

use std::time::Instant;

use crate::failover::{
    FAILOVER_AFTER, burst_with_a_kill, check_after_kill, get, numbers, wait_bridge_join,
};
use crate::support::bridge::{Bridge, unique, with_store};
use crate::support::irc_client::IrcClient;
use crate::support::mattermost::{MmServer, MmUser, messages};
use crate::support::servers::{free_port, shared_inspircd, shared_postgres};

/// Three networks (`irc`, `irc2`, `mm`) in one gateway, and a person on each.
struct Cluster {
    url: String,
    irc_port: u16,
    nicks: (String, String),
    channels: (String, String),
    /// On `irc`'s channel.
    ivan: IrcClient,
    /// On `irc2`'s channel.
    iris: IrcClient,
    mm: MmServer,
    mia: MmUser,
    channel_id: String,
    dirs: Vec<tempfile::TempDir>,
}

async fn cluster() -> Cluster {
    let irc_port = shared_inspircd().port;
    let channels = (unique("#fn"), unique("#fn"));
    let mut ivan = IrcClient::connect(irc_port, &unique("ivan")).await;
    ivan.join(&channels.0).await;
    let mut iris = IrcClient::connect(irc_port, &unique("iris")).await;
    iris.join(&channels.1).await;
    let mm = MmServer::start("dept").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    Cluster {
        url: shared_postgres().fresh_database(),
        irc_port,
        nicks: (unique("brn"), unique("brm")),
        channels,
        ivan,
        iris,
        mm,
        mia,
        channel_id,
        dirs: Vec::new(),
    }
}

impl Cluster {
    /// Start instance `name` (its own state folder and metrics port) on the shared store.
    fn start(&mut self, name: &str) -> (Bridge, u16) {
        let metrics = free_port();
        let (port, (nick, nick2), (channel, channel2)) =
            (self.irc_port, &self.nicks, &self.channels);
        let config = with_store(
            &format!(
                "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\
                 failover = \"network\"\nfailover_after = \"{FAILOVER_AFTER}\"\n\
                 instance_name = \"{name}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n\n\
                 [network.irc]\ntype = \"irc\"\nserver = \"127.0.0.1:{port}\"\ntls = false\n\
                 nick = \"{nick}\"\nflood_burst = 1000\nflood_interval_ms = 1\n\n\
                 [network.irc2]\ntype = \"irc\"\nserver = \"127.0.0.1:{port}\"\ntls = false\n\
                 nick = \"{nick2}\"\nflood_burst = 1000\nflood_interval_ms = 1\n\n{}\
                 [[gateway]]\nname = \"g\"\nretention_days = 0\nchannels = [\n\
                   {{ network = \"irc\", channel = \"{channel}\" }},\n\
                   {{ network = \"irc2\", channel = \"{channel2}\" }},\n\
                   {{ network = \"mm\", channel = \"town\" }},\n]\n",
                self.mm.network("mm", "")
            ),
            &self.url,
        );
        let dir = tempfile::tempdir().unwrap();
        let bridge = Bridge::start(dir.path(), &config);
        self.dirs.push(dir);
        (bridge, metrics)
    }

    /// `a` alone takes every network; `b` joins and takes its share (`mm`, which `a` lets go).
    async fn split_in_two(&mut self) -> ((Bridge, u16), (Bridge, u16)) {
        let a = self.start("a");
        a.0.wait_for_log("Lease of network mm taken").await;
        let b = self.start("b");
        b.0.wait_for_log("Lease of network mm taken").await;
        a.0.wait_for_log("Lease of network mm released").await;
        let (nicks, channels) = (self.nicks.clone(), self.channels.clone());
        self.ivan.wait_join(&nicks.0, &channels.0).await;
        self.iris.wait_join(&nicks.1, &channels.1).await;
        (a, b)
    }
}

/// Every `prefix N` of `texts` exactly once and in order: the numbers, checked.
fn once_in_order<'a>(texts: impl IntoIterator<Item = &'a str>, prefix: &str, count: u32) {
    let texts: Vec<&str> = texts.into_iter().collect();
    let arrived = numbers(texts.iter().copied(), prefix);
    assert_eq!(
        arrived,
        (0..count).collect::<Vec<_>>(),
        "every {prefix:?} once and in order: {texts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_split_the_networks_relay_across_them_and_a_third_takes_its_share() {
    const ROUND: u32 = 20;
    let mut t = cluster().await;
    let ((mut a, metrics_a), (mut b, metrics_b)) = t.split_in_two().await;

    // Each instance says which networks it holds, and who holds the others.
    let (_, metrics) = get(metrics_a, "/metrics").await;
    for network in ["irc", "irc2"] {
        assert!(
            metrics.contains(&format!(
                "tribridge_network_lease{{network=\"{network}\",instance=\"a\"}} 1"
            )),
            "{metrics}"
        );
    }
    // `tribridge status` names the holder of each network (as `a` last read them).
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tribridge"))
            .arg("status")
            .arg("--config")
            .arg(a.dir.join("bridges.toml"))
            .output()
            .expect("run tribridge status");
        let said = String::from_utf8_lossy(&output.stdout).into_owned();
        if said.contains("network leases: irc held by a, irc2 held by a, mm held by b") {
            break;
        }
        assert!(Instant::now() < deadline, "{said}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = get(metrics_b, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"held\":[\"mm\"]"), "{body}");

    // Across instances both ways: irc → mm (a commits, b delivers), mm → irc and irc2 (b
    // commits, a delivers); irc → irc2 within a.
    for n in 0..ROUND {
        t.ivan.say(&t.channels.0, &format!("irc {n}"));
        t.mia.say(&t.channel_id, &format!("mm {n}")).await;
    }
    let last_irc = format!("irc {}", ROUND - 1);
    let last_mm = format!("mm {}", ROUND - 1);
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &t.mm.bot_id, |posts| {
            messages(posts).iter().any(|m| m.ends_with(&last_irc))
        })
        .await;
    let texts = messages(&posts);
    once_in_order(texts.iter().map(String::as_str), "> irc ", ROUND);
    let lines = t.ivan.texts_until(&t.channels.0, &last_mm).await;
    once_in_order(
        lines.iter().filter_map(|l| l.text().map(|(_, text)| text)),
        "<mia> mm ",
        ROUND,
    );
    let lines = t
        .iris
        .texts_until_all(&t.channels.1, &[&last_mm, &last_irc])
        .await;
    let texts: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.text().map(|(_, text)| text))
        .collect();
    once_in_order(texts.iter().copied(), "<mia> mm ", ROUND);
    once_in_order(texts.iter().copied(), "> irc ", ROUND);

    // A third instance: its share is one network, which `a` (above its share) lets go cleanly
    // while Mattermost keeps talking to irc2.
    let (mut c, _) = t.start("c");
    let mut said = ROUND;
    let mut after_release = 0;
    while after_release < 10 {
        t.mia.say(&t.channel_id, &format!("mm {said}")).await;
        said += 1;
        if a.logs().contains("Lease of network irc2 released") {
            after_release += 1;
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    c.wait_for_log("Lease of network irc2 taken").await;
    let last = format!("mm {}", said - 1);
    let lines = t.iris.texts_until(&t.channels.1, &last).await;
    let arrived = numbers(
        lines.iter().filter_map(|l| l.text().map(|(_, text)| text)),
        "<mia> mm ",
    );
    assert_eq!(
        arrived,
        (ROUND..said).collect::<Vec<_>>(),
        "every mm line once and in order on irc2 across its handover"
    );
    assert!(
        !b.logs().contains("Lease of network irc2 taken"),
        "b held its share already"
    );
    // The jobs that run once per deployment run on one instance: the first, which holds `*`.
    let singletons = "Jobs that run once per deployment (history): run here.";
    assert!(a.logs().contains(singletons), "{}", a.logs());
    assert!(!b.logs().contains(singletons) && !c.logs().contains(singletons));
    let store = tribridge::store::Store::open_postgres(&t.url).expect("open the store");
    assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    for bridge in [&mut a, &mut b, &mut c] {
        let _ = bridge.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_networks_move_to_the_other_and_nothing_doubles_or_reorders() {
    const BURST: u32 = 100;
    let mut t = cluster().await;
    let ((mut a, _), (mut b, _)) = t.split_in_two().await;

    let (mut irc_said, killed_at) = burst_with_a_kill(
        &t.ivan,
        &t.channels.0,
        &t.mia,
        (&t.channel_id, &t.mm.bot_id),
        BURST,
        || a.kill9(),
    )
    .await;
    b.wait_for_log("Lease of network irc taken").await;
    b.wait_for_log("Lease of network irc2 taken").await;
    // And the jobs that run once per deployment, with `*`.
    b.wait_for_log("Jobs that run once per deployment (history): run here.")
        .await;
    let took_over = killed_at.elapsed();
    wait_bridge_join(&mut t.ivan, &t.nicks.0, &t.channels.0).await;
    let rejoined = killed_at.elapsed();
    eprintln!(
        "network failover: both IRC networks taken {} ms after the kill, in the channel after {} ms",
        took_over.as_millis(),
        rejoined.as_millis()
    );
    for n in BURST..BURST + 10 {
        t.ivan.say(&t.channels.0, &format!("irc {n}"));
        irc_said.push((n, Instant::now()));
    }
    let last_irc = BURST + 9;

    let (doubled_in_window, lost_in_window) = check_after_kill(
        &mut t.ivan,
        &t.channels.0,
        &t.mia,
        &t.channel_id,
        &t.mm.bot_id,
        (BURST, last_irc),
        &irc_said,
        killed_at,
    )
    .await;
    eprintln!(
        "network failover: IRC window: {doubled_in_window} line(s) sent to IRC again, \
         {lost_in_window} line(s) from IRC lost with the killed instance"
    );
    let store = tribridge::store::Store::open_postgres(&t.url).expect("open the store");
    assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    let _ = b.terminate();
}
