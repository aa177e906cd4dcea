//! `tribridge import-matterbridge` on matterbridge configurations written from matterbridge's
//! own documentation of its keys (its `matterbridge.toml.sample` and wiki): every key is carried
//! over to its counterpart or named with a reason, the result passes the real validator
//! (`tribridge check`), and a daemon started on an imported file relays between the servers the
//! file names.

use std::path::Path;
use std::process::Command;

use tribridge::import_matterbridge::{Imported, convert, dropped_by_key};

use crate::support::bridge::{Bridge, unique};
use crate::support::irc_client::{IrcClient, texts};
use crate::support::mattermost::{MmServer, messages};
use crate::support::servers::shared_inspircd;

/// Every account type and gateway form the importer knows, `[general]` defaults, and accounts
/// of protocols tribridge does not bridge (Slack, Discord, Telegram).
const DOCUMENTED: &str = r##"
[general]
RemoteNickFormat="[{PROTOCOL}/{BRIDGE}] <{NICK}> "
MediaDownloadSize=1000000
IgnoreFailureOnStart=true
MessageDelay=1300

[irc]
[irc.libera]
Server="irc.libera.chat:6697"
UseTLS=true
SkipTLSVerify=false
UseSASL=true
NickServNick="relaybot"
NickServPassword="sasl-secret"
Nick="relaybot"
MessageDelay=1000
MessageQueue=40
MessageLength=350
MessageSplit=true
Charset="latin1"
ColorNicks=true
RunCommands=["PRIVMSG chanserv op"]
IgnoreNicks="spammer1 spammer2"
Label="lib"
RemoteNickFormat="<{NICK}/{LABEL}> "
ShowJoinPart=true
RejoinDelay=5
PingDelay="1m"

[irc.oftc]
Server="irc.oftc.net"
UseTLS=false
SkipTLSVerify=true
Password="server-pass"
Nick="relaybot2"
NickServNick="NickServ"
NickServPassword="nickserv-secret"
Charset="iso-8859-2:1987"

[mattermost]
[mattermost.work]
Server="chat.example.org"
Team="devs"
Token="mm-token"
Login="not-used"
NoTLS=false
SkipTLSVerify=true
PrefixMessagesWithNick=true
EditSuffix=" (edited)"
NoSendJoinPart=true
RemoteNickFormat="**{NICK}** "

[mattermost.home]
Server="https://mm.example.net"
Team="family"
Login="bridge"
Password="mm-pass"

[matrix]
[matrix.mx]
Server="https://matrix.example.org"
Login="relaybot"
Password="mx-pass"
NoHomeServerSuffix=true
HTMLDisable=false
KeepQuotedReply=false
RemoteNickFormat="[{PROTOCOL}] <{NICK}> "

[slack]
[slack.corp]
Token="xoxb-not-a-real-token"
PreserveThreading=true

[discord]
[discord.game]
Token="not-a-real-token"
Server="guild"

[telegram]
[telegram.tg]
Token="123:not-a-real-token"

[api]
[api.local]
BindAddress="127.0.0.1:4242"
Token="api-token"
Buffer=500

[[gateway]]
name="dev"
enable=true

    [[gateway.inout]]
    account="irc.libera"
    channel="#dev"

    [[gateway.inout]]
    account="mattermost.work"
    channel="town-square"

    [[gateway.inout]]
    account="matrix.mx"
    channel="#dev:example.org"

    [[gateway.inout]]
    account="slack.corp"
    channel="general"

    [[gateway.in]]
    account="irc.oftc"
    channel="#dev-readonly"

    [[gateway.out]]
    account="mattermost.home"
    channel="announcements"

    [[gateway.inout]]
    account="api.local"
    channel="api"

[[gateway]]
name="games"
enable=true

    [[gateway.inout]]
    account="discord.game"
    channel="general"

    [[gateway.inout]]
    account="telegram.tg"
    channel="-100123456"

    [[gateway.inout]]
    account="irc.oftc"
    channel="#games"

[[gateway]]
name="old"
enable=false

    [[gateway.inout]]
    account="irc.libera"
    channel="#old"

    [[gateway.inout]]
    account="matrix.mx"
    channel="#old:example.org"
"##;

