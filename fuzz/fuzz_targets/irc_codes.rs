//! Fuzz target: the IRC control codes parser, then every renderer on its result.
//!
//! Owns: feeding arbitrary UTF-8 to the parser and checking the shared invariants.
//! Must not: filter inputs beyond UTF-8 validity (the parsers accept any string).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tribridge::richtext::irc;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let text = irc::parse(s);
        common::check_all(&text, true);
    }
});
