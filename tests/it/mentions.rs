//! Mentions and replies across IRC, Matrix and Mattermost, with real clients on every side (a
//! room on Synapse, a channel on `InspIRCd`, a channel on the Mattermost emulator): a name
//! written on one side notifies that person on theirs, and a reply reads as one everywhere.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::bridge::{Bridge, unique};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::matrix_client::{Event, MatrixUser, register};
use crate::support::mattermost::{MmServer, MmUser, messages};
use crate::support::servers::{shared_inspircd, shared_synapse};

/// One gateway over the three networks and a person on each.
struct Sides {
    /// alice, on Matrix (no display name: shown as her localpart).
    matrix: MatrixUser,
    room: String,
    matrix_bot: String,
    /// The bridge's IRC nick.
    bridge_nick: String,
    /// ivan, on IRC.
    irc: IrcClient,
    channel: String,
    mm: MmServer,
    /// mia, on Mattermost.
    mia: MmUser,
    channel_id: String,
    bridge: Bridge,
    _dir: tempfile::TempDir,
}

impl Sides {
    fn alice(&self) -> String {
        crate::support::matrix_client::local_part(&self.matrix.user_id)
    }

    /// The bridge's events in the room, from the last position until one contains `marker`.
    async fn on_matrix(&mut self, marker: &str) -> Vec<Event> {
        let bot = self.matrix_bot.clone();
        self.matrix
            .events_until(&self.room, Duration::from_mins(1), |events| {
                events
                    .iter()
                    .any(|e| e.sender == bot && e.body().contains(marker))
            })
            .await
            .into_iter()
            .filter(|e| e.sender == bot && e.kind == "m.room.message")
            .collect()
    }

    /// The bridge's post on Mattermost whose text contains `marker`.
    async fn on_mattermost(&self, marker: &str) -> Value {
        let posts = self
            .mia
            .wait_posts_by(&self.channel_id, &self.mm.bot_id, |posts| {
                messages(posts).iter().any(|m| m.contains(marker))
            })
            .await;
        posts
            .into_iter()
            .rev()
            .find(|p| {
                tribridge::richtext::markdown::parse(p["message"].as_str().unwrap_or_default())
                    .to_plain_text()
                    .contains(marker)
            })
            .unwrap()
    }

    /// The IRC line of the bridge whose text contains `marker`.
    async fn on_irc(&mut self, marker: &str) -> String {
        let channel = self.channel.clone();
        texts(&self.irc.texts_until(&channel, marker).await)
            .pop()
            .unwrap()
    }

    /// Everyone says something once, so that the bridge knows them; returns alice's event id
    /// and mia's post id.
    async fn introduce(&mut self) -> (String, String) {
        let room = self.room.clone();
        let alice_said = self.matrix.say(&room, "morning from alice").await;
        self.on_irc("morning from alice").await;
        let mia_said = self.mia.say(&self.channel_id, "morning from mia").await;
        self.on_irc("morning from mia").await;
        let channel = self.channel.clone();
        self.irc.say(&channel, "morning from ivan");
        self.on_matrix("morning from ivan").await;
        self.on_mattermost("morning from ivan").await;
        (alice_said, mia_said)
    }
}

/// The three sides in gateway `g` with `gateway_extra` keys.
async fn sides(gateway_extra: &str) -> Sides {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("botm");
    register(&url, &bot, "password").await;
    let mut matrix = MatrixUser::new(&url, &unique("alice")).await;
    let alias_name = unique("roomm");
    let room = matrix.create_room(&alias_name).await;
    matrix.mark().await;
    let channel = unique("#mention");
    let nick = unique("brm");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let mm = MmServer::start("dept").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n\
         [network.irc]\ntype = \"irc\"\nserver = \"127.0.0.1:{irc_port}\"\ntls = false\n\
         nick = \"{nick}\"\nflood_burst = 1000\nflood_interval_ms = 1\n\n\
         [network.mx]\ntype = \"matrix\"\nhomeserver = \"{url}\"\nuser = \"@{bot}:localhost\"\n\
         password = \"password\"\n\n{}\
         [[gateway]]\nname = \"g\"\n{gateway_extra}channels = [\n\
           {{ network = \"irc\", channel = \"{channel}\" }},\n\
           {{ network = \"mx\", channel = \"#{alias_name}:localhost\" }},\n\
           {{ network = \"mm\", channel = \"town\" }},\n]\n",
        mm.network("mm", "")
    );
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(dir.path(), &config);
    irc.wait_join(&nick, &channel).await;
    let matrix_bot = format!("@{bot}:localhost");
    matrix
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member"
                    && e.content["membership"] == "join"
                    && e.sender == matrix_bot
            })
        })
        .await;
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    Sides {
        matrix,
        room,
        matrix_bot,
        bridge_nick: nick,
        irc,
        channel,
        mm,
        mia,
        channel_id,
        bridge,
        _dir: dir,
    }
}

