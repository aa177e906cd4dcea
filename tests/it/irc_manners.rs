//! How the bridge behaves on IRC, through the real daemon and a real `InspIRCd`: it keeps
//! running and relaying on SIGHUP (a reload of an unchanged file), marks itself a bot, names
//! its admin, stops relaying into a channel it was kicked from (and only that one), and shows
//! long texts as a few lines and a link.

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
        .wait_for_log_line(&["Configuration reloaded.", "networks added []"])
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

/// A 40-line paste on Mattermost arrives on IRC as its first three lines and a fourth with a
/// link; the link (signed, expiring, like a file's) serves all 40 lines as UTF-8 plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forty_line_paste_reaches_irc_as_three_lines_and_a_link_to_all_forty() {
    use crate::support::mattermost::MmServer;
    let server = shared_inspircd();
    let irc_channel = unique("#paste");
    let nick = unique("brpaste");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&irc_channel).await;
    let mm = MmServer::start("civi").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let media_port = crate::support::servers::free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\
         media_listen = \"127.0.0.1:{media_port}\"\n\
         media_public_url = \"http://127.0.0.1:{media_port}/media\"\n\n{}{}\
         [[gateway]]\nname = \"g\"\nchannels = [\n  {{ network = \"irc\", channel = \"{irc_channel}\" }},\n\
           {{ network = \"mm\", channel = \"town\" }},\n]\n",
        irc_network("irc", server.port, &nick),
        mm.network("mm", ""),
    );
    let _bridge = Bridge::start(dir.path(), &file);
    alice.wait_join(&nick, &irc_channel).await;
    mm.wait_member(&channel_id, &mm.bot_id).await;
    mm.wait_websocket(1).await;

    let paste: Vec<String> = (1..=40).map(|n| format!("paste line {n:02} é")).collect();
    mia.say(&channel_id, &paste.join("\n")).await;
    let seen = texts(&alice.texts_until(&irc_channel, "more lines").await);
    let link_prefix = format!("<mia> … (37 more lines: http://127.0.0.1:{media_port}/media/");
    assert_eq!(seen.len(), 4, "{seen:#?}");
    assert_eq!(
        seen[..3],
        [
            "<mia> paste line 01 é",
            "<mia> paste line 02 é",
            "<mia> paste line 03 é"
        ]
    );
    assert!(seen[3].starts_with(&link_prefix), "{}", seen[3]);
    let link = seen[3]
        .trim_start_matches("<mia> … (37 more lines: ")
        .trim_end_matches(')');
    assert!(link.ends_with("/message.txt"), "{link}");
    let response = reqwest::get(link).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(response.text().await.unwrap(), paste.join("\n"));
    // Signed like a file's link: a changed signature is refused.
    let mut segments: Vec<&str> = link.rsplitn(3, '/').collect();
    let forged_signature = "0".repeat(segments[1].len());
    segments[1] = &forged_signature;
    segments.reverse();
    assert_eq!(
        reqwest::get(segments.join("/")).await.unwrap().status(),
        403
    );
    // Nothing else reached the channel: the paste held it for four lines, not forty.
    mia.say(&channel_id, "after the paste").await;
    let after = texts(&alice.texts_until(&irc_channel, "after the paste").await);
    assert_eq!(after, vec!["<mia> after the paste"]);
}

/// `remote_nick_format` on a network and on a gateway: the most specific wins (the gateway's,
/// then the destination network's, then `[general]`'s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_nick_format_per_network_and_per_gateway_most_specific_wins() {
    let server = shared_inspircd();
    let [a, b, c, d] = ["#fa", "#fb", "#fc", "#fd"].map(unique);
    let (nick_one, nick_two) = (unique("brone"), unique("brtwo"));
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    let mut bob = IrcClient::connect(server.port, &unique("bob")).await;
    alice.join(&a).await;
    alice.join(&c).await;
    bob.join(&b).await;
    bob.join(&d).await;
    let dir = tempfile::tempdir().unwrap();
    let file = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}{}\
         [[gateway]]\nname = \"plain\"\nchannels = [\n  {{ network = \"one\", channel = \"{a}\" }},\n\
           {{ network = \"two\", channel = \"{b}\" }},\n]\n\
         [[gateway]]\nname = \"own\"\nremote_nick_format = \"({{NICK}}/{{GATEWAY}}) \"\nchannels = [\n\
           {{ network = \"one\", channel = \"{c}\" }},\n  {{ network = \"two\", channel = \"{d}\" }},\n]\n",
        irc_network("one", server.port, &nick_one),
        irc_network("two", server.port, &nick_two)
            + "remote_nick_format = \"[{NICK}@{NETWORK}] \"\n\n",
    );
    let _bridge = Bridge::start(dir.path(), &file);
    alice.wait_join(&nick_one, &a).await;
    alice.wait_member(&nick_one, &c).await;
    bob.wait_join(&nick_two, &b).await;
    bob.wait_member(&nick_two, &d).await;
    let (an, bn) = (alice.nick.clone(), bob.nick.clone());

    // To network two: its own format.
    alice.say(&a, "to two");
    assert_eq!(
        texts(&bob.texts_until(&b, "to two").await),
        vec![format!("[{an}@one] to two")]
    );
    // To network one, which has none: the [general] format.
    bob.say(&b, "to one");
    assert_eq!(
        texts(&alice.texts_until(&a, "to one").await),
        vec![format!("<{bn}> to one")]
    );
    // Through the gateway with its own format: the gateway's, on both networks.
    alice.say(&c, "through own");
    assert_eq!(
        texts(&bob.texts_until(&d, "through own").await),
        vec![format!("({an}/own) through own")]
    );
    bob.say(&d, "back through own");
    assert_eq!(
        texts(&alice.texts_until(&c, "back through own").await),
        vec![format!("({bn}/own) back through own")]
    );
}

