//! IRC, Matrix and Mattermost in one gateway, with real clients on every side: a Matrix room on
//! a real Synapse, a channel on a real `InspIRCd`, and a channel on the Mattermost emulator.
//! Matrix ⇄ Mattermost carries every message kind natively (text, /me, formatting, edits,
//! deletes, replies/threads, reactions, files) while IRC sees the same conversation as lines.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::bridge::{Bridge, unique};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::matrix_client::{Event, MatrixUser, register};
use crate::support::mattermost::{MmServer, MmUser, messages};
use crate::support::servers::{free_port, shared_inspircd, shared_synapse};

/// One gateway over the three networks, a person on each, the media endpoint on.
struct ThreeWay {
    /// alice, on Matrix.
    matrix: MatrixUser,
    room: String,
    /// The bridge's Matrix user id.
    matrix_bot: String,
    /// ivan, on IRC.
    irc: IrcClient,
    channel: String,
    /// mia, on Mattermost.
    mm: MmServer,
    mia: MmUser,
    channel_id: String,
    media_port: u16,
    bridge: Bridge,
    _dir: tempfile::TempDir,
}

impl ThreeWay {
    /// alice's name as the bridge shows it (her Matrix localpart: she set no display name).
    fn alice(&self) -> String {
        self.matrix.user_id[1..]
            .split(':')
            .next()
            .unwrap()
            .to_owned()
    }

    /// The Matrix events the bridge sent, from the last position until one contains `marker`.
    async fn bridged_on_matrix(&mut self, marker: &str) -> Vec<Event> {
        let bot = self.matrix_bot.clone();
        self.matrix
            .events_until(&self.room, Duration::from_mins(1), |events| {
                events
                    .iter()
                    .any(|e| e.sender == bot && e.body().contains(marker))
            })
            .await
            .into_iter()
            .filter(|e| e.sender == bot)
            .collect()
    }

    /// The posts the bridge made on Mattermost, once one contains `marker`.
    async fn bridged_on_mattermost(&self, marker: &str) -> Vec<Value> {
        self.mia
            .wait_posts_by(&self.channel_id, &self.mm.bot_id, |posts| {
                messages(posts).iter().any(|m| m.contains(marker))
            })
            .await
    }
}

async fn three_way() -> ThreeWay {
    three_way_with("").await
}