/// The text of a relayed IRC line after the sender (`<alice> `), which is what the person's
/// client matches their nick against.
fn after_sender<'a>(line: &'a str, sender: &str) -> &'a str {
    line.strip_prefix(&format!("<{sender}> "))
        .unwrap_or_else(|| panic!("{line:?} is not from {sender}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_become_mentions_that_notify_each_person_on_their_own_network() {
    let mut t = sides("").await;
    t.introduce().await;
    let (room, alice, ivan) = (t.room.clone(), t.alice(), t.irc.nick.clone());
    let channel = t.channel.clone();

    // IRC → Matrix and Mattermost: `alice: …` is a pill with m.mentions for her id, and mia's
    // name is `@mia`, which notifies her; an ordinary word stays a word.
    t.irc.say(
        &channel,
        &format!("{alice}: look at this, and thanks mia for the rest"),
    );
    let events = t.on_matrix("look at this").await;
    let event = events.last().unwrap();
    assert_eq!(
        event.content["m.mentions"]["user_ids"],
        json!([t.matrix.user_id]),
        "{event:#?}"
    );
    let html = event.content["formatted_body"].as_str().unwrap_or_default();
    assert!(
        html.contains(&format!(
            "<a href=\"https://matrix.to/#/{}\">{alice}</a>: look at this",
            t.matrix.user_id.replace(':', "%3A")
        )) || html.contains(&format!(
            "<a href=\"https://matrix.to/#/{}\">{alice}</a>: look at this",
            t.matrix.user_id
        )),
        "{html}"
    );
    let post = t.on_mattermost("look at this").await;
    let message = post["message"].as_str().unwrap();
    assert!(message.contains("thanks @mia for the rest"), "{message}");
    assert!(!message.contains(&format!("@{alice}")), "{message}");

    // Matrix → IRC: a pill of the relayed IRC person (the bot's account, showing ivan's name, as
    // a client makes it from a relayed sender) arrives as ivan's nick at the start of the line.
    t.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": format!("{ivan}: pill here"),
                   "format": "org.matrix.custom.html",
                   "formatted_body": format!(
                       "<a href=\"https://matrix.to/#/{}\">{ivan}</a>: pill here", t.matrix_bot),
                   "m.mentions": {"user_ids": [t.matrix_bot]}}),
        )
        .await;
    let line = t.on_irc("pill here").await;
    let text = after_sender(&line, &alice);
    assert_eq!(
        text,
        format!("{ivan}: pill here"),
        "the line starts with the nick"
    );

    // Mattermost → Matrix: `@alice` is her pill; Matrix → Mattermost: `mia:` is `@mia`.
    t.mia
        .say(&t.channel_id, &format!("@{alice} see the doc"))
        .await;
    let events = t.on_matrix("see the doc").await;
    let event = events.last().unwrap();
    assert_eq!(
        event.content["m.mentions"]["user_ids"],
        json!([t.matrix.user_id]),
        "{event:#?}"
    );
    t.matrix.say(&room, "mia: thanks, read it").await;
    let post = t.on_mattermost("read it").await;
    assert!(
        post["message"]
            .as_str()
            .unwrap()
            .contains("@mia: thanks, read it"),
        "{post:#?}"
    );
    // Mattermost → IRC: `@ivan` arrives as his nick.
    t.mia.say(&t.channel_id, &format!("@{ivan} ping")).await;
    let line = t.on_irc(" ping").await;
    assert_eq!(after_sender(&line, "mia"), format!("{ivan} ping"));

    // Someone on IRC with alice's name joins: on IRC that name now means them, so it is no
    // longer taken for the relayed alice.
    let mut twin = IrcClient::connect(shared_inspircd().port, &alice).await;
    twin.join(&channel).await;
    t.irc.wait_member(&alice, &channel).await;
    t.irc.say(&channel, &format!("{alice}: the IRC one"));
    let events = t.on_matrix("the IRC one").await;
    let event = events.last().unwrap();
    assert!(event.content["m.mentions"].is_null(), "{event:#?}");
    assert_eq!(event.body(), format!("<{ivan}> {alice}: the IRC one"));
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_from_matrix_reads_on_irc_as_nick_and_a_short_quote_when_off_screen() {
    let mut t = sides("").await;
    t.introduce().await;
    let (room, alice, ivan) = (t.room.clone(), t.alice(), t.irc.nick.clone());
    let channel = t.channel.clone();
    t.irc.say(
        &channel,
        "what do we do about the release notes for version two, who writes them?",
    );
    let events = t.on_matrix("release notes").await;
    let question = events.last().unwrap().event_id.clone();
    // Six more lines: the question is off screen on IRC.
    for i in 0..6 {
        t.matrix.say(&room, &format!("filler {i}")).await;
    }
    t.on_irc("filler 5").await;
    t.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "> <@x:localhost> what do we do\n\nI will",
                   "m.relates_to": {"m.in_reply_to": {"event_id": question}}}),
        )
        .await;
    let line = t.on_irc("I will").await;
    assert_eq!(
        after_sender(&line, &alice),
        format!("{ivan}: \"what do we do about the release notes…\" <- I will")
    );
    // ivan changes his nick: a reply to his old line names him by the new one. (His next line
    // relayed shows the bridge read the change, which came before it.)
    let renamed = format!("{ivan}_");
    t.irc.raw(&format!("NICK {renamed}"));
    t.irc.say(&channel, "new nick, same person");
    t.on_matrix("new nick, same person").await;
    t.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "still you",
                   "m.relates_to": {"m.in_reply_to": {"event_id": question}}}),
        )
        .await;
    let line = t.on_irc("still you").await;
    assert_eq!(
        after_sender(&line, &alice),
        format!("{renamed}: \"what do we do about the release notes…\" <- still you")
    );
    // A reply to the line just said needs no quote.
    t.irc.say(&channel, "and the changelog?");
    let events = t.on_matrix("the changelog?").await;
    let ivan = renamed;
    let just_said = events.last().unwrap().event_id.clone();
    t.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "that too",
                   "m.relates_to": {"m.in_reply_to": {"event_id": just_said}}}),
        )
        .await;
    let line = t.on_irc("that too").await;
    assert_eq!(after_sender(&line, &alice), format!("{ivan}: that too"));
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_replies_reply_makes_nick_colon_text_a_native_reply_and_the_directory_survives_a_restart()
 {
    let mut t = sides("irc_replies = \"reply\"\n").await;
    let (alice_said, mia_said) = t.introduce().await;
    let (alice, channel) = (t.alice(), t.channel.clone());

    // `alice: yes` soon after her line replies to it on Matrix, and on Mattermost is in the
    // thread of its copy there.
    t.irc.say(&channel, &format!("{alice}: yes, agreed"));
    let events = t.on_matrix("yes, agreed").await;
    let reply = events.last().unwrap();
    assert_eq!(
        reply.content["m.relates_to"]["m.in_reply_to"]["event_id"],
        alice_said.as_str(),
        "{reply:#?}"
    );
    assert_eq!(
        reply.content["m.mentions"]["user_ids"],
        json!([t.matrix.user_id])
    );
    let post = t.on_mattermost("yes, agreed").await;
    let copy_of_alice = t.on_mattermost("morning from alice").await;
    assert_eq!(post["root_id"], copy_of_alice["id"], "{post:#?}");
    // `mia, …` replies to her post itself.
    t.irc.say(&channel, "mia, right");
    let post = t.on_mattermost("right").await;
    assert_eq!(post["root_id"], mia_said.as_str(), "{post:#?}");
    // A line that names nobody at its start is no reply.
    t.irc.say(&channel, &format!("I agree with {alice}"));
    let events = t.on_matrix("I agree with").await;
    assert!(events.last().unwrap().content["m.relates_to"].is_null());

    // After a restart the bridge still knows who alice is: her name is still her pill.
    assert!(t.bridge.terminate().is_some());
    t.bridge.restart();
    let bridge_nick = t.bridge_nick.clone();
    t.irc.wait_join(&bridge_nick, &channel).await;
    t.irc.say(&channel, &format!("{alice}: after the restart"));
    let events = t.on_matrix("after the restart").await;
    assert_eq!(
        events.last().unwrap().content["m.mentions"]["user_ids"],
        json!([t.matrix.user_id])
    );
    let _ = t.bridge.terminate();
}
