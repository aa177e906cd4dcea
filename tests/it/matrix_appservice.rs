//! `mode = "appservice"` through the real daemon, a real Synapse (started with the registration
//! `tribridge appservice-registration` prints) and a real `InspIRCd`: IRC people appear in
//! Matrix as ghosts, Matrix people reach IRC as before, the transaction endpoint refuses a
//! wrong `hs_token` and relays a transaction pushed again only once, and a message said while
//! Synapse was down carries the time it was said.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::bridge::{Bridge, unique};
use crate::support::config::{irc_network, one_gateway};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::matrix_client::MatrixUser;
use crate::support::servers::{Synapse, free_port, shared_inspircd};

/// A Matrix network in appservice mode on `homeserver`, listening on `port`.
fn appservice_network(id: &str, homeserver: &str, port: u16, bot: &str) -> String {
    format!(
        "[network.{id}]\ntype = \"matrix\"\nmode = \"appservice\"\nhomeserver = \"{homeserver}\"\n\
         server_name = \"localhost\"\nlisten = \"127.0.0.1:{port}\"\n\
         url = \"http://127.0.0.1:{port}\"\nsender_localpart = \"{bot}\"\n\n"
    )
}

/// Run `tribridge appservice-registration` on `dir/bridges.toml`.
fn registration(dir: &Path, network: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .arg("appservice-registration")
        .arg("--config")
        .arg(dir.join("bridges.toml"))
        .arg("--network")
        .arg(network)
        .output()
        .expect("run tribridge appservice-registration");
    assert!(
        output.status.success(),
        "appservice-registration failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 YAML")
}

/// The value of a top-level `key: "value"` line of the registration.
fn yaml_value(yaml: &str, key: &str) -> String {
    let line = yaml
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in {yaml}"));
    serde_json::from_str::<String>(line).unwrap_or_else(|_| line.to_owned())
}

/// A Matrix person's own view of a room: its events over `/messages`, with their timestamps.
struct View {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl View {
    async fn login(base: &str, user: &str) -> View {
        let http = reqwest::Client::new();
        let reply: Value = http
            .post(format!("{base}/_matrix/client/v3/login"))
            .json(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": "password",
            }))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("login JSON");
        View {
            base: base.to_owned(),
            token: reply["access_token"].as_str().expect("token").to_owned(),
            http,
        }
    }

    async fn put(&self, path: &str, body: &Value) -> Value {
        let response = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("PUT");
        assert!(
            response.status().is_success(),
            "PUT {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON")
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON")
    }

    /// The room's `m.room.message` events, oldest first.
    async fn messages(&self, room: &str) -> Vec<Value> {
        let reply = self
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
                encode(room)
            ))
            .await;
        let mut events: Vec<Value> = reply["chunk"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["type"] == "m.room.message")
            .collect();
        events.reverse();
        events
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Synapse with the bridge's registration, a room with a Matrix person, an IRC channel with a
/// person, and the bridge in appservice mode between them.
struct Setup {
    synapse: Synapse,
    room: String,
    channel: String,
    irc: IrcClient,
    matrix: MatrixUser,
    view: View,
    hs_token: String,
    listen_port: u16,
    /// The bridge's bot's localpart (`sender_localpart`).
    bot: String,
    bridge: Bridge,
    /// The state folder, holding `bridges.toml` (a reload rewrites it).
    dir: tempfile::TempDir,
}

async fn setup(gateway_extra: &str) -> Setup {
    setup_with(gateway_extra, None, "").await
}

/// Like [`setup`], with another network in the gateway (its block, id and channel) and
/// `irc_extra` keys for the IRC network.
async fn setup_with(
    gateway_extra: &str,
    other_network: Option<(String, &str, &str)>,
    irc_extra: &str,
) -> Setup {
    setup_full("", gateway_extra, other_network, irc_extra, "").await
}

