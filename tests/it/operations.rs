//! Operating the daemon without restarts, through the real binary and real servers: the
//! health endpoints (`/healthz`, `/readyz`) an orchestrator polls, live reload (`SIGHUP`,
//! `tribridge reload`), and what it tells systemd (`NOTIFY_SOCKET`: READY, RELOADING,
//! WATCHDOG).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::support::bridge::{Bridge, unique};
use crate::support::config::irc_network;
use crate::support::irc_client::IrcClient;
use crate::support::servers::{InspIrcd, free_port, shared_inspircd};

/// How long a test waits for the daemon to get somewhere.
const DEADLINE: Duration = Duration::from_mins(1);

/// `GET http://127.0.0.1:{port}{path}`: the status code and the body; `None` while nothing
/// answers.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Poll `path` until it answers `status` (with a deadline); the body of that answer.
async fn wait_status(port: u16, path: &str, status: u16) -> serde_json::Value {
    let deadline = Instant::now() + DEADLINE;
    let mut last = None;
    loop {
        if let Some((code, body)) = get(port, path).await {
            if code == status {
                return serde_json::from_str(&body).expect("a JSON body");
            }
            last = Some((code, body));
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status}; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A file of `networks` and `gateways` (each a name and its `(network, channel)` entries),
/// with the metrics endpoint on `metrics` and reconnects at most 1 s apart.
fn config(networks: &[String], gateways: &[(&str, Vec<(&str, &str)>)], metrics: u16) -> String {
    let mut text = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\
         metrics_listen = \"127.0.0.1:{metrics}\"\nreconnect_max_seconds = 1\n\n{}",
        networks.concat()
    );
    for (name, channels) in gateways {
        let entries: Vec<String> = channels
            .iter()
            .map(|(network, channel)| {
                format!("  {{ network = \"{network}\", channel = \"{channel}\" }},")
            })
            .collect();
        let _ = write!(
            text,
            "[[gateway]]\nname = \"{name}\"\nchannels = [\n{}\n]\n\n",
            entries.join("\n")
        );
    }
    text
}

/// `/readyz` is 503 naming the network whose IRC server is down (and the channel it is not
/// in), not the one that is up, and 200 once the server is back and the bridge rejoined;
/// `/healthz` stays 200 throughout (the process and its store writer are fine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_network_whose_server_is_down_and_is_ready_when_it_is_back() {
    let shared = shared_inspircd();
    let mut own = InspIrcd::start();
    let (channel_a, channel_b) = (unique("#ready"), unique("#ready"));
    let (nick_one, nick_two) = (unique("rdone"), unique("rdtwo"));
    let metrics = free_port();
    let mut bob = IrcClient::connect(own.port, &unique("bob")).await;
    bob.join(&channel_b).await;
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                irc_network("one", shared.port, &nick_one),
                irc_network("two", own.port, &nick_two),
            ],
            &[("g", vec![("one", &channel_a), ("two", &channel_b)])],
            metrics,
        ),
    );
    bob.wait_join(&nick_two, &channel_b).await;
    let ready = wait_status(metrics, "/readyz", 200).await;
    assert_eq!(ready["not_ready"], serde_json::json!([]));
    let health = wait_status(metrics, "/healthz", 200).await;
    assert_eq!(health["status"], "ok");

    own.stop();
    let not_ready = wait_status(metrics, "/readyz", 503).await;
    assert_eq!(
        not_ready["not_ready"],
        serde_json::json!([{
            "network": "two",
            "connected": false,
            "missing_channels": [channel_b],
        }]),
        "only the network whose server is down is named: {not_ready}"
    );
    assert_eq!(wait_status(metrics, "/healthz", 200).await["status"], "ok");

    own.restart();
    let mut bob = IrcClient::connect(own.port, &unique("bob")).await;
    bob.join(&channel_b).await;
    bob.wait_member(&nick_two, &channel_b).await;
    let ready = wait_status(metrics, "/readyz", 200).await;
    assert_eq!(ready["status"], "ready");
    assert!(bridge.is_running());
    assert_eq!(bridge.terminate(), Some(0));
}

