//! IRC ⇄ Matrix through the real daemon, a real Synapse and a real `InspIRCd`, asserting what
//! people see on each side: every message once, in order, in the platform's native form; edits,
//! redactions, replies and reactions; restarts of the bridge and of the homeserver.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::support::bridge::{Bridge, unique};
use crate::support::config::{irc_network, matrix_network, one_gateway as config};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::matrix_client::{Event, MatrixUser, local_part, register};
use crate::support::mattermost::{MmServer, find};
use crate::support::servers::{Synapse, shared_inspircd, shared_synapse};

/// A Matrix room with a person in it, an IRC channel with a person in it, and the bridge
/// between them, every side ready.
struct Setup {
    synapse_url: String,
    irc_port: u16,
    bot: String,
    nick: String,
    room: String,
    alias: String,
    channel: String,
    matrix: MatrixUser,
    irc: IrcClient,
    bridge: Bridge,
    _dir: tempfile::TempDir,
}

async fn setup(synapse: &Synapse) -> Setup {
    setup_with(synapse, "").await
}

/// Like [`setup`], with `extra` keys for the Matrix network.
async fn setup_with(synapse: &Synapse, extra: &str) -> Setup {
    setup_full(synapse, "", extra).await
}

/// The fixture with `general` keys in `[general]` and `extra` keys in the Matrix network.
async fn setup_full(synapse: &Synapse, general: &str, extra: &str) -> Setup {
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    register(&url, &bot, "password").await;
    let mut matrix = MatrixUser::new(&url, &unique("alice")).await;
    let alias_name = unique("room");
    let room = matrix.create_room(&alias_name).await;
    let alias = format!("#{alias_name}:localhost");
    let channel = unique("#mx");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    // Room history from before the bridge existed: a brand-new install must not replay it
    // (every test's first exact assertion on IRC would show it).
    matrix.say(&room, "said before the bridge existed").await;
    matrix.mark().await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                irc_network("irc", irc_port, &nick),
                matrix_network("mx", &url, &bot) + extra,
            ],
            &[("irc", &channel), ("mx", &alias)],
        )
        .replacen("\n\n", &format!("\n{general}\n"), 1),
    );
    irc.wait_join(&nick, &channel).await;
    let bot_id = format!("@{bot}:localhost");
    wait_member_join(&mut matrix, &room, &bot_id).await;
    Setup {
        synapse_url: url,
        irc_port,
        bot,
        nick,
        room,
        alias,
        channel,
        matrix,
        irc,
        bridge,
        _dir: dir,
    }
}

async fn wait_member_join(matrix: &mut MatrixUser, room: &str, user: &str) {
    matrix
        .events_until(room, Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member" && e.content["membership"] == "join" && e.sender == user
            })
        })
        .await;
}

fn bodies(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.body().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_emote_and_notice_both_ways_without_echo() {
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    s.matrix.say(&room, "hello from matrix é 🎉").await;
    s.matrix.send_message(&room, "m.emote", "waves").await;
    s.matrix.send_message(&room, "m.notice", "a notice").await;
    s.matrix.say(&room, "two\nlines").await;
    s.matrix.say(&room, "MARK-1").await;
    let seen = s.irc.texts_until(&s.channel, "MARK-1").await;
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        texts(&seen),
        vec![
            format!("<{alice}> hello from matrix é 🎉"),
            format!("\x01ACTION <{alice}> waves\x01"),
            format!("<{alice}> a notice"),
            format!("<{alice}> two"),
            format!("<{alice}> lines"),
            format!("<{alice}> MARK-1"),
        ]
    );
    assert_eq!(
        seen.iter().map(|l| l.command.as_str()).collect::<Vec<_>>(),
        vec![
            "PRIVMSG", "PRIVMSG", "NOTICE", "PRIVMSG", "PRIVMSG", "PRIVMSG"
        ]
    );

    s.irc.say(&s.channel, "hello from irc");
    s.irc.act(&s.channel, "smiles");
    s.irc.notice(&s.channel, "an irc notice");
    s.irc.say(&s.channel, "MARK-2");
    let ivan = s.irc.nick.clone();
    let bot_id = format!("@{}:localhost", s.bot);
    // Nothing alice said comes back to the room: the bot says only ivan's lines.
    let seen: Vec<Event> = s
        .matrix
        .messages_until(&room, "MARK-2")
        .await
        .into_iter()
        .filter(|e| e.sender == bot_id)
        .collect();
    assert_eq!(
        bodies(&seen),
        vec![
            format!("<{ivan}> hello from irc"),
            format!("<{ivan}> smiles"),
            format!("<{ivan}> an irc notice"),
            format!("<{ivan}> MARK-2"),
        ]
    );
    assert_eq!(
        seen.iter().map(Event::msgtype).collect::<Vec<_>>(),
        vec!["m.text", "m.emote", "m.notice", "m.text"]
    );
    // And nothing ivan said came back to IRC.
    s.matrix.say(&room, "MARK-3").await;
    let seen = s.irc.texts_until(&s.channel, "MARK-3").await;
    assert_eq!(texts(&seen), vec![format!("<{alice}> MARK-3")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_100_both_ways_at_once_arrive_in_order_exactly_once() {
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    // The IRC burst goes out first, so that the Matrix one is said while the bridge writes
    // into the room (its sync polls then instead of long-polling).
    for n in 0..100 {
        s.irc.say(&s.channel, &format!("i2m {n}"));
    }
    s.irc.say(&s.channel, "MARK-I");
    for n in 0..100 {
        s.matrix.say(&room, &format!("m2i {n}")).await;
    }
    s.matrix.say(&room, "MARK-M").await;
    let seen = s.irc.texts_until(&s.channel, "MARK-M").await;
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let mut expected: Vec<String> = (0..100).map(|n| format!("<{alice}> m2i {n}")).collect();
    expected.push(format!("<{alice}> MARK-M"));
    assert_eq!(texts(&seen), expected);
    let bot_id = format!("@{}:localhost", s.bot);
    let timeline = s.matrix.messages_until(&room, "MARK-I").await;
    let first_said = timeline
        .iter()
        .position(|e| e.sender != bot_id && e.body().starts_with("m2i "));
    let last_relayed = timeline.iter().position(|e| e.body().ends_with("MARK-I"));
    assert!(
        matches!((first_said, last_relayed), (Some(said), Some(relayed)) if said < relayed),
        "the Matrix burst began before the bridge's ended: {:?}",
        bodies(&timeline)
    );
    let seen: Vec<Event> = timeline
        .into_iter()
        .filter(|e| e.sender == bot_id)
        .collect();
    let ivan = s.irc.nick.clone();
    let mut expected: Vec<String> = (0..100).map(|n| format!("<{ivan}> i2m {n}")).collect();
    expected.push(format!("<{ivan}> MARK-I"));
    assert_eq!(bodies(&seen), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_redactions_replies_and_reactions_on_matrix() {
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let original = s.matrix.say(&room, "tpyo here").await;
    s.irc.texts_until(&s.channel, "tpyo here").await;
    // Edit: IRC sees the correction marked with `* `.
    s.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "* typo here",
                   "m.new_content": {"msgtype": "m.text", "body": "typo here"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": original}}),
        )
        .await;
    // Reaction and redaction: not shown on IRC.
    s.matrix
        .send_event(
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "👍"}}),
        )
        .await;
    // IRC cannot take a line back: the redaction comes once the line is on IRC (redacted
    // before the bridge's sync, the message would never be relayed at all).
    let doomed = s.matrix.say(&room, "to be deleted").await;
    let mut seen = s.irc.texts_until(&s.channel, "to be deleted").await;
    s.matrix.redact(&room, &doomed).await;
    // Reply: the fallback quote is stripped; IRC sees the answer addressed to the one it
    // answers (the replied line is among the last ones, so it is not quoted).
    s.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text",
                   "body": format!("> <{}> tpyo here\n\nthe answer", s.matrix.user_id),
                   "m.relates_to": {"m.in_reply_to": {"event_id": original}}}),
        )
        .await;
    s.matrix.say(&room, "MARK").await;
    seen.extend(s.irc.texts_until(&s.channel, "MARK").await);
    assert_eq!(
        texts(&seen),
        vec![
            format!("<{alice}> * typo here"),
            format!("<{alice}> to be deleted"),
            format!("<{alice}> {alice}: the answer"),
            format!("<{alice}> MARK"),
        ]
    );
}

