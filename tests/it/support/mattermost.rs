//! A Mattermost side for the tests: the emulator (over real HTTP/WebSocket on loopback), a team,
//! a bot account with a token for the bridge, and people driven over the REST API as a client
//! would. Waits poll the server with a deadline.

use std::time::{Duration, Instant};

use mattermost_emulator::Emulator;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How long a wait for the bridge may take.
pub const DEADLINE: Duration = Duration::from_mins(1);

/// One emulated server with a team and a bridge bot.
pub struct MmServer {
    pub emu: Emulator,
    pub admin: MmUser,
    pub team: String,
    pub team_id: String,
    pub bot_id: String,
    pub bot_token: String,
    /// A human account `bridgeuser` (password `bridgeuser-password`) for login-based bridging.
    pub login_user_id: String,
}

/// One account, driven over REST.
#[derive(Clone)]
pub struct MmUser {
    http: reqwest::Client,
    base: String,
    token: String,
    pub id: String,
}

impl MmServer {
    /// Start an emulator with a team `team` and a bot `bridgebot` in it (in no channel).
    pub async fn start(team: &str) -> MmServer {
        let emu = Emulator::start("127.0.0.1:0".parse().unwrap(), "sysadmin", "sysadmin-pw")
            .await
            .expect("emulator starts");
        Self::set_up(emu, team).await
    }

    /// [`MmServer::start`] on an emulator already started with the admin `sysadmin`
    /// (password `sysadmin-pw`).
    pub async fn set_up(emu: Emulator, team: &str) -> MmServer {
        let admin = MmUser::login(&emu.base_url(), "sysadmin", "sysadmin-pw").await;
        let created = admin
            .ok(
                Method::POST,
                "/teams",
                Some(json!({"name": team, "display_name": team, "type": "O"})),
            )
            .await;
        let team_id = created["id"].as_str().unwrap().to_owned();
        let bot = admin
            .ok(
                Method::POST,
                "/bots",
                Some(json!({"username": "bridgebot", "display_name": "Bridge"})),
            )
            .await;
        let bot_id = bot["user_id"].as_str().unwrap().to_owned();
        let token = admin
            .ok(
                Method::POST,
                &format!("/users/{bot_id}/tokens"),
                Some(json!({"description": "bridge"})),
            )
            .await;
        admin
            .ok(
                Method::POST,
                &format!("/teams/{team_id}/members"),
                Some(json!({"team_id": team_id, "user_id": bot_id})),
            )
            .await;
        let login_user = admin
            .ok(
                Method::POST,
                "/users",
                Some(json!({"username": "bridgeuser", "email": "bridgeuser@example.org", "password": "bridgeuser-password"})),
            )
            .await;
        let login_user_id = login_user["id"].as_str().unwrap().to_owned();
        admin
            .ok(
                Method::POST,
                &format!("/teams/{team_id}/members"),
                Some(json!({"team_id": team_id, "user_id": login_user_id})),
            )
            .await;
        MmServer {
            emu,
            admin,
            team: team.to_owned(),
            team_id,
            bot_id,
            bot_token: token["token"].as_str().unwrap().to_owned(),
            login_user_id,
        }
    }

    /// A public channel (the bot is not in it: the bridge joins by itself). Returns its id.
    pub async fn channel(&self, name: &str) -> String {
        let channel = self
            .admin
            .ok(
                Method::POST,
                "/channels",
                Some(json!({"team_id": self.team_id, "name": name, "display_name": name, "type": "O"})),
            )
            .await;
        channel["id"].as_str().unwrap().to_owned()
    }

    /// A person in the team and in `channel_id`, logged in.
    pub async fn user(&self, name: &str, channel_id: &str) -> MmUser {
        let password = format!("{name}-password");
        let user = self
            .admin
            .ok(
                Method::POST,
                "/users",
                Some(json!({"username": name, "email": format!("{name}@example.org"), "password": password})),
            )
            .await;
        let id = user["id"].as_str().unwrap();
        self.admin
            .ok(
                Method::POST,
                &format!("/teams/{}/members", self.team_id),
                Some(json!({"team_id": self.team_id, "user_id": id})),
            )
            .await;
        let person = MmUser::login(&self.emu.base_url(), name, &password).await;
        person
            .ok(
                Method::POST,
                &format!("/channels/{channel_id}/members"),
                Some(json!({"user_id": person.id})),
            )
            .await;
        person
    }

    /// The bridge's network block.
    pub fn network(&self, id: &str, extra: &str) -> String {
        format!(
            "[network.{id}]\ntype = \"mattermost\"\nurl = \"{}\"\nteam = \"{}\"\ntoken = \"{}\"\n{extra}\n",
            self.emu.base_url(),
            self.team,
            self.bot_token
        )
    }

