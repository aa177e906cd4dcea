//! Echo and loop safety through the real daemon: one channel in two gateways (every message
//! once where it belongs, nothing hopping from one gateway to the other), and two bridge
//! instances linking the same channels with different accounts: after their first message they
//! recognise each other, one steps back, and each message shows once; told of each other's
//! accounts (`parallel_bridges`), the first message each way shows once too; told of one that
//! never copies, a bridge waits once per route (see `src/parallel.rs`).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::support::bridge::{Bridge, unique};
use crate::support::config::irc_network;
use crate::support::irc_client::{IrcClient, texts};
use crate::support::mattermost::{MmServer, messages};
use crate::support::servers::shared_inspircd;

fn gateway(name: &str, channels: &[(&str, &str)]) -> String {
    let mut entries = String::new();
    for (network, channel) in channels {
        let _ = writeln!(
            entries,
            "  {{ network = \"{network}\", channel = \"{channel}\" }},"
        );
    }
    format!("[[gateway]]\nname = \"{name}\"\nchannels = [\n{entries}]\n")
}

const GENERAL: &str = "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{NICK}> \"\n\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_channel_in_two_gateways_gets_each_message_once_and_nothing_hops_between_gateways() {
    let server = shared_inspircd();
    let shared = unique("#shared");
    let nick = unique("brlp");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&shared).await;
    let mm = MmServer::start("loops").await;
    let one = mm.channel("one").await;
    let two = mm.channel("two").await;
    let mia = mm.user("mia", &one).await;
    let tom = mm.user("tom", &two).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{GENERAL}{}{}\n{}{}",
        irc_network("irc", server.port, &nick),
        mm.network("mm", ""),
        gateway("g1", &[("irc", &shared), ("mm", "one")]),
        gateway("g2", &[("irc", &shared), ("mm", "two")]),
    );
    let bridge = Bridge::start(dir.path(), &config);
    alice.wait_join(&nick, &shared).await;
    mm.wait_bot_member(&one).await;
    mm.wait_bot_member(&two).await;
    mm.wait_websocket(1).await;

    alice.say(&shared, "from the shared channel");
    mia.say(&one, "from one").await;
    tom.say(&two, "from two").await;
    let seen = alice
        .texts_until_all(&shared, &["from one", "from two"])
        .await;
    bridge.wait_outbox_drained("mm", "one").await;
    bridge.wait_outbox_drained("mm", "two").await;
    bridge.wait_outbox_drained("irc", &shared).await;
    // A last message through each gateway: what came before it has arrived.
    mia.say(&one, "end one").await;
    tom.say(&two, "end two").await;
    let mut seen_texts = texts(&seen);
    seen_texts.extend(texts(
        &alice
            .texts_until_all(&shared, &["end one", "end two"])
            .await,
    ));
    let count = |list: &[String], needle: &str| list.iter().filter(|t| t.contains(needle)).count();
    assert_eq!(count(&seen_texts, "from one"), 1, "{seen_texts:#?}");
    assert_eq!(count(&seen_texts, "from two"), 1, "{seen_texts:#?}");
    let posts_one = messages(&mm.admin.posts(&one).await);
    let posts_two = messages(&mm.admin.posts(&two).await);
    assert_eq!(
        count(&posts_one, "from the shared channel"),
        1,
        "{posts_one:#?}"
    );
    assert_eq!(
        count(&posts_two, "from the shared channel"),
        1,
        "{posts_two:#?}"
    );
    // What was said in one gateway's Mattermost channel does not hop through the shared IRC
    // channel into the other gateway.
    assert_eq!(count(&posts_two, "from one"), 0, "{posts_two:#?}");
    assert_eq!(count(&posts_one, "from two"), 0, "{posts_one:#?}");
}