fn check(dir: &Path, toml: &str) -> (i32, String) {
    let path = dir.join("bridges.toml");
    std::fs::write(&path, toml).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The value at a dotted path of the result (`network.libera.tls`), if any.
fn at<'a>(table: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut parts = path.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn gateway<'a>(table: &'a toml::Table, name: &str) -> Option<&'a toml::Table> {
    table["gateway"]
        .as_array()?
        .iter()
        .filter_map(toml::Value::as_table)
        .find(|g| g["name"].as_str() == Some(name))
}

/// Every key of every account, `[general]` key, account of another protocol and gateway
/// entry of `source` is carried (with a counterpart present in the result) or dropped (named
/// in the result's comments).
fn assert_every_key_accounted_for(source: &str, imported: &Imported) {
    let result: toml::Table = imported.toml.parse().expect("the result is TOML");
    let source: toml::Table = source.parse().unwrap();
    let dropped = dropped_by_key(imported);
    for dropped in &imported.dropped {
        assert!(
            imported.toml.lines().any(|line| line.starts_with('#')
                && line.contains(&dropped.key)
                && line.contains(&dropped.reason)),
            "dropped `{}` is not named in the result",
            dropped.key
        );
    }
    for carried in &imported.carried {
        let to = carried.to.split(' ').next().unwrap();
        if let Some(gateway_path) = to.strip_prefix("gateway.") {
            let name = gateway_path.trim_end_matches(".channels");
            assert!(
                gateway(&result, name).is_some(),
                "no gateway `{name}` for {carried:?}"
            );
        } else if to.starts_with("network.") || to.starts_with("general.") {
            let counterpart_written = at(&result, to).is_some()
                // A value equal to tribridge's default is not written (e.g. tls_verify).
                || carried.to.contains(' ')
                || to.ends_with(".tls_verify")
                || to.ends_with(".relay_membership");
            assert!(
                counterpart_written,
                "no `{to}` in the result for {carried:?}\n{}",
                imported.toml
            );
        }
    }
    let named =
        |key: &str| imported.carried.iter().any(|c| c.from == key) || dropped.contains_key(key);
    for (section, value) in &source {
        let Some(accounts) = value.as_table() else {
            continue;
        };
        if section == "general" {
            for key in accounts.keys() {
                let key = format!("general.{key}");
                assert!(named(&key), "`{key}` is neither carried nor named");
            }
            continue;
        }
        for (account, keys) in accounts {
            let account_key = format!("{section}.{account}");
            if dropped.contains_key(&account_key) {
                continue;
            }
            for key in keys.as_table().unwrap().keys() {
                let key = format!("{account_key}.{key}");
                assert!(named(&key), "`{key}` is neither carried nor named");
            }
        }
    }
}

#[test]
fn the_documented_configuration_is_carried_over_and_passes_check() {
    let imported = convert(DOCUMENTED).expect("converts");
    assert_every_key_accounted_for(DOCUMENTED, &imported);
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = check(dir.path(), &imported.toml);
    assert_eq!(
        code, 0,
        "tribridge check refused the import:\n{out}\n{}",
        imported.toml
    );
    assert!(out.contains("OK (6 networks, 1 gateways)"), "{out}");

    let result: toml::Table = imported.toml.parse().unwrap();
    let value = |path: &str| {
        at(&result, path)
            .unwrap_or_else(|| panic!("no {path} in\n{}", imported.toml))
            .clone()
    };
    let text = |path: &str| value(path).as_str().unwrap().to_owned();
    // [general]
    assert_eq!(
        text("general.remote_nick_format"),
        "[{PROTOCOL}/{NETWORK}] <{NICK}> "
    );
    assert_eq!(value("general.max_file_size_mb").as_integer(), Some(1));
    // IRC with SASL: NickServNick is the SASL login.
    assert_eq!(text("network.libera.type"), "irc");
    assert_eq!(text("network.libera.server"), "irc.libera.chat:6697");
    assert_eq!(value("network.libera.tls").as_bool(), Some(true));
    assert!(at(&result, "network.libera.tls_verify").is_none());
    assert_eq!(text("network.libera.nick"), "relaybot");
    assert_eq!(text("network.libera.sasl_username"), "relaybot");
    assert_eq!(text("network.libera.sasl_password"), "sasl-secret");
    assert_eq!(
        value("network.libera.flood_interval_ms").as_integer(),
        Some(1000)
    );
    assert_eq!(text("network.libera.charset"), "latin1");
    assert_eq!(text("network.libera.remote_nick_format"), "<{NICK}/> ");
    assert_eq!(
        value("network.libera.rejoin_after_kick").as_bool(),
        Some(true)
    );
    // libera shows joins: the others' in its gateway are relayed, unless NoSendJoinPart.
    assert!(at(&result, "network.libera.relay_membership").is_none());
    assert_eq!(value("network.mx.relay_membership").as_bool(), Some(true));
    assert_eq!(value("network.oftc.relay_membership").as_bool(), Some(true));
    assert!(at(&result, "network.work.relay_membership").is_none());
    // IRC without SASL: NickServNick is the service; the default port of plain text; the
    // [general] MessageDelay as default.
    assert_eq!(text("network.oftc.server"), "irc.oftc.net:6667");
    assert_eq!(value("network.oftc.tls").as_bool(), Some(false));
    assert_eq!(text("network.oftc.server_password"), "server-pass");
    assert_eq!(text("network.oftc.nickserv_nick"), "NickServ");
    assert_eq!(text("network.oftc.nickserv_password"), "nickserv-secret");
    assert_eq!(
        value("network.oftc.flood_interval_ms").as_integer(),
        Some(1300)
    );
    // Mattermost: a token (the Login is then not used), a login and password.
    assert_eq!(text("network.work.type"), "mattermost");
    assert_eq!(text("network.work.url"), "https://chat.example.org");
    assert_eq!(text("network.work.team"), "devs");
    assert_eq!(text("network.work.token"), "mm-token");
    assert!(at(&result, "network.work.login").is_none());
    assert_eq!(text("network.work.remote_nick_format"), "**{NICK}** ");
    assert_eq!(text("network.home.url"), "https://mm.example.net");
    assert_eq!(text("network.home.login"), "bridge");
    assert_eq!(text("network.home.password"), "mm-pass");
    // Matrix: the login made a user id on the homeserver's name.
    assert_eq!(text("network.mx.homeserver"), "https://matrix.example.org");
    assert_eq!(text("network.mx.user"), "@relaybot:matrix.example.org");
    assert_eq!(text("network.mx.password"), "mx-pass");
    assert_eq!(
        text("network.mx.remote_nick_format"),
        "[{PROTOCOL}] <{NICK}> "
    );
    // The API.
    assert_eq!(text("network.local.listen"), "127.0.0.1:4242");
    assert_eq!(text("network.local.token"), "api-token");
    assert_eq!(value("network.local.buffer").as_integer(), Some(500));
    // The gateway, its directions, without Slack.
    let dev = gateway(&result, "dev").unwrap();
    let mut channels: Vec<(String, String, String)> = dev["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["network"].as_str().unwrap().to_owned(),
                c["channel"].as_str().unwrap().to_owned(),
                c.get("direction")
                    .and_then(toml::Value::as_str)
                    .unwrap_or("inout")
                    .to_owned(),
            )
        })
        .collect();
    let mut expected: Vec<(String, String, String)> = [
        ("libera", "#dev", "inout"),
        ("work", "town-square", "inout"),
        ("mx", "#dev:example.org", "inout"),
        ("oftc", "#dev-readonly", "in"),
        ("home", "announcements", "out"),
        ("local", "dev", "inout"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    // (matterbridge's `in`, `inout` and `out` lists are read by name.)
    channels.sort();
    expected.sort();
    assert_eq!(channels, expected);

    // What is not carried over, each with its reason.
    let dropped = dropped_by_key(&imported);
    for key in [
        "general.IgnoreFailureOnStart",
        "irc.libera.MessageQueue",
        "irc.libera.MessageLength",
        "irc.libera.MessageSplit",
        "irc.libera.ColorNicks",
        "irc.libera.RunCommands",
        "irc.libera.IgnoreNicks",
        "irc.libera.Label",
        "irc.libera.PingDelay",
        "irc.libera.RemoteNickFormat {LABEL}",
        "irc.oftc.SkipTLSVerify",
        "irc.oftc.Charset",
        "mattermost.work.Login",
        "mattermost.work.SkipTLSVerify",
        "mattermost.work.PrefixMessagesWithNick",
        "mattermost.work.EditSuffix",
        "matrix.mx.NoHomeServerSuffix",
        "matrix.mx.HTMLDisable",
        "matrix.mx.KeepQuotedReply",
        "slack.corp",
        "discord.game",
        "telegram.tg",
        "gateway.dev.inout[3]",
        "gateway.games",
        "gateway.old",
    ] {
        assert!(
            dropped.contains_key(key),
            "`{key}` not named; dropped: {dropped:#?}"
        );
    }
    assert!(dropped["slack.corp"].contains("slack protocol is not bridged"));
    assert!(dropped["gateway.old"].contains("disabled"));
}

#[test]
fn keys_are_read_without_regard_to_case_and_bad_input_is_an_error_not_a_panic() {
    let lower = r##"
[irc.net]
server="127.0.0.1:6667"
nick="bot"
[mattermost.mm]
server="127.0.0.1:8065"
notls=true
team="t"
token="x"
[[gateway]]
name="g"
[[gateway.inout]]
account="irc.net"
channel="#g"
[[gateway.inout]]
account="mattermost.mm"
channel="town-square"
"##;
    let imported = convert(lower).unwrap();
    assert!(imported.dropped.is_empty(), "{:#?}", imported.dropped);
    assert!(
        imported.toml.contains("url = \"http://127.0.0.1:8065\""),
        "{}",
        imported.toml
    );
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = check(dir.path(), &imported.toml);
    assert_eq!(code, 0, "{out}\n{}", imported.toml);
    assert!(convert("[irc.x\nServer=").is_err());
    assert!(convert("irc = 3\ngateway = \"x\"").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_an_imported_file_relays_between_the_servers_it_names() {
    let irc_port = shared_inspircd().port;
    let mm = MmServer::start("civi").await;
    let channel_id = mm.channel("town").await;
    let mia = mm.user("mia", &channel_id).await;
    let irc_channel = unique("#imp");
    let nick = unique("brimp");
    let mut alice = IrcClient::connect(irc_port, &unique("alice")).await;
    alice.join(&irc_channel).await;
    let host = mm.emu.base_url().trim_start_matches("http://").to_owned();
    let matterbridge = format!(
        r#"
[general]
RemoteNickFormat="<{{NICK}}> "

[irc.local]
Server="127.0.0.1:{irc_port}"
UseTLS=false
Nick="{nick}"
MessageDelay=10

[mattermost.local]
Server="{host}"
NoTLS=true
Team="{team}"
Token="{token}"

[slack.elsewhere]
Token="xoxb-unused"

[[gateway]]
name="town"
enable=true
    [[gateway.inout]]
    account="irc.local"
    channel="{irc_channel}"
    [[gateway.inout]]
    account="mattermost.local"
    channel="town"
    [[gateway.inout]]
    account="slack.elsewhere"
    channel="general"
"#,
        team = mm.team,
        token = mm.bot_token,
    );
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("matterbridge.toml");
    std::fs::write(&source, &matterbridge).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .arg("import-matterbridge")
        .arg(&source)
        .output()
        .unwrap();
    let imported = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The two `local` accounts get ids of their own.
    assert!(
        imported.contains("[network.irc-local]") && imported.contains("[network.mattermost-local]"),
        "{imported}"
    );
    assert!(imported.contains("#   slack.elsewhere: "), "{imported}");
    let (code, out) = check(dir.path(), &imported);
    assert_eq!(code, 0, "{out}\n{imported}");

    let _bridge = Bridge::start(dir.path(), &imported);
    alice.wait_join(&nick, &irc_channel).await;
    mm.wait_bot_member(&channel_id).await;
    mm.wait_websocket(1).await;
    alice.say(&irc_channel, "hello from irc");
    let posts = mia
        .wait_posts_by(&channel_id, &mm.bot_id, |posts| {
            messages(posts).iter().any(|m| m.contains("hello from irc"))
        })
        .await;
    assert_eq!(
        messages(&posts),
        vec![format!("<{}> hello from irc", alice.nick)]
    );
    mia.say(&channel_id, "hello from mattermost").await;
    let lines = alice
        .texts_until(&irc_channel, "hello from mattermost")
        .await;
    assert_eq!(
        texts(&lines),
        vec!["<mia> hello from mattermost".to_owned()]
    );
}
