//! `remote_users = true` through the real daemon, against the Mattermost emulator and real
//! `InspIRCd` and Synapse: people of other networks post on Mattermost as Mattermost users of
//! their own (created once, with the bridge's admin token, posting with their own tokens), are
//! mentioned as `@username`, and a token that cannot do this falls back to the sender prefix
//! with a clear message and nothing lost.

use std::time::{Duration, Instant};

use mattermost_emulator::{Config, Emulator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::bridge::{Bridge, unique};
use crate::support::config::{irc_network, matrix_network, one_gateway as config};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::matrix_client::{MatrixUser, register};
use crate::support::mattermost::{MmServer, MmUser, messages};
use crate::support::servers::{free_port, shared_inspircd, shared_synapse};

const DEADLINE: Duration = Duration::from_secs(20);

/// A personal access token of the emulator's system admin.
async fn admin_token(mm: &MmServer) -> String {
    let token = mm
        .admin
        .ok(
            Method::POST,
            &format!("/users/{}/tokens", mm.admin.id),
            Some(json!({"description": "bridge"})),
        )
        .await;
    token["token"].as_str().unwrap().to_owned()
}

/// The bridge's Mattermost block with `credentials` and `remote_users = true`.
fn network(mm: &MmServer, credentials: &str) -> String {
    format!(
        "[network.mm]\ntype = \"mattermost\"\nurl = \"{}\"\nteam = \"{}\"\n{credentials}\n\
         remote_users = true\n\n",
        mm.emu.base_url(),
        mm.team
    )
}

/// Wait until the user `username` exists; its JSON.
async fn wait_user(mm: &MmServer, username: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, user) = mm
            .admin
            .call(Method::GET, &format!("/users/username/{username}"), None)
            .await;
        if status == StatusCode::OK {
            return user;
        }
        assert!(Instant::now() < deadline, "no user {username}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every user whose username starts with `prefix`.
async fn users_named(mm: &MmServer, prefix: &str) -> Vec<String> {
    let users = mm.admin.ok(Method::GET, "/users?per_page=200", None).await;
    users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["username"].as_str())
        .filter(|u| u.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

fn no_override_props(post: &Value) {
    for prop in ["override_username", "override_icon_url", "from_webhook"] {
        assert!(post["props"].get(prop).is_none(), "{prop} in {post:#}");
    }
}

struct IrcSide {
    mm: MmServer,
    channel_id: String,
    mia: MmUser,
    alice: IrcClient,
    irc_channel: String,
    /// The bridge's IRC nick.
    nick: String,
    bridge: Bridge,
    _dir: tempfile::TempDir,
}

/// Which account the bridge uses on Mattermost.
#[derive(Clone, Copy, PartialEq)]
enum Account {
    /// The system admin's personal access token.
    AdminToken,
    /// The system admin by login and password.
    AdminLogin,
    /// The bot's token (not an admin).
    Bot,
}

/// IRC `alice` and Mattermost `mia` in one gateway, the bridge on Mattermost as `account`, the
/// emulator with `settings`.
async fn irc_side(account: Account, settings: Config) -> IrcSide {
    let server = shared_inspircd();
    let irc_channel = unique("#ru");
    let nick = unique("brru");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&irc_channel).await;
    let emu = Emulator::start_with_config(
        "127.0.0.1:0".parse().unwrap(),
        "sysadmin",
        "sysadmin-pw",
        settings,
    )
    .await
    .expect("emulator starts");
    let mm = MmServer::set_up(emu, "civi").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let block = match account {
        Account::AdminToken => network(&mm, &format!("token = \"{}\"", admin_token(&mm).await)),
        Account::AdminLogin => network(&mm, "login = \"sysadmin\"\npassword = \"sysadmin-pw\""),
        Account::Bot => network(&mm, &format!("token = \"{}\"", mm.bot_token)),
    };
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(
        dir.path(),
        &config(
            &[irc_network("irc", server.port, &nick), block],
            &[("irc", &irc_channel), ("mm", "town")],
        ),
    );
    alice.wait_join(&nick, &irc_channel).await;
    mm.wait_websocket(1).await;
    IrcSide {
        mm,
        channel_id,
        mia,
        alice,
        irc_channel,
        nick,
        bridge,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_irc_person_posts_as_their_own_mattermost_user_and_is_mentioned_by_username() {
    let mut t = irc_side(Account::AdminToken, Config::default()).await;
    let (nick, channel) = (t.alice.nick.clone(), t.irc_channel.clone());
    let username = format!("{}-irc", nick.to_lowercase());

    t.alice.say(&channel, "hello from irc");
    let user = wait_user(&t.mm, &username).await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &user_id, |p| !p.is_empty())
        .await;
    assert_eq!(messages(&posts), ["hello from irc"]);
    no_override_props(&posts[0]);
    assert!(
        posts[0]["props"].get("from_bot").is_none(),
        "{:#}",
        posts[0]
    );
    // The account: named after the person, marked as bridged, in the team and the channel.
    assert_eq!(user["nickname"], nick);
    assert_eq!(user["first_name"], nick);
    assert_eq!(user["props"]["tribridge_remote"], format!("irc/{nick}"));
    let (status, _) =
        t.mm.admin
            .call(
                Method::GET,
                &format!("/channels/{}/members/{user_id}", t.channel_id),
                None,
            )
            .await;
    assert_eq!(status, StatusCode::OK);
    // Nothing went out as the bot.
    let bot_posts: Vec<Value> = t
        .mia
        .posts(&t.channel_id)
        .await
        .into_iter()
        .filter(|p| p["user_id"] == t.mm.bot_id.as_str() || p["user_id"] == t.mm.admin.id.as_str())
        .filter(|p| p["type"].as_str().is_none_or(|k| !k.starts_with("system_")))
        .collect();
    assert!(bot_posts.is_empty(), "{:#?}", messages(&bot_posts));

    // `@alice-irc` from Mattermost is alice's nick on IRC; her own post is not relayed back.
    t.mia
        .say(&t.channel_id, &format!("@{username}: hi there"))
        .await;
    t.mia.say(&t.channel_id, "MARK-1").await;
    let seen = t.alice.texts_until(&channel, "MARK-1").await;
    assert_eq!(
        texts(&seen),
        vec![format!("<mia> {nick}: hi there"), "<mia> MARK-1".to_owned()]
    );

    // Mentions of her from elsewhere are `@username` here (mia is known once she spoke).
    t.alice.say(&channel, "mia: got it");
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &user_id, |p| p.len() >= 2)
        .await;
    assert_eq!(messages(&posts)[1], "@mia: got it");

    // Restart: the same account is used again, no second one.
    let _ = t.bridge.terminate();
    t.bridge.restart();
    t.alice.wait_join(&t.nick, &channel).await;
    t.mm.wait_websocket(1).await;
    t.alice.say(&channel, "after the restart");
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &user_id, |p| p.len() >= 3)
        .await;
    assert_eq!(messages(&posts)[2], "after the restart");
    assert_eq!(users_named(&t.mm, &nick.to_lowercase()).await, [username]);
    // Its token is kept in the state folder, readable by the daemon's user only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let path = t.bridge.dir.join("state/mattermost-mm.remote-tokens.json");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_admin_rights_says_so_and_falls_back_to_the_prefix() {
    let mut t = irc_side(Account::Bot, Config::default()).await;
    let (nick, channel) = (t.alice.nick.clone(), t.irc_channel.clone());
    t.bridge
        .wait_for_log("remote_users needs the token of a system admin")
        .await;
    t.alice.say(&channel, "one");
    t.alice.say(&channel, "two");
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &t.mm.bot_id, |p| p.len() >= 2)
        .await;
    assert_eq!(
        messages(&posts),
        [format!("<{nick}> one"), format!("<{nick}> two")]
    );
    assert!(users_named(&t.mm, &nick.to_lowercase()).await.is_empty());
    let _ = t.bridge.terminate();
}

