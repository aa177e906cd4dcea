//! The README's demo: a real `InspIRCd` on loopback, tribridge linking `#demo-a` and `#demo-b`
//! through two bridge accounts, and two people talking across the link. With `--interactive` it
//! keeps running so you can connect your own IRC client.

#[path = "../tests/it/support/irc_client.rs"]
#[allow(dead_code)]
mod irc_client;
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

[[gateway]]
name = "demo"
channels = [
  {{ network = "left", channel = "#demo-a" }},
  {{ network = "right", channel = "#demo-b" }},
]
"##,
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
    println!("tribridge is in both channels.\n");

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
}