/// The fixture with `mm_extra` keys in the Mattermost network.
async fn three_way_with(mm_extra: &str) -> ThreeWay {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("bot3");
    register(&url, &bot, "password").await;
    let mut matrix = MatrixUser::new(&url, &unique("alice")).await;
    let alias_name = unique("room3");
    let room = matrix.create_room(&alias_name).await;
    matrix.mark().await;
    let channel = unique("#three");
    let nick = unique("br3");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let mm = MmServer::start("dept").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let media_port = free_port();
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\
         media_listen = \"127.0.0.1:{media_port}\"\n\
         media_public_url = \"http://127.0.0.1:{media_port}/files\"\n\n\
         [network.irc]\ntype = \"irc\"\nserver = \"127.0.0.1:{irc_port}\"\ntls = false\n\
         nick = \"{nick}\"\nflood_burst = 1000\nflood_interval_ms = 1\n\n\
         [network.mx]\ntype = \"matrix\"\nhomeserver = \"{url}\"\nuser = \"@{bot}:localhost\"\n\
         password = \"password\"\n\n{}\
         [[gateway]]\nname = \"three\"\nchannels = [\n\
           {{ network = \"irc\", channel = \"{channel}\" }},\n\
           {{ network = \"mx\", channel = \"#{alias_name}:localhost\" }},\n\
           {{ network = \"mm\", channel = \"town\" }},\n]\n",
        mm.network("mm", mm_extra)
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
    ThreeWay {
        matrix,
        room,
        matrix_bot,
        irc,
        channel,
        mm,
        mia,
        channel_id,
        media_port,
        bridge,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_and_mattermost_relay_every_message_kind_natively_and_irc_sees_the_talk() {
    let mut t = three_way().await;
    let (room, alice) = (t.room.clone(), t.alice());
    let bot = t.mm.bot_id.clone();

    // Matrix → Mattermost: text, emote, formatting, an edit, a deletion, a reply, a reaction.
    let hello = t.matrix.say(&room, "hello from matrix").await;
    t.matrix.send_message(&room, "m.emote", "waves").await;
    t.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "bold and x < y",
                   "format": "org.matrix.custom.html",
                   "formatted_body": "<b>bold</b> and <code>x &lt; y</code>"}),
        )
        .await;
    let typo = t.matrix.say(&room, "typo heer").await;
    t.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "* typo here",
                   "m.new_content": {"msgtype": "m.text", "body": "typo here"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": typo}}),
        )
        .await;
    let gone = t.matrix.say(&room, "soon gone").await;
    t.matrix.redact(&room, &gone).await;
    t.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "> <@x:localhost> hello from matrix\n\nan answer",
                   "m.relates_to": {"m.in_reply_to": {"event_id": hello}}}),
        )
        .await;
    t.matrix
        .send_event(
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": hello, "key": "🎉"}}),
        )
        .await;
    t.matrix.say(&room, "MX-MARK").await;
    let posts = t.bridged_on_mattermost("MX-MARK").await;
    assert_eq!(
        messages(&posts),
        vec![
            format!("<{alice}> hello from matrix"),
            format!("<{alice}> waves"),
            format!("<{alice}> bold and x < y"),
            format!("<{alice}> typo here"),
            format!("<{alice}> an answer"),
            format!("<{alice}> MX-MARK"),
        ]
    );
    assert_eq!(posts[1]["type"], "me");
    assert_eq!(
        posts[2]["message"],
        format!("\\<{alice}> **bold** and `x < y`")
    );
    let hello_post = posts[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        posts[4]["root_id"],
        hello_post.as_str(),
        "the reply is in the thread"
    );
    t.mia.wait_reactions(&hello_post, &[(&bot, "tada")]).await;

    // Mattermost → Matrix: the same kinds, natively.
    let hi = t.mia.say(&t.channel_id, "hi from mattermost").await;
    t.mia.act(&t.channel_id, "smiles").await;
    t.mia.say(&t.channel_id, "**strong** words").await;
    t.mia.edit(&hi, "hi from mattermost, edited").await;
    t.mia.reply(&t.channel_id, &hi, "in the thread").await;
    let doomed = t.mia.say(&t.channel_id, "soon deleted").await;
    t.mia.delete(&doomed).await;
    t.mia.react(&hi, "+1").await;
    t.mia.say(&t.channel_id, "MM-MARK").await;
    let mut events = t.bridged_on_matrix("MM-MARK").await;
    // A reaction is not a message: Mattermost's events may bring it after later posts.
    if !events.iter().any(|e| e.kind == "m.reaction") {
        let bot_id = t.matrix_bot.clone();
        let more = t
            .matrix
            .events_until(&room, Duration::from_mins(1), |events| {
                events
                    .iter()
                    .any(|e| e.kind == "m.reaction" && e.sender == bot_id)
            })
            .await;
        events.extend(more.into_iter().filter(|e| e.sender == t.matrix_bot));
    }
    let messages_seen: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == "m.room.message" && !e.content.is_null())
        .filter(|e| e.content.as_object().is_some_and(|c| !c.is_empty()))
        .filter(|e| e.body() != "<mia> soon deleted")
        .collect();
    let hi_event = &messages_seen[0];
    assert_eq!(hi_event.body(), "<mia> hi from mattermost");
    assert_eq!(messages_seen[1].msgtype(), "m.emote");
    assert_eq!(messages_seen[1].body(), "<mia> smiles");
    assert_eq!(messages_seen[2].body(), "<mia> strong words");
    assert!(
        messages_seen[2].content["formatted_body"]
            .as_str()
            .is_some_and(|html| html.contains("<strong>strong</strong>")),
        "{:?}",
        messages_seen[2].content
    );
    let edit = messages_seen[3];
    assert_eq!(edit.content["m.relates_to"]["rel_type"], "m.replace");
    assert_eq!(
        edit.content["m.relates_to"]["event_id"],
        hi_event.event_id.as_str()
    );
    assert_eq!(
        edit.content["m.new_content"]["body"],
        "<mia> hi from mattermost, edited"
    );
    let reply = messages_seen[4];
    assert_eq!(reply.body(), "<mia> in the thread");
    assert_eq!(
        reply.content["m.relates_to"]["m.in_reply_to"]["event_id"],
        hi_event.event_id.as_str()
    );
    assert_eq!(messages_seen[5].body(), "<mia> MM-MARK");
    assert_eq!(messages_seen.len(), 6, "{messages_seen:#?}");
    let redacted = events
        .iter()
        .filter(|e| e.kind == "m.room.redaction")
        .count();
    assert_eq!(redacted, 1, "the deleted post is redacted on Matrix");
    let reactions: Vec<&Event> = events.iter().filter(|e| e.kind == "m.reaction").collect();
    assert_eq!(reactions.len(), 1, "{events:#?}");
    assert_eq!(reactions[0].content["m.relates_to"]["key"], "👍");
    assert_eq!(
        reactions[0].content["m.relates_to"]["event_id"],
        hi_event.event_id.as_str()
    );

    // IRC saw the conversation from both sides, each line once, and nothing came back.
    let channel = t.channel.clone();
    let seen = texts(&t.irc.texts_until(&channel, "MM-MARK").await);
    for line in [
        format!("<{alice}> hello from matrix"),
        format!("<{alice}> MX-MARK"),
        "<mia> hi from mattermost".to_owned(),
        "<mia> MM-MARK".to_owned(),
    ] {
        assert_eq!(
            seen.iter().filter(|l| **l == line).count(),
            1,
            "{line}: {seen:#?}"
        );
    }
    t.matrix.say(&room, "MX-END").await;
    let posts = t.bridged_on_mattermost("MX-END").await;
    assert!(
        messages(&posts).iter().all(|m| !m.contains("<mia>")),
        "nothing mia said came back: {:#?}",
        messages(&posts)
    );
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_cross_between_matrix_and_mattermost_and_reach_irc_as_working_links() {
    let mut t = three_way().await;
    let (room, alice) = (t.room.clone(), t.alice());
    let http = reqwest::Client::new();

    // An image on Matrix: a file on Mattermost with the same bytes, a link on IRC.
    let picture: Vec<u8> = (0..5000u32).map(|n| (n * 7 % 251) as u8).collect();
    let uri = t
        .matrix
        .upload("cat.png", "image/png", picture.clone())
        .await;
    t.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.image", "body": "our cat", "filename": "cat.png", "url": uri,
                   "info": {"mimetype": "image/png", "size": picture.len()}}),
        )
        .await;
    let posts = t.bridged_on_mattermost("our cat").await;
    let post = posts.last().unwrap();
    assert_eq!(
        messages(std::slice::from_ref(post)),
        vec![format!("<{alice}> our cat")]
    );
    let file_ids: Vec<&str> = post["file_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(file_ids.len(), 1, "{post}");
    assert_eq!(t.mia.download(file_ids[0]).await, picture);
    let info = t
        .mia
        .ok(
            reqwest::Method::GET,
            &format!("/files/{}/info", file_ids[0]),
            None,
        )
        .await;
    assert_eq!(info["name"], "cat.png");
    assert_eq!(info["mime_type"], "image/png");
    let channel = t.channel.clone();
    let seen = texts(&t.irc.texts_until(&channel, "cat.png").await);
    assert_eq!(seen[0], format!("<{alice}> our cat"));
    let prefix = format!(
        "<{alice}> shared an image: cat.png (4.9 KiB) http://127.0.0.1:{}/files/",
        t.media_port
    );
    assert!(seen[1].starts_with(&prefix), "{seen:?}");
    let link = seen[1].rsplit(' ').next().unwrap();
    let response = http.get(link).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.bytes().await.unwrap().to_vec(), picture);

    // Two files on Mattermost: two file events on Matrix (the caption on the first), links on
    // IRC.
    let notes = b"meeting notes\n".repeat(40);
    let report = vec![0x25u8; 3000];
    let first = t.mia.upload(&t.channel_id, "notes.txt", &notes).await;
    let second = t.mia.upload(&t.channel_id, "report.pdf", &report).await;
    t.mia
        .say_with_files(&t.channel_id, "the files", &[first, second])
        .await;
    t.mia.say(&t.channel_id, "FILES-MARK").await;
    let events = t.bridged_on_matrix("FILES-MARK").await;
    let files: Vec<&Event> = events
        .iter()
        .filter(|e| e.content["url"].is_string())
        .collect();
    assert_eq!(files.len(), 2, "{events:#?}");
    assert_eq!(files[0].msgtype(), "m.file");
    assert_eq!(files[0].content["filename"], "notes.txt");
    assert_eq!(files[0].body(), "<mia> the files");
    assert_eq!(files[1].content["filename"], "report.pdf");
    assert_eq!(files[1].body(), "<mia> report.pdf");
    assert_eq!(files[1].content["info"]["size"], 3000);
    let notes_uri = files[0].content["url"].as_str().unwrap().to_owned();
    let report_uri = files[1].content["url"].as_str().unwrap().to_owned();
    assert_eq!(t.matrix.download(&notes_uri).await, notes);
    assert_eq!(t.matrix.download(&report_uri).await, report);
    let seen = texts(&t.irc.texts_until(&channel, "FILES-MARK").await);
    assert_eq!(seen[0], "<mia> the files");
    assert!(
        seen[1].starts_with("<mia> shared a file: notes.txt (560 B) http://"),
        "{seen:?}"
    );
    assert!(
        seen[2].starts_with("<mia> shared a file: report.pdf (2.9 KiB) http://"),
        "{seen:?}"
    );
    let link = seen[2].rsplit(' ').next().unwrap();
    assert_eq!(
        http.get(link)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec(),
        report
    );
    // Every file is stored once, however many networks it went to (besides mia's picture).
    let stored = std::fs::read_dir(t.bridge.dir.join("state/files"))
        .unwrap()
        .filter(|entry| {
            !entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("avatar-")
        })
        .count();
    assert_eq!(stored, 3);
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_message_burst_crosses_matrix_and_mattermost_in_order_exactly_once() {
    let mut t = three_way().await;
    let room = t.room.clone();
    for n in 0..200 {
        t.mia.say(&t.channel_id, &format!("mm {n}")).await;
    }
    let events = t.bridged_on_matrix("mm 199").await;
    let bodies: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "m.room.message")
        .map(|e| e.body().to_owned())
        .collect();
    let expected: Vec<String> = (0..200).map(|n| format!("<mia> mm {n}")).collect();
    assert_eq!(bodies, expected);

    for n in 0..200 {
        t.matrix.say(&room, &format!("mx {n}")).await;
    }
    let alice = t.alice();
    let posts = t.bridged_on_mattermost("mx 199").await;
    let expected: Vec<String> = (0..200).map(|n| format!("<{alice}> mx {n}")).collect();
    assert_eq!(messages(&posts), expected);
    let _ = t.bridge.terminate();
}

