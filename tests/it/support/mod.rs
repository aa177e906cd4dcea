//! Test support: real servers, a raw IRC client, and the daemon as a child process.

pub mod api_client;
pub mod bridge;
pub mod compliance;
pub mod config;
pub mod irc_client;
pub mod matrix_client;
pub mod mattermost;
pub mod servers;

/// How many of `texts` show `text` relayed once, behind one sender prefix (`<alice> text`).
pub fn relayed_once(texts: &[String], text: &str) -> usize {
    texts
        .iter()
        .filter(|t| {
            tribridge::loop_breaker::split_relay_prefix(t).map(|(_, rest)| rest) == Some(text)
        })
        .count()
}

/// The value of one series (`name` or `name{labels}`) in an `OpenMetrics` text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, value)| value.parse().ok())
}
