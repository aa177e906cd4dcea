//! Hostile input through the real daemon: IRC lines in other charsets or with control
//! characters smuggled in, overlong lines, mass-mention attempts, Markdown bombs, Matrix HTML
//! with scripts, deep nesting and broken tags, 100 KB messages, and a flood of 10,000 messages
//! from one person. Each has a clear outcome (relayed intact and inert, cut, or neutralised,
//! with a count in the logs where the input was wrong); none crashes the daemon, hangs it or
//! holds up another channel.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::bridge::{Bridge, unique};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::matrix_client::{MatrixUser, register};
use crate::support::mattermost::{MmServer, MmUser, messages};
use crate::support::servers::{shared_inspircd, shared_synapse};

/// Two gateways, each an IRC channel and a Mattermost channel: `a` (where the hostile input
/// goes) and `b` (which must keep flowing meanwhile).
struct TwoGateways {
    mm: MmServer,
    chan_a: String,
    chan_b: String,
    mia: MmUser,
    alice: IrcClient,
    irc_a: String,
    irc_b: String,
    bridge: Bridge,
    _dir: tempfile::TempDir,
}

async fn two_gateways() -> TwoGateways {
    two_gateways_with("flood_burst = 1000\nflood_interval_ms = 1").await
}

/// The fixture with this IRC flood control.
async fn two_gateways_with(flood: &str) -> TwoGateways {
    let server = shared_inspircd();
    let irc_a = unique("#ha");
    let irc_b = unique("#hb");
    let nick = unique("brh");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&irc_a).await;
    alice.join(&irc_b).await;
    let mm = MmServer::start("hostile").await;
    let chan_a = mm.channel("chan-a").await;
    let chan_b = mm.channel("chan-b").await;
    let mia = mm.user("mia", &chan_a).await;
    mia.ok(
        reqwest::Method::POST,
        &format!("/channels/{chan_b}/members"),
        Some(json!({"user_id": mia.id})),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n\
         [network.irc]\ntype = \"irc\"\nserver = \"127.0.0.1:{}\"\ntls = false\nnick = \"{nick}\"\n\
         {flood}\n\n{}\n\
         [[gateway]]\nname = \"a\"\nlong_text = {{ mode = \"split\" }}\nchannels = [\n\
         {{ network = \"irc\", channel = \"{irc_a}\" }},\n{{ network = \"mm\", channel = \"chan-a\" }},\n]\n\
         [[gateway]]\nname = \"b\"\nchannels = [\n\
         {{ network = \"irc\", channel = \"{irc_b}\" }},\n{{ network = \"mm\", channel = \"chan-b\" }},\n]\n",
        server.port,
        mm.network("mm", "")
    );
    let bridge = Bridge::start(dir.path(), &config);
    alice.wait_join(&nick, &irc_a).await;
    alice.wait_member(&nick, &irc_b).await;
    mm.wait_bot_member(&chan_a).await;
    mm.wait_bot_member(&chan_b).await;
    mm.wait_websocket(1).await;
    TwoGateways {
        mm,
        chan_a,
        chan_b,
        mia,
        alice,
        irc_a,
        irc_b,
        bridge,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_lines_in_other_charsets_or_with_smuggled_controls_arrive_intact_and_inert() {
    let t = two_gateways().await;
    let a = t.irc_a.clone();
    // Latin-1 (not UTF-8), UTF-8, a NUL, a bare CR, an overlong line, mass mentions.
    t.alice
        .raw_bytes(format!("PRIVMSG {a} :caf\u{e9}-latin1 ").as_bytes());
    t.alice.raw_bytes(b"\xe9t\xe9\r\n");
    t.alice.raw(&format!("PRIVMSG {a} :utf8 caf\u{e9}"));
    t.alice
        .raw_bytes(format!("PRIVMSG {a} :nul\0smuggled\r\n").as_bytes());
    t.alice
        .raw_bytes(format!("PRIVMSG {a} :bare\rcarriage\r\n").as_bytes());
    t.alice.raw(&format!("PRIVMSG {a} :{}", "x".repeat(2000)));
    t.alice
        .raw(&format!("PRIVMSG {a} :@channel @all @here look at this"));
    t.alice.say(&a, "hostile-done");
    let posts =
        t.mm.admin
            .wait_posts_by(&t.chan_a, &t.mm.bot_id, |posts| {
                messages(posts).iter().any(|m| m.contains("hostile-done"))
            })
            .await;
    let texts = messages(&posts);
    // The first line's bytes were `café-latin1 été` in UTF-8 then latin-1: not UTF-8 as a
    // whole, so the whole line is read as latin-1: `Ã©` for the UTF-8 part, nothing lost.
    assert!(
        texts
            .iter()
            .any(|m| m.ends_with("caf\u{c3}\u{a9}-latin1 \u{e9}t\u{e9}")),
        "{texts:#?}"
    );
    assert!(
        texts.iter().any(|m| m.ends_with("utf8 caf\u{e9}")),
        "{texts:#?}"
    );
    for text in &texts {
        assert!(
            !text.contains(['\0', '\r']),
            "control character relayed: {text:?}"
        );
        assert!(
            text.len() < 600,
            "an IRC line longer than IRC allows: {}",
            text.len()
        );
        assert!(!text.contains("@channel") && !text.contains("@all") && !text.contains("@here"));
    }
    assert!(
        texts.iter().any(|m| m.contains("look at this")),
        "{texts:#?}"
    );
    t.bridge
        .wait_for_log("A line that is not UTF-8; read in the fallback charset.")
        .await;
    assert!(t.bridge.logs().contains("count=1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mattermost_newlines_nuls_markdown_bombs_and_huge_posts_reach_irc_as_safe_lines() {
    let mut t = two_gateways().await;
    t.mia
        .say(&t.chan_a, "first\r\nPRIVMSG #victim :injected\0 and\rmore")
        .await;
    let bomb = format!(
        "{}{}{}",
        "[".repeat(5000),
        "*_~".repeat(2000),
        "`".repeat(3000)
    );
    t.mia.say(&t.chan_a, &bomb).await;
    let nested = format!("{}deep", "> ".repeat(2000));
    t.mia.say(&t.chan_a, &nested).await;
    let long: String = (0..1600).fold(String::new(), |mut out, n| {
        let _ = write!(out, "w{n:04} ");
        out
    });
    t.mia.say(&t.chan_a, &long).await;
    t.mia.say(&t.chan_a, "mm-hostile-done").await;
    let started = Instant::now();
    let lines = t.alice.texts_until(&t.irc_a, "mm-hostile-done").await;
    assert!(started.elapsed() < Duration::from_secs(30));
    for line in &lines {
        assert!(
            line.raw.len() <= 512,
            "line over 512 bytes: {}",
            line.raw.len()
        );
        assert_ne!(
            line.params.first().map(String::as_str),
            Some("#victim"),
            "a line was injected"
        );
    }
    let all = texts(&lines).join(" ");
    assert!(all.contains("injected"));
    // The long post arrives whole (gateway `a` splits long texts), split at word boundaries.
    for n in [0, 799, 1599] {
        assert!(all.contains(&format!("w{n:04}")), "w{n:04} missing");
    }
    // The other gateway still flows.
    t.mia.say(&t.chan_b, "b still flows").await;
    t.alice.texts_until(&t.irc_b, "b still flows").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_ten_thousand_messages_from_one_person_does_not_hold_up_another_channel() {
    // IRC at 50 lines/s (a typical server's pace), so that the flood queues up in the bridge.
    let mut t = two_gateways_with("flood_burst = 5\nflood_interval_ms = 20").await;
    let flood_started = Instant::now();
    let mut writers = Vec::new();
    for part in 0..8u32 {
        let mia = t.mia.clone();
        let channel = t.chan_a.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..1250u32 {
                mia.say(&channel, &format!("flood {part}-{n}")).await;
            }
        }));
    }
    // Once the flood is well under way, someone speaks in the other gateway.
    let store = tribridge::store::Store::open(&t.bridge.dir.join("state")).expect("store");
    let irc_a = tribridge::model::ChannelRef::new("irc", &t.irc_a);
    let deadline = Instant::now() + Duration::from_mins(1);
    while store.pending_count(&irc_a).expect("count") < 200 {
        assert!(Instant::now() < deadline, "the flood never queued up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let said = Instant::now();
    t.mia.say(&t.chan_b, "meanwhile in b").await;
    t.alice.texts_until(&t.irc_b, "meanwhile in b").await;
    let latency = said.elapsed();
    let queued = store.pending_count(&irc_a).expect("count");
    for writer in writers {
        writer.await.expect("flood writer");
    }
    println!(
        "flood: 10000 posts written in {:.1} s; a message in the other gateway took {} ms while {} were queued for IRC",
        flood_started.elapsed().as_secs_f64(),
        latency.as_millis(),
        queued
    );
    assert!(
        latency < Duration::from_secs(20),
        "the other gateway waited {latency:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_scripts_deep_nesting_broken_tags_and_100_kb_messages_reach_irc_and_mattermost_safely()
 {
    let synapse = shared_synapse();
    let url = synapse.url();
    let bot = unique("hbot");
    register(&url, &bot, "password").await;
    let mut matrix = MatrixUser::new(&url, &unique("mallory")).await;
    let alias_name = unique("hroom");
    let room = matrix.create_room(&alias_name).await;
    let server = shared_inspircd();
    let irc_channel = unique("#hmx");
    let nick = unique("brhm");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&irc_channel).await;
    let mm = MmServer::start("hmx").await;
    let chan = mm.channel("hmx").await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n\
         [network.irc]\ntype = \"irc\"\nserver = \"127.0.0.1:{}\"\ntls = false\nnick = \"{nick}\"\n\
         flood_burst = 1000\nflood_interval_ms = 1\n\n\
         [network.mx]\ntype = \"matrix\"\nhomeserver = \"{url}\"\nuser = \"@{bot}:localhost\"\npassword = \"password\"\n\n{}\n\
         [[gateway]]\nname = \"g\"\nchannels = [\n\
         {{ network = \"irc\", channel = \"{irc_channel}\" }},\n\
         {{ network = \"mx\", channel = \"#{alias_name}:localhost\" }},\n\
         {{ network = \"mm\", channel = \"hmx\" }},\n]\n",
        server.port,
        mm.network("mm", "")
    );
    let _bridge = Bridge::start(dir.path(), &config);
    alice.wait_join(&nick, &irc_channel).await;
    mm.wait_bot_member(&chan).await;
    let bot_id = format!("@{bot}:localhost");
    matrix
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member" && e.content["membership"] == "join" && e.sender == bot_id
            })
        })
        .await;

    let html = |body: &str, formatted: String| json!({"msgtype": "m.text", "body": body, "format": "org.matrix.custom.html", "formatted_body": formatted});
    matrix
        .send_event(
            &room,
            "m.room.message",
            html(
                "script",
                "<script>alert(1)</script><img src=x onerror=alert(2)>visible<style>b{}</style>"
                    .to_owned(),
            ),
        )
        .await;
    matrix
        .send_event(
            &room,
            "m.room.message",
            html(
                "nested",
                format!("{}deep{}", "<b><i>".repeat(2500), "</i></b>".repeat(2500)),
            ),
        )
        .await;
    matrix
        .send_event(
            &room,
            "m.room.message",
            html(
                "broken",
                "<b <i>>un<closed <a href=\"javascript:alert(1)\">link</a </p><table><tr><td>cell"
                    .to_owned(),
            ),
        )
        .await;
    let big: String = (0..8_500).fold(String::new(), |mut out, n| {
        let _ = write!(out, "b{n:05} ");
        out
    });
    assert!(big.len() >= 59_000); // Synapse refuses events over 64 KiB
    matrix.say(&room, &big).await;
    matrix.say(&room, "mx-hostile-done").await;

    let lines = alice.texts_until(&irc_channel, "mx-hostile-done").await;
    let irc_text = texts(&lines).join("\n");
    assert!(!irc_text.contains("alert"), "script content on IRC");
    assert!(irc_text.contains("visible") && irc_text.contains("deep"));
    assert!(irc_text.contains("cell"));
    for line in &lines {
        assert!(line.raw.len() <= 512);
    }
    let posts = mm
        .admin
        .wait_posts_by(&chan, &mm.bot_id, |posts| {
            messages(posts)
                .iter()
                .any(|m| m.contains("mx-hostile-done"))
        })
        .await;
    let mm_text = messages(&posts).join("\n");
    assert!(!mm_text.contains("alert") && !mm_text.contains("<script"));
    assert!(mm_text.contains("visible") && mm_text.contains("deep"));
    for post in messages(&posts) {
        assert!(
            post.chars().count() <= 16_383,
            "a post over Mattermost's limit"
        );
    }
}

