//! REST behaviour over real HTTP: auth and headers, users/bots/tokens, teams/channels, posts
//! (permissions, dedupe, limits), patch vs full update, deletes, `since`/cursor paging,
//! reactions, files, channel patch, client config and rate limiting.

mod common;

use common::{ADMIN, ADMIN_PW, Api, start, world};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn is_id(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 26
            && s.bytes()
                .all(|b| b"ybndrfg8ejkmcpqxot1uwisza345h769".contains(&b))
    })
}

#[tokio::test]
async fn login_headers_and_auth_errors() {
    let emu = start().await;
    let base = emu.base_url();
    let anon = Api::anonymous(&base);

    let r = anon
        .post(
            "/users/login",
            json!({"login_id": ADMIN, "password": ADMIN_PW, "device_id": "", "unknown_field": 1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        is_id(&json!(r.header("Token"))),
        "Token header: {:?}",
        r.headers
    );
    assert!(is_id(&json!(r.header("X-Request-Id"))));
    assert!(r.header("X-Version-Id").starts_with("9.11.0."));
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json["username"], ADMIN);
    assert!(r.json.get("password").is_none());
    assert!(r.json["roles"].as_str().unwrap().contains("system_admin"));
    let token = r.header("Token").to_owned();

    // BEARER in any case and the Token scheme work.
    for scheme in ["BEARER", "bearer", "Token"] {
        let resp = reqwest::Client::new()
            .get(format!("{base}/api/v4/users/me"))
            .header("Authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{scheme}");
        assert_eq!(resp.headers()["expires"], "0");
    }

    let r = anon.get("/users/me").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.err_id(), "api.context.session_expired.app_error");
    assert_eq!(r.json["status_code"], 401);
    assert_eq!(r.json["request_id"], r.header("X-Request-Id"));
    assert_eq!(r.header("content-type"), "application/json");

    let r = anon.get("/users/me?access_token=abc").await;
    assert_eq!(r.err_id(), "api.context.token_provided.app_error");

    let r = anon
        .post(
            "/users/login",
            json!({"login_id": ADMIN, "password": "wrong"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.err_id(),
        "api.user.login.invalid_credentials_email_username"
    );
    let r = anon
        .post("/users/login", json!({"login_id": ADMIN, "password": ""}))
        .await;
    assert_eq!(r.err_id(), "api.user.login.blank_pwd.app_error");

    // Malformed body: 400 with the AppError body, never a panic.
    let resp = reqwest::Client::new()
        .post(format!("{base}/api/v4/users/login"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    let r = Api::read(resp).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.err_id(), "api.context.invalid_body_param.app_error");

    // The test hook expires login sessions.
    let second = Api::login(&base, ADMIN, ADMIN_PW).await;
    emu.expire_sessions();
    let r = second.get("/users/me").await;
    assert_eq!(r.err_id(), "api.context.session_expired.app_error");
    let r = anon
        .post(
            "/users/login",
            json!({"login_id": ADMIN, "password": ADMIN_PW}),
        )
        .await;
    let token = r.header("Token").to_owned();
    let me = anon.with_token(&token, "");
    let r = me.post("/users/logout", json!({})).await;
    assert_eq!(r.json, json!({"status": "OK"}));
    assert_eq!(me.get("/users/me").await.status, StatusCode::UNAUTHORIZED);

    let r = anon.get("/system/ping").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["status"], "OK");
    let r = anon.get("/no/such/route").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.err_id(), "api.context.404.app_error");
    emu.shutdown().await;
}

#[tokio::test]
async fn users_bots_and_tokens() {
    let w = world().await;
    let base = w.emu.base_url();

    let r = w
        .admin
        .post(
            "/users",
            json!({"username": "alice", "email": "a2@example.org", "password": "longenough"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.err_id(), "app.user.save.username_exists.app_error");
    let r = w
        .admin
        .post(
            "/users",
            json!({"username": "9bad", "email": "x@example.org", "password": "longenough"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Only an admin may create users on a closed server.
    let r = Api::anonymous(&base)
        .post(
            "/users",
            json!({"username": "carol", "email": "c@example.org", "password": "longenough"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let r = w.bob.get(&format!("/users/{}", w.alice.user_id)).await;
    assert_eq!(r.json["username"], "alice");
    assert!(is_id(&r.json["id"]));
    assert!(r.json["create_at"].as_i64().unwrap() > 1_600_000_000_000);
    let r = w.bob.get("/users/username/alice").await;
    assert_eq!(r.json["id"], w.alice.user_id.as_str());
    assert_eq!(
        w.bob.get("/users/username/nobody").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        w.bob.get("/users/bad-id").await.status,
        StatusCode::BAD_REQUEST
    );
    let r = w
        .bob
        .post(
            "/users/ids",
            json!([w.alice.user_id, "ybndrfg8ejkmcpqxot1uwisza3"]),
        )
        .await;
    assert_eq!(r.json.as_array().unwrap().len(), 1);
    assert_eq!(
        w.bob.post("/users/ids", json!([])).await.status,
        StatusCode::BAD_REQUEST
    );

    // The bot token authenticates as the bot.
    let r = w.bot.get("/users/me").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["is_bot"], true);
    assert_eq!(r.json["username"], "bridgebot");
    // Bots cannot log in with a password.
    let r = Api::anonymous(&base)
        .post(
            "/users/login",
            json!({"login_id": "bridgebot", "password": "x"}),
        )
        .await;
    assert_eq!(r.err_id(), "api.user.login.bot_login_forbidden.app_error");
    // Only admins create bots and tokens.
    let r = w.alice.post("/bots", json!({"username": "mybot"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = w
        .alice
        .post(
            &format!("/users/{}/tokens", w.alice.user_id),
            json!({"description": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // A human PAT works while EnableUserAccessTokens is on, is refused once it is off; bot
    // tokens keep working.
    let r = w
        .admin
        .post(
            &format!("/users/{}/tokens", w.alice.user_id),
            json!({"description": "pat"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(is_id(&r.json["token"]) && r.json["is_active"] == true);
    let pat = w
        .alice
        .with_token(r.json["token"].as_str().unwrap(), &w.alice.user_id);
    assert_eq!(pat.get("/users/me").await.json["username"], "alice");
    let listed = w
        .admin
        .get(&format!("/users/{}/tokens", w.alice.user_id))
        .await;
    assert!(listed.json[0].get("token").is_none());
    let mut cfg = w.emu.config();
    cfg.enable_user_access_tokens = false;
    w.emu.set_config(cfg);
    assert_eq!(pat.get("/users/me").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(w.bot.get("/users/me").await.status, StatusCode::OK);
}

#[tokio::test]
async fn teams_channels_and_membership() {
    let w = world().await;
    let r = w.alice.get("/teams/name/TEST").await;
    assert_eq!(r.json["id"], w.team_id.as_str());
    let r = w.alice.get("/users/me/teams").await;
    assert_eq!(r.json.as_array().unwrap().len(), 1);
    assert_eq!(
        w.alice.get("/teams/name/nope").await.status,
        StatusCode::NOT_FOUND
    );

    let r = w
        .alice
        .get(&format!("/teams/{}/channels/name/BRIDGE", w.team_id))
        .await;
    assert_eq!(r.json["id"], w.channel_id.as_str());
    assert_eq!(r.json["type"], "O");

    // Joining again is 201 with the same member.
    let path = format!("/channels/{}/members", w.channel_id);
    let r = w.bob.post(&path, json!({"user_id": w.bob.user_id})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json["user_id"], w.bob.user_id.as_str());
    assert_eq!(r.json["roles"], "channel_user");
    let r = w
        .bob
        .get(&format!("/channels/{}/members/me", w.channel_id))
        .await;
    assert_eq!(r.json["channel_id"], w.channel_id.as_str());

    // A private channel: invisible by name to non-members (404), not joinable by a bot (403).
    let r = w
        .alice
        .post(
            "/channels",
            json!({"team_id": w.team_id, "name": "secret", "display_name": "Secret", "type": "P"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let secret = r.json["id"].as_str().unwrap().to_owned();
    let r = w
        .bob
        .get(&format!("/teams/{}/channels/name/secret", w.team_id))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.err_id(), "app.channel.get_by_name.missing.app_error");
    assert_eq!(
        w.bob.get(&format!("/channels/{secret}")).await.status,
        StatusCode::FORBIDDEN
    );
    let r = w
        .bot
        .post(
            &format!("/channels/{secret}/members"),
            json!({"user_id": w.bot.user_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Alice (a member) may add the bot.
    let r = w
        .alice
        .post(
            &format!("/channels/{secret}/members"),
            json!({"user_id": w.bot.user_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    // Unknown channel id: 403 before 404.
    let r = w.bob.get("/channels/ybndrfg8ejkmcpqxot1uwisza3").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.err_id(), "api.context.permissions.app_error");
    // Duplicate channel name.
    let r = w
        .alice
        .post(
            "/channels",
            json!({"team_id": w.team_id, "name": "bridge", "display_name": "Again", "type": "O"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // Leave: system post, membership gone.
    let r = w
        .bob
        .delete(&format!(
            "/channels/{}/members/{}",
            w.channel_id, w.bob.user_id
        ))
        .await;
    assert_eq!(r.json["status"], "OK");
    assert_eq!(
        w.bob
            .get(&format!("/channels/{}/members/me", w.channel_id))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = w
        .alice
        .get(&format!("/channels/{}/posts", w.channel_id))
        .await;
    let newest = &r.json["posts"][r.json["order"][0].as_str().unwrap()];
    assert_eq!(newest["type"], "system_leave_channel");
    assert_eq!(newest["message"], "bob left the channel.");
}

#[tokio::test]
async fn create_post_rules() {
    let w = world().await;
    let ch = w.channel_id.clone();

    // Unknown channel and non-member: both 403 (permission before existence).
    let r = w
        .bob
        .post(
            "/posts",
            json!({"channel_id": "ybndrfg8ejkmcpqxot1uwisza3", "message": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.err_id(), "api.context.permissions.app_error");
    let r = w
        .alice
        .post(
            "/channels",
            json!({"team_id": w.team_id, "name": "alone", "display_name": "Alone", "type": "O"}),
        )
        .await;
    let alone = r.json["id"].as_str().unwrap().to_owned();
    let r = w
        .bob
        .post("/posts", json!({"channel_id": alone, "message": "x"}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Reading the public channel's posts is allowed to a team member though.
    assert_eq!(
        w.bob.get(&format!("/channels/{alone}/posts")).await.status,
        StatusCode::OK
    );

    let r = w
        .alice
        .post(
            "/posts",
            json!({"channel_id": ch, "message": "x", "type": "system_join_channel"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.err_id(), "api.context.invalid_param.app_error");
    let r = w
        .alice
        .post(
            "/posts",
            json!({"channel_id": ch, "message": "x", "root_id": "ybndrfg8ejkmcpqxot1uwisza3"}),
        )
        .await;
    assert_eq!(r.err_id(), "api.post.create_post.root_id.app_error");
    let long = "é".repeat(16384);
    let r = w
        .alice
        .post("/posts", json!({"channel_id": ch, "message": long}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.err_id(), "model.post.is_valid.msg.app_error");
    let ok = "é".repeat(16383);
    let r = w
        .alice
        .post("/posts", json!({"channel_id": ch, "message": ok}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let huge = "a".repeat(310_000);
    let r = w
        .alice
        .post("/posts", json!({"channel_id": ch, "message": huge}))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = w
        .alice
        .post("/posts", json!({"channel_id": ch, "message": 5}))
        .await;
    assert_eq!(r.err_id(), "api.context.invalid_body_param.app_error");

    // A reply to a reply is refused; a reply to the root is fine.
    let root = w.alice.create_post(&ch, "root").await;
    let root_id = root["id"].as_str().unwrap();
    let r = w
        .bob
        .post(
            "/posts",
            json!({"channel_id": ch, "message": "re", "root_id": root_id}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let reply_id = r.json["id"].as_str().unwrap().to_owned();
    let r = w
        .bob
        .post(
            "/posts",
            json!({"channel_id": ch, "message": "re2", "root_id": reply_id}),
        )
        .await;
    assert_eq!(r.err_id(), "api.post.create_post.root_id.app_error");
    let r = w.bob.get(&format!("/posts/{root_id}")).await;
    assert_eq!(r.json["reply_count"], 1);
    assert!(r.json["update_at"].as_i64() > root["update_at"].as_i64());
    // The count is of the thread's live replies: an edit's history row and a deleted reply
    // are not in it.
    let r = w
        .bob
        .put(
            &format!("/posts/{reply_id}/patch"),
            json!({"message": "re, edited"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = w
        .bob
        .post(
            "/posts",
            json!({"channel_id": ch, "message": "re3", "root_id": root_id}),
        )
        .await;
    let third = r.json["id"].as_str().unwrap().to_owned();
    assert_eq!(
        w.bob.get(&format!("/posts/{root_id}")).await.json["reply_count"],
        2
    );
    assert_eq!(
        w.bob.delete(&format!("/posts/{third}")).await.status,
        StatusCode::OK
    );
    let r = w.bob.get(&format!("/posts/{root_id}")).await;
    assert_eq!(r.json["reply_count"], 1);

    // pending_post_id: a repeat returns the same post; GET shows it blank.
    let body = json!({"channel_id": ch, "message": "once", "pending_post_id": "abc:1"});
    let first = w.bot.post("/posts", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(first.json["pending_post_id"], "abc:1");
    assert_eq!(first.json["props"]["from_bot"], "true");
    assert_eq!(first.json["user_id"], w.bot.user_id.as_str());
    let again = w.bot.post("/posts", body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.json["id"], first.json["id"]);
    let got = w
        .bot
        .get(&format!("/posts/{}", first.json["id"].as_str().unwrap()))
        .await;
    assert_eq!(got.json["pending_post_id"], "");
    assert_eq!(got.json["metadata"], json!({}));
    assert!(got.json.get("file_ids").is_none());

    // Override props are stored verbatim; non-admins cannot choose create_at.
    let r = w
        .bot
        .post(
            "/posts",
            json!({"channel_id": ch, "message": "hi", "create_at": 5,
                   "props": {"override_username": "ircnick", "from_webhook": "true", "add_channel_member": {"x": 1}}}),
        )
        .await;
    assert_eq!(r.json["props"]["override_username"], "ircnick");
    assert_eq!(r.json["props"]["from_webhook"], "true");
    assert!(r.json["props"].get("add_channel_member").is_none());
    assert!(r.json["create_at"].as_i64().unwrap() > 5);
}

#[tokio::test]
async fn patch_keeps_props_full_update_wipes_them() {
    let w = world().await;
    let r = w
        .bot
        .post(
            "/posts",
            json!({"channel_id": w.channel_id, "message": "v1",
                   "props": {"override_username": "ircnick", "from_webhook": "true"}}),
        )
        .await;
    let id = r.json["id"].as_str().unwrap().to_owned();
    let r = w
        .bot
        .put(&format!("/posts/{id}/patch"), json!({"message": "v2"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["message"], "v2");
    assert!(r.json["edit_at"].as_i64().unwrap() > 0);
    assert_eq!(r.json["props"]["override_username"], "ircnick");
    assert_eq!(r.json["id"], id.as_str());

    // The full update wipes props (and from_bot) when the body has none.
    let r = w
        .bot
        .put(&format!("/posts/{id}"), json!({"id": id, "message": "v3"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["message"], "v3");
    assert_eq!(r.json["props"], json!({}));
    let r = w
        .bot
        .put(
            &format!("/posts/{id}"),
            json!({"id": w.alice.user_id, "message": "v4"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.err_id(), "api.context.invalid_body_param.app_error");

    // Editing someone else's post, or a missing one: 403.
    let r = w
        .alice
        .put(&format!("/posts/{id}/patch"), json!({"message": "hijack"}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = w
        .alice
        .put(
            "/posts/ybndrfg8ejkmcpqxot1uwisza3/patch",
            json!({"message": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The admin may.
    let r = w
        .admin
        .put(&format!("/posts/{id}/patch"), json!({"message": "admin"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // System posts cannot be edited.
    let r = w
        .alice
        .get(&format!("/channels/{}/posts", w.town_square))
        .await;
    let sys = r.json["order"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| r.json["posts"][i.as_str().unwrap()]["type"] == "system_join_team")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let r = w
        .admin
        .put(&format!("/posts/{sys}/patch"), json!({"message": "x"}))
        .await;
    assert_eq!(r.err_id(), "api.post.update_post.system_message.app_error");
}

#[tokio::test]
async fn deleting_a_root_takes_its_replies() {
    let w = world().await;
    let ch = &w.channel_id;
    let root = w.alice.create_post(ch, "root").await;
    let root_id = root["id"].as_str().unwrap().to_owned();
    let mut replies = Vec::new();
    for i in 0..2 {
        let r = w
            .bob
            .post(
                "/posts",
                json!({"channel_id": ch, "message": format!("reply {i}"), "root_id": root_id}),
            )
            .await;
        replies.push(r.json["id"].as_str().unwrap().to_owned());
    }
    let r = w.bob.get(&format!("/posts/{}/thread", replies[0])).await;
    assert_eq!(r.json["order"].as_array().unwrap().len(), 3);
    assert_eq!(r.json["order"][2], root_id.as_str());

    // Bob may not delete Alice's post.
    assert_eq!(
        w.bob.delete(&format!("/posts/{root_id}")).await.status,
        StatusCode::FORBIDDEN
    );
    let r = w.alice.delete(&format!("/posts/{root_id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json, json!({"status": "OK"}));
    for id in std::iter::once(&root_id).chain(&replies) {
        let r = w.bob.get(&format!("/posts/{id}")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{id}");
        assert_eq!(r.err_id(), "app.post.get.app_error");
    }
    assert_eq!(
        w.alice.delete(&format!("/posts/{root_id}")).await.status,
        StatusCode::FORBIDDEN
    );
    let r = w.bob.get(&format!("/channels/{ch}/posts")).await;
    let order = r.json["order"].as_array().unwrap();
    assert!(!order.iter().any(|i| *i == root_id.as_str()));
}

#[tokio::test]
async fn since_returns_edits_history_deletes_and_reaction_bumps() {
    let w = world().await;
    let ch = &w.channel_id;
    let a = w.alice.create_post(ch, "a").await;
    let b = w.alice.create_post(ch, "b").await;
    let c = w.alice.create_post(ch, "c").await;
    let since = c["create_at"].as_i64().unwrap();
    let (a_id, b_id, c_id) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
        c["id"].as_str().unwrap().to_owned(),
    );

    // Nothing changed yet.
    let r = w
        .bob
        .get(&format!("/channels/{ch}/posts?since={since}"))
        .await;
    assert_eq!(r.json["order"], json!([]));

    w.alice
        .put(&format!("/posts/{a_id}/patch"), json!({"message": "a2"}))
        .await;
    w.alice.delete(&format!("/posts/{b_id}")).await;
    let r = w
        .bob
        .post(
            "/reactions",
            json!({"user_id": w.bob.user_id, "post_id": c_id, "emoji_name": "smile"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = w
        .bob
        .get(&format!(
            "/channels/{ch}/posts?since={since}&page=3&per_page=1"
        ))
        .await;
    let order: Vec<&str> = r.json["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let posts = &r.json["posts"];
    assert_eq!(r.json["next_post_id"], "");
    assert_eq!(r.json["prev_post_id"], "");
    // a (edited), its history row, b (deleted, blanked), c (reaction): newest first by create_at.
    assert_eq!(order.len(), 4, "{order:?}");
    assert_eq!(order[0], c_id);
    assert_eq!(posts[&c_id]["has_reactions"], true);
    assert_eq!(posts[&b_id]["message"], "");
    assert!(posts[&b_id]["delete_at"].as_i64().unwrap() > 0);
    assert_eq!(posts[&a_id]["message"], "a2");
    let hist: Vec<&Value> = order
        .iter()
        .map(|i| &posts[*i])
        .filter(|p| p["original_id"] == a_id.as_str())
        .collect();
    assert_eq!(hist.len(), 1);
    // History rows have delete_at > 0, so they come blanked like deleted posts.
    assert_eq!(hist[0]["message"], "");
    assert!(hist[0]["delete_at"].as_i64().unwrap() > 0);
    assert_ne!(hist[0]["id"], a_id.as_str());

    // Plain paging excludes deleted and history rows; cursors point past the page.
    let r = w.bob.get(&format!("/channels/{ch}/posts?per_page=1")).await;
    assert_eq!(r.json["order"], json!([c_id]));
    assert_eq!(r.json["prev_post_id"], a_id.as_str());
    let r = w
        .bob
        .get(&format!("/channels/{ch}/posts?before={c_id}&per_page=1"))
        .await;
    assert_eq!(r.json["order"], json!([a_id]));
    assert_eq!(r.json["next_post_id"], c_id.as_str());
    let r = w
        .bob
        .get(&format!("/channels/{ch}/posts?after={a_id}&per_page=5"))
        .await;
    assert_eq!(r.json["order"], json!([c_id]));
    assert_eq!(r.json["prev_post_id"], a_id.as_str());
    assert_eq!(r.json["next_post_id"], "");
    // Absurd paging values are clamped, never a crash.
    for q in [
        "page=1000000000000000000&per_page=200",
        "before={c}&page=99999999999999999&per_page=999",
        "after={c}&page=99999999999999999",
    ] {
        let q = q.replace("{c}", &c_id);
        let r = w.bob.get(&format!("/channels/{ch}/posts?{q}")).await;
        assert_eq!(r.status, StatusCode::OK, "{q}");
        assert_eq!(r.json["order"], json!([]), "{q}");
    }
    let r = w.bob.get(&format!("/channels/{ch}/posts?page=-1")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // A deleted cursor post still anchors the page (b is deleted).
    let r = w
        .bob
        .get(&format!("/channels/{ch}/posts?after={b_id}"))
        .await;
    assert_eq!(r.json["order"], json!([c_id]));
    let r = w
        .bob
        .get(&format!("/channels/{ch}/posts?before={b_id}&per_page=1"))
        .await;
    assert_eq!(r.json["order"], json!([a_id]));
    let r = w
        .bob
        .get(&format!("/channels/{ch}/posts?before=not-an-id"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = w
        .bob
        .get(&format!("/channels/{ch}/posts?since=yesterday"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = w
        .bob
        .get("/channels/ybndrfg8ejkmcpqxot1uwisza3/posts")
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn reactions() {
    let w = world().await;
    let p = w.alice.create_post(&w.channel_id, "react to me").await;
    let pid = p["id"].as_str().unwrap();
    let body = json!({"user_id": w.bob.user_id, "post_id": pid, "emoji_name": "thumbsup"});
    let r = w.bob.post("/reactions", body.clone()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["channel_id"], w.channel_id.as_str());
    assert_eq!(w.bob.post("/reactions", body).await.status, StatusCode::OK);
    let r = w.bob.get(&format!("/posts/{pid}/reactions")).await;
    assert_eq!(r.json.as_array().unwrap().len(), 1);
    let r = w.bob.get(&format!("/posts/{pid}")).await;
    assert_eq!(r.json["has_reactions"], true);
    assert_eq!(r.json["metadata"]["reactions"][0]["emoji_name"], "thumbsup");
    // Someone else's user_id, bad emoji names.
    let r = w
        .alice
        .post(
            "/reactions",
            json!({"user_id": w.bob.user_id, "post_id": pid, "emoji_name": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = w
        .alice
        .post(
            "/reactions",
            json!({"user_id": w.alice.user_id, "post_id": pid, "emoji_name": ":smile:"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = w
        .bob
        .delete(&format!(
            "/users/{}/posts/{pid}/reactions/thumbsup",
            w.bob.user_id
        ))
        .await;
    assert_eq!(r.json, json!({"status": "OK"}));
    let r = w.bob.get(&format!("/posts/{pid}")).await;
    assert!(r.json.get("has_reactions").is_none());
    let r = w
        .alice
        .delete(&format!(
            "/users/{}/posts/{pid}/reactions/thumbsup",
            w.bob.user_id
        ))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn files_upload_attach_download() {
    let w = world().await;
    let base = w.emu.base_url();
    let upload = |api: Api, name: &'static str, data: &'static [u8]| {
        let base = base.clone();
        let ch = w.channel_id.clone();
        async move {
            let form = reqwest::multipart::Form::new()
                .text("channel_id", ch)
                .part(
                    "files",
                    reqwest::multipart::Part::bytes(data).file_name(name),
                )
                .text("client_ids", "c1");
            let resp = reqwest::Client::new()
                .post(format!("{base}/api/v4/files"))
                .header("Authorization", format!("Bearer {}", api.token.unwrap()))
                .multipart(form)
                .send()
                .await
                .unwrap();
            Api::read(resp).await
        }
    };
    let r = upload(w.bot.clone(), "notes.txt", b"hello file").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let info = &r.json["file_infos"][0];
    assert_eq!(info["name"], "notes.txt");
    assert_eq!(info["extension"], "txt");
    assert_eq!(info["size"], 10);
    assert_eq!(info["mime_type"], "text/plain");
    assert_eq!(r.json["client_ids"], json!(["c1"]));
    let fid = info["id"].as_str().unwrap().to_owned();
    // Bob's file cannot be attached by the bot: silently dropped.
    let other = upload(
        w.bob.clone(),
        "b.png",
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x08",
    )
    .await;
    let other_id = other.json["file_infos"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let png = &other.json["file_infos"][0];
    assert_eq!(png["mime_type"], "image/png");
    assert_eq!(
        (png["width"].as_i64(), png["height"].as_i64()),
        (Some(16), Some(8))
    );
    assert_eq!(png["has_preview_image"], true);
    // Not readable by others before it is attached.
    assert_eq!(
        w.alice.get(&format!("/files/{fid}/info")).await.status,
        StatusCode::FORBIDDEN
    );
    let r = w
        .bot
        .post(
            "/posts",
            json!({"channel_id": w.channel_id, "message": "see file", "file_ids": [fid, other_id]}),
        )
        .await;
    assert_eq!(r.json["file_ids"], json!([fid]));
    assert_eq!(r.json["metadata"]["files"][0]["post_id"], r.json["id"]);
    let resp = reqwest::Client::new()
        .get(format!("{base}/api/v4/files/{fid}"))
        .header(
            "Authorization",
            format!("Bearer {}", w.alice.token.as_ref().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"hello file");
    // Upload needs channel membership.
    let r = w
        .alice
        .post(
            "/channels",
            json!({"team_id": w.team_id, "name": "alone", "display_name": "Alone", "type": "O"}),
        )
        .await;
    let alone = r.json["id"].as_str().unwrap().to_owned();
    let resp = reqwest::Client::new()
        .post(format!(
            "{base}/api/v4/files?channel_id={alone}&filename=x.txt"
        ))
        .header(
            "Authorization",
            format!("Bearer {}", w.bob.token.as_ref().unwrap()),
        )
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn channel_patch_posts_header_change() {
    let w = world().await;
    let r = w
        .alice
        .put(
            &format!("/channels/{}/patch", w.channel_id),
            json!({"header": "new topic"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["header"], "new topic");
    let r = w
        .bob
        .get(&format!("/channels/{}/posts?per_page=1", w.channel_id))
        .await;
    let p = &r.json["posts"][r.json["order"][0].as_str().unwrap()];
    assert_eq!(p["type"], "system_header_change");
    assert_eq!(p["props"]["new_header"], "new topic");
    assert_eq!(p["props"]["old_header"], "");
    assert_eq!(p["props"]["username"], "alice");
    let r = w
        .bob
        .put(
            "/channels/ybndrfg8ejkmcpqxot1uwisza3/patch",
            json!({"header": "x"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn client_config_formats() {
    let w = world().await;
    let anon = Api::anonymous(&w.emu.base_url());
    let r = w.bot.get("/config/client?format=old").await;
    assert_eq!(r.status, StatusCode::OK);
    for (_, v) in r.json.as_object().unwrap() {
        assert!(v.is_string());
    }
    assert_eq!(r.json["MaxPostSize"], "16383");
    assert_eq!(r.json["EnablePostUsernameOverride"], "false");
    let r = anon.get("/config/client?format=old").await;
    assert!(r.json.get("MaxPostSize").is_none());
    assert_eq!(
        anon.get("/config/client").await.status,
        StatusCode::NOT_IMPLEMENTED
    );
    assert_eq!(
        anon.get("/config/client?format=new").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn rate_limit_answers_429_in_plain_text() {
    let w = world().await;
    w.emu.set_rate_limit(Some(2));
    let first = w.bot.get("/users/me").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("X-RateLimit-Limit"), "2");
    assert_eq!(first.header("X-RateLimit-Remaining"), "1");
    assert!(first.header("X-RateLimit-Reset").parse::<u64>().unwrap() >= 1);
    let mut limited = None;
    for _ in 0..5 {
        let r = w.bot.get("/users/me").await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a 429 within the burst");
    assert_eq!(r.text, "limit exceeded\n");
    assert!(r.header("content-type").starts_with("text/plain"));
    assert!(r.header("Retry-After").parse::<u64>().unwrap() >= 1);
    assert_eq!(r.header("X-RateLimit-Remaining"), "0");
    assert!(r.header("X-RateLimit-Reset").parse::<u64>().unwrap() >= 1);
    w.emu.set_rate_limit(None);
    let r = w.bot.get("/users/me").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("X-RateLimit-Limit"), "");
}

#[tokio::test]
async fn etag_collapsed_threads_pins_me_and_archive() {
    let w = world().await;
    let base = w.emu.base_url();
    let ch = &w.channel_id;
    let root = w.alice.create_post(ch, "root").await;
    let root_id = root["id"].as_str().unwrap().to_owned();
    let since = root["create_at"].as_i64().unwrap() - 1;
    let reply = w
        .bob
        .post(
            "/posts",
            json!({"channel_id": ch, "message": "reply", "root_id": root_id}),
        )
        .await;
    let reply_id = reply.json["id"].as_str().unwrap().to_owned();

    // ETag on plain paging; If-None-Match answers 304 until something changes.
    let r = w.bob.get(&format!("/channels/{ch}/posts")).await;
    let etag = r.header("ETag").to_owned();
    assert!(!etag.is_empty());
    let get_with_etag = || {
        let url = format!("{base}/api/v4/channels/{ch}/posts");
        let token = w.bob.token.clone().unwrap();
        let etag = etag.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .header("Authorization", format!("Bearer {token}"))
                .header("If-None-Match", etag)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(get_with_etag().await, StatusCode::NOT_MODIFIED);
    // Pinning bumps update_at: the post reappears in `since` and the ETag changes.
    let r = w
        .alice
        .post(&format!("/posts/{root_id}/pin"), json!({}))
        .await;
    assert_eq!(r.json["status"], "OK");
    assert_eq!(
        w.bob.get(&format!("/posts/{root_id}")).await.json["is_pinned"],
        true
    );
    let r = w.bob.get(&format!("/channels/{ch}/pinned")).await;
    assert_eq!(r.json["order"], json!([root_id]));
    let r = w
        .alice
        .post(
            "/reactions",
            json!({"user_id": w.alice.user_id, "post_id": root_id, "emoji_name": "pushpin"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = w.bob.post("/posts/ids/reactions", json!([root_id])).await;
    assert_eq!(r.json[&root_id][0]["emoji_name"], "pushpin");
    assert_eq!(get_with_etag().await, StatusCode::OK);

    // collapsedThreads=true: only live roots, so the deleted reply is invisible.
    w.bob.delete(&format!("/posts/{reply_id}")).await;
    let r = w
        .bob
        .get(&format!("/channels/{ch}/posts?since={since}"))
        .await;
    assert!(
        r.json["order"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| *i == reply_id.as_str())
    );
    let r = w
        .bob
        .get(&format!(
            "/channels/{ch}/posts?since={since}&collapsedThreads=true"
        ))
        .await;
    assert_eq!(r.json["order"], json!([root_id]));

    // /me via the command endpoint.
    let r = w
        .alice
        .post(
            "/commands/execute",
            json!({"channel_id": ch, "command": "/me waves"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = w.bob.get(&format!("/channels/{ch}/posts?per_page=1")).await;
    let p = &r.json["posts"][r.json["order"][0].as_str().unwrap()];
    assert_eq!(p["type"], "me");
    assert_eq!(p["message"], "*waves*");
    let r = w
        .alice
        .post(
            "/commands/execute",
            json!({"channel_id": ch, "command": "/nope"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Archive: posting is then a 400.
    let r = w.alice.delete(&format!("/channels/{ch}")).await;
    assert_eq!(r.json["status"], "OK");
    let r = w
        .alice
        .post("/posts", json!({"channel_id": ch, "message": "late"}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.err_id(),
        "api.post.create_post.can_not_post_to_deleted.error"
    );
    let r = w
        .alice
        .get(&format!("/teams/{}/channels/name/bridge", w.team_id))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = w
        .alice
        .get(&format!(
            "/teams/{}/channels/name/bridge?include_deleted=true",
            w.team_id
        ))
        .await;
    assert!(r.json["delete_at"].as_i64().unwrap() > 0);

    // Framework-level rejections still come as AppError JSON.
    let r = w.alice.get("/users/%FF%FE").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.header("content-type"), "application/json");
    assert!(r.err_id().starts_with("api.context."));
}

#[tokio::test]
async fn incoming_webhooks_avatars_and_typing() {
    let w = world().await;
    let base = w.emu.base_url();
    // Only team/system admins create hooks.
    let r = w
        .alice
        .post(
            "/hooks/incoming",
            json!({"channel_id": w.channel_id, "display_name": "irc"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = w
        .admin
        .post(
            "/hooks/incoming",
            json!({"channel_id": w.channel_id, "display_name": "irc", "username": "hookdefault"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let hook = r.json["id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let send = |body: Value| {
        let http = http.clone();
        let url = format!("{base}/hooks/{hook}");
        async move { Api::read(http.post(url).json(&body).send().await.unwrap()).await }
    };
    // Overrides off (the default): only from_webhook and webhook_display_name are set.
    let r = send(json!({"text": "see <https://x.org|X>", "username": "ircnick"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text, "ok");
    assert!(r.header("content-type").starts_with("text/plain"));
    let newest = |api: Api, ch: String| async move {
        let r = api.get(&format!("/channels/{ch}/posts?per_page=1")).await;
        r.json["posts"][r.json["order"][0].as_str().unwrap()].clone()
    };
    let p = newest(w.bob.clone(), w.channel_id.clone()).await;
    assert_eq!(p["message"], "see [X](https://x.org)");
    assert_eq!(p["props"]["from_webhook"], "true");
    assert_eq!(p["props"]["webhook_display_name"], "irc");
    assert!(p["props"].get("override_username").is_none());
    assert_eq!(p["user_id"], w.admin.user_id.as_str());
    // With the setting on, the payload's username (or the hook's default) becomes the override.
    let mut cfg = w.emu.config();
    cfg.enable_post_username_override = true;
    cfg.max_post_size = 10;
    w.emu.set_config(cfg);
    send(json!({"text": "0123456789abc"})).await;
    let r = w
        .bob
        .get(&format!("/channels/{}/posts?per_page=2", w.channel_id))
        .await;
    let msgs: Vec<&Value> = r.json["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &r.json["posts"][i.as_str().unwrap()])
        .collect();
    assert_eq!(msgs[0]["message"], "abc");
    assert_eq!(msgs[1]["message"], "0123456789");
    assert_eq!(msgs[0]["props"]["override_username"], "hookdefault");
    // Redirect by channel name, and the errors.
    let r = send(json!({"text": "to town", "channel": "town-square"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        newest(w.bob.clone(), w.town_square.clone()).await["message"],
        "to town"
    );
    let r = send(json!({"text": ""})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.err_id(), "web.incoming_webhook.text.app_error");
    let r = Api::read(
        http.post(format!("{base}/hooks/ybndrfg8ejkmcpqxot1uwisza3"))
            .json(&json!({"text": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = Api::read(
        http.post(format!("{base}/hooks/{hook}"))
            .form(&[("payload", r#"{"text":"form"}"#)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    let resp = http
        .get(format!("{base}/api/v4/users/{}/image", w.alice.user_id))
        .header(
            "Authorization",
            format!("Bearer {}", w.bob.token.as_ref().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert!(resp.bytes().await.unwrap().starts_with(b"\x89PNG"));

    let r = w
        .alice
        .post("/users/me/typing", json!({"channel_id": w.channel_id}))
        .await;
    assert_eq!(r.json["status"], "OK");
    let r = w
        .alice
        .post(
            "/users/me/typing",
            json!({"channel_id": "ybndrfg8ejkmcpqxot1uwisza3"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}
