//! The history's policy through the real daemon: `retention_days`, `legal_hold` and what
//! happens to an edit or a reply of a forgotten message, with the daemon's clock moved forward
//! through its test-only seam (`TRIBRIDGE_TEST_CLOCK_SKEW_SECONDS`) instead of waiting days.

use std::time::{Duration, Instant};

use crate::support::bridge::{Bridge, open_state, state_execute, state_query, unique};
use crate::support::config::irc_network;
use crate::support::irc_client::{IrcClient, texts};
use crate::support::mattermost::MmServer;
use crate::support::servers::shared_inspircd;

/// Rows of `sql` (a `SELECT COUNT(*)`) in the daemon's store, read as an operator would (on
/// either backend).
fn count(dir: &std::path::Path, sql: &str) -> i64 {
    state_query(dir, sql, &[])[0][0]
}

fn stored_files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir.join("state/files"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.len() == 64)
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn retention_forgets_old_messages_and_files_but_keeps_held_and_pending_ones() {
    let server = shared_inspircd();
    let (brief, held, stuck) = (unique("#brief"), unique("#held"), unique("#stuck"));
    let nick = unique("brhist");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    for channel in [&brief, &held, &stuck] {
        alice.join(channel).await;
    }
    let mm = MmServer::start("hist").await;
    let brief_id = mm.channel("brief").await;
    let held_id = mm.channel("held").await;
    let mia = mm.user("mia", &brief_id).await;
    // A Mattermost network nobody answers on: deliveries to it stay pending.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}{}{}\
         [[gateway]]\nname = \"brief\"\narchive = true\nretention_days = 1\nchannels = [\n\
           {{ network = \"irc\", channel = \"{brief}\" }},\n  {{ network = \"mm\", channel = \"brief\" }},\n]\n\n\
         [[gateway]]\nname = \"held\"\nretention_days = 1\nlegal_hold = true\nchannels = [\n\
           {{ network = \"irc\", channel = \"{held}\" }},\n  {{ network = \"mm\", channel = \"held\" }},\n]\n\n\
         [[gateway]]\nname = \"stuck\"\nretention_days = 1\nchannels = [\n\
           {{ network = \"irc\", channel = \"{stuck}\" }},\n  {{ network = \"mmdead\", channel = \"gone\" }},\n]\n",
        irc_network("irc", server.port, &nick),
        mm.network("mm", ""),
        mm.network_at("mmdead", &dead_url, ""),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    alice.wait_join(&nick, &brief).await;
    mm.wait_member(&brief_id, &mm.bot_id).await;
    mm.wait_member(&held_id, &mm.bot_id).await;
    mm.wait_websocket(1).await;

    // Day 0: a post with a file and one to be edited later in `brief`, a line in `held`, and a
    // line in `stuck` that cannot be delivered.
    let file = mia.upload(&brief_id, "minutes.txt", b"the minutes").await;
    mia.say_with_files(&brief_id, "old minutes", std::slice::from_ref(&file))
        .await;
    let old = mia.say(&brief_id, "old words").await;
    alice.say(&held, "held words");
    alice.say(&stuck, "stuck words");
    let seen = alice.texts_until(&brief, "old words").await;
    assert_eq!(texts(&seen).last().unwrap(), "<mia> old words");
    bridge.wait_outbox_drained("mm", "held").await;
    let deadline = Instant::now() + Duration::from_mins(1);
    while count(
        dir.path(),
        "SELECT COUNT(*) FROM outbox WHERE network = 'mmdead' AND state = 'pending'",
    ) < 1
    {
        assert!(Instant::now() < deadline, "the stuck line was never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored_files(dir.path()).len(), 1, "the file was stored");
    // The store's index of which message carries which file (kept by triggers) has it.
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM message_files"), 1);
    assert_eq!(
        count(
            dir.path(),
            "SELECT COUNT(*) FROM messages WHERE origin_channel = 'brief'"
        ),
        2
    );
    let _ = bridge.terminate();

    // Two days later: `brief` is forgotten, `held` is under legal hold, `stuck` still waits.
    bridge.set_env(
        "TRIBRIDGE_TEST_CLOCK_SKEW_SECONDS",
        &(2 * 86_400).to_string(),
    );
    bridge.restart();
    bridge
        .wait_for_log("History retention pass done: messages past retention_days forgotten.")
        .await;
    bridge
        .wait_for_log_line(&["files=1", "kept_pending=1"])
        .await;
    let d = dir.path();
    assert_eq!(
        count(
            d,
            "SELECT COUNT(*) FROM messages WHERE origin_channel = 'brief'"
        ),
        0
    );
    let brief_sql = format!("SELECT COUNT(*) FROM messages WHERE origin_channel = '{brief}'");
    assert_eq!(count(d, &brief_sql), 0);
    assert_eq!(
        count(
            d,
            "SELECT COUNT(*) FROM mappings WHERE channel = 'brief' OR message_id NOT IN \
             (SELECT id FROM messages)"
        ),
        0
    );
    assert_eq!(
        count(
            d,
            "SELECT COUNT(*) FROM deliveries WHERE message_id NOT IN (SELECT id FROM messages)"
        ),
        0
    );
    assert!(stored_files(d).is_empty(), "{:?}", stored_files(d));
    assert_eq!(count(d, "SELECT COUNT(*) FROM message_files"), 0);
    let held_sql = format!("SELECT COUNT(*) FROM messages WHERE origin_channel = '{held}'");
    assert_eq!(count(d, &held_sql), 1, "legal hold keeps the held gateway");
    let stuck_sql = format!("SELECT COUNT(*) FROM messages WHERE origin_channel = '{stuck}'");
    assert_eq!(
        count(d, &stuck_sql),
        1,
        "a pending delivery keeps its message"
    );
    assert_eq!(
        count(d, "SELECT COUNT(*) FROM outbox WHERE network = 'mmdead'"),
        1
    );
    let store = open_state(d);
    assert_eq!(store.integrity_problems().unwrap(), Vec::<String>::new());
    drop(store);
    // The archived gateway's chain still verifies: the forgotten messages left tombstones.
    let (code, said) = export(d, &["--gateway", "brief", "--verify"]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("the chain of 2 records (2 tombstones) verifies"),
        "{said}"
    );

    // An edit of a forgotten message is dropped (and counted); a reply to it is relayed as a
    // plain message.
    alice.drain();
    mm.wait_websocket(1).await;
    mia.edit(&old, "old words, edited").await;
    mia.reply(&brief_id, &old, "answer to the old words").await;
    mia.say(&brief_id, "MARK-after").await;
    let seen = alice.texts_until(&brief, "MARK-after").await;
    assert_eq!(
        texts(&seen),
        vec![
            "<mia> answer to the old words".to_owned(),
            "<mia> MARK-after".to_owned()
        ]
    );
    bridge
        .wait_for_log("Edit, delete or reaction of a message never bridged or already forgotten")
        .await;
    let _ = bridge.terminate();
}

/// Run `tribridge export` with `args` on the test's configuration: (exit code, stdout).
fn export(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .arg("export")
        .arg("--config")
        .arg(dir.join("bridges.toml"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run tribridge export");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + String::from_utf8_lossy(&output.stderr).as_ref(),
    )
}

/// Validate every line of a JSONL export against `schema/export-jsonl.schema.json` with
/// python-jsonschema (a dependency of Synapse, so in the venv the Matrix tests use).
fn validate_against_schema(export: &std::path::Path) {
    let python = crate::support::servers::synapse_venv().join("bin/python");
    let schema =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/export-jsonl.schema.json");
    let script = "import json, sys\n\
        try:\n    import jsonschema\n\
        except ImportError:\n    sys.exit('python-jsonschema is missing: run scripts/install-test-deps.sh')\n\
        schema = json.load(open(sys.argv[1]))\n\
        jsonschema.Draft202012Validator.check_schema(schema)\n\
        validator = jsonschema.Draft202012Validator(schema)\n\
        for number, line in enumerate(open(sys.argv[2]), 1):\n    \
            errors = list(validator.iter_errors(json.loads(line)))\n    \
            if errors:\n        sys.exit(f'line {number}: {errors[0].message}')\n\
        print('valid')\n";
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&schema)
        .arg(export)
        .output()
        .expect("run the Synapse venv's python (scripts/install-test-deps.sh installs it)");
    assert!(
        output.status.success(),
        "the export does not validate against its schema: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn the_archive_is_chained_exported_forgets_a_person_and_verify_names_a_changed_text()
 {
    let server = shared_inspircd();
    let channel = unique("#record");
    let nick = unique("brrec");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&channel).await;
    let mm = MmServer::start("rec").await;
    let town = mm.channel("town").await;
    let mia = mm.user("mia", &town).await;
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}{}\
         [[gateway]]\nname = \"record\"\narchive = true\nretention_days = 0\nchannels = [\n\
           {{ network = \"irc\", channel = \"{channel}\" }},\n  {{ network = \"mm\", channel = \"town\" }},\n]\n",
        irc_network("irc", server.port, &nick),
        mm.network("mm", ""),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    alice.wait_join(&nick, &channel).await;
    mm.wait_member(&town, &mm.bot_id).await;
    mm.wait_websocket(1).await;

    let file = mia.upload(&town, "minutes.txt", b"the minutes").await;
    let first = mia
        .say_with_files(&town, "the council's minutes", std::slice::from_ref(&file))
        .await;
    mia.edit(&first, "the council's minutes, approved").await;
    mia.reply(&town, &first, "in the thread").await;
    mia.react(&first, "thumbsup").await;
    alice.say(&channel, "seen, thanks");
    mia.say(&town, "MARK-end").await;
    alice.texts_until(&channel, "MARK-end").await;
    let d = dir.path();
    let messages = count(d, "SELECT COUNT(*) FROM messages");
    assert!(messages >= 5, "{messages} messages");
    let deadline = Instant::now() + Duration::from_mins(1);
    while count(
        d,
        "SELECT COUNT(*) FROM archive_chain WHERE gateway = 'record'",
    ) < messages
    {
        assert!(Instant::now() < deadline, "the archive was never chained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bridge.wait_for_log("Archive checkpoint.").await;

    // While the daemon runs: the chain verifies, and the export holds every version.
    let (code, said) = export(d, &["--gateway", "record", "--verify"]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains(&format!(
            "the chain of {messages} records (0 tombstones) verifies"
        )),
        "{said}"
    );
    let out = d.join("record.jsonl");
    let (code, said) = export(
        d,
        &["--gateway", "record", "--output", out.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{said}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len() as i64, messages);
    validate_against_schema(&out);
    // A reader checks the chain from the export alone.
    let mut previous = "0".repeat(64);
    for line in &lines {
        assert_eq!(line["schema_version"], 1);
        let record = serde_json::to_vec(&line["record"]).unwrap();
        assert_eq!(line["record_hash"], sha256_hex(&record), "{line}");
        let link =
            sha256_hex(format!("{previous}{}", line["record_hash"].as_str().unwrap()).as_bytes());
        assert_eq!(line["chain_hash"], link);
        previous = link;
    }
    let kinds: Vec<&str> = lines
        .iter()
        .map(|l| l["record"]["kind"].as_str().unwrap())
        .collect();
    for kind in ["text", "edit", "reaction"] {
        assert!(kinds.contains(&kind), "{kinds:?}");
    }
    let edit = lines
        .iter()
        .find(|l| l["record"]["kind"] == "edit")
        .unwrap();
    assert!(edit["event"].to_string().contains("approved"), "{edit}");
    // (Lines from IRC and Mattermost may be committed in either order under load.)
    let with_file = lines
        .iter()
        .find(|l| l["event"].to_string().contains("minutes.txt"))
        .unwrap();
    assert!(
        with_file["relayed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["role"] == "delivery" && r["network"] == "irc"),
        "{with_file}"
    );
    let reply = lines
        .iter()
        .find(|l| l["event"].to_string().contains("in the thread"))
        .unwrap();
    // A Mattermost thread reply names its root by the root's post id.
    assert!(reply["event"].to_string().contains(&first), "{reply}");
    assert_eq!(with_file["record"]["remote_id"], first.as_str());
    let _ = bridge.terminate();

    // mia asks to be forgotten: her posts, their edit, reaction and file go; tombstones stay.
    let mia_records = lines
        .iter()
        .filter(|l| l["record"]["author_id"] == mia.id.as_str())
        .count();
    assert!(mia_records >= 5, "{mia_records}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tribridge"))
        .args(["forget", "--network", "mm", "--user", &mia.id, "--config"])
        .arg(d.join("bridges.toml"))
        .current_dir(d)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "{mia_records} messages removed ({mia_records} archive records left as tombstones), \
             1 files removed"
        )),
        "{said}"
    );
    let mia_sql = format!(
        "SELECT COUNT(*) FROM messages WHERE author_id = '{}'",
        mia.id
    );
    assert_eq!(count(d, &mia_sql), 0);
    assert!(stored_files(d).is_empty());
    let (code, said) = export(d, &["--gateway", "record", "--verify"]);
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains(&format!(
            "the chain of {messages} records ({mia_records} tombstones) verifies"
        )),
        "{said}"
    );
    let (code, said) = export(d, &["--gateway", "record"]);
    assert_eq!(code, 0, "{said}");
    assert!(
        !said.contains("minutes") && !said.contains(&mia.id),
        "{said}"
    );
    assert_eq!(
        said.matches("\"tombstone\":\"forget\"").count(),
        mia_records
    );
    // Each tombstone's reason is sealed, and a reader can check the seal from the export.
    for line in said.lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        if line["tombstone"] == "forget" {
            let seal =
                sha256_hex(format!("{}:forget", line["chain_hash"].as_str().unwrap()).as_bytes());
            assert_eq!(line["tombstone_hash"], seal.as_str(), "{line}");
        }
    }
    // Someone turns a `forget` tombstone into a `retention` one: verify names it.
    let row = &state_query(
        d,
        "SELECT seq, message_id FROM archive_chain WHERE tombstone = 'forget' ORDER BY seq LIMIT 1",
        &[],
    )[0];
    let (seq, message) = (row[0], row[1]);
    state_execute(
        d,
        "UPDATE archive_chain SET tombstone = 'retention' WHERE seq = ?1",
        &[seq],
    );
    let (code, said) = export(d, &["--gateway", "record", "--verify"]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains(&format!(
            "record {seq} (message {message}) does not match: its tombstone's reason"
        )),
        "{said}"
    );
    state_execute(
        d,
        "UPDATE archive_chain SET tombstone = 'forget' WHERE seq = ?1",
        &[seq],
    );

    // Someone changes one archived text in the database: verify names that record.
    let kept = lines
        .iter()
        .find(|l| l["event"].to_string().contains("seen, thanks"))
        .unwrap();
    let target = kept["record"]["message_id"].as_i64().unwrap();
    let seq = kept["seq"].as_i64().unwrap();
    let changed = state_execute(
        d,
        "UPDATE messages SET body = replace(body, 'thanks', 'no thanks') WHERE id = ?1",
        &[target],
    );
    assert_eq!(changed, 1);
    let (code, said) = export(d, &["--gateway", "record", "--verify"]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains(&format!("record {seq} (message {target}) does not match")),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn an_export_during_a_relayed_burst_loses_and_doubles_nothing() {
    const BURST: usize = 300;
    let server = shared_inspircd();
    let channel = unique("#burst");
    let nick = unique("brbur");
    let mut alice = IrcClient::connect(server.port, &unique("alice")).await;
    alice.join(&channel).await;
    let mm = MmServer::start("burst").await;
    let town = mm.channel("town").await;
    let mia = mm.user("mia", &town).await;
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}{}\
         [[gateway]]\nname = \"burst\"\narchive = true\nchannels = [\n\
           {{ network = \"irc\", channel = \"{channel}\" }},\n  {{ network = \"mm\", channel = \"town\" }},\n]\n",
        irc_network("irc", server.port, &nick),
        mm.network("mm", ""),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), &config);
    alice.wait_join(&nick, &channel).await;
    mm.wait_member(&town, &mm.bot_id).await;
    mm.wait_websocket(1).await;
    let d = dir.path().to_path_buf();

    // Exports run back to back while the burst is relayed.
    let exporting = {
        let d = d.clone();
        tokio::task::spawn_blocking(move || {
            let mut runs = Vec::new();
            let deadline = Instant::now() + Duration::from_mins(2);
            loop {
                let (code, said) = export(&d, &["--gateway", "burst"]);
                assert_eq!(code, 0, "{said}");
                let done = said.contains("burst-299");
                runs.push(said);
                if done || Instant::now() > deadline {
                    return runs;
                }
            }
        })
    };
    for n in 0..BURST {
        alice.say(&channel, &format!("burst-{n}"));
    }
    let posts = mia
        .wait_posts_by(&town, &mm.bot_id, |p| p.len() >= BURST)
        .await;
    assert_eq!(posts.len(), BURST);
    let runs = exporting.await.unwrap();
    assert!(
        runs.len() > 1,
        "only {} export ran during the burst",
        runs.len()
    );
    // Every export is a consistent prefix: burst lines in order, each once.
    for run in &runs {
        let said: Vec<usize> = run
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter_map(|line| {
                line["event"]
                    .to_string()
                    .split("burst-")
                    .nth(1)
                    .map(|rest| {
                        rest.chars()
                            .take_while(char::is_ascii_digit)
                            .collect::<String>()
                            .parse()
                            .unwrap()
                    })
            })
            .collect();
        assert_eq!(said, (0..said.len()).collect::<Vec<_>>());
    }
    let last: Vec<&str> = runs.last().unwrap().lines().collect();
    assert_eq!(
        last.len(),
        BURST,
        "the last export holds the whole burst once"
    );
    let _ = bridge.terminate();
    // And the relaying lost and doubled nothing either.
    let posts = mia
        .wait_posts_by(&town, &mm.bot_id, |p| p.len() >= BURST)
        .await;
    let texts: Vec<String> = crate::support::mattermost::messages(&posts);
    let a = alice.nick.clone();
    assert_eq!(
        texts,
        (0..BURST)
            .map(|n| format!("<{a}> burst-{n}"))
            .collect::<Vec<_>>()
    );
}

