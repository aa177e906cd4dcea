//! The connector compliance suite (vector's `assert_source_compliance` idea): one set of
//! scenarios, written once, run against every connector on its real server. A network type
//! proves itself by implementing [`Side`] (tests/it/support/compliance.rs) and adding one line
//! here: `compliance!(name, SideType);`.
//!
//! Each run bridges the connector under test with a reference peer, a Mattermost emulator of its
//! own (every kind natively, history kept), in one gateway, and drives people on both sides:
//! 1. a burst of texts arrives once and in order, both ways;
//! 2. nothing echoes: what the bridge delivered is never relayed back;
//! 3. an edit, 4. a delete, 5. a reply, 6. a reaction: shown natively where the destination
//!    declares it can ([`Shows`]), else as the documented fallback; and sent from the side under
//!    test where it has the kind;
//! 7. after a SIGKILL and a start, nothing relayed is relayed again, and what was said while the
//!    daemon was down arrives once where the network keeps it;
//! 8. a connection dropped by the server's side is resumed and messages flow again.
//!
//! One daemon per connector (started twice, for 7), one server per network kind (the shared
//! `InspIRCd` and Synapse). Every scenario ends with a marker said after its event: deliveries to
//! a channel are in order, so what arrives before the marker is everything the event caused.

use crate::support::bridge::Bridge;
use crate::support::compliance::{ApiSide, IrcSide, MatrixSide, MattermostSide, Seen, Shows, Side};

/// One test per connector: `compliance!(test_name, SideType);`.
macro_rules! compliance {
    ($name:ident, $side:ty) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            run::<$side>(stringify!($name)).await;
        }
    };
}

compliance!(irc, IrcSide);
compliance!(matrix, MatrixSide);
compliance!(mattermost, MattermostSide);
compliance!(api, ApiSide);

/// The reference peer every connector is bridged with.
type Peer = MattermostSide;

/// What the person on `from` is shown as elsewhere, saying `text`.
fn relayed(from: &impl Side, text: &str) -> String {
    format!("<{}> {text}", from.person())
}

fn texts(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(|s| s.text.clone()).collect()
}

fn config(under_test: &impl Side, peer: &impl Side) -> String {
    format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}{}\
         [[gateway]]\nname = \"compliance\"\nedit_policy = \"corrected\"\nchannels = [\n  \
         {{ network = \"{}\", channel = \"{}\" }},\n  {{ network = \"{}\", channel = \"{}\" }},\n]\n",
        under_test.network_block(),
        peer.network_block(),
        under_test.network(),
        under_test.channel(),
        peer.network(),
        peer.channel(),
    )
}

/// The daemon's folder, kept and named when a scenario fails, for its logs (`bridge-N.log`).
struct KeptOnFailure(Option<tempfile::TempDir>);

impl Drop for KeptOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("the daemon's folder is kept: {}", dir.keep().display());
        }
    }
}

/// Say which scenario runs (a failure's captured output ends with the one that failed).
fn step(connector: &str, what: &str) {
    eprintln!("compliance {connector}: {what}");
}

async fn run<S: Side>(name: &str) {
    let mut side = S::create(name).await;
    let mut peer = Peer::create("reference").await;
    let dir = KeptOnFailure(Some(tempfile::tempdir().expect("tempdir")));
    let folder = dir.0.as_ref().expect("the folder").path();
    let mut bridge = Bridge::start(folder, &config(&side, &peer));
    side.wait_bridge_present().await;
    peer.wait_bridge_present().await;

    step(name, "1. texts arrive once and in order");
    order(&mut peer, &mut side, "p2s").await;
    order(&mut side, &mut peer, "s2p").await;
    step(name, "2. nothing echoes");
    no_echo(&mut side, &mut peer).await;
    no_echo(&mut peer, &mut side).await;
    step(name, "3. edits");
    edit(&mut peer, &mut side, "p2s").await;
    edit(&mut side, &mut peer, "s2p").await;
    step(name, "4. deletes");
    delete(&mut peer, &mut side, "p2s").await;
    delete(&mut side, &mut peer, "s2p").await;
    step(name, "5. replies");
    reply(&mut peer, &mut side, "p2s").await;
    reply(&mut side, &mut peer, "s2p").await;
    step(name, "6. reactions");
    reaction(&mut peer, &mut side, "p2s").await;
    reaction(&mut side, &mut peer, "s2p").await;
    step(name, "7. a SIGKILL and a start");
    restart(&mut bridge, &mut side, &mut peer).await;
    // After the restart, on purpose: a Matrix session from a fresh password login follows the
    // login answer's `well_known` to Synapse's public URL, past the proxy the drop needs
    // (matrix-sdk's `respect_login_well_known`, on in the daemon); a restored session keeps the
    // configured `homeserver`.
    step(name, "8. a dropped connection");
    dropped_connection(&mut side, &mut peer).await;
    assert_eq!(bridge.terminate(), Some(0), "a clean exit on SIGTERM");
    step(name, "all scenarios passed");
}

