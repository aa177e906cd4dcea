//! Fidelity check: the official JS client (`@mattermost/client` Client4 + WebSocketClient, pinned
//! in `tests/mattermost-client/` at the repository root) logs in, posts, receives its own
//! `posted` event, edits, reacts, reads `since`, and deletes against the emulator; and, as an
//! admin, administers users (create, tokens, patch, image, deactivate) as remote users need.
//! Needs `node` (≥ 20) and `npm`; installs the pinned packages with `npm ci` when
//! `node_modules` is missing. A missing `node` fails the test with a clear message.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/mattermost-client")
}

async fn run(cmd: &mut Command, what: &str, limit: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}. The JS fidelity test needs Node.js >= 20 and npm on PATH (e.g. `apt-get install nodejs npm`)."));
    tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

/// Both tests of this file run at once; `npm ci` (which empties `node_modules` first) must run
/// once, or the two installs remove each other's files.
static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// Checks `node` (≥ 20) and installs the pinned client when missing, once per test process.
async fn prepare() -> PathBuf {
    let dir = client_dir();
    INSTALLED.get_or_init(|| install(&dir)).await;
    dir
}

async fn install(dir: &std::path::Path) {
    let version = run(
        Command::new("node").arg("--version"),
        "node --version",
        Duration::from_secs(30),
    )
    .await;
    assert!(version.status.success(), "node --version failed");
    let v = String::from_utf8_lossy(&version.stdout);
    let major: u32 = v
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "the JS fidelity test needs Node.js >= 20, found {v}"
    );
    if !dir.join("node_modules/@mattermost/client").exists() {
        let out = run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(dir),
            "npm ci",
            Duration::from_secs(600),
        )
        .await;
        assert!(
            out.status.success(),
            "npm ci in {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn official_js_client_drives_the_emulator() {
    let dir = prepare().await;
    let w = common::world().await;
    let base = w.emu.base_url();
    let out = run(
        Command::new("node")
            .arg("check.js")
            .args([base.as_str(), "alice", "alice-password", "test", "bridge"])
            .env("MM_CHECK_TIMEOUT_MS", "30000")
            .current_dir(&dir),
        "node check.js",
        Duration::from_secs(60),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "check.js failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(stdout.lines().last(), Some("OK"), "stdout:\n{stdout}");
    for needle in [
        "ok - login returns the user and a 26-char Token header",
        "ok - hello first, seq 0, own user id",
        "ok - posted event carries the post as a JSON string with pending_post_id",
        "ok - post_edited event with the new message",
        "ok - getPostsSince includes the edit-history row",
        "ok - post_deleted event",
        "ok - event seq numbers are consecutive from 0",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

/// User administration as a bridge's remote users need it (create with username rules, team and
/// channel membership, patch with props, profile image, another user's token, revoke,
/// deactivation, a non-admin's refusals), driven by the official client.
#[tokio::test]
async fn official_js_client_administers_users() {
    let dir = prepare().await;
    let w = common::world().await;
    let base = w.emu.base_url();
    let out = run(
        Command::new("node")
            .arg("users.js")
            .args([
                base.as_str(),
                common::ADMIN,
                common::ADMIN_PW,
                "alice",
                "alice-password",
                "test",
                "bridge",
            ])
            .current_dir(&dir),
        "node users.js",
        Duration::from_secs(60),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "users.js failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_eq!(stdout.lines().last(), Some("OK"), "stdout:\n{stdout}");
    for needle in [
        "ok - a taken username is 400 app.user.save.username_exists.app_error",
        "ok - patchUser sets nickname and props",
        "ok - uploadProfileImage",
        "ok - a post with the token is the user's own post",
        "ok - a non-admin cannot create another user's token (403)",
        "ok - a deactivated user's token is refused (401)",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}
