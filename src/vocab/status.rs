//! What each connector reports of its connection, for readiness (`GET /readyz`) and for an
//! operator (`tribridge status`): whether its network is connected (and since when) and which of
//! its configured channels it is in; the router stamps each network's last event. A connector holds a
//! [`NetworkStatus`] for its own network and says `connected`, `joined`, `left`; the supervisor
//! says `disconnected` when a session ends. The daemon tells which channels each network is
//! expected to be in ([`Status::expect`]) and forgets a network it removed.
//!
//! Nothing here knows a network type: channels are named as configured, so a connector reports
//! the configured name of a channel it joined (an alias as written, a name before folding).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

/// Every network's reported state.
#[derive(Debug, Default)]
pub struct Status {
    networks: Mutex<BTreeMap<String, State>>,
}

#[derive(Debug, Default, Clone)]
struct State {
    /// The configured channels it should be in.
    expected: BTreeSet<String>,
    /// Its session is up (logged in, registered, listening).
    connected: bool,
    /// When the session came up (ms since the epoch; 0 while not connected).
    connected_since_ms: i64,
    /// The configured channels it is in.
    joined: BTreeSet<String>,
    /// When its last event was handed to the router (ms since the epoch; 0: none yet).
    last_event_ms: i64,
}

/// One network as read now (`tribridge status`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkState {
    /// The channels gateways link on it, as configured.
    pub expected: Vec<String>,
    /// Since when its session is up (`None`: not connected).
    pub connected_since_ms: Option<i64>,
    /// The configured channels it is in.
    pub joined: Vec<String>,
    /// When its last event was handed to the router (`None`: none since start).
    pub last_event_ms: Option<i64>,
}

/// One network that is not ready, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NotReady {
    /// The configured network id.
    pub network: String,
    /// Whether its session is up.
    pub connected: bool,
    /// The configured channels it is not in (all of them while it is not connected).
    pub missing_channels: Vec<String>,
}

impl Status {
    /// The handle a connector of `network` reports through.
    #[must_use]
    pub fn network(self: &Arc<Self>, network: &str) -> NetworkStatus {
        self.lock().entry(network.to_owned()).or_default();
        NetworkStatus {
            status: Some(Arc::clone(self)),
            network: network.to_owned(),
        }
    }

    /// `network` is expected in `channels` (at start and after a reload).
    pub fn expect(&self, network: &str, channels: &[String]) {
        self.lock().entry(network.to_owned()).or_default().expected =
            channels.iter().cloned().collect();
    }

    /// An event of `network` was handed to the router now.
    pub fn event(&self, network: &str) {
        if let Some(state) = self.lock().get_mut(network) {
            state.last_event_ms = crate::model::now_ms();
        }
    }

    /// Every configured network as it stands now, by id.
    #[must_use]
    pub fn read(&self) -> BTreeMap<String, NetworkState> {
        let at = |ms: i64| Some(ms).filter(|ms| *ms > 0);
        self.lock()
            .iter()
            .map(|(network, state)| {
                (
                    network.clone(),
                    NetworkState {
                        expected: state.expected.iter().cloned().collect(),
                        connected_since_ms: at(state.connected_since_ms)
                            .filter(|_| state.connected),
                        joined: state.joined.iter().cloned().collect(),
                        last_event_ms: at(state.last_event_ms),
                    },
                )
            })
            .collect()
    }

    /// `network` is no longer configured: it is no one's concern for readiness.
    pub fn forget(&self, network: &str) {
        self.lock().remove(network);
    }

    /// The networks that are not ready (not connected, or missing an expected channel), by
    /// network id; empty when everything is.
    #[must_use]
    pub fn not_ready(&self) -> Vec<NotReady> {
        self.lock()
            .iter()
            .filter_map(|(network, state)| {
                let missing: Vec<String> = if state.connected {
                    state.expected.difference(&state.joined).cloned().collect()
                } else {
                    state.expected.iter().cloned().collect()
                };
                (!state.connected || !missing.is_empty()).then(|| NotReady {
                    network: network.clone(),
                    connected: state.connected,
                    missing_channels: missing,
                })
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, State>> {
        self.networks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connector's handle on its own network's state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NetworkStatus {
    status: Option<Arc<Status>>,
    network: String,
}

impl NetworkStatus {
    /// A handle that reports nowhere (tests of a connector's parts, a puppet's connection).
    #[must_use]
    pub fn detached(network: &str) -> Self {
        Self {
            status: None,
            network: network.to_owned(),
        }
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        if let Some(status) = &self.status
            && let Some(state) = status.lock().get_mut(&self.network)
        {
            change(state);
        }
    }

    /// The session is up.
    pub fn connected(&self) {
        self.update(|state| {
            if !state.connected {
                state.connected = true;
                state.connected_since_ms = crate::model::now_ms();
            }
        });
    }

    /// The session ended: not connected, in no channel.
    pub fn disconnected(&self) {
        self.update(|state| {
            state.connected = false;
            state.connected_since_ms = 0;
            state.joined.clear();
        });
    }

    /// The connection is in `channel` (its configured name).
    pub fn joined(&self, channel: &str) {
        self.update(|state| {
            state.joined.insert(channel.to_owned());
        });
    }

    /// The connection is in exactly `channels` (configured names).
    pub fn joined_only<'a>(&self, channels: impl IntoIterator<Item = &'a String>) {
        let channels: BTreeSet<String> = channels.into_iter().cloned().collect();
        self.update(|state| state.joined = channels);
    }

    /// The connection left `channel` (parted, kicked, removed).
    pub fn left(&self, channel: &str) {
        self.update(|state| {
            state.joined.remove(channel);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{NotReady, Status};
    use std::sync::Arc;

    #[test]
    fn a_network_is_ready_once_connected_and_in_every_expected_channel() {
        let status = Arc::new(Status::default());
        let net = status.network("net");
        status.expect("net", &["#a".to_owned(), "#b".to_owned()]);
        assert_eq!(
            status.not_ready(),
            vec![NotReady {
                network: "net".into(),
                connected: false,
                missing_channels: vec!["#a".into(), "#b".into()],
            }]
        );
        net.connected();
        net.joined("#a");
        assert_eq!(
            status.not_ready()[0].missing_channels,
            vec!["#b".to_owned()]
        );
        net.joined("#b");
        assert!(status.not_ready().is_empty());
        net.disconnected();
        assert!(!status.not_ready()[0].connected);
        status.forget("net");
        assert!(status.not_ready().is_empty());
        net.connected();
        assert!(
            status.not_ready().is_empty(),
            "a forgotten network stays forgotten"
        );
    }
}