/// The python of the venv that holds slack-export-viewer, the independent reader of the Slack
/// export (installed by `scripts/install-test-deps.sh`).
fn slack_reader_python() -> std::path::PathBuf {
    let venv = std::env::var_os("SLACK_EXPORT_VENV").map_or_else(
        || {
            let cache = std::env::var_os("XDG_CACHE_HOME").map_or_else(
                || std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"),
                std::path::PathBuf::from,
            );
            cache.join("tribridge-test/venv-slack-export")
        },
        std::path::PathBuf::from,
    );
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "slack-export-viewer (the reader of Slack exports the test checks with) is missing at \
         {}: run scripts/install-test-deps.sh",
        venv.display()
    );
    python
}

/// Read a Slack export ZIP with slack-export-viewer's own reader: what it sees, as JSON.
fn read_slack_export(zip: &std::path::Path) -> serde_json::Value {
    let script = r#"
import json, os, sys
from slackviewer.config import Config
from slackviewer.reader import Reader
config = Config({"archive": sys.argv[1], "since": None, "hide_channels": None,
                 "filter_user": None, "skip_channel_member_change": False,
                 "thread_note": False, "show_dms": False})
reader = Reader(config)
root = reader.archive_path()
users = json.load(open(os.path.join(root, "users.json")))
out = {"users": [u["name"] for u in users], "channels": {}}
for name, messages in reader.compile_channels().items():
    seen = []
    for m in messages:
        raw = m._message
        files = []
        for f in m.files:
            path = os.path.join(root, f.link) if f.link else None
            files.append({"name": f["name"], "link": f.link,
                          "content": open(path, "rb").read().decode("utf-8", "replace")
                                     if path and os.path.isfile(path) else None})
        seen.append({"user": m.username, "text": raw.get("text"), "msg": str(m.msg),
                     "subtype": m.subtype, "thread": m.is_thread_msg,
                     "thread_ts": raw.get("thread_ts"), "ts": raw.get("ts"),
                     "reply_count": raw.get("reply_count"), "edited": raw.get("edited"),
                     "reactions": m.reactions, "files": files,
                     "network": raw.get("tribridge", {}).get("network"),
                     "chain_hash": raw.get("tribridge", {}).get("chain_hash")})
    out["channels"][name] = seen
print(json.dumps(out))
"#;
    let output = std::process::Command::new(slack_reader_python())
        .arg("-c")
        .arg(script)
        .arg(zip)
        .env("TMPDIR", zip.parent().unwrap())
        .output()
        .expect("run slack-export-viewer's python");
    assert!(
        output.status.success(),
        "slack-export-viewer cannot read the export: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The reader prints where it extracted the archive before our line.
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Render a page in headless Chromium (a file URL, no network): the DOM it built.
fn chromium_dom(page: &std::path::Path, profile: &std::path::Path) -> String {
    let output = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|error| {
            panic!("run chromium ({error}): install it with scripts/install-test-deps.sh")
        });
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn every_export_format_holds_a_conversation_of_the_three_networks() {
    use crate::support::matrix_client::{MatrixUser, register};
    use crate::support::servers::{free_port, shared_synapse};
    use serde_json::json;

    let synapse = shared_synapse();
    let url = synapse.url();
    let server = shared_inspircd();
    let bot = unique("botx");
    register(&url, &bot, "password").await;
    let mut alice = MatrixUser::new(&url, &unique("alice")).await;
    let alias = unique("roomx");
    let room = alice.create_room(&alias).await;
    alice.mark().await;
    let channel = unique("#minutes");
    let nick = unique("brx");
    let mut ivan = IrcClient::connect(server.port, &unique("ivan")).await;
    ivan.join(&channel).await;
    let mm = MmServer::start("exp").await;
    let town = mm.channel("town").await;
    let mia = mm.user("mia", &town).await;
    let media_port = free_port();
    let config = format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\
         media_listen = \"127.0.0.1:{media_port}\"\n\
         media_public_url = \"http://127.0.0.1:{media_port}/files\"\n\n{}\
         [network.mx]\ntype = \"matrix\"\nhomeserver = \"{url}\"\nuser = \"@{bot}:localhost\"\n\
         password = \"password\"\n\n{}\
         [[gateway]]\nname = \"council\"\narchive = true\nchannels = [\n\
           {{ network = \"irc\", channel = \"{channel}\" }},\n\
           {{ network = \"mx\", channel = \"#{alias}:localhost\" }},\n\
           {{ network = \"mm\", channel = \"town\" }},\n]\n",
        irc_network("irc", server.port, &nick),
        mm.network("mm", ""),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut bridge = Bridge::start(d, &config);
    ivan.wait_join(&nick, &channel).await;
    let matrix_bot = format!("@{bot}:localhost");
    alice
        .events_until(&room, Duration::from_mins(1), |events| {
            events.iter().any(|e| {
                e.kind == "m.room.member"
                    && e.content["membership"] == "join"
                    && e.sender == matrix_bot
            })
        })
        .await;
    mm.wait_bot_member(&town).await;
    mm.wait_websocket(1).await;

    // Mattermost: mia's post with a file, her edit of it, a reply in its thread, a reaction.
    let file = mia.upload(&town, "minutes.txt", b"the minutes").await;
    let first = mia
        .say_with_files(&town, "the council's minutes", std::slice::from_ref(&file))
        .await;
    mia.edit(&first, "the council's minutes, approved").await;
    mia.reply(&town, &first, "in the thread").await;
    mia.react(&first, "thumbsup").await;
    // Matrix: alice answers mia's post (as Matrix shows it) and reacts to it, edits her own
    // message, shares a file and deletes a message.
    let bridged = alice
        .events_until(&room, Duration::from_mins(1), |events| {
            events
                .iter()
                .any(|e| e.sender == matrix_bot && e.body().contains("the council's minutes"))
        })
        .await;
    let minutes_event = bridged
        .iter()
        .find(|e| e.sender == matrix_bot && e.body().contains("the council's minutes"))
        .unwrap()
        .event_id
        .clone();
    alice
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "> <@x:localhost> minutes\n\nagreed from matrix",
                   "m.relates_to": {"m.in_reply_to": {"event_id": minutes_event}}}),
        )
        .await;
    alice
        .send_event(
            &room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": minutes_event,
                                    "key": "🎉"}}),
        )
        .await;
    let typo = alice.say(&room, "typo heer").await;
    alice
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.text", "body": "* typo here",
                   "m.new_content": {"msgtype": "m.text", "body": "typo here"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": typo}}),
        )
        .await;
    let plan = b"the plan".to_vec();
    let uri = alice.upload("plan.txt", "text/plain", plan.clone()).await;
    alice
        .send_event(
            &room,
            "m.room.message",
            json!({"msgtype": "m.file", "body": "plan.txt", "filename": "plan.txt", "url": uri,
                   "info": {"mimetype": "text/plain", "size": plan.len()}}),
        )
        .await;
    let gone = alice.say(&room, "soon gone").await;
    // Deleted once relayed (a message redacted before the bridge read it never existed for it).
    ivan.texts_until(&channel, "soon gone").await;
    alice.redact(&room, &gone).await;
    // IRC: ivan's lines, one of them markup that must stay text.
    ivan.say(&channel, "seen, thanks");
    ivan.say(&channel, "<script>alert('x')</script> stays text");
    alice.say(&room, "MARK-end").await;
    ivan.texts_until(&channel, "MARK-end").await;

    // Wait until the store holds every event and the archive has chained them.
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let kinds = [("edit", 2), ("reaction", 2), ("delete", 1), ("text", 9)]
            .iter()
            .all(|(kind, n)| {
                count(
                    d,
                    &format!("SELECT COUNT(*) FROM messages WHERE kind = '{kind}'"),
                ) >= *n
            });
        let chained = count(d, "SELECT COUNT(*) FROM archive_chain")
            == count(d, "SELECT COUNT(*) FROM messages");
        if kinds && chained && stored_files(d).len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store never held the whole conversation: {:?}, {} chained, files {:?}",
            ["text", "edit", "reaction", "delete"].map(|kind| count(
                d,
                &format!("SELECT COUNT(*) FROM messages WHERE kind = '{kind}'")
            )),
            count(d, "SELECT COUNT(*) FROM archive_chain"),
            stored_files(d)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alice_name = alice.user_id[1..].split(':').next().unwrap().to_owned();

    // JSONL: valid against its schema, with all three networks.
    let jsonl = d.join("council.jsonl");
    let (code, said) = export(
        d,
        &["--gateway", "council", "--output", jsonl.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{said}");
    validate_against_schema(&jsonl);
    let text = std::fs::read_to_string(&jsonl).unwrap();
    for network in [
        "\"network\":\"irc\"",
        "\"network\":\"mx\"",
        "\"network\":\"mm\"",
    ] {
        assert!(text.contains(network), "{network} missing in {text}");
    }
    // Every format carries the chain: the hashes of the JSONL records.
    let chain: std::collections::HashSet<String> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|line| line["chain_hash"].as_str().map(ToOwned::to_owned))
        .collect();

    // Slack: what slack-export-viewer reads from the ZIP.
    let slack = d.join("council-slack.zip");
    let (code, said) = export(
        d,
        &[
            "--gateway",
            "council",
            "--format",
            "slack",
            "--output",
            slack.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{said}");
    let read = read_slack_export(&slack);
    let users: Vec<&str> = read["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    for who in ["mia", alice_name.as_str(), ivan.nick.as_str()] {
        assert!(users.contains(&who), "{who} not in {users:?}");
    }
    let channels = read["channels"].as_object().unwrap();
    assert_eq!(channels.keys().collect::<Vec<_>>(), vec!["council"]);
    let messages = channels["council"].as_array().unwrap();
    for message in messages {
        let hash = message["chain_hash"].as_str().unwrap_or_default();
        assert!(
            chain.contains(hash),
            "a Slack message without its chain hash: {message}"
        );
    }
    let find = |text: &str| -> &serde_json::Value {
        messages
            .iter()
            .find(|m| m["text"] == text)
            .unwrap_or_else(|| panic!("no message `{text}` in {messages:#?}"))
    };
    let minutes_root = find("the council's minutes, approved");
    assert_eq!(minutes_root["user"], "mia");
    assert!(minutes_root["edited"].is_object(), "{minutes_root}");
    assert_eq!(minutes_root["reply_count"], 2, "{minutes_root}");
    assert_eq!(minutes_root["files"][0]["name"], "minutes.txt");
    assert_eq!(
        minutes_root["files"][0]["content"], "the minutes",
        "{minutes_root}"
    );
    let mut reactions: Vec<(String, Vec<String>)> = minutes_root["reactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["usernames"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|u| u.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();
    reactions.sort();
    assert_eq!(reactions.len(), 2, "{minutes_root}");
    assert_eq!(reactions[1].1, vec!["mia".to_owned()], "{reactions:?}");
    assert_eq!(reactions[0].1, vec![alice_name.clone()], "{reactions:?}");
    for reply in ["in the thread", "agreed from matrix"] {
        let m = find(reply);
        assert_eq!(m["thread"], true, "{m}");
        assert_eq!(m["thread_ts"], minutes_root["ts"], "{m}");
    }
    assert_eq!(find("agreed from matrix")["user"], alice_name.as_str());
    let typo = find("typo here");
    assert!(typo["edited"].is_object(), "{typo}");
    assert_eq!(typo["network"], "mx");
    let plan_post = messages
        .iter()
        .find(|m| m["files"][0]["name"] == "plan.txt")
        .unwrap();
    assert_eq!(plan_post["files"][0]["content"], "the plan", "{plan_post}");
    assert_eq!(plan_post["user"], alice_name.as_str());
    assert_eq!(find("This message was deleted.")["subtype"], "tombstone");
    let ivan_line = find("&lt;script&gt;alert('x')&lt;/script&gt; stays text");
    assert_eq!(ivan_line["network"], "irc");
    assert_eq!(find("seen, thanks")["user"], ivan.nick.as_str());

    // HTML: each page renders in a real browser, the texts visible, nothing loaded from afar.
    let html = d.join("council-html.zip");
    let (code, said) = export(
        d,
        &[
            "--gateway",
            "council",
            "--format",
            "html",
            "--output",
            html.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{said}");
    let pages = d.join("html");
    zip::ZipArchive::new(std::fs::File::open(&html).unwrap())
        .unwrap()
        .extract(&pages)
        .unwrap();
    let mut days: Vec<std::path::PathBuf> = std::fs::read_dir(&pages)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "html") && !p.ends_with("index.html"))
        .collect();
    days.sort();
    assert!(!days.is_empty());
    let profile = d.join("chromium-profile");
    let index = chromium_dom(&pages.join("index.html"), &profile);
    assert!(index.contains("council — transcript"), "{index}");
    let mut dom = String::new();
    for day in &days {
        dom.push_str(&chromium_dom(day, &profile));
    }
    for visible in [
        "the council's minutes, approved",
        "in the thread",
        "agreed from matrix",
        "typo here",
        "seen, thanks",
        "minutes.txt",
        "plan.txt",
        "🎉",
        "&lt;script&gt;alert('x')&lt;/script&gt; stays text",
    ] {
        let escaped = visible.replace('\'', "&#39;");
        assert!(
            dom.contains(visible) || dom.contains(&escaped),
            "`{visible}` is not on the rendered page: {dom}"
        );
    }
    assert!(dom.contains("deleted"), "{dom}");
    let marked: Vec<&str> = dom
        .split("data-chain-hash=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert!(!marked.is_empty(), "no chain hash on the pages");
    assert!(
        marked.iter().all(|hash| chain.contains(*hash)),
        "a page's chain hash is not the chain's: {marked:?}"
    );
    let lower = dom.to_lowercase();
    assert!(
        !lower.contains("<script") && !lower.contains("<link") && !lower.contains("<iframe"),
        "the page has active or linked content: {dom}"
    );
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in lower.match_indices(attribute) {
            let value = &lower[at + attribute.len()..];
            assert!(
                !value.starts_with("http")
                    && !value.starts_with("//")
                    && !value.starts_with("data:"),
                "an external resource: {}",
                &dom[at..(at + 80).min(dom.len())]
            );
        }
    }
    assert!(!lower.contains("url("), "a CSS resource: {dom}");
    // The files the pages link to are in the ZIP.
    assert_eq!(
        std::fs::read_to_string(
            std::fs::read_dir(pages.join("files"))
                .unwrap()
                .map(|e| e.unwrap().path().join("minutes.txt"))
                .find(|p| p.is_file())
                .unwrap()
        )
        .unwrap(),
        "the minutes"
    );
    let _ = bridge.terminate();
}
