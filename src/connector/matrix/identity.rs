//! The bridge's cross-signing identity on its Matrix account, so that clients that trust only
//! cross-signed devices (Element since April 2026) share their room keys with the bridge and
//! decrypt what it sends.
//!
//! - **Bootstrap**: when the account has no identity, the bridge creates one (master,
//!   self-signing and user-signing keys), signs its own device with it and publishes both; the
//!   homeserver asks for user-interactive auth, answered with the configured password (a
//!   homeserver that follows MSC3967 asks for none on the first upload, which is how an
//!   access-token-only account gets its identity).
//! - **Recovery**: right after, the secrets go to server-side secret storage under a recovery
//!   key generated once, written to `state_dir/matrix-<network>.recovery-key` (mode 0600,
//!   outside the SDK's folder so that losing that folder keeps it) and logged once with what
//!   it is for. [`recover`] (`tribridge matrix-recover`) takes the identity back on a new device.
//! - **Changes are loud**: the master key the bridge holds is recorded in the store's cursors;
//!   an account whose identity is not the one this device holds the keys of (reset elsewhere,
//!   or the state lost) is logged as an error and shown in `/metrics`
//!   (`tribridge_matrix_identity_changes_total`, `tribridge_matrix_cross_signed`), and no new
//!   identity is made over it unless `reset_cross_signing = true`.
//!
//! It never stops the bridge: without an identity the bridge goes on as an unsigned device.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::encryption::recovery::{RecoveryError, RecoveryState};
use matrix_sdk::ruma::api::client::uiaa;

use super::config::MatrixConfig;
use crate::connector::NetworkSettings;
use crate::connector::supervisor::error_chain;
use crate::store::Store;
use crate::vocab::network_metrics::NetworkMetrics;

/// The store cursor (of the network) that records the master key the bridge holds. Not a room
/// name, so it never meets a channel's cursor.
const MASTER_KEY_CURSOR: &str = "cross-signing master key";

/// The file in `state_dir` that keeps a network's recovery key.
#[must_use]
pub fn recovery_key_path(state_dir: &Path, network: &str) -> PathBuf {
    state_dir.join(format!("matrix-{network}.recovery-key"))
}

/// The identity's series in `/metrics`.
#[derive(Clone)]
pub(super) struct IdentityMetrics {
    /// Times the account's identity was found not to be the one this device holds.
    changes: Arc<AtomicI64>,
    /// 1 while the bridge's device is signed by the account's current identity.
    cross_signed: Arc<AtomicI64>,
    /// The account's master key at the last change counted: a change is counted once, not
    /// again at each reconnection that finds it.
    counted: Arc<std::sync::Mutex<Option<String>>>,
}

impl IdentityMetrics {
    pub(super) fn new(metrics: &NetworkMetrics, network: &str) -> Self {
        IdentityMetrics {
            changes: metrics.counter(
                "tribridge_matrix_identity_changes",
                "Times the Matrix account's cross-signing identity was found not to be the one the bridge holds (reset elsewhere, or the bridge's state lost)",
                network,
            ),
            cross_signed: metrics.gauge(
                "tribridge_matrix_cross_signed",
                "1 while the bridge's Matrix device is signed by its account's current cross-signing identity",
                network,
            ),
            counted: Arc::default(),
        }
    }
}

/// The identity of one network's account, as the session sees it.
pub(super) struct Identity<'a> {
    pub(super) network: &'a str,
    pub(super) config: &'a MatrixConfig,
    pub(super) state_dir: &'a Path,
    pub(super) store: &'a Arc<Store>,
    pub(super) metrics: IdentityMetrics,
    /// Whether this device held the account's identity at the last look.
    holds: bool,
}

impl<'a> Identity<'a> {
    pub(super) fn new(
        network: &'a str,
        config: &'a MatrixConfig,
        state_dir: &'a Path,
        store: &'a Arc<Store>,
        metrics: IdentityMetrics,
    ) -> Self {
        Identity {
            network,
            config,
            state_dir,
            store,
            metrics,
            holds: false,
        }
    }

