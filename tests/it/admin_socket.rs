//! The admin command line (`tribridge status`, `tribridge failed list|retry|drop`) against the
//! real daemon over its admin socket, with a destination whose server refuses a message: a
//! Matrix room where the bot may not write (its power level below `events_default`), so Synapse
//! answers `M_FORBIDDEN` and the delivery is kept as failed.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::bridge::{Bridge, unique};
use crate::support::config::{irc_network, matrix_network, one_gateway};
use crate::support::irc_client::IrcClient;
use crate::support::matrix_client::{MatrixUser, register};
use crate::support::relayed_once;
use crate::support::servers::{shared_inspircd, shared_synapse};

/// Run `tribridge <args> --config <config>` and return its exit code, standard output and
/// standard error.
fn tribridge(config: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run tribridge");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `tribridge <args> --json`, parsed; the command must succeed.
fn tribridge_json(config: &Path, args: &[&str]) -> Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let (code, out, err) = tribridge(config, &with_json);
    assert_eq!(code, 0, "tribridge {args:?}: {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Ask `failed list` until `done` holds for its deliveries (deadline one minute).
async fn failed_until(config: &Path, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let answer = tribridge_json(config, &["failed", "list"]);
        let deliveries = answer["deliveries"].as_array().cloned().unwrap_or_default();
        if done(&deliveries) {
            return deliveries;
        }
        assert!(
            Instant::now() < deadline,
            "failed list never matched; last: {deliveries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Ask `status` until `done` holds (deadline one minute).
async fn status_until(config: &Path, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let status = tribridge_json(config, &["status"]);
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "status never matched; last: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Power levels where only moderators (50) may speak; the room's creator (room version 12)
/// is above them all and must not be listed.
fn power_levels(bot_level: i64, bot: &str) -> Value {
    json!({
        "users": {bot: bot_level},
        "users_default": 0,
        "events_default": 50,
        "state_default": 50,
        "invite": 0, "kick": 50, "ban": 50, "redact": 50,
        "events": {}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn status_and_failed_list_retry_drop_against_a_room_that_refuses_the_bot() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let irc_port = shared_inspircd().port;
    let bot = unique("adminbot");
    register(&url, &bot, "password").await;
    let bot_id = format!("@{bot}:localhost");
    let mut alice = MatrixUser::new(&url, &unique("alice")).await;
    let alias_name = unique("adminroom");
    let room = alice.create_room(&alias_name).await;
    let alias = format!("#{alias_name}:localhost");
    alice
        .set_state(&room, "m.room.power_levels", &power_levels(0, &bot_id))
        .await;
    let channel = unique("#adm");
    let nick = unique("bradm");
    let mut ivan = IrcClient::connect(irc_port, &unique("ivan")).await;
    ivan.join(&channel).await;
    alice.mark().await;

    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(
        dir.path(),
        &one_gateway(
            &[
                irc_network("irc", irc_port, &nick),
                matrix_network("mx", &url, &bot),
            ],
            &[("irc", &channel), ("mx", &alias)],
        ),
    );
    let config = dir.path().join("bridges.toml");
    ivan.wait_join(&nick, &channel).await;
    alice
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member" && e.content["membership"] == "join" && e.sender == bot_id
            })
        })
        .await;

    // The socket is the owner's alone.
    let socket = dir.path().join("state").join("admin.sock");
    let mode = std::fs::metadata(&socket)
        .expect("admin socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin socket mode {mode:o}");

    // Both networks connected, every channel joined.
    let status = status_until(&config, |status| {
        status["networks"].as_array().is_some_and(|networks| {
            networks.len() == 2
                && networks
                    .iter()
                    .all(|n| n["connected_since_ms"].is_i64() && n["joined"] == n["channels"])
        })
    })
    .await;
    let (code, text, _) = tribridge(&config, &["status"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("network irc") && text.contains("network mx"),
        "{text}"
    );
    assert!(text.contains("channels joined: 1/1"), "{text}");
    assert!(text.contains("failed deliveries: 0"), "{text}");
    assert_eq!(status["failed"], 0);

    // Two lines the room refuses: both kept as failed.
    ivan.say(&channel, "to be dropped");
    ivan.say(&channel, "to be retried");
    let failed = failed_until(&config, |d| d.len() == 2).await;
    assert_eq!(failed[0]["summary"], "to be dropped");
    assert_eq!(failed[1]["summary"], "to be retried");
    for delivery in &failed {
        assert_eq!(delivery["network"], "mx");
        assert_eq!(delivery["channel"], alias.as_str());
        assert!(
            delivery["error"]
                .as_str()
                .unwrap_or_default()
                .contains("M_FORBIDDEN"),
            "{delivery:#}"
        );
    }
    let (code, text, _) = tribridge(&config, &["failed", "list"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("to be retried") && text.contains("M_FORBIDDEN"),
        "{text}"
    );
    let status = tribridge_json(&config, &["status"]);
    assert_eq!(status["failed"], 2);
    let room_queue = status["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["network"] == "mx")
        .cloned()
        .unwrap();
    assert_eq!(room_queue["failed"], 2);
    assert!(
        status["networks"][0]["last_event_ms"].is_i64(),
        "{status:#}"
    );

    // Drop the first, fix the room, retry the second.
    let drop_id = failed[0]["id"].as_i64().unwrap();
    let retry_id = failed[1]["id"].as_i64().unwrap();
    let dropped = tribridge_json(&config, &["failed", "drop", &drop_id.to_string()]);
    assert_eq!(dropped["id"], drop_id);
    let (code, _, err) = tribridge(&config, &["failed", "drop", &drop_id.to_string()]);
    assert_eq!(code, 1, "dropping twice is refused");
    assert!(err.contains("no failed delivery"), "{err}");
    alice
        .set_state(&room, "m.room.power_levels", &power_levels(50, &bot_id))
        .await;
    let (code, out, err) = tribridge(&config, &["failed", "retry", &retry_id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&retry_id.to_string()), "{out}");
    ivan.say(&channel, "after the fix");
    let seen = alice.messages_until(&room, "after the fix").await;
    let bodies: Vec<String> = seen.iter().map(|e| e.body().to_owned()).collect();
    // Once each, in the order they were queued; the dropped one never.
    assert_eq!(relayed_once(&bodies, "to be retried"), 1, "{bodies:#?}");
    assert_eq!(relayed_once(&bodies, "after the fix"), 1, "{bodies:#?}");
    assert!(
        !bodies.iter().any(|b| b.contains("to be dropped")),
        "{bodies:#?}"
    );
    let retried_at = bodies.iter().position(|b| b.contains("to be retried"));
    let after_at = bodies.iter().position(|b| b.contains("after the fix"));
    assert!(retried_at < after_at, "{bodies:#?}");
    failed_until(&config, <[Value]>::is_empty).await;
    let status = tribridge_json(&config, &["status"]);
    assert_eq!(status["failed"], 0, "{status:#}");
    assert_eq!(bridge.terminate(), Some(0), "{}", bridge.logs());
    // The daemon removes its socket when it stops.
    assert!(!socket.exists(), "the admin socket outlives the daemon");
}
