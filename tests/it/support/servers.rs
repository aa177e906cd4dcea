//! Real chat servers for the integration tests, started on free loopback ports.
//!
//! Each server runs under a small `sh` watchdog whose stdin is a pipe from the test process:
//! when the test process ends in any way (even SIGKILL), the pipe closes, the watchdog's `cat`
//! returns and it stops the server by its PID. Dropping the handle does the same, on purpose.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind 127.0.0.1:0")
}

/// TLS material for test servers: a CA, and a leaf for localhost + 127.0.0.1 signed by it.
pub struct TestTls {
    /// The CA certificate the bridge trusts (`tls_ca_file`).
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

impl TestTls {
    pub fn generate(dir: &Path) -> TestTls {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        std::fs::create_dir_all(dir).expect("tls dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tribridge test CA");
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf cert");
        let tls = TestTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&tls.ca, ca.pem()).expect("write ca");
        std::fs::write(&tls.cert, leaf.pem()).expect("write cert");
        std::fs::write(&tls.key, leaf_key.serialize_pem()).expect("write key");
        tls
    }
}

/// A running `InspIRCd`.
pub struct InspIrcd {
    pub port: u16,
    pub tls_port: u16,
    pub dir: PathBuf,
    pub tls: TestTls,
    /// The server-link port Atheme links to, when started with services.
    link_port: Option<u16>,
    watchdog: Option<(Child, ChildStdin)>,
    services: Option<(Child, ChildStdin)>,
    _tempdir: Option<tempfile::TempDir>,
}