/// Mattermost WebSocket frames of unexpected shapes are read without a panic: unreadable parts
/// are skipped (the session logs them at debug level and goes on).
#[test]
fn mattermost_websocket_frames_with_unexpected_json_are_skipped_not_fatal() {
    let read = |text: &str| tribridge::connector::mattermost::read_websocket_text("mm", text);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(String, usize)> = vec![
        (String::new(), 0),
        ("null".into(), 0),
        ("[1,2,3]".into(), 0),
        (deep, 0),
        ("{\"event\": 42}".into(), 0),
        ("{\"event\": \"posted\", \"data\": []}".into(), 1),
        (
            "{\"event\": \"posted\", \"data\": {\"post\": {\"id\": \"not a string\"}}}".into(),
            1,
        ),
        (
            "{\"event\": \"posted\", \"data\": {\"post\": \"{\\\"id\\\": 7}\"}}".into(),
            1,
        ),
        (
            "{\"event\": \"posted\", \"seq\": 1e400, \"data\": {}}".into(),
            0,
        ),
        (
            "{\"event\": \"posted\", \"data\": {\"post\": \"{\\\"id\\\":\\\"p\\\",\\\"channel_id\\\":\\\"c\\\",\\\"user_id\\\":\\\"u\\\",\\\"message\\\":\\\"hi\\\",\\\"create_at\\\":1,\\\"update_at\\\":1}\"}}".into(),
            2,
        ),
    ];
    for (text, expected) in cases {
        let shown: String = text.chars().take(80).collect();
        assert_eq!(read(&text), expected, "{shown}");
    }
}