/// `tribridge reload --config {dir}/bridges.toml`, as an operator runs it: its exit code,
/// standard output and standard error.
async fn reload_command(dir: &std::path::Path) -> (Option<i32>, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .arg("reload")
        .arg("--config")
        .arg(dir.join("bridges.toml"))
        .output()
        .await
        .expect("run tribridge reload");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The lines `client` received that show `nick` leaving or arriving (QUIT, JOIN, PART), among
/// everything it received and no wait took.
fn comings_and_goings(client: &mut IrcClient, nick: &str) -> Vec<String> {
    let nick = nick.to_lowercase();
    client
        .drain()
        .into_iter()
        .filter(|line| {
            line.source_nick.to_lowercase() == nick
                && matches!(line.command.as_str(), "QUIT" | "JOIN" | "PART")
        })
        .map(|line| line.raw)
        .collect()
}

/// Wait until `client` sees a text containing `marker` in `channel`, keeping every other line
/// it received for [`comings_and_goings`]; the text.
async fn wait_text(client: &mut IrcClient, channel: &str, marker: &str) -> String {
    let channel = channel.to_lowercase();
    let line = client
        .wait_for(
            |line| {
                line.text()
                    .is_some_and(|(to, text)| to.to_lowercase() == channel && text.contains(marker))
            },
            DEADLINE,
        )
        .await
        .unwrap_or_else(|| panic!("{}: {marker:?} never arrived in {channel}", client.nick));
    line.text()
        .map(|(_, text)| text.to_owned())
        .unwrap_or_default()
}

/// `tribridge reload` after a gateway was added between two new channels of the networks the
/// bridge already has: the bridge joins the new channels and relays between them within
/// seconds, while the people of the unchanged channels see it neither quit nor join (its
/// connections stay as they were: each network registered once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_gateway_without_touching_the_unchanged_channels() {
    let server = shared_inspircd();
    let channels: Vec<String> = (0..4).map(|_| unique("#rel")).collect();
    let (a, b, c, d) = (&channels[0], &channels[1], &channels[2], &channels[3]);
    let (nick_one, nick_two) = (unique("rlone"), unique("rltwo"));
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    let mut bob = IrcClient::connect(server.port, &unique("bob")).await;
    let mut carol = IrcClient::connect(server.port, &unique("carol")).await;
    let mut dave = IrcClient::connect(server.port, &unique("dave")).await;
    alice.join(a).await;
    bob.join(b).await;
    carol.join(c).await;
    dave.join(d).await;
    let networks = [
        irc_network("one", server.port, &nick_one),
        irc_network("two", server.port, &nick_two),
    ];
    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &config(&networks, &[("g", vec![("one", a), ("two", b)])], metrics),
    );
    alice.wait_join(&nick_one, a).await;
    bob.wait_join(&nick_two, b).await;
    alice.say(a, "before the reload");
    assert_eq!(
        wait_text(&mut bob, b, "before the reload").await,
        format!("<{}> before the reload", alice.nick)
    );

    std::fs::write(
        dir.path().join("bridges.toml"),
        config(
            &networks,
            &[
                ("g", vec![("one", a), ("two", b)]),
                ("added", vec![("one", c), ("two", d)]),
            ],
            metrics,
        ),
    )
    .unwrap();
    let asked = Instant::now();
    let (code, out, err) = reload_command(dir.path()).await;
    assert_eq!(code, Some(0), "reload failed: {out}{err}");
    assert!(
        out.starts_with("reloaded (pid ") && out.contains("following new channels [one, two]"),
        "{out}"
    );
    let answered = asked.elapsed();
    carol.wait_join(&nick_one, c).await;
    dave.wait_join(&nick_two, d).await;
    carol.say(c, "through the new gateway");
    assert_eq!(
        wait_text(&mut dave, d, "through the new gateway").await,
        format!("<{}> through the new gateway", carol.nick)
    );
    // A figure for the report, not an assertion.
    eprintln!(
        "reload: answered in {answered:?}; first line relayed through the new gateway {:?} \
         after `tribridge reload` started",
        asked.elapsed()
    );

    // The old channels still relay, and saw the bridge neither leave nor come back.
    alice.say(a, "after the reload");
    assert_eq!(
        wait_text(&mut bob, b, "after the reload").await,
        format!("<{}> after the reload", alice.nick)
    );
    bob.say(b, "and back");
    wait_text(&mut alice, a, "and back").await;
    assert_eq!(
        comings_and_goings(&mut alice, &nick_one),
        Vec::<String>::new()
    );
    assert_eq!(
        comings_and_goings(&mut bob, &nick_two),
        Vec::<String>::new()
    );
    assert_eq!(
        bridge.logs().matches("Registered.").count(),
        2,
        "each network registered once: {}",
        bridge.logs()
    );
    let ready = wait_status(metrics, "/readyz", 200).await;
    assert_eq!(ready["not_ready"], serde_json::json!([]));
    assert_eq!(bridge.terminate(), Some(0));
}

