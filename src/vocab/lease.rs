//! Leadership between instances that share one PostgreSQL store (active/passive failover).
//!
//! Exactly one instance is **active**: it holds the lease row of scope `"*"` in the store's
//! `leases` table, with a **fencing token** that grows each time the lease is taken and is never
//! reused. The others are **standby**: they keep the store, `/metrics` and the health endpoints
//! open, hold no network connection, and try to take the lease about every second.
//!
//! This type is the instance's own view of its role, shared by the store (which checks the token
//! in every transaction that completes, defers or fails a delivery or commits an inbound event,
//! and calls [`Lease::lost`] when the check fails), the daemon (which renews the lease every
//! third of `failover_after` and runs the active part while it holds it), the outbox's endpoint
//! ([`Fenced`]: nothing is handed to a connection unless the last renewal is recent, measured on
//! the monotonic clock, which keeps counting while the process is stopped), and the status
//! readers (`/metrics`, `/readyz`, the admin socket).
//!
//! In the **per-network** mode (`[general] failover = "network"`) every instance is active and
//! the lease is one row per network (scope = the network's id, same table, same token rules):
//! an instance runs a network's connection and the outbox workers of its destinations only
//! while it holds that network's lease. [`Lease::held_networks`] and friends keep this
//! instance's view of them; the store fences each write per network ([`Lease::network_fence`]),
//! and [`Fenced`] of a network sends only while that network's lease was renewed recently.
//!
//! It names no network and no database: the store runs the statements, the daemon the timing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::delivery::{AckFuture, DeliveryError, Endpoint};
use crate::model::Delivery;

/// The lease scope of the whole instance (every network connection and every delivery).
pub const WHOLE_INSTANCE: &str = "*";

/// How often a standby tries to take the lease.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);

/// An instance's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the lease: connected to the networks, delivering.
    Active,
    /// Waits for the lease: no network connection, nothing delivered.
    Standby,
}

impl Role {
    /// `active` or `standby`, for the log, the metrics and `/readyz`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// A snapshot of an instance's role, for the status readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleView {
    /// This instance's name (`[general] instance_name`).
    pub instance: String,
    /// Its role.
    pub role: Role,
    /// Since when (ms since the epoch).
    pub since_ms: i64,
    /// The fencing token of the lease as last seen (this instance's while active).
    pub token: i64,
    /// The instance that holds the lease as last seen (`None`: nobody, or not known yet).
    pub active_instance: Option<String>,
}

/// The instance's view of the lease. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Lease {
    instance: String,
    ttl: Duration,
    state: Mutex<State>,
    /// `Some` in the per-network mode: the networks' leases as this instance knows them.
    networks: Option<Mutex<Networks>>,
    /// Rung when a network's lease is lost, so that the daemon stops it at once.
    network_lost: tokio::sync::Notify,
}

/// The per-network leases as this instance knows them.
#[derive(Debug, Default)]
struct Networks {
    /// The networks this instance holds: token, and when the last acquisition or renewal that
    /// succeeded was sent (monotonic clock).
    held: BTreeMap<String, (i64, Instant)>,
    /// Who holds each network's lease, as last read (`None`: nobody, or expired).
    holders: BTreeMap<String, Option<String>>,
    /// The lease of scope [`WHOLE_INSTANCE`] when this instance holds it: it runs the jobs that
    /// must run once per deployment ([`Lease::runs_singletons`]). Token and renewal time.
    singletons: Option<(i64, Instant)>,
}

/// Who holds one network's lease, for the status readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkHolder {
    /// The network's id (the lease's scope).
    pub network: String,
    /// The instance that holds it, as last seen (`None`: nobody, or its lease expired).
    pub holder: Option<String>,
    /// Whether this instance holds it.
    pub held_here: bool,
}