    /// The bridge's network block for a server reached at `url` (e.g. through a TLS front).
    pub fn network_at(&self, id: &str, url: &str, extra: &str) -> String {
        format!(
            "[network.{id}]\ntype = \"mattermost\"\nurl = \"{url}\"\nteam = \"{}\"\ntoken = \"{}\"\n{extra}\n",
            self.team, self.bot_token
        )
    }

    /// The bridge's network block, logging in as `bridgeuser` with a password.
    pub fn network_login(&self, id: &str, extra: &str) -> String {
        format!(
            "[network.{id}]\ntype = \"mattermost\"\nurl = \"{}\"\nteam = \"{}\"\nlogin = \"bridgeuser\"\npassword = \"bridgeuser-password\"\n{extra}\n",
            self.emu.base_url(),
            self.team,
        )
    }

    /// Wait until the bridge's bot is a member of the channel (it resolved and joined it).
    pub async fn wait_bot_member(&self, channel_id: &str) {
        self.wait_member(channel_id, &self.bot_id).await;
    }

    /// Wait until `user_id` is a member of the channel.
    pub async fn wait_member(&self, channel_id: &str, user_id: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (status, _) = self
                .admin
                .call(
                    Method::GET,
                    &format!("/channels/{channel_id}/members/{user_id}"),
                    None,
                )
                .await;
            if status == StatusCode::OK {
                return;
            }
            assert!(Instant::now() < deadline, "the bridge never joined");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the bridge has a live WebSocket.
    pub async fn wait_websocket(&self, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.emu.websocket_count() != count {
            assert!(Instant::now() < deadline, "no WebSocket from the bridge");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl MmUser {
    /// Log in by password.
    #[allow(dead_code)] // used by the load harness (examples/loadgen.rs)
    /// The session token (for a WebSocket client).
    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn login(base: &str, login: &str, password: &str) -> MmUser {
        let http = reqwest::Client::new();
        let response = http
            .post(format!("{base}/api/v4/users/login"))
            .json(&json!({"login_id": login, "password": password}))
            .send()
            .await
            .expect("login request");
        assert_eq!(response.status(), StatusCode::OK, "login {login}");
        let token = response.headers()["token"].to_str().unwrap().to_owned();
        let user: Value = response.json().await.unwrap();
        MmUser {
            http,
            base: base.to_owned(),
            token,
            id: user["id"].as_str().unwrap().to_owned(),
        }
    }

    /// One request: status and JSON body (`Null` when the body is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}/api/v4{path}", self.base))
                .bearer_auth(&self.token);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let response = tokio::time::timeout(Duration::from_secs(10), request.send())
                .await
                .expect("answer within 10 s")
                .expect("request sent");
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS && Instant::now() < deadline {
                // Rate-limited tests share the limit with the bridge (same address): wait.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let text = response.text().await.unwrap_or_default();
            return (status, serde_json::from_str(&text).unwrap_or(Value::Null));
        }
    }

    /// A request that must succeed.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value
    }

    /// Post a message; returns the post id.
    pub async fn say(&self, channel_id: &str, text: &str) -> String {
        self.post(json!({"channel_id": channel_id, "message": text}))
            .await
    }

    /// Post `/me text` the way the slash command does.
    pub async fn act(&self, channel_id: &str, text: &str) -> String {
        self.post(json!({"channel_id": channel_id, "message": format!("*{text}*"), "type": "me"}))
            .await
    }

    /// Reply in the thread of `root_id`.
    pub async fn reply(&self, channel_id: &str, root_id: &str, text: &str) -> String {
        self.post(json!({"channel_id": channel_id, "message": text, "root_id": root_id}))
            .await
    }

    async fn post(&self, body: Value) -> String {
        let post = self.ok(Method::POST, "/posts", Some(body)).await;
        post["id"].as_str().unwrap().to_owned()
    }

    /// Upload a file to a channel (`POST /files`, multipart); returns the file id.
    pub async fn upload(&self, channel_id: &str, name: &str, bytes: &[u8]) -> String {
        let form = reqwest::multipart::Form::new()
            .text("channel_id", channel_id.to_owned())
            .part(
                "files",
                reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_owned()),
            );
        let response = self
            .http
            .post(format!("{}/api/v4/files", self.base))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        assert_eq!(response.status(), StatusCode::CREATED, "upload {name}");
        let body: Value = response.json().await.unwrap();
        body["file_infos"][0]["id"].as_str().unwrap().to_owned()
    }

    /// A file's content (`GET /files/{id}`).
    pub async fn download(&self, file_id: &str) -> Vec<u8> {
        let response = self
            .http
            .get(format!("{}/api/v4/files/{file_id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("download");
        assert_eq!(response.status(), StatusCode::OK, "download {file_id}");
        response.bytes().await.expect("file body").to_vec()
    }

    /// Post a message with files attached.
    pub async fn say_with_files(
        &self,
        channel_id: &str,
        text: &str,
        file_ids: &[String],
    ) -> String {
        self.post(json!({"channel_id": channel_id, "message": text, "file_ids": file_ids}))
            .await
    }

    pub async fn edit(&self, post_id: &str, text: &str) {
        self.ok(
            Method::PUT,
            &format!("/posts/{post_id}/patch"),
            Some(json!({"message": text})),
        )
        .await;
    }

    pub async fn delete(&self, post_id: &str) {
        self.ok(Method::DELETE, &format!("/posts/{post_id}"), None)
            .await;
    }

    pub async fn react(&self, post_id: &str, emoji: &str) {
        self.ok(
            Method::POST,
            "/reactions",
            Some(json!({"user_id": self.id, "post_id": post_id, "emoji_name": emoji})),
        )
        .await;
    }

    pub async fn unreact(&self, post_id: &str, emoji: &str) {
        self.ok(
            Method::DELETE,
            &format!("/users/{}/posts/{post_id}/reactions/{emoji}", self.id),
            None,
        )
        .await;
    }

    /// Every post in the channel that is not deleted, oldest first.
    pub async fn posts(&self, channel_id: &str) -> Vec<Value> {
        // Paged with `before` (stable while posts keep arriving), newest first.
        let mut all = Vec::new();
        let mut before = String::new();
        loop {
            let list = self
                .ok(
                    Method::GET,
                    &format!("/channels/{channel_id}/posts?per_page=200&before={before}"),
                    None,
                )
                .await;
            let order = list["order"].as_array().cloned().unwrap_or_default();
            for id in &order {
                all.push(list["posts"][id.as_str().unwrap()].clone());
            }
            match order.last().and_then(Value::as_str) {
                Some(oldest) if order.len() == 200 => oldest.clone_into(&mut before),
                _ => break,
            }
        }
        all.reverse();
        all
    }

    /// Posts by `user_id` in the channel, oldest first, once `done` says they are complete.
    pub async fn wait_posts_by(
        &self,
        channel_id: &str,
        user_id: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let posts: Vec<Value> = self
                .posts(channel_id)
                .await
                .into_iter()
                .filter(|p| {
                    p["user_id"] == user_id
                        && p["type"].as_str().is_none_or(|t| !t.starts_with("system_"))
                })
                .collect();
            if done(&posts) {
                return posts;
            }
            assert!(
                Instant::now() < deadline,
                "posts never complete; have: {:#?}",
                messages(&posts)
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until `check` holds for the post `post_id` (or its absence: `None`).
    pub async fn wait_post(
        &self,
        post_id: &str,
        check: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (status, post) = self
                .call(Method::GET, &format!("/posts/{post_id}"), None)
                .await;
            let post = (status == StatusCode::OK).then_some(post);
            if check(post.as_ref()) {
                return post;
            }
            assert!(
                Instant::now() < deadline,
                "post {post_id} never as expected: {post:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until the reactions on a post are exactly `expected` (user id, emoji name).
    pub async fn wait_reactions(&self, post_id: &str, expected: &[(&str, &str)]) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let reactions = self
                .ok(Method::GET, &format!("/posts/{post_id}/reactions"), None)
                .await;
            let mut have: Vec<(String, String)> = reactions
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
            have.sort();
            let mut want: Vec<(String, String)> = expected
                .iter()
                .map(|(u, e)| ((*u).to_owned(), (*e).to_owned()))
                .collect();
            want.sort();
            if have == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "reactions {have:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// What people see of posts: their Markdown as plain text (formatting and escapes gone).
pub fn messages(posts: &[Value]) -> Vec<String> {
    posts
        .iter()
        .map(|p| {
            tribridge::richtext::markdown::parse(p["message"].as_str().unwrap_or_default())
                .to_plain_text()
        })
        .collect()
}

/// The last post whose message is `text`.
pub fn find<'a>(posts: &'a [Value], text: &str) -> &'a Value {
    posts
        .iter()
        .rev()
        .find(|p| messages(std::slice::from_ref(p))[0] == text)
        .unwrap_or_else(|| panic!("no post {text:?} in {:#?}", messages(posts)))
}

/// A TLS front for a server on `target` (as a real Mattermost behind its reverse proxy), with
/// the test CA's certificate for 127.0.0.1. Returns the `https://` base URL.
pub async fn tls_front(target: std::net::SocketAddr, tls: &super::servers::TestTls) -> String {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    tribridge::install_tls_provider();
    let certificates = CertificateDer::pem_file_iter(&tls.cert)
        .expect("cert file")
        .collect::<Result<Vec<_>, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&tls.key).expect("key");
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await
                    && let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                }
            });
        }
    });
    format!("https://127.0.0.1:{port}")
}