/// A reload that adds a gateway between a new Matrix room and a new Mattermost channel, then
/// removes it: both networks follow on the connections they have. The new room and channel
/// relay both ways within seconds while the old ones keep relaying; the bot never leaves or
/// rejoins the old room, the Mattermost WebSocket and the Matrix login are the first ones, and
/// the IRC channel of the unchanged gateway sees nothing. Removed again, the new channel's
/// posts are not relayed any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_a_matrix_room_and_a_mattermost_channel_on_the_running_connections() {
    use crate::support::config::matrix_network;
    use crate::support::matrix_client::{MatrixUser, register};
    use crate::support::mattermost::MmServer;
    use crate::support::servers::shared_synapse;
    let server = shared_inspircd();
    let synapse = shared_synapse().url();
    let a = unique("#mmr");
    let nick_one = unique("mrone");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&a).await;
    let mm = MmServer::start("reload").await;
    let (town, square) = (mm.channel("town").await, mm.channel("square").await);
    let mia = mm.user("mia", &town).await;
    mia.ok(
        reqwest::Method::POST,
        &format!("/channels/{square}/members"),
        Some(serde_json::json!({"user_id": mia.id})),
    )
    .await;
    let bot = unique("rlbot");
    register(&synapse, &bot, "password").await;
    let bot_id = format!("@{bot}:localhost");
    let mut max = MatrixUser::new(&synapse, &unique("max")).await;
    let (first_alias, second_alias) = (unique("rlroom"), unique("rlroom"));
    let first_room = max.create_room(&first_alias).await;
    let second_room = max.create_room(&second_alias).await;
    let (first_alias, second_alias) = (
        format!("#{first_alias}:localhost"),
        format!("#{second_alias}:localhost"),
    );
    let networks = [
        irc_network("one", server.port, &nick_one),
        mm.network("mm", ""),
        matrix_network("mx", &synapse, &bot),
    ];
    let metrics = free_port();
    let first = [(
        "g",
        vec![
            ("one", a.as_str()),
            ("mm", "town"),
            ("mx", first_alias.as_str()),
        ],
    )];
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config(&networks, &first, metrics));
    alice.wait_join(&nick_one, &a).await;
    mm.wait_bot_member(&town).await;
    mm.wait_websocket(1).await;
    max.events_until(&first_room, DEADLINE, |events| {
        events.iter().any(|e| {
            e.kind == "m.room.member" && e.sender == bot_id && e.content["membership"] == "join"
        })
    })
    .await;
    wait_status(metrics, "/readyz", 200).await;
    max.say(&first_room, "before the reload").await;
    wait_text(&mut alice, &a, "before the reload").await;

    let both = [
        first[0].clone(),
        (
            "added",
            vec![("mm", "square"), ("mx", second_alias.as_str())],
        ),
    ];
    std::fs::write(
        dir.path().join("bridges.toml"),
        config(&networks, &both, metrics),
    )
    .unwrap();
    let asked = Instant::now();
    let (code, out, err) = reload_command(dir.path()).await;
    assert_eq!(code, Some(0), "reload failed: {out}{err}");
    assert!(
        out.contains(
            "networks added [], removed [], reconnected [], following new channels [mm, mx]"
        ) && out.contains("2 destinations added"),
        "{out}"
    );

    // The new room and channel relay both ways.
    mia.say(&square, "from the new channel").await;
    let seen = max
        .messages_until(&second_room, "from the new channel")
        .await;
    assert_eq!(
        seen.iter()
            .map(crate::support::matrix_client::Event::body)
            .collect::<Vec<_>>(),
        vec!["<mia> from the new channel"]
    );
    max.say(&second_room, "from the new room").await;
    let posts = mia
        .wait_posts_by(&square, &mm.bot_id, |posts| {
            posts.iter().any(|p| {
                p["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("from the new room"))
            })
        })
        .await;
    let max_name = crate::support::matrix_client::local_part(&max.user_id);
    assert_eq!(
        posts[0]["message"],
        // Markdown: the `<` is escaped, and shown as typed.
        format!("\\<{max_name}> from the new room"),
    );
    // A figure for the report, not an assertion.
    eprintln!(
        "reload: the new Matrix room and Mattermost channel relayed both ways {:?} after \
         `tribridge reload` started",
        asked.elapsed()
    );

    // The old ones keep relaying, on the same connections.
    mia.say(&town, "from the old channel").await;
    assert_eq!(
        wait_text(&mut alice, &a, "from the old channel").await,
        "<mia> from the old channel"
    );
    let old_room = max
        .messages_until(&first_room, "from the old channel")
        .await;
    assert_eq!(
        old_room
            .last()
            .map(crate::support::matrix_client::Event::body),
        Some("<mia> from the old channel")
    );
    let bot_memberships = max
        .history_events(&first_room)
        .await
        .into_iter()
        .filter(|e| e.kind == "m.room.member" && e.sender == bot_id)
        .count();
    assert_eq!(bot_memberships, 1, "the bot joined the old room once");
    assert_eq!(mm.emu.websocket_count(), 1);
    let logs = bridge.logs();
    assert_eq!(
        logs.matches("WebSocket session started").count(),
        1,
        "one Mattermost session: {logs}"
    );
    assert_eq!(
        logs.matches("Logged in to Matrix.").count()
            + logs.matches("Matrix session restored.").count(),
        1,
        "one Matrix login and sync loop: {logs}"
    );
    assert_eq!(
        comings_and_goings(&mut alice, &nick_one),
        Vec::<String>::new()
    );
    wait_status(metrics, "/readyz", 200).await;

    // Removed again: the channel is not relayed any more, the bot stays in the room.
    std::fs::write(
        dir.path().join("bridges.toml"),
        config(&networks, &first, metrics),
    )
    .unwrap();
    let (code, out, err) = reload_command(dir.path()).await;
    assert_eq!(code, Some(0), "reload failed: {out}{err}");
    assert!(
        out.contains("following new channels [mm, mx]") && out.contains("2 removed"),
        "{out}"
    );
    mia.say(&square, "after the removal").await;
    // The same WebSocket carries both posts in order: once the second is relayed, the first
    // was handled.
    mia.say(&town, "marker after the removal").await;
    wait_text(&mut alice, &a, "marker after the removal").await;
    max.messages_until(&first_room, "marker after the removal")
        .await;
    let second_history = max.history(&second_room).await;
    assert!(
        second_history
            .iter()
            .all(|e| !e.body().contains("after the removal")),
        "{second_history:?}"
    );
    let left = max.history_events(&second_room).await.into_iter().any(|e| {
        e.kind == "m.room.member" && e.sender == bot_id && e.content["membership"] == "leave"
    });
    assert!(!left, "the bot stays in a room no gateway links");
    wait_status(metrics, "/readyz", 200).await;
    assert_eq!(bridge.terminate(), Some(0));
}

