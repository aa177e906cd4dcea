//! Fuzz target: a body posted to the api network, read as `POST /api/message` and as an
//! incoming webhook (JSON, Markdown, Slack's `<url|label>` links), and the text alone through
//! the Slack-link conversion; whatever the parsers make of it, every renderer keeps its
//! guarantees.
//!
//! Owns: feeding arbitrary bytes to the api network's readers. Must not: filter inputs (any
//! client on the listener can send any body).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tribridge::connector::api::convert::{read_posted, read_webhook, slack_links_to_markdown};
use tribridge::richtext::markdown;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, content)) = read_posted(data, "api") {
        common::check_all(&content.text, false);
    }
    if let Ok((_, text)) = read_webhook(data, "api") {
        common::check_all(&text, false);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let converted = slack_links_to_markdown(text);
        common::check_all(&markdown::parse_for_network(&converted, "api"), false);
    }
});
