//! Test support: real servers, a raw IRC client, and the daemon as a child process.

pub mod bridge;
pub mod irc_client;
pub mod matrix_client;
pub mod mattermost;
pub mod servers;