/// A reload that adds an api gateway and removes another: the running listener takes the new
/// gateway name at once (a post to it is relayed) and answers a post to the removed one as an
/// unknown gateway (400), without listening again. The same reload links an `[[identity]]`
/// with a name: the person is shown under it from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_gives_the_running_api_listener_its_new_gateway_names() {
    use crate::support::api_client::ApiClient;
    let server = shared_inspircd();
    let (a, b) = (unique("#apir"), unique("#apir"));
    let nick = unique("apirl");
    let mut carol = IrcClient::connect(server.port, &unique("carol")).await;
    carol.join(&b).await;
    let api_port = free_port();
    let networks = [
        irc_network("one", server.port, &nick),
        format!(
            "[network.api]\ntype = \"api\"\nlisten = \"127.0.0.1:{api_port}\"\ntoken = \"secret\"\n\
             remote_nick_format = \"{{NICK}}\"\n\n"
        ),
        // In no gateway (not connected): the identity's other account.
        irc_network("elsewhere", server.port, &unique("apiel")),
    ];
    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &config(
            &networks,
            &[("first", vec![("one", a.as_str()), ("api", "first")])],
            metrics,
        ),
    );
    let client = ApiClient::new(api_port, "secret");
    client.wait_healthy().await;
    wait_status(metrics, "/readyz", 200).await;
    let refused = client
        .post(&ApiClient::message("second", "bot", "too early"))
        .await;
    assert_eq!(refused.status, 400, "{refused:?}");

    let second = [("second", vec![("one", b.as_str()), ("api", "second")])];
    std::fs::write(
        dir.path().join("bridges.toml"),
        format!(
            "{}[[identity]]\nname = \"Carol Example\"\none = \"{}\"\nelsewhere = \"carol\"\n",
            config(&networks, &second, metrics),
            carol.nick
        ),
    )
    .unwrap();
    let (code, out, err) = reload_command(dir.path()).await;
    assert_eq!(code, Some(0), "reload failed: {out}{err}");
    assert!(
        out.contains("reconnected [], following new channels [api, one]")
            && out.contains("[[identity]] linked anew"),
        "{out}"
    );
    client
        .say("second", "ci", "through the new gateway name")
        .await;
    assert_eq!(
        wait_text(&mut carol, &b, "through the new gateway name").await,
        "<ci> through the new gateway name"
    );
    carol.say(&b, "said as a linked person");
    let taken = client.messages_until(&["said as a linked person"]).await;
    let relayed = taken
        .iter()
        .find(|m| m["text"] == "said as a linked person")
        .expect("relayed");
    assert_eq!(relayed["username"], "Carol Example", "{relayed}");
    let gone = client
        .post(&ApiClient::message("first", "ci", "too late"))
        .await;
    assert_eq!(gone.status, 400, "{gone:?}");
    assert!(gone.body.contains("first"), "{gone:?}");
    assert_eq!(
        bridge
            .logs()
            .matches("Listening for API clients and webhooks.")
            .count(),
        1,
        "one listener: {}",
        bridge.logs()
    );
    wait_status(metrics, "/readyz", 200).await;
    assert_eq!(bridge.terminate(), Some(0));
}

