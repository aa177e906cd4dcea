//! The Matrix connector, on `matrix-sdk` (end-to-end encryption on; `SQLite` state and crypto
//! stores in `state_dir/matrix-<network>/sdk`).
//!
//! - [`config`]: the `type = "matrix"` section and Matrix's rules for ids and rooms.
//! - [`content`]: event JSON ⇄ model, pure and unit-tested; the one place text is converted.
//! - `appservice` (`mode = "appservice"`): the transaction endpoint, ghosts sending by
//!   masquerading, the registration; [`ghosts`]: ghost localparts and the user namespace.
//! - [`mentions`]: pills and `m.mentions` ⇄ mentions, names of relayed people found in text.
//! - `identity`: the account's cross-signing identity (bootstrap, recovery key, loud changes)
//!   and [`recover`] for `tribridge matrix-recover`.
//! - `session`: login, stored-session reuse, joins and the sync loop; `handle`: the delivery
//!   handle (both with the `matrix` feature, which brings matrix-sdk).

#[cfg(feature = "matrix")]
pub mod appservice;
pub mod config;
#[cfg(feature = "matrix")]
pub mod content;
pub mod ghosts;
#[cfg(feature = "matrix")]
mod handle;
#[cfg(feature = "matrix")]
mod identity;
pub mod mentions;
#[cfg(feature = "matrix")]
mod session;

pub use config::{AppserviceConfig, CAPABILITIES, Matrix, MatrixConfig, Trust};
#[cfg(feature = "matrix")]
pub use handle::MatrixHandle;
#[cfg(feature = "matrix")]
pub use identity::{RecoverError, recover, recovery_key_path};
#[cfg(feature = "matrix")]
pub use session::*;