/// Two Matrix rooms and an IRC channel in one gateway: what is edited, redacted, reacted to or
/// replied to in one room is applied natively to the bridged copy in the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_redactions_reactions_and_replies_reach_another_matrix_room_natively() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    register(&url, &bot, "password").await;
    let mut alice = MatrixUser::new(&url, &unique("alice")).await;
    let mut bob = MatrixUser::new(&url, &unique("bob")).await;
    let alias_a = unique("rooma");
    let alias_b = unique("roomb");
    let room_a = alice.create_room(&alias_a).await;
    let room_b = bob.create_room(&alias_b).await;
    let channel = unique("#mx");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    bob.mark().await;
    alice.mark().await;
    let dir = tempfile::tempdir().unwrap();
    let _bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                irc_network("irc", irc_port, &nick),
                matrix_network("mx", &url, &bot),
            ],
            &[
                ("irc", &channel),
                ("mx", &format!("#{alias_a}:localhost")),
                ("mx", &format!("#{alias_b}:localhost")),
            ],
        ),
    );
    irc.wait_join(&nick, &channel).await;
    let bot_id = format!("@{bot}:localhost");
    wait_member_join(&mut bob, &room_b, &bot_id).await;
    wait_member_join(&mut alice, &room_a, &bot_id).await;

    let original = alice.say(&room_a, "first version").await;
    let seen = bob.messages_until(&room_b, "first version").await;
    let copy = seen.last().unwrap().event_id.clone();
    assert_eq!(seen.last().unwrap().sender, bot_id);

    alice
        .send_event(
            &room_a,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "* second version",
                   "m.new_content": {"msgtype": "m.text", "body": "second version"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": original}}),
        )
        .await;
    alice
        .send_event(
            &room_a,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "🎉"}}),
        )
        .await;
    alice
        .send_event(
            &room_a,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "> <x> first version\n\na reply",
                   "m.relates_to": {"m.in_reply_to": {"event_id": original}}}),
        )
        .await;
    let own_reaction = alice
        .send_event(
            &room_a,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "👀"}}),
        )
        .await;
    // Once room B shows the reaction, alice takes it back (taken back within one sync, it
    // would never have been relayed at all).
    let mut events = bob
        .events_until(&room_b, Duration::from_mins(1), |events| {
            events
                .iter()
                .any(|e| e.kind == "m.reaction" && e.content["m.relates_to"]["key"] == "👀")
        })
        .await;
    alice.redact(&room_a, &own_reaction).await;
    alice.redact(&room_a, &original).await;
    alice.say(&room_a, "MARK").await;
    events.extend(
        bob.events_until(&room_b, Duration::from_mins(1), |events| {
            events.iter().any(|e| e.body().contains("MARK"))
        })
        .await,
    );
    let edit = events
        .iter()
        .find(|e| e.content["m.relates_to"]["rel_type"] == "m.replace")
        .expect("an m.replace event");
    assert_eq!(edit.content["m.relates_to"]["event_id"], copy.as_str());
    assert!(
        edit.content["m.new_content"]["body"]
            .as_str()
            .unwrap()
            .ends_with("second version")
    );
    let reaction = events
        .iter()
        .find(|e| e.kind == "m.reaction")
        .expect("a reaction");
    assert_eq!(reaction.content["m.relates_to"]["event_id"], copy.as_str());
    assert_eq!(reaction.content["m.relates_to"]["key"], "🎉");
    let reply = events
        .iter()
        .find(|e| e.body().ends_with("a reply"))
        .expect("the reply");
    assert_eq!(
        reply.content["m.relates_to"]["m.in_reply_to"]["event_id"],
        copy.as_str()
    );
    // The reaction taken back in room A is taken back in room B: the bot redacts its copy.
    let eyes = events
        .iter()
        .find(|e| e.kind == "m.reaction" && e.content["m.relates_to"]["key"] == "👀")
        .expect("the second reaction");
    let redacted: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "m.room.redaction")
        .map(|e| e.content["redacts"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(redacted, vec![eyes.event_id.as_str(), copy.as_str()]);
    let _ = irc.texts_until(&channel, "MARK").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_delivers_what_was_said_while_down_once_and_replays_nothing() {
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    // Once the bridge is known to relay, stop it.
    s.matrix.say(&room, "before").await;
    s.irc.texts_until(&s.channel, "before").await;
    s.bridge.wait_outbox_drained("irc", &s.channel).await;
    assert_eq!(s.bridge.terminate(), Some(0));
    let _ = s
        .irc
        .wait_for(
            |l| l.command == "QUIT" || l.command == "PART",
            Duration::from_secs(10),
        )
        .await;

    for n in 0..20 {
        s.matrix.say(&room, &format!("down m {n}")).await;
    }
    // IRC has no history: the bridge cannot see what is said while it is away. Ivan speaks
    // once the bridge is back; the 20 lines are what it must carry then.
    s.bridge.restart();
    s.irc.wait_join(&s.nick, &s.channel).await;
    for n in 0..20 {
        s.irc.say(&s.channel, &format!("back i {n}"));
    }
    s.irc.say(&s.channel, "MARK-I");
    let seen = s.irc.texts_until(&s.channel, "down m 19").await;
    let expected: Vec<String> = (0..20).map(|n| format!("<{alice}> down m {n}")).collect();
    assert_eq!(texts(&seen), expected);
    let seen = s.matrix.messages_until(&room, "MARK-I").await;
    let ivan = s.irc.nick.clone();
    let mut expected: Vec<String> = (0..20).map(|n| format!("<{ivan}> back i {n}")).collect();
    expected.push(format!("<{ivan}> MARK-I"));
    let relayed: Vec<String> = bodies(&seen)
        .into_iter()
        .filter(|b| b.starts_with(&format!("<{ivan}>")))
        .collect();
    assert_eq!(relayed, expected);

    // Again: nothing is replayed.
    s.bridge.wait_outbox_drained("irc", &s.channel).await;
    s.bridge.wait_outbox_drained("mx", &s.alias).await;
    assert_eq!(s.bridge.terminate(), Some(0));
    s.bridge.restart();
    s.irc.wait_join(&s.nick, &s.channel).await;
    s.matrix.say(&room, "MARK-2").await;
    let seen = s.irc.texts_until(&s.channel, "MARK-2").await;
    assert_eq!(texts(&seen), vec![format!("<{alice}> MARK-2")]);
    s.irc.say(&s.channel, "MARK-3");
    let seen = s.matrix.messages_until(&room, "MARK-3").await;
    assert_eq!(
        bodies(&seen)
            .into_iter()
            .filter(|b| b.starts_with(&format!("<{ivan}>")))
            .collect::<Vec<_>>(),
        vec![format!("<{ivan}> MARK-3")]
    );
    // The stored session was reused: one login in all three starts.
    let logs = s.bridge.logs();
    assert_eq!(logs.matches("Logged in to Matrix.").count(), 1, "{logs}");
    assert_eq!(
        logs.matches("Matrix session restored.").count(),
        2,
        "{logs}"
    );
    let _ = (&s.synapse_url, s.irc_port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_restarted_mid_stream_the_bridge_reconnects_and_delivers_everything() {
    // A private homeserver: the other tests must not see it go away.
    let mut synapse = Synapse::start();
    let mut s = setup(&synapse).await;
    let room = s.room.clone();
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let ivan = s.irc.nick.clone();
    for n in 0..10 {
        s.matrix.say(&room, &format!("first {n}")).await;
        s.irc.say(&s.channel, &format!("irc first {n}"));
    }
    synapse.restart();
    // Right after the restart the bridge may still be reconnecting: what IRC says meanwhile
    // waits in the outbox, and the sync resumes where it stopped.
    for n in 0..10 {
        s.irc.say(&s.channel, &format!("irc second {n}"));
        s.matrix.say(&room, &format!("second {n}")).await;
    }
    s.matrix.say(&room, "MARK-M").await;
    s.irc.say(&s.channel, "MARK-I");
    let seen = s.irc.texts_until(&s.channel, "MARK-M").await;
    let mut expected: Vec<String> = (0..10).map(|n| format!("<{alice}> first {n}")).collect();
    expected.extend((0..10).map(|n| format!("<{alice}> second {n}")));
    expected.push(format!("<{alice}> MARK-M"));
    assert_eq!(texts(&seen), expected);
    let seen = s.matrix.messages_until(&room, "MARK-I").await;
    let mut expected: Vec<String> = (0..10).map(|n| format!("<{ivan}> irc first {n}")).collect();
    expected.extend((0..10).map(|n| format!("<{ivan}> irc second {n}")));
    expected.push(format!("<{ivan}> MARK-I"));
    let relayed: Vec<String> = bodies(&seen)
        .into_iter()
        .filter(|b| b.starts_with(&format!("<{ivan}>")))
        .collect();
    assert_eq!(relayed, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formatting_is_carried_both_ways() {
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    s.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "bold and italic and code",
                   "format": "org.matrix.custom.html",
                   "formatted_body": "<strong>bold</strong> and <em>italic</em> and <code>code</code>"}),
        )
        .await;
    let seen = s.irc.texts_until(&s.channel, "italic").await;
    // A code that runs to the end of the line is not closed.
    assert_eq!(
        texts(&seen),
        vec![format!(
            "<{alice}> \x02bold\x02 and \x1ditalic\x1d and \x11code"
        )]
    );
    s.irc
        .say(&s.channel, "\x02strong\x02 words and \x1dslanted\x1d ones");
    let bot_id = format!("@{}:localhost", s.bot);
    let seen: Vec<Event> = s
        .matrix
        .messages_until(&room, "slanted")
        .await
        .into_iter()
        .filter(|e| e.sender == bot_id)
        .collect();
    let ivan = s.irc.nick.clone();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(
        seen[0].body(),
        format!("<{ivan}> strong words and slanted ones")
    );
    assert_eq!(seen[0].content["format"], "org.matrix.custom.html");
    assert_eq!(
        seen[0].content["formatted_body"],
        format!("&lt;{ivan}&gt; <strong>strong</strong> words and <em>slanted</em> ones")
    );
}

/// A homeserver that limits the bot to a few messages a second: the bridge waits as long as
/// the server asks (`M_LIMIT_EXCEEDED`, `retry_after_ms`) and everything arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_honoured_and_nothing_is_lost_or_doubled() {
    let synapse = Synapse::start_with("\nrc_message: {per_second: 2, burst_count: 3}\n");
    let mut s = setup(&synapse).await;
    let room = s.room.clone();
    for n in 0..12 {
        s.irc.say(&s.channel, &format!("limited {n}"));
    }
    s.irc.say(&s.channel, "MARK");
    let bot_id = format!("@{}:localhost", s.bot);
    let seen: Vec<Event> = s
        .matrix
        .messages_until(&room, "MARK")
        .await
        .into_iter()
        .filter(|e| e.sender == bot_id)
        .collect();
    let ivan = s.irc.nick.clone();
    let mut expected: Vec<String> = (0..12).map(|n| format!("<{ivan}> limited {n}")).collect();
    expected.push(format!("<{ivan}> MARK"));
    assert_eq!(bodies(&seen), expected);
    let logs = s.bridge.logs();
    assert!(logs.contains("rate limited by the homeserver"), "{logs}");
}

/// An invite-only room: the bot says in the log that it cannot join, accepts the invite when it
/// comes, and relays from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_an_invite_only_room_when_invited_and_logs_why_it_could_not_before() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    register(&url, &bot, "password").await;
    let mut alice = MatrixUser::new(&url, &unique("alice")).await;
    let alias = unique("private");
    let room = alice.create_private_room(&alias).await;
    let channel = unique("#mx");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    alice.mark().await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                irc_network("irc", irc_port, &nick),
                matrix_network("mx", &url, &bot),
            ],
            &[("irc", &channel), ("mx", &format!("#{alias}:localhost"))],
        ),
    );
    irc.wait_join(&nick, &channel).await;
    bridge.wait_for_log("Cannot join Matrix room").await;
    let bot_id = format!("@{bot}:localhost");
    alice.invite(&room, &bot_id).await;
    wait_member_join(&mut alice, &room, &bot_id).await;
    irc.say(&channel, "now you are in");
    let seen: Vec<Event> = alice
        .messages_until(&room, "now you are in")
        .await
        .into_iter()
        .filter(|e| e.sender == bot_id)
        .collect();
    assert_eq!(
        bodies(&seen),
        vec![format!("<{}> now you are in", irc.nick)]
    );
    alice.say(&room, "welcome").await;
    let seen = irc.texts_until(&channel, "welcome").await;
    assert_eq!(seen.len(), 1);
}