    /// After login: bootstrap the identity when the account has none, sign the device with it,
    /// set up recovery; say loudly when the account's identity is not ours.
    pub(super) async fn ensure(&mut self, client: &Client) {
        let encryption = client.encryption();
        encryption.wait_for_e2ee_initialization_tasks().await;
        let Some(own) = client.user_id().map(ToOwned::to_owned) else {
            return;
        };
        // What the homeserver publishes now (this also drops private keys that no longer
        // match it).
        let published = match encryption.request_user_identity(&own).await {
            Ok(identity) => identity,
            Err(error) => {
                tracing::warn!(network = %self.network, error = %error_chain(&error), "Cannot read the account's cross-signing identity; trying again at the next connection.");
                return;
            }
        };
        let Some(published) = published else {
            let recorded = self.recorded_master().await;
            if recorded.is_some() && !self.config.reset_cross_signing {
                // The identity the bridge held is gone from the account: a change too.
                self.report_not_held(None, recorded.as_deref(), true);
                return;
            }
            if !self.config.cross_signing {
                tracing::info!(network = %self.network, "The account has no cross-signing identity and cross_signing = false: the bridge's device stays unsigned, and clients that trust only cross-signed devices neither share room keys with it nor decrypt its messages.");
                self.set_holds(false);
                return;
            }
            if self.bootstrap(client).await {
                self.after_identity_held(client).await;
            }
            return;
        };
        let master = master_key_of(&published);
        if self.holds_keys(client).await {
            self.after_identity_held(client).await;
            return;
        }
        let recorded = self.recorded_master().await;
        let changed = recorded
            .as_deref()
            .is_some_and(|r| Some(r) != master.as_deref());
        self.report_not_held(master.as_deref(), recorded.as_deref(), changed);
        if self.config.reset_cross_signing {
            tracing::warn!(network = %self.network, "reset_cross_signing = true: making a new cross-signing identity over the account's current one.");
            if self.reset(client).await {
                self.after_identity_held(client).await;
            }
        }
    }

    /// After each sync: when the account's identity changed under the bridge (the SDK drops
    /// the private keys that no longer match what the homeserver publishes), say so once.
    pub(super) async fn watch(&mut self, client: &Client) {
        if !self.holds || self.holds_keys(client).await {
            return;
        }
        let Some(own) = client.user_id().map(ToOwned::to_owned) else {
            return;
        };
        let master = match client.encryption().get_user_identity(&own).await {
            Ok(Some(identity)) => master_key_of(&identity),
            _ => None,
        };
        let recorded = self.recorded_master().await;
        self.report_not_held(master.as_deref(), recorded.as_deref(), true);
    }

    fn report_not_held(&mut self, master: Option<&str>, recorded: Option<&str>, changed: bool) {
        let key_file = recovery_key_path(self.state_dir, self.network);
        if changed {
            let mut counted = self
                .metrics
                .counted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if counted.as_deref() != Some(master.unwrap_or_default()) {
                *counted = Some(master.unwrap_or_default().to_owned());
                self.metrics.changes.fetch_add(1, Ordering::Relaxed);
            }
            drop(counted);
            tracing::error!(
                network = %self.network,
                master_key = master.unwrap_or("none"),
                held_master_key = recorded.unwrap_or("none"),
                "The Matrix account's cross-signing identity changed under the bridge (reset from another device?). \
                 The bridge's device is no longer signed by it: clients that trust only cross-signed devices stop sharing room keys with it. \
                 The bridge does not make a new identity over it; if the reset was not wanted, find out who made it; \
                 to let the bridge take over, set reset_cross_signing = true, or restore the identity with \
                 `tribridge matrix-recover` and that identity's recovery key."
            );
        } else {
            tracing::error!(
                network = %self.network,
                master_key = master.unwrap_or("none"),
                recovery_key_file = %key_file.display(),
                "The Matrix account has a cross-signing identity whose keys this device does not hold (new device, or the bridge's state lost). \
                 Restore it with `tribridge matrix-recover --config <file> --network <id> --recovery-key-file <file>` (the recovery key is in the file named here, \
                 or the one a client gave when the identity was made); or set reset_cross_signing = true to make a new one. \
                 Until then the bridge's device is unsigned."
            );
        }
        self.set_holds(false);
    }