/// Like [`setup_with`], with `general` keys in `[general]` and `mx_extra` keys for the
/// Matrix network.
async fn setup_full(
    general: &str,
    gateway_extra: &str,
    other_network: Option<(String, &str, &str)>,
    irc_extra: &str,
    mx_extra: &str,
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let irc_port = shared_inspircd().port;
    let listen_port = free_port();
    let bot = unique("asbot");
    let nick = unique("bras");
    let channel = unique("#as");
    let alias_name = unique("asroom");
    let alias = format!("#{alias_name}:localhost");
    let config = |homeserver: &str| {
        let mut networks = vec![
            irc_network("irc", irc_port, &nick) + irc_extra,
            appservice_network("mx", homeserver, listen_port, &bot) + mx_extra,
        ];
        let mut channels = vec![("irc", channel.as_str()), ("mx", alias.as_str())];
        if let Some((block, id, other_channel)) = &other_network {
            networks.push(block.clone());
            channels.push((id, other_channel));
        }
        one_gateway(&networks, &channels).replacen("\n\n", &format!("\n{general}\n"), 1)
            + gateway_extra
    };
    // The registration is made before the homeserver exists (it connects nowhere); the tokens
    // it generates stay in the state folder for the daemon.
    std::fs::write(
        dir.path().join("bridges.toml"),
        config("http://127.0.0.1:1"),
    )
    .unwrap();
    let yaml = registration(dir.path(), "mx");
    let hs_token = yaml_value(&yaml, "hs_token");
    assert_eq!(
        yaml_value(&yaml, "url"),
        format!("http://127.0.0.1:{listen_port}")
    );
    assert!(yaml.contains("rate_limited: false"), "{yaml}");
    assert_eq!(
        registration(dir.path(), "mx"),
        yaml,
        "a second run prints the same tokens"
    );
    let registration_file = dir.path().join("registration.yaml");
    std::fs::write(&registration_file, &yaml).unwrap();
    let synapse = Synapse::start_with(&format!(
        "\napp_service_config_files: [\"{}\"]\n",
        registration_file.display()
    ));
    let url = synapse.url();
    let matrix = MatrixUser::new(&url, &unique("mira")).await;
    let room = matrix.create_room(&alias_name).await;
    let view = View::login(
        &url,
        &crate::support::matrix_client::local_part(&matrix.user_id),
    )
    .await;
    // The room's owner (its creator: room version 12 lists no creator in `users`) lets the
    // bridge's bot mark the room as bridged (state events).
    view.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            encode(&room)
        ),
        &json!({
            "users": {format!("@{bot}:localhost"): 50},
            "state_default": 50,
            "events_default": 0,
            "users_default": 0,
        }),
    )
    .await;
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let bridge = Bridge::start(dir.path(), &config(&url));
    irc.wait_join(&nick, &channel).await;
    bridge.wait_for_log("The bot joined the room.").await;
    // Until every room was tried, pushed transactions are refused (pushed again later).
    bridge.wait_for_log("Every configured room was tried").await;
    Setup {
        synapse,
        room,
        channel,
        irc,
        matrix,
        view,
        hs_token,
        listen_port,
        bot,
        bridge,
        dir,
    }
}