#[derive(Debug)]
struct State {
    role: Role,
    since_ms: i64,
    /// The token this instance holds (active), or last saw (standby).
    token: i64,
    /// When the last acquisition or renewal that succeeded was sent (monotonic clock).
    renewed_at: Option<Instant>,
    active_instance: Option<String>,
    /// Cancelled when the current active term ends.
    term: CancellationToken,
}

impl Lease {
    /// A standby instance named `instance` whose lease lasts `ttl` (`failover_after`).
    #[must_use]
    pub fn new(instance: impl Into<String>, ttl: Duration) -> Self {
        let term = CancellationToken::new();
        term.cancel();
        Self {
            instance: instance.into(),
            ttl,
            state: Mutex::new(State {
                role: Role::Standby,
                since_ms: crate::model::now_ms(),
                token: 0,
                renewed_at: None,
                active_instance: None,
                term,
            }),
            networks: None,
            network_lost: tokio::sync::Notify::new(),
        }
    }

    /// An instance named `instance` in the per-network mode: active from the start (it runs the
    /// store, the router and the services), holding no network's lease yet.
    #[must_use]
    pub fn per_network(instance: impl Into<String>, ttl: Duration) -> Self {
        let mut lease = Self::new(instance, ttl);
        lease.networks = Some(Mutex::new(Networks::default()));
        {
            let mut state = lease.state();
            state.role = Role::Active;
            state.active_instance = Some(lease.instance.clone());
        }
        lease
    }

    /// Whether the leases are per network (`failover = "network"`).
    #[must_use]
    pub fn is_per_network(&self) -> bool {
        self.networks.is_some()
    }