    fn set_holds(&mut self, holds: bool) {
        self.holds = holds;
        self.metrics
            .cross_signed
            .store(i64::from(holds), Ordering::Relaxed);
    }

    /// Whether this device holds every private cross-signing key of the account.
    async fn holds_keys(&self, client: &Client) -> bool {
        client
            .encryption()
            .cross_signing_status()
            .await
            .is_some_and(|status| status.is_complete())
    }

    /// This device holds the identity: its device signed, the master key recorded, recovery
    /// set up.
    async fn after_identity_held(&mut self, client: &Client) {
        let encryption = client.encryption();
        match encryption.get_own_device().await {
            Ok(Some(device)) if !device.is_cross_signed_by_owner() => {
                if let Err(error) = device.verify().await {
                    tracing::warn!(network = %self.network, error = %error, "Cannot sign the bridge's device with its cross-signing identity.");
                }
            }
            _ => {}
        }
        if let Some(own) = client.user_id()
            && let Ok(Some(identity)) = encryption.get_user_identity(own).await
            && let Some(master) = master_key_of(&identity)
        {
            if let Err(error) = self.record_master(&master).await {
                tracing::warn!(network = %self.network, error = %error, "Cannot record the cross-signing master key; a later change may not be told apart from a lost state.");
            }
            self.ensure_recovery(client).await;
            tracing::info!(network = %self.network, master_key = %master, "The bridge's device is cross-signed by its account's identity.");
        }
        self.set_holds(true);
    }

    /// Create and publish an identity; `false` (logged) when the homeserver refused it.
    async fn bootstrap(&self, client: &Client) -> bool {
        let encryption = client.encryption();
        let first = encryption.bootstrap_cross_signing(None).await;
        let result = match first {
            Ok(()) => Ok(()),
            Err(error) => {
                let Some(uiaa) = error.as_uiaa_response() else {
                    tracing::error!(network = %self.network, error = %error_chain(&error), "Cannot publish a cross-signing identity; trying again at the next connection.");
                    return false;
                };
                let Some(auth) = self.password_auth(uiaa.session.clone()) else {
                    tracing::error!(network = %self.network, "The homeserver asks for the account's password to publish the bridge's cross-signing identity, and only an access token is configured. \
                         Give `password` (or `password_file` / `password_env`) for one start, or restore an identity made elsewhere with `tribridge matrix-recover`; \
                         until then the bridge's device is unsigned.");
                    return false;
                };
                encryption.bootstrap_cross_signing(Some(auth)).await
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(network = %self.network, "Made and published a cross-signing identity for the bridge's account.");
                true
            }
            Err(error) => {
                tracing::error!(network = %self.network, error = %error_chain(&error), "Cannot publish a cross-signing identity; trying again at the next connection.");
                false
            }
        }
    }

