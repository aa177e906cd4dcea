//! The history's policy through the real daemon: `retention_days`, `legal_hold` and what
//! happens to an edit or a reply of a forgotten message, with the daemon's clock moved forward
//! through its test-only seam (`TRIBRIDGE_TEST_CLOCK_SKEW_SECONDS`) instead of waiting days.

use std::time::{Duration, Instant};

use crate::support::bridge::{Bridge, unique};
use crate::support::config::irc_network;
use crate::support::irc_client::{IrcClient, texts};
use crate::support::mattermost::MmServer;
use crate::support::servers::shared_inspircd;

/// Rows of `sql` (a `SELECT COUNT(*)`) in the daemon's store, read as an operator would.
fn count(dir: &std::path::Path, sql: &str) -> i64 {
    let connection = rusqlite::Connection::open(dir.join("state/tribridge.sqlite3")).unwrap();
    connection.query_row(sql, [], |row| row.get(0)).unwrap()
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
async fn retention_forgets_old_messages_and_files_but_keeps_held_and_pending_ones() {
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
    let store = tribridge::store::Store::open(&d.join("state")).unwrap();
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
async fn the_archive_is_chained_exported_forgets_a_person_and_verify_names_a_changed_text() {
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
    let with_file = &lines[0];
    assert!(
        with_file["event"].to_string().contains("minutes.txt"),
        "{with_file}"
    );
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

    // Someone changes one archived text in the database: verify names that record.
    let kept = lines
        .iter()
        .find(|l| l["event"].to_string().contains("seen, thanks"))
        .unwrap();
    let target = kept["record"]["message_id"].as_i64().unwrap();
    let seq = kept["seq"].as_i64().unwrap();
    let connection = rusqlite::Connection::open(d.join("state/tribridge.sqlite3")).unwrap();
    let changed = connection
        .execute(
            "UPDATE messages SET body = replace(body, 'thanks', 'no thanks') WHERE id = ?1",
            [target],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(connection);
    let (code, said) = export(d, &["--gateway", "record", "--verify"]);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains(&format!("record {seq} (message {target}) does not match")),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_during_a_relayed_burst_loses_and_doubles_nothing() {
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