/// What the IRC person of `setup` is called.
fn irc_nick(setup: &Setup) -> String {
    setup.irc.nick.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_irc_person_is_a_ghost_in_matrix_and_matrix_reaches_irc_as_before() {
    let mut s = setup("").await;
    let ivan = irc_nick(&s);
    s.matrix.mark().await;
    s.irc.say(&s.channel, "hi");
    s.irc.say(&s.channel, "hi again asmark1");
    let events = s.matrix.messages_until(&s.room, "asmark1").await;
    let ghost = format!("@irc_{ivan}:localhost");
    let relayed: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.sender.as_str(), e.body()))
        .collect();
    assert_eq!(
        relayed,
        vec![(ghost.as_str(), "hi"), (ghost.as_str(), "hi again asmark1")],
        "the ghost says the text, no prefix"
    );
    let profile = s
        .view
        .get(&format!("/_matrix/client/v3/profile/{}", encode(&ghost)))
        .await;
    assert_eq!(profile["displayname"], format!("{ivan} (irc)"));
    // The room says what it bridges.
    let state = s
        .view
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state",
            encode(&s.room)
        ))
        .await;
    for event_type in ["m.bridge", "uk.half-shot.bridge"] {
        let bridge = state
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == event_type)
            .unwrap_or_else(|| panic!("no {event_type} in {state:#}"));
        assert_eq!(bridge["content"]["protocol"]["id"], "irc");
        assert_eq!(bridge["content"]["channel"]["id"], s.channel.as_str());
        assert_eq!(bridge["content"]["network"]["id"], "irc");
    }

    let mut matrix = s.matrix;
    matrix.say(&s.room, "hello from matrix asmark2").await;
    let lines = s.irc.texts_until(&s.channel, "asmark2").await;
    let name = crate::support::matrix_client::local_part(&matrix.user_id);
    assert_eq!(
        texts(&lines),
        vec![format!("<{name}> hello from matrix asmark2")]
    );
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_hs_token_is_refused_and_a_transaction_pushed_again_is_relayed_once() {
    let mut s = setup("").await;
    let endpoint = format!(
        "http://127.0.0.1:{}/_matrix/app/v1/transactions/",
        s.listen_port
    );
    let http = reqwest::Client::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let event = |body: &str, id: &str| {
        json!({"events": [{
            "type": "m.room.message",
            "room_id": s.room,
            "sender": s.matrix.user_id,
            "event_id": id,
            "origin_server_ts": now,
            "content": {"msgtype": "m.text", "body": body},
        }]})
    };
    let wrong = http
        .put(format!("{endpoint}forged1"))
        .bearer_auth("not-the-token")
        .json(&event("forged text", "$forged1"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 403);
    let missing = http
        .put(format!("{endpoint}forged2"))
        .json(&event("forged text", "$forged2"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 401);
    for _ in 0..2 {
        let pushed = http
            .put(format!("{endpoint}again1"))
            .bearer_auth(&s.hs_token)
            .json(&event("pushed twice", "$again1"))
            .send()
            .await
            .unwrap();
        assert_eq!(pushed.status().as_u16(), 200);
    }
    // Synapse on SQLite numbers its transactions from 1 again after a restart: an id seen
    // before with other events is a new transaction.
    let reused = http
        .put(format!("{endpoint}again1"))
        .bearer_auth(&s.hs_token)
        .json(&event("same id, other events", "$again2"))
        .send()
        .await
        .unwrap();
    assert_eq!(reused.status().as_u16(), 200);
    let ping = http
        .post(format!(
            "http://127.0.0.1:{}/_matrix/app/v1/ping",
            s.listen_port
        ))
        .bearer_auth(&s.hs_token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status().as_u16(), 200);
    let mut matrix = s.matrix;
    matrix.say(&s.room, "after the pushes asmark3").await;
    let lines = s.irc.texts_until(&s.channel, "asmark3").await;
    let name = crate::support::matrix_client::local_part(&matrix.user_id);
    assert_eq!(
        texts(&lines),
        vec![
            format!("<{name}> pushed twice"),
            format!("<{name}> same id, other events"),
            format!("<{name}> after the pushes asmark3"),
        ],
        "nothing forged, the pushed transaction once, the reused id's new events"
    );
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_said_while_synapse_was_down_carries_when_it_was_said() {
    let mut s = setup("original_time_after = 1\n").await;
    let ivan = irc_nick(&s);
    // The ghost exists and is in the room before the outage.
    s.matrix.mark().await;
    s.irc.say(&s.channel, "before asmark4");
    s.matrix.messages_until(&s.room, "asmark4").await;
    s.synapse.stop();
    let said = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    s.irc.say(&s.channel, "said during the outage asmark5");
    s.bridge.wait_for_log("Delivery failed; will retry.").await;
    s.synapse.restart();
    s.matrix.messages_until(&s.room, "asmark5").await;
    let events = s.view.messages(&s.room).await;
    let late = events
        .iter()
        .find(|e| {
            e["content"]["body"]
                .as_str()
                .unwrap_or("")
                .contains("asmark5")
        })
        .unwrap();
    assert_eq!(late["sender"], format!("@irc_{ivan}:localhost"));
    assert_eq!(late["content"]["body"], "said during the outage asmark5");
    let ts = late["origin_server_ts"].as_i64().unwrap();
    assert!(
        (ts - said).abs() < 1000,
        "origin_server_ts {ts} is not when it was said ({said})"
    );
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_200_both_ways_arrive_in_order_exactly_once() {
    let mut s = setup("").await;
    let room = s.room.clone();
    let ivan = irc_nick(&s);
    s.matrix.mark().await;
    for n in 0..200 {
        s.irc.say(&s.channel, &format!("i2m {n}"));
    }
    s.irc.say(&s.channel, "MARK-I");
    for n in 0..200 {
        s.matrix.say(&room, &format!("m2i {n}")).await;
    }
    s.matrix.say(&room, "MARK-M").await;
    let seen = s.irc.texts_until(&s.channel, "MARK-M").await;
    let mira = crate::support::matrix_client::local_part(&s.matrix.user_id);
    let mut expected: Vec<String> = (0..200).map(|n| format!("<{mira}> m2i {n}")).collect();
    expected.push(format!("<{mira}> MARK-M"));
    assert_eq!(texts(&seen), expected);
    let ghost = format!("@irc_{ivan}:localhost");
    let timeline = s.matrix.messages_until(&room, "MARK-I").await;
    let relayed: Vec<&str> = timeline
        .iter()
        .filter(|e| e.sender == ghost)
        .map(crate::support::matrix_client::Event::body)
        .collect();
    let mut expected: Vec<String> = (0..200).map(|n| format!("i2m {n}")).collect();
    expected.push("MARK-I".to_owned());
    assert_eq!(relayed, expected);
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_synapse_pushes_loses_and_doubles_nothing() {
    let mut s = setup("").await;
    let room = s.room.clone();
    let mira = crate::support::matrix_client::local_part(&s.matrix.user_id);
    // Killed while Synapse pushes: what it pushes meanwhile gets no 200, and is pushed again
    // once the bridge is back. (The kill waits until IRC acknowledged what it has: a line
    // written to IRC but not yet acknowledged is IRC's own window, see the README.)
    for n in 0..10 {
        s.matrix.say(&room, &format!("k{n}")).await;
    }
    s.irc.texts_until(&s.channel, "k9").await;
    s.bridge.wait_outbox_drained("irc", &s.channel).await;
    s.bridge.kill9();
    for n in 10..30 {
        s.matrix.say(&room, &format!("k{n}")).await;
    }
    s.bridge.restart();
    s.matrix.say(&room, "MARK-K").await;
    let seen = s.irc.texts_until(&s.channel, "MARK-K").await;
    let mut expected: Vec<String> = (10..30).map(|n| format!("<{mira}> k{n}")).collect();
    expected.push(format!("<{mira}> MARK-K"));
    assert_eq!(texts(&seen), expected);
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_homeserver_never_pushes_is_found_in_the_room_and_relayed_late_once() {
    let mut s = setup("").await;
    let room = s.room.clone();
    let mira = crate::support::matrix_client::local_part(&s.matrix.user_id);
    s.matrix.say(&room, "before asmark6").await;
    s.irc.texts_until(&s.channel, "asmark6").await;
    s.bridge.wait_outbox_drained("irc", &s.channel).await;
    s.bridge.kill9();
    s.matrix.say(&room, "held back asmark7").await;
    // Synapse could not push it (the bridge is down) and keeps it as an unsent transaction.
    // Taking that transaction away leaves the message as Synapse leaves one when its recovery
    // from a failed push ends: in the room, never pushed.
    let database = rusqlite::Connection::open(s.synapse.dir.join("homeserver.db")).unwrap();
    database.busy_timeout(Duration::from_secs(10)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    loop {
        let held: i64 = database
            .query_row(
                "SELECT count(*) FROM application_services_txns",
                [],
                |row| row.get(0),
            )
            .unwrap();
        if held > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Synapse never held a transaction for the stopped bridge"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    database
        .execute("DELETE FROM application_services_txns", [])
        .unwrap();
    drop(database);
    s.bridge.restart();
    s.matrix.say(&room, "after asmark8").await;
    let seen = texts(&s.irc.texts_until(&s.channel, "asmark7").await);
    assert_eq!(
        seen.first(),
        Some(&format!("<{mira}> after asmark8")),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 2, "each once: {seen:?}");
    assert!(
        seen[1].starts_with(&format!("<{mira}> ")) && seen[1].ends_with("held back asmark7"),
        "{seen:?}"
    );
    s.bridge
        .wait_for_log("Events the homeserver never pushed were found in the room and relayed late.")
        .await;
    s.matrix.say(&room, "and on asmark9").await;
    let seen = texts(&s.irc.texts_until(&s.channel, "asmark9").await);
    assert_eq!(
        seen,
        vec![format!("<{mira}> and on asmark9")],
        "nothing twice"
    );
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_of_relayed_people_are_pills_of_their_ghosts_and_back() {
    let nick2 = unique("bras2");
    let channel2 = unique("#as2");
    let mut s = setup_with(
        "",
        Some((
            irc_network("irc2", shared_inspircd().port, &nick2),
            "irc2",
            &channel2,
        )),
        "",
    )
    .await;
    let ivan = irc_nick(&s);
    let mut jane = IrcClient::connect(shared_inspircd().port, &unique("jane")).await;
    jane.join(&channel2).await;
    jane.wait_member(&nick2, &channel2).await;
    s.matrix.mark().await;
    s.irc.say(&s.channel, "ivan was here asmark6");
    s.matrix.messages_until(&s.room, "asmark6").await;
    jane.texts_until(&channel2, "asmark6").await;
    // On another network, ivan's name is a mention of ivan: in Matrix, a pill of his ghost.
    jane.say(&channel2, &format!("{ivan}: look asmark7"));
    let events = s.matrix.messages_until(&s.room, "asmark7").await;
    let ghost = format!("@irc_{ivan}:localhost");
    let jane_ghost = format!("@irc2_{}:localhost", jane.nick);
    let mention = events
        .iter()
        .find(|e| e.body().contains("asmark7"))
        .unwrap();
    assert_eq!(mention.sender, jane_ghost);
    assert!(
        mention.content["formatted_body"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("https://matrix.to/#/{ghost}")),
        "no pill of the ghost: {:?}",
        mention.content
    );
    assert_eq!(mention.content["m.mentions"]["user_ids"], json!([ghost]));
    // A pill of the ghost said in Matrix is ivan's nick on IRC.
    let mut matrix = s.matrix;
    matrix
        .send_event(
            &s.room,
            "m.room.message",
            json!({
                "msgtype": "m.text",
                "body": format!("{ivan} (irc): back asmark8"),
                "format": "org.matrix.custom.html",
                "formatted_body": format!("<a href=\"https://matrix.to/#/{ghost}\">{ivan} (irc)</a>: back asmark8"),
                "m.mentions": {"user_ids": [ghost]},
            }),
        )
        .await;
    let lines = s.irc.texts_until(&s.channel, "asmark8").await;
    let mira = crate::support::matrix_client::local_part(&matrix.user_id);
    assert_eq!(
        texts(&lines).last().unwrap(),
        &format!("<{mira}> {ivan}: back asmark8")
    );
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_mode_marks_relayed_messages_with_their_authors_profile() {
    let synapse = crate::support::servers::shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("pmpbot");
    crate::support::matrix_client::register(&url, &bot, "password").await;
    let mut matrix = MatrixUser::new(&url, &unique("pmp")).await;
    let alias_name = unique("pmproom");
    let room = matrix.create_room(&alias_name).await;
    let channel = unique("#pmp");
    let nick = unique("brpmp");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &one_gateway(
            &[
                irc_network("irc", irc_port, &nick),
                crate::support::config::matrix_network("mx", &url, &bot),
            ],
            &[
                ("irc", &channel),
                ("mx", &format!("#{alias_name}:localhost")),
            ],
        ),
    );
    irc.wait_join(&nick, &channel).await;
    bridge.wait_for_log("Joined Matrix room.").await;
    matrix.mark().await;
    irc.say(&channel, "hi asmark9");
    let events = matrix.messages_until(&room, "asmark9").await;
    let relayed = events
        .iter()
        .find(|e| e.body().contains("asmark9"))
        .unwrap();
    assert_eq!(relayed.body(), format!("<{}> hi asmark9", irc.nick));
    assert_eq!(
        relayed.content["com.beeper.per_message_profile"],
        json!({"id": format!("irc/{}", irc.nick), "displayname": irc.nick})
    );
    bridge.terminate();
}

/// The bot mode's per-message profile carries the author's picture where the bridge keeps one
/// (a Mattermost person's, with the media endpoint on): an `mxc://` that serves their picture,
/// uploaded once (the next message names the same one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_modes_per_message_profile_carries_the_authors_picture() {
    let synapse = crate::support::servers::shared_synapse();
    let url = synapse.url();
    let bot = unique("pmabot");
    crate::support::matrix_client::register(&url, &bot, "password").await;
    let mm = crate::support::mattermost::MmServer::start("pmateam").await;
    let channel_id = mm.channel("pmatown").await;
    let mia = mm.user("mia", &channel_id).await;
    let mut matrix = MatrixUser::new(&url, &unique("pma")).await;
    let alias_name = unique("pmaroom");
    let room = matrix.create_room(&alias_name).await;
    let media_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &one_gateway(
            &[
                mm.network("mm", ""),
                crate::support::config::matrix_network("mx", &url, &bot),
            ],
            &[
                ("mm", "pmatown"),
                ("mx", &format!("#{alias_name}:localhost")),
            ],
        )
        .replacen(
            "\n\n",
            &format!(
                "\nmedia_listen = \"127.0.0.1:{media_port}\"\n\
                 media_public_url = \"http://127.0.0.1:{media_port}/files\"\n\n"
            ),
            1,
        ),
    );
    bridge.wait_for_log("Joined Matrix room.").await;
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    matrix.mark().await;
    mia.say(&channel_id, "hello asmark40").await;
    mia.say(&channel_id, "again asmark41").await;
    let events = matrix.messages_until(&room, "asmark41").await;
    let profiles: Vec<&Value> = events
        .iter()
        .filter(|e| e.body().contains("asmark4"))
        .map(|e| &e.content["com.beeper.per_message_profile"])
        .collect();
    assert_eq!(profiles.len(), 2, "{events:#?}");
    assert_eq!(profiles[0]["id"], format!("mm/{}", mia.id));
    assert_eq!(profiles[0]["displayname"], "mia");
    let avatar = profiles[0]["avatar_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no avatar_url in {}", profiles[0]));
    assert_eq!(
        profiles[1]["avatar_url"], avatar,
        "the picture is uploaded once, not with every message"
    );
    let picture = reqwest::Client::new()
        .get(format!(
            "{}/api/v4/users/{}/image",
            mm.emu.base_url(),
            mia.id
        ))
        .bearer_auth(&mm.bot_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    assert_eq!(matrix.download(avatar).await, picture);
    bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nick_change_renames_the_ghost_and_a_part_makes_it_leave() {
    let mut s = setup_with("", None, "relay_membership = true\n").await;
    let ivan = irc_nick(&s);
    let ghost = format!("@irc_{ivan}:localhost");
    s.matrix.mark().await;
    s.irc.say(&s.channel, "first asmark10");
    s.matrix.messages_until(&s.room, "asmark10").await;
    let renamed = unique("ivy");
    s.irc.raw(&format!("NICK {renamed}"));
    let member_path = format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
        encode(&s.room),
        encode(&ghost)
    );
    s.matrix
        .events_until(&s.room, std::time::Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member"
                    && e.sender == ghost
                    && e.content["displayname"] == format!("{renamed} (irc)")
            })
        })
        .await;
    s.irc.say(&s.channel, "renamed asmark11");
    let events = s.matrix.messages_until(&s.room, "asmark11").await;
    let said = events
        .iter()
        .find(|e| e.body() == "renamed asmark11")
        .unwrap();
    assert_eq!(said.sender, ghost, "the new nick keeps the ghost");
    s.irc.raw(&format!("PART {}", s.channel));
    s.matrix
        .events_until(&s.room, std::time::Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member" && e.sender == ghost && e.content["membership"] == "leave"
            })
        })
        .await;
    assert_eq!(s.view.get(&member_path).await["membership"], "leave");
    let texts: Vec<String> = s
        .view
        .messages(&s.room)
        .await
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        !texts
            .iter()
            .any(|t| t.contains("left") || t.contains("is now known")),
        "membership is not written in the room: {texts:?}"
    );
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_redactions_reactions_replies_and_emotes_from_matrix_reach_irc_as_before() {
    let mut s = setup("").await;
    let room = s.room.clone();
    let mira = crate::support::matrix_client::local_part(&s.matrix.user_id);
    let original = s.matrix.say(&room, "tpyo here").await;
    let mut seen = s.irc.texts_until(&s.channel, "tpyo here").await;
    s.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "* typo here",
                   "m.new_content": {"msgtype": "m.text", "body": "typo here"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": original}}),
        )
        .await;
    s.matrix
        .send_event(
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": original, "key": "👍"}}),
        )
        .await;
    let doomed = s.matrix.say(&room, "to be deleted").await;
    seen.extend(s.irc.texts_until(&s.channel, "to be deleted").await);
    s.matrix.redact(&room, &doomed).await;
    s.matrix
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text",
                   "body": format!("> <{}> tpyo here\n\nthe answer", s.matrix.user_id),
                   "m.relates_to": {"m.in_reply_to": {"event_id": original}}}),
        )
        .await;
    s.matrix.send_message(&room, "m.emote", "waves").await;
    s.matrix.say(&room, "MARK").await;
    seen.extend(s.irc.texts_until(&s.channel, "MARK").await);
    assert_eq!(
        texts(&seen),
        vec![
            format!("<{mira}> tpyo here"),
            format!("<{mira}> * typo here"),
            format!("<{mira}> to be deleted"),
            format!("<{mira}> {mira}: the answer"),
            format!("\u{1}ACTION <{mira}> waves\u{1}"),
            format!("<{mira}> MARK"),
        ]
    );
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mattermost_person_is_a_ghost_in_matrix_too() {
    let mm = crate::support::mattermost::MmServer::start("asteam").await;
    let channel_id = mm.channel("astown").await;
    let mia = mm.user("mia", &channel_id).await;
    // With the media endpoint on, the bridge keeps people's pictures: the ghost gets it.
    let media_port = free_port();
    let mut s = setup_full(
        &format!(
            "media_listen = \"127.0.0.1:{media_port}\"\n\
             media_public_url = \"http://127.0.0.1:{media_port}/files\"\n"
        ),
        "",
        Some((mm.network("mm", ""), "mm", "astown")),
        "",
        "",
    )
    .await;
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    s.matrix.mark().await;
    mia.say(&channel_id, "hello from mattermost asmark12").await;
    let events = s.matrix.messages_until(&s.room, "asmark12").await;
    let said = events
        .iter()
        .find(|e| e.body().contains("asmark12"))
        .unwrap();
    assert_eq!(said.sender, "@mm_mia:localhost");
    assert_eq!(said.body(), "hello from mattermost asmark12");
    let profile = s
        .view
        .get("/_matrix/client/v3/profile/%40mm_mia%3Alocalhost")
        .await;
    assert_eq!(profile["displayname"], "mia (mm)");
    let picture = reqwest::Client::new()
        .get(format!(
            "{}/api/v4/users/{}/image",
            mm.emu.base_url(),
            mia.id
        ))
        .bearer_auth(&mm.bot_token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let avatar = profile["avatar_url"]
        .as_str()
        .expect("the ghost has a picture");
    assert_eq!(s.matrix.download(avatar).await, picture);
    // A file: uploaded by the ghost, the same bytes.
    let bytes: Vec<u8> = (0..3000u32).map(|n| (n * 13 % 251) as u8).collect();
    let file_id = mia.upload(&channel_id, "notes.bin", &bytes).await;
    mia.say_with_files(&channel_id, "the notes asmark18", &[file_id])
        .await;
    let events = s.matrix.messages_until(&s.room, "asmark18").await;
    let file = events
        .iter()
        .find(|e| e.content["url"].is_string())
        .unwrap_or_else(|| panic!("no file event: {events:#?}"));
    assert_eq!(file.sender, "@mm_mia:localhost");
    assert_eq!(file.msgtype(), "m.file");
    let url = file.content["url"].as_str().unwrap();
    assert_eq!(s.matrix.download(url).await, bytes);
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_with_one_name_get_two_ghosts_and_keep_them() {
    let mm = crate::support::mattermost::MmServer::start("asteam2").await;
    let channel_id = mm.channel("astown2").await;
    // The same name on IRC and on Mattermost, and a ghost_format without the network.
    let name = unique("sam");
    let mm_sam = mm.user(&name, &channel_id).await;
    let mut s = setup_full(
        "",
        "",
        Some((mm.network("mm", ""), "mm", "astown2")),
        "",
        "ghost_format = \"g_{NICK}\"\n",
    )
    .await;
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    let mut irc_sam = IrcClient::connect(shared_inspircd().port, &name).await;
    irc_sam.join(&s.channel).await;
    s.matrix.mark().await;
    irc_sam.say(&s.channel, "from irc asmark13");
    s.matrix.messages_until(&s.room, "asmark13").await;
    mm_sam.say(&channel_id, "from mattermost asmark14").await;
    irc_sam.say(&s.channel, "from irc again asmark15");
    // Said on two networks, they may arrive in either order.
    let events = s
        .matrix
        .events_until(&s.room, std::time::Duration::from_mins(1), |events| {
            ["asmark14", "asmark15"]
                .iter()
                .all(|marker| events.iter().any(|e| e.body().contains(marker)))
        })
        .await;
    let sender_of = |marker: &str| {
        events
            .iter()
            .find(|e| e.body().contains(marker))
            .map(|e| e.sender.clone())
            .unwrap()
    };
    let first = format!("@g_{name}:localhost");
    let second = format!("@g_{name}_2:localhost");
    assert_eq!(sender_of("asmark14"), second);
    assert_eq!(sender_of("asmark15"), first);
    // After a restart each keeps their ghost.
    s.bridge.terminate();
    s.bridge.restart();
    s.bridge.wait_for_log("The bot joined the room.").await;
    mm.wait_websocket(1).await;
    mm_sam.say(&channel_id, "after the restart asmark16").await;
    let events = s.matrix.messages_until(&s.room, "asmark16").await;
    let again = events
        .iter()
        .find(|e| e.body().contains("asmark16"))
        .unwrap();
    assert_eq!(again.sender, second);
    s.bridge.terminate();
}

/// An encrypted room in appservice mode: ghosts cannot encrypt, so the bridge's own bot relays
/// it with end-to-end encryption (logged in with the `as_token`, its device cross-signed), as
/// the bot mode does. A person on an end-to-end client (matrix-sdk with its crypto store) and
/// an IRC person talk through it both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_room_is_relayed_through_the_bridges_bot_with_encryption() {
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::ruma::api::client::room::create_room;
    use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
    use matrix_sdk::ruma::events::{
        AnySyncMessageLikeEvent, AnySyncTimelineEvent, InitialStateEvent, SyncMessageLikeEvent,
    };

    let dir = tempfile::tempdir().unwrap();
    let irc_port = shared_inspircd().port;
    let listen_port = free_port();
    let bot = unique("asbot");
    // Ghosts cannot encrypt and Synapse refuses `/sync` to the service's own user: the
    // encryption bot, a user of the service's namespace, relays the room.
    let bot_id = matrix_sdk::ruma::UserId::parse(format!("@{bot}.e2ee:localhost")).unwrap();
    let nick = unique("bras");
    let channel = unique("#ase");
    let alias_name = unique("asecret");
    let alias = format!("#{alias_name}:localhost");
    let config = |homeserver: &str| {
        one_gateway(
            &[
                irc_network("irc", irc_port, &nick),
                appservice_network("mx", homeserver, listen_port, &bot),
            ],
            &[("irc", channel.as_str()), ("mx", alias.as_str())],
        )
    };
    std::fs::write(
        dir.path().join("bridges.toml"),
        config("http://127.0.0.1:1"),
    )
    .unwrap();
    let registration_file = dir.path().join("registration.yaml");
    std::fs::write(&registration_file, registration(dir.path(), "mx")).unwrap();
    let synapse = Synapse::start_with(&format!(
        "\napp_service_config_files: [\"{}\"]\n",
        registration_file.display()
    ));
    let url = synapse.url();
    let alice = unique("alice");
    crate::support::matrix_client::register(&url, &alice, "password").await;
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

    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let bridge = Bridge::start(dir.path(), &config(&url));
    irc.wait_join(&nick, &channel).await;
    bridge
        .wait_for_log("This room is encrypted: ghosts cannot encrypt")
        .await;
    // The encryption bot's device, made by an `m.login.application_service` login (no
    // password), and cross-signed (Synapse takes the first upload of the keys without
    // user-interactive auth).
    bridge
        .wait_for_log("Logged in to Matrix as a user of the application service")
        .await;
    bridge
        .wait_for_log("The bridge's device is cross-signed")
        .await;
    // Alice's client sees the bot in the room (so it shares the room key with its device).
    settings =
        crate::support::matrix_client::sync_until_joined(&client, &room, &bot_id, settings).await;
    assert!(room.latest_encryption_state().await.unwrap().is_encrypted());

    room.send(RoomMessageEventContent::text_plain("secret hello asmark30"))
        .await
        .unwrap();
    assert_eq!(
        texts(&irc.texts_until(&channel, "asmark30").await),
        vec![format!("<{alice}> secret hello asmark30")],
        "the IRC person reads what the Matrix person said in the encrypted room"
    );

    let ivan = irc.nick.clone();
    irc.say(&channel, "hi asmark31");
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    let (sender, body, encrypted, profile) = loop {
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
                ))) if message.content.body().contains("asmark31") => Some((
                    message.sender.to_string(),
                    message.content.body().to_owned(),
                    event.encryption_info().is_some(),
                    event
                        .raw()
                        .deserialize_as::<Value>()
                        .ok()
                        .map(|raw| raw["content"]["com.beeper.per_message_profile"].clone()),
                )),
                _ => None,
            });
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing from IRC in the encrypted room"
        );
    };
    assert_eq!(
        sender,
        bot_id.as_str(),
        "the bridge's encryption bot says it, not a ghost"
    );
    assert_eq!(body, format!("<{ivan}> hi asmark31"));
    assert!(encrypted, "the bot's message was sent in the clear");
    let profile = profile.expect("the event's JSON");
    assert_eq!(profile["displayname"], ivan.as_str(), "{profile}");
    let logs = bridge.logs();
    assert_eq!(
        logs.matches("This room is encrypted").count(),
        1,
        "logged once per room: {logs}"
    );
}