/// A reload that changes one network's section (its nick) reconnects that network only: its
/// channel sees the old nick quit and the new one join, the other network's channel sees
/// nothing, and the gateway relays under the new nick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reconnects_only_the_network_whose_section_changed() {
    let server = shared_inspircd();
    let (a, b) = (unique("#chg"), unique("#chg"));
    let (nick_one, nick_two, nick_new) = (unique("chone"), unique("chtwo"), unique("chnew"));
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    let mut bob = IrcClient::connect(server.port, &unique("bob")).await;
    alice.join(&a).await;
    bob.join(&b).await;
    let one = irc_network("one", server.port, &nick_one);
    let metrics = free_port();
    let gateways = [("g", vec![("one", a.as_str()), ("two", b.as_str())])];
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &config(
            &[one.clone(), irc_network("two", server.port, &nick_two)],
            &gateways,
            metrics,
        ),
    );
    alice.wait_join(&nick_one, &a).await;
    bob.wait_join(&nick_two, &b).await;

    std::fs::write(
        dir.path().join("bridges.toml"),
        config(
            &[one, irc_network("two", server.port, &nick_new)],
            &gateways,
            metrics,
        ),
    )
    .unwrap();
    let (code, out, err) = reload_command(dir.path()).await;
    assert_eq!(code, Some(0), "reload failed: {out}{err}");
    assert!(out.contains("reconnected [two]"), "{out}");
    bob.wait_join(&nick_new, &b).await;
    alice.say(&a, "to the new nick");
    let seen = bob
        .wait_for(
            |line| {
                line.text()
                    .is_some_and(|(_, text)| text.contains("to the new nick"))
            },
            DEADLINE,
        )
        .await
        .expect("relayed after the reconnect");
    assert_eq!(seen.source_nick.to_lowercase(), nick_new.to_lowercase());
    assert!(
        comings_and_goings(&mut bob, &nick_two)
            .iter()
            .any(|line| line.contains(" QUIT")),
        "the old connection quit"
    );
    bob.say(&b, "back to one");
    wait_text(&mut alice, &a, "back to one").await;
    assert_eq!(
        comings_and_goings(&mut alice, &nick_one),
        Vec::<String>::new()
    );
    assert_eq!(bridge.terminate(), Some(0));
}