/// A room the bot is put in from outside (a server admin's join, not a call of its own) while
/// its sync leaves out the bot's own events, its join among them: the room's earlier history
/// is still not relayed, and what is said from then on is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_the_admin_puts_the_bot_in_relays_what_follows_and_none_of_its_history() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    register(&url, &bot, "password").await;
    let admin = MatrixUser::new_admin(&url, &unique("admin")).await;
    let mut alice = MatrixUser::new(&url, &unique("alice")).await;
    let alias = unique("later");
    let channel = unique("#mx");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                irc_network("irc", irc_port, &nick),
                matrix_network("mx", &url, &bot),
            ],
            &[("irc", &channel), ("mx", &format!("#{alias}:localhost"))],
        ),
    );
    irc.wait_join(&nick, &channel).await;
    // The alias does not exist yet; the bot's next attempt of its own is a minute away.
    bridge.wait_for_log("Cannot join Matrix room").await;
    let room = alice.create_room(&alias).await;
    alice.say(&room, "said before the bot was there").await;
    let bot_id = format!("@{bot}:localhost");
    admin.force_join(&room, &bot_id).await;
    wait_member_join(&mut alice, &room, &bot_id).await;
    alice.say(&room, "said once it was in").await;
    let seen = irc.texts_until(&channel, "said once it was in").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    irc.say(&channel, "and back");
    let seen: Vec<Event> = alice
        .messages_until(&room, "and back")
        .await
        .into_iter()
        .filter(|e| e.sender == bot_id)
        .collect();
    assert_eq!(bodies(&seen), vec![format!("<{}> and back", irc.nick)]);
}

