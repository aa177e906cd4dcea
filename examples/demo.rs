//! The README's demo: a real `InspIRCd` and a real Synapse on loopback and a Mattermost server
//! (the emulator, in process), tribridge linking `#demo-a`, `#demo-b`, the Mattermost channel
//! `demo-c` and the Matrix room `#demo-d:localhost`, and four people talking across the link.
//! With `--interactive` it keeps running so you can connect your own IRC client (or Mattermost or
//! Matrix client, to the printed URLs).

#[path = "../tests/it/support/irc_client.rs"]
#[allow(dead_code)]
mod irc_client;
#[path = "../tests/it/support/matrix_client.rs"]
#[allow(dead_code)]
mod matrix_client;
#[path = "../tests/it/support/mattermost.rs"]
#[allow(dead_code)]
mod mattermost;
#[path = "../tests/it/support/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let interactive = std::env::args().any(|a| a == "--interactive");
    tribridge::install_tls_provider();
    println!("Starting InspIRCd on loopback...");
    let server = servers::InspIrcd::start();
    println!(
        "  IRC server: 127.0.0.1:{} (TLS on {})",
        server.port, server.tls_port
    );

    println!("Starting a Mattermost server (the emulator) on loopback...");
    let mm = mattermost::MmServer::start("demo").await;
    let channel_c = mm.channel("demo-c").await;
    let carol = mm.user("carol", &channel_c).await;
    println!(
        "  Mattermost: {} (team demo, channel demo-c, user carol / carol-password)",
        mm.emu.base_url()
    );

    println!("Starting Synapse on loopback (a few seconds)...");
    let synapse = servers::Synapse::start();
    matrix_client::register(&synapse.url(), "bridge", "bridge-password").await;
    let mut dave = matrix_client::MatrixUser::new(&synapse.url(), "dave").await;
    let room_d = dave.create_room("demo-d").await;
    dave.mark().await;
    println!(
        "  Matrix: {} (room #demo-d:localhost, user dave / password)",
        synapse.url()
    );

    let state = tempfile::tempdir()?;
    let config_text = format!(
        r##"[general]
state_dir = "{state}"
remote_nick_format = "<{{NICK}}> "

[network.left]
type = "irc"
server = "127.0.0.1:{tls_port}"
tls_ca_file = "{ca}"
nick = "bridge-left"

[network.right]
type = "irc"
server = "127.0.0.1:{port}"
tls = false
nick = "bridge-right"

[network.mm]
type = "mattermost"
url = "{mm_url}"
team = "demo"
token = "{mm_token}"

[network.mx]
type = "matrix"
homeserver = "{mx_url}"
user = "@bridge:localhost"
password = "bridge-password"

[[gateway]]
name = "demo"
channels = [
  {{ network = "left", channel = "#demo-a" }},
  {{ network = "right", channel = "#demo-b" }},
  {{ network = "mm", channel = "demo-c" }},
  {{ network = "mx", channel = "#demo-d:localhost" }},
]
"##,
        mx_url = synapse.url(),
        mm_url = mm.emu.base_url(),
        mm_token = mm.bot_token,
        state = state.path().display(),
        port = server.port,
        tls_port = server.tls_port,
        ca = server.tls.ca.display(),
    );
    println!("\nThe demo configuration:\n{config_text}");
    let config = tribridge::config::parse(&config_text, state.path(), &[])
        .map_err(|issues| anyhow::anyhow!("{issues:?}"))?;

    let mut alice = irc_client::IrcClient::connect(server.port, "alice").await;
    alice.join("#demo-a").await;
    let mut bob = irc_client::IrcClient::connect(server.port, "bob").await;
    bob.join("#demo-b").await;

    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(tribridge::daemon::run(config, shutdown.clone(), || {}));
    alice.wait_member("bridge-left", "#demo-a").await;
    bob.wait_member("bridge-right", "#demo-b").await;
    mm.wait_bot_member(&channel_c).await;
    mm.wait_websocket(1).await;
    dave.events_until(&room_d, Duration::from_mins(1), |events| {
        events.iter().any(|e| {
            e.kind == "m.room.member"
                && e.sender == "@bridge:localhost"
                && e.content["membership"] == "join"
        })
    })
    .await;
    println!("tribridge is in all four channels.\n");

    let script: [(&str, &str); 4] = [
        ("alice", "hello from #demo-a!"),
        ("bob", "hi alice, this is #demo-b"),
        ("alice", "\u{1}ACTION waves\u{1}"),
        (
            "bob",
            "formatting stays: \u{2}bold\u{2} and \u{3}04red\u{3}",
        ),
    ];
    for (who, text) in script {
        let (speaker, speaker_channel, listener, listener_channel) = if who == "alice" {
            (&alice, "#demo-a", &mut bob, "#demo-b")
        } else {
            (&bob, "#demo-b", &mut alice, "#demo-a")
        };
        speaker.say(speaker_channel, text);
        println!("{speaker_channel:>8} | <{who}> {}", printable(text));
        let line = listener
            .wait_for(|l| l.text().is_some(), Duration::from_secs(30))
            .await
            .ok_or_else(|| anyhow::anyhow!("nothing arrived in {listener_channel}"))?;
        let (_, seen) = line.text().unwrap_or_default();
        println!(
            "{listener_channel:>8} | <{}> {}\n",
            line.source_nick,
            printable(seen)
        );
    }

    // What carol saw on Mattermost meanwhile: the four IRC lines, as Markdown posts.
    let posts = carol
        .wait_posts_by(&channel_c, &mm.bot_id, |p| p.len() >= 4)
        .await;
    for post in &posts {
        println!(
            "{:>8} | [bridge] {}{}",
            "demo-c",
            post["message"].as_str().unwrap_or_default(),
            if post["type"] == "me" {
                "   (a /me post)"
            } else {
                ""
            }
        );
    }
    println!();

    let text = "hello IRC, **from Mattermost**";
    carol.say(&channel_c, text).await;
    println!("{:>8} | <carol> {text}", "demo-c");
    for (listener, channel) in [(&mut alice, "#demo-a"), (&mut bob, "#demo-b")] {
        let line = listener
            .wait_for(|l| l.text().is_some(), Duration::from_secs(30))
            .await
            .ok_or_else(|| anyhow::anyhow!("nothing arrived in {channel}"))?;
        let (_, seen) = line.text().unwrap_or_default();
        println!("{channel:>8} | <{}> {}", line.source_nick, printable(seen));
    }
    println!();

    // What dave saw on Matrix: everything so far, as HTML where it was formatted.
    let seen = dave.messages_until(&room_d, "from Mattermost").await;
    for event in seen.iter().filter(|e| e.sender == "@bridge:localhost") {
        let html = event.content["formatted_body"]
            .as_str()
            .map(|html| format!("   (HTML: {html})"))
            .unwrap_or_default();
        println!("{:>8} | [bridge] {}{html}", "demo-d", event.body());
    }
    println!();

    let text = "and hello from Matrix";
    dave.send_event(
        &room_d,
        "m.room.message",
        serde_json::json!({"msgtype": "m.text", "body": "and hello from Matrix",
            "format": "org.matrix.custom.html",
            "formatted_body": "and <em>hello</em> from Matrix"}),
    )
    .await;
    println!("{:>8} | <dave> {text}", "demo-d");
    for (listener, channel) in [(&mut alice, "#demo-a"), (&mut bob, "#demo-b")] {
        let line = listener
            .wait_for(|l| l.text().is_some(), Duration::from_secs(30))
            .await
            .ok_or_else(|| anyhow::anyhow!("nothing arrived in {channel}"))?;
        let (_, seen) = line.text().unwrap_or_default();
        println!("{channel:>8} | <{}> {}", line.source_nick, printable(seen));
    }
    let posts = carol
        .wait_posts_by(&channel_c, &mm.bot_id, |p| {
            p.iter().any(|post| {
                post["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Matrix"))
            })
        })
        .await;
    if let Some(post) = posts.last() {
        println!(
            "{:>8} | [bridge] {}",
            "demo-c",
            post["message"].as_str().unwrap_or_default()
        );
    }
    println!();

    if interactive {
        println!(
            "Connect your IRC client to 127.0.0.1:{} and join #demo-a or #demo-b. Ctrl-C to stop.",
            server.port
        );
        tokio::signal::ctrl_c().await?;
    }
    shutdown.cancel();
    daemon.await??;
    println!("Demo finished.");
    Ok(())
}

fn printable(text: &str) -> String {
    text.replace('\u{1}', "^A")
        .replace('\u{2}', "^B")
        .replace('\u{3}', "^C")
        .replace('\u{1d}', "^I")
}
