//! WebSocket behaviour: challenge auth (hello before the reply), action replies and errors,
//! per-connection seq, event payloads with JSON-string posts, own echo before the HTTP response,
//! `pending_post_id` in flight, one `post_deleted` for a root with replies, membership events,
//! and the drop hook with resume vs fresh reconnects.

mod common;

use std::time::Duration;

use common::{Ws, world, ws_for};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn challenge_auth_hello_then_reply_and_actions() {
    let w = world().await;
    let mut ws = Ws::connect(&w.emu.websocket_url(), None).await;
    // Before authentication every action is a 401 FAIL.
    let seq = ws.send_action("ping", json!({})).await;
    let r = ws.wait_reply(seq).await;
    assert_eq!(r["status"], "FAIL");
    assert_eq!(
        r["error"]["id"],
        "api.web_socket_router.not_authenticated.app_error"
    );
    assert_eq!(r["error"]["status_code"], 401);

    let seq = ws
        .send_action("authentication_challenge", json!({"token": w.alice.token}))
        .await;
    // hello comes first, then the reply.
    let first = ws.read().await.unwrap();
    assert_eq!(first["event"], "hello");
    assert_eq!(first["seq"], 0);
    assert_eq!(first["broadcast"]["user_id"], w.alice.user_id.as_str());
    assert_eq!(first["data"]["connection_id"].as_str().unwrap().len(), 26);
    assert!(
        first["data"]["server_version"]
            .as_str()
            .unwrap()
            .starts_with("9.11.0")
    );
    // Coming online is announced to the user's own connections only.
    let second = ws.read().await.unwrap();
    assert_eq!(second["event"], "status_change");
    assert_eq!(second["seq"], 1);
    assert_eq!(
        second["data"],
        json!({"status": "online", "user_id": w.alice.user_id})
    );
    let third = ws.read().await.unwrap();
    assert_eq!(third, json!({"status": "OK", "seq_reply": seq}));
    // A second challenge is ignored silently: the next frame answers the ping.
    ws.send_action("authentication_challenge", json!({"token": w.alice.token}))
        .await;
    let seq = ws.send_action("ping", json!({})).await;
    let r = ws.read().await.unwrap();
    assert_eq!(r["seq_reply"], seq);
    assert_eq!(r["data"]["text"], "pong");
    assert!(r["data"]["server_time"].as_i64().unwrap() > 0);

    let seq = ws.send_action("no_such_action", json!({})).await;
    let r = ws.wait_reply(seq).await;
    assert_eq!(r["status"], "FAIL");
    assert_eq!(
        r["error"]["id"],
        "api.web_socket_router.bad_action.app_error"
    );
    ws.send_raw(json!({"seq": 0, "action": "ping"})).await;
    let r = ws.wait_reply(0).await;
    assert_eq!(r["error"]["id"], "api.web_socket_router.bad_seq.app_error");
    let seq = ws
        .send_action(
            "get_statuses_by_ids",
            json!({"user_ids": [w.alice.user_id, w.bob.user_id]}),
        )
        .await;
    let r = ws.wait_reply(seq).await;
    assert_eq!(r["data"][&w.alice.user_id], "online");
    assert_eq!(r["data"][&w.bob.user_id], "offline");
    // Replies consumed no seq: the next event is seq 2.
    w.bob.create_post(&w.channel_id, "after replies").await;
    let e = ws.wait_event("posted", |e| e["event"] == "posted").await;
    assert_eq!(e["seq"], 2);

    // An unauthenticated socket is closed after about 5 s.
    let mut idle = Ws::connect(&w.emu.websocket_url(), None).await;
    idle.wait_closed().await;
    assert!(idle.events.is_empty());

    // A bad token in the challenge closes the socket.
    let mut bad = Ws::connect(&w.emu.websocket_url(), None).await;
    bad.send_action(
        "authentication_challenge",
        json!({"token": "ybndrfg8ejkmcpqxot1uwisza3"}),
    )
    .await;
    bad.wait_closed().await;
    assert!(bad.events.is_empty());
}

