//! Two instances of the daemon on one PostgreSQL store, the same configuration, two state folders
//! (issue 28, active/passive failover): only the active one connects to the networks; the
//! standby takes over when the active dies (SIGKILL) or stops answering (SIGSTOP), and nothing
//! arrives twice or out of order. IRC and Mattermost carry the traffic; the IRC window a crash
//! leaves open (a line sent to IRC just before the kill, whose echo was not recorded, may be sent
//! once more; a line IRC handed to the dying instance may never be committed) is counted apart,
//! as the chaos harness does.

use std::time::{Duration, Instant};

use crate::support::bridge::{Bridge, unique, with_store};
use crate::support::irc_client::IrcClient;
use crate::support::mattermost::{MmServer, MmUser, messages};
use crate::support::servers::{free_port, shared_inspircd, shared_postgres};

/// The lease time the tests run with.
pub(crate) const FAILOVER_AFTER: &str = "3s";

/// A line IRC handed to the daemon this long before a SIGKILL may be lost with it.
pub(crate) const IRC_WINDOW: Duration = Duration::from_secs(1);

struct Pair {
    irc: IrcClient,
    channel: String,
    nick: String,
    mm: MmServer,
    mia: MmUser,
    channel_id: String,
    a: Bridge,
    b: Bridge,
    metrics_a: u16,
    metrics_b: u16,
    url: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// Instance `a` started first (active), then `b` (standby), on one fresh database.
async fn pair() -> Pair {
    let url = shared_postgres().fresh_database();
    let irc_port = shared_inspircd().port;
    let channel = unique("#fo");
    let nick = unique("brf");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let mm = MmServer::start("dept").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let config = |name: &str, metrics: u16| {
        with_store(
            &format!(
                "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\
                 failover_after = \"{FAILOVER_AFTER}\"\ninstance_name = \"{name}\"\n\
                 metrics_listen = \"127.0.0.1:{metrics}\"\n\n\
                 [network.irc]\ntype = \"irc\"\nserver = \"127.0.0.1:{irc_port}\"\ntls = false\n\
                 nick = \"{nick}\"\nflood_burst = 1000\nflood_interval_ms = 1\n\n{}\
                 [[gateway]]\nname = \"g\"\nretention_days = 0\nchannels = [\n\
                   {{ network = \"irc\", channel = \"{channel}\" }},\n\
                   {{ network = \"mm\", channel = \"town\" }},\n]\n",
                mm.network("mm", "")
            ),
            &url,
        )
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (metrics_a, metrics_b) = (free_port(), free_port());
    let a = Bridge::start(dir_a.path(), &config("a", metrics_a));
    a.wait_for_log("Role: active since").await;
    let b = Bridge::start(dir_b.path(), &config("b", metrics_b));
    b.wait_for_log("Role: standby; active is a").await;
    irc.wait_join(&nick, &channel).await;
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    Pair {
        irc,
        channel,
        nick,
        mm,
        mia,
        channel_id,
        a,
        b,
        metrics_a,
        metrics_b,
        url,
        _dirs: (dir_a, dir_b),
    }
}

pub(crate) async fn get(port: u16, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// The nicks in `channel`, from a NAMES reply.
pub(crate) async fn names(irc: &mut IrcClient, channel: &str) -> Vec<String> {
    irc.raw(&format!("NAMES {channel}"));
    let lower = channel.to_lowercase();
    let mut nicks = Vec::new();
    loop {
        let line = irc
            .wait_for(
                |l| {
                    (l.command == "353" || l.command == "366")
                        && l.params.iter().any(|p| p.to_lowercase() == lower)
                },
                Duration::from_secs(20),
            )
            .await
            .expect("a NAMES reply");
        if line.command == "366" {
            return nicks;
        }
        if let Some(list) = line.params.last() {
            nicks.extend(
                list.split(' ')
                    .filter(|n| !n.is_empty())
                    .map(|n| n.trim_start_matches(['@', '+', '%', '&', '~']).to_owned()),
            );
        }
    }
}

/// Wait until a bridge whose nick starts with `nick` (the standby may get it with a suffix while
/// a stopped instance still holds it) joins `channel`.
pub(crate) async fn wait_bridge_join(irc: &mut IrcClient, nick: &str, channel: &str) {
    let (nick, channel) = (nick.to_lowercase(), channel.to_lowercase());
    irc.wait_for(
        |l| {
            l.command == "JOIN"
                && l.source_nick.to_lowercase().starts_with(&nick)
                && l.params
                    .first()
                    .is_some_and(|c| c.to_lowercase() == channel)
        },
        Duration::from_mins(1),
    )
    .await
    .expect("the bridge joins the channel again");
}

/// The numbers of `prefix N` texts, in the order they arrived.
pub(crate) fn numbers<'a>(texts: impl IntoIterator<Item = &'a str>, prefix: &str) -> Vec<u32> {
    texts
        .into_iter()
        .filter_map(|text| text.split(prefix).nth(1)?.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_killed_active_and_nothing_is_lost_doubled_or_reordered() {
    const BURST: u32 = 300;
    let mut t = pair().await;

    // One bridge in the IRC channel: the standby holds no network connection.
    let in_channel = names(&mut t.irc, &t.channel).await;
    let bridges: Vec<&String> = in_channel
        .iter()
        .filter(|n| n.to_lowercase().starts_with(&t.nick.to_lowercase()))
        .collect();
    assert_eq!(bridges.len(), 1, "one bridge nick in {in_channel:?}");

    // Each says which role it has and who is active; a standby is alive but never ready.
    let (_, metrics) = get(t.metrics_a, "/metrics").await;
    assert!(
        metrics.contains("tribridge_role{role=\"active\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tribridge_active_instance{instance=\"a\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tribridge_lease_token 1"), "{metrics}");
    let (_, metrics) = get(t.metrics_b, "/metrics").await;
    assert!(
        metrics.contains("tribridge_role{role=\"standby\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tribridge_role{role=\"active\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tribridge_active_instance{instance=\"a\"} 1"),
        "{metrics}"
    );
    let (status, body) = get(t.metrics_b, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"role\":\"standby\""), "{body}");
    assert_eq!(get(t.metrics_b, "/healthz").await.0, 200);
    // `tribridge status` through each one's admin socket.
    let status = |bridge: &Bridge| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tribridge"))
            .arg("status")
            .arg("--config")
            .arg(bridge.dir.join("bridges.toml"))
            .output()
            .expect("run tribridge status");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let said = status(&t.b);
    assert!(said.contains("instance b: standby since"), "{said}");
    assert!(said.contains("active is a"), "{said}");
    let said = status(&t.a);
    assert!(said.contains("instance a: active since"), "{said}");
    assert!(said.contains("token 1; active is a"), "{said}");

    // A burst both ways; the active dies half-way through.
    let (mut irc_said, killed_at) = burst_with_a_kill(
        &t.irc,
        &t.channel,
        &t.mia,
        (&t.channel_id, &t.mm.bot_id),
        BURST,
        || t.a.kill9(),
    )
    .await;
    t.b.wait_for_log("Role: active since").await;
    let took_over = killed_at.elapsed();
    wait_bridge_join(&mut t.irc, &t.nick, &t.channel).await;
    let rejoined = killed_at.elapsed();
    eprintln!(
        "failover: the standby was active {} ms after the kill, in the IRC channel after {} ms",
        took_over.as_millis(),
        rejoined.as_millis()
    );
    // IRC lines are said only while a bridge is in the channel (as in the chaos harness).
    for n in BURST..BURST + 10 {
        t.irc.say(&t.channel, &format!("irc {n}"));
        irc_said.push((n, Instant::now()));
    }
    let last_irc = BURST + 9;

    let (doubled_in_window, lost_in_window) = check_after_kill(
        &mut t.irc,
        &t.channel,
        &t.mia,
        &t.channel_id,
        &t.mm.bot_id,
        (BURST, last_irc),
        &irc_said,
        killed_at,
    )
    .await;
    eprintln!(
        "failover: IRC window: {doubled_in_window} line(s) sent to IRC again, {lost_in_window} \
         line(s) from IRC lost with the killed instance"
    );

    // The store is whole and owes nothing.
    let store = tribridge::store::Store::open_postgres(&t.url).expect("open the store");
    assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    let (_, metrics) = get(t.metrics_b, "/metrics").await;
    assert!(
        metrics.contains("tribridge_role{role=\"active\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tribridge_active_instance{instance=\"b\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("tribridge_lease_token 2"), "{metrics}");
    let _ = t.b.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_active_that_lost_the_lease_sends_nothing_more_when_it_continues() {
    let mut t = pair().await;
    t.mia.say(&t.channel_id, "before the pause").await;
    t.irc.texts_until(&t.channel, "before the pause").await;

    t.a.signal("STOP");
    t.b.wait_for_log("Role: active since").await;
    wait_bridge_join(&mut t.irc, &t.nick, &t.channel).await;
    t.mia.say(&t.channel_id, "while a is stopped").await;
    let mut lines = t.irc.texts_until(&t.channel, "while a is stopped").await;

    t.a.signal("CONT");
    t.a.wait_for_log("lost the lease").await;
    t.a.wait_for_log("Role: standby; active is b").await;
    t.mia.say(&t.channel_id, "after a continued").await;
    t.irc.say(&t.channel, "from irc after a continued");
    lines.extend(t.irc.texts_until(&t.channel, "after a continued").await);
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &t.mm.bot_id, |posts| {
            messages(posts)
                .iter()
                .any(|m| m.ends_with("from irc after a continued"))
        })
        .await;
    // A last line after both: anything the old active still sent would come before it.
    t.mia.say(&t.channel_id, "the last line").await;
    let rest = t.irc.texts_until(&t.channel, "the last line").await;
    let irc_texts: Vec<&str> = lines
        .iter()
        .chain(&rest)
        .filter_map(|l| l.text().map(|(_, text)| text))
        .collect();
    for text in ["while a is stopped", "after a continued", "the last line"] {
        assert_eq!(
            irc_texts.iter().filter(|t| t.ends_with(text)).count(),
            1,
            "{text:?} once on IRC: {irc_texts:?}"
        );
    }
    let texts = messages(&posts);
    assert_eq!(
        texts
            .iter()
            .filter(|m| m.ends_with("from irc after a continued"))
            .count(),
        1,
        "{texts:?}"
    );
    assert_eq!(
        t.a.logs().matches("Role: active since").count(),
        1,
        "the old active did not take the lease back"
    );
    let _ = t.a.terminate();
    let _ = t.b.terminate();
}

/// What a person on each side sees after an instance was killed in the middle of a burst of
/// `burst` Mattermost posts (`mm 0`…) and IRC lines (`irc N`, said at the times in `irc_said`,
/// the last `irc {last_irc}`): every post on IRC once and in order, except that one sent just
/// before the kill may come again (counted); every IRC line on Mattermost once and in order,
/// except that one said within [`IRC_WINDOW`] before the kill may be lost with the killed
/// instance (counted). Returns (posts shown twice on IRC, IRC lines lost).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn check_after_kill(
    irc: &mut IrcClient,
    channel: &str,
    mia: &MmUser,
    channel_id: &str,
    bot_id: &str,
    (burst, last_irc): (u32, u32),
    irc_said: &[(u32, Instant)],
    killed_at: Instant,
) -> (usize, usize) {
    let lines = irc.texts_until(channel, &format!("mm {}", burst - 1)).await;
    let arrived = numbers(
        lines.iter().filter_map(|l| l.text().map(|(_, text)| text)),
        "<mia> mm ",
    );
    let mut seen = std::collections::BTreeSet::new();
    let mut doubled_in_window = 0;
    let mut highest = None;
    for &n in &arrived {
        if !seen.insert(n) {
            assert!(
                n <= burst / 2,
                "mm {n} arrived twice on IRC, after the kill: {arrived:?}"
            );
            doubled_in_window += 1;
            continue;
        }
        assert!(highest < Some(n), "mm {n} out of order on IRC: {arrived:?}");
        highest = Some(n);
    }
    assert_eq!(
        seen.len(),
        burst as usize,
        "every mm line on IRC: {arrived:?}"
    );

    let marker = format!("irc {last_irc}");
    let posts = mia
        .wait_posts_by(channel_id, bot_id, |posts| {
            messages(posts).iter().any(|m| m.ends_with(&marker))
        })
        .await;
    let texts = messages(&posts);
    let arrived = numbers(texts.iter().map(String::as_str), "> irc ");
    let mut sorted = arrived.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(arrived, sorted, "IRC lines once and in order on Mattermost");
    let mut lost_in_window = 0;
    for (n, said_at) in irc_said {
        if !arrived.contains(n) {
            assert!(
                *said_at + IRC_WINDOW >= killed_at,
                "irc {n}, said well before the kill, never reached Mattermost: {arrived:?}"
            );
            lost_in_window += 1;
        }
    }
    (doubled_in_window, lost_in_window)
}

/// A burst both ways (`mm N` from Mattermost, `irc N` from IRC, `burst` of each) and `kill`
/// half-way through: it comes while lines are in flight both ways, IRC's from the last few,
/// once the bridge has carried most of those before them; IRC says nothing after it (as in
/// the chaos harness). Returns when each IRC line was said, and when the kill came.
pub(crate) async fn burst_with_a_kill(
    irc: &IrcClient,
    channel: &str,
    mia: &MmUser,
    (channel_id, bot_id): (&str, &str),
    burst: u32,
    kill: impl FnOnce(),
) -> (Vec<(u32, Instant)>, Instant) {
    let mut irc_said = Vec::new();
    let mut kill = Some(kill);
    let mut killed_at = None;
    for n in 0..burst {
        mia.say(channel_id, &format!("mm {n}")).await;
        if killed_at.is_none() {
            irc.say(channel, &format!("irc {n}"));
            irc_said.push((n, Instant::now()));
        }
        if n == burst / 2 {
            let marker = format!("irc {}", burst / 2 - 5);
            mia.wait_posts_by(channel_id, bot_id, |posts| {
                messages(posts).iter().any(|m| m.ends_with(&marker))
            })
            .await;
            if let Some(kill) = kill.take() {
                kill();
            }
            killed_at = Some(Instant::now());
        }
    }
    (
        irc_said,
        killed_at.expect("the burst is long enough to reach its middle"),
    )
}