    fn networks(&self) -> Option<std::sync::MutexGuard<'_, Networks>> {
        self.networks.as_ref().map(|networks| {
            networks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
    }

    /// Whether this instance runs the jobs that must run once per deployment (the history's
    /// archive chaining and retention): without a lease, or while active in the instance mode,
    /// always; in the per-network mode only while it holds the lease of scope
    /// [`WHOLE_INSTANCE`], renewed within [`Lease::send_within`].
    #[must_use]
    pub fn runs_singletons(&self) -> bool {
        match self.networks() {
            Some(networks) => networks
                .singletons
                .is_some_and(|(_, at)| at.elapsed() < self.send_within()),
            None => self.state().role == Role::Active,
        }
    }

    /// The per-network mode: this instance took the [`WHOLE_INSTANCE`] lease (`Some`, with its
    /// token, by a statement sent at the time given) or does not hold it (`None`).
    pub fn set_singletons(&self, held: Option<(i64, Instant)>) {
        if let Some(mut networks) = self.networks() {
            let had = networks.singletons.is_some();
            networks.singletons = held;
            drop(networks);
            if had != held.is_some() {
                tracing::info!(instance = %self.instance, runs = held.is_some(), "Jobs that run once per deployment (history): {}.", if held.is_some() { "run here" } else { "not here" });
            }
        }
    }

    /// The [`WHOLE_INSTANCE`] lease's token, when this instance holds it (per-network mode).
    #[must_use]
    pub fn singletons_token(&self) -> Option<i64> {
        self.networks()?.singletons.map(|(token, _)| token)
    }

    /// The token with which this instance holds `network`'s lease (`None`: it does not).
    #[must_use]
    pub fn network_fence(&self, network: &str) -> Option<i64> {
        self.networks()?.held.get(network).map(|(token, _)| *token)
    }

    /// The networks this instance holds, with their tokens.
    #[must_use]
    pub fn held_networks(&self) -> Vec<(String, i64)> {
        self.networks().map_or_else(Vec::new, |networks| {
            networks
                .held
                .iter()
                .map(|(network, (token, _))| (network.clone(), *token))
                .collect()
        })
    }

    /// Whether this instance may hand a delivery to `network` now: it holds the network's
    /// lease and renewed it more recently than [`Lease::send_within`] (monotonic clock).
    #[must_use]
    pub fn may_send_to(&self, network: &str) -> bool {
        self.networks().is_some_and(|networks| {
            networks
                .held
                .get(network)
                .is_some_and(|(_, at)| at.elapsed() < self.send_within())
        })
    }

    /// How long ago the last successful acquisition or renewal of `network`'s lease was sent.
    #[must_use]
    pub fn renewal_age_of(&self, network: &str) -> Option<Duration> {
        self.networks()?
            .held
            .get(network)
            .map(|(_, at)| at.elapsed())
    }

    /// This instance took `network`'s lease with `token` by a statement sent at `sent_at`.
    pub fn took_network(&self, network: &str, token: i64, sent_at: Instant) {
        if let Some(mut networks) = self.networks() {
            networks.held.insert(network.to_owned(), (token, sent_at));
            networks
                .holders
                .insert(network.to_owned(), Some(self.instance.clone()));
        }
        tracing::info!(instance = %self.instance, network, token, "Lease of network {network} taken (token {token}); connecting it.");
    }

    /// The renewal of `networks`, sent at `sent_at`, succeeded.
    pub fn renewed_networks(&self, renewed: &[String], sent_at: Instant) {
        if let Some(mut networks) = self.networks() {
            for network in renewed {
                if let Some((_, at)) = networks.held.get_mut(network) {
                    *at = sent_at;
                }
            }
        }
    }

    /// This instance let `network`'s lease go (its connection and workers stopped first).
    pub fn released_network(&self, network: &str) {
        if let Some(mut networks) = self.networks() {
            networks.held.remove(network);
            networks.holders.insert(network.to_owned(), None);
        }
        tracing::info!(instance = %self.instance, network, "Lease of network {network} released; another instance takes it.");
    }

    /// This instance lost `network`'s lease (`why`): nothing more is sent to it or committed
    /// from it, and the daemon stops it. Idempotent.
    pub fn lost_network(&self, network: &str, why: &str) {
        let Some(mut networks) = self.networks() else {
            return;
        };
        let Some((token, _)) = networks.held.remove(network) else {
            return;
        };
        networks.holders.insert(network.to_owned(), None);
        drop(networks);
        tracing::warn!(instance = %self.instance, network, token, reason = why, "Lease of network {network} lost ({why}); stopping it, sending nothing more to it.");
        self.network_lost.notify_one();
    }

    /// Resolves when a network's lease was lost since the last call.
    pub async fn network_lost(&self) {
        self.network_lost.notified().await;
    }

    /// Who holds each network, as read from the store.
    pub fn saw_holders(&self, holders: impl IntoIterator<Item = (String, Option<String>)>) {
        if let Some(mut networks) = self.networks() {
            for (network, holder) in holders {
                networks.holders.insert(network, holder);
            }
        }
    }

    /// Who holds each network, as this instance last saw it.
    #[must_use]
    pub fn network_holders(&self) -> Vec<NetworkHolder> {
        self.networks().map_or_else(Vec::new, |networks| {
            networks
                .holders
                .iter()
                .map(|(network, holder)| NetworkHolder {
                    network: network.clone(),
                    holder: holder.clone(),
                    held_here: networks.held.contains_key(network),
                })
                .collect()
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state whole: a poisoned lock is still safe to read.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// This instance's name.
    #[must_use]
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// How long the lease lasts without renewal (`failover_after`).
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often the active instance renews the lease: a third of its time.
    #[must_use]
    pub fn renew_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    /// How old the last renewal may be for this instance to still hand anything to a network:
    /// three quarters of the lease time, so that a renewal's round trip and the clocks'
    /// drift fit in the rest before another instance may take the lease.
    #[must_use]
    pub fn send_within(&self) -> Duration {
        self.ttl * 3 / 4
    }

    /// The fencing token to check in a write transaction: `Some` while this instance is
    /// active, `None` while it is standby (it writes nothing that completes a delivery).
    #[must_use]
    pub fn fence(&self) -> Option<i64> {
        let state = self.state();
        (state.role == Role::Active).then_some(state.token)
    }

    /// Whether this instance may hand a delivery to a network now: active, and its last
    /// renewal is more recent than [`Lease::send_within`] on the monotonic clock.
    #[must_use]
    pub fn may_send(&self) -> bool {
        let state = self.state();
        state.role == Role::Active
            && state
                .renewed_at
                .is_some_and(|at| at.elapsed() < self.send_within())
    }

    /// How long ago the last successful acquisition or renewal was sent.
    #[must_use]
    pub fn renewal_age(&self) -> Option<Duration> {
        self.state().renewed_at.map(|at| at.elapsed())
    }

    /// The lease was taken with `token` by a statement sent at `sent_at`: this instance is
    /// active. Returns the token cancelled when this active term ends.
    pub fn became_active(&self, token: i64, sent_at: Instant) -> CancellationToken {
        let mut state = self.state();
        state.role = Role::Active;
        state.since_ms = crate::model::now_ms();
        state.token = token;
        state.renewed_at = Some(sent_at);
        state.active_instance = Some(self.instance.clone());
        state.term = CancellationToken::new();
        tracing::info!(
            instance = %self.instance,
            token,
            since_ms = state.since_ms,
            "Role: active since {}, token {token}.",
            state.since_ms
        );
        state.term.clone()
    }

    /// A renewal sent at `sent_at` succeeded.
    pub fn renewed(&self, sent_at: Instant) {
        let mut state = self.state();
        if state.role == Role::Active {
            state.renewed_at = Some(sent_at);
        }
    }

    /// This instance lost the lease (`why`): it becomes standby, and the active term ends (the
    /// daemon drops its connections). Idempotent.
    pub fn lost(&self, why: &str) {
        let mut state = self.state();
        if state.role != Role::Active {
            return;
        }
        state.role = Role::Standby;
        state.since_ms = crate::model::now_ms();
        state.renewed_at = None;
        state.term.cancel();
        tracing::warn!(
            instance = %self.instance,
            token = state.token,
            reason = why,
            "Role: lost the lease ({why}); standby, sending nothing more."
        );
    }

    /// This instance is standby and saw `active` (and its `token`) holding the lease; logged
    /// when it changes.
    pub fn saw_active(&self, active: Option<&str>, token: i64) {
        let mut state = self.state();
        if state.role == Role::Active {
            return;
        }
        let changed = state.active_instance.as_deref() != active;
        state.active_instance = active.map(str::to_owned);
        state.token = token;
        if changed {
            tracing::info!(
                instance = %self.instance,
                active = active.unwrap_or("nobody"),
                token,
                "Role: standby; active is {}.",
                active.unwrap_or("nobody")
            );
        }
    }

    /// The role as the status readers show it.
    #[must_use]
    pub fn view(&self) -> RoleView {
        let state = self.state();
        RoleView {
            instance: self.instance.clone(),
            role: state.role,
            since_ms: state.since_ms,
            token: state.token,
            active_instance: state.active_instance.clone(),
        }
    }
}

/// An endpoint that hands nothing to its connection unless the instance may send
/// ([`Lease::may_send`]); without a lease (the `SQLite` store, one instance) it only forwards.
#[derive(Clone)]
pub struct Fenced<E> {
    inner: E,
    lease: Option<Arc<Lease>>,
    /// The network it sends to (the lease that gates it in the per-network mode).
    network: Arc<str>,
}

impl<E> Fenced<E> {
    /// `inner`, the endpoint of `network`, gated by `lease` when there is one: the instance's
    /// lease, or in the per-network mode that network's.
    pub fn new(inner: E, lease: Option<Arc<Lease>>, network: &str) -> Self {
        Self {
            inner,
            lease,
            network: Arc::from(network),
        }
    }

    /// The endpoint it gates.
    pub fn inner(&self) -> &E {
        &self.inner
    }
}

impl<E: Endpoint> Endpoint for Fenced<E> {
    fn window(&self) -> usize {
        self.inner.window()
    }

    fn exclusive(&self, delivery: &Delivery) -> bool {
        self.inner.exclusive(delivery)
    }

    fn send(
        &self,
        delivery: Delivery,
    ) -> impl Future<Output = Result<AckFuture, DeliveryError>> + Send {
        let allowed = self.lease.as_ref().is_none_or(|lease| {
            if lease.is_per_network() {
                lease.may_send_to(&self.network)
            } else {
                lease.may_send()
            }
        });
        let inner = self.inner.clone();
        async move {
            if !allowed {
                return Err(DeliveryError::Retry {
                    after: Some(STANDBY_POLL),
                    reason: "this instance is not sure it still holds the lease; nothing is sent"
                        .to_owned(),
                });
            }
            inner.send(delivery).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_may_not_send_and_has_no_fence() {
        let lease = Lease::new("a", Duration::from_secs(3));
        assert_eq!(lease.fence(), None);
        assert!(!lease.may_send());
        assert_eq!(lease.view().role, Role::Standby);
    }

    #[test]
    fn an_active_instance_sends_until_its_renewal_is_too_old_or_it_lost() {
        let lease = Lease::new("a", Duration::from_secs(4));
        let term = lease.became_active(7, Instant::now());
        assert_eq!(lease.fence(), Some(7));
        assert!(lease.may_send());
        // A renewal sent long ago (a stopped process) does not let it send.
        lease.renewed(Instant::now().checked_sub(Duration::from_secs(3)).unwrap());
        assert!(!lease.may_send());
        assert_eq!(lease.fence(), Some(7), "the token still fences its writes");
        lease.renewed(Instant::now());
        assert!(lease.may_send());
        lease.lost("test");
        assert!(term.is_cancelled());
        assert!(!lease.may_send());
        assert_eq!(lease.fence(), None);
        let view = lease.view();
        assert_eq!((view.role, view.token), (Role::Standby, 7));
    }

    #[test]
    fn per_network_leases_gate_each_network_alone() {
        let lease = Lease::per_network("a", Duration::from_secs(4));
        assert!(lease.is_per_network());
        assert_eq!(lease.view().role, Role::Active);
        assert!(!lease.may_send_to("irc"));
        lease.took_network("irc", 5, Instant::now());
        lease.took_network("mm", 9, Instant::now());
        assert_eq!(lease.network_fence("irc"), Some(5));
        assert!(lease.may_send_to("irc") && lease.may_send_to("mm"));
        // A renewal sent long ago for one network stops sends to that one only.
        lease.renewed_networks(
            &["irc".to_owned()],
            Instant::now().checked_sub(Duration::from_secs(3)).unwrap(),
        );
        assert!(!lease.may_send_to("irc"));
        assert!(lease.may_send_to("mm"));
        lease.lost_network("mm", "test");
        assert_eq!(lease.network_fence("mm"), None);
        assert_eq!(lease.held_networks(), vec![("irc".to_owned(), 5)]);
        lease.released_network("irc");
        assert!(lease.held_networks().is_empty());
        assert!(!lease.runs_singletons());
        lease.set_singletons(Some((3, Instant::now())));
        assert!(lease.runs_singletons());
        assert_eq!(lease.singletons_token(), Some(3));
        lease.set_singletons(None);
        assert!(!lease.runs_singletons());
        let whole = Lease::new("b", Duration::from_secs(4));
        assert!(!whole.runs_singletons(), "a standby runs none");
        whole.became_active(1, Instant::now());
        assert!(whole.runs_singletons());
    }

    #[test]
    fn a_standby_follows_who_is_active() {
        let lease = Lease::new("b", Duration::from_secs(3));
        lease.saw_active(Some("a"), 3);
        let view = lease.view();
        assert_eq!(view.active_instance.as_deref(), Some("a"));
        assert_eq!(view.token, 3);
        assert_eq!(view.instance, "b");
    }
}