/// A Matrix message longer than three IRC lines arrives (by default) as its first three lines,
/// each with the sender and in order, and a line with a link to the whole message: without a
/// media endpoint, the message on Matrix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_matrix_message_reaches_irc_as_three_lines_and_a_link_to_it() {
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let mut long = String::new();
    for n in 0..250 {
        let _ = write!(long, "word{n} ");
    }
    long.push_str("END");
    let event = s.matrix.say(&room, &long).await;
    let seen = s.irc.texts_until(&s.channel, "more lines").await;
    assert_eq!(seen.len(), 4, "{seen:#?}");
    let prefix = format!("<{alice}> ");
    let pieces: Vec<String> = texts(&seen)
        .iter()
        .map(|line| {
            line.strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("no sender on {line:?}"))
                .to_owned()
        })
        .collect();
    let squeeze = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let shown = squeeze(&pieces[..3].join(" "));
    assert!(squeeze(&long).starts_with(&shown), "{shown}");
    let link = tribridge::richtext::long_text::matrix_event_permalink(&s.room, &event);
    assert!(
        pieces[3].starts_with("… (") && pieces[3].ends_with(&format!(" more lines: {link})")),
        "{}",
        pieces[3]
    );
}

/// Without a media endpoint configured, a file shared on Matrix reaches IRC as a line that
/// says what was shared, with its name, size and a link to the message on Matrix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_on_matrix_is_announced_on_irc_by_name_and_size() {
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let png = vec![0u8; 3 * 1024];
    let uri = s.matrix.upload("cat.png", "image/png", png).await;
    s.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.image", "body": "cat.png", "url": uri,
                   "info": {"mimetype": "image/png", "size": 3072}}),
        )
        .await;
    s.matrix.say(&room, "MARK").await;
    let seen = texts(&s.irc.texts_until(&s.channel, "MARK").await);
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Without a media endpoint the link goes to the message on Matrix.
    let announced = format!("<{alice}> shared an image: cat.png (3.0 KiB) https://matrix.to/#/");
    assert!(seen[0].starts_with(&announced), "{seen:?}");
    assert_eq!(seen[1], format!("<{alice}> MARK"));
}

/// The server forgets the bot's access token (as after an admin logout): the bridge logs in
/// again with its password, on the same device, and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_leads_to_a_new_login_on_the_same_device() {
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    let session_file = s.bridge.dir.join("state/matrix-mx/session.json");
    let session: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&session_file).unwrap()).unwrap();
    let token = session["access_token"].as_str().unwrap().to_owned();
    let device = session["device_id"].as_str().unwrap().to_owned();
    let response = reqwest::Client::new()
        .post(format!("{}/_matrix/client/v3/logout", s.synapse_url))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    s.irc.say(&s.channel, "after logout");
    let bot_id = format!("@{}:localhost", s.bot);
    let seen: Vec<Event> = s
        .matrix
        .messages_until(&room, "after logout")
        .await
        .into_iter()
        .filter(|e| e.sender == bot_id)
        .collect();
    assert_eq!(
        bodies(&seen),
        vec![format!("<{}> after logout", s.irc.nick)]
    );
    let session: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&session_file).unwrap()).unwrap();
    assert_eq!(session["device_id"].as_str(), Some(device.as_str()));
    assert_ne!(session["access_token"].as_str(), Some(token.as_str()));
    let logs = s.bridge.logs();
    assert_eq!(logs.matches("Logged in to Matrix.").count(), 2, "{logs}");
    s.matrix.say(&room, "still here").await;
    let seen = s.irc.texts_until(&s.channel, "still here").await;
    assert_eq!(seen.len(), 1);
}

/// Regression: a fresh password login whose response names another homeserver (`well_known`,
/// which Synapse fills from `public_baseurl`) does not move the bridge off the configured one:
/// the SDK adopted it, and every request after the login went to an address that does not
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_response_naming_another_homeserver_does_not_move_the_bridge() {
    let synapse = Synapse::start_with("\npublic_baseurl: \"http://127.0.0.1:9/\"\n");
    let url = synapse.url();
    let probe = unique("probe");
    register(&url, &probe, "password").await;
    let reply: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password",
                      "identifier": {"type": "m.id.user", "user": probe},
                      "password": "password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        reply["well_known"]["m.homeserver"]["base_url"], "http://127.0.0.1:9/",
        "{reply}"
    );
    // The bridge logs in with its password and joins (the fixture waits for the join).
    let mut s = setup(&synapse).await;
    let room = s.room.clone();
    s.matrix.say(&room, "on the configured server").await;
    assert_eq!(
        texts(
            &s.irc
                .texts_until(&s.channel, "on the configured server")
                .await
        ),
        vec![format!(
            "<{}> on the configured server",
            local_part(&s.matrix.user_id)
        )]
    );
    s.irc.say(&s.channel, "and back");
    let seen = s.matrix.messages_until(&room, "and back").await;
    assert_eq!(
        bodies(&seen).last().map(String::as_str),
        Some(format!("<{}> and back", s.irc.nick).as_str())
    );
    // Not even for a moment: the first session was never lost to the other address.
    let logs = s.bridge.logs();
    assert!(!logs.contains("connection lost"), "{logs}");
    assert!(!logs.contains("127.0.0.1:9"), "{logs}");
}

