//! Mattermost through the real daemon: against the Mattermost emulator (real HTTP and WebSocket on
//! loopback, people driven over REST) and a real `InspIRCd` with a raw IRC client. What each side
//! sees is asserted exactly: every message once, in order, nothing echoed back, and nothing lost
//! or replayed across WebSocket drops and daemon restarts.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::support::bridge::{Bridge, unique};
use crate::support::config::{irc_network, one_gateway as config};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::mattermost::{MmServer, find, messages};
use crate::support::servers::shared_inspircd;

/// An IRC channel with `alice` and a Mattermost channel `town` with `mia`, bridged.
struct IrcAndMattermost {
    mm: MmServer,
    channel_id: String,
    mia: crate::support::mattermost::MmUser,
    alice: IrcClient,
    irc_channel: String,
    bridge: Bridge,
    _dir: tempfile::TempDir,
}

async fn irc_and_mattermost() -> IrcAndMattermost {
    irc_and_mattermost_with(false, "").await
}

/// The fixture, the bridge logging in by password when `login`, with `extra` network keys.
async fn irc_and_mattermost_with(login: bool, extra: &str) -> IrcAndMattermost {
    let server = shared_inspircd();
    let irc_channel = unique("#mm");
    let nick = unique("brmm");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&irc_channel).await;
    let mm = MmServer::start("civi").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                irc_network("irc", server.port, &nick),
                if login {
                    mm.network_login("mm", extra)
                } else {
                    mm.network("mm", extra)
                },
            ],
            &[("irc", &irc_channel), ("mm", "town")],
        ),
    );
    alice.wait_join(&nick, &irc_channel).await;
    let account = if login {
        mm.login_user_id.clone()
    } else {
        mm.bot_id.clone()
    };
    mm.wait_member(&channel_id, &account).await;
    mm.wait_websocket(1).await;
    IrcAndMattermost {
        mm,
        channel_id,
        mia,
        alice,
        irc_channel,
        bridge,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn irc_and_mattermost_relay_text_actions_edits_and_deletes_without_echo() {
    let mut t = irc_and_mattermost().await;
    let (a, channel) = (t.alice.nick.clone(), t.irc_channel.clone());
    let bot = t.mm.bot_id.clone();

    // IRC → Mattermost.
    t.alice.say(&channel, "hello mia, é 日本語 🎉");
    t.alice.act(&channel, "waves");
    t.alice.say(&channel, "\x02bold\x02 and *not italic* @mia");
    t.alice.say(&channel, "MARK-1");
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &bot, |p| p.len() >= 4)
        .await;
    assert_eq!(
        messages(&posts),
        vec![
            format!("<{a}> hello mia, é 日本語 🎉"),
            format!("<{a}> waves"),
            format!("<{a}> bold and *not italic* @\u{2060}mia"),
            format!("<{a}> MARK-1"),
        ]
    );
    assert_eq!(posts[1]["type"], "me");
    assert_eq!(posts[1]["message"], format!("*\\<{a}> waves*"));
    // IRC bold is Markdown bold; literal asterisks and the sender's brackets stay literal, and
    // the relayed `@mia` does not ping (mia has said nothing through the bridge yet, so `mia`
    // is no one the bridge knows; `tests/it/mentions.rs` has the mentions of people it knows).
    assert_eq!(
        posts[2]["message"],
        format!("\\<{a}> **bold** and \\*not italic\\* @\u{2060}mia")
    );

    // Mattermost → IRC: text, /me, an edit, a delete (IRC cannot show it), a thread reply.
    let hi = t.mia.say(&t.channel_id, "hi alice").await;
    t.mia.act(&t.channel_id, "smiles").await;
    t.mia.edit(&hi, "hi alice, edited").await;
    let gone = t.mia.say(&t.channel_id, "soon deleted").await;
    t.mia.delete(&gone).await;
    t.mia.reply(&t.channel_id, &hi, "in the thread").await;
    t.mia.say(&t.channel_id, "**strong** words").await;
    t.mia.say(&t.channel_id, "MARK-2").await;
    let seen = t.alice.texts_until(&channel, "MARK-2").await;
    assert_eq!(
        texts(&seen),
        vec![
            "<mia> hi alice".to_owned(),
            "\x01ACTION <mia> smiles\x01".to_owned(),
            "<mia> * hi alice, edited".to_owned(),
            "<mia> soon deleted".to_owned(),
            "<mia> mia: in the thread".to_owned(),
            "<mia> \x02strong\x02 words".to_owned(),
            "<mia> MARK-2".to_owned(),
        ]
    );

    // Nothing came back: IRC saw only mia's lines, Mattermost has only alice's three.
    t.alice.say(&channel, "MARK-3");
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &bot, |p| p.len() >= 5)
        .await;
    assert_eq!(posts.len(), 5, "{:#?}", messages(&posts));
    assert_eq!(messages(&posts)[4], format!("<{a}> MARK-3"));
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn bursts_of_200_arrive_in_order_exactly_once_both_ways_even_when_rate_limited() {
    let mut t = irc_and_mattermost().await;
    let (a, channel) = (t.alice.nick.clone(), t.irc_channel.clone());
    let bot = t.mm.bot_id.clone();
    // The server limits the bridge to 50 requests a second: 429s delay, never lose or reorder.
    t.mm.emu.set_rate_limit(Some(50));
    let mut burst = String::new();
    for n in 0..200 {
        let _ = write!(burst, "PRIVMSG {channel} :line {n:03}\r\n");
    }
    t.alice.raw(burst.trim_end());
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &bot, |p| p.len() >= 200)
        .await;
    let expected: Vec<String> = (0..200).map(|n| format!("<{a}> line {n:03}")).collect();
    assert_eq!(messages(&posts), expected);
    t.mm.emu.set_rate_limit(None);

    for n in 0..200 {
        t.mia.say(&t.channel_id, &format!("post {n:03}")).await;
    }
    let seen = t.alice.texts_until(&channel, "post 199").await;
    let expected: Vec<String> = (0..200).map(|n| format!("<mia> post {n:03}")).collect();
    assert_eq!(texts(&seen), expected);
    t.bridge.wait_outbox_drained("mm", "town").await;
    let posts = t.mia.wait_posts_by(&t.channel_id, &bot, |_| true).await;
    assert_eq!(posts.len(), 200, "nothing doubled by retries after 429s");
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_drops_lose_nothing_whether_resumed_or_caught_up() {
    let mut t = irc_and_mattermost().await;
    let channel = t.irc_channel.clone();
    let first = t.mia.say(&t.channel_id, "before the drop").await;
    t.alice.texts_until(&channel, "before the drop").await;

    // 1. The socket drops and the server forgets it: a fresh hello, so a REST catch-up.
    t.mm.emu.drop_websockets();
    t.mm.emu.forget_websocket_sessions();
    assert_eq!(t.mm.emu.websocket_count(), 0);
    for n in 0..30 {
        t.mia.say(&t.channel_id, &format!("offline {n:02}")).await;
    }
    t.mia.edit(&first, "before the drop, edited").await;
    t.mia.say(&t.channel_id, "MARK-A").await;
    let seen = t.alice.texts_until(&channel, "MARK-A").await;
    let mut expected: Vec<String> = (0..30).map(|n| format!("<mia> offline {n:02}")).collect();
    expected.push("<mia> * before the drop, edited".into());
    expected.push("<mia> MARK-A".into());
    assert_eq!(texts(&seen), expected);

    // 2. The socket drops and the server keeps its events: resumed, replayed from where we were.
    t.mm.wait_websocket(1).await;
    t.mm.emu.drop_websockets();
    assert_eq!(t.mm.emu.websocket_count(), 0);
    for n in 0..30 {
        t.mia.say(&t.channel_id, &format!("dropped {n:02}")).await;
    }
    t.mia.say(&t.channel_id, "MARK-B").await;
    let seen = t.alice.texts_until(&channel, "MARK-B").await;
    let mut expected: Vec<String> = (0..30).map(|n| format!("<mia> dropped {n:02}")).collect();
    expected.push("<mia> MARK-B".into());
    assert_eq!(texts(&seen), expected);
    assert!(
        t.bridge
            .logs()
            .contains("WebSocket resumed; missed events are replayed."),
        "the second drop was resumed, not caught up over REST"
    );

    // And nothing more arrives after that: the next line is the next one said.
    t.mia.say(&t.channel_id, "MARK-C").await;
    let seen = t.alice.texts_until(&channel, "MARK-C").await;
    assert_eq!(texts(&seen), vec!["<mia> MARK-C".to_owned()]);
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn daemon_restart_catches_up_once_and_replays_nothing() {
    let mut t = irc_and_mattermost().await;
    let channel = t.irc_channel.clone();
    let kept = t.mia.say(&t.channel_id, "said before the restart").await;
    let doomed = t.mia.say(&t.channel_id, "deleted while down").await;
    t.alice.texts_until(&channel, "deleted while down").await;
    assert_eq!(t.bridge.terminate(), Some(0));
    t.mm.wait_websocket(0).await;

    for n in 0..30 {
        t.mia
            .say(&t.channel_id, &format!("while down {n:02}"))
            .await;
    }
    t.mia.edit(&kept, "said before the restart, edited").await;
    t.mia.delete(&doomed).await;
    let fleeting = t
        .mia
        .say(&t.channel_id, "said and deleted while down")
        .await;
    t.mia.delete(&fleeting).await;
    // The server is busy: two requests a second. The catch-up waits its turn, names included.
    t.mm.emu.set_rate_limit(Some(2));
    t.bridge.restart();
    t.mm.wait_websocket(1).await;
    t.mia.say(&t.channel_id, "MARK-R").await;
    let seen = t.alice.texts_until(&channel, "MARK-R").await;
    t.mm.emu.set_rate_limit(None);
    assert!(t.bridge.logs().contains("Rate limited; waiting."));
    let mut expected: Vec<String> = (0..30)
        .map(|n| format!("<mia> while down {n:02}"))
        .collect();
    expected.push("<mia> * said before the restart, edited".into());
    expected.push("<mia> MARK-R".into());
    assert_eq!(texts(&seen), expected);

    // A second restart has nothing left to relay.
    assert_eq!(t.bridge.terminate(), Some(0));
    t.mm.wait_websocket(0).await;
    t.bridge.restart();
    t.mm.wait_websocket(1).await;
    t.mia.say(&t.channel_id, "MARK-S").await;
    let seen = t.alice.texts_until(&channel, "MARK-S").await;
    assert_eq!(texts(&seen), vec!["<mia> MARK-S".to_owned()]);
    let _ = t.bridge.terminate();
}

/// The bridge stores a channel's position at most once a second, so a crash right after posts
/// were relayed leaves it behind them: the catch-up after the restart fetches them again and
/// must recognise every one (posts, an edit, the bridge's own post) instead of relaying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_crash_right_after_relaying_doubles_nothing_though_the_position_lags() {
    let mut t = irc_and_mattermost().await;
    let channel = t.irc_channel.clone();
    let first = t.mia.say(&t.channel_id, "crash 1").await;
    t.mia.say(&t.channel_id, "crash 2").await;
    t.mia.edit(&first, "crash 1, edited").await;
    t.alice.say(&channel, "from irc before the crash");
    t.mia.say(&t.channel_id, "crash 3").await;
    let seen = t.alice.texts_until(&channel, "crash 3").await;
    assert_eq!(
        texts(&seen),
        vec![
            "<mia> crash 1".to_owned(),
            "<mia> crash 2".to_owned(),
            "<mia> * crash 1, edited".to_owned(),
            "<mia> crash 3".to_owned(),
        ]
    );
    // The bridge's own post is there too (its echo moved the position as well).
    let from_irc = |posts: &[Value]| {
        messages(posts)
            .iter()
            .filter(|m| m.ends_with("from irc before the crash"))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    while from_irc(&t.mia.posts(&t.channel_id).await) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the IRC line never reached Mattermost"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The crash comes after the deliveries to IRC were recorded: a crash between IRC's
    // acknowledgement and that record is the window IRC leaves open (README), not this one.
    t.bridge.wait_outbox_drained("irc", &channel).await;
    t.bridge.kill9();
    t.bridge.restart();
    t.mm.wait_websocket(1).await;
    t.mia.say(&t.channel_id, "MARK-K").await;
    let seen = t.alice.texts_until(&channel, "MARK-K").await;
    assert_eq!(texts(&seen), vec!["<mia> MARK-K".to_owned()]);
    // Nothing went back to Mattermost twice either.
    let posts = t.mia.posts(&t.channel_id).await;
    assert_eq!(from_irc(&posts), 1, "{:#?}", messages(&posts));
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mattermost_servers_linked_department_to_department() {
    let one = MmServer::start("dept-one").await;
    let two = MmServer::start("dept-two").await;
    let channel_one = one.channel("shared").await;
    let channel_two = two.channel("shared").await;
    let ann = one.user("ann", &channel_one).await;
    let ben = two.user("ben", &channel_two).await;
    // Server two shows relayed senders as the post's author; its posts answer only after their
    // own `posted` event went out (the echo-before-response race).
    two.emu.set_config(mattermost_emulator::Config {
        enable_post_username_override: true,
        post_response_delay: Some(Duration::from_millis(100)),
        ..two.emu.config()
    });
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                one.network("one", "relay_membership = true"),
                two.network("two", "sender_override = true"),
            ],
            &[("one", "shared"), ("two", "shared")],
        ),
    );
    one.wait_bot_member(&channel_one).await;
    two.wait_bot_member(&channel_two).await;
    one.wait_websocket(1).await;
    two.wait_websocket(1).await;

    // Text and /me, one → two, shown with ann's name through the override; a mass ping on one
    // does not ping everyone on two.
    let hello = ann.say(&channel_one, "hello department two").await;
    ann.act(&channel_one, "waves").await;
    ann.say(&channel_one, "@here **meeting** now").await;
    let posts = ben
        .wait_posts_by(&channel_two, &two.bot_id, |p| p.len() >= 3)
        .await;
    assert_eq!(
        messages(&posts),
        vec!["hello department two", "waves", "@\u{2060}here meeting now"]
    );
    assert_eq!(posts[2]["message"], "@\u{2060}here **meeting** now");
    assert_eq!(posts[0]["props"]["override_username"], "ann");
    assert_eq!(posts[0]["props"]["from_webhook"], "true");
    assert_eq!(posts[1]["type"], "me");
    let hello_two = posts[0]["id"].as_str().unwrap().to_owned();

    // A thread reply two → one lands in the thread of ann's original post, prefixed.
    let reply = ben
        .reply(&channel_two, &hello_two, "a reply from two")
        .await;
    let posts = ann
        .wait_posts_by(&channel_one, &one.bot_id, |p| !p.is_empty())
        .await;
    assert_eq!(messages(&posts), vec!["<ben> a reply from two"]);
    assert_eq!(posts[0]["root_id"], hello.as_str());
    // Replying to a reply (in Mattermost: to its thread) keeps the thread on the other side.
    let _ = reply;
    ann.reply(&channel_one, &hello, "and back to two").await;
    let posts = ben
        .wait_posts_by(&channel_two, &two.bot_id, |p| p.len() >= 4)
        .await;
    assert_eq!(
        find(&posts, "and back to two")["root_id"],
        hello_two.as_str()
    );

    // Edits and reactions both ways.
    ann.edit(&hello, "hello department two, edited").await;
    ben.wait_post(&hello_two, |p| {
        p.is_some_and(|p| p["message"] == "hello department two, edited")
    })
    .await;
    ann.react(&hello, "thumbsup").await;
    ben.wait_reactions(&hello_two, &[(&two.bot_id, "+1")]).await;
    ann.unreact(&hello, "thumbsup").await;
    ben.wait_reactions(&hello_two, &[]).await;
    ben.react(&hello_two, "tada").await;
    ann.wait_reactions(&hello, &[(&one.bot_id, "tada")]).await;

    // Nothing echoed: each side has exactly what the other said, once.
    let posts = ann.wait_posts_by(&channel_one, &one.bot_id, |_| true).await;
    assert_eq!(messages(&posts), vec!["<ben> a reply from two"]);
    let posts = ben.wait_posts_by(&channel_two, &two.bot_id, |_| true).await;
    assert_eq!(
        messages(&posts),
        vec![
            "hello department two, edited",
            "waves",
            "@\u{2060}here meeting now",
            "and back to two"
        ]
    );

    // Deleting the root on one deletes the copy (and so its thread) on two. The replies deleted
    // with it get no event of their own; a catch-up finds ann's reply and relays its deletion.
    let catch_ups = |logs: &str| logs.matches("Caught up. network=one").count();
    let before = catch_ups(&bridge.logs());
    ann.delete(&hello).await;
    ben.wait_post(&hello_two, |p: Option<&Value>| p.is_none())
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while catch_ups(&bridge.logs()) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted thread was not caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login_survives_session_expiry_and_membership_is_relayed() {
    let mut t = irc_and_mattermost_with(true, "relay_membership = true").await;
    let (a, channel) = (t.alice.nick.clone(), t.irc_channel.clone());
    let account = t.mm.login_user_id.clone();

    // Joins, header changes and leaves on Mattermost become notices on IRC.
    let newbie = t.mm.user("newbie", &t.channel_id).await;
    t.mia
        .ok(
            reqwest::Method::PUT,
            &format!("/channels/{}/patch", t.channel_id),
            Some(serde_json::json!({"header": "Release **Friday**"})),
        )
        .await;
    newbie
        .ok(
            reqwest::Method::DELETE,
            &format!("/channels/{}/members/{}", t.channel_id, newbie.id),
            None,
        )
        .await;
    t.mia.say(&t.channel_id, "MARK-M").await;
    let seen = t.alice.texts_until(&channel, "MARK-M").await;
    assert_eq!(
        texts(&seen),
        vec![
            "[mm] newbie joined town".to_owned(),
            "[mm] mia changed the topic to: Release Friday".to_owned(),
            "[mm] newbie left town".to_owned(),
            "<mia> MARK-M".to_owned(),
        ]
    );

    // The password session expires: the next delivery logs in again and goes through.
    t.alice.say(&channel, "before expiry");
    t.mia
        .wait_posts_by(&t.channel_id, &account, |p| !p.is_empty())
        .await;
    t.mm.emu.expire_sessions();
    t.alice.say(&channel, "after expiry");
    // Every password session is gone, mia's too.
    let mia =
        crate::support::mattermost::MmUser::login(&t.mm.emu.base_url(), "mia", "mia-password")
            .await;
    let posts = mia
        .wait_posts_by(&t.channel_id, &account, |p| p.len() >= 2)
        .await;
    assert_eq!(
        messages(&posts),
        vec![
            format!("<{a}> before expiry"),
            format!("<{a}> after expiry"),
        ]
    );
    let _ = t.bridge.terminate();
}