#[tokio::test]
async fn posted_payload_seq_and_audience() {
    let w = world().await;
    let mut alice = ws_for(&w.emu, &w.alice).await;
    let mut bot = ws_for(&w.emu, &w.bot).await;
    let admin_outside = ws_for(&w.emu, &w.admin).await;

    let r = w
        .bot
        .post(
            "/posts",
            json!({"channel_id": w.channel_id, "message": "hi @alice", "pending_post_id": "bot:1",
                   "props": {"from_webhook": "true", "override_username": "ircnick"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let (e, post) = alice
        .wait_post_event("posted", |p| p["id"] == id.as_str())
        .await;
    assert!(e["data"]["post"].is_string(), "post is a JSON string");
    assert_eq!(post["pending_post_id"], "bot:1");
    assert_eq!(post["props"]["from_bot"], "true");
    assert_eq!(e["data"]["channel_name"], "bridge");
    assert_eq!(e["data"]["channel_display_name"], "Bridge");
    assert_eq!(e["data"]["channel_type"], "O");
    assert_eq!(e["data"]["team_id"], w.team_id.as_str());
    assert_eq!(e["data"]["set_online"], false);
    // EnablePostUsernameOverride is off: sender_name stays the account.
    assert_eq!(e["data"]["sender_name"], "@bridgebot");
    assert_eq!(e["broadcast"]["channel_id"], w.channel_id.as_str());
    assert_eq!(e["broadcast"]["omit_users"], Value::Null);
    // Mentions are per recipient, a JSON string.
    assert_eq!(e["data"]["mentions"], json!([w.alice.user_id]).to_string());
    // The poster gets its own event too, without a mentions field.
    let (own, _) = bot
        .wait_post_event("posted", |p| p["id"] == id.as_str())
        .await;
    assert!(own["data"].get("mentions").is_none());

    // With the override enabled, a from_webhook post is named after the override.
    let mut cfg = w.emu.config();
    cfg.enable_post_username_override = true;
    w.emu.set_config(cfg);
    let r = w
        .bot
        .post(
            "/posts",
            json!({"channel_id": w.channel_id, "message": "x",
                   "props": {"from_webhook": "true", "override_username": "ircnick"}}),
        )
        .await;
    let id2 = r.json["id"].as_str().unwrap().to_owned();
    let (e, _) = alice
        .wait_post_event("posted", |p| p["id"] == id2.as_str())
        .await;
    assert_eq!(e["data"]["sender_name"], "ircnick");

    // Seq numbers are consecutive per connection from 0.
    for (i, e) in alice.events.iter().enumerate() {
        assert_eq!(e["seq"], i as i64, "{:?}", alice.events);
    }
    // The admin is not in the channel and got nothing but hello.
    drop(admin_outside);

    // typing reaches others but not the typist.
    let seq = alice
        .send_action(
            "user_typing",
            json!({"channel_id": w.channel_id, "parent_id": ""}),
        )
        .await;
    assert_eq!(alice.wait_reply(seq).await["status"], "OK");
    let t = bot.wait_event("typing", |e| e["event"] == "typing").await;
    assert_eq!(t["data"]["user_id"], w.alice.user_id.as_str());
    assert_eq!(t["broadcast"]["omit_users"][&w.alice.user_id], true);
    w.bob.create_post(&w.channel_id, "marker").await;
    alice
        .wait_post_event("posted", |p| p["message"] == "marker")
        .await;
    assert!(!alice.events.iter().any(|e| e["event"] == "typing"));
}

#[tokio::test]
async fn own_posted_arrives_before_the_http_response() {
    let w = world().await;
    let mut cfg = w.emu.config();
    cfg.post_response_delay = Some(Duration::from_millis(1500));
    w.emu.set_config(cfg);
    let mut bot = ws_for(&w.emu, &w.bot).await;
    let api = w.bot.clone();
    let ch = w.channel_id.clone();
    let body = json!({"channel_id": ch, "message": "race", "pending_post_id": "bot:race"});
    let b2 = body.clone();
    let request = tokio::spawn(async move { api.post("/posts", b2).await });
    let (_, post) = bot
        .wait_post_event("posted", |p| p["pending_post_id"] == "bot:race")
        .await;
    assert!(!request.is_finished(), "the event came before the response");
    // The same pending_post_id while the first request is in flight: 500.
    let mut cfg = w.emu.config();
    cfg.post_response_delay = None;
    w.emu.set_config(cfg);
    let r = w.bot.post("/posts", body.clone()).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.err_id(), "api.post.deduplicate_create_post.pending");
    let first = request.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.json["id"], post["id"]);
    // After success a repeat returns the same post and publishes nothing.
    let r = w.bot.post("/posts", body).await;
    assert_eq!(r.json["id"], post["id"]);
    w.alice.create_post(&w.channel_id, "marker").await;
    bot.wait_post_event("posted", |p| p["message"] == "marker")
        .await;
    let n = bot
        .events
        .iter()
        .filter(|e| {
            e["event"] == "posted" && e["data"]["post"].as_str().unwrap().contains("bot:race")
        })
        .count();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn edit_delete_and_reaction_events() {
    let w = world().await;
    let mut alice = ws_for(&w.emu, &w.alice).await;
    let root = w.bob.create_post(&w.channel_id, "root").await;
    let root_id = root["id"].as_str().unwrap().to_owned();
    let reply = w
        .bob
        .post(
            "/posts",
            json!({"channel_id": w.channel_id, "message": "reply", "root_id": root_id}),
        )
        .await;
    let reply_id = reply.json["id"].as_str().unwrap().to_owned();

    w.bob
        .put(
            &format!("/posts/{root_id}/patch"),
            json!({"message": "root v2"}),
        )
        .await;
    let (e, post) = alice
        .wait_post_event("post_edited", |p| p["id"] == root_id.as_str())
        .await;
    assert_eq!(post["message"], "root v2");
    assert!(post["edit_at"].as_i64().unwrap() > 0);
    for missing in ["team_id", "channel_name", "sender_name"] {
        assert!(e["data"].get(missing).is_none(), "{missing}");
    }

    w.alice
        .post(
            "/reactions",
            json!({"user_id": w.alice.user_id, "post_id": root_id, "emoji_name": "tada"}),
        )
        .await;
    let e = alice
        .wait_event("reaction_added", |e| e["event"] == "reaction_added")
        .await;
    let reaction: Value = serde_json::from_str(e["data"]["reaction"].as_str().unwrap()).unwrap();
    assert_eq!(reaction["emoji_name"], "tada");
    assert_eq!(reaction["post_id"], root_id.as_str());
    w.alice
        .delete(&format!("/users/me/posts/{root_id}/reactions/tada"))
        .await;
    let e = alice
        .wait_event("reaction_removed", |e| e["event"] == "reaction_removed")
        .await;
    assert!(e["data"]["reaction"].is_string());

    w.bob.delete(&format!("/posts/{root_id}")).await;
    let (_, post) = alice
        .wait_post_event("post_deleted", |p| p["id"] == root_id.as_str())
        .await;
    assert_eq!(post["id"], root_id.as_str());
    w.bob.create_post(&w.channel_id, "marker").await;
    alice
        .wait_post_event("posted", |p| p["message"] == "marker")
        .await;
    let deleted: Vec<&Value> = alice
        .events
        .iter()
        .filter(|e| e["event"] == "post_deleted")
        .collect();
    assert_eq!(
        deleted.len(),
        1,
        "one event for the root, none for {reply_id}"
    );
}

#[tokio::test]
async fn membership_and_channel_events() {
    let w = world().await;
    let mut alice = ws_for(&w.emu, &w.alice).await;
    let mut bot = ws_for(&w.emu, &w.bot).await;
    let carol = common::create_user(&w.admin, &w.emu.base_url(), &w.team_id, "carol").await;
    let r = w
        .alice
        .post(
            &format!("/channels/{}/members", w.channel_id),
            json!({"user_id": carol.user_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let e = alice
        .wait_event("user_added", |e| {
            e["event"] == "user_added" && e["data"]["user_id"] == carol.user_id.as_str()
        })
        .await;
    assert_eq!(e["data"]["team_id"], w.team_id.as_str());
    let (e, post) = alice
        .wait_post_event("posted", |p| p["type"] == "system_add_to_channel")
        .await;
    assert_eq!(post["props"]["addedUsername"], "carol");
    assert_eq!(e["data"]["sender_name"], "System");

    w.alice
        .put(
            &format!("/channels/{}/patch", w.channel_id),
            json!({"header": "topic!"}),
        )
        .await;
    let e = bot
        .wait_event("channel_updated", |e| e["event"] == "channel_updated")
        .await;
    let ch: Value = serde_json::from_str(e["data"]["channel"].as_str().unwrap()).unwrap();
    assert_eq!(ch["header"], "topic!");
    bot.wait_post_event("posted", |p| p["type"] == "system_header_change")
        .await;

    // Kicking the bot: the channel hears {user_id, remover_id}, the bot {channel_id, remover_id}.
    let r = w
        .alice
        .delete(&format!(
            "/channels/{}/members/{}",
            w.channel_id, w.bot.user_id
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let e = bot
        .wait_event("user_removed", |e| e["event"] == "user_removed")
        .await;
    assert_eq!(e["data"]["channel_id"], w.channel_id.as_str());
    assert_eq!(e["data"]["remover_id"], w.alice.user_id.as_str());
    assert_eq!(e["broadcast"]["user_id"], w.bot.user_id.as_str());
    let e = alice
        .wait_event("user_removed", |e| e["event"] == "user_removed")
        .await;
    assert_eq!(e["data"]["user_id"], w.bot.user_id.as_str());
    assert_eq!(e["broadcast"]["channel_id"], w.channel_id.as_str());
    // Posts after the kick no longer reach the bot.
    w.alice.create_post(&w.channel_id, "bot is gone").await;
    w.alice.create_post(&w.town_square, "town marker").await;
    bot.wait_post_event("posted", |p| p["message"] == "town marker")
        .await;
    assert!(!bot.events.iter().any(|e| {
        e["data"]["post"]
            .as_str()
            .is_some_and(|p| p.contains("bot is gone"))
    }));
}

#[tokio::test]
async fn drop_hook_then_resume_or_fresh_hello() {
    let w = world().await;
    let url = w.emu.websocket_url();
    let token = w.bot.token.clone().unwrap();
    let mut ws = Ws::connect(&url, Some(&token)).await;
    let hello = ws.wait_event("hello", |e| e["event"] == "hello").await;
    let conn_id = hello["data"]["connection_id"].as_str().unwrap().to_owned();
    w.alice.create_post(&w.channel_id, "one").await;
    let e = ws
        .wait_post_event("posted", |p| p["message"] == "one")
        .await
        .0;
    let last_seq = e["seq"].as_i64().unwrap();
    assert_eq!(w.emu.websocket_count(), 1);

    w.emu.drop_websockets();
    ws.wait_closed().await;
    // Missed while disconnected.
    w.alice.create_post(&w.channel_id, "two").await;

    // Resume: same connection, no hello, the missed event with its original seq.
    let mut ws = Ws::connect(
        &format!(
            "{url}?connection_id={conn_id}&sequence_number={}",
            last_seq + 1
        ),
        Some(&token),
    )
    .await;
    let first = ws.read().await.unwrap();
    assert_eq!(first["event"], "posted", "{first}");
    assert_eq!(first["seq"], last_seq + 1);
    let post: Value = serde_json::from_str(first["data"]["post"].as_str().unwrap()).unwrap();
    assert_eq!(post["message"], "two");
    assert!(!ws.events.iter().any(|e| e["event"] == "hello"));

    // After the server forgets the connection, the same reconnect is fresh: new id, hello, seq 0.
    w.emu.drop_websockets();
    ws.wait_closed().await;
    w.emu.forget_websocket_sessions();
    let mut ws = Ws::connect(
        &format!(
            "{url}?connection_id={conn_id}&sequence_number={}",
            last_seq + 2
        ),
        Some(&token),
    )
    .await;
    let first = ws.read().await.unwrap();
    assert_eq!(first["event"], "hello");
    assert_eq!(first["seq"], 0);
    assert_ne!(first["data"]["connection_id"], conn_id.as_str());

    // A connection id without a sequence number: the server closes the socket.
    let mut bad = Ws::connect(&format!("{url}?connection_id={conn_id}"), Some(&token)).await;
    bad.wait_closed().await;
    assert!(bad.events.is_empty());
}

#[tokio::test]
async fn direct_messages() {
    let w = world().await;
    let mut cfg = w.emu.config();
    cfg.enable_post_username_override = true;
    w.emu.set_config(cfg);
    let mut alice = ws_for(&w.emu, &w.alice).await;
    let r = w
        .bot
        .post("/channels/direct", json!([w.bot.user_id, w.alice.user_id]))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let dm = r.json["id"].as_str().unwrap().to_owned();
    let mut ids = [w.bot.user_id.clone(), w.alice.user_id.clone()];
    ids.sort();
    assert_eq!(r.json["name"], format!("{}__{}", ids[0], ids[1]));
    assert_eq!(r.json["team_id"], "");
    assert_eq!(r.json["type"], "D");
    let again = w
        .alice
        .post("/channels/direct", json!([w.alice.user_id, w.bot.user_id]))
        .await;
    assert_eq!(again.json["id"], dm.as_str());
    alice
        .wait_event("direct_added", |e| e["event"] == "direct_added")
        .await;
    w.bot
        .post(
            "/posts",
            json!({"channel_id": dm, "message": "psst",
                   "props": {"from_webhook": "true", "override_username": "ircnick"}}),
        )
        .await;
    let (e, _) = alice
        .wait_post_event("posted", |p| p["message"] == "psst")
        .await;
    assert_eq!(e["data"]["channel_type"], "D");
    assert_eq!(e["data"]["team_id"], "");
    assert_eq!(e["data"]["channel_display_name"], "@bridgebot");
    // No override in DMs, whatever the settings.
    assert_eq!(e["data"]["sender_name"], "@bridgebot");
    assert_eq!(e["data"]["mentions"], json!([w.alice.user_id]).to_string());
    // Bob is not in the DM.
    assert_eq!(
        w.bob.get(&format!("/channels/{dm}/posts")).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn channel_archive_event() {
    let w = world().await;
    let mut bob = ws_for(&w.emu, &w.bob).await;
    w.alice.delete(&format!("/channels/{}", w.channel_id)).await;
    let (_, post) = bob
        .wait_post_event("posted", |p| p["type"] == "system_channel_deleted")
        .await;
    assert_eq!(post["channel_id"], w.channel_id.as_str());
    let e = bob
        .wait_event("channel_deleted", |e| e["event"] == "channel_deleted")
        .await;
    assert_eq!(e["data"]["channel_id"], w.channel_id.as_str());
    assert_eq!(e["broadcast"]["team_id"], w.team_id.as_str());
}
