//! The one supervisor every connector's session runs under: it runs a session (one connection,
//! from connecting to its end), classifies how it ended, logs it in the network's span, and
//! reconnects after a backoff, until shutdown. A connector writes only its session
//! ([`Session`]).
//!
//! Invariants: one reconnect policy for every network ([`ReconnectPolicy`]: exponential
//! backoff with full jitter, its cap from `[general] reconnect_max_seconds`); a session that
//! lasted longer than [`ReconnectPolicy::healthy_after`] starts the backoff again from its first
//! step; shutdown ends the wait at once; every log line of a session carries its network's id.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::vocab::network_status::NetworkStatus;

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The daemon is shutting down: do not reconnect.
    Shutdown,
    /// The connection was lost or could not be made (the reason, for the log): reconnect.
    Lost(String),
}

/// One connection of a connector, from connecting to its end.
pub trait Session: Send {
    /// The protocol's name in log lines (`IRC`, `Matrix`, `Mattermost`).
    fn label(&self) -> &'static str;

    /// Connect and run until the connection ends or shutdown.
    fn connect(&mut self) -> impl Future<Output = SessionEnd> + Send;
}

impl<S: Session> Session for &mut S {
    fn label(&self) -> &'static str {
        (**self).label()
    }

    fn connect(&mut self) -> impl Future<Output = SessionEnd> + Send {
        (**self).connect()
    }
}

/// When to reconnect after a lost session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The first wait.
    pub first: Duration,
    /// The longest wait (the backoff doubles up to it).
    pub max: Duration,
    /// A session that lasted this long was healthy: the next wait is the first again.
    pub healthy_after: Duration,
}

/// The default of `[general] reconnect_max_seconds`.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_mins(5);

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: DEFAULT_RECONNECT_MAX,
            healthy_after: Duration::from_mins(1),
        }
    }
}

/// Run `session` again and again until shutdown, waiting per `policy` between lost sessions.
/// When a session ends, `status` no longer shows the network connected.
pub async fn supervise(
    network: &str,
    policy: ReconnectPolicy,
    shutdown: &CancellationToken,
    status: &NetworkStatus,
    mut session: impl Session,
) {
    let span = tracing::info_span!("network", network = %network);
    let label = session.label();
    let mut backoff = Backoff::new(policy.first, policy.max);
    loop {
        let started = Instant::now();
        let end = session.connect().instrument(span.clone()).await;
        status.disconnected(network);
        match end {
            SessionEnd::Shutdown => break,
            SessionEnd::Lost(_) if shutdown.is_cancelled() => break,
            SessionEnd::Lost(reason) => {
                if started.elapsed() > policy.healthy_after {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(network = %network, reason = %reason, delay_ms = delay.as_millis() as u64, "{label} connection lost; reconnecting.");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
    tracing::info!(network = %network, "{label} connector stopped.");
}

/// Exponential backoff with full jitter, for reconnects.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Start at `base`, never wait more than `max`.
    #[must_use]
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniformly random in [ceiling/2, ceiling], the ceiling doubling each time.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let low = ceiling / 2;
        low + ceiling.saturating_sub(low).mul_f64(rand::random::<f64>())
    }

    /// Forget earlier failures (after a connection that worked for a while).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// An error and its causes, `outer: inner: innermost`, each cause once (libraries often repeat
/// their source's text in their own).
#[must_use]
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{ReconnectPolicy, Session, SessionEnd, error_chain, supervise};
    use crate::vocab::network_status::NetworkStatus;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// A session that is lost `losses` times, then sees shutdown.
    struct Flaky {
        losses: u32,
        connects: u32,
        shutdown: CancellationToken,
    }

    impl Session for Flaky {
        fn label(&self) -> &'static str {
            "Test"
        }

        async fn connect(&mut self) -> SessionEnd {
            self.connects += 1;
            if self.connects > self.losses {
                self.shutdown.cancel();
                return SessionEnd::Shutdown;
            }
            SessionEnd::Lost("dropped".into())
        }
    }

    #[tokio::test]
    async fn a_lost_session_is_connected_again_until_shutdown() {
        let shutdown = CancellationToken::new();
        let policy = ReconnectPolicy {
            first: Duration::from_millis(1),
            max: Duration::from_millis(4),
            healthy_after: Duration::from_mins(1),
        };
        let mut flaky = Flaky {
            losses: 4,
            connects: 0,
            shutdown: shutdown.clone(),
        };
        supervise(
            "net",
            policy,
            &shutdown,
            &NetworkStatus::default(),
            &mut flaky,
        )
        .await;
        assert_eq!(flaky.connects, 5);
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait_at_once() {
        let shutdown = CancellationToken::new();
        let policy = ReconnectPolicy {
            first: Duration::from_hours(1),
            ..ReconnectPolicy::default()
        };
        let mut flaky = Flaky {
            losses: u32::MAX,
            connects: 0,
            shutdown: CancellationToken::new(),
        };
        let status = NetworkStatus::default();
        {
            let supervised = supervise("net", policy, &shutdown, &status, &mut flaky);
            tokio::pin!(supervised);
            // The session is lost at once and the supervisor waits an hour: still running.
            assert!(futures::poll!(supervised.as_mut()).is_pending());
            shutdown.cancel();
            assert!(futures::poll!(supervised.as_mut()).is_ready());
        }
        assert_eq!(flaky.connects, 1);
    }

    #[test]
    fn a_cause_repeated_in_its_error_is_said_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(formatter, "request failed: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Outer(std::io::Error::other("refused"));
        assert_eq!(error_chain(&error), "request failed: refused");
    }
}
