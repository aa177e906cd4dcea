//! IRC puppets (`puppets = true`) through the real daemon, a real `InspIRCd`, a real Synapse and
//! the Mattermost emulator: every Matrix and Mattermost person who speaks is a nick of their
//! own on IRC (`dave[m]`, `erin[mm]`), once per line, in order, never echoed back; collisions,
//! renames, idle quits, `max_puppets`, private messages to a puppet and a SIGKILL of the daemon.

use std::time::Duration;

use crate::support::bridge::{Bridge, unique};
use crate::support::config::{irc_network, matrix_network, one_gateway as config};
use crate::support::irc_client::{DEADLINE, IrcClient, Line};
use crate::support::matrix_client::{MatrixUser, local_part, register};
use crate::support::mattermost::MmServer;
use crate::support::servers::{shared_inspircd, shared_synapse};

/// A Matrix room with dave in it, an IRC channel with ivan in it, optionally a Mattermost
/// channel, and the bridge with puppets on.
struct Setup {
    synapse_url: String,
    irc_port: u16,
    nick: String,
    bot_id: String,
    room: String,
    channel: String,
    dave: MatrixUser,
    irc: IrcClient,
    mm: Option<(MmServer, String)>,
    bridge: Bridge,
    _dir: tempfile::TempDir,
}

async fn setup(puppet_keys: &str, with_mattermost: bool) -> Setup {
    setup_with(puppet_keys, with_mattermost, "").await
}

/// Like [`setup`], with `mx_keys` in the Matrix network.
async fn setup_with(puppet_keys: &str, with_mattermost: bool, mx_keys: &str) -> Setup {
    setup_on(puppet_keys, with_mattermost, mx_keys, false).await
}

/// Like [`setup_with`]; with `tls`, the bridge (bot and puppets) connects to the server's TLS
/// port, trusting the test CA through `tls_ca_file`.
async fn setup_on(puppet_keys: &str, with_mattermost: bool, mx_keys: &str, tls: bool) -> Setup {
    let synapse = shared_synapse();
    let url = synapse.url();
    let server = shared_inspircd();
    let irc_port = server.port;
    let bot = unique("botp");
    register(&url, &bot, "password").await;
    let mut dave = MatrixUser::new(&url, &unique("dave")).await;
    let alias_name = unique("roomp");
    let room = dave.create_room(&alias_name).await;
    dave.mark().await;
    let channel = unique("#pup");
    let nick = unique("brp");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let mut irc_keys = irc_network("irc", irc_port, &nick);
    if tls {
        irc_keys = irc_keys.replace(
            &format!("127.0.0.1:{irc_port}\"\ntls = false"),
            &format!(
                "127.0.0.1:{}\"\ntls_ca_file = \"{}\"",
                server.tls_port,
                server.tls.ca.display()
            ),
        );
    }
    let mut networks = vec![
        irc_keys + "puppets = true\n" + puppet_keys + "\n",
        matrix_network("mx", &url, &bot) + mx_keys + "\n",
    ];
    let alias = format!("#{alias_name}:localhost");
    let mut channels = vec![("irc", channel.as_str()), ("mx", alias.as_str())];
    let mm = if with_mattermost {
        let server = MmServer::start("pups").await;
        let channel_id = server.channel("town").await;
        networks.push(server.network("mm", ""));
        Some((server, channel_id))
    } else {
        None
    };
    if mm.is_some() {
        channels.push(("mm", "town"));
    }
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(dir.path(), &config(&networks, &channels));
    irc.wait_join(&nick, &channel).await;
    let bot_id = format!("@{bot}:localhost");
    dave.events_until(&room, Duration::from_mins(1), |events| {
        events.iter().any(|e| {
            e.kind == "m.room.member" && e.content["membership"] == "join" && e.sender == bot_id
        })
    })
    .await;
    if let Some((server, channel_id)) = &mm {
        server.wait_bot_member(channel_id).await;
    }
    Setup {
        synapse_url: url,
        irc_port,
        nick,
        bot_id,
        room,
        channel,
        dave,
        irc,
        mm,
        bridge,
        _dir: dir,
    }
}

impl Setup {
    /// Another Matrix person in the room.
    async fn matrix_person(&self, name: &str) -> MatrixUser {
        let person = MatrixUser::new(&self.synapse_url, &unique(name)).await;
        person.join(&self.room).await;
        person
    }
}

/// The Matrix person's nick as a puppet with the default format.
fn puppet_of(user: &MatrixUser) -> String {
    format!("{}[m]", local_part(&user.user_id))
}