/// Encryption turned on in a bridged room: from then on the encryption bot joins and relays it
/// (encrypted), not the ghosts; said once in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_encryption_is_turned_on_goes_over_to_the_encryption_bot() {
    let mut s = setup("").await;
    let ivan = irc_nick(&s);
    let ghost = format!("@irc_{ivan}:localhost");
    let encryption_bot = format!("@{}.e2ee:localhost", s.bot);
    s.matrix.mark().await;
    s.irc.say(&s.channel, "in clear asmark42");
    let events = s.matrix.messages_until(&s.room, "asmark42").await;
    assert_eq!(events.last().unwrap().sender, ghost, "before: the ghost");
    s.view
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.encryption/",
                encode(&s.room)
            ),
            &json!({"algorithm": "m.megolm.v1.aes-sha2"}),
        )
        .await;
    s.bridge
        .wait_for_log("This room is encrypted: ghosts cannot encrypt")
        .await;
    s.irc.say(&s.channel, "encrypted now asmark43");
    // The encryption bot joins and sends an encrypted event (this person's client has no keys,
    // so it cannot read it: only its type and sender show); nothing in clear.
    let seen = s
        .matrix
        .events_until(&s.room, std::time::Duration::from_mins(1), |events| {
            events
                .iter()
                .any(|e| e.kind == "m.room.encrypted" && e.sender == encryption_bot)
        })
        .await;
    assert!(
        seen.iter().any(|e| e.kind == "m.room.member"
            && e.sender == encryption_bot
            && e.content["membership"] == "join"),
        "the encryption bot joined: {:#?}",
        seen.iter()
            .map(|e| (&e.sender, &e.kind))
            .collect::<Vec<_>>()
    );
    assert!(
        !seen.iter().any(|e| e.body().contains("asmark43")),
        "nothing in clear"
    );
    let logs = s.bridge.logs();
    assert_eq!(
        logs.matches("This room is encrypted").count(),
        1,
        "logged once per room: {logs}"
    );
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_said_in_matrix_reaches_irc_as_a_working_link() {
    let media_port = free_port();
    let mut s = setup_full(
        &format!(
            "media_listen = \"127.0.0.1:{media_port}\"\n\
             media_public_url = \"http://127.0.0.1:{media_port}/files\"\n"
        ),
        "",
        None,
        "",
        "",
    )
    .await;
    let bytes: Vec<u8> = (0..4000u32).map(|n| (n * 7 % 251) as u8).collect();
    let uri = s
        .matrix
        .upload("report.bin", "application/octet-stream", bytes.clone())
        .await;
    let mut matrix = s.matrix;
    matrix
        .send_event(
            &s.room,
            "m.room.message",
            json!({"msgtype": "m.file", "body": "report.bin", "filename": "report.bin",
                   "url": uri, "info": {"mimetype": "application/octet-stream", "size": bytes.len()}}),
        )
        .await;
    let lines = s.irc.texts_until(&s.channel, "report.bin").await;
    let line = texts(&lines).pop().unwrap();
    let mira = crate::support::matrix_client::local_part(&matrix.user_id);
    assert!(
        line.starts_with(&format!(
            "<{mira}> shared a file: report.bin (3.9 KiB) http://127.0.0.1:{media_port}/files/"
        )),
        "{line}"
    );
    let file_link = line.rsplit(' ').next().unwrap();
    let fetched = reqwest::get(file_link).await.unwrap();
    assert!(
        fetched.status().is_success(),
        "{file_link}: {}",
        fetched.status()
    );
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), bytes);
    s.bridge.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaction_from_mattermost_is_the_ghosts_and_taking_it_back_removes_it() {
    let mm = crate::support::mattermost::MmServer::start("asteam3").await;
    let channel_id = mm.channel("astown3").await;
    let mia = mm.user("mia", &channel_id).await;
    let mut s = setup_with("", Some((mm.network("mm", ""), "mm", "astown3")), "").await;
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    let original = s.matrix.say(&s.room, "react to me asmark19").await;
    let posts = mia
        .wait_posts_by(&channel_id, &mm.bot_id, |posts| {
            posts
                .iter()
                .any(|p| p["message"].as_str().unwrap_or("").contains("asmark19"))
        })
        .await;
    let post_id = posts
        .iter()
        .find(|p| p["message"].as_str().unwrap_or("").contains("asmark19"))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.matrix.mark().await;
    mia.react(&post_id, "tada").await;
    let ghost = "@mm_mia:localhost";
    let reactions = s
        .matrix
        .events_until(&s.room, std::time::Duration::from_mins(1), |events| {
            events.iter().any(|e| e.kind == "m.reaction")
        })
        .await;
    let reaction = reactions.iter().find(|e| e.kind == "m.reaction").unwrap();
    assert_eq!(reaction.sender, ghost);
    assert_eq!(
        reaction.content["m.relates_to"]["event_id"],
        original.as_str()
    );
    let reaction_id = reaction.event_id.clone();
    mia.unreact(&post_id, "tada").await;
    s.matrix
        .events_until(&s.room, std::time::Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.redaction"
                    && e.sender == ghost
                    && (e.content["redacts"] == reaction_id.as_str())
            })
        })
        .await;
    s.bridge.terminate();
}

