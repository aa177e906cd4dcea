//! IRC history: what the server plays back when the bridge joins (`InspIRCd`'s `chanhistory`,
//! channel mode `+H`) is caught up from the channel's cursor, once, in order, with its original
//! time; a fresh install relays none of it; our own line written just before a SIGKILL is found
//! there and not sent again; and a server without history (ngIRCd) behaves as before, saying so
//! once in the log.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::bridge::{Bridge, unique};
use crate::support::config::{irc_network, matrix_network};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::matrix_client::{MatrixUser, register};
use crate::support::mattermost::{MmServer, messages};
use crate::support::servers::{InspIrcd, NgIrcd, shared_inspircd, shared_synapse, signal};

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A gateway file over `networks` and `channels`, with `original_time_after = 1`.
fn gateway(networks: &[String], channels: &[(&str, &str)]) -> String {
    let entries: String = channels.iter().fold(String::new(), |mut out, (n, c)| {
        let _ = writeln!(out, "  {{ network = \"{n}\", channel = \"{c}\" }},");
        out
    });
    format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}\
         [[gateway]]\nname = \"g\"\noriginal_time_after = 1\nchannels = [\n{entries}]\n",
        networks.concat()
    )
}

/// An IRC person in a new channel with history on (`+H`), as its operator.
async fn channel_with_history(port: u16, who: &str) -> (IrcClient, String) {
    let mut irc = IrcClient::connect(port, &unique(who)).await;
    let channel = unique("#hist");
    irc.join(&channel).await;
    irc.raw(&format!("MODE {channel} +H 100:1d"));
    irc.wait_for(
        |line| line.command == "MODE" && line.params.get(1).is_some_and(|m| m.starts_with("+H")),
        Duration::from_mins(1),
    )
    .await
    .expect("the server sets +H");
    (irc, channel)
}

