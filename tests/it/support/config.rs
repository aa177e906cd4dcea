//! The daemon's configuration as the tests write it: a `[network.*]` block per network type and
//! the usual one-gateway file, so every test file says them the same way.

use std::fmt::Write as _;

/// An IRC network on a local plain-text server, flood control effectively off.
pub fn irc_network(id: &str, port: u16, nick: &str) -> String {
    format!(
        "[network.{id}]\ntype = \"irc\"\nserver = \"127.0.0.1:{port}\"\ntls = false\nnick = \"{nick}\"\n\
         flood_burst = 1000\nflood_interval_ms = 1\n\n"
    )
}

/// A Matrix network on a local Synapse, the bot `@{bot}:localhost` logging in by password.
pub fn matrix_network(id: &str, homeserver: &str, bot: &str) -> String {
    format!(
        "[network.{id}]\ntype = \"matrix\"\nhomeserver = \"{homeserver}\"\nuser = \"@{bot}:localhost\"\n\
         password = \"password\"\n\n"
    )
}

/// A whole file: `networks` and one gateway `g` of `channels` (network id, channel), senders
/// shown as `<nick> `.
pub fn one_gateway(networks: &[String], channels: &[(&str, &str)]) -> String {
    let entries: String = channels.iter().fold(String::new(), |mut out, (n, c)| {
        let _ = writeln!(out, "  {{ network = \"{n}\", channel = \"{c}\" }},");
        out
    });
    format!(
        "[general]\nstate_dir = \"state\"\nremote_nick_format = \"<{{NICK}}> \"\n\n{}\
         [[gateway]]\nname = \"g\"\nchannels = [\n{entries}]\n",
        networks.concat()
    )
}