    /// Make a new identity over the account's current one (`reset_cross_signing`).
    async fn reset(&self, client: &Client) -> bool {
        let recovery = client.encryption().recovery();
        let handle = match recovery.reset_identity().await {
            Ok(handle) => handle,
            Err(error) => {
                tracing::error!(network = %self.network, error = %error_chain(&error), "Cannot reset the cross-signing identity.");
                return false;
            }
        };
        if let Some(handle) = handle {
            let session = match handle.auth_type() {
                matrix_sdk::encryption::CrossSigningResetAuthType::Uiaa(info) => {
                    info.session.clone()
                }
                matrix_sdk::encryption::CrossSigningResetAuthType::OAuth(_) => None,
            };
            let Some(auth) = self.password_auth(session) else {
                tracing::error!(network = %self.network, "Resetting the cross-signing identity needs the account's password; none is configured.");
                handle.cancel().await;
                return false;
            };
            if let Err(error) = handle.reset(Some(auth)).await {
                tracing::error!(network = %self.network, error = %error_chain(&error), "Cannot reset the cross-signing identity.");
                return false;
            }
        }
        // The old recovery key opens the old identity only.
        let key_file = recovery_key_path(self.state_dir, self.network);
        if key_file.exists() {
            let old = key_file.with_extension("recovery-key.old");
            if let Err(error) = std::fs::rename(&key_file, &old) {
                tracing::warn!(network = %self.network, error = %error, "Cannot move the old recovery key aside.");
            }
        }
        tracing::warn!(network = %self.network, "Made a new cross-signing identity over the account's previous one.");
        true
    }

    fn password_auth(&self, session: Option<String>) -> Option<uiaa::AuthData> {
        let password = self.config.password.as_ref()?;
        let mut auth = uiaa::Password::new(
            uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(self.config.user.clone())),
            password.expose().to_owned(),
        );
        auth.session = session;
        Some(uiaa::AuthData::Password(auth))
    }

    /// Put the identity's secrets in server-side secret storage under a new recovery key,
    /// once: not when a recovery key file exists or secret storage already holds them.
    async fn ensure_recovery(&self, client: &Client) {
        let key_file = recovery_key_path(self.state_dir, self.network);
        if key_file.exists() {
            return;
        }
        let recovery = client.encryption().recovery();
        match recovery.state() {
            RecoveryState::Enabled => {
                tracing::info!(network = %self.network, "The identity's secrets are in secret storage under a recovery key made elsewhere; keep that key to restore the identity.");
                return;
            }
            RecoveryState::Incomplete => {
                tracing::warn!(network = %self.network, "Secret storage exists on the account but misses some of the identity's secrets; not replacing it. Restore with `tribridge matrix-recover` and its recovery key.");
                return;
            }
            RecoveryState::Disabled | RecoveryState::Unknown => {}
        }
        let mut enabled = recovery.enable().await;
        if matches!(enabled, Err(RecoveryError::BackupExistsOnServer)) {
            // A key backup without secret storage: what an earlier start left when it stopped
            // between the two. The backup's key was never stored anywhere: start it again.
            tracing::warn!(network = %self.network, "A key backup exists without secret storage (an earlier start was interrupted?); replacing it.");
            enabled = match client.encryption().backups().disable_and_delete().await {
                Ok(()) => recovery.enable().await,
                Err(error) => Err(error.into()),
            };
        }
        let key = match enabled {
            Ok(key) => key,
            Err(error) => {
                tracing::error!(network = %self.network, error = %error_chain(&error), "Cannot put the cross-signing secrets in secret storage; trying again at the next connection.");
                return;
            }
        };
        let written = write_secret_file(&key_file, &key);
        // Printed once, with what it is for: the operator may keep it elsewhere too.
        tracing::warn!(
            network = %self.network,
            recovery_key = %key,
            file = %key_file.display(),
            written = written.is_ok(),
            "The bridge's Matrix identity is kept in secret storage on the homeserver under this recovery key. \
             Keep it (and the file) safe: with it, `tribridge matrix-recover` gives a new device (state lost, new host) the same identity, \
             so that people's clients go on trusting the bridge. It is shown only this once."
        );
        if let Err(error) = written {
            tracing::error!(network = %self.network, file = %key_file.display(), error = %error, "Cannot write the recovery key file; copy the key from the line above.");
        }
    }

    async fn recorded_master(&self) -> Option<String> {
        let store = Arc::clone(self.store);
        let network = self.network.to_owned();
        tokio::task::spawn_blocking(move || store.cursor(&network, MASTER_KEY_CURSOR))
            .await
            .ok()?
            .ok()?
    }

    async fn record_master(&self, master: &str) -> Result<(), String> {
        let store = Arc::clone(self.store);
        let network = self.network.to_owned();
        let master = master.to_owned();
        tokio::task::spawn_blocking(move || store.set_cursor(&network, MASTER_KEY_CURSOR, &master))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())
    }
}