/// Scenario 1: a burst of 20 said on `from` is shown on `to` once each, in order, and nothing else.
async fn order(from: &mut impl Side, to: &mut impl Side, tag: &str) {
    let burst: Vec<String> = (0..20).map(|n| format!("{tag} order {n:02}")).collect();
    from.say_all(&burst).await;
    let seen = to.texts_until(&format!("{tag} order 19")).await;
    let expected: Vec<String> = burst.iter().map(|text| relayed(from, text)).collect();
    assert_eq!(texts(&seen), expected, "{tag}: the burst, once, in order");
}

/// Scenario 2: after the bursts both ways, a line said on `from` is the next and only thing `to`
/// shows: none of the lines the bridge delivered into `from` came back.
async fn no_echo(from: &mut impl Side, to: &mut impl Side) {
    let marker = format!("no echo after {}", from.network());
    from.say(&marker).await;
    let seen = to.texts_until(&marker).await;
    assert_eq!(
        texts(&seen),
        vec![relayed(from, &marker)],
        "what the bridge delivered into {} was relayed back",
        from.network()
    );
}

/// Say `text` on `from`; returns its id there and the id of the copy on `to`.
async fn say_and_see(from: &mut impl Side, to: &mut impl Side, text: &str) -> (String, String) {
    let id = from.say(text).await;
    let seen = to.texts_until(text).await;
    assert_eq!(texts(&seen), vec![relayed(from, text)]);
    (id, seen[0].id.clone())
}

/// Say a marker on `from` and return what `to` shows up to it, the marker's copy excluded.
async fn until_marker(from: &mut impl Side, to: &mut impl Side, marker: &str) -> Vec<String> {
    from.say(marker).await;
    let mut seen = texts(&to.texts_until(marker).await);
    assert_eq!(seen.pop(), Some(relayed(from, marker)));
    seen
}

/// Whether `from` can make the kind `has` names at all (a person cannot edit on IRC).
fn can(from: &impl Side, has: fn(&Shows) -> bool, what: &str) -> bool {
    let able = has(&from.shows());
    if !able {
        eprintln!("  ({} has no {what} to send)", from.network());
    }
    able
}

/// Scenario 3: an edit on `from` is shown on `to` in place, or as a corrected line `* text`.
async fn edit(from: &mut impl Side, to: &mut impl Side, tag: &str) {
    if !can(from, |s| s.native.edits, "edits") {
        return;
    }
    let (id, copy) = say_and_see(from, to, &format!("{tag} edit tpyo")).await;
    let corrected = format!("{tag} edit typo");
    from.edit(&id, &corrected).await;
    let before_marker = until_marker(from, to, &format!("{tag} after the edit")).await;
    if to.shows().native.edits {
        to.wait_edited(&copy, &relayed(from, &corrected)).await;
        assert_eq!(
            before_marker,
            Vec::<String>::new(),
            "an edit is not a new line"
        );
    } else {
        assert_eq!(
            before_marker,
            vec![relayed(from, &format!("* {corrected}"))],
            "the edit as a corrected line"
        );
    }
}

/// Scenario 4: a delete on `from` takes the copy away on `to`, or shows nothing where it cannot.
async fn delete(from: &mut impl Side, to: &mut impl Side, tag: &str) {
    if !can(from, |s| s.native.deletes, "deletes") {
        return;
    }
    let (id, copy) = say_and_see(from, to, &format!("{tag} soon deleted")).await;
    from.delete(&id).await;
    let before_marker = until_marker(from, to, &format!("{tag} after the delete")).await;
    if to.shows().native.deletes {
        to.wait_deleted(&copy).await;
    }
    assert_eq!(
        before_marker,
        Vec::<String>::new(),
        "a delete is not a line"
    );
}