/// Run `program args` in `dir` under a watchdog shell that stops it when our pipe closes.
///
/// When the pipe closes because this test process is gone (a shared server lives in a static
/// and is never dropped), the watchdog also removes `dir`: otherwise every run of the suite
/// would leave its shared servers' folders (a PostgreSQL one is ~190 MB) behind. A server
/// stopped by a live test ([`stop_watched`]: a restart on the same folder, or a drop whose
/// `TempDir` removes the folder itself) says "keep" on the pipe first.
fn watched(dir: &Path, program: &Path, args: &[String], log_name: &str) -> (Child, ChildStdin) {
    let log = std::fs::File::create(dir.join(log_name)).expect("log");
    let mut child = Command::new("sh")
        .arg("-c")
        // ulimit: ssl_gnutls segfaults on SIGTERM; no core files. The server's stdin is
        // /dev/null (background job), the watchdog's `cat` holds our pipe; nothing read from it
        // means this test process ended without stopping the server.
        .arg(r#"ulimit -c 0; dir="$1"; cd "$dir"; shift; "$@" </dev/null & pid=$!; said=$(cat); kill -TERM $pid 2>/dev/null; wait $pid; if [ -z "$said" ]; then cd /; rm -rf "$dir"; fi"#)
        .arg("sh")
        .arg(dir)
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {}: {error}", program.display()));
    let stdin = child.stdin.take().expect("stdin");
    (child, stdin)
}

/// Stop a server started by [`watched`] from a live test: its folder stays.
fn stop_watched((mut child, mut stdin): (Child, ChildStdin)) {
    let _ = stdin.write_all(b"keep");
    drop(stdin);
    let _ = child.wait();
}

fn inspircd_binary() -> PathBuf {
    for candidate in ["/usr/sbin/inspircd", "/usr/bin/inspircd"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "InspIRCd is not installed: run `scripts/install-test-deps.sh` (apt-get install inspircd)"
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl InspIrcd {
    /// Start a new `InspIRCd` in its own temporary folder.
    pub fn start() -> InspIrcd {
        Self::start_inner(false)
    }

    /// Start a new `InspIRCd` with Atheme services linked (`NickServ`, SASL PLAIN).
    pub fn start_with_services() -> InspIrcd {
        Self::start_inner(true)
    }

    fn start_inner(with_services: bool) -> InspIrcd {
        let tempdir = tempfile::Builder::new()
            .prefix("tribridge-inspircd-")
            .tempdir()
            .expect("tempdir");
        let dir = tempdir.path().to_path_buf();
        let tls = TestTls::generate(&dir.join("tls"));
        let mut server = InspIrcd {
            port: free_port(),
            tls_port: free_port(),
            dir,
            tls,
            link_port: with_services.then(free_port),
            watchdog: None,
            services: None,
            _tempdir: Some(tempdir),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let template = include_str!("../../servers/inspircd.conf.in");
        let config = template
            .replace("@DATA@", &self.dir.display().to_string())
            .replace("@TLS_DIR@", &self.dir.join("tls").display().to_string())
            .replace("@PLAIN_PORT@", &self.port.to_string())
            .replace("@TLS_PORT@", &self.tls_port.to_string())
            .replace("@MODULE_DIR@", "/usr/lib/inspircd/modules");
        std::fs::create_dir_all(self.dir.join("data")).expect("data dir");
        std::fs::create_dir_all(self.dir.join("logs")).expect("logs dir");
        std::fs::write(self.dir.join("inspircd.motd"), "tribridge test IRCd\n").expect("motd");
        let mut config_path = self.dir.join("inspircd.conf");
        std::fs::write(&config_path, config).expect("config");
        if let Some(link_port) = self.link_port {
            let sasl = include_str!("../../servers/inspircd-sasl.conf.in")
                .replace("@DATA@", &self.dir.display().to_string())
                .replace("@LINK_PORT@", &link_port.to_string());
            config_path = self.dir.join("inspircd-sasl.conf");
            std::fs::write(&config_path, sasl).expect("sasl config");
        }
        let mut args = vec![
            format!("--config={}", config_path.display()),
            "--nofork".to_owned(),
            "--nopid".to_owned(),
        ];
        if is_root() {
            args.push("--runasroot".to_owned());
        }
        self.watchdog = Some(watched(
            &self.dir,
            &inspircd_binary(),
            &args,
            "inspircd.out",
        ));
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [self.port, self.tls_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Some((child, _)) = &mut self.watchdog
                    && let Ok(Some(status)) = child.try_wait()
                {
                    panic!(
                        "inspircd exited ({status}): {}",
                        std::fs::read_to_string(self.dir.join("inspircd.out")).unwrap_or_default()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "inspircd did not open port {port}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(link_port) = self.link_port {
            self.spawn_services(link_port);
        }
    }

    fn spawn_services(&mut self, link_port: u16) {
        let config = include_str!("../../servers/atheme.conf.in")
            .replace("@LINK_PORT@", &link_port.to_string());
        let config_path = self.dir.join("atheme.conf");
        std::fs::write(&config_path, config).expect("atheme config");
        let args: Vec<String> = vec![
            "-n".into(),
            "-c".into(),
            config_path.display().to_string(),
            "-l".into(),
            self.dir.join("atheme.log").display().to_string(),
            "-p".into(),
            self.dir.join("atheme.pidfile").display().to_string(),
            "-D".into(),
            self.dir.display().to_string(),
        ];
        let binary = ["/usr/bin/atheme-services", "/usr/sbin/atheme-services"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("Atheme is not installed: run `scripts/install-test-deps.sh`");
        self.services = Some(watched(&self.dir, &binary, &args, "atheme.out"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = std::fs::read_to_string(self.dir.join("atheme.out")).unwrap_or_default();
            if out.contains("finished synching") {
                break;
            }
            assert!(Instant::now() < deadline, "atheme did not link: {out}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop the server and wait until it is gone.
    pub fn stop(&mut self) {
        if let Some(watchdog) = self.services.take() {
            stop_watched(watchdog);
        }
        if let Some(watchdog) = self.watchdog.take() {
            stop_watched(watchdog);
        }
    }

    /// The server's own process id (the watchdog shell's child).
    pub fn pid(&self) -> u32 {
        let (child, _) = self.watchdog.as_ref().expect("the server is running");
        server_pid(child.id())
    }

    /// Stop, then start again on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        // The port is free once the server has exited; bind may still race a TIME_WAIT, which
        // InspIRCd handles with SO_REUSEADDR.
        self.spawn();
    }
}

impl Drop for InspIrcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The process the watchdog shell `shell` started (its only child), waited for with a deadline.
fn server_pid(shell: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().find_map(|p| p.parse().ok()) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the watchdog {shell} started no server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Send `signal` (`STOP`, `CONT`) to a server process this test started.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A running ngIRCd: a plain IRC server without history, server-time or batch (it offers only
/// `multi-prefix`).
pub struct NgIrcd {
    pub port: u16,
    watchdog: Option<(Child, ChildStdin)>,
    _tempdir: tempfile::TempDir,
}

impl NgIrcd {
    /// Start a new ngIRCd in its own temporary folder, on a free plain-text port.
    pub fn start() -> NgIrcd {
        let tempdir = tempfile::Builder::new()
            .prefix("tribridge-ngircd-")
            .tempdir()
            .expect("tempdir");
        let dir = tempdir.path().to_path_buf();
        let port = free_port();
        let config = include_str!("../../servers/ngircd.conf.in")
            .replace("@DATA@", &dir.display().to_string())
            .replace("@PLAIN_PORT@", &port.to_string());
        std::fs::create_dir_all(dir.join("conf.d")).expect("conf.d");
        std::fs::write(dir.join("ngircd.conf"), config).expect("config");
        let binary = ["/usr/sbin/ngircd", "/usr/bin/ngircd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("ngIRCd is not installed: run `scripts/install-test-deps.sh`");
        let args = vec![
            "--nodaemon".to_owned(),
            "--passive".to_owned(),
            "--config".to_owned(),
            dir.join("ngircd.conf").display().to_string(),
        ];
        let mut watchdog = watched(&dir, &binary, &args, "ngircd.out");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = watchdog.0.try_wait() {
                panic!(
                    "ngircd exited ({status}): {}",
                    std::fs::read_to_string(dir.join("ngircd.out")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "ngircd did not open port {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        NgIrcd {
            port,
            watchdog: Some(watchdog),
            _tempdir: tempdir,
        }
    }
}

impl Drop for NgIrcd {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            stop_watched(watchdog);
        }
    }
}

/// One `InspIRCd` shared by every test in this binary that does not restart it.
pub fn shared_inspircd() -> &'static InspIrcd {
    static SERVER: OnceLock<InspIrcd> = OnceLock::new();
    SERVER.get_or_init(InspIrcd::start)
}

/// A running Synapse (from the venv `tests/servers/synapse/install.sh` creates).
pub struct Synapse {
    pub port: u16,
    pub dir: PathBuf,
    watchdog: Option<(Child, ChildStdin)>,
    _tempdir: Option<tempfile::TempDir>,
}

/// The Synapse venv, installed on first use (idempotent; a few ms when present).
pub fn synapse_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/synapse/install.sh");
        let output = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|error| panic!("run {}: {error}", script.display()));
        assert!(
            output.status.success(),
            "installing Synapse failed: run `scripts/install-test-deps.sh`"
        );
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
    .clone()
}

/// Does an HTTP GET of `path` on 127.0.0.1:`port` answer 200?
fn http_ok(port: u16, path: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

impl Synapse {
    /// Start a new Synapse in its own temporary folder, on a free port.
    pub fn start() -> Synapse {
        Self::start_with("")
    }

    /// Like [`Synapse::start`], with `extra` YAML appended to the configuration (a key given
    /// again there replaces the template's).
    pub fn start_with(extra: &str) -> Synapse {
        let tempdir = tempfile::Builder::new()
            .prefix("tribridge-synapse-")
            .tempdir()
            .expect("tempdir");
        let dir = tempdir.path().to_path_buf();
        let port = free_port();
        let config = include_str!("../../servers/synapse/homeserver.yaml.in")
            .replace("@DATA@", &dir.display().to_string())
            .replace("@PORT@", &port.to_string())
            + extra;
        std::fs::create_dir_all(dir.join("media_store")).expect("media dir");
        std::fs::write(dir.join("homeserver.yaml"), config).expect("config");
        // "ed25519 <key id> <unpadded base64 of a 32-byte seed>", written directly: faster than
        // asking Synapse to generate it.
        let seed: [u8; 32] = rand::random();
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD_NO_PAD, seed);
        std::fs::write(
            dir.join("localhost.signing.key"),
            format!("ed25519 a_test {key}\n"),
        )
        .expect("signing key");
        let mut server = Synapse {
            port,
            dir,
            watchdog: None,
            _tempdir: Some(tempdir),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let python = synapse_venv().join("bin/python");
        let args = vec![
            "-m".to_owned(),
            "synapse.app.homeserver".to_owned(),
            "-c".to_owned(),
            self.dir.join("homeserver.yaml").display().to_string(),
        ];
        self.watchdog = Some(watched(&self.dir, &python, &args, "synapse.log"));
        let deadline = Instant::now() + Duration::from_mins(1);
        while !http_ok(self.port, "/_matrix/client/versions") {
            if let Some((child, _)) = &mut self.watchdog
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "synapse exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("synapse.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "synapse did not answer on port {} within a minute",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client-server API base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stop the server and wait until it is gone.
    pub fn stop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            stop_watched(watchdog);
        }
    }

    /// Stop, then start again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One Synapse shared by every test in this binary that does not restart it.
pub fn shared_synapse() -> &'static Synapse {
    static SERVER: OnceLock<Synapse> = OnceLock::new();
    SERVER.get_or_init(Synapse::start)
}

/// A running PostgreSQL (Debian's `postgresql` package), for the PostgreSQL store's tests.
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    watchdog: Option<(Child, ChildStdin)>,
    _tempdir: Option<tempfile::TempDir>,
}

/// The newest installed PostgreSQL's `bin` folder (Debian keeps each major version apart).
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map_or_else(
        || {
            panic!(
                "PostgreSQL is not installed: run `scripts/install-test-deps.sh` (apt-get install postgresql)"
            )
        },
        |(_, bin)| bin,
    )
}

/// `program args`, run as the `postgres` account when we are root (PostgreSQL refuses root).
fn as_postgres(program: &Path, args: &[String]) -> (PathBuf, Vec<String>) {
    if is_root() {
        let mut all = vec![
            "-u".to_owned(),
            "postgres".to_owned(),
            "--".to_owned(),
            program.display().to_string(),
        ];
        all.extend_from_slice(args);
        (PathBuf::from("runuser"), all)
    } else {
        (program.to_path_buf(), args.to_vec())
    }
}

impl Postgres {
    /// Start a new PostgreSQL in its own temporary folder, on a free port, trusting every local
    /// connection of the `tribridge` role.
    pub fn start() -> Postgres {
        let tempdir = tempfile::Builder::new()
            .prefix("tribridge-postgres-")
            .tempdir()
            .expect("tempdir");
        let dir = tempdir.path().to_path_buf();
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres")
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown postgres {}", dir.display());
        }
        let (program, args) = as_postgres(
            &postgres_bin().join("initdb"),
            &[
                "-D".to_owned(),
                dir.join("data").display().to_string(),
                "-A".to_owned(),
                "trust".to_owned(),
                "-U".to_owned(),
                "tribridge".to_owned(),
                "--no-sync".to_owned(),
            ],
        );
        let output = Command::new(&program)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut server = Postgres {
            port: free_port(),
            dir,
            watchdog: None,
            _tempdir: Some(tempdir),
        };
        server.spawn();
        server
    }

    /// Start the server on its data folder and port; wait until it answers.
    fn spawn(&mut self) {
        let (program, args) = as_postgres(
            &postgres_bin().join("postgres"),
            &[
                "-D".to_owned(),
                self.dir.join("data").display().to_string(),
                "-p".to_owned(),
                self.port.to_string(),
                "-k".to_owned(),
                self.dir.display().to_string(),
                "-c".to_owned(),
                "listen_addresses=127.0.0.1".to_owned(),
                "-c".to_owned(),
                "fsync=off".to_owned(),
                "-c".to_owned(),
                "max_connections=300".to_owned(),
            ],
        );
        self.watchdog = Some(watched(&self.dir, &program, &args, "postgres.out"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while off_runtime(|| postgres::Client::connect(&self.url("postgres"), postgres::NoTls))
            .is_err()
        {
            if let Some((child, _)) = &mut self.watchdog
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "postgres exited ({status}): {}",
                    std::fs::read_to_string(self.dir.join("postgres.out")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the server again after [`Postgres::stop`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// A fast shutdown (`pg_ctl -m fast`: every session ends at once; the watchdog's SIGTERM
    /// alone would wait for the clients to leave).
    pub fn stop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            let (program, args) = as_postgres(
                &postgres_bin().join("pg_ctl"),
                &[
                    "-D".to_owned(),
                    self.dir.join("data").display().to_string(),
                    "-m".to_owned(),
                    "fast".to_owned(),
                    "-w".to_owned(),
                    "stop".to_owned(),
                ],
            );
            let _ = Command::new(&program)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            stop_watched(watchdog);
        }
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://tribridge@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// A new, empty database of its own (for one test), by its URL.
    pub fn fresh_database(&self) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        off_runtime(|| {
            let mut admin = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
                .expect("connect to postgres");
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create database");
        });
        self.url(&name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run `work` on a thread of its own: the `postgres` client runs a runtime of its own, which
/// may not start on a thread that runs a test's.
fn off_runtime<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| {
        scope
            .spawn(work)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One PostgreSQL shared by every test in this binary; each test takes a database of its own
/// ([`Postgres::fresh_database`]).
pub fn shared_postgres() -> &'static Postgres {
    static SERVER: OnceLock<Postgres> = OnceLock::new();
    SERVER.get_or_init(|| off_runtime(Postgres::start))
}
