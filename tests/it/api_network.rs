//! The api network (`type = "api"`) through the daemon, with real clients everywhere: a
//! program speaking matterbridge's HTTP API as its known clients do, chatops webhooks, and
//! people on a real `InspIRCd`, a real Synapse and the Mattermost emulator.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::api_client::ApiClient;
use crate::support::bridge::{Bridge, unique};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::matrix_client::{Event, MatrixUser, register};
use crate::support::mattermost::{MmServer, MmUser, messages};
use crate::support::sample;
use crate::support::servers::{free_port, shared_inspircd, shared_synapse};

const TOKEN: &str = "api-token-for-tests";
const HOOK_SECRET: &str = "grafana-hook-secret";

/// One gateway `ops` over IRC, Matrix, Mattermost and an api network, a person on each.
struct Fixture {
    api: ApiClient,
    api_port: u16,
    metrics_port: u16,
    irc: IrcClient,
    channel: String,
    matrix: MatrixUser,
    room: String,
    matrix_bot: String,
    mm: MmServer,
    mia: MmUser,
    channel_id: String,
    bridge: Bridge,
    _dir: tempfile::TempDir,
}

/// The `[network.api]` block: the API on `port`, the Grafana webhook posting into `ops`.
fn api_network(port: u16) -> String {
    format!(
        "[network.api]\ntype = \"api\"\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\
         remote_nick_format = \"{{NICK}}\"\n\
         webhooks = [{{ name = \"grafana\", gateway = \"ops\", secret = \"{HOOK_SECRET}\" }}]\n\n"
    )
}

async fn fixture() -> Fixture {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("botapi");
    register(&url, &bot, "password").await;
    let mut matrix = MatrixUser::new(&url, &unique("alice")).await;
    let alias_name = unique("roomapi");
    let room = matrix.create_room(&alias_name).await;
    matrix.mark().await;
    let channel = unique("#api");
    let nick = unique("brapi");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let mm = MmServer::start("dept").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let api_port = free_port();
    let metrics_port = free_port();
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\
         metrics_listen = \"127.0.0.1:{metrics_port}\"\n\n\
         [network.irc]\ntype = \"irc\"\nserver = \"127.0.0.1:{irc_port}\"\ntls = false\n\
         nick = \"{nick}\"\nflood_burst = 1000\nflood_interval_ms = 1\n\n\
         [network.mx]\ntype = \"matrix\"\nhomeserver = \"{url}\"\nuser = \"@{bot}:localhost\"\n\
         password = \"password\"\n\n{}{}\
         [[gateway]]\nname = \"ops\"\nchannels = [\n\
           {{ network = \"api\", channel = \"ops\" }},\n\
           {{ network = \"irc\", channel = \"{channel}\" }},\n\
           {{ network = \"mx\", channel = \"#{alias_name}:localhost\" }},\n\
           {{ network = \"mm\", channel = \"town\" }},\n]\n\
         long_text = {{ max_lines = 10, mode = \"truncate\" }}\n",
        mm.network("mm", ""),
        api_network(api_port),
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
    let api = ApiClient::new(api_port, TOKEN);
    api.wait_healthy().await;
    Fixture {
        api,
        api_port,
        metrics_port,
        irc,
        channel,
        matrix,
        room,
        matrix_bot,
        mm,
        mia,
        channel_id,
        bridge,
        _dir: dir,
    }
}

impl Fixture {
    /// The lines the bridge said on IRC, up to the one containing `marker`, formatting codes
    /// taken out (what a person reads).
    async fn irc_until(&mut self, marker: &str) -> Vec<String> {
        let lines = self.irc.texts_until(&self.channel, marker).await;
        texts(&lines).iter().map(|t| without_irc_codes(t)).collect()
    }