/// A reload (SIGHUP) that removes a network whose server is down: the bridge's deliveries
/// queued for its channel stay in the store, counted in `/metrics`; the other networks keep
/// relaying; a reload that brings the network back (its server up again) delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_removes_a_network_and_its_queued_deliveries_arrive_when_it_comes_back() {
    let shared = shared_inspircd();
    let mut own = InspIrcd::start();
    let (a, b, e) = (unique("#rm"), unique("#rm"), unique("#rm"));
    let (nick_one, nick_two, nick_three) = (unique("rmone"), unique("rmtwo"), unique("rmthr"));
    let mut alice = IrcClient::connect(shared.port, &unique("alice")).await;
    let mut erin = IrcClient::connect(shared.port, &unique("erin")).await;
    let mut bob = IrcClient::connect(own.port, &unique("bob")).await;
    alice.join(&a).await;
    erin.join(&e).await;
    bob.join(&b).await;
    let one = irc_network("one", shared.port, &nick_one);
    let two = irc_network("two", own.port, &nick_two);
    let three = irc_network("three", shared.port, &nick_three);
    let metrics = free_port();
    let full = config(
        &[one.clone(), two.clone(), three.clone()],
        &[("g", vec![("one", &a), ("two", &b), ("three", &e)])],
        metrics,
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &full);
    bob.wait_join(&nick_two, &b).await;
    erin.wait_join(&nick_three, &e).await;
    wait_status(metrics, "/readyz", 200).await;

    // Network two's server goes down; what alice says now waits in the outbox for it.
    own.stop();
    wait_status(metrics, "/readyz", 503).await;
    alice.say(&a, "said while two was down");
    assert_eq!(
        wait_text(&mut erin, &e, "said while two was down").await,
        format!("<{}> said while two was down", alice.nick)
    );
    let store = tribridge::store::Store::open(&dir.path().join("state")).unwrap();
    let queued = tribridge::model::ChannelRef::new("two", &b);
    assert_eq!(store.pending_count(&queued).unwrap(), 1);

    // Reload without network two: the others go on, the delivery stays, counted.
    std::fs::write(
        dir.path().join("bridges.toml"),
        config(
            &[one.clone(), three.clone()],
            &[("g", vec![("one", &a), ("three", &e)])],
            metrics,
        ),
    )
    .unwrap();
    bridge.hangup();
    bridge
        .wait_for_log_line(&["Configuration reloaded.", "removed [two]"])
        .await;
    assert_eq!(store.pending_count(&queued).unwrap(), 1);
    let scraped = get(metrics, "/metrics").await.expect("metrics").1;
    assert!(
        scraped.contains("tribridge_outbox_unlinked_deliveries{network=\"two\"} 1"),
        "{scraped}"
    );
    let ready = wait_status(metrics, "/readyz", 200).await;
    assert_eq!(
        ready["not_ready"],
        serde_json::json!([]),
        "two is not expected any more"
    );
    alice.say(&a, "after two was removed");
    wait_text(&mut erin, &e, "after two was removed").await;
    assert_eq!(
        comings_and_goings(&mut erin, &nick_three),
        Vec::<String>::new()
    );

    // Two's server is back and the reload brings the network back: the queued line arrives.
    own.restart();
    let mut bob = IrcClient::connect(own.port, &unique("bob")).await;
    bob.join(&b).await;
    std::fs::write(dir.path().join("bridges.toml"), &full).unwrap();
    let (code, out, err) = reload_command(dir.path()).await;
    assert_eq!(code, Some(0), "reload failed: {out}{err}");
    assert!(out.contains("networks added [two]"), "{out}");
    assert_eq!(
        wait_text(&mut bob, &b, "said while two was down").await,
        format!("<{}> said while two was down", alice.nick)
    );
    bridge.wait_outbox_drained("two", &b).await;
    let scraped = get(metrics, "/metrics").await.expect("metrics").1;
    assert!(
        scraped.contains("tribridge_outbox_unlinked_deliveries{network=\"two\"} 0"),
        "{scraped}"
    );
    assert_eq!(bridge.terminate(), Some(0));
}