/// WHOIS of the bridge, as a person on IRC would ask: (its real name, whether the server calls
/// it a bot).
async fn whois(client: &mut IrcClient, nick: &str) -> (String, bool) {
    use crate::support::irc_client::DEADLINE;
    client.raw(&format!("WHOIS {nick}"));
    let mut realname = String::new();
    let mut bot = false;
    loop {
        let line = client
            .wait_for(
                |l| matches!(l.command.as_str(), "311" | "335" | "318"),
                DEADLINE,
            )
            .await
            .expect("a WHOIS reply");
        match line.command.as_str() {
            "311" => realname = line.params.last().cloned().unwrap_or_default(),
            "335" => bot = true,
            _ => return (realname, bot),
        }
    }
}

/// The server advertises a bot mode (`BOT=B`, `InspIRCd`'s botmode module): the bridge sets it
/// on itself; its real name names the admin given by `contact`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_marks_itself_a_bot_and_its_realname_names_its_admin() {
    let mut pair = Pair::start(
        "bot",
        |network| network + "contact = \"ops@example.org\"\n",
        "",
    )
    .await;
    pair.bridge
        .wait_for_log("The server has a bot mode; setting it.")
        .await;
    // The MODE is sent before the joins the test waited for, so WHOIS sees it.
    let nick = pair.nick_one.clone();
    let (realname, bot) = whois(&mut pair.alice, &nick).await;
    assert!(bot, "WHOIS does not show {nick} as a bot");
    assert_eq!(realname, "tribridge relay bot (admin: ops@example.org)");
    // A person is not a bot.
    let bob = pair.bob.nick.clone();
    assert!(
        !whois(&mut pair.alice, &bob).await.1,
        "{bob} shown as a bot"
    );
}

/// Kicked without `rejoin_after_kick`, the bridge stays out of that channel and stops relaying
/// into it (each delivery counted as failed, kept in the store), while the gateway's other
/// channels keep flowing; with it, the bridge rejoins and relays again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_stops_relaying_into_that_channel_only_and_rejoins_only_when_asked() {
    let server = shared_inspircd();
    let [a, b, c] = ["#ka", "#kb", "#kc"].map(unique);
    let (nick_one, nick_two) = (unique("brone"), unique("brtwo"));
    // The first in a channel is its operator: alice in #a, bob in #b and #c.
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    let mut bob = IrcClient::connect(server.port, &unique("bob")).await;
    alice.join(&a).await;
    bob.join(&b).await;
    bob.join(&c).await;
    let dir = tempfile::tempdir().unwrap();
    let bridge = Bridge::start(
        dir.path(),
        &config(
            &[
                irc_network("one", server.port, &nick_one) + "rejoin_after_kick = true\n\n",
                irc_network("two", server.port, &nick_two),
            ],
            &[("one", &a), ("two", &b), ("two", &c)],
            "",
        ),
    );
    alice.wait_join(&nick_one, &a).await;
    bob.wait_join(&nick_two, &b).await;
    bob.wait_member(&nick_two, &c).await;
    let (an, bn) = (alice.nick.clone(), bob.nick.clone());

    // Network two has no rejoin_after_kick: kicked from #b, it stays out.
    bob.raw(&format!("KICK {b} {nick_two} :too chatty"));
    bridge
        .wait_for_log_line(&["Kicked from channel; not rejoining", &bn, "too chatty"])
        .await;
    alice.say(&a, "after the kick");
    // #c, on the same network and gateway, still gets it ...
    assert_eq!(
        texts(&bob.texts_until(&c, "after the kick").await),
        vec![format!("<{an}> after the kick")]
    );
    // ... #b does not, and the delivery is refused and counted, not lost silently.
    bridge
        .wait_for_log_line(&[
            "Delivery refused by the destination",
            &format!("kicked from {b} by {bn} (too chatty)"),
        ])
        .await;
    let seen = bob.drain();
    assert!(
        !seen.iter().any(|line| line
            .params
            .first()
            .is_some_and(|target| target.eq_ignore_ascii_case(&b))
            && (line.command == "PRIVMSG" || line.source_nick.eq_ignore_ascii_case(&nick_two))),
        "the bridge came back to {b}: {seen:#?}"
    );

    // Network one has rejoin_after_kick: kicked from #a, it comes back and relays again.
    alice.raw(&format!("KICK {a} {nick_one} :out"));
    alice.wait_join(&nick_one, &a).await;
    bridge
        .wait_for_log_line(&["Kicked from channel; rejoining (rejoin_after_kick)", "out"])
        .await;
    bob.say(&c, "back in a");
    assert_eq!(
        texts(&alice.texts_until(&a, "back in a").await),
        vec![format!("<{bn}> back in a")]
    );
}