fn master_key_of(identity: &matrix_sdk::encryption::identities::UserIdentity) -> Option<String> {
    identity
        .master_key()
        .get_first_key()
        .map(|key| key.to_base64())
}

/// Write `text` to a new file readable by its owner only (replacing one that exists).
fn write_secret_file(path: &Path, text: &str) -> std::io::Result<()> {
    crate::connector::write_state_file(path, format!("{text}\n").as_bytes())
}

/// Why `tribridge matrix-recover` failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The network is of another type.
    #[error("network `{0}` is not a Matrix network")]
    NotMatrix(String),
    /// The recovery key file cannot be read.
    #[error("cannot read the recovery key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Login or the homeserver failed.
    #[error("{0}")]
    Matrix(String),
}

/// `tribridge matrix-recover`: log in as the network's account (reusing the stored session, or
/// as a new device), take the cross-signing identity back from secret storage with the recovery
/// key, sign this device with it, and keep the session for the daemon. Returns the master key.
///
/// # Errors
/// When the network is unknown or not Matrix, the key file cannot be read, the login fails, or
/// the key does not open the account's secret storage.
pub async fn recover(
    network: &str,
    settings: &dyn NetworkSettings,
    state_dir: &Path,
    key_file: &Path,
) -> Result<String, RecoverError> {
    let config = settings
        .as_any()
        .downcast_ref::<MatrixConfig>()
        .ok_or_else(|| RecoverError::NotMatrix(network.to_owned()))?;
    let key = std::fs::read_to_string(key_file).map_err(|source| RecoverError::KeyFile {
        path: key_file.to_owned(),
        source,
    })?;
    let key = key.trim();
    let dir = state_dir.join(format!("matrix-{network}"));
    let client = super::session::login(network, config, &dir)
        .await
        .map_err(RecoverError::Matrix)?;
    client
        .encryption()
        .wait_for_e2ee_initialization_tasks()
        .await;
    // One sync that asks for no rooms: it publishes this device's keys, which the signature
    // made below refers to. The bridge's own sync position is kept elsewhere (the store).
    client
        .sync_once(
            SyncSettings::default()
                .filter(super::session::nothing_filter())
                .timeout(std::time::Duration::ZERO),
        )
        .await
        .map_err(|error| RecoverError::Matrix(format!("sync failed: {}", error_chain(&error))))?;
    client
        .encryption()
        .recovery()
        .recover(key)
        .await
        .map_err(|error| {
            RecoverError::Matrix(format!(
                "the recovery key did not open the account's secret storage: {}",
                error_chain(&error)
            ))
        })?;
    let own = client
        .user_id()
        .ok_or_else(|| RecoverError::Matrix("no user id after login".into()))?
        .to_owned();
    let identity = client
        .encryption()
        .get_user_identity(&own)
        .await
        .map_err(|error| RecoverError::Matrix(error.to_string()))?;
    let master = identity
        .as_ref()
        .and_then(master_key_of)
        .ok_or_else(|| RecoverError::Matrix("the account publishes no identity".into()))?;
    let signed = client
        .encryption()
        .get_own_device()
        .await
        .ok()
        .flatten()
        .is_some_and(|device| device.is_cross_signed_by_owner());
    if !signed {
        return Err(RecoverError::Matrix(
            "the identity was restored but this device could not be signed with it".into(),
        ));
    }
    // Keep the key in the state folder too, as a first start would have.
    let kept = recovery_key_path(state_dir, network);
    if !kept.exists()
        && let Err(error) = write_secret_file(&kept, key)
    {
        tracing::warn!(network, file = %kept.display(), error = %error, "Cannot keep a copy of the recovery key in the state folder.");
    }
    Ok(master)
}
