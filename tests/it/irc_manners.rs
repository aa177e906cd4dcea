//! How the bridge behaves on IRC, through the real daemon and a real `InspIRCd`: it keeps
//! running on SIGHUP, marks itself a bot, names its admin, stops relaying into a channel it was
//! kicked from (and only that one), and shows long texts as a few lines and a link.

use crate::support::bridge::{Bridge, unique};
use crate::support::config::irc_network;
use crate::support::irc_client::{IrcClient, texts};
use crate::support::servers::shared_inspircd;

/// A file of `networks` and one gateway `g` (`extra` is added to the gateway's table) linking
/// every `(network, channel)`.
fn config(networks: &[String], channels: &[(&str, &str)], extra: &str) -> String {
    let entries: Vec<String> = channels
        .iter()
        .map(|(network, channel)| {
            format!("  {{ network = \"{network}\", channel = \"{channel}\" }},")
        })
        .collect();
    format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}\
         [[gateway]]\nname = \"g\"\n{extra}channels = [\n{}\n]\n",
        networks.concat(),
        entries.join("\n")
    )
}

/// alice in `#a` on network one, bob in `#b` on network two, one gateway between them.
struct Pair {
    alice: IrcClient,
    bob: IrcClient,
    channel_a: String,
    channel_b: String,
    nick_one: String,
    nick_two: String,
    bridge: Bridge,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// `tweak` may edit each `[network.*]` block; `extra` goes into the gateway's table.
    async fn start(prefix: &str, tweak: impl Fn(String) -> String, extra: &str) -> Pair {
        let server = shared_inspircd();
        let (channel_a, channel_b) = (unique(&format!("#{prefix}")), unique(&format!("#{prefix}")));
        let (nick_one, nick_two) = (unique("brone"), unique("brtwo"));
        let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
        let mut bob = IrcClient::connect(server.port, &unique("bob")).await;
        alice.join(&channel_a).await;
        bob.join(&channel_b).await;
        let dir = tempfile::tempdir().unwrap();
        let bridge = Bridge::start(
            dir.path(),
            &config(
                &[
                    tweak(irc_network("one", server.port, &nick_one)),
                    tweak(irc_network("two", server.port, &nick_two)),
                ],
                &[("one", &channel_a), ("two", &channel_b)],
                extra,
            ),
        );
        alice.wait_join(&nick_one, &channel_a).await;
        bob.wait_join(&nick_two, &channel_b).await;
        Pair {
            alice,
            bob,
            channel_a,
            channel_b,
            nick_one,
            nick_two,
            bridge,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_leaves_the_daemon_running_and_relaying() {
    let mut pair = Pair::start("hup", |n| n, "").await;
    pair.bridge.hangup();
    pair.bridge
        .wait_for_log("SIGHUP received: reloading the configuration is not supported yet")
        .await;
    // Still running, still relaying.
    pair.alice.say(&pair.channel_a, "after the hangup");
    let seen = pair
        .bob
        .texts_until(&pair.channel_b, "after the hangup")
        .await;
    assert_eq!(
        texts(&seen),
        vec![format!("<{}> after the hangup", pair.alice.nick)]
    );
    assert!(pair.bridge.is_running());
    assert_eq!(pair.bridge.terminate(), Some(0));
}
