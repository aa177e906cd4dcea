//! Echo and loop safety through the real daemon: one channel in two gateways (every message
//! once where it belongs, nothing hopping from one gateway to the other), and two bridge
//! instances linking the same channels with different accounts, the classic bridge loop, which
//! the loop breaker stops and counts.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::support::bridge::{Bridge, unique};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::mattermost::{MmServer, messages};
use crate::support::servers::shared_inspircd;

fn irc_network(id: &str, port: u16, nick: &str) -> String {
    format!(
        "[network.{id}]\ntype = \"irc\"\nserver = \"127.0.0.1:{port}\"\ntls = false\nnick = \"{nick}\"\n\
         flood_burst = 1000\nflood_interval_ms = 1\n\n"
    )
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_linking_the_same_channels_with_other_accounts_stop_their_loop() {
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

    alice.say(&channel, "round and round");
    // Each bridge relays what the other one relayed, adding a prefix each time, until the
    // breaker sees the pile of prefixes.
    for bridge in [&bridge_a, &bridge_b] {
        bridge
            .wait_for_log("Message relayed by bridges in a loop (nested relay prefixes); dropped.")
            .await;
    }
    // The circle is broken: a message said afterwards goes round once more at most and stops.
    let settle = Instant::now();
    mia.say(&chan, "after the break").await;
    alice.texts_until(&channel, "after the break").await;
    for bridge in [&bridge_a, &bridge_b] {
        bridge.wait_outbox_drained("mm", "circle").await;
        bridge.wait_outbox_drained("irc", &channel).await;
    }
    assert!(settle.elapsed() < Duration::from_mins(1));
    let posts = messages(&mm.admin.posts(&chan).await);
    let copies = posts
        .iter()
        .filter(|t| t.contains("round and round"))
        .count();
    // alice's line: once from each bridge, then once more each with the other's prefix; the
    // next round is dropped.
    assert!(copies <= 4, "the loop went on: {posts:#?}");
    for post in &posts {
        assert!(
            tribridge::loop_breaker::relay_depth(post) < tribridge::loop_breaker::LOOP_DEPTH + 1,
            "{post}"
        );
    }
}