/// With the media endpoint configured, an image posted on Matrix reaches IRC as a link that
/// serves the file (copied from Synapse's authenticated download); a changed link is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_on_matrix_reaches_irc_as_a_working_signed_link() {
    let port = crate::support::servers::free_port();
    let general = format!(
        "media_listen = \"127.0.0.1:{port}\"\nmedia_public_url = \"http://127.0.0.1:{port}/media\"\n"
    );
    let mut s = setup_full(shared_synapse(), &general, "").await;
    let room = s.room.clone();
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let picture: Vec<u8> = (0..4096u32).map(|n| (n % 251) as u8).collect();
    let uri = s
        .matrix
        .upload("cat.png", "image/png", picture.clone())
        .await;
    s.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.image", "body": "cat.png", "url": uri,
                   "info": {"mimetype": "image/png", "size": 4096}}),
        )
        .await;
    let seen = s.irc.texts_until(&s.channel, "cat.png").await;
    let announced = texts(&seen).pop().unwrap();
    let prefix =
        format!("<{alice}> shared an image: cat.png (4.0 KiB) http://127.0.0.1:{port}/media/");
    assert!(announced.starts_with(&prefix), "{announced}");
    let link = announced.rsplit(' ').next().unwrap().to_owned();
    assert!(link.ends_with("/cat.png"), "{link}");
    let http = reqwest::Client::new();
    let response = http.get(&link).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.bytes().await.unwrap().to_vec(), picture);
    // A link whose signature was changed is refused.
    let mut segments: Vec<&str> = link.rsplitn(3, '/').collect();
    let forged_signature = "0".repeat(segments[1].len());
    segments[1] = &forged_signature;
    segments.reverse();
    let forged = segments.join("/");
    assert_ne!(forged, link);
    assert_eq!(http.get(&forged).send().await.unwrap().status(), 403);
}

/// With `relay_membership`, joins, leaves and topic changes in the Matrix room are told on IRC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_topic_changes_are_relayed_when_enabled() {
    let synapse = shared_synapse();
    let mut s = setup_with(synapse, "relay_membership = true\n\n").await;
    let room = s.room.clone();
    let alias = s.alias.clone();
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    let bob_name = unique("bob");
    let bob = MatrixUser::new(&synapse.url(), &bob_name).await;
    bob.join(&room).await;
    s.matrix.set_topic(&room, "bridged topic").await;
    bob.leave(&room).await;
    s.matrix.say(&room, "MARK").await;
    let seen = s.irc.texts_until(&s.channel, "MARK").await;
    assert_eq!(
        texts(&seen),
        vec![
            format!("[mx] {bob_name} joined {alias}"),
            format!("[mx] {alice} changed the topic to: bridged topic"),
            format!("[mx] {bob_name} left {alias}"),
            format!("<{alice}> MARK"),
        ]
    );
}

/// More messages while the bridge is down than one sync returns per room: the `limited`
/// timeline is completed with `/messages`, and all of them reach IRC once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_one_sync_timeline_is_filled_after_restart() {
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    let alice = s
        .matrix
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    s.matrix.say(&room, "before").await;
    s.irc.texts_until(&s.channel, "before").await;
    s.bridge.wait_outbox_drained("irc", &s.channel).await;
    assert_eq!(s.bridge.terminate(), Some(0));
    for n in 0..150 {
        s.matrix.say(&room, &format!("gap {n}")).await;
    }
    s.matrix.say(&room, "MARK").await;
    s.bridge.restart();
    s.irc.wait_join(&s.nick, &s.channel).await;
    let seen = s.irc.texts_until(&s.channel, "MARK").await;
    let mut expected: Vec<String> = (0..150).map(|n| format!("<{alice}> gap {n}")).collect();
    expected.push(format!("<{alice}> MARK"));
    assert_eq!(texts(&seen), expected);
    assert!(
        s.bridge
            .logs()
            .contains("Fetched messages a limited sync left out."),
        "{}",
        s.bridge.logs()
    );
}

/// Threads stay threads: a Matrix thread becomes a Mattermost thread under the relayed root, a
/// Mattermost thread reply becomes an `m.thread` event under the Matrix root, and IRC, which has
/// no threads, shows thread messages like replies (the text alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_stay_threads_between_matrix_and_mattermost() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    register(&url, &bot, "password").await;
    let mut alice = MatrixUser::new(&url, &unique("alice")).await;
    let alice_name = local_part(&alice.user_id);
    let alias_name = unique("room");
    let room = alice.create_room(&alias_name).await;
    let channel = unique("#mx");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let mm = MmServer::start("civi").await;
    let town = mm.channel("town").await;
    let mia = mm.user("mia", &town).await;
    alice.mark().await;
    let dir = tempfile::tempdir().unwrap();
    let _bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                irc_network("irc", irc_port, &nick),
                matrix_network("mx", &url, &bot),
                mm.network("mm", ""),
            ],
            &[
                ("irc", &channel),
                ("mx", &format!("#{alias_name}:localhost")),
                ("mm", "town"),
            ],
        ),
    );
    irc.wait_join(&nick, &channel).await;
    let bot_id = format!("@{bot}:localhost");
    wait_member_join(&mut alice, &room, &bot_id).await;
    mm.wait_bot_member(&town).await;

    let root_event = alice.say(&room, "thread root").await;
    let relayed = |text: &'static str| {
        let expected = format!("<{alice_name}> {text}");
        move |posts: &[serde_json::Value]| {
            crate::support::mattermost::messages(posts).contains(&expected)
        }
    };
    let posts = mia
        .wait_posts_by(&town, &mm.bot_id, relayed("thread root"))
        .await;
    let root_post = find(&posts, &format!("<{alice_name}> thread root"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Matrix thread (with the reply fallback a thread-aware client adds) → Mattermost thread.
    alice
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "in the thread",
                   "m.relates_to": {"rel_type": "m.thread", "event_id": root_event,
                       "is_falling_back": true, "m.in_reply_to": {"event_id": root_event}}}),
        )
        .await;
    let posts = mia
        .wait_posts_by(&town, &mm.bot_id, relayed("in the thread"))
        .await;
    let threaded = find(&posts, &format!("<{alice_name}> in the thread"));
    assert_eq!(threaded["root_id"], root_post.as_str());
    assert_eq!(
        find(&posts, &format!("<{alice_name}> thread root"))["root_id"],
        ""
    );

    // Mattermost thread reply → `m.thread` under alice's own root event.
    mia.reply(&town, &root_post, "answer from mattermost").await;
    let events = alice.messages_until(&room, "answer from mattermost").await;
    let answer = events
        .iter()
        .find(|e| e.body().ends_with("answer from mattermost"))
        .unwrap();
    assert_eq!(answer.sender, bot_id);
    let relation = &answer.content["m.relates_to"];
    assert_eq!(relation["rel_type"], "m.thread", "{relation}");
    assert_eq!(relation["event_id"], root_event.as_str());
    assert_eq!(relation["is_falling_back"], true);
    assert_eq!(relation["m.in_reply_to"]["event_id"], root_event.as_str());

    let seen = irc.texts_until(&channel, "answer from mattermost").await;
    assert_eq!(
        texts(&seen),
        vec![
            format!("<{alice_name}> thread root"),
            format!("<{alice_name}> {alice_name}: in the thread"),
            format!("<mia> {alice_name}: answer from mattermost"),
        ]
    );
}

/// The texts said in `channel` up to the one containing `marker`, leaving other channels' lines
/// for later calls.
async fn texts_in_until(irc: &mut IrcClient, channel: &str, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = irc
            .wait_for(
                |l| {
                    l.text()
                        .is_some_and(|(target, _)| target.eq_ignore_ascii_case(channel))
                },
                Duration::from_mins(1),
            )
            .await
            .unwrap_or_else(|| panic!("{marker:?} not seen in {channel}; saw {seen:#?}"));
        let text = line
            .text()
            .map(|(_, text)| text.to_owned())
            .unwrap_or_default();
        let done = text.contains(marker);
        seen.push(text);
        if done {
            return seen;
        }
    }
}

