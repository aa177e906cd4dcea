//! Fuzz target: a Mattermost WebSocket text frame, decoded as the session decodes it (the
//! envelope, the post or reaction embedded as a JSON string, the post's Markdown).
//!
//! Owns: feeding arbitrary UTF-8 to the decoder. Must not: filter inputs beyond UTF-8
//! validity (the server, or anything between, can send any text).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let readable = tribridge::connector::mattermost::read_websocket_text("fuzz", text);
        assert!(readable <= 3);
    }
});
