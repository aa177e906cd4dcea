//! tribridge mirrors channels between IRC, Mattermost and Matrix, both ways, so that every
//! person sees every message once, in order, in the native form of their own platform.
//!
//! Modules in reading order:
//! - [`config`]: the TOML file, parsed into raw serde types and validated into typed config.
//! - [`model`]: the normalised message model every connector converts to and from.
//! - [`richtext`]: formatted text, and exact, safe conversion to and from IRC, Markdown, HTML.
//! - [`store`]: `SQLite`: messages, mappings, outbox and cursors, with numbered migrations.
//! - [`group_commit`]: one writer thread; each transaction carries every event and ack waiting.
//! - [`router`]: decides the destinations of an inbound event; names no network.
//! - [`loop_breaker`]: recognises messages bridges pass around in a circle.
//! - [`parallel`]: recognises another bridge relaying the same channels; one of the two steps back.
//! - [`outbox`]: one worker per destination channel that drains its queue in order.
//! - [`files`]: files carried between networks (content-addressed store, signed links).
//! - [`connector`]: the closed set of network connectors; the only code that knows wire types.
//! - [`daemon`]: wires it all together and runs until shutdown.

pub mod config;
pub mod connector;
#[cfg(feature = "matrix")]
pub mod daemon;
pub mod files;
pub mod group_commit;
pub mod loop_breaker;
pub mod model;
pub mod outbox;
pub mod parallel;
pub mod richtext;
pub mod router;
pub mod store;

/// Choose the process-wide TLS crypto provider once, before any TLS connection is made.
pub fn install_tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