/// Scenario 5: a reply on `from` is shown on `to` as a reply to the copy, or (where replies do
/// not exist) as its text addressed to the one it answers, `nick: text` (the question is among
/// the last lines, so it is not quoted).
async fn reply(from: &mut impl Side, to: &mut impl Side, tag: &str) {
    if !can(from, |s| s.native.threads, "replies") {
        return;
    }
    let (id, copy) = say_and_see(from, to, &format!("{tag} question")).await;
    let answer = format!("{tag} the answer");
    from.reply(&id, &answer).await;
    let seen = to.texts_until(&answer).await;
    let shown = if to.shows().native.threads {
        relayed(from, &answer)
    } else {
        relayed(from, &format!("{}: {answer}", from.person()))
    };
    assert_eq!(texts(&seen), vec![shown]);
    if to.shows().native.threads {
        assert_eq!(seen[0].reply_to.as_deref(), Some(copy.as_str()), "{seen:?}");
    }
}

/// Scenario 6: a reaction on `from` is shown on `to` on the copy, or not at all where it cannot be;
/// it does not come back onto the original.
async fn reaction(from: &mut impl Side, to: &mut impl Side, tag: &str) {
    if !can(from, |s| s.native.reactions, "reactions") {
        return;
    }
    let (id, copy) = say_and_see(from, to, &format!("{tag} like this")).await;
    from.react(&id, "👍").await;
    let before_marker = until_marker(from, to, &format!("{tag} after the reaction")).await;
    if to.shows().native.reactions {
        to.wait_reaction(&copy, "👍").await;
    }
    assert_eq!(
        before_marker,
        Vec::<String>::new(),
        "a reaction is not a line"
    );
    // The bridge's own reaction on the copy is not relayed back onto the original: once a line
    // said after it has crossed back, the original carries the person's reaction only.
    let back = until_marker(to, from, &format!("{tag} reaction echo check")).await;
    assert_eq!(back, Vec::<String>::new());
    assert_eq!(
        from.reactions_by_bridge(&id).await,
        Vec::<String>::new(),
        "the reaction came back onto the original"
    );
}

/// Scenario 7: once everything is acknowledged, SIGKILL; while the daemon is down people speak
/// where their network keeps it; after the start each side shows exactly what it had not been
/// shown.
async fn restart(bridge: &mut Bridge, side: &mut impl Side, peer: &mut impl Side) {
    bridge
        .wait_outbox_drained(side.network(), side.channel())
        .await;
    bridge
        .wait_outbox_drained(peer.network(), peer.channel())
        .await;
    bridge.kill9();
    side.wait_bridge_gone().await;
    peer.wait_bridge_gone().await;

    let while_down = |shows: Shows, who: &str| -> Vec<String> {
        let count = if shows.replays_history { 5 } else { 0 };
        (0..count)
            .map(|n| format!("{who} while down {n}"))
            .collect()
    };
    let side_down = while_down(side.shows(), "s");
    let peer_down = while_down(peer.shows(), "p");
    side.say_all(&side_down).await;
    peer.say_all(&peer_down).await;

    bridge.restart();
    side.wait_bridge_present().await;
    peer.wait_bridge_present().await;
    side.say("s back").await;
    peer.say("p back").await;

    let mut expected_on_peer: Vec<String> = side_down.iter().map(|t| relayed(side, t)).collect();
    expected_on_peer.push(relayed(side, "s back"));
    let seen = peer.texts_until("s back").await;
    assert_eq!(
        texts(&seen),
        expected_on_peer,
        "on the peer after the restart"
    );
    let mut expected_on_side: Vec<String> = peer_down.iter().map(|t| relayed(peer, t)).collect();
    expected_on_side.push(relayed(peer, "p back"));
    let seen = side.texts_until("p back").await;
    assert_eq!(
        texts(&seen),
        expected_on_side,
        "on the side under test after the restart"
    );
}

/// Scenario 8: the server drops the connection of the side under test; what the peer says meanwhile
/// and what is said on both sides once it is back is shown once each.
async fn dropped_connection(side: &mut impl Side, peer: &mut impl Side) {
    side.drop_bridge_connection().await;
    peer.say("p during the drop").await;
    side.wait_bridge_present().await;
    side.say("s after the drop").await;
    peer.say("p after the drop").await;
    let seen = peer.texts_until("s after the drop").await;
    assert_eq!(texts(&seen), vec![relayed(side, "s after the drop")]);
    let seen = side.texts_until("p after the drop").await;
    assert_eq!(
        texts(&seen),
        vec![
            relayed(peer, "p during the drop"),
            relayed(peer, "p after the drop")
        ]
    );
}