/// Wait until the post `post_id` has exactly the reactions `expected` (user id, emoji name).
async fn wait_reactions(mm: &MmServer, post_id: &str, expected: &[(&str, &str)]) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reactions = mm
            .admin
            .ok(Method::GET, &format!("/posts/{post_id}/reactions"), None)
            .await;
        let have: Vec<(String, String)> = reactions
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                (
                    r["user_id"].as_str().unwrap_or_default().to_owned(),
                    r["emoji_name"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = expected
            .iter()
            .map(|(u, e)| ((*u).to_owned(), (*e).to_owned()))
            .collect();
        if have == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reactions {have:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_persons_edits_reactions_files_and_deletes_are_made_as_their_user_and_mentions_name_it()
 {
    let synapse = shared_synapse();
    let url = synapse.url();
    let bot = unique("botru");
    register(&url, &bot, "password").await;
    let mut carol = MatrixUser::new(&url, &unique("carol")).await;
    let alias_name = unique("roomru");
    let room = carol.create_room(&alias_name).await;
    carol.mark().await;
    // carol has a picture: her remote user gets it.
    let face: Vec<u8> = {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend((0..300u32).map(|n| (n * 13 % 251) as u8));
        png
    };
    let face_uri = carol.upload("face.png", "image/png", face.clone()).await;
    carol.set_avatar(&face_uri).await;
    let mm = MmServer::start("dept").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let token = admin_token(&mm).await;
    let irc_port = shared_inspircd().port;
    let irc_channel = unique("#rum");
    let irc_nick = unique("brrum");
    let mut ivan = IrcClient::connect(irc_port, &unique("ivan")).await;
    ivan.join(&irc_channel).await;
    let media_port = free_port();
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\
         media_listen = \"127.0.0.1:{media_port}\"\n\
         media_public_url = \"http://127.0.0.1:{media_port}/files\"\n\n{}{}{}\
         [[gateway]]\nname = \"g\"\nchannels = [\n\
           {{ network = \"mx\", channel = \"#{alias_name}:localhost\" }},\n\
           {{ network = \"irc\", channel = \"{irc_channel}\" }},\n\
           {{ network = \"mm\", channel = \"town\" }},\n]\n",
        matrix_network("mx", &url, &bot),
        irc_network("irc", irc_port, &irc_nick),
        network(&mm, &format!("token = \"{token}\""))
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    ivan.wait_join(&irc_nick, &irc_channel).await;
    let matrix_bot = format!("@{bot}:localhost");
    carol
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member"
                    && e.content["membership"] == "join"
                    && e.sender == matrix_bot
            })
        })
        .await;
    mm.wait_websocket(1).await;
    let localpart = crate::support::matrix_client::local_part(&carol.user_id);
    let username = format!("{}-mx", localpart.to_lowercase());

    // Text, then an edit of it.
    let original = carol.say(&room, "tpyo here").await;
    let user = wait_user(&mm, &username).await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    assert_eq!(
        user["props"]["tribridge_remote"],
        format!("mx/{}", carol.user_id)
    );
    let posts = mia
        .wait_posts_by(&channel_id, &user_id, |p| !p.is_empty())
        .await;
    assert_eq!(messages(&posts), ["tpyo here"]);
    let post_id = posts[0]["id"].as_str().unwrap().to_owned();
    carol
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "* typo here",
                   "m.new_content": {"msgtype": "m.text", "body": "typo here"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": original}}),
        )
        .await;
    let edited = mia
        .wait_post(&post_id, |p| p.is_some_and(|p| p["message"] == "typo here"))
        .await
        .unwrap();
    assert_eq!(edited["user_id"], user_id.as_str());
    no_override_props(&edited);

    // A reaction to mia's post, by carol's user.
    let mia_post = mia.say(&channel_id, "react to me").await;
    let mia_event = carol
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| e.body().contains("react to me"))
        })
        .await
        .into_iter()
        .rev()
        .find(|e| e.body().contains("react to me"))
        .unwrap();
    carol
        .send_event(
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": mia_event.event_id, "key": "👍"}}),
        )
        .await;
    wait_reactions(&mm, &mia_post, &[(&user_id, "+1")]).await;

    // A file: uploaded and posted by carol's user.
    let picture: Vec<u8> = (0..5000u32).map(|n| (n * 7 % 251) as u8).collect();
    let uri = carol.upload("cat.png", "image/png", picture.clone()).await;
    carol
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.image", "body": "our cat", "filename": "cat.png", "url": uri,
                   "info": {"mimetype": "image/png", "size": picture.len()}}),
        )
        .await;
    let posts = mia
        .wait_posts_by(&channel_id, &user_id, |p| p.len() >= 2)
        .await;
    let file_ids: Vec<String> = posts[1]["file_ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    assert_eq!(file_ids.len(), 1, "{:#}", posts[1]);
    assert_eq!(mia.download(&file_ids[0]).await, picture);
    let info = mia
        .ok(Method::GET, &format!("/files/{}/info", file_ids[0]), None)
        .await;
    assert_eq!(info["user_id"], user_id.as_str());

    // Her picture is her user's profile image.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let user = wait_user(&mm, &username).await;
        if user["last_picture_update"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no profile image: {user:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let image = reqwest::Client::new()
        .get(format!(
            "{}/api/v4/users/{user_id}/image",
            mm.emu.base_url()
        ))
        .bearer_auth(mia.token())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(image.to_vec(), face);

    // A redaction deletes her post, as her user.
    carol.redact(&room, &original).await;
    mia.wait_post(&post_id, |p| p.is_none()).await;

    // Mentions: ivan of IRC has his user too; carol naming him is `@ivan-irc` on Mattermost,
    // and mia's `@carol-mx` is carol's pill on Matrix.
    let ivan_nick = ivan.nick.clone();
    let ivan_username = format!("{}-irc", ivan_nick.to_lowercase());
    ivan.say(&irc_channel, "morning from ivan");
    wait_user(&mm, &ivan_username).await;
    carol
        .events_until(&room, Duration::from_mins(1), |events| {
            events
                .iter()
                .any(|e| e.body().contains("morning from ivan"))
        })
        .await;
    carol.say(&room, &format!("{ivan_nick}: hello ivan")).await;
    let posts = mia
        .wait_posts_by(&channel_id, &user_id, |p| {
            messages(p).iter().any(|m| m.contains("hello ivan"))
        })
        .await;
    assert_eq!(
        messages(&posts).last().unwrap(),
        &format!("@{ivan_username}: hello ivan")
    );
    mia.say(&channel_id, &format!("@{username} see the doc"))
        .await;
    let events = carol
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| e.body().contains("see the doc"))
        })
        .await;
    let event = events
        .iter()
        .rev()
        .find(|e| e.body().contains("see the doc"))
        .unwrap();
    assert_eq!(
        event.content["m.mentions"]["user_ids"],
        json!([carol.user_id]),
        "{event:#?}"
    );

    let _ = bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_access_tokens_disabled_say_so_and_fall_back_to_the_prefix() {
    let settings = Config {
        enable_user_access_tokens: false,
        ..Config::default()
    };
    let mut t = irc_side(Account::AdminLogin, settings).await;
    let (nick, channel) = (t.alice.nick.clone(), t.irc_channel.clone());
    t.bridge
        .wait_for_log("remote_users needs personal access tokens")
        .await;
    t.alice.say(&channel, "still here");
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &t.mm.admin.id, |p| !p.is_empty())
        .await;
    assert_eq!(messages(&posts), [format!("<{nick}> still here")]);
    assert!(users_named(&t.mm, &nick.to_lowercase()).await.is_empty());
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_remote_user_loses_its_token_and_the_person_is_shown_by_prefix() {
    let mut t = irc_side(Account::AdminToken, Config::default()).await;
    let (nick, channel) = (t.alice.nick.clone(), t.irc_channel.clone());
    let username = format!("{}-irc", nick.to_lowercase());
    t.alice.say(&channel, "first");
    let user = wait_user(&t.mm, &username).await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    t.mia
        .wait_posts_by(&t.channel_id, &user_id, |p| !p.is_empty())
        .await;
    let tokens =
        t.mm.admin
            .ok(Method::GET, &format!("/users/{user_id}/tokens"), None)
            .await;
    assert_eq!(tokens.as_array().unwrap().len(), 1, "{tokens:#}");

    // An admin deactivates the account: the bridge revokes its token.
    t.mm.admin
        .ok(Method::DELETE, &format!("/users/{user_id}"), None)
        .await;
    t.bridge
        .wait_for_log("A remote user was deactivated; its token is revoked")
        .await;
    let tokens =
        t.mm.admin
            .ok(Method::GET, &format!("/users/{user_id}/tokens"), None)
            .await;
    assert!(tokens.as_array().unwrap().is_empty(), "{tokens:#}");

    // alice is shown by the prefix from then on; nothing lost, no new account.
    t.alice.say(&channel, "second");
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &t.mm.admin.id, |p| !p.is_empty())
        .await;
    assert_eq!(messages(&posts), [format!("<{nick}> second")]);
    assert_eq!(users_named(&t.mm, &nick.to_lowercase()).await, [username]);
    let _ = t.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_that_lost_its_state_finds_its_remote_user_again_by_the_mark() {
    let mut t = irc_side(Account::AdminToken, Config::default()).await;
    let (nick, channel) = (t.alice.nick.clone(), t.irc_channel.clone());
    let username = format!("{}-irc", nick.to_lowercase());
    t.alice.say(&channel, "before");
    let user = wait_user(&t.mm, &username).await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    t.mia
        .wait_posts_by(&t.channel_id, &user_id, |p| !p.is_empty())
        .await;

    // The state folder is gone (store and tokens): the account is found by its mark, and
    // given a new token; no second account.
    let _ = t.bridge.terminate();
    std::fs::remove_dir_all(t.bridge.dir.join("state")).unwrap();
    t.bridge.restart();
    t.alice.wait_join(&t.nick, &channel).await;
    t.mm.wait_websocket(1).await;
    t.alice.say(&channel, "after");
    let posts = t
        .mia
        .wait_posts_by(&t.channel_id, &user_id, |p| p.len() >= 2)
        .await;
    assert_eq!(messages(&posts), ["before", "after"]);
    assert_eq!(users_named(&t.mm, &nick.to_lowercase()).await, [username]);
    // Nothing of hers came back to IRC.
    t.mia.say(&t.channel_id, "MARK-L").await;
    let seen = t.alice.texts_until(&channel, "MARK-L").await;
    assert_eq!(texts(&seen), ["<mia> MARK-L"]);
    let _ = t.bridge.terminate();
}