/// One Matrix room linked to three IRC channels by three gateways, one per `edit_policy`: a
/// Matrix edit shows as the corrected text (the default), as a short diff against the text it
/// replaces (the previous edit's, for a second edit), or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_edits_reach_irc_per_the_gateway_edit_policy() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    register(&url, &bot, "password").await;
    let mut alice = MatrixUser::new(&url, &unique("alice")).await;
    let alice_name = local_part(&alice.user_id);
    let alias = unique("edits");
    let room = alice.create_room(&alias).await;
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    let mut gateways = String::new();
    let mut channels = Vec::new();
    for policy in ["corrected", "diff", "off"] {
        let channel = unique("#ed");
        irc.join(&channel).await;
        let _ = write!(
            gateways,
            "[[gateway]]\nname = \"{policy}\"\nedit_policy = \"{policy}\"\nchannels = [\n  \
             {{ network = \"irc\", channel = \"{channel}\" }},\n  \
             {{ network = \"mx\", channel = \"#{alias}:localhost\" }},\n]\n"
        );
        channels.push(channel);
    }
    alice.mark().await;
    let dir = tempfile::tempdir().unwrap();
    let _bridge = Bridge::start(
        dir.path(),
        &format!(
            "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}{}{gateways}",
            irc_network("irc", irc_port, &nick),
            matrix_network("mx", &url, &bot)
        ),
    );
    for channel in &channels {
        irc.wait_join(&nick, channel).await;
    }
    wait_member_join(&mut alice, &room, &format!("@{bot}:localhost")).await;

    let original = alice.say(&room, "this is teh best message we had").await;
    for channel in &channels {
        texts_in_until(&mut irc, channel, "best message").await;
    }
    for new_text in [
        "this is the best message we had",
        "this is the best message we ever had",
    ] {
        alice
            .send_event(
                &room,
                "m.room.message",
                json!({"msgtype": "m.text", "body": format!("* {new_text}"),
                       "m.new_content": {"msgtype": "m.text", "body": new_text},
                       "m.relates_to": {"rel_type": "m.replace", "event_id": original}}),
            )
            .await;
    }
    alice.say(&room, "MARK").await;
    let seen: Vec<Vec<String>> = {
        let mut seen = Vec::new();
        for channel in &channels {
            seen.push(texts_in_until(&mut irc, channel, "MARK").await);
        }
        seen
    };
    let said = |text: &str| format!("<{alice_name}> {text}");
    assert_eq!(
        seen,
        vec![
            vec![
                said("* this is the best message we had"),
                said("* this is the best message we ever had"),
                said("MARK"),
            ],
            vec![
                said("* s/teh/the/"),
                said("* s/we /we ever /"),
                said("MARK")
            ],
            vec![said("MARK")],
        ]
    );
}

/// After an outage, a message delivered later than the gateway's `original_time_after` shows
/// the time it was said (on IRC and in another Matrix room, which also gets the original time
/// in the event); messages relayed promptly do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_delivered_late_show_when_they_were_said() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    let bot_id = format!("@{bot}:localhost");
    register(&url, &bot, "password").await;
    let mut alice = MatrixUser::new(&url, &unique("alice")).await;
    let mut bob = MatrixUser::new(&url, &unique("bob")).await;
    let alice_name = local_part(&alice.user_id);
    let alias_a = unique("latea");
    let alias_b = unique("lateb");
    let room_a = alice.create_room(&alias_a).await;
    let room_b = bob.create_room(&alias_b).await;
    let channel = unique("#late");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    alice.mark().await;
    bob.mark().await;
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &format!(
            "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}{}\
             [[gateway]]\nname = \"g\"\noriginal_time_after = 2\nchannels = [\n  \
             {{ network = \"irc\", channel = \"{channel}\" }},\n  \
             {{ network = \"mx\", channel = \"#{alias_a}:localhost\" }},\n  \
             {{ network = \"mx\", channel = \"#{alias_b}:localhost\" }},\n]\n",
            irc_network("irc", irc_port, &nick),
            matrix_network("mx", &url, &bot)
        ),
    );
    irc.wait_join(&nick, &channel).await;
    wait_member_join(&mut alice, &room_a, &bot_id).await;
    wait_member_join(&mut bob, &room_b, &bot_id).await;
    alice.say(&room_a, "prompt before").await;
    irc.texts_until(&channel, "prompt before").await;
    bob.messages_until(&room_b, "prompt before").await;
    bridge.wait_outbox_drained("irc", &channel).await;
    assert_eq!(bridge.terminate(), Some(0));

    let said_from = tribridge::model::now_ms();
    alice.say(&room_a, "said while down").await;
    let said_until = tribridge::model::now_ms();
    // The condition under test is time itself: the bridge comes back more than
    // `original_time_after` (2 s) after the message was said.
    tokio::time::sleep_until(
        tokio::time::Instant::now()
            + Duration::from_millis(u64::try_from(said_until + 3_000 - said_from).unwrap()),
    )
    .await;
    bridge.restart();
    irc.wait_join(&nick, &channel).await;
    // The homeserver's clock is this machine's: the time shown is the minute it was said in.
    let shown = |text: &str| {
        [said_from, said_until]
            .map(|ms| {
                format!(
                    "<{alice_name}> [{}] {text}",
                    tribridge::connector::utc_minute(ms)
                )
            })
            .to_vec()
    };
    let seen = texts(&irc.texts_until(&channel, "said while down").await);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(shown("said while down").contains(&seen[0]), "{seen:?}");
    let late = bob.messages_until(&room_b, "said while down").await;
    let late = late.last().unwrap();
    assert!(
        shown("said while down").contains(&late.body().to_owned()),
        "{}",
        late.body()
    );
    let original = late.content["tribridge.original_ts"].as_i64().unwrap();
    assert!((said_from..=said_until).contains(&original), "{original}");

    alice.say(&room_a, "prompt after").await;
    assert_eq!(
        texts(&irc.texts_until(&channel, "prompt after").await),
        vec![format!("<{alice_name}> prompt after")]
    );
    let prompt = bob.messages_until(&room_b, "prompt after").await;
    let prompt = prompt.last().unwrap();
    assert_eq!(prompt.body(), format!("<{alice_name}> prompt after"));
    assert!(prompt.content.get("tribridge.original_ts").is_none());
}

