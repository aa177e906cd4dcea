//! Security defaults through the real daemon: no secret of any of the three networks ever shows
//! in its logs, even with every crate logging at debug level. (The warning about a
//! configuration file others can read is in `config_check.rs`; signed, expiring media links are
//! tested in `matrix_relay.rs` and `connector::matrix::media`.)

use std::time::Duration;

use serde_json::Value;

use crate::support::bridge::{Bridge, unique};
use crate::support::irc_client::IrcClient;
use crate::support::matrix_client::{MatrixUser, register};
use crate::support::mattermost::{MmServer, messages};
use crate::support::servers::{shared_inspircd, shared_synapse};

/// Every string value stored under a key named `key`, anywhere in `value`.
fn strings_under(value: &Value, key: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (name, inner) in map {
                if name == key
                    && let Some(text) = inner.as_str()
                {
                    found.push(text.to_owned());
                }
                strings_under(inner, key, found);
            }
        }
        Value::Array(items) => {
            for item in items {
                strings_under(item, key, found);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_any_network_reaches_the_logs_even_at_debug_level() {
    let synapse = shared_synapse();
    let url = synapse.url();
    let bot = unique("sbot");
    let matrix_password = format!("mx-secret-{}", unique("p"));
    register(&url, &bot, &matrix_password).await;
    let mut matrix = MatrixUser::new(&url, &unique("sam")).await;
    let alias_name = unique("sroom");
    let room = matrix.create_room(&alias_name).await;
    let server = shared_inspircd();
    let irc_channel = unique("#sec");
    let nick = unique("brsec");
    let irc_password = format!("irc-secret-{}", unique("p"));
    let nickserv_password = format!("ns-secret-{}", unique("p"));
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&irc_channel).await;
    let mm = MmServer::start("sec").await;
    let chan = mm.channel("sec").await;
    let mia = mm.user("mia", &chan).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n\
         [network.irc]\ntype = \"irc\"\nserver = \"127.0.0.1:{}\"\ntls = false\nnick = \"{nick}\"\n\
         password = \"{irc_password}\"\nnickserv_password = \"{nickserv_password}\"\n\
         flood_burst = 1000\nflood_interval_ms = 1\n\n\
         [network.mx]\ntype = \"matrix\"\nhomeserver = \"{url}\"\nuser = \"@{bot}:localhost\"\n\
         password = \"{matrix_password}\"\n\n{}\n\
         [[gateway]]\nname = \"g\"\nchannels = [\n\
         {{ network = \"irc\", channel = \"{irc_channel}\" }},\n\
         {{ network = \"mx\", channel = \"#{alias_name}:localhost\" }},\n\
         {{ network = \"mm\", channel = \"sec\" }},\n]\n",
        server.port,
        mm.network("mm", "")
    );
    let bridge = Bridge::start_with_env(dir.path(), &config, &[("RUST_LOG", "debug")]);
    alice.wait_join(&nick, &irc_channel).await;
    mm.wait_bot_member(&chan).await;
    let bot_id = format!("@{bot}:localhost");
    matrix
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member" && e.content["membership"] == "join" && e.sender == bot_id
            })
        })
        .await;
    // Traffic every way, so that every sending and receiving path has logged what it logs.
    alice.say(&irc_channel, "from irc");
    matrix.say(&room, "from matrix").await;
    mia.say(&chan, "from mattermost").await;
    mm.admin
        .wait_posts_by(&chan, &mm.bot_id, |posts| {
            let texts = messages(posts);
            texts.iter().any(|t| t.contains("from irc"))
                && texts.iter().any(|t| t.contains("from matrix"))
        })
        .await;
    alice
        .texts_until_all(&irc_channel, &["from matrix", "from mattermost"])
        .await;

    let session: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("state/matrix-mx/session.json"))
            .expect("the Matrix session is stored"),
    )
    .expect("session JSON");
    let mut matrix_tokens = Vec::new();
    strings_under(&session, "access_token", &mut matrix_tokens);
    assert!(!matrix_tokens.is_empty(), "no access token in {session}");
    let logs = bridge.logs();
    assert!(logs.contains("DEBUG"), "debug logging was not on");
    let secrets = [
        ("IRC server password", irc_password),
        ("IRC NickServ password", nickserv_password),
        ("Matrix password", matrix_password),
        ("Mattermost token", mm.bot_token.clone()),
    ]
    .into_iter()
    .chain(
        matrix_tokens
            .into_iter()
            .map(|token| ("Matrix access token", token)),
    );
    for (what, secret) in secrets {
        assert!(
            !logs.contains(&secret),
            "the {what} is in the logs:\n{}",
            logs.lines()
                .filter(|line| line.contains(&secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