/// Mattermost posts whose text contains `needle`, once at least `at_least` are there.
async fn wait_posts_containing(mm: &MmServer, channel: &str, needle: &str, at_least: usize) {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let posts = messages(&mm.admin.posts(channel).await);
        if posts.iter().filter(|t| t.contains(needle)).count() >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} never posted: {posts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_on_the_same_channels_show_each_message_once_and_one_stands_in_for_the_other() {
    let server = shared_inspircd();
    let channel = unique("#loop");
    let nick_a = unique("brla");
    let nick_b = unique("brlb");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&channel).await;
    let mm = MmServer::start("loops").await;
    let chan = mm.channel("circle").await;
    let mia = mm.user("mia", &chan).await;
    let gateway_text = gateway("g", &[("irc", &channel), ("mm", "circle")]);
    let dir_a = tempfile::tempdir().unwrap();
    let bridge_a = Bridge::start(
        dir_a.path(),
        &format!(
            "{GENERAL}{}{}\n{gateway_text}",
            irc_network("irc", server.port, &nick_a),
            mm.network("mm", "")
        ),
    );
    let dir_b = tempfile::tempdir().unwrap();
    let bridge_b = Bridge::start(
        dir_b.path(),
        &format!(
            "{GENERAL}{}{}\n{gateway_text}",
            irc_network("irc", server.port, &nick_b),
            mm.network_login("mm", "")
        ),
    );
    alice.wait_join(&nick_a, &channel).await;
    alice.wait_member(&nick_b, &channel).await;
    mm.wait_bot_member(&chan).await;
    mm.wait_member(&chan, &mm.login_user_id).await;
    mm.wait_websocket(2).await;
    // Of two bridges on a route, the one whose account on the destination sorts first keeps it.
    let a_keeps_to_mm = mm.bot_id.to_lowercase() < mm.login_user_id.to_lowercase();
    let a_keeps_to_irc = nick_a.to_lowercase() < nick_b.to_lowercase();
    let mut bridges = [bridge_a, bridge_b];
    let (to_mm_keeper, to_irc_keeper) = (usize::from(!a_keeps_to_mm), usize::from(!a_keeps_to_irc));

    // The first message each way is how the bridges meet: it shows twice, and no copy goes back.
    alice.say(&channel, "hello from irc");
    mia.say(&chan, "hello from mm").await;
    for (bridge, destination) in [
        (&bridges[1 - to_mm_keeper], "destination=mm/circle"),
        (&bridges[1 - to_irc_keeper], "destination=irc/#loop"),
    ] {
        bridge
            .wait_for_log_line(&["Leaving this route to the other bridge", destination])
            .await;
    }
    for bridge in &bridges {
        bridge
            .wait_for_log("Another bridge relays the same messages into this channel")
            .await;
    }
    // Once from each bridge, or once when one bridge's copy came before the other read the
    // original (asserted below, after both outboxes are drained): wait for the first.
    wait_posts_containing(&mm, &chan, "hello from irc", 1).await;
    let mut lines = alice.texts_until(&channel, "hello from mm").await;

    // From then on: every message once, on both sides.
    for i in 1..=20 {
        alice.say(&channel, &format!("irc says {i}"));
        mia.say(&chan, &format!("mm says {i}")).await;
    }
    lines.extend(alice.texts_until(&channel, "mm says 20").await);
    wait_posts_containing(&mm, &chan, "irc says 20", 1).await;
    for bridge in &bridges {
        bridge.wait_outbox_drained("mm", "circle").await;
        bridge.wait_outbox_drained("irc", &channel).await;
    }
    let posts = messages(&mm.admin.posts(&chan).await);
    lines.extend(alice.drain());
    let irc = texts(&lines);
    // Texts shown as relayed once (`<alice> text`), and as relayed back (`<b> <alice> text`).
    let count = crate::support::relayed_once;
    let echoes = |texts: &[String], text: &str| {
        texts
            .iter()
            .filter(|t| t.ends_with(text) && tribridge::loop_breaker::relay_depth(t) > 1)
            .count()
    };
    // The meeting messages: once from each bridge (or once, when one bridge's copy came before
    // the other read the original); such an early copy may be relayed back once.
    assert!(
        (1..=2).contains(&count(&posts, "hello from irc")),
        "{posts:#?}"
    );
    assert!((1..=2).contains(&count(&irc, "hello from mm")), "{irc:#?}");
    assert!(
        echoes(&posts, "hello from irc") + echoes(&irc, "hello from irc") <= 1,
        "{posts:#?} {irc:#?}"
    );
    assert!(
        echoes(&posts, "hello from mm") + echoes(&irc, "hello from mm") <= 1,
        "{posts:#?} {irc:#?}"
    );
    for i in 1..=20 {
        let (from_irc, from_mm) = (format!("irc says {i}"), format!("mm says {i}"));
        assert_eq!(count(&posts, &from_irc), 1, "{posts:#?}");
        assert_eq!(count(&irc, &from_mm), 1, "{irc:#?}");
        // Nothing went round after they met.
        assert_eq!(
            echoes(&posts, &from_mm) + echoes(&irc, &from_irc),
            0,
            "{posts:#?} {irc:#?}"
        );
        assert_eq!(
            echoes(&posts, &from_irc) + echoes(&irc, &from_mm),
            0,
            "{posts:#?} {irc:#?}"
        );
    }

    // The bridge that keeps IRC → Mattermost stops: the other one waits for its copy in vain,
    // then sends the message itself and takes the route back.
    assert_eq!(bridges[to_mm_keeper].terminate(), Some(0));
    // It dropped the other's copies (two first messages, then whatever the other sent).
    bridges[to_mm_keeper]
        .wait_for_log_line(&["tribridge stopped.", "parallel_copies="])
        .await;
    alice.say(&channel, "said while one bridge is down");
    bridges[1 - to_mm_keeper]
        .wait_for_log("The other bridge did not relay this message in time")
        .await;
    wait_posts_containing(&mm, &chan, "said while one bridge is down", 1).await;
    alice.say(&channel, "and once more");
    wait_posts_containing(&mm, &chan, "and once more", 1).await;
    bridges[1 - to_mm_keeper]
        .wait_outbox_drained("mm", "circle")
        .await;
    let posts = messages(&mm.admin.posts(&chan).await);
    assert_eq!(
        count(&posts, "said while one bridge is down"),
        1,
        "{posts:#?}"
    );
    assert_eq!(count(&posts, "and once more"), 1, "{posts:#?}");
    // The one left waited for a copy of each of the twenty messages and was acknowledged by it.
    let mut left = bridges.into_iter().nth(1 - to_mm_keeper).unwrap();
    assert_eq!(left.terminate(), Some(0));
    let logs = left.logs();
    let stopped = logs
        .lines()
        .find(|l| l.contains("tribridge stopped."))
        .unwrap();
    let covered: u64 = stopped
        .split("covered_by_parallel=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stopped}"));
    assert!(covered >= 20, "{stopped}");
}

