//! The integration tests: one binary (ripgrep's layout), sharing servers started once.

mod admin_socket;
mod api_network;
mod chaos;
mod compliance;
mod config_check;
mod history_archive;
mod hostile;
mod import_matterbridge;
mod irc_history;
mod irc_manners;
mod irc_puppets;
mod irc_relay;
mod loops;
mod matrix_appservice;
mod matrix_cross_signing;
mod matrix_relay;
mod mattermost_relay;
mod mattermost_remote_users;
mod mentions;
mod operations;
mod postgres_store;
mod router_store;
mod security;
mod support;
mod three_way;
mod tidy;