/// With `sender_override`, a post relayed from Matrix shows the sender's name and Matrix
/// picture (served by the media endpoint) as the post's author.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mattermost_shows_a_matrix_sender_with_their_name_and_picture() {
    let mut t = three_way_with("sender_override = true").await;
    let (room, alice) = (t.room.clone(), t.alice());
    let face: Vec<u8> = (0..700u32).map(|n| (n % 13) as u8).collect();
    let uri = t.matrix.upload("face.png", "image/png", face.clone()).await;
    t.matrix.set_avatar(&uri).await;
    // The homeserver puts the new picture into the room's membership after the call returns.
    let me = t.matrix.user_id.clone();
    t.matrix
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member"
                    && e.sender == me
                    && e.content["avatar_url"] == uri.as_str()
            })
        })
        .await;
    t.matrix.say(&room, "with my face").await;
    let posts = t.bridged_on_mattermost("with my face").await;
    let post = posts.last().unwrap();
    assert_eq!(post["message"], "with my face");
    assert_eq!(post["props"]["override_username"], alice.as_str());
    assert_eq!(post["props"]["from_webhook"], "true");
    let icon = post["props"]["override_icon_url"]
        .as_str()
        .unwrap_or_else(|| panic!("{post}\n{}", t.bridge.logs()));
    let prefix = format!("http://127.0.0.1:{}/files/avatar-", t.media_port);
    assert!(icon.starts_with(&prefix), "{icon}");
    let served = reqwest::get(icon).await.unwrap().bytes().await.unwrap();
    assert_eq!(served.to_vec(), face);
    let _ = t.bridge.terminate();
}