/// A post whose shown name holds a NUL character (an integration's `override_username`; a
/// message's text loses its control characters when it is read) reaches IRC with what follows
/// it. `SQLite` stores the name as it is; the PostgreSQL store, which may not, as U+FFFD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_name_with_a_nul_character_reaches_irc() {
    let mut t = irc_and_mattermost().await;
    let channel = t.irc_channel.clone();
    t.mia
        .ok(
            reqwest::Method::POST,
            "/posts",
            Some(serde_json::json!({
                "channel_id": t.channel_id,
                "message": "build passed",
                "props": {"from_webhook": "true", "override_username": "ci\0bot"},
            })),
        )
        .await;
    t.mia.say(&t.channel_id, "and then this").await;
    let seen = texts(&t.alice.texts_until(&channel, "and then this").await);
    let name = if crate::support::bridge::wants_postgres() {
        "ci\u{FFFD}bot"
    } else {
        "cibot"
    };
    assert_eq!(
        seen,
        [
            format!("<{name}> build passed"),
            "<mia> and then this".to_owned()
        ]
    );
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_named_with_a_link_and_a_removed_bridge_rejoins() {
    let mut t = irc_and_mattermost().await;
    let (a, channel) = (t.alice.nick.clone(), t.irc_channel.clone());
    let bot = t.mm.bot_id.clone();

    // A post with a file: IRC gets the text, then the file's name and size and (no media
    // endpoint being configured) a link to the post.
    let file = t
        .mia
        .upload(&t.channel_id, "notes.txt", b"some notes")
        .await;
    let post = t
        .mia
        .say_with_files(&t.channel_id, "have a look", std::slice::from_ref(&file))
        .await;
    let seen = t.alice.texts_until(&channel, "notes.txt").await;
    let link = format!("{}/civi/pl/{post}", t.mm.emu.base_url());
    assert_eq!(texts(&seen)[0], "<mia> have a look");
    assert!(
        texts(&seen)
            .last()
            .is_some_and(|l| l == &format!("<mia> shared a file: notes.txt (10 B) {link}")),
        "{:?}",
        texts(&seen)
    );

    // Someone removes the bridge from the channel: it joins again and nothing is lost.
    t.mm.admin
        .ok(
            reqwest::Method::DELETE,
            &format!("/channels/{}/members/{bot}", t.channel_id),
            None,
        )
        .await;
    t.alice.say(&channel, "said around the kick");
    t.mm.wait_bot_member(&t.channel_id).await;
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &bot, |p| !p.is_empty())
        .await;
    assert_eq!(
        messages(&posts),
        vec![format!("<{a}> said around the kick")]
    );
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_beyond_the_since_limit_still_relays_every_post_once_in_order() {
    let one = MmServer::start("dept-one").await;
    let two = MmServer::start("dept-two").await;
    let channel_one = one.channel("shared").await;
    let channel_two = two.channel("shared").await;
    let ann = one.user("ann", &channel_one).await;
    let ben = two.user("ben", &channel_two).await;
    let dir = tempfile::tempdir().unwrap();
    // Server two's channel is configured by id.
    let by_id = format!("id:{channel_two}");
    let mut bridge = Bridge::start(
        dir.path(),
        &config(
            &[one.network("one", ""), two.network("two", "")],
            &[("one", "shared"), ("two", &by_id)],
        ),
    );
    one.wait_bot_member(&channel_one).await;
    two.wait_bot_member(&channel_two).await;
    one.wait_websocket(1).await;
    ann.say(&channel_one, "before").await;
    ben.wait_posts_by(&channel_two, &two.bot_id, |p| !p.is_empty())
        .await;
    assert_eq!(bridge.terminate(), Some(0));
    one.wait_websocket(0).await;

    // More new posts than one `since` answer holds (1000 rows).
    let mut last = String::new();
    for n in 0..1030 {
        last = ann.say(&channel_one, &format!("p{n:04}")).await;
    }
    // A reaction made while the bridge was away comes across too.
    ann.react(&last, "tada").await;
    bridge.restart();
    let posts = ben
        .wait_posts_by(&channel_two, &two.bot_id, |p| p.len() >= 1031)
        .await;
    let mut expected = vec!["<ann> before".to_owned()];
    expected.extend((0..1030).map(|n| format!("<ann> p{n:04}")));
    let seen = messages(&posts);
    let first_difference = seen.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(
        seen == expected,
        "{} posts, first difference at {first_difference:?}: {:?}",
        seen.len(),
        first_difference.map(|i| &seen[i.saturating_sub(2)..(i + 3).min(seen.len())])
    );
    assert!(bridge.logs().contains("paging back for new posts"));
    let last_two = posts.last().unwrap()["id"].as_str().unwrap().to_owned();
    ben.wait_reactions(&last_two, &[(&two.bot_id, "tada")])
        .await;
    let _ = bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_and_a_private_ca_can_be_trusted() {
    let server = shared_inspircd();
    let irc_channel = unique("#mmtls");
    let nick = unique("brtls");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&irc_channel).await;
    let mm = MmServer::start("civi").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let dir = tempfile::tempdir().unwrap();
    let tls = crate::support::servers::TestTls::generate(&dir.path().join("tls"));
    let url = crate::support::mattermost::tls_front(mm.emu.local_addr(), &tls).await;

    // Without the CA the certificate is refused: the bridge never gets in.
    let untrusting = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        untrusting.path(),
        &config(
            &[
                irc_network("irc", server.port, &nick),
                mm.network_at("mm", &url, ""),
            ],
            &[("irc", &irc_channel), ("mm", "town")],
        ),
    );
    bridge.wait_for_log("UnknownIssuer").await;
    assert_eq!(mm.emu.websocket_count(), 0);
    let _ = bridge.terminate();

    // With `tls_ca_file`, REST and the WebSocket both go over verified TLS.
    let ca = tls.ca.display().to_string();
    let mut bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                irc_network("irc", server.port, &nick),
                mm.network_at("mm", &url, &format!("tls_ca_file = \"{ca}\"")),
            ],
            &[("irc", &irc_channel), ("mm", "town")],
        ),
    );
    alice.wait_join(&nick, &irc_channel).await;
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    mia.say(&channel_id, "over TLS").await;
    let seen = alice.texts_until(&irc_channel, "over TLS").await;
    assert_eq!(texts(&seen), vec!["<mia> over TLS".to_owned()]);
    alice.say(&irc_channel, "back over TLS");
    let posts = mia
        .wait_posts_by(&channel_id, &mm.bot_id, |p| !p.is_empty())
        .await;
    assert_eq!(
        messages(&posts),
        vec![format!("<{}> back over TLS", alice.nick)]
    );
    let _ = bridge.terminate();
}