/// `(sender, text)` of the PRIVMSG lines.
fn said(lines: &[Line]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| l.command == "PRIVMSG")
        .filter_map(|l| l.text().map(|(_, t)| (l.source_nick.clone(), t.to_owned())))
        .collect()
}

fn pair(nick: &str, text: &str) -> (String, String) {
    (nick.to_owned(), text.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_and_mattermost_people_speak_as_their_own_nicks_once_in_order() {
    let mut s = setup("", true).await;
    let room = s.room.clone();
    let dave = puppet_of(&s.dave);
    let (mm, channel_id) = s.mm.take().unwrap();
    let erin_name = unique("erin");
    let erin = mm.user(&erin_name, &channel_id).await;
    let erin_nick = format!("{erin_name}[mm]");

    s.irc.say(&s.channel, "ivan first");
    s.dave.say(&room, "dave one").await;
    s.dave.send_message(&room, "m.emote", "waves").await;
    s.dave.say(&room, "dave two").await;
    let seen = s.irc.texts_until(&s.channel, "dave two").await;
    assert_eq!(
        said(&seen),
        vec![
            pair(&dave, "dave one"),
            pair(&dave, "\x01ACTION waves\x01"),
            pair(&dave, "dave two"),
        ]
    );
    erin.say(&channel_id, "erin one").await;
    let seen = s.irc.texts_until(&s.channel, "erin one").await;
    assert_eq!(said(&seen), vec![pair(&erin_nick, "erin one")]);
    s.dave.say(&room, "dave three").await;
    erin.say(&channel_id, "erin two").await;
    let mut seen = s
        .irc
        .texts_until_all(&s.channel, &["dave three", "erin two"])
        .await;
    // Nothing more comes: every line once, none from the bot.
    s.irc.say(&s.channel, "ivan last");
    s.dave.say(&room, "dave end").await;
    seen.extend(s.irc.texts_until(&s.channel, "dave end").await);
    let mut texts = said(&seen);
    texts.sort();
    assert_eq!(texts, {
        let mut want = vec![
            pair(&dave, "dave three"),
            pair(&erin_nick, "erin two"),
            pair(&dave, "dave end"),
        ];
        want.sort();
        want
    });
    assert!(seen.iter().all(|l| l.source_nick != s.nick), "{seen:#?}");

    // Matrix sees ivan's lines and erin's, never a puppet's line coming back.
    let bot = s.bot_id.clone();
    let events = s
        .dave
        .events_until(&room, Duration::from_mins(1), |events| {
            events
                .iter()
                .any(|e| e.sender == bot && e.body().contains("ivan last"))
        })
        .await;
    let from_bot: Vec<&str> = events
        .iter()
        .filter(|e| e.sender == bot && e.kind == "m.room.message")
        .map(crate::support::matrix_client::Event::body)
        .collect();
    assert!(
        from_bot.iter().any(|b| b.contains("ivan first")),
        "{from_bot:?}"
    );
    assert_eq!(
        from_bot.iter().filter(|b| b.contains("erin two")).count(),
        1,
        "{from_bot:?}"
    );
    assert!(
        !from_bot.iter().any(|b| b.contains("dave")),
        "a puppet's line came back: {from_bot:?}"
    );

    // A private message to a puppet: one NOTICE saying it is not relayed.
    s.irc.raw(&format!("PRIVMSG {dave} :are you there?"));
    s.irc.raw(&format!("PRIVMSG {dave} :hello?"));
    let notice = s
        .irc
        .wait_for(|l| l.command == "NOTICE" && l.source_nick == dave, DEADLINE)
        .await
        .expect("the puppet answers a private message");
    assert!(
        notice.text().unwrap().1.contains("not relayed"),
        "{notice:?}"
    );
    s.dave.say(&room, "after the notice").await;
    let seen = s.irc.texts_until(&s.channel, "after the notice").await;
    assert_eq!(said(&seen), vec![pair(&dave, "after the notice")]);
    let notices = s
        .irc
        .drain()
        .into_iter()
        .filter(|l| l.command == "NOTICE" && l.source_nick == dave)
        .count();
    assert_eq!(notices, 0, "one NOTICE per person");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_nick_falls_back_and_a_rename_becomes_nick() {
    let mut s = setup("", false).await;
    let room = s.room.clone();
    let dave = puppet_of(&s.dave);
    // Someone on IRC already has dave's nick.
    let mut squatter = IrcClient::connect(s.irc_port, &dave).await;
    squatter.join(&s.channel).await;
    s.dave.say(&room, "taken nick").await;
    let seen = s.irc.texts_until(&s.channel, "taken nick").await;
    assert_eq!(said(&seen), vec![pair(&format!("{dave}1"), "taken nick")]);

    // The nick is kept across a restart, even once the first choice is free again.
    squatter.raw("QUIT :bye");
    s.irc
        .wait_for(|l| l.command == "QUIT" && l.source_nick == dave, DEADLINE)
        .await
        .expect("the squatter leaves");
    drop(squatter);
    s.bridge.wait_outbox_drained("irc", &s.channel).await;
    assert_eq!(s.bridge.terminate(), Some(0));
    s.irc
        .wait_for(
            |l| l.command == "QUIT" && l.source_nick == format!("{dave}1"),
            DEADLINE,
        )
        .await
        .expect("the puppet quits with the daemon");
    s.bridge.restart();
    s.irc.wait_join(&s.nick, &s.channel).await;
    s.dave.say(&room, "still the same nick").await;
    let seen = s.irc.texts_until(&s.channel, "still the same nick").await;
    assert_eq!(
        said(&seen),
        vec![pair(&format!("{dave}1"), "still the same nick")]
    );

    let new_name = unique("david");
    s.dave.set_display_name(&new_name).await;
    // The room learns the new name by a member event (Synapse sends it on its own time).
    s.dave
        .events_until(&room, Duration::from_mins(1), |events| {
            events
                .iter()
                .any(|e| e.kind == "m.room.member" && e.content["displayname"] == new_name.as_str())
        })
        .await;
    s.dave.say(&room, "renamed").await;
    let new_nick = format!("{new_name}[m]");
    let rename = s
        .irc
        .wait_for(|l| l.command == "NICK", DEADLINE)
        .await
        .expect("the puppet changes nick");
    assert_eq!(rename.source_nick, format!("{dave}1"));
    assert_eq!(rename.params.first(), Some(&new_nick));
    let seen = s.irc.texts_until(&s.channel, "renamed").await;
    assert_eq!(said(&seen), vec![pair(&new_nick, "renamed")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_puppet_quits_and_the_next_message_brings_it_back() {
    let mut s = setup("puppet_idle_timeout = 2\n", false).await;
    let room = s.room.clone();
    let dave = puppet_of(&s.dave);
    s.dave.say(&room, "before idling").await;
    let seen = s.irc.texts_until(&s.channel, "before idling").await;
    assert_eq!(said(&seen), vec![pair(&dave, "before idling")]);
    s.irc
        .wait_for(|l| l.command == "QUIT" && l.source_nick == dave, DEADLINE)
        .await
        .expect("the idle puppet quits");
    s.dave.say(&room, "back again").await;
    s.irc.wait_join(&dave, &s.channel).await;
    let seen = s.irc.texts_until(&s.channel, "back again").await;
    assert_eq!(said(&seen), vec![pair(&dave, "back again")]);
}

/// A puppet drives its own connection: over TLS, verified as the bot's (`tls_ca_file`), it
/// registers, joins and speaks (the fallback nick on a taken one is
/// `a_taken_nick_falls_back_and_a_rename_becomes_nick`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puppet_connects_over_tls_verified_like_the_bot() {
    let mut s = setup_on("", false, "", true).await;
    let room = s.room.clone();
    let dave = puppet_of(&s.dave);
    s.dave.say(&room, "over tls").await;
    let seen = s.irc.texts_until(&s.channel, "over tls").await;
    assert_eq!(said(&seen), vec![pair(&dave, "over tls")]);
    assert!(
        s.bridge.logs().contains("Puppet connecting."),
        "the line came from the puppet's own connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_puppets_the_bot_relays_with_the_prefix() {
    let mut s = setup("max_puppets = 2\n", false).await;
    let room = s.room.clone();
    let mut bob = s.matrix_person("bob").await;
    let mut carol = s.matrix_person("carol").await;
    s.dave.say(&room, "one").await;
    s.irc.texts_until(&s.channel, "one").await;
    bob.say(&room, "two").await;
    s.irc.texts_until(&s.channel, "two").await;
    carol.say(&room, "three").await;
    let seen = s.irc.texts_until(&s.channel, "three").await;
    let carol_name = local_part(&carol.user_id);
    assert_eq!(
        said(&seen),
        vec![pair(&s.nick, &format!("<{carol_name}> three"))]
    );
    carol.say(&room, "four").await;
    s.dave.say(&room, "five").await;
    let seen = s.irc.texts_until(&s.channel, "five").await;
    assert_eq!(
        said(&seen),
        vec![
            pair(&s.nick, &format!("<{carol_name}> four")),
            pair(&puppet_of(&s.dave), "five"),
        ]
    );
    s.bridge.wait_for_log("max_puppets reached").await;
    assert_eq!(s.bridge.logs().matches("max_puppets reached").count(), 1);
    let _ = &mut bob;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_lose_and_double_nothing() {
    let mut s = setup("", false).await;
    let room = s.room.clone();
    let dave = puppet_of(&s.dave);
    for n in 0..5 {
        s.dave.say(&room, &format!("before {n}")).await;
    }
    let seen = s.irc.texts_until(&s.channel, "before 4").await;
    assert_eq!(said(&seen).len(), 5);
    s.bridge.wait_outbox_drained("irc", &s.channel).await;
    s.bridge.kill9();
    for n in 0..5 {
        s.dave.say(&room, &format!("while down {n}")).await;
    }
    s.bridge.restart();
    let seen = s.irc.texts_until(&s.channel, "while down 4").await;
    assert_eq!(
        said(&seen),
        (0..5)
            .map(|n| pair(&dave, &format!("while down {n}")))
            .collect::<Vec<_>>()
    );
    s.dave.say(&room, "after restart").await;
    let seen = s.irc.texts_until(&s.channel, "after restart").await;
    assert_eq!(said(&seen), vec![pair(&dave, "after restart")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_five_people_arrives_from_the_right_puppets_in_order_once() {
    let mut s = setup("", false).await;
    let room = s.room.clone();
    let mut others = Vec::new();
    for name in ["p1", "p2", "p3", "p4"] {
        others.push(s.matrix_person(name).await);
    }
    let mut people = vec![s.dave];
    people.extend(others);
    let mut want = Vec::new();
    for n in 0..200 {
        let person = &mut people[n % 5];
        let text = format!("burst {n}");
        person.say(&room, &text).await;
        want.push(pair(&puppet_of(person), &text));
    }
    let seen = s.irc.texts_until(&s.channel, "burst 199").await;
    assert_eq!(said(&seen), want);
}

/// Five new people speak one after another while none of their puppets is connected yet:
/// their puppets register side by side, and the lines still arrive in the order they were
/// said, each once, each from its own puppet (a line waits for the earlier lines of the
/// channel on other connections, not for the other puppets' registrations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_new_people_at_once_keep_the_order_across_their_new_puppets() {
    let mut s = setup("", false).await;
    let room = s.room.clone();
    let mut others = Vec::new();
    for name in ["n1", "n2", "n3", "n4"] {
        others.push(s.matrix_person(name).await);
    }
    let mut people = vec![s.dave];
    people.extend(others);
    let mut want = Vec::new();
    for round in 0..2 {
        for (n, person) in people.iter_mut().enumerate() {
            let text = format!("new {round}.{n}");
            person.say(&room, &text).await;
            want.push(pair(&puppet_of(person), &text));
        }
    }
    let seen = s.irc.texts_until(&s.channel, "new 1.4").await;
    assert_eq!(said(&seen), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puppet_the_channel_refuses_is_relayed_by_the_bot() {
    let mut s = setup("", false).await;
    let room = s.room.clone();
    let dave = puppet_of(&s.dave);
    let dave_name = local_part(&s.dave.user_id);
    // ivan opened the channel, so he may ban.
    s.irc.raw(&format!("MODE {} +b {dave}!*@*", s.channel));
    s.irc
        .wait_for(
            |l| l.command == "MODE" && l.params.iter().any(|p| p == "+b"),
            DEADLINE,
        )
        .await
        .expect("the ban is set");
    s.dave.say(&room, "from a banned puppet").await;
    let seen = s.irc.texts_until(&s.channel, "from a banned puppet").await;
    assert_eq!(
        said(&seen),
        vec![pair(
            &s.nick,
            &format!("<{dave_name}> from a banned puppet")
        )]
    );
    s.dave.say(&room, "still banned").await;
    let seen = s.irc.texts_until(&s.channel, "still banned").await;
    assert_eq!(
        said(&seen),
        vec![pair(&s.nick, &format!("<{dave_name}> still banned"))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_joins_leaves_and_renames_are_the_puppets_own() {
    let mut s = setup_with("", false, "relay_membership = true").await;
    let room = s.room.clone();
    let dave = puppet_of(&s.dave);
    s.dave.say(&room, "dave is here").await;
    let seen = s.irc.texts_until(&s.channel, "dave is here").await;
    assert_eq!(said(&seen), vec![pair(&dave, "dave is here")]);

    // A rename alone (no message after it) is a NICK.
    let new_name = unique("davy");
    s.dave.set_display_name(&new_name).await;
    let rename = s
        .irc
        .wait_for(|l| l.command == "NICK", DEADLINE)
        .await
        .expect("the puppet changes nick");
    assert_eq!(rename.source_nick, dave);
    assert_eq!(rename.params.first(), Some(&format!("{new_name}[m]")));

    // A join is the puppet's JOIN; a leave its PART; the bot says neither.
    let bob = MatrixUser::new(&s.synapse_url, &unique("bob")).await;
    bob.join(&room).await;
    let bob_nick = puppet_of(&bob);
    s.irc.wait_join(&bob_nick, &s.channel).await;
    bob.leave(&room).await;
    let part = s
        .irc
        .wait_for(
            |l| l.command == "PART" && l.source_nick == bob_nick,
            DEADLINE,
        )
        .await
        .expect("the puppet parts");
    assert_eq!(part.params.first(), Some(&s.channel));
    s.dave.say(&room, "after the membership").await;
    let seen = s.irc.texts_until(&s.channel, "after the membership").await;
    assert_eq!(
        said(&seen),
        vec![pair(&format!("{new_name}[m]"), "after the membership")]
    );
    assert!(
        !seen.iter().any(|l| l.source_nick == s.nick),
        "the bot said something: {seen:#?}"
    );
}

/// An IRC channel with ivan in it, a Mattermost channel, and the bridge with puppets on and
/// `identity` (an `[[identity]]` entry, network ids `irc` and `mm`) linking someone.
struct Linked {
    irc: IrcClient,
    channel: String,
    mm: MmServer,
    channel_id: String,
    _bridge: Bridge,
    _dir: tempfile::TempDir,
}

async fn linked_setup(
    irc_port: u16,
    puppet_keys: &str,
    people: &[&str],
    identity: &str,
) -> (Linked, Vec<crate::support::mattermost::MmUser>) {
    let channel = unique("#idn");
    let nick = unique("bri");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let mm = MmServer::start("idn").await;
    let channel_id = mm.channel("town").await;
    let mut users = Vec::new();
    // Linked usernames are looked up when the bridge logs in: the accounts exist before.
    for person in people {
        users.push(mm.user(person, &channel_id).await);
    }
    let networks = vec![
        irc_network("irc", irc_port, &nick) + "puppets = true\n" + puppet_keys + "\n",
        mm.network("mm", ""),
    ];
    let dir = tempfile::tempdir().unwrap();
    let text = config(&networks, &[("irc", channel.as_str()), ("mm", "town")]) + "\n" + identity;
    let bridge = Bridge::start(dir.path(), &text);
    irc.wait_join(&nick, &channel).await;
    mm.wait_bot_member(&channel_id).await;
    (
        Linked {
            irc,
            channel,
            mm,
            channel_id,
            _bridge: bridge,
            _dir: dir,
        },
        users,
    )
}

/// A linked person (`[[identity]]`: their IRC nick and their Mattermost username) speaking
/// from Mattermost appears on IRC under their own nick, not `alice[mm]`; a mention of either
/// account reaches the other; the other networks show them under their one name; and when
/// they are on IRC themselves, their puppet falls back to the usual puppet nick while their own
/// IRC lines are relayed as theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_person_speaks_from_mattermost_under_their_irc_nick() {
    let irc_port = shared_inspircd().port;
    let (alice_nick, alice_mm, bob_mm) = (unique("alice"), unique("alicem"), unique("bob"));
    let identity = format!(
        "[[identity]]\nname = \"Alice Example\"\nirc = \"{alice_nick}\"\nmm = \"{alice_mm}\"\n"
    );
    let (mut s, users) = linked_setup(
        irc_port,
        "puppet_idle_timeout = 3\n",
        &[&alice_mm, &bob_mm],
        &identity,
    )
    .await;
    let [alice, bob] = [&users[0], &users[1]];

    // Her own nick, not `alice…[mm]` nor `Alice_Example[mm]`.
    alice.say(&s.channel_id, "hello from mattermost").await;
    let seen = s.irc.texts_until(&s.channel, "hello from mattermost").await;
    assert_eq!(
        said(&seen),
        vec![pair(&alice_nick, "hello from mattermost")]
    );

    // IRC names her by her nick: Mattermost sees a mention of her account there.
    s.irc
        .say(&s.channel, &format!("{alice_nick}: welcome over"));
    let posts =
        s.mm.admin
            .wait_posts_by(&s.channel_id, &s.mm.bot_id, |posts| {
                crate::support::mattermost::messages(posts)
                    .iter()
                    .any(|m| m.contains("welcome over"))
            })
            .await;
    let relayed = crate::support::mattermost::messages(&posts);
    assert!(
        relayed
            .iter()
            .any(|m| m.contains(&format!("@{alice_mm}: welcome over"))),
        "{relayed:?}"
    );
    // Mattermost names her account: IRC sees her nick (which highlights her there).
    bob.say(&s.channel_id, &format!("@{alice_mm} see above"))
        .await;
    let seen = s.irc.texts_until(&s.channel, "see above").await;
    assert_eq!(
        said(&seen),
        vec![pair(
            &format!("{bob_mm}[mm]"),
            &format!("{alice_nick} see above")
        )]
    );

    // Her puppet quits when idle; she comes to IRC herself with her nick.
    let quit = |l: &Line| l.command == "QUIT" && l.source_nick == alice_nick;
    if !seen.iter().any(quit) {
        s.irc
            .wait_for(quit, DEADLINE)
            .await
            .expect("the idle puppet quits");
    }
    let mut herself = IrcClient::connect(irc_port, &alice_nick).await;
    herself.join(&s.channel).await;
    herself.say(&s.channel, "from irc myself");
    // Relayed as hers (her nick is no puppet's now), under her one name.
    let posts =
        s.mm.admin
            .wait_posts_by(&s.channel_id, &s.mm.bot_id, |posts| {
                crate::support::mattermost::messages(posts)
                    .iter()
                    .any(|m| m.contains("from irc myself"))
            })
            .await;
    let relayed = crate::support::mattermost::messages(&posts);
    assert!(
        relayed.contains(&"<Alice Example> from irc myself".to_owned()),
        "{relayed:?}"
    );
    // Speaking from Mattermost again while she has her nick: the usual puppet nick.
    alice.say(&s.channel_id, "from mattermost again").await;
    let seen = s.irc.texts_until(&s.channel, "from mattermost again").await;
    let from_mattermost: Vec<(String, String)> = said(&seen)
        .into_iter()
        .filter(|(_, text)| text.contains("again"))
        .collect();
    assert_eq!(
        from_mattermost,
        vec![pair("Alice_Example[mm]", "from mattermost again")]
    );
}

/// A linked person whose nick is registered with `NickServ` (real Atheme services): their
/// puppet takes the nick and identifies with the password of their `[[identity]]`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_persons_puppet_identifies_to_nickserv() {
    let server = crate::support::servers::InspIrcd::start_with_services();
    let (alice_nick, alice_mm) = (unique("alicens"), unique("alicen"));
    let mut owner = IrcClient::connect(server.port, &alice_nick).await;
    owner.raw(&format!(
        "PRIVMSG NickServ :REGISTER nick-pw-1 {alice_nick}@example.invalid"
    ));
    owner
        .wait_for(
            |l| {
                l.command == "NOTICE"
                    && l.source_nick == "NickServ"
                    && l.text().is_some_and(|(_, t)| t.contains("registered"))
            },
            DEADLINE,
        )
        .await
        .expect("NickServ registers the nick");
    owner.raw("QUIT :registered");
    owner
        .wait_for(|l| l.command == "ERROR", DEADLINE)
        .await
        .expect("quit");
    let identity = format!(
        "[[identity]]\nirc = \"{alice_nick}\"\nmm = \"{alice_mm}\"\nnickserv_password = \"nick-pw-1\"\n"
    );
    let (mut s, users) = linked_setup(server.port, "", &[&alice_mm], &identity).await;
    users[0].say(&s.channel_id, "identified hello").await;
    let seen = s.irc.texts_until(&s.channel, "identified hello").await;
    assert_eq!(said(&seen), vec![pair(&alice_nick, "identified hello")]);
    // What a person sees: the nick is logged in to its account (WHOIS 330).
    s.irc.raw(&format!("WHOIS {alice_nick}"));
    let account = s
        .irc
        .wait_for(
            |l| l.command == "330" && l.params.get(1) == Some(&alice_nick),
            DEADLINE,
        )
        .await
        .expect("the puppet is logged in to the nick's account");
    assert_eq!(account.params.get(2), Some(&alice_nick));
}