/// A reload of a broken file changes nothing: `tribridge reload` prints the located error and
/// exits non-zero without disturbing the daemon; a SIGHUP makes the daemon log the located
/// error and keep relaying on the configuration it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_of_a_broken_file_changes_nothing_and_reports_the_error() {
    let server = shared_inspircd();
    let (a, b) = (unique("#brk"), unique("#brk"));
    let (nick_one, nick_two) = (unique("bkone"), unique("bktwo"));
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    let mut bob = IrcClient::connect(server.port, &unique("bob")).await;
    alice.join(&a).await;
    bob.join(&b).await;
    let networks = [
        irc_network("one", server.port, &nick_one),
        irc_network("two", server.port, &nick_two),
    ];
    let metrics = free_port();
    let good = config(&networks, &[("g", vec![("one", &a), ("two", &b)])], metrics);
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &good);
    alice.wait_join(&nick_one, &a).await;
    bob.wait_join(&nick_two, &b).await;

    // A gateway naming a network that does not exist, on the file's last lines.
    let broken = format!(
        "{good}[[gateway]]\nname = \"bad\"\nchannels = [\n  {{ network = \"nowhere\", channel = \"#x\" }},\n  {{ network = \"one\", channel = \"#y\" }},\n]\n"
    );
    std::fs::write(dir.path().join("bridges.toml"), &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.contains("nowhere"))
        .expect("the bad line")
        + 1;
    let (code, out, err) = reload_command(dir.path()).await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains(&format!("bridges.toml:{line}:")) && err.contains("nowhere"),
        "the located error: {err}"
    );
    assert!(err.contains("not reloaded"), "{err}");

    bridge.hangup();
    bridge.wait_for_log("Reload refused").await;
    bridge
        .wait_for_log_line(&["Reload refused", &format!("bridges.toml:{line}:")])
        .await;
    alice.say(&a, "still on the old file");
    assert_eq!(
        wait_text(&mut bob, &b, "still on the old file").await,
        format!("<{}> still on the old file", alice.nick)
    );
    assert_eq!(
        comings_and_goings(&mut alice, &nick_one),
        Vec::<String>::new()
    );
    assert_eq!(
        comings_and_goings(&mut bob, &nick_two),
        Vec::<String>::new()
    );
    assert!(bridge.is_running());
    assert_eq!(bridge.terminate(), Some(0));
}

/// Under a service manager (`NOTIFY_SOCKET`, as systemd sets it), the daemon says `READY=1`
/// when it runs, and for a reload `RELOADING=1` with `MONOTONIC_USEC` (as `Type=notify-reload`
/// needs), then `READY=1` once it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_tells_the_service_manager_reloading_then_ready() {
    let server = shared_inspircd();
    let (a, b) = (unique("#ntf"), unique("#ntf"));
    let (nick_one, nick_two) = (unique("ntone"), unique("nttwo"));
    let mut bob = IrcClient::connect(server.port, &unique("bob")).await;
    bob.join(&b).await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    let networks = [
        irc_network("one", server.port, &nick_one),
        irc_network("two", server.port, &nick_two),
    ];
    let metrics = free_port();
    let bridge = Bridge::start_with_env(
        dir.path(),
        &config(&networks, &[("g", vec![("one", &a), ("two", &b)])], metrics),
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    assert_eq!(next_notification(&socket).await, "READY=1\n");
    bob.wait_member(&nick_two, &b).await;

    bridge.hangup();
    let reloading = next_notification(&socket).await;
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading}"));
    assert!(usec > 0);
    let ready = next_notification(&socket).await;
    assert!(
        ready.starts_with("READY=1\nSTATUS=Configuration reloaded."),
        "{ready}"
    );
}