    /// The bridge's Matrix messages up to the one containing `marker`.
    async fn matrix_until(&mut self, marker: &str) -> Vec<Event> {
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

    /// The bridge's Mattermost posts, once one contains `marker`.
    async fn mattermost_until(&self, marker: &str) -> Vec<Value> {
        self.mia
            .wait_posts_by(&self.channel_id, &self.mm.bot_id, |posts| {
                messages(posts).iter().any(|m| m.contains(marker))
            })
            .await
    }
}

/// An IRC line without its formatting codes (bold, italic, underline, colour, reset).
fn without_irc_codes(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x02' | '\x1d' | '\x1f' | '\x1e' | '\x11' | '\x16' | '\x0f' => {}
            '\x03' => {
                for _ in 0..2 {
                    if chars.peek().is_some_and(char::is_ascii_digit) {
                        chars.next();
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_posting_as_matterbridge_clients_do_reaches_irc_matrix_and_mattermost_once() {
    let mut t = fixture().await;

    // A message as matterbridge's API clients send it: answered with the message, its id and
    // time, once it is stored.
    let answer = t.api.say("ops", "ci-bot", "deploy 42 done").await;
    assert_eq!(answer["gateway"], "ops");
    assert_eq!(answer["username"], "ci-bot");
    assert_eq!(answer["protocol"], "api");
    assert!(
        !answer["id"].as_str().unwrap_or_default().is_empty(),
        "{answer}"
    );

    // The same message posted twice with the client's id is relayed once.
    let mut with_id = ApiClient::message("ops", "ci-bot", "build 7 deployed");
    with_id["id"] = json!("build-7");
    for _ in 0..2 {
        assert_eq!(t.api.post(&with_id).await.status, 200);
    }

    // A wrong token, no token, a malformed body, an unknown gateway: refused with a reason,
    // nothing relayed.
    let good = ApiClient::message("ops", "mallory", "must not appear").to_string();
    let wrong = t.api.post_raw(&good, Some("not-the-token")).await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert_eq!(t.api.post_raw(&good, None).await.status, 401);
    let malformed = t
        .api
        .post_raw(r#"{"text": 5, "gateway": "ops"}"#, Some(TOKEN))
        .await;
    assert_eq!(malformed.status, 400, "{malformed:?}");
    assert!(
        malformed.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a message") && m.contains("invalid type")),
        "{malformed:?}"
    );
    let not_json = t.api.post_raw("text=hi", Some(TOKEN)).await;
    assert_eq!(not_json.status, 400, "{not_json:?}");
    let elsewhere = t
        .api
        .post(&ApiClient::message("nowhere", "mallory", "must not appear"))
        .await;
    assert_eq!(elsewhere.status, 400);
    assert!(elsewhere.body.contains("ops"), "{elsewhere:?}");
    let empty = t.api.post(&ApiClient::message("ops", "mallory", " ")).await;
    assert_eq!(empty.status, 400, "{empty:?}");

    // A file in Extra.file, as the clients send one.
    let report = b"all green\n".to_vec();
    let mut with_file = ApiClient::message("ops", "ci-bot", "the report");
    with_file["Extra"] = json!({"file": [{
        "Name": "report.txt",
        "Data": base64::engine::general_purpose::STANDARD.encode(&report),
        "Comment": "",
    }]});
    assert_eq!(t.api.post(&with_file).await.status, 200);
    // A mass ping is neutralised on the networks that have them; a text bridges pass around in
    // a circle is answered 200 (committed, as far as the client knows) and dropped, counted.
    t.api.say("ops", "ci-bot", "@channel heads up").await;
    t.api
        .say("ops", "ci-bot", "<b2> <b1> <alice> round and round")
        .await;
    t.api.say("ops", "ci-bot", "API-MARK").await;

    let expected = [
        "<ci-bot> deploy 42 done",
        "<ci-bot> build 7 deployed",
        "<ci-bot> the report",
        "<ci-bot> @\u{2060}channel heads up",
        "<ci-bot> API-MARK",
    ];
    let on_irc = t.irc_until("API-MARK").await;
    assert_eq!(on_irc.len(), 6, "{on_irc:#?}");
    assert_eq!(on_irc[..3], expected[..3], "{on_irc:#?}");
    assert!(
        on_irc[3].starts_with("<ci-bot> shared a file: report.txt (10 B)"),
        "{on_irc:#?}"
    );
    assert_eq!(
        on_irc[4].replace('\u{2060}', ""),
        "<ci-bot> @channel heads up"
    );
    assert_eq!(on_irc[5], expected[4]);

    let on_matrix = t.matrix_until("API-MARK").await;
    let bodies: Vec<&str> = on_matrix.iter().map(Event::body).collect();
    assert_eq!(bodies, expected, "{on_matrix:#?}");
    assert_eq!(on_matrix[2].msgtype(), "m.file", "{on_matrix:#?}");
    assert_eq!(on_matrix[2].content["filename"], "report.txt");

    let posts = t.mattermost_until("API-MARK").await;
    assert_eq!(messages(&posts), expected);
    let file_ids: Vec<&str> = posts[2]["file_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(file_ids.len(), 1, "{}", posts[2]);
    assert_eq!(t.mia.download(file_ids[0]).await, report);

    // What an operator sees of it, per network.
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", t.metrics_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (series, value) in [
        (
            r#"tribridge_api_messages_accepted_total{network="api"}"#,
            7.0,
        ),
        (
            r#"tribridge_api_requests_refused_total{network="api"}"#,
            6.0,
        ),
        ("tribridge_events_loops_broken_total", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }

    assert_eq!(t.bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_said_on_irc_matrix_and_mattermost_appear_in_api_messages_once_and_in_the_stream()
{
    let mut t = fixture().await;
    let alice = t.matrix.user_id[1..].split(':').next().unwrap().to_owned();

    t.irc.say(&t.channel, "from irc one");
    let room = t.room.clone();
    t.matrix.say(&room, "from matrix one").await;
    t.mia.say(&t.channel_id, "from mattermost one").await;
    let taken = t
        .api
        .messages_until(&["from irc one", "from matrix one", "from mattermost one"])
        .await;
    let said: Vec<(&str, &str, &str)> = taken
        .iter()
        .map(|m| {
            (
                m["text"].as_str().unwrap_or_default(),
                m["protocol"].as_str().unwrap_or_default(),
                m["gateway"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    for (text, protocol) in [
        ("from irc one", "irc"),
        ("from matrix one", "matrix"),
        ("from mattermost one", "mattermost"),
    ] {
        assert_eq!(
            said.iter().filter(|(t, ..)| *t == text).count(),
            1,
            "{text} once: {taken:#?}"
        );
        assert!(said.contains(&(text, protocol, "ops")), "{taken:#?}");
    }
    let from_irc = taken.iter().find(|m| m["text"] == "from irc one").unwrap();
    assert_eq!(from_irc["username"], t.irc.nick.as_str());
    assert_eq!(from_irc["account"], "irc.irc");
    assert_eq!(from_irc["channel"], "ops");
    assert_eq!(from_irc["event"], "");
    assert!(from_irc["timestamp"].as_str().unwrap().ends_with('Z'));
    let from_matrix = taken
        .iter()
        .find(|m| m["text"] == "from matrix one")
        .unwrap();
    assert_eq!(from_matrix["username"], alice.as_str());
    // Read once: the next call has nothing of them.
    assert!(
        t.api
            .messages()
            .await
            .iter()
            .all(|m| !m["text"].as_str().unwrap_or_default().contains(" one")),
    );

    // The stream: `api_connected` first, then each message as it is said.
    let mut stream = t.api.stream().await;
    assert_eq!(stream.next().await["event"], "api_connected");
    let mut second = t.api.stream().await;
    assert_eq!(second.next().await["event"], "api_connected");
    t.irc.say(&t.channel, "from irc two");
    let seen = stream.until("from irc two").await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    t.matrix.say(&room, "from matrix two").await;
    let seen = stream.until("from matrix two").await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    t.mia.say(&t.channel_id, "from mattermost two").await;
    let seen = stream.until("from mattermost two").await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(seen[0]["protocol"], "mattermost");
    // Every stream connected gets every message, in order.
    let texts: Vec<Value> = second.until("from mattermost two").await;
    let texts: Vec<&str> = texts.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(
        texts,
        ["from irc two", "from matrix two", "from mattermost two"]
    );
    // What the streams gave is read: a poll does not give it again.
    assert!(
        t.api
            .messages()
            .await
            .iter()
            .all(|m| !m["text"].as_str().unwrap_or_default().contains(" two")),
    );
    // A client whose stream broke resumes after the last message it read: it gets what came
    // after, whether or not the broken stream had taken it.
    let last_read = seen[0]["id"].as_str().unwrap().to_owned();
    drop(stream);
    t.irc.say(&t.channel, "while the stream was down");
    second.until("while the stream was down").await;
    let mut stream = t.api.stream_after(&last_read).await;
    assert_eq!(stream.next().await["event"], "api_connected");
    let resumed = stream.until("while the stream was down").await;
    assert_eq!(resumed.len(), 1, "{resumed:#?}");
    // What the API said was not relayed back to the API (no echo).
    t.api.say("ops", "ci-bot", "API-ECHO-CHECK").await;
    t.irc.say(&t.channel, "after the echo check");
    let seen = stream.until("after the echo check").await;
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert_eq!(t.bridge.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slack_style_webhook_reaches_irc_as_readable_lines_and_matrix_as_html() {
    let mut t = fixture().await;
    let hook = format!("http://127.0.0.1:{}/hooks/grafana", t.api_port);
    // As Grafana's and GitLab's Slack notifiers send one.
    let alert = json!({
        "username": "Grafana",
        "icon_url": "https://grafana.example/img/fav32.png",
        "text": "**[Alerting]** CPU high on `db1`: see <https://grafana.example/d/1|the dashboard>",
        "attachments": [{
            "fallback": "CPU high on db1",
            "color": "#D63232",
            "pretext": "Production",
            "title": "CPU high",
            "title_link": "https://grafana.example/d/1",
            "text": "Load is _12_ for 5 minutes",
            "fields": [{"title": "host", "value": "db1", "short": true},
                       {"title": "load", "value": 12, "short": true}],
            "footer": "Grafana v11",
        }],
    });
    let http = reqwest::Client::new();
    let refused = http
        .post(format!("{hook}?token=wrong"))
        .json(&alert)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let unknown = http
        .post(format!(
            "http://127.0.0.1:{}/hooks/nope?token={HOOK_SECRET}",
            t.api_port
        ))
        .json(&alert)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status().as_u16(), 404);
    let accepted = http
        .post(format!("{hook}?token={HOOK_SECRET}"))
        .json(&alert)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status().as_u16(), 200);
    assert_eq!(accepted.text().await.unwrap(), "ok");
    // Mattermost's form encoding, the secret as a bearer token.
    let form = http
        .post(&hook)
        .bearer_auth(HOOK_SECRET)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("payload=%7B%22text%22%3A%22HOOK-MARK%22%7D")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 200);

    let on_irc = t.irc_until("HOOK-MARK").await;
    assert_eq!(
        on_irc,
        [
            "<Grafana> [Alerting] CPU high on db1: see the dashboard <https://grafana.example/d/1>",
            "<Grafana> Production",
            "<Grafana> CPU high <https://grafana.example/d/1>",
            "<Grafana> Load is 12 for 5 minutes",
            "<Grafana> host: db1",
            "<Grafana> load: 12",
            "<grafana> HOOK-MARK",
        ],
        "{on_irc:#?}"
    );
    let on_matrix = t.matrix_until("HOOK-MARK").await;
    assert_eq!(on_matrix.len(), 2, "{on_matrix:#?}");
    let html = on_matrix[0].content["formatted_body"]
        .as_str()
        .unwrap_or_default();
    for part in [
        "<strong>[Alerting]</strong>",
        "<code>db1</code>",
        "<a href=\"https://grafana.example/d/1\">the dashboard</a>",
        "<em>12</em>",
        "<strong>host</strong>: db1",
    ] {
        assert!(html.contains(part), "{part} in {html}");
    }
    assert!(
        !html.contains("icon_url") && !html.contains("fav32"),
        "{html}"
    );
    let posts = t.mattermost_until("HOOK-MARK").await;
    assert_eq!(posts.len(), 2, "{:#?}", messages(&posts));
    assert!(
        messages(&posts)[0].contains("host: db1"),
        "{:#?}",
        messages(&posts)
    );
    assert_eq!(t.bridge.terminate(), Some(0));
}

/// Mattermost is the destination here: its deliveries carry an idempotency key
/// (`pending_post_id`), so "once" holds across a SIGKILL (IRC leaves the window the README's
/// "Guarantees" describes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_nothing_that_got_a_200() {
    let mm = MmServer::start("dept").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let api_port = free_port();
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}{}\
         [[gateway]]\nname = \"ops\"\nchannels = [\n\
           {{ network = \"api\", channel = \"ops\" }},\n\
           {{ network = \"mm\", channel = \"town\" }},\n]\n",
        mm.network("mm", ""),
        api_network(api_port),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    let api = ApiClient::new(api_port, TOKEN);
    api.wait_healthy().await;

    // Said on Mattermost and buffered for the API, not read yet when the daemon dies.
    mia.say(&channel_id, "unread before the crash").await;
    bridge.wait_outbox_drained("api", "ops").await;
    // A burst of posts, the daemon killed right after the last 200.
    let burst: Vec<String> = (0..40).map(|n| format!("posted {n:02}")).collect();
    for text in &burst {
        api.say("ops", "ci-bot", text).await;
    }
    bridge.kill9();
    api.wait_gone().await;
    mm.wait_websocket(0).await;
    bridge.restart();
    api.wait_healthy().await;
    api.say("ops", "ci-bot", "after the restart").await;

    let posts = mia
        .wait_posts_by(&channel_id, &mm.bot_id, |posts| {
            messages(posts)
                .iter()
                .any(|m| m.contains("after the restart"))
        })
        .await;
    let mut expected: Vec<String> = burst.iter().map(|t| format!("<ci-bot> {t}")).collect();
    expected.push("<ci-bot> after the restart".to_owned());
    assert_eq!(
        messages(&posts),
        expected,
        "every post that got a 200, once, in order"
    );

    let taken = api.messages().await;
    let texts: Vec<&str> = taken.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, ["unread before the crash"], "{taken:#?}");
    assert_eq!(bridge.terminate(), Some(0));
}

/// A full buffer drops nothing: what does not fit waits in the outbox, counted and logged,
/// and reaches the client, in order, once it has read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_holds_messages_in_the_outbox_until_a_client_reads() {
    let irc_port = shared_inspircd().port;
    let channel = unique("#apifull");
    let nick = unique("brfull");
    let mut irc = IrcClient::connect(irc_port, &unique("ivan")).await;
    irc.join(&channel).await;
    let (api_port, metrics_port) = (free_port(), free_port());
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\
         metrics_listen = \"127.0.0.1:{metrics_port}\"\n\n\
         [network.irc]\ntype = \"irc\"\nserver = \"127.0.0.1:{irc_port}\"\ntls = false\n\
         nick = \"{nick}\"\nflood_burst = 1000\nflood_interval_ms = 1\n\n\
         [network.api]\ntype = \"api\"\nlisten = \"127.0.0.1:{api_port}\"\ntoken = \"{TOKEN}\"\n\
         buffer = 2\nremote_nick_format = \"{{NICK}}\"\n\n\
         [[gateway]]\nname = \"ops\"\nchannels = [\n\
           {{ network = \"api\", channel = \"ops\" }},\n\
           {{ network = \"irc\", channel = \"{channel}\" }},\n]\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    irc.wait_join(&nick, &channel).await;
    let api = ApiClient::new(api_port, TOKEN);
    api.wait_healthy().await;

    for n in 1..=5 {
        irc.say(&channel, &format!("line {n}"));
    }
    bridge
        .wait_for_log("The API's buffer is full (no client has read it)")
        .await;
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        sample(&text, r#"tribridge_api_buffer_unread{network="api"}"#),
        Some(2.0),
        "{text}"
    );
    assert!(
        sample(&text, r#"tribridge_api_buffer_full_total{network="api"}"#).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    let texts = |taken: &[Value]| -> Vec<String> {
        taken
            .iter()
            .filter_map(|m| m["text"].as_str().map(ToOwned::to_owned))
            .collect()
    };
    assert_eq!(texts(&api.messages().await), ["line 1", "line 2"]);
    // The held ones come once there is room, in order, none lost.
    let rest = api.messages_until(&["line 5"]).await;
    assert_eq!(texts(&rest), ["line 3", "line 4", "line 5"]);
    assert_eq!(bridge.terminate(), Some(0));
}
