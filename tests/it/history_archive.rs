//! The history's policy through the real daemon: `retention_days`, `legal_hold` and what
//! happens to an edit or a reply of a forgotten message, with the daemon's clock moved forward
//! through its test-only seam (`TRIBRIDGE_TEST_CLOCK_SKEW_SECONDS`) instead of waiting days.

use std::time::{Duration, Instant};

use crate::support::bridge::{Bridge, unique};
use crate::support::config::irc_network;
use crate::support::irc_client::{IrcClient, texts};
use crate::support::mattermost::MmServer;
use crate::support::servers::shared_inspircd;

/// Rows of `sql` (a `SELECT COUNT(*)`) in the daemon's store, read as an operator would.
fn count(dir: &std::path::Path, sql: &str) -> i64 {
    let connection = rusqlite::Connection::open(dir.join("state/tribridge.sqlite3")).unwrap();
    connection.query_row(sql, [], |row| row.get(0)).unwrap()
}

fn stored_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("state/files"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.len() == 64)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_forgets_old_messages_and_files_but_keeps_held_and_pending_ones() {
    let server = shared_inspircd();
    let (brief, held, stuck) = (unique("#brief"), unique("#held"), unique("#stuck"));
    let nick = unique("brhist");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    for channel in [&brief, &held, &stuck] {
        alice.join(channel).await;
    }
    let mm = MmServer::start("hist").await;
    let brief_id = mm.channel("brief").await;
    let held_id = mm.channel("held").await;
    let mia = mm.user("mia", &brief_id).await;
    // A Mattermost network nobody answers on: deliveries to it stay pending.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}{}{}\
         [[gateway]]\nname = \"brief\"\nretention_days = 1\nchannels = [\n\
           {{ network = \"irc\", channel = \"{brief}\" }},\n  {{ network = \"mm\", channel = \"brief\" }},\n]\n\n\
         [[gateway]]\nname = \"held\"\nretention_days = 1\nlegal_hold = true\nchannels = [\n\
           {{ network = \"irc\", channel = \"{held}\" }},\n  {{ network = \"mm\", channel = \"held\" }},\n]\n\n\
         [[gateway]]\nname = \"stuck\"\nretention_days = 1\nchannels = [\n\
           {{ network = \"irc\", channel = \"{stuck}\" }},\n  {{ network = \"mmdead\", channel = \"gone\" }},\n]\n",
        irc_network("irc", server.port, &nick),
        mm.network("mm", ""),
        mm.network_at("mmdead", &dead_url, ""),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    alice.wait_join(&nick, &brief).await;
    mm.wait_member(&brief_id, &mm.bot_id).await;
    mm.wait_member(&held_id, &mm.bot_id).await;
    mm.wait_websocket(1).await;

    // Day 0: a post with a file and one to be edited later in `brief`, a line in `held`, and a
    // line in `stuck` that cannot be delivered.
    let file = mia.upload(&brief_id, "minutes.txt", b"the minutes").await;
    mia.say_with_files(&brief_id, "old minutes", std::slice::from_ref(&file))
        .await;
    let old = mia.say(&brief_id, "old words").await;
    alice.say(&held, "held words");
    alice.say(&stuck, "stuck words");
    let seen = alice.texts_until(&brief, "old words").await;
    assert_eq!(texts(&seen).last().unwrap(), "<mia> old words");
    bridge.wait_outbox_drained("mm", "held").await;
    let deadline = Instant::now() + Duration::from_mins(1);
    while count(
        dir.path(),
        "SELECT COUNT(*) FROM outbox WHERE network = 'mmdead' AND state = 'pending'",
    ) < 1
    {
        assert!(Instant::now() < deadline, "the stuck line was never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored_files(dir.path()).len(), 1, "the file was stored");
    assert_eq!(
        count(
            dir.path(),
            "SELECT COUNT(*) FROM messages WHERE origin_channel = 'brief'"
        ),
        2
    );
    let _ = bridge.terminate();

    // Two days later: `brief` is forgotten, `held` is under legal hold, `stuck` still waits.
    bridge.set_env(
        "TRIBRIDGE_TEST_CLOCK_SKEW_SECONDS",
        &(2 * 86_400).to_string(),
    );
    bridge.restart();
    bridge
        .wait_for_log("History retention pass done: messages past retention_days forgotten.")
        .await;
    bridge
        .wait_for_log_line(&["files=1", "kept_pending=1"])
        .await;
    let d = dir.path();
    assert_eq!(
        count(
            d,
            "SELECT COUNT(*) FROM messages WHERE origin_channel = 'brief'"
        ),
        0
    );
    let brief_sql = format!("SELECT COUNT(*) FROM messages WHERE origin_channel = '{brief}'");
    assert_eq!(count(d, &brief_sql), 0);
    assert_eq!(
        count(
            d,
            "SELECT COUNT(*) FROM mappings WHERE channel = 'brief' OR message_id NOT IN \
             (SELECT id FROM messages)"
        ),
        0
    );
    assert_eq!(
        count(
            d,
            "SELECT COUNT(*) FROM deliveries WHERE message_id NOT IN (SELECT id FROM messages)"
        ),
        0
    );
    assert!(stored_files(d).is_empty(), "{:?}", stored_files(d));
    let held_sql = format!("SELECT COUNT(*) FROM messages WHERE origin_channel = '{held}'");
    assert_eq!(count(d, &held_sql), 1, "legal hold keeps the held gateway");
    let stuck_sql = format!("SELECT COUNT(*) FROM messages WHERE origin_channel = '{stuck}'");
    assert_eq!(
        count(d, &stuck_sql),
        1,
        "a pending delivery keeps its message"
    );
    assert_eq!(
        count(d, "SELECT COUNT(*) FROM outbox WHERE network = 'mmdead'"),
        1
    );
    let store = tribridge::store::Store::open(&d.join("state")).unwrap();
    assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    drop(store);

    // An edit of a forgotten message is dropped (and counted); a reply to it is relayed as a
    // plain message.
    alice.drain();
    mm.wait_websocket(1).await;
    mia.edit(&old, "old words, edited").await;
    mia.reply(&brief_id, &old, "answer to the old words").await;
    mia.say(&brief_id, "MARK-after").await;
    let seen = alice.texts_until(&brief, "MARK-after").await;
    assert_eq!(
        texts(&seen),
        vec![
            "<mia> answer to the old words".to_owned(),
            "<mia> MARK-after".to_owned()
        ]
    );
    bridge
        .wait_for_log("Edit, delete or reaction of a message never bridged or already forgotten")
        .await;
    let _ = bridge.terminate();
}