/// A reload that adds a gateway with a new room: the application service's bot joins it on the
/// running service (no new listener, the old room untouched), ghosts speak there and the room
/// is relayed back, as for a room at start.
#[tokio::test(flavor = "multi_thread")]
async fn a_room_a_reload_adds_is_joined_and_relayed_by_the_running_service() {
    let mut s = setup("").await;
    let irc_port = shared_inspircd().port;
    let channel = unique("#asrl");
    let alias_name = unique("asrlroom");
    let room = s.matrix.create_room(&alias_name).await;
    let mut iris = IrcClient::connect(irc_port, &unique("iris")).await;
    iris.join(&channel).await;
    let file = s.dir.path().join("bridges.toml");
    let before = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        format!(
            "{before}\n[[gateway]]\nname = \"added\"\nchannels = [\n  \
             {{ network = \"irc\", channel = \"{channel}\" }},\n  \
             {{ network = \"mx\", channel = \"#{alias_name}:localhost\" }},\n]\n"
        ),
    )
    .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .arg("reload")
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .expect("run tribridge reload");
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("reconnected [], following new channels [irc, mx]"),
        "{out}"
    );
    s.bridge
        .wait_for_log_count("The bot joined the room.", 2)
        .await;
    s.matrix.mark().await;
    iris.say(&channel, "into the new room asrl1");
    let events = s.matrix.messages_until(&room, "asrl1").await;
    let ghost = format!("@irc_{}:localhost", iris.nick);
    assert_eq!(
        events
            .iter()
            .map(|e| (e.sender.as_str(), e.body()))
            .collect::<Vec<_>>(),
        vec![(ghost.as_str(), "into the new room asrl1")]
    );
    s.matrix.say(&room, "out of the new room asrl2").await;
    let lines = iris.texts_until(&channel, "asrl2").await;
    let name = crate::support::matrix_client::local_part(&s.matrix.user_id);
    assert_eq!(
        texts(&lines),
        vec![format!("<{name}> out of the new room asrl2")]
    );
    // The old room still relays, on the same service.
    s.irc.say(&s.channel, "still here asrl3");
    s.matrix.messages_until(&s.room, "asrl3").await;
    assert_eq!(
        s.bridge
            .logs()
            .matches("Listening for the homeserver's transactions")
            .count(),
        1,
        "one listener: {}",
        s.bridge.logs()
    );
    s.bridge.terminate();
}