/// The bot's Mattermost posts that contain `needle`.
fn count(posts: &[Value], needle: &str) -> usize {
    messages(posts)
        .iter()
        .filter(|m| m.contains(needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_said_while_the_bridge_was_stopped_arrive_once_in_order_with_their_time() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let port = shared_inspircd().port;
    let (mut ivan, channel) = channel_with_history(port, "ivan").await;
    let bot = unique("hbot");
    register(&url, &bot, "password").await;
    let mut alice = MatrixUser::new(&url, &unique("alice")).await;
    let alias = unique("hroom");
    let room = alice.create_room(&alias).await;
    alice.mark().await;
    let mm = MmServer::start("hist").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let nick = unique("hb");
    let config = gateway(
        &[
            irc_network("irc", port, &nick),
            matrix_network("mx", &url, &bot),
            mm.network("mm", ""),
        ],
        &[
            ("irc", &channel),
            ("mx", &format!("#{alias}:localhost")),
            ("mm", "town"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    ivan.wait_join(&nick, &channel).await;
    let matrix_bot = format!("@{bot}:localhost");
    alice
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member"
                    && e.content["membership"] == "join"
                    && e.sender == matrix_bot
            })
        })
        .await;
    mm.wait_bot_member(&channel_id).await;
    // A line relayed live: the channel's cursor is past it.
    ivan.say(&channel, "before the stop");
    mia.wait_posts_by(&channel_id, &mm.bot_id, |posts| {
        count(posts, "before the stop") == 1
    })
    .await;
    alice
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| e.body().contains("before the stop"))
        })
        .await;
    bridge
        .wait_outbox_drained("mx", &format!("#{alias}:localhost"))
        .await;
    assert_eq!(bridge.terminate(), Some(0), "{}", bridge.logs());
    ivan.wait_for(
        |line| line.command == "QUIT" && line.source_nick == nick,
        Duration::from_mins(1),
    )
    .await
    .expect("the bridge quits");

    let said_ms = now_ms();
    for n in 0..10 {
        ivan.say(&channel, &format!("while away {n}"));
    }
    // The lines are late by more than `original_time_after` (1 s) when the bridge is back: the
    // point of the test is their lateness, so the clock has to pass it.
    while now_ms() < said_ms + 1_100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bridge.restart();
    ivan.wait_join(&nick, &channel).await;
    let minute = tribridge::connector::utc_minute(said_ms);
    let minute_after = tribridge::connector::utc_minute(said_ms + 60_000);

    let events = alice
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| e.body().contains("while away 9"))
        })
        .await;
    let on_matrix: Vec<String> = events
        .iter()
        .filter(|e| e.sender == matrix_bot && e.kind == "m.room.message")
        .map(|e| e.body().to_owned())
        .collect();
    let away: Vec<&String> = on_matrix
        .iter()
        .filter(|b| b.contains("while away"))
        .collect();
    assert_eq!(away.len(), 10, "each line once on Matrix: {on_matrix:#?}");
    for (n, body) in away.iter().enumerate() {
        assert!(
            body.contains(&format!("while away {n}")),
            "in order on Matrix: {on_matrix:#?}"
        );
        assert!(
            body.contains(&format!("[{minute}]")) || body.contains(&format!("[{minute_after}]")),
            "marked with the time it was said on IRC: {body}"
        );
    }
    let posts = mia
        .wait_posts_by(&channel_id, &mm.bot_id, |posts| {
            count(posts, "while away 9") == 1
        })
        .await;
    let on_mm = messages(&posts);
    let away: Vec<&String> = on_mm.iter().filter(|m| m.contains("while away")).collect();
    assert_eq!(away.len(), 10, "each line once on Mattermost: {on_mm:#?}");
    for (n, message) in away.iter().enumerate() {
        assert!(
            message.contains(&format!("while away {n}")),
            "in order: {on_mm:#?}"
        );
        assert!(
            message.contains(&format!("[{minute}]"))
                || message.contains(&format!("[{minute_after}]")),
            "marked with its time: {message}"
        );
    }
    // Nothing older came back, and a live line after the catch-up is relayed once.
    ivan.say(&channel, "after the catch-up");
    let posts = mia
        .wait_posts_by(&channel_id, &mm.bot_id, |posts| {
            count(posts, "after the catch-up") == 1
        })
        .await;
    assert_eq!(
        count(&posts, "before the stop"),
        1,
        "{:#?}",
        messages(&posts)
    );
    assert_eq!(count(&posts, "while away"), 10, "{:#?}", messages(&posts));
    let after = messages(&posts)
        .into_iter()
        .find(|m| m.contains("after the catch-up"))
        .unwrap();
    assert!(!after.contains("UTC]"), "a live line is not late: {after}");
    bridge
        .wait_for_log_line(&["History played back on join", "relayed=10"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_install_relays_none_of_the_history_and_a_restart_none_again() {
    let port = shared_inspircd().port;
    let (mut ivan, channel) = channel_with_history(port, "ivan").await;
    for n in 0..50 {
        ivan.say(&channel, &format!("old line {n}"));
    }
    let mm = MmServer::start("fresh").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let nick = unique("hf");
    let config = gateway(
        &[irc_network("irc", port, &nick), mm.network("mm", "")],
        &[("irc", &channel), ("mm", "town")],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    ivan.wait_join(&nick, &channel).await;
    mm.wait_bot_member(&channel_id).await;
    bridge
        .wait_for_log_line(&[
            "History played back on join",
            "played_back=50",
            "relayed=0",
            "fresh=true",
        ])
        .await;
    ivan.say(&channel, "first live line");
    let posts = mia
        .wait_posts_by(&channel_id, &mm.bot_id, |posts| {
            count(posts, "first live line") == 1
        })
        .await;
    assert_eq!(count(&posts, "old line"), 0, "{:#?}", messages(&posts));

    // Stopped and started again, the bridge is played the same history and the live line:
    // all of it at or before its cursor.
    assert_eq!(bridge.terminate(), Some(0), "{}", bridge.logs());
    bridge.restart();
    ivan.wait_join(&nick, &channel).await;
    bridge
        .wait_for_log_line(&[
            "History played back on join",
            "played_back=51",
            "relayed=0",
            "fresh=false",
        ])
        .await;
    ivan.say(&channel, "second live line");
    let posts = mia
        .wait_posts_by(&channel_id, &mm.bot_id, |posts| {
            count(posts, "second live line") == 1
        })
        .await;
    assert_eq!(count(&posts, "old line"), 0, "{:#?}", messages(&posts));
    assert_eq!(
        count(&posts, "first live line"),
        1,
        "{:#?}",
        messages(&posts)
    );
}

/// Established, non-listening TCP sockets on 127.0.0.1:`port` (the server's side) with bytes
/// waiting in their receive queue.
fn unread_bytes_at(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            // local, remote, state (01: established), tx_queue:rx_queue
            (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"01"))
                .then(|| fields.get(4)?.split_once(':'))
                .flatten()
                .and_then(|(_, rx)| usize::from_str_radix(rx, 16).ok())
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_written_just_before_a_sigkill_is_found_in_the_history_and_not_sent_again() {
    // Its own server: it is paused (SIGSTOP) so that the bridge's line waits, unread, in the
    // server's socket while the bridge is killed; resumed, the server reads it, says it and keeps
    // it in the history, but the bridge never saw its echo.
    let server = InspIrcd::start();
    let (mut ivan, channel) = channel_with_history(server.port, "ivan").await;
    let mm = MmServer::start("kill").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let nick = unique("hk");
    let config = gateway(
        &[irc_network("irc", server.port, &nick), mm.network("mm", "")],
        &[("irc", &channel), ("mm", "town")],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    ivan.wait_join(&nick, &channel).await;
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    bridge.wait_for_log("Channels joined; ready.").await;

    let pid = server.pid();
    signal(pid, "STOP");
    mia.say(&channel_id, "written before the kill").await;
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    while unread_bytes_at(server.port) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bridge never wrote the line: {}",
            bridge.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bridge.kill9();
    {
        let store = tribridge::store::Store::open(&dir.path().join("state")).expect("open store");
        let destination = tribridge::model::ChannelRef::new("irc", channel.as_str());
        assert_eq!(
            store.pending_count(&destination).expect("count"),
            1,
            "killed with the line unacknowledged"
        );
    }
    signal(pid, "CONT");
    let seen = ivan.texts_until(&channel, "written before the kill").await;
    assert_eq!(
        texts(&seen)
            .iter()
            .filter(|t| t.contains("written before the kill"))
            .count(),
        1
    );

    bridge.restart();
    ivan.wait_join(&nick, &channel).await;
    bridge
        .wait_for_log("in the channel's history already (written before the connection dropped); not sent again")
        .await;
    mia.say(&channel_id, "after the restart").await;
    let seen = ivan.texts_until(&channel, "after the restart").await;
    let seen = texts(&seen);
    assert!(
        !seen.iter().any(|t| t.contains("written before the kill")),
        "sent a second time: {seen:#?}"
    );
    bridge.wait_outbox_drained("irc", &channel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_server_without_history_lines_flow_as_before_and_the_log_says_so_once() {
    let server = NgIrcd::start();
    let mut ivan = IrcClient::connect(server.port, &unique("ivan")).await;
    let channel = unique("#nohist");
    ivan.join(&channel).await;
    ivan.say(&channel, "said before the bridge came");
    let mm = MmServer::start("nohist").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let nick = unique("hn");
    let config = gateway(
        &[irc_network("irc", server.port, &nick), mm.network("mm", "")],
        &[("irc", &channel), ("mm", "town")],
    );
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(dir.path(), &config);
    ivan.wait_join(&nick, &channel).await;
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    bridge.wait_for_log("Channels joined; ready.").await;
    ivan.say(&channel, "from ngircd");
    let posts = mia
        .wait_posts_by(&channel_id, &mm.bot_id, |posts| {
            count(posts, "from ngircd") == 1
        })
        .await;
    assert_eq!(count(&posts, "said before"), 0);
    mia.say(&channel_id, "to ngircd").await;
    let seen = ivan.texts_until(&channel, "to ngircd").await;
    assert_eq!(
        texts(&seen)
            .iter()
            .filter(|t| t.contains("to ngircd"))
            .count(),
        1
    );
    assert_eq!(
        bridge
            .logs()
            .matches("The IRC server keeps no history")
            .count(),
        1,
        "{}",
        bridge.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_history_off_the_playback_is_skipped_and_nothing_is_caught_up() {
    let port = shared_inspircd().port;
    let (mut ivan, channel) = channel_with_history(port, "ivan").await;
    let mm = MmServer::start("off").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let nick = unique("ho");
    let config = gateway(
        &[
            format!(
                "{}\nhistory = \"off\"\n\n",
                irc_network("irc", port, &nick).trim_end()
            ),
            mm.network("mm", ""),
        ],
        &[("irc", &channel), ("mm", "town")],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    ivan.wait_join(&nick, &channel).await;
    mm.wait_bot_member(&channel_id).await;
    ivan.say(&channel, "live before");
    mia.wait_posts_by(&channel_id, &mm.bot_id, |posts| {
        count(posts, "live before") == 1
    })
    .await;
    assert_eq!(bridge.terminate(), Some(0), "{}", bridge.logs());
    ivan.say(&channel, "said while stopped");
    bridge.restart();
    ivan.wait_join(&nick, &channel).await;
    bridge
        .wait_for_log("History played back on join; skipped (history = \"off\").")
        .await;
    ivan.say(&channel, "live after");
    let posts = mia
        .wait_posts_by(&channel_id, &mm.bot_id, |posts| {
            count(posts, "live after") == 1
        })
        .await;
    assert_eq!(
        count(&posts, "said while stopped"),
        0,
        "{:#?}",
        messages(&posts)
    );
    assert_eq!(count(&posts, "live before"), 1, "{:#?}", messages(&posts));
}