/// How many of `texts` show `text` relayed more than once over (`<b> <alice> text`).
fn echoes(texts: &[String], text: &str) -> usize {
    texts
        .iter()
        .filter(|t| t.ends_with(text) && tribridge::loop_breaker::relay_depth(t) > 1)
        .count()
}

/// The number in the `name=` field of the daemon's "tribridge stopped." line.
fn stopped_count(bridge: &Bridge, name: &str) -> u64 {
    let logs = bridge.logs();
    let stopped = logs
        .lines()
        .rfind(|l| l.contains("tribridge stopped."))
        .unwrap_or_else(|| panic!("never stopped: {logs}"));
    stopped
        .split(&format!("{name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {stopped}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_told_of_each_other_show_every_message_once_even_the_first_and_one_stands_in() {
    let server = shared_inspircd();
    let channel = unique("#known");
    // `unique` keeps the order of its prefixes: bridge A's nick sorts first.
    let (nick_a, nick_b) = (unique("brka"), unique("brkb"));
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&channel).await;
    let mm = MmServer::start("loops").await;
    let chan = mm.channel("circle").await;
    let mia = mm.user("mia", &chan).await;
    // A logs in to Mattermost with the account that sorts first there too: A is the bridge
    // whose accounts sort first on both networks, B yields both routes.
    let bot_first = mm.bot_id.to_lowercase() < mm.login_user_id.to_lowercase();
    // B's user id (A knows B by id; B knows A by username).
    let mm_b = if bot_first {
        mm.login_user_id.clone()
    } else {
        mm.bot_id.clone()
    };
    let mm_block = |token: bool, other: &str| {
        let extra = format!("parallel_bridges = [\"{other}\"]");
        if token {
            mm.network("mm", &extra)
        } else {
            mm.network_login("mm", &extra)
        }
    };
    let irc_block = |nick: &str, other: &str| {
        irc_network("irc", server.port, nick).replacen(
            "\n\n",
            &format!("\nparallel_bridges = [\"{other}\"]\n\n"),
            1,
        )
    };
    let gateway_text = gateway("g", &[("irc", &channel), ("mm", "circle")]);
    let dir_a = tempfile::tempdir().unwrap();
    let mut bridge_a = Bridge::start(
        dir_a.path(),
        &format!(
            "{GENERAL}{}{}\n{gateway_text}",
            irc_block(&nick_a, &nick_b),
            mm_block(bot_first, &mm_b)
        ),
    );
    let dir_b = tempfile::tempdir().unwrap();
    let mut bridge_b = Bridge::start(
        dir_b.path(),
        &format!(
            "{GENERAL}{}{}\n{gateway_text}",
            irc_block(&nick_b, &nick_a),
            // B knows A by username (looked up at login), A knows B by user id.
            mm_block(
                !bot_first,
                if bot_first { "bridgebot" } else { "bridgeuser" }
            )
        ),
    );
    alice.wait_join(&nick_a, &channel).await;
    alice.wait_member(&nick_b, &channel).await;
    mm.wait_member(&chan, &mm.bot_id).await;
    mm.wait_member(&chan, &mm.login_user_id).await;
    mm.wait_websocket(2).await;

    // The very first message each way: B waits for A's copy instead of sending its own.
    alice.say(&channel, "hello from irc");
    mia.say(&chan, "hello from mm").await;
    for destination in ["destination=mm/circle", "destination=irc/#known"] {
        bridge_b
            .wait_for_log_line(&["Leaving this route to the other bridge", destination])
            .await;
    }
    let mut lines = alice.texts_until(&channel, "hello from mm").await;
    wait_posts_containing(&mm, &chan, "hello from irc", 1).await;
    for i in 1..=10 {
        alice.say(&channel, &format!("irc says {i}"));
        mia.say(&chan, &format!("mm says {i}")).await;
    }
    lines.extend(alice.texts_until(&channel, "mm says 10").await);
    wait_posts_containing(&mm, &chan, "irc says 10", 1).await;
    for bridge in [&bridge_a, &bridge_b] {
        bridge.wait_outbox_drained("mm", "circle").await;
        bridge.wait_outbox_drained("irc", &channel).await;
    }
    // A last message each way after both outboxes are empty: what came before it is in.
    alice.say(&channel, "irc end");
    mia.say(&chan, "mm end").await;
    lines.extend(alice.texts_until(&channel, "mm end").await);
    wait_posts_containing(&mm, &chan, "irc end", 1).await;
    lines.extend(alice.drain());
    let posts = messages(&mm.admin.posts(&chan).await);
    let irc = texts(&lines);
    let count = crate::support::relayed_once;
    let mut from_irc = vec!["hello from irc".to_owned(), "irc end".to_owned()];
    let mut from_mm = vec!["hello from mm".to_owned(), "mm end".to_owned()];
    for i in 1..=10 {
        from_irc.push(format!("irc says {i}"));
        from_mm.push(format!("mm says {i}"));
    }
    for text in &from_irc {
        assert_eq!(count(&posts, text), 1, "{text}: {posts:#?}");
        assert_eq!(
            echoes(&posts, text) + echoes(&irc, text),
            0,
            "{posts:#?} {irc:#?}"
        );
    }
    for text in &from_mm {
        assert_eq!(count(&irc, text), 1, "{text}: {irc:#?}");
        assert_eq!(
            echoes(&posts, text) + echoes(&irc, text),
            0,
            "{posts:#?} {irc:#?}"
        );
    }
    // A relays at once; B never sent anything itself (no first delivery waited in vain).
    for bridge in [&bridge_a, &bridge_b] {
        let logs = bridge.logs();
        assert!(
            !logs.contains("No configured parallel bridge relayed"),
            "{logs}"
        );
        assert!(
            !logs.contains("did not relay this message in time"),
            "{logs}"
        );
    }
    assert!(
        !bridge_a
            .logs()
            .contains("Leaving this route to the other bridge"),
        "{}",
        bridge_a.logs()
    );

    // A stops: B waits for its copies in vain, stands in on both routes, and nothing is lost.
    assert_eq!(bridge_a.terminate(), Some(0));
    assert_eq!(stopped_count(&bridge_a, "covered_by_parallel"), 0);
    alice.say(&channel, "irc while A is down");
    mia.say(&chan, "mm while A is down").await;
    let mut lines = alice.texts_until(&channel, "mm while A is down").await;
    wait_posts_containing(&mm, &chan, "irc while A is down", 1).await;
    for destination in ["destination=mm/circle", "destination=irc/#known"] {
        bridge_b
            .wait_for_log_line(&["did not relay this message in time", destination])
            .await;
    }
    alice.say(&channel, "irc once more");
    mia.say(&chan, "mm once more").await;
    lines.extend(alice.texts_until(&channel, "mm once more").await);
    wait_posts_containing(&mm, &chan, "irc once more", 1).await;
    bridge_b.wait_outbox_drained("mm", "circle").await;
    bridge_b.wait_outbox_drained("irc", &channel).await;
    lines.extend(alice.drain());
    let posts = messages(&mm.admin.posts(&chan).await);
    let irc = texts(&lines);
    for text in ["irc while A is down", "irc once more"] {
        assert_eq!(count(&posts, text), 1, "{text}: {posts:#?}");
    }
    for text in ["mm while A is down", "mm once more"] {
        assert_eq!(count(&irc, text), 1, "{text}: {irc:#?}");
    }
    assert_eq!(bridge_b.terminate(), Some(0));
    // B was acknowledged by A's copies of the first twelve messages each way, stood in once
    // per route, and never sent a first message alone.
    assert!(stopped_count(&bridge_b, "covered_by_parallel") >= 24);
    assert_eq!(stopped_count(&bridge_b, "stood_in"), 2);
    assert_eq!(stopped_count(&bridge_b, "first_sent_alone"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_bridge_that_never_copies_delays_only_the_first_message_of_each_route_once() {
    let server = shared_inspircd();
    let channel = unique("#alone");
    let nick = unique("brko");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&channel).await;
    let mm = MmServer::start("loops").await;
    let chan = mm.channel("circle").await;
    let mia = mm.user("mia", &chan).await;
    // Told of a parallel bridge whose accounts sort first on both networks, which is not
    // running (not started yet, or it does not carry these channels).
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &format!(
            "{GENERAL}{}{}\n{}",
            irc_network("irc", server.port, &nick).replacen(
                "\n\n",
                "\nparallel_bridges = [\"aaa\"]\n\n",
                1
            ),
            mm.network("mm", "parallel_bridges = [\"00000000000000000000000000\"]"),
            gateway("g", &[("irc", &channel), ("mm", "circle")])
        ),
    );
    alice.wait_join(&nick, &channel).await;
    mm.wait_bot_member(&chan).await;
    mm.wait_websocket(1).await;

    // The first message each way waits for a copy that never comes, then is sent by this
    // bridge; the next ones go at once.
    alice.say(&channel, "irc first");
    mia.say(&chan, "mm first").await;
    for destination in ["destination=mm/circle", "destination=irc/#alone"] {
        bridge
            .wait_for_log_line(&[
                "No configured parallel bridge relayed the first message",
                destination,
            ])
            .await;
    }
    let mut lines = alice.texts_until(&channel, "mm first").await;
    wait_posts_containing(&mm, &chan, "irc first", 1).await;
    alice.say(&channel, "irc second");
    mia.say(&chan, "mm second").await;
    lines.extend(alice.texts_until(&channel, "mm second").await);
    wait_posts_containing(&mm, &chan, "irc second", 1).await;
    bridge.wait_outbox_drained("mm", "circle").await;
    bridge.wait_outbox_drained("irc", &channel).await;
    assert_eq!(bridge.terminate(), Some(0));
    assert_eq!(stopped_count(&bridge, "first_sent_alone"), 2);
    assert_eq!(stopped_count(&bridge, "stood_in"), 0);

    // Remembered across a restart: nothing waits again.
    bridge.restart();
    alice.wait_join(&nick, &channel).await;
    mm.wait_websocket(1).await;
    alice.say(&channel, "irc after restart");
    mia.say(&chan, "mm after restart").await;
    lines.extend(alice.texts_until(&channel, "mm after restart").await);
    wait_posts_containing(&mm, &chan, "irc after restart", 1).await;
    bridge.wait_outbox_drained("mm", "circle").await;
    bridge.wait_outbox_drained("irc", &channel).await;
    assert_eq!(bridge.terminate(), Some(0));
    assert_eq!(stopped_count(&bridge, "first_sent_alone"), 0);
    lines.extend(alice.drain());
    let irc = texts(&lines);
    let posts = messages(&mm.admin.posts(&chan).await);
    let count = crate::support::relayed_once;
    for text in ["irc first", "irc second", "irc after restart"] {
        assert_eq!(count(&posts, text), 1, "{text}: {posts:#?}");
    }
    for text in ["mm first", "mm second", "mm after restart"] {
        assert_eq!(count(&irc, text), 1, "{text}: {irc:#?}");
    }
    assert_eq!(
        bridge
            .logs()
            .matches("No configured parallel bridge relayed")
            .count(),
        2,
        "{}",
        bridge.logs()
    );
}
