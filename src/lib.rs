//! tribridge mirrors channels between IRC, Mattermost and Matrix, both ways, so that every
//! person sees every message once, in order, in the native form of their own platform.
//!
//! Modules in reading order:
//! - [`config`]: the TOML file, parsed into raw serde types and validated into typed config.
//! - [`model`]: the normalised message model every connector converts to and from.
//! - [`store`]: SQLite: messages, mappings, outbox and cursors, with numbered migrations.
//! - [`router`]: decides the destinations of an inbound event; names no network.
//! - [`outbox`]: one worker per destination channel that drains its queue in order.
//! - [`connector`]: the closed set of network connectors; the only code that knows wire types.
//! - [`daemon`]: wires it all together and runs until shutdown.

pub mod richtext;
