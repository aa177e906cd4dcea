//! The real `tribridge` binary, run as a child process on a config the test writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A short name unique in this test run, for nicks and channels (tests share servers).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id() % 10_000)
}

thread_local! {
    /// Whether the bridges this thread starts keep their state in PostgreSQL ([`on_postgres`]).
    static ON_POSTGRES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// How many bridges this thread started on PostgreSQL.
    static STARTED_ON_POSTGRES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Run the scenario `test` (a test function of another module, as it is) with every bridge it
/// starts (and every in-process store it opens with [`open_test_store`]) on the PostgreSQL store: a database of its own on the shared PostgreSQL, named by
/// `store = "postgres://…"` in the config it writes. A `#[tokio::test]` runs its body on the
/// calling thread, so the setting reaches its bridges and no other test's.
/// `TRIBRIDGE_TEST_STORE=postgres` does the same for every test of the run.
pub fn on_postgres(test: fn()) {
    ON_POSTGRES.with(|on| on.set(true));
    STARTED_ON_POSTGRES.with(|started| started.set(0));
    test();
    ON_POSTGRES.with(|on| on.set(false));
    assert!(
        STARTED_ON_POSTGRES.with(std::cell::Cell::get) > 0,
        "the scenario started no bridge on this thread: it did not run on PostgreSQL"
    );
}

/// Whether a bridge started now keeps its state in PostgreSQL (for a scenario whose outcome
/// the backend defines, as a NUL character's).
pub fn wants_postgres() -> bool {
    ON_POSTGRES.with(std::cell::Cell::get)
        || std::env::var("TRIBRIDGE_TEST_STORE").is_ok_and(|store| store == "postgres")
}

/// A store for an in-process scenario: `SQLite` in `dir`, or under [`on_postgres`] a fresh
/// database on the shared PostgreSQL.
pub fn open_test_store(dir: &Path) -> tribridge::store::Store {
    if wants_postgres() {
        STARTED_ON_POSTGRES.with(|started| started.set(started.get() + 1));
        let url = super::servers::shared_postgres().fresh_database();
        tribridge::store::Store::open_postgres(&url).expect("open the PostgreSQL store")
    } else {
        tribridge::store::Store::open(dir).expect("open the SQLite store")
    }
}

/// `config` with `store = url` in its `[general]` section (added when it has none).
pub fn with_store(config: &str, url: &str) -> String {
    let line = format!("store = \"{url}\"\n");
    match config.find("[general]\n") {
        Some(at) => {
            let after = at + "[general]\n".len();
            format!("{}{line}{}", &config[..after], &config[after..])
        }
        None => format!("[general]\n{line}\n{config}"),
    }
}

pub struct Bridge {
    pub dir: PathBuf,
    /// The PostgreSQL store's URL, when the bridge keeps its state there.
    pub store_url: Option<String>,
    child: Option<Child>,
    starts: u32,
    env: Vec<(String, String)>,
}

impl Bridge {
    /// Write `config` to `dir/bridges.toml` and start the daemon on it.
    pub fn start(dir: &Path, config: &str) -> Bridge {
        Self::start_with_env(dir, config, &[])
    }

    /// Like [`Bridge::start`], with extra environment variables for the daemon.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Bridge {
        let store_url =
            wants_postgres().then(|| super::servers::shared_postgres().fresh_database());
        let config = match &store_url {
            Some(url) => {
                STARTED_ON_POSTGRES.with(|started| started.set(started.get() + 1));
                with_store(config, url)
            }
            None => config.to_owned(),
        };
        std::fs::write(dir.join("bridges.toml"), config).expect("write config");
        let mut bridge = Bridge {
            dir: dir.to_path_buf(),
            store_url,
            child: None,
            starts: 0,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        bridge.spawn();
        bridge
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.join(format!("bridge-{}.log", self.starts)))
            .expect("log file");
        // `TRIBRIDGE_BIN` runs another build of the daemon (a long chaos run keeps its own copy
        // while the tree is rebuilt).
        let program = std::env::var_os("TRIBRIDGE_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_tribridge")),
            PathBuf::from,
        );
        let child = Command::new(program)
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("bridges.toml"))
            .env(
                "RUST_LOG",
                "info,tribridge=debug,matrix_sdk=warn,matrix_sdk_base=warn,matrix_sdk_sqlite=warn",
            )
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn tribridge");
        self.child = Some(child);
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("tribridge did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send SIGHUP, as an operator asking for a reload does.
    pub fn hangup(&self) {
        let child = self.child.as_ref().expect("the bridge is running");
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP failed");
    }

    /// Send `signal` (`STOP`, `CONT`, …) to the daemon.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the bridge is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Whether the daemon process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Set an environment variable of the daemon for its next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Start again on the same config and state.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the bridge first");
        self.spawn();
    }

    /// The daemon's store, opened as an operator would (the `SQLite` file in its state folder,
    /// or its PostgreSQL database).
    pub fn open_store(&self) -> tribridge::store::Store {
        tribridge::store::Store::open_configured(&self.dir.join("state"), self.store_url.as_deref())
            .expect("open store")
    }

    /// Wait until the daemon has recorded every delivery to `channel` as acknowledged (the
    /// outbox holds nothing for it), reading the store as an operator would.
    pub async fn wait_outbox_drained(&self, network: &str, channel: &str) {
        let store = self.open_store();
        let destination = tribridge::model::ChannelRef::new(network, channel);
        let deadline = Instant::now() + Duration::from_mins(1);
        while store.pending_count(&destination).expect("count") > 0 {
            assert!(
                Instant::now() < deadline,
                "outbox for {destination} not drained"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until the daemon's log contains `needle` (an event a test expects), with a deadline.
    pub async fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_mins(1);
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the daemon never logged {needle:?}: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the daemon's log holds `needle` at least `count` times, with a deadline.
    pub async fn wait_for_log_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_mins(1);
        while self.logs().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "the daemon never logged {needle:?} {count} times: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the daemon logged one line holding every one of `needles`, with a deadline.
    pub async fn wait_for_log_line(&self, needles: &[&str]) {
        let deadline = Instant::now() + Duration::from_mins(1);
        while !self
            .logs()
            .lines()
            .any(|line| needles.iter().all(|n| line.contains(n)))
        {
            assert!(
                Instant::now() < deadline,
                "the daemon never logged a line with {needles:?}: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the daemon logged so far, over all its starts.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("bridge-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The PostgreSQL store's URL in the configuration a test wrote to `dir/bridges.toml`, if the
/// bridge keeps its state there ([`Bridge::start_with_env`] adds `store = "postgres://…"`).
pub fn store_url_of(dir: &Path) -> Option<String> {
    let config = std::fs::read_to_string(dir.join("bridges.toml")).ok()?;
    config.lines().find_map(|line| {
        let value = line.trim().strip_prefix("store = \"")?.strip_suffix('"')?;
        value.starts_with("postgres").then(|| value.to_owned())
    })
}

/// The daemon's store as an operator opens it, on either backend: `dir/state`'s `SQLite` file,
/// or the PostgreSQL database the configuration names.
pub fn open_state(dir: &Path) -> tribridge::store::Store {
    tribridge::store::Store::open_configured(&dir.join("state"), store_url_of(dir).as_deref())
        .expect("open the daemon's store")
}

/// Run `sql` (with `?1`… parameters, written for both backends) on the daemon's store as an
/// operator would, on either backend: the rows, each as its columns' integers.
pub fn state_query(dir: &Path, sql: &str, params: &[i64]) -> Vec<Vec<i64>> {
    if let Some(url) = store_url_of(dir) {
        let mut sql = sql.to_owned();
        for n in (1..=params.len()).rev() {
            sql = sql.replace(&format!("?{n}"), &format!("${n}"));
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut client = postgres::Client::connect(&url, postgres::NoTls)
                        .expect("connect to the store");
                    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                        .iter()
                        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
                        .collect();
                    client
                        .query(sql.as_str(), &params)
                        .expect("query the store")
                        .iter()
                        .map(|row| (0..row.len()).map(|i| row.get::<_, i64>(i)).collect())
                        .collect()
                })
                .join()
                .expect("the query's thread")
        })
    } else {
        let connection =
            rusqlite::Connection::open(dir.join("state/tribridge.sqlite3")).expect("open");
        let mut statement = connection.prepare(sql).expect("prepare");
        let columns = statement.column_count();
        statement
            .query_map(rusqlite::params_from_iter(params), |row| {
                (0..columns).map(|i| row.get::<_, i64>(i)).collect()
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }
}

/// Run the write `sql` (with `?1`… parameters) on the daemon's store: how many rows it changed.
pub fn state_execute(dir: &Path, sql: &str, params: &[i64]) -> u64 {
    if store_url_of(dir).is_some() {
        let returning = format!("WITH changed AS ({sql} RETURNING 1) SELECT COUNT(*) FROM changed");
        state_query(dir, &returning, params)[0][0].unsigned_abs()
    } else {
        let connection =
            rusqlite::Connection::open(dir.join("state/tribridge.sqlite3")).expect("open");
        connection
            .execute(sql, rusqlite::params_from_iter(params))
            .expect("execute") as u64
    }
}