/// An encrypted room: a person on an end-to-end capable client (matrix-sdk with its crypto
/// store) and an IRC user talk through the bridge, which decrypts what it reads and encrypts
/// what it writes (sharing its room keys with every device in the room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_is_bridged_both_ways() {
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::ruma::api::client::room::create_room;
    use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
    use matrix_sdk::ruma::events::{
        AnySyncMessageLikeEvent, AnySyncTimelineEvent, InitialStateEvent, SyncMessageLikeEvent,
    };

    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot");
    let bot_id = matrix_sdk::ruma::UserId::parse(format!("@{bot}:localhost")).unwrap();
    register(&url, &bot, "password").await;
    let alice = unique("alice");
    register(&url, &alice, "password").await;
    let alice_dir = tempfile::tempdir().unwrap();
    let client = matrix_sdk::Client::builder()
        .homeserver_url(&url)
        .sqlite_store(alice_dir.path(), None)
        .build()
        .await
        .unwrap();
    client
        .matrix_auth()
        .login_username(&alice, "password")
        .send()
        .await
        .unwrap();
    let alias_name = unique("secret");
    let mut request = create_room::v3::Request::new();
    request.room_alias_name = Some(alias_name.clone());
    request.preset = Some(create_room::v3::RoomPreset::PublicChat);
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = client.create_room(request).await.unwrap();
    let mut settings = SyncSettings::default().timeout(Duration::from_secs(2));
    let response = client.sync_once(settings.clone()).await.unwrap();
    settings = settings.token(response.next_batch);

    let channel = unique("#secret");
    let nick = unique("brmx");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let dir = tempfile::tempdir().unwrap();
    let media_port = crate::support::servers::free_port();
    let _bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                irc_network("irc", irc_port, &nick),
                matrix_network("mx", &url, &bot),
            ],
            &[
                ("irc", &channel),
                ("mx", &format!("#{alias_name}:localhost")),
            ],
        )
        .replacen(
            "\n\n",
            &format!(
                "\nmedia_listen = \"127.0.0.1:{media_port}\"\n\
                 media_public_url = \"http://127.0.0.1:{media_port}/media\"\n\n"
            ),
            1,
        ),
    );
    irc.wait_join(&nick, &channel).await;
    // Alice's client learns that the bot joined, so that it shares the room key with it.
    settings =
        crate::support::matrix_client::sync_until_joined(&client, &room, &bot_id, settings).await;
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted());

    room.send(RoomMessageEventContent::text_plain("secret hello"))
        .await
        .unwrap();
    assert_eq!(
        texts(&irc.texts_until(&channel, "secret hello").await),
        vec![format!("<{alice}> secret hello")]
    );
    // A file in the encrypted room (encrypted with its own key) is decrypted and copied: the
    // IRC link serves the original bytes.
    let notes = b"encrypted notes\n".repeat(10);
    room.send_attachment(
        "notes.txt",
        &mime::TEXT_PLAIN,
        notes.clone(),
        matrix_sdk::attachment::AttachmentConfig::new(),
    )
    .await
    .unwrap();
    let seen = texts(&irc.texts_until(&channel, "notes.txt").await);
    let prefix =
        format!("<{alice}> shared a file: notes.txt (160 B) http://127.0.0.1:{media_port}/media/");
    assert!(
        seen.last().is_some_and(|l| l.starts_with(&prefix)),
        "{seen:?}"
    );
    let link = seen.last().unwrap().rsplit(' ').next().unwrap().to_owned();
    let served = reqwest::get(&link).await.unwrap().bytes().await.unwrap();
    assert_eq!(served.to_vec(), notes);

    irc.say(&channel, "hello back");
    let expected = format!("<{}> hello back", irc.nick);
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    loop {
        let response = client.sync_once(settings.clone()).await.unwrap();
        settings = settings.token(response.next_batch.clone());
        let found = response
            .rooms
            .joined
            .get(room.room_id())
            .into_iter()
            .flat_map(|update| &update.timeline.events)
            .find_map(|event| match event.raw().deserialize() {
                Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                    SyncMessageLikeEvent::Original(message),
                ))) if message.content.body().contains("hello back") => Some((
                    message.content.body().to_owned(),
                    event.encryption_info().is_some(),
                )),
                _ => None,
            });
        if let Some((body, encrypted)) = found {
            assert_eq!(body, expected);
            assert!(encrypted, "the bridge's message was sent in the clear");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reply in the encrypted room"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_bridge_instance_in_the_room_under_other_accounts_doubles_only_the_first_message()
{
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    // Another instance of the bridge on the same pair, with its own Matrix and IRC accounts;
    // both sort after the first one's, so it is the one that steps back.
    let bot_b = format!("{}z", s.bot);
    register(&s.synapse_url, &bot_b, "password").await;
    let nick_b = format!("{}z", s.nick);
    let dir_b = tempfile::tempdir().unwrap();
    let bridge_b = Bridge::start(
        dir_b.path(),
        &config(
            &[
                irc_network("irc", s.irc_port, &nick_b),
                matrix_network("mx", &s.synapse_url, &bot_b),
            ],
            &[("irc", &s.channel), ("mx", &s.alias)],
        ),
    );
    s.irc.wait_member(&nick_b, &s.channel).await;
    wait_member_join(&mut s.matrix, &room, &format!("@{bot_b}:localhost")).await;

    // The meeting messages, one each way.
    s.irc.say(&s.channel, "hello from irc");
    s.matrix.say(&room, "hello from matrix").await;
    for destination in ["destination=mx/", "destination=irc/"] {
        bridge_b
            .wait_for_log_line(&["Leaving this route to the other bridge", destination])
            .await;
    }
    let mut lines = s.irc.texts_until(&s.channel, "hello from matrix").await;
    for i in 1..=10 {
        s.irc.say(&s.channel, &format!("irc says {i}"));
        s.matrix.say(&room, &format!("matrix says {i}")).await;
    }
    lines.extend(s.irc.texts_until(&s.channel, "matrix says 10").await);
    s.matrix.messages_until(&room, "irc says 10").await;
    for bridge in [&s.bridge, &bridge_b] {
        bridge.wait_outbox_drained("mx", &s.alias).await;
        bridge.wait_outbox_drained("irc", &s.channel).await;
    }
    lines.extend(s.irc.drain());
    let irc = texts(&lines);
    let matrix = bodies(&s.matrix.history(&room).await);
    // Shown as relayed once (`<alice> text`); nothing relayed back (`<b> <alice> text`).
    let count = crate::support::relayed_once;
    // The meeting messages: twice, or once when the other bridge's copy came first.
    assert!(
        (1..=2).contains(&count(&matrix, "hello from irc")),
        "{matrix:#?}"
    );
    assert!(
        (1..=2).contains(&count(&irc, "hello from matrix")),
        "{irc:#?}"
    );
    for i in 1..=10 {
        assert_eq!(count(&matrix, &format!("irc says {i}")), 1, "{matrix:#?}");
        assert_eq!(count(&irc, &format!("matrix says {i}")), 1, "{irc:#?}");
    }
    for text in matrix.iter().chain(&irc) {
        assert!(
            !text.contains(" says ") || tribridge::loop_breaker::relay_depth(text) <= 1,
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridge_instances_told_of_each_other_show_every_message_once_even_the_first() {
    let url = shared_synapse().url();
    let irc_port = shared_inspircd().port;
    // `unique` keeps the order of its prefixes: A's accounts sort first on both networks.
    let (bot_a, bot_b) = (unique("bka"), unique("bkb"));
    let (nick_a, nick_b) = (unique("brka"), unique("brkb"));
    register(&url, &bot_a, "password").await;
    register(&url, &bot_b, "password").await;
    let mut matrix = MatrixUser::new(&url, &unique("alice")).await;
    let alias_name = unique("room");
    let room = matrix.create_room(&alias_name).await;
    let alias = format!("#{alias_name}:localhost");
    let channel = unique("#mxk");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    // Synced past (as in `setup`): later reads start here.
    matrix.say(&room, "said before the bridges existed").await;
    matrix.mark().await;
    // Each told of the other's Matrix user id and IRC nick.
    let bridge_config = |nick: &str, bot: &str, other_nick: &str, other_bot: &str| {
        config(
            &[
                irc_network("irc", irc_port, nick).replacen(
                    "\n\n",
                    &format!("\nparallel_bridges = [\"{other_nick}\"]\n\n"),
                    1,
                ),
                matrix_network("mx", &url, bot).replacen(
                    "\n\n",
                    &format!("\nparallel_bridges = [\"@{other_bot}:localhost\"]\n\n"),
                    1,
                ),
            ],
            &[("irc", &channel), ("mx", &alias)],
        )
    };
    let dir_a = tempfile::tempdir().unwrap();
    let bridge_a = Bridge::start(
        dir_a.path(),
        &bridge_config(&nick_a, &bot_a, &nick_b, &bot_b),
    );
    let dir_b = tempfile::tempdir().unwrap();
    let bridge_b = Bridge::start(
        dir_b.path(),
        &bridge_config(&nick_b, &bot_b, &nick_a, &bot_a),
    );
    irc.wait_join(&nick_a, &channel).await;
    irc.wait_member(&nick_b, &channel).await;
    // Both joins, read in one go (one sync may carry both).
    let bots = [format!("@{bot_a}:localhost"), format!("@{bot_b}:localhost")];
    matrix
        .events_until(&room, Duration::from_mins(1), |events| {
            bots.iter().all(|bot| {
                events.iter().any(|e| {
                    e.kind == "m.room.member"
                        && e.content["membership"] == "join"
                        && e.sender == *bot
                })
            })
        })
        .await;

    // The very first message each way: B holds it until A's copy comes, then steps back.
    irc.say(&channel, "hello from irc");
    matrix.say(&room, "hello from matrix").await;
    for destination in ["destination=mx/", "destination=irc/"] {
        bridge_b
            .wait_for_log_line(&["Leaving this route to the other bridge", destination])
            .await;
    }
    let mut lines = irc.texts_until(&channel, "hello from matrix").await;
    for i in 1..=5 {
        irc.say(&channel, &format!("irc says {i}"));
        matrix.say(&room, &format!("matrix says {i}")).await;
    }
    lines.extend(irc.texts_until(&channel, "matrix says 5").await);
    matrix.messages_until(&room, "irc says 5").await;
    for bridge in [&bridge_a, &bridge_b] {
        bridge.wait_outbox_drained("mx", &alias).await;
        bridge.wait_outbox_drained("irc", &channel).await;
    }
    // A last message each way after both outboxes are empty: what came before it is in.
    irc.say(&channel, "irc end");
    matrix.say(&room, "matrix end").await;
    lines.extend(irc.texts_until(&channel, "matrix end").await);
    matrix.messages_until(&room, "irc end").await;
    lines.extend(irc.drain());
    let irc_texts = texts(&lines);
    let matrix_texts = bodies(&matrix.history(&room).await);
    let count = crate::support::relayed_once;
    let mut from_irc = vec!["hello from irc".to_owned(), "irc end".to_owned()];
    let mut from_matrix = vec!["hello from matrix".to_owned(), "matrix end".to_owned()];
    for i in 1..=5 {
        from_irc.push(format!("irc says {i}"));
        from_matrix.push(format!("matrix says {i}"));
    }
    for text in &from_irc {
        assert_eq!(count(&matrix_texts, text), 1, "{text}: {matrix_texts:#?}");
    }
    for text in &from_matrix {
        assert_eq!(count(&irc_texts, text), 1, "{text}: {irc_texts:#?}");
    }
    for text in matrix_texts.iter().chain(&irc_texts) {
        assert!(tribridge::loop_breaker::relay_depth(text) <= 1, "{text}");
    }
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
}

/// A crash after a send reached Synapse but before the store recorded it, followed by a start
/// on a new Matrix device (the session was lost, or another instance took over): Synapse does
/// not know the transaction id from that device, so only the bridge's read-back of its own
/// events keeps the message from showing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_not_recorded_before_a_crash_is_not_doubled_by_a_new_device() {
    let mut s = setup(shared_synapse()).await;
    let room = s.room.clone();
    let ivan = s.irc.nick.clone();
    s.irc.say(&s.channel, "ONCE-1");
    let seen = s.matrix.messages_until(&room, "ONCE-1").await;
    let first: Vec<&Event> = seen
        .iter()
        .filter(|e| e.body().contains("ONCE-1"))
        .collect();
    assert_eq!(first.len(), 1, "{:?}", bodies(&seen));
    let event_id = first[0].event_id.clone();
    s.bridge.wait_outbox_drained("mx", &s.alias).await;
    assert_eq!(s.bridge.terminate(), Some(0));

    // The state a crash between the send and its record leaves: the delivery pending again,
    // no mapping of the event; and no Matrix session, so the next start is a new device.
    let state = s.bridge.dir.join("state");
    let delivery_id = {
        let db = rusqlite::Connection::open(state.join("tribridge.sqlite3")).unwrap();
        let (delivery_id, message_id, channel): (String, i64, String) = db
            .query_row(
                "SELECT delivery_id, message_id, channel FROM deliveries
                 WHERE network = 'mx' AND remote_id = ?1",
                [&event_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        db.execute(
            "DELETE FROM deliveries WHERE delivery_id = ?1",
            [&delivery_id],
        )
        .unwrap();
        db.execute(
            "DELETE FROM mappings WHERE network = 'mx' AND remote_id = ?1",
            [&event_id],
        )
        .unwrap();
        db.execute(
            "INSERT INTO outbox (delivery_id, message_id, network, channel, gateway)
             VALUES (?1, ?2, 'mx', ?3, 'g')",
            rusqlite::params![delivery_id, message_id, channel],
        )
        .unwrap();
        delivery_id
    };
    std::fs::remove_dir_all(state.join("matrix-mx")).unwrap();

    s.bridge.restart();
    s.irc.wait_join(&s.nick, &s.channel).await;
    s.irc.say(&s.channel, "ONCE-2");
    let seen = s.matrix.messages_until(&room, "ONCE-2").await;
    assert_eq!(
        bodies(&seen),
        vec![format!("<{ivan}> ONCE-2")],
        "the message pending at the start was sent again"
    );
    let history: Vec<String> = bodies(&s.matrix.history(&room).await)
        .into_iter()
        .filter(|b| b.contains("ONCE-"))
        .collect();
    assert_eq!(
        history,
        vec![format!("<{ivan}> ONCE-1"), format!("<{ivan}> ONCE-2")]
    );
    // The delivery is complete, with the event found in the room.
    s.bridge.wait_outbox_drained("mx", &s.alias).await;
    let db = rusqlite::Connection::open(state.join("tribridge.sqlite3")).unwrap();
    let remote: Option<String> = db
        .query_row(
            "SELECT remote_id FROM deliveries WHERE delivery_id = ?1",
            [&delivery_id],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(remote.as_deref(), Some(event_id.as_str()));
    let logs = s.bridge.logs();
    assert_eq!(logs.matches("Logged in to Matrix.").count(), 2, "{logs}");
    assert_eq!(
        logs.matches("completed without sending it again").count(),
        1,
        "{logs}"
    );
    let _ = (&s.synapse_url, s.irc_port, &s.bot);
}
