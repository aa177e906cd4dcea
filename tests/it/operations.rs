//! Operating the daemon without restarts, through the real binary and real servers: the
//! health endpoints (`/healthz`, `/readyz`) an orchestrator polls, live reload (`SIGHUP`,
//! `tribridge reload`), and what it tells systemd (`NOTIFY_SOCKET`: READY, RELOADING,
//! WATCHDOG).

use std::time::{Duration, Instant};

use crate::support::bridge::{Bridge, unique};
use crate::support::config::irc_network;
use crate::support::irc_client::{IrcClient, texts};
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
        text.push_str(&format!(
            "[[gateway]]\nname = \"{name}\"\nchannels = [\n{}\n]\n\n",
            entries.join("\n")
        ));
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
