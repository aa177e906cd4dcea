//! Robustness: junk bodies, ids and queries on every route get a JSON answer (an AppError
//! when refused), never a 5xx or a dropped connection.

mod common;

use common::world;
use reqwest::Method;

#[tokio::test]
async fn junk_never_crashes_the_server() {
    let w = world().await;
    let base = format!("{}/api/v4", w.emu.base_url());
    let token = w.alice.token.clone().unwrap();
    let p = "ybndrfg8ejkmcpqxot1uwisza3";
    let routes: Vec<(Method, String)> = vec![
        (Method::POST, "/users/login".into()),
        (Method::POST, "/users".into()),
        (Method::POST, "/users/ids".into()),
        (Method::POST, "/users/usernames".into()),
        (Method::POST, "/users/status/ids".into()),
        (Method::POST, "/users/me/tokens".into()),
        (Method::POST, format!("/users/{p}/tokens")),
        (Method::POST, "/users/me/typing".into()),
        (Method::POST, "/bots".into()),
        (Method::POST, "/teams".into()),
        (Method::POST, format!("/teams/{}/members", w.team_id)),
        (Method::POST, format!("/teams/{p}/members")),
        (Method::POST, "/channels".into()),
        (Method::POST, "/channels/direct".into()),
        (Method::POST, format!("/channels/{}/members", w.channel_id)),
        (Method::PUT, format!("/channels/{}/patch", w.channel_id)),
        (Method::POST, "/posts".into()),
        (Method::POST, "/posts/ids".into()),
        (Method::POST, "/posts/ids/reactions".into()),
        (Method::PUT, format!("/posts/{p}")),
        (Method::PUT, format!("/posts/{p}/patch")),
        (Method::POST, "/reactions".into()),
        (Method::POST, "/files".into()),
        (Method::POST, "/commands/execute".into()),
        (Method::POST, "/hooks/incoming".into()),
        (Method::GET, "/users/x".into()),
        (Method::GET, "/teams/x".into()),
        (Method::GET, "/channels/x".into()),
        (Method::GET, "/channels/x/posts?since=1".into()),
        (Method::GET, "/posts/x".into()),
        (Method::GET, "/posts/x/thread".into()),
        (Method::GET, "/files/x".into()),
        (Method::DELETE, "/posts/x".into()),
        (Method::DELETE, "/users/x/posts/y/reactions/z".into()),
        (
            Method::DELETE,
            format!("/channels/{}/members/x", w.channel_id),
        ),
        (
            Method::GET,
            format!("/channels/{}/posts?per_page=x", w.channel_id),
        ),
        (
            Method::GET,
            format!("/channels/{}/posts?after=%ZZ", w.channel_id),
        ),
        (Method::GET, "/users/%C0%AF".into()),
    ];
    let bodies: [&[u8]; 8] = [
        b"",
        b"{",
        b"[]",
        b"null",
        b"{\"x\":1}",
        b"\"str\"",
        b"123",
        b"{\"channel_id\":[1],\"message\":{},\"user_id\":false,\"props\":\"x\",\"file_ids\":\"y\"}",
    ];
    let http = reqwest::Client::new();
    for (method, path) in &routes {
        for body in bodies {
            let resp = http
                .request(method.clone(), format!("{base}{path}"))
                .header("Authorization", format!("Bearer {token}"))
                .header("Content-Type", "application/json")
                .body(body.to_vec())
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: connection failed: {e}"));
            let status = resp.status();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let text = resp.text().await.unwrap();
            let what = format!(
                "{method} {path} {:?} → {status} {text}",
                String::from_utf8_lossy(body)
            );
            assert!(!status.is_server_error(), "{what}");
            assert_eq!(ctype, "application/json", "{what}");
            let v: serde_json::Value = serde_json::from_str(&text).expect("JSON body");
            if !status.is_success() {
                assert!(v["id"].as_str().is_some_and(|id| !id.is_empty()), "{what}");
                assert_eq!(v["status_code"], status.as_u16(), "{what}");
            }
        }
    }
    // Still serving.
    assert_eq!(
        w.alice.get("/users/me").await.status,
        reqwest::StatusCode::OK
    );
}
