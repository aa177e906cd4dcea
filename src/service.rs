//! The daemon as a service: its pid file in `state_dir` (how `tribridge reload` finds it), the
//! outcome of each reload written next to it (what `tribridge reload` reports), the systemd
//! notifications of a reload (`RELOADING=1` with `MONOTONIC_USEC`, then `READY=1`). (The
//! watchdog is the daemon's own: [`crate::daemon`].)
//!
//! Files here are written whole (a temporary file renamed over the old one), 0600 like every
//! file of `state_dir`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::daemon::{ReloadEvent, ReloadSummary};

/// The pid file's name in `state_dir`.
pub const PID_FILE: &str = "tribridge.pid";

/// The last reload's outcome, in `state_dir`: `<pid> <sequence> applied|refused`, then the
/// summary or the located errors.
pub const RELOAD_FILE: &str = "tribridge.reload";

/// Errors of the service files and of `tribridge reload`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A file of `state_dir` could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No daemon runs on this `state_dir` (no pid file, or its process is gone).
    #[error(
        "no running tribridge found for {state_dir} (no live process in its {PID_FILE}); \
         start it with `tribridge run`"
    )]
    NotRunning {
        /// The state folder looked in.
        state_dir: PathBuf,
    },
    /// The daemon could not be signalled.
    #[error("cannot signal tribridge (pid {pid}): {source}")]
    Signal {
        /// Its pid.
        pid: i32,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon did not report the reload's outcome in time.
    #[error("tribridge (pid {pid}) did not report the reload within {waited:?}; see its log")]
    NoAnswer {
        /// Its pid.
        pid: i32,
        /// How long we waited.
        waited: Duration,
    },
}

fn write_whole(path: &Path, text: &str) -> Result<(), ServiceError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let error = |source| ServiceError::File {
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(error)?;
    file.write_all(text.as_bytes()).map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

/// The daemon's pid file: written at start, removed at a clean exit.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Write this process's pid into `state_dir`'s pid file (creating `state_dir`).
    pub fn write(state_dir: &Path) -> Result<Self, ServiceError> {
        std::fs::create_dir_all(state_dir).map_err(|source| ServiceError::File {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(PID_FILE);
        write_whole(&path, &format!("{}\n", std::process::id()))?;
        Ok(Self { path })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only ours: a newer daemon may have written its own since.
        if std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The pid of the daemon running on `state_dir`, when its pid file names a live process.
#[must_use]
pub fn running_pid(state_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(state_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let pid = rustix::process::Pid::from_raw(pid)?;
    // Signal 0: whether the process exists (and we may signal it).
    rustix::process::test_kill_process(pid).ok()?;
    Some(pid.as_raw_nonzero().get())
}

/// A reload's outcome as the daemon reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The daemon's pid.
    pub pid: i32,
    /// Its reloads since it started, this one included.
    pub sequence: u64,
    /// Whether the file was valid and applied.
    pub applied: bool,
    /// What changed, or the located errors.
    pub text: String,
}

/// Read the last reload's outcome in `state_dir`, if any.
#[must_use]
pub fn last_reload(state_dir: &Path) -> Option<ReloadReport> {
    let text = std::fs::read_to_string(state_dir.join(RELOAD_FILE)).ok()?;
    let (head, body) = text.split_once('\n').unwrap_or((&text, ""));
    let mut words = head.split(' ');
    let pid = words.next()?.parse().ok()?;
    let sequence = words.next()?.parse().ok()?;
    let applied = match words.next()? {
        "applied" => true,
        "refused" => false,
        _ => return None,
    };
    Some(ReloadReport {
        pid,
        sequence,
        applied,
        text: body.trim_end().to_owned(),
    })
}

/// `tribridge reload`: signal the daemon running on `state_dir` (SIGHUP) and wait, up to
/// `wait`, for the outcome it reports.
pub fn request_reload(state_dir: &Path, wait: Duration) -> Result<ReloadReport, ServiceError> {
    let pid = running_pid(state_dir).ok_or_else(|| ServiceError::NotRunning {
        state_dir: state_dir.to_owned(),
    })?;
    let before = last_reload(state_dir)
        .filter(|report| report.pid == pid)
        .map_or(0, |report| report.sequence);
    let target = rustix::process::Pid::from_raw(pid).ok_or(ServiceError::NotRunning {
        state_dir: state_dir.to_owned(),
    })?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP).map_err(|error| {
        ServiceError::Signal {
            pid,
            source: error.into(),
        }
    })?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(report) =
            last_reload(state_dir).filter(|report| report.pid == pid && report.sequence > before)
        {
            return Ok(report);
        }
        if std::time::Instant::now() >= deadline {
            return Err(ServiceError::NoAnswer { pid, waited: wait });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the daemon does at each step of a reload: tell systemd, and write the outcome for
/// `tribridge reload`.
#[derive(Debug)]
pub struct ReloadNotifier {
    state_dir: PathBuf,
    sequence: u64,
}

impl ReloadNotifier {
    /// A notifier writing into `state_dir`.
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
            sequence: 0,
        }
    }

    /// One step of a reload.
    pub fn notify(&mut self, event: &ReloadEvent<'_>) {
        match event {
            ReloadEvent::Started => {
                // Type=notify-reload needs MONOTONIC_USEC with RELOADING=1.
                let mut states = vec![sd_notify::NotifyState::Reloading];
                if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                    states.push(now);
                }
                let _ = sd_notify::notify(&states);
            }
            ReloadEvent::Applied(summary) => self.finish(true, &summary_text(summary)),
            ReloadEvent::Refused(errors) => self.finish(false, errors),
        }
    }

    fn finish(&mut self, applied: bool, text: &str) {
        self.sequence += 1;
        let status = if applied {
            "STATUS=Configuration reloaded.".to_owned()
        } else {
            "STATUS=Reload refused: the configuration has errors; running on the previous one."
                .to_owned()
        };
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Custom(&status),
        ]);
        let head = format!(
            "{} {} {}",
            std::process::id(),
            self.sequence,
            if applied { "applied" } else { "refused" }
        );
        if let Err(error) = write_whole(
            &self.state_dir.join(RELOAD_FILE),
            &format!("{head}\n{text}\n"),
        ) {
            tracing::warn!(error = %error, "Cannot write the reload's outcome for `tribridge reload`.");
        }
    }
}

fn summary_text(summary: &ReloadSummary) -> String {
    summary.to_string()
}
