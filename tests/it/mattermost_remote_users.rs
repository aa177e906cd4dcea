//! `remote_users = true` through the real daemon, against the Mattermost emulator and real
//! `InspIRCd` and Synapse: people of other networks post on Mattermost as Mattermost users of
//! their own (created once, with the bridge's admin token, posting with their own tokens), are
//! mentioned as `@username`, and a token that cannot do this falls back to the sender prefix
//! with a clear message and nothing lost.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::bridge::{Bridge, unique};
use crate::support::config::{irc_network, one_gateway as config};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::mattermost::{MmServer, MmUser, messages};
use crate::support::servers::shared_inspircd;

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

/// The bridge's Mattermost block with `token` and `remote_users = true`.
fn network(mm: &MmServer, token: &str) -> String {
    format!(
        "[network.mm]\ntype = \"mattermost\"\nurl = \"{}\"\nteam = \"{}\"\ntoken = \"{token}\"\n\
         remote_users = true\n",
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

/// IRC `alice` and Mattermost `mia` in one gateway; the bridge's Mattermost token is the
/// bot's (no admin) when `token_of_bot`, else the system admin's.
async fn irc_side(token_of_bot: bool) -> IrcSide {
    let server = shared_inspircd();
    let irc_channel = unique("#ru");
    let nick = unique("brru");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&irc_channel).await;
    let mm = MmServer::start("civi").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let token = if token_of_bot {
        mm.bot_token.clone()
    } else {
        admin_token(&mm).await
    };
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(
        dir.path(),
        &config(
            &[irc_network("irc", server.port, &nick), network(&mm, &token)],
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
    let mut t = irc_side(false).await;
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
    let mut t = irc_side(true).await;
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