/// The next datagram the daemon sent to the notify socket (skipping watchdog pings).
async fn next_notification(socket: &tokio::net::UnixDatagram) -> String {
    let mut buffer = vec![0; 4096];
    loop {
        let received = tokio::time::timeout(DEADLINE, socket.recv(&mut buffer))
            .await
            .expect("a notification in time")
            .expect("read the notify socket");
        let text = String::from_utf8_lossy(&buffer[..received]).into_owned();
        if text != "WATCHDOG=1\n" {
            return text;
        }
    }
}

/// With the systemd watchdog on (`WATCHDOG_USEC`), the daemon pings `WATCHDOG=1` while its
/// store's writer makes progress. When the writer stalls (another process holds the
/// database's write lock while a line waits to be committed) the pings stop, the daemon says
/// why and `/healthz` answers 503; once the lock is released the line is committed and
/// relayed, and the pings resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_pinged_only_while_the_store_writer_makes_progress() {
    let server = shared_inspircd();
    let (a, b) = (unique("#wdg"), unique("#wdg"));
    let (nick_one, nick_two) = (unique("wdone"), unique("wdtwo"));
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    let mut bob = IrcClient::connect(server.port, &unique("bob")).await;
    alice.join(&a).await;
    bob.join(&b).await;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    // Without history, a line goes straight to the store's writer.
    let networks = [
        irc_network("one", server.port, &nick_one),
        irc_network("two", server.port, &nick_two),
    ]
    .map(|section| format!("{}\nhistory = \"off\"\n\n", section.trim_end()));
    let metrics = free_port();
    let mut bridge = Bridge::start_with_env(
        dir.path(),
        &config(&networks, &[("g", vec![("one", &a), ("two", &b)])], metrics),
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    alice.wait_join(&nick_one, &a).await;
    bob.wait_join(&nick_two, &b).await;
    wait_for_notification(&socket, "WATCHDOG=1\n").await;
    // Ready: each join's own writes (the IRC history cursor) are done.
    wait_status(metrics, "/readyz", 200).await;

    // Another process takes the write lock; a line said now cannot be committed.
    let mut holder =
        rusqlite::Connection::open(dir.path().join("state/tribridge.sqlite3")).unwrap();
    let lock = holder
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    alice.say(&a, "said while the store was locked");
    bridge
        .wait_for_log("The store's writer has made no progress; not pinging the watchdog")
        .await;
    let (status, body) = get(metrics, "/healthz").await.expect("healthz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"status\":\"stalled\""), "{body}");
    // Pings sent before the stall was seen are read and dropped; none comes while it lasts.
    let mut buffer = vec![0; 4096];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(1), socket.recv(&mut buffer)).await
    {}
    let during = tokio::time::timeout(Duration::from_millis(1500), socket.recv(&mut buffer)).await;
    assert!(
        during.is_err(),
        "a notification while the writer was stalled: {:?}",
        during.map(|r| r.map(|n| String::from_utf8_lossy(&buffer[..n]).into_owned()))
    );

    lock.rollback().unwrap();
    assert_eq!(
        wait_text(&mut bob, &b, "said while the store was locked").await,
        format!("<{}> said while the store was locked", alice.nick)
    );
    wait_for_notification(&socket, "WATCHDOG=1\n").await;
    bridge
        .wait_for_log("The store's writer makes progress again; pinging the watchdog.")
        .await;
    assert_eq!(wait_status(metrics, "/healthz", 200).await["status"], "ok");
    drop(holder);
    assert_eq!(bridge.terminate(), Some(0));
}

/// Wait for the notification `expected` on the notify socket, with a deadline.
async fn wait_for_notification(socket: &tokio::net::UnixDatagram, expected: &str) {
    let mut buffer = vec![0; 4096];
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let received = tokio::time::timeout(left, socket.recv(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no {expected:?} in time"))
            .expect("read the notify socket");
        if String::from_utf8_lossy(&buffer[..received]) == expected {
            return;
        }
    }
}
